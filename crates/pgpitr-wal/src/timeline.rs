//! Timeline history files and the WAL ranges each timeline covers.

use crate::lsn::Lsn;
use std::collections::BTreeMap;

/// One line of a `.history` file: `parent` ended at `switch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryEntry {
    pub parent: u32,
    pub switch: Lsn,
}

/// Parses a history file's text.
pub fn parse_history(text: &str) -> Result<Vec<HistoryEntry>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut f = line.split_whitespace();
        let (Some(tli), Some(lsn)) = (f.next(), f.next()) else {
            return Err(format!("line {}: expected `timeline<TAB>lsn`", i + 1));
        };
        let parent = tli
            .parse()
            .map_err(|_| format!("line {}: bad timeline {tli:?}", i + 1))?;
        let switch = lsn.parse().map_err(|e| format!("line {}: {e}", i + 1))?;
        out.push(HistoryEntry { parent, switch });
    }
    Ok(out)
}

/// The stretch of WAL a timeline contributes on the way to a target timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineRange {
    pub tli: u32,
    pub begin: Lsn,
    /// Switch point to the next timeline; `None` for the target timeline itself.
    pub end: Option<Lsn>,
}

/// Known histories, keyed by the timeline whose history file it is.
#[derive(Debug, Clone, Default)]
pub struct Timelines {
    pub histories: BTreeMap<u32, Vec<HistoryEntry>>,
}

impl Timelines {
    /// Ranges from timeline 1 (or the oldest ancestor) to `target`, oldest first.
    /// Errors when `target > 1` and its history file is missing.
    pub fn path_to(&self, target: u32) -> Result<Vec<TimelineRange>, String> {
        if target == 1 {
            return Ok(vec![TimelineRange {
                tli: 1,
                begin: Lsn(0),
                end: None,
            }]);
        }
        let hist = self.histories.get(&target).ok_or_else(|| {
            format!("{target:08X}.history is not in the archive: cannot follow timeline {target}")
        })?;
        let mut ranges = Vec::new();
        let mut begin = Lsn(0);
        for e in hist {
            if e.switch < begin {
                return Err(format!(
                    "{target:08X}.history is inconsistent: switch point {} of timeline {} is before {}",
                    e.switch, e.parent, begin
                ));
            }
            ranges.push(TimelineRange {
                tli: e.parent,
                begin,
                end: Some(e.switch),
            });
            begin = e.switch;
        }
        ranges.push(TimelineRange {
            tli: target,
            begin,
            end: None,
        });
        Ok(ranges)
    }

    /// The highest timeline known (from histories or from `seen`, e.g. segment names).
    pub fn latest(&self, seen: impl IntoIterator<Item = u32>) -> u32 {
        let a = self.histories.keys().copied().max().unwrap_or(1);
        seen.into_iter().fold(a, u32::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn path_through_two_switches() {
        let mut t = Timelines::default();
        let h = parse_history(
            "# comment\n1\t0/3000000\tno recovery target specified\n\n2\t0/50000A8\tbefore 2026\n",
        )
        .unwrap();
        t.histories.insert(3, h);
        assert!(parse_history("x").is_err());
        let p = t.path_to(3).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].tli, 1);
        assert_eq!(p[1].begin, Lsn(0x3000000));
        assert_eq!(p[2].begin, Lsn(0x50000A8));
        assert!(t.path_to(2).is_err());
        assert_eq!(t.latest([1, 2]), 3);
    }
}
