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
    /// Restore a cluster to a point in time into an empty folder and start it there, or
    /// in place of the instance's data folder (--in-place).
    Restore {
        /// A time (RFC 3339; PostgreSQL's forms such as "2026-11-22 13:28:28.40844+00",
        /// "... UTC", "... Europe/Berlin"; a zone-less time is local time; "30 minutes ago"),
        /// xid:N, name:LABEL, lsn:X/Y, immediate or latest. Any time pgpitr prints is accepted.
        #[arg(long, required_unless_present_any = ["before_incident", "promote", "undo"])]
        to: Option<String>,
        /// Restore to just before the top-ranked incident `pgpitr incidents` finds (asks
        /// which one on a terminal); shows what it chose first.
        #[arg(long, conflicts_with_all = ["to", "exclusive", "promote", "undo", "retarget"])]
        before_incident: bool,
        /// With --before-incident: look at the WAL within 15 minutes of this time only.
        #[arg(long, requires = "before_incident")]
        around: Option<String>,
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
        /// Stop just before the target (xid:, time and lsn: targets), e.g. before the
        /// commit of the DELETE's own transaction.
        #[arg(long)]
        exclusive: bool,
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
        /// Print the report (or with --dry-run the plan and its checks) as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Find the bad moment in the archived WAL (DELETE without WHERE, TRUNCATE, DROP, large
    /// UPDATE), ranked most destructive first, each with the restore that undoes it.
    Incidents {
        /// Only transactions committed at or after this time (RFC 3339 or "N minutes ago").
        #[arg(long)]
        since: Option<String>,
        /// Only transactions committed at or before this time.
        #[arg(long)]
        until: Option<String>,
        /// Within 15 minutes either side of this time (unless --since/--until say otherwise).
        #[arg(long)]
        around: Option<String>,
        /// List transactions that deleted or updated at least this many rows.
        #[arg(long, default_value_t = 10)]
        min_rows: u64,
        /// Show at most this many incidents.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// pg_waldump processes at a time (default: CPUs, at most 4).
        #[arg(long)]
        jobs: Option<usize>,
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
        // The demo makes its own throw-away cluster: the global instance flags mean nothing
        // here. Declared again (same ids) so they are hidden from `demo --help` and refused.
        #[arg(
            long = "config",
            short = 'c',
            id = "config",
            value_name = "PATH",
            hide = true
        )]
        demo_config: Option<PathBuf>,
        #[arg(long = "instance", id = "instance", value_name = "NAME", hide = true)]
        demo_instance: Option<String>,
    },
    /// Work with the instance config file itself.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Restore drill: restore into drill.scratch_dir on drill.port, check the copy (target,
    /// promotion, connections, pg_amcheck, heartbeat), record the result, remove the copy.
    Drill {
        /// random, latest, or any target `restore --to` accepts; without it drills alternate
        /// between random and latest.
        #[arg(long)]
        to: Option<String>,
        /// Restore from the local archive and backups or from the offsite restic copies alone.
        #[arg(long, value_name = "SOURCE", value_parser = ["local", "offsite"], default_value = "local")]
        from: String,
        /// Leave the restored copy running for inspection (the next drill removes it).
        #[arg(long)]
        keep: bool,
        #[arg(long)]
        json: bool,
    },
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

/// A `--since`/`--until`/`--around` time: the forms `--to` accepts for times.
fn time_arg(flag: &str, s: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    match pgpitr_restore::parse_target(s, chrono::Utc::now()).map_err(anyhow::Error::msg)? {
        pgpitr_restore::Target::Time(t) => Ok(t),
        other => anyhow::bail!("{flag} needs a time (RFC 3339 or \"N minutes ago\"), not {other}"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    run_main("pgpitr", || match &cli.command {
        Cmd::Demo {
            keep,
            rows,
            demo_config,
            demo_instance,
        } => {
            if demo_config.is_some() || demo_instance.is_some() {
                anyhow::bail!(
                    "pgpitr demo runs on a throw-away cluster of its own and reads no instance config: drop --config/--instance (for your instance, see `pgpitr status` and `pgpitr restore --dry-run`)"
                );
            }
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
        Cmd::Incidents {
            since,
            until,
            around,
            min_rows,
            limit,
            jobs,
            json,
        } => {
            let cfg = cli.config.load()?;
            let opts = pgpitr_incidents::ScanOptions {
                since: since
                    .as_deref()
                    .map(|s| time_arg("--since", s))
                    .transpose()?,
                until: until
                    .as_deref()
                    .map(|s| time_arg("--until", s))
                    .transpose()?,
                around: around
                    .as_deref()
                    .map(|s| time_arg("--around", s))
                    .transpose()?,
                min_rows: *min_rows,
                jobs: *jobs,
                live_names: true,
                config_path: cli.config.path()?.display().to_string(),
                limit: Some(*limit),
            };
            let tty = std::io::stderr().is_terminal();
            let report = pgpitr_incidents::scan(&cfg, &opts, &mut |s| {
                if tty && !*json {
                    eprint!("\r\x1b[Kpgpitr: {s}");
                }
            })?;
            if tty && !*json {
                eprintln!();
            }
            if *json {
                pgpitr_cli::print_json(&report)?;
            } else {
                print!("{report}");
            }
            Ok(())
        }
        Cmd::Verify { quick, json } => {
            let cfg = cli.config.load()?;
            let report = pgpitr_retention::verify(&cfg, *quick)?;
            if let Err(e) = pgpitr_retention::verify::record_metrics(&cfg, &report) {
                eprintln!("pgpitr: warning: {e}");
            }
            if *json {
                pgpitr_cli::print_json(&report)?;
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
                pgpitr_cli::print_json(&states)?;
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
                pgpitr_cli::print_json(&st)?;
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
            let drill = pgpitr_drill::last_drill(&cfg)?;
            if *json {
                let mut v = serde_json::to_value(&st)?;
                v["last_drill"] = serde_json::to_value(&drill)?;
                pgpitr_cli::print_json(&v)?;
            } else {
                print!("{st}");
                match &drill {
                    Some(d) => println!("{}", d.summary()),
                    None => println!("no restore drill yet: run `pgpitr drill`"),
                }
            }
            Ok(())
        }
        Cmd::Restore {
            to,
            before_incident: _,
            around,
            into,
            port,
            backup,
            timeline,
            exclusive,
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
            // Warnings reach stderr with --json too (the human report lists them itself).
            let print_report =
                |r: &dyn std::fmt::Display, v: serde_json::Value, warnings: &[String]| {
                    if *json {
                        for w in warnings {
                            eprintln!("pgpitr: warning: {w}");
                        }
                        let _ = pgpitr_cli::print_json(&v);
                    } else {
                        println!("{r}");
                    }
                };
            if *promote || *undo {
                let cfg = cli.config.load()?;
                let bins = Bins::discover(cfg.postgres.bin_dir.as_deref())?;
                if *undo {
                    let msg = pgpitr_restore::inplace::undo(&cfg, &bins, &mut |s| say(s))?;
                    print_report(&msg, serde_json::json!({ "undone": msg }), &[]);
                } else {
                    let into = std::path::absolute(into.as_ref().expect("clap requires --into"))?;
                    let r = pgpitr_restore::paused::promote(&cfg, &bins, &into)?;
                    print_report(&r, serde_json::to_value(&r)?, &r.warnings);
                }
                return Ok(());
            }
            let t0 = Instant::now();
            let mut cfg = cli.config.load()?;
            let (target, exclusive, zone_note) = match to {
                Some(to) => {
                    let (target, zone_note) =
                        pgpitr_restore::target::parse_target_noted(to, chrono::Utc::now())
                            .map_err(anyhow::Error::msg)?;
                    if *exclusive {
                        target.check_exclusive().map_err(anyhow::Error::msg)?;
                    }
                    (target, *exclusive, zone_note)
                }
                None => {
                    let opts = pgpitr_incidents::ScanOptions {
                        around: around
                            .as_deref()
                            .map(|s| time_arg("--around", s))
                            .transpose()?,
                        config_path: cli.config.path()?.display().to_string(),
                        ..Default::default()
                    };
                    let report = pgpitr_incidents::scan(&cfg, &opts, &mut |_| {})?;
                    let interactive = !*json
                        && !*dry_run
                        && std::io::stdin().is_terminal()
                        && std::io::stderr().is_terminal();
                    let (stdin, mut stderr) = (std::io::stdin(), std::io::stderr());
                    let mut lock = stdin.lock();
                    let chosen = pgpitr_incidents::choose(
                        &report,
                        interactive.then_some((
                            &mut lock as &mut dyn std::io::BufRead,
                            &mut stderr as &mut dyn std::io::Write,
                        )),
                    )?;
                    eprintln!(
                        "pgpitr: restoring to just before #{} {}",
                        chosen.rank,
                        chosen.summary()
                    );
                    (pgpitr_restore::Target::Xid(chosen.xid.into()), true, None)
                }
            };
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
            // Held until the restore is done: walprune must not prune what the plan checked.
            let _lock = pgpitr_restore::plan::lock(&cfg)?;
            let mut req = PlanRequest {
                target,
                backup: backup.clone(),
                timeline: *timeline,
                exclusive,
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
                print_report(&report, serde_json::to_value(&report)?, &report.warnings);
                return Ok(());
            }
            let inv = Inventory::load(&cfg, &decoder)?;
            let mut p = plan(&inv, &bins, &decoder, &req)?;
            p.warnings.extend(zone_note);
            let plan_step = |t0: Instant| pgpitr_restore::execute::Step {
                step: "plan and check WAL chain".into(),
                seconds: t0.elapsed().as_secs_f64(),
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
                let step = plan_step(t0);
                let mut report = {
                    let prep = inplace::prepare(&cfg, &bins, &p)?;
                    if *dry_run {
                        if *json {
                            pgpitr_cli::print_json(
                                &serde_json::json!({ "plan": p, "in_place": prep }),
                            )?;
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
                report.restore.steps.insert(0, step);
                print_report(&report, serde_json::to_value(&report)?, &report.warnings);
                return Ok(());
            }
            let into = into.as_ref().expect("clap requires --into");
            let into_abs = std::path::absolute(into)?;
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
                print_report(&r, serde_json::to_value(&r)?, &r.warnings);
                return Ok(());
            }
            let port = port.expect("clap requires --port");
            let checks = pgpitr_restore::preflight::check(
                &cfg,
                &pgpitr_restore::preflight::PreflightRequest {
                    into,
                    port,
                    config_path: &config_path,
                    tools_dir: &tools_dir(cfg.pgpitr.bin_dir.as_deref())?,
                    raw_bytes: p.backup.raw_bytes(),
                },
            );
            let refused = pgpitr_restore::preflight::failures(&checks);
            let step = plan_step(t0);
            if *dry_run {
                if *json {
                    let mut doc = serde_json::to_value(&p)?;
                    doc["checks"] = serde_json::to_value(&checks)?;
                    doc["ok"] = refused.is_none().into();
                    pgpitr_cli::print_json(&doc)?;
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
            if cfg.zfs.is_some() {
                if let Some(snap) = pgpitr_zfs::safety_snapshot(&into_abs)? {
                    eprintln!("pgpitr: safety snapshot {snap} taken; to undo this restore: stop the restored server, then zfs rollback {snap}");
                }
            }
            let opts = ExecuteOptions {
                into: into_abs,
                port,
                config_path,
                tools_dir: tools_dir(cfg.pgpitr.bin_dir.as_deref())?,
                archive: *archive,
                progress,
                pause: *pause,
                hand_over: true,
            };
            let mut report = execute(&cfg, &bins, &decoder, &p, &opts, &mut |s| say(s))?;
            sd_notify(&format!(
                "STATUS=restored: server running on port {} (timeline {})",
                report.port, report.timeline
            ));
            report.steps.insert(0, step);
            print_report(&report, serde_json::to_value(&report)?, &report.warnings);
            Ok(())
        }
        Cmd::Drill {
            to,
            from,
            keep,
            json,
        } => {
            let cfg = cli.config.load()?;
            let opts = pgpitr_drill::DrillOptions {
                to: to.clone(),
                source: if from == "offsite" {
                    pgpitr_drill::Source::Offsite
                } else {
                    pgpitr_drill::Source::Local
                },
                keep: *keep,
                config_path: cli.config.path()?,
                tools_dir: tools_dir(cfg.pgpitr.bin_dir.as_deref())?,
                progress: !*json && std::io::stderr().is_terminal(),
            };
            let rec = pgpitr_drill::run(&cfg, &opts, &mut |s| {
                sd_notify(&format!("STATUS={s}"));
                if !*json {
                    eprintln!("pgpitr: {s}")
                }
            })?;
            if *json {
                pgpitr_cli::print_json(&rec)?;
                // The record is the JSON document, also when the drill failed.
                pgpitr_cli::json_printed();
            } else {
                print!("{rec}");
            }
            if !rec.success {
                let failed: Vec<String> = rec
                    .failed_checks()
                    .iter()
                    .map(|c| format!("check {} failed: {}", c.check, c.detail))
                    .collect();
                anyhow::bail!(
                    "drill failed: {} (history: {})",
                    failed.join("; "),
                    pgpitr_drill::history_path(&cfg).display()
                );
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
