//! `preseed --config C`: before the server first starts, makes sure the data folder holds
//! this instance's cluster, bringing it back from the configured sources when it is empty.
//! Exit 0: PostgreSQL may start. Exit 1: refused or failed (one line says why and what to do).

use clap::Parser;
use pgpitr_cli::{run_main, sd_notify, ConfigArgs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Bring a rebuilt node's data folder back before PostgreSQL starts; never clobber anything.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    /// Rename a non-empty folder that is not this instance's cluster aside (never deleted),
    /// then restore.
    #[arg(long)]
    quarantine: bool,
    /// Print what the data folder holds and how fresh each method's data is; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// The follow-up step, once the server runs: wait until it accepts connections and take
    /// a base backup when none is on its current timeline yet (else do nothing).
    #[arg(long, conflicts_with_all = ["quarantine", "dry_run"])]
    follow_up_backup: bool,
    /// How long --follow-up-backup waits for the server.
    #[arg(long, default_value_t = 300)]
    wait_seconds: u64,
    /// Print the report (schema in docs/json.md) as JSON on stdout.
    #[arg(long)]
    json: bool,
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
    run_main("preseed", || {
        let cfg = cli.config.load()?;
        let began = Instant::now();
        let say = &mut |s: &str| {
            sd_notify(&format!("STATUS={s}"));
            if !cli.json {
                eprintln!("preseed: [{:6.1} s] {s}", began.elapsed().as_secs_f64());
            }
        };
        if cli.follow_up_backup {
            let took =
                pgpitr_preseed::follow_up_backup(&cfg, Duration::from_secs(cli.wait_seconds), say)?;
            match took {
                Some(b) => println!("{}", b.id),
                None => println!("no backup needed"),
            }
            return Ok(());
        }
        let started = Instant::now();
        let ctx = pgpitr_preseed::Context::new(
            &cfg,
            cli.config.path()?,
            tools_dir(cfg.pgpitr.bin_dir.as_deref())?,
        )?;
        let result = pgpitr_preseed::run(
            &ctx,
            &pgpitr_preseed::Options {
                quarantine: cli.quarantine,
                dry_run: cli.dry_run,
            },
            say,
        );
        if !cli.dry_run {
            let d = started.elapsed().as_secs_f64();
            if let Err(e) = pgpitr_preseed::record_metrics(&cfg, result.as_ref().ok(), d) {
                eprintln!("preseed: warning: {e}");
            }
        }
        let report = result?;
        if cli.json {
            pgpitr_cli::print_json(&report)?;
        } else {
            println!("{report}");
        }
        // The one-line journal summary.
        eprintln!("preseed: {}", report.summary());
        Ok(())
    })
}
