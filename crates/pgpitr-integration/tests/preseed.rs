//! `preseed` against real PostgreSQL, restic, zfs-fuse and syncoid: each method brings back
//! a cluster holding the sentinel rows written last before the loss; the preseeded server
//! archives on its new timeline into the same archive, its follow-up backup is taken, and a
//! point-in-time restore across the switch works. Refusals leave the folder byte-identical;
//! a preseed killed at each step leaves nothing PostgreSQL would start on as complete.

use pgpitr_config::{Config, PreseedMethod, ZfsConfig};
use pgpitr_integration::{require_tool, tags, Cluster, ClusterOptions, Run};
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A "rebuilt node" config: the instance's archive and backups, a new data folder and port.
fn node_config(c: &Cluster, name: &str, port: u16, methods: &[PreseedMethod]) -> Config {
    let mut cfg = c.cfg.clone();
    cfg.postgres.data_dir = c.root.join(name);
    cfg.postgres.port = port;
    cfg.preseed.methods = methods.to_vec();
    cfg.preseed.recovery_timeout_seconds = 120;
    cfg
}

fn preseed(c: &Cluster, cfg_path: &Path, args: &[&str]) -> Run {
    c.tool_with(cfg_path, "preseed", args)
}

/// Every file under `dir` with its bytes (and symlinks' targets): "byte-identical".
fn snapshot_tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(rd) = fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let t = e.file_type().unwrap();
            if t.is_symlink() {
                out.insert(rel, fs::read_link(&p).unwrap().into_os_string().into_vec());
            } else if t.is_dir() {
                out.insert(rel.join(""), Vec::new());
                walk(root, &p, out);
            } else {
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    use std::os::unix::ffi::OsStringExt;
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// After a preseed: starts the server, checks the rows, writes on the new timeline,
/// archives it, takes the follow-up backup and stops it. Returns the new row's tag.
fn live_on_new_timeline(
    c: &Cluster,
    cfg_path: &Path,
    cfg: &Config,
    expected: &[&str],
    tag: &str,
) -> String {
    let data = &cfg.postgres.data_dir;
    c.start_server(data);
    let mut db = c.connect(cfg.postgres.port);
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(tags(&mut db), want, "rows after preseed");
    let tli: i32 = db
        .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
        .unwrap()
        .get(0);
    assert!(tli >= 2, "preseed promotes to a new timeline, got {tli}");
    db.execute("INSERT INTO t (tag) VALUES ($1)", &[&tag])
        .unwrap();
    // The new timeline archives into the same archive without a collision.
    let name = data.file_name().unwrap().to_string_lossy().into_owned();
    let log = c.root.join(format!("{name}.log"));
    let switched = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        c.switch_and_wait(cfg.postgres.port)
    }));
    if switched.is_err() {
        panic!(
            "not archived on timeline {tli}; server log:\n{}\nrestore log:\n{}",
            fs::read_to_string(&log).unwrap_or_default(),
            fs::read_to_string(data.join("pgpitr-restore.log")).unwrap_or_default()
        );
    }
    let r = preseed(c, cfg_path, &["--follow-up-backup"]).ok();
    assert!(r.stdout.trim().len() > 5, "a backup id: {}", r.stdout);
    let again = preseed(c, cfg_path, &["--follow-up-backup"]).ok();
    assert!(
        again.stdout.contains("no backup needed"),
        "{}",
        again.stdout
    );
    drop(db);
    c.stop_server(data);
    tag.to_string()
}

/// A point-in-time restore from the timeline-1 backup across the preseed's switch.
fn pitr_across_switch(c: &Cluster, cfg_path: &Path, backup: &str, port: u16, expect: &[&str]) {
    let into = c.root.join(format!("pitr-{port}"));
    let p = port.to_string();
    let r = c.tool_with(
        cfg_path,
        "pgpitr",
        &[
            "restore",
            "--to",
            "latest",
            "--into",
            into.to_str().unwrap(),
            "--port",
            &p,
            "--backup",
            backup,
        ],
    );
    c.track(&into);
    let r = r.ok();
    assert!(r.stdout.contains("new timeline"), "{}", r.stdout);
    let mut db = c.connect(port);
    let got = tags(&mut db);
    for e in expect {
        assert!(got.iter().any(|g| g == e), "{e} missing from {got:?}");
    }
    drop(db);
    c.discard(&into);
}

/// The source: rows, a base backup, more rows, sentinel rows written last, all archived
/// (and copied offsite when `offsite`); then the server is stopped (the node is lost).
fn source(offsite: bool) -> (Cluster, String, PathBuf) {
    let c = Cluster::start(ClusterOptions {
        metrics: true,
        ..Default::default()
    });
    let mut cfg = c.cfg.clone();
    if offsite {
        cfg.offsite = Some(c.offsite_config("preseed-test-password-91c2"));
    }
    let cfg_path = c.write_config(&cfg, "source.toml");
    let mut db = c.connect(5432);
    db.batch_execute("CREATE TABLE t (id serial, tag text); INSERT INTO t (tag) VALUES ('base')")
        .unwrap();
    let backup = c.basebackup();
    db.execute("INSERT INTO t (tag) VALUES ('after-backup')", &[])
        .unwrap();
    c.switch_and_wait(5432);
    db.execute("INSERT INTO t (tag) VALUES ('sentinel-last')", &[])
        .unwrap();
    c.switch_and_wait(5432);
    if offsite {
        c.tool_with(&cfg_path, "offsite-sync", &[]).ok();
    }
    drop(db);
    c.stop_server(&c.cfg.postgres.data_dir);
    (c, backup, cfg_path)
}

const ROWS: [&str; 3] = ["base", "after-backup", "sentinel-last"];

#[test]
fn archive_local_and_restic_bring_back_the_last_rows() {
    let (c, backup, source_cfg) = source(true);
    let offsite = Config::load(&source_cfg).unwrap().offsite;
    let mut expected: Vec<&str> = ROWS.to_vec();
    let mut written: Vec<String> = Vec::new();

    // archive, then local (no dataset: the newest local base backup plus the archive).
    for (i, m) in [PreseedMethod::Archive, PreseedMethod::Local]
        .into_iter()
        .enumerate()
    {
        let port = 5440 + i as u16;
        let cfg = node_config(&c, &format!("node-{}", m.name()), port, &[m]);
        let path = c.write_config(&cfg, &format!("node-{}.toml", m.name()));
        // --dry-run first: freshness, nothing changed.
        let dry = preseed(&c, &path, &["--dry-run"]).ok();
        assert!(
            dry.stdout.contains(m.name()) && dry.stdout.contains("usable"),
            "{}",
            dry.stdout
        );
        assert!(!cfg.postgres.data_dir.exists(), "dry run changed nothing");
        let t0 = Instant::now();
        let r = preseed(&c, &path, &[]).ok();
        eprintln!(
            "preseed {}: {:.1} s\n{}\n{}",
            m.name(),
            t0.elapsed().as_secs_f64(),
            r.stdout,
            r.stderr
        );
        assert!(
            r.stderr
                .lines()
                .any(|l| l.contains("restored by method") && l.contains(m.name())),
            "one-line summary: {}",
            r.stderr
        );
        let tag = format!("after-preseed-{}", m.name());
        written.push(live_on_new_timeline(&c, &path, &cfg, &expected, &tag));
        expected.push(Box::leak(tag.into_boxed_str()));
        // Metrics labelled with the method.
        let prom = fs::read_to_string(c.root.join("metrics/pgpitr_preseed_test.prom")).unwrap();
        assert!(
            prom.contains(&format!(
                "pgpitr_preseed_success{{instance=\"test\",method=\"{}\"}} 1",
                m.name()
            )),
            "{prom}"
        );
        assert!(prom.contains("pgpitr_preseed_duration_seconds{"), "{prom}");
        assert!(
            prom.contains("pgpitr_preseed_last_run_timestamp_seconds{"),
            "{prom}"
        );
        // A second run finds the cluster and does nothing.
        let before = snapshot_tree(&cfg.postgres.data_dir);
        let again = preseed(&c, &path, &[]).ok();
        assert!(again.stdout.contains("nothing to do"), "{}", again.stdout);
        assert!(before == snapshot_tree(&cfg.postgres.data_dir), "untouched");
    }
    // PITR from the timeline-1 backup across both switches.
    pitr_across_switch(&c, &source_cfg, &backup, 5450, &expected);

    // restic: a node that lost its archive and backups too (fresh folders), offsite intact.
    let mut cfg = node_config(&c, "node-restic", 5442, &[PreseedMethod::Restic]);
    cfg.offsite = offsite;
    cfg.archive.dir = c.root.join("node-restic-archive");
    cfg.backup.dir = c.root.join("node-restic-backups");
    for d in [&cfg.archive.dir, &cfg.backup.dir] {
        fs::create_dir(d).unwrap();
        c.chown(d);
    }
    let path = c.write_config(&cfg, "node-restic.toml");
    let dry = preseed(&c, &path, &["--dry-run"]).ok();
    assert!(dry.stdout.contains("restic   usable"), "{}", dry.stdout);
    let t0 = Instant::now();
    preseed(&c, &path, &[]).ok();
    eprintln!("preseed restic: {:.1} s", t0.elapsed().as_secs_f64());
    assert!(cfg.archive.dir.join("archive.json").is_file());
    assert_eq!(
        pgpitr_backup_count(&cfg.backup.dir),
        1,
        "the fetched backup joined the local catalog"
    );
    live_on_new_timeline(&c, &path, &cfg, &ROWS, "after-preseed-restic");
    let restic_expect = [
        "base",
        "after-backup",
        "sentinel-last",
        "after-preseed-restic",
    ];
    pitr_across_switch(&c, &path, &backup, 5451, &restic_expect);
}

fn pgpitr_backup_count(dir: &Path) -> usize {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("backup.json").is_file())
        .count()
}

#[test]
fn refusals_leave_the_folder_untouched() {
    let (c, _backup, _) = source(false);
    let data = c.cfg.postgres.data_dir.clone();

    // A valid cluster of this instance: exit 0 at once, byte-identical.
    let cfg = node_config(&c, "data", 5460, &[PreseedMethod::Archive]);
    let path = c.write_config(&cfg, "self.toml");
    let before = snapshot_tree(&data);
    let r = preseed(&c, &path, &[]).ok();
    assert!(r.stdout.contains("nothing to do"), "{}", r.stdout);
    assert!(
        before == snapshot_tree(&data),
        "a valid cluster is untouched"
    );

    // A live server that crashed is not behind the archive (everything archived came from
    // its own pg_wal): nothing to do, untouched. Once with rows after the last archived
    // segment, once right after a switch (its WAL ends where the archived segment ends).
    for (i, switch_last) in [false, true].into_iter().enumerate() {
        c.start_server(&data);
        let mut db = c.connect(5432);
        db.execute("INSERT INTO t (tag) VALUES ($1)", &[&format!("crash-{i}")])
            .unwrap();
        c.switch_and_wait(5432);
        if !switch_last {
            db.execute("INSERT INTO t (tag) VALUES ('unarchived')", &[])
                .unwrap();
        }
        drop(db);
        crash_server(&c, &data);
        let before = snapshot_tree(&data);
        let r = preseed(&c, &path, &[]).ok();
        assert!(
            r.stdout.contains("nothing to do") && !r.stdout.contains("warning"),
            "crashed live server (switch last: {switch_last}): {}\n{}",
            r.stdout,
            r.stderr
        );
        assert!(
            before == snapshot_tree(&data),
            "a crashed cluster is untouched"
        );
    }

    // A copy of the crashed cluster, taken before more WAL was archived: valid and of this
    // instance, but behind the archive. Started as it is it would lose the rows after it and
    // then collide with the archive on its timeline: preseed replays the archive from it.
    let copy_cfg = node_config(&c, "node-copy", 5467, &[PreseedMethod::Archive]);
    let copy_path = c.write_config(&copy_cfg, "copy.toml");
    let copy = copy_cfg.postgres.data_dir.clone();
    sh_ok(&format!("cp -a '{}' '{}'", data.display(), copy.display()));
    c.start_server(&data);
    let mut db = c.connect(5432);
    db.execute("INSERT INTO t (tag) VALUES ('after-copy')", &[])
        .unwrap();
    c.switch_and_wait(5432);
    drop(db);
    c.stop_server(&data);
    let dry = preseed(&c, &copy_path, &["--dry-run"]).ok();
    assert!(
        dry.stdout.contains("behind the archive") && dry.stdout.contains("would replay"),
        "{}",
        dry.stdout
    );
    let r = preseed(&c, &copy_path, &[]).ok();
    assert!(
        r.stderr.contains("behind the archive") && r.stderr.contains("replayed the archive"),
        "{}",
        r.stderr
    );
    c.start_server(&copy);
    let mut db = c.connect(5432);
    let got = tags(&mut db);
    assert!(got.iter().any(|t| t == "after-copy"), "{got:?}");
    let tli: i32 = db
        .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
        .unwrap()
        .get(0);
    assert!(tli >= 2, "replayed onto a new timeline, got {tli}");
    // The archive keeps working on the new timeline.
    c.switch_and_wait(5432);
    drop(db);
    c.stop_server(&copy);
    let again = preseed(&c, &copy_path, &[]).ok();
    assert!(again.stdout.contains("nothing to do"), "{}", again.stdout);
    fs::remove_dir_all(&copy).unwrap();

    // A non-empty folder that is not a cluster: refused and untouched without --quarantine.
    let cfg = node_config(&c, "node-junk", 5461, &[PreseedMethod::Archive]);
    let path = c.write_config(&cfg, "junk.toml");
    let junk = &cfg.postgres.data_dir;
    fs::create_dir(junk).unwrap();
    fs::write(junk.join("notes.txt"), "not a cluster").unwrap();
    let before = snapshot_tree(junk);
    let r = preseed(&c, &path, &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("not a PostgreSQL cluster") && r.stderr.contains("--quarantine"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.trim().lines().count(), 1, "one line: {}", r.stderr);
    assert!(before == snapshot_tree(junk));
    let prom = fs::read_to_string(c.root.join("metrics/pgpitr_preseed_test.prom")).unwrap();
    assert!(
        prom.contains("pgpitr_preseed_success{instance=\"test\",method=\"none\"} 0"),
        "{prom}"
    );
    // With --quarantine it is renamed aside (kept) and the restore goes on.
    let r = preseed(&c, &path, &["--quarantine"]).ok();
    assert!(r.stdout.contains("quarantined"), "{}", r.stdout);
    let aside: Vec<PathBuf> = fs::read_dir(&c.root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("node-junk.quarantine-"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(
        fs::read_to_string(aside[0].join("notes.txt")).unwrap(),
        "not a cluster"
    );
    assert!(junk.join("PG_VERSION").is_file());

    // Another cluster's data: refused, untouched.
    let cfg = node_config(&c, "node-other", 5462, &[PreseedMethod::Archive]);
    let path = c.write_config(&cfg, "other.toml");
    c.initdb(&cfg.postgres.data_dir, false);
    let before = snapshot_tree(&cfg.postgres.data_dir);
    let r = preseed(&c, &path, &[]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("another cluster"), "{}", r.stderr);
    assert!(before == snapshot_tree(&cfg.postgres.data_dir));

    // Another major version: refused, untouched.
    let cfg = node_config(&c, "node-old", 5463, &[PreseedMethod::Archive]);
    let path = c.write_config(&cfg, "old.toml");
    fs::create_dir_all(cfg.postgres.data_dir.join("global")).unwrap();
    fs::write(cfg.postgres.data_dir.join("PG_VERSION"), "14\n").unwrap();
    fs::copy(
        data.join("global/pg_control"),
        cfg.postgres.data_dir.join("global/pg_control"),
    )
    .unwrap();
    let before = snapshot_tree(&cfg.postgres.data_dir);
    let r = preseed(&c, &path, &[]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("PostgreSQL 14"), "{}", r.stderr);
    assert!(before == snapshot_tree(&cfg.postgres.data_dir));

    // `empty` when this instance has data: refused (archive.json, catalogued backups).
    let cfg = node_config(&c, "node-empty", 5464, &[PreseedMethod::Empty]);
    let path = c.write_config(&cfg, "empty.toml");
    let r = preseed(&c, &path, &[]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("refusing to create an empty cluster")
            && r.stderr.contains("archive.json"),
        "{}",
        r.stderr
    );
    assert!(!cfg.postgres.data_dir.exists());

    // The NAS is down: archive and backups unreachable, offsite repository unreachable.
    let mut cfg = node_config(
        &c,
        "node-nas-down",
        5465,
        &[
            PreseedMethod::Archive,
            PreseedMethod::Restic,
            PreseedMethod::Empty,
        ],
    );
    cfg.archive.dir = c.root.join("nas/archive");
    cfg.backup.dir = c.root.join("nas/backups");
    let mut off = c.offsite_config("preseed-test-password-91c2");
    off.repository = c.root.join("nas/restic").display().to_string();
    off.init = false;
    cfg.offsite = Some(off);
    let path = c.write_config(&cfg, "nas-down.toml");
    let dry = preseed(&c, &path, &["--dry-run"]).ok();
    assert!(dry.stdout.contains("empty    unusable"), "{}", dry.stdout);
    let r = preseed(&c, &path, &[]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stderr.contains("no method gave a cluster")
            && r.stderr.contains("refusing to create an empty cluster")
            && r.stderr.contains("offsite repository"),
        "{}",
        r.stderr
    );
    assert!(!cfg.postgres.data_dir.exists(), "nothing created");

    // A brand-new instance (no archive, no backup, no offsite copy): `empty` runs initdb.
    let mut cfg = node_config(
        &c,
        "node-new",
        5466,
        &[PreseedMethod::Archive, PreseedMethod::Empty],
    );
    cfg.archive.dir = c.root.join("new/archive");
    cfg.backup.dir = c.root.join("new/backups");
    let path = c.write_config(&cfg, "new.toml");
    let r = preseed(&c, &path, &[]).ok();
    assert!(
        r.stderr.contains("restored by method empty"),
        "{}",
        r.stderr
    );
    assert!(cfg.postgres.data_dir.join("PG_VERSION").is_file());
}

/// Simulates a crash (or a reboot): `pg_ctl stop -m immediate` when a server runs on `data`.
fn crash_server(c: &Cluster, data: &Path) {
    let ctl = pgpitr_pg::PgCtl {
        bins: &c.bins,
        account: c.account.as_ref(),
        data_dir: data,
    };
    if ctl.is_running() {
        let mut cmd = pgpitr_pg::command_as(&c.bins.path("pg_ctl"), c.account.as_ref());
        cmd.arg("-D")
            .arg(data)
            .args(["-m", "immediate", "-w", "stop"])
            .current_dir("/");
        pgpitr_pg::run(&mut cmd).unwrap();
    }
}

/// Runs preseed and SIGKILLs it when a stderr line contains `step`; returns whether it was
/// killed (false: it finished first).
fn kill_at(c: &Cluster, cfg_path: &Path, step: &str) -> bool {
    kill_when(c, cfg_path, step, None)
}

/// Runs preseed (with `PGPITR_TEST_HOLD_AT=hold` when given) and SIGKILLs it at the first
/// stderr line containing `needle`; false (with what it printed) when none came.
fn kill_when(c: &Cluster, cfg_path: &Path, needle: &str, hold: Option<&str>) -> bool {
    let mut cmd = Command::new(c.tools.join("preseed"));
    cmd.arg("--config").arg(cfg_path);
    if let Some(h) = hold {
        cmd.env("PGPITR_TEST_HOLD_AT", h);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let mut killed = false;
    let mut seen = Vec::new();
    for line in BufReader::new(err).lines() {
        let line = line.unwrap();
        if line.contains(needle) {
            child.kill().unwrap();
            killed = true;
            break;
        }
        seen.push(line);
    }
    child.wait().unwrap();
    if !killed {
        eprintln!("preseed never printed {needle:?}:\n{}", seen.join("\n"));
    }
    killed
}

#[test]
fn killed_at_every_step_leaves_nothing_startable_as_complete() {
    let (c, _backup, _) = source(false);
    let cfg = node_config(&c, "node-kill", 5470, &[PreseedMethod::Archive]);
    let path = c.write_config(&cfg, "kill.toml");
    let data = cfg.postgres.data_dir.clone();
    let bins = pgpitr_integration::pg_bins();
    for step in [
        "trying method archive",
        "restoring backup",
        "extracting backup",
        "starting PostgreSQL",
        "restored server promoted and stopped",
    ] {
        assert!(kill_at(&c, &path, step), "preseed finished before {step:?}");
        // Either nothing in the data folder, or (killed after the final rename) a complete,
        // cleanly shut down cluster.
        if data.join("PG_VERSION").exists() {
            let out = Command::new(bins.path("pg_controldata"))
                .arg("-D")
                .arg(&data)
                .env("LC_ALL", "C")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains("Database cluster state:               shut down"),
                "killed at {step:?}: a cluster in the data folder that is not complete:\n{text}"
            );
            fs::remove_dir_all(&data).unwrap();
        } else {
            assert!(
                !data.exists() || fs::read_dir(&data).unwrap().next().is_none(),
                "killed at {step:?}: {} holds something",
                data.display()
            );
        }
    }
    // After all those kills a full run still brings the rows back.
    let t0 = Instant::now();
    let r = preseed(&c, &path, &[]).ok();
    eprintln!(
        "preseed after kills: {:.1} s\n{}",
        t0.elapsed().as_secs_f64(),
        r.stderr
    );
    assert!(
        r.stderr.contains("restored by method archive"),
        "{}",
        r.stderr
    );
    c.start_server(&data);
    let mut db = c.connect(5470);
    let mut want: Vec<String> = ROWS.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(tags(&mut db), want);
    drop(db);
    c.stop_server(&data);
}

// ---- ZFS: local snapshot rollback and syncoid from a replica ----------------------------

/// A pool on a sparse file, destroyed (test cleanup only) when dropped.
struct Pool {
    name: String,
    file: PathBuf,
    _dir: tempfile::TempDir,
    mnt: PathBuf,
}

fn sh(cmd: &str) -> std::process::Output {
    Command::new("sh").arg("-c").arg(cmd).output().unwrap()
}

#[track_caller]
fn sh_ok(cmd: &str) -> String {
    let out = sh(cmd);
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Pool {
    /// `tag` keeps the pools of tests running at once in one process apart.
    fn create(tag: &str) -> Pool {
        pgpitr_integration::ensure_zfs_fuse();
        require_tool("syncoid", "sanoid");
        let dir = tempfile::Builder::new()
            .prefix("pgpitr-preseed-zfs-")
            .tempdir()
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.path().join("pool.img");
        let mnt = dir.path().join("mnt");
        let name = format!("pgpitrpre{}{tag}", std::process::id());
        sh_ok(&format!(
            "truncate -s 768M '{}' && zpool create -f -m '{}' {name} '{}'",
            file.display(),
            mnt.display(),
            file.display()
        ));
        Pool {
            name,
            file,
            _dir: dir,
            mnt,
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Test cleanup (pgpitr itself never destroys a dataset or a pool).
        for _ in 0..20 {
            if sh(&format!("zpool destroy -f {}", self.name))
                .status
                .success()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let _ = fs::remove_file(&self.file);
    }
}

/// The ZFS source: the data folder on a dataset of a test pool, rows, a base backup, more
/// rows, a replica of the data dataset made with syncoid (a crash-consistent snapshot of the
/// live dataset), then sentinel rows only the archive has; the server is stopped.
struct ZfsSource {
    // Declared before the pool: the servers stop before the pool goes.
    c: Cluster,
    _pool: Pool,
    data_ds: String,
    replica_ds: String,
    zc: Config,
    backup: String,
    // Last: released once the pool is gone.
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// The ZFS tests of this file run one at a time: under concurrent load zfs-fuse keeps a
/// dataset "busy" for tens of seconds after it was mounted or used.
static ZFS_SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn zfs_source(tag: &str) -> ZfsSource {
    let serial = ZFS_SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pool = Pool::create(tag);
    let data_ds = format!("{}/pg/data", pool.name);
    let replica_ds = format!("{}/replica/data", pool.name);
    let zcfg = ZfsConfig {
        data_dataset: data_ds.clone(),
        wal_dataset: format!("{}/pg/wal", pool.name),
        data_properties: Default::default(),
        wal_properties: Default::default(),
    };
    let mut zc = pgpitr_config::Config::parse(
        Path::new("x.toml"),
        &format!(
            "instance = \"test\"\n[postgres]\ndata_dir = \"{0}/data\"\n[archive]\ndir = \"{0}/wal\"\n[backup]\ndir = \"/nonexistent\"\n",
            pool.mnt.display()
        ),
    )
    .unwrap();
    zc.zfs = Some(zcfg.clone());
    pgpitr_zfs::ensure_instance(&zc, false).unwrap();
    let c = Cluster::start(ClusterOptions {
        placed: Some(pgpitr_integration::Placement {
            data_dir: zc.postgres.data_dir.clone(),
            archive_dir: zc.archive.dir.clone(),
            zfs: Some(zcfg),
        }),
        ..Default::default()
    });
    let data = c.cfg.postgres.data_dir.clone();
    let mut db = c.connect(5432);
    db.batch_execute("CREATE TABLE t (id serial, tag text); INSERT INTO t (tag) VALUES ('base')")
        .unwrap();
    let backup = c.basebackup();
    db.execute("INSERT INTO t (tag) VALUES ('after-backup')", &[])
        .unwrap();
    c.switch_and_wait(5432);
    // The replica: syncoid from the live data dataset (a crash-consistent snapshot).
    sh_ok(&format!(
        "zfs create -o mountpoint=none {}/replica",
        pool.name
    ));
    sh_ok(&format!(
        "syncoid --no-privilege-elevation --quiet {data_ds} {replica_ds}"
    ));
    // Rows written after every snapshot: only the archive has them.
    db.execute("INSERT INTO t (tag) VALUES ('sentinel-last')", &[])
        .unwrap();
    c.switch_and_wait(5432);
    drop(db);
    c.stop_server(&data);
    ZfsSource {
        c,
        _pool: pool,
        data_ds,
        replica_ds,
        zc,
        backup,
        _serial: serial,
    }
}

/// The data folder's contents are lost; the dataset and its snapshots are not.
fn empty_data_folder(data: &Path) {
    for e in fs::read_dir(data).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            fs::remove_dir_all(&p).unwrap();
        } else {
            fs::remove_file(&p).unwrap();
        }
    }
}

/// A rebuilt node: the data dataset is gone and recreated empty (zfs ensure).
fn lose_data_dataset(src: &ZfsSource) {
    destroy_data_dataset(src);
    pgpitr_zfs::ensure_instance(&src.zc, false).unwrap();
}

/// The data dataset is gone. (Test simulation of the loss; zfs-fuse may see the mount busy
/// for a while after the stop, for tens of seconds when other pools are busy, so the wait is
/// long and only a dataset that stays busy for minutes fails the test.)
fn destroy_data_dataset(src: &ZfsSource) {
    let start = Instant::now();
    loop {
        let out = sh(&format!("zfs destroy -r -f {}", src.data_ds));
        if out.status.success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "cannot destroy {} to simulate the loss: {}; datasets: {}",
            src.data_ds,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&sh("zfs list -o name,mounted,mountpoint -t all").stdout)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn local_snapshot_and_syncoid_bring_back_the_last_rows() {
    let src = zfs_source("a");
    let (c, replica_ds, backup) = (&src.c, &src.replica_ds, &src.backup);
    let data = c.cfg.postgres.data_dir.clone();

    // local: the data folder's contents are lost, the dataset and its snapshots are not.
    empty_data_folder(&data);
    let mut cfg = c.cfg.clone();
    cfg.preseed.methods = vec![PreseedMethod::Local];
    cfg.preseed.syncoid.source = Some(replica_ds.clone());
    let path = c.write_config(&cfg, "local.toml");
    let dry = preseed(c, &path, &["--dry-run"]).ok();
    assert!(dry.stdout.contains("local    usable"), "{}", dry.stdout);
    let t0 = Instant::now();
    let r = preseed(c, &path, &[]).ok();
    eprintln!(
        "preseed local (snapshot): {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(r.stdout.contains("rolled back"), "{}", r.stdout);
    live_on_new_timeline(c, &path, &cfg, &ROWS, "after-preseed-local");

    // syncoid: a rebuilt node; the data dataset is gone and recreated empty (zfs ensure).
    lose_data_dataset(&src);
    let mut cfg = c.cfg.clone();
    cfg.preseed.methods = vec![PreseedMethod::Syncoid];
    cfg.preseed.syncoid.source = Some(replica_ds.clone());
    let path = c.write_config(&cfg, "syncoid.toml");
    let dry = preseed(c, &path, &["--dry-run"]).ok();
    assert!(dry.stdout.contains("syncoid  usable"), "{}", dry.stdout);
    let t0 = Instant::now();
    let r = preseed(c, &path, &[]).ok();
    eprintln!("preseed syncoid: {:.1} s", t0.elapsed().as_secs_f64());
    assert!(r.stdout.contains("received"), "{}", r.stdout);
    let mut expected = ROWS.to_vec();
    expected.push("after-preseed-local");
    live_on_new_timeline(c, &path, &cfg, &expected, "after-preseed-syncoid");
    expected.push("after-preseed-syncoid");
    pitr_across_switch(c, &path, backup, 5452, &expected);
}

/// Runs preseed with `PGPITR_TEST_HOLD_AT=hold` and SIGKILLs it once it holds there: the
/// kill lands exactly inside that step. Returns whether it got there.
fn kill_at_hold(c: &Cluster, cfg_path: &Path, hold: &str) -> bool {
    kill_when(c, cfg_path, &format!("test hold at {hold}"), Some(hold))
}

/// After a kill, the data folder holds a cluster `pg_controldata` reads (the dangerous
/// state: a folder a naive check would start as it is).
fn holds_valid_cluster(c: &Cluster, data: &Path) -> bool {
    data.join("PG_VERSION").is_file()
        && Command::new(c.bins.path("pg_controldata"))
            .arg("-D")
            .arg(data)
            .output()
            .is_ok_and(|o| o.status.success())
}

/// A server a killed preseed started in the data folder dies with the machine: waits for it
/// to be up, then stops it with `-m immediate`.
fn crash_what_preseed_started(c: &Cluster, data: &Path) {
    let ctl = pgpitr_pg::PgCtl {
        bins: &c.bins,
        account: c.account.as_ref(),
        data_dir: data,
    };
    let start = Instant::now();
    while !ctl.is_running() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    crash_server(c, data);
}

/// Starts the server preseed left, checks the rows and that it is on a newer timeline than
/// `prev_tli`, writes `tag`, checks a later segment switch is archived, stops it cleanly and
/// checks that preseed then has nothing to do. Returns the timeline.
fn live_after_replay(
    c: &Cluster,
    cfg_path: &Path,
    expected: &[String],
    tag: &str,
    prev_tli: i32,
) -> i32 {
    let data = c.cfg.postgres.data_dir.clone();
    c.start_server(&data);
    let mut db = c.connect(5432);
    let mut want = expected.to_vec();
    want.sort();
    assert_eq!(tags(&mut db), want, "rows before {tag}");
    let tli: i32 = db
        .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
        .unwrap()
        .get(0);
    assert!(
        tli > prev_tli,
        "{tag}: a new timeline: {tli} after {prev_tli}"
    );
    db.execute("INSERT INTO t (tag) VALUES ($1)", &[&tag])
        .unwrap();
    // The archive keeps working: nothing on this timeline collides with an archived object.
    let switched =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.switch_and_wait(5432)));
    if switched.is_err() {
        panic!(
            "{tag}: not archived on timeline {tli}; server log:\n{}",
            fs::read_to_string(c.root.join("data.log")).unwrap_or_default()
        );
    }
    drop(db);
    c.stop_server(&data);
    let again = preseed(c, cfg_path, &[]).ok();
    assert!(
        again.stdout.contains("nothing to do") && !again.stdout.contains("behind"),
        "{tag}: a cleanly stopped server is not behind: {}",
        again.stdout
    );
    tli
}

#[test]
fn snapshot_methods_killed_at_every_step_come_back_on_a_new_timeline() {
    let src = zfs_source("k");
    let c = &src.c;
    let data = c.cfg.postgres.data_dir.clone();
    let mut expected: Vec<String> = ROWS.iter().map(|s| s.to_string()).collect();
    let mut tli = 1;
    for m in [PreseedMethod::Local, PreseedMethod::Syncoid] {
        let mut cfg = c.cfg.clone();
        cfg.preseed.methods = vec![m];
        cfg.preseed.syncoid.source = Some(src.replica_ds.clone());
        let path = c.write_config(&cfg, &format!("kill-{}.toml", m.name()));
        // After the rollback or receive, after the recovery settings (before
        // recovery.signal), after recovery.signal (before the server starts), with the
        // replay's server running, and once it has promoted (crashed with it). For the local
        // method also the replay killed inside PostgreSQL's end of recovery, after it took
        // recovery.signal away and before its end-of-recovery checkpoint: too narrow to hit
        // on purpose, so the test takes the signal away itself (`signal_gone`) from a
        // replay that pg_control still shows in archive recovery.
        let mut holds = vec![
            ("snapshot-in-place", false),
            ("recovery-settings", false),
            ("recovery-signal", false),
            ("replaying", false),
            ("promoted", false),
        ];
        if m == PreseedMethod::Local {
            holds.insert(4, ("replaying", true));
        }
        for (hold, signal_gone) in holds {
            let ctl = pgpitr_pg::PgCtl {
                bins: &c.bins,
                account: c.account.as_ref(),
                data_dir: &data,
            };
            let cluster_state = || {
                ctl.control_field("Database cluster state")
                    .unwrap()
                    .unwrap_or_default()
            };
            // Crashed with the replay's server running, what the next preseed must do is
            // decided by the folder's real state (by the timing, any can happen):
            // recovery.signal still there is an unfinished replay; pg_control in production
            // (or shut down) is a finished promotion (nothing to do); in archive recovery or
            // shutting down without the signal is a replay stopped in its end of recovery.
            // The signal_gone case needs a replay crashed in archive recovery: a replay that
            // finished first is tried again (at most three times).
            let mut state = String::new();
            for attempt in 1..=3 {
                match m {
                    PreseedMethod::Local => empty_data_folder(&data),
                    _ => lose_data_dataset(&src),
                }
                assert!(
                    kill_at_hold(c, &path, hold),
                    "{}: preseed finished before {hold}",
                    m.name()
                );
                if hold != "replaying" && hold != "promoted" {
                    assert!(
                        holds_valid_cluster(c, &data),
                        "{} killed at {hold}: expected the snapshot in place",
                        m.name()
                    );
                    break;
                }
                if signal_gone {
                    let t = Instant::now();
                    while cluster_state() != "in archive recovery"
                        && t.elapsed() < Duration::from_secs(10)
                    {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                crash_what_preseed_started(c, &data);
                state = cluster_state();
                if !signal_gone {
                    break;
                }
                if state == "in archive recovery" {
                    fs::remove_file(data.join("recovery.signal")).unwrap();
                    break;
                }
                assert!(
                    attempt < 3,
                    "the replay finished before the test could crash it in archive recovery, three times (last state {state:?})"
                );
            }
            let signal = data.join("recovery.signal").exists();
            let t0 = Instant::now();
            let r = preseed(c, &path, &[]).ok();
            eprintln!(
                "preseed after {} killed at {hold} (cluster state after the crash: {state:?}, recovery.signal: {signal}): {:.1} s\n{}\n{}",
                m.name(),
                t0.elapsed().as_secs_f64(),
                r.stdout,
                r.stderr
            );
            let expect: &[&str] = match hold {
                "recovery-signal" => &[
                    "interrupted preseed left its replay",
                    "replayed the archive",
                ],
                "replaying" | "promoted" if signal => &[
                    "interrupted preseed left its replay",
                    "replayed the archive",
                ],
                "replaying" | "promoted" if state == "in production" || state == "shut down" => {
                    &["nothing to do"]
                }
                "replaying" | "promoted" => &[
                    "replay of the archive stopped before it finished",
                    "replayed the archive",
                ],
                _ => &["behind the archive", "replayed the archive"],
            };
            assert!(
                expect.iter().all(|e| r.stderr.contains(e)) && !r.stdout.contains("cannot tell"),
                "{} killed at {hold}: {}\n{}",
                m.name(),
                r.stdout,
                r.stderr
            );
            let tag = format!(
                "after-{}-killed-at-{hold}{}",
                m.name(),
                if signal_gone { "-signal-gone" } else { "" }
            );
            tli = live_after_replay(c, &path, &expected, &tag, tli);
            expected.push(tag);
        }
    }
}

// ---- syncoid from a replica over ssh -------------------------------------------------------

/// An sshd of the test's own on 127.0.0.1 (free high port, host key and authorized_keys in
/// a temporary folder, root by key only), killed when dropped.
struct Sshd {
    child: std::process::Child,
    port: u16,
    key: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sshd {
    fn start() -> Sshd {
        require_tool("sshd", "openssh-server openssh-client");
        require_tool("ssh", "openssh-server openssh-client");
        let dir = tempfile::Builder::new()
            .prefix("pgpitr-preseed-sshd-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        for k in ["host_key", "client_key"] {
            sh_ok(&format!(
                "ssh-keygen -q -t ed25519 -N '' -C pgpitr-test -f '{}'",
                d.join(k).display()
            ));
        }
        fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        // The replica's `zfs`, as the ssh session finds it first on PATH: zfs-fuse's
        // `zfs get` has no `-t TYPE`, which syncoid uses to list the source's snapshots (every
        // OpenZFS a real replica runs has it). syncoid 2.1's fallback for a `zfs get` without
        // `-t` puts the ssh command twice in front of it over ssh, so it cannot stand in.
        let remote_bin = d.join("remote-bin");
        fs::create_dir(&remote_bin).unwrap();
        let shim = remote_bin.join("zfs");
        fs::write(
            &shim,
            r#"#!/bin/bash
if [ "$1" = get ]; then
  shift
  args=(); type=""
  while [ $# -gt 0 ]; do
    if [ "$1" = -t ]; then type="$2"; shift 2; continue; fi
    args+=("$1"); shift
  done
  if [ "$type" = snapshot ]; then
    /usr/sbin/zfs get "${args[@]}" | awk -F'	' '$1 ~ /@/'
    exit "${PIPESTATUS[0]}"
  fi
  exec /usr/sbin/zfs get "${args[@]}"
fi
exec /usr/sbin/zfs "$@"
"#,
        )
        .unwrap();
        fs::set_permissions(&shim, fs::Permissions::from_mode(0o755)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = d.join("sshd.log");
        let conf = d.join("sshd_config");
        fs::write(
            &conf,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {0}/host_key\nPidFile {0}/sshd.pid\n\
                 AuthorizedKeysFile {0}/authorized_keys\nPermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nStrictModes no\nLogLevel VERBOSE\n\
                 SetEnv PATH={1}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n",
                d.display(),
                remote_bin.display()
            ),
        )
        .unwrap();
        // sshd's privilege separation folder (the package's service creates it at start).
        fs::create_dir_all("/run/sshd").unwrap();
        let sshd = Command::new("sh")
            .args(["-c", "command -v sshd"])
            .output()
            .unwrap();
        let sshd = String::from_utf8_lossy(&sshd.stdout).trim().to_string();
        let child = Command::new(&sshd)
            .arg("-D")
            .arg("-f")
            .arg(&conf)
            .arg("-E")
            .arg(&log)
            .spawn()
            .unwrap();
        let s = Sshd {
            child,
            port,
            key: d.join("client_key"),
            log,
            _dir: dir,
        };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "sshd did not listen on port {port}: {}",
                fs::read_to_string(&s.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn syncoid_pulls_the_replica_over_ssh() {
    let sshd = Sshd::start();
    let src = zfs_source("s");
    let c = &src.c;
    // A rebuilt node whose data dataset does not exist yet: syncoid creates it.
    destroy_data_dataset(&src);
    let mut cfg = c.cfg.clone();
    cfg.preseed.methods = vec![PreseedMethod::Syncoid];
    cfg.preseed.syncoid.source = Some(format!("root@127.0.0.1:{}", src.replica_ds));
    cfg.preseed.syncoid.options = vec![
        format!("--sshport={}", sshd.port),
        format!("--sshkey={}", sshd.key.display()),
        "--sshoption=StrictHostKeyChecking=no".into(),
        "--sshoption=UserKnownHostsFile=/dev/null".into(),
    ];
    let path = c.write_config(&cfg, "syncoid-ssh.toml");
    // The probe lists the replica's snapshots over the same ssh options.
    let dry = preseed(c, &path, &["--dry-run"]).ok();
    assert!(dry.stdout.contains("syncoid  usable"), "{}", dry.stdout);
    let t0 = Instant::now();
    let r = preseed(c, &path, &[]).ok();
    eprintln!(
        "preseed syncoid over ssh: {:.1} s\n{}",
        t0.elapsed().as_secs_f64(),
        r.stderr
    );
    assert!(
        r.stdout
            .contains(&format!("received root@127.0.0.1:{}", src.replica_ds)),
        "{}",
        r.stdout
    );
    let log = fs::read_to_string(&sshd.log).unwrap_or_default();
    assert!(
        log.contains("Accepted publickey for root"),
        "syncoid went through the test's sshd: {log}"
    );
    let expected: Vec<String> = ROWS.iter().map(|s| s.to_string()).collect();
    live_after_replay(c, &path, &expected, "after-preseed-ssh", 1);
    drop(sshd);
}
