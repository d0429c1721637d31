//! A restore that becomes the new primary archives on its new timeline into the same
//! archive, and a second point-in-time restore follows the timeline history.

use pgpitr_integration::{rows_around_target, tags, Cluster, ClusterOptions};

#[test]
fn second_restore_follows_the_new_timeline() {
    let c = Cluster::start(ClusterOptions::default());
    let mut db = c.connect(5432);
    db.batch_execute("CREATE TABLE t (id serial PRIMARY KEY, tag text NOT NULL); INSERT INTO t (tag) VALUES ('a1')")
        .unwrap();
    c.basebackup();
    let t1 = rows_around_target(&mut db, "a2", "a3-discarded");
    c.switch_and_wait(5432);

    // First restore becomes the new primary and keeps archiving (--archive).
    let r1 = c.root.join("r1");
    let out = c
        .restore(&t1.to_rfc3339(), &r1, 5433, &["--archive", "--json"])
        .ok();
    let rep: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(rep["timeline"], 2);
    let mut db2 = c.connect(5433);
    assert_eq!(tags(&mut db2), vec!["a1", "a2"]);
    let t2 = rows_around_target(&mut db2, "b1", "b2-after");
    c.switch_and_wait(5433);
    // The old primary goes on writing timeline 1 past the branch point: another history.
    db.batch_execute("INSERT INTO t (tag) VALUES ('a4-old-primary')")
        .unwrap();
    c.switch_and_wait(5432);

    let status = c.tool("pgpitr", &["status", "--json"]).ok();
    let st: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(st["timelines"], serde_json::json!([1, 2]), "{st}");
    assert_eq!(st["window"]["timeline"], 2, "{st}");
    assert_eq!(st["window"]["gaps"], serde_json::json!([]), "{st}");
    assert!(
        c.cfg
            .archive
            .dir
            .join("history")
            .read_dir()
            .unwrap()
            .count()
            >= 1
    );

    // Second restore, to a point on timeline 2, from the timeline-1 backup.
    let r2 = c.root.join("r2");
    let out = c.restore(&t2.to_rfc3339(), &r2, 5434, &["--json"]).ok();
    let rep: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(rep["timeline"], 3, "{rep}");
    let mut db3 = c.connect(5434);
    assert_eq!(tags(&mut db3), vec!["a1", "a2", "b1"]);

    // Following timeline 1 explicitly still reaches the old primary's history.
    let r3 = c.root.join("r3");
    c.restore("latest", &r3, 5435, &["--timeline", "1"]).ok();
    let mut db4 = c.connect(5435);
    assert_eq!(
        tags(&mut db4),
        vec!["a1", "a2", "a3-discarded", "a4-old-primary"]
    );
}
