//! Restore drills against real PostgreSQL (and restic for `--from offsite`): a healthy drill
//! passes every check, writes its history line and metrics, and measures the RPO within the
//! heartbeat interval of the truth; a deleted WAL segment, a corrupted backup file and a
//! corrupted heap page each fail the drill naming the check; refusals; a killed drill's
//! leftovers are cleaned by the next one; the documented alert rules pass promtool.

use chrono::{DateTime, Utc};
use pgpitr_config::{Config, DrillConfig};
use pgpitr_integration::{require_tool, Cluster, ClusterOptions, Run};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The heartbeat interval the drills are configured with.
const INTERVAL: u64 = 30;

/// The instance config with `[drill]` in `<root>/drill` on port 5433.
fn drill_config(c: &Cluster) -> (Config, PathBuf) {
    let mut cfg = c.cfg.clone();
    cfg.drill = DrillConfig {
        scratch_dir: Some(c.root.join("drill")),
        port: Some(5433),
        heartbeat: true,
        heartbeat_interval_seconds: INTERVAL,
    };
    let p = c.write_config(&cfg, "drill.toml");
    // A drill killed or failed mid-way leaves a server: stop it when the test ends.
    c.track(&c.root.join("drill/data"));
    (cfg, p)
}

fn drill(c: &Cluster, cfg: &Path, args: &[&str]) -> (Run, Option<serde_json::Value>) {
    let mut a = vec!["drill", "--json"];
    a.extend_from_slice(args);
    let r = c.tool_with(cfg, "pgpitr", &a);
    let v = serde_json::from_str(&r.stdout).ok();
    (r, v)
}

fn check<'a>(rec: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    rec["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {rec}"))
}

fn time(v: &serde_json::Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

fn health(c: &Cluster, cfg: &Path) {
    let r = c.tool_with(cfg, "healthcheck", &["--json"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let hb = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["check"] == "heartbeat")
        .unwrap_or_else(|| panic!("no heartbeat check: {}", r.stdout));
    assert_eq!(hb["ok"], true, "{hb}");
}

/// Table `t` with the commit-ish time of each row, a heartbeat, a base backup.
fn prepare(c: &Cluster, cfg: &Path) -> pgpitr_pg::Client {
    let mut db = c.connect(5432);
    db.batch_execute(
        "CREATE TABLE t (id serial PRIMARY KEY, tag text, at timestamptz DEFAULT clock_timestamp()); \
         INSERT INTO t (tag) VALUES ('base')",
    )
    .unwrap();
    health(c, cfg);
    c.basebackup();
    db
}

/// Writes a row every 0.4 s for `secs` seconds while healthcheck runs back to back in the
/// background (as its timer would, only more often): heartbeats are never further apart
/// than one healthcheck run, which stays well under `INTERVAL` even on a loaded machine.
fn traffic(c: &Cluster, cfg: &Path, db: &mut pgpitr_pg::Client, secs: u64) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tool, cfg) = (c.tools.join("healthcheck"), cfg.to_path_buf());
    let flag = stop.clone();
    let beats = std::thread::spawn(move || {
        let mut n = 0;
        while !flag.load(std::sync::atomic::Ordering::SeqCst) {
            Command::new(&tool)
                .arg("--config")
                .arg(&cfg)
                .output()
                .unwrap();
            n += 1;
        }
        n
    });
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        db.execute("INSERT INTO t (tag) VALUES ('x')", &[]).unwrap();
        std::thread::sleep(Duration::from_millis(400));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(beats.join().unwrap() >= 1);
}

fn newest_row_at_or_before(db: &mut pgpitr_pg::Client, t: DateTime<Utc>) -> DateTime<Utc> {
    let st: std::time::SystemTime = db
        .query_one(
            "SELECT max(at) FROM t WHERE at <= $1",
            &[&std::time::SystemTime::from(t)],
        )
        .unwrap()
        .get(0);
    st.into()
}

#[test]
fn healthy_drills_pass_record_history_metrics_and_measure_rpo() {
    let c = Cluster::start(ClusterOptions {
        metrics: true,
        ..Default::default()
    });
    let (_, cfgp) = drill_config(&c);
    let mut db = prepare(&c, &cfgp);
    traffic(&c, &cfgp, &mut db, 8);
    c.switch_and_wait(5432);

    // The first drill without --to goes to latest.
    let (r, rec) = drill(&c, &cfgp, &[]);
    let rec = rec.unwrap_or_else(|| panic!("{}\n{}", r.stdout, r.stderr));
    assert_eq!(r.code, 0, "{rec}\n{}", r.stderr);
    assert_eq!(rec["success"], true, "{rec}");
    assert_eq!(rec["mode"], "latest");
    for name in [
        "wal_chain",
        "plan",
        "restore",
        "target_reached",
        "promoted",
        "databases_connect",
        "amcheck",
        "heartbeat",
    ] {
        let ch = check(&rec, name);
        assert_eq!(ch["ok"], true, "{name}: {ch}");
        assert!(ch.get("skipped").is_none(), "{ch}");
    }
    assert!(check(&rec, "target_reached")["detail"]
        .as_str()
        .unwrap()
        .contains("redo done at"));
    // The truth for latest: the drill's start minus the newest row the archive holds.
    let newest = newest_row_at_or_before(&mut db, time(&rec["time"]));
    let truth = (time(&rec["time"]) - newest).num_milliseconds() as f64 / 1000.0;
    let rpo = rec["rpo_seconds"].as_f64().unwrap();
    assert!(
        (rpo - truth).abs() <= INTERVAL as f64,
        "measured RPO {rpo} vs truth {truth}: {rec}"
    );
    for phase in ["extract", "replay", "checks", "total"] {
        assert!(rec["durations"][phase].as_f64().unwrap() > 0.0, "{phase}");
    }
    assert!(rec["durations"]["promote"].as_f64().is_some(), "{rec}");
    assert!(!c.root.join("drill/data").exists(), "scratch copy removed");

    // The next one goes to a random point inside the window.
    let (r, rec2) = drill(&c, &cfgp, &[]);
    let rec2 = rec2.unwrap_or_else(|| panic!("{}\n{}", r.stdout, r.stderr));
    assert_eq!(rec2["success"], true, "{rec2}\n{}", r.stderr);
    assert_eq!(rec2["mode"], "random");
    let target = time(&rec2["target_time"]);
    assert!(check(&rec2, "target_reached")["detail"]
        .as_str()
        .unwrap()
        .contains("recovery stopping"));
    let truth =
        (target - newest_row_at_or_before(&mut db, target)).num_milliseconds() as f64 / 1000.0;
    let rpo = rec2["rpo_seconds"].as_f64().unwrap();
    assert!(
        (rpo - truth).abs() <= INTERVAL as f64,
        "measured RPO {rpo} vs truth {truth}: {rec2}"
    );

    // History: one line per drill, the newest shown by status.
    let hist = fs::read_to_string(c.cfg.backup.dir.join("drills.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = hist
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1], rec2);
    let st = c.tool_with(&cfgp, "pgpitr", &["status"]).ok();
    assert!(
        st.stdout.contains("last drill") && st.stdout.contains("passed (random drill"),
        "{}",
        st.stdout
    );
    let st = c.tool_with(&cfgp, "pgpitr", &["status", "--json"]).ok();
    let st: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(st["last_drill"], rec2);

    // Metrics.
    let prom = fs::read_to_string(c.root.join("metrics/pgpitr_drill_test.prom")).unwrap();
    for needle in [
        "pgpitr_drill_success{instance=\"test\"} 1\n",
        "pgpitr_drill_last_success_timestamp_seconds{instance=\"test\"} ",
        "pgpitr_drill_last_run_timestamp_seconds{instance=\"test\"} ",
        "pgpitr_drill_duration_seconds{instance=\"test\",phase=\"replay\"} ",
        "pgpitr_drill_duration_seconds{instance=\"test\",phase=\"promote\"} ",
        "pgpitr_drill_rpo_seconds{instance=\"test\"} ",
        &format!(
            "pgpitr_drill_backup_info{{instance=\"test\",backup_id=\"{}\"}} 1\n",
            rec2["backup_id"].as_str().unwrap()
        ),
    ] {
        assert!(prom.contains(needle), "{needle} missing in:\n{prom}");
    }
    let docs = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/metrics.md"
    ))
    .unwrap();
    for name in prom
        .lines()
        .filter(|l| l.starts_with("pgpitr_"))
        .filter_map(|l| l.split(['{', ' ']).next())
    {
        assert!(
            docs.contains(&format!("`{name}`")),
            "{name} is not in docs/metrics.md"
        );
    }
    assert!(!prom.contains(c.root.to_str().unwrap()), "a path leaked");
}

/// The heartbeat allowance takes archive_timeout from the instance, not from the scratch
/// copy, which carries only what its base backup held (here: the default, 0).
#[test]
fn heartbeat_allowance_uses_the_instance_archive_timeout() {
    let c = Cluster::start(ClusterOptions::default());
    let (_, cfgp) = drill_config(&c);
    let mut db = prepare(&c, &cfgp);
    // After the base backup: the restored copy keeps the backup's postgresql.auto.conf.
    db.batch_execute("ALTER SYSTEM SET archive_timeout = 900")
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    db.execute("INSERT INTO t (tag) VALUES ('after')", &[])
        .unwrap();
    health(&c, &cfgp);
    c.switch_and_wait(5432);
    let (r, rec) = drill(&c, &cfgp, &["--to", "latest"]);
    let rec = rec.unwrap_or_else(|| panic!("{}\n{}", r.stdout, r.stderr));
    assert_eq!(r.code, 0, "{rec}\n{}", r.stderr);
    let hb = check(&rec, "heartbeat");
    assert_eq!(hb["ok"], true, "{hb}");
    let detail = hb["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!(
            "allowed {} s: heartbeat interval {INTERVAL} s + archive_timeout 900 s of the instance",
            INTERVAL + 900
        )),
        "{detail}"
    );
    // With the instance down, the restored copy's setting is used, and the record says so.
    drop(db);
    c.stop_server(c.data());
    let (r, rec) = drill(&c, &cfgp, &["--to", "latest"]);
    let rec = rec.unwrap_or_else(|| panic!("{}\n{}", r.stdout, r.stderr));
    let hb = check(&rec, "heartbeat");
    assert!(
        hb["detail"]
            .as_str()
            .unwrap()
            .contains("archive_timeout 0 s of the restored copy"),
        "{hb}\n{}",
        r.stderr
    );
    assert!(
        rec["warnings"]
            .to_string()
            .contains("cannot read archive_timeout from the instance"),
        "{rec}"
    );
}

fn assert_failed(r: &Run, rec: &Option<serde_json::Value>, name: &str) -> serde_json::Value {
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(
        r.stderr.contains(&format!("check {name} failed")),
        "stderr does not name {name}: {}",
        r.stderr
    );
    let rec = rec.clone().unwrap();
    assert_eq!(rec["success"], false);
    assert_eq!(check(&rec, name)["ok"], false, "{rec}");
    rec
}

#[test]
fn missing_wal_segment_and_corrupted_backup_fail_naming_the_check() {
    let c = Cluster::start(ClusterOptions::default());
    let (cfg, cfgp) = drill_config(&c);
    let mut db = prepare(&c, &cfgp);
    // Three archived segments after the backup; the middle one goes missing.
    let mut segs = Vec::new();
    for i in 0..3 {
        db.execute("INSERT INTO t (tag) VALUES ($1)", &[&format!("s{i}")])
            .unwrap();
        health(&c, &cfgp);
        let seg: String = db
            .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
            .unwrap()
            .get(0);
        segs.push(seg);
        c.switch_and_wait(5432);
    }
    let wal_dir = cfg.archive.dir.join("wal").join(&segs[1][..16]);
    let victim = fs::read_dir(&wal_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{}-", segs[1]))
        })
        .unwrap_or_else(|| panic!("{} not archived in {}", segs[1], wal_dir.display()));
    let aside = c.root.join("aside-segment");
    fs::rename(&victim, &aside).unwrap();
    let (r, rec) = drill(&c, &cfgp, &["--to", "latest"]);
    let rec = assert_failed(&r, &rec, "wal_chain");
    assert!(
        check(&rec, "wal_chain")["detail"]
            .as_str()
            .unwrap()
            .contains(&segs[1]),
        "{rec}"
    );
    assert!(!c.root.join("drill/data").exists());
    fs::rename(&aside, &victim).unwrap();

    // A corrupted backup file: the restore check fails.
    let backup = fs::read_dir(&cfg.backup.dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .unwrap();
    let tar = fs::read_dir(&backup)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("base.tar")
        })
        .unwrap();
    let mut bytes = fs::read(&tar).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0x5a;
    }
    fs::write(&tar, &bytes).unwrap();
    let (r, rec) = drill(&c, &cfgp, &["--to", "latest"]);
    let rec = assert_failed(&r, &rec, "restore");
    assert_eq!(check(&rec, "amcheck")["skipped"], true, "{rec}");
    assert!(!c.root.join("drill/data").exists());
    let hist = fs::read_to_string(cfg.backup.dir.join("drills.jsonl")).unwrap();
    assert_eq!(hist.lines().count(), 2);
}

#[test]
fn corrupted_heap_page_is_found_by_amcheck() {
    let c = Cluster::start(ClusterOptions::default());
    let (_, cfgp) = drill_config(&c);
    let mut db = c.connect(5432);
    db.batch_execute(
        "CREATE TABLE h (id int, pad text) WITH (autovacuum_enabled = off); \
         INSERT INTO h SELECT g, repeat('p', 50) FROM generate_series(1, 100) g; \
         CHECKPOINT",
    )
    .unwrap();
    let rel: String = db
        .query_one("SELECT pg_relation_filepath('h')", &[])
        .unwrap()
        .get(0);
    drop(db);
    c.stop_server(c.data());
    // Line pointer 1 of block 0: a normal item at offset 8000, 400 bytes long, which runs
    // past the end of the 8 KiB page.
    let file = c.data().join(rel);
    let mut page = fs::read(&file).unwrap();
    let lp: u32 = 8000 | (1 << 15) | (400 << 17);
    page[24..28].copy_from_slice(&lp.to_le_bytes());
    fs::write(&file, &page).unwrap();
    c.start_server(c.data());
    let mut db = prepare(&c, &cfgp);
    db.execute("INSERT INTO t (tag) VALUES ('after')", &[])
        .unwrap();
    health(&c, &cfgp);
    c.switch_and_wait(5432);
    let (r, rec) = drill(&c, &cfgp, &["--to", "latest"]);
    let rec = assert_failed(&r, &rec, "amcheck");
    let detail = check(&rec, "amcheck")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(detail.contains("public.h\""), "{detail}");
    // Everything else was fine.
    for name in [
        "restore",
        "target_reached",
        "databases_connect",
        "heartbeat",
    ] {
        assert_eq!(check(&rec, name)["ok"], true, "{name}: {rec}");
    }
}

#[test]
fn offsite_drill_uses_the_restic_copies_alone() {
    require_tool("restic", "restic");
    let c = Cluster::start(ClusterOptions {
        encrypted: true,
        ..Default::default()
    });
    let (mut cfg, _) = drill_config(&c);
    cfg.offsite = Some(c.offsite_config("drill-test-password"));
    let cfgp = c.write_config(&cfg, "drill-offsite.toml");
    let mut db = prepare(&c, &cfgp);
    db.execute("INSERT INTO t (tag) VALUES ('after')", &[])
        .unwrap();
    health(&c, &cfgp);
    c.switch_and_wait(5432);
    c.tool_with(&cfgp, "offsite-sync", &[]).ok();
    drop(db);
    c.stop_server(c.data());
    // The local archive and backups are gone: only restic has them.
    fs::rename(&cfg.archive.dir, c.root.join("archive-gone")).unwrap();
    fs::rename(&cfg.backup.dir, c.root.join("backups-gone")).unwrap();
    let (r, rec) = drill(&c, &cfgp, &["--from", "offsite", "--to", "latest"]);
    let rec = rec.unwrap_or_else(|| panic!("{}\n{}", r.stdout, r.stderr));
    assert_eq!(r.code, 0, "{rec}\n{}", r.stderr);
    assert_eq!(rec["source"], "offsite");
    assert_eq!(check(&rec, "fetch")["ok"], true);
    assert_eq!(check(&rec, "heartbeat")["ok"], true, "{rec}");
    assert!(rec["durations"]["fetch"].as_f64().unwrap() > 0.0);
    assert!(!c.root.join("drill/staging").exists());
    assert!(!cfg.archive.dir.exists(), "nothing written to the archive");
    let hist = fs::read_to_string(cfg.backup.dir.join("drills.jsonl")).unwrap();
    assert_eq!(hist.lines().count(), 1);
}

#[test]
fn refusals_and_a_killed_drill_is_cleaned_up_by_the_next() {
    let c = Cluster::start(ClusterOptions::default());
    let (cfg, cfgp) = drill_config(&c);
    let mut db = prepare(&c, &cfgp);
    // Provisioning says the heartbeat table exists and why.
    let r = c.tool_with(&cfgp, "provision-dbs", &[]).ok();
    assert!(
        r.stdout
            .contains("heartbeat table pgpitr.heartbeat present")
            && r.stdout.contains("RPO"),
        "{}",
        r.stdout
    );

    let mut bad = cfg.clone();
    bad.drill.scratch_dir = Some(c.data().to_path_buf());
    let p = c.write_config(&bad, "bad-dir.toml");
    let r = c.tool_with(&p, "pgpitr", &["drill"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("overlaps postgres.data_dir"),
        "{}",
        r.stderr
    );
    let mut bad = cfg.clone();
    bad.drill.port = Some(5432);
    let p = c.write_config(&bad, "bad-port.toml");
    let r = c.tool_with(&p, "pgpitr", &["drill"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("instance's own port"), "{}", r.stderr);
    // Nothing was touched: the instance still answers, no history was written.
    db.execute("INSERT INTO t (tag) VALUES ('still here')", &[])
        .unwrap();
    assert!(!cfg.backup.dir.join("drills.jsonl").exists());

    // A drill killed once its scratch server runs leaves the server and the folder.
    health(&c, &cfgp);
    c.switch_and_wait(5432);
    let mut child = Command::new(c.tools.join("pgpitr"))
        .arg("--config")
        .arg(&cfgp)
        .args(["drill", "--to", "latest"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid_file = c.root.join("drill/data/postmaster.pid");
    let start = Instant::now();
    while !pid_file.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "scratch server never started"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "drill ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(c.root.join("drill/data").exists());

    // The next drill (kept running this time) cleans that up first.
    let (r, rec) = drill(&c, &cfgp, &["--to", "latest", "--keep"]);
    let rec = rec.unwrap_or_else(|| panic!("{}\n{}", r.stdout, r.stderr));
    assert_eq!(rec["success"], true, "{rec}\n{}", r.stderr);
    let warnings = rec["warnings"].to_string();
    assert!(
        warnings.contains("cleaned up after an earlier drill"),
        "{rec}"
    );
    assert_eq!(
        rec["kept"].as_str().unwrap(),
        c.root.join("drill/data").to_str().unwrap()
    );
    // The kept copy is read-only and does not archive.
    let mut scratch = c.connect(5433);
    let ro: String = scratch
        .query_one("SHOW default_transaction_read_only", &[])
        .unwrap()
        .get(0);
    assert_eq!(ro, "on");
    let archive_mode: String = scratch.query_one("SHOW archive_mode", &[]).unwrap().get(0);
    assert_eq!(archive_mode, "off");
    let e = scratch
        .execute("INSERT INTO t (tag) VALUES ('write')", &[])
        .unwrap_err();
    assert!(
        e.to_string().contains("read-only") || format!("{e:?}").contains("read-only"),
        "{e:?}"
    );
    drop(scratch);
    c.stop_server(&c.root.join("drill/data"));

    // The heartbeat can be turned off: healthcheck then leaves the row alone.
    let read_beat = |db: &mut pgpitr_pg::Client| -> std::time::SystemTime {
        db.query_one("SELECT at FROM pgpitr.heartbeat", &[])
            .unwrap()
            .get(0)
    };
    let before = read_beat(&mut db);
    let mut off = cfg.clone();
    off.drill.heartbeat = false;
    let p = c.write_config(&off, "heartbeat-off.toml");
    let r = c.tool_with(&p, "healthcheck", &["--json"]);
    assert!(!r.stdout.contains("\"heartbeat\""), "{}", r.stdout);
    assert_eq!(read_beat(&mut db), before);
}

#[test]
fn documented_drill_alert_rules_pass_promtool() {
    require_tool("promtool", "prometheus");
    let docs = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/metrics.md"
    ))
    .unwrap();
    let section = &docs[docs
        .find("## pgpitr drill")
        .expect("a `## pgpitr drill` section in docs/metrics.md")..];
    let start = section.find("```yaml\n").expect("a yaml block") + 8;
    let end = start + section[start..].find("```").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yml");
    fs::write(&rules, &section[start..end]).unwrap();
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("SUCCESS: 2 rules found"), "{text}");
    for alert in ["PgpitrDrillFailed", "PgpitrNoSuccessfulDrill"] {
        assert!(section[start..end].contains(alert), "{alert}");
    }
}
