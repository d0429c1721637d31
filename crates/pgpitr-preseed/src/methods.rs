//! The methods preseed tries, each with a freshness probe (what it would give, how new) and
//! a run that leaves a stopped, complete cluster in the data folder or nothing at all.
//!
//! - restores from backups (`local` without a dataset, `archive`, `restic`) go through the
//!   restore library's public plan/execute into a staging folder with archiving on, so the
//!   new timeline archives into the instance's own archive; the cluster is moved into place
//!   only once it has promoted and stopped ([`crate::place`]);
//! - snapshots (`local` on a dataset, `syncoid`) are crash-consistent copies: preseed then
//!   replays the archive from them (`recovery.signal`, `restore_command`, timeline `latest`)
//!   and lets the server promote, so it also ends on a new timeline with the newest data and
//!   never writes segments whose names the archive already holds.

use crate::place;
use crate::state::entries;
use crate::{io_err, Context, PreseedError, Result};
use pgpitr_config::PreseedMethod;
use pgpitr_pg::{command_as, Endpoint, PgCtl};
use pgpitr_restore::{execute, plan, ExecuteOptions, Inventory, PlanRequest, Target};
use pgpitr_zfs::Zfs;
use serde::Serialize;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How fresh the data a method would give is.
#[derive(Debug, Clone, Serialize)]
pub struct Freshness {
    pub method: String,
    /// Whether the method looks usable right now.
    pub usable: bool,
    /// Newest point in time it reaches, where it can tell.
    pub end_time: Option<String>,
    /// Newest WAL position it reaches, where it can tell.
    pub end_lsn: Option<String>,
    pub detail: String,
}

impl std::fmt::Display for Freshness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<8} {:<10} up to {}{}: {}",
            self.method,
            if self.usable { "usable" } else { "unusable" },
            self.end_time.as_deref().unwrap_or("?"),
            self.end_lsn
                .as_deref()
                .map(|l| format!(" (lsn {l})"))
                .unwrap_or_default(),
            self.detail
        )
    }
}

fn fresh(m: PreseedMethod, usable: bool, detail: String) -> Freshness {
    Freshness {
        method: m.name().into(),
        usable,
        end_time: None,
        end_lsn: None,
        detail,
    }
}

/// Probes one method without changing anything.
pub fn probe(ctx: &Context<'_>, m: PreseedMethod) -> Freshness {
    let r = match m {
        PreseedMethod::Syncoid => probe_syncoid(ctx),
        PreseedMethod::Local => probe_local(ctx),
        PreseedMethod::Archive => probe_archive(ctx),
        PreseedMethod::Restic => probe_restic(ctx),
        PreseedMethod::Empty => {
            let ev = evidence(ctx);
            Ok(fresh(
                m,
                ev.allows_empty(),
                if ev.allows_empty() {
                    "no source shows this instance ever had data: an empty cluster (initdb)".into()
                } else {
                    format!("refused: {}", ev.describe())
                },
            ))
        }
    };
    r.unwrap_or_else(|e| fresh(m, false, e.to_string()))
}

/// Runs one method; on success the data folder holds a stopped cluster.
pub fn run(ctx: &Context<'_>, m: PreseedMethod, say: &mut dyn FnMut(&str)) -> Result<String> {
    match m {
        PreseedMethod::Syncoid => run_syncoid(ctx, say),
        PreseedMethod::Local => run_local(ctx, say),
        PreseedMethod::Archive => {
            let (cfg, path) = (ctx.cfg.clone(), ctx.config_path.clone());
            restore_from(ctx, &cfg, &path, Target::Latest, say)
        }
        PreseedMethod::Restic => run_restic(ctx, say),
        PreseedMethod::Empty => run_empty(ctx, say),
    }
}

// ---- restores from base backups -------------------------------------------------------

/// Plans a restore to `target` from `cfg`'s archive and backups, executes it into the
/// staging folder with archiving on, stops the promoted server and moves it into place.
fn restore_from(
    ctx: &Context<'_>,
    cfg: &pgpitr_config::Config,
    config_path: &Path,
    target: Target,
    say: &mut dyn FnMut(&str),
) -> Result<String> {
    let inv = Inventory::load(cfg, &ctx.decoder)?;
    let p = plan(
        &inv,
        &ctx.bins,
        &ctx.decoder,
        &PlanRequest {
            target,
            backup: None,
            timeline: None,
            exclusive: false,
        },
    )?;
    let data_dir = ctx.data_dir();
    let stage = place::staging_dir(data_dir)?;
    if stage.parent() == Some(data_dir) {
        // Inside a mount point: the server account must reach the staging folder.
        if let Some(a) = &ctx.account {
            std::os::unix::fs::chown(data_dir, Some(a.uid), Some(a.gid))
                .map_err(io_err(format!("chown {}", data_dir.display())))?;
        }
    }
    say(&format!(
        "restoring backup {} to {} into {}",
        p.backup.id,
        p.target,
        stage.display()
    ));
    let opts = ExecuteOptions {
        into: stage.clone(),
        port: cfg.postgres.port,
        config_path: config_path.to_path_buf(),
        tools_dir: ctx.tools_dir.clone(),
        archive: true,
        progress: false,
        pause: false,
        hand_over: false,
    };
    let ctl = PgCtl {
        bins: &ctx.bins,
        account: ctx.account.as_ref(),
        data_dir: &stage,
    };
    let report = execute(cfg, &ctx.bins, &ctx.decoder, &p, &opts, say);
    // Stopped in every case: preseed leaves no server running (its unit starts it).
    pgpitr_restore::access::release(&ctl)?;
    let report = report?;
    say("restored server promoted and stopped; moving it into place");
    place::put_in_place(&stage, data_dir, ctx.account.as_ref())?;
    Ok(format!(
        "backup {} replayed to {} (lsn {}{}), new timeline {}",
        report.backup_id,
        report.target,
        report
            .stopped_at_lsn
            .map(|l| l.to_string())
            .unwrap_or("?".into()),
        report
            .stopped_at_time
            .map(|t| format!(", last transaction {}", t.to_rfc3339()))
            .unwrap_or_default(),
        report.timeline
    ))
}

fn probe_archive(ctx: &Context<'_>) -> Result<Freshness> {
    let inv = Inventory::load(ctx.cfg, &ctx.decoder)?;
    let p = plan(
        &inv,
        &ctx.bins,
        &ctx.decoder,
        &PlanRequest {
            target: Target::Latest,
            backup: None,
            timeline: None,
            exclusive: false,
        },
    )?;
    Ok(Freshness {
        method: "archive".into(),
        usable: true,
        end_time: Some(p.window_end.to_rfc3339()),
        end_lsn: p.window_end_lsn.map(|l| l.to_string()),
        detail: format!(
            "backup {} and {} archived segments on timeline {}",
            p.backup.id, p.segments, p.timeline
        ),
    })
}

// ---- restic (offsite) -----------------------------------------------------------------

fn probe_restic(ctx: &Context<'_>) -> Result<Freshness> {
    let st = pgpitr_offsite::status(ctx.cfg)?;
    let wal = st.wal_snapshots.last();
    Ok(Freshness {
        method: "restic".into(),
        usable: wal.is_some() && !st.base_backups.is_empty(),
        end_time: wal.map(|s| s.time.clone()),
        end_lsn: None,
        detail: format!(
            "{} base backups and {} WAL snapshots in {}{}",
            st.base_backups.len(),
            st.wal_snapshots.len(),
            st.repository,
            wal.map(|s| format!(
                "; newest WAL copy {} (the window ends at its last commit, known once fetched)",
                s.id
            ))
            .unwrap_or_default()
        ),
    })
}

/// Fetches the newest base backup and the WAL after it from the restic repository, adds
/// them to the local archive and backup folder (never replacing an object), then restores
/// to `latest` from there: the new timeline archives into the instance's own archive.
fn run_restic(ctx: &Context<'_>, say: &mut dyn FnMut(&str)) -> Result<String> {
    let cfg = ctx.cfg;
    let fetch = place::fetch_dir(ctx.data_dir())?;
    let (staged, _) = pgpitr_offsite::fetch_for_restore(cfg, &Target::Latest, None, &fetch, say)?;
    say(&format!(
        "adding the fetched WAL and backup to {} and {}",
        cfg.archive.dir.display(),
        cfg.backup.dir.display()
    ));
    let added = merge_tree(
        &staged.archive.dir,
        &cfg.archive.dir,
        ctx.account.as_ref(),
        &[pgpitr_wal::store::META_FILE],
    )?;
    let mut backups = 0;
    for b in pgpitr_backup::catalog(&staged.backup.dir)? {
        let dest = cfg.backup.dir.join(&b.id);
        if dest.join("backup.json").is_file() {
            continue;
        }
        merge_tree(
            &staged.backup.dir.join(&b.id),
            &dest,
            ctx.account.as_ref(),
            &["backup.json"],
        )?;
        backups += 1;
    }
    say(&format!(
        "{added} archive objects and {backups} backups added locally"
    ));
    let _ = fs::remove_dir_all(&fetch);
    let detail = restore_from(ctx, cfg, &ctx.config_path, Target::Latest, say)?;
    Ok(format!("from the offsite repository: {detail}"))
}

/// Copies every file under `src` missing from `dest` (same relative path), durably and
/// without ever replacing a file; the names in `last` are copied after all others (the
/// file that makes a folder count: `backup.json`, `archive.json`). Returns files added.
fn merge_tree(
    src: &Path,
    dest: &Path,
    account: Option<&pgpitr_pg::Account>,
    last: &[&str],
) -> Result<usize> {
    let mut files = Vec::new();
    collect_files(src, src, &mut files)?;
    files.sort_by_key(|rel| {
        rel.file_name()
            .map(|n| last.iter().any(|l| n == *l))
            .unwrap_or(false)
    });
    let mut added = 0;
    for rel in files {
        let to = dest.join(&rel);
        if to.exists() {
            continue;
        }
        let dir = to.parent().expect("a file has a folder");
        if !dir.is_dir() {
            // The server account writes there next (archive-wal): every folder created here
            // is handed to it, not just the innermost.
            let mut top = dir;
            while let Some(p) = top.parent() {
                if p.is_dir() {
                    break;
                }
                top = p;
            }
            pgpitr_durable::create_dir_all_durable(dir)?;
            if let Some(a) = account {
                a.chown_tree(top)?;
            }
        }
        let mut tmp = pgpitr_durable::TempFile::new_in(dir, "preseed", 0o644)?;
        let mut from = fs::File::open(src.join(&rel))
            .map_err(io_err(format!("open {}", src.join(&rel).display())))?;
        std::io::copy(&mut from, tmp.file())
            .map_err(io_err(format!("copy to {}", to.display())))?;
        tmp.publish_new(&to)?;
        if let Some(a) = account {
            std::os::unix::fs::chown(&to, Some(a.uid), Some(a.gid))
                .map_err(io_err(format!("chown {}", to.display())))?;
        }
        added += 1;
    }
    Ok(added)
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir).map_err(io_err(format!("list {}", dir.display())))? {
        let e = e.map_err(io_err(format!("list {}", dir.display())))?;
        let p = e.path();
        let t = e
            .file_type()
            .map_err(io_err(format!("stat {}", p.display())))?;
        if t.is_dir() {
            collect_files(root, &p, out)?;
        } else if t.is_file() {
            out.push(p.strip_prefix(root).expect("under root").to_path_buf());
        }
    }
    Ok(())
}

// ---- local: snapshot rollback, else the newest local base backup ----------------------

fn data_dataset(ctx: &Context<'_>) -> Result<Option<(Zfs, String)>> {
    let Some(z) = &ctx.cfg.zfs else {
        return Ok(None);
    };
    let zfs = Zfs::default();
    if zfs.exists(&z.data_dataset)? {
        Ok(Some((zfs, z.data_dataset.clone())))
    } else {
        Ok(None)
    }
}

fn probe_local(ctx: &Context<'_>) -> Result<Freshness> {
    if let Some((zfs, ds)) = data_dataset(ctx)? {
        if let Some(s) = zfs.snapshots(&ds)?.last() {
            let created = zfs
                .get(s, &["creation"])?
                .get("creation")
                .map(|p| creation_text(&p.value));
            return Ok(Freshness {
                method: "local".into(),
                usable: true,
                end_time: created,
                end_lsn: None,
                detail: format!(
                    "roll back to snapshot {s}, then replay the archive from it (crash-consistent only with pg_wal in {ds})"
                ),
            });
        }
    }
    let backups = pgpitr_backup::catalog(&ctx.cfg.backup.dir)?;
    match backups.last() {
        Some(b) => Ok(Freshness {
            method: "local".into(),
            usable: true,
            end_time: Some(b.stop_time.to_rfc3339()),
            end_lsn: Some(b.stop_lsn.to_string()),
            detail: format!("newest local base backup {} (no dataset snapshot)", b.id),
        }),
        None => Ok(fresh(
            PreseedMethod::Local,
            false,
            format!(
                "no data dataset snapshot and no base backup in {}",
                ctx.cfg.backup.dir.display()
            ),
        )),
    }
}

/// `zfs get -p creation` gives unix seconds where supported; shown as RFC 3339 then.
fn creation_text(v: &str) -> String {
    v.parse::<i64>()
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| v.to_string())
}

fn run_local(ctx: &Context<'_>, say: &mut dyn FnMut(&str)) -> Result<String> {
    let data_dir = ctx.data_dir();
    if let Some((zfs, ds)) = data_dataset(ctx)? {
        if let Some(snap) = zfs.snapshots(&ds)?.last().cloned() {
            // pg_wal on a dataset of its own is not in the snapshot: rolling back the data
            // alone would not be crash-consistent.
            let wal = data_dir.join("pg_wal");
            if let Some(other) = zfs.dataset_mounted_at(&wal)? {
                return Err(PreseedError::Refused(format!(
                    "pg_wal is on its own dataset {other}: a snapshot of {ds} alone is not crash-consistent; use the archive or restic method"
                )));
            }
            if zfs.dataset_mounted_at(data_dir)?.as_deref() != Some(ds.as_str()) {
                return Err(PreseedError::Refused(format!(
                    "{ds} is not mounted at {}: mount it (zfs mount {ds}) and rerun",
                    data_dir.display()
                )));
            }
            say(&format!("rolling {ds} back to its newest snapshot {snap}"));
            zfs.rollback(&snap)?;
            // Killed from here until recovery.signal is written, the folder holds a valid
            // cluster that is behind the archive: the next run sees that and replays it.
            pgpitr_restore::inplace::test_hold("snapshot-in-place");
            let detail = recover_in_place(ctx, say)?;
            return Ok(format!("snapshot {snap} rolled back; {detail}"));
        }
    }
    let (cfg, path) = (ctx.cfg.clone(), ctx.config_path.clone());
    // `latest`: the backup plus whatever the local archive holds after it.
    let detail = restore_from(ctx, &cfg, &path, Target::Latest, say)?;
    Ok(format!("newest local base backup: {detail}"))
}

// ---- syncoid ------------------------------------------------------------------------

/// `[[user@]host:]pool/dataset` split into the ssh destination and the dataset.
pub fn split_source(s: &str) -> (Option<&str>, &str) {
    match s.split_once(':') {
        Some((host, ds)) if !host.contains('/') && !host.is_empty() => (Some(host), ds),
        _ => (None, s),
    }
}

/// The ssh arguments syncoid's own options give (`--sshport`, `--sshkey`, `--sshoption`,
/// `--sshconfig`, `--sshcipher`, as `--opt=value` or `--opt value`): listing the replica's
/// snapshots reaches it the way syncoid does.
pub fn ssh_args(options: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = options.iter();
    while let Some(o) = it.next() {
        let (name, value) = match o.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (o.as_str(), None),
        };
        let flag = match name {
            "--sshport" => "-p",
            "--sshkey" => "-i",
            "--sshoption" | "-o" => "-o",
            "--sshconfig" => "-F",
            "--sshcipher" | "-c" => "-c",
            _ => continue,
        };
        if let Some(v) = value.or_else(|| it.next().cloned()) {
            out.push(flag.to_string());
            out.push(v);
        }
    }
    out
}

fn source_snapshots(source: &str, options: &[String]) -> Result<Vec<(String, String)>> {
    let (host, ds) = split_source(source);
    let list = |exact: bool| {
        let mut args = vec!["list", "-H"];
        if exact {
            args.push("-p");
        }
        args.extend([
            "-t",
            "snapshot",
            "-o",
            "name,creation",
            "-s",
            "creation",
            "-r",
            ds,
        ]);
        let mut c = match host {
            Some(h) => {
                let mut c = Command::new("ssh");
                c.args(["-o", "BatchMode=yes"])
                    .args(ssh_args(options))
                    .args([h, "zfs"]);
                c
            }
            None => Command::new("zfs"),
        };
        c.args(args)
            .output()
            .map_err(io_err(format!("list the snapshots of {source}")))
    };
    let mut out = list(true)?;
    if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("invalid option") {
        // Old ZFS (zfs-fuse) has no -p: creation times come as text then.
        out = list(false)?;
    }
    if !out.status.success() {
        return Err(PreseedError::Failed(format!(
            "cannot list the snapshots of {source}: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
        )));
    }
    let prefix = format!("{ds}@");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (n, c) = l.split_once('\t')?;
            n.starts_with(&prefix)
                .then(|| (n.to_string(), creation_text(c.trim())))
        })
        .collect())
}

fn syncoid_source(ctx: &Context<'_>) -> Result<(String, String)> {
    let src = ctx.cfg.preseed.syncoid.source.clone().ok_or_else(|| {
        PreseedError::Refused("[preseed.syncoid] source is not set: name the replica's dataset ([[user@]host:]pool/dataset)".into())
    })?;
    let ds = ctx
        .cfg
        .zfs
        .as_ref()
        .map(|z| z.data_dataset.clone())
        .ok_or_else(|| {
            PreseedError::Refused(
                "syncoid needs [zfs] data_dataset: the dataset it receives into".into(),
            )
        })?;
    Ok((src, ds))
}

fn probe_syncoid(ctx: &Context<'_>) -> Result<Freshness> {
    let (src, _) = syncoid_source(ctx)?;
    let snaps = source_snapshots(&src, &ctx.cfg.preseed.syncoid.options)?;
    Ok(match snaps.last() {
        Some((n, c)) => Freshness {
            method: "syncoid".into(),
            usable: true,
            end_time: Some(c.clone()),
            end_lsn: None,
            detail: format!(
                "newest snapshot on the replica {n} (syncoid also sends the replica's current state), then replay the archive from it"
            ),
        },
        None => fresh(
            PreseedMethod::Syncoid,
            false,
            format!("the replica {src} has no snapshot"),
        ),
    })
}

fn run_syncoid(ctx: &Context<'_>, say: &mut dyn FnMut(&str)) -> Result<String> {
    let (src, ds) = syncoid_source(ctx)?;
    let zfs = Zfs::default();
    let data_dir = ctx.data_dir();
    // An existing empty data dataset with no snapshot cannot take a full receive: receive
    // beside it and swap them once the receive is complete (ZFS receives are atomic; an
    // interrupted one resumes from its token on the next run).
    let swap = zfs.exists(&ds)? && zfs.snapshots(&ds)?.is_empty();
    let recv = if swap {
        format!("{ds}-preseed-recv")
    } else {
        ds.clone()
    };
    let bin = ctx
        .cfg
        .preseed
        .syncoid
        .bin
        .clone()
        .unwrap_or_else(|| PathBuf::from("syncoid"));
    let mut c = Command::new(&bin);
    if unsafe_is_root() {
        c.arg("--no-privilege-elevation");
    }
    c.args(&ctx.cfg.preseed.syncoid.options)
        .arg(&src)
        .arg(&recv);
    say(&format!("syncoid {src} {recv}"));
    let out = c.output().map_err(io_err(format!(
        "run {} (apt-get install sanoid)",
        bin.display()
    )))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        return Err(PreseedError::Failed(format!(
            "syncoid {src} {recv} failed ({}): {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )));
    }
    if swap {
        let aside = format!("{ds}-preseed-empty-{}", crate::now_stamp());
        say(&format!(
            "moving the empty dataset {ds} aside to {aside} and {recv} into its place"
        ));
        retry_busy(|| zfs.unmount(&ds))?;
        retry_busy(|| zfs.rename(&ds, &aside))?;
        zfs.set(&aside, "canmount", "noauto")?;
        zfs.set(&aside, "mountpoint", "none")?;
        let _ = retry_busy(|| zfs.unmount(&recv));
        if let Err(e) = retry_busy(|| zfs.rename(&recv, &ds)) {
            // Put the empty dataset back so the next run finds what this one found.
            let _ = zfs.rename(&aside, &ds);
            let _ = zfs.set(&ds, "mountpoint", &data_dir.display().to_string());
            return Err(e.into());
        }
    }
    let mp = data_dir.display().to_string();
    let current = zfs.get(&ds, &["mountpoint"])?;
    if current.get("mountpoint").map(|p| p.value.as_str()) != Some(mp.as_str()) {
        zfs.set(&ds, "mountpoint", &mp)?;
    }
    if zfs.dataset_mounted_at(data_dir)?.as_deref() != Some(ds.as_str())
        || entries(data_dir)?.map(|e| e.is_empty()).unwrap_or(true)
    {
        let _ = zfs.mount(&ds);
    }
    if data_dir.join("pg_wal").is_symlink() {
        return Err(PreseedError::Refused(format!(
            "the received {ds} has pg_wal as a symlink (WAL on another dataset): it is not crash-consistent alone; use the archive or restic method"
        )));
    }
    let newest = zfs.snapshots(&ds)?.last().cloned().unwrap_or_default();
    pgpitr_restore::inplace::test_hold("snapshot-in-place");
    let detail = recover_in_place(ctx, say)?;
    Ok(format!("received {src} up to {newest}; {detail}"))
}

/// ZFS says "dataset is busy" for a moment after a receive or an unmount: retry a while.
fn retry_busy(mut f: impl FnMut() -> pgpitr_zfs::Result<()>) -> pgpitr_zfs::Result<()> {
    let began = Instant::now();
    loop {
        match f() {
            Err(pgpitr_zfs::ZfsError::Failed { stderr, .. })
                if stderr.contains("busy") && began.elapsed() < Duration::from_secs(30) =>
            {
                std::thread::sleep(Duration::from_millis(500))
            }
            other => return other,
        }
    }
}

fn unsafe_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

// ---- recovery of a crash-consistent copy in place -------------------------------------

const BEGIN: &str = "# pgpitr preseed: recovery of a snapshot (removed after promotion)";
const END: &str = "# end of pgpitr preseed recovery";

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A crash-consistent copy carries the `postmaster.pid` of the server that ran when it was
/// taken (on this machine before it was rebuilt, or on the replica). PostgreSQL refuses to
/// start while any process has that PID, and after a reboot PIDs are small and reused: the
/// file is removed, unless a postgres process really runs on this folder right now.
fn remove_snapshot_pid_file(data: &Path, say: &mut dyn FnMut(&str)) -> Result<()> {
    let pid_file = data.join("postmaster.pid");
    let Ok(text) = fs::read_to_string(&pid_file) else {
        return Ok(());
    };
    let pid = text.lines().next().unwrap_or("").trim().to_string();
    // A first line that is no PID names no process.
    let runs_here = pid.parse::<u32>().is_ok_and(|n| {
        pgpitr_pg::works_in(n, data)
            && fs::read_to_string(format!("/proc/{n}/cmdline"))
                .is_ok_and(|c| c.contains("postgres"))
    });
    if runs_here {
        return Err(PreseedError::Refused(format!(
            "a PostgreSQL server (pid {pid}) runs on {}: stop it before preseed",
            data.display()
        )));
    }
    fs::remove_file(&pid_file).map_err(io_err(format!("remove {}", pid_file.display())))?;
    say(&format!(
        "removed the copy's postmaster.pid (pid {pid} at the moment of the snapshot; no server runs on the folder now)"
    ));
    Ok(())
}

/// Replays the archive from a crash-consistent copy in the data folder, lets it promote to
/// a new timeline (archiving on), stops it and removes the settings it wrote.
pub(crate) fn recover_in_place(ctx: &Context<'_>, say: &mut dyn FnMut(&str)) -> Result<String> {
    let cfg = ctx.cfg;
    let data = ctx.data_dir();
    if data.join("pg_wal").is_symlink() {
        return Err(PreseedError::Refused(format!(
            "{}/pg_wal is a symlink: the WAL lives outside the snapshot, which is therefore not crash-consistent; move the folder aside and use the archive or restic method",
            data.display()
        )));
    }
    remove_snapshot_pid_file(data, say)?;
    let q = |p: &Path| format!("\"{}\"", p.display());
    let restore_cmd = format!(
        "{} --config {} %f %p",
        q(&ctx.tools_dir.join("restore-wal")),
        q(&ctx.config_path)
    );
    let archive_cmd = format!(
        "{} --config {} %p %f",
        q(&ctx.tools_dir.join("archive-wal")),
        q(&ctx.config_path)
    );
    let block = [
        BEGIN.to_string(),
        format!("restore_command = {}", quote(&restore_cmd)),
        "recovery_target_timeline = 'latest'".into(),
        "recovery_target_action = 'promote'".into(),
        "archive_mode = on".into(),
        format!("archive_command = {}", quote(&archive_cmd)),
        format!("port = {}", cfg.postgres.port),
        format!(
            "unix_socket_directories = {}",
            quote(&cfg.postgres.socket_dir.display().to_string())
        ),
        END.to_string(),
    ]
    .join("\n");
    let auto = data.join("postgresql.auto.conf");
    let before = fs::read_to_string(&auto).unwrap_or_default();
    let without = strip_block(&before);
    pgpitr_durable::write_replace(&auto, format!("{without}\n{block}\n").as_bytes(), 0o600)?;
    pgpitr_restore::inplace::test_hold("recovery-settings");
    let _ = fs::remove_file(data.join("standby.signal"));
    pgpitr_durable::write_replace(&data.join("recovery.signal"), b"", 0o600)?;
    if let Some(a) = &ctx.account {
        a.chown_tree(data)?;
    }
    pgpitr_restore::inplace::test_hold("recovery-signal");
    let log = data.join("pgpitr-preseed.log");
    let ctl = PgCtl {
        bins: &ctx.bins,
        account: ctx.account.as_ref(),
        data_dir: data,
    };
    say("replaying the archive from the snapshot (recovery to the newest WAL, then promotion)");
    ctl.start(&log, "", false)?;
    pgpitr_restore::inplace::test_hold("replaying");
    let ep = Endpoint {
        socket_dir: cfg.postgres.socket_dir.clone(),
        port: cfg.postgres.port,
        user: cfg.postgres.user.clone(),
    };
    let waited = wait_promoted(ctx, &ctl, &ep, &log);
    if ctl.is_running() {
        ctl.stop()?;
    }
    let (lsn, timeline) = waited?;
    let now = fs::read_to_string(&auto).unwrap_or_default();
    pgpitr_durable::write_replace(&auto, strip_block(&now).as_bytes(), 0o600)?;
    if let Some(a) = &ctx.account {
        std::os::unix::fs::chown(&auto, Some(a.uid), Some(a.gid))
            .map_err(io_err(format!("chown {}", auto.display())))?;
    }
    Ok(format!(
        "replayed the archive to lsn {lsn} and promoted to timeline {timeline}"
    ))
}

/// Whether `postgresql.auto.conf` holds the recovery settings preseed writes for a replay.
pub fn has_recovery_block(data: &Path) -> bool {
    fs::read_to_string(data.join("postgresql.auto.conf"))
        .is_ok_and(|t| t.lines().any(|l| l == BEGIN))
}

/// Settings of a replay that no longer runs (no `recovery.signal`: killed before writing
/// it, or the server promoted without preseed) are taken back out; a replay still pending is
/// finished by the next preseed instead. Returns whether anything was removed.
pub fn remove_stale_recovery_block(data: &Path) -> Result<bool> {
    let auto = data.join("postgresql.auto.conf");
    let Ok(text) = fs::read_to_string(&auto) else {
        return Ok(false);
    };
    if !text.lines().any(|l| l == BEGIN) || data.join("recovery.signal").exists() {
        return Ok(false);
    }
    let meta = fs::metadata(&auto).map_err(io_err(format!("stat {}", auto.display())))?;
    pgpitr_durable::write_replace(&auto, strip_block(&text).as_bytes(), 0o600)?;
    use std::os::unix::fs::MetadataExt;
    std::os::unix::fs::chown(&auto, Some(meta.uid()), Some(meta.gid()))
        .map_err(io_err(format!("chown {}", auto.display())))?;
    Ok(true)
}

fn strip_block(text: &str) -> String {
    let mut out = Vec::new();
    let mut inside = false;
    for l in text.lines() {
        if l == BEGIN {
            inside = true;
        } else if l == END {
            inside = false;
        } else if !inside {
            out.push(l);
        }
    }
    let mut s = out.join("\n");
    while s.ends_with("\n\n") {
        s.pop();
    }
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

fn wait_promoted(
    ctx: &Context<'_>,
    ctl: &PgCtl<'_>,
    ep: &Endpoint,
    log: &Path,
) -> Result<(String, u32)> {
    let timeout = Duration::from_secs(ctx.cfg.preseed.recovery_timeout_seconds);
    let began = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        if !ctl.is_running() {
            let text = fs::read_to_string(log).unwrap_or_default();
            let fatal: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("FATAL") || l.contains("PANIC"))
                .collect();
            return Err(PreseedError::Failed(format!(
                "PostgreSQL stopped during recovery of the snapshot: {} (log {})",
                if fatal.is_empty() {
                    "see the log".into()
                } else {
                    fatal.join(" | ")
                },
                log.display()
            )));
        }
        if began.elapsed() > timeout {
            return Err(PreseedError::Failed(format!(
                "recovery did not finish within {} s (preseed.recovery_timeout_seconds); log {}",
                timeout.as_secs(),
                log.display()
            )));
        }
        let Ok(mut c) = ep.connect("postgres") else {
            continue;
        };
        let Ok(row) = c.query_one(
            "SELECT pg_is_in_recovery(), pg_current_wal_lsn()::text, substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
            &[],
        ) else {
            continue;
        };
        let in_recovery: bool = row.get(0);
        if !in_recovery {
            let lsn: String = row.get(1);
            let tli: String = row.get(2);
            pgpitr_restore::inplace::test_hold("promoted");
            // Make sure the new timeline's history file is archived before stopping.
            let _ = c.batch_execute("CHECKPOINT");
            return Ok((lsn, u32::from_str_radix(&tli, 16).unwrap_or(0)));
        }
    }
}

// ---- empty ----------------------------------------------------------------------------

/// What the sources say about whether this instance ever had data.
#[derive(Debug, Default)]
pub struct Evidence {
    /// Sources that show data.
    pub found: Vec<String>,
    /// Sources that could not be read: they might show data.
    pub unknown: Vec<String>,
}

impl Evidence {
    pub fn allows_empty(&self) -> bool {
        self.found.is_empty() && self.unknown.is_empty()
    }
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.found.is_empty() {
            parts.push(format!("this instance has data: {}", self.found.join("; ")));
        }
        if !self.unknown.is_empty() {
            parts.push(format!("cannot tell: {}", self.unknown.join("; ")));
        }
        parts.join("; ")
    }
}

/// Looks at every source: the archive's archive.json, the backup catalog, the offsite
/// repository, the data dataset's snapshots and the syncoid replica.
pub fn evidence(ctx: &Context<'_>) -> Evidence {
    let cfg = ctx.cfg;
    let mut ev = Evidence::default();
    match pgpitr_wal::store::Store::new(&cfg.archive.dir).meta() {
        Ok(Some(m)) => ev.found.push(format!(
            "{} names cluster {}",
            cfg.archive.dir.join("archive.json").display(),
            m.system_identifier
        )),
        Ok(None) => {}
        Err(e) => ev.unknown.push(format!("the archive: {e}")),
    }
    match pgpitr_backup::catalog(&cfg.backup.dir) {
        Ok(b) if !b.is_empty() => ev.found.push(format!(
            "{} catalogued base backups in {}",
            b.len(),
            cfg.backup.dir.display()
        )),
        Ok(_) => {}
        Err(e) => ev.unknown.push(format!("the backup folder: {e}")),
    }
    if cfg.offsite.is_some() {
        match pgpitr_offsite::status(cfg) {
            Ok(s) if !s.base_backups.is_empty() || !s.wal_snapshots.is_empty() => {
                ev.found.push(format!(
                    "{} offsite snapshots in {}",
                    s.base_backups.len() + s.wal_snapshots.len(),
                    s.repository
                ))
            }
            Ok(_) => {}
            Err(e) => ev.unknown.push(format!("the offsite repository: {e}")),
        }
    }
    if let Some(z) = &cfg.zfs {
        let zfs = Zfs::default();
        match zfs.exists(&z.data_dataset) {
            Ok(true) => match zfs.snapshots(&z.data_dataset) {
                Ok(s) if !s.is_empty() => {
                    ev.found
                        .push(format!("{} snapshots of {}", s.len(), z.data_dataset))
                }
                Ok(_) => {}
                Err(e) => ev.unknown.push(format!("{}: {e}", z.data_dataset)),
            },
            Ok(false) => {}
            Err(e) => ev.unknown.push(format!("ZFS: {e}")),
        }
    }
    if let Some(src) = &cfg.preseed.syncoid.source {
        match source_snapshots(src, &cfg.preseed.syncoid.options) {
            Ok(s) if !s.is_empty() => ev
                .found
                .push(format!("{} snapshots on the replica {src}", s.len())),
            Ok(_) => {}
            Err(e) => ev.unknown.push(format!("the replica: {e}")),
        }
    }
    ev
}

fn run_empty(ctx: &Context<'_>, say: &mut dyn FnMut(&str)) -> Result<String> {
    let ev = evidence(ctx);
    if !ev.allows_empty() {
        return Err(PreseedError::Refused(format!(
            "refusing to create an empty cluster: {}. An empty production database is worse than a server that waits: bring a source back and rerun preseed",
            ev.describe()
        )));
    }
    let data_dir = ctx.data_dir();
    let stage = place::staging_dir(data_dir)?;
    fs::create_dir_all(&stage).map_err(io_err(format!("create {}", stage.display())))?;
    if let Some(a) = &ctx.account {
        if stage.parent() == Some(data_dir) {
            std::os::unix::fs::chown(data_dir, Some(a.uid), Some(a.gid))
                .map_err(io_err(format!("chown {}", data_dir.display())))?;
        }
        a.chown_tree(&stage)?;
    }
    say(&format!(
        "no source shows this instance ever had data: initdb {}",
        stage.display()
    ));
    let mut c = command_as(&ctx.bins.path("initdb"), ctx.account.as_ref());
    c.arg("-D")
        .arg(&stage)
        .args(["-U", &ctx.cfg.postgres.user, "--no-instructions"])
        .args(&ctx.cfg.preseed.initdb_args)
        .current_dir("/");
    pgpitr_pg::run(&mut c)?;
    place::put_in_place(&stage, data_dir, ctx.account.as_ref())?;
    Ok("initdb: a new empty cluster".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copied_pid_file_goes_unless_a_postgres_runs_on_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("postmaster.pid");
        let mut said = Vec::new();
        // A process named postgres whose working folder is this one (reached by another
        // path: a symlink): refused, the file stays.
        let mut child = std::process::Command::new("bash")
            .args(["-c", "exec -a postgres sleep 30"])
            .current_dir(dir.path())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let link = dir.path().with_extension("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        fs::write(&pid_file, format!("{}\n{}\n", child.id(), link.display())).unwrap();
        let err = remove_snapshot_pid_file(&link, &mut |l| said.push(l.to_string()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("stop it before preseed"), "{err}");
        assert!(pid_file.exists());
        child.kill().unwrap();
        child.wait().unwrap();
        fs::remove_file(&link).unwrap();
        // The snapshot's PID, now no process (or not a PID at all): removed.
        for first in [child.id().to_string(), "self".into()] {
            fs::write(&pid_file, format!("{first}\n")).unwrap();
            remove_snapshot_pid_file(dir.path(), &mut |l| said.push(l.to_string())).unwrap();
            assert!(!pid_file.exists(), "{first}");
        }
        assert!(said
            .iter()
            .all(|l| l.contains("removed the copy's postmaster.pid")));
    }

    #[test]
    fn syncoid_source_syntax() {
        assert_eq!(split_source("tank/pg"), (None, "tank/pg"));
        assert_eq!(split_source("nas:tank/pg"), (Some("nas"), "tank/pg"));
        assert_eq!(
            split_source("root@nas:tank/pg"),
            (Some("root@nas"), "tank/pg")
        );
        assert_eq!(split_source("tank/a:b"), (None, "tank/a:b"));
    }

    #[test]
    fn ssh_arguments_follow_syncoid_options() {
        let o: Vec<String> = [
            "--sshport=2222",
            "--sshkey",
            "/k",
            "--sshoption=StrictHostKeyChecking=no",
            "--no-sync-snap",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            ssh_args(&o),
            [
                "-p",
                "2222",
                "-i",
                "/k",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null"
            ]
        );
    }

    #[test]
    fn stale_block_removed_only_after_promotion() {
        let d = tempfile::tempdir().unwrap();
        let auto = d.path().join("postgresql.auto.conf");
        let text = format!("a = 1\n{BEGIN}\nrestore_command = 'x'\n{END}\n");
        fs::write(&auto, &text).unwrap();
        fs::write(d.path().join("recovery.signal"), "").unwrap();
        assert!(!remove_stale_recovery_block(d.path()).unwrap());
        assert_eq!(fs::read_to_string(&auto).unwrap(), text);
        fs::remove_file(d.path().join("recovery.signal")).unwrap();
        assert!(remove_stale_recovery_block(d.path()).unwrap());
        assert_eq!(fs::read_to_string(&auto).unwrap(), "a = 1\n");
        assert!(!remove_stale_recovery_block(d.path()).unwrap());
    }

    #[test]
    fn recovery_block_is_removed() {
        let before = "# Do not edit\nwork_mem = '8MB'\n";
        let with = format!("{before}\n{BEGIN}\nrestore_command = 'x'\n{END}\n");
        assert_eq!(strip_block(&with), before);
        assert_eq!(strip_block(before), before);
    }
}
