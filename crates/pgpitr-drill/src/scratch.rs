//! The scratch folder: refusing one that overlaps the instance, cleaning up after a drill
//! that was killed, checking free space, removing the copy.

use crate::{DrillError, Result, Scratch};
use pgpitr_config::Config;
use pgpitr_pg::{Account, Bins, PgCtl};
use std::path::{Path, PathBuf};

fn resolved(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    // Resolve symlinks of the longest existing prefix.
    let mut existing = abs.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent.to_path_buf();
            }
            _ => return abs,
        }
    }
    let mut out = existing.canonicalize().unwrap_or(existing);
    for r in rest.into_iter().rev() {
        out.push(r);
    }
    out
}

/// Whether `a` and `b` are the same folder or one lies inside the other.
pub fn overlaps(a: &Path, b: &Path) -> bool {
    let (a, b) = (resolved(a), resolved(b));
    a.starts_with(&b) || b.starts_with(&a)
}

/// Stops a scratch server left running and removes what an earlier drill left; returns a
/// warning to record when there was something.
pub fn clean(
    cfg: &Config,
    bins: &Bins,
    account: Option<&Account>,
    sc: &Scratch,
) -> Result<Option<String>> {
    let data = sc.data();
    let staging = sc.staging();
    let mut found = Vec::new();
    if data.exists() {
        let ctl = PgCtl {
            bins,
            account,
            data_dir: &data,
        };
        if ctl.is_running() {
            // Never stop the instance itself: its port is refused in `scratch`, and a
            // postmaster.pid naming the instance's port means this is not a scratch copy.
            let pid = std::fs::read_to_string(data.join("postmaster.pid")).unwrap_or_default();
            if pid.lines().nth(3).map(str::trim) == Some(&cfg.postgres.port.to_string()) {
                return Err(DrillError::Refused(format!(
                    "{} runs a server on the instance's port {}: refusing to touch it",
                    data.display(),
                    cfg.postgres.port
                )));
            }
            found.push("stopped its scratch server");
        }
        pgpitr_restore::access::release(&ctl)?;
        remove_dir(&data)?;
        found.push("removed its restored copy");
    }
    if staging.exists() {
        remove_dir(&staging)?;
        found.push("removed its offsite downloads");
    }
    if stale_socket(cfg, sc.port)? {
        found.push("removed its stale socket");
    }
    Ok((!found.is_empty()).then(|| {
        format!(
            "cleaned up after an earlier drill that did not finish in {}: {}",
            sc.dir.display(),
            found.join(", ")
        )
    }))
}

/// Removes the socket (and its lock file) of a scratch server that was killed.
fn stale_socket(cfg: &Config, port: u16) -> Result<bool> {
    let sock = cfg.postgres.socket_dir.join(format!(".s.PGSQL.{port}"));
    let lock = cfg
        .postgres
        .socket_dir
        .join(format!(".s.PGSQL.{port}.lock"));
    let Ok(text) = std::fs::read_to_string(&lock) else {
        return Ok(false);
    };
    let pid: i32 = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let alive = pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM));
    if pid > 0 && !alive {
        let _ = std::fs::remove_file(&sock);
        let _ = std::fs::remove_file(&lock);
        return Ok(true);
    }
    Ok(false)
}

fn remove_dir(p: &Path) -> Result<()> {
    std::fs::remove_dir_all(p).map_err(pgpitr_durable::io_context(format!(
        "remove {}",
        p.display()
    )))?;
    Ok(())
}

/// Stops the scratch server and removes the scratch copy and downloads.
pub fn remove(bins: &Bins, account: Option<&Account>, sc: &Scratch) -> Result<()> {
    let data = sc.data();
    if data.exists() {
        let ctl = PgCtl {
            bins,
            account,
            data_dir: &data,
        };
        pgpitr_restore::access::release(&ctl)?;
        remove_dir(&data)?;
    }
    // The restore's log beside the copy (the drill's record keeps what each step found).
    let log = pgpitr_restore::execute::log_path(&data);
    if log.parent() == Some(sc.dir.as_path()) && log.exists() {
        std::fs::remove_file(&log).map_err(pgpitr_durable::io_context(format!(
            "remove {}",
            log.display()
        )))?;
    }
    if sc.staging().exists() {
        remove_dir(&sc.staging())?;
    }
    Ok(())
}

/// Bytes available to unprivileged users on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path has a NUL byte"))?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string and s a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(s.f_bavail as u64 * s.f_frsize as u64)
}

/// Space a restore of `backup_raw` bytes replaying `segments` segments needs: the data, the
/// WAL PostgreSQL keeps until its next restartpoint (at most 64 segments counted), 10% margin.
pub fn needed_bytes(backup_raw: u64, segments: usize, seg_size: u64) -> u64 {
    let wal = (segments.min(64) as u64 + 2) * seg_size;
    (backup_raw + wal) / 10 * 11
}

pub fn check_space(sc: &Scratch, p: &pgpitr_restore::Plan, seg_size: u64) -> Result<()> {
    let need = needed_bytes(p.backup.raw_bytes(), p.segments, seg_size);
    let free = free_bytes(&sc.dir).map_err(pgpitr_durable::io_context(format!(
        "statvfs {}",
        sc.dir.display()
    )))?;
    if free < need {
        return Err(DrillError::Refused(format!(
            "{} has {} MiB free but restoring backup {} needs about {} MiB: free space or point drill.scratch_dir elsewhere (nothing was restored)",
            sc.dir.display(),
            free >> 20,
            p.backup.id,
            need >> 20
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_is_containment_either_way() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        std::fs::create_dir(&data).unwrap();
        assert!(overlaps(&data, &data));
        assert!(overlaps(&data.join("drill"), &data));
        assert!(overlaps(d.path(), &data));
        assert!(!overlaps(&d.path().join("drill"), &data));
        assert!(!overlaps(&d.path().join("data2"), &data));
        std::os::unix::fs::symlink(&data, d.path().join("link")).unwrap();
        assert!(overlaps(&d.path().join("link"), &data));
    }

    #[test]
    fn space_needs_backup_wal_and_margin() {
        let seg = 16 << 20;
        assert_eq!(needed_bytes(0, 0, seg), 2 * seg / 10 * 11);
        // WAL to replay is counted up to 64 segments.
        assert_eq!(
            needed_bytes(1 << 30, 1000, seg),
            needed_bytes(1 << 30, 64, seg)
        );
        assert_eq!(
            needed_bytes(1 << 30, 64, seg),
            ((1 << 30) + 66 * seg) / 10 * 11
        );
    }
}
