//! walprune against a real server: after load, several backups and a timeline switch, a
//! tight policy prunes, and restores to the oldest and newest points still in the window
//! pass the sentinel gate; a concurrent basebackup is never deleted; verify finds each kind
//! of damage by name.

use pgpitr_config::RetentionConfig;
use pgpitr_integration::{rows_around_target, tags, Cluster, ClusterOptions};
use pgpitr_wal::store::Store;
use pgpitr_wal::WalName;
use std::fs;
use std::time::Duration;

fn load(db: &mut pgpitr_pg::Client, tag: &str) {
    db.execute(
        "INSERT INTO t (tag) SELECT $1 || '-' || g FROM generate_series(1, 20000) g",
        &[&tag],
    )
    .unwrap();
    db.execute("DELETE FROM t WHERE tag LIKE $1 || '-%'", &[&tag])
        .unwrap();
}

#[test]
fn prune_with_tight_policy_then_restore_oldest_and_newest() {
    let c = Cluster::start(ClusterOptions {
        metrics: true,
        ..Default::default()
    });
    let mut db = c.connect(5432);
    db.batch_execute("CREATE TABLE t (id serial, tag text)")
        .unwrap();
    load(&mut db, "w1");
    c.switch_and_wait(5432);
    let b1 = c.basebackup();
    load(&mut db, "w2");
    c.switch_and_wait(5432);
    let b2 = c.basebackup();
    db.batch_execute("INSERT INTO t (tag) VALUES ('after-b2')")
        .unwrap();
    load(&mut db, "w3");
    c.switch_and_wait(5432);
    // A timeline switch: restore with --archive becomes the new primary on timeline 2.
    let t_branch = rows_around_target(&mut db, "tl1-kept", "tl1-discarded");
    c.switch_and_wait(5432);
    let r1 = c.root.join("r1");
    c.restore(&t_branch.to_rfc3339(), &r1, 5433, &["--archive"])
        .ok();
    let mut db2 = c.connect(5433);
    load(&mut db2, "w4");
    c.switch_and_wait(5433);
    let b3 = {
        // Back up the new primary (timeline 2).
        let mut cfg = c.cfg.clone();
        cfg.postgres.port = 5433;
        let p = c.write_config(&cfg, "tl2.toml");
        c.tool_with(&p, "basebackup", &[])
            .ok()
            .stdout
            .trim()
            .to_string()
    };
    let newest_target = rows_around_target(&mut db2, "tl2-before", "tl2-after");
    c.switch_and_wait(5433);

    let store = Store::new(&c.cfg.archive.dir);
    let before: Vec<String> = store
        .list()
        .unwrap()
        .iter()
        .map(|o| o.name.to_string())
        .collect();
    let mut cfg = c.cfg.clone();
    cfg.retention = Some(RetentionConfig {
        keep_last: Some(2),
        ..Default::default()
    });
    let pcfg = c.write_config(&cfg, "prune.toml");

    // --dry-run lists exactly what would go, and deletes nothing.
    let dry = c
        .tool_with(&pcfg, "walprune", &["--dry-run", "--json"])
        .ok();
    let plan: serde_json::Value = serde_json::from_str(&dry.stdout).unwrap();
    assert_eq!(plan["delete_backups"], serde_json::json!([b1]));
    assert_eq!(
        plan["kept_backups"],
        serde_json::json!([b2.clone(), b3.clone()])
    );
    let doomed: Vec<String> = plan["delete_objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(!doomed.is_empty());
    assert!(plan["window_before"].is_array() && plan["window_after"].is_array());
    assert_eq!(store.list().unwrap().len(), before.len());
    assert!(c.cfg.backup.dir.join(&b1).exists());

    let r = c.tool_with(&pcfg, "walprune", &[]).ok();
    assert!(r.stdout.contains("restorable window after"), "{}", r.stdout);
    assert!(!c.cfg.backup.dir.join(&b1).exists());
    let after: Vec<String> = store
        .list()
        .unwrap()
        .iter()
        .map(|o| o.name.to_string())
        .collect();
    assert_eq!(after.len(), before.len() - doomed.len());
    for d in &doomed {
        assert!(!after.contains(d));
    }
    // History files are kept.
    assert!(after.contains(&"00000002.history".to_string()));
    let prom = fs::read_to_string(c.root.join("metrics/pgpitr_walprune_test.prom")).unwrap();
    assert!(
        prom.contains(&format!(
            "pgpitr_walprune_deleted_objects{{instance=\"test\"}} {}",
            doomed.len()
        )),
        "{prom}"
    );
    // verify agrees the archive is whole.
    c.tool_with(&pcfg, "pgpitr", &["verify"]).ok();

    // Oldest point still in the window: the end of the oldest kept backup (immediate).
    drop(db2);
    c.stop_server(&r1);
    let oldest = c.root.join("oldest");
    c.tool_with(
        &pcfg,
        "pgpitr",
        &[
            "restore",
            "--to",
            "immediate",
            "--backup",
            &b2,
            "--into",
            oldest.to_str().unwrap(),
            "--port",
            "5434",
        ],
    )
    .ok();
    c.track(&oldest);
    let mut o = c.connect(5434);
    let got = tags(&mut o);
    assert!(!got.contains(&"after-b2".to_string()), "{got:?}");
    drop(o);
    c.discard(&oldest);
    // Newest point: on timeline 2, from the timeline-1 backup b2's history or from b3.
    let newest = c.root.join("newest");
    c.restore(&newest_target.to_rfc3339(), &newest, 5435, &[])
        .ok();
    let mut n = c.connect(5435);
    let got = tags(&mut n);
    assert!(
        got.contains(&"tl2-before".to_string()) && !got.contains(&"tl2-after".to_string()),
        "{got:?}"
    );
    assert!(
        got.contains(&"tl1-kept".to_string()) && !got.contains(&"tl1-discarded".to_string()),
        "{got:?}"
    );
    assert!(got.contains(&"after-b2".to_string()));
}

#[test]
fn concurrent_basebackup_is_never_deleted() {
    let c = Cluster::start(ClusterOptions::default());
    let mut db = c.connect(5432);
    db.batch_execute(
        "CREATE TABLE big AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 60000) g",
    )
    .unwrap();
    c.basebackup();
    let mut cfg = c.cfg.clone();
    cfg.retention = Some(RetentionConfig {
        keep_last: Some(1),
        partial_grace_hours: 0,
        ..Default::default()
    });
    let pcfg = c.write_config(&cfg, "prune.toml");
    // A basebackup runs (level-19 compression makes it slow) while walprune tries.
    let mut slow = c.cfg.clone();
    slow.archive.level = 19;
    let scfg = c.write_config(&slow, "slow.toml");
    let bb = std::process::Command::new(c.tools.join("basebackup"))
        .arg("--config")
        .arg(&scfg)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until its folder exists (without backup.json).
    let start = std::time::Instant::now();
    let in_progress = loop {
        let dirs: Vec<_> = fs::read_dir(&c.cfg.backup.dir)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir() && !e.path().join("backup.json").exists())
            .collect();
        if let Some(d) = dirs.first() {
            break d.path();
        }
        assert!(start.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(20));
    };
    let r = c.tool_with(&pcfg, "walprune", &[]);
    assert_ne!(r.code, 0, "walprune must not run beside a basebackup");
    assert!(
        r.stderr.contains("basebackup or a restore is running"),
        "{}",
        r.stderr
    );
    assert!(in_progress.exists());
    let out = bb.wait_with_output().unwrap();
    assert!(out.status.success());
    // Afterwards the old backup goes and the new one stays.
    c.tool_with(&pcfg, "walprune", &[]).ok();
    assert!(in_progress.join("backup.json").exists());
    assert_eq!(pgpitr_backup_count(&c), 1);
}

fn pgpitr_backup_count(c: &Cluster) -> usize {
    fs::read_dir(&c.cfg.backup.dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("backup.json").exists())
        .count()
}

#[test]
fn verify_names_each_kind_of_damage() {
    let c = Cluster::start(ClusterOptions::default());
    let mut db = c.connect(5432);
    db.batch_execute("CREATE TABLE t (id serial, tag text)")
        .unwrap();
    let b = c.basebackup();
    for i in 0..5 {
        load(&mut db, &format!("v{i}"));
        c.switch_and_wait(5432);
    }
    // A timeline 2 so that there is a history file.
    let t = rows_around_target(&mut db, "x", "y");
    c.switch_and_wait(5432);
    let r1 = c.root.join("r1");
    c.restore(&t.to_rfc3339(), &r1, 5433, &["--archive"]).ok();
    let mut db2 = c.connect(5433);
    load(&mut db2, "tl2");
    c.switch_and_wait(5433);
    let r = c.tool("pgpitr", &["verify"]);
    assert_eq!(r.code, 0, "clean archive: {}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("restorable from"), "{}", r.stdout);

    let store = Store::new(&c.cfg.archive.dir);
    let segs: Vec<_> = store
        .list()
        .unwrap()
        .into_iter()
        .filter(|o| o.name.is_segment() && o.name.tli() == 1)
        .collect();
    let (deleted, truncated, flipped) = (&segs[2], &segs[3], &segs[4]);
    fs::remove_file(&deleted.path).unwrap();
    fs::write(&truncated.path, b"\x28\xb5").unwrap();
    let mut bytes = fs::read(&flipped.path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&flipped.path, bytes).unwrap();
    let hist = store.find(&WalName::History { tli: 2 }).unwrap().unwrap();
    fs::remove_file(&hist.path).unwrap();
    let damaged = c.cfg.backup.dir.join(&b).join("base.tar.zst");
    let mut bytes = fs::read(&damaged).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&damaged, bytes).unwrap();

    let r = c.tool("pgpitr", &["verify", "--json"]);
    assert_ne!(r.code, 0);
    let rep: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let problems = rep["problems"].as_array().unwrap();
    let has = |kind: &str, name: &str| {
        problems
            .iter()
            .any(|p| p["kind"] == kind && p["name"] == name)
    };
    assert!(has("gap", &deleted.name.to_string()), "{rep}");
    assert!(has("truncated", &truncated.name.to_string()), "{rep}");
    assert!(has("corrupt", &flipped.name.to_string()), "{rep}");
    assert!(has("history", "00000002.history"), "{rep}");
    assert!(has("backup", &b), "{rep}");
    // --quick sees names and sizes: the gap, the truncation, the history, not the flipped byte.
    let r = c.tool("pgpitr", &["verify", "--quick", "--json"]);
    assert_ne!(r.code, 0);
    let rep: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let problems = rep["problems"].as_array().unwrap();
    assert!(problems.iter().any(|p| p["kind"] == "truncated"));
    assert!(!problems.iter().any(|p| p["kind"] == "corrupt"));
    // A restore past the gap is refused before anything is touched, naming the segment.
    let into = c.root.join("never");
    let r = c.restore("latest", &into, 5434, &["--timeline", "1"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains(&deleted.name.to_string()), "{}", r.stderr);
    assert!(!into.exists());
}

/// Issue 15 item 6: a corrupt segment in the middle of the window cuts it there (the window
/// ends at the last transaction before the damage), verify says what to do next, and a new
/// base backup starts a new window after the damage.
#[test]
fn verify_cuts_the_window_at_a_corrupt_segment_and_names_the_next_step() {
    let c = Cluster::start(ClusterOptions::default());
    let mut db = c.connect(5432);
    db.batch_execute("CREATE TABLE t (id serial, tag text)")
        .unwrap();
    let b1 = c.basebackup();
    for i in 0..4 {
        load(&mut db, &format!("v{i}"));
        c.switch_and_wait(5432);
    }
    let store = Store::new(&c.cfg.archive.dir);
    let mut segs: Vec<_> = store
        .list()
        .unwrap()
        .into_iter()
        .filter(|o| o.name.is_segment())
        .collect();
    segs.sort_by_key(|o| o.name.to_string());
    // Segments after the backup's own: corrupt one with intact WAL on both sides.
    let bad = &segs[segs.len() - 3];
    let before = &segs[segs.len() - 4];
    let mut bytes = fs::read(&bad.path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&bad.path, bytes).unwrap();

    let r = c.tool("pgpitr", &["verify", "--json"]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let w = v["windows"].as_array().unwrap();
    assert_eq!(w.len(), 1, "{v}");
    assert_eq!(w[0]["from_backup"], b1.as_str(), "{v}");
    assert_eq!(w[0]["cut_at"], bad.name.to_string().as_str(), "{v}");
    assert_eq!(
        w[0]["last_segment"],
        before.name.to_string().as_str(),
        "{v}"
    );
    let seg_size = 16u64 << 20;
    let to_lsn: pgpitr_wal::Lsn = w[0]["to_lsn"].as_str().unwrap().parse().unwrap();
    assert!(
        to_lsn.segno(seg_size) < bad.name.segno(seg_size).unwrap(),
        "the window ends before the damaged segment: {v}"
    );
    let from = chrono::DateTime::parse_from_rfc3339(w[0]["from"].as_str().unwrap()).unwrap();
    let to = chrono::DateTime::parse_from_rfc3339(w[0]["to"].as_str().unwrap()).unwrap();
    assert!(from < to, "{v}");
    let steps: Vec<&str> = v["next_steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(steps[0].contains("take a new base backup now"), "{steps:?}");
    assert!(
        steps.iter().any(
            |s| s.contains("find what removed or damaged") && s.contains(&bad.name.to_string())
        ),
        "{steps:?}"
    );
    // The same in the human output.
    let h = c.tool("pgpitr", &["verify"]);
    assert_ne!(h.code, 0);
    assert!(
        h.stdout.contains(&format!("CUT at {}", bad.name))
            && h.stdout.contains("next step: take a new base backup now"),
        "{}",
        h.stdout
    );
    // A new base backup: a second window starts after the damage and runs to the newest WAL.
    load(&mut db, "after");
    let b2 = c.basebackup();
    c.switch_and_wait(5432);
    let v: serde_json::Value =
        serde_json::from_str(&c.tool("pgpitr", &["verify", "--json"]).stdout).unwrap();
    let w = v["windows"].as_array().unwrap();
    assert_eq!(w.len(), 2, "{v}");
    assert_eq!(w[0]["cut_at"], bad.name.to_string().as_str(), "{v}");
    assert_eq!(w[1]["from_backup"], b2.as_str(), "{v}");
    assert!(w[1]["cut_at"].is_null(), "{v}");
    // The damaged segment gone: `status` (same computation) starts its window at b2 and lists
    // the stretch from b1 that the gap ends.
    fs::remove_file(&bad.path).unwrap();
    let st: serde_json::Value =
        serde_json::from_str(&c.tool("pgpitr", &["status", "--json"]).ok().stdout).unwrap();
    let win = &st["window"];
    let b2_stop = v["windows"][1]["from"].as_str().unwrap();
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(win["oldest"].as_str().unwrap()).unwrap(),
        chrono::DateTime::parse_from_rfc3339(b2_stop).unwrap(),
        "{st}"
    );
    let earlier = win["earlier"].as_array().unwrap();
    assert_eq!(earlier.len(), 1, "{st}");
    assert_eq!(earlier[0]["from_backup"], b1.as_str(), "{st}");
    assert_eq!(earlier[0]["cut_at"], bad.name.to_string().as_str(), "{st}");
    let human = c.tool("pgpitr", &["status"]).ok().stdout;
    assert!(
        human.contains(&format!("a gap at {} ends it", bad.name)),
        "{human}"
    );
}
