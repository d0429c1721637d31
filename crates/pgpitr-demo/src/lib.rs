//! `pgpitr demo`: the whole story on a throw-away cluster. Creates a PostgreSQL cluster that
//! archives through archive-wal, takes a base backup, writes timestamped rows, runs a
//! `DELETE` without `WHERE`, finds it in the WAL with `pgpitr incidents`, restores to just
//! before it and shows every row back.

use chrono::{DateTime, Utc};
use pgpitr_config::{
    ArchiveConfig, BackupConfig, Compression, Config, PostgresConfig, ToolsConfig,
};
use pgpitr_pg::{command_as, run, Account, Bins, Endpoint, PgCtl};
use pgpitr_restore::{execute, plan, ExecuteOptions, Inventory, PlanRequest, Target};
use pgpitr_wal::codec::Decoder;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Pg(#[from] pgpitr_pg::PgError),
    #[error(transparent)]
    Backup(#[from] pgpitr_backup::BackupError),
    #[error(transparent)]
    Restore(#[from] pgpitr_restore::RestoreError),
    #[error(transparent)]
    Io(#[from] pgpitr_durable::IoError),
    #[error(transparent)]
    Incidents(#[from] pgpitr_incidents::IncidentsError),
    #[error("{0}")]
    Failed(String),
}

type Result<T> = std::result::Result<T, DemoError>;

use pgpitr_durable::io_context as io_err;

pub struct DemoOptions {
    /// Keep the temporary folder (and print where it is).
    pub keep: bool,
    /// Folder holding archive-wal and restore-wal.
    pub tools_dir: PathBuf,
    /// Rows to write before the accident.
    pub rows: usize,
}

/// What the demo proved.
#[derive(Debug)]
pub struct DemoOutcome {
    pub rows_written: usize,
    pub rows_after_delete: i64,
    pub rows_restored: i64,
    pub target: DateTime<Utc>,
    pub folder: Option<PathBuf>,
}

struct Narrator {
    start: Instant,
}

impl Narrator {
    fn say(&self, msg: &str) {
        println!("[{:>6.2}s] {msg}", self.start.elapsed().as_secs_f64());
    }
}

/// Stops servers and removes the folder on every exit path (unless kept).
struct Cleanup {
    bins: Bins,
    account: Option<Account>,
    data_dirs: Vec<PathBuf>,
    folder: Option<tempfile::TempDir>,
    keep: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for d in &self.data_dirs {
            let ctl = PgCtl {
                bins: &self.bins,
                account: self.account.as_ref(),
                data_dir: d,
            };
            let _ = pgpitr_restore::access::release(&ctl);
        }
        if let Some(f) = self.folder.take() {
            if self.keep {
                let _ = f.keep();
            }
        }
    }
}

pub fn run_demo(opts: &DemoOptions) -> Result<DemoOutcome> {
    let n = Narrator {
        start: Instant::now(),
    };
    let bins = Bins::discover(None)?;
    let version = bins.major_version()?;
    let account = Account::for_server("postgres")?;
    n.say(&format!(
        "PostgreSQL {version} from {}{}",
        bins.dir.display(),
        account
            .as_ref()
            .map(|a| format!(" (running as root: the servers run as `{}`)", a.name))
            .unwrap_or_default()
    ));
    let tmp = tempfile::Builder::new()
        .prefix("pgpitr-demo-")
        .tempdir()
        .map_err(io_err("create a temporary folder"))?;
    let root = tmp.path().to_path_buf();
    let mut cleanup = Cleanup {
        bins: bins.clone(),
        account: account.clone(),
        data_dirs: Vec::new(),
        folder: Some(tmp),
        keep: opts.keep,
    };
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).map_err(io_err("chmod"))?;
    let dirs = ["data", "archive", "backups", "sock", "bin"];
    for d in dirs {
        fs::create_dir(root.join(d)).map_err(io_err(format!("create {d}")))?;
    }
    // The server account must be able to run the tools: copy them into the folder.
    let tools = root.join("bin");
    for t in ["archive-wal", "restore-wal"] {
        let src = opts.tools_dir.join(t);
        fs::copy(&src, tools.join(t)).map_err(io_err(format!(
            "copy {} (build the workspace first: cargo build --release)",
            src.display()
        )))?;
    }
    let cfg = Config {
        instance: "demo".into(),
        postgres: PostgresConfig {
            bin_dir: Some(bins.dir.clone()),
            data_dir: root.join("data"),
            port: 5432,
            socket_dir: root.join("sock"),
            user: "postgres".into(),
            os_user: "postgres".into(),
            service: None,
        },
        archive: ArchiveConfig {
            dir: root.join("archive"),
            compression: Compression::Zstd,
            level: 3,
            parallel: None,
        },
        backup: BackupConfig {
            dir: root.join("backups"),
        },
        encryption: None,
        metrics: None,
        pgpitr: ToolsConfig {
            bin_dir: Some(tools.clone()),
        },
        health: Default::default(),
        offsite: None,
        zfs: None,
        databases: Default::default(),
        provision: Default::default(),
        retention: None,
        drill: Default::default(),
        restore: Default::default(),
        preseed: Default::default(),
    };
    let cfg_path = root.join("pgpitr.toml");
    fs::write(&cfg_path, cfg.to_toml()).map_err(io_err("write config"))?;
    if let Some(a) = &account {
        a.chown_tree(&root)?;
    }
    n.say(&format!("working in {}", root.display()));

    let data = cfg.postgres.data_dir.clone();
    let mut initdb = command_as(&bins.path("initdb"), account.as_ref());
    initdb
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-instructions",
        ])
        .current_dir(&root);
    run(&mut initdb)?;
    let archive_cmd = format!(
        "\"{}\" --config \"{}\" %p %f",
        tools.join("archive-wal").display(),
        cfg_path.display()
    );
    let extra = format!(
        "\n# pgpitr demo\nlisten_addresses = ''\nport = 5432\nunix_socket_directories = '{}'\n\
         wal_level = replica\narchive_mode = on\narchive_command = '{}'\n",
        cfg.postgres.socket_dir.display(),
        archive_cmd.replace('\'', "''")
    );
    append(&data.join("postgresql.conf"), &extra)?;
    let ctl = PgCtl {
        bins: &bins,
        account: account.as_ref(),
        data_dir: &data,
    };
    ctl.start(&root.join("server.log"), "", true)?;
    cleanup.data_dirs.push(data.clone());
    n.say("created a cluster that archives every WAL segment through archive-wal");

    let ep = Endpoint {
        socket_dir: cfg.postgres.socket_dir.clone(),
        port: 5432,
        user: "postgres".into(),
    };
    let mut db = ep.wait_connect("postgres", Duration::from_secs(30))?;
    let q = |db: &mut pgpitr_pg::Client, sql: &str| {
        db.batch_execute(sql).map_err(pgpitr_pg::PgError::from)
    };
    q(
        &mut db,
        "CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL, \
         created timestamptz NOT NULL DEFAULT clock_timestamp())",
    )?;

    let info = pgpitr_backup::take(&cfg, &mut |_| {})?;
    n.say(&format!(
        "base backup {} taken ({} of data, {} stored)",
        info.id,
        pgpitr_restore::inventory::human_bytes(info.raw_bytes()),
        pgpitr_restore::inventory::human_bytes(info.stored_bytes())
    ));

    let items = [
        "espresso machine",
        "grinder",
        "kettle",
        "scale",
        "filters",
        "mugs",
        "beans",
    ];
    for i in 0..opts.rows {
        let item = items[i % items.len()];
        db.execute("INSERT INTO orders (item) VALUES ($1)", &[&item])
            .map_err(pgpitr_pg::PgError::from)?;
        std::thread::sleep(Duration::from_millis(150));
    }
    n.say(&format!("wrote {} orders, one every 150 ms", opts.rows));

    let deleted = db
        .execute("DELETE FROM orders", &[])
        .map_err(pgpitr_pg::PgError::from)?;
    let left: i64 = db
        .query_one("SELECT count(*) FROM orders", &[])
        .map_err(pgpitr_pg::PgError::from)?
        .get(0);
    n.say(&format!(
        "oops: DELETE FROM orders (no WHERE) at {} removed {deleted} rows; {left} left",
        Utc::now().format("%H:%M:%S%.3f")
    ));

    let seg: String = db
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .map_err(pgpitr_pg::PgError::from)?
        .get(0);
    wait_archived(&mut db, &seg)?;
    n.say(&format!("archived the WAL holding the DELETE ({seg})"));

    // Nobody has to guess the second: the WAL says which transaction it was.
    let report = pgpitr_incidents::scan(
        &cfg,
        &pgpitr_incidents::ScanOptions {
            config_path: cfg_path.display().to_string(),
            ..Default::default()
        },
        &mut |_| {},
    )?;
    n.say(&format!(
        "pgpitr incidents: scanned {} segment(s), {} transactions",
        report.scanned.segments, report.scanned.committed
    ));
    let top = report
        .incidents
        .first()
        .ok_or_else(|| DemoError::Failed(format!("pgpitr incidents found nothing: {report}")))?;
    println!("          #{} {}", top.rank, top.summary());
    println!("          {}", top.restore_command);
    if top.kind != pgpitr_incidents::Kind::Delete
        || top.rows_deleted != deleted
        || !top.relations.iter().any(|r| r.relation == "public.orders")
    {
        return Err(DemoError::Failed(format!(
            "expected the DELETE of {deleted} rows from public.orders on top, found: {}",
            top.summary()
        )));
    }
    let target = top.committed_at;
    let decoder = Decoder::plain();
    let inv = Inventory::load(&cfg, &decoder)?;
    let req = PlanRequest {
        target: Target::Xid(top.xid.into()),
        backup: None,
        timeline: None,
        exclusive: true,
    };
    let p = plan(&inv, &bins, &decoder, &req)?;
    n.say(&format!(
        "restore plan: backup {}, {} archived segment(s), to just before transaction {}",
        p.backup.id, p.segments, top.xid
    ));
    let restored = root.join("restored");
    let ropts = ExecuteOptions {
        into: restored.clone(),
        port: 5433,
        config_path: cfg_path.clone(),
        tools_dir: tools.clone(),
        archive: false,
        progress: false,
        pause: false,
        hand_over: false,
    };
    cleanup.data_dirs.push(restored.clone());
    let report = execute(&cfg, &bins, &decoder, &p, &ropts, &mut |s| n.say(s))?;
    n.say(&format!(
        "restored and promoted on timeline {}: {}",
        report.timeline,
        report.stop_reason.as_deref().unwrap_or("replay complete")
    ));

    let rep = Endpoint {
        port: 5433,
        ..ep.clone()
    };
    let mut rdb = rep.wait_connect("postgres", Duration::from_secs(30))?;
    let rows = rdb
        .query("SELECT id, item, created FROM orders ORDER BY id", &[])
        .map_err(pgpitr_pg::PgError::from)?;
    for r in &rows {
        let id: i32 = r.get(0);
        let item: String = r.get(1);
        let created: std::time::SystemTime = r.get(2);
        println!(
            "          #{id:<3} {item:<18} {}",
            DateTime::<Utc>::from(created).format("%H:%M:%S%.3f")
        );
    }
    let restored_count = rows.len() as i64;
    if restored_count as usize != opts.rows {
        return Err(DemoError::Failed(format!(
            "expected {} rows back, found {restored_count}",
            opts.rows
        )));
    }
    n.say(&format!("all {restored_count} orders are back"));
    n.say(&format!(
        "the same restore on your own instance: pgpitr --config {} restore --to xid:{} --exclusive --into /srv/restored --port 5433 (add --dry-run first to see the plan; `pgpitr incidents` finds the transaction); read next: docs/runbook.md (restore, drills) and docs/config.md (setting up an instance)",
        cfg_path.display(),
        top.xid
    ));
    drop(rdb);
    drop(db);
    let folder = if opts.keep {
        n.say(&format!("kept {} (servers stopped)", root.display()));
        Some(root)
    } else {
        n.say("cleaned up");
        None
    };
    drop(cleanup);
    Ok(DemoOutcome {
        rows_written: opts.rows,
        rows_after_delete: left,
        rows_restored: restored_count,
        target,
        folder,
    })
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_err(format!("open {}", path.display())))?;
    f.write_all(text.as_bytes())
        .map_err(io_err(format!("write {}", path.display())))?;
    Ok(())
}

/// Waits until pg_stat_archiver reports `segment` (or a later one) archived.
pub fn wait_archived(db: &mut pgpitr_pg::Client, segment: &str) -> Result<()> {
    let start = Instant::now();
    loop {
        let row = db
            .query_one(
                "SELECT coalesce(last_archived_wal, ''), coalesce(last_failed_wal, ''), \
                 EXISTS (SELECT 1 FROM pg_ls_archive_statusdir() WHERE name = $1 || '.done') \
                 FROM pg_stat_archiver",
                &[&segment],
            )
            .map_err(pgpitr_pg::PgError::from)?;
        let done: String = row.get(0);
        let status_done: bool = row.get(2);
        // The archiver goes in order, so a later segment archived means this one was too;
        // a `.backup` file named after this segment does not.
        let later = done.len() >= 24 && &done[..24] > segment;
        if status_done || done == segment || later {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(60) {
            let failed: String = row.get(1);
            return Err(DemoError::Failed(format!(
                "{segment} was not archived within 60 s (last archived {done:?}, last failed {failed:?}): see the server log"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
