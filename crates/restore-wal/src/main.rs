//! `restore_command = 'restore-wal --config C %f %p'`.
//!
//! Exit 0: restored. Exit 1, quietly: not archived (PostgreSQL asks for such files as part of
//! recovery). Exit 126: the object exists but cannot be restored (corrupt, undecryptable):
//! PostgreSQL treats exit codes above 125 as fatal and stops recovery instead of assuming
//! the end of WAL and promoting too early.

use clap::Parser;
use pgpitr_cli::{fail, init_logging, ConfigArgs};
use pgpitr_wal::codec::Decoder;
use pgpitr_wal::store::Store;
use pgpitr_wal::WalName;
use std::path::PathBuf;
use std::process::ExitCode;

/// Restore one archived WAL file (PostgreSQL's %f) to a path (%p).
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    /// Archived file name (%f).
    name: String,
    /// Where to write it (%p).
    path: PathBuf,
}

/// Exit code PostgreSQL treats as fatal for restore_command.
const FATAL: u8 = 126;

fn main() -> ExitCode {
    init_logging();
    // A mistyped restore_command must stop recovery, not read as "not archived" (clap's
    // usage error is exit 2, which PostgreSQL would take for a missing file).
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("bad arguments");
            eprintln!(
                "restore-wal: error: {}",
                first.trim_start_matches("error: ")
            );
            return ExitCode::from(FATAL);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let Some(name) = WalName::parse(&cli.name) else {
        return ExitCode::from(1);
    };
    let result = (|| -> anyhow::Result<bool> {
        let cfg = cli.config.load()?;
        let decoder = Decoder::from_config(cfg.encryption.as_ref())?;
        Ok(Store::new(&cfg.archive.dir).fetch(&name, &decoder, &cli.path)?)
    })();
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => fail(
            "restore-wal",
            &e.context(format!("cannot restore {name}")),
            FATAL,
        ),
    }
}
