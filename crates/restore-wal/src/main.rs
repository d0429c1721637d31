//! `restore_command = 'restore-wal --config C %f %p'`.
//!
//! Exit 0: restored. Exit 1, quietly: not archived (PostgreSQL asks for such files as part of
//! recovery). Exit 126: the object exists but cannot be restored (corrupt, undecryptable):
//! PostgreSQL treats exit codes above 125 as fatal and stops recovery instead of assuming
//! the end of WAL and promoting too early.

use clap::Parser;
use pgpitr_cli::{fail, init_logging, ConfigArgs};
use pgpitr_wal::codec::Decoder;
use pgpitr_wal::prefetch::{self, Restored};
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
    /// Internal: run as the background prefetcher for the pg_wal folder of PATH.
    #[arg(long, hide = true)]
    prefetch_daemon: bool,
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
    if cli.prefetch_daemon {
        let r = (|| -> anyhow::Result<()> {
            let cfg = cli.config.load()?;
            let decoder = Decoder::from_config(cfg.encryption.as_ref())?;
            let data_dir = std::env::current_dir()?;
            let pg_wal = data_dir.join(cli.path.parent().unwrap_or(std::path::Path::new(".")));
            let store = Store::new(&cfg.archive.dir);
            prefetch::run_prefetcher(&store, &decoder, &data_dir, &pg_wal, cfg.restore.prefetch)?;
            Ok(())
        })();
        // Its stderr is pg_wal/.pgpitr-prefetch.log (see start_prefetcher).
        if let Err(e) = r {
            eprintln!(
                "{} restore-wal: prefetching stopped: {e:#} (each segment is still fetched by its own call)",
                pgpitr_time::rfc3339(chrono::Utc::now())
            );
        }
        return ExitCode::SUCCESS;
    }
    let result = (|| -> anyhow::Result<Restored> {
        let cfg = cli.config.load()?;
        let decoder = Decoder::from_config(cfg.encryption.as_ref())?;
        let store = Store::new(&cfg.archive.dir);
        Ok(prefetch::restore(
            &store,
            &decoder,
            &name,
            &cli.path,
            cfg.restore.prefetch,
            start_prefetcher,
        )?)
    })();
    match result {
        Ok(Restored::Spool | Restored::Fetched) => ExitCode::SUCCESS,
        Ok(Restored::Missing) => ExitCode::from(1),
        Err(e) => fail(
            "restore-wal",
            &e.context(format!("cannot restore {name}")),
            FATAL,
        ),
    }
}

/// Where the background prefetcher's warnings go, inside pg_wal.
const PREFETCH_LOG: &str = ".pgpitr-prefetch.log";

/// Starts `restore-wal ARGS --prefetch-daemon` in its own process group, detached from
/// PostgreSQL's call (which only waits for this process). If one is running already, the new
/// one exits at once and the running one picks up the new request. A failure here only
/// means no prefetching.
fn start_prefetcher() {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    // Not PostgreSQL's stderr: whoever reads the call's output (a script, a test) would wait
    // for the detached prefetcher. Its warnings go to a log in pg_wal (never inside a base
    // backup: pg_basebackup copies no file of pg_wal but WAL), kept under 1 MiB.
    let log = (|| {
        let cli = Cli::try_parse().ok()?;
        let pg_wal = cli.path.parent().filter(|p| !p.as_os_str().is_empty())?;
        let path = pg_wal.join(PREFETCH_LOG);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() > 1 << 20) {
            let _ = std::fs::remove_file(&path);
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()
    })();
    let spawned = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .arg("--prefetch-daemon")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.map(Stdio::from).unwrap_or_else(Stdio::null))
        .process_group(0)
        .spawn();
    if let Err(e) = spawned {
        tracing::warn!("cannot start the prefetcher: {e}");
    }
}
