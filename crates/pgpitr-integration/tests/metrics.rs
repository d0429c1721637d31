//! Metrics and health: a real node_exporter scrapes what the jobs wrote, metric files are
//! never seen half-written, healthcheck names the failing check against a real server,
//! sd_notify messages arrive, and the documented alert rules pass promtool.

use pgpitr_integration::{require_tool, Cluster, ClusterOptions};
use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// Value of the first sample of `name` whose labels contain every `want` pair.
fn value(scrape: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let (n, labels) = series.split_once('{').unwrap_or((series, ""));
            (n == name
                && want
                    .iter()
                    .all(|(k, val)| labels.contains(&format!("{k}=\"{val}\""))))
            .then(|| v.parse().ok())
            .flatten()
        })
}

#[test]
fn node_exporter_scrapes_every_required_metric() {
    require_tool("prometheus-node-exporter", "prometheus-node-exporter");
    let c = Cluster::start(ClusterOptions {
        metrics: true,
        ..Default::default()
    });
    let mut db = c.connect(5432);
    db.batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .unwrap();
    c.switch_and_wait(5432);
    c.basebackup();
    c.switch_and_wait(5432);
    let r = c.tool("healthcheck", &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);

    let dir = c.cfg.metrics.as_ref().unwrap().textfile_dir.clone();
    let port = free_port();
    let mut exporter = Command::new("prometheus-node-exporter")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--collector.disable-defaults")
        .arg("--collector.textfile")
        .arg(format!("--collector.textfile.directory={}", dir.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let scrape = loop {
        if let Some(b) = http_get(port, "/metrics") {
            break b;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "node_exporter did not answer"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    exporter.kill().ok();
    exporter.wait().ok();

    assert_eq!(
        value(&scrape, "node_textfile_scrape_error", &[]),
        Some(0.0),
        "{scrape}"
    );
    let inst = [("instance", "test")];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let recent = |name: &str| {
        let v = value(&scrape, name, &inst).unwrap_or_else(|| panic!("{name} missing:\n{scrape}"));
        assert!(now - v < 600.0 && v <= now + 1.0, "{name} = {v}, now {now}");
    };
    recent("postgresql_backup_last_success_timestamp");
    recent("postgresql_wal_archive_last_success_timestamp");
    recent("pgpitr_restorable_window_oldest_timestamp_seconds");
    recent("pgpitr_restorable_window_newest_timestamp_seconds");
    assert_eq!(value(&scrape, "postgresql_health", &inst), Some(1.0));
    let objects = c
        .cfg
        .archive
        .dir
        .join("wal")
        .read_dir()
        .unwrap()
        .flatten()
        .map(|d| d.path().read_dir().unwrap().count())
        .sum::<usize>();
    assert_eq!(
        value(&scrape, "postgresql_wal_archive_files_present", &inst),
        Some(objects as f64),
        "{scrape}"
    );
    assert!(
        value(
            &scrape,
            "pgpitr_archive_pushed_bytes_total",
            &[("instance", "test"), ("kind", "raw")]
        )
        .unwrap()
            >= 2.0 * 16.0 * 1048576.0
    );
    assert!(value(&scrape, "pgpitr_archive_compression_ratio", &inst).unwrap() > 1.0);
    assert_eq!(
        value(&scrape, "pgpitr_archive_failures_total", &inst),
        Some(0.0)
    );
    assert_eq!(value(&scrape, "pgpitr_backups", &inst), Some(1.0));
    assert!(
        value(
            &scrape,
            "pgpitr_backup_size_bytes",
            &[("instance", "test"), ("kind", "stored")]
        )
        .unwrap()
            > 0.0
    );
    for check in [
        "server",
        "archiver",
        "archive_ready",
        "system_identifier",
        "backup_age",
        "archive_space",
        "backup_space",
        "wal_chain",
    ] {
        assert_eq!(
            value(
                &scrape,
                "pgpitr_health_check",
                &[("instance", "test"), ("check", check)]
            ),
            Some(1.0),
            "{check}"
        );
    }
    // Every metric the jobs write is documented, and nothing carries a path or a secret.
    let docs = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/metrics.md"
    ))
    .unwrap();
    let names: BTreeSet<&str> = scrape
        .lines()
        .filter(|l| l.starts_with("pgpitr_") || l.starts_with("postgresql_"))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    assert!(names.len() >= 20, "{names:?}");
    for n in names {
        assert!(
            docs.contains(&format!("`{n}`")),
            "{n} is not in docs/metrics.md"
        );
    }
    let ours: Vec<&str> = scrape
        .lines()
        .filter(|l| l.starts_with("pgpitr_") || l.starts_with("postgresql_"))
        .collect();
    assert!(
        ours.iter().all(|l| !l.contains(c.root.to_str().unwrap())),
        "a path leaked into metrics"
    );
}

#[test]
fn metric_files_are_never_seen_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = pgpitr_metrics::MetricsFile::new("atomic", "x");
    for i in 0..3000 {
        m.sample(
            "pgpitr_test_series",
            "many samples",
            pgpitr_metrics::Kind::Gauge,
            &[("n", &i.to_string())],
            i as f64,
        );
    }
    m.gauge("pgpitr_test_last", "the end marker", 1.0);
    let file = m.path(dir.path());
    m.write(dir.path()).unwrap();
    let expected = m.render();
    // Another process reads the file in a tight loop while this one rewrites it.
    let reader = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "for i in $(seq 1500); do cat '{}'; echo '=== end ==='; done",
            file.display()
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let writer = std::thread::spawn(move || {
        for _ in 0..300 {
            m.write(dir.path()).unwrap();
        }
        dir
    });
    let out = reader.wait_with_output().unwrap();
    let _dir = writer.join().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let reads: Vec<&str> = text
        .split("=== end ===\n")
        .filter(|r| !r.is_empty())
        .collect();
    assert_eq!(reads.len(), 1500);
    for r in reads {
        assert_eq!(r, expected, "a reader saw a partial file");
    }
}

#[test]
fn healthcheck_names_the_failing_check() {
    let c = Cluster::start(ClusterOptions {
        metrics: true,
        ..Default::default()
    });
    let mut db = c.connect(5432);
    db.batch_execute("CREATE TABLE t (x int)").unwrap();
    c.basebackup();
    c.switch_and_wait(5432);
    let r = c.tool("healthcheck", &["--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["healthy"], true);
    let prom = c.root.join("metrics/pgpitr_health_test.prom");

    // Backup older than the threshold.
    let mut strict = c.cfg.clone();
    strict.health.backup_max_age_seconds = 1;
    let strict_path = c.write_config(&strict, "strict.toml");
    std::thread::sleep(Duration::from_millis(2100));
    let r = c.tool_with(&strict_path, "healthcheck", &[]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("backup_age") && r.stderr.contains("basebackup"),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.stderr.lines().count(),
        1,
        "only the failing check: {}",
        r.stderr
    );
    assert!(fs::read_to_string(&prom)
        .unwrap()
        .contains("pgpitr_health_check{instance=\"test\",check=\"backup_age\"} 0"));

    // archive_command failing: the archive folder is not writable by the server.
    let chmod_tree = |mode: u32| {
        let mut dirs = vec![c.cfg.archive.dir.clone()];
        while let Some(d) = dirs.pop() {
            fs::set_permissions(&d, fs::Permissions::from_mode(mode)).unwrap();
            dirs.extend(
                fs::read_dir(&d)
                    .unwrap()
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir()),
            );
        }
    };
    chmod_tree(0o500);
    db.batch_execute("INSERT INTO t SELECT generate_series(1, 1000)")
        .unwrap();
    let seg: String = db
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .unwrap()
        .get(0);
    let start = Instant::now();
    loop {
        let failed: i64 = db
            .query_one("SELECT failed_count FROM pg_stat_archiver", &[])
            .unwrap()
            .get(0);
        if failed > 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "archiving of {seg} never failed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = c.tool("healthcheck", &[]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("archiver") && r.stderr.contains("writable"),
        "{}",
        r.stderr
    );
    let text = fs::read_to_string(&prom).unwrap();
    assert!(
        text.contains("postgresql_health{instance=\"test\"} 0"),
        "{text}"
    );
    assert!(text.contains("check=\"archiver\"} 0"), "{text}");
    // archive-wal's own failure metrics went up too.
    let archive_prom = fs::read_to_string(c.root.join("metrics/pgpitr_archive_test.prom")).unwrap();
    let failures = archive_prom
        .lines()
        .find(|l| l.starts_with("pgpitr_archive_failures_total"))
        .unwrap();
    assert!(!failures.ends_with(" 0"), "{archive_prom}");
    chmod_tree(0o755);

    // Server down.
    drop(db);
    c.stop_server(c.data());
    let r = c.tool("healthcheck", &[]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("server:") && r.stderr.contains("start PostgreSQL"),
        "{}",
        r.stderr
    );
}

#[test]
fn basebackup_sends_ready_and_status_to_notify_socket() {
    let c = Cluster::start(ClusterOptions::default());
    let sock_path = c.root.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // Read while the job runs, as systemd does: the socket's queue holds only a few lines.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let sock = sock.try_clone().unwrap();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut msgs = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) => msgs.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                    Err(_) if done.load(std::sync::atomic::Ordering::SeqCst) => break,
                    Err(_) => {}
                }
            }
            msgs
        })
    };
    let out = Command::new(c.tools.join("basebackup"))
        .arg("--config")
        .arg(&c.cfg_path)
        .env("NOTIFY_SOCKET", &sock_path)
        .output()
        .unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let msgs = reader.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut buf = [0u8; 4096];
    assert!(msgs[0].contains("READY=1"), "{msgs:?}");
    assert!(
        msgs.iter().filter(|m| m.starts_with("STATUS=")).count() >= 3,
        "{msgs:?}"
    );
    assert!(msgs.last().unwrap().contains("complete"), "{msgs:?}");
    // Without NOTIFY_SOCKET nothing is sent and the job still succeeds.
    c.tool("basebackup", &[]).ok();
    assert!(sock.recv(&mut buf).is_err());
}

#[test]
fn documented_alert_rules_pass_promtool() {
    require_tool("promtool", "prometheus");
    let docs = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/metrics.md"
    ))
    .unwrap();
    let start = docs
        .find("```yaml\n")
        .expect("a yaml block in docs/metrics.md")
        + 8;
    let end = start + docs[start..].find("```").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yml");
    fs::write(&rules, &docs[start..end]).unwrap();
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS: 7 rules found"));
}
