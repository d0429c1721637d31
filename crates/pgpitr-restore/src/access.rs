//! How pgpitr reaches a server it runs itself during a restore when it runs as root.
//!
//! PostgreSQL refuses root, so pgpitr starts the replay server as the instance's OS user; its
//! own connections still come from root, and the restored folder's `pg_hba.conf` (usually
//! `peer`, as initdb writes it) refuses them: pgpitr could neither follow replay, nor reset the
//! recovery settings it wrote, nor finish an in-place restore. Under the NixOS module the
//! server's real access rules live outside the data folder anyway (`hba_file` in the unit's
//! `config_file`), so the folder's own file is not what the instance uses either.
//!
//! For the servers pgpitr starts itself as root it writes its own access files beside the data
//! folder (`<data>.pgpitr-hba.conf`, `<data>.pgpitr-ident.conf`, owned by the server's user,
//! mode 0600): local peer connections only, each OS user as itself and root as the configured
//! database user. They are passed with `-c hba_file=... -c ident_file=...` and nothing in the
//! data folder changes. When pgpitr hands the server over (promoted, or the in-place restore
//! starts the instance's service) it stops that server and starts it with its own
//! configuration, and removes the files.

use crate::{io_err, RestoreError, Result};
use pgpitr_pg::{Account, PgCtl};
use std::fs;
use std::path::{Path, PathBuf};

fn beside(data_dir: &Path, what: &str) -> PathBuf {
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    data_dir.with_file_name(format!("{name}.pgpitr-{what}.conf"))
}

/// Paths of pgpitr's own `pg_hba.conf` and `pg_ident.conf` for a server on `data_dir`.
pub fn files(data_dir: &Path) -> [PathBuf; 2] {
    [beside(data_dir, "hba"), beside(data_dir, "ident")]
}

/// Whether the server on `data_dir` was started with pgpitr's own access files.
pub fn in_use(data_dir: &Path) -> bool {
    files(data_dir).iter().any(|p| p.exists())
}

/// A value for a `postgres -c name=value` option inside pg_ctl's `-o` (pg_ctl runs the server
/// through `/bin/sh -c`): single-quoted for the shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `postgres` options for a server pgpitr starts on `data_dir`: empty when pgpitr does not
/// run as root (it connects as the server's own user then); as root, writes the access files
/// and returns the options that point the server at them.
pub fn start_options(account: Option<&Account>, data_dir: &Path, db_user: &str) -> Result<String> {
    let Some(account) = account else {
        return Ok(String::new());
    };
    if db_user.contains(['"', '\n']) || account.name.contains(['"', '\n']) {
        return Err(RestoreError::Refused(format!(
            "cannot write an ident map for database user {db_user:?}: it contains a double quote or a line break"
        )));
    }
    let [hba, ident] = files(data_dir);
    let hba_text =
        "# Written by pgpitr for the server it runs during a restore (removed when it hands\n\
                    # the server over): local peer connections, through the map below.\n\
                    local all all peer map=pgpitr\n\
                    local replication all peer map=pgpitr\n";
    // Only root (pgpitr, an operator looking at a paused restore) and the server's own OS
    // user get in; other local users wait for the instance's own pg_hba.conf.
    let os = &account.name;
    let ident_text = format!(
        "# Written by pgpitr for the server it runs during a restore.\n\
         pgpitr root \"{db_user}\"\n\
         pgpitr \"{os}\" \"{db_user}\"\n\
         pgpitr \"{os}\" \"{os}\"\n"
    );
    for (path, text) in [(&hba, hba_text.to_string()), (&ident, ident_text)] {
        pgpitr_durable::write_replace_atomic(path, text.as_bytes(), 0o600)?;
        account.chown_tree(path)?;
    }
    Ok(format!(
        "-c hba_file={} -c ident_file={}",
        shell_quote(&hba.to_string_lossy()),
        shell_quote(&ident.to_string_lossy())
    ))
}

/// Removes pgpitr's access files for `data_dir` (a server started with them keeps them in
/// memory until it stops; call this once it runs with its own).
pub fn remove(data_dir: &Path) -> Result<()> {
    for p in files(data_dir) {
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("remove {}", p.display()))(e).into()),
        }
    }
    Ok(())
}

/// Stops the server on `ctl`'s folder if one runs, then removes pgpitr's access files: what
/// every caller that takes a replay server over without a hand-over (`hand_over: false`)
/// does once it is done with it.
pub fn release(ctl: &PgCtl<'_>) -> Result<()> {
    if ctl.is_running() {
        ctl.stop()?;
    }
    remove(ctl.data_dir)
}

/// Hands a server pgpitr started with its own access files over to its own configuration:
/// stops it, starts it again (waiting until it accepts connections) and removes the files.
/// `None` when the files are not in use; `Some(Ok(note))` when it was handed over. The server
/// has recovered by then, so a failure here is not a failed restore: `Some(Err(warning))`
/// says how to start the server, for the report's warnings.
pub fn hand_over(ctl: &PgCtl<'_>, log_file: &Path) -> Option<std::result::Result<String, String>> {
    if !in_use(ctl.data_dir) {
        return None;
    }
    let running = ctl.is_running();
    let r = (|| -> Result<()> {
        if running {
            ctl.stop_gently(std::time::Duration::from_secs(5))?;
            ctl.start(log_file, "", true)?;
        }
        remove(ctl.data_dir)
    })();
    Some(match r {
        Ok(()) if running => {
            Ok("restarted the promoted server with its own configuration (pg_hba.conf)".into())
        }
        Ok(()) => Ok("removed pgpitr's access files (the server was not running)".into()),
        Err(e) => {
            let [hba, ident] = files(ctl.data_dir);
            Err(format!(
                "the server recovered, but restarting it with its own configuration failed ({e}); start it with `{}` (see {}), then remove {} and {}",
                ctl.start_hint(log_file),
                log_file.display(),
                hba.display(),
                ident.display()
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_the_shell() {
        assert_eq!(shell_quote("/var/lib/pg data"), "'/var/lib/pg data'");
        assert_eq!(shell_quote("/a'b"), r"'/a'\''b'");
    }

    #[test]
    fn files_live_beside_the_data_folder() {
        let [h, i] = files(Path::new("/var/lib/postgresql/main"));
        assert_eq!(h, Path::new("/var/lib/postgresql/main.pgpitr-hba.conf"));
        assert_eq!(i, Path::new("/var/lib/postgresql/main.pgpitr-ident.conf"));
    }

    #[test]
    fn not_root_means_no_options_and_no_files() {
        let dir = std::env::temp_dir().join(format!("pgpitr-access-{}", std::process::id()));
        assert_eq!(start_options(None, &dir, "postgres").unwrap(), "");
        assert!(!in_use(&dir));
    }
}
