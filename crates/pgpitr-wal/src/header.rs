//! The long page header at the start of every WAL segment (`XLogLongPageHeaderData`).

/// `XLP_LONG_HEADER` in `xlp_info`.
const XLP_LONG_HEADER: u16 = 0x0002;
/// Bytes of the long header we read.
pub const LONG_HEADER_LEN: usize = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub magic: u16,
    pub tli: u32,
    pub page_addr: u64,
    pub system_identifier: u64,
    pub seg_size: u32,
    pub block_size: u32,
}

impl SegmentHeader {
    /// Parses the first page header of a segment (little-endian, as on every platform
    /// PostgreSQL ships for in practice).
    pub fn parse(buf: &[u8]) -> Result<SegmentHeader, String> {
        if buf.len() < LONG_HEADER_LEN {
            return Err(format!(
                "only {} bytes, shorter than a WAL page header",
                buf.len()
            ));
        }
        let u16_at = |o: usize| u16::from_le_bytes([buf[o], buf[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(buf[o..o + 8].try_into().unwrap());
        let info = u16_at(2);
        if info & XLP_LONG_HEADER == 0 {
            return Err(
                "first page lacks the long header flag: not the start of a WAL segment".into(),
            );
        }
        let h = SegmentHeader {
            magic: u16_at(0),
            tli: u32_at(4),
            page_addr: u64_at(8),
            system_identifier: u64_at(24),
            seg_size: u32_at(32),
            block_size: u32_at(36),
        };
        if !h.seg_size.is_power_of_two() || !(1 << 20..=1 << 30).contains(&h.seg_size) {
            return Err(format!(
                "declares an impossible segment size {}",
                h.seg_size
            ));
        }
        Ok(h)
    }
}

impl SegmentHeader {
    /// Why a file of `size` bytes with this first page is not the segment `name`, if it is
    /// not: a size other than the declared segment size, or a first page at another WAL
    /// position than the name's. Used wherever a segment file meets its name (push, restore,
    /// the prefetch spool).
    pub fn mismatch(&self, name: &crate::names::WalName, size: u64) -> Option<String> {
        if size != self.seg_size as u64 {
            return Some(format!(
                "it is {size} bytes but its page header declares {}-byte segments: truncated or damaged",
                self.seg_size
            ));
        }
        let expected = name.segno(size).map(|s| s * size);
        if expected != Some(self.page_addr) {
            return Some(format!(
                "it starts at WAL position {:#x}, but its name says {}: renamed or damaged",
                self.page_addr,
                expected.map_or("no segment".into(), |e| format!("{e:#x}"))
            ));
        }
        None
    }
}

/// PostgreSQL major version that writes a given `XLOG_PAGE_MAGIC`.
pub fn pg_major_for_magic(magic: u16) -> Option<u32> {
    Some(match magic {
        0xD097 => 10,
        0xD098 => 11,
        0xD101 => 12,
        0xD106 => 13,
        0xD10D => 14,
        0xD110 => 15,
        0xD113 => 16,
        0xD116 => 17,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parses_long_header() {
        let mut b = vec![0u8; 64];
        b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        b[2..4].copy_from_slice(&0x0006u16.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[8..16].copy_from_slice(&0x0300_0000u64.to_le_bytes());
        b[24..32].copy_from_slice(&7311234567890u64.to_le_bytes());
        b[32..36].copy_from_slice(&(16u32 << 20).to_le_bytes());
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        let h = SegmentHeader::parse(&b).unwrap();
        assert_eq!(h.system_identifier, 7311234567890);
        assert_eq!(h.seg_size, 16 << 20);
        assert_eq!(pg_major_for_magic(h.magic), Some(15));
        b[2] = 0;
        assert!(SegmentHeader::parse(&b).is_err());
        assert!(SegmentHeader::parse(&b[..10]).is_err());
    }
}
