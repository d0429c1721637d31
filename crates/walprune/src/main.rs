//! `walprune --config C [--dry-run] [--json]`: deletes base backups outside the retention
//! policy and the archived WAL no kept backup can use; never what a kept backup needs.

use clap::Parser;
use pgpitr_cli::{run_main, ConfigArgs};
use std::process::ExitCode;

/// Apply the retention policy to the backups and the WAL archive.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    /// Print exactly what would go, and the restorable window before and after.
    #[arg(long)]
    dry_run: bool,
    /// Print the plan (or what was deleted) as JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    run_main("walprune", || {
        let cfg = cli.config.load()?;
        let plan = pgpitr_retention::prune(&cfg, cli.dry_run)?;
        if cli.json {
            pgpitr_cli::print_json(&plan)?;
        } else {
            println!("{plan}");
            if cli.dry_run {
                println!("dry run: nothing was deleted");
            }
        }
        Ok(())
    })
}
