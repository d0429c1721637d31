//! The fast paths of issue 14 against real PostgreSQL WAL: look-ahead archiving (a killed
//! worker, a failing worker, PostgreSQL's .ready/.done left alone) and prefetching restore (a
//! corrupt object, a tampered or stale spool entry, another timeline never handed over).

use pgpitr_integration::{Cluster, ClusterOptions};
use pgpitr_pg::command_as;
use pgpitr_wal::codec::Decoder;
use pgpitr_wal::lookahead::RECORD_DIR;
use pgpitr_wal::prefetch::SPOOL_DIR;
use pgpitr_wal::store::Store;
use pgpitr_wal::WalName;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

/// archive_status's `.ready` files as (name -> (inode, mtime ns)): any rename, removal or
/// rewrite shows. Only `.ready`: while archiving fails PostgreSQL leaves them alone, but a
/// checkpoint may at any time remove `.done` files of segments archived earlier (and an
/// entry may vanish between listing and stat).
fn status_snapshot(data: &Path) -> BTreeMap<String, (u64, i64)> {
    fs::read_dir(data.join("pg_wal/archive_status"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".ready"))
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                (m.ino(), m.mtime_nsec() + m.mtime() * 1_000_000_000),
            ))
        })
        .collect()
}

/// Every `.ready` file of `before` is still there, the same file (the server may add new
/// ones), and none of `segs` is marked `.done`: only PostgreSQL marks a segment archived.
fn untouched(data: &Path, before: &BTreeMap<String, (u64, i64)>, segs: &[String]) {
    let now = status_snapshot(data);
    for (k, v) in before {
        assert_eq!(now.get(k), Some(v), "{k} changed");
    }
    for s in segs {
        assert!(
            !data
                .join(format!("pg_wal/archive_status/{s}.done"))
                .exists(),
            "{s}.done written by someone other than PostgreSQL"
        );
    }
}

fn ready(data: &Path) -> Vec<String> {
    status_snapshot(data)
        .into_keys()
        .filter_map(|n| n.strip_suffix(".ready").map(str::to_string))
        .filter(|n| WalName::parse(n).is_some_and(|w| w.is_segment()))
        .collect()
}

/// Stops archiving (archive_command fails) and writes `n` segments that stay `.ready`.
fn pile_up_ready(c: &Cluster, n: usize) -> Vec<String> {
    let mut db = c.connect(5432);
    for sql in [
        "ALTER SYSTEM SET archive_command = 'false'",
        "SELECT pg_reload_conf()",
        "CREATE TABLE IF NOT EXISTS filler (x text)",
    ] {
        db.batch_execute(sql).unwrap();
    }
    // The archiver takes the new command asynchronously: wait until it has failed once
    // (a switch it may still archive with the old command is not counted below).
    let failed = |db: &mut pgpitr_pg::Client| -> i64 {
        db.query_one("SELECT failed_count FROM pg_stat_archiver", &[])
            .unwrap()
            .get(0)
    };
    let before = failed(&mut db);
    let start = Instant::now();
    while failed(&mut db) == before {
        db.batch_execute("SELECT pg_switch_wal(); CREATE TABLE IF NOT EXISTS filler2 (x int); INSERT INTO filler2 VALUES (1)")
            .unwrap();
        db.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "archive_command = 'false' never failed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let start = Instant::now();
    while ready(c.data()).len() < n {
        db.batch_execute(
            "INSERT INTO filler SELECT repeat(md5(random()::text), 30) FROM generate_series(1, 20000)",
        )
        .unwrap();
        db.batch_execute("SELECT pg_switch_wal()").unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no .ready piled up"
        );
    }
    ready(c.data())
}

fn resume_archiving(c: &Cluster) {
    let mut db = c.connect(5432);
    db.batch_execute("ALTER SYSTEM RESET archive_command")
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    let seg: String = db
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .unwrap()
        .get(0);
    pgpitr_demo::wait_archived(&mut db, &seg).unwrap();
}

/// Runs a workspace binary as the server's account in the data folder, as PostgreSQL does.
fn as_server(c: &Cluster, cfg: &Path, tool: &str, args: &[&str]) -> std::process::Command {
    let mut cmd = command_as(&c.tools.join(tool), c.account.as_ref());
    cmd.arg("--config")
        .arg(cfg)
        .args(args)
        .current_dir(c.data());
    cmd
}

fn run(mut cmd: std::process::Command) -> Output {
    cmd.output().unwrap()
}

fn config_with(c: &Cluster, parallel: usize, prefetch: usize, name: &str) -> PathBuf {
    let mut cfg = c.cfg.clone();
    cfg.archive.parallel = Some(parallel);
    cfg.restore.prefetch = prefetch;
    let p = c.write_config(&cfg, name);
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    p
}

/// The object for `name` decodes to exactly the bytes of `file`.
fn archived_as(store: &Store, name: &str, file: &Path) -> bool {
    let Some(obj) = store.find(&WalName::parse(name).unwrap()).unwrap() else {
        return false;
    };
    let mut out = Vec::new();
    store
        .decode_object(&obj, &Decoder::plain(), &mut out)
        .unwrap();
    out == fs::read(file).unwrap()
}

fn records(data: &Path) -> Vec<(String, String)> {
    fs::read_dir(data.join("pg_wal").join(RECORD_DIR))
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let text = fs::read_to_string(e.path()).unwrap();
                    let sha = text.split_whitespace().next().unwrap_or("").to_string();
                    (e.file_name().to_string_lossy().into_owned(), sha)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn lookahead_killed_and_failing_workers_never_count_as_archived() {
    let c = Cluster::start(ClusterOptions::default());
    let store = Store::new(&c.cfg.archive.dir);
    let cfg = config_with(&c, 4, 0, "lookahead.toml");
    let segs = pile_up_ready(&c, 9);
    let before = status_snapshot(c.data());
    let pg_wal = c.data().join("pg_wal");

    // 1. Kill the call (and so its look-ahead workers) as soon as a worker has started writing.
    let first = segs[0].clone();
    let shard = store
        .dir()
        .join("wal")
        .join(WalName::parse(&first).unwrap().shard());
    let mut child = as_server(
        &c,
        &cfg,
        "archive-wal",
        &[&format!("pg_wal/{first}"), &first],
    )
    .spawn()
    .unwrap();
    let t0 = Instant::now();
    loop {
        let writing = fs::read_dir(&shard)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
            })
            .unwrap_or(false);
        if writing || t0.elapsed() > Duration::from_secs(20) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Whatever was published is the exact segment; every record names a durable object.
    for s in &segs {
        if store.find(&WalName::parse(s).unwrap()).unwrap().is_some() {
            assert!(archived_as(&store, s, &pg_wal.join(s)), "{s}");
        }
    }
    for (name, sha) in records(c.data()) {
        let obj = store.find(&WalName::parse(&name).unwrap()).unwrap();
        assert_eq!(obj.map(|o| o.sha256), Some(sha), "record for {name}");
    }
    untouched(c.data(), &before, &segs);

    // 2. A worker that fails for real (its file unreadable by the server's account) leaves no
    // record; the call for that segment fails itself, then succeeds once the fault is gone.
    let (n, bad) = (&segs[4], &segs[6]);
    fs::set_permissions(pg_wal.join(bad), fs::Permissions::from_mode(0o000)).unwrap();
    let out = run(as_server(
        &c,
        &cfg,
        "archive-wal",
        &[&format!("pg_wal/{n}"), n],
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs: Vec<String> = records(c.data()).into_iter().map(|r| r.0).collect();
    assert!(recs.contains(&segs[5]), "look-ahead recorded {recs:?}");
    assert!(!recs.contains(bad), "failed worker recorded");
    assert!(store.find(&WalName::parse(bad).unwrap()).unwrap().is_none());
    let out = run(as_server(
        &c,
        &cfg,
        "archive-wal",
        &[&format!("pg_wal/{bad}"), bad],
    ));
    assert!(!out.status.success(), "unreadable {bad} reported archived");
    fs::set_permissions(pg_wal.join(bad), fs::Permissions::from_mode(0o600)).unwrap();

    // 3. Every segment's own call succeeds; a recorded one is answered from its record.
    for s in &segs {
        let out = run(as_server(
            &c,
            &cfg,
            "archive-wal",
            &[&format!("pg_wal/{s}"), s],
        ));
        assert!(
            out.status.success(),
            "{s}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(archived_as(&store, s, &pg_wal.join(s)), "{s}");
    }
    assert!(
        !records(c.data()).iter().any(|(n, _)| segs.contains(n)),
        "records are consumed by their call"
    );
    // pgpitr never touched PostgreSQL's status files: the same .ready files, same inodes.
    untouched(c.data(), &before, &segs);
    resume_archiving(&c);
    // PostgreSQL itself archives them after its own (instant) calls: the archiver goes in
    // order and has passed a later segment, so none is still waiting.
    let waiting = ready(c.data());
    for s in &segs {
        assert!(!waiting.contains(s), "{s} still .ready");
    }
}

/// A directory that looks like a data folder in recovery, for driving restore-wal directly.
fn recovering_dir(c: &Cluster, name: &str) -> PathBuf {
    let d = c.root.join(name);
    fs::create_dir_all(d.join("pg_wal")).unwrap();
    fs::write(d.join("recovery.signal"), "").unwrap();
    c.chown(&d);
    d
}

fn restore_wal(c: &Cluster, cfg: &Path, dir: &Path, name: &str) -> Output {
    let mut cmd = command_as(&c.tools.join("restore-wal"), c.account.as_ref());
    cmd.arg("--config")
        .arg(cfg)
        .args([name, "pg_wal/RECOVERYXLOG"])
        .current_dir(dir);
    cmd.output().unwrap()
}

fn spool(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir.join("pg_wal").join(SPOOL_DIR))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.') && n != "want")
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn wait_spool(dir: &Path, want: usize) -> Vec<String> {
    let t0 = Instant::now();
    loop {
        let s = spool(dir);
        if s.len() >= want || t0.elapsed() > Duration::from_secs(30) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn prefetch_hands_over_only_verified_files_of_the_exact_name() {
    let c = Cluster::start(ClusterOptions::default());
    let store = Store::new(&c.cfg.archive.dir);
    let segs = pile_up_ready(&c, 8);
    resume_archiving(&c);
    let pg_wal = c.data().join("pg_wal");
    let cfg = config_with(&c, 1, 3, "prefetch.toml");
    let dir = recovering_dir(&c, "recovering");
    let xlog = dir.join("pg_wal/RECOVERYXLOG");

    // Corrupt the archived object of segs[2]: a valid zstd frame of other bytes, so only the
    // checksum can tell.
    let obj2 = store
        .find(&WalName::parse(&segs[2]).unwrap())
        .unwrap()
        .unwrap();
    let enc = pgpitr_wal::codec::Encoder::new(pgpitr_config::Compression::Zstd, 3, None).unwrap();
    let mut other = Vec::new();
    enc.encode(&fs::read(pg_wal.join(&segs[3])).unwrap()[..], &mut other)
        .unwrap();
    fs::write(&obj2.path, other).unwrap();

    // The call for segs[0] starts the prefetcher: segs[1] lands in the spool, segs[2] never
    // does (its checksum fails); whatever else is there is the exact segment it is named for.
    let out = restore_wal(&c, &cfg, &dir, &segs[0]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read(&xlog).unwrap(),
        fs::read(pg_wal.join(&segs[0])).unwrap()
    );
    let t0 = Instant::now();
    while !spool(&dir)
        .iter()
        .any(|e| e.starts_with(&format!("{}-", segs[1])))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "segs[1] not prefetched"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1000));
    let sp = spool(&dir);
    assert!(
        !sp.iter().any(|e| e.starts_with(&format!("{}-", segs[2]))),
        "corrupt object spooled: {sp:?}"
    );
    for e in &sp {
        let seg = e.split('-').next().unwrap();
        let spooled = fs::read(dir.join("pg_wal").join(SPOOL_DIR).join(e)).unwrap();
        assert!(spooled == fs::read(pg_wal.join(seg)).unwrap(), "{e}");
    }
    let sp: Vec<String> = sp
        .into_iter()
        .filter(|e| e.starts_with(&format!("{}-", segs[1])))
        .collect();

    // Tamper with the spooled segs[1]: another segment's bytes under its name. Never handed.
    let entry = dir.join("pg_wal").join(SPOOL_DIR).join(&sp[0]);
    fs::write(&entry, fs::read(pg_wal.join(&segs[5])).unwrap()).unwrap();
    fs::remove_file(&xlog).unwrap();
    let out = restore_wal(&c, &cfg, &dir, &segs[1]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read(&xlog).unwrap(),
        fs::read(pg_wal.join(&segs[1])).unwrap()
    );

    // The corrupt object: exit 126 (fatal for PostgreSQL), nothing handed over.
    fs::remove_file(&xlog).unwrap();
    let out = restore_wal(&c, &cfg, &dir, &segs[2]);
    assert_eq!(
        out.status.code(),
        Some(126),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!xlog.exists());

    // A stale entry (a sha that is not the archive's object) is removed, never used.
    let s4 = WalName::parse(&segs[4]).unwrap();
    let stale = dir
        .join("pg_wal")
        .join(SPOOL_DIR)
        .join(format!("{s4}-{}", "0".repeat(64)));
    // Written and chowned aside, then renamed in: a running prefetcher may remove it at once.
    let aside = c.root.join("stale-entry");
    fs::write(&aside, fs::read(pg_wal.join(&segs[6])).unwrap()).unwrap();
    c.chown(&aside);
    fs::rename(&aside, &stale).unwrap();
    let out = restore_wal(&c, &cfg, &dir, &segs[3]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read(&xlog).unwrap(),
        fs::read(pg_wal.join(&segs[3])).unwrap()
    );
    let t0 = Instant::now();
    while stale.exists() {
        assert!(t0.elapsed() < Duration::from_secs(10), "stale entry kept");
        std::thread::sleep(Duration::from_millis(20));
    }
    fs::remove_file(&xlog).unwrap();
    let out = restore_wal(&c, &cfg, &dir, &segs[4]);
    assert!(out.status.success());
    assert_eq!(
        fs::read(&xlog).unwrap(),
        fs::read(pg_wal.join(&segs[4])).unwrap()
    );

    // Another timeline: timeline 2 branched off inside segs[6]. A request on timeline 1 never
    // prefetches segs[6] or later of timeline 1, and a request for timeline 2's name of a
    // segment is never answered with timeline 1's file.
    let s6 = WalName::parse(&segs[6]).unwrap();
    let seg_size = 16u64 << 20;
    let switch = s6.segno(seg_size).unwrap() * seg_size + 0x1000;
    let hist = c.root.join("00000002.history");
    fs::write(
        &hist,
        format!("1\t{:X}/{:X}\tbench branch\n", switch >> 32, switch as u32),
    )
    .unwrap();
    c.chown(&hist);
    let out = run(as_server(
        &c,
        &c.cfg_path,
        "archive-wal",
        &[hist.to_str().unwrap(), "00000002.history"],
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir2 = recovering_dir(&c, "recovering2");
    let out = restore_wal(&c, &cfg, &dir2, &segs[4]);
    assert!(out.status.success());
    fs::remove_file(dir2.join("pg_wal/RECOVERYXLOG")).unwrap();
    let sp = wait_spool(&dir2, 1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(spool(&dir2), sp);
    assert_eq!(sp.len(), 1, "prefetched past the branch point: {sp:?}");
    assert!(sp[0].starts_with(&format!("{}-", segs[5])), "{sp:?}");
    let tl2 = WalName::segment(2, s6.segno(seg_size).unwrap() - 1, seg_size).to_string();
    let out = restore_wal(&c, &cfg, &dir2, &tl2);
    assert_eq!(
        out.status.code(),
        Some(1),
        "timeline 2's {tl2} is not archived"
    );
    assert!(!dir2.join("pg_wal/RECOVERYXLOG").exists());

    // End of recovery: the prefetcher removes the spool once recovery.signal is gone.
    fs::remove_file(dir2.join("recovery.signal")).unwrap();
    let out = restore_wal(&c, &cfg, &dir2, &segs[5]);
    assert!(out.status.success());
    let t0 = Instant::now();
    while dir2.join("pg_wal").join(SPOOL_DIR).exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "spool left after recovery"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
