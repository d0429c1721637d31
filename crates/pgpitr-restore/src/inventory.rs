//! What the archive and the backup folder hold, and the restorable window that follows.

use crate::{RestoreError, Result};
use chrono::{DateTime, Utc};
use pgpitr_backup::BackupInfo;
use pgpitr_config::Config;
use pgpitr_pg::{Bins, XactEnd};
use pgpitr_wal::chain::{timelines_from, walk, ChainWalk, SegmentIndex};
use pgpitr_wal::codec::Decoder;
use pgpitr_wal::store::{ArchiveMeta, Object, Store};
use pgpitr_wal::timeline::{TimelineRange, Timelines};
use pgpitr_wal::{Lsn, WalName};
use serde::Serialize;

/// Default segment size when the archive is still empty.
const DEFAULT_SEG_SIZE: u64 = 16 << 20;

pub struct Inventory {
    pub store: Store,
    pub meta: Option<ArchiveMeta>,
    pub objects: Vec<Object>,
    pub backups: Vec<BackupInfo>,
    pub timelines: Timelines,
    pub seg_size: u64,
}

impl Inventory {
    pub fn load(cfg: &Config, decoder: &Decoder) -> Result<Inventory> {
        // A missing archive is a wrong path or a lost disk, never "0 objects".
        if !cfg.archive.dir.is_dir() {
            return Err(RestoreError::Refused(format!(
                "archive folder {} does not exist: check archive.dir in the config and that its file system is mounted (a new instance creates it with install -d -o postgres -m 0750, see docs/runbook.md)",
                cfg.archive.dir.display()
            )));
        }
        let store = Store::new(&cfg.archive.dir);
        let meta = store.meta()?;
        let objects = store.list()?;
        let backups = pgpitr_backup::catalog(&cfg.backup.dir)?;
        let timelines = timelines_from(&store, &objects, decoder)?;
        let seg_size = meta
            .as_ref()
            .map(|m| m.wal_segment_size)
            .or_else(|| backups.last().map(|b| b.wal_segment_size))
            .unwrap_or(DEFAULT_SEG_SIZE);
        Ok(Inventory {
            store,
            meta,
            objects,
            backups,
            timelines,
            seg_size,
        })
    }

    pub fn index(&self) -> SegmentIndex<'_> {
        SegmentIndex::new(&self.objects, self.seg_size)
    }

    /// PostgreSQL's `recovery_target_timeline = latest` as seen from `start_tli`: the highest
    /// timeline reached by consecutive history files.
    pub fn latest_timeline_from(&self, start_tli: u32) -> u32 {
        let mut t = start_tli;
        while self.timelines.histories.contains_key(&(t + 1)) {
            t += 1;
        }
        t
    }

    /// The timeline path to `target_tli`, or why it cannot be followed.
    pub fn path_to(&self, target_tli: u32) -> Result<Vec<TimelineRange>> {
        self.timelines
            .path_to(target_tli)
            .map_err(RestoreError::Refused)
    }

    /// Whether `b` lies on `path` (its WAL is an ancestor of the target timeline).
    pub fn backup_on_path(b: &BackupInfo, path: &[TimelineRange]) -> bool {
        path.iter().any(|r| {
            r.tli == b.timeline
                && b.start_lsn >= r.begin
                && r.end.map(|e| b.stop_lsn <= e).unwrap_or(true)
        })
    }

    /// Walks the archived segments from `start` to the newest on `path`.
    pub fn walk_from_lsn(&self, path: &[TimelineRange], start: Lsn) -> ChainWalk {
        walk(&self.index(), path, start, None)
    }

    /// The last commit/abort in the WAL up to segment `segno` on `tli`, looking back a few
    /// segments when the newest holds none. Decodes each into a temporary folder.
    pub fn last_xact_end(
        &self,
        bins: &Bins,
        decoder: &Decoder,
        path: &[TimelineRange],
        segno: u64,
        floor: u64,
    ) -> Result<Option<XactEnd>> {
        let idx = self.index();
        let tmp = tempfile::tempdir().map_err(crate::io_err("create temporary folder"))?;
        let mut s = segno;
        for _ in 0..16 {
            let obj = path.iter().rev().find_map(|r| idx.get(r.tli, s));
            if let Some(obj) = obj {
                let file = tmp.path().join(obj.name.to_string());
                let mut f = std::fs::File::create(&file)
                    .map_err(crate::io_err("create temporary segment"))?;
                self.store.decode_object(obj, decoder, &mut f)?;
                drop(f);
                if let Some(x) = pgpitr_pg::last_xact_end(bins, &file)? {
                    return Ok(Some(x));
                }
                std::fs::remove_file(&file).ok();
            }
            if s == 0 || s <= floor {
                break;
            }
            s -= 1;
        }
        Ok(None)
    }

    /// Totals for `pgpitr status`.
    pub fn status(&self, bins: Option<&Bins>, decoder: &Decoder) -> Result<Status> {
        let segments: Vec<&Object> = self
            .objects
            .iter()
            .filter(|o| o.name.is_segment())
            .collect();
        let stored: u64 = self.objects.iter().map(|o| o.stored_bytes).sum();
        let raw: u64 = segments.len() as u64 * self.seg_size
            + self
                .objects
                .iter()
                .filter(|o| !o.name.is_segment())
                .map(|o| o.stored_bytes)
                .sum::<u64>();
        let newest = segments
            .iter()
            .max_by_key(|o| (o.name.segno(self.seg_size), o.name.tli()));
        let mut window = None;
        if let (Some(b), Some(bins)) = (self.backups.last(), bins) {
            let tli = self.latest_timeline_from(b.timeline);
            if let Ok(path) = self.path_to(tli) {
                let stop_seg = b.stop_lsn.segno(self.seg_size);
                let w = self.walk_from_lsn(&path, Lsn((stop_seg + 1) * self.seg_size));
                let oldest = self
                    .backups
                    .iter()
                    .filter(|x| Self::backup_on_path(x, &path))
                    .map(|x| x.stop_time)
                    .min()
                    .unwrap_or(b.stop_time);
                let end = w.contiguous_end.map(|(s, _)| s).unwrap_or(stop_seg);
                let newest_xact = self.last_xact_end(
                    bins,
                    decoder,
                    &path,
                    end,
                    b.start_lsn.segno(self.seg_size),
                )?;
                window = Some(Window {
                    timeline: tli,
                    oldest,
                    newest: newest_xact
                        .map(|x| x.time)
                        .unwrap_or(b.stop_time)
                        .max(b.stop_time),
                    newest_lsn: newest_xact.map(|x| x.lsn),
                    gaps: w.gaps.iter().map(|g| g.to_string()).collect(),
                });
            }
        }
        Ok(Status {
            archive_dir: self.store.dir().display().to_string(),
            system_identifier: self.meta.as_ref().map(|m| m.system_identifier.to_string()),
            pg_version: self.meta.as_ref().map(|m| m.pg_version),
            wal_segment_size: self.seg_size,
            wal_objects: self.objects.len(),
            wal_segments: segments.len(),
            wal_stored_bytes: stored,
            wal_raw_bytes: raw,
            compression_ratio: if stored > 0 {
                raw as f64 / stored as f64
            } else {
                0.0
            },
            newest_segment: newest.map(|o| o.name.to_string()),
            newest_segment_archived_at: newest.map(|o| DateTime::<Utc>::from(o.mtime)),
            timelines: {
                let mut t: Vec<u32> = self.objects.iter().map(|o| o.name.tli()).collect();
                t.sort();
                t.dedup();
                t
            },
            backups: self
                .backups
                .iter()
                .map(|b| BackupSummary {
                    id: b.id.clone(),
                    timeline: b.timeline,
                    start_time: b.start_time,
                    stop_time: b.stop_time,
                    start_lsn: b.start_lsn,
                    stop_lsn: b.stop_lsn,
                    raw_bytes: b.raw_bytes(),
                    stored_bytes: b.stored_bytes(),
                    encrypted: b.encrypted,
                })
                .collect(),
            window,
        })
    }
}

#[derive(Debug, Serialize)]
pub struct Window {
    pub timeline: u32,
    pub oldest: DateTime<Utc>,
    pub newest: DateTime<Utc>,
    pub newest_lsn: Option<Lsn>,
    pub gaps: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct BackupSummary {
    pub id: String,
    pub timeline: u32,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub encrypted: bool,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub archive_dir: String,
    pub system_identifier: Option<String>,
    pub pg_version: Option<u32>,
    pub wal_segment_size: u64,
    pub wal_objects: usize,
    pub wal_segments: usize,
    pub wal_stored_bytes: u64,
    pub wal_raw_bytes: u64,
    pub compression_ratio: f64,
    pub newest_segment: Option<String>,
    pub newest_segment_archived_at: Option<DateTime<Utc>>,
    pub timelines: Vec<u32>,
    pub backups: Vec<BackupSummary>,
    /// Restorable window along the latest timeline (None without backups).
    pub window: Option<Window>,
}

/// Times for people: pgpitr-time's one format (local time with offset, microseconds).
pub fn fmt_time(t: DateTime<Utc>) -> String {
    pgpitr_time::human(t)
}

/// Human-readable byte count.
pub fn human_bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "archive {}", self.archive_dir)?;
        if let (Some(s), Some(v)) = (&self.system_identifier, self.pg_version) {
            writeln!(f, "  cluster {s}, PostgreSQL {v}")?;
        }
        writeln!(
            f,
            "  {} objects ({} segments), {} stored for {} of WAL, compression ratio {:.2}",
            self.wal_objects,
            self.wal_segments,
            human_bytes(self.wal_stored_bytes),
            human_bytes(self.wal_raw_bytes),
            self.compression_ratio
        )?;
        if let (Some(n), Some(t)) = (&self.newest_segment, self.newest_segment_archived_at) {
            writeln!(f, "  newest segment {n}, archived {}", fmt_time(t))?;
        }
        writeln!(f, "backups ({})", self.backups.len())?;
        for b in &self.backups {
            writeln!(
                f,
                "  {}  timeline {}  {} .. {}  {} ({} stored){}",
                b.id,
                b.timeline,
                fmt_time(b.start_time),
                fmt_time(b.stop_time),
                human_bytes(b.raw_bytes),
                human_bytes(b.stored_bytes),
                if b.encrypted { "  encrypted" } else { "" }
            )?;
        }
        match &self.window {
            Some(w) => {
                writeln!(
                    f,
                    "restorable from {} to {} (timeline {})",
                    fmt_time(w.oldest),
                    fmt_time(w.newest),
                    w.timeline
                )?;
                for g in &w.gaps {
                    writeln!(f, "  missing: {g}")?;
                }
            }
            None => writeln!(
                f,
                "not restorable yet: take a base backup (basebackup --config ...)"
            )?,
        }
        Ok(())
    }
}

pub(crate) fn segment_name(seg: (u64, u32), seg_size: u64) -> WalName {
    WalName::segment(seg.1, seg.0, seg_size)
}
