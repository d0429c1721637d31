//! `pgpitr`: the operator's command line (status, restore, demo, config check).

use clap::{Parser, Subcommand};
use pgpitr_cli::{run_main, sd_notify, ConfigArgs};
use pgpitr_pg::Bins;
use pgpitr_restore::{execute, plan, ExecuteOptions, Inventory, PlanRequest};
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
        /// Print the status as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// List what the offsite restic repository holds instead.
        #[arg(long)]
        offsite: bool,
    },
    /// Restore a cluster to a point in time into an empty folder and start it there.
    Restore {
        /// A time (RFC 3339; PostgreSQL's forms such as "2026-11-22 13:28:28.40844+00",
        /// "... UTC", "... Europe/Berlin"; a zone-less time is local time; "30 minutes ago"),
        /// xid:N, name:LABEL, lsn:X/Y, immediate or latest. Any time pgpitr prints is accepted.
        #[arg(long)]
        to: String,
        /// Empty or new folder for the restored data.
        #[arg(long)]
        into: PathBuf,
        /// Port for the restored server (its socket goes to postgres.socket_dir).
        #[arg(long)]
        port: u16,
        /// Use this backup instead of the newest one that reaches the target.
        #[arg(long)]
        backup: Option<String>,
        /// Follow this timeline instead of the latest.
        #[arg(long)]
        timeline: Option<u32>,
        /// Let the restored server archive into the instance's archive (it becomes the new primary).
        #[arg(long)]
        archive: bool,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Fetch the backup and WAL from the offsite restic repository (the local archive
        /// and backups are gone).
        #[arg(long, value_name = "SOURCE", value_parser = ["local", "offsite"], default_value = "local")]
        from: String,
        /// Where `--from offsite` puts what it fetches (default: beside --into).
        #[arg(long)]
        staging: Option<PathBuf>,
        /// Print the report (or with --dry-run the plan and its checks) as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Check every archived object, timeline history and backup; report gaps and windows.
    Verify {
        /// Check names and sizes only (no decoding).
        #[arg(long)]
        quick: bool,
        /// Print the report as JSON on stdout.
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
        /// Set drifted properties to the configured values (without it, only report).
        #[arg(long)]
        fix: bool,
        /// Print the datasets and their properties as JSON on stdout.
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
                pgpitr_cli::json_printed();
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
                pgpitr_cli::json_printed();
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
        } => {
            let t0 = Instant::now();
            let (target, zone_note) =
                pgpitr_restore::target::parse_target_noted(to, chrono::Utc::now())
                    .map_err(anyhow::Error::msg)?;
            let mut cfg = cli.config.load()?;
            let mut config_path = cli.config.path()?;
            pgpitr_restore::execute::check_target_dir(into)?;
            if from == "offsite" {
                let into_abs = std::path::absolute(into)?;
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
            let inv = Inventory::load(&cfg, &decoder)?;
            let mut p = plan(
                &inv,
                &bins,
                &decoder,
                &PlanRequest {
                    target,
                    backup: backup.clone(),
                    timeline: *timeline,
                },
            )?;
            p.warnings.extend(zone_note);
            let checks = pgpitr_restore::preflight::check(
                &cfg,
                &pgpitr_restore::preflight::PreflightRequest {
                    into,
                    port: *port,
                    config_path: &config_path,
                    tools_dir: &tools_dir(cfg.pgpitr.bin_dir.as_deref())?,
                    raw_bytes: p.backup.raw_bytes(),
                },
            );
            let refused = pgpitr_restore::preflight::failures(&checks);
            let plan_secs = t0.elapsed().as_secs_f64();
            if *dry_run {
                if *json {
                    let mut doc = serde_json::to_value(&p)?;
                    doc["checks"] = serde_json::to_value(&checks)?;
                    doc["ok"] = refused.is_none().into();
                    println!("{}", serde_json::to_string_pretty(&doc)?);
                    pgpitr_cli::json_printed();
                } else {
                    print!("{p}");
                    for c in &checks {
                        let mark = if c.ok { "ok" } else { "FAILED" };
                        println!("check:    {:<8} {}", mark, c.detail);
                    }
                    println!("dry run: nothing was changed");
                }
                if let Some(why) = refused {
                    anyhow::bail!("the restore would fail: {why}");
                }
                return Ok(());
            }
            if let Some(why) = refused {
                anyhow::bail!("refused before touching anything: {why}");
            }
            if !*json {
                eprint!("{p}");
            }
            sd_notify(&format!(
                "READY=1\nSTATUS=restoring backup {} to {}",
                p.backup.id, p.target
            ));
            let into_abs = std::path::absolute(into)?;
            if cfg.zfs.is_some() {
                if let Some(snap) = pgpitr_zfs::safety_snapshot(&into_abs)? {
                    eprintln!("pgpitr: safety snapshot {snap} taken; to undo this restore: stop the restored server, then zfs rollback {snap}");
                }
            }
            let opts = ExecuteOptions {
                into: into_abs,
                port: *port,
                config_path,
                tools_dir: tools_dir(cfg.pgpitr.bin_dir.as_deref())?,
                archive: *archive,
                progress: !*json && std::io::stderr().is_terminal(),
            };
            let mut report = execute(&cfg, &bins, &decoder, &p, &opts, &mut |s| {
                sd_notify(&format!("STATUS={s}"));
                if !*json {
                    eprintln!("pgpitr: {s}")
                }
            })?;
            sd_notify(&format!(
                "STATUS=restored: server running on port {} (timeline {})",
                report.port, report.timeline
            ));
            report.steps.insert(
                0,
                pgpitr_restore::execute::Step {
                    step: "plan and check WAL chain".into(),
                    seconds: plan_secs,
                },
            );
            if *json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{report}");
            }
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
