//! Life after a restore (issue 11): backups B1, B2 on timeline 1; a restore to a point
//! between them becomes the new primary (`--archive` into a new folder, or `--in-place`);
//! it archives on timeline 2 and takes B3, B4; restores to a time on timeline 2 and to
//! `latest` give timeline 2's rows and none of the abandoned branch's; a restore to a time
//! on timeline 1 before the switch still works; and a backup of the restored primary (B4)
//! restores to every target kind. Runs on PostgreSQL 16 too (PGPITR_PG_BIN, see
//! scripts/test.sh).

use pgpitr_integration::{rows_around_target, tags, Cluster, ClusterOptions};
use pgpitr_pg::Client;
use std::fs;
use std::path::Path;
use std::time::Duration;

const ABANDONED: [&str; 3] = ["x1-abandoned", "x2-abandoned", "x3-abandoned"];

fn insert(db: &mut Client, tag: &str) {
    db.execute("INSERT INTO t (tag) VALUES ($1)", &[&tag])
        .unwrap();
}

fn count(db: &mut Client) -> i64 {
    db.query_one("SELECT count(*) FROM t", &[]).unwrap().get(0)
}

fn json(r: &pgpitr_integration::Run) -> serde_json::Value {
    serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", r.stdout, r.stderr))
}

/// Timeline 1 up to the accident: a1, B1, p1 | T0 | p2, p3 | T1 | x1, B2, x2, x3 (archived).
struct Tl1 {
    b1: String,
    t0: chrono::DateTime<chrono::Utc>,
    t1: chrono::DateTime<chrono::Utc>,
}

fn timeline_one(c: &Cluster, db: &mut Client) -> Tl1 {
    db.batch_execute("CREATE TABLE t (id serial PRIMARY KEY, tag text NOT NULL)")
        .unwrap();
    insert(db, "a1");
    let b1 = c.basebackup();
    let t0 = rows_around_target(db, "p1", "p2");
    let t1 = rows_around_target(db, "p3", ABANDONED[0]);
    c.basebackup(); // B2
    insert(db, ABANDONED[1]);
    insert(db, ABANDONED[2]);
    c.switch_and_wait(5432);
    Tl1 { b1, t0, t1 }
}

fn assert_no_abandoned(got: &[String], what: &str) {
    for a in ABANDONED {
        assert!(
            !got.iter().any(|t| t == a),
            "{what}: abandoned row {a} in {got:?}"
        );
    }
}

/// Restores to `target` into a fresh folder, checks the rows exactly, discards it.
fn restore_rows(c: &Cluster, name: &str, port: u16, target: &str, extra: &[&str]) -> Vec<String> {
    let into = c.root.join(name);
    let r = c.restore(target, &into, port, &[&["--json"], extra].concat());
    let r = r.ok();
    let rep = json(&r);
    assert_eq!(rep["promoted"], true, "{rep}");
    let mut db = c.connect(port);
    let got = tags(&mut db);
    drop(db);
    c.discard(&into);
    let _ = fs::remove_file(into.with_file_name(format!("{name}.pgpitr-restore.log")));
    got
}

fn auto_conf_recovery_lines(data: &Path) -> Vec<String> {
    fs::read_to_string(data.join("postgresql.auto.conf"))
        .unwrap()
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !t.starts_with('#') && (t.starts_with("recovery_") || t.starts_with("restore_command"))
        })
        .map(str::to_string)
        .collect()
}

/// After the switch: the new primary (on `port`, configured by `cfg_path`) writes b1 | T2 |
/// b2, takes B4, writes b3; then restores to T2, latest, and T0 on timeline 1 are checked,
/// and B4 restores to every target kind.
fn after_the_switch(c: &Cluster, cfg_path: &Path, port: u16, tl1: &Tl1) {
    let mut db = c.connect(port);
    assert_eq!(tags(&mut db), vec!["a1", "p1", "p2", "p3"]);
    let t2 = rows_around_target(&mut db, "b1", "b2");
    c.switch_and_wait(port);
    let b4 = c
        .tool_with(cfg_path, "basebackup", &[])
        .ok()
        .stdout
        .trim()
        .to_string();
    insert(&mut db, "b3");
    c.switch_and_wait(port);

    // A time on timeline 2, with exact sentinel boundaries.
    let got = restore_rows(c, "r-t2", 5440, &t2.to_rfc3339(), &[]);
    assert_eq!(
        got,
        vec!["a1", "b1", "p1", "p2", "p3"],
        "time on timeline 2"
    );
    // latest: all of timeline 2, nothing of the abandoned branch.
    let got = restore_rows(c, "r-latest", 5441, "latest", &[]);
    assert_eq!(
        got,
        vec!["a1", "b1", "b2", "b3", "p1", "p2", "p3"],
        "latest"
    );
    assert_no_abandoned(&got, "latest");
    // A time on timeline 1 before the switch, along timeline 2's history and along 1's.
    let got = restore_rows(c, "r-t0", 5442, &tl1.t0.to_rfc3339(), &[]);
    assert_eq!(
        got,
        vec!["a1", "p1"],
        "time on timeline 1 before the switch"
    );
    let got = restore_rows(
        c,
        "r-t0-tl1",
        5443,
        &tl1.t0.to_rfc3339(),
        &["--timeline", "1", "--backup", &tl1.b1],
    );
    assert_eq!(got, vec!["a1", "p1"], "timeline 1 explicitly");

    // B4, a backup of the restored primary, restores to every target kind.
    every_target_kind_from(c, &mut db, &b4);
}

/// Sentinel rows around each target kind written after `backup`; each restore uses it.
fn every_target_kind_from(c: &Cluster, db: &mut Client, backup: &str) {
    let mut cases: Vec<(String, &str, &str, i64)> = Vec::new();
    let primary_port: u16 = db
        .query_one("SELECT current_setting('port')", &[])
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap();
    insert(db, "k-time-before");
    let n = count(db);
    std::thread::sleep(Duration::from_millis(1100));
    let t = chrono::Utc::now();
    std::thread::sleep(Duration::from_millis(1100));
    insert(db, "k-time-after");
    cases.push((t.to_rfc3339(), "k-time-before", "k-time-after", n));

    let mut tx = db.transaction().unwrap();
    tx.execute("INSERT INTO t (tag) VALUES ('k-xid-before')", &[])
        .unwrap();
    let xid: i64 = tx.query_one("SELECT txid_current()", &[]).unwrap().get(0);
    tx.commit().unwrap();
    let n = count(db);
    insert(db, "k-xid-after");
    cases.push((format!("xid:{xid}"), "k-xid-before", "k-xid-after", n));

    insert(db, "k-name-before");
    let n = count(db);
    db.execute("SELECT pg_create_restore_point('k-point')", &[])
        .unwrap();
    insert(db, "k-name-after");
    cases.push(("name:k-point".into(), "k-name-before", "k-name-after", n));

    insert(db, "k-lsn-before");
    let n = count(db);
    let lsn: String = db
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .unwrap()
        .get(0);
    insert(db, "k-lsn-after");
    cases.push((format!("lsn:{lsn}"), "k-lsn-before", "k-lsn-after", n));

    insert(db, "k-final");
    let n = count(db);
    c.switch_and_wait(primary_port);
    cases.push(("latest".into(), "k-final", "no-such-row", n));
    cases.push(("immediate".into(), "b2", "b3", -1));

    for (i, (target, before, after, rows)) in cases.iter().enumerate() {
        let name = format!("r-b4-{i}");
        let into = c.root.join(&name);
        let p = 5450 + i as u16;
        let r = c
            .restore(target, &into, p, &["--json", "--backup", backup])
            .ok();
        let rep = json(&r);
        assert_eq!(rep["backup_id"], backup, "{target}: {rep}");
        let mut rdb = c.connect(p);
        let got = tags(&mut rdb);
        assert!(
            got.iter().any(|t| t == before),
            "{target}: {before} missing from {got:?}"
        );
        assert!(
            !got.iter().any(|t| t == after),
            "{target}: {after} present in {got:?}"
        );
        assert_no_abandoned(&got, target);
        if *rows >= 0 {
            assert_eq!(count(&mut rdb), *rows, "{target}: row count");
        }
        // Promoted, writable, and nothing of this restore's recovery settings left behind.
        rdb.execute("INSERT INTO t (tag) VALUES ('written-after')", &[])
            .unwrap();
        drop(rdb);
        assert_eq!(
            auto_conf_recovery_lines(&into),
            Vec::<String>::new(),
            "{target}: recovery settings left in postgresql.auto.conf"
        );
        assert!(
            !into.join("pgpitr-restore.log").exists(),
            "{target}: the restore log is inside the data folder"
        );
        c.discard(&into);
    }
}

#[test]
fn restored_primary_by_archive_restores_to_every_target() {
    let c = Cluster::start(ClusterOptions::default());
    let mut db = c.connect(5432);
    let tl1 = timeline_one(&c, &mut db);
    drop(db);

    // The accident is noticed: the old primary stops, a restore to T1 becomes the primary.
    c.stop_server(c.data());
    let r1 = c.root.join("r1");
    let out = c
        .restore(&tl1.t1.to_rfc3339(), &r1, 5433, &["--archive", "--json"])
        .ok();
    let rep = json(&out);
    assert_eq!(rep["timeline"], 2, "{rep}");
    assert_eq!(rep["promoted"], true, "{rep}");
    assert_eq!(
        auto_conf_recovery_lines(&r1),
        Vec::<String>::new(),
        "the promoted server keeps recovery settings"
    );
    assert!(!r1.join("pgpitr-restore.log").exists());
    assert!(c.root.join("r1.pgpitr-restore.log").is_file());

    // A backup made by an older pgpitr carried its recovery settings and its restore log
    // inside the data folder: put them back as it left them; the next restores must not care.
    let stale = format!(
        "\n# added by pgpitr restore (older version)\nrestore_command = 'false'\nrecovery_target_time = '{}'\nrecovery_target_action = 'promote'\n",
        tl1.t0.format("%Y-%m-%d %H:%M:%S%.6f+00")
    );
    let auto = r1.join("postgresql.auto.conf");
    let mut text = fs::read_to_string(&auto).unwrap();
    text.push_str(&stale);
    fs::write(&auto, text).unwrap();
    fs::write(
        r1.join("pgpitr-restore.log"),
        "LOG:  recovery stopping before commit of transaction 1, time 2000-01-01\n",
    )
    .unwrap();
    c.chown(&r1);

    let mut cfg2 = c.cfg.clone();
    cfg2.postgres.port = 5433;
    cfg2.postgres.data_dir = r1.clone();
    let cfg2_path = c.write_config(&cfg2, "new-primary.toml");
    // B3
    c.tool_with(&cfg2_path, "basebackup", &[]).ok();
    after_the_switch(&c, &cfg2_path, 5433, &tl1);

    // The neutralised lines are reported, and the stale log's stop line is not quoted.
    let into = c.root.join("r-report");
    let r = c.restore("immediate", &into, 5460, &["--json"]).ok();
    let rep = json(&r);
    let neutralised = rep["neutralised"].as_array().unwrap();
    assert!(
        neutralised
            .iter()
            .any(|l| l.as_str().unwrap().contains("recovery_target_time")),
        "{rep}"
    );
    assert!(
        !rep["stop_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("2000-01-01"),
        "{rep}"
    );
    c.discard(&into);
}

#[test]
fn restored_primary_in_place_restores_to_every_target() {
    let c = Cluster::start(ClusterOptions::default());
    let mut db = c.connect(5432);
    let tl1 = timeline_one(&c, &mut db);
    drop(db);

    // --dry-run shows every step and changes nothing.
    let dry = c
        .tool(
            "pgpitr",
            &[
                "restore",
                "--in-place",
                "--to",
                &tl1.t1.to_rfc3339(),
                "--dry-run",
            ],
        )
        .ok();
    for step in [
        "stop the server",
        "safety copy: rename",
        "restore backup",
        "restart",
        "base backup",
        "go back",
    ] {
        assert!(
            dry.stdout.contains(step),
            "{step} missing from:\n{}",
            dry.stdout
        );
    }
    assert!(dry.stdout.contains("nothing was changed"));
    assert_eq!(
        tags(&mut c.connect(5432)).len(),
        7,
        "dry run changed the data"
    );

    let out = c
        .tool(
            "pgpitr",
            &[
                "restore",
                "--in-place",
                "--to",
                &tl1.t1.to_rfc3339(),
                "--json",
            ],
        )
        .ok();
    let rep = json(&out);
    assert_eq!(rep["restore"]["timeline"], 2, "{rep}");
    assert_eq!(rep["restore"]["backup_id"], tl1.b1.as_str(), "{rep}");
    let b3 = rep["new_backup"]
        .as_str()
        .expect("base backup taken on timeline 2");
    let copy = rep["safety_copy"]["path"].as_str().unwrap();
    assert!(copy.contains(".pre-restore-"), "{rep}");
    assert!(rep["undo"].as_str().unwrap().contains(copy), "{rep}");
    // The safety copy is the old cluster, untouched (it has the abandoned rows' WAL).
    assert!(Path::new(copy).join("global/pg_control").is_file());
    // B3 is on timeline 2.
    let info: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(c.cfg.backup.dir.join(b3).join("backup.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(info["timeline"], 2, "{info}");
    // Settings pgpitr wrote for the replay are gone; the log is beside the data folder.
    assert_eq!(auto_conf_recovery_lines(c.data()), Vec::<String>::new());
    let auto = fs::read_to_string(c.data().join("postgresql.auto.conf")).unwrap();
    assert!(!auto.contains("archive_command"), "{auto}");
    assert!(!c.data().join("pgpitr-restore.log").exists());
    assert!(!c.data().join("recovery.signal").exists());
    assert!(!c.root.join("data.pgpitr-in-place.json").exists());

    after_the_switch(&c, &c.cfg_path, 5432, &tl1);
}

/// Retention and status after the switch. These depend on the history model of issue 11
/// (branch `history`): newest means newest on the live timeline, retention keeps what the
/// live timeline's newest backups need.
#[test]
fn retention_and_status_follow_the_live_timeline() {
    let c = Cluster::start(ClusterOptions::default());
    let mut db = c.connect(5432);
    let tl1 = timeline_one(&c, &mut db);
    // The old primary runs on: tonight's backup on timeline 1 (higher LSNs than B3/B4 will have).
    insert(&mut db, "x-night");
    let _night = c.basebackup();
    c.switch_and_wait(5432);
    drop(db);
    c.stop_server(c.data());
    let r1 = c.root.join("r1");
    c.restore(&tl1.t1.to_rfc3339(), &r1, 5433, &["--archive"])
        .ok();
    let mut cfg2 = c.cfg.clone();
    cfg2.postgres.port = 5433;
    cfg2.postgres.data_dir = r1.clone();
    cfg2.retention = Some(pgpitr_config::RetentionConfig {
        keep_last: Some(2),
        ..Default::default()
    });
    let cfg2_path = c.write_config(&cfg2, "new-primary.toml");
    let mut db2 = c.connect(5433);
    insert(&mut db2, "b1");
    let b3 = c
        .tool_with(&cfg2_path, "basebackup", &[])
        .ok()
        .stdout
        .trim()
        .to_string();
    insert(&mut db2, "b2");
    let b4 = c
        .tool_with(&cfg2_path, "basebackup", &[])
        .ok()
        .stdout
        .trim()
        .to_string();
    c.switch_and_wait(5433);

    c.tool_with(&cfg2_path, "walprune", &[]).ok();
    let kept: Vec<String> = fs::read_dir(&c.cfg.backup.dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("backup.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    // ASSERTION (history model): keep_last = 2 keeps the live timeline's newest backups.
    assert!(
        kept.contains(&b3) && kept.contains(&b4),
        "kept {kept:?}, want {b3} and {b4}"
    );
    let st = json(
        &c.tool_with(&cfg2_path, "pgpitr", &["status", "--json"])
            .ok(),
    );
    // ASSERTION (history model): status describes timeline 2, its newest backup is B4 and
    // the window is not inverted.
    assert_eq!(st["window"]["timeline"], 2, "{st}");
    let backups = st["backups"].as_array().unwrap();
    assert_eq!(backups.last().unwrap()["id"], b4.as_str(), "{st}");
    let (from, to) = (
        st["window"]["oldest"].as_str().unwrap(),
        st["window"]["newest"].as_str().unwrap(),
    );
    assert!(
        chrono::DateTime::parse_from_rfc3339(from).unwrap()
            <= chrono::DateTime::parse_from_rfc3339(to).unwrap(),
        "inverted window: {st}"
    );
    // ASSERTION (history model): the window reaches past B4 on timeline 2.
    assert!(
        chrono::DateTime::parse_from_rfc3339(to).unwrap()
            >= chrono::DateTime::parse_from_rfc3339(
                backups.last().unwrap()["stop_time"].as_str().unwrap()
            )
            .unwrap(),
        "window ends before the newest backup: {st}"
    );
    // Restores still reach timeline 2's latest.
    let got = restore_rows(&c, "r-latest", 5441, "latest", &[]);
    assert_eq!(got, vec!["a1", "b1", "b2", "p1", "p2", "p3"]);
}
