//! Offsite copies: the WAL archive and every complete base backup go into a restic
//! repository with tags (`pgpitr`, `instance:<name>`, `kind:wal|base`, `backup:<id>`), and a
//! restore on a machine that lost everything fetches back the one base backup and the WAL
//! from its start onwards.

use pgpitr_backup::BackupInfo;
use pgpitr_config::{Config, OffsiteConfig};
use pgpitr_restic::{BackupSummary, Restic, Snapshot};
use pgpitr_restore::Target;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum OffsiteError {
    #[error("no [offsite] section in the config: offsite copies are not configured")]
    NotConfigured,
    #[error(transparent)]
    Restic(#[from] pgpitr_restic::ResticError),
    #[error(transparent)]
    Backup(#[from] pgpitr_backup::BackupError),
    #[error(transparent)]
    Durable(#[from] pgpitr_durable::DurableError),
    #[error(transparent)]
    Pg(#[from] pgpitr_pg::PgError),
    #[error(transparent)]
    Io(#[from] pgpitr_durable::IoError),
    #[error("{0}")]
    Refused(String),
}

pub type Result<T> = std::result::Result<T, OffsiteError>;

use pgpitr_durable::io_context as io_err;

/// What `offsite-sync` copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    Wal,
    Backups,
    All,
}

pub fn offsite(cfg: &Config) -> Result<&OffsiteConfig> {
    cfg.offsite.as_ref().ok_or(OffsiteError::NotConfigured)
}

pub fn restic_for(o: &OffsiteConfig) -> Result<Restic> {
    Ok(Restic::new(
        o.restic_bin.as_deref(),
        &o.repository,
        &o.password_file,
        o.environment_file.as_deref(),
    )?)
}

fn base_tags(cfg: &Config) -> Vec<String> {
    vec!["pgpitr".into(), format!("instance:{}", cfg.instance)]
}

fn tags_with(cfg: &Config, extra: &[String]) -> Vec<String> {
    let mut t = base_tags(cfg);
    t.extend_from_slice(extra);
    t
}

#[derive(Debug, Default, Serialize)]
pub struct SyncReport {
    pub wal: Option<BackupSummary>,
    pub backups_added: Vec<String>,
    pub backups_already_offsite: usize,
    pub pruned: bool,
    pub snapshots: usize,
    pub bytes_added: u64,
    pub duration_seconds: f64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SyncState {
    last_prune: i64,
}

/// Copies the archive and/or the complete backups, then applies the forget policy.
pub fn sync(
    cfg: &Config,
    what: What,
    unlock_stale: bool,
    say: &mut dyn FnMut(&str),
) -> Result<SyncReport> {
    let started = Instant::now();
    let o = offsite(cfg)?;
    let restic = restic_for(o)?;
    if unlock_stale {
        say("removing stale locks (restic unlock)");
        restic.unlock()?;
    }
    restic.ensure(o.init)?;
    let mut report = SyncReport::default();
    if matches!(what, What::Wal | What::All) {
        say(&format!(
            "copying the WAL archive {}",
            cfg.archive.dir.display()
        ));
        let s = restic.backup(
            &[&cfg.archive.dir],
            &tags_with(cfg, &["kind:wal".into()]),
            None,
            &mut *say,
        )?;
        report.bytes_added += s.data_added;
        report.wal = Some(s);
    }
    if matches!(what, What::Backups | What::All) {
        let offsite_ids: Vec<String> = restic
            .snapshots(&tags_with(cfg, &["kind:base".into()]))?
            .iter()
            .filter_map(|s| s.tag("backup").map(str::to_string))
            .collect();
        for b in pgpitr_backup::catalog(&cfg.backup.dir)? {
            if offsite_ids.contains(&b.id) {
                report.backups_already_offsite += 1;
                continue;
            }
            say(&format!("copying base backup {}", b.id));
            let s = restic.backup(
                &[&cfg.backup.dir.join(&b.id)],
                &tags_with(cfg, &["kind:base".into(), format!("backup:{}", b.id)]),
                None,
                &mut *say,
            )?;
            report.bytes_added += s.data_added;
            report.backups_added.push(b.id);
        }
    }
    let keep = keep_args(o);
    if !keep.is_empty() {
        let state_path = cfg.backup.dir.join(".pgpitr-offsite.json");
        let state: SyncState = fs::read(&state_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let now = chrono::Utc::now().timestamp();
        if now - state.last_prune >= (o.prune_interval_hours * 3600) as i64 {
            say("applying the offsite retention policy (restic forget --prune)");
            restic.forget(&tags_with(cfg, &["kind:wal".into()]), &keep, false)?;
            restic.forget(&tags_with(cfg, &["kind:base".into()]), &keep, true)?;
            let body = serde_json::to_vec(&SyncState { last_prune: now }).expect("serialises");
            pgpitr_durable::write_replace(&state_path, &body, 0o644)?;
            report.pruned = true;
        }
    }
    report.snapshots = restic.snapshots(&base_tags(cfg))?.len();
    report.duration_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn keep_args(o: &OffsiteConfig) -> Vec<(String, String)> {
    let f = &o.forget;
    let mut v = Vec::new();
    for (k, n) in [
        ("keep-last", f.keep_last),
        ("keep-daily", f.keep_daily),
        ("keep-weekly", f.keep_weekly),
        ("keep-monthly", f.keep_monthly),
        ("keep-yearly", f.keep_yearly),
    ] {
        if n > 0 {
            v.push((k.to_string(), n.to_string()));
        }
    }
    if let Some(w) = &f.keep_within {
        v.push(("keep-within".into(), w.clone()));
    }
    v
}

/// Writes the offsite job's metrics (a failed run still counts).
pub fn record_metrics(cfg: &Config, report: Option<&SyncReport>) -> pgpitr_metrics::Result<()> {
    use pgpitr_metrics::{unix_now, JobState, MetricsFile};
    let Some(m) = &cfg.metrics else { return Ok(()) };
    #[derive(Default, Serialize, Deserialize)]
    struct St {
        last_success: f64,
        failures_total: u64,
        snapshots: u64,
        bytes_added: u64,
        duration: f64,
    }
    let state = JobState::new(&m.textfile_dir, "offsite", &cfg.instance);
    let _l = state.lock()?;
    let mut st: St = state.load().unwrap_or_default();
    match report {
        Some(r) => {
            st.last_success = unix_now();
            st.snapshots = r.snapshots as u64;
            st.bytes_added = r.bytes_added;
            st.duration = r.duration_seconds;
        }
        None => st.failures_total += 1,
    }
    state.save(&st)?;
    let mut f = MetricsFile::new("offsite", &cfg.instance);
    f.gauge(
        "pgpitr_offsite_last_success_timestamp_seconds",
        "Unix time offsite-sync last succeeded.",
        st.last_success,
    )
    .counter(
        "pgpitr_offsite_failures_total",
        "offsite-sync runs that failed.",
        st.failures_total as f64,
    )
    .gauge(
        "pgpitr_offsite_snapshots",
        "Snapshots of this instance in the restic repository.",
        st.snapshots as f64,
    )
    .gauge(
        "pgpitr_offsite_added_bytes",
        "Bytes the last successful sync added to the repository.",
        st.bytes_added as f64,
    )
    .gauge(
        "pgpitr_offsite_duration_seconds",
        "Duration of the last successful sync.",
        st.duration,
    );
    f.write(&m.textfile_dir)
}

/// What the repository holds for this instance.
#[derive(Debug, Serialize)]
pub struct OffsiteStatus {
    pub repository: String,
    pub wal_snapshots: Vec<SnapshotSummary>,
    pub base_backups: Vec<SnapshotSummary>,
}

#[derive(Debug, Serialize)]
pub struct SnapshotSummary {
    pub id: String,
    pub time: String,
    pub backup: Option<String>,
}

pub fn status(cfg: &Config) -> Result<OffsiteStatus> {
    let o = offsite(cfg)?;
    let restic = restic_for(o)?;
    let snaps = restic.snapshots(&base_tags(cfg))?;
    let summary = |s: &Snapshot| SnapshotSummary {
        id: s.short_id.clone(),
        time: s.time.clone(),
        backup: s.tag("backup").map(str::to_string),
    };
    Ok(OffsiteStatus {
        repository: o.repository.clone(),
        wal_snapshots: snaps
            .iter()
            .filter(|s| s.tag("kind") == Some("wal"))
            .map(summary)
            .collect(),
        base_backups: snaps
            .iter()
            .filter(|s| s.tag("kind") == Some("base"))
            .map(summary)
            .collect(),
    })
}

impl std::fmt::Display for OffsiteStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "offsite repository {}", self.repository)?;
        writeln!(
            f,
            "  WAL archive: {} snapshots{}",
            self.wal_snapshots.len(),
            self.wal_snapshots
                .last()
                .map(|s| format!(", newest {} ({})", s.time, s.id))
                .unwrap_or_default()
        )?;
        writeln!(f, "  base backups: {}", self.base_backups.len())?;
        for b in &self.base_backups {
            writeln!(
                f,
                "    {}  snapshot {}  {}",
                b.backup.as_deref().unwrap_or("?"),
                b.id,
                b.time
            )?;
        }
        Ok(())
    }
}

/// Fetches what a restore to `target` needs into `staging` and returns a config that points
/// at it (also written to `staging/pgpitr.json` for restore_command).
pub fn fetch_for_restore(
    cfg: &Config,
    target: &Target,
    backup_id: Option<&str>,
    staging: &Path,
    say: &mut dyn FnMut(&str),
) -> Result<(Config, PathBuf)> {
    let o = offsite(cfg)?;
    let restic = restic_for(o)?;
    if staging.exists()
        && fs::read_dir(staging)
            .map_err(io_err("read staging"))?
            .next()
            .is_some()
    {
        return Err(OffsiteError::Refused(format!(
            "staging folder {} is not empty: remove it or pass another --staging",
            staging.display()
        )));
    }
    fs::create_dir_all(staging).map_err(io_err(format!("create {}", staging.display())))?;
    let base = restic.snapshots(&tags_with(cfg, &["kind:base".into()]))?;
    let mut backups: Vec<(BackupInfo, &Snapshot)> = Vec::new();
    for s in &base {
        let Some(path) = s.paths.first() else {
            continue;
        };
        let bytes = restic.dump(&s.id, &format!("{path}/backup.json"))?;
        match serde_json::from_slice::<BackupInfo>(&bytes) {
            Ok(b) => backups.push((b, s)),
            Err(e) => tracing::warn!("snapshot {}: unreadable backup.json: {e}", s.short_id),
        }
    }
    if backups.is_empty() {
        return Err(OffsiteError::Refused(format!(
            "the repository {} holds no base backup of instance {}",
            o.repository, cfg.instance
        )));
    }
    // WAL snapshots, newest first. Each holds the archive as it was at that time; local
    // retention may since have pruned what an old offsite backup needs, so the WAL comes
    // from every snapshot that still holds it.
    let mut wal = restic.snapshots(&tags_with(cfg, &["kind:wal".into()]))?;
    wal.sort_by(|a, b| b.time.cmp(&a.time));
    if wal.is_empty() {
        return Err(OffsiteError::Refused(
            "the repository holds no copy of the WAL archive".into(),
        ));
    }
    let listings: Vec<Vec<pgpitr_restic::Node>> = wal
        .iter()
        .map(|w| restic.ls(&w.id))
        .collect::<std::result::Result<_, _>>()?;
    let archive = staging.join("archive");
    fs::create_dir_all(&archive).map_err(io_err("create staging archive"))?;

    // First the archive's metadata and timeline histories (tiny, never pruned locally), so
    // the backup is chosen along the same history model as a local restore.
    let (meta_files, _) = wanted_files(&wal, &listings, |rel, _| {
        rel == pgpitr_wal::store::META_FILE || rel.starts_with("history/")
    });
    fetch_files(&restic, &wal, &meta_files, staging, &archive, &mut *say)?;
    let decoder = pgpitr_wal::codec::Decoder::from_config(cfg.encryption.as_ref())
        .map_err(|e| OffsiteError::Refused(e.to_string()))?;
    let store = pgpitr_wal::store::Store::new(&archive);
    let objects = store
        .list()
        .map_err(|e| OffsiteError::Refused(e.to_string()))?;
    let timelines = pgpitr_wal::chain::timelines_from(&store, &objects, &decoder)
        .map_err(|e| OffsiteError::Refused(e.to_string()))?;
    let infos_all: Vec<BackupInfo> = backups.iter().map(|(b, _)| b.clone()).collect();
    let history =
        pgpitr_wal::history::History::new(timelines, infos_all.iter().map(|b| b.timeline));
    let chosen_id = match backup_id {
        Some(id) => infos_all
            .iter()
            .find(|b| b.id == id)
            .map(|b| b.id.clone())
            .ok_or_else(|| OffsiteError::Refused(format!("no offsite backup with id {id}")))?,
        None => {
            let path = history
                .live_path()
                .map_err(|e| OffsiteError::Refused(e.to_string()))?;
            let candidates = pgpitr_wal::history::History::on_path_ordered(path, &infos_all);
            pgpitr_restore::plan::choose(&candidates, target)
                .map_err(OffsiteError::Refused)?
                .id
                .clone()
        }
    };
    let (info, snap) = backups
        .iter()
        .find(|(b, _)| b.id == chosen_id)
        .expect("chosen from the list");
    say(&format!(
        "fetching base backup {} (snapshot {})",
        info.id, snap.short_id
    ));
    let tmp = staging.join(".restic");
    restic.restore(&snap.id, &tmp, &[], &mut *say)?;
    let backups_dir = staging.join("backups");
    fs::create_dir_all(&backups_dir).map_err(io_err("create staging backups"))?;
    move_out(&tmp, &snap.paths[0], &backups_dir.join(&info.id))?;
    let _ = fs::remove_dir_all(&tmp);

    let seg = info.wal_segment_size;
    let first = info.start_lsn.segno(seg);
    let (files, bytes) = wanted_files(&wal, &listings, |_, file| {
        file.split_once('-')
            .and_then(|(w, _)| pgpitr_wal::WalName::parse(w))
            .and_then(|w| w.segno(seg))
            .map(|s| s >= first)
            .unwrap_or(false)
    });
    let used: std::collections::BTreeSet<usize> = files.iter().map(|f| f.0).collect();
    say(&format!(
        "fetching {} archived WAL objects ({} bytes) from {} snapshot(s): {}",
        files.len(),
        bytes,
        used.len(),
        used.iter()
            .map(|i| wal[*i].short_id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    fetch_files(&restic, &wal, &files, staging, &archive, &mut *say)?;

    let mut staged = cfg.clone();
    staged.archive.dir = archive;
    staged.backup.dir = backups_dir;
    staged.offsite = None;
    let cfg_path = staging.join("pgpitr.json");
    let body = serde_json::to_vec_pretty(&staged).expect("config serialises");
    pgpitr_durable::write_new(&cfg_path, &body, 0o644)?;
    if let Some(a) = pgpitr_pg::Account::for_server(&cfg.postgres.os_user)? {
        a.chown_tree(staging)?;
    }
    Ok((staged, cfg_path))
}

/// (snapshot index, original absolute path, path relative to the archive root)
type WalFile = (usize, String, String);

/// The files `want(relative path, file name)` selects, each from the newest snapshot that
/// holds it (same name means same bytes: object names carry their checksum), and their
/// total size.
fn wanted_files(
    wal: &[Snapshot],
    listings: &[Vec<pgpitr_restic::Node>],
    want: impl Fn(&str, &str) -> bool,
) -> (Vec<WalFile>, u64) {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut bytes = 0;
    for (i, (snap, nodes)) in wal.iter().zip(listings).enumerate() {
        let root = snap.paths.first().cloned().unwrap_or_default();
        for n in nodes.iter().filter(|n| n.kind == "file") {
            let Some(rel) = n.path.strip_prefix(&format!("{root}/")) else {
                continue;
            };
            let file = rel.rsplit('/').next().unwrap_or(rel);
            if want(rel, file) && seen.insert(rel.to_string()) {
                bytes += n.size;
                out.push((i, n.path.clone(), rel.to_string()));
            }
        }
    }
    (out, bytes)
}

/// Restores `files` snapshot by snapshot and moves each into `archive` at its relative path.
fn fetch_files(
    restic: &Restic,
    wal: &[Snapshot],
    files: &[WalFile],
    staging: &Path,
    archive: &Path,
    say: &mut dyn FnMut(&str),
) -> Result<()> {
    let mut by_snap: std::collections::BTreeMap<usize, Vec<&WalFile>> = Default::default();
    for f in files {
        by_snap.entry(f.0).or_default().push(f);
    }
    for (i, fs_) in by_snap {
        let tmp = staging.join(format!(".restic-wal-{i}"));
        let include: Vec<String> = fs_.iter().map(|f| f.1.clone()).collect();
        restic.restore(&wal[i].id, &tmp, &include, &mut *say)?;
        for (_, original, rel) in fs_ {
            let src = tmp.join(original.trim_start_matches('/'));
            let dest = archive.join(rel);
            if let Some(d) = dest.parent() {
                fs::create_dir_all(d).map_err(io_err(format!("create {}", d.display())))?;
            }
            fs::rename(&src, &dest).map_err(io_err(format!(
                "move {} to {}",
                src.display(),
                dest.display()
            )))?;
        }
        let _ = fs::remove_dir_all(&tmp);
    }
    Ok(())
}

/// Moves `<tmp>/<original absolute path>` to `dest`.
fn move_out(tmp: &Path, original: &str, dest: &Path) -> Result<()> {
    let src = tmp.join(original.trim_start_matches('/'));
    fs::rename(&src, dest).map_err(io_err(format!(
        "move {} to {}",
        src.display(),
        dest.display()
    )))?;
    Ok(())
}
