//! What every pgpitr binary does at its edge: log to stderr through `tracing`, find the
//! instance config from `--config`/`--instance`, and turn an error into one line on stderr
//! and a non-zero exit code.

use clap::Args;
use pgpitr_config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

/// `--config PATH` or `--instance NAME`.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// Instance config file (TOML or JSON).
    #[arg(long, short = 'c', value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,
    /// Instance name: reads $PGPITR_CONFIG_DIR (default /etc/pgpitr)/NAME.toml or .json.
    #[arg(long, value_name = "NAME", conflicts_with = "config", global = true)]
    pub instance: Option<String>,
    /// On failure print every cause on its own line; log at info level.
    #[arg(long, short = 'v', global = true)]
    pub verbose: bool,
    /// Print times in UTC instead of local time (JSON is always RFC 3339 in UTC).
    #[arg(long, global = true)]
    pub utc: bool,
}

impl ConfigArgs {
    pub fn load(&self) -> anyhow::Result<Config> {
        Ok(Config::from_args(
            self.config.as_deref(),
            self.instance.as_deref(),
        )?)
    }

    /// Absolute path of the config file in use (for restore_command / archive_command).
    pub fn path(&self) -> anyhow::Result<PathBuf> {
        let p = match (&self.config, &self.instance) {
            (Some(p), _) => p.clone(),
            (None, Some(n)) => Config::instance_path(n)?,
            (None, None) => Config::instance_path("main")?,
        };
        Ok(std::fs::canonicalize(&p).unwrap_or(p))
    }
}

/// Logs go to stderr (the journal collects it); `PGPITR_LOG` or `RUST_LOG` set the level.
pub fn init_logging() {
    let filter = std::env::var("PGPITR_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| if verbose() { "info" } else { "warn" }.into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// `-v`/`--verbose` on the command line (read before clap so errors from any stage see it).
pub fn verbose() -> bool {
    std::env::args().skip(1).any(|a| {
        a == "--verbose"
            || (a.len() > 1
                && a.starts_with('-')
                && a[1..].chars().all(|c| c.is_ascii_alphabetic())
                && a[1..].contains('v'))
    })
}

/// Prints `tool: error: cause: cause` on one line and returns exit code `code`; with `-v`,
/// the error and then each cause of its chain on a line of its own.
pub fn fail(tool: &str, err: &anyhow::Error, code: u8) -> ExitCode {
    if verbose() {
        eprintln!("{tool}: error: {err}");
        for cause in err.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        return ExitCode::from(code);
    }
    eprintln!("{tool}: error: {}", one_line(err));
    ExitCode::from(code)
}

/// The error as one line: the message and each cause not already part of it.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut msg = err.to_string();
    for cause in err.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg.replace('\n', " ")
}

static JSON_PRINTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A command that printed its JSON document (with `"ok": false`) before failing calls this,
/// so `run_main` does not print a second one.
pub fn json_printed() {
    JSON_PRINTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Prints a command's JSON document on stdout (pretty, one document per run) and records
/// that it did, so a failure after it does not add `run_main`'s error document.
pub fn print_json<T: serde::Serialize + ?Sized>(doc: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(doc)?);
    json_printed();
    Ok(())
}

/// Runs `f`, mapping an error to exit code 1 with one line on stderr. With `--json` a
/// failure also prints `{"ok": false, "error": "..."}` on stdout, so a script always gets
/// a JSON document.
pub fn run_main(tool: &str, f: impl FnOnce() -> anyhow::Result<()>) -> ExitCode {
    init_logging();
    pgpitr_time::set_utc(std::env::args().skip(1).any(|a| a == "--utc"));
    match f() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if std::env::args().skip(1).any(|a| a == "--json")
                && !JSON_PRINTED.load(std::sync::atomic::Ordering::Relaxed)
            {
                let doc = serde_json::json!({ "ok": false, "error": one_line(&e) });
                println!("{doc}");
            }
            fail(tool, &e, 1)
        }
    }
}

/// systemd notification (sd_notify): sends `msg` ("READY=1", "STATUS=...") to
/// `$NOTIFY_SOCKET` when it is set, and does nothing when it is not. Errors are logged only:
/// a job must not fail because its supervisor went away.
pub fn sd_notify(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_notify(&path, msg) {
        eprintln!("warning: sd_notify: {e}");
    }
}

fn send_notify(path: &std::ffi::OsStr, msg: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let bytes = path.as_bytes();
    let sock = UnixDatagram::unbound()?;
    // A full receive queue (a service manager that is not reading) costs this line after a
    // few seconds, with a warning, instead of stalling the job it reports on for good.
    sock.set_write_timeout(Some(std::time::Duration::from_secs(5)))?;
    let addr = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name)?
    } else {
        SocketAddr::from_pathname(std::path::Path::new(path))?
    };
    sock.send_to_addr(msg.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;

    /// A receiver that does not read (its queue full) costs a notification, never the job:
    /// the send gives up with an error instead of blocking for good.
    #[test]
    fn a_full_notify_socket_drops_the_line_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let filler = UnixDatagram::unbound().unwrap();
        filler.set_nonblocking(true).unwrap();
        let mut queued = 0;
        while filler.send_to(b"STATUS=filler", &path).is_ok() {
            queued += 1;
            assert!(queued < 100_000, "the socket's queue never filled");
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        std::thread::spawn(move || tx.send(super::send_notify(p.as_os_str(), "STATUS=x")));
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("sd_notify blocked on a full socket");
        assert!(r.is_err(), "a line was sent to a full queue of {queued}");
        drop(receiver);
    }
}
