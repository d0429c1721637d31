//! `pgpitr incidents` against real PostgreSQL: among pgbench traffic it finds a DELETE
//! without WHERE, a TRUNCATE, a DROP TABLE and a large UPDATE, names their relations (the
//! dropped one from the backup's catalog snapshot), gives their exact rows and commit
//! times, and the restore command it prints brings back every deleted row and nothing after.

use pgpitr_integration::{Cluster, ClusterOptions};
use serde_json::Value;
use std::process::{Child, Command};

/// pgbench from the PostgreSQL binaries, as the server's account.
fn pgbench(c: &Cluster, args: &[&str]) -> Command {
    assert!(
        c.bins.path("pgbench").is_file(),
        "{} is missing: apt-get install -y postgresql-15 (pgbench ships with the server)",
        c.bins.path("pgbench").display()
    );
    let mut cmd = pgpitr_pg::command_as(&c.bins.path("pgbench"), c.account.as_ref());
    cmd.arg("-h")
        .arg(&c.cfg.postgres.socket_dir)
        .args(["-p", "5432", "-U", "postgres"])
        .args(args)
        .arg("postgres")
        .current_dir(&c.root);
    cmd
}

/// Runs `sql` in one transaction and returns its xid and commit timestamp (with
/// track_commit_timestamp on; else empty).
fn xact(db: &mut postgres::Client, sql: &str) -> (u32, String) {
    let mut t = db.transaction().unwrap();
    t.batch_execute(sql).unwrap();
    let xid: i64 = t.query_one("SELECT txid_current()", &[]).unwrap().get(0);
    t.commit().unwrap();
    let on: String = db
        .query_one("SELECT current_setting('track_commit_timestamp')", &[])
        .unwrap()
        .get(0);
    if on != "on" {
        return (xid as u32, String::new());
    }
    let ts = db
        .query_one(
            "SELECT to_char(pg_xact_commit_timestamp($1::text::xid) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[&xid.to_string()],
        )
        .unwrap()
        .get::<_, Option<String>>(0)
        .unwrap_or_default();
    (xid as u32, ts)
}

fn incidents(c: &Cluster, extra: &[&str]) -> Value {
    let mut args = vec!["incidents", "--json"];
    args.extend_from_slice(extra);
    let out = c.tool("pgpitr", &args).ok();
    serde_json::from_str(&out.stdout).unwrap()
}

fn by_xid(rep: &Value, xid: u32) -> &Value {
    rep["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["xid"] == xid)
        .unwrap_or_else(|| panic!("xid {xid} not found: {rep:#}"))
}

fn relation<'a>(inc: &'a Value, name: &str) -> &'a Value {
    inc["relations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["relation"] == name)
        .unwrap_or_else(|| panic!("{name} not in {inc:#}"))
}

/// Runs a printed `pgpitr --config C restore ...` command with NEW_DIR and PORT filled in.
fn run_printed(c: &Cluster, cmd: &str, into: &std::path::Path, port: u16) {
    let args: Vec<String> = cmd
        .split_whitespace()
        .skip(1)
        .map(|a| match a {
            "NEW_DIR" => into.display().to_string(),
            "PORT" => port.to_string(),
            a => a.to_string(),
        })
        .collect();
    assert_eq!(cmd.split_whitespace().next(), Some("pgpitr"), "{cmd}");
    c.track(into);
    let out = Command::new(c.tools.join("pgpitr"))
        .args(&args)
        .output()
        .unwrap();
    pgpitr_integration::Run::from(out).ok();
}

fn start_traffic(c: &Cluster) -> Child {
    // -n: pgbench's own vacuum and TRUNCATE of pgbench_history are not the traffic.
    pgbench(c, &["-n", "-c", "2", "-T", "6"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn finds_each_destructive_transaction_among_traffic_and_undoes_it() {
    let c = Cluster::start(ClusterOptions {
        encrypted: true,
        ..Default::default()
    });
    let mut db = c.connect(5432);
    db.batch_execute("ALTER SYSTEM SET track_commit_timestamp = on")
        .unwrap();
    drop(db);
    c.stop_server(c.data());
    c.start_server(c.data());
    let mut db = c.connect(5432);
    let init = pgbench(&c, &["-i", "-s", "1", "-q"]).output().unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    db.batch_execute(
        "CREATE TABLE orders (id int PRIMARY KEY, item text NOT NULL);
         INSERT INTO orders SELECT g, 'item ' || g FROM generate_series(1, 3000) g;
         CREATE TABLE ledger (id int, amount numeric);
         INSERT INTO ledger SELECT g, g FROM generate_series(1, 500) g;
         CREATE TABLE scratch (id int);
         INSERT INTO scratch SELECT generate_series(1, 200);
         CREATE TABLE prices (id int PRIMARY KEY, price int);
         INSERT INTO prices SELECT g, g FROM generate_series(1, 2000) g;
         CREATE TABLE sentinel (tag text)",
    )
    .unwrap();
    // The backup's catalog snapshot is the only place that knows `scratch` once dropped.
    c.basebackup();

    let traffic = start_traffic(&c);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (upd, upd_at) = xact(&mut db, "UPDATE prices SET price = price + 1");
    std::thread::sleep(std::time::Duration::from_millis(500));
    xact(&mut db, "INSERT INTO sentinel VALUES ('before-delete')");
    let (del, del_at) = xact(&mut db, "DELETE FROM orders");
    xact(&mut db, "INSERT INTO sentinel VALUES ('after-delete')");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (trunc, trunc_at) = xact(&mut db, "TRUNCATE ledger");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (drop, drop_at) = xact(&mut db, "DROP TABLE scratch");
    let out = traffic.wait_with_output().unwrap();
    assert!(out.status.success(), "pgbench failed");
    let tps: i64 = db
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .unwrap()
        .get(0);
    assert!(tps > 100, "pgbench made only {tps} transactions");
    c.switch_and_wait(5432);

    let rep = incidents(&c, &[]);
    let ranked: Vec<u32> = rep["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["xid"].as_u64().unwrap() as u32)
        .collect();
    // Most destructive first, and no pgbench transaction among them.
    assert_eq!(ranked, vec![drop, trunc, del, upd], "{rep:#}");
    assert!(rep["scanned"]["committed"].as_u64().unwrap() > tps as u64);

    let d = by_xid(&rep, del);
    assert_eq!(d["kind"], "DELETE");
    assert_eq!(d["rows_deleted"], 3000);
    assert_eq!(d["committed_at"], del_at);
    assert_eq!(d["large"], true, "{d:#}");
    let o = relation(d, "public.orders");
    assert_eq!(o["deleted"], 3000);
    assert_eq!(o["database"], "postgres");
    assert_eq!(o["name_source"], "live server");
    assert_eq!(d["restore_target"], format!("xid:{del}"));

    let u = by_xid(&rep, upd);
    assert_eq!(u["kind"], "UPDATE");
    assert_eq!(u["rows_updated"], 2000);
    assert_eq!(u["rows_deleted"], 0);
    assert_eq!(u["committed_at"], upd_at);
    assert_eq!(relation(u, "public.prices")["updated"], 2000);

    let t = by_xid(&rep, trunc);
    assert_eq!(t["kind"], "TRUNCATE");
    assert_eq!(t["committed_at"], trunc_at);
    let l = relation(t, "public.ledger");
    assert_eq!(l["truncated"], true);
    // The file TRUNCATE removed is no longer the live table's: only the snapshot names it.
    assert!(
        l["name_source"]
            .as_str()
            .unwrap()
            .starts_with("catalog snapshot"),
        "{t:#}"
    );

    let x = by_xid(&rep, drop);
    assert_eq!(x["kind"], "DROP_TABLE");
    assert_eq!(x["committed_at"], drop_at);
    let s = relation(x, "public.scratch");
    assert_eq!(s["dropped"], true);
    assert!(
        s["name_source"]
            .as_str()
            .unwrap()
            .starts_with("catalog snapshot"),
        "{x:#}"
    );

    // The text output says the same, with the command.
    let text = c.tool("pgpitr", &["incidents"]).ok().stdout;
    assert!(text.contains(&format!("DELETE xid {del}")), "{text}");
    assert!(
        text.contains("deleted 3,000 rows from public.orders"),
        "{text}"
    );
    assert!(
        text.contains(&format!("restore --to xid:{del} --exclusive")),
        "{text}"
    );

    // --since after the DELETE leaves it out.
    let later = incidents(&c, &["--since", &trunc_at]);
    assert!(later["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["xid"] != del));

    // --before-incident takes the top one (the DROP TABLE) and says so; not a terminal, so
    // it does not ask.
    let dry = c.tool(
        "pgpitr",
        &[
            "restore",
            "--before-incident",
            "--into",
            c.root.join("unused").to_str().unwrap(),
            "--port",
            "5434",
            "--dry-run",
            "--json",
        ],
    );
    let dry = dry.ok();
    assert!(
        dry.stderr.contains(&format!(
            "restoring to just before #1 DROP TABLE xid {drop}"
        )),
        "{}",
        dry.stderr
    );
    let p: Value = serde_json::from_str(&dry.stdout).unwrap();
    assert_eq!(p["target"]["kind"], "xid");
    assert_eq!(p["target"]["value"], drop);
    assert_eq!(p["exclusive"], true);
    // --exclusive means nothing for `latest`: refused, clearly.
    let bad = c.tool(
        "pgpitr",
        &[
            "restore",
            "--to",
            "latest",
            "--exclusive",
            "--into",
            "/nonexistent/x",
            "--port",
            "5434",
            "--dry-run",
        ],
    );
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr
            .contains("--exclusive applies to xid:N, time and lsn:X/Y targets only"),
        "{}",
        bad.stderr
    );

    // The printed command: every deleted row back, nothing committed after the DELETE.
    let into = c.root.join("before-delete");
    run_printed(&c, d["restore_command"].as_str().unwrap(), &into, 5433);
    let mut r = c.connect(5433);
    let n: i64 = r
        .query_one("SELECT count(*) FROM orders", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 3000);
    let tags: Vec<String> = r
        .query("SELECT tag FROM sentinel ORDER BY tag", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tags, vec!["before-delete"]);
    let prices: i64 = r
        .query_one("SELECT sum(price) FROM prices", &[])
        .unwrap()
        .get::<_, Option<i64>>(0)
        .unwrap();
    assert_eq!(
        prices,
        (1..=2000).sum::<i64>() + 2000,
        "the UPDATE came before"
    );
    let ledger: i64 = r
        .query_one("SELECT count(*) FROM ledger", &[])
        .unwrap()
        .get(0);
    assert_eq!(ledger, 500);
}

#[test]
fn range_across_a_timeline_switch_follows_the_live_history() {
    let c = Cluster::start(ClusterOptions::default());
    let mut db = c.connect(5432);
    db.batch_execute(
        "CREATE TABLE a (id int); INSERT INTO a SELECT generate_series(1, 100);
         CREATE TABLE b (id int); INSERT INTO b SELECT generate_series(1, 120);
         CREATE TABLE c (id int); INSERT INTO c SELECT generate_series(1, 140);",
    )
    .unwrap();
    c.basebackup();
    let (del_a, _) = xact(&mut db, "DELETE FROM a");
    c.switch_and_wait(5432);

    // The restored server becomes the primary on timeline 2 and archives there.
    let r1 = c.root.join("r1");
    let out = c
        .restore("latest", &r1, 5433, &["--archive", "--json"])
        .ok();
    let restored: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(restored["timeline"], 2);
    let mut db2 = c.connect(5433);
    xact(&mut db2, "DELETE FROM b");
    c.switch_and_wait(5433);
    // The old primary goes on on timeline 1: an abandoned history no restore follows.
    xact(&mut db, "DELETE FROM c");
    c.switch_and_wait(5432);

    let rep = incidents(&c, &["--min-rows", "50"]);
    assert_eq!(
        rep["scanned"]["timelines"],
        serde_json::json!([1, 2]),
        "{rep:#}"
    );
    let found: Vec<(String, u64)> = rep["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["relations"][0]["relation"].as_str().unwrap().to_string(),
                i["rows_deleted"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(found.contains(&("public.a".into(), 100)), "{rep:#}");
    assert!(found.contains(&("public.b".into(), 120)), "{rep:#}");
    assert!(
        !found.iter().any(|(r, _)| r == "public.c"),
        "the abandoned timeline-1 branch must not be scanned: {rep:#}"
    );
    assert_eq!(by_xid(&rep, del_a)["kind"], "DELETE");
}
