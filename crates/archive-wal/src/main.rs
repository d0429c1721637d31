//! `archive_command = 'archive-wal --config C %p %f'`: exit 0 only once the object is durable.

use clap::Parser;
use pgpitr_cli::{run_main, ConfigArgs};
use pgpitr_wal::codec::Encoder;
use pgpitr_wal::store::{Pushed, Store};
use pgpitr_wal::WalName;
use std::path::PathBuf;
use std::process::ExitCode;

/// Archive one WAL file (PostgreSQL's %p and %f) into the instance's archive.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    /// Path of the file to archive (%p, relative to the data folder).
    path: PathBuf,
    /// Its file name (%f).
    name: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    run_main("archive-wal", || {
        let cfg = cli.config.load()?;
        let name = WalName::parse(&cli.name).ok_or_else(|| {
            anyhow::anyhow!("{:?} is not a WAL file name PostgreSQL archives", cli.name)
        })?;
        let encoder = Encoder::new(
            cfg.archive.compression,
            cfg.archive.level,
            cfg.encryption.as_ref(),
        )?;
        // archive_command runs in the data folder: PG_VERSION there names the major version.
        let pg_version = std::fs::read_to_string("PG_VERSION")
            .ok()
            .and_then(|v| v.trim().parse().ok());
        match Store::new(&cfg.archive.dir).push(&cli.path, &name, &encoder, pg_version)? {
            Pushed::Stored(e) => tracing::info!(
                "archived {name}: {} -> {} bytes, sha256 {}",
                e.raw_bytes,
                e.stored_bytes,
                e.sha256
            ),
            Pushed::AlreadyArchived { sha256 } => {
                tracing::info!("{name} already archived with the same bytes (sha256 {sha256})")
            }
        }
        Ok(())
    })
}
