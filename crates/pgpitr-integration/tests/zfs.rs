//! ZFS on a real zfs-fuse pool (a sparse file): datasets created with tuned properties
//! (probing what this old ZFS supports), drift reported and fixed only with --fix, a safety
//! snapshot before a restore into a dataset, rollback, and "never destroys a dataset". The
//! PostgreSQL data folder on a dataset passes the sentinel gate. One test: runs serially.

use pgpitr_config::ZfsConfig;
use pgpitr_integration::{rows_around_target, tags, Cluster, ClusterOptions, Placement};
use pgpitr_zfs::Zfs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

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

impl Pool {
    fn create() -> Pool {
        pgpitr_integration::ensure_zfs_fuse();
        let dir = tempfile::Builder::new()
            .prefix("pgpitr-zfs-")
            .tempdir()
            .unwrap();
        let file = dir.path().join("pool.img");
        let mnt = dir.path().join("mnt");
        let name = format!("pgpitrt{}", std::process::id());
        let out = sh(&format!(
            "truncate -s 768M '{}' && zpool create -f -m '{}' {name} '{}'",
            file.display(),
            mnt.display(),
            file.display()
        ));
        assert!(
            out.status.success(),
            "zpool create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
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
        // Test cleanup (pgpitr itself never destroys a dataset or a pool). Retry while
        // zfs-fuse still sees the mounts busy just after the servers stopped.
        for _ in 0..20 {
            let out = sh(&format!("zpool destroy -f {}", self.name));
            if out.status.success() {
                break;
            }
            eprintln!(
                "zpool destroy {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

fn prop(ds: &str, p: &str) -> String {
    Zfs::default().get(ds, &[p]).unwrap()[p].value.clone()
}

#[test]
fn datasets_drift_snapshots_and_postgres_on_zfs() {
    let pool = Pool::create();
    let zfs = Zfs::default();
    let data_ds = format!("{}/pg/data", pool.name);
    let wal_ds = format!("{}/pg/wal", pool.name);
    let zcfg = ZfsConfig {
        data_dataset: data_ds.clone(),
        wal_dataset: wal_ds.clone(),
        data_properties: Default::default(),
        wal_properties: Default::default(),
    };
    // Create the datasets the way `pgpitr zfs ensure` does, before the cluster exists.
    let mut cfg = pgpitr_config::Config::parse(
        Path::new("x.toml"),
        &format!(
            "instance = \"z\"\n[postgres]\ndata_dir = \"{0}/data\"\n[archive]\ndir = \"{0}/wal\"\n[backup]\ndir = \"/nonexistent\"\n",
            pool.mnt.display()
        ),
    )
    .unwrap();
    cfg.zfs = Some(zcfg.clone());
    let states = pgpitr_zfs::ensure_instance(&cfg, false).unwrap();
    assert!(states.iter().all(|s| s.created));
    assert_eq!(prop(&data_ds, "recordsize"), "8192");
    assert_eq!(prop(&wal_ds, "recordsize"), "131072");
    assert_eq!(prop(&data_ds, "atime"), "off");
    assert_eq!(prop(&data_ds, "logbias"), "latency");
    assert_eq!(prop(&wal_ds, "logbias"), "throughput");
    // zfs-fuse has no lz4: the probe falls back to what it has, and says so.
    let allowed = zfs.allowed_values();
    if !allowed
        .get("compression")
        .map(|v| v.iter().any(|a| a == "lz4"))
        .unwrap_or(true)
    {
        assert_eq!(prop(&data_ds, "compression"), "on");
        assert!(states[0].properties.iter().any(|p| p
            .note
            .as_deref()
            .unwrap_or("")
            .contains("lz4")));
    }

    let c = Cluster::start(ClusterOptions {
        placed: Some(Placement {
            data_dir: cfg.postgres.data_dir.clone(),
            archive_dir: cfg.archive.dir.clone(),
            zfs: Some(zcfg),
        }),
        ..Default::default()
    });
    // The binary agrees: nothing to do.
    let r = c.tool("pgpitr", &["zfs", "ensure"]).ok();
    assert!(!r.stdout.contains("DRIFT"), "{}", r.stdout);

    // Drift is reported (exit 1) and left alone; --fix sets it.
    zfs.set(&data_ds, "atime", "on").unwrap();
    let r = c.tool("pgpitr", &["zfs", "ensure"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.contains("atime=off  DRIFT: is on") && r.stderr.contains("--fix"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    assert_eq!(prop(&data_ds, "atime"), "on");
    let r = c.tool("pgpitr", &["zfs", "ensure", "--fix", "--json"]).ok();
    let schemas = pgpitr_integration::json_schema::schemas();
    pgpitr_integration::json_schema::assert_valid(&schemas, "pgpitr zfs ensure", &r.stdout);
    assert!(r.stdout.contains("\"fixed\": true"));
    assert_eq!(prop(&data_ds, "atime"), "off");

    // PostgreSQL on the dataset passes the sentinel gate, restored into another dataset.
    let mut db = c.connect(5432);
    db.batch_execute("CREATE TABLE t (id serial, tag text); INSERT INTO t (tag) VALUES ('base')")
        .unwrap();
    c.basebackup();
    let target = rows_around_target(&mut db, "before", "after");
    c.switch_and_wait(5432);

    let restored_ds = format!("{}/pg/restored", pool.name);
    let restored = pool.mnt.join("restored");
    zfs.create(
        &restored_ds,
        &[("mountpoint".into(), restored.display().to_string())],
    )
    .unwrap();
    let r = c.restore(&target.to_rfc3339(), &restored, 5433, &[]).ok();
    let snaps = zfs.snapshots(&restored_ds).unwrap();
    assert_eq!(snaps.len(), 1, "a safety snapshot before the restore");
    assert!(
        r.stderr.contains(&format!("zfs rollback {}", snaps[0])),
        "{}",
        r.stderr
    );
    let mut rdb = c.connect(5433);
    assert_eq!(tags(&mut rdb), vec!["base", "before"]);
    drop(rdb);
    c.stop_server(&restored);

    // Snapshot, change, roll back.
    let s2 = zfs.snapshot(&restored_ds, "drill").unwrap();
    std::fs::write(restored.join("scratch"), "x").unwrap();
    zfs.rollback(&s2).unwrap();
    assert!(!restored.join("scratch").exists());
    // Rolling back past a newer snapshot would destroy it: refused.
    let err = zfs.rollback(&snaps[0]).unwrap_err().to_string();
    assert!(err.contains("not the newest"), "{err}");
    // Only snapshots are ever destroyed.
    assert!(zfs.destroy_snapshot(&restored_ds).is_err());
    zfs.destroy_snapshot(&s2).unwrap();
    assert!(
        zfs.exists(&restored_ds).unwrap()
            && zfs.exists(&data_ds).unwrap()
            && zfs.exists(&wal_ds).unwrap()
    );
    drop(db);
}
