//! PostgreSQL's `backup_manifest` (format version 1) and checking tar contents against it.

use pgpitr_wal::Lsn;
use serde::Deserialize;
use sha2::Digest;
use std::collections::HashMap;
use std::io::Read;

#[derive(Debug, Deserialize)]
pub struct Manifest {
    #[serde(rename = "Files")]
    pub files: Vec<ManifestFile>,
    #[serde(rename = "WAL-Ranges")]
    pub wal_ranges: Vec<WalRange>,
}

#[derive(Debug, Deserialize)]
pub struct ManifestFile {
    #[serde(rename = "Path")]
    pub path: String,
    #[serde(rename = "Size")]
    pub size: u64,
    #[serde(rename = "Checksum-Algorithm", default)]
    pub algorithm: Option<String>,
    #[serde(rename = "Checksum", default)]
    pub checksum: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct WalRange {
    #[serde(rename = "Timeline")]
    pub timeline: u32,
    #[serde(rename = "Start-LSN")]
    pub start: Lsn,
    #[serde(rename = "End-LSN")]
    pub end: Lsn,
}

impl Manifest {
    /// Parses and checks the manifest's own checksum.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "backup_manifest is not UTF-8")?;
        let key = "\"Manifest-Checksum\": \"";
        let at = text
            .rfind(key)
            .ok_or("backup_manifest has no Manifest-Checksum")?;
        let expected: String = text[at + key.len()..].chars().take(64).collect();
        let actual = hex::encode(sha2::Sha256::digest(&bytes[..at]));
        if actual != expected {
            return Err(format!(
                "backup_manifest checksum mismatch (computed {actual}, recorded {expected})"
            ));
        }
        serde_json::from_str(text).map_err(|e| format!("backup_manifest: {e}"))
    }

    pub fn start_lsn(&self) -> Option<Lsn> {
        self.wal_ranges.first().map(|r| r.start)
    }
    pub fn start_timeline(&self) -> Option<u32> {
        self.wal_ranges.first().map(|r| r.timeline)
    }
    pub fn end_lsn(&self) -> Option<Lsn> {
        self.wal_ranges.last().map(|r| r.end)
    }

    /// Every file the manifest lists must have been seen in the tars.
    pub fn check_all_seen(&self, seen: &HashMap<String, (u64, u32)>) -> Result<(), String> {
        let missing: Vec<&str> = self
            .files
            .iter()
            .filter(|f| !seen.contains_key(&f.path))
            .map(|f| f.path.as_str())
            .take(5)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "files listed in backup_manifest are missing: {}",
                missing.join(", ")
            ))
        }
    }

    fn lookup(&self) -> HashMap<&str, &ManifestFile> {
        self.files.iter().map(|f| (f.path.as_str(), f)).collect()
    }
}

/// Reads a tar stream, checking each regular file against the manifest. Records what it saw
/// (path -> size, crc) and captures `backup_label`.
pub fn check_tar<R: Read>(
    reader: R,
    prefix: &str,
    seen: &mut HashMap<String, (u64, u32)>,
    label: &mut Option<String>,
) -> Result<(), String> {
    check_tar_capturing(reader, prefix, seen, label, &mut None)
}

/// Same, and when `manifest` is `Some`, the top-level `backup_manifest` member that
/// pg_basebackup puts into the tar it writes to stdout is captured there (it is not a file of
/// the cluster, so it is left out of `seen`).
pub fn check_tar_capturing<R: Read>(
    reader: R,
    prefix: &str,
    seen: &mut HashMap<String, (u64, u32)>,
    label: &mut Option<String>,
    manifest: &mut Option<Vec<u8>>,
) -> Result<(), String> {
    let capture_manifest = manifest.is_some();
    let mut ar = tar::Archive::new(reader);
    let entries = ar.entries().map_err(|e| format!("reading tar: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("reading tar: {e}"))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = format!(
            "{prefix}{}",
            entry
                .path()
                .map_err(|e| format!("tar path: {e}"))?
                .to_string_lossy()
        );
        let mut crc = 0u32;
        let mut size = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        let is_manifest = capture_manifest && path == "backup_manifest";
        let mut text = if path == "backup_label" || is_manifest {
            Some(Vec::new())
        } else {
            None
        };
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| format!("reading {path}: {e}"))?;
            if n == 0 {
                break;
            }
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            size += n as u64;
            if let Some(t) = text.as_mut() {
                t.extend_from_slice(&buf[..n]);
            }
        }
        if is_manifest {
            *manifest = text;
            continue;
        }
        if let Some(t) = text {
            *label = Some(String::from_utf8_lossy(&t).into_owned());
        }
        seen.insert(path, (size, crc));
    }
    Ok(())
}

impl Manifest {
    /// Compares what the tars held with the manifest entries.
    pub fn compare(&self, seen: &HashMap<String, (u64, u32)>) -> Result<(), String> {
        let want = self.lookup();
        for (path, (size, crc)) in seen {
            let Some(m) = want.get(path.as_str()) else {
                continue;
            };
            if m.size != *size {
                return Err(format!("{path}: {size} bytes, manifest says {}", m.size));
            }
            if m.algorithm.as_deref() == Some("CRC32C") {
                let hexcrc = hex::encode(crc.to_le_bytes());
                if m.checksum.as_deref() != Some(hexcrc.as_str()) {
                    return Err(format!(
                        "{path}: CRC32C {hexcrc}, manifest says {}",
                        m.checksum.as_deref().unwrap_or("none")
                    ));
                }
            }
        }
        self.check_all_seen(seen)
    }
}

/// (start LSN, checkpoint LSN, timeline) from a backup_label.
pub fn parse_backup_label(text: &str) -> Result<(Lsn, Lsn, u32), String> {
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .ok_or_else(|| format!("backup_label has no {k}"))
    };
    let start = field("START WAL LOCATION:")?;
    let start: Lsn = start.split_whitespace().next().unwrap_or("").parse()?;
    let ckpt: Lsn = field("CHECKPOINT LOCATION:")?.parse()?;
    let tli = field("START TIMELINE:")?
        .parse()
        .map_err(|_| "backup_label: bad START TIMELINE".to_string())?;
    Ok((start, ckpt, tli))
}
