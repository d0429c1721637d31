//! Retention that never breaks a restore (`walprune`) and `pgpitr verify`, which finds gaps
//! and corruption before a restore does.

pub mod policy;
pub mod verify;

use chrono::{DateTime, Utc};
use pgpitr_config::Config;
use pgpitr_durable::FileLock;
use pgpitr_wal::store::Store;
use policy::{BackupRef, ObjectRef};
use serde::Serialize;
use std::fs;
use std::path::{Path, PathBuf};

pub use verify::{verify, VerifyReport};

pub use pgpitr_backup::LOCK_FILE;

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("no [retention] policy in the config: walprune keeps everything until one is set")]
    NoPolicy,
    #[error("a basebackup or a restore is running (it holds {0}): walprune does not race them; run it again when they are done")]
    Busy(PathBuf),
    #[error(transparent)]
    Durable(#[from] pgpitr_durable::DurableError),
    #[error(transparent)]
    Wal(#[from] pgpitr_wal::WalError),
    #[error(transparent)]
    Backup(#[from] pgpitr_backup::BackupError),
    #[error(transparent)]
    Io(#[from] pgpitr_durable::IoError),
}

pub type Result<T> = std::result::Result<T, RetentionError>;

pub(crate) use pgpitr_durable::io_context as io_err;

#[derive(Debug, Serialize)]
pub struct PrunePlan {
    pub kept_backups: Vec<String>,
    pub delete_backups: Vec<String>,
    /// Folders without backup.json older than the grace period (leftovers of killed runs).
    pub delete_incomplete: Vec<String>,
    /// Folders without backup.json still inside the grace period (left alone).
    pub young_incomplete: Vec<String>,
    pub delete_objects: Vec<String>,
    pub delete_bytes: u64,
    pub window_before: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub window_after: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// The timeline the archive's history leads to: "newest" means newest on it.
    pub live_timeline: u32,
    /// What the history model could not follow (retention then keeps more, never less).
    pub warnings: Vec<String>,
    #[serde(skip)]
    object_paths: Vec<PathBuf>,
}

/// Computes what the policy removes. Reads names, sizes, backup.json files and the
/// timeline history files; the order of backups and the WAL each needs come from the one
/// history model (`pgpitr_wal::history`).
pub fn plan(cfg: &Config, now: DateTime<Utc>) -> Result<PrunePlan> {
    let policy = cfg.retention.as_ref().ok_or(RetentionError::NoPolicy)?;
    let catalog = pgpitr_backup::catalog(&cfg.backup.dir)?;
    let store = Store::new(&cfg.archive.dir);
    let seg = store
        .meta()?
        .map(|m| m.wal_segment_size)
        .or_else(|| catalog.first().map(|b| b.wal_segment_size))
        .unwrap_or(16 << 20);
    let objects = store.list()?;
    let history = load_history(cfg, &store, &objects, &catalog);
    // Along the history: abandoned branches first, the live timeline's newest last.
    let backups: Vec<&pgpitr_backup::BackupInfo> = history.order(&catalog);
    let refs: Vec<BackupRef> = backups
        .iter()
        .map(|b| BackupRef {
            id: b.id.clone(),
            stop_time: b.stop_time,
            start_segno: b.start_lsn.segno(seg),
        })
        .collect();
    let kept = policy::kept(&refs, policy, now);
    let orefs: Vec<ObjectRef> = objects
        .iter()
        .map(|o| ObjectRef {
            name: o.name.to_string(),
            tli: o.name.tli(),
            segno: o.name.segno(seg),
            bytes: o.stored_bytes,
        })
        .collect();
    let kept_infos: Vec<&pgpitr_backup::BackupInfo> = backups
        .iter()
        .copied()
        .filter(|b| kept.contains(&b.id))
        .collect();
    let prunable = if kept_infos.is_empty() {
        // No backup: nothing can be restored from this WAL, but nothing is known either.
        Vec::new()
    } else {
        policy::prunable_by_history(&orefs, &history.needed(&kept_infos, seg))
    };
    let prunable_names: std::collections::HashSet<&str> =
        prunable.iter().map(|o| o.name.as_str()).collect();
    let object_paths: Vec<PathBuf> = objects
        .iter()
        .filter(|o| prunable_names.contains(o.name.to_string().as_str()))
        .map(|o| o.path.clone())
        .collect();
    let mut delete_incomplete = Vec::new();
    let mut young_incomplete = Vec::new();
    let grace = std::time::Duration::from_secs(policy.partial_grace_hours * 3600);
    if let Ok(rd) = fs::read_dir(&cfg.backup.dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.')
                || !e.path().is_dir()
                || e.path().join(pgpitr_backup::BACKUP_JSON).exists()
            {
                continue;
            }
            let age = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| m.elapsed().ok())
                .unwrap_or_default();
            if age >= grace {
                delete_incomplete.push(name);
            } else {
                young_incomplete.push(name);
            }
        }
    }
    let newest = newest_restorable(cfg);
    // The window is the live timeline's: from its oldest backup to its newest transaction.
    let window = |keep_only: bool| -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let oldest = backups
            .iter()
            .filter(|b| history.is_live(**b) && (!keep_only || kept.contains(&b.id)))
            .map(|b| b.stop_time)
            .min()?;
        Some((oldest, newest.unwrap_or(oldest).max(oldest)))
    };
    Ok(PrunePlan {
        window_before: window(false),
        window_after: window(true),
        live_timeline: history.live,
        warnings: history.warnings.clone(),
        kept_backups: backups
            .iter()
            .filter(|b| kept.contains(&b.id))
            .map(|b| b.id.clone())
            .collect(),
        delete_backups: backups
            .iter()
            .filter(|b| !kept.contains(&b.id))
            .map(|b| b.id.clone())
            .collect(),
        delete_incomplete,
        young_incomplete,
        delete_bytes: prunable.iter().map(|o| o.bytes).sum(),
        delete_objects: prunable.iter().map(|o| o.name.clone()).collect(),
        object_paths,
    })
}

/// Newest restorable time along the live timeline, when it can be read here.
fn newest_restorable(cfg: &Config) -> Option<DateTime<Utc>> {
    let decoder = pgpitr_wal::codec::Decoder::from_config(cfg.encryption.as_ref()).ok()?;
    let inv = pgpitr_restore::Inventory::load(cfg, &decoder).ok()?;
    let bins = pgpitr_pg::Bins::discover(cfg.postgres.bin_dir.as_deref()).ok();
    inv.status(bins.as_ref(), &decoder)
        .ok()?
        .window
        .map(|w| w.newest)
}

/// The history model for retention. History files are read with the configured identity;
/// an encrypted archive without it gets the graph-less model (timeline-blind floor).
fn load_history(
    cfg: &Config,
    store: &Store,
    objects: &[pgpitr_wal::store::Object],
    catalog: &[pgpitr_backup::BackupInfo],
) -> pgpitr_wal::history::History {
    use pgpitr_wal::history::History;
    let seen = objects
        .iter()
        .map(|o| o.name.tli())
        .chain(catalog.iter().map(|b| b.timeline));
    let timelines = pgpitr_wal::codec::Decoder::from_config(cfg.encryption.as_ref())
        .and_then(|d| pgpitr_wal::chain::timelines_from(store, objects, &d));
    match timelines {
        Ok(t) => History::new(t, seen),
        Err(e) => {
            tracing::warn!("timeline history unreadable: {e}");
            History::without_graph(seen, e.to_string())
        }
    }
}

/// Deletes what `plan` lists: each backup's backup.json first (so a half-deleted backup
/// never counts), then its folder; then the WAL objects; fsyncing each folder touched.
pub fn execute(cfg: &Config, plan: &PrunePlan) -> Result<()> {
    for id in plan.delete_backups.iter().chain(&plan.delete_incomplete) {
        let dir = cfg.backup.dir.join(id);
        let json = dir.join(pgpitr_backup::BACKUP_JSON);
        if json.exists() {
            fs::remove_file(&json).map_err(io_err(format!("remove {}", json.display())))?;
            pgpitr_durable::sync_dir(&dir)?;
        }
        fs::remove_dir_all(&dir).map_err(io_err(format!("remove {}", dir.display())))?;
    }
    pgpitr_durable::sync_dir(&cfg.backup.dir)?;
    let mut dirs = std::collections::BTreeSet::new();
    for p in &plan.object_paths {
        fs::remove_file(p).map_err(io_err(format!("remove {}", p.display())))?;
        if let Some(d) = p.parent() {
            dirs.insert(d.to_path_buf());
        }
    }
    for d in dirs {
        // An emptied shard folder goes too; otherwise fsync it so the removals are durable.
        if fs::remove_dir(&d).is_err() {
            pgpitr_durable::sync_dir(&d)?;
        }
    }
    Ok(())
}

/// walprune: lock, plan, (execute), metrics.
pub fn prune(cfg: &Config, dry_run: bool) -> Result<PrunePlan> {
    pgpitr_durable::create_dir_all_durable(&cfg.backup.dir)?;
    let lock_path = cfg.backup.dir.join(LOCK_FILE);
    let _lock = match FileLock::try_exclusive(&lock_path, "walprune") {
        Ok(l) => l,
        Err(pgpitr_durable::DurableError::Locked { .. }) => {
            return Err(RetentionError::Busy(lock_path))
        }
        Err(e) => return Err(e.into()),
    };
    let p = plan(cfg, Utc::now())?;
    if !dry_run {
        execute(cfg, &p)?;
        if let Some(m) = &cfg.metrics {
            if let Err(e) = record_metrics(&m.textfile_dir, &cfg.instance, &p) {
                tracing::warn!("{e}");
            }
        }
    }
    Ok(p)
}

fn record_metrics(dir: &Path, instance: &str, p: &PrunePlan) -> pgpitr_metrics::Result<()> {
    use pgpitr_metrics::{unix_now, JobState, MetricsFile};
    // Keep archive-wal's running count of objects true.
    let st = JobState::new(dir, pgpitr_wal::metrics::JOB, instance);
    {
        let _l = st.lock()?;
        if let Some(mut a) = st.load::<pgpitr_wal::metrics::ArchiveState>() {
            a.files_present = a
                .files_present
                .saturating_sub(p.delete_objects.len() as u64);
            st.save(&a)?;
        }
    }
    let mut f = MetricsFile::new("walprune", instance);
    f.gauge(
        "pgpitr_walprune_last_success_timestamp_seconds",
        "Unix time walprune last succeeded.",
        unix_now(),
    )
    .gauge(
        "pgpitr_walprune_deleted_objects",
        "WAL archive objects the last run deleted.",
        p.delete_objects.len() as f64,
    )
    .gauge(
        "pgpitr_walprune_deleted_bytes",
        "Bytes of WAL archive objects the last run deleted.",
        p.delete_bytes as f64,
    )
    .gauge(
        "pgpitr_walprune_deleted_backups",
        "Base backups the last run deleted.",
        p.delete_backups.len() as f64,
    )
    .gauge(
        "pgpitr_walprune_kept_backups",
        "Base backups kept by the policy.",
        p.kept_backups.len() as f64,
    );
    if let Some((o, n)) = p.window_after {
        f.gauge(
            "pgpitr_walprune_window_oldest_timestamp_seconds",
            "Oldest restorable point after the last run.",
            o.timestamp() as f64,
        )
        .gauge(
            "pgpitr_walprune_window_newest_timestamp_seconds",
            "Newest restorable point after the last run.",
            n.timestamp() as f64,
        );
    }
    f.write(dir)
}

impl std::fmt::Display for PrunePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let w = |x: &Option<(DateTime<Utc>, DateTime<Utc>)>| match x {
            Some((a, b)) => format!("{} to {}", pgpitr_time::human(*a), pgpitr_time::human(*b)),
            None => "none".into(),
        };
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        writeln!(f, "live timeline: {}", self.live_timeline)?;
        writeln!(f, "keep backups: {}", self.kept_backups.join(", "))?;
        for b in &self.delete_backups {
            writeln!(f, "delete backup {b}")?;
        }
        for b in &self.delete_incomplete {
            writeln!(
                f,
                "delete incomplete backup folder {b} (no backup.json, older than the grace period)"
            )?;
        }
        for b in &self.young_incomplete {
            writeln!(
                f,
                "keep incomplete backup folder {b} (no backup.json, inside the grace period)"
            )?;
        }
        for r in ranges(&self.delete_objects) {
            writeln!(f, "delete {r}")?;
        }
        writeln!(
            f,
            "{} WAL objects, {} bytes",
            self.delete_objects.len(),
            self.delete_bytes
        )?;
        writeln!(f, "restorable window before: {}", w(&self.window_before))?;
        write!(f, "restorable window after:  {}", w(&self.window_after))
    }
}

/// Object names summarised as runs of consecutive segments on one timeline
/// (`000000010000000000000003 .. 000000010000000000000107 (261 segments)`); other names
/// (history files, partial segments) one per entry. A real server prunes thousands.
pub fn ranges(names: &[String]) -> Vec<String> {
    use pgpitr_wal::WalName;
    let mut segs: Vec<(u32, u32, u32, &str)> = Vec::new();
    let mut out = Vec::new();
    for n in names {
        match WalName::parse(n) {
            Some(WalName::Segment { tli, log, seg }) => segs.push((tli, log, seg, n)),
            _ => out.push(n.clone()),
        }
    }
    segs.sort();
    let mut i = 0;
    while i < segs.len() {
        let mut j = i;
        while j + 1 < segs.len() {
            let (t, l, s, _) = segs[j];
            let (t2, l2, s2, _) = segs[j + 1];
            let next = t2 == t && ((l2 == l && s2 == s + 1) || (l2 == l + 1 && s2 == 0));
            if !next {
                break;
            }
            j += 1;
        }
        out.push(if i == j {
            segs[i].3.to_string()
        } else {
            format!("{} .. {} ({} segments)", segs[i].3, segs[j].3, j - i + 1)
        });
        i = j + 1;
    }
    out
}

#[cfg(test)]
mod range_tests {
    #[test]
    fn consecutive_segments_become_one_line() {
        let names: Vec<String> = [
            "000000010000000000000003",
            "000000010000000000000004",
            "0000000100000000000000FF",
            "000000010000000100000000",
            "000000010000000100000001",
            "00000002.history",
            "000000020000000100000005",
            "000000010000000000000005",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            super::ranges(&names),
            vec![
                "00000002.history",
                "000000010000000000000003 .. 000000010000000000000005 (3 segments)",
                "0000000100000000000000FF .. 000000010000000100000001 (3 segments)",
                "000000020000000100000005",
            ]
        );
    }
}
