//! Offsite copies in real restic repositories on local disk: sync, re-sync adds nothing,
//! the forget policy keeps what it should, a restore `--from offsite` after the local archive
//! and backups are gone passes the sentinel gate; wrong password and locked repository give
//! clear errors; the password never appears in restic's argv or in output.

use pgpitr_config::{ForgetPolicy, OffsiteConfig};
use pgpitr_integration::{require_tool, rows_around_target, tags, Cluster, ClusterOptions};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct-horse-battery-staple-7f3a";

/// Adds an [offsite] section whose restic runs through a wrapper that records its argv
/// (then execs the real restic).
fn with_offsite(c: &Cluster, keep_last: u32) -> (PathBuf, PathBuf) {
    require_tool("restic", "restic");
    let log = c.root.join("restic-argv.log");
    let wrapper = c.root.join("restic-recording-argv");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ntr '\\0' ' ' < /proc/$$/cmdline >> '{0}'; echo >> '{0}'\nenv | grep -c '^RESTIC_PASSWORD=' >> '{0}'\nexec restic \"$@\"\n",
            log.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let mut cfg = c.cfg.clone();
    cfg.offsite = Some(OffsiteConfig {
        restic_bin: Some(wrapper),
        forget: ForgetPolicy {
            keep_last,
            ..Default::default()
        },
        ..c.offsite_config(PASSWORD)
    });
    (c.write_config(&cfg, "offsite.toml"), log)
}

fn sync(c: &Cluster, cfg: &std::path::Path) -> serde_json::Value {
    let r = c.tool_with(cfg, "offsite-sync", &["--json"]).ok();
    assert!(!r.stdout.contains(PASSWORD) && !r.stderr.contains(PASSWORD));
    serde_json::from_str(&r.stdout).unwrap()
}

#[test]
fn sync_resync_forget_and_restore_from_offsite() {
    let c = Cluster::start(ClusterOptions {
        encrypted: true,
        ..Default::default()
    });
    let (cfg, log) = with_offsite(&c, 1);
    let mut db = c.connect(5432);
    db.batch_execute("CREATE TABLE t (id serial, tag text); INSERT INTO t (tag) VALUES ('base')")
        .unwrap();
    let first = c.basebackup();
    c.switch_and_wait(5432);

    let s = sync(&c, &cfg);
    assert_eq!(s["backups_added"], serde_json::json!([first]));
    assert!(s["wal"]["files_new"].as_u64().unwrap() >= 2, "{s}");

    // Re-sync: nothing new.
    let s = sync(&c, &cfg);
    assert_eq!(s["backups_added"], serde_json::json!([]));
    assert_eq!(s["backups_already_offsite"], 1);
    assert_eq!(s["wal"]["files_new"], 0, "{s}");
    assert_eq!(s["wal"]["files_changed"], 0, "{s}");

    let second = c.basebackup();
    let target = rows_around_target(&mut db, "before", "after");
    c.switch_and_wait(5432);
    let s = sync(&c, &cfg);
    assert_eq!(s["backups_added"], serde_json::json!([second]));
    assert_eq!(s["pruned"], true);

    // keep_last = 1: one WAL snapshot and only the newest base backup remain offsite.
    let st = c
        .tool_with(&cfg, "pgpitr", &["status", "--offsite", "--json"])
        .ok();
    let st: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(st["wal_snapshots"].as_array().unwrap().len(), 1, "{st}");
    let bases: Vec<&str> = st["base_backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backup"].as_str().unwrap())
        .collect();
    assert_eq!(bases, vec![second.as_str()]);

    // The machine is lost: server stopped, local archive and backups gone.
    drop(db);
    c.stop_server(c.data());
    fs::remove_dir_all(&c.cfg.archive.dir).unwrap();
    fs::remove_dir_all(&c.cfg.backup.dir).unwrap();
    let into = c.root.join("from-offsite");
    let r = c.restore(
        &target.to_rfc3339(),
        &into,
        5433,
        &["--from", "offsite", "--json"],
    );
    let r = c
        .tool_with(
            &cfg,
            "pgpitr",
            &[
                "restore",
                "--from",
                "offsite",
                "--to",
                &target.to_rfc3339(),
                "--into",
                into.to_str().unwrap(),
                "--port",
                "5433",
                "--json",
            ],
        )
        .ok_or_report(r);
    let rep: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(rep["backup_id"], second.as_str());
    let mut rdb = c.connect(5433);
    assert_eq!(tags(&mut rdb), vec!["base", "before"]);

    // The password never reached restic's argv nor its environment as RESTIC_PASSWORD.
    let argv = fs::read_to_string(&log).unwrap();
    assert!(
        argv.contains("backup") && argv.contains("forget") && argv.contains("restore"),
        "{argv}"
    );
    assert!(!argv.contains(PASSWORD), "password in argv");
    assert!(
        argv.lines().filter(|l| l.trim() == "0").count() > 5,
        "RESTIC_PASSWORD must not be set"
    );
}

trait OrReport {
    fn ok_or_report(self, first: pgpitr_integration::Run) -> pgpitr_integration::Run;
}

impl OrReport for pgpitr_integration::Run {
    /// The first attempt used the instance config without [offsite] and must have failed
    /// clearly; this one (with it) must succeed.
    fn ok_or_report(self, first: pgpitr_integration::Run) -> pgpitr_integration::Run {
        assert_ne!(first.code, 0);
        assert!(first.stderr.contains("offsite"), "{}", first.stderr);
        self.ok()
    }
}

#[test]
fn wrong_password_and_stale_lock_are_clear_errors() {
    let c = Cluster::start(ClusterOptions::default());
    let (cfg, _) = with_offsite(&c, 3);
    c.basebackup();
    sync(&c, &cfg);

    // Wrong password: names the password file, never its content.
    let bad_pw = c.root.join("wrong-password");
    fs::write(&bad_pw, "not-the-password\n").unwrap();
    let text = fs::read_to_string(&cfg).unwrap().replace(
        &c.root.join("restic-password").display().to_string(),
        &bad_pw.display().to_string(),
    );
    let bad_cfg = c.root.join("bad-pw.toml");
    fs::write(&bad_cfg, text).unwrap();
    let r = c.tool_with(&bad_cfg, "offsite-sync", &[]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("wrong password") && r.stderr.contains("wrong-password"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("not-the-password"));

    // A stale lock left by a killed restic: reported with the command to remove it.
    let repo = c.root.join("restic-repo");
    let mut holder = Command::new("restic")
        .args(["backup", "--stdin", "--stdin-filename", "x", "-q"])
        .env("RESTIC_REPOSITORY", &repo)
        .env("RESTIC_PASSWORD_FILE", c.root.join("restic-password"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // restic writes its lock under a temporary name and renames it when it is on disk; only
    // a published lock (a 64-hex id with content) is one restic itself will see.
    let published_lock = |repo: &std::path::Path| {
        fs::read_dir(repo.join("locks"))
            .map(|d| {
                d.flatten().any(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.len() == 64
                        && name.bytes().all(|b| b.is_ascii_hexdigit())
                        && e.metadata().map(|m| m.len() > 0).unwrap_or(false)
                })
            })
            .unwrap_or(false)
    };
    let start = Instant::now();
    while !published_lock(&repo) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "restic never took its lock"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    holder.kill().unwrap();
    holder.wait().unwrap();
    let r = c.tool_with(&cfg, "offsite-sync", &[]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("locked")
            && r.stderr.contains("unlock")
            && r.stderr.contains("--unlock-stale"),
        "{}",
        r.stderr
    );
    assert_eq!(
        fs::read_dir(repo.join("locks")).unwrap().count(),
        1,
        "the lock is only removed on request"
    );
    c.tool_with(&cfg, "offsite-sync", &["--unlock-stale"]).ok();
}

/// An offsite backup older than local retention: its WAL was pruned locally before the
/// newest WAL snapshot, so the restore fetches it from the older snapshot that still holds
/// it (issue 11).
#[test]
fn old_offsite_backup_gets_its_wal_from_older_snapshots() {
    let c = Cluster::start(ClusterOptions::default());
    let (ocfg, _log) = with_offsite(&c, 10);
    let mut db = c.connect(5432);
    db.batch_execute("CREATE TABLE t (id serial, tag text); INSERT INTO t (tag) VALUES ('base')")
        .unwrap();
    let b1 = c.basebackup();
    let target = rows_around_target(&mut db, "old-before", "old-after");
    c.switch_and_wait(5432);
    sync(&c, &ocfg);

    // Local retention moves on: B2, then keep_last = 1 prunes B1 and the WAL before B2.
    db.batch_execute("INSERT INTO t (tag) VALUES ('later')")
        .unwrap();
    c.switch_and_wait(5432);
    let b2 = c.basebackup();
    c.switch_and_wait(5432);
    let mut cfg = pgpitr_config::Config::load(&ocfg).unwrap();
    cfg.retention = Some(pgpitr_config::RetentionConfig {
        keep_last: Some(1),
        ..Default::default()
    });
    let pcfg = c.write_config(&cfg, "offsite-prune.toml");
    let p = c.tool_with(&pcfg, "walprune", &["--json"]).ok();
    let p: serde_json::Value = serde_json::from_str(&p.stdout).unwrap();
    assert_eq!(p["delete_backups"], serde_json::json!([b1]), "{p}");
    assert!(!p["delete_objects"].as_array().unwrap().is_empty(), "{p}");
    let s = sync(&c, &ocfg);
    assert_eq!(s["backups_added"], serde_json::json!([b2]));

    // The machine is lost; restore from the old offsite backup B1.
    drop(db);
    c.stop_server(c.data());
    fs::remove_dir_all(&c.cfg.archive.dir).unwrap();
    fs::remove_dir_all(&c.cfg.backup.dir).unwrap();
    let into = c.root.join("from-old-offsite");
    c.track(&into);
    let r = c
        .tool_with(
            &ocfg,
            "pgpitr",
            &[
                "restore",
                "--from",
                "offsite",
                "--backup",
                &b1,
                "--to",
                &target.to_rfc3339(),
                "--into",
                into.to_str().unwrap(),
                "--port",
                "5433",
            ],
        )
        .ok();
    assert!(r.stderr.contains("2 snapshot(s)"), "{}", r.stderr);
    let mut rdb = c.connect(5433);
    assert_eq!(tags(&mut rdb), vec!["base", "old-before"]);
}

/// Without a terminal, offsite-sync passes restic's status on as a progress line every
/// `PGPITR_PROGRESS_SECONDS` (restic's own `RESTIC_PROGRESS_FPS`).
#[test]
fn sync_prints_restic_progress_without_a_terminal() {
    let c = Cluster::start(ClusterOptions::default());
    c.basebackup();
    let (cfg, _) = with_offsite(&c, 3);
    let fast = [("PGPITR_PROGRESS_SECONDS", "0.02")];
    let r = c.tool_env(&cfg, "offsite-sync", &fast, &[]).ok();
    assert!(
        r.stderr
            .lines()
            .any(|l| l.contains("restic: ") && l.contains("% (")),
        "{}",
        r.stderr
    );
    // Fetching for a restore from offsite: what has arrived so far, once per interval.
    let into = c.root.join("from-offsite-progress");
    c.track(&into);
    let r = c
        .tool_env(
            &cfg,
            "pgpitr",
            &fast,
            &[
                "restore",
                "--from",
                "offsite",
                "--to",
                "latest",
                "--into",
                into.to_str().unwrap(),
                "--port",
                "5437",
            ],
        )
        .ok();
    assert!(
        r.stderr
            .lines()
            .any(|l| l.contains("restic restore of ") && l.contains("MiB so far")),
        "{}",
        r.stderr
    );
}
