//! `preseed`: on a rebuilt node, bring the PostgreSQL data folder back before the server
//! first starts, and never clobber anything.
//!
//! The decision comes from the data folder's real state ([`state::inspect`]: `PG_VERSION`,
//! `global/pg_control` through `pg_controldata`, the system identifier compared with the
//! archive's `archive.json`), never from a marker file:
//! - a valid cluster of this instance: nothing to do, unless it is behind the archive (a
//!   snapshot a killed preseed left before replaying it, see [`behind`]) or preseed's own
//!   replay was interrupted: then the archive is replayed from it;
//! - empty or missing: the configured methods ([`methods`]) are tried in order until one
//!   gives a valid cluster; restores are staged beside the data folder and moved into place
//!   last ([`place`]);
//! - anything else: refused, nothing touched (`--quarantine` renames it aside first).
//!
//! The server is left stopped: its own unit starts it, and `preseed --follow-up-backup`
//! takes the first base backup on the new timeline once it accepts connections.

pub mod behind;
pub mod methods;
pub mod place;
pub mod state;

use chrono::Utc;
use pgpitr_config::{Config, PreseedMethod};
use pgpitr_pg::{Account, Bins};
use pgpitr_wal::codec::Decoder;
use serde::Serialize;
use state::{ClusterInfo, DataState};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum PreseedError {
    /// The data folder holds something preseed must not touch, or a method may not run.
    #[error("{0}")]
    Refused(String),
    /// A method (or all of them) failed.
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Restore(#[from] pgpitr_restore::RestoreError),
    #[error(transparent)]
    Offsite(#[from] pgpitr_offsite::OffsiteError),
    #[error(transparent)]
    Zfs(#[from] pgpitr_zfs::ZfsError),
    #[error(transparent)]
    Pg(#[from] pgpitr_pg::PgError),
    #[error(transparent)]
    Backup(#[from] pgpitr_backup::BackupError),
    #[error(transparent)]
    Wal(#[from] pgpitr_wal::WalError),
    #[error(transparent)]
    Durable(#[from] pgpitr_durable::DurableError),
    #[error(transparent)]
    Io(#[from] pgpitr_durable::IoError),
    #[error(transparent)]
    Metrics(#[from] pgpitr_metrics::MetricsError),
}

pub type Result<T> = std::result::Result<T, PreseedError>;

pub(crate) use pgpitr_durable::io_context as io_err;

/// What preseed needs besides the config.
pub struct Context<'a> {
    pub cfg: &'a Config,
    /// The config file restore_command and archive_command of the restored server point at.
    pub config_path: PathBuf,
    /// Folder holding restore-wal and archive-wal.
    pub tools_dir: PathBuf,
    pub bins: Bins,
    pub decoder: Decoder,
    pub account: Option<Account>,
    pub major: u32,
}

impl<'a> Context<'a> {
    pub fn new(cfg: &'a Config, config_path: PathBuf, tools_dir: PathBuf) -> Result<Context<'a>> {
        let bins = Bins::discover(cfg.postgres.bin_dir.as_deref())?;
        let major = bins.major_version()?;
        let decoder = Decoder::from_config(cfg.encryption.as_ref())?;
        let account = Account::for_server(&cfg.postgres.os_user)?;
        Ok(Context {
            cfg,
            config_path,
            tools_dir,
            bins,
            decoder,
            account,
            major,
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.cfg.postgres.data_dir
    }

    /// The system identifier the data must have: the archive's, else the newest backup's.
    /// `Err` when the archive cannot be read (said, not hidden).
    pub fn expected_identity(&self) -> std::result::Result<Option<(u64, String)>, String> {
        let store = pgpitr_wal::store::Store::new(&self.cfg.archive.dir);
        match store.meta() {
            Ok(Some(m)) => {
                return Ok(Some((
                    m.system_identifier,
                    format!(
                        "the archive {}",
                        self.cfg.archive.dir.join("archive.json").display()
                    ),
                )))
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        match pgpitr_backup::catalog(&self.cfg.backup.dir) {
            Ok(b) => Ok(b.last().and_then(|b| {
                b.system_identifier
                    .parse()
                    .ok()
                    .map(|id| (id, format!("backup {}", b.id)))
            })),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Rename a data folder preseed must not use aside (never deleted) and go on.
    pub quarantine: bool,
    /// Print each method's freshness and change nothing.
    pub dry_run: bool,
}

/// One method's try.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub method: String,
    pub ok: bool,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub instance: String,
    pub data_dir: PathBuf,
    /// What the data folder held when preseed started.
    pub found: DataState,
    /// `nothing-to-do`, `restored`, `replayed` (a valid cluster behind the archive), `dry-run`.
    pub action: String,
    /// The method that gave the cluster, if one ran.
    pub method: Option<String>,
    pub attempts: Vec<Attempt>,
    pub quarantined: Option<PathBuf>,
    /// `--dry-run`: how fresh each method's data is.
    pub freshness: Vec<methods::Freshness>,
    /// The cluster in place at the end.
    pub cluster: Option<ClusterInfo>,
    pub warnings: Vec<String>,
    pub duration_seconds: f64,
}

impl Report {
    /// The one-line journal summary.
    pub fn summary(&self) -> String {
        let cluster = self
            .cluster
            .as_ref()
            .map(|c| {
                format!(
                    " (system identifier {}, timeline {}, checkpoint {})",
                    c.system_identifier,
                    c.timeline.map(|t| t.to_string()).unwrap_or("?".into()),
                    c.checkpoint_lsn.as_deref().unwrap_or("?")
                )
            })
            .unwrap_or_default();
        match self.action.as_str() {
            "restored" => format!(
                "instance {}: data folder {} was {}; restored by method {} in {:.1} s{cluster}{}",
                self.instance,
                self.data_dir.display(),
                self.found,
                self.method.as_deref().unwrap_or("?"),
                self.duration_seconds,
                if self.attempts.len() > 1 {
                    format!(
                        " after {} failed",
                        self.attempts
                            .iter()
                            .filter(|a| !a.ok)
                            .map(|a| a.method.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                } else {
                    String::new()
                }
            ),
            "replayed" => format!(
                "instance {}: data folder {} held a valid cluster behind the archive; replayed the archive from it in {:.1} s{cluster}",
                self.instance,
                self.data_dir.display(),
                self.duration_seconds
            ),
            "dry-run" => format!(
                "instance {}: data folder {} is {}; dry run, nothing changed",
                self.instance,
                self.data_dir.display(),
                self.found
            ),
            _ => format!(
                "instance {}: data folder {} holds a valid cluster{cluster}: nothing to do",
                self.instance,
                self.data_dir.display()
            ),
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(q) = &self.quarantined {
            writeln!(f, "quarantined: the old folder is now {}", q.display())?;
        }
        for fr in &self.freshness {
            writeln!(f, "{fr}")?;
        }
        for a in &self.attempts {
            writeln!(
                f,
                "method {}: {}: {}",
                a.method,
                if a.ok { "ok" } else { "failed" },
                a.message
            )?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        write!(f, "{}", self.summary())
    }
}

/// Runs preseed. `Ok` means PostgreSQL may start; `Err` means it refused or failed and the
/// message says what was found and what to do.
pub fn run(ctx: &Context<'_>, opts: &Options, say: &mut dyn FnMut(&str)) -> Result<Report> {
    let started = Instant::now();
    let cfg = ctx.cfg;
    let data_dir = ctx.data_dir().to_path_buf();
    let lock_path = data_dir.with_file_name(format!(
        ".{}.preseed.lock",
        data_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    if let Some(parent) = lock_path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(format!("create {}", parent.display())))?;
    }
    let _lock = pgpitr_durable::FileLock::try_exclusive(&lock_path, "another preseed")?;
    // An interrupted in-place restore (the machine went down during `pgpitr restore
    // --in-place`) owns the data folder until the operator finishes or undoes it: preseed
    // would otherwise replay the archive to its end over the operator's chosen target.
    let journal = pgpitr_restore::inplace::journal_path(&data_dir);
    if journal.exists() {
        let why = pgpitr_restore::inplace::interrupted_message(cfg, &ctx.bins, &journal)
            .unwrap_or_else(|e| {
                format!(
                    "an interrupted in-place restore left its journal {} ({e})",
                    journal.display()
                )
            });
        return Err(PreseedError::Refused(format!(
            "{why}. preseed leaves {} as it is until then",
            data_dir.display()
        )));
    }
    let found = state::inspect(&data_dir, &ctx.bins, ctx.major)?;
    let mut report = Report {
        instance: cfg.instance.clone(),
        data_dir: data_dir.clone(),
        found: found.clone(),
        action: "nothing-to-do".into(),
        method: None,
        attempts: Vec::new(),
        quarantined: None,
        freshness: Vec::new(),
        cluster: None,
        warnings: Vec::new(),
        duration_seconds: 0.0,
    };
    let refuse_or_quarantine = |what: String,
                                report: &mut Report,
                                say: &mut dyn FnMut(&str)|
     -> Result<()> {
        if !opts.quarantine {
            return Err(PreseedError::Refused(format!(
                "{} holds {what}: nothing was touched. Move it away yourself, or rerun with --quarantine to rename it aside (it is never deleted) and restore",
                data_dir.display()
            )));
        }
        if opts.dry_run {
            report.warnings.push(format!(
                "--quarantine would rename {} aside",
                data_dir.display()
            ));
            return Ok(());
        }
        let aside = place::quarantine(&data_dir)?;
        say(&format!(
            "renamed {} ({what}) aside to {}",
            data_dir.display(),
            aside.display()
        ));
        report.quarantined = Some(aside);
        Ok(())
    };
    match &found {
        DataState::Cluster(c) => match ctx.expected_identity() {
            Ok(expected) => {
                if let Err(e) = state::check_identity(c, expected) {
                    refuse_or_quarantine(e.to_string(), &mut report, say)?;
                } else {
                    return catch_up(ctx, opts, c, report, started, say);
                }
            }
            Err(e) => {
                // The cluster is there: starting it is right; the archive check waits.
                report.warnings.push(format!(
                    "cannot read the archive to compare system identifiers ({e}); the cluster was left as it is"
                ));
                report.cluster = Some(c.clone());
                report.duration_seconds = started.elapsed().as_secs_f64();
                return Ok(report);
            }
        },
        DataState::Foreign { what } => refuse_or_quarantine(what.clone(), &mut report, say)?,
        DataState::Interrupted { .. } if !opts.dry_run => place::clear_interrupted(&data_dir, say)?,
        _ => {}
    }

    if opts.dry_run {
        for m in &cfg.preseed.methods {
            report.freshness.push(methods::probe(ctx, *m));
        }
        report.action = "dry-run".into();
        report.duration_seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }

    // Leftovers of a killed run are preseed's own partial output, never a complete cluster
    // (a server a killed run started there is stopped first).
    let stage = place::staging_dir(&data_dir)?;
    let leftover = pgpitr_pg::PgCtl {
        bins: &ctx.bins,
        account: ctx.account.as_ref(),
        data_dir: &stage,
    };
    if stage.exists() && leftover.stop_leftover(std::time::Duration::from_secs(30))? {
        say(&format!(
            "stopped the server an interrupted preseed left running in {}",
            stage.display()
        ));
    }
    place::remove_leftover(&stage, say)?;
    place::remove_leftover(&place::fetch_dir(&data_dir)?, say)?;

    for m in &cfg.preseed.methods {
        say(&format!("trying method {}", m.name()));
        let result = methods::run(ctx, *m, say).and_then(|detail| {
            match state::inspect(&data_dir, &ctx.bins, ctx.major)? {
                DataState::Cluster(c) => {
                    if let Ok(expected) = ctx.expected_identity() {
                        state::check_identity(&c, expected)?;
                    }
                    Ok((detail, c))
                }
                other => Err(PreseedError::Failed(format!(
                    "after method {} the data folder is {other}",
                    m.name()
                ))),
            }
        });
        // Whatever the outcome, nothing of preseed's own is left behind.
        let _ = place::remove_leftover(&place::fetch_dir(&data_dir)?, &mut |_| {});
        match result {
            Ok((detail, c)) => {
                say(&format!("method {}: {detail}", m.name()));
                report.attempts.push(Attempt {
                    method: m.name().into(),
                    ok: true,
                    message: detail,
                });
                report.method = Some(m.name().into());
                report.action = "restored".into();
                report.cluster = Some(c);
                report.duration_seconds = started.elapsed().as_secs_f64();
                return Ok(report);
            }
            Err(e) => {
                say(&format!("method {} failed: {e}", m.name()));
                let _ = place::remove_leftover(&place::staging_dir(&data_dir)?, &mut |_| {});
                report.attempts.push(Attempt {
                    method: m.name().into(),
                    ok: false,
                    message: e.to_string(),
                });
            }
        }
    }
    report.duration_seconds = started.elapsed().as_secs_f64();
    let tried: Vec<String> = report
        .attempts
        .iter()
        .map(|a| format!("{}: {}", a.method, a.message))
        .collect();
    Err(PreseedError::Failed(format!(
        "no method gave a cluster for {} (tried {}): the server must not start on an empty folder; fix the source (is the replica, the archive disk or the offsite repository reachable?) and rerun preseed",
        data_dir.display(),
        if tried.is_empty() {
            "none: [preseed] methods is empty".to_string()
        } else {
            tried.join("; ")
        }
    )))
}

/// A valid cluster of this instance: started as it is unless it is behind the archive (a
/// crash-consistent copy a killed preseed left before it wrote `recovery.signal`, see
/// [`behind`]) or a replay of preseed's own was interrupted; then the archive is replayed
/// from it (new timeline) before the server may start.
fn catch_up(
    ctx: &Context<'_>,
    opts: &Options,
    c: &ClusterInfo,
    mut report: Report,
    started: Instant,
    say: &mut dyn FnMut(&str),
) -> Result<Report> {
    let data_dir = ctx.data_dir().to_path_buf();
    let recovering = data_dir.join("recovery.signal").exists();
    let why = if recovering && methods::has_recovery_block(&data_dir) {
        // Killed during its replay: finish it here, so the server starts promoted.
        Some("an interrupted preseed left its replay of the archive unfinished (recovery.signal and its recovery settings)".to_string())
    } else if recovering || data_dir.join("standby.signal").exists() {
        // Someone else's recovery: the server replays on start.
        None
    } else if c.state == "in archive recovery"
        || (c.state == "shutting down" && methods::has_recovery_block(&data_dir))
    {
        // PostgreSQL takes recovery.signal away before its end-of-recovery checkpoint: killed
        // in between ("in archive recovery"), or during that checkpoint ("shutting down", the
        // checkpoint still on the old timeline; preseed's settings tell it from a live
        // server's shutdown), the server started as it is would only do crash recovery on the
        // old timeline and leave the new timeline's history file behind it.
        Some(format!(
            "its replay of the archive stopped before it finished (pg_control says {:?}, and no recovery.signal is left)",
            c.state
        ))
    } else {
        if !opts.dry_run && methods::remove_stale_recovery_block(&data_dir)? {
            report.warnings.push(
                "removed the recovery settings an interrupted preseed left in postgresql.auto.conf"
                    .into(),
            );
        }
        match behind::check(ctx, c) {
            Ok(behind::Standing::Behind(why)) => Some(format!("it is behind the archive: {why}")),
            Ok(behind::Standing::Diverged(w)) => {
                report.warnings.push(w);
                None
            }
            Ok(behind::Standing::Current) => None,
            Err(e) => {
                report.warnings.push(format!(
                    "cannot tell whether the cluster is behind the archive ({e}); it was left as it is"
                ));
                None
            }
        }
    };
    let Some(why) = why else {
        report.cluster = Some(c.clone());
        report.duration_seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    };
    if opts.dry_run {
        report.warnings.push(format!(
            "{} holds a valid cluster, but {why}: preseed would replay the archive from it",
            data_dir.display()
        ));
        report.action = "dry-run".into();
        report.cluster = Some(c.clone());
        report.duration_seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    say(&format!(
        "{} holds a valid cluster, but {why}: replaying the archive from it instead of starting it as it is",
        data_dir.display()
    ));
    let detail = methods::recover_in_place(ctx, say).map_err(|e| {
        PreseedError::Failed(format!(
            "{} holds a cluster that must not start as it is ({why}), and replaying the archive from it failed: {e}. Started as it is it would lose the archived WAL and then collide with it: fix the cause and rerun preseed",
            data_dir.display()
        ))
    })?;
    let after = match state::inspect(&data_dir, &ctx.bins, ctx.major)? {
        DataState::Cluster(after) => after,
        other => {
            return Err(PreseedError::Failed(format!(
                "after replaying the archive the data folder is {other}"
            )))
        }
    };
    say(&format!("replayed: {detail}"));
    report.attempts.push(Attempt {
        method: "replay".into(),
        ok: true,
        message: format!("{why}; {detail}"),
    });
    report.action = "replayed".into();
    report.cluster = Some(after);
    report.duration_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Writes the preseed metrics: last run time, success, duration, labelled with the method
/// used (`none` when nothing had to be done or every method failed).
pub fn record_metrics(cfg: &Config, report: Option<&Report>, duration: f64) -> Result<()> {
    use pgpitr_metrics::{unix_now, Kind, MetricsFile};
    let Some(m) = &cfg.metrics else { return Ok(()) };
    let method = report
        .and_then(|r| r.method.clone())
        .unwrap_or_else(|| "none".into());
    let labels = [("method", method.as_str())];
    let mut f = MetricsFile::new("preseed", &cfg.instance);
    f.sample(
        "pgpitr_preseed_last_run_timestamp_seconds",
        "Unix time preseed last ran.",
        Kind::Gauge,
        &labels,
        unix_now(),
    )
    .sample(
        "pgpitr_preseed_success",
        "1 when the last preseed left a cluster PostgreSQL may start on, 0 when it refused or failed.",
        Kind::Gauge,
        &labels,
        if report.is_some() { 1.0 } else { 0.0 },
    )
    .sample(
        "pgpitr_preseed_duration_seconds",
        "Duration of the last preseed run.",
        Kind::Gauge,
        &labels,
        duration,
    );
    f.write(&m.textfile_dir)?;
    Ok(())
}

/// The follow-up step once the server accepts connections: takes a base backup when the
/// catalog has none on the server's current timeline (after a restore, or a fresh initdb);
/// otherwise does nothing. Decided from the server's and the catalog's real state.
pub fn follow_up_backup(
    cfg: &Config,
    timeout: std::time::Duration,
    say: &mut dyn FnMut(&str),
) -> Result<Option<pgpitr_backup::BackupInfo>> {
    let ep = pgpitr_pg::Endpoint {
        socket_dir: cfg.postgres.socket_dir.clone(),
        port: cfg.postgres.port,
        user: cfg.postgres.user.clone(),
    };
    let started = Instant::now();
    let timeline: u32 = loop {
        let mut c = ep.wait_connect("postgres", timeout)?;
        let in_recovery: bool = c
            .query_one("SELECT pg_is_in_recovery()", &[])
            .map_err(pgpitr_pg::PgError::from)?
            .get(0);
        // The timeline it writes on, not the checkpoint's: after a promotion the first
        // checkpoint on the new timeline can take minutes.
        if !in_recovery {
            break pgpitr_restore::execute::current_timeline(&mut c)?;
        }
        if started.elapsed() > timeout {
            return Err(PreseedError::Failed(format!(
                "the server is still in recovery after {} s: no base backup taken",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    let catalog = pgpitr_backup::catalog(&cfg.backup.dir)?;
    if let Some(b) = catalog.iter().rev().find(|b| b.timeline == timeline) {
        say(&format!(
            "backup {} is already on timeline {timeline}: nothing to do",
            b.id
        ));
        return Ok(None);
    }
    say(&format!(
        "no base backup on timeline {timeline} yet: taking one so the restorable window restarts now"
    ));
    let info = pgpitr_backup::take(cfg, say)?;
    if let Some(m) = &cfg.metrics {
        pgpitr_backup::metrics::record(
            &m.textfile_dir,
            &cfg.instance,
            &cfg.backup.dir,
            Some(&info),
        )
        .ok();
    }
    Ok(Some(info))
}

/// Method names for messages.
pub fn method_names(methods: &[PreseedMethod]) -> String {
    methods
        .iter()
        .map(|m| m.name())
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn now_stamp() -> String {
    Utc::now().format("%Y%m%dT%H%M%SZ").to_string()
}
