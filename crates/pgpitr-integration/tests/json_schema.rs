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

/// Every command whose `--help` offers `--json`, named as the schemas are.
fn commands_with_json() -> BTreeSet<String> {
    let bins = built_bins();
    let mut out = BTreeSet::new();
    let pgpitr_subs: [&[&str]; 7] = [
        &["status"],
        &["restore"],
        &["incidents"],
        &["verify"],
        &["drill"],
        &["zfs", "ensure"],
        &["demo"],
    ];
    let mut forms: Vec<(String, Vec<String>)> = pgpitr_subs
        .iter()
        .map(|s| {
            (
                format!("pgpitr {}", s.join(" ")),
                std::iter::once("pgpitr".to_string())
                    .chain(s.iter().map(|x| x.to_string()))
                    .collect(),
            )
        })
        .collect();
    let mut tools: Vec<&str> = pgpitr_integration::TOOLS
        .iter()
        .copied()
        .filter(|t| *t != "pgpitr")
        .collect();
    tools.push("preseed");
    for t in tools {
        forms.push((t.to_string(), vec![t.to_string()]));
    }
    for (name, argv) in forms {
        let o = Command::new(bins.join(&argv[0]))
            .args(&argv[1..])
            .arg("--help")
            .output()
            .unwrap();
        assert!(o.status.success(), "{name} --help failed");
        if String::from_utf8_lossy(&o.stdout).contains("--json") {
            out.insert(name);
        }
    }
    // The pgpitr subcommand list itself: a new subcommand must be added above.
    let o = Command::new(bins.join("pgpitr"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&o.stdout).into_owned();
    for sub in [
        "status",
        "restore",
        "incidents",
        "verify",
        "zfs",
        "demo",
        "config",
        "drill",
    ] {
        assert!(help.contains(&format!("  {sub} ")), "{help}");
    }
    let listed = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter(|l| !l.trim().starts_with("help"))
        .count();
    assert_eq!(listed, 8, "a new pgpitr subcommand: add it here\n{help}");
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
    fs::copy(built_bins().join("preseed"), c.tools.join("preseed")).unwrap();
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
