//! The one history model: the timeline graph from the archive's `.history` files, the
//! backup catalog ordered along it, which timeline "newest" lives on, and which archived
//! object PostgreSQL would read for each segment. Everything that reasons about time or
//! order (catalog, chain walk, window, retention, verify, status, healthcheck, offsite) asks
//! this module instead of comparing LSNs: LSNs only order events on one history, and after a
//! restore to an earlier point the new timeline's LSNs are lower than the abandoned ones.

use crate::timeline::{TimelineRange, Timelines};
use crate::Lsn;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet};

/// What the history model needs to know about a backup.
pub trait Placed {
    fn timeline(&self) -> u32;
    fn start_lsn(&self) -> Lsn;
    fn stop_lsn(&self) -> Lsn;
    fn stop_time(&self) -> DateTime<Utc>;
}

/// The timeline graph of one archive and the timeline its history leads to.
#[derive(Debug, Clone)]
pub struct History {
    pub timelines: Timelines,
    /// The timeline the archive's history leads to: what PostgreSQL's
    /// `recovery_target_timeline = 'latest'` picks, following consecutive history files from
    /// timeline 1. "Newest" always means newest on the path to this timeline.
    pub live: u32,
    live_path: Result<Vec<TimelineRange>, String>,
    /// Every timeline seen (history files, segments, backups).
    pub known: BTreeSet<u32>,
    /// False when the history files could not be read (an encrypted archive without the
    /// identity): the live timeline is then taken to be the highest one seen, and retention
    /// falls back to the timeline-blind floor.
    pub graph: bool,
    /// Things the model could not follow (a timeline with WAL or backups but no history
    /// file); consumers show them, they are never silently dropped.
    pub warnings: Vec<String>,
}

/// The one timeline PostgreSQL reads segment `segno` from when it follows `path`: the newest
/// timeline of the path that had begun by that segment. A parent's copy of a segment at or
/// past the switch point holds the abandoned branch, so it is never a substitute.
pub fn reads_from(path: &[TimelineRange], segno: u64, seg_size: u64) -> Option<u32> {
    path.iter()
        .rev()
        .find(|r| r.begin.segno(seg_size) <= segno)
        .map(|r| r.tli)
}

/// Whether backup `b` lies on `path`: its timeline is one of the path's and it ended before
/// that timeline was left behind.
pub fn on_path<B: Placed + ?Sized>(b: &B, path: &[TimelineRange]) -> bool {
    path.iter().any(|r| {
        r.tli == b.timeline()
            && b.start_lsn() >= r.begin
            && r.end.map(|e| b.stop_lsn() <= e).unwrap_or(true)
    })
}

impl History {
    /// Builds the model from the parsed history files and every timeline seen elsewhere
    /// (segment names, backups).
    pub fn new(timelines: Timelines, seen: impl IntoIterator<Item = u32>) -> History {
        let mut known: BTreeSet<u32> = seen.into_iter().collect();
        known.extend(timelines.histories.keys().copied());
        known.insert(1);
        let mut live = 1;
        while timelines.histories.contains_key(&(live + 1)) {
            live += 1;
        }
        let live_path = timelines.path_to(live);
        let mut warnings = Vec::new();
        if let Err(e) = &live_path {
            warnings.push(e.clone());
        }
        for &t in known.iter().filter(|t| **t > live) {
            if timelines.histories.contains_key(&t) {
                if let Err(e) = timelines.path_to(t) {
                    warnings.push(e);
                }
            } else {
                warnings.push(format!(
                    "timeline {t} has WAL or backups but {t:08X}.history is not in the archive: \
                     restores cannot follow it and it is left out of the window; recover the file into the archive"
                ));
            }
        }
        History {
            timelines,
            live,
            live_path,
            known,
            graph: true,
            warnings,
        }
    }

    /// The model when the history files cannot be read (`why`): the highest timeline seen is
    /// taken as the live one, its backups as the live ones, and nothing is pruned by
    /// timeline (see [`History::needed`]).
    pub fn without_graph(seen: impl IntoIterator<Item = u32>, why: String) -> History {
        let mut known: BTreeSet<u32> = seen.into_iter().collect();
        known.insert(1);
        let live = *known.iter().max().expect("has 1");
        History {
            timelines: Timelines::default(),
            live,
            live_path: Err(format!("the timeline history cannot be read: {why}")),
            known,
            graph: false,
            warnings: vec![format!(
                "the timeline history cannot be read ({why}): timeline {live} is taken as the live one and retention keeps all WAL from the oldest kept backup on"
            )],
        }
    }

    /// The path from timeline 1 to the live timeline, oldest range first.
    pub fn live_path(&self) -> Result<&[TimelineRange], String> {
        self.live_path.as_deref().map_err(Clone::clone)
    }

    /// The path to any timeline.
    pub fn path_to(&self, tli: u32) -> Result<Vec<TimelineRange>, String> {
        self.timelines.path_to(tli)
    }

    /// PostgreSQL's `recovery_target_timeline = 'latest'` as seen from `start`.
    pub fn latest_from(&self, start: u32) -> u32 {
        let mut t = start;
        while self.timelines.histories.contains_key(&(t + 1)) {
            t += 1;
        }
        t
    }

    /// Whether `b` is on the live timeline's history.
    pub fn is_live<B: Placed + ?Sized>(&self, b: &B) -> bool {
        if !self.graph {
            return b.timeline() == self.live;
        }
        self.live_path
            .as_deref()
            .map(|p| on_path(b, p))
            .unwrap_or(false)
    }

    /// The backups on `path`, oldest first (on one history LSN order is time order).
    pub fn on_path_ordered<'a, B: Placed>(path: &[TimelineRange], backups: &'a [B]) -> Vec<&'a B> {
        let mut v: Vec<&B> = backups.iter().filter(|b| on_path(*b, path)).collect();
        v.sort_by_key(|b| (b.stop_lsn(), b.stop_time()));
        v
    }

    /// The catalog ordered along the history, oldest first: backups on abandoned branches
    /// (by the time they ended) come before every backup on the live timeline's history
    /// (in LSN order), so the last one is the newest backup on the live timeline.
    pub fn order<'a, B: Placed>(&self, backups: &'a [B]) -> Vec<&'a B> {
        let (mut live, mut off): (Vec<&B>, Vec<&B>) =
            backups.iter().partition(|b| self.is_live(*b));
        off.sort_by_key(|b| (b.stop_time(), b.timeline(), b.stop_lsn()));
        live.sort_by_key(|b| (b.stop_lsn(), b.stop_time()));
        off.extend(live);
        off
    }

    /// The newest backup on the live timeline's history.
    pub fn newest<'a, B: Placed>(&self, backups: &'a [B]) -> Option<&'a B> {
        if !self.graph {
            return self
                .order(backups)
                .last()
                .copied()
                .filter(|b| self.is_live(*b));
        }
        let p = self.live_path.as_deref().ok()?;
        Self::on_path_ordered(p, backups).last().copied()
    }

    /// The WAL the `kept` backups and the window need (see [`Needed`]).
    pub fn needed<B: Placed>(&self, kept: &[&B], seg_size: u64) -> Needed {
        let mut paths = Vec::new();
        let mut unfollowable = false;
        for &t in &self.known {
            if !self.graph {
                unfollowable = true;
                break;
            }
            let path = match self.timelines.path_to(t) {
                Ok(p) => p,
                Err(_) => {
                    unfollowable = true;
                    continue;
                }
            };
            let floor = kept
                .iter()
                .filter(|b| on_path(**b, &path))
                .map(|b| b.start_lsn().segno(seg_size))
                .min();
            // The live timeline's WAL stays even without a kept backup on it: the next backup
            // restarts the window from there.
            let floor = if t == self.live {
                floor.or(Some(0))
            } else {
                floor
            };
            if let Some(f) = floor {
                paths.push((path, f));
            }
        }
        let blind_floor = unfollowable.then(|| {
            kept.iter()
                .map(|b| b.start_lsn().segno(seg_size))
                .min()
                .unwrap_or(0)
        });
        Needed {
            seg_size,
            paths,
            blind_floor,
        }
    }
}

/// The archive objects a set of kept backups can still use: for every timeline T whose
/// history holds a kept backup, the segments PostgreSQL reads along T's path from the oldest
/// such backup's start; plus everything on the live timeline's path when no kept backup is
/// on it. When some timeline cannot be followed (missing history file) the old
/// timeline-blind rule also applies: nothing at or above the oldest kept start goes.
#[derive(Debug, Clone)]
pub struct Needed {
    seg_size: u64,
    paths: Vec<(Vec<TimelineRange>, u64)>,
    blind_floor: Option<u64>,
}

impl Needed {
    /// Whether the object on timeline `tli` for segment `segno` (None: a `.history` file,
    /// always kept) must stay.
    pub fn needs(&self, tli: u32, segno: Option<u64>) -> bool {
        let Some(segno) = segno else { return true };
        if self.blind_floor.map(|f| segno >= f).unwrap_or(false) {
            return true;
        }
        self.paths
            .iter()
            .any(|(p, floor)| segno >= *floor && reads_from(p, segno, self.seg_size) == Some(tli))
    }

    /// Whether the model had to fall back to the timeline-blind floor.
    pub fn blind(&self) -> bool {
        self.blind_floor.is_some()
    }
}

/// Segments present per timeline: first and last segment number.
pub fn wal_ranges(objects: &[crate::store::Object], seg_size: u64) -> BTreeMap<u32, (u64, u64)> {
    let mut m: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for o in objects.iter().filter(|o| o.name.is_segment()) {
        let s = o.name.segno(seg_size).expect("segments have numbers");
        let e = m.entry(o.name.tli()).or_insert((s, s));
        e.0 = e.0.min(s);
        e.1 = e.1.max(s);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::HistoryEntry;
    use chrono::TimeZone;
    use proptest::prelude::*;

    const SEG: u64 = 16 << 20;

    #[derive(Debug, Clone)]
    struct B {
        id: usize,
        tli: u32,
        start: u64,
        stop: u64,
        time: i64,
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
        fn stop_time(&self) -> DateTime<Utc> {
            Utc.timestamp_opt(self.time, 0).unwrap()
        }
    }

    fn two_timelines(switch: u64) -> Timelines {
        let mut t = Timelines::default();
        t.histories.insert(
            2,
            vec![HistoryEntry {
                parent: 1,
                switch: Lsn(switch),
            }],
        );
        t
    }

    #[test]
    fn switch_segment_is_read_from_the_child_only() {
        let t = two_timelines(5 * SEG + 0x100);
        let p = t.path_to(2).unwrap();
        assert_eq!(reads_from(&p, 4, SEG), Some(1));
        assert_eq!(reads_from(&p, 5, SEG), Some(2));
        assert_eq!(reads_from(&p, 9, SEG), Some(2));
        // a switch exactly on a segment boundary
        let t = two_timelines(5 * SEG);
        let p = t.path_to(2).unwrap();
        assert_eq!(reads_from(&p, 4, SEG), Some(1));
        assert_eq!(reads_from(&p, 5, SEG), Some(2));
    }

    #[test]
    fn newest_is_on_the_live_timeline_even_with_lower_lsns() {
        // B1 (tl1) before the switch at segment 5, B2 and B5 (tl1) on the abandoned branch
        // with higher LSNs, B3 and B4 on timeline 2.
        let h = History::new(two_timelines(5 * SEG + 0x100), [1, 2]);
        let bs = vec![
            B {
                id: 1,
                tli: 1,
                start: 2 * SEG,
                stop: 2 * SEG + 9,
                time: 10,
            },
            B {
                id: 2,
                tli: 1,
                start: 8 * SEG,
                stop: 8 * SEG + 9,
                time: 20,
            },
            B {
                id: 3,
                tli: 2,
                start: 6 * SEG,
                stop: 6 * SEG + 9,
                time: 40,
            },
            B {
                id: 4,
                tli: 2,
                start: 7 * SEG,
                stop: 7 * SEG + 9,
                time: 50,
            },
            B {
                id: 5,
                tli: 1,
                start: 12 * SEG,
                stop: 12 * SEG + 9,
                time: 60,
            },
        ];
        assert_eq!(h.live, 2);
        assert_eq!(h.newest(&bs).unwrap().id, 4);
        let order: Vec<usize> = h.order(&bs).iter().map(|b| b.id).collect();
        assert_eq!(order, vec![2, 5, 1, 3, 4]);
        // Keeping B3 and B4: timeline 1's WAL (all before B3's start, or abandoned) can go,
        // timeline 2's from B3's start stays.
        let kept = [&bs[2], &bs[3]];
        let n = h.needed(&kept, SEG);
        assert!(!n.needs(1, Some(3)));
        assert!(!n.needs(1, Some(9)));
        assert!(!n.needs(2, Some(5)));
        assert!(n.needs(2, Some(6)));
        assert!(n.needs(2, None));
        // Keeping B1 keeps timeline 1 up to the switch for timeline 2's path, and its own
        // timeline onwards (a restore with --timeline 1 can use it).
        let n = h.needed(&[&bs[0]], SEG);
        assert!(n.needs(1, Some(4)) && n.needs(2, Some(5)) && n.needs(1, Some(9)));
        assert!(!n.needs(1, Some(1)));
    }

    #[test]
    fn missing_history_is_a_warning_and_retention_turns_blind() {
        let h = History::new(Timelines::default(), [1, 2]);
        assert_eq!(h.live, 1);
        assert!(h.warnings.iter().any(|w| w.contains("00000002.history")));
        let b = B {
            id: 1,
            tli: 2,
            start: 6 * SEG,
            stop: 6 * SEG,
            time: 1,
        };
        let n = h.needed(&[&b], SEG);
        assert!(n.blind());
        assert!(n.needs(2, Some(6)) && n.needs(1, Some(7)) && !n.needs(2, Some(5)));
        let h = History::without_graph([1, 2], "no key".into());
        assert_eq!(h.live, 2);
        assert!(h.is_live(&b) && h.needed(&[&b], SEG).blind());
        assert_eq!(h.newest(std::slice::from_ref(&b)).map(|x| x.id), Some(1));
    }

    /// A random archive life: timeline 1 runs; each switch branches a new timeline off an
    /// earlier timeline at some point, possibly lower than what the parent already wrote.
    #[derive(Debug, Clone)]
    struct Life {
        timelines: Timelines,
        /// per timeline: (first segno it wrote, last segno it wrote)
        wrote: BTreeMap<u32, (u64, u64)>,
        backups: Vec<B>,
    }

    fn life() -> impl Strategy<Value = Life> {
        (
            proptest::collection::vec((0usize..8, 0u64..40, 1u64..30, 0u64..4), 0..4),
            proptest::collection::vec((0usize..5, 0u64..60, 0i64..1000), 1..10),
        )
            .prop_map(|(switches, bks)| {
                let mut timelines = Timelines::default();
                let mut wrote: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
                let mut begin: BTreeMap<u32, u64> = BTreeMap::new();
                wrote.insert(1, (0, 40));
                begin.insert(1, 0);
                let mut hist: BTreeMap<u32, Vec<HistoryEntry>> = BTreeMap::new();
                hist.insert(1, vec![]);
                for (i, (parent_pick, at, len, off)) in switches.into_iter().enumerate() {
                    let tli = i as u32 + 2;
                    let parents: Vec<u32> = wrote.keys().copied().collect();
                    let parent = parents[parent_pick % parents.len()];
                    let (pfirst, plast) = wrote[&parent];
                    let seg = pfirst + at % (plast - pfirst + 1);
                    let switch = (seg * SEG + off * 0x100).max(begin[&parent]);
                    begin.insert(tli, switch);
                    let mut h = hist[&parent].clone();
                    h.push(HistoryEntry {
                        parent,
                        switch: Lsn(switch),
                    });
                    timelines.histories.insert(tli, h.clone());
                    hist.insert(tli, h);
                    wrote.insert(tli, (seg, seg + len));
                }
                let tlis: Vec<u32> = wrote.keys().copied().collect();
                let backups = bks
                    .into_iter()
                    .enumerate()
                    .map(|(id, (tp, at, time))| {
                        let tli = tlis[tp % tlis.len()];
                        let (f, l) = wrote[&tli];
                        let s = f + at % (l - f + 1);
                        let start = (s * SEG + 0x28).max(begin[&tli] + 0x28);
                        B {
                            id,
                            tli,
                            start,
                            stop: start + 0x200,
                            time,
                        }
                    })
                    .collect();
                Life {
                    timelines,
                    wrote,
                    backups,
                }
            })
    }

    proptest! {
        #[test]
        fn newest_is_always_on_the_live_timeline(l in life()) {
            let h = History::new(l.timelines.clone(), l.wrote.keys().copied());
            prop_assert_eq!(h.live, *l.wrote.keys().max().unwrap());
            let path = h.live_path().unwrap().to_vec();
            let order = h.order(&l.backups);
            prop_assert_eq!(order.len(), l.backups.len());
            match h.newest(&l.backups) {
                Some(n) => {
                    prop_assert!(on_path(n, &path));
                    prop_assert_eq!(order.last().unwrap().id, n.id);
                    // no live-path backup is newer along the history
                    for b in l.backups.iter().filter(|b| on_path(*b, &path)) {
                        prop_assert!(b.stop_lsn() <= n.stop_lsn());
                    }
                }
                None => prop_assert!(l.backups.iter().all(|b| !on_path(b, &path))),
            }
        }

        #[test]
        fn every_segment_a_kept_backup_reads_is_needed(l in life(), keep_mask in any::<u16>()) {
            let h = History::new(l.timelines.clone(), l.wrote.keys().copied());
            let kept: Vec<&B> = l
                .backups
                .iter()
                .enumerate()
                .filter(|(i, _)| keep_mask & (1 << i) != 0)
                .map(|(_, b)| b)
                .collect();
            let n = h.needed(&kept, SEG);
            let max = l.wrote.values().map(|w| w.1).max().unwrap();
            // For every kept backup and every timeline whose history holds it, each segment
            // replay reads from the backup's start on is kept, from the right timeline.
            for b in &kept {
                for &t in l.wrote.keys() {
                    let p = h.path_to(t).unwrap();
                    if !on_path(*b, &p) {
                        continue;
                    }
                    for s in b.start_lsn().segno(SEG)..=max {
                        let from = reads_from(&p, s, SEG).unwrap();
                        prop_assert!(n.needs(from, Some(s)), "backup {} timeline {} seg {} from {}", b.id, t, s, from);
                    }
                }
            }
            // The live timeline's path is kept whole from the oldest kept backup on it.
            let live = h.live_path().unwrap().to_vec();
            let floor = kept.iter().filter(|b| on_path(**b, &live)).map(|b| b.start_lsn().segno(SEG)).min().unwrap_or(0);
            for s in floor..=max {
                prop_assert!(n.needs(reads_from(&live, s, SEG).unwrap(), Some(s)));
            }
        }
    }
}
