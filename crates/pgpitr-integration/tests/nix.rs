//! The contract between the NixOS module and the Rust tools.
//!
//! 1. Every `.nix` file of the repository parses (`nix-instantiate --parse`).
//! 2. The plain-Nix functions of `nixos-modules/lib` (evaluated with a bare
//!    `nix-instantiate --eval --strict --json nixos-modules/lib/tests.nix`, no nixpkgs) give
//!    the expected units, ordering, timers, hardening, postgresql.conf and config file.
//! 3. Every config file the module generates is accepted by `pgpitr config check`, a key the
//!    Rust schema does not know is rejected by name, and every key the Rust schema writes is
//!    one the module can generate: one contract, checked in both directions.
//!
//! Needs `nix-instantiate` (Debian's nix-bin); its absence fails the test, it is not skipped.

use pgpitr_integration::{built_bins, Run};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn nix_instantiate(args: &[&str]) -> Run {
    let out = Command::new("nix-instantiate")
        .args(args)
        .current_dir(repo_root())
        .output();
    match out {
        Ok(o) => Run::from(o),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`nix-instantiate` is not installed; these tests need it: apt-get install -y nix-bin"
        ),
        Err(e) => panic!("cannot run nix-instantiate: {e}"),
    }
}

fn nix_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let entry = entry.expect("dir entry");
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if entry.file_type().expect("file type").is_dir() {
            if name != "target" && !name.starts_with('.') {
                nix_files(&path, out);
            }
        } else if name.ends_with(".nix") {
            out.push(path);
        }
    }
}

#[test]
fn every_nix_file_parses() {
    let mut files = Vec::new();
    nix_files(&repo_root(), &mut files);
    for must in [
        "flake.nix",
        "nixos-modules/pgpitr.nix",
        "nixos-modules/lib/default.nix",
    ] {
        assert!(
            files.iter().any(|f| f.ends_with(must)),
            "{must} not found among {files:?}"
        );
    }
    let mut failures = Vec::new();
    for f in &files {
        let r = nix_instantiate(&["--parse", f.to_str().unwrap()]);
        if r.code != 0 {
            failures.push(format!("{}: {}", f.display(), r.stderr.trim()));
        }
    }
    assert!(
        failures.is_empty(),
        "unparsable Nix:\n{}",
        failures.join("\n")
    );
}

/// `nixos-modules/lib/tests.nix`, evaluated.
fn evaluated() -> Value {
    let r = nix_instantiate(&[
        "--eval",
        "--strict",
        "--json",
        "nixos-modules/lib/tests.nix",
    ]);
    assert_eq!(
        r.code, 0,
        "evaluating nixos-modules/lib/tests.nix failed:\n{}",
        r.stderr
    );
    serde_json::from_str(&r.stdout).expect("nix-instantiate printed JSON")
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an attribute set: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

const JOBS: [(&str, &str); 5] = [
    ("postgresql-basebackup", "basebackup"),
    ("postgresql-walprune", "walprune"),
    ("postgresql-healthcheck", "healthcheck"),
    ("postgresql-database-provisioning", "provision-dbs"),
    ("pgpitr-offsite", "offsite-sync"),
];

/// Hardening every unit must carry, with the folders it may write.
#[track_caller]
fn assert_hardened(unit: &str, svc: &Value, rw: &[&str]) {
    let sc = &svc["serviceConfig"];
    assert_eq!(sc["ProtectSystem"], "strict", "{unit}: ProtectSystem");
    assert_eq!(sc["PrivateTmp"], true, "{unit}: PrivateTmp");
    assert_eq!(sc["NoNewPrivileges"], true, "{unit}: NoNewPrivileges");
    assert_eq!(sc["UMask"], "0077", "{unit}: UMask");
    assert_eq!(sc["ProtectHome"], true, "{unit}: ProtectHome");
    assert_eq!(sc["User"], "postgres", "{unit}: User");
    let have: BTreeSet<String> = strs(&sc["ReadWritePaths"]).into_iter().collect();
    assert_eq!(have, set(rw), "{unit}: ReadWritePaths");
}

#[test]
fn units_ordering_timers_hardening_and_settings() {
    let all = evaluated();
    let cases = &all["cases"];
    assert_eq!(
        keys(cases),
        set(&["drill", "drilled", "full", "legacy", "main", "pending"])
    );

    for (name, c) in cases.as_object().unwrap() {
        let pgpitr = format!("{}/bin", c["paths"]["pgpitr"].as_str().unwrap());
        let pg = format!("{}/bin", c["paths"]["postgresql"].as_str().unwrap());
        let cfg_path = format!("/etc/pgpitr/{name}.json");
        let cfg = &c["configFile"];
        assert_eq!(c["configPath"], cfg_path.as_str());
        let data = cfg["postgres"]["data_dir"].as_str().unwrap().to_string();
        let archive = cfg["archive"]["dir"].as_str().unwrap().to_string();
        let backup = cfg["backup"]["dir"].as_str().unwrap().to_string();
        let textfile = cfg["metrics"]["textfile_dir"].as_str().map(String::from);
        let metrics_rw: Vec<&str> = textfile.iter().map(|s| s.as_str()).collect();
        let services = &c["services"];
        let timers = &c["timers"];

        // Config file: packaged binaries, the instance's own port and folders.
        assert_eq!(cfg["instance"], name.as_str());
        assert_eq!(cfg["pgpitr"]["bin_dir"], pgpitr.as_str());
        assert_eq!(cfg["postgres"]["bin_dir"], pg.as_str());
        assert_eq!(cfg["postgres"]["socket_dir"], "/run/postgresql");

        // postgresql.conf: archive and restore through the packaged tools and this config.
        let conf = &c["postgresqlConf"];
        assert_eq!(
            conf["archive_command"],
            format!("{pgpitr}/archive-wal --config {cfg_path} %p %f").as_str()
        );
        assert_eq!(
            conf["restore_command"],
            format!("{pgpitr}/restore-wal --config {cfg_path} %f %p").as_str()
        );
        assert_eq!(conf["archive_mode"], true);
        assert_eq!(conf["port"], cfg["postgres"]["port"]);
        let conf_text = c["postgresqlConfText"].as_str().unwrap();
        assert!(
            conf_text.contains(&format!(
                "archive_command = '{pgpitr}/archive-wal --config {cfg_path} %p %f'\n"
            )),
            "{name}: postgresql.conf:\n{conf_text}"
        );
        assert!(conf_text.contains("archive_mode = on\n"), "{conf_text}");

        // The server unit.
        let server_name = format!("postgresql-{name}");
        let server = &services[&server_name];
        assert_eq!(server["serviceConfig"]["Type"], "notify", "{server_name}");
        assert_eq!(
            server["serviceConfig"]["ExecStart"],
            format!("{pg}/postgres -D {data} -c config_file=/etc/pgpitr/{name}/postgresql.conf")
                .as_str()
        );
        assert_eq!(strs(&server["wantedBy"]), ["multi-user.target"]);
        let pre = server["preStart"].as_str().unwrap();
        assert!(
            pre.contains(&format!("if [ -s '{data}'/PG_VERSION ]; then"))
                && pre.contains(&format!("{pg}/initdb -D '{data}'")),
            "{server_name}: initdb only on an empty data folder:\n{pre}"
        );
        let mut server_rw = vec![data.as_str(), "/run/postgresql", archive.as_str()];
        server_rw.extend(&metrics_rw);
        assert_hardened(&server_name, server, &server_rw);

        // The jobs: packaged binary with this config, after the server, hardened, on a timer.
        let server_unit = format!("{server_name}.service");
        let on_failure = strs(&server["onFailure"]);
        for (prefix, tool) in JOBS {
            let unit = format!("{prefix}-{name}");
            let Some(svc) = services.get(&unit) else {
                assert!(timers.get(&unit).is_none(), "{unit}: timer without service");
                continue;
            };
            let sc = &svc["serviceConfig"];
            assert_eq!(sc["Type"], "oneshot", "{unit}");
            assert_eq!(
                sc["ExecStart"],
                format!("{pgpitr}/{tool} --config {cfg_path}").as_str(),
                "{unit}"
            );
            let after = strs(&svc["after"]);
            assert!(after.contains(&server_unit), "{unit}: After= {after:?}");
            assert_eq!(strs(&svc["onFailure"]), on_failure, "{unit}: OnFailure=");
            let rw: Vec<&str> = match tool {
                "basebackup" => vec![backup.as_str()],
                "walprune" => vec![archive.as_str(), backup.as_str()],
                "healthcheck" => vec![],
                "provision-dbs" => vec![cfg["provision"]["state_dir"].as_str().unwrap()],
                "offsite-sync" => vec![cfg["offsite"]["repository"].as_str().unwrap()],
                _ => unreachable!(),
            };
            let mut rw = rw;
            rw.extend(&metrics_rw);
            assert_hardened(&unit, svc, &rw);

            if tool == "provision-dbs" {
                // Part of bringing the instance up, re-run when the declaration changes.
                assert_eq!(strs(&svc["requires"]), [server_unit.as_str()], "{unit}");
                assert_eq!(strs(&svc["wantedBy"]), ["multi-user.target"], "{unit}");
                assert_eq!(sc["RemainAfterExit"], true, "{unit}");
                assert_eq!(
                    strs(&svc["restartTriggers"]),
                    [c["databasesHash"].as_str().unwrap()]
                );
                assert!(timers.get(&unit).is_none(), "{unit} has no timer");
                continue;
            }
            // A timer job must run and fail when the server is down (Requires= would skip it
            // as a dependency failure, and OnFailure= would never fire).
            assert!(
                svc.get("requires").is_none(),
                "{unit}: no Requires= on the server"
            );
            let t = &timers[&unit];
            assert!(t.is_object(), "{unit}: no timer");
            assert_eq!(t["timerConfig"]["Persistent"], true, "{unit}.timer");
            assert_eq!(t["timerConfig"]["Unit"], format!("{unit}.service").as_str());
            assert_eq!(strs(&t["wantedBy"]), ["timers.target"], "{unit}.timer");
            assert!(t["timerConfig"]["OnCalendar"].is_string(), "{unit}.timer");
            let has_basebackup = services
                .get(format!("postgresql-basebackup-{name}"))
                .is_some();
            if (tool == "walprune" || tool == "offsite-sync") && has_basebackup {
                assert!(
                    after.contains(&format!("postgresql-basebackup-{name}.service")),
                    "{unit} runs after the base backup: {after:?}"
                );
            }
        }

        // Folders with their modes.
        let tmpfiles = strs(&c["tmpfiles"]);
        for d in [&data, &archive, &backup] {
            let rule = format!("d {d} 0700 postgres postgres -");
            assert!(
                tmpfiles.contains(&rule),
                "{name}: no `{rule}` in {tmpfiles:?}"
            );
        }
        if let Some(t) = &textfile {
            assert!(
                tmpfiles.iter().any(|r| r.starts_with(&format!("A+ {t} "))
                    && r.contains("default:other::r")),
                "{name}: metrics must stay readable for node_exporter despite UMask=0077: {tmpfiles:?}"
            );
        }
    }

    // Which units each definition creates.
    let units = |n: &str| keys(&cases[n]["services"]);
    let timers = |n: &str| keys(&cases[n]["timers"]);
    assert_eq!(
        units("main"),
        set(&[
            "postgresql-main",
            "postgresql-basebackup-main",
            "postgresql-healthcheck-main"
        ])
    );
    assert_eq!(
        timers("main"),
        set(&["postgresql-basebackup-main", "postgresql-healthcheck-main"])
    );
    assert_eq!(units("legacy"), set(&["postgresql-legacy"]));
    assert_eq!(
        units("pending"),
        set(&[
            "postgresql-pending",
            "postgresql-basebackup-pending",
            "postgresql-walprune-pending",
            "postgresql-healthcheck-pending",
            "postgresql-database-provisioning-pending",
            "pgpitr-offsite-pending",
            "pgpitr-zfs-pending",
        ])
    );
    assert_eq!(
        timers("pending"),
        set(&[
            "postgresql-basebackup-pending",
            "postgresql-walprune-pending",
            "postgresql-healthcheck-pending",
            "pgpitr-offsite-pending",
        ])
    );

    // Details of the fuller definitions.
    let full = &cases["full"];
    assert_eq!(
        full["timers"]["postgresql-basebackup-full"]["timerConfig"]["OnCalendar"],
        "*-*-* 02:30:00"
    );
    assert_eq!(
        full["timers"]["postgresql-healthcheck-full"]["timerConfig"]["OnCalendar"],
        "*:0/2"
    );
    assert_eq!(
        strs(&full["services"]["postgresql-full"]["onFailure"]),
        ["notify-admin@%n.service"]
    );
    let conf = &full["postgresqlConf"];
    assert_eq!(conf["shared_buffers"], "2GB");
    assert_eq!(conf["effective_cache_size"], "6GB");
    assert_eq!(conf["work_mem"], "16MB");
    assert_eq!(conf["maintenance_work_mem"], "512MB");
    assert_eq!(conf["max_connections"], 200);
    assert_eq!(conf["jit"], false);
    let text = full["postgresqlConfText"].as_str().unwrap();
    assert!(text.contains("jit = off\n"), "{text}");
    assert!(
        text.contains("search_path = '\"$user\", public'\n"),
        "{text}"
    );
    let hba = full["hbaText"].as_str().unwrap();
    assert!(
        hba.find("host app app 10.0.0.0/8").unwrap()
            < hba.find("local all all peer map=pgpitr").unwrap(),
        "authentication lines come first:\n{hba}"
    );
    assert_eq!(
        full["configFile"]["encryption"],
        json!({
            "recipients": ["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"],
            "identity_file": "/run/keys/full.age"
        })
    );
    assert!(cases["main"]["configFile"].get("encryption").is_none());
    assert!(cases["main"]["configFile"].get("metrics").is_none());
    assert_eq!(
        strs(&cases["pending"]["services"]["pgpitr-offsite-pending"]["path"]),
        [cases["pending"]["paths"]["restic"].as_str().unwrap()]
    );

    // Pending keys appear only where their options are used (none pending right now).
    let pending = strs(&all["pendingSchemaKeys"]);
    assert_eq!(pending, Vec::<String>::new());
    for n in ["main", "full", "legacy", "pending", "drilled", "drill"] {
        assert_eq!(strs(&cases[n]["pendingKeys"]), Vec::<String>::new(), "{n}");
    }

    // [preseed] as the Rust schema reads it, and every instance names its server unit (used
    // by `pgpitr restore --in-place`).
    assert_eq!(
        cases["drill"]["configFile"]["preseed"],
        json!({
            "methods": ["syncoid", "local", "archive"],
            "initdb_args": ["--locale=C.UTF-8"],
            "recovery_timeout_seconds": 600,
            "syncoid": {
                "source": "old-host:tank/pg/drill",
                "bin": "/run/current-system/sw/bin/syncoid",
                "options": ["--sshkey=/run/keys/replica"]
            }
        })
    );
    assert!(cases["main"]["configFile"].get("preseed").is_none());
    for n in ["main", "full", "legacy", "pending", "drilled", "drill"] {
        assert_eq!(
            cases[n]["configFile"]["postgres"]["service"],
            format!("postgresql-{n}.service"),
            "{n}"
        );
    }

    // [drill]: no `from` key (it is the unit's `--from`), the heartbeat interval follows the
    // healthcheck timer (`*:0/10`).
    assert_eq!(
        cases["drilled"]["configFile"]["drill"],
        json!({
            "scratch_dir": "/var/lib/pgpitr/drilled/drill",
            "port": 15437,
            "heartbeat": true,
            "heartbeat_interval_seconds": 600
        })
    );
    assert!(
        cases["drilled"]["services"]["postgresql-drill-drilled"]["serviceConfig"]["ExecStart"]
            .as_str()
            .unwrap()
            .ends_with(" drill --from local")
    );

    // Assertions.
    let a = &all["assertions"];
    for ok in ["good", "goodWithZfs"] {
        assert_eq!(strs(&a[ok]), Vec::<String>::new(), "{ok}");
    }
    for (case, needle) in [
        ("duplicatePorts", "port 5440 is used by a, b"),
        ("zfsWithoutSupport", "needs ZFS support"),
        ("identityInStore", "is in the Nix store"),
        (
            "managedSetting",
            "sets archive_command, which the module manages",
        ),
        (
            "resticIncomplete",
            "repository and passwordFile must be set",
        ),
        ("badName", "may only contain letters"),
    ] {
        let msgs = strs(&a[case]);
        assert!(
            msgs.len() == 1 && msgs[0].contains(needle),
            "{case}: expected one failed assertion containing {needle:?}, got {msgs:?}"
        );
    }
}

fn config_check(dir: &Path, file: &str, cfg: &Value) -> Run {
    let path = dir.join(file);
    std::fs::write(&path, serde_json::to_string_pretty(cfg).unwrap()).unwrap();
    Run::from(
        Command::new(built_bins().join("pgpitr"))
            .arg("--config")
            .arg(&path)
            .args(["config", "check"])
            .output()
            .expect("run pgpitr"),
    )
}

/// Every `a.b.c` path to a non-object value.
fn leaf_paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v.as_object() {
        Some(m) if !m.is_empty() => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaf_paths(v, &p, out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

#[test]
fn generated_configs_pass_pgpitr_config_check_and_unknown_keys_fail() {
    let all = evaluated();
    let pending = strs(&all["pendingSchemaKeys"]);
    let tmp = tempfile::tempdir().unwrap();
    let mut emitted = BTreeSet::new();

    for (name, c) in all["cases"].as_object().unwrap() {
        let cfg = &c["configFile"];
        leaf_paths(cfg, "", &mut emitted);
        let r = config_check(tmp.path(), &format!("{name}.json"), cfg);
        if c["contract"] == true {
            assert_eq!(
                r.code, 0,
                "pgpitr config check rejected the config the module generates for `{name}`:\n{}\n{}",
                r.stderr,
                serde_json::to_string_pretty(cfg).unwrap()
            );
            assert!(r.stdout.starts_with("ok: "), "{}", r.stdout);

            // A key the Rust schema does not know fails, by name, at any depth.
            for (section, key) in [
                (None, "nix_only_key"),
                (Some("postgres"), "nix_only_setting"),
            ] {
                let mut bad = cfg.clone();
                match section {
                    None => bad[key] = json!(1),
                    Some(s) => bad[s][key] = json!(1),
                }
                let r = config_check(tmp.path(), &format!("{name}-bad.json"), &bad);
                assert_ne!(r.code, 0, "{name}: unknown key `{key}` was accepted");
                assert!(
                    r.stderr.contains(key),
                    "{name}: the error must name `{key}`: {}",
                    r.stderr
                );
            }
        } else {
            // Options awaiting schema support: accepted once the schema has them, and until
            // then rejected only for a key listed as pending (docs/nixos.md).
            assert!(
                r.code == 0
                    || pending
                        .iter()
                        .any(|k| r.stderr.contains(&format!("key `{k}"))),
                "`{name}` was rejected for a key that is not pending schema support:\n{}",
                r.stderr
            );
        }
    }

    // The other direction: every key the Rust schema writes for a config can be generated by
    // the module (a new schema key with a default shows up here until the module emits it).
    let full = &all["cases"]["full"]["configFile"];
    let parsed = pgpitr_config::Config::parse(Path::new("full.json"), &full.to_string())
        .expect("the full case parses");
    let mut rust_keys = BTreeSet::new();
    leaf_paths(&serde_json::to_value(&parsed).unwrap(), "", &mut rust_keys);
    let missing: Vec<_> = rust_keys.difference(&emitted).collect();
    assert!(
        missing.is_empty(),
        "the Rust schema has keys no module option generates: {missing:?} (add them to nixos-modules/lib/default.nix)"
    );
}

/// Issue 10: each defect found when the module's units first ran under a real systemd,
/// pinned at the Nix level (`defects` in nixos-modules/lib/tests.nix). The rig in
/// nixos-tests/systemd/ proves the same behaviours under systemd itself.
#[test]
fn defects_found_under_real_systemd_stay_fixed() {
    let all = evaluated();
    let d = &all["defects"];

    // pg_basebackup connects for replication over the socket: pg_hba.conf must allow it.
    let hba = d["hba"].as_str().unwrap();
    for line in [
        "local replication all peer map=pgpitr",
        "host  replication all 127.0.0.1/32 scram-sha-256",
        "host  replication all ::1/128      scram-sha-256",
    ] {
        assert!(hba.contains(line), "pg_hba.conf lacks `{line}`:\n{hba}");
    }

    // zfs.enable runs `pgpitr zfs ensure` in a unit ordered before the server.
    let svc = &d["zfs"]["services"];
    let zfs = &svc["pgpitr-zfs-main"];
    assert_eq!(
        zfs["serviceConfig"]["ExecStart"],
        "/nix/store/00000000000000000000000000000000-pgpitr-0.1.0/bin/pgpitr --config /etc/pgpitr/main.json zfs ensure --fix"
    );
    assert_eq!(
        strs(&zfs["path"]),
        ["/nix/store/55555555555555555555555555555555-zfs-2.3.4"],
        "zfs(8) in the ZFS unit's PATH"
    );
    assert_eq!(strs(&zfs["before"]), ["postgresql-main.service"]);
    assert_eq!(strs(&zfs["requiredBy"]), ["postgresql-main.service"]);
    assert!(strs(&zfs["after"]).contains(&"zfs-mount.service".to_string()));
    let server = &svc["postgresql-main"];
    assert!(strs(&server["requires"]).contains(&"pgpitr-zfs-main.service".to_string()));
    assert!(strs(&server["after"]).contains(&"pgpitr-zfs-main.service".to_string()));
    assert!(
        zfs["postStart"]
            .as_str()
            .unwrap()
            .contains("chown postgres:postgres '/var/lib/postgresql/main'"),
        "the mounted datasets are handed to postgres"
    );

    // The version: follows system.stateVersion, 13 is gone, the default folders carry no
    // major version, and another major's data folder is refused naming both versions.
    assert_eq!(
        d["defaultMajors"],
        json!(["17", "17", "16", "16", "15", "15", "14", null])
    );
    assert_eq!(strs(&d["supportedMajors"]), ["14", "15", "16", "17", "18"]);
    let unsupported = strs(&d["unsupportedMajor"]);
    assert!(
        unsupported.len() == 1 && unsupported[0].contains("PostgreSQL 13 is not supported"),
        "{unsupported:?}"
    );
    assert_eq!(
        d["defaultDirs"]["postgres"]["data_dir"],
        "/var/lib/postgresql/main"
    );
    assert_eq!(
        d["defaultDirs"]["archive"]["dir"],
        "/var/lib/postgresql/main-wal-archive"
    );
    let pre = d["preStart"].as_str().unwrap();
    assert!(
        pre.contains(r#"if [ "$found" != '16' ]; then"#)
            && pre.contains("holds a PostgreSQL $found cluster but services.pgpitr.instances.main runs PostgreSQL 16: refusing to start")
            && pre.find("exit 1").unwrap() < pre.find("initdb -D").unwrap(),
        "{pre}"
    );

    // A crash loop reaches the start limit: burst starts RestartSec apart fit in the interval.
    let burst = d["startLimit"]["StartLimitBurst"].as_u64().unwrap();
    let interval = d["startLimit"]["StartLimitIntervalSec"].as_u64().unwrap();
    let restart_sec: u64 = d["restartSec"]
        .as_str()
        .unwrap()
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!(
        burst * restart_sec < interval,
        "{burst} starts {restart_sec}s apart never hit a {interval}s start limit"
    );

    // tmpfiles: every folder between the system root and a leaf is declared, owned by
    // postgres, so no root-owned folder sits under a postgres-owned one.
    let t = strs(&d["tmpfiles"]);
    for rule in [
        "d /var/lib/postgresql 0755 postgres postgres -",
        "d /var/backup/postgresql 0755 postgres postgres -",
        "d /var/lib/postgresql/main 0700 postgres postgres -",
    ] {
        assert!(t.contains(&rule.to_string()), "no `{rule}` in {t:?}");
    }
    let t = strs(&d["tmpfilesSrv"]);
    for rule in [
        "d /srv/pg 0755 postgres postgres -",
        "d /srv/pg/a 0755 postgres postgres -",
        "d /srv/backup 0755 postgres postgres -",
        "d /srv/pg/a/data 0700 postgres postgres -",
    ] {
        assert!(t.contains(&rule.to_string()), "no `{rule}` in {t:?}");
    }

    // psql of the server's own version on the system.
    assert_eq!(
        strs(&d["packages"]),
        ["/nix/store/11111111111111111111111111111111-postgresql-16.4"]
    );

    // Not beside services.postgresql: a clear assertion instead of an evaluation error.
    let up = strs(&d["upstream"]);
    assert!(
        up.len() == 1 && up[0].contains("cannot run on the same host"),
        "{up:?}"
    );

    // Restart-only settings restart; the rest reloads.
    let tr = &d["triggers"];
    let base = &tr["base"];
    for k in ["sharedBuffers", "maxConnections", "walLevel", "preload"] {
        assert_ne!(
            tr[k]["restartTriggers"], base["restartTriggers"],
            "{k}: no restart"
        );
        assert_eq!(tr[k]["reloadTriggers"], base["reloadTriggers"], "{k}");
    }
    for k in ["workMem", "hba"] {
        assert_eq!(
            tr[k]["restartTriggers"], base["restartTriggers"],
            "{k}: restart"
        );
        assert_ne!(
            tr[k]["reloadTriggers"], base["reloadTriggers"],
            "{k}: no reload"
        );
    }

    // Secrets through LoadCredential=; the config names the credential, never the source;
    // the server cannot see /run/credentials.
    let s = &d["secrets"];
    let cfg = &s["configFile"];
    assert_eq!(
        cfg["offsite"]["password_file"],
        "/run/credentials/pgpitr-offsite-s.service/restic-password"
    );
    assert_eq!(
        cfg["offsite"]["environment_file"],
        "/run/credentials/pgpitr-offsite-s.service/restic-environment"
    );
    assert_eq!(
        cfg["databases"]["app"]["owner_password_file"],
        "/run/credentials/postgresql-database-provisioning-s.service/owner-password-app"
    );
    assert!(!cfg.to_string().contains("/run/keys"), "{cfg}");
    assert_eq!(
        strs(&s["services"]["pgpitr-offsite-s"]["serviceConfig"]["LoadCredential"]),
        [
            "restic-password:/run/keys/restic-s",
            "restic-environment:/run/keys/restic-s.env"
        ]
    );
    let prov = strs(
        &s["services"]["postgresql-database-provisioning-s"]["serviceConfig"]["LoadCredential"],
    );
    assert_eq!(prov.len(), 2);
    assert!(prov.contains(&"owner-password-app:/run/keys/app".to_string()));
    assert_eq!(
        strs(&s["services"]["postgresql-s"]["serviceConfig"]["InaccessiblePaths"]),
        ["-/run/credentials"]
    );

    // The off-site job waits for the network; no timer job is restarted by a switch.
    let off = &s["services"]["pgpitr-offsite-s"];
    assert!(strs(&off["after"]).contains(&"network-online.target".to_string()));
    assert_eq!(strs(&off["wants"]), ["network-online.target"]);
    for (name, svc) in s["services"].as_object().unwrap() {
        if s["timers"].get(name).is_some() {
            assert_eq!(svc["restartIfChanged"], false, "{name}");
        }
    }

    // OOMScoreAdjust= protects the postmaster only; backends reset their own score.
    let env = &s["services"]["postgresql-s"]["environment"];
    assert_eq!(env["PG_OOM_ADJUST_FILE"], "/proc/self/oom_score_adj");
    assert_eq!(env["PG_OOM_ADJUST_VALUE"], "0");

    // initdbArgs are shell-escaped.
    let pre = d["initdbArgs"].as_str().unwrap();
    assert!(
        pre.contains(r#"'--locale=C.UTF-8' '--waldir=/srv/my wal' '--x='\''; rm -rf /'\'''"#),
        "{pre}"
    );

    // The drill runs as postgres, so the root-only identity (and, drilling from off-site,
    // restic's secrets) reach it through LoadCredential= under the names pgpitr reads in
    // place of the config's paths (pgpitr_config::CRED_*); the config keeps the source path
    // of the identity for a restore as root.
    let ds = &d["drillSecrets"];
    let local = &ds["local"]["services"]["postgresql-drill-dl"];
    assert_eq!(
        strs(&local["serviceConfig"]["LoadCredential"]),
        [format!(
            "{}:/run/keys/dl.age",
            pgpitr_config::CRED_AGE_IDENTITY
        )]
    );
    assert!(local.get("path").is_none(), "{local}");
    assert_eq!(
        ds["local"]["configFile"]["encryption"]["identity_file"],
        "/run/keys/dl.age"
    );
    let off = &ds["offsite"]["services"]["postgresql-drill-do"];
    assert_eq!(
        strs(&off["serviceConfig"]["LoadCredential"]),
        [
            format!("{}:/run/keys/do.age", pgpitr_config::CRED_AGE_IDENTITY),
            format!(
                "{}:/run/keys/restic-do",
                pgpitr_config::CRED_RESTIC_PASSWORD
            ),
            format!(
                "{}:/run/keys/restic-do.env",
                pgpitr_config::CRED_RESTIC_ENVIRONMENT
            ),
        ]
    );
    assert_eq!(
        strs(&off["path"]),
        ["/nix/store/22222222222222222222222222222222-restic-0.17.3"]
    );
    assert_hardened(
        "postgresql-drill-do",
        off,
        &[
            "/var/lib/pgpitr/do/drill",
            "/var/backup/postgresql/do",
            "/run/postgresql",
            "/mnt/offsite/do",
        ],
    );
    assert_eq!(
        strs(&off["serviceConfig"]["Environment"]),
        ["RESTIC_CACHE_DIR=/var/cache/pgpitr-offsite-do"]
    );
    assert!(strs(&off["after"]).contains(&"network-online.target".to_string()));
    let plain = &ds["plain"]["services"]["postgresql-drill-dn"];
    assert!(
        plain["serviceConfig"].get("LoadCredential").is_none(),
        "{plain}"
    );

    // Drill and preseed units (off by default).
    let dp = &d["drillPreseed"]["services"];
    let drill = &dp["postgresql-drill-dp"];
    assert_eq!(
        drill["serviceConfig"]["ExecStart"],
        "/nix/store/00000000000000000000000000000000-pgpitr-0.1.0/bin/pgpitr --config /etc/pgpitr/dp.json drill --from offsite"
    );
    // The drill writes drills.jsonl and takes the backup lock in backup.dir, and its scratch
    // server puts its socket in the socket folder.
    assert_hardened(
        "postgresql-drill-dp",
        drill,
        &[
            "/var/lib/pgpitr/dp/drill",
            "/var/backup/postgresql/dp",
            "/run/postgresql",
        ],
    );
    let dt = &d["drillPreseed"]["timers"]["postgresql-drill-dp"]["timerConfig"];
    assert_eq!(dt["OnCalendar"], "weekly");
    assert_eq!(dt["Persistent"], true);
    let pre = &dp["postgresql-preseed-dp"];
    assert_eq!(pre["serviceConfig"]["Type"], "oneshot");
    assert_eq!(
        pre["serviceConfig"]["ExecStart"],
        "/nix/store/00000000000000000000000000000000-pgpitr-0.1.0/bin/preseed --config /etc/pgpitr/dp.json"
    );
    assert_eq!(strs(&pre["before"]), ["postgresql-dp.service"]);
    assert_eq!(strs(&pre["requiredBy"]), ["postgresql-dp.service"]);
    assert_eq!(strs(&pre["after"]), ["pgpitr-zfs-dp.service"]);
    let server_after = strs(&dp["postgresql-dp"]["after"]);
    assert!(server_after.contains(&"postgresql-preseed-dp.service".to_string()));
    let follow = &dp["postgresql-preseed-basebackup-dp"];
    assert_eq!(
        follow["serviceConfig"]["ExecStart"],
        "/nix/store/00000000000000000000000000000000-pgpitr-0.1.0/bin/preseed --config /etc/pgpitr/dp.json --follow-up-backup"
    );
    assert!(strs(&follow["after"]).contains(&"postgresql-dp.service".to_string()));
    assert_eq!(strs(&follow["wantedBy"]), ["multi-user.target"]);
    // Nothing of them unless enabled.
    let main = &all["cases"]["main"];
    assert!(main["services"].get("postgresql-drill-main").is_none());
    assert!(main["services"].get("postgresql-preseed-main").is_none());
    assert!(main["configFile"].get("drill").is_none());
}
