//! Property: after pruning, every kept backup can still reach every point between its start
//! and the newest WAL along the timelines that lead there, and nothing below the oldest kept
//! backup's start remains; the newest backup is always kept and the policy is honoured.

use chrono::{Duration, TimeZone, Utc};
use pgpitr_config::RetentionConfig;
use pgpitr_retention::policy::{kept, prunable_objects, BackupRef, ObjectRef};
use pgpitr_wal::chain::{walk, SegmentIndex};
use pgpitr_wal::store::Object;
use pgpitr_wal::timeline::TimelineRange;
use pgpitr_wal::{Lsn, WalName};
use proptest::prelude::*;

const SEG: u64 = 16 << 20;

fn object(tli: u32, segno: u64) -> Object {
    Object {
        name: WalName::segment(tli, segno, SEG),
        sha256: "0".repeat(64),
        suffix: ".zst",
        path: Default::default(),
        stored_bytes: 100,
        mtime: std::time::UNIX_EPOCH,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn kept_backups_reach_the_newest_wal(
        newest in 5u64..150,
        switch_frac in proptest::option::of(0.1f64..0.9),
        backup_fracs in proptest::collection::vec(0.0f64..1.0, 1..12),
        keep_last in proptest::option::of(1u32..5),
        keep_daily in proptest::option::of(1u32..4),
        hours_apart in 1i64..30,
    ) {
        // History: timeline 1 from segment 1; optionally a switch to timeline 2 inside
        // segment `k` (that segment exists on both, as PostgreSQL makes it).
        let k = switch_frac.map(|f| ((newest as f64 * f) as u64).max(2));
        let mut objects: Vec<Object> = Vec::new();
        let tl1_end = k.unwrap_or(newest);
        objects.extend((1..=tl1_end).map(|s| object(1, s)));
        if let Some(k) = k {
            objects.extend((k..=newest).map(|s| object(2, s)));
        }
        let path: Vec<TimelineRange> = match k {
            None => vec![TimelineRange { tli: 1, begin: Lsn(0), end: None }],
            Some(k) => vec![
                TimelineRange { tli: 1, begin: Lsn(0), end: Some(Lsn(k * SEG + 0x100)) },
                TimelineRange { tli: 2, begin: Lsn(k * SEG + 0x100), end: None },
            ],
        };
        // Backups at random segments, in time order.
        let mut starts: Vec<u64> = backup_fracs.iter().map(|f| 1 + (f * (newest - 1) as f64) as u64).collect();
        starts.sort();
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let backups: Vec<BackupRef> = starts.iter().enumerate().map(|(i, s)| BackupRef {
            id: format!("b{i:03}"),
            stop_time: t0 + Duration::hours(hours_apart * i as i64),
            start_segno: *s,
        }).collect();
        let policy = RetentionConfig { keep_last, keep_daily, ..Default::default() };
        let now = backups.last().unwrap().stop_time + Duration::hours(1);
        let keep = kept(&backups, &policy, now);

        // The newest is always kept; keep_last is honoured.
        prop_assert!(keep.contains(&backups.last().unwrap().id));
        if let Some(n) = keep_last {
            prop_assert!(keep.len() >= (n as usize).min(backups.len()));
        }
        let refs: Vec<ObjectRef> = objects.iter().map(|o| ObjectRef {
            name: o.name.to_string(), tli: o.name.tli(), segno: o.name.segno(SEG), bytes: o.stored_bytes,
        }).collect();
        let kept_starts: Vec<u64> = backups.iter().filter(|b| keep.contains(&b.id)).map(|b| b.start_segno).collect();
        let pruned: std::collections::HashSet<String> =
            prunable_objects(&refs, kept_starts.iter().copied()).iter().map(|o| o.name.clone()).collect();
        let remaining: Vec<Object> = objects.iter().filter(|o| !pruned.contains(&o.name.to_string())).cloned().collect();

        // Every kept backup still reaches the newest segment without a gap.
        let idx = SegmentIndex::new(&remaining, SEG);
        for b in backups.iter().filter(|b| keep.contains(&b.id)) {
            let w = walk(&idx, &path, Lsn(b.start_segno * SEG), None);
            prop_assert!(w.gaps.is_empty(), "backup {} at {} lost {:?}", b.id, b.start_segno, w.gaps);
            prop_assert_eq!(w.contiguous_end.map(|(s, _)| s), Some(newest));
        }
        // Nothing below the oldest kept start remains; everything from it on does.
        let floor = *kept_starts.iter().min().unwrap();
        for o in &remaining {
            prop_assert!(o.name.segno(SEG).unwrap() >= floor, "{} kept below {}", o.name, floor);
        }
        prop_assert_eq!(remaining.len() + pruned.len(), objects.len());
    }
}
