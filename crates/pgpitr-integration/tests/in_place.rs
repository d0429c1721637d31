//! `pgpitr restore --in-place` (pg_ctl variant; the systemd variant runs in the NixOS rig):
//! killed at each step it leaves the old data folder or the safety copy intact and says how
//! to finish (--resume) or undo (--undo); refusals change nothing. And `--pause`,
//! `--retarget`, `--promote`.

use pgpitr_integration::json_schema::{assert_valid, schemas};
use pgpitr_integration::{rows_around_target, tags, Cluster, ClusterOptions, Run};
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn sysid(c: &Cluster, data: &Path) -> String {
    let out = Command::new(c.bins.path("pg_controldata"))
        .arg("-D")
        .arg(data)
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.strip_prefix("Database system identifier:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no cluster in {}", data.display()))
}

/// Runs `pgpitr restore --in-place ...` with PGPITR_TEST_HOLD_AT=step, waits until it holds
/// there and kills it with SIGKILL.
fn run_and_kill_at(c: &Cluster, step: &str, target: &str) {
    let mut child = Command::new(c.tools.join("pgpitr"))
        .arg("--config")
        .arg(&c.cfg_path)
        .args(["restore", "--in-place", "--to", target])
        .env("PGPITR_TEST_HOLD_AT", step)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let marker = format!("test hold at {step}");
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(180)) {
            Ok(l) if l.contains(&marker) => break,
            Ok(l) => seen.push(l),
            Err(e) => {
                let _ = child.kill();
                panic!("pgpitr never held at {step} ({e}): {}", seen.join("\n"));
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

fn journal(c: &Cluster) -> PathBuf {
    c.root.join("data.pgpitr-in-place.json")
}

fn copies(c: &Cluster) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(&c.root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("data.pre-restore-"))
        .collect();
    v.sort();
    v
}

/// A fresh instance (a1, B1, keep | T | lost) killed in-place at `step`; then `--undo`
/// (back on the old data) or `--resume` (the restore completes at T).
fn killed_at(step: &str, undo: bool) {
    let c = Cluster::start(ClusterOptions::default());
    let mut db = c.connect(5432);
    db.batch_execute("CREATE TABLE t (id serial PRIMARY KEY, tag text NOT NULL); INSERT INTO t (tag) VALUES ('a1')")
        .unwrap();
    c.basebackup();
    let t = rows_around_target(&mut db, "keep", "lost");
    c.switch_and_wait(5432);
    drop(db);
    let id = sysid(&c, c.data());
    let target = t.to_rfc3339();
    run_and_kill_at(&c, step, &target);

    // The old data is intact: in the data folder or as the safety copy.
    let j: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(journal(&c)).unwrap()).unwrap();
    if matches!(step, "stop" | "safety-copy") {
        assert_eq!(sysid(&c, c.data()), id, "{step}");
        assert!(!c.data().join("recovery.signal").exists(), "{step}");
        assert!(copies(&c).is_empty(), "{step}");
    } else {
        let copy = PathBuf::from(j["safety_copy"]["path"].as_str().unwrap());
        assert!(copy.is_dir(), "{step}: safety copy missing: {j}");
        assert_eq!(copies(&c), vec![copy.clone()], "{step}");
        assert_eq!(sysid(&c, &copy), id, "{step}");
        assert!(!copy.join("recovery.signal").exists(), "{step}");
    }

    // The next run refuses and says how to finish or undo.
    let again = c.tool("pgpitr", &["restore", "--in-place", "--to", &target]);
    assert_ne!(again.code, 0, "{step}: a second run went ahead");
    for w in [
        // The replay is part of the journal's `restore` step.
        format!(
            "interrupted during step `{}`",
            if step == "replay" { "restore" } else { step }
        ),
        "To finish it: `pgpitr restore --in-place --resume".into(),
        "To undo it:".into(),
    ] {
        assert!(
            again.stderr.contains(&w),
            "{step}: {w:?} not in {}",
            again.stderr
        );
    }

    // The machine rebooted now: preseed, which runs before the server, refuses with the
    // same two ways out and touches nothing (it would otherwise replay to the archive's end
    // over the operator's target). What it would create or rename sits beside the data
    // folder (staging, quarantine, the folder itself); the replay server a kill at `replay`
    // leaves running still changes the folder's own contents, so those are not compared.
    let beside = || -> (Vec<String>, String) {
        let parent = c.data().parent().unwrap();
        let mut v: Vec<String> = fs::read_dir(parent)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".preseed.lock"))
            .collect();
        v.sort();
        (v, fs::read_to_string(journal(&c)).unwrap())
    };
    let before = beside();
    let p = c.tool("preseed", &[]);
    assert_ne!(p.code, 0, "{step}: preseed went ahead: {}", p.stderr);
    assert!(
        p.stderr.contains("interrupted during step")
            && p.stderr.contains("--resume")
            && p.stderr.contains("preseed leaves"),
        "{step}: {}",
        p.stderr
    );
    assert_eq!(beside(), before, "{step}: preseed touched something");

    if undo {
        let u = c
            .tool("pgpitr", &["restore", "--in-place", "--undo", "--json"])
            .ok();
        let schemas = schemas();
        let rep = assert_valid(&schemas, "pgpitr restore --in-place --undo", &u.stdout);
        assert!(
            rep["undone"]
                .as_str()
                .unwrap()
                .contains("back on the old data"),
            "{rep}"
        );
        assert_eq!(
            tags(&mut c.connect(5432)),
            vec!["a1", "keep", "lost"],
            "{step}: undo"
        );
        assert_eq!(sysid(&c, c.data()), id);
    } else {
        let r = c
            .tool(
                "pgpitr",
                &[
                    "restore",
                    "--in-place",
                    "--resume",
                    "--to",
                    &target,
                    "--json",
                ],
            )
            .ok();
        let schemas = schemas();
        let rep = assert_valid(&schemas, "pgpitr restore --in-place", &r.stdout);
        assert!(rep["new_backup"].is_string(), "{step}: {rep}");
        assert_eq!(
            tags(&mut c.connect(5432)),
            vec!["a1", "keep"],
            "{step}: resume"
        );
    }
    assert!(!journal(&c).exists(), "{step}: journal left behind");
}

#[test]
fn killed_before_stop_then_undone() {
    killed_at("stop", true);
}

#[test]
fn killed_after_stop_then_resumed() {
    killed_at("safety-copy", false);
}

#[test]
fn killed_after_safety_copy_then_undone() {
    killed_at("restore", true);
}

#[test]
fn killed_during_replay_then_resumed() {
    killed_at("replay", false);
}

#[test]
fn killed_during_replay_then_undone() {
    killed_at("replay", true);
}

#[test]
fn killed_before_restart_then_undone() {
    killed_at("restart", true);
}

#[test]
fn killed_before_base_backup_then_resumed() {
    killed_at("base-backup", false);
}

fn refused(r: Run, what: &str) -> String {
    assert_ne!(r.code, 0, "{what}: not refused: {}", r.stdout);
    assert!(
        r.stderr.contains("nothing was changed"),
        "{what}: {}",
        r.stderr
    );
    r.stderr
}

#[test]
fn refusals_change_nothing() {
    let c = Cluster::start(ClusterOptions::default());
    let mut db = c.connect(5432);
    db.batch_execute("CREATE TABLE t (id serial PRIMARY KEY, tag text NOT NULL); INSERT INTO t (tag) VALUES ('a1')")
        .unwrap();
    c.basebackup();
    db.batch_execute("INSERT INTO t (tag) VALUES ('a2')")
        .unwrap();
    c.switch_and_wait(5432);
    drop(db);

    // A service that cannot be stopped.
    let mut cfg = c.cfg.clone();
    cfg.postgres.service = Some("pgpitr-no-such-unit.service".into());
    let p = c.write_config(&cfg, "service.toml");
    let e = refused(
        c.tool_with(
            &p,
            "pgpitr",
            &["restore", "--in-place", "--to", "immediate"],
        ),
        "service",
    );
    assert!(e.contains("cannot be stopped"), "{e}");

    // The data folder is a mount point: a rename-style safety copy is impossible.
    let mnt = c.root.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let m = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512m", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("mount (run the tests as root)");
    assert!(m.success(), "mount -t tmpfs failed: the tests run as root");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _u = Unmount(mnt.clone());
    let mut cfg = c.cfg.clone();
    cfg.postgres.data_dir = mnt.clone();
    // The real data, copied so that the system identifier matches (with the server stopped:
    // a live server removes and renames files under a copy).
    c.stop_server(c.data());
    let cp = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", c.data().display()))
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(cp.success());
    c.start_server(c.data());
    let p = c.write_config(&cfg, "mount.toml");
    let e = refused(
        c.tool_with(
            &p,
            "pgpitr",
            &["restore", "--in-place", "--to", "immediate"],
        ),
        "mount point",
    );
    assert!(e.contains("mount point"), "{e}");

    // Short disk space: the data folder in a tmpfs too small for the restore.
    let small = c.root.join("small");
    fs::create_dir(&small).unwrap();
    let _u2 = Unmount(small.clone());
    c.stop_server(c.data());
    let used: u64 = String::from_utf8_lossy(
        &Command::new("du")
            .args(["-sk"])
            .arg(c.data())
            .output()
            .unwrap()
            .stdout,
    )
    .split_whitespace()
    .next()
    .unwrap()
    .parse()
    .unwrap();
    let size = format!("size={}k", used + 4096);
    assert!(Command::new("mount")
        .args(["-t", "tmpfs", "-o", &size, "tmpfs"])
        .arg(&small)
        .status()
        .unwrap()
        .success());
    let data2 = small.join("data");
    assert!(Command::new("cp")
        .arg("-a")
        .arg(c.data())
        .arg(&data2)
        .status()
        .unwrap()
        .success());
    c.start_server(c.data());
    let mut cfg = c.cfg.clone();
    cfg.postgres.data_dir = data2.clone();
    let p = c.write_config(&cfg, "small.toml");
    let e = refused(
        c.tool_with(
            &p,
            "pgpitr",
            &["restore", "--in-place", "--to", "immediate"],
        ),
        "disk space",
    );
    assert!(
        e.contains("not enough disk space") && e.contains("MiB") && e.contains("needs"),
        "{e}"
    );

    // Nothing changed: the instance still runs on its data with both rows.
    assert_eq!(tags(&mut c.connect(5432)), vec!["a1", "a2"]);
    assert!(copies(&c).is_empty());
    assert!(!journal(&c).exists());
}

#[test]
fn pause_look_retarget_promote() {
    let c = Cluster::start(ClusterOptions::default());
    let mut db = c.connect(5432);
    db.batch_execute("CREATE TABLE t (id serial PRIMARY KEY, tag text NOT NULL); INSERT INTO t (tag) VALUES ('a1'); CREATE ROLE nobody LOGIN")
        .unwrap();
    c.basebackup();
    let t1 = rows_around_target(&mut db, "p-before", "p-after");
    let t2 = rows_around_target(&mut db, "q-before", "q-after");
    c.switch_and_wait(5432);

    let into = c.root.join("paused");
    let r = c
        .restore(&t1.to_rfc3339(), &into, 5433, &["--pause", "--json"])
        .ok();
    let rep: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(rep["promoted"], false, "{rep}");
    let mut rdb = c.connect(5433);
    let in_recovery: bool = rdb
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    assert!(in_recovery);
    assert_eq!(tags(&mut rdb), vec!["a1", "p-before"]);
    assert!(
        rdb.execute("INSERT INTO t (tag) VALUES ('w')", &[])
            .is_err(),
        "a paused restore must be read-only"
    );
    drop(rdb);
    if c.account.is_some() {
        // As root, the paused server runs with pgpitr's access files: root and the server's
        // own OS user get in, another local user with a role of its name does not.
        let out = Command::new("runuser")
            .args(["-u", "nobody", "--"])
            .arg(c.bins.path("psql"))
            .arg("-h")
            .arg(&c.cfg.postgres.socket_dir)
            .args([
                "-p", "5433", "-U", "nobody", "-d", "postgres", "-Atc", "SELECT 1",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "nobody got into the paused restore");
        assert!(
            err.contains("authentication failed") || err.contains("no pg_hba.conf entry"),
            "refused for another reason than the access map: {err}"
        );
    }

    // Move the target later without starting over.
    let r = c
        .tool(
            "pgpitr",
            &[
                "restore",
                "--retarget",
                "--to",
                &t2.to_rfc3339(),
                "--into",
                into.to_str().unwrap(),
                "--json",
            ],
        )
        .ok();
    let rep: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(rep["promoted"], false, "{rep}");
    let mut rdb = c.connect(5433);
    assert_eq!(
        tags(&mut rdb),
        vec!["a1", "p-after", "p-before", "q-before"]
    );
    drop(rdb);
    // Backwards is refused.
    let back = c.tool(
        "pgpitr",
        &[
            "restore",
            "--retarget",
            "--to",
            &t1.to_rfc3339(),
            "--into",
            into.to_str().unwrap(),
        ],
    );
    assert_ne!(back.code, 0);
    assert!(back.stderr.contains("cannot go back"), "{}", back.stderr);

    // Promote: writable, new timeline, no recovery settings left.
    let r = c
        .tool(
            "pgpitr",
            &[
                "restore",
                "--promote",
                "--into",
                into.to_str().unwrap(),
                "--json",
            ],
        )
        .ok();
    let rep: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(rep["promoted"], true, "{rep}");
    assert_eq!(rep["timeline"], 2, "{rep}");
    let mut rdb = c.connect(5433);
    rdb.execute("INSERT INTO t (tag) VALUES ('written')", &[])
        .unwrap();
    assert_eq!(
        tags(&mut rdb),
        vec!["a1", "p-after", "p-before", "q-before", "written"]
    );
    let auto = fs::read_to_string(into.join("postgresql.auto.conf")).unwrap();
    assert!(
        !auto
            .lines()
            .any(|l| l.starts_with("recovery_target") || l.starts_with("restore_command")),
        "{auto}"
    );
    drop(rdb);
    drop(db);
}

/// The replay server starts without waiting for connections; `PgCtl::start` still returns
/// only once the postmaster is visible in postmaster.pid (pg_ctl itself returns before, and a
/// pgpitr killed in that gap left a postmaster starting unseen: `--undo` then put the old data
/// back under it). A server that cannot start is an error carrying its FATAL line.
#[test]
fn background_start_returns_once_the_postmaster_is_visible() {
    let c = Cluster::start(ClusterOptions::default());
    c.stop_server(c.data());
    let ctl = pgpitr_pg::PgCtl {
        bins: &c.bins,
        account: c.account.as_ref(),
        data_dir: c.data(),
    };
    let log = c.root.join("background.log");
    for _ in 0..3 {
        ctl.start(&log, "", false).unwrap();
        assert!(
            ctl.is_running(),
            "start returned before the postmaster was visible"
        );
        ctl.stop().unwrap();
    }
    let err = ctl
        .start(&log, "-c no_such_setting_pgpitr=1", false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("did not start") && err.contains("no_such_setting_pgpitr"),
        "{err}"
    );
    assert!(!ctl.is_running());
}
