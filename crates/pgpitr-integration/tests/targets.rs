//! The acceptance gate: for every target kind, with and without encryption, a sentinel row
//! committed just before the target is present after the restore, one committed just after
//! is absent, and the row count matches. The plain run archives with look-ahead and restores
//! with prefetching; the encrypted run with both off (issue 14), so each path passes the gate.

use chrono::Utc;
use pgpitr_integration::{tags, Cluster, ClusterOptions};
use std::time::{Duration, Instant};

fn insert(db: &mut pgpitr_pg::Client, tag: &str) {
    db.execute("INSERT INTO t (tag) VALUES ($1)", &[&tag])
        .unwrap();
}

fn count(db: &mut pgpitr_pg::Client) -> i64 {
    db.query_one("SELECT count(*) FROM t", &[]).unwrap().get(0)
}

struct Case {
    target: String,
    before: &'static str,
    after: &'static str,
    rows: i64,
}

fn gate(encrypted: bool, speed: bool) {
    let mut c = Cluster::start(ClusterOptions {
        encrypted,
        ..Default::default()
    });
    c.cfg.archive.parallel = Some(if speed { 2 } else { 1 });
    c.cfg.restore.prefetch = if speed { 8 } else { 0 };
    std::fs::write(&c.cfg_path, c.cfg.to_toml()).unwrap();
    let mut db = c.connect(5432);
    db.batch_execute("CREATE TABLE t (id serial PRIMARY KEY, tag text NOT NULL)")
        .unwrap();
    for i in 0..10 {
        insert(&mut db, &format!("base-{i}"));
    }
    insert(&mut db, "pre-backup");
    let rows_at_backup = count(&mut db);
    let backup = c.basebackup();
    assert!(c.cfg.backup.dir.join(&backup).join("backup.json").is_file());
    insert(&mut db, "post-backup");
    let gap = Duration::from_millis(1100);

    let mut cases = vec![Case {
        target: "immediate".into(),
        before: "pre-backup",
        after: "post-backup",
        rows: rows_at_backup,
    }];

    // time
    insert(&mut db, "time-before");
    let rows = count(&mut db);
    std::thread::sleep(gap);
    let t = Utc::now();
    std::thread::sleep(gap);
    insert(&mut db, "time-after");
    cases.push(Case {
        target: t.to_rfc3339(),
        before: "time-before",
        after: "time-after",
        rows,
    });

    // xid
    let mut tx = db.transaction().unwrap();
    tx.execute("INSERT INTO t (tag) VALUES ('xid-before')", &[])
        .unwrap();
    let xid: i64 = tx.query_one("SELECT txid_current()", &[]).unwrap().get(0);
    tx.commit().unwrap();
    let rows = count(&mut db);
    insert(&mut db, "xid-after");
    cases.push(Case {
        target: format!("xid:{xid}"),
        before: "xid-before",
        after: "xid-after",
        rows,
    });

    // name
    insert(&mut db, "name-before");
    let rows = count(&mut db);
    db.execute("SELECT pg_create_restore_point('before-name-after')", &[])
        .unwrap();
    insert(&mut db, "name-after");
    cases.push(Case {
        target: "name:before-name-after".into(),
        before: "name-before",
        after: "name-after",
        rows,
    });

    // lsn
    insert(&mut db, "lsn-before");
    let rows = count(&mut db);
    let lsn: String = db
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .unwrap()
        .get(0);
    insert(&mut db, "lsn-after");
    cases.push(Case {
        target: format!("lsn:{lsn}"),
        before: "lsn-before",
        after: "lsn-after",
        rows,
    });

    // relative: resolved when the restore runs
    insert(&mut db, "rel-before");
    let rel_rows = count(&mut db);
    std::thread::sleep(gap);
    let rel_at = Instant::now();
    // The tool reads the clock after it has started, so its "N seconds ago" lands a little
    // after `rel_at` on a loaded machine; this side gets a wider gap.
    std::thread::sleep(3 * gap);
    insert(&mut db, "rel-after");

    insert(&mut db, "final");
    let total = count(&mut db);
    c.switch_and_wait(5432);

    // Whole seconds, rounded up, as an operator would type: the target lands at most one
    // second before `rel_at` (still after "rel-before", committed 1.1 s before it).
    let secs = rel_at.elapsed().as_secs_f64().ceil() as u64;
    cases.push(Case {
        target: format!("{secs} seconds ago"),
        before: "rel-before",
        after: "rel-after",
        rows: rel_rows,
    });
    cases.push(Case {
        target: "latest".into(),
        before: "final",
        after: "no-such-row",
        rows: total,
    });

    for (i, case) in cases.iter().enumerate() {
        let into = c.root.join(format!("restore-{i}"));
        let port = 5433 + i as u16;
        let target = if case.target.ends_with(" ago") {
            // keep the relative target anchored to the same instant
            format!(
                "{} seconds ago",
                rel_at.elapsed().as_secs_f64().ceil() as u64
            )
        } else {
            case.target.clone()
        };
        let r = c.restore(&target, &into, port, &["--json"]).ok();
        let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(report["backup_id"], backup.as_str(), "{target}");
        assert!(
            report["timeline"].as_u64().unwrap() >= 2,
            "{target}: {report}"
        );
        assert!(report["stopped_at_lsn"].is_string(), "{target}: {report}");
        let mut rdb = c.connect(port);
        let got = tags(&mut rdb);
        assert!(
            got.iter().any(|t| t == case.before),
            "{target}: {:?} missing from {got:?}",
            case.before
        );
        assert!(
            !got.iter().any(|t| t == case.after),
            "{target}: {:?} present in {got:?}",
            case.after
        );
        assert_eq!(count(&mut rdb), case.rows, "{target}: row count");
        // The restored server has promoted and accepts writes.
        rdb.execute("INSERT INTO t (tag) VALUES ('written-after-restore')", &[])
            .unwrap();
        drop(rdb);
        // Prefetching leaves nothing behind once recovery has ended.
        let spool = into.join("pg_wal").join(pgpitr_wal::prefetch::SPOOL_DIR);
        let t0 = Instant::now();
        while spool.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{target}: spool left"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        c.discard(&into);
    }
}

#[test]
fn every_target_kind_plain_lookahead_prefetch() {
    gate(false, true);
}

#[test]
fn every_target_kind_encrypted_one_by_one() {
    gate(true, false);
}
