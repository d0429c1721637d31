//! `pgpitr restore --in-place`: the configured instance goes back to the target.
//!
//! Steps, each recorded in a journal beside the data folder before it starts
//! (`<data_dir>.pgpitr-in-place.json`), so a run killed at any point leaves either the old
//! data folder or the safety copy intact and the next run says how to finish or undo:
//! 1. stop the server (its systemd unit when `postgres.service` names one, else
//!    `pg_ctl stop -m fast`);
//! 2. keep a safety copy: a ZFS snapshot of the data dataset when the data folder is one,
//!    else a rename to `<data_dir>.pre-restore-<time>` on the same file system (instant,
//!    nothing copied);
//! 3. restore into the data folder, replay, promote with archiving on (the new timeline
//!    goes into the archive from its first segment);
//! 4. start the service again with the instance's own configuration;
//! 5. take a base backup on the new timeline (the window restarts at once).

use crate::execute::{execute, log_path, ExecuteOptions, RestoreReport};
use crate::plan::Plan;
use crate::{io_err, RestoreError, Result};
use chrono::{DateTime, Utc};
use pgpitr_config::Config;
use pgpitr_pg::{Account, Bins, Endpoint, PgCtl};
use pgpitr_wal::codec::Decoder;
use serde::{Deserialize, Serialize};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How the instance's server is stopped and started.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Service {
    /// `systemctl stop|start UNIT` (`postgres.service` in the config).
    Systemd { unit: String },
    /// `pg_ctl stop -m fast` / `pg_ctl start` on the data folder.
    PgCtl,
}

/// Where the old data folder is kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SafetyCopy {
    /// `dataset@snapshot` of the data dataset (mounted at the data folder).
    ZfsSnapshot { dataset: String, snapshot: String },
    /// The data folder renamed on its own file system.
    Renamed { path: PathBuf },
    /// There was no data folder (or an empty one): nothing to keep.
    Nothing,
}

/// What `--in-place` will do, checked before anything changes (`--dry-run` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct InPlacePlan {
    pub data_dir: PathBuf,
    pub service: Service,
    pub running: bool,
    /// System identifier read from the data folder's pg_control (None: no cluster there).
    pub system_identifier: Option<String>,
    pub safety_copy: SafetyCopy,
    pub needed_bytes: u64,
    pub free_bytes: u64,
    pub journal: PathBuf,
    /// Every step, with the commands it amounts to.
    pub steps: Vec<String>,
}

impl std::fmt::Display for InPlacePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "in place: {}", self.data_dir.display())?;
        writeln!(
            f,
            "space:    {} needed, {} free",
            human(self.needed_bytes),
            human(self.free_bytes)
        )?;
        for (i, s) in self.steps.iter().enumerate() {
            writeln!(f, "step {}:   {s}", i + 1)?;
        }
        Ok(())
    }
}

/// The journal of a running (or killed) in-place restore.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub started: DateTime<Utc>,
    pub data_dir: PathBuf,
    pub backup_id: String,
    pub target: String,
    /// The timeline the restore follows (a resume follows the same one).
    #[serde(default)]
    pub timeline: u32,
    pub service: Service,
    pub safety_copy: SafetyCopy,
    /// The step under way: stop, safety-copy, restore, restart, base-backup.
    pub step: String,
}

#[derive(Debug, Serialize)]
pub struct InPlaceReport {
    pub restore: RestoreReport,
    pub safety_copy: SafetyCopy,
    /// Id of the base backup taken on the new timeline (None: it failed, see warnings).
    pub new_backup: Option<String>,
    pub undo: String,
    pub warnings: Vec<String>,
}

impl std::fmt::Display for InPlaceReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.restore;
        writeln!(
            f,
            "restored {} in place from backup {} to {}",
            r.data_dir.display(),
            r.backup_id,
            r.target
        )?;
        if let Some(s) = &r.stop_reason {
            writeln!(f, "  PostgreSQL: {s}")?;
        }
        writeln!(f, "  new timeline {}, archiving on", r.timeline)?;
        for s in &r.steps {
            writeln!(f, "  {:<28} {:>8.2} s", s.step, s.seconds)?;
        }
        match &self.new_backup {
            Some(id) => writeln!(f, "  base backup on the new timeline: {id}")?,
            None => writeln!(f, "  NO base backup on the new timeline yet: take one now with `basebackup --config ...`")?,
        }
        for w in &self.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        writeln!(f, "  safety copy: {}", describe_copy(&self.safety_copy))?;
        write!(f, "  to go back to it: {}", self.undo)
    }
}

fn human(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

fn describe_copy(c: &SafetyCopy) -> String {
    match c {
        SafetyCopy::ZfsSnapshot { snapshot, .. } => format!("ZFS snapshot {snapshot}"),
        SafetyCopy::Renamed { path } => path.display().to_string(),
        SafetyCopy::Nothing => "none (there was no data folder)".into(),
    }
}

/// `<data_dir>.pgpitr-in-place.json`.
pub fn journal_path(data_dir: &Path) -> PathBuf {
    sibling(data_dir, "pgpitr-in-place.json")
}

fn sibling(data_dir: &Path, suffix: &str) -> PathBuf {
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    data_dir.with_file_name(format!("{name}.{suffix}"))
}

fn stamp() -> String {
    Utc::now().format("%Y%m%dT%H%M%SZ").to_string()
}

fn service_of(cfg: &Config) -> Service {
    match &cfg.postgres.service {
        Some(u) if !u.trim().is_empty() => Service::Systemd {
            unit: u.trim().to_string(),
        },
        _ => Service::PgCtl,
    }
}

fn stop_command(service: &Service, ctl: &PgCtl<'_>) -> String {
    match service {
        Service::Systemd { unit } => format!("systemctl stop {unit}"),
        Service::PgCtl => ctl.stop_hint(),
    }
}

fn start_command(service: &Service, ctl: &PgCtl<'_>, log: &Path) -> String {
    match service {
        Service::Systemd { unit } => format!("systemctl start {unit}"),
        Service::PgCtl => ctl.start_hint(log),
    }
}

/// Waits until the postmaster says Ready in postmaster.pid (no connection needed: a server
/// whose own pg_hba.conf refuses root is still a server that came back).
fn wait_ready(service: &Service, ctl: &PgCtl<'_>, log: &Path, what: &str) -> Result<()> {
    let began = std::time::Instant::now();
    while ctl.pm_status() != Some(pgpitr_pg::PmStatus::Ready) {
        if began.elapsed() > Duration::from_secs(60) {
            return Err(RestoreError::Recovery(format!(
                "{what} did not come back within 60 s after `{}`; see {}{}",
                start_command(service, ctl, log),
                log.display(),
                match service {
                    Service::Systemd { unit } => format!(" and journalctl -u {unit}"),
                    Service::PgCtl => String::new(),
                }
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// How to put the old data folder back, as commands an operator can paste.
pub fn undo_text(j: &Journal, ctl: &PgCtl<'_>) -> String {
    let d = j.data_dir.display();
    let stop = stop_command(&j.service, ctl);
    let start = start_command(&j.service, ctl, &log_path(&j.data_dir));
    match &j.safety_copy {
        SafetyCopy::Renamed { path } => format!(
            "`pgpitr restore --in-place --undo` does it; by hand: {stop}; mv {d} {d}.abandoned-{}; mv {} {d}; {start}",
            stamp(),
            path.display()
        ),
        SafetyCopy::ZfsSnapshot { snapshot, .. } => format!(
            "`pgpitr restore --in-place --undo` does it; by hand: {stop}; zfs rollback -r {snapshot}; {start}"
        ),
        SafetyCopy::Nothing => {
            "there is nothing to go back to (there was no data folder before)".into()
        }
    }
}

fn free_bytes(dir: &Path) -> Result<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| RestoreError::Refused(format!("bad path {}", dir.display())))?;
    // SAFETY: statvfs writes into the zeroed struct we pass; c is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(
            io_err(format!("statvfs {}", dir.display()))(std::io::Error::last_os_error()).into(),
        );
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// System identifier in `data_dir`'s pg_control (None when there is no cluster).
pub fn control_system_identifier(bins: &Bins, data_dir: &Path) -> Result<Option<String>> {
    if !data_dir.join("global/pg_control").is_file() {
        return Ok(None);
    }
    let out = Command::new(bins.path("pg_controldata"))
        .arg("-D")
        .arg(data_dir)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| pgpitr_pg::PgError::Spawn {
            cmd: "pg_controldata".into(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let id = text.lines().find_map(|l| {
        l.strip_prefix("Database system identifier:")
            .map(|v| v.trim().to_string())
    });
    match id {
        Some(id) => Ok(Some(id)),
        None => Err(RestoreError::Refused(format!(
            "cannot read the system identifier of {} with pg_controldata: {}",
            data_dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

fn systemctl(args: &[&str]) -> Result<String> {
    let out = Command::new("systemctl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| pgpitr_pg::PgError::Spawn {
            cmd: "systemctl".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(RestoreError::Refused(format!(
            "systemctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn is_empty_dir(p: &Path) -> bool {
    fs::read_dir(p)
        .map(|mut r| r.next().is_none())
        .unwrap_or(false)
}

/// The instance's data folder as an absolute path (what the journal and safety copy sit beside).
fn data_dir_of(cfg: &Config) -> Result<PathBuf> {
    Ok(
        std::path::absolute(&cfg.postgres.data_dir).map_err(io_err(format!(
            "resolve {}",
            cfg.postgres.data_dir.display()
        )))?,
    )
}

/// Checks everything `--in-place` needs and lists its steps; changes nothing.
pub fn prepare(cfg: &Config, bins: &Bins, plan: &Plan) -> Result<InPlacePlan> {
    refuse_if_interrupted(cfg, bins)?;
    let data_dir = data_dir_of(cfg)?;
    let journal = journal_path(&data_dir);
    let service = service_of(cfg);
    let account = Account::for_server(&cfg.postgres.os_user)?;
    let ctl = PgCtl {
        bins,
        account: account.as_ref(),
        data_dir: &data_dir,
    };
    let exists = data_dir.exists();
    let has_data = exists && !is_empty_dir(&data_dir);
    let running = exists && ctl.is_running();
    let system_identifier = if exists {
        control_system_identifier(bins, &data_dir)?
    } else {
        None
    };
    if let Some(id) = &system_identifier {
        if *id != plan.backup.system_identifier {
            return Err(RestoreError::Refused(format!(
                "{} holds cluster {id}, not {} of backup {}: this is not the instance's data (nothing was changed)",
                data_dir.display(),
                plan.backup.system_identifier,
                plan.backup.id
            )));
        }
    } else if has_data {
        return Err(RestoreError::Refused(format!(
            "{} is not empty but holds no PostgreSQL cluster (no global/pg_control): move it away yourself, pgpitr will not guess what it is (nothing was changed)",
            data_dir.display()
        )));
    }
    if let Service::Systemd { unit } = &service {
        let load = systemctl(&["show", "-p", "LoadState", "--value", unit]).map_err(|e| {
            RestoreError::Refused(format!(
                "the instance's service {unit} cannot be stopped: {e} (nothing was changed)"
            ))
        })?;
        if load != "loaded" {
            return Err(RestoreError::Refused(format!(
                "the instance's service {unit} cannot be stopped: systemd says it is {load:?}; fix postgres.service in the config (nothing was changed)"
            )));
        }
    } else if !bins.path("pg_ctl").is_file() {
        return Err(RestoreError::Refused(format!(
            "the server cannot be stopped: {} is missing (nothing was changed)",
            bins.path("pg_ctl").display()
        )));
    }

    let parent = data_dir
        .parent()
        .ok_or_else(|| RestoreError::Refused("the data folder cannot be /".into()))?
        .to_path_buf();
    let zfs_dataset = match &cfg.zfs {
        Some(_) if exists => pgpitr_zfs::Zfs::default()
            .dataset_mounted_at(&data_dir)
            .ok()
            .flatten(),
        _ => None,
    };
    let safety_copy = if !has_data {
        SafetyCopy::Nothing
    } else if let Some(ds) = zfs_dataset {
        SafetyCopy::ZfsSnapshot {
            snapshot: format!("{ds}@pgpitr-pre-restore-{}", stamp()),
            dataset: ds,
        }
    } else {
        let dev = |p: &Path| {
            fs::metadata(p)
                .map(|m| m.dev())
                .map_err(io_err(format!("stat {}", p.display())))
        };
        let (d, p) = (dev(&data_dir)?, dev(&parent)?);
        if d != p {
            return Err(RestoreError::Refused(format!(
                "{} is a mount point (a different file system than {}): the safety copy is a rename on the same file system and cannot be made there. Put the data folder in a subfolder of the mount, or on a ZFS dataset named in [zfs] (nothing was changed)",
                data_dir.display(),
                parent.display()
            )));
        }
        let path = sibling(&data_dir, &format!("pre-restore-{}", stamp()));
        if path.exists() {
            return Err(RestoreError::Refused(format!(
                "{} already exists: wait a second and retry (nothing was changed)",
                path.display()
            )));
        }
        SafetyCopy::Renamed { path }
    };

    // The unpacked backup, and WAL in pg_wal while replaying, plus a tenth for slack.
    let seg = plan.backup.wal_segment_size.max(1 << 20);
    let needed_bytes = plan.backup.raw_bytes() + plan.backup.raw_bytes() / 10 + 4 * seg;
    let space_at = if exists && matches!(safety_copy, SafetyCopy::ZfsSnapshot { .. }) {
        data_dir.clone()
    } else {
        parent.clone()
    };
    let free_bytes = free_bytes(&space_at)?;
    if free_bytes < needed_bytes {
        return Err(RestoreError::Refused(format!(
            "not enough disk space on {}: the restore needs {} ({} bytes), {} are free; the old data stays as the safety copy so it cannot be reused. Free space and retry (nothing was changed)",
            space_at.display(),
            human(needed_bytes),
            needed_bytes,
            human(free_bytes)
        )));
    }

    let log = log_path(&data_dir);
    let mut steps = vec![format!(
        "check the plan: backup {} to {} on timeline {} (done)",
        plan.backup.id, plan.target, plan.timeline
    )];
    steps.push(if running {
        format!("stop the server: {}", stop_command(&service, &ctl))
    } else {
        format!(
            "the server is not running; make sure: {}",
            stop_command(&service, &ctl)
        )
    });
    steps.push(match &safety_copy {
        SafetyCopy::ZfsSnapshot { snapshot, .. } => format!(
            "safety copy: zfs snapshot {snapshot}, then empty {}",
            data_dir.display()
        ),
        SafetyCopy::Renamed { path } => format!(
            "safety copy: rename {} to {} (same file system, nothing copied)",
            data_dir.display(),
            path.display()
        ),
        SafetyCopy::Nothing => "safety copy: none needed (no data folder)".into(),
    });
    steps.push(format!(
        "restore backup {} into {}; neutralise recovery settings that came inside it; replay to {} with restore-wal; promote with archiving on (log {})",
        plan.backup.id,
        data_dir.display(),
        plan.target,
        log.display()
    ));
    steps.push(format!(
        "remove the recovery and replay settings pgpitr wrote (ALTER SYSTEM RESET); restart with the instance's own configuration: {}",
        start_command(&service, &ctl, &log)
    ));
    steps.push("take a base backup on the new timeline (basebackup)".into());
    let j = Journal {
        started: Utc::now(),
        data_dir: data_dir.clone(),
        backup_id: plan.backup.id.clone(),
        target: plan.target.to_string(),
        timeline: plan.timeline,
        service: service.clone(),
        safety_copy: safety_copy.clone(),
        step: "plan".into(),
    };
    steps.push(format!(
        "report how to go back to the safety copy: {}",
        undo_text(&j, &ctl)
    ));
    Ok(InPlacePlan {
        data_dir,
        service,
        running,
        system_identifier,
        safety_copy,
        needed_bytes,
        free_bytes,
        journal,
        steps,
    })
}

/// Refuses (before any planning) while an interrupted in-place restore's journal exists.
pub fn refuse_if_interrupted(cfg: &Config, bins: &Bins) -> Result<()> {
    let data_dir = data_dir_of(cfg)?;
    let journal = journal_path(&data_dir);
    if journal.exists() {
        return Err(RestoreError::Refused(interrupted_message(
            cfg, bins, &journal,
        )?));
    }
    Ok(())
}

/// The journal of the interrupted in-place restore of the instance, if any.
pub fn interrupted(cfg: &Config) -> Result<Option<Journal>> {
    let data_dir = data_dir_of(cfg)?;
    let journal = journal_path(&data_dir);
    if !journal.exists() {
        return Ok(None);
    }
    read_journal(&journal).map(Some)
}

/// The refusal an interrupted in-place restore leaves for the next run.
pub fn interrupted_message(cfg: &Config, bins: &Bins, journal: &Path) -> Result<String> {
    let j = read_journal(journal)?;
    let account = Account::for_server(&cfg.postgres.os_user)?;
    let ctl = PgCtl {
        bins,
        account: account.as_ref(),
        data_dir: &j.data_dir,
    };
    let copy_state = match &j.safety_copy {
        SafetyCopy::Renamed { path } if path.exists() => {
            format!("the safety copy {} is intact", path.display())
        }
        SafetyCopy::Renamed { path } => format!(
            "the old data folder {} was never moved (no {} yet)",
            j.data_dir.display(),
            path.display()
        ),
        other => format!("safety copy: {}", describe_copy(other)),
    };
    Ok(format!(
        "an in-place restore (backup {}, {}) started {} was interrupted during step `{}`; {copy_state}. To finish it: `pgpitr restore --in-place --resume --to TARGET` (the same target). To undo it: {}. The journal is {}",
        j.backup_id,
        j.target,
        j.started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        j.step,
        undo_text(&j, &ctl),
        journal.display()
    ))
}

pub fn read_journal(journal: &Path) -> Result<Journal> {
    let text =
        fs::read_to_string(journal).map_err(io_err(format!("read {}", journal.display())))?;
    serde_json::from_str(&text).map_err(|e| {
        RestoreError::Refused(format!(
            "{} is damaged ({e}): look at it, then remove it",
            journal.display()
        ))
    })
}

fn write_journal(j: &Journal, path: &Path) -> Result<()> {
    let text = serde_json::to_vec_pretty(j).expect("journal serialises");
    pgpitr_durable::write_replace(path, &text, 0o600)?;
    Ok(())
}

/// How long a resume or undo waits for a server a killed run was starting on the folder to
/// show itself (and be stopped) or die.
const LEFTOVER_WAIT: Duration = Duration::from_secs(30);

/// A point where the test suite kills the process (`PGPITR_TEST_HOLD_AT=STEP`): pgpitr
/// says it is holding and sleeps until killed. Not for production use.
pub fn test_hold(step: &str) {
    if std::env::var("PGPITR_TEST_HOLD_AT").ok().as_deref() == Some(step) {
        eprintln!("pgpitr: test hold at {step}");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

pub struct InPlaceOptions {
    pub config_path: PathBuf,
    pub tools_dir: PathBuf,
    pub progress: bool,
}

fn stop_service(service: &Service, ctl: &PgCtl<'_>) -> Result<()> {
    match service {
        Service::Systemd { unit } => {
            systemctl(&["stop", unit])?;
        }
        Service::PgCtl => {
            if ctl.is_running() {
                ctl.stop()?;
            }
        }
    }
    if ctl.is_running() {
        return Err(RestoreError::Refused(format!(
            "the server on {} is still running after `{}`",
            ctl.data_dir.display(),
            stop_command(service, ctl)
        )));
    }
    Ok(())
}

/// Carries out `prep` (from [`prepare`]); on success the instance runs on the new timeline.
#[allow(clippy::too_many_arguments)]
pub fn run(
    cfg: &Config,
    bins: &Bins,
    decoder: &Decoder,
    plan: &Plan,
    prep: &InPlacePlan,
    opts: &InPlaceOptions,
    say: &mut dyn FnMut(&str),
) -> Result<InPlaceReport> {
    let data_dir = &prep.data_dir;
    let account = Account::for_server(&cfg.postgres.os_user)?;
    let ctl = PgCtl {
        bins,
        account: account.as_ref(),
        data_dir,
    };
    let mut j = Journal {
        started: Utc::now(),
        data_dir: data_dir.clone(),
        backup_id: plan.backup.id.clone(),
        target: plan.target.to_string(),
        timeline: plan.timeline,
        service: prep.service.clone(),
        safety_copy: prep.safety_copy.clone(),
        step: "stop".into(),
    };
    pgpitr_durable::write_new(
        &prep.journal,
        &serde_json::to_vec_pretty(&j).expect("journal serialises"),
        0o600,
    )
    .map_err(|_| {
        RestoreError::Refused(format!(
            "{} appeared: another in-place restore is running or was interrupted; run again to see how to finish or undo it",
            prep.journal.display()
        ))
    })?;
    test_hold("stop");
    say(&format!(
        "stopping the server: {}",
        stop_command(&prep.service, &ctl)
    ));
    if let Err(e) = stop_service(&prep.service, &ctl) {
        // Nothing changed but (perhaps) a stopped server: the journal goes.
        let _ = fs::remove_file(&prep.journal);
        return Err(RestoreError::Refused(format!(
            "the instance's server cannot be stopped: {e}. Nothing was changed{}",
            if ctl.is_running() {
                ""
            } else {
                "; the server is stopped now: start it again if you do not retry"
            }
        )));
    }

    j.step = "safety-copy".into();
    write_journal(&j, &prep.journal)?;
    test_hold("safety-copy");
    take_safety_copy(&prep.safety_copy, data_dir, say)?;
    resume_after_copy(cfg, bins, decoder, plan, &mut j, prep, opts, say)
}

fn take_safety_copy(copy: &SafetyCopy, data_dir: &Path, say: &mut dyn FnMut(&str)) -> Result<()> {
    match copy {
        SafetyCopy::Renamed { path } => {
            say(&format!(
                "safety copy: renaming {} to {}",
                data_dir.display(),
                path.display()
            ));
            fs::rename(data_dir, path).map_err(io_err(format!(
                "rename {} to {}",
                data_dir.display(),
                path.display()
            )))?;
            pgpitr_durable::sync_parent(path)?;
        }
        SafetyCopy::ZfsSnapshot { dataset, snapshot } => {
            let name = snapshot.split_once('@').map(|(_, n)| n).unwrap_or(snapshot);
            say(&format!("safety copy: zfs snapshot {snapshot}"));
            pgpitr_zfs::Zfs::default()
                .snapshot(dataset, name)
                .map_err(|e| RestoreError::Refused(format!("zfs snapshot {snapshot}: {e}")))?;
            empty_dir(data_dir)?;
        }
        SafetyCopy::Nothing => {}
    }
    Ok(())
}

/// Removes what is inside `dir` (a ZFS mount whose snapshot was just taken).
fn empty_dir(dir: &Path) -> Result<()> {
    for e in fs::read_dir(dir).map_err(io_err(format!("read {}", dir.display())))? {
        let e = e.map_err(io_err(format!("read {}", dir.display())))?;
        let p = e.path();
        let r = if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        r.map_err(io_err(format!("remove {}", p.display())))?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn resume_after_copy(
    cfg: &Config,
    bins: &Bins,
    decoder: &Decoder,
    plan: &Plan,
    j: &mut Journal,
    prep: &InPlacePlan,
    opts: &InPlaceOptions,
    say: &mut dyn FnMut(&str),
) -> Result<InPlaceReport> {
    let data_dir = &prep.data_dir;
    j.step = "restore".into();
    write_journal(j, &prep.journal)?;
    test_hold("restore");
    let eopts = ExecuteOptions {
        into: data_dir.clone(),
        port: cfg.postgres.port,
        config_path: opts.config_path.clone(),
        tools_dir: opts.tools_dir.clone(),
        archive: true,
        progress: opts.progress,
        pause: false,
        hand_over: false,
    };
    let report = execute(cfg, bins, decoder, plan, &eopts, say)
    .map_err(|e| {
        RestoreError::Recovery(format!(
            "{e}. The in-place restore stopped during replay; the old data is kept ({}). Run `pgpitr restore --in-place --resume --to TARGET` to retry, or `pgpitr restore --in-place --undo` to go back",
            describe_copy(&j.safety_copy)
        ))
    })?;
    j.step = "restart".into();
    write_journal(j, &prep.journal)?;
    test_hold("restart");
    finish_after_restore(cfg, bins, j, prep, Some(report), say)
}

/// Steps 4 and 5 (restart with the instance's configuration, base backup), from the step
/// the journal names; `report` is None when resuming a run killed after promotion.
fn finish_after_restore(
    cfg: &Config,
    bins: &Bins,
    j: &mut Journal,
    prep: &InPlacePlan,
    report: Option<RestoreReport>,
    say: &mut dyn FnMut(&str),
) -> Result<InPlaceReport> {
    let data_dir = &prep.data_dir;
    let account = Account::for_server(&cfg.postgres.os_user)?;
    let ctl = PgCtl {
        bins,
        account: account.as_ref(),
        data_dir,
    };
    let log = log_path(data_dir);
    let ep = Endpoint {
        socket_dir: cfg.postgres.socket_dir.clone(),
        port: cfg.postgres.port,
        user: cfg.postgres.user.clone(),
    };
    if j.step == "restart" {
        if !ctl.is_running() {
            // Resumed after a kill: run it as the replay ran (pgpitr's access files as root).
            let access = crate::access::start_options(account.as_ref(), data_dir, &ep.user)?;
            ctl.start(&log, &access, true)?;
        }
        {
            let mut c = ep.wait_connect("postgres", Duration::from_secs(30))?;
            crate::recovery_conf::reset_after_promotion(&mut c)?;
            crate::recovery_conf::reset_settings(&mut c, &crate::recovery_conf::SERVER_KEYS)?;
        }
        say("restarting the server with the instance's own configuration");
        crate::access::release(&ctl)?;
        match &prep.service {
            Service::Systemd { unit } => {
                systemctl(&["start", unit])?;
            }
            Service::PgCtl => ctl.start(&log, "", true)?,
        }
        j.step = "base-backup".into();
        write_journal(j, &prep.journal)?;
    } else if !ctl.is_running() {
        match &prep.service {
            Service::Systemd { unit } => {
                systemctl(&["start", unit])?;
            }
            Service::PgCtl => ctl.start(&log, "", true)?,
        }
    }
    wait_ready(&prep.service, &ctl, &log, "the restored server")?;
    let mut warnings = Vec::new();
    let timeline = match ep.wait_connect("postgres", Duration::from_secs(10)) {
        Ok(mut client) => crate::execute::current_timeline(&mut client)?,
        Err(e) => {
            warnings.push(format!(
                "the restored server runs but refuses pgpitr ({e}); check its pg_hba.conf before the next base backup"
            ));
            ctl.control_field("Latest checkpoint's TimeLineID")?
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| {
                    RestoreError::Recovery(format!(
                        "cannot read the timeline of {} from pg_control",
                        data_dir.display()
                    ))
                })?
        }
    };
    let report = match report {
        // The replay's own warnings join this run's, so there is one list to read.
        Some(mut r) => {
            warnings.append(&mut r.warnings);
            r
        }
        None => RestoreReport {
            backup_id: j.backup_id.clone(),
            target: j.target.clone(),
            data_dir: data_dir.clone(),
            port: cfg.postgres.port,
            socket_dir: cfg.postgres.socket_dir.clone(),
            stopped_at_lsn: None,
            stopped_at_time: None,
            stop_reason: None,
            timeline,
            steps: Vec::new(),
            log_file: log.clone(),
            stop_command: stop_command(&prep.service, &ctl),
            promoted: true,
            neutralised: Vec::new(),
            warnings: Vec::new(),
        },
    };

    test_hold("base-backup");
    say("taking a base backup on the new timeline");
    let new_backup = match pgpitr_backup::take(cfg, &mut |s| say(s)) {
        Ok(b) => Some(b.id),
        Err(e) => {
            warnings.push(format!(
                "the base backup on the new timeline failed: {e}; until one exists the window on timeline {} rests on the older backups and its WAL",
                report.timeline
            ));
            None
        }
    };
    let undo = undo_text(j, &ctl);
    fs::remove_file(&prep.journal).map_err(io_err(format!("remove {}", prep.journal.display())))?;
    pgpitr_durable::sync_parent(&prep.journal)?;
    Ok(InPlaceReport {
        restore: report,
        safety_copy: j.safety_copy.clone(),
        new_backup,
        undo,
        warnings,
    })
}

/// `--in-place --resume`: finishes an interrupted in-place restore with the same target.
pub fn resume(
    cfg: &Config,
    bins: &Bins,
    decoder: &Decoder,
    plan: Result<Plan>,
    opts: &InPlaceOptions,
    say: &mut dyn FnMut(&str),
) -> Result<InPlaceReport> {
    let data_dir = data_dir_of(cfg)?;
    let journal = journal_path(&data_dir);
    if !journal.exists() {
        return Err(RestoreError::Refused(format!(
            "there is no interrupted in-place restore to resume ({} does not exist)",
            journal.display()
        )));
    }
    let mut j = read_journal(&journal)?;
    if let Ok(plan) = &plan {
        if j.backup_id != plan.backup.id || j.target != plan.target.to_string() {
            return Err(RestoreError::Refused(format!(
                "the interrupted in-place restore was from backup {} to {}; resume it with the same --to, or undo it with --undo",
                j.backup_id, j.target
            )));
        }
    }
    let account = Account::for_server(&cfg.postgres.os_user)?;
    let ctl = PgCtl {
        bins,
        account: account.as_ref(),
        data_dir: &data_dir,
    };
    let copy_taken = match &j.safety_copy {
        SafetyCopy::Renamed { path } => path.exists(),
        SafetyCopy::ZfsSnapshot { dataset, snapshot } => pgpitr_zfs::Zfs::default()
            .snapshots(dataset)
            .map(|s| s.iter().any(|x| x == snapshot))
            .unwrap_or(false),
        SafetyCopy::Nothing => j.step != "stop" && j.step != "safety-copy",
    };
    let prep = InPlacePlan {
        data_dir: data_dir.clone(),
        service: j.service.clone(),
        running: false,
        system_identifier: None,
        safety_copy: j.safety_copy.clone(),
        needed_bytes: 0,
        free_bytes: 0,
        journal: journal.clone(),
        steps: Vec::new(),
    };
    // Killed after promotion: the restored cluster in the data folder is complete, only
    // the restart and the base backup are left.
    let promoted = copy_taken
        && matches!(j.step.as_str(), "restart" | "base-backup")
        && data_dir.join("global/pg_control").is_file()
        && !data_dir.join("recovery.signal").exists();
    if promoted {
        say(&format!("finishing from step {}", j.step));
        return finish_after_restore(cfg, bins, &mut j, &prep, None, say);
    }
    // From here on the restore runs again: it needs its plan.
    let plan = plan?;
    let plan = &plan;
    if !copy_taken {
        // Killed before the safety copy: only the server may have been stopped. Start over.
        stop_service(&j.service, &ctl)?;
        take_safety_copy(&j.safety_copy, &data_dir, say)?;
    } else {
        // Whatever the killed run left in the data folder is a partial restore: the server
        // started on it stops, and it is moved aside (never deleted).
        if let Service::Systemd { unit } = &j.service {
            let _ = systemctl(&["stop", unit]);
        }
        if data_dir.exists() {
            ctl.stop_leftover(LEFTOVER_WAIT)?;
        }
        if data_dir.exists() && !is_empty_dir(&data_dir) {
            if matches!(j.safety_copy, SafetyCopy::ZfsSnapshot { .. }) {
                empty_dir(&data_dir)?;
            } else {
                move_aside(&data_dir, "failed-restore", "the interrupted restore", say)?;
            }
        }
    }
    resume_after_copy(cfg, bins, decoder, plan, &mut j, &prep, opts, say)
}

/// Renames `data_dir` to `<data_dir>.<tag>-<time>` beside it (never deletes), saying so.
fn move_aside(
    data_dir: &Path,
    tag: &str,
    what: &str,
    say: &mut dyn FnMut(&str),
) -> Result<PathBuf> {
    let aside = sibling(data_dir, &format!("{tag}-{}", stamp()));
    say(&format!("moving {what} aside to {}", aside.display()));
    fs::rename(data_dir, &aside).map_err(io_err(format!(
        "rename {} to {}",
        data_dir.display(),
        aside.display()
    )))?;
    Ok(aside)
}

/// `--in-place --undo`: puts the safety copy back and starts the server on it. The restored
/// folder is moved aside, never deleted.
pub fn undo(cfg: &Config, bins: &Bins, say: &mut dyn FnMut(&str)) -> Result<String> {
    let data_dir = data_dir_of(cfg)?;
    let journal = journal_path(&data_dir);
    let j = if journal.exists() {
        read_journal(&journal)?
    } else {
        // After a finished in-place restore: the newest rename-style safety copy.
        let parent = data_dir.parent().unwrap_or(Path::new("/"));
        let prefix = format!(
            "{}.pre-restore-",
            data_dir.file_name().unwrap_or_default().to_string_lossy()
        );
        let mut copies: Vec<PathBuf> = fs::read_dir(parent)
            .map_err(io_err(format!("read {}", parent.display())))?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect();
        copies.sort();
        let Some(path) = copies.pop() else {
            return Err(RestoreError::Refused(format!(
                "no interrupted in-place restore ({} missing) and no safety copy {}*: nothing to undo (a ZFS safety copy is rolled back with `zfs rollback`)",
                journal.display(),
                sibling(&data_dir, "pre-restore-").display()
            )));
        };
        Journal {
            started: Utc::now(),
            data_dir: data_dir.clone(),
            backup_id: String::new(),
            target: String::new(),
            timeline: 0,
            service: service_of(cfg),
            safety_copy: SafetyCopy::Renamed { path },
            step: "done".into(),
        }
    };
    let account = Account::for_server(&cfg.postgres.os_user)?;
    let ctl = PgCtl {
        bins,
        account: account.as_ref(),
        data_dir: &data_dir,
    };
    let log = log_path(&data_dir);
    match &j.safety_copy {
        SafetyCopy::Renamed { path } if path.exists() => {
            if let Service::Systemd { unit } = &j.service {
                let _ = systemctl(&["stop", unit]);
            }
            if data_dir.exists() {
                ctl.stop_leftover(LEFTOVER_WAIT)?;
                move_aside(&data_dir, "abandoned-restore", "the restored folder", say)?;
            }
            say(&format!("putting {} back", path.display()));
            fs::rename(path, &data_dir).map_err(io_err(format!(
                "rename {} to {}",
                path.display(),
                data_dir.display()
            )))?;
            pgpitr_durable::sync_parent(&data_dir)?;
        }
        SafetyCopy::Renamed { .. } | SafetyCopy::Nothing => {
            // The old folder never moved: only the server may have been stopped.
        }
        SafetyCopy::ZfsSnapshot { snapshot, .. } => {
            if let Service::Systemd { unit } = &j.service {
                let _ = systemctl(&["stop", unit]);
            }
            if data_dir.exists() {
                ctl.stop_leftover(LEFTOVER_WAIT)?;
            }
            let exists = pgpitr_zfs::Zfs::default()
                .snapshots(snapshot.split('@').next().unwrap_or_default())
                .map(|s| s.iter().any(|x| x == snapshot))
                .unwrap_or(false);
            if exists {
                say(&format!("zfs rollback {snapshot}"));
                pgpitr_zfs::Zfs::default()
                    .rollback(snapshot)
                    .map_err(|e| RestoreError::Refused(format!("zfs rollback {snapshot}: {e}")))?;
            }
        }
    }
    // A replay server pgpitr started as root had its own access files: they go with it.
    crate::access::remove(&data_dir)?;
    if data_dir.join("global/pg_control").is_file() && !ctl.is_running() {
        say("starting the server on the old data");
        match &j.service {
            Service::Systemd { unit } => {
                systemctl(&["start", unit])?;
            }
            Service::PgCtl => ctl.start(&log, "", true)?,
        }
    }
    if data_dir.join("global/pg_control").is_file() {
        wait_ready(&j.service, &ctl, &log, "the server on the old data")?;
    }
    if journal.exists() {
        fs::remove_file(&journal).map_err(io_err(format!("remove {}", journal.display())))?;
    }
    Ok(format!(
        "back on the old data in {} (the server runs again); WAL the restored server archived on its new timeline stays in the archive as an abandoned branch",
        data_dir.display()
    ))
}
