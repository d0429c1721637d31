//! PostgreSQL's WAL file names: segments, partial segments, backup history and timeline history.

use std::fmt;

/// One file PostgreSQL hands to archive_command.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WalName {
    /// `TTTTTTTTXXXXXXXXYYYYYYYY`
    Segment { tli: u32, log: u32, seg: u32 },
    /// `TTTTTTTTXXXXXXXXYYYYYYYY.partial`
    Partial { tli: u32, log: u32, seg: u32 },
    /// `TTTTTTTTXXXXXXXXYYYYYYYY.OOOOOOOO.backup`
    Backup {
        tli: u32,
        log: u32,
        seg: u32,
        offset: u32,
    },
    /// `TTTTTTTT.history`
    History { tli: u32 },
}

fn hex8(s: &str) -> Option<u32> {
    if s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        u32::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

fn seg24(s: &str) -> Option<(u32, u32, u32)> {
    if s.len() != 24 {
        return None;
    }
    Some((hex8(&s[0..8])?, hex8(&s[8..16])?, hex8(&s[16..24])?))
}

impl WalName {
    pub fn parse(name: &str) -> Option<WalName> {
        if let Some((tli, log, seg)) = seg24(name) {
            return Some(WalName::Segment { tli, log, seg });
        }
        if let Some(base) = name.strip_suffix(".partial") {
            let (tli, log, seg) = seg24(base)?;
            return Some(WalName::Partial { tli, log, seg });
        }
        if let Some(base) = name.strip_suffix(".backup") {
            let (s, off) = base.split_once('.')?;
            let (tli, log, seg) = seg24(s)?;
            return Some(WalName::Backup {
                tli,
                log,
                seg,
                offset: hex8(off)?,
            });
        }
        if let Some(base) = name.strip_suffix(".history") {
            return Some(WalName::History { tli: hex8(base)? });
        }
        None
    }

    /// Builds a segment name from a timeline and a segment number.
    pub fn segment(tli: u32, segno: u64, seg_size: u64) -> WalName {
        let per_log = 0x1_0000_0000u64 / seg_size;
        WalName::Segment {
            tli,
            log: (segno / per_log) as u32,
            seg: (segno % per_log) as u32,
        }
    }

    pub fn tli(&self) -> u32 {
        match *self {
            WalName::Segment { tli, .. }
            | WalName::Partial { tli, .. }
            | WalName::Backup { tli, .. }
            | WalName::History { tli } => tli,
        }
    }

    /// Segment number for names that carry one.
    pub fn segno(&self, seg_size: u64) -> Option<u64> {
        let per_log = 0x1_0000_0000u64 / seg_size;
        match *self {
            WalName::Segment { log, seg, .. }
            | WalName::Partial { log, seg, .. }
            | WalName::Backup { log, seg, .. } => Some(log as u64 * per_log + seg as u64),
            WalName::History { .. } => None,
        }
    }

    /// Sub-folder of the archive holding this name: `TTTTTTTTXXXXXXXX` or `history`.
    pub fn shard(&self) -> String {
        match *self {
            WalName::Segment { tli, log, .. }
            | WalName::Partial { tli, log, .. }
            | WalName::Backup { tli, log, .. } => format!("{tli:08X}{log:08X}"),
            WalName::History { .. } => "history".into(),
        }
    }

    pub fn is_segment(&self) -> bool {
        matches!(self, WalName::Segment { .. })
    }
}

impl fmt::Display for WalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WalName::Segment { tli, log, seg } => write!(f, "{tli:08X}{log:08X}{seg:08X}"),
            WalName::Partial { tli, log, seg } => write!(f, "{tli:08X}{log:08X}{seg:08X}.partial"),
            WalName::Backup {
                tli,
                log,
                seg,
                offset,
            } => write!(f, "{tli:08X}{log:08X}{seg:08X}.{offset:08X}.backup"),
            WalName::History { tli } => write!(f, "{tli:08X}.history"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parse_all_kinds() {
        for n in [
            "0000000100000003000000A1",
            "000000020000000000000004.partial",
            "000000010000000000000002.00000028.backup",
            "0000000A.history",
        ] {
            let w = WalName::parse(n).unwrap();
            assert_eq!(w.to_string(), n);
        }
        assert!(WalName::parse("00000001000000000000000").is_none());
        assert!(WalName::parse("RECOVERYXLOG").is_none());
        assert!(WalName::parse("0000000100000000000000G1").is_none());
        let s = WalName::parse("000000010000000300000010").unwrap();
        assert_eq!(s.segno(16 << 20), Some(3 * 256 + 16));
        assert_eq!(WalName::segment(1, 3 * 256 + 16, 16 << 20), s);
        assert_eq!(s.shard(), "0000000100000003");
    }
}
