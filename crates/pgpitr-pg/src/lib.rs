//! PostgreSQL control: finding the binaries, running server processes under the right
//! account, pg_ctl, connections over the unix socket, and reading WAL with pg_waldump.

use chrono::{DateTime, NaiveDateTime, Utc};
use pgpitr_wal::{Lsn, WalName};
use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use postgres::Client;

pub mod heartbeat;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("PostgreSQL binaries not found ({searched}). Install them with `apt-get install postgresql-15` (Debian/Ubuntu) or set postgres.bin_dir in the config")]
    NoBinaries { searched: String },
    #[error("operating-system user `{0}` does not exist; PostgreSQL refuses to run as root, so pgpitr runs the server as that user (create it, or set postgres.os_user)")]
    NoSuchUser(String),
    #[error("{cmd} failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run {cmd}: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to PostgreSQL at {socket_dir} port {port}: {message}")]
    Connect {
        socket_dir: PathBuf,
        port: u16,
        /// PostgreSQL's own reason (or the OS's), and what to do about it.
        message: String,
        /// The server answered (it is running) and refused us.
        server_answered: bool,
    },
    #[error("query failed: {}", reason(.0))]
    Query(#[from] postgres::Error),
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, PgError>;

/// The folder holding pg_ctl, pg_basebackup, postgres and friends.
#[derive(Debug, Clone)]
pub struct Bins {
    pub dir: PathBuf,
}

impl Bins {
    /// Uses `configured` when given, else `pg_config --bindir`, else the newest
    /// `/usr/lib/postgresql/*/bin`, else PATH.
    pub fn discover(configured: Option<&Path>) -> Result<Bins> {
        let mut searched = Vec::new();
        let has = |d: &Path| d.join("pg_ctl").is_file() && d.join("postgres").is_file();
        if let Some(d) = configured {
            if has(d) {
                return Ok(Bins {
                    dir: d.to_path_buf(),
                });
            }
            return Err(PgError::NoBinaries {
                searched: format!("postgres.bin_dir = {} has no pg_ctl/postgres", d.display()),
            });
        }
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
            let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if out.status.success() && has(&d) {
                return Ok(Bins { dir: d });
            }
            searched.push(format!("pg_config --bindir = {}", d.display()));
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse().ok()?;
                Some((v, e.path().join("bin")))
            })
            .filter(|(_, d)| has(d))
            .collect();
        versions.sort();
        if let Some((_, d)) = versions.pop() {
            return Ok(Bins { dir: d });
        }
        searched.push("/usr/lib/postgresql/*/bin".into());
        if let Some(path) = std::env::var_os("PATH") {
            for d in std::env::split_paths(&path) {
                if has(&d) {
                    return Ok(Bins { dir: d });
                }
            }
        }
        searched.push("PATH".into());
        Err(PgError::NoBinaries {
            searched: searched.join(", "),
        })
    }

    pub fn path(&self, tool: &str) -> PathBuf {
        self.dir.join(tool)
    }

    /// Major version reported by `postgres --version`.
    pub fn major_version(&self) -> Result<u32> {
        let out = run(Command::new(self.path("postgres")).arg("--version"))?;
        let s = String::from_utf8_lossy(&out.stdout);
        s.split_whitespace()
            .last()
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| PgError::Other(format!("cannot read version from {s:?}")))
    }
}

/// The operating-system account server processes run as (only when we are root).
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl Account {
    /// `Some(account)` when running as root (PostgreSQL refuses root), else `None`
    /// (server processes run as the current user).
    pub fn for_server(os_user: &str) -> Result<Option<Account>> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        Self::lookup(os_user).map(Some)
    }

    pub fn lookup(name: &str) -> Result<Account> {
        let c = CString::new(name).map_err(|_| PgError::NoSuchUser(name.into()))?;
        // SAFETY: getpwnam returns a pointer to static storage or null; we copy out at once.
        let pw = unsafe { libc::getpwnam(c.as_ptr()) };
        if pw.is_null() {
            return Err(PgError::NoSuchUser(name.into()));
        }
        // SAFETY: pw is non-null and points to a valid passwd struct.
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        Ok(Account {
            name: name.into(),
            uid,
            gid,
        })
    }

    /// Makes `path` and everything under it owned by this account.
    pub fn chown_tree(&self, path: &Path) -> Result<()> {
        let out = Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", self.uid, self.gid))
            .arg(path)
            .output()
            .map_err(|source| PgError::Spawn {
                cmd: "chown".into(),
                source,
            })?;
        check("chown", out).map(|_| ())
    }
}

/// A command that runs as `account` when given.
pub fn command_as(program: &Path, account: Option<&Account>) -> Command {
    let mut c = Command::new(program);
    if let Some(a) = account {
        c.uid(a.uid).gid(a.gid);
        c.env("USER", &a.name).env("LOGNAME", &a.name);
    }
    c
}

/// Runs a command to completion, turning a non-zero exit into an error with its stderr.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| PgError::Spawn {
            cmd: name.clone(),
            source,
        })?;
    check(&name, out)
}

fn check(name: &str, out: Output) -> Result<Output> {
    if out.status.success() {
        return Ok(out);
    }
    let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if stderr.is_empty() {
        stderr = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    Err(PgError::Command {
        cmd: name.to_string(),
        status: out.status.to_string(),
        stderr,
    })
}

/// A PostgreSQL client error in words: the server's own message (`FATAL: Peer authentication
/// failed for user "postgres"`, with its detail and hint) rather than the client library's
/// `db error`, or the OS's reason for a failed connection.
pub fn reason(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{}: {}", db.severity(), db.message());
        if let Some(d) = db.detail() {
            s.push_str(&format!(" ({d})"));
        }
        if let Some(h) = db.hint() {
            s.push_str(&format!(" hint: {h}"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        let c_text = c.to_string();
        if !s.contains(&c_text) {
            s.push_str(": ");
            s.push_str(&c_text);
        }
        src = c.source();
    }
    s
}

/// Name of the OS user this process runs as (its uid when it has no name).
pub fn current_user_name() -> String {
    // SAFETY: geteuid has no preconditions; getpwuid returns static storage or null and we
    // copy the name out at once.
    unsafe {
        let uid = libc::geteuid();
        let pw = libc::getpwuid(uid);
        if pw.is_null() || (*pw).pw_name.is_null() {
            return uid.to_string();
        }
        std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_string_lossy()
            .into_owned()
    }
}

/// Where and as whom to reach a server.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub socket_dir: PathBuf,
    pub port: u16,
    pub user: String,
}

impl Endpoint {
    pub fn connect(&self, dbname: &str) -> Result<Client> {
        let mut cfg = postgres::Config::new();
        cfg.host_path(&self.socket_dir)
            .port(self.port)
            .user(&self.user)
            .dbname(dbname)
            .application_name("pgpitr")
            .connect_timeout(Duration::from_secs(10));
        cfg.connect(postgres::NoTls).map_err(|e| {
            let mut message = reason(&e);
            if let Some(db) = e.as_db_error() {
                if db.message().contains("Peer authentication failed") {
                    let me = current_user_name();
                    message.push_str(&format!(
                        " (peer authentication lets OS user `{me}` in only as database user `{me}`: run this as `{0}`, e.g. runuser -u {0} -- COMMAND, or map `{me}` to `{0}` in pg_ident.conf)",
                        self.user
                    ));
                }
            }
            PgError::Connect {
                socket_dir: self.socket_dir.clone(),
                port: self.port,
                message,
                server_answered: e.as_db_error().is_some(),
            }
        })
    }

    /// Retries `connect` until it works or `timeout` passes.
    pub fn wait_connect(&self, dbname: &str, timeout: Duration) -> Result<Client> {
        let start = Instant::now();
        loop {
            match self.connect(dbname) {
                Ok(c) => return Ok(c),
                Err(e) if start.elapsed() >= timeout => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

/// What a file holds from byte `from` on (empty when it cannot be read).
fn read_from(path: &Path, from: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        if f.seek(SeekFrom::Start(from)).is_ok() {
            let _ = f.read_to_end(&mut text);
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// pg_ctl operations on one data folder.
pub struct PgCtl<'a> {
    pub bins: &'a Bins,
    pub account: Option<&'a Account>,
    pub data_dir: &'a Path,
}

impl PgCtl<'_> {
    /// Starts the server with extra `postgres` options, logging to `log_file`. With `wait`,
    /// returns when pg_ctl says the server accepts connections; without (recovery may take
    /// long), once the postmaster has written its `postmaster.pid` in this folder. pg_ctl
    /// itself returns before that, and a caller killed in that gap would leave a postmaster
    /// that is about to start where nothing can see it yet.
    pub fn start(&self, log_file: &Path, options: &str, wait: bool) -> Result<()> {
        // pg_ctl appends to the log: only what this start writes counts.
        let from = std::fs::metadata(log_file).map(|m| m.len()).unwrap_or(0);
        self.launch(log_file, options, wait)?;
        if !wait {
            self.wait_started(log_file, from, Duration::from_secs(60))?;
        }
        Ok(())
    }

    /// Waits until a postmaster runs on this folder; fails early when the log says it
    /// could not start.
    fn wait_started(&self, log_file: &Path, from: u64, timeout: Duration) -> Result<()> {
        let began = Instant::now();
        loop {
            if self.is_running() {
                return Ok(());
            }
            let log = read_from(log_file, from);
            let fatal: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("FATAL") || l.contains("PANIC"))
                .collect();
            let why = if !fatal.is_empty() {
                fatal.join(" | ")
            } else if began.elapsed() >= timeout {
                format!("no postmaster.pid within {} s", timeout.as_secs())
            } else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            return Err(PgError::Other(format!(
                "PostgreSQL did not start on {}: {why} (log {})",
                self.data_dir.display(),
                log_file.display()
            )));
        }
    }

    fn launch(&self, log_file: &Path, options: &str, wait: bool) -> Result<()> {
        let mut c = command_as(&self.bins.path("pg_ctl"), self.account);
        c.arg("start")
            .arg("-D")
            .arg(self.data_dir)
            .arg("-l")
            .arg(log_file)
            .arg("-o")
            .arg(options)
            .arg(if wait { "-w" } else { "-W" })
            .current_dir(self.data_dir)
            .stdout(Stdio::null());
        run(&mut c).map(|_| ())
    }

    /// Stops the server (`fast` mode) and waits.
    pub fn stop(&self) -> Result<()> {
        let mut c = command_as(&self.bins.path("pg_ctl"), self.account);
        c.arg("stop")
            .arg("-D")
            .arg(self.data_dir)
            .arg("-m")
            .arg("fast")
            .arg("-w")
            .current_dir(self.data_dir)
            .stdout(Stdio::null());
        run(&mut c).map(|_| ())
    }

    /// Stops the server letting sessions end by themselves first (`smart` mode, up to
    /// `grace`), then `fast`: a session that is closing (pgpitr's own, just dropped) ends
    /// normally instead of being terminated with a FATAL line in the server's log.
    pub fn stop_gently(&self, grace: Duration) -> Result<()> {
        let mut c = command_as(&self.bins.path("pg_ctl"), self.account);
        c.arg("stop")
            .arg("-D")
            .arg(self.data_dir)
            .args(["-m", "smart", "-w", "-t"])
            .arg(grace.as_secs().max(1).to_string())
            .current_dir(self.data_dir)
            .stdout(Stdio::null());
        if run(&mut c).is_ok() && !self.is_running() {
            return Ok(());
        }
        self.stop()
    }

    /// Stops what a killed process left on this folder: a running server, and one still
    /// starting (pg_ctl and the postmaster work in the folder before `postmaster.pid`
    /// exists, where [`PgCtl::is_running`] cannot see them yet). Waits up to `timeout` for
    /// every such process (see [`server_processes_in`]) to be gone. Returns whether it
    /// stopped a server.
    pub fn stop_leftover(&self, timeout: Duration) -> Result<bool> {
        let began = Instant::now();
        let mut stopped = false;
        loop {
            if self.is_running() {
                self.stop()?;
                stopped = true;
                continue;
            }
            let users = server_processes_in(self.data_dir);
            if users.is_empty() {
                return Ok(stopped);
            }
            if began.elapsed() >= timeout {
                return Err(PgError::Other(format!(
                    "PostgreSQL processes {users:?} still work in {} after {} s and no server is visible there: stop them (kill them if they are a killed run's leftovers) and run again",
                    self.data_dir.display(),
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether a postmaster is running on this folder.
    pub fn is_running(&self) -> bool {
        let mut c = command_as(&self.bins.path("pg_ctl"), self.account);
        c.arg("status")
            .arg("-D")
            .arg(self.data_dir)
            .current_dir("/");
        c.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// The postmaster's state as it writes it in line 8 of `postmaster.pid`. Reading it never
    /// touches the server, so polling it leaves nothing in the server's log (a connection
    /// attempt while the server starts makes it log `FATAL: the database system is starting
    /// up`). `None` when there is no pid file or no status line yet.
    pub fn pm_status(&self) -> Option<PmStatus> {
        let text = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        Some(PmStatus::parse(text.lines().nth(7)?))
    }

    /// One field of `pg_controldata` ("Database cluster state", ...). Reads pg_control, never
    /// the server.
    pub fn control_field(&self, field: &str) -> Result<Option<String>> {
        let mut c = command_as(&self.bins.path("pg_controldata"), self.account);
        // Field names are translated in other locales.
        c.arg("-D")
            .arg(self.data_dir)
            .env("LC_ALL", "C")
            .current_dir("/");
        let out = run(&mut c)?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == field).then(|| v.trim().to_string())
        }))
    }

    /// Whether recovery is over (pg_control says `in production`).
    pub fn in_production(&self) -> bool {
        matches!(self.control_field("Database cluster state"), Ok(Some(s)) if s == "in production")
    }

    /// The command line an operator runs to stop this server.
    pub fn stop_hint(&self) -> String {
        self.hint(&format!("stop -D {} -m fast", self.data_dir.display()))
    }

    /// The command line an operator runs to start this server, logging to `log_file`.
    pub fn start_hint(&self, log_file: &Path) -> String {
        self.hint(&format!(
            "start -D {} -l {}",
            self.data_dir.display(),
            log_file.display()
        ))
    }

    fn hint(&self, args: &str) -> String {
        let base = format!("{} {args}", self.bins.path("pg_ctl").display());
        match self.account {
            Some(a) => format!("runuser -u {} -- {base}", a.name),
            None => base,
        }
    }
}

/// Whether process `pid` works in `dir`: its working directory is that folder, compared by
/// device and inode (the process may see it under another path, in another mount namespace).
pub fn works_in(pid: u32, dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let cwd = Path::new("/proc").join(pid.to_string()).join("cwd");
    matches!(
        (std::fs::metadata(cwd), std::fs::metadata(dir)),
        (Ok(x), Ok(y)) if (x.dev(), x.ino()) == (y.dev(), y.ino())
    )
}

/// The PostgreSQL processes that work in `dir` (see [`works_in`]): a server and what starts
/// one (`pg_ctl`, the `runuser` or shell around it), told by a command line that names
/// `postgres` or `pg_ctl`; an operator's shell that merely sits in the folder is not one.
pub fn server_processes_in(dir: &Path) -> Vec<u32> {
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let names_server = |pid: u32| {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
            let c = String::from_utf8_lossy(&c);
            c.contains("postgres") || c.contains("pg_ctl")
        })
    };
    let mut out: Vec<u32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && works_in(pid, dir) && names_server(pid))
        .collect();
    out.sort_unstable();
    out
}

/// Line 8 of `postmaster.pid` (PM_STATUS_* in PostgreSQL's pidfile.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PmStatus {
    /// Starting up or replaying WAL before a consistent state: connections are refused.
    Starting,
    /// Standby mode (standby.signal) before it accepts connections.
    Standby,
    /// Accepting connections: normal operation, or a hot standby / archive recovery that
    /// allows read-only connections (so this alone does not mean recovery is over).
    Ready,
    Stopping,
    Other,
}

impl PmStatus {
    pub fn parse(line: &str) -> PmStatus {
        match line.trim() {
            "starting" => PmStatus::Starting,
            "standby" => PmStatus::Standby,
            "ready" => PmStatus::Ready,
            "stopping" => PmStatus::Stopping,
            _ => PmStatus::Other,
        }
    }

    /// Whether a connection attempt can succeed without the server logging a refusal.
    pub fn accepts_connections(self) -> bool {
        self == PmStatus::Ready
    }
}

/// A transaction end (commit/abort) seen in WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XactEnd {
    pub lsn: Lsn,
    pub time: DateTime<Utc>,
}

/// Reads one WAL segment file with pg_waldump and returns the last commit/abort record.
pub fn last_xact_end(bins: &Bins, segment_file: &Path) -> Result<Option<XactEnd>> {
    let out = Command::new(bins.path("pg_waldump"))
        .arg("--rmgr=Transaction")
        .arg(segment_file)
        .env("TZ", "UTC")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|source| PgError::Spawn {
            cmd: "pg_waldump".into(),
            source,
        })?;
    // pg_waldump exits non-zero when it reaches the end of valid WAL; its stdout is still good.
    Ok(
        parse_waldump_xact_ends(&String::from_utf8_lossy(&out.stdout))
            .into_iter()
            .last(),
    )
}

/// What a `xid:` or `name:` target is looked for as in the WAL.
#[derive(Debug, Clone, Copy)]
pub enum WalMark<'a> {
    /// The commit or abort of this transaction.
    XactEnd(u64),
    /// `pg_create_restore_point(name)`.
    RestorePoint(&'a str),
}

/// Whether one WAL segment file holds `mark` (pg_waldump, filtered by resource manager).
pub fn segment_has(bins: &Bins, segment_file: &Path, mark: WalMark<'_>) -> Result<bool> {
    let mut cmd = Command::new(bins.path("pg_waldump"));
    match mark {
        WalMark::XactEnd(x) => cmd.arg("--rmgr=Transaction").arg(format!("--xid={x}")),
        WalMark::RestorePoint(_) => cmd.arg("--rmgr=XLOG"),
    };
    let out = cmd
        .arg(segment_file)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|source| PgError::Spawn {
            cmd: "pg_waldump".into(),
            source,
        })?;
    Ok(waldump_has(&String::from_utf8_lossy(&out.stdout), mark))
}

/// Whether pg_waldump output holds `mark`.
pub fn waldump_has(text: &str, mark: WalMark<'_>) -> bool {
    text.lines().any(|line| {
        let Some(desc) = line.find("desc: ").map(|i| &line[i + 6..]) else {
            return false;
        };
        match mark {
            WalMark::XactEnd(x) => {
                let tx = line
                    .split("tx:")
                    .nth(1)
                    .and_then(|s| s.split(',').next())
                    .and_then(|s| s.trim().parse::<u64>().ok());
                tx == Some(x)
                    && ["COMMIT", "ABORT", "COMMIT_PREPARED", "ABORT_PREPARED"]
                        .iter()
                        .any(|p| desc.starts_with(p))
            }
            WalMark::RestorePoint(n) => desc
                .strip_prefix("RESTORE_POINT ")
                .map(|r| r.trim_end() == n)
                .unwrap_or(false),
        }
    })
}

/// Where the WAL in `pg_wal` ends on `timeline`, read with pg_waldump from `start`: right
/// after the last valid record, or where pg_waldump stopped reading when that is later (a
/// record cut at a missing segment). The error says why it cannot tell (pg_waldump would
/// not run, or read no record).
pub fn wal_end(
    bins: &Bins,
    pg_wal: &Path,
    timeline: u32,
    start: Lsn,
    seg_size: u64,
) -> std::result::Result<Lsn, String> {
    use std::io::{BufRead, BufReader, Read};
    let mut child = Command::new(bins.path("pg_waldump"))
        .arg("--path")
        .arg(pg_wal)
        .arg("--timeline")
        .arg(timeline.to_string())
        .arg("--start")
        .arg(start.to_string())
        .env("LC_ALL", "C")
        .env("LANG", "C")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run {}: {e}", bins.path("pg_waldump").display()))?;
    let mut last: Option<String> = None;
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line.map_err(|e| format!("read pg_waldump output: {e}"))?;
        if line.starts_with("rmgr:") {
            last = Some(line);
        }
    }
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut err)
        .map_err(|e| format!("read pg_waldump errors: {e}"))?;
    let _ = child.wait();
    let record_end = last.as_deref().and_then(|l| record_end(l, seg_size));
    let stopped_at = err
        .lines()
        .rev()
        .find(|l| l.contains("error"))
        .and_then(|l| error_position(l, seg_size));
    let end = match (record_end, stopped_at) {
        (Some((start, end)), Some(at)) if at > start => end.max(at),
        (Some((_, end)), _) => end,
        (None, _) => {
            return Err(format!(
                "pg_waldump read no record from {start} on timeline {timeline} in {}: {}",
                pg_wal.display(),
                err.trim().replace('\n', " | ")
            ))
        }
    };
    Ok(end)
}

/// A `pg_waldump` record line's own position (`lsn: 0/03000028,`).
fn record_lsn(line: &str) -> Option<Lsn> {
    line.split("lsn: ")
        .nth(1)?
        .split(|c: char| c == ',' || c.is_whitespace())
        .next()?
        .parse()
        .ok()
}

/// The last record's start and where it ends, from a `pg_waldump` line. A `SWITCH` record
/// ends its segment.
fn record_end(line: &str, seg_size: u64) -> Option<(Lsn, Lsn)> {
    let lsn = record_lsn(line)?;
    if line
        .split("desc: ")
        .nth(1)
        .is_some_and(|d| d.starts_with("SWITCH"))
    {
        return Some((lsn, Lsn((lsn.segno(seg_size) + 1) * seg_size)));
    }
    let total: u64 = line
        .split("len (rec/tot):")
        .nth(1)?
        .split('/')
        .nth(1)?
        .split(',')
        .next()?
        .trim()
        .parse()
        .ok()?;
    Some((lsn, Lsn(lsn.0 + total)))
}

/// Where `pg_waldump` stopped reading, from its error line: the segment it could not find,
/// the offset in a segment whose page is not this WAL's, or the last position it names.
fn error_position(line: &str, seg_size: u64) -> Option<Lsn> {
    let segment_start = |name: &str| {
        WalName::parse(name.trim_matches(|c| c == '"' || c == ','))
            .and_then(|n| n.segno(seg_size))
            .map(|s| s * seg_size)
    };
    if let Some(rest) = line.split("could not find file ").nth(1) {
        return segment_start(rest.split(':').next()?).map(Lsn);
    }
    if let Some(rest) = line.split("in log segment ").nth(1) {
        let (name, after) = rest.split_once(", offset ")?;
        let offset: u64 = after
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()?;
        return segment_start(name).map(|s| Lsn(s + offset));
    }
    line.split_whitespace()
        .filter_map(|w| {
            w.trim_end_matches([':', ',', ';'])
                .parse::<Lsn>()
                .ok()
                .filter(|_| w.contains('/'))
        })
        .next_back()
}

/// Parses commit/abort records from pg_waldump output (run with TZ=UTC).
pub fn parse_waldump_xact_ends(text: &str) -> Vec<XactEnd> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(desc_at) = line.find("desc: ") else {
            continue;
        };
        let desc = &line[desc_at + 6..];
        let rest = ["COMMIT ", "ABORT ", "COMMIT_PREPARED ", "ABORT_PREPARED "]
            .iter()
            .find_map(|p| desc.strip_prefix(p));
        let Some(rest) = rest else { continue };
        // "2026-11-22 09:52:48.123456 UTC; ..."
        let ts: String = rest.chars().take_while(|c| *c != ';').collect();
        let ts = ts.trim().trim_end_matches(" UTC");
        let Ok(naive) = NaiveDateTime::parse_from_str(ts, "%Y-%m-%d %H:%M:%S%.f") else {
            continue;
        };
        let Some(lsn) = record_lsn(line) else {
            continue;
        };
        out.push(XactEnd {
            lsn,
            time: naive.and_utc(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_processes_are_found_by_their_working_folder_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let spawn = |arg0: &str, cwd: &Path| {
            Command::new("sleep")
                .arg0(arg0)
                .arg("30")
                .current_dir(cwd)
                .spawn()
                .unwrap()
        };
        let mut server = spawn("postgres", dir.path());
        let mut shell = spawn("bash", dir.path());
        let mut elsewhere = spawn("postgres", other.path());
        let found = server_processes_in(dir.path());
        for c in [&mut server, &mut shell, &mut elsewhere] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        assert_eq!(
            found,
            vec![server.id()],
            "shell {}, elsewhere {}",
            shell.id(),
            elsewhere.id()
        );
        assert!(server_processes_in(dir.path()).is_empty());
    }

    const SEG: u64 = 16 << 20;

    #[test]
    fn record_ends() {
        let l = "rmgr: Heap        len (rec/tot):     59/    59, tx:        724, lsn: 0/015373B8, prev 0/01537378, desc: INSERT off 96";
        assert_eq!(
            record_end(l, SEG),
            Some((Lsn(0x15373B8), Lsn(0x15373B8 + 59)))
        );
        let s = "rmgr: XLOG        len (rec/tot):     24/    24, tx:          0, lsn: 0/01537590, prev 0/015373F8, desc: SWITCH ";
        assert_eq!(record_end(s, SEG), Some((Lsn(0x1537590), Lsn(0x2000000))));
    }

    #[test]
    fn error_positions() {
        assert_eq!(
            error_position(
                "pg_waldump: error: error in WAL record at 0/3000148: invalid record length at 0/3000180: wanted 24, got 0",
                SEG
            ),
            Some(Lsn(0x3000180))
        );
        assert_eq!(
            error_position(
                "pg_waldump: error: could not find file \"000000010000000000000002\": No such file or directory",
                SEG
            ),
            Some(Lsn(0x2000000))
        );
        assert_eq!(
            error_position(
                "pg_waldump: error: error in WAL record at 0/4FFFF88: unexpected pageaddr 0/1000000 in log segment 000000010000000000000005, offset 0",
                SEG
            ),
            Some(Lsn(0x5000000))
        );
        assert_eq!(error_position("pg_waldump: error: nothing", SEG), None);
    }

    #[test]
    fn finds_xid_and_restore_point_marks() {
        let t = "rmgr: Transaction len (rec/tot):     34/    34, tx:        735, lsn: 0/03000028, prev 0/02000110, desc: COMMIT 2026-11-22 09:52:48.123456 UTC\n\
                 rmgr: XLOG        len (rec/tot):     98/    98, tx:          0, lsn: 0/03000060, prev 0/03000028, desc: RESTORE_POINT before-migration\n";
        assert!(waldump_has(t, WalMark::XactEnd(735)));
        assert!(!waldump_has(t, WalMark::XactEnd(73)));
        assert!(waldump_has(t, WalMark::RestorePoint("before-migration")));
        assert!(!waldump_has(t, WalMark::RestorePoint("before")));
    }

    #[test]

    fn pm_status_line() {
        assert_eq!(PmStatus::parse("ready   "), PmStatus::Ready);
        assert_eq!(PmStatus::parse("standby "), PmStatus::Standby);
        assert_eq!(PmStatus::parse("starting"), PmStatus::Starting);
        assert!(!PmStatus::parse("starting").accepts_connections());
        assert!(!PmStatus::parse("standby ").accepts_connections());
    }
    #[test]
    fn parses_waldump() {
        let t = "rmgr: Transaction len (rec/tot):     34/    34, tx:        735, lsn: 0/03000028, prev 0/02000110, desc: COMMIT 2026-11-22 09:52:48.123456 UTC\n\
                 rmgr: Transaction len (rec/tot):    469/   469, tx:        736, lsn: 0/030001C8, prev 0/03000190, desc: COMMIT 2026-11-22 09:52:49.5 UTC; inval msgs: catcache 80\n\
                 rmgr: Transaction len (rec/tot):     34/    34, tx:        737, lsn: 0/03000400, prev 0/030001C8, desc: ABORT 2026-11-22 09:52:50.000001 UTC";
        let v = parse_waldump_xact_ends(t);
        assert_eq!(v.len(), 3);
        assert_eq!(v[1].lsn, "0/030001C8".parse().unwrap());
        assert_eq!(v[2].time.to_rfc3339(), "2026-11-22T09:52:50.000001+00:00");
    }
}
