//! Whether a valid cluster in the data folder is behind the archive: a crash-consistent copy
//! (a rolled-back snapshot, a received replica) that a killed preseed left before it wrote
//! `recovery.signal` looks like any other cluster, but started as it is it would only do
//! crash recovery, lose the WAL archived after the copy and then write on the same timeline
//! where the archive already holds those segment names.
//!
//! Decided from the data's real state, never from a marker: where the folder's own WAL ends
//! (`pg_waldump` over `pg_wal` from the latest checkpoint's REDO location, on the timeline
//! the folder is on) against what the archive holds (its segments per timeline and its
//! timeline graph, through the history model of `pgpitr-wal` as the restore's
//! [`Inventory`] loads it). A live server that stopped or crashed has written every segment
//! it archived, so its WAL reaches at least as far as the archive on its timeline: nothing to
//! do.

use pgpitr_pg::Bins;
use pgpitr_restore::Inventory;
use pgpitr_wal::history::wal_ranges;
use pgpitr_wal::{Lsn, WalName};
use std::path::Path;

use crate::state::ClusterInfo;

/// Where the folder's own WAL ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalEnd {
    /// The timeline the folder's crash recovery follows (the checkpoint's, or the minimum
    /// recovery point's when newer: a promotion not yet followed by a checkpoint).
    pub timeline: u32,
    /// The position right after the last valid record.
    pub end: Lsn,
}

/// The folder against the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// The archive holds nothing past the folder's own WAL on its history.
    Current,
    /// The archive holds WAL the folder lacks: why.
    Behind(String),
    /// A newer timeline in the archive left the folder's timeline before the folder's WAL
    /// ends: the folder went on past that branch (say so, leave it).
    Diverged(String),
}

/// The timeline the folder's crash recovery follows when it is newer than the checkpoint's,
/// by PostgreSQL's own rule (`InitWalRecovery`): the later of the checkpoint's timeline and
/// the minimum recovery point's. A history file in pg_wal alone proves nothing: a replay
/// keeps the archive's there, and writes the new timeline's before it has switched to it
/// (a replay killed during its end-of-recovery checkpoint is still on the old timeline).
fn recovery_timeline(c: &ClusterInfo) -> Option<u32> {
    let min = c.min_recovery_timeline.filter(|t| *t > 0)?;
    (min > c.timeline?).then_some(min)
}

/// Reads where the folder's WAL ends with `pg_waldump`.
pub fn wal_end(
    bins: &Bins,
    data_dir: &Path,
    c: &ClusterInfo,
    seg_size: u64,
) -> Result<WalEnd, String> {
    let parse = |s: &Option<String>, what: &str| -> Result<Lsn, String> {
        s.as_deref()
            .ok_or_else(|| format!("pg_controldata shows no {what}"))?
            .parse::<Lsn>()
    };
    let redo = parse(&c.redo_lsn, "REDO location")
        .or_else(|_| parse(&c.checkpoint_lsn, "latest checkpoint location"))?;
    let checkpoint = parse(&c.checkpoint_lsn, "latest checkpoint location").unwrap_or(redo);
    let checkpoint_tli = c
        .timeline
        .ok_or("pg_controldata shows no checkpoint timeline")?;
    let timeline = recovery_timeline(c).unwrap_or(checkpoint_tli);
    let pg_wal = data_dir.join("pg_wal");
    let mut start = redo;
    // Promoted by an end-of-recovery record and killed before its first checkpoint on the new
    // timeline: that timeline begins where its history file, which the server wrote into
    // pg_wal before it switched and reads back for its own crash recovery, says.
    if timeline != checkpoint_tli {
        let name = WalName::History { tli: timeline }.to_string();
        let path = pg_wal.join(&name);
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
        let h = pgpitr_wal::timeline::parse_history(&text)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let last = h
            .last()
            .ok_or_else(|| format!("{} names no parent timeline", path.display()))?;
        start = start.max(last.switch);
    }
    let end = pgpitr_pg::wal_end(bins, &pg_wal, timeline, start, seg_size)?;
    Ok(WalEnd {
        timeline,
        end: end.max(Lsn(checkpoint.0 + 1)),
    })
}

/// The folder's WAL end against the archive's segments and timeline graph.
pub fn standing(inv: &Inventory, end: WalEnd) -> Standing {
    let seg_size = inv.seg_size;
    let t = end.timeline;
    let end_seg = end.end.segno(seg_size);
    // Only a server that went past a segment archives it: an archived segment on this
    // timeline at or past the one the folder's WAL ends in was written by a server that went
    // further than this folder.
    if let Some((_, last)) = wal_ranges(&inv.objects, seg_size).get(&t) {
        if *last >= end_seg {
            return Standing::Behind(format!(
                "the archive holds timeline {t} up to segment {}, but this folder's WAL ends at {} (segment {})",
                WalName::segment(t, *last, seg_size),
                end.end,
                WalName::segment(t, end_seg, seg_size)
            ));
        }
    }
    // A newer timeline that left this one: at or after the folder's end, the archive's
    // history went on without it; before it, the folder went on past the branch.
    let mut diverged = Vec::new();
    for &newer in inv.history.timelines.histories.keys().filter(|n| **n > t) {
        let Ok(path) = inv.history.path_to(newer) else {
            continue;
        };
        let Some(switch) = path.iter().find(|r| r.tli == t).and_then(|r| r.end) else {
            continue;
        };
        if switch >= end.end {
            return Standing::Behind(format!(
                "the archive's timeline {newer} left timeline {t} at {switch}, at or after the end of this folder's WAL ({})",
                end.end
            ));
        }
        diverged.push(format!("timeline {newer} at {switch}"));
    }
    if diverged.is_empty() {
        Standing::Current
    } else {
        Standing::Diverged(format!(
            "the archive's newer timelines left timeline {t} before this folder's WAL ends ({}): {}; the folder went on past that branch and was left as it is",
            end.end,
            diverged.join(", ")
        ))
    }
}

/// Loads the archive and compares.
pub fn check(ctx: &crate::Context<'_>, c: &ClusterInfo) -> crate::Result<Standing> {
    let inv = Inventory::load(ctx.cfg, &ctx.decoder)?;
    let end = wal_end(&ctx.bins, ctx.data_dir(), c, inv.seg_size).map_err(|e| {
        crate::PreseedError::Failed(format!(
            "cannot tell where the WAL in {} ends: {e}",
            ctx.data_dir().display()
        ))
    })?;
    Ok(standing(&inv, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    const SEG: u64 = 16 << 20;

    fn inventory(segments: &[(u32, u64)], histories: &[(u32, &str)]) -> Inventory {
        use pgpitr_wal::history::History;
        use pgpitr_wal::store::{Object, Store};
        use pgpitr_wal::timeline::{parse_history, Timelines};
        let objects: Vec<Object> = segments
            .iter()
            .map(|&(tli, segno)| Object {
                name: WalName::segment(tli, segno, SEG),
                sha256: "0".repeat(64),
                suffix: ".zst",
                path: Default::default(),
                stored_bytes: 1,
                mtime: std::time::UNIX_EPOCH,
            })
            .collect();
        let mut timelines = Timelines::default();
        for (tli, text) in histories {
            timelines
                .histories
                .insert(*tli, parse_history(text).unwrap());
        }
        let history = History::new(timelines.clone(), objects.iter().map(|o| o.name.tli()));
        Inventory {
            store: Store::new(Path::new("/nonexistent")),
            meta: None,
            objects,
            backups: Vec::new(),
            timelines,
            history,
            seg_size: SEG,
            cache_path: None,
        }
    }

    fn end(timeline: u32, lsn: &str) -> WalEnd {
        WalEnd {
            timeline,
            end: lsn.parse().unwrap(),
        }
    }

    #[test]
    fn crash_recovery_follows_the_minimum_recovery_points_timeline_only_when_newer() {
        let info = |ckpt: u32, min: u32| ClusterInfo {
            system_identifier: 1,
            major: 16,
            state: "in production".into(),
            checkpoint_lsn: None,
            redo_lsn: None,
            checkpoint_time: None,
            timeline: Some(ckpt),
            min_recovery_timeline: Some(min),
        };
        // Promoted by an end-of-recovery record, no checkpoint on the new timeline yet.
        assert_eq!(recovery_timeline(&info(2, 5)), Some(5));
        // Cleanly stopped (0) or a checkpoint since: the checkpoint's timeline.
        assert_eq!(recovery_timeline(&info(2, 0)), None);
        assert_eq!(recovery_timeline(&info(5, 4)), None);
        assert_eq!(recovery_timeline(&info(5, 5)), None);
    }

    #[test]
    fn a_live_server_is_never_behind_what_it_archived() {
        // Archived up to segment 4; the server's WAL goes on into segment 5 (crashed or
        // stopped there), or ends right at 5's start (its last record a SWITCH).
        let inv = inventory(&[(1, 2), (1, 3), (1, 4)], &[]);
        assert_eq!(standing(&inv, end(1, "0/5000100")), Standing::Current);
        assert_eq!(standing(&inv, end(1, "0/5000000")), Standing::Current);
    }

    #[test]
    fn a_snapshot_older_than_the_archive_is_behind() {
        let inv = inventory(&[(1, 2), (1, 3), (1, 4)], &[]);
        // Its WAL ends inside segment 4, which the archive holds complete.
        let Standing::Behind(why) = standing(&inv, end(1, "0/4000100")) else {
            panic!("behind")
        };
        assert!(why.contains("000000010000000000000004"), "{why}");
        assert!(matches!(
            standing(&inv, end(1, "0/3000000")),
            Standing::Behind(_)
        ));
    }

    #[test]
    fn a_newer_timeline_after_the_end_means_behind_before_it_diverged() {
        // Timeline 2 left timeline 1 at 0/4000100 (its switch segment on timeline 1 was
        // archived only as .partial, so segment 4 is not there on timeline 1).
        let inv = inventory(&[(1, 3), (2, 4), (2, 5)], &[(2, "1\t0/4000100\tx\n")]);
        assert!(matches!(
            standing(&inv, end(1, "0/4000080")),
            Standing::Behind(w) if w.contains("timeline 2")
        ));
        assert!(matches!(
            standing(&inv, end(1, "0/4000100")),
            Standing::Behind(_)
        ));
        assert!(matches!(
            standing(&inv, end(1, "0/4000200")),
            Standing::Diverged(w) if w.contains("timeline 2 at 0/4000100")
        ));
        // On timeline 2 itself, with nothing newer: current.
        assert_eq!(standing(&inv, end(2, "0/6000028")), Standing::Current);
        // Further timelines through 2: followed along the graph.
        let inv = inventory(
            &[(1, 3), (2, 4), (3, 6)],
            &[
                (2, "1\t0/4000100\tx\n"),
                (3, "1\t0/4000100\tx\n2\t0/6000000\ty\n"),
            ],
        );
        assert!(matches!(
            standing(&inv, end(2, "0/5000000")),
            Standing::Behind(w) if w.contains("timeline 3")
        ));
    }
}
