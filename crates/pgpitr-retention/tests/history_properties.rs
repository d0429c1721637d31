//! Property: retention along the history model. Random archive lives with several timeline
//! switches (each branching off any earlier timeline, often at a point lower than what the
//! parent had already written, so LSN order and time order disagree), backups on live and
//! abandoned branches at random times, random policies. After pruning:
//! - the newest backup on the live timeline is always kept;
//! - every kept backup still reaches, without a gap, every segment it could before, along
//!   every timeline whose history holds it;
//! - the live timeline's window (oldest kept backup on it to its newest WAL) is intact.

use chrono::{Duration, TimeZone, Utc};
use pgpitr_config::RetentionConfig;
use pgpitr_retention::policy::{kept, prunable_by_history, BackupRef, ObjectRef};
use pgpitr_wal::chain::{walk, SegmentIndex};
use pgpitr_wal::history::{on_path, reads_from, History, Placed};
use pgpitr_wal::store::Object;
use pgpitr_wal::timeline::{HistoryEntry, Timelines};
use pgpitr_wal::{Lsn, WalName};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashSet};

const SEG: u64 = 16 << 20;

#[derive(Debug, Clone)]
struct B {
    id: String,
    tli: u32,
    start: u64,
    stop: u64,
    time: chrono::DateTime<Utc>,
}
impl Placed for B {
    fn timeline(&self) -> u32 {
        self.tli
    }
    fn start_lsn(&self) -> Lsn {
        Lsn(self.start)
    }
    fn stop_lsn(&self) -> Lsn {
        Lsn(self.stop)
    }
    fn stop_time(&self) -> chrono::DateTime<Utc> {
        self.time
    }
}

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

#[derive(Debug, Clone)]
struct Life {
    timelines: Timelines,
    objects: Vec<Object>,
    backups: Vec<B>,
}

fn life() -> impl Strategy<Value = Life> {
    (
        5u64..60,
        proptest::collection::vec((0usize..8, 0u64..60, 1u64..40, 0u64..4), 0..4),
        proptest::collection::vec((0usize..6, 0u64..80, 0i64..2000), 1..12),
    )
        .prop_map(|(tl1_len, switches, bks)| {
            let mut timelines = Timelines::default();
            let mut wrote: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
            let mut begin: BTreeMap<u32, u64> = BTreeMap::new();
            let mut hist: BTreeMap<u32, Vec<HistoryEntry>> = BTreeMap::new();
            wrote.insert(1, (1, tl1_len));
            begin.insert(1, 0);
            hist.insert(1, vec![]);
            for (i, (pp, at, len, off)) in switches.into_iter().enumerate() {
                let tli = i as u32 + 2;
                let parents: Vec<u32> = wrote.keys().copied().collect();
                let parent = parents[pp % parents.len()];
                let (pf, pl) = wrote[&parent];
                let seg = pf + at % (pl - pf + 1);
                let switch = (seg * SEG + off * 0x100).max(begin[&parent]);
                let mut h = hist[&parent].clone();
                h.push(HistoryEntry {
                    parent,
                    switch: Lsn(switch),
                });
                timelines.histories.insert(tli, h.clone());
                hist.insert(tli, h);
                begin.insert(tli, switch);
                // The new primary archives from its switch segment on.
                wrote.insert(tli, (switch / SEG, switch / SEG + len));
            }
            let objects: Vec<Object> = wrote
                .iter()
                .flat_map(|(t, (f, l))| (*f..=*l).map(move |s| object(*t, s)))
                .collect();
            let tlis: Vec<u32> = wrote.keys().copied().collect();
            let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
            let backups = bks
                .into_iter()
                .enumerate()
                .map(|(i, (tp, at, minutes))| {
                    let tli = tlis[tp % tlis.len()];
                    let (f, l) = wrote[&tli];
                    let s = f + at % (l - f + 1);
                    let start = (s * SEG + 0x28).max(begin[&tli] + 0x28);
                    B {
                        id: format!("b{i:02}"),
                        tli,
                        start,
                        stop: start + 0x400,
                        // Random times: LSN order and time order disagree.
                        time: t0 + Duration::minutes(minutes * 17),
                    }
                })
                .collect();
            Life {
                timelines,
                objects,
                backups,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn retention_never_deletes_what_a_kept_backup_or_the_window_needs(
        l in life(),
        keep_last in proptest::option::of(1u32..4),
        keep_daily in proptest::option::of(1u32..3),
        keep_within_days in proptest::option::of(0u32..2),
    ) {
        let h = History::new(
            l.timelines.clone(),
            l.objects.iter().map(|o| o.name.tli()).chain(l.backups.iter().map(|b| b.tli)),
        );
        let order = h.order(&l.backups);
        let refs: Vec<BackupRef> = order
            .iter()
            .map(|b| BackupRef { id: b.id.clone(), stop_time: b.time, start_segno: b.start / SEG })
            .collect();
        let policy = RetentionConfig { keep_last, keep_daily, keep_within_days, ..Default::default() };
        let now = l.backups.iter().map(|b| b.time).max().unwrap() + Duration::hours(1);
        let keep = kept(&refs, &policy, now);

        // "Newest" is on the live timeline and is always kept.
        let live = h.live_path().unwrap().to_vec();
        if let Some(n) = h.newest(&l.backups) {
            prop_assert!(on_path(n, &live));
            prop_assert!(keep.contains(&n.id), "newest live backup {} dropped", n.id);
            // keep_last counts along the history: the live timeline's newest come first.
            if let Some(k) = keep_last {
                let live_ids: Vec<&B> = History::on_path_ordered(&live, &l.backups);
                for b in live_ids.iter().rev().take(k as usize) {
                    prop_assert!(keep.contains(&b.id));
                }
            }
        }

        let kept_b: Vec<&B> = order.iter().copied().filter(|b| keep.contains(&b.id)).collect();
        let orefs: Vec<ObjectRef> = l.objects.iter().map(|o| ObjectRef {
            name: o.name.to_string(), tli: o.name.tli(), segno: o.name.segno(SEG), bytes: 1,
        }).collect();
        let pruned: HashSet<String> = prunable_by_history(&orefs, &h.needed(&kept_b, SEG))
            .iter().map(|o| o.name.clone()).collect();
        let remaining: Vec<Object> = l.objects.iter().filter(|o| !pruned.contains(&o.name.to_string())).cloned().collect();
        let before = SegmentIndex::new(&l.objects, SEG);
        let after = SegmentIndex::new(&remaining, SEG);

        // Every kept backup reaches as far as before along every timeline holding it.
        for b in &kept_b {
            for &t in &h.known {
                let p = h.path_to(t).unwrap();
                if !on_path(*b, &p) {
                    continue;
                }
                let w0 = walk(&before, &p, b.start_lsn(), None);
                let w1 = walk(&after, &p, b.start_lsn(), None);
                prop_assert_eq!(w0.contiguous_end, w1.contiguous_end, "backup {} on timeline {}", &b.id, t);
            }
        }
        // The live window: from its oldest kept backup every segment replay reads is there.
        if let Some(oldest) = kept_b.iter().filter(|b| on_path(**b, &live)).map(|b| b.start / SEG).min() {
            let newest = before.max_segno_on(&live).unwrap_or(oldest);
            for s in oldest..=newest {
                let t = reads_from(&live, s, SEG).unwrap();
                if before.get(t, s).is_some() {
                    prop_assert!(after.get(t, s).is_some(), "live window lost {}", WalName::segment(t, s, SEG));
                }
            }
        }
        // History files never go (none here), and pruning is a subset of the archive.
        prop_assert_eq!(remaining.len() + pruned.len(), l.objects.len());
    }
}
