//! `archive_command = 'archive-wal --config C %p %f'`: exit 0 only once the object is durable.

use clap::Parser;
use pgpitr_cli::{run_main, ConfigArgs};
use pgpitr_wal::codec::Encoder;
use pgpitr_wal::lookahead;
use pgpitr_wal::metrics::{record, Outcome};
use pgpitr_wal::store::{Pushed, Store};
use pgpitr_wal::WalName;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

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
        let started = Instant::now();
        let cfg = cli.config.load()?;
        let name = WalName::parse(&cli.name).ok_or_else(|| {
            anyhow::anyhow!("{:?} is not a WAL file name PostgreSQL archives", cli.name)
        })?;
        let store = Store::new(&cfg.archive.dir);
        let result = push(&cfg, &store, &cli.path, &name);
        if let Some(m) = &cfg.metrics {
            let outcome = match &result {
                Ok(p) => Outcome::Pushed(p),
                Err(_) => Outcome::Failed,
            };
            let secs = started.elapsed().as_secs_f64();
            // Metrics must never turn a durable archive into a failure for PostgreSQL.
            if let Err(e) = record(&m.textfile_dir, &cfg.instance, &store, &name, outcome, secs) {
                tracing::warn!("{e}");
            }
        }
        match result? {
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

fn push(
    cfg: &pgpitr_config::Config,
    store: &Store,
    path: &std::path::Path,
    name: &WalName,
) -> anyhow::Result<Pushed> {
    let encoder = |workers| {
        Encoder::new(
            cfg.archive.compression,
            cfg.archive.level,
            cfg.encryption.as_ref(),
        )
        .map(|e| e.with_zstd_workers(workers))
    };
    // archive_command runs in the data folder: PG_VERSION there names the major version.
    let pg_version = std::fs::read_to_string("PG_VERSION")
        .ok()
        .and_then(|v| v.trim().parse().ok());
    let out = lookahead::archive(
        store,
        &encoder,
        path,
        name,
        cfg.archive.parallel(),
        pg_version,
    )?;
    if !out.ahead.is_empty() {
        tracing::info!("also archived ahead: {:?}", out.ahead);
    }
    // A primary after a restore: the prefetch spool of its recovery is not needed any more.
    if let (Ok(data_dir), Some(pg_wal)) = (std::env::current_dir(), path.parent()) {
        pgpitr_wal::prefetch::cleanup_after_recovery(&data_dir, &data_dir.join(pg_wal));
    }
    Ok(out.pushed)
}
