//! The WAL chain a restore needs: which segment comes from which timeline, where it is
//! contiguous, and which segments are missing.

use crate::history::reads_from;
use crate::names::WalName;
use crate::store::Object;
use crate::timeline::{TimelineRange, Timelines};
use crate::Lsn;
use std::collections::HashMap;

/// Index of the archive's segments by (timeline, segment number).
pub struct SegmentIndex<'a> {
    pub seg_size: u64,
    by_key: HashMap<(u32, u64), &'a Object>,
}

impl<'a> SegmentIndex<'a> {
    pub fn new(objects: &'a [Object], seg_size: u64) -> Self {
        let by_key = objects
            .iter()
            .filter(|o| o.name.is_segment())
            .map(|o| ((o.name.tli(), o.name.segno(seg_size).unwrap()), o))
            .collect();
        SegmentIndex { seg_size, by_key }
    }

    pub fn get(&self, tli: u32, segno: u64) -> Option<&'a Object> {
        self.by_key.get(&(tli, segno)).copied()
    }

    /// Highest segment number present on `path`: only the copies PostgreSQL would read
    /// (segments a timeline wrote after it was left behind belong to another history).
    pub fn max_segno_on(&self, path: &[TimelineRange]) -> Option<u64> {
        self.by_key
            .keys()
            .filter(|(t, s)| reads_from(path, *s, self.seg_size) == Some(*t))
            .map(|(_, s)| *s)
            .max()
    }
}

/// A run of missing segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub tli: u32,
    pub first: WalName,
    pub last: WalName,
    pub count: u64,
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.count == 1 {
            write!(f, "{} (timeline {})", self.first, self.tli)
        } else {
            write!(
                f,
                "{}-{} ({} segments, timeline {})",
                self.first, self.last, self.count, self.tli
            )
        }
    }
}

/// The walk from a backup's start along the path to the target timeline.
#[derive(Debug, Clone)]
pub struct ChainWalk {
    /// Segments found, in order, with the timeline each is read from.
    pub segments: Vec<(u64, u32)>,
    /// Last segment reachable without a gap (None if even the first is missing).
    pub contiguous_end: Option<(u64, u32)>,
    /// Missing runs between the start and the newest segment on the path.
    pub gaps: Vec<Gap>,
}

/// Walks segments from `start` (a backup's start LSN) to `end_segno` (or the newest segment
/// on the path when `None`).
pub fn walk(
    index: &SegmentIndex<'_>,
    path: &[TimelineRange],
    start: Lsn,
    end_segno: Option<u64>,
) -> ChainWalk {
    let seg_size = index.seg_size;
    let first = start.segno(seg_size);
    let mut segments = Vec::new();
    let Some(last) = end_segno.or_else(|| index.max_segno_on(path)) else {
        return ChainWalk {
            segments,
            contiguous_end: None,
            gaps: Vec::new(),
        };
    };
    let mut gaps: Vec<Gap> = Vec::new();
    let mut contiguous_end = None;
    let mut broken = false;
    for segno in first..=last {
        // Only the timeline PostgreSQL reads this segment from counts: a parent's copy of the
        // switch segment holds the abandoned branch past the switch point.
        let from = reads_from(path, segno, seg_size).unwrap_or(path[0].tli);
        let found = index.get(from, segno).map(|_| from);
        match found {
            Some(tli) => {
                segments.push((segno, tli));
                if !broken {
                    contiguous_end = Some((segno, tli));
                }
            }
            None => {
                broken = true;
                let tli = from;
                let name = WalName::segment(tli, segno, seg_size);
                match gaps.last_mut() {
                    Some(g) if g.tli == tli && g.last.segno(seg_size) == Some(segno - 1) => {
                        g.last = name;
                        g.count += 1;
                    }
                    _ => gaps.push(Gap {
                        tli,
                        first: name.clone(),
                        last: name,
                        count: 1,
                    }),
                }
            }
        }
    }
    ChainWalk {
        segments,
        contiguous_end,
        gaps,
    }
}

/// Builds the timeline map from the archive's `.history` objects, decoding each.
pub fn timelines_from(
    store: &crate::store::Store,
    objects: &[Object],
    decoder: &crate::codec::Decoder,
) -> crate::Result<Timelines> {
    let mut t = Timelines::default();
    for o in objects {
        if let WalName::History { tli } = o.name {
            let mut buf = Vec::new();
            store.decode_object(o, decoder, &mut buf)?;
            let text = String::from_utf8_lossy(&buf);
            let h = crate::timeline::parse_history(&text)
                .map_err(|e| crate::WalError::Invalid(format!("{}: {e}", o.name)))?;
            t.histories.insert(tli, h);
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const SEG: u64 = 16 << 20;

    fn obj(tli: u32, segno: u64) -> Object {
        Object {
            name: WalName::segment(tli, segno, SEG),
            sha256: "0".repeat(64),
            suffix: ".zst",
            path: PathBuf::new(),
            stored_bytes: 1,
            mtime: std::time::UNIX_EPOCH,
        }
    }

    #[test]
    fn walks_across_timeline_switch_and_finds_gaps() {
        // timeline 1: segments 2..=5, switch to 2 inside segment 5; timeline 2: 5..=8, 7 missing
        // timeline 1 went on to segment 9 after timeline 2 branched off: not on the path
        let objs: Vec<Object> = (2..=9)
            .map(|s| obj(1, s))
            .chain([5, 6, 8].into_iter().map(|s| obj(2, s)))
            .collect();
        let idx = SegmentIndex::new(&objs, SEG);
        let path = vec![
            TimelineRange {
                tli: 1,
                begin: Lsn(0),
                end: Some(Lsn(5 * SEG + 0x100)),
            },
            TimelineRange {
                tli: 2,
                begin: Lsn(5 * SEG + 0x100),
                end: None,
            },
        ];
        let w = walk(&idx, &path, Lsn(2 * SEG + 0x28), None);
        assert_eq!(w.segments.first(), Some(&(2, 1)));
        assert!(
            w.segments.contains(&(5, 2)),
            "switch segment read from the new timeline"
        );
        assert_eq!(w.contiguous_end, Some((6, 2)));
        assert_eq!(w.gaps.len(), 1);
        assert_eq!(w.gaps[0].first.to_string(), "000000020000000000000007");
        let w = walk(&idx, &path, Lsn(2 * SEG), Some(6));
        assert!(w.gaps.is_empty());
        let w = walk(&idx, &path, Lsn(9 * SEG), None);
        assert!(w.gaps.is_empty() && w.segments.is_empty() && w.contiguous_end.is_none());

        // Timeline 2's copy of the switch segment is missing: timeline 1's copy (which
        // holds the abandoned branch past the switch) does not stand in for it.
        let objs: Vec<Object> = (2..=9)
            .map(|s| obj(1, s))
            .chain([6, 7, 8].into_iter().map(|s| obj(2, s)))
            .collect();
        let idx = SegmentIndex::new(&objs, SEG);
        let w = walk(&idx, &path, Lsn(2 * SEG), None);
        assert_eq!(w.contiguous_end, Some((4, 1)));
        assert_eq!(w.gaps.len(), 1);
        assert_eq!(w.gaps[0].first.to_string(), "000000020000000000000005");
        assert!(!w.segments.contains(&(5, 1)));
    }
}
