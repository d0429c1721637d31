//! Planning a restore: which backup, which timeline, which WAL, and whether the target can
//! be reached. Nothing here touches the disk outside temporary folders.

use crate::inventory::{fmt_time, segment_name, Inventory};
use crate::target::Target;
use crate::{RestoreError, Result};
use chrono::{DateTime, Utc};
use pgpitr_backup::BackupInfo;
use pgpitr_pg::Bins;
use pgpitr_wal::codec::Decoder;
use pgpitr_wal::Lsn;
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct PlanRequest {
    pub target: Target,
    /// `--backup ID`: use this backup instead of choosing.
    pub backup: Option<String>,
    /// `--timeline N`: follow this timeline instead of the latest.
    pub timeline: Option<u32>,
    /// `--exclusive`: stop just before the target (xid, time and lsn targets only).
    pub exclusive: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub backup: BackupInfo,
    pub target: Target,
    /// Stop just before the target rather than just after it.
    pub exclusive: bool,
    pub timeline: u32,
    /// Archived segments replay will read after the backup's own WAL.
    pub first_segment: Option<String>,
    pub last_segment: Option<String>,
    pub segments: usize,
    /// The window reachable from the chosen backup along the timeline.
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub window_end_lsn: Option<Lsn>,
    pub warnings: Vec<String>,
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "target:   {}{}",
            self.target,
            if self.exclusive {
                " (exclusive: stop just before it)"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "backup:   {} (timeline {}, ended {} at {})",
            self.backup.id,
            self.backup.timeline,
            fmt_time(self.backup.stop_time),
            self.backup.stop_lsn
        )?;
        writeln!(f, "timeline: {}", self.timeline)?;
        match (&self.first_segment, &self.last_segment) {
            (Some(a), Some(b)) => writeln!(
                f,
                "WAL:      {} segments, {a} .. {b}, all present",
                self.segments
            )?,
            _ => writeln!(f, "WAL:      only the WAL inside the backup")?,
        }
        writeln!(
            f,
            "window:   {} to {}",
            fmt_time(self.window_start),
            fmt_time(self.window_end)
        )?;
        for w in &self.warnings {
            writeln!(f, "warning:  {w}")?;
        }
        Ok(())
    }
}

/// The backup folder's lock, shared with basebackup and other restores: taken before
/// planning, so walprune (which takes it exclusively) cannot remove a backup or WAL between
/// the plan's checks and the replay that relies on them.
pub fn lock(cfg: &pgpitr_config::Config) -> Result<pgpitr_durable::FileLock> {
    Ok(pgpitr_backup::lock_shared(&cfg.backup.dir)?)
}

/// Chooses and checks everything a restore needs; `Refused` explains what is possible.
pub fn plan(inv: &Inventory, bins: &Bins, decoder: &Decoder, req: &PlanRequest) -> Result<Plan> {
    if req.exclusive {
        req.target
            .check_exclusive()
            .map_err(RestoreError::Refused)?;
    }
    if inv.backups.is_empty() {
        return Err(RestoreError::Refused(
            "there is no complete base backup to restore from: take one with `basebackup --config ...`".into(),
        ));
    }
    let forced = match &req.backup {
        Some(id) => Some(inv.backups.iter().find(|b| &b.id == id).ok_or_else(|| {
            RestoreError::Refused(format!(
                "no complete backup with id {id}; backups: {}",
                inv.backups
                    .iter()
                    .map(|b| b.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?),
        None => None,
    };
    // The timeline to follow comes from the history model: the live timeline, or for a
    // backup on an abandoned branch the newest timeline whose history holds it.
    let timeline = match (req.timeline, forced) {
        (Some(t), _) => t,
        (None, Some(b)) if !inv.history.is_live(b) => {
            let t = inv.latest_timeline_from(b.timeline);
            match inv.path_to(t) {
                Ok(p) if Inventory::backup_on_path(b, &p) => t,
                _ => b.timeline,
            }
        }
        (None, _) => inv.history.live,
    };
    let path = inv.path_to(timeline)?;
    let candidates: Vec<&BackupInfo> =
        pgpitr_wal::history::History::on_path_ordered(&path, &inv.backups);
    if candidates.is_empty() {
        return Err(RestoreError::Refused(format!(
            "no backup lies on the history of timeline {timeline}{}",
            if inv.history.warnings.is_empty() {
                String::new()
            } else {
                format!(" ({})", inv.history.warnings.join("; "))
            }
        )));
    }
    let oldest = candidates[0];
    let window_text = |end: &str| {
        format!(
            "the restorable window on timeline {timeline} is {} to {end}",
            fmt_time(oldest.stop_time)
        )
    };

    let chosen: &BackupInfo = match forced {
        Some(b) => {
            if !candidates.iter().any(|c| c.id == b.id) {
                return Err(RestoreError::Refused(format!(
                    "backup {} is not on the history of timeline {timeline}",
                    b.id
                )));
            }
            b
        }
        None => choose(&candidates, &req.target).map_err(|e| {
            RestoreError::Refused(format!(
                "{e}: {}",
                window_text("the newest archived transaction")
            ))
        })?,
    };

    if let Some(f) = chosen.files.iter().find(|f| f.original != "base.tar") {
        return Err(RestoreError::Refused(format!(
            "backup {} has tablespace archive {}: restoring tablespaces is not supported yet (nothing was changed)",
            chosen.id, f.original
        )));
    }
    // WAL after the backup's own (pg_basebackup -X fetch puts start..stop into the backup).
    let seg = inv.seg_size;
    let stop_seg = chosen.stop_lsn.segno(seg);
    let walk = inv.walk_from_lsn(&path, Lsn((stop_seg + 1) * seg));
    let end_segno = walk.contiguous_end.map(|(s, _)| s).unwrap_or(stop_seg);
    let last = inv.last_xact_end(bins, decoder, &path, end_segno, stop_seg, false)?;
    let window_end = last
        .map(|x| x.time)
        .unwrap_or(chosen.stop_time)
        .max(chosen.stop_time);
    let window_end_lsn = last.map(|x| x.lsn);
    let gaps: Vec<String> = walk.gaps.iter().map(|g| g.to_string()).collect();
    let gap_text = if gaps.is_empty() {
        String::new()
    } else {
        format!(
            "; the WAL chain breaks after that: missing {}",
            gaps.join(", ")
        )
    };
    let window_start = if forced.is_some() {
        chosen.stop_time
    } else {
        oldest.stop_time
    };
    let refuse_after = |what: String| {
        RestoreError::Refused(format!(
            "{what}: {}{gap_text}. {}",
            window_text(&fmt_time(window_end)),
            if gaps.is_empty() {
                "If the source server is running, archive its current segment (SELECT pg_switch_wal()) and retry, or use --to latest"
            } else {
                "Restore to a point before the gap, or recover the missing segments into the archive"
            }
        ))
    };
    // What the history model could not follow is shown with every plan.
    let mut warnings = Vec::new();
    warnings.extend(inv.history.warnings.iter().cloned());
    match &req.target {
        Target::Time(t) => {
            // Compared to the microsecond (PostgreSQL's precision, and what pgpitr prints), so
            // a printed window start or end pasted back as --to is inside the window.
            let t = &pgpitr_time::trunc_micros(*t);
            if *t < pgpitr_time::trunc_micros(chosen.stop_time) {
                return Err(RestoreError::Refused(format!(
                    "target {} is before the end of backup {} ({}): {}",
                    fmt_time(*t),
                    chosen.id,
                    fmt_time(chosen.stop_time),
                    window_text(&fmt_time(window_end))
                )));
            }
            if *t > pgpitr_time::trunc_micros(window_end) {
                return Err(refuse_after(format!(
                    "target {} is after the newest archived transaction ({})",
                    fmt_time(*t),
                    fmt_time(window_end)
                )));
            }
        }
        Target::Lsn(l) => {
            if *l < chosen.stop_lsn {
                return Err(RestoreError::Refused(format!(
                    "target lsn {l} is before the end of backup {} ({})",
                    chosen.id, chosen.stop_lsn
                )));
            }
            if window_end_lsn.map(|e| *l > e).unwrap_or(true) {
                return Err(refuse_after(format!(
                    "target lsn {l} is after the newest archived transaction ({})",
                    window_end_lsn
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "none".into())
                )));
            }
        }
        Target::Latest => {
            if !gaps.is_empty() {
                return Err(refuse_after(
                    "`latest` would stop at the first missing segment".into(),
                ));
            }
        }
        Target::Xid(_) | Target::Name(_) => {
            let (mark, what) = match &req.target {
                Target::Xid(x) => (
                    pgpitr_pg::WalMark::XactEnd(*x),
                    format!("transaction {x} does not commit or abort"),
                ),
                Target::Name(n) => (
                    pgpitr_pg::WalMark::RestorePoint(n),
                    format!("there is no restore point named {n:?}"),
                ),
                _ => unreachable!(),
            };
            let from = chosen.start_lsn.segno(seg);
            if inv
                .find_mark(bins, decoder, &path, from, end_segno, mark)?
                .is_none()
            {
                return Err(refuse_after(format!(
                    "{what} in the archived WAL after backup {} ({} .. {})",
                    chosen.id,
                    segment_name((from, chosen.timeline), seg),
                    segment_name(
                        (
                            end_segno,
                            pgpitr_wal::history::reads_from(&path, end_segno, seg)
                                .unwrap_or(timeline)
                        ),
                        seg
                    )
                )));
            }
        }
        Target::Immediate => {}
    }
    let (first_segment, last_segment, segments) = match (walk.segments.first(), walk.contiguous_end)
    {
        (Some(f), Some(l)) if !matches!(req.target, Target::Immediate) => (
            Some(segment_name(*f, seg).to_string()),
            Some(segment_name(l, seg).to_string()),
            (l.0 - f.0 + 1) as usize,
        ),
        _ => (None, None, 0),
    };
    Ok(Plan {
        backup: chosen.clone(),
        target: req.target.clone(),
        exclusive: req.exclusive,
        timeline,
        first_segment,
        last_segment,
        segments,
        window_start,
        window_end,
        window_end_lsn,
        warnings,
    })
}

/// The newest backup among `candidates` (oldest first) that can reach `target`.
pub fn choose<'a>(
    candidates: &[&'a BackupInfo],
    target: &Target,
) -> std::result::Result<&'a BackupInfo, String> {
    let oldest = *candidates
        .first()
        .ok_or("there is no backup to choose from")?;
    let newest = *candidates.last().unwrap();
    match target {
        Target::Time(t) => candidates
            .iter()
            .rev()
            .find(|b| pgpitr_time::trunc_micros(b.stop_time) <= pgpitr_time::trunc_micros(*t))
            .copied()
            .ok_or_else(|| {
                format!(
                    "target {} is before the end of the oldest backup ({}, ended {})",
                    fmt_time(*t),
                    oldest.id,
                    fmt_time(oldest.stop_time)
                )
            }),
        Target::Lsn(l) => candidates
            .iter()
            .rev()
            .find(|b| b.stop_lsn <= *l)
            .copied()
            .ok_or_else(|| {
                format!(
                    "target lsn {l} is before the end of the oldest backup ({}, ended at {})",
                    oldest.id, oldest.stop_lsn
                )
            }),
        // A transaction id at or above a backup's next_xid started after that backup ended.
        Target::Xid(x) => Ok(candidates
            .iter()
            .rev()
            .find(|b| b.next_xid != 0 && b.next_xid <= *x)
            .copied()
            .unwrap_or(oldest)),
        // Where a named restore point lies is only known by replaying: start from the oldest.
        Target::Name(_) => Ok(oldest),
        Target::Immediate | Target::Latest => Ok(newest),
    }
}
