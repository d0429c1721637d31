//! `basebackup --config C`: takes, stores, verifies and catalogues a base backup; prints its id.

use clap::Parser;
use pgpitr_cli::{run_main, sd_notify, ConfigArgs};
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
        sd_notify("READY=1\nSTATUS=starting base backup");
        let result = pgpitr_backup::take(&cfg, &mut |step| {
            eprintln!("basebackup: {step}");
            sd_notify(&format!("STATUS={step}"));
        });
        if let Some(m) = &cfg.metrics {
            let ok = result.as_ref().ok();
            if let Err(e) =
                pgpitr_backup::metrics::record(&m.textfile_dir, &cfg.instance, &cfg.backup.dir, ok)
            {
                eprintln!("basebackup: warning: {e}");
            }
        }
        let info = result?;
        sd_notify(&format!("STATUS=backup {} complete", info.id));
        if cli.json {
            pgpitr_cli::print_json(&info)?;
        } else {
            println!("{}", info.id);
        }
        Ok(())
    })
}
