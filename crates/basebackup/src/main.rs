//! `basebackup --config C`: takes, stores, verifies and catalogues a base backup; prints its id.

use clap::Parser;
use pgpitr_cli::{run_main, ConfigArgs};
use std::process::ExitCode;

/// Take a base backup of the instance's server.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    /// Print backup.json instead of the id.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    run_main("basebackup", || {
        let cfg = cli.config.load()?;
        let info = pgpitr_backup::take(&cfg, &mut |step| eprintln!("basebackup: {step}"))?;
        if cli.json {
            println!("{}", serde_json::to_string_pretty(&info)?);
        } else {
            println!("{}", info.id);
        }
        Ok(())
    })
}
