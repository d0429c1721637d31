//! `offsite-sync --config C [--what wal|backups|all]`: copies the WAL archive and complete
//! base backups into the restic repository, then applies the offsite retention policy.

use clap::{Parser, ValueEnum};
use pgpitr_cli::{run_main, sd_notify, ConfigArgs};
use pgpitr_offsite::What;
use std::process::ExitCode;

#[derive(Clone, Copy, ValueEnum)]
enum WhatArg {
    /// The WAL archive only.
    Wal,
    /// Complete base backups only.
    Backups,
    /// Both.
    All,
}

/// Copy the archive and backups offsite with restic.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    /// What to copy: the WAL archive, the complete backups, or both.
    #[arg(long, value_enum, default_value = "all")]
    what: WhatArg,
    /// Remove stale restic locks first (`restic unlock`); only when no other restic runs.
    #[arg(long)]
    unlock_stale: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    run_main("offsite-sync", || {
        let cfg = cli.config.load()?;
        let what = match cli.what {
            WhatArg::Wal => What::Wal,
            WhatArg::Backups => What::Backups,
            WhatArg::All => What::All,
        };
        sd_notify("READY=1\nSTATUS=offsite sync starting");
        let result = pgpitr_offsite::sync(&cfg, what, cli.unlock_stale, &mut |s| {
            sd_notify(&format!("STATUS={s}"));
            if !cli.json {
                eprintln!("offsite-sync: {s}");
            }
        });
        if let Err(e) = pgpitr_offsite::record_metrics(&cfg, result.as_ref().ok()) {
            eprintln!("offsite-sync: warning: {e}");
        }
        let r = result?;
        if cli.json {
            pgpitr_cli::print_json(&r)?;
        } else {
            println!(
                "offsite: {} bytes added, {} new base backups ({} already offsite), {} snapshots{}",
                r.bytes_added,
                r.backups_added.len(),
                r.backups_already_offsite,
                r.snapshots,
                if r.pruned { ", retention applied" } else { "" }
            );
        }
        Ok(())
    })
}
