//! The archive folder on disk.
//!
//! ```text
//! <archive.dir>/archive.json                      cluster identity, written on first push
//! <archive.dir>/wal/TTTTTTTTXXXXXXXX/<name>-<sha256>.zst[.age]   segments, .partial, .backup
//! <archive.dir>/history/TTTTTTTT.history-<sha256>.zst[.age]
//! ```
//! The sha256 of the original bytes is part of the object name, so a repeated push can be
//! compared without the decryption key, and publishing a name is a single atomic link.

use crate::codec::{sha256_reader, Check, Decoder, Encoded, Encoder};
use crate::header::{pg_major_for_magic, SegmentHeader, LONG_HEADER_LEN};
use crate::names::WalName;
use crate::{Result, WalError};
use pgpitr_durable::{create_dir_all_durable, DurableError, FileLock, TempFile, TMP_PREFIX};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub const META_FILE: &str = "archive.json";
const SUFFIXES: [&str; 4] = [".zst.age", ".zst", ".age", ""];

/// Identity of the cluster an archive belongs to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ArchiveMeta {
    pub format: u32,
    pub system_identifier: u64,
    pub pg_version: u32,
    pub wal_segment_size: u64,
    pub created: String,
}

/// One stored object.
#[derive(Debug, Clone)]
pub struct Object {
    pub name: WalName,
    pub sha256: String,
    pub suffix: &'static str,
    pub path: PathBuf,
    pub stored_bytes: u64,
    pub mtime: std::time::SystemTime,
}

/// Outcome of a push.
#[derive(Debug)]
pub enum Pushed {
    Stored(Encoded),
    AlreadyArchived { sha256: String },
}

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// Parses `<walname>-<sha256><suffix>`.
fn parse_object_name(file: &str) -> Option<(WalName, String, &'static str)> {
    let (wal, rest) = file.split_once('-')?;
    let name = WalName::parse(wal)?;
    if rest.len() < 64 {
        return None;
    }
    let (sha, ext) = rest.split_at(64);
    if !sha
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return None;
    }
    let suffix = SUFFIXES.iter().find(|s| **s == ext)?;
    Some((name, sha.to_string(), suffix))
}

impl Store {
    pub fn new(dir: &Path) -> Store {
        Store {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn shard_dir(&self, name: &WalName) -> PathBuf {
        match name {
            WalName::History { .. } => self.dir.join("history"),
            _ => self.dir.join("wal").join(name.shard()),
        }
    }

    pub fn meta(&self) -> Result<Option<ArchiveMeta>> {
        let p = self.dir.join(META_FILE);
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| WalError::Invalid(format!("{}: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(WalError::io(format!("read {}", p.display()), e)),
        }
    }

    /// Records `meta` if the archive has none yet, else checks it matches.
    fn ensure_meta(&self, meta: ArchiveMeta, name: &WalName) -> Result<ArchiveMeta> {
        let existing = match self.meta()? {
            Some(m) => m,
            None => {
                let p = self.dir.join(META_FILE);
                let body = serde_json::to_vec_pretty(&meta).expect("meta serialises");
                match pgpitr_durable::write_new(&p, &body, 0o644) {
                    Ok(()) => return Ok(meta),
                    Err(DurableError::Exists(_)) => self
                        .meta()?
                        .ok_or_else(|| WalError::Invalid("archive.json vanished".into()))?,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        if existing.system_identifier != meta.system_identifier {
            return Err(WalError::ForeignCluster {
                name: name.to_string(),
                found: meta.system_identifier,
                expected: existing.system_identifier,
                archive: self.dir.display().to_string(),
            });
        }
        if existing.wal_segment_size != meta.wal_segment_size {
            return Err(WalError::Invalid(format!(
                "{name} uses {}-byte segments but the archive holds {}-byte segments",
                meta.wal_segment_size, existing.wal_segment_size
            )));
        }
        Ok(existing)
    }

    /// The object stored for `name`, if any.
    pub fn find(&self, name: &WalName) -> Result<Option<Object>> {
        let dir = self.shard_dir(name);
        let prefix = format!("{name}-");
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(WalError::io(format!("list {}", dir.display()), e)),
        };
        let mut found: Option<Object> = None;
        for ent in rd {
            let ent = ent.map_err(|e| WalError::io(format!("list {}", dir.display()), e))?;
            let file = ent.file_name();
            let Some(file) = file.to_str() else { continue };
            if !file.starts_with(&prefix) {
                continue;
            }
            if let Some(obj) = self.object_from_entry(&dir, file)? {
                if let Some(prev) = &found {
                    return Err(WalError::Invalid(format!(
                        "two objects for {name} in {} ({} and {}): remove the one that should not be there",
                        dir.display(),
                        prev.sha256,
                        obj.sha256
                    )));
                }
                found = Some(obj);
            }
        }
        Ok(found)
    }

    fn object_from_entry(&self, dir: &Path, file: &str) -> Result<Option<Object>> {
        let Some((name, sha256, suffix)) = parse_object_name(file) else {
            return Ok(None);
        };
        let path = dir.join(file);
        let md = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(WalError::io(format!("stat {}", path.display()), e)),
        };
        Ok(Some(Object {
            name,
            sha256,
            suffix,
            path,
            stored_bytes: md.len(),
            mtime: md.modified().unwrap_or(std::time::UNIX_EPOCH),
        }))
    }

    /// Every object in the archive, sorted by name.
    pub fn list(&self) -> Result<Vec<Object>> {
        let mut out = Vec::new();
        let mut dirs = vec![self.dir.join("history")];
        let wal = self.dir.join("wal");
        match fs::read_dir(&wal) {
            Ok(rd) => {
                for ent in rd {
                    let ent =
                        ent.map_err(|e| WalError::io(format!("list {}", wal.display()), e))?;
                    dirs.push(ent.path());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(WalError::io(format!("list {}", wal.display()), e)),
        }
        for dir in dirs {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(WalError::io(format!("list {}", dir.display()), e)),
            };
            for ent in rd {
                let ent = ent.map_err(|e| WalError::io(format!("list {}", dir.display()), e))?;
                let file = ent.file_name();
                let Some(file) = file.to_str() else { continue };
                if file.starts_with(TMP_PREFIX) {
                    continue;
                }
                if let Some(o) = self.object_from_entry(&dir, file)? {
                    out.push(o);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Archives the file at `src` under `name` (PostgreSQL's %p and %f).
    ///
    /// `pg_version` is the major version from the data folder's PG_VERSION when known.
    pub fn push(
        &self,
        src: &Path,
        name: &WalName,
        encoder: &Encoder,
        pg_version: Option<u32>,
    ) -> Result<Pushed> {
        if !self.dir.is_dir() {
            // Never create it: an unmounted dataset must not send WAL to the root file system.
            return Err(WalError::Invalid(format!(
                "archive.dir {} does not exist (is its file system mounted?): create it, writable by the server's user",
                self.dir.display()
            )));
        }
        let mut file =
            File::open(src).map_err(|e| WalError::io(format!("open {}", src.display()), e))?;
        let size = file
            .metadata()
            .map_err(|e| WalError::io(format!("stat {}", src.display()), e))?
            .len();
        if matches!(name, WalName::Segment { .. } | WalName::Partial { .. }) {
            self.check_segment(&mut file, size, name, pg_version)?;
        } else {
            self.check_pushing_cluster(src, name)?;
        }
        if let Some(existing) = self.find(name)? {
            return self.compare_existing(&mut file, name, existing);
        }
        let dir = self.shard_dir(name);
        create_dir_all_durable(&dir)?;
        let mut tmp = TempFile::new_in(&dir, &name.to_string(), 0o640)?;
        let encoded = encoder.encode(
            std::io::BufReader::with_capacity(1 << 20, &mut file),
            tmp.file(),
        )?;
        let dest = dir.join(format!("{name}-{}{}", encoded.sha256, encoder.suffix()));
        // Serialise the "is there one already?" check with the publish, so two concurrent
        // pushes of different bytes cannot both land.
        let _lock = FileLock::exclusive(&self.dir.join(".publish.lock"))?;
        if let Some(existing) = self.find(name)? {
            drop(tmp);
            return if existing.sha256 == encoded.sha256 {
                Ok(Pushed::AlreadyArchived {
                    sha256: existing.sha256,
                })
            } else {
                Err(WalError::Conflict {
                    name: name.to_string(),
                    stored: existing.sha256,
                    new: encoded.sha256,
                })
            };
        }
        match tmp.publish_new(&dest) {
            Ok(()) => Ok(Pushed::Stored(encoded)),
            Err(DurableError::Exists(_)) => Ok(Pushed::AlreadyArchived {
                sha256: encoded.sha256,
            }),
            Err(e) => Err(e.into()),
        }
    }

    fn compare_existing(
        &self,
        file: &mut File,
        name: &WalName,
        existing: Object,
    ) -> Result<Pushed> {
        file.seek(SeekFrom::Start(0))
            .map_err(|e| WalError::io("seek", e))?;
        let (sha, _) = sha256_reader(std::io::BufReader::with_capacity(1 << 20, file))
            .map_err(|e| WalError::io(format!("read {name}"), e))?;
        if sha == existing.sha256 {
            Ok(Pushed::AlreadyArchived { sha256: sha })
        } else {
            Err(WalError::Conflict {
                name: name.to_string(),
                stored: existing.sha256,
                new: sha,
            })
        }
    }

    fn check_segment(
        &self,
        file: &mut File,
        size: u64,
        name: &WalName,
        pg_version: Option<u32>,
    ) -> Result<()> {
        let mut head = [0u8; LONG_HEADER_LEN];
        let n = read_up_to(file, &mut head).map_err(|e| WalError::io(format!("read {name}"), e))?;
        let h = SegmentHeader::parse(&head[..n])
            .map_err(|e| WalError::Invalid(format!("{name} is not a valid WAL segment: {e}")))?;
        if let Some(why) = h.mismatch(name, size) {
            return Err(WalError::Invalid(format!("{name}: {why}; not archived")));
        }
        let meta = ArchiveMeta {
            format: 1,
            system_identifier: h.system_identifier,
            pg_version: pg_version
                .or_else(|| pg_major_for_magic(h.magic))
                .unwrap_or(0),
            wal_segment_size: size,
            created: chrono::Utc::now().to_rfc3339(),
        };
        self.ensure_meta(meta, name)?;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| WalError::io("seek", e))?;
        Ok(())
    }

    /// `.history` and `.backup` files carry no system identifier: the pushing cluster's is
    /// read from `global/pg_control` next to its `pg_wal` (archive_command runs in the data
    /// folder) and must match the archive's, once the archive has one.
    fn check_pushing_cluster(&self, src: &Path, name: &WalName) -> Result<()> {
        let Some(meta) = self.meta()? else {
            return Ok(());
        };
        let data = match src.parent() {
            Some(p) if p.file_name().is_some_and(|n| n == "pg_wal") => {
                p.parent().unwrap_or(Path::new(""))
            }
            _ => Path::new(""),
        };
        let control = data.join("global").join("pg_control");
        let mut head = [0u8; 8];
        let read = File::open(&control).and_then(|mut f| f.read_exact(&mut head));
        if let Err(e) = read {
            return Err(WalError::Invalid(format!(
                "cannot tell which cluster {name} comes from: {} ({e}); archive-wal must run as archive_command, in the data folder, with %p",
                control.display()
            )));
        }
        let found = u64::from_le_bytes(head);
        if found != meta.system_identifier {
            return Err(WalError::ForeignCluster {
                name: name.to_string(),
                found,
                expected: meta.system_identifier,
                archive: self.dir.display().to_string(),
            });
        }
        Ok(())
    }

    /// Restores `name` into `dest` atomically. `Ok(false)` when it is not archived.
    pub fn fetch(&self, name: &WalName, decoder: &Decoder, dest: &Path) -> Result<bool> {
        // "Not archived" would let PostgreSQL end recovery early: an archive that is not
        // there at all (unmounted, wrong path) is an error, not an empty archive.
        if !self.dir.is_dir() {
            return Err(WalError::Invalid(format!(
                "archive.dir {} does not exist (is its file system mounted?)",
                self.dir.display()
            )));
        }
        let Some(obj) = self.find(name)? else {
            return Ok(false);
        };
        self.restore_object(&obj, decoder, dest)?;
        Ok(true)
    }

    /// Decodes and verifies `obj` into `dest` atomically (temp file in `dest`'s folder, rename).
    pub fn restore_object(&self, obj: &Object, decoder: &Decoder, dest: &Path) -> Result<()> {
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut tmp = TempFile::new_in(dir, "restore", 0o600)?;
        self.decode_for_restore(obj, decoder, tmp.file())?;
        // No fsync: PostgreSQL fsyncs a restored file itself when it keeps it, and after a
        // crash it asks for it again (docs/decisions.md, "A restored WAL file is not fsynced").
        tmp.publish_replace_unsynced(dest)?;
        Ok(())
    }

    /// Decodes `obj` into `out` for PostgreSQL (restore-wal, the prefetch spool), checked the
    /// cheapest sound way (docs/decisions.md, "restore-wal trusts the zstd frame checksum"):
    /// a segment's bytes by its zstd frame checksum (sha256 when it has none), then its page
    /// header (this segment's address, the archive's system identifier, the declared size);
    /// anything else by the sha256 in its name.
    pub fn decode_for_restore<W: std::io::Write>(
        &self,
        obj: &Object,
        decoder: &Decoder,
        out: W,
    ) -> Result<u64> {
        if !obj.name.is_segment() {
            return self.decode_object(obj, decoder, out);
        }
        let mut out = HeadCapture::new(out);
        let n = self.decode_checked(obj, decoder, &mut out, Check::Frame)?;
        let wrong = |why: String| {
            Err(WalError::Invalid(format!(
                "archived object {} ({}) is not that segment: {why}; run `pgpitr verify`",
                obj.name,
                obj.path.display()
            )))
        };
        let h = match SegmentHeader::parse(&out.head) {
            Ok(h) => h,
            Err(e) => return wrong(e),
        };
        if let Some(why) = h.mismatch(&obj.name, n) {
            return wrong(why);
        }
        if let Some(meta) = self.meta()? {
            if meta.system_identifier != h.system_identifier {
                return wrong(format!(
                    "it belongs to database system {}, the archive to {}",
                    h.system_identifier, meta.system_identifier
                ));
            }
        }
        Ok(n)
    }

    /// Decodes an object into `out`, checking the original's sha256.
    pub fn decode_object<W: std::io::Write>(
        &self,
        obj: &Object,
        decoder: &Decoder,
        out: W,
    ) -> Result<u64> {
        self.decode_checked(obj, decoder, out, Check::Sha256)
    }

    fn decode_checked<W: std::io::Write>(
        &self,
        obj: &Object,
        decoder: &Decoder,
        out: W,
        check: Check,
    ) -> Result<u64> {
        let f = File::open(&obj.path)
            .map_err(|e| WalError::io(format!("open {}", obj.path.display()), e))?;
        let (sha, n) = decoder
            .decode_checked(obj.suffix, f, out, check)
            .map_err(|e| match e {
                WalError::Io { what, source } => WalError::Invalid(format!(
                    "archived object {} ({}) is damaged or unreadable: {what}: {source}",
                    obj.name,
                    obj.path.display()
                )),
                WalError::Crypto(m) => WalError::Invalid(format!(
                    "archived object {} ({}) cannot be decrypted: {m}",
                    obj.name,
                    obj.path.display()
                )),
                other => other,
            })?;
        match sha {
            Some(sha) if sha != obj.sha256 => Err(WalError::Corrupt {
                name: obj.name.to_string(),
                expected: obj.sha256.clone(),
                actual: sha,
            }),
            _ => Ok(n),
        }
    }
}

/// Passes writes through and keeps the first `LONG_HEADER_LEN` bytes.
struct HeadCapture<W> {
    inner: W,
    head: Vec<u8>,
}

impl<W> HeadCapture<W> {
    fn new(inner: W) -> Self {
        HeadCapture {
            inner,
            head: Vec::with_capacity(LONG_HEADER_LEN),
        }
    }
}

impl<W: std::io::Write> std::io::Write for HeadCapture<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        let want = LONG_HEADER_LEN.saturating_sub(self.head.len()).min(n);
        self.head.extend_from_slice(&buf[..want]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgpitr_config::Compression;

    const SEG: u64 = 1 << 20;

    fn segment(sysid: u64, segno: u64, fill: u8) -> Vec<u8> {
        let mut b = vec![fill; SEG as usize];
        b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        b[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[8..16].copy_from_slice(&(segno * SEG).to_le_bytes());
        b[24..32].copy_from_slice(&sysid.to_le_bytes());
        b[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        b
    }

    fn setup() -> (tempfile::TempDir, Store, Encoder) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(&d.path().join("arch"));
        fs::create_dir_all(s.dir()).unwrap();
        (d, s, Encoder::new(Compression::Zstd, 3, None).unwrap())
    }

    #[test]
    fn push_same_and_different_bytes() {
        let (d, s, e) = setup();
        let name = WalName::segment(1, 5, SEG);
        let src = d.path().join("seg");
        fs::write(&src, segment(42, 5, 7)).unwrap();
        assert!(matches!(
            s.push(&src, &name, &e, Some(15)).unwrap(),
            Pushed::Stored(_)
        ));
        let obj = s.find(&name).unwrap().unwrap();
        let before = fs::metadata(&obj.path).unwrap().modified().unwrap();
        assert!(matches!(
            s.push(&src, &name, &e, Some(15)).unwrap(),
            Pushed::AlreadyArchived { .. }
        ));
        fs::write(&src, segment(42, 5, 8)).unwrap();
        let err = s.push(&src, &name, &e, Some(15)).unwrap_err().to_string();
        assert!(err.contains(&obj.sha256), "{err}");
        let after = s.find(&name).unwrap().unwrap();
        assert_eq!(after.sha256, obj.sha256);
        assert_eq!(
            fs::metadata(&after.path).unwrap().modified().unwrap(),
            before
        );
        assert_eq!(s.meta().unwrap().unwrap().system_identifier, 42);

        let out = d.path().join("back");
        assert!(s.fetch(&name, &Decoder::plain(), &out).unwrap());
        assert_eq!(fs::read(&out).unwrap(), segment(42, 5, 7));
        assert!(!s
            .fetch(&WalName::segment(1, 6, SEG), &Decoder::plain(), &out)
            .unwrap());
    }

    #[test]
    fn refuses_foreign_truncated_and_renamed() {
        let (d, s, e) = setup();
        let src = d.path().join("seg");
        fs::write(&src, segment(42, 5, 7)).unwrap();
        s.push(&src, &WalName::segment(1, 5, SEG), &e, None)
            .unwrap();
        fs::write(&src, segment(43, 6, 7)).unwrap();
        let err = s
            .push(&src, &WalName::segment(1, 6, SEG), &e, None)
            .unwrap_err();
        assert!(matches!(err, WalError::ForeignCluster { .. }), "{err}");
        let mut short = segment(42, 7, 7);
        short.truncate(4096);
        fs::write(&src, short).unwrap();
        let err = s
            .push(&src, &WalName::segment(1, 7, SEG), &e, None)
            .unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        fs::write(&src, segment(42, 9, 7)).unwrap();
        let err = s
            .push(&src, &WalName::segment(1, 8, SEG), &e, None)
            .unwrap_err();
        assert!(err.to_string().contains("renamed"), "{err}");
        assert_eq!(s.list().unwrap().len(), 1);

        // .history and .backup carry no system identifier: pg_control next to pg_wal does.
        let data = d.path().join("data");
        fs::create_dir_all(data.join("pg_wal")).unwrap();
        fs::create_dir_all(data.join("global")).unwrap();
        let hist = data.join("pg_wal").join("00000002.history");
        fs::write(&hist, b"1\t0/5000000\tno recovery target specified\n").unwrap();
        let hname = WalName::parse("00000002.history").unwrap();
        let bname = WalName::parse("000000010000000000000005.00000028.backup").unwrap();
        fs::write(data.join("global/pg_control"), 43u64.to_le_bytes()).unwrap();
        for n in [&hname, &bname] {
            let err = s.push(&hist, n, &e, None).unwrap_err();
            assert!(
                matches!(err, WalError::ForeignCluster { found: 43, .. }),
                "{err}"
            );
        }
        let err = s.push(&src, &hname, &e, None).unwrap_err();
        assert!(err.to_string().contains("pg_control"), "{err}");
        fs::write(data.join("global/pg_control"), 42u64.to_le_bytes()).unwrap();
        s.push(&hist, &hname, &e, None).unwrap();
        assert_eq!(s.list().unwrap().len(), 2);
    }

    #[test]
    fn corrupt_object_detected() {
        let (d, s, e) = setup();
        let name = WalName::parse("00000002.history").unwrap();
        let src = d.path().join("h");
        fs::write(&src, b"1\t0/3000000\tno recovery target specified\n").unwrap();
        s.push(&src, &name, &e, None).unwrap();
        let obj = s.find(&name).unwrap().unwrap();
        // Replace the object with a valid zstd frame of other bytes: only the sha catches it.
        let mut other = Vec::new();
        e.encode(&b"1\t0/4000000\tother\n"[..], &mut other).unwrap();
        fs::write(&obj.path, other).unwrap();
        let err = s
            .fetch(&name, &Decoder::plain(), &d.path().join("o"))
            .unwrap_err();
        assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
        assert!(!d.path().join("o").exists());
    }

    #[test]
    fn restore_checks_a_segment_by_its_frame_and_header() {
        let (d, s, e) = setup();
        let mut objs = Vec::new();
        for segno in [5, 6] {
            let src = d.path().join(format!("seg{segno}"));
            fs::write(&src, segment(42, segno, segno as u8)).unwrap();
            let name = WalName::segment(1, segno, SEG);
            s.push(&src, &name, &e, None).unwrap();
            objs.push(s.find(&name).unwrap().unwrap());
        }
        let out = d.path().join("out");
        s.restore_object(&objs[0], &Decoder::plain(), &out).unwrap();
        assert_eq!(fs::read(&out).unwrap(), segment(42, 5, 5));

        // Damage inside the frame: libzstd's content checksum catches it.
        let good = fs::read(&objs[0].path).unwrap();
        let mut bad = good.clone();
        let at = bad.len() - 2;
        bad[at] ^= 0x55;
        fs::write(&objs[0].path, &bad).unwrap();
        let err = s
            .restore_object(&objs[0], &Decoder::plain(), &d.path().join("x"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("damaged"), "{err}");

        // Another segment's valid object under this name, and a foreign cluster's segment at
        // the right address: the page header catches both. Nothing is left behind.
        for (bytes, why) in [
            (fs::read(&objs[1].path).unwrap(), "WAL position"),
            (
                {
                    let mut o = Vec::new();
                    e.encode(&segment(43, 5, 5)[..], &mut o).unwrap();
                    o
                },
                "database system 43",
            ),
        ] {
            fs::write(&objs[0].path, bytes).unwrap();
            let err = s
                .restore_object(&objs[0], &Decoder::plain(), &d.path().join("x"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("is not that segment") && err.contains(why),
                "{err}"
            );
        }
        assert!(!d.path().join("x").exists());
        let left: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(TMP_PREFIX))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn missing_archive_dir_is_a_clear_error() {
        let (d, _, e) = setup();
        let s = Store::new(&d.path().join("not-mounted"));
        let src = d.path().join("seg");
        fs::write(&src, segment(42, 5, 7)).unwrap();
        let err = s
            .push(&src, &WalName::segment(1, 5, SEG), &e, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not exist") && err.contains("mounted"),
            "{err}"
        );
        assert!(!d.path().join("not-mounted").exists());
        let err = s
            .fetch(
                &WalName::segment(1, 5, SEG),
                &Decoder::plain(),
                &d.path().join("x"),
            )
            .unwrap_err();
        assert!(err.to_string().contains("mounted"), "{err}");
    }

    #[test]
    fn object_names() {
        let sha = "a".repeat(64);
        let (n, s, suf) =
            parse_object_name(&format!("000000010000000000000001-{sha}.zst.age")).unwrap();
        assert_eq!(n.to_string(), "000000010000000000000001");
        assert_eq!(s, sha);
        assert_eq!(suf, ".zst.age");
        assert!(parse_object_name(&format!("000000010000000000000001-{sha}.bogus")).is_none());
        assert!(parse_object_name(".tmp-000000010000000000000001-1-2").is_none());
    }
}
