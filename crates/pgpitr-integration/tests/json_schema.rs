//! Issue 15 item 6: every `--json` output follows docs/json.md. Each command that offers
//! `--json` (found from its `--help`) has a schema there; each schema is validated here
//! against a real run (or by the named test that produces that output); every output is
//! one document with numbers as numbers and times as RFC 3339.

use pgpitr_config::{DrillConfig, ForgetPolicy, OffsiteConfig, RetentionConfig};
use pgpitr_integration::json_schema::{assert_valid, schemas};
use pgpitr_integration::{built_bins, rows_around_target, Cluster, ClusterOptions};
use std::collections::BTreeSet;
use std::fs;
use std::process::Command;
use std::time::Instant;

/// Schemas whose outputs another test validates (it runs what would take minutes here):
/// (schema, test file that calls `assert_valid(.., "schema", ..)`).
const ELSEWHERE: [(&str, &str); 3] = [
    ("pgpitr restore --in-place", "in_place.rs"),
    ("pgpitr restore --in-place --undo", "in_place.rs"),
    ("pgpitr zfs ensure", "zfs.rs"),
];

/// The subcommands a clap `--help` lists under "Commands:" (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// Every command whose `--help` offers `--json`, named as the schemas are ("pgpitr zfs
/// ensure", "healthcheck"). pgpitr's subcommands are read from its own `--help`, down to
/// the leaves, so a new one is checked without being listed here.
fn commands_with_json() -> BTreeSet<String> {
    let bins = built_bins();
    let help = |argv: &[String]| -> String {
        let o = Command::new(bins.join(&argv[0]))
            .args(&argv[1..])
            .arg("--help")
            .output()
            .unwrap();
        assert!(o.status.success(), "{} --help failed", argv.join(" "));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let mut todo: Vec<Vec<String>> = pgpitr_integration::TOOLS
        .iter()
        .map(|t| vec![t.to_string()])
        .collect();
    let mut out = BTreeSet::new();
    let mut pgpitr_leaves = 0;
    while let Some(argv) = todo.pop() {
        let text = help(&argv);
        let subs = subcommands(&text);
        if subs.is_empty() {
            pgpitr_leaves += usize::from(argv[0] == "pgpitr");
            if text.contains("--json") {
                out.insert(argv.join(" "));
            }
        }
        for sub in subs {
            let mut next = argv.clone();
            next.push(sub);
            todo.push(next);
        }
    }
    // status restore incidents verify drill demo, zfs ensure, config check: the walk reached
    // them all (a walk that found nothing would check nothing).
    assert!(
        pgpitr_leaves >= 8,
        "only {pgpitr_leaves} pgpitr subcommands found"
    );
    out
}

#[test]
fn every_json_output_follows_docs_json_md() {
    let began = Instant::now();
    let schemas = schemas();
    let mut ran: BTreeSet<String> = BTreeSet::new();
    let mut check = |name: &str, stdout: &str| -> serde_json::Value {
        ran.insert(name.to_string());
        assert_valid(&schemas, name, stdout)
    };

    // Every command with --json has a schema.
    let cmds = commands_with_json();
    for c in &cmds {
        assert!(
            schemas
                .keys()
                .any(|s| s == c || s.starts_with(&format!("{c} "))),
            "`{c} --json` has no schema in docs/json.md"
        );
    }

    let c = Cluster::start(ClusterOptions::default());
    let mut cfg = c.cfg.clone();
    cfg.drill = DrillConfig {
        scratch_dir: Some(c.root.join("drill")),
        port: Some(5439),
        heartbeat: true,
        heartbeat_interval_seconds: 30,
    };
    cfg.retention = Some(RetentionConfig {
        keep_last: Some(1),
        ..Default::default()
    });
    cfg.offsite = Some(OffsiteConfig {
        forget: ForgetPolicy {
            keep_last: 5,
            ..Default::default()
        },
        ..c.offsite_config("json-schema-test")
    });
    let cfgp = c.write_config(&cfg, "json.toml");
    c.track(&c.root.join("drill/data"));
    let run = |args: &[&str]| c.tool_with(&cfgp, args[0], &args[1..]);

    // An error is one document too.
    let r = c.tool_with(&c.root.join("absent.toml"), "pgpitr", &["status", "--json"]);
    assert_ne!(r.code, 0);
    check("error", &r.stdout);
    let r = c.tool_with(&c.root.join("absent.toml"), "healthcheck", &["--json"]);
    assert_ne!(r.code, 0);
    check("error", &r.stdout);

    let mut db = c.connect(5432);
    db.batch_execute(
        "CREATE TABLE t (id serial PRIMARY KEY, tag text); \
         INSERT INTO t (tag) SELECT 'row' || g FROM generate_series(1, 50) g",
    )
    .unwrap();
    // No backup yet: the window cannot be computed, and healthcheck says so in a failing
    // check instead of leaving the window out silently.
    let h = run(&["healthcheck", "--json"]);
    assert_eq!(h.code, 1, "{}", h.stderr);
    let hj = check("healthcheck", &h.stdout);
    assert!(hj["window_oldest"].is_null(), "{hj}");
    assert!(
        hj["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["check"] == "wal_chain"
                && c["ok"] == false
                && c["detail"]
                    .as_str()
                    .unwrap()
                    .contains("no restorable window")),
        "{hj}"
    );
    let b = run(&["basebackup", "--json"]).ok();
    let bj = check("basebackup", &b.stdout);
    assert!(bj["stop_time"].is_string(), "{bj}");
    let target = rows_around_target(&mut db, "before", "after");
    db.batch_execute("DELETE FROM t").unwrap();
    c.switch_and_wait(5432);

    let h = run(&["healthcheck", "--json"]);
    let hj = check("healthcheck", &h.stdout);
    assert!(hj["window_newest"].is_string(), "{hj}");
    let st = check(
        "pgpitr status",
        &run(&["pgpitr", "status", "--json"]).ok().stdout,
    );
    assert!(st["window"]["oldest"].is_string(), "{st}");
    let v = check(
        "pgpitr verify",
        &run(&["pgpitr", "verify", "--json"]).ok().stdout,
    );
    assert!(v["windows"][0]["from"].is_string(), "{v}");
    let i = check(
        "pgpitr incidents",
        &run(&["pgpitr", "incidents", "--json"]).ok().stdout,
    );
    assert!(!i["incidents"].as_array().unwrap().is_empty(), "{i}");

    let into = c.root.join("restored");
    let into_s = into.to_str().unwrap();
    let t = target.to_rfc3339();
    let d = run(&[
        "pgpitr",
        "restore",
        "--to",
        &t,
        "--into",
        into_s,
        "--port",
        "5433",
        "--dry-run",
        "--json",
    ])
    .ok();
    check("pgpitr restore --dry-run", &d.stdout);
    c.track(&into);
    let r = run(&[
        "pgpitr",
        "restore",
        "--to",
        "immediate",
        "--into",
        into_s,
        "--port",
        "5433",
        "--pause",
        "--json",
    ])
    .ok();
    check("pgpitr restore", &r.stdout);
    let r = run(&[
        "pgpitr",
        "restore",
        "--retarget",
        "--to",
        &t,
        "--into",
        into_s,
        "--json",
    ])
    .ok();
    check("pgpitr restore", &r.stdout);
    let r = run(&["pgpitr", "restore", "--promote", "--into", into_s, "--json"]).ok();
    check("pgpitr restore", &r.stdout);
    c.discard(&into);

    let dr = run(&["pgpitr", "drill", "--to", "latest", "--json"]);
    check("pgpitr drill", &dr.stdout);

    let o = run(&["offsite-sync", "--what", "wal", "--json"]).ok();
    check("offsite-sync", &o.stdout);
    let so = run(&["pgpitr", "status", "--offsite", "--json"]).ok();
    check("pgpitr status --offsite", &so.stdout);

    c.basebackup();
    let w = run(&["walprune", "--dry-run", "--json"]).ok();
    check("walprune", &w.stdout);
    let p = run(&["preseed", "--dry-run", "--json"]);
    check("preseed", &p.stdout);

    if std::env::var_os("PGPITR_JSON_DUMP").is_some() {
        for (n, r) in [("drill", &dr), ("preseed", &p)] {
            eprintln!("{n}: {}\n{}", r.stdout, r.stderr);
        }
    }

    // Every schema was validated here or by the test named for it.
    for name in schemas.keys() {
        if ran.contains(name) {
            continue;
        }
        let (_, file) = ELSEWHERE
            .iter()
            .find(|(s, _)| s == name)
            .unwrap_or_else(|| panic!("schema {name:?} names a command this test never ran"));
        let src = fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests")
                .join(file),
        )
        .unwrap();
        assert!(
            src.contains(&format!("assert_valid(&schemas, {name:?}")),
            "{file} does not validate schema {name:?}"
        );
    }
    eprintln!("json_schema: {:.1} s", began.elapsed().as_secs_f64());
}
