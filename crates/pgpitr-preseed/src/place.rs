//! Staging a restore beside the data folder and moving it into place last, so a preseed
//! killed at any step leaves nothing PostgreSQL would start on as if it were complete.
//!
//! - A plain data folder: the restore goes to the sibling `.<name>.preseed-staging`, which is
//!   renamed over the (empty) data folder at the very end: one atomic rename.
//! - A data folder that is a mount point (a ZFS dataset) cannot be replaced by a rename: the
//!   restore goes to `<data>/.pgpitr-preseed-staging` and its entries are moved up one by
//!   one with `PG_VERSION` last; until that last rename PostgreSQL refuses the folder ("not a
//!   valid data directory") and preseed sees an interrupted run, which it clears and redoes.

use crate::state::INNER_STAGING;
use crate::{io_err, PreseedError, Result};
use pgpitr_pg::Account;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Whether `dir` is the root of a mounted file system (its device differs from its parent's).
pub fn is_mount_point(dir: &Path) -> bool {
    let (Ok(m), Some(parent)) = (fs::metadata(dir), dir.parent()) else {
        return false;
    };
    fs::metadata(parent)
        .map(|p| p.dev() != m.dev())
        .unwrap_or(false)
}

fn file_name(dir: &Path) -> Result<String> {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| PreseedError::Refused(format!("{} has no folder name", dir.display())))
}

/// Where a restore for `data_dir` is staged.
pub fn staging_dir(data_dir: &Path) -> Result<PathBuf> {
    if is_mount_point(data_dir) {
        Ok(data_dir.join(INNER_STAGING))
    } else {
        Ok(data_dir.with_file_name(format!(".{}.preseed-staging", file_name(data_dir)?)))
    }
}

/// Where offsite copies are fetched to before they join the local archive and backups.
pub fn fetch_dir(data_dir: &Path) -> Result<PathBuf> {
    Ok(data_dir.with_file_name(format!(".{}.preseed-offsite", file_name(data_dir)?)))
}

/// Removes a leftover of preseed's own (a staging or fetch folder of a killed run: never a
/// complete cluster, since only the final rename makes one).
pub fn remove_leftover(p: &Path, say: &mut dyn FnMut(&str)) -> Result<()> {
    if p.exists() {
        say(&format!(
            "removing {} (left by an interrupted preseed)",
            p.display()
        ));
        fs::remove_dir_all(p).map_err(io_err(format!("remove {}", p.display())))?;
    }
    Ok(())
}

/// Clears a mount-point data folder left half-moved by a killed preseed (no `PG_VERSION`,
/// preseed's staging folder inside): everything in it is preseed's own partial output.
pub fn clear_interrupted(data_dir: &Path, say: &mut dyn FnMut(&str)) -> Result<()> {
    say(&format!(
        "clearing {}: an interrupted preseed left it half moved (no PG_VERSION)",
        data_dir.display()
    ));
    for p in crate::state::entries(data_dir)?.unwrap_or_default() {
        let r = if p.is_dir() && !p.is_symlink() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        r.map_err(io_err(format!("remove {}", p.display())))?;
    }
    Ok(())
}

/// Moves a complete, stopped cluster from `stage` to `data_dir` (empty or missing).
pub fn put_in_place(stage: &Path, data_dir: &Path, account: Option<&Account>) -> Result<()> {
    if stage.parent() == Some(data_dir) {
        let mut list: Vec<PathBuf> = crate::state::entries(stage)?.unwrap_or_default();
        // PG_VERSION last: until it is there PostgreSQL will not start on the folder.
        list.sort_by_key(|p| p.file_name().map(|n| n == "PG_VERSION").unwrap_or(false));
        for p in list {
            let dest = data_dir.join(p.file_name().expect("entry has a name"));
            fs::rename(&p, &dest).map_err(io_err(format!(
                "move {} to {}",
                p.display(),
                dest.display()
            )))?;
            if dest.file_name().map(|n| n == "PG_VERSION").unwrap_or(false) {
                pgpitr_durable::sync_dir(data_dir)?;
            }
        }
        fs::remove_dir(stage).map_err(io_err(format!("remove {}", stage.display())))?;
        if let Some(a) = account {
            a.chown_tree(data_dir)?;
        }
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(data_dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("chmod {}", data_dir.display())))?;
        pgpitr_durable::sync_dir(data_dir)?;
        return Ok(());
    }
    if data_dir.exists() {
        // Verified empty by the caller; rmdir fails (and nothing is lost) if it is not.
        if let Some(p) = crate::state::entries(data_dir)?.unwrap_or_default().first() {
            return Err(PreseedError::Refused(format!(
                "{} is no longer empty ({} appeared): nothing was moved; the restored cluster is in {}",
                data_dir.display(),
                p.display(),
                stage.display()
            )));
        }
        let lf = data_dir.join("lost+found");
        if lf.is_dir() {
            fs::remove_dir(&lf).map_err(io_err(format!("remove {}", lf.display())))?;
        }
        fs::remove_dir(data_dir).map_err(io_err(format!("remove {}", data_dir.display())))?;
    }
    fs::rename(stage, data_dir).map_err(io_err(format!(
        "rename {} to {}",
        stage.display(),
        data_dir.display()
    )))?;
    pgpitr_durable::sync_parent(data_dir)?;
    Ok(())
}

/// `--quarantine`: renames a folder that is not ours to use aside (never deletes it).
pub fn quarantine(data_dir: &Path) -> Result<PathBuf> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let aside = data_dir.with_file_name(format!("{}.quarantine-{stamp}", file_name(data_dir)?));
    if is_mount_point(data_dir) {
        return Err(PreseedError::Refused(format!(
            "{} is a mount point and cannot be renamed aside: move its contents away by hand (or snapshot and empty the dataset), then rerun preseed",
            data_dir.display()
        )));
    }
    fs::rename(data_dir, &aside).map_err(io_err(format!(
        "rename {} to {}",
        data_dir.display(),
        aside.display()
    )))?;
    pgpitr_durable::sync_parent(&aside)?;
    Ok(aside)
}
