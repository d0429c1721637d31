//! archive-wal and restore-wal against real WAL segments: repeated pushes, foreign clusters,
//! truncation, a kill mid-write, missing files, corruption, and interoperability with the
//! stock `age` and `zstd` command-line tools.

use pgpitr_integration::{require_tool, Cluster, ClusterOptions, Run};
use pgpitr_wal::store::Store;
use pgpitr_wal::WalName;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Forces a switch and returns a copy of a completed segment from pg_wal.
fn completed_segment(c: &Cluster, dest: &Path) -> (PathBuf, String) {
    let mut db = c.connect(5432);
    db.batch_execute("CREATE TABLE IF NOT EXISTS filler (x text); INSERT INTO filler SELECT repeat('x', 100) FROM generate_series(1, 1000)")
        .unwrap();
    let name: String = db
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .unwrap()
        .get(0);
    pgpitr_demo::wait_archived(&mut db, &name).unwrap();
    let p = dest.join(&name);
    fs::copy(c.data().join("pg_wal").join(&name), &p).unwrap();
    (p, name)
}

fn objects_named(store: &Store, name: &str) -> Vec<PathBuf> {
    let w = WalName::parse(name).unwrap();
    let dir = store.dir().join("wal").join(w.shard());
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().unwrap().to_string_lossy().contains(name))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn repeated_foreign_truncated_and_renamed_pushes() {
    let c = Cluster::start(ClusterOptions::default());
    let work = tempfile::tempdir().unwrap();
    let (seg, name) = completed_segment(&c, work.path());
    let store = Store::new(&c.cfg.archive.dir);
    let obj = store
        .find(&WalName::parse(&name).unwrap())
        .unwrap()
        .expect("archived by the server");
    let mtime = fs::metadata(&obj.path).unwrap().modified().unwrap();

    // Same name, same bytes: success without rewriting.
    c.tool("archive-wal", &[seg.to_str().unwrap(), &name]).ok();
    assert_eq!(fs::metadata(&obj.path).unwrap().modified().unwrap(), mtime);

    // Same name, different bytes: refused, both checksums named, stored object untouched.
    let mut bytes = fs::read(&seg).unwrap();
    bytes[100_000] ^= 0xff;
    let changed = work.path().join("changed").join(&name);
    fs::create_dir_all(changed.parent().unwrap()).unwrap();
    fs::write(&changed, &bytes).unwrap();
    let r = c.tool("archive-wal", &[changed.to_str().unwrap(), &name]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains(&obj.sha256), "{}", r.stderr);
    assert!(r.stderr.contains("different contents"), "{}", r.stderr);
    assert_eq!(r.stderr.trim().lines().count(), 1, "one line: {}", r.stderr);
    assert_eq!(objects_named(&store, &name), vec![obj.path.clone()]);
    assert_eq!(fs::metadata(&obj.path).unwrap().modified().unwrap(), mtime);

    // A segment from another cluster.
    let other = Cluster::start(ClusterOptions::default());
    let (oseg, oname) = completed_segment(&other, work.path());
    let foreign = work.path().join("foreign");
    fs::create_dir_all(&foreign).unwrap();
    // Give it a name this archive has not seen so only the identity check can refuse it.
    let fake = WalName::parse(&oname).unwrap();
    let r = c.tool("archive-wal", &[oseg.to_str().unwrap(), &fake.to_string()]);
    if store.find(&fake).unwrap().is_none() {
        assert_ne!(r.code, 0);
        assert!(r.stderr.contains("another cluster"), "{}", r.stderr);
    } else {
        // Both clusters started at the same segment: the name is taken, which must still fail.
        assert_ne!(r.code, 0, "{}", r.stderr);
    }

    // A truncated segment.
    let short = work.path().join("short");
    fs::create_dir_all(&short).unwrap();
    let next = WalName::segment(1, 4000, 16 << 20).to_string();
    fs::write(short.join(&next), &fs::read(&seg).unwrap()[..1 << 20]).unwrap();
    let r = c.tool("archive-wal", &[short.join(&next).to_str().unwrap(), &next]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("truncated"), "{}", r.stderr);
    assert!(objects_named(&store, &next).is_empty());

    // A full segment under the wrong name.
    let r = c.tool("archive-wal", &[seg.to_str().unwrap(), &next]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("renamed"), "{}", r.stderr);

    // A mistyped restore_command stops recovery (fatal exit code), it is not "not archived".
    let r = Run::from(
        Command::new(c.tools.join("restore-wal"))
            .arg("--bogus")
            .output()
            .unwrap(),
    );
    assert_eq!(r.code, 126, "{}", r.stderr);
    // restore-wal for a file that is not archived: exit 1, quietly.
    let r = c.tool(
        "restore-wal",
        &[&next, work.path().join("x").to_str().unwrap()],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    assert!(!work.path().join("x").exists());
}

#[test]
fn killed_mid_write_leaves_nothing_complete_and_retry_succeeds() {
    // Level 19 makes one push take long enough to be caught mid-write.
    let c = Cluster::start(ClusterOptions {
        level: 19,
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    let (seg, _) = completed_segment(&c, work.path());
    let name = WalName::segment(1, 4000, 16 << 20);
    // Make the copy a valid segment for the new name: patch its page address.
    let mut bytes = fs::read(&seg).unwrap();
    bytes[8..16].copy_from_slice(&(4000u64 * (16 << 20)).to_le_bytes());
    let src = work.path().join(name.to_string());
    fs::write(&src, &bytes).unwrap();
    let shard = c.cfg.archive.dir.join("wal").join(name.shard());

    let mut child = Command::new(c.tools.join("archive-wal"))
        .arg("--config")
        .arg(&c.cfg_path)
        .arg(&src)
        .arg(name.to_string())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let tmp_seen = fs::read_dir(&shard)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
            })
            .unwrap_or(false);
        if tmp_seen {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "archive-wal finished before it could be killed"
        );
        assert!(start.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL: no cleanup code runs
    child.wait().unwrap();
    let store = Store::new(&c.cfg.archive.dir);
    // Nearly always the kill lands mid-write and nothing is listed. On a loaded machine the
    // push may have finished between the look and the kill: then what is listed must be the
    // whole segment, never a part of it.
    match store.find(&name).unwrap() {
        None => assert!(store.list().unwrap().iter().all(|o| o.name != name)),
        Some(obj) => {
            let mut out = Vec::new();
            store
                .decode_object(&obj, &pgpitr_wal::codec::Decoder::plain(), &mut out)
                .unwrap();
            assert!(out == bytes, "a killed push left a partial object");
        }
    }

    // The retry succeeds and restores to identical bytes.
    c.tool("archive-wal", &[src.to_str().unwrap(), &name.to_string()])
        .ok();
    let back = work.path().join("back");
    c.tool("restore-wal", &[&name.to_string(), back.to_str().unwrap()])
        .ok();
    assert_eq!(fs::read(&back).unwrap(), bytes);
}

#[test]
fn age_and_zstd_cli_read_objects_and_corruption_stops_recovery() {
    require_tool("age", "age");
    require_tool("zstd", "zstd");
    let c = Cluster::start(ClusterOptions {
        encrypted: true,
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    let mut db = c.connect(5432);
    db.batch_execute("CREATE TABLE t (id serial, tag text)")
        .unwrap();
    c.basebackup();
    db.batch_execute("INSERT INTO t (tag) VALUES ('after-backup')")
        .unwrap();
    let (seg, name) = completed_segment(&c, work.path());
    db.batch_execute("INSERT INTO t (tag) VALUES ('later')")
        .unwrap();
    let (_, newest) = completed_segment(&c, work.path());
    let store = Store::new(&c.cfg.archive.dir);
    let obj = store
        .find(&WalName::parse(&name).unwrap())
        .unwrap()
        .unwrap();
    assert!(obj.path.to_string_lossy().ends_with(".zst.age"));

    // Disaster-recovery path with stock tools only.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "age -d -i '{}' '{}' | zstd -d -q -c",
            c.identity.as_ref().unwrap().display(),
            obj.path.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.stdout,
        fs::read(&seg).unwrap(),
        "age | zstd -d gives the original bytes"
    );

    // Flip a byte inside a stored object: restore-wal refuses with the exit code PostgreSQL
    // treats as fatal, and a restore that needs it stops instead of promoting early.
    flip_middle_byte(&obj.path);
    let r: Run = c.tool(
        "restore-wal",
        &[&name, work.path().join("y").to_str().unwrap()],
    );
    assert_eq!(r.code, 126, "{}", r.stderr);
    assert!(r.stderr.contains(&name), "{}", r.stderr);
    assert!(!work.path().join("y").exists());

    let into = c.root.join("restored");
    let r = c.restore("latest", &into, 5433, &[]);
    assert_ne!(r.code, 0, "restore must fail: {}", r.stdout);
    assert!(r.stderr.contains("stopped during recovery"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&name),
        "names the damaged segment: {}",
        r.stderr
    );
    c.discard(&into);

    // Damage the newest segment too: the plan reads it before anything is touched.
    flip_middle_byte(
        &store
            .find(&WalName::parse(&newest).unwrap())
            .unwrap()
            .unwrap()
            .path,
    );
    let r = c.restore("latest", &into, 5434, &[]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains(&newest) && r.stderr.contains("damaged"),
        "{}",
        r.stderr
    );
    assert!(!into.exists());
}

fn flip_middle_byte(p: &Path) {
    let mut stored = fs::read(p).unwrap();
    let mid = stored.len() / 2;
    stored[mid] ^= 0x01;
    fs::write(p, &stored).unwrap();
}
