//! What the archive and the backup folder hold, and the restorable window that follows.

use crate::{RestoreError, Result};
use chrono::{DateTime, Utc};
use pgpitr_backup::BackupInfo;
use pgpitr_config::Config;
use pgpitr_pg::{Bins, XactEnd};
use pgpitr_wal::chain::{timelines_from, walk, ChainWalk, SegmentIndex};
use pgpitr_wal::codec::Decoder;
use pgpitr_wal::history::{reads_from, History};
use pgpitr_wal::store::{ArchiveMeta, Object, Store};
use pgpitr_wal::timeline::{TimelineRange, Timelines};
use pgpitr_wal::{Lsn, WalName};
use serde::Serialize;
use std::path::PathBuf;

/// Default segment size when the archive is still empty.
const DEFAULT_SEG_SIZE: u64 = 16 << 20;

pub struct Inventory {
    pub store: Store,
    pub meta: Option<ArchiveMeta>,
    pub objects: Vec<Object>,
    /// Complete backups, ordered along the history (`History::order`): the last one is the
    /// newest backup on the live timeline.
    pub backups: Vec<BackupInfo>,
    pub timelines: Timelines,
    /// The one history model every consumer asks about order and timelines.
    pub history: History,
    pub seg_size: u64,
    /// Where the per-segment window cache lives (None: no cache).
    pub cache_path: Option<PathBuf>,
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
        let catalog = pgpitr_backup::catalog(&cfg.backup.dir)?;
        let timelines = timelines_from(&store, &objects, decoder)?;
        let history = History::new(
            timelines.clone(),
            objects
                .iter()
                .map(|o| o.name.tli())
                .chain(catalog.iter().map(|b| b.timeline)),
        );
        let backups: Vec<BackupInfo> = history.order(&catalog).into_iter().cloned().collect();
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
            history,
            seg_size,
            cache_path: Some(cfg.backup.dir.join(crate::window_cache::CACHE_FILE)),
        })
    }

    pub fn index(&self) -> SegmentIndex<'_> {
        SegmentIndex::new(&self.objects, self.seg_size)
    }

    /// PostgreSQL's `recovery_target_timeline = latest` as seen from `start_tli`: the highest
    /// timeline reached by consecutive history files.
    pub fn latest_timeline_from(&self, start_tli: u32) -> u32 {
        self.history.latest_from(start_tli)
    }

    /// The timeline path to `target_tli`, or why it cannot be followed.
    pub fn path_to(&self, target_tli: u32) -> Result<Vec<TimelineRange>> {
        self.history
            .path_to(target_tli)
            .map_err(RestoreError::Refused)
    }

    /// Whether `b` lies on `path` (its WAL is an ancestor of the target timeline).
    pub fn backup_on_path(b: &BackupInfo, path: &[TimelineRange]) -> bool {
        pgpitr_wal::history::on_path(b, path)
    }

    /// The newest backup on the live timeline's history.
    pub fn newest_backup(&self) -> Option<&BackupInfo> {
        self.history.newest(&self.backups)
    }

    /// Walks the archived segments from `start` to the newest on `path`.
    pub fn walk_from_lsn(&self, path: &[TimelineRange], start: Lsn) -> ChainWalk {
        walk(&self.index(), path, start, None)
    }

    /// The last commit/abort in the WAL on `path` at or before segment `segno`: from that
    /// segment backwards until one holds a commit or abort, down to segment `floor` (the
    /// backup's end: before it the window ends at the backup anyway). There is no fixed
    /// look-back, so hours of WAL without a commit (a long transaction, CREATE INDEX, an
    /// anti-wraparound vacuum) do not shrink the window. What each segment holds is cached
    /// by the object's content checksum, so `status` and healthcheck decode only new WAL.
    pub fn last_xact_end(
        &self,
        bins: &Bins,
        decoder: &Decoder,
        path: &[TimelineRange],
        segno: u64,
        floor: u64,
        cached: bool,
    ) -> Result<Option<XactEnd>> {
        let idx = self.index();
        // A restore's plan reads the objects themselves (`cached = false`): the cache is
        // keyed by the original's checksum, so it cannot notice a damaged stored object.
        let cache_path = if cached {
            self.cache_path.as_deref()
        } else {
            None
        };
        let mut cache = crate::window_cache::Cache::load(cache_path);
        let mut tmp: Option<tempfile::TempDir> = None;
        let mut s = segno;
        let mut found = None;
        loop {
            let obj = reads_from(path, s, self.seg_size).and_then(|t| idx.get(t, s));
            if let Some(obj) = obj {
                let x = match cache.get(obj) {
                    Some(x) => x,
                    None => {
                        if tmp.is_none() {
                            tmp = Some(
                                tempfile::tempdir()
                                    .map_err(crate::io_err("create temporary folder"))?,
                            );
                        }
                        let dir = tmp.as_ref().expect("just created").path();
                        let file = dir.join(obj.name.to_string());
                        let mut f = std::fs::File::create(&file)
                            .map_err(crate::io_err("create temporary segment"))?;
                        self.store.decode_object(obj, decoder, &mut f)?;
                        drop(f);
                        let x = pgpitr_pg::last_xact_end(bins, &file)?;
                        std::fs::remove_file(&file).ok();
                        cache.put(obj, x);
                        x
                    }
                };
                if x.is_some() {
                    found = x;
                    break;
                }
            }
            if s == 0 || s <= floor {
                break;
            }
            s -= 1;
        }
        cache.save(&self.objects);
        Ok(found)
    }

    /// The first segment on `path` between `from` and `to` that holds `mark` (a `xid:`
    /// target's commit or abort, a `name:` target's restore point): the check that such a
    /// target lies inside the window, as far as the archived WAL can tell.
    pub fn find_mark(
        &self,
        bins: &Bins,
        decoder: &Decoder,
        path: &[TimelineRange],
        from: u64,
        to: u64,
        mark: pgpitr_pg::WalMark<'_>,
    ) -> Result<Option<u64>> {
        let idx = self.index();
        let tmp = tempfile::tempdir().map_err(crate::io_err("create temporary folder"))?;
        for s in from..=to {
            let Some(obj) = reads_from(path, s, self.seg_size).and_then(|t| idx.get(t, s)) else {
                continue;
            };
            let file = tmp.path().join(obj.name.to_string());
            let mut f =
                std::fs::File::create(&file).map_err(crate::io_err("create temporary segment"))?;
            self.store.decode_object(obj, decoder, &mut f)?;
            drop(f);
            let found = pgpitr_pg::segment_has(bins, &file, mark)?;
            std::fs::remove_file(&file).ok();
            if found {
                return Ok(Some(s));
            }
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
        let mut warnings = self.history.warnings.clone();
        let live_path = self.history.live_path().ok();
        // The newest segment on the live timeline's history, not the highest number on any.
        let newest = live_path.and_then(|p| {
            let idx = self.index();
            let s = idx.max_segno_on(p)?;
            idx.get(reads_from(p, s, self.seg_size)?, s)
        });
        let newest_backup = self.newest_backup();
        let mut window = None;
        match (newest_backup, live_path) {
            (Some(b), Some(path)) => match bins {
                Some(bins) => window = Some(self.window_on(bins, decoder, path, b)?),
                None => warnings.push(
                    "the restorable window cannot be computed here: pg_waldump was not found (set postgres.bin_dir)".into(),
                ),
            },
            (None, Some(_)) if !self.backups.is_empty() => warnings.push(format!(
                "no backup lies on the history of the live timeline {}: take a base backup of the server on timeline {}",
                self.history.live, self.history.live
            )),
            _ => {}
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
            live_timeline: self.history.live,
            newest_backup: newest_backup.map(|b| b.id.clone()),
            warnings,
            backups: self
                .backups
                .iter()
                .map(|b| BackupSummary {
                    id: b.id.clone(),
                    timeline: b.timeline,
                    live: self.history.is_live(b),
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

impl Inventory {
    /// The restorable window along `path`: the newest of its stretches ([`Inventory::windows_on`],
    /// the one computation of restorable time), with the older stretches a gap separates from
    /// it in `earlier`. `newest` is the newest backup on `path`; when no backup on `path` can
    /// be restored (its own WAL is incomplete) the window is that backup's end alone, with the
    /// gaps that make it so.
    pub fn window_on(
        &self,
        bins: &Bins,
        decoder: &Decoder,
        path: &[TimelineRange],
        newest: &BackupInfo,
    ) -> Result<Window> {
        let b = newest;
        let tli = path.last().map(|r| r.tli).unwrap_or(b.timeline);
        let stop_seg = b.stop_lsn.segno(self.seg_size);
        let w = self.walk_from_lsn(path, Lsn((stop_seg + 1) * self.seg_size));
        let gaps = w.gaps.iter().map(|g| g.to_string()).collect();
        let mut stretches = self.windows_on(bins, decoder, path)?;
        let Some(last) = stretches.pop() else {
            return Ok(Window {
                timeline: tli,
                oldest: b.stop_time,
                newest: b.stop_time,
                newest_lsn: None,
                newest_backup: b.id.clone(),
                gaps,
                earlier: Vec::new(),
            });
        };
        Ok(Window {
            timeline: last.timeline,
            oldest: last.from,
            // Never inverted: the window ends no earlier than where it starts.
            newest: last.to.max(last.from),
            newest_lsn: last.to_lsn,
            newest_backup: last.newest_backup,
            gaps,
            earlier: stretches,
        })
    }
}

impl Inventory {
    /// Leaves out objects and backups known to be damaged (`pgpitr verify` found them
    /// truncated or failing their checksum), so every window computed afterwards stops
    /// before them as it stops before a missing segment.
    pub fn without_damaged(
        &mut self,
        objects: &std::collections::HashSet<String>,
        backups: &std::collections::HashSet<String>,
    ) {
        self.objects
            .retain(|o| !objects.contains(&o.name.to_string()));
        self.backups.retain(|b| !backups.contains(&b.id));
    }

    /// Every restorable stretch along `path`, oldest first. A stretch begins at the end of
    /// the oldest backup on `path` whose own WAL (start to stop) is all present, runs over
    /// contiguous segments and ends at the newest transaction before the first missing one
    /// (`cut`); the next backup past that point begins the next stretch. With nothing
    /// missing this is one stretch, the same as [`Inventory::window_on`] gives.
    pub fn windows_on(
        &self,
        bins: &Bins,
        decoder: &Decoder,
        path: &[TimelineRange],
    ) -> Result<Vec<Stretch>> {
        let idx = self.index();
        let seg = self.seg_size;
        let tli = path.last().map(|r| r.tli).unwrap_or(1);
        let on_path = History::on_path_ordered(path, &self.backups);
        let mut out: Vec<Stretch> = Vec::new();
        // The open stretch: its first backup, the walk from it, the walk's last contiguous
        // segment, and the newest backup inside it.
        let mut open: Option<(&BackupInfo, ChainWalk, u64, &BackupInfo)> = None;
        let finish = |first: &BackupInfo,
                      w: &ChainWalk,
                      newest: &BackupInfo,
                      out: &mut Vec<Stretch>|
         -> Result<()> {
            let newest_stop = newest.stop_lsn.segno(seg);
            let end = w.contiguous_end.map(|(s, _)| s).unwrap_or(newest_stop);
            let x = self.last_xact_end(bins, decoder, path, end, newest_stop, true)?;
            let to = x
                .map(|x| x.time)
                .unwrap_or(newest.stop_time)
                .max(newest.stop_time);
            out.push(Stretch {
                timeline: tli,
                from: first.stop_time,
                to,
                to_lsn: x.map(|x| x.lsn),
                from_backup: first.id.clone(),
                newest_backup: newest.id.clone(),
                last_segment: w.contiguous_end.map(|s| segment_name(s, seg).to_string()),
                cut_at: w.gaps.first().map(|g| g.first.to_string()),
            });
            Ok(())
        };
        for b in on_path {
            let stop = b.stop_lsn.segno(seg);
            if let Some((_, _, end, newest)) = open.as_mut() {
                if stop <= *end {
                    // Inside the open stretch: a newer backup to restore from, same window.
                    *newest = b;
                    continue;
                }
            }
            let w = walk(&idx, path, b.start_lsn, None);
            let Some((end, _)) = w.contiguous_end else {
                continue;
            };
            if end < stop {
                continue; // the backup's own WAL is incomplete: it cannot be restored
            }
            if let Some((first, pw, _, newest)) = open.replace((b, w, end, b)) {
                finish(first, &pw, newest, &mut out)?;
            }
        }
        if let Some((first, pw, _, newest)) = open {
            finish(first, &pw, newest, &mut out)?;
        }
        Ok(out)
    }
}

/// One restorable stretch of a timeline's history (see [`Inventory::windows_on`]).
#[derive(Debug, Clone, Serialize)]
pub struct Stretch {
    pub timeline: u32,
    /// The end of `from_backup`: the oldest point a restore reaches.
    #[serde(with = "pgpitr_time::json")]
    pub from: DateTime<Utc>,
    /// The newest transaction before the end of the stretch.
    #[serde(with = "pgpitr_time::json")]
    pub to: DateTime<Utc>,
    pub to_lsn: Option<Lsn>,
    pub from_backup: String,
    /// The newest backup inside the stretch (the one a restore near `to` uses).
    pub newest_backup: String,
    /// The last segment reachable without a gap.
    pub last_segment: Option<String>,
    /// The first missing or damaged segment that ends the stretch (None: it runs to the
    /// newest archived segment).
    pub cut_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Window {
    pub timeline: u32,
    #[serde(with = "pgpitr_time::json")]
    pub oldest: DateTime<Utc>,
    #[serde(with = "pgpitr_time::json")]
    pub newest: DateTime<Utc>,
    pub newest_lsn: Option<Lsn>,
    /// The newest backup on this timeline's history.
    pub newest_backup: String,
    pub gaps: Vec<String>,
    /// Older restorable stretches of the same history, each ended by a missing or damaged
    /// segment that also separates it from this window (oldest first; empty without gaps).
    pub earlier: Vec<Stretch>,
}

#[derive(Debug, Serialize)]
pub struct BackupSummary {
    pub id: String,
    pub timeline: u32,
    /// On the live timeline's history (false: on an abandoned branch).
    pub live: bool,
    #[serde(with = "pgpitr_time::json")]
    pub start_time: DateTime<Utc>,
    #[serde(with = "pgpitr_time::json")]
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
    #[serde(with = "pgpitr_time::json::option")]
    pub newest_segment_archived_at: Option<DateTime<Utc>>,
    pub timelines: Vec<u32>,
    /// The timeline the archive's history leads to.
    pub live_timeline: u32,
    /// The newest backup on the live timeline's history.
    pub newest_backup: Option<String>,
    /// What could not be computed or followed.
    pub warnings: Vec<String>,
    /// Ordered along the history: abandoned branches first, the live timeline's last.
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
                "  {}  timeline {}  {} .. {}  {} ({} stored){}{}",
                b.id,
                b.timeline,
                fmt_time(b.start_time),
                fmt_time(b.stop_time),
                human_bytes(b.raw_bytes),
                human_bytes(b.stored_bytes),
                if b.encrypted { "  encrypted" } else { "" },
                if b.live {
                    ""
                } else {
                    "  (abandoned branch: not on the live timeline's history)"
                }
            )?;
        }
        match &self.window {
            Some(w) => {
                writeln!(
                    f,
                    "restorable from {} to {} (timeline {}, newest backup {})",
                    fmt_time(w.oldest),
                    fmt_time(w.newest),
                    w.timeline,
                    w.newest_backup
                )?;
                for e in &w.earlier {
                    writeln!(
                        f,
                        "also restorable from {} to {} (backup {}; a gap at {} ends it)",
                        fmt_time(e.from),
                        fmt_time(e.to),
                        e.from_backup,
                        e.cut_at.as_deref().unwrap_or("?")
                    )?;
                }
                for g in &w.gaps {
                    writeln!(f, "  missing: {g}")?;
                }
            }
            None if self.warnings.is_empty() => writeln!(
                f,
                "not restorable yet: take a base backup (basebackup --config ...)"
            )?,
            None => {}
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

pub(crate) fn segment_name(seg: (u64, u32), seg_size: u64) -> WalName {
    WalName::segment(seg.1, seg.0, seg_size)
}
