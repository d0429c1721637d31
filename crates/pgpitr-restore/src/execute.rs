//! Carrying out a plan: extract the backup into an empty folder, configure recovery with
//! restore-wal, start PostgreSQL, follow replay, let it promote at the target, report.

use crate::plan::Plan;
use crate::target::conf_quote;
use crate::{io_err, RestoreError, Result};
use chrono::{DateTime, Utc};
use pgpitr_config::Config;
use pgpitr_pg::{Account, Bins, Endpoint, PgCtl};
use pgpitr_wal::codec::Decoder;
use pgpitr_wal::Lsn;
use serde::Serialize;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct ExecuteOptions {
    /// Empty (or missing) folder to restore into.
    pub into: PathBuf,
    pub port: u16,
    /// Config file restore_command and archive_command point at.
    pub config_path: PathBuf,
    /// Folder holding `restore-wal` and `archive-wal`.
    pub tools_dir: PathBuf,
    /// Keep archiving from the restored server into the instance's archive (on its new
    /// timeline). Off by default so a drill or an inspection copy never writes there.
    pub archive: bool,
    /// Draw a progress line on stderr.
    pub progress: bool,
    /// Stop at the target without promoting (`recovery_target_action = 'pause'`): the
    /// server stays read-only until `pgpitr restore --promote --into DIR`.
    pub pause: bool,
    /// Run as root, pgpitr starts the replay server with its own access files (see
    /// [`crate::access`]). `true`: once promoted, restart it with its own configuration and
    /// remove them before returning. `false`: the caller takes the server over (stops it, or
    /// restarts it through the instance's service) and calls [`crate::access::release`].
    pub hand_over: bool,
}

#[derive(Debug, Serialize)]
pub struct Step {
    pub step: String,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct RestoreReport {
    pub backup_id: String,
    pub target: String,
    pub data_dir: PathBuf,
    pub port: u16,
    pub socket_dir: PathBuf,
    pub stopped_at_lsn: Option<Lsn>,
    pub stopped_at_time: Option<DateTime<Utc>>,
    /// PostgreSQL's own words: "recovery stopping before commit of transaction ...".
    pub stop_reason: Option<String>,
    pub timeline: u32,
    pub steps: Vec<Step>,
    pub log_file: PathBuf,
    pub stop_command: String,
    /// False when the restore paused at the target (`--pause`): read-only until promoted.
    pub promoted: bool,
    /// Recovery settings that came inside the backup and were commented out before start.
    pub neutralised: Vec<String>,
    /// What did not stop the restore but needs the operator (the restored server could not
    /// be restarted with its own configuration, pgpitr could not connect to reset its
    /// recovery settings); each also went to the progress output as it happened.
    pub warnings: Vec<String>,
}

impl std::fmt::Display for RestoreReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "restored backup {} to {}", self.backup_id, self.target)?;
        if let Some(r) = &self.stop_reason {
            writeln!(f, "  PostgreSQL: {r}")?;
        }
        writeln!(
            f,
            "  replay stopped at lsn {}{}",
            self.stopped_at_lsn
                .map(|l| l.to_string())
                .unwrap_or_else(|| "?".into()),
            self.stopped_at_time
                .map(|t| format!(", last transaction at {}", pgpitr_time::human(t)))
                .unwrap_or_default()
        )?;
        for n in &self.neutralised {
            writeln!(f, "  neutralised (came inside the backup): {n}")?;
        }
        if self.promoted {
            writeln!(f, "  new timeline {}", self.timeline)?;
        } else {
            writeln!(
                f,
                "  PAUSED at the target on timeline {}, read-only: look, then finish with `pgpitr restore --promote --into {}` (or move the target later with `pgpitr restore --retarget --to LATER --into {}`)",
                self.timeline,
                self.data_dir.display(),
                self.data_dir.display()
            )?;
        }
        for s in &self.steps {
            writeln!(f, "  {:<28} {:>8.2} s", s.step, s.seconds)?;
        }
        writeln!(
            f,
            "the restored server is running{}: {} port {} (psql -h {} -p {})",
            if self.promoted {
                ""
            } else {
                " (paused, read-only)"
            },
            self.data_dir.display(),
            self.port,
            self.socket_dir.display(),
            self.port
        )?;
        writeln!(f, "  log: {}", self.log_file.display())?;
        write!(f, "  stop it with: {}", self.stop_command)?;
        for w in &self.warnings {
            write!(f, "\nwarning: {w}")?;
        }
        Ok(())
    }
}

/// Refuses a folder that exists and is not empty; says what to do.
pub fn check_target_dir(into: &Path) -> Result<()> {
    match fs::read_dir(into) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(RestoreError::Refused(format!(
                    "{} is not empty: restore into an empty or new folder (nothing was changed)",
                    into.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("read {}", into.display()))(e).into()),
    }
}

struct Timer {
    steps: Vec<Step>,
    at: Instant,
}

impl Timer {
    fn lap(&mut self, step: &str) {
        self.steps.push(Step {
            step: step.into(),
            seconds: self.at.elapsed().as_secs_f64(),
        });
        self.at = Instant::now();
    }
}

/// Executes `plan`. On success the restored server is left running.
pub fn execute(
    cfg: &Config,
    bins: &Bins,
    decoder: &Decoder,
    plan: &Plan,
    opts: &ExecuteOptions,
    say: &mut dyn FnMut(&str),
) -> Result<RestoreReport> {
    check_target_dir(&opts.into)?;
    if opts.pause && matches!(plan.target, crate::target::Target::Latest) {
        return Err(RestoreError::Refused(
            "--pause needs a target to stop at; `latest` replays all WAL and promotes (nothing was changed)".into(),
        ));
    }
    let socket = cfg
        .postgres
        .socket_dir
        .join(format!(".s.PGSQL.{}", opts.port));
    if socket.exists() {
        return Err(RestoreError::Refused(format!(
            "port {} is in use ({} exists): choose another --port",
            opts.port,
            socket.display()
        )));
    }
    let restore_wal = opts.tools_dir.join("restore-wal");
    if !restore_wal.is_file() {
        return Err(RestoreError::Refused(format!(
            "{} not found: set pgpitr.bin_dir in the config to the folder holding restore-wal",
            restore_wal.display()
        )));
    }
    let account = Account::for_server(&cfg.postgres.os_user)?;
    // walprune must not delete the backup or WAL while they are being read.
    let _lock = pgpitr_backup::lock_shared(&cfg.backup.dir)?;
    let mut timer = Timer {
        steps: Vec::new(),
        at: Instant::now(),
    };

    say(&format!(
        "extracting backup {} into {}",
        plan.backup.id,
        opts.into.display()
    ));
    fs::create_dir_all(&opts.into).map_err(io_err(format!("create {}", opts.into.display())))?;
    fs::set_permissions(&opts.into, fs::Permissions::from_mode(0o700))
        .map_err(io_err(format!("chmod {}", opts.into.display())))?;
    pgpitr_backup::extract(
        &plan.backup,
        &cfg.backup.dir,
        decoder,
        &opts.into,
        &mut *say,
    )?;
    timer.lap("extract backup");

    // A restore log that travelled inside the backup (older pgpitr kept it in the data
    // folder) describes another restore: it goes.
    let _ = fs::remove_file(opts.into.join(LEGACY_LOG));
    let stamp = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let neutralised = crate::recovery_conf::neutralise_inherited(&opts.into, &stamp)?;
    for n in &neutralised {
        say(&format!(
            "neutralised a recovery setting that came inside the backup: {n}"
        ));
    }
    write_recovery_config(cfg, plan, opts)?;
    if let Some(a) = &account {
        a.chown_tree(&opts.into)?;
    }
    timer.lap("configure recovery");

    // The log lives beside the data folder, never inside it (it would travel inside every
    // later base backup of this server).
    let log_file = log_path(&opts.into);
    fs::write(&log_file, "").map_err(io_err(format!("create {}", log_file.display())))?;
    if let Some(a) = &account {
        a.chown_tree(&log_file)?;
    }
    let ctl = PgCtl {
        bins,
        account: account.as_ref(),
        data_dir: &opts.into,
    };
    say(&format!(
        "starting PostgreSQL on port {} to replay WAL",
        opts.port
    ));
    let access = crate::access::start_options(account.as_ref(), &opts.into, &cfg.postgres.user)?;
    ctl.start(&log_file, &access, false)?;
    crate::inplace::test_hold("replay");
    let ep = Endpoint {
        socket_dir: cfg.postgres.socket_dir.clone(),
        port: opts.port,
        user: cfg.postgres.user.clone(),
    };
    let replayed = follow_replay(
        &ctl,
        &ep,
        plan,
        &log_file,
        opts.progress,
        opts.pause,
        &mut *say,
    )?;
    let (lsn, xact_time) = (replayed.lsn, replayed.time);
    timer.lap(if opts.pause {
        "replay to the target (paused)"
    } else {
        "replay and promote"
    });

    let mut warnings = Vec::new();
    let timeline = if opts.pause {
        plan.timeline
    } else {
        match replayed.client {
            Some(mut client) => {
                // What this restore wrote for recovery must not stay in the promoted server's
                // configuration (nor travel inside its later backups).
                if let Err(e) = crate::recovery_conf::reset_after_promotion(&mut client) {
                    // The restore itself succeeded; later restores neutralise these lines anyway.
                    say(&format!(
                        "warning: could not remove the recovery settings this restore wrote ({e}); as a superuser run ALTER SYSTEM RESET for {}",
                        crate::recovery_conf::RECOVERY_KEYS.join(", ")
                    ));
                }
                current_timeline(&mut client)?
            }
            None => {
                // The server refuses pgpitr (peer authentication as root): it recovered, but
                // the recovery settings can only be reset by someone it lets in.
                warn(&mut warnings, &mut *say, format!(
                    "pgpitr cannot connect to the restored server, so the recovery settings it wrote stay in postgresql.auto.conf; as the server's user run ALTER SYSTEM RESET for {} and reload",
                    crate::recovery_conf::RECOVERY_KEYS.join(", ")
                ));
                let log = fs::read_to_string(&log_file).unwrap_or_default();
                crate::serverlog::new_timeline(&log).unwrap_or(0)
            }
        }
    };
    if opts.hand_over && !opts.pause {
        match crate::access::hand_over(&ctl, &log_file) {
            Some(Ok(note)) => say(&note),
            Some(Err(w)) => warn(&mut warnings, &mut *say, w),
            None => {}
        }
    }
    let log = fs::read_to_string(&log_file).unwrap_or_default();
    let stop_reason = log.lines().find_map(|l| {
        l.find("recovery stopping")
            .map(|i| l[i..].trim().to_string())
    });
    Ok(RestoreReport {
        backup_id: plan.backup.id.clone(),
        target: plan.target.to_string(),
        data_dir: opts.into.clone(),
        port: opts.port,
        socket_dir: cfg.postgres.socket_dir.clone(),
        stopped_at_lsn: lsn,
        stopped_at_time: xact_time,
        stop_reason,
        timeline,
        steps: timer.steps,
        log_file,
        stop_command: ctl.stop_hint(),
        promoted: !opts.pause,
        neutralised,
        warnings,
    })
}

/// Says a warning as it happens and keeps it for the report.
fn warn(warnings: &mut Vec<String>, say: &mut dyn FnMut(&str), text: String) {
    say(&format!("warning: {text}"));
    warnings.push(text);
}

/// Name of the restore log older versions kept inside the data folder.
pub const LEGACY_LOG: &str = "pgpitr-restore.log";

/// Where a restore into `data_dir` logs: `<data_dir>.pgpitr-restore.log`, beside it; when
/// that folder is not writable (e.g. `/srv` for a restore run as `postgres` into
/// `/srv/restore`), `<tmp>/pgpitr-restore<data_dir with / as _>.log`. Never inside it.
pub fn log_path(data_dir: &Path) -> PathBuf {
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let beside = data_dir.with_file_name(format!("{name}.pgpitr-restore.log"));
    let parent = data_dir.parent().unwrap_or(Path::new("/"));
    let writable = std::ffi::CString::new(parent.as_os_str().as_encoded_bytes())
        .map(|c| {
            // SAFETY: access only reads the C string.
            unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
        })
        .unwrap_or(false);
    if writable || beside.exists() {
        return beside;
    }
    std::env::temp_dir().join(format!(
        "pgpitr-restore{}.log",
        data_dir.display().to_string().replace('/', "_")
    ))
}

/// The timeline a promoted server writes on.
pub fn current_timeline(client: &mut pgpitr_pg::Client) -> Result<u32> {
    let tli_hex: String = client
        .query_one(
            "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
            &[],
        )
        .map_err(pgpitr_pg::PgError::from)?
        .get(0);
    u32::from_str_radix(&tli_hex, 16)
        .map_err(|_| RestoreError::Recovery(format!("cannot read the timeline from {tli_hex:?}")))
}

fn write_recovery_config(cfg: &Config, plan: &Plan, opts: &ExecuteOptions) -> Result<()> {
    let into = &opts.into;
    let quote_path = |p: &Path| format!("\"{}\"", p.display().to_string().replace('"', "\\\""));
    let restore_cmd = format!(
        "{} --config {} %f %p",
        quote_path(&opts.tools_dir.join("restore-wal")),
        quote_path(&opts.config_path)
    );
    let mut lines = vec![
        format!(
            "# added by pgpitr restore at {}: backup {}, {}",
            Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            plan.backup.id,
            plan.target
        ),
        format!("restore_command = {}", conf_quote(&restore_cmd)),
        format!("recovery_target_timeline = '{}'", plan.timeline),
        format!(
            "recovery_target_action = '{}'",
            if opts.pause { "pause" } else { "promote" }
        ),
        format!("port = {}", opts.port),
        format!(
            "unix_socket_directories = {}",
            conf_quote(&cfg.postgres.socket_dir.display().to_string())
        ),
    ];
    for (k, v) in plan.target.recovery_settings_with(plan.exclusive) {
        lines.push(format!("{k} = {v}"));
    }
    if opts.archive {
        let archive_cmd = format!(
            "{} --config {} %p %f",
            quote_path(&opts.tools_dir.join("archive-wal")),
            quote_path(&opts.config_path)
        );
        lines.push("archive_mode = on".into());
        lines.push(format!("archive_command = {}", conf_quote(&archive_cmd)));
    } else {
        lines.push("# archiving stays off: this copy must not write into the instance's archive (use --archive to make it the new primary)".into());
        lines.push("archive_mode = off".into());
    }
    let auto = into.join("postgresql.auto.conf");
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&auto)
        .map_err(io_err(format!("open {}", auto.display())))?;
    writeln!(f, "\n{}", lines.join("\n")).map_err(io_err(format!("write {}", auto.display())))?;
    f.sync_all()
        .map_err(io_err(format!("fsync {}", auto.display())))?;
    // Debian-style clusters keep their configuration outside the data folder.
    let conf = into.join("postgresql.conf");
    if !conf.exists() {
        fs::write(
            &conf,
            "# written by pgpitr restore: the backup had no postgresql.conf\n",
        )
        .map_err(io_err(format!("write {}", conf.display())))?;
    }
    let hba = into.join("pg_hba.conf");
    if !hba.exists() {
        fs::write(
            &hba,
            "# written by pgpitr restore: the backup had no pg_hba.conf\nlocal all all peer\n",
        )
        .map_err(io_err(format!("write {}", hba.display())))?;
    }
    for f in ["recovery.signal", "standby.signal"] {
        let _ = fs::remove_file(into.join(f));
    }
    fs::write(into.join("recovery.signal"), "").map_err(io_err("write recovery.signal"))?;
    Ok(())
}

/// How replay ended, and a connection to the promoted server when pgpitr can get one.
pub(crate) struct Replayed {
    pub(crate) lsn: Option<Lsn>,
    pub(crate) time: Option<DateTime<Utc>>,
    pub(crate) client: Option<pgpitr_pg::Client>,
}

/// Polls the server until it has promoted; shows progress; reports a failed recovery with
/// PostgreSQL's own FATAL lines. The postmaster's state comes from postmaster.pid, so pgpitr
/// connects only once the server accepts connections (no `FATAL: the database system is
/// starting up` in its log); a server that refuses pgpitr (peer authentication as root) is
/// followed through postmaster.pid and its log, and its recovery still counts as a success.
pub(crate) fn follow_replay(
    ctl: &PgCtl<'_>,
    ep: &Endpoint,
    plan: &Plan,
    log_file: &Path,
    progress: bool,
    pause: bool,
    say: &mut dyn FnMut(&str),
) -> Result<Replayed> {
    use pgpitr_pg::PmStatus;
    let start = plan.backup.start_lsn.0;
    let end = plan
        .window_end_lsn
        .map(|l| l.0)
        .unwrap_or(plan.backup.stop_lsn.0)
        .max(start + 1);
    let began = Instant::now();
    let mut last_line = String::new();
    // Set once the running server refused us: no more attempts (each one is a FATAL line).
    let mut refused = false;
    // Without a terminal (journald, a pipe), a progress line through `say` every few seconds.
    let mut said = Instant::now();
    let every = pgpitr_time::progress_interval();
    let mut periodic = |line: &str| {
        if !progress && said.elapsed() >= every {
            said = Instant::now();
            say(line.trim());
        }
    };
    loop {
        std::thread::sleep(Duration::from_millis(300));
        if !ctl.is_running() {
            if progress {
                eprintln!();
            }
            let log = fs::read_to_string(log_file).unwrap_or_default();
            let fatal: Vec<&str> = log
                .lines()
                .filter(|l| {
                    l.contains("FATAL") || l.contains("PANIC") || l.contains("restore-wal: error")
                })
                .collect();
            return Err(RestoreError::Recovery(format!(
                "PostgreSQL stopped during recovery: {}. The restored folder {} is left for inspection (log {}); remove it before retrying",
                if fatal.is_empty() { "see the log".to_string() } else { fatal.join(" | ") },
                ctl.data_dir.display(),
                log_file.display()
            )));
        }
        let status = ctl.pm_status();
        // Without a connection, pg_control tells when recovery is over.
        let promoted =
            refused && status.is_some_and(PmStatus::accepts_connections) && ctl.in_production();
        let mut conn = None;
        if status.is_some_and(|s| s.accepts_connections()) && !refused {
            match ep.connect("postgres") {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    refused = true;
                    tracing::warn!(
                        "following recovery through postmaster.pid and the server log: {e}"
                    );
                }
            }
        }
        // Paused at the target (--pause) while refused: the log says so.
        let paused_in_log = refused
            && pause
            && fs::read_to_string(log_file)
                .is_ok_and(|l| l.contains("pausing at the end of recovery"));
        let Some(mut c) = conn else {
            if promoted || paused_in_log {
                if progress {
                    eprintln!();
                }
                let log = fs::read_to_string(log_file).unwrap_or_default();
                return Ok(Replayed {
                    lsn: crate::serverlog::redo_done(&log),
                    time: crate::serverlog::last_xact_time(&log),
                    client: None,
                });
            }
            if progress {
                let l = format!(
                    "\r  replaying WAL{} ... {:.0} s",
                    if refused {
                        ""
                    } else {
                        " up to a consistent state"
                    },
                    began.elapsed().as_secs_f64()
                );
                eprint!("{l}");
            }
            periodic(&format!(
                "replaying WAL, {:.0} s so far",
                began.elapsed().as_secs_f64()
            ));
            continue;
        };
        let row = match c.query_one(
            "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp(), \
             CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() = 'paused' ELSE false END",
            &[],
        ) {
            Ok(r) => r,
            Err(_) => continue,
        };
        let in_recovery: bool = row.get(0);
        let lsn: Option<String> = row.get(1);
        let lsn: Option<Lsn> = lsn.and_then(|s| s.parse().ok());
        let t: Option<std::time::SystemTime> = row.get(2);
        let t = t.map(DateTime::<Utc>::from);
        {
            let pct = lsn
                .map(|l| {
                    ((l.0.saturating_sub(start)) as f64 / (end - start) as f64 * 100.0).min(100.0)
                })
                .unwrap_or(0.0);
            let line = format!(
                "\r  replayed to {} ({pct:.0}%){}   ",
                lsn.map(|l| l.to_string()).unwrap_or_default(),
                t.map(|t| format!(", transactions up to {}", pgpitr_time::human(t)))
                    .unwrap_or_default()
            );
            periodic(&line);
            if progress && line != last_line {
                eprint!("{line}");
                last_line = line;
            }
        }
        let paused: bool = row.get(3);
        if !in_recovery || (pause && paused) {
            if progress {
                eprintln!();
            }
            return Ok(Replayed {
                lsn,
                time: t,
                client: Some(c),
            });
        }
    }
}
