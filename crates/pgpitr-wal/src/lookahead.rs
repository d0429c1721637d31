//! Look-ahead archiving: when PostgreSQL calls `archive-wal` for segment N, the segments after
//! N that PostgreSQL has already marked ready are pushed too, one per worker, so that the later
//! calls for them return at once.
//!
//! Rules (issue 14):
//! - PostgreSQL's `archive_status/*.ready` and `*.done` files are only read, never touched:
//!   PostgreSQL still calls us for every segment and marks it done itself.
//! - N is acknowledged only when N's own object is durable (the same `Store::push` as a single
//!   call: temp file, fsync, no-overwrite link, folder fsync).
//! - After a look-ahead segment M is durable, a small record `pg_wal/.pgpitr-archived/M`
//!   names its sha256 and the identity of the source file (device, inode, size, mtime, ctime).
//!   The call for M returns 0 only when that record matches the file PostgreSQL hands over and
//!   the archive holds the object with that sha256; anything else (no record, a worker that
//!   failed or was killed, a recycled or rewritten file) makes the call push M itself.
//!   The record is written after the object is durable and is not fsynced: after a crash it
//!   can only be missing (the call redoes the work), never name an object that is not there.

use crate::codec::Encoder;
use crate::names::WalName;
use crate::store::{Pushed, Store};
use crate::{Result, WalError};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Folder inside pg_wal holding the records of segments pushed ahead of their call.
/// pg_basebackup does not copy pg_wal's subfolders other than archive_status, and PostgreSQL
/// ignores names in pg_wal that are not WAL file names.
pub const RECORD_DIR: &str = ".pgpitr-archived";

/// How a call was answered, for logs and the benchmark.
#[derive(Debug)]
pub struct Outcome {
    /// The result for the segment PostgreSQL asked for.
    pub pushed: Pushed,
    /// True when a record from an earlier look-ahead answered the call without pushing.
    pub from_record: bool,
    /// Segments pushed ahead by this call (durable, recorded).
    pub ahead: Vec<WalName>,
    /// Segments a worker failed on: their own call will push them (and fail if it must).
    pub failed: Vec<(WalName, String)>,
}

/// Archives `src` as `name` and, with `parallel > 1`, up to `parallel - 1` ready segments
/// after it. `encoder(zstd_workers)` builds the encoder each push uses.
pub fn archive(
    store: &Store,
    encoder: &dyn Fn(u32) -> Result<Encoder>,
    src: &Path,
    name: &WalName,
    parallel: usize,
    pg_version: Option<u32>,
) -> Result<Outcome> {
    let pg_wal = src
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    if !name.is_segment() {
        let pushed = store.push(src, name, &encoder(2)?, pg_version)?;
        return Ok(Outcome {
            pushed,
            from_record: false,
            ahead: Vec::new(),
            failed: Vec::new(),
        });
    }
    prune_stale_records(&pg_wal, name);
    if let Some(sha256) = recorded(store, &pg_wal, src, name) {
        let _ = fs::remove_file(record_path(&pg_wal, name));
        return Ok(Outcome {
            pushed: Pushed::AlreadyArchived { sha256 },
            from_record: true,
            ahead: Vec::new(),
            failed: Vec::new(),
        });
    }
    let ahead = if parallel > 1 {
        ready_after(store, &pg_wal, name, parallel - 1)
    } else {
        Vec::new()
    };
    if ahead.is_empty() {
        let pushed = store.push(src, name, &encoder(2)?, pg_version)?;
        return Ok(Outcome {
            pushed,
            from_record: false,
            ahead: Vec::new(),
            failed: Vec::new(),
        });
    }
    // One segment per worker, each compressed in its worker's thread.
    let enc = encoder(0)?;
    let mut jobs: Vec<(WalName, PathBuf)> = vec![(name.clone(), src.to_path_buf())];
    jobs.extend(ahead.into_iter().map(|n| {
        let p = pg_wal.join(n.to_string());
        (n, p)
    }));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<Pushed>>>> =
        Mutex::new((0..jobs.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..parallel.min(jobs.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some((n, p)) = jobs.get(i) else { break };
                let r = push_and_record(store, &enc, &pg_wal, p, n, i > 0, pg_version);
                results.lock().expect("no worker panics holding it")[i] = Some(r);
            });
        }
    });
    let mut results = results.into_inner().expect("workers joined");
    let own = results[0]
        .take()
        .unwrap_or_else(|| Err(WalError::Invalid(format!("no worker archived {name}"))))?;
    let mut out = Outcome {
        pushed: own,
        from_record: false,
        ahead: Vec::new(),
        failed: Vec::new(),
    };
    for ((n, _), r) in jobs.into_iter().zip(results).skip(1) {
        match r {
            Some(Ok(_)) => out.ahead.push(n),
            Some(Err(e)) => {
                tracing::warn!("look-ahead push of {n} failed ({e}); its own call will retry");
                out.failed.push((n, e.to_string()));
            }
            None => out.failed.push((n, "not attempted".into())),
        }
    }
    Ok(out)
}

fn push_and_record(
    store: &Store,
    enc: &Encoder,
    pg_wal: &Path,
    src: &Path,
    name: &WalName,
    record: bool,
    pg_version: Option<u32>,
) -> Result<Pushed> {
    let before = SourceId::of(src)?;
    let pushed = store.push(src, name, enc, pg_version)?;
    if record {
        let sha = match &pushed {
            Pushed::Stored(e) => &e.sha256,
            Pushed::AlreadyArchived { sha256 } => sha256,
        };
        // The file must be the one that was pushed: same identity before and after.
        if SourceId::of(src)? == before {
            write_record(pg_wal, name, sha, &before)?;
        }
    }
    Ok(pushed)
}

/// What identifies the source file PostgreSQL will hand over for a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SourceId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl SourceId {
    fn of(path: &Path) -> Result<SourceId> {
        let m =
            fs::metadata(path).map_err(|e| WalError::io(format!("stat {}", path.display()), e))?;
        Ok(SourceId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
        })
    }

    fn encode(&self, sha: &str) -> String {
        format!(
            "{sha} {} {} {} {} {}\n",
            self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns
        )
    }

    fn decode(text: &str) -> Option<(String, SourceId)> {
        let mut f = text.split_whitespace();
        let sha = f.next()?;
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let id = SourceId {
            dev: f.next()?.parse().ok()?,
            ino: f.next()?.parse().ok()?,
            size: f.next()?.parse().ok()?,
            mtime_ns: f.next()?.parse().ok()?,
            ctime_ns: f.next()?.parse().ok()?,
        };
        f.next().is_none().then(|| (sha.to_string(), id))
    }
}

fn record_path(pg_wal: &Path, name: &WalName) -> PathBuf {
    pg_wal.join(RECORD_DIR).join(name.to_string())
}

fn write_record(pg_wal: &Path, name: &WalName, sha: &str, id: &SourceId) -> Result<()> {
    let dir = pg_wal.join(RECORD_DIR);
    if let Err(e) = fs::create_dir(&dir) {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(WalError::io(format!("create {}", dir.display()), e));
        }
    }
    pgpitr_durable::write_replace_cache(
        &record_path(pg_wal, name),
        id.encode(sha).as_bytes(),
        0o600,
    )?;
    Ok(())
}

/// Removes the records of segments before `name` that PostgreSQL no longer has ready: the
/// archiver hands segments over oldest first, so their call will not come (the file was
/// archived another way, removed after a restore, or recycled). Without this, records of
/// segments whose call never came would pile up in pg_wal.
fn prune_stale_records(pg_wal: &Path, name: &WalName) {
    let Ok(rd) = fs::read_dir(pg_wal.join(RECORD_DIR)) else {
        return;
    };
    for e in rd.flatten() {
        let f = e.file_name();
        let Some(stem) = f.to_str() else { continue };
        let stale = match WalName::parse(stem) {
            Some(n) => {
                n.is_segment()
                    && n < *name
                    && !pg_wal
                        .join("archive_status")
                        .join(format!("{stem}.ready"))
                        .exists()
            }
            // Not a record name: a temp file of a killed writer.
            None => true,
        };
        if stale {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// The sha256 recorded for `name` when the record matches `src` and the archive holds that
/// object; `None` means "push it yourself".
fn recorded(store: &Store, pg_wal: &Path, src: &Path, name: &WalName) -> Option<String> {
    let text = fs::read_to_string(record_path(pg_wal, name)).ok()?;
    let (sha, id) = SourceId::decode(&text)?;
    if SourceId::of(src).ok()? != id {
        return None;
    }
    match store.find(name) {
        Ok(Some(obj)) if obj.sha256 == sha => Some(sha),
        _ => None,
    }
}

/// Up to `max` segments after `name` on its timeline that PostgreSQL has marked ready, oldest
/// first, without a valid record yet. Read-only: archive_status is PostgreSQL's.
fn ready_after(store: &Store, pg_wal: &Path, name: &WalName, max: usize) -> Vec<WalName> {
    let Ok(rd) = fs::read_dir(pg_wal.join("archive_status")) else {
        return Vec::new();
    };
    let mut ready: Vec<WalName> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let f = e.file_name();
            let stem = f.to_str()?.strip_suffix(".ready")?.to_string();
            let n = WalName::parse(&stem)?;
            (n.is_segment() && n.tli() == name.tli() && n > *name).then_some(n)
        })
        .collect();
    ready.sort();
    ready
        .into_iter()
        .filter(|n| {
            let p = pg_wal.join(n.to_string());
            recorded(store, pg_wal, &p, n).is_none()
        })
        .take(max)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_records_are_pruned_and_pending_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let pg_wal = dir.path();
        fs::create_dir_all(pg_wal.join(RECORD_DIR)).unwrap();
        fs::create_dir_all(pg_wal.join("archive_status")).unwrap();
        let n = |s: &str| WalName::parse(s).unwrap();
        for r in [
            "000000010000000000000003", // before the call, no .ready: stale
            "000000010000000000000004", // before the call, still ready: kept
            "000000010000000000000009", // after the call: kept
        ] {
            fs::write(pg_wal.join(RECORD_DIR).join(r), "x").unwrap();
        }
        fs::write(pg_wal.join(RECORD_DIR).join(".tmp-killed"), "x").unwrap();
        fs::write(
            pg_wal.join("archive_status/000000010000000000000004.ready"),
            "",
        )
        .unwrap();
        prune_stale_records(pg_wal, &n("000000010000000000000005"));
        let mut left: Vec<String> = fs::read_dir(pg_wal.join(RECORD_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["000000010000000000000004", "000000010000000000000009"]
        );
    }

    #[test]
    fn record_roundtrip_and_garbage() {
        let id = SourceId {
            dev: 1,
            ino: 2,
            size: 16 << 20,
            mtime_ns: 1_700_000_000_123_456_789,
            ctime_ns: 1_700_000_000_223_456_789,
        };
        let sha = "ab".repeat(32);
        let (s, back) = SourceId::decode(&id.encode(&sha)).unwrap();
        assert_eq!(s, sha);
        assert_eq!(back, id);
        assert!(SourceId::decode("").is_none());
        assert!(SourceId::decode(&format!("{sha} 1 2 3")).is_none());
        assert!(SourceId::decode(&format!("{} 1 2 3 4 5", "x".repeat(64))).is_none());
    }
}
