//! `pgpitr`: the operator's command line (status, restore, demo, config check).

use clap::{Parser, Subcommand};
use pgpitr_cli::{run_main, sd_notify, ConfigArgs};
use pgpitr_pg::Bins;
use pgpitr_restore::{execute, parse_target, plan, ExecuteOptions, Inventory, PlanRequest};
use pgpitr_wal::codec::Decoder;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Point-in-time recovery for self-hosted PostgreSQL.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Backups, archived WAL and the restorable window.
    Status {
        #[arg(long)]
        json: bool,
        /// List what the offsite restic repository holds instead.
        #[arg(long)]
        offsite: bool,
    },
    /// Restore a cluster to a point in time into an empty folder and start it there, or
    /// in place of the instance's data folder (--in-place).
    Restore {
        /// RFC 3339 time, "N minutes ago", xid:N, name:LABEL, lsn:X/Y, immediate or latest.
        #[arg(long, required_unless_present_any = ["promote", "undo"])]
        to: Option<String>,
        /// Empty or new folder for the restored data (with --promote/--retarget: the paused restore).
        #[arg(long, required_unless_present_any = ["in_place"])]
        into: Option<PathBuf>,
        /// Port for the restored server (its socket goes to postgres.socket_dir).
        #[arg(long, required_unless_present_any = ["in_place", "promote", "retarget"])]
        port: Option<u16>,
        /// Use this backup instead of the newest one that reaches the target.
        #[arg(long)]
        backup: Option<String>,
        /// Follow this timeline instead of the latest.
        #[arg(long)]
        timeline: Option<u32>,
        /// Let the restored server archive into the instance's archive (it becomes the new primary).
        #[arg(long)]
        archive: bool,
        /// Print the plan (with --in-place: every step) and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Fetch the backup and WAL from the offsite restic repository (the local archive
        /// and backups are gone).
        #[arg(long, value_name = "SOURCE", value_parser = ["local", "offsite"], default_value = "local")]
        from: String,
        /// Where `--from offsite` puts what it fetches (default: beside --into).
        #[arg(long)]
        staging: Option<PathBuf>,
        /// Restore the configured instance in place: stop it, keep a safety copy, restore
        /// into its data folder, promote with archiving on, start it, take a base backup.
        #[arg(long, conflicts_with_all = ["into", "port", "pause", "promote", "retarget", "from", "staging", "archive"])]
        in_place: bool,
        /// With --in-place: finish an interrupted in-place restore (same --to).
        #[arg(long, requires = "in_place", conflicts_with = "undo")]
        resume: bool,
        /// With --in-place: go back to the safety copy (the restored folder is moved aside).
        #[arg(long, requires = "in_place", conflicts_with_all = ["to", "dry_run"])]
        undo: bool,
        /// Stop at the target without promoting: read-only, so you can look first.
        #[arg(long)]
        pause: bool,
        /// Promote the paused restore in --into (made with --pause).
        #[arg(long, conflicts_with_all = ["to", "pause", "retarget", "dry_run"])]
        promote: bool,
        /// Move the paused restore in --into to a later --to and replay on to it (paused).
        #[arg(long, conflicts_with_all = ["pause"])]
        retarget: bool,
        #[arg(long)]
        json: bool,
    },
    /// Check every archived object, timeline history and backup; report gaps and windows.
    Verify {
        /// Check names and sizes only (no decoding).
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        json: bool,
    },
    /// ZFS datasets of the instance (data: 8K records; WAL archive: 128K records).
    Zfs {
        #[command(subcommand)]
        action: ZfsCmd,
    },
    /// Show a DELETE without WHERE being undone on a throw-away cluster.
    Demo {
        /// Keep the temporary folder.
        #[arg(long)]
        keep: bool,
        /// Rows to write before the accident.
        #[arg(long, default_value_t = 12)]
        rows: usize,
    },
    /// Work with the instance config file itself.
    #[command(subcommand)]
    Config(ConfigCmd),
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Load and validate the config (schema, unknown keys, values); print "ok: FILE".
    Check,
}

#[derive(Subcommand)]
enum ZfsCmd {
    /// Create missing datasets with tuned properties; report drift (exit 1), fix it with --fix.
    Ensure {
        #[arg(long)]
        fix: bool,
        #[arg(long)]
        json: bool,
    },
}

fn tools_dir(configured: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    if let Some(d) = configured {
        return Ok(d.to_path_buf());
    }
    let exe = std::env::current_exe()?;
    Ok(exe
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_else(|| PathBuf::from(".")))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    run_main("pgpitr", || match &cli.command {
        Cmd::Demo { keep, rows } => {
            let out = pgpitr_demo::run_demo(&pgpitr_demo::DemoOptions {
                keep: *keep,
                tools_dir: tools_dir(None)?,
                rows: *rows,
            })?;
            println!(
                "demo passed: {} rows written, {} left after the DELETE, {} restored",
                out.rows_written, out.rows_after_delete, out.rows_restored
            );
            Ok(())
        }
        Cmd::Verify { quick, json } => {
            let cfg = cli.config.load()?;
            let report = pgpitr_retention::verify(&cfg, *quick)?;
            if let Err(e) = pgpitr_retention::verify::record_metrics(&cfg, &report) {
                eprintln!("pgpitr: warning: {e}");
            }
            if *json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{report}");
            }
            if !report.ok {
                anyhow::bail!(
                    "verify found {} problem(s): see above; restores past a gap or from a damaged object will fail",
                    report.problems.len()
                );
            }
            Ok(())
        }
        Cmd::Zfs {
            action: ZfsCmd::Ensure { fix, json },
        } => {
            let cfg = cli.config.load()?;
            let states = pgpitr_zfs::ensure_instance(&cfg, *fix)?;
            let drift: usize = states.iter().map(|s| s.drift().len()).sum();
            if *json {
                println!("{}", serde_json::to_string_pretty(&states)?);
            } else {
                for s in &states {
                    let created = if s.created { ": created" } else { "" };
                    println!("{} ({}){created}", s.dataset, s.mountpoint);
                    let drifted: Vec<&str> =
                        s.drift().iter().map(|d| d.property.as_str()).collect();
                    for p in &s.properties {
                        let actual = p.actual.as_deref().unwrap_or("?");
                        let state = if p.fixed {
                            format!("fixed (was {actual})")
                        } else if drifted.contains(&p.property.as_str()) {
                            format!("DRIFT: is {actual}")
                        } else {
                            "ok".into()
                        };
                        println!("  {}={}  {state}", p.property, p.wanted);
                        if let Some(n) = &p.note {
                            println!("    note: {n}");
                        }
                    }
                }
            }
            if drift > 0 {
                anyhow::bail!(
                    "{drift} dataset properties differ from the config: run `pgpitr zfs ensure --fix` to set them"
                );
            }
            Ok(())
        }
        Cmd::Status {
            json,
            offsite: true,
        } => {
            let cfg = cli.config.load()?;
            let st = pgpitr_offsite::status(&cfg)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print!("{st}");
            }
            Ok(())
        }
        Cmd::Status {
            json,
            offsite: false,
        } => {
            let cfg = cli.config.load()?;
            let decoder = Decoder::from_config(cfg.encryption.as_ref())?;
            let inv = Inventory::load(&cfg, &decoder)?;
            let bins = Bins::discover(cfg.postgres.bin_dir.as_deref()).ok();
            let st = inv.status(bins.as_ref(), &decoder)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print!("{st}");
            }
            Ok(())
        }
        Cmd::Restore {
            to,
            into,
            port,
            backup,
            timeline,
            archive,
            dry_run,
            json,
            from,
            staging,
            in_place,
            resume,
            undo,
            pause,
            promote,
            retarget,
        } => {
            let say = |s: &str| {
                sd_notify(&format!("STATUS={s}"));
                if !*json {
                    eprintln!("pgpitr: {s}")
                }
            };
            let print_report = |r: &dyn std::fmt::Display, v: serde_json::Value| {
                if *json {
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                } else {
                    println!("{r}");
                }
            };
            if *promote || *undo {
                let cfg = cli.config.load()?;
                let bins = Bins::discover(cfg.postgres.bin_dir.as_deref())?;
                if *undo {
                    let msg = pgpitr_restore::inplace::undo(&cfg, &bins, &mut |s| say(s))?;
                    print_report(&msg, serde_json::json!({ "undone": msg }));
                } else {
                    let into = std::path::absolute(into.as_ref().expect("clap requires --into"))?;
                    let r = pgpitr_restore::paused::promote(&cfg, &bins, &into)?;
                    print_report(&r, serde_json::to_value(&r)?);
                }
                return Ok(());
            }
            let t0 = Instant::now();
            let to = to.as_deref().expect("clap requires --to");
            let target = parse_target(to, chrono::Utc::now()).map_err(anyhow::Error::msg)?;
            let mut cfg = cli.config.load()?;
            let mut config_path = cli.config.path()?;
            if let (Some(into), false) = (into, *retarget) {
                pgpitr_restore::execute::check_target_dir(into)?;
            }
            if from == "offsite" {
                let into_abs = std::path::absolute(into.as_ref().expect("clap requires --into"))?;
                let staging = match staging {
                    Some(s) => std::path::absolute(s)?,
                    None => {
                        let name = into_abs
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        into_abs.with_file_name(format!("{name}-offsite-staging"))
                    }
                };
                let (staged, path) = pgpitr_offsite::fetch_for_restore(
                    &cfg,
                    &target,
                    backup.as_deref(),
                    &staging,
                    &mut |s| {
                        if !*json {
                            eprintln!("pgpitr: {s}");
                        }
                    },
                )?;
                cfg = staged;
                config_path = path;
            }
            let bins = Bins::discover(cfg.postgres.bin_dir.as_deref())?;
            let decoder = Decoder::from_config(cfg.encryption.as_ref())?;
            let mut req = PlanRequest {
                target,
                backup: backup.clone(),
                timeline: *timeline,
            };
            if *in_place && !*resume {
                // An interrupted in-place restore is finished or undone first.
                pgpitr_restore::inplace::refuse_if_interrupted(&cfg, &bins)?;
            }
            if *in_place && *resume {
                // Finish what was started: the same backup and timeline.
                if let Some(j) = pgpitr_restore::inplace::interrupted(&cfg)? {
                    req.backup = Some(j.backup_id.clone());
                    if j.timeline != 0 {
                        req.timeline = Some(j.timeline);
                    }
                }
                let inv = Inventory::load(&cfg, &decoder)?;
                let p = plan(&inv, &bins, &decoder, &req);
                let opts = pgpitr_restore::inplace::InPlaceOptions {
                    config_path,
                    tools_dir: tools_dir(cfg.pgpitr.bin_dir.as_deref())?,
                    progress: !*json && std::io::stderr().is_terminal(),
                };
                if *dry_run {
                    let j = pgpitr_restore::inplace::journal_path(&std::path::absolute(
                        &cfg.postgres.data_dir,
                    )?);
                    if let Ok(p) = &p {
                        print!("{p}");
                    }
                    println!(
                        "{}",
                        pgpitr_restore::inplace::interrupted_message(&cfg, &bins, &j)?
                    );
                    println!("dry run: nothing was changed");
                    return Ok(());
                }
                let report =
                    pgpitr_restore::inplace::resume(&cfg, &bins, &decoder, p, &opts, &mut |s| {
                        say(s)
                    })?;
                print_report(&report, serde_json::to_value(&report)?);
                return Ok(());
            }
            let inv = Inventory::load(&cfg, &decoder)?;
            let p = plan(&inv, &bins, &decoder, &req)?;
            let plan_secs = t0.elapsed().as_secs_f64();
            let plan_step = pgpitr_restore::execute::Step {
                step: "plan and check WAL chain".into(),
                seconds: plan_secs,
            };
            let progress = !*json && std::io::stderr().is_terminal();
            if *in_place {
                use pgpitr_restore::inplace;
                sd_notify(&format!(
                    "READY=1\nSTATUS=restoring the instance in place: backup {} to {}",
                    p.backup.id, p.target
                ));
                let opts = inplace::InPlaceOptions {
                    config_path,
                    tools_dir: tools_dir(cfg.pgpitr.bin_dir.as_deref())?,
                    progress,
                };
                let mut report = {
                    let prep = inplace::prepare(&cfg, &bins, &p)?;
                    if *dry_run {
                        if *json {
                            println!(
                                "{}",
                                serde_json::to_string_pretty(
                                    &serde_json::json!({ "plan": p, "in_place": prep })
                                )?
                            );
                        } else {
                            print!("{p}{prep}");
                            println!("dry run: nothing was changed");
                        }
                        return Ok(());
                    }
                    if !*json {
                        eprint!("{p}{prep}");
                    }
                    inplace::run(&cfg, &bins, &decoder, &p, &prep, &opts, &mut |s| say(s))?
                };
                report.restore.steps.insert(0, plan_step);
                print_report(&report, serde_json::to_value(&report)?);
                return Ok(());
            }
            let into_abs = std::path::absolute(into.as_ref().expect("clap requires --into"))?;
            if *retarget {
                if *dry_run {
                    print!("{p}");
                    println!("dry run: nothing was changed");
                    return Ok(());
                }
                let r = pgpitr_restore::paused::retarget(
                    &cfg,
                    &bins,
                    &p,
                    &into_abs,
                    progress,
                    &mut |s| say(s),
                )?;
                print_report(&r, serde_json::to_value(&r)?);
                return Ok(());
            }
            if *dry_run {
                if *json {
                    println!("{}", serde_json::to_string_pretty(&p)?);
                } else {
                    print!("{p}");
                    println!("dry run: nothing was changed");
                }
                return Ok(());
            }
            if !*json {
                eprint!("{p}");
            }
            sd_notify(&format!(
                "READY=1\nSTATUS=restoring backup {} to {}",
                p.backup.id, p.target
            ));
            if cfg.zfs.is_some() {
                if let Some(snap) = pgpitr_zfs::safety_snapshot(&into_abs)? {
                    eprintln!("pgpitr: safety snapshot {snap} taken; to undo this restore: stop the restored server, then zfs rollback {snap}");
                }
            }
            let opts = ExecuteOptions {
                into: into_abs,
                port: port.expect("clap requires --port"),
                config_path,
                tools_dir: tools_dir(cfg.pgpitr.bin_dir.as_deref())?,
                archive: *archive,
                progress,
                pause: *pause,
            };
            let mut report = execute(&cfg, &bins, &decoder, &p, &opts, &mut |s| say(s))?;
            sd_notify(&format!(
                "STATUS=restored: server running on port {} (timeline {})",
                report.port, report.timeline
            ));
            report.steps.insert(0, plan_step);
            print_report(&report, serde_json::to_value(&report)?);
            Ok(())
        }
        Cmd::Config(ConfigCmd::Check) => {
            // The NixOS module's contract test runs this on every config it generates.
            cli.config.load()?;
            println!("ok: {}", cli.config.path()?.display());
            Ok(())
        }
    })
}
