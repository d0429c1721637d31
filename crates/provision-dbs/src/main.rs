//! `provision-dbs --config C [--force] [--dry-run]`: make the server hold the declared
//! databases; a no-op (nothing sent) when the stamp matches the desired state.

use clap::Parser;
use pgpitr_cli::{run_main, ConfigArgs};
use std::process::ExitCode;

/// Create the declared databases, roles, extensions and grants; never drop anything.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    /// Apply even when the stamp says nothing changed.
    #[arg(long)]
    force: bool,
    /// Print the statements (passwords redacted) and change nothing.
    #[arg(long)]
    dry_run: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    run_main("provision-dbs", || {
        let cfg = cli.config.load()?;
        let opts = pgpitr_provision::Options {
            force: cli.force,
            dry_run: cli.dry_run,
        };
        let result = pgpitr_provision::run(&cfg, &opts, &mut |l| println!("{l}"));
        if !cli.dry_run {
            if let Err(e) = pgpitr_provision::record_metrics(&cfg, result.as_ref().ok()) {
                eprintln!("provision-dbs: warning: {e}");
            }
        }
        result?;
        Ok(())
    })
}
