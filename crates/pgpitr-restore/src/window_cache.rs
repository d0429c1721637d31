//! What each archived segment's last commit/abort is, cached so `status` and healthcheck
//! decode only the WAL that arrived since they last ran.
//!
//! Entries are keyed by the object's name and the checksum of its original bytes, so an
//! entry can never describe other contents: a replaced, pruned or re-archived object simply
//! misses. Entries for objects no longer in the archive are dropped on save. The file is
//! written with a temporary file and a rename (readers see the old or the new version,
//! never half of one); an unreadable or foreign-format file is ignored and rebuilt. Failing
//! to write it (a read-only backup folder for the user running `status`) only costs time.

use chrono::{DateTime, Utc};
use pgpitr_pg::XactEnd;
use pgpitr_wal::store::Object;
use pgpitr_wal::Lsn;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// In the backup folder (a dot file: never taken for a backup or a leftover).
pub const CACHE_FILE: &str = ".pgpitr-window-cache.json";
const FORMAT: u32 = 1;

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    format: u32,
    /// `<segment name>-<sha256>` -> last commit/abort in it (None: none).
    segments: BTreeMap<String, Option<(Lsn, DateTime<Utc>)>>,
}

pub struct Cache {
    path: Option<PathBuf>,
    file: File,
    dirty: bool,
}

fn key(o: &Object) -> String {
    format!("{}-{}", o.name, o.sha256)
}

impl Cache {
    pub fn load(path: Option<&Path>) -> Cache {
        let file = path
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<File>(&b).ok())
            .filter(|f| f.format == FORMAT)
            .unwrap_or(File {
                format: FORMAT,
                segments: BTreeMap::new(),
            });
        Cache {
            path: path.map(Path::to_path_buf),
            file,
            dirty: false,
        }
    }

    /// `Some(result)` when the segment was read before.
    pub fn get(&self, o: &Object) -> Option<Option<XactEnd>> {
        self.file
            .segments
            .get(&key(o))
            .map(|v| v.map(|(lsn, time)| XactEnd { lsn, time }))
    }

    pub fn put(&mut self, o: &Object, x: Option<XactEnd>) {
        self.file
            .segments
            .insert(key(o), x.map(|x| (x.lsn, x.time)));
        self.dirty = true;
    }

    /// Writes the cache back (only when something was added), keeping only entries for
    /// objects still in `objects`.
    pub fn save(mut self, objects: &[Object]) {
        let Some(path) = self.path.take() else { return };
        if !self.dirty {
            return;
        }
        let live: std::collections::HashSet<String> = objects.iter().map(key).collect();
        self.file.segments.retain(|k, _| live.contains(k));
        let body = serde_json::to_vec(&self.file).expect("cache serialises");
        if let Err(e) = pgpitr_durable::write_replace_cache(&path, &body, 0o640) {
            tracing::debug!("window cache not saved: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgpitr_wal::WalName;

    fn obj(seg: u64, sha: &str) -> Object {
        Object {
            name: WalName::segment(1, seg, 16 << 20),
            sha256: sha.into(),
            suffix: ".zst",
            path: PathBuf::new(),
            stored_bytes: 1,
            mtime: std::time::UNIX_EPOCH,
        }
    }

    #[test]
    fn keyed_by_contents_and_pruned_with_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(CACHE_FILE);
        let (a, b) = (obj(1, "aa"), obj(2, "bb"));
        let x = XactEnd {
            lsn: Lsn(0x100_0028),
            time: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        };
        let mut c = Cache::load(Some(&p));
        assert_eq!(c.get(&a), None);
        c.put(&a, Some(x));
        c.put(&b, None);
        c.save(&[a.clone(), b.clone()]);
        let c = Cache::load(Some(&p));
        assert_eq!(c.get(&a), Some(Some(x)));
        assert_eq!(c.get(&b), Some(None));
        // Same name, other contents: a miss.
        assert_eq!(c.get(&obj(1, "cc")), None);
        // Objects gone from the archive leave the cache on the next save.
        let mut c = Cache::load(Some(&p));
        c.put(&obj(3, "dd"), None);
        c.save(std::slice::from_ref(&b));
        let c = Cache::load(Some(&p));
        assert_eq!(c.get(&a), None);
        assert_eq!(c.get(&b), Some(None));
        // A damaged file is ignored, not an error.
        std::fs::write(&p, b"{not json").unwrap();
        assert_eq!(Cache::load(Some(&p)).get(&b), None);
    }
}
