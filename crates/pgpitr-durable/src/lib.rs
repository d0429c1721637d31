//! Durable file operations shared by every pgpitr tool.
//!
//! The pattern is always the same: write into a temporary file in the destination folder,
//! `fsync` it, publish it under its final name (never overwriting an existing file when the
//! caller asks for that), then `fsync` the folder so the new directory entry survives a crash.
//! Temporary files start with `.tmp-` so no reader ever mistakes one for a finished object.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Prefix of every temporary file pgpitr creates; listings ignore such names.
pub const TMP_PREFIX: &str = ".tmp-";

#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    #[error("{op} {path}: {}", explain_io(.source, .op, Some(.path)))]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} already exists")]
    Exists(PathBuf),
    #[error("{path} is locked by another process ({what})")]
    Locked { path: PathBuf, what: String },
}

impl DurableError {
    pub fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        DurableError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

type Result<T> = std::result::Result<T, DurableError>;

/// An I/O error with what was being done, shared by every library's error type
/// (`#[error(transparent)] Io(#[from] IoError)`).
#[derive(Debug, thiserror::Error)]
#[error("{what}: {}", explain_io(.source, .what, path_in(.what)))]
pub struct IoError {
    pub what: String,
    #[source]
    pub source: io::Error,
}

/// The OS's reason, and for a refused permission (EACCES, EPERM) who needs what on which
/// path: `Permission denied (os error 13): user `backup` needs search (x) access to /srv/pg
/// (owner postgres:postgres, mode 700)`. `op` says what was being done (read, create, ...).
pub fn explain_io(source: &io::Error, op: &str, path: Option<&Path>) -> String {
    let base = source.to_string();
    let code = source.raw_os_error();
    if code != Some(libc::EACCES) && code != Some(libc::EPERM) {
        return base;
    }
    let me = user_name(unsafe { libc::geteuid() });
    let Some(path) = path else {
        return format!("{base}: user `{me}` lacks the access this needs: run as a user that has it, or fix the owner or mode");
    };
    // From / down: the first folder this user cannot enter blocks everything below it.
    let ancestors: Vec<&Path> = path.ancestors().collect();
    for dir in ancestors.iter().rev().skip(1).copied() {
        if dir == path {
            break;
        }
        if fs::metadata(dir).is_ok() && !may_access(dir, libc::X_OK) {
            return format!(
                "{base}: user `{me}` needs search (x) access to {}{}: chmod/chown it or run as its owner",
                dir.display(),
                owner_mode(dir)
            );
        }
    }
    let op_lower = op.to_ascii_lowercase();
    let reading = ["read", "open", "list", "stat", "load"]
        .iter()
        .any(|w| op_lower.contains(w));
    let existing = ancestors
        .iter()
        .copied()
        .find(|p| fs::symlink_metadata(p).is_ok())
        .unwrap_or(path);
    if code == Some(libc::EPERM) {
        return format!(
            "{base}: user `{me}` may not change {}{}: run as root or as its owner",
            existing.display(),
            owner_mode(existing)
        );
    }
    let (what, on) = if existing == path {
        (if reading { "read" } else { "write" }, path)
    } else {
        ("write", existing)
    };
    format!(
        "{base}: user `{me}` needs {what} access to {}{}: chown/chmod it or run as a user that has it",
        on.display(),
        owner_mode(on)
    )
}

/// The first absolute path in a message such as `create /srv/x/y`.
fn path_in(what: &str) -> Option<&Path> {
    what.split_whitespace()
        .find(|w| w.starts_with('/'))
        .map(|w| Path::new(w.trim_end_matches([':', ',', ')'])))
}

fn may_access(p: &Path, mode: libc::c_int) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: c is a valid C string; faccessat only reads it.
    unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), mode, libc::AT_EACCESS) == 0 }
}

fn owner_mode(p: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match fs::symlink_metadata(p) {
        Ok(m) => format!(
            " (owner {}:{}, mode {:o})",
            user_name(m.uid()),
            group_name(m.gid()),
            m.mode() & 0o7777
        ),
        Err(_) => String::new(),
    }
}

/// Name of the user with this uid (the number when it has none).
pub fn user_name(uid: u32) -> String {
    // SAFETY: getpwuid returns static storage or null; we copy the name out at once.
    unsafe {
        let pw = libc::getpwuid(uid);
        if pw.is_null() || (*pw).pw_name.is_null() {
            return uid.to_string();
        }
        std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_string_lossy()
            .into_owned()
    }
}

fn group_name(gid: u32) -> String {
    // SAFETY: getgrgid returns static storage or null; we copy the name out at once.
    unsafe {
        let gr = libc::getgrgid(gid);
        if gr.is_null() || (*gr).gr_name.is_null() {
            return gid.to_string();
        }
        std::ffi::CStr::from_ptr((*gr).gr_name)
            .to_string_lossy()
            .into_owned()
    }
}

/// `.map_err(io_context("read backup.json"))?`: names what failed.
pub fn io_context(what: impl Into<String>) -> impl FnOnce(io::Error) -> IoError {
    let what = what.into();
    move |source| IoError { what, source }
}

/// A file being written in `dir` under a temporary name. Dropped without `publish`, it is removed.
pub struct TempFile {
    path: PathBuf,
    file: Option<File>,
}

impl TempFile {
    /// Creates `dir/.tmp-<hint>-<pid>-<n>` with the given mode.
    pub fn new_in(dir: &Path, hint: &str, mode: u32) -> Result<TempFile> {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = dir.join(format!(
            "{TMP_PREFIX}{hint}-{}-{n}-{nanos:x}",
            std::process::id()
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(|e| DurableError::io("create", &path, e))?;
        Ok(TempFile {
            path,
            file: Some(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("temp file already closed")
    }

    /// fsyncs the data and publishes it as `dest` (same folder), failing with `Exists` when
    /// `dest` is already there: the existing file is never replaced. Then fsyncs the folder.
    pub fn publish_new(mut self, dest: &Path) -> Result<()> {
        self.sync()?;
        match fs::hard_link(&self.path, dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(DurableError::Exists(dest.to_path_buf()))
            }
            Err(e) => return Err(DurableError::io("link", dest, e)),
        }
        let tmp = std::mem::take(&mut self.path);
        fs::remove_file(&tmp).map_err(|e| DurableError::io("remove", &tmp, e))?;
        sync_parent(dest)
    }

    /// fsyncs the data and renames it over `dest` (replacing it), then fsyncs the folder.
    /// For state files that are meant to be replaced, never for archive objects.
    pub fn publish_replace(mut self, dest: &Path) -> Result<()> {
        self.sync()?;
        let tmp = std::mem::take(&mut self.path);
        fs::rename(&tmp, dest).map_err(|e| DurableError::io("rename", dest, e))?;
        sync_parent(dest)
    }

    /// Renames it over `dest` with no fsync at all: readers see the whole file or nothing.
    /// Only for files whose loss in a crash costs nothing because they are fetched again
    /// (a WAL file restored for PostgreSQL, a prefetch spool entry).
    pub fn publish_replace_unsynced(mut self, dest: &Path) -> Result<()> {
        drop(self.file.take());
        let tmp = std::mem::take(&mut self.path);
        fs::rename(&tmp, dest).map_err(|e| DurableError::io("rename", dest, e))
    }

    fn sync(&mut self) -> Result<()> {
        let mut file = self.file.take().expect("temp file already closed");
        file.flush()
            .and_then(|_| file.sync_all())
            .map_err(|e| DurableError::io("fsync", &self.path, e))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// fsyncs the folder that holds `path`.
pub fn sync_parent(path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    sync_dir(dir)
}

/// fsyncs a folder so that entries created or renamed in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let f = File::open(dir).map_err(|e| DurableError::io("open", dir, e))?;
    f.sync_all().map_err(|e| DurableError::io("fsync", dir, e))
}

/// Writes `bytes` to `dest` atomically (temp file, fsync, rename) without fsyncing the
/// folder: for files a crash may roll back to their previous version but must never show
/// half-written (metrics, caches). One fsync instead of two on hot paths.
pub fn write_replace_atomic(dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = parent_dir(dest);
    let mut tmp = TempFile::new_in(dir, &file_hint(dest), mode)?;
    tmp.file()
        .write_all(bytes)
        .map_err(|e| DurableError::io("write", dest, e))?;
    tmp.sync()?;
    let path = std::mem::take(&mut tmp.path);
    fs::rename(&path, dest).map_err(|e| DurableError::io("rename", dest, e))
}

/// Writes `bytes` to `dest` atomically (temp file, rename) with no fsync at all: readers see
/// the old or the new content, never half; after a crash the file may be empty or old. Only
/// for caches that are rebuilt when unreadable.
pub fn write_replace_cache(dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = parent_dir(dest);
    let mut tmp = TempFile::new_in(dir, &file_hint(dest), mode)?;
    tmp.file()
        .write_all(bytes)
        .map_err(|e| DurableError::io("write", dest, e))?;
    let path = std::mem::take(&mut tmp.path);
    fs::rename(&path, dest).map_err(|e| DurableError::io("rename", dest, e))
}

/// Writes `bytes` to `dest` durably, replacing what was there.
pub fn write_replace(dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = parent_dir(dest);
    let mut tmp = TempFile::new_in(dir, &file_hint(dest), mode)?;
    tmp.file()
        .write_all(bytes)
        .map_err(|e| DurableError::io("write", dest, e))?;
    tmp.publish_replace(dest)
}

/// Writes `bytes` to `dest` durably; fails with `Exists` if `dest` exists.
pub fn write_new(dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = parent_dir(dest);
    let mut tmp = TempFile::new_in(dir, &file_hint(dest), mode)?;
    tmp.file()
        .write_all(bytes)
        .map_err(|e| DurableError::io("write", dest, e))?;
    tmp.publish_new(dest)
}

/// Creates a folder (and its parents) and fsyncs the parent so the entry is durable.
pub fn create_dir_all_durable(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| DurableError::io("create folder", dir, e))?;
    sync_parent(dir)
}

fn parent_dir(p: &Path) -> &Path {
    p.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn file_hint(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into())
}

/// An advisory `flock` held until dropped.
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Takes an exclusive lock on `path` (created if missing), waiting for it.
    pub fn exclusive(path: &Path) -> Result<FileLock> {
        Self::take(path, libc::LOCK_EX)
    }

    /// Takes a shared lock on `path`, waiting for it.
    pub fn shared(path: &Path) -> Result<FileLock> {
        Self::take(path, libc::LOCK_SH)
    }

    /// Takes an exclusive lock without waiting; `Locked` when another process holds it.
    pub fn try_exclusive(path: &Path, what: &str) -> Result<FileLock> {
        match Self::take(path, libc::LOCK_EX | libc::LOCK_NB) {
            Err(DurableError::Io { source, .. })
                if source.raw_os_error() == Some(libc::EWOULDBLOCK) =>
            {
                Err(DurableError::Locked {
                    path: path.to_path_buf(),
                    what: what.to_string(),
                })
            }
            other => other,
        }
    }

    fn take(path: &Path, op: libc::c_int) -> Result<FileLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(|e| DurableError::io("open lock", path, e))?;
        loop {
            // SAFETY: flock on a valid descriptor we own.
            let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
            if rc == 0 {
                return Ok(FileLock { _file: file });
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(DurableError::io("lock", path, err));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_new_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("obj");
        write_new(&dest, b"first", 0o640).unwrap();
        let err = write_new(&dest, b"second", 0o640).unwrap_err();
        assert!(matches!(err, DurableError::Exists(_)));
        assert_eq!(fs::read(&dest).unwrap(), b"first");
        // no temp file left behind
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn replace_replaces_and_dropped_temp_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("state");
        write_replace(&dest, b"a", 0o600).unwrap();
        write_replace(&dest, b"b", 0o600).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"b");
        let t = TempFile::new_in(dir.path(), "x", 0o600).unwrap();
        let p = t.path().to_path_buf();
        assert!(p.exists());
        drop(t);
        assert!(!p.exists());
    }

    #[test]
    fn try_lock_reports_holder() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let _held = FileLock::exclusive(&p).unwrap();
        // flock locks are per open file description, so a second open conflicts.
        let err = FileLock::try_exclusive(&p, "a test").err().unwrap();
        assert!(err.to_string().contains("locked"), "{err}");
    }
}

#[cfg(test)]
mod explain_tests {
    use super::*;

    #[test]
    fn permission_errors_name_user_access_and_path() {
        let e = io::Error::from_raw_os_error(libc::EACCES);
        let s = explain_io(&e, "create", Some(Path::new("/nonexistent-pgpitr/x")));
        assert!(
            s.starts_with("Permission denied (os error 13): user `"),
            "{s}"
        );
        assert!(s.contains("needs write access to / (owner "), "{s}");
        let e = IoError {
            what: "read /nonexistent-pgpitr/backup.json".into(),
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        let s = e.to_string();
        assert!(s.contains("may not change / (owner"), "{s}");
        let plain = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(explain_io(&plain, "read", None), plain.to_string());
    }
}
