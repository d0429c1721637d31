//! Everything a restore can check before it touches anything, run by the plan and by
//! `--dry-run`: the port is free, the server's OS user can reach every file and folder
//! recovery needs (config, identity, archive, restore-wal, the target and socket folders),
//! and the target's file system has room for the backup.
//!
//! Access is judged from owner, group and mode bits for the server's account (the account
//! PostgreSQL runs as when pgpitr is root; the current user otherwise). POSIX ACLs are not
//! read: a folder an ACL opens may be reported as closed, never the other way round.

use pgpitr_config::Config;
use pgpitr_pg::Account;
use serde::Serialize;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What a restore is about to do, as far as the checks need it.
pub struct PreflightRequest<'a> {
    pub into: &'a Path,
    pub port: u16,
    /// The config file restore-wal reads.
    pub config_path: &'a Path,
    /// Folder holding restore-wal.
    pub tools_dir: &'a Path,
    /// Bytes the extracted backup needs.
    pub raw_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub ok: bool,
    pub detail: String,
    /// What to do (failing checks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn pass(check: &'static str, detail: String) -> Check {
        Check {
            check,
            ok: true,
            detail,
            fix: None,
        }
    }
    fn fail(check: &'static str, detail: String, fix: String) -> Check {
        Check {
            check,
            ok: false,
            detail,
            fix: Some(fix),
        }
    }
}

/// Who the restored server runs as.
#[derive(Debug, Clone)]
struct Who {
    name: String,
    uid: u32,
    groups: Vec<u32>,
}

impl Who {
    fn server(cfg: &Config) -> Who {
        match Account::for_server(&cfg.postgres.os_user) {
            Ok(Some(a)) => Who {
                groups: groups_of(&a.name, a.gid),
                name: a.name,
                uid: a.uid,
            },
            _ => {
                // SAFETY: geteuid/getegid have no preconditions.
                let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
                let name = pgpitr_pg::current_user_name();
                Who {
                    groups: groups_of(&name, gid),
                    name,
                    uid,
                }
            }
        }
    }

    /// Whether this user has `want` (bits of 0o4 read, 0o2 write, 0o1 execute/search) on `p`.
    fn may(&self, meta: &std::fs::Metadata, want: u32) -> bool {
        if self.uid == 0 {
            return want & 1 == 0 || meta.mode() & 0o111 != 0 || meta.is_dir();
        }
        let mode = meta.mode();
        let bits = if meta.uid() == self.uid {
            (mode >> 6) & 7
        } else if self.groups.contains(&meta.gid()) {
            (mode >> 3) & 7
        } else {
            mode & 7
        };
        bits & want == want
    }

    /// The first reason this user cannot reach `p` with `want` on it, if any.
    fn blocked(&self, p: &Path, want: u32) -> Option<String> {
        let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let ancestors: Vec<&Path> = abs.ancestors().collect();
        for dir in ancestors.iter().rev().copied() {
            if dir == abs {
                break;
            }
            match std::fs::metadata(dir) {
                Ok(m) if !self.may(&m, 1) => {
                    return Some(format!(
                        "user `{}` cannot enter {} ({}): needs search (x) on it",
                        self.name,
                        dir.display(),
                        owner_mode(&m)
                    ))
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        let m = std::fs::metadata(&abs).ok()?;
        if self.may(&m, want) {
            return None;
        }
        Some(format!(
            "user `{}` needs {} on {} ({})",
            self.name,
            rights(want),
            abs.display(),
            owner_mode(&m)
        ))
    }
}

fn rights(want: u32) -> String {
    let mut s = String::new();
    for (bit, name) in [(4, "read"), (2, "write"), (1, "execute/search")] {
        if want & bit != 0 {
            if !s.is_empty() {
                s.push('+');
            }
            s.push_str(name);
        }
    }
    s
}

fn owner_mode(m: &std::fs::Metadata) -> String {
    format!(
        "owner {} uid {}, gid {}, mode {:o}",
        pgpitr_durable::user_name(m.uid()),
        m.uid(),
        m.gid(),
        m.mode() & 0o7777
    )
}

fn groups_of(name: &str, gid: u32) -> Vec<u32> {
    let Ok(c) = std::ffi::CString::new(name) else {
        return vec![gid];
    };
    let mut n: libc::c_int = 64;
    let mut buf = vec![0 as libc::gid_t; n as usize];
    // SAFETY: buf holds n entries; getgrouplist writes at most n and updates n.
    let r = unsafe { libc::getgrouplist(c.as_ptr(), gid, buf.as_mut_ptr(), &mut n) };
    if r < 0 {
        buf = vec![0; n.max(0) as usize];
        // SAFETY: as above, with the size it asked for.
        unsafe { libc::getgrouplist(c.as_ptr(), gid, buf.as_mut_ptr(), &mut n) };
    }
    buf.truncate(n.max(0) as usize);
    buf
}

/// The nearest existing folder at or above `p`.
fn existing_ancestor(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    abs.ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path has a NUL byte"))?;
    // SAFETY: zeroed statvfs is a valid out-value.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string and s a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(s.f_bavail as u64 * s.f_frsize as u64)
}

/// Whether something listens on the port: the unix socket answers, or TCP port on the
/// loopback cannot be bound.
fn port_in_use(socket_dir: &Path, port: u16) -> Option<String> {
    let sock = socket_dir.join(format!(".s.PGSQL.{port}"));
    if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
        return Some(format!("a server answers on {}", sock.display()));
    }
    match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            Some(format!("TCP port {port} on 127.0.0.1 is in use"))
        }
        _ => None,
    }
}

/// Runs every check; nothing is changed.
pub fn check(cfg: &Config, req: &PreflightRequest<'_>) -> Vec<Check> {
    let who = Who::server(cfg);
    let mut out = Vec::new();
    out.push(match port_in_use(&cfg.postgres.socket_dir, req.port) {
        Some(what) => Check::fail(
            "port",
            format!("port {} is taken: {what}", req.port),
            "choose another --port".into(),
        ),
        None => Check::pass("port", format!("port {} is free", req.port)),
    });

    let mut access = |check: &'static str, what: &str, p: &Path, want: u32| {
        let c = if !p.exists() {
            Check::fail(
                check,
                format!("{what} {} does not exist", p.display()),
                "fix the path in the config".into(),
            )
        } else {
            match who.blocked(p, want) {
                Some(why) => Check::fail(
                    check,
                    format!("{what}: {why}"),
                    format!(
                        "the restored server runs as `{}` and needs this during recovery: chown/chmod the path (or set postgres.os_user)",
                        who.name
                    ),
                ),
                None => Check::pass(
                    check,
                    format!("`{}` can reach {what} {}", who.name, p.display()),
                ),
            }
        };
        out.push(c);
    };
    access("config_access", "config file", req.config_path, 4);
    if let Some(id) = cfg
        .encryption
        .as_ref()
        .and_then(|e| e.identity_file.as_ref())
    {
        access("identity_access", "age identity", id, 4);
    }
    access("archive_access", "archive folder", &cfg.archive.dir, 5);
    access(
        "restore_wal_access",
        "restore-wal",
        &req.tools_dir.join("restore-wal"),
        5,
    );
    access(
        "socket_dir_access",
        "socket folder",
        &cfg.postgres.socket_dir,
        3,
    );
    // The target folder is created by pgpitr and handed to the server; the server must be
    // able to reach it through its parents.
    let parent = existing_ancestor(req.into);
    match who.blocked(&parent, 1) {
        Some(why) => out.push(Check::fail(
            "target_access",
            format!("target {}: {why}", req.into.display()),
            format!(
                "restore somewhere `{}` can reach, or open the folder above it (chmod o+x)",
                who.name
            ),
        )),
        None => out.push(Check::pass(
            "target_access",
            format!("`{}` can reach {}", who.name, req.into.display()),
        )),
    }

    // Room for the extracted backup plus some WAL and the server's first checkpoints.
    let need = req.raw_bytes + req.raw_bytes / 10 + (64 << 20);
    out.push(match free_bytes(&parent) {
        Ok(free) if free < need => Check::fail(
            "free_space",
            format!(
                "{} has {} free; the restore needs about {} (backup {} plus WAL)",
                parent.display(),
                crate::inventory::human_bytes(free),
                crate::inventory::human_bytes(need),
                crate::inventory::human_bytes(req.raw_bytes)
            ),
            "free space there or restore into another file system".into(),
        ),
        Ok(free) => Check::pass(
            "free_space",
            format!(
                "{} free, about {} needed",
                crate::inventory::human_bytes(free),
                crate::inventory::human_bytes(need)
            ),
        ),
        Err(e) => Check::fail(
            "free_space",
            format!("cannot read free space of {}: {e}", parent.display()),
            "check the target path".into(),
        ),
    });
    out
}

/// One line per failing check, for the refusal message.
pub fn failures(checks: &[Check]) -> Option<String> {
    let bad: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{} ({})", c.detail, c.fix.as_deref().unwrap_or("")))
        .collect();
    (!bad.is_empty()).then(|| bad.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_bits_decide_for_another_user() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "x").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        let stranger = Who {
            name: "nobody-test".into(),
            uid: 4_000_000,
            groups: vec![4_000_000],
        };
        assert!(!stranger.may(&m, 4));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o604)).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert!(stranger.may(&m, 4));
        assert!(!stranger.may(&m, 2));
        let owner = Who {
            name: "owner".into(),
            uid: m.uid(),
            groups: vec![],
        };
        assert!(owner.uid == 0 || owner.may(&m, 6));
        assert_eq!(rights(5), "read+execute/search");
    }
}
