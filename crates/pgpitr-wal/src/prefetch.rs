//! Prefetching restore: while PostgreSQL replays segment N, a background `restore-wal`
//! process fetches the next `restore.prefetch` segments of the same timeline into a spool
//! inside pg_wal, so the calls for them are a rename.
//!
//! ```text
//! pg_wal/.pgpitr-prefetch/want                      last name PostgreSQL asked for
//! pg_wal/.pgpitr-prefetch/.lock                     held by the one running prefetcher
//! pg_wal/.pgpitr-prefetch/<name>-<sha256>           decoded, verified segment
//! pg_wal/.pgpitr-prefetch/.tmp-*                    being written
//! ```
//! Safety rules:
//! - An entry is keyed by the exact file name PostgreSQL asks for (timeline and segment) and
//!   the sha256 of the archive object it was decoded from, and is only published (renamed
//!   from its temp file) after `Store::decode_for_restore` checked it. The call for N takes
//!   `<N>-<sha of the archive's current object for N>` and nothing else, after checking its
//!   size and page header; a stale spool (another archive, an older recovery) therefore never
//!   matches and is removed.
//! - Only segments of the requested timeline are fetched, and none at or after the point
//!   where any later timeline in the archive's history branched off it: there PostgreSQL
//!   reads the newer timeline's copy.
//! - Disk is bounded: the prefetcher keeps at most `prefetch` entries and removes the rest.
//! - The spool is removed when recovery ends (neither recovery.signal nor standby.signal is
//!   left in the data folder: the prefetcher watches for it, and `archive-wal` removes a
//!   leftover spool on a primary).
//! - A prefetcher failure is never visible to PostgreSQL: the call for the segment simply
//!   fetches it itself, and fails if it must.

use crate::codec::Decoder;
use crate::header::{SegmentHeader, LONG_HEADER_LEN};
use crate::names::WalName;
use crate::store::{Object, Store};
use crate::timeline::parse_history;
use crate::{Result, WalError};
use pgpitr_durable::{FileLock, TempFile, TMP_PREFIX};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Spool folder name inside pg_wal.
pub const SPOOL_DIR: &str = ".pgpitr-prefetch";
const WANT: &str = "want";
const LOCK: &str = ".lock";
/// A prefetcher with nothing new asked for this long exits (a later call starts another).
const IDLE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(25);
/// How long a call waits for a segment the prefetcher is writing before fetching it itself.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(10);

/// Where a restored file came from.
#[derive(Debug, PartialEq, Eq)]
pub enum Restored {
    /// Not archived.
    Missing,
    /// Renamed from the prefetch spool.
    Spool,
    /// Fetched and decoded by this call.
    Fetched,
}

/// The spool folder of a pg_wal folder.
pub fn spool_dir(pg_wal: &Path) -> PathBuf {
    pg_wal.join(SPOOL_DIR)
}

/// Restores `name` into `dest` (PostgreSQL's %f and %p), from the spool when the prefetcher
/// has it, else from the archive. With `prefetch > 0` and a segment, it first records `name`
/// as wanted and calls `start_prefetcher` so the next segments are fetched meanwhile.
pub fn restore(
    store: &Store,
    decoder: &Decoder,
    name: &WalName,
    dest: &Path,
    prefetch: usize,
    start_prefetcher: impl FnOnce(),
) -> Result<Restored> {
    if !store.dir().is_dir() {
        return Err(WalError::Invalid(format!(
            "archive.dir {} does not exist (is its file system mounted?)",
            store.dir().display()
        )));
    }
    let pg_wal = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let spool = spool_dir(pg_wal);
    // restore_command runs in the data folder; %p is inside its pg_wal.
    let data_dir = pg_wal
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !in_recovery(data_dir) {
        // Not a recovery (a call by hand, or after promotion): no prefetching, no spool.
        cleanup_after_recovery(data_dir, pg_wal);
    } else if prefetch > 0 && name.is_segment() {
        if let Err(e) = announce(&spool, name) {
            tracing::warn!("prefetch off for this call: {e}");
        } else if !prefetcher_running(&spool) {
            start_prefetcher();
        }
    }
    let Some(obj) = store.find(name)? else {
        return Ok(Restored::Missing);
    };
    if name.is_segment() && take(&spool, &obj, dest) {
        return Ok(Restored::Spool);
    }
    store.restore_object(&obj, decoder, dest)?;
    Ok(Restored::Fetched)
}

/// True when a prefetcher holds the spool's lock (it will follow the new `want`), so no
/// process needs starting.
fn prefetcher_running(spool: &Path) -> bool {
    matches!(
        FileLock::try_exclusive(&spool.join(LOCK), "prefetch"),
        Err(pgpitr_durable::DurableError::Locked { .. })
    )
}

fn announce(spool: &Path, name: &WalName) -> Result<()> {
    if let Err(e) = fs::create_dir(spool) {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(WalError::io(format!("create {}", spool.display()), e));
        }
    }
    pgpitr_durable::write_replace_cache(&spool.join(WANT), name.to_string().as_bytes(), 0o600)?;
    Ok(())
}

/// Renames the spool entry for exactly `obj` (its name and sha256) to `dest` after checking
/// its size and page header. Anything else is left for the prefetcher to remove.
fn take(spool: &Path, obj: &Object, dest: &Path) -> bool {
    let entry = spool.join(entry_name(&obj.name, &obj.sha256));
    // The prefetcher may be writing this very segment: waiting for it is cheaper than
    // decoding it a second time on the same cores. A failed prefetch removes its temp file.
    let writing = format!("{TMP_PREFIX}{}-", obj.name);
    let t0 = Instant::now();
    while !entry.exists() && t0.elapsed() < IN_FLIGHT_WAIT {
        let in_flight = fs::read_dir(spool)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(&writing))
            })
            .unwrap_or(false);
        if !in_flight {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let Ok(mut f) = File::open(&entry) else {
        return false;
    };
    if !header_matches(&mut f, &obj.name) {
        tracing::warn!(
            "prefetched {} has a wrong header; fetching it again",
            obj.name
        );
        let _ = fs::remove_file(&entry);
        return false;
    }
    fs::rename(&entry, dest).is_ok()
}

fn entry_name(name: &WalName, sha: &str) -> String {
    format!("{name}-{sha}")
}

/// Size equals the page header's segment size and the first page is this segment's.
fn header_matches(f: &mut File, name: &WalName) -> bool {
    let Ok(size) = f.metadata().map(|m| m.len()) else {
        return false;
    };
    let mut head = [0u8; LONG_HEADER_LEN];
    if f.read_exact(&mut head).is_err() {
        return false;
    }
    SegmentHeader::parse(&head).is_ok_and(|h| h.mismatch(name, size).is_none())
}

/// Removes the spool and the look-ahead records' leftovers when the server is not in
/// recovery (no recovery.signal or standby.signal in `data_dir`). Cheap when there is none.
pub fn cleanup_after_recovery(data_dir: &Path, pg_wal: &Path) {
    let spool = spool_dir(pg_wal);
    if spool.is_dir() && !in_recovery(data_dir) {
        if let Err(e) = fs::remove_dir_all(&spool) {
            tracing::warn!("cannot remove the prefetch spool {}: {e}", spool.display());
        }
    }
}

fn in_recovery(data_dir: &Path) -> bool {
    data_dir.join("recovery.signal").exists() || data_dir.join("standby.signal").exists()
}

/// The background prefetcher: runs until recovery ends, nothing new is asked for `IDLE`, or
/// another prefetcher already holds the spool.
pub fn run_prefetcher(
    store: &Store,
    decoder: &Decoder,
    data_dir: &Path,
    pg_wal: &Path,
    prefetch: usize,
) -> Result<()> {
    let spool = spool_dir(pg_wal);
    let _lock = match FileLock::try_exclusive(&spool.join(LOCK), "prefetch") {
        Ok(l) => l,
        Err(pgpitr_durable::DurableError::Locked { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    // Only the lock holder writes into the spool: temp files left here were abandoned.
    for (file, path) in entries(&spool)? {
        if file.starts_with(TMP_PREFIX) {
            let _ = fs::remove_file(path);
        }
    }
    let seg_size = match store.meta()? {
        Some(m) => m.wal_segment_size,
        None => return Ok(()),
    };
    let mut last_want: Option<WalName> = None;
    let mut changed = Instant::now();
    let mut bound: Option<(u32, u64)> = None;
    let mut verified = std::collections::HashSet::new();
    loop {
        if !in_recovery(data_dir) {
            // A call may be writing `want` meanwhile: retry until the folder is gone.
            for _ in 0..50 {
                match fs::remove_dir_all(&spool) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => break,
                }
            }
            return Ok(());
        }
        let Some(want) = read_want(&spool) else {
            return Ok(());
        };
        if last_want.as_ref() != Some(&want) {
            changed = Instant::now();
            last_want = Some(want.clone());
        } else if changed.elapsed() > IDLE {
            return Ok(());
        }
        let tli = want.tli();
        let limit = match bound {
            Some((t, l)) if t == tli => l,
            _ => {
                let l = branch_point(store, decoder, tli, seg_size)?;
                bound = Some((tli, l));
                l
            }
        };
        let start = want.segno(seg_size).expect("want is a segment");
        let targets: Vec<WalName> = (start + 1..=start + prefetch as u64)
            .take_while(|s| *s < limit)
            .map(|s| WalName::segment(tli, s, seg_size))
            .collect();
        let mut keep = targets.clone();
        keep.push(want.clone());
        let present = prune(store, &spool, &keep, &mut verified)?;
        let missing: Vec<&WalName> = targets.iter().filter(|t| !present.contains(t)).collect();
        let ready_ahead = targets.len() - missing.len();
        let fetched = fetch_parallel(store, decoder, &spool, &missing, workers(ready_ahead))?;
        if !fetched {
            std::thread::sleep(POLL);
        }
    }
}

/// How many workers fetch, given how many segments after PostgreSQL's last request are
/// already in the spool. While at least two are ready, PostgreSQL's replay is the slower side
/// and keeps a core: one worker per core but one (a worker on every core took CPU from the
/// startup process: replay through the spool ran 1.19x local instead of 1.16x on two cores).
/// With fewer, PostgreSQL is waiting for us (its startup process sleeps in restore_command),
/// so every core fetches.
fn workers(ready_ahead: usize) -> usize {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    workers_for(cores, ready_ahead)
}

fn workers_for(cores: usize, ready_ahead: usize) -> usize {
    if ready_ahead >= 2 {
        cores.saturating_sub(1).max(1)
    } else {
        cores
    }
}

/// Fetches `names` in order into the spool with `workers` threads; stops at the first name
/// not archived yet. Returns whether anything was fetched; the first error ends the prefetcher.
fn fetch_parallel(
    store: &Store,
    decoder: &Decoder,
    spool: &Path,
    names: &[&WalName],
    workers: usize,
) -> Result<bool> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let workers = workers.min(names.len());
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let fetched = AtomicBool::new(false);
    let first_error = std::sync::Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(t) = names.get(i) else { break };
                    let r = (|| -> Result<bool> {
                        let Some(obj) = store.find(t)? else {
                            return Ok(false);
                        };
                        let mut tmp = TempFile::new_in(spool, &t.to_string(), 0o600)?;
                        store.decode_for_restore(&obj, decoder, tmp.file())?;
                        tmp.publish_replace_unsynced(&spool.join(entry_name(t, &obj.sha256)))?;
                        Ok(true)
                    })();
                    match r {
                        Ok(true) => fetched.store(true, Ordering::SeqCst),
                        Ok(false) => stop.store(true, Ordering::SeqCst),
                        Err(e) => {
                            stop.store(true, Ordering::SeqCst);
                            first_error.lock().expect("not poisoned").get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    match first_error.into_inner().expect("not poisoned") {
        Some(e) => Err(e),
        None => Ok(fetched.into_inner()),
    }
}

fn read_want(spool: &Path) -> Option<WalName> {
    let text = fs::read_to_string(spool.join(WANT)).ok()?;
    WalName::parse(text.trim()).filter(|n| n.is_segment())
}

fn entries(spool: &Path) -> Result<Vec<(String, PathBuf)>> {
    let rd =
        fs::read_dir(spool).map_err(|e| WalError::io(format!("list {}", spool.display()), e))?;
    Ok(rd
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.to_string(), e.path())))
        .collect())
}

/// Removes finished entries that are not wanted any more (consumed elsewhere, skipped,
/// another timeline) or whose sha256 is not the archive's object for that name (a stale
/// spool); returns the names still present. `verified` caches entries already compared.
fn prune(
    store: &Store,
    spool: &Path,
    keep: &[WalName],
    verified: &mut std::collections::HashSet<String>,
) -> Result<Vec<WalName>> {
    let mut present = Vec::new();
    for (file, path) in entries(spool)? {
        if file.starts_with('.') || file == WANT {
            continue;
        }
        let wanted = file
            .split_once('-')
            .and_then(|(n, sha)| Some((WalName::parse(n)?, sha.to_string())))
            .filter(|(n, _)| keep.contains(n));
        let good = match wanted {
            Some((n, sha)) => {
                if verified.contains(&file) || matches!(store.find(&n)?, Some(o) if o.sha256 == sha)
                {
                    verified.insert(file.clone());
                    Some(n)
                } else {
                    None
                }
            }
            None => None,
        };
        match good {
            Some(n) => present.push(n),
            None => {
                verified.remove(&file);
                let _ = fs::remove_file(path);
            }
        }
    }
    Ok(present)
}

/// First segment number of timeline `tli` that PostgreSQL will read from a later timeline:
/// the lowest switch point off `tli` in any later history file in the archive (u64::MAX when
/// none). A history that cannot be read stops prefetching on that timeline altogether.
fn branch_point(store: &Store, decoder: &Decoder, tli: u32, seg_size: u64) -> Result<u64> {
    let mut limit = u64::MAX;
    let mut t = tli + 1;
    while let Some(obj) = store.find(&WalName::History { tli: t })? {
        let mut text = Vec::new();
        let entries = store
            .decode_object(&obj, decoder, &mut text)
            .ok()
            .and_then(|_| parse_history(&String::from_utf8_lossy(&text)).ok());
        let Some(entries) = entries else {
            return Ok(0);
        };
        for e in entries.iter().filter(|e| e.parent == tli) {
            limit = limit.min(e.switch.0 / seg_size);
        }
        t += 1;
    }
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::workers_for;

    #[test]
    fn every_core_fetches_only_while_postgresql_waits() {
        // Two or more segments ready: replay is the slower side and keeps its core.
        assert_eq!(workers_for(2, 2), 1);
        assert_eq!(workers_for(4, 7), 3);
        // Fewer: PostgreSQL sleeps in restore_command, every core fetches.
        assert_eq!(workers_for(2, 0), 2);
        assert_eq!(workers_for(4, 1), 4);
        // One core: one worker either way.
        assert_eq!(workers_for(1, 0), 1);
        assert_eq!(workers_for(1, 5), 1);
    }
}
