//! Testkit for the end-to-end tests: real PostgreSQL clusters in temporary folders that
//! archive through the real `archive-wal`, and helpers to run the real binaries.
//!
//! Tests need the workspace binaries built first (`cargo build --workspace --bins`, which the
//! README's test command does) and PostgreSQL installed; a missing piece fails loudly with
//! the command that installs it.

pub mod json_schema;
use pgpitr_config::{
    ArchiveConfig, BackupConfig, Compression, Config, EncryptionConfig, OffsiteConfig,
    PostgresConfig, ToolsConfig,
};
use pgpitr_pg::{command_as, run, Account, Bins, Client, Endpoint, PgCtl};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

pub const TOOLS: [&str; 9] = [
    "archive-wal",
    "restore-wal",
    "basebackup",
    "pgpitr",
    "healthcheck",
    "offsite-sync",
    "provision-dbs",
    "walprune",
    "preseed",
];

/// Folder of the workspace binaries (next to the test executable's `deps/`).
pub fn built_bins() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target folder")
        .to_path_buf();
    for t in TOOLS {
        assert!(
            dir.join(t).is_file(),
            "{} is missing: build the workspace binaries first with `cargo build --workspace --bins`",
            dir.join(t).display()
        );
    }
    dir
}

/// PostgreSQL's binaries, or a loud failure saying how to install them. `PGPITR_PG_BIN`
/// names another binaries folder (e.g. PostgreSQL 16 from the `pgserver` package, see
/// [`pg_bins_from_env`]).
pub fn pg_bins() -> Bins {
    if let Some(b) = pg_bins_from_env() {
        return b;
    }
    Bins::discover(None).unwrap_or_else(|e| {
        panic!("{e}\nThese tests need a real PostgreSQL: apt-get install -y postgresql-15 postgresql-contrib-15")
    })
}

/// A CLI tool the tests need, or a loud failure with its install command.
pub fn require_tool(tool: &str, package: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "`{tool}` is not installed: apt-get install -y {package}"
    );
}

/// Output of a finished command, as text, for assertions and messages.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "command failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

pub struct ClusterOptions {
    pub encrypted: bool,
    pub level: i32,
    /// Configure `[metrics]` with a `metrics/` folder.
    pub metrics: bool,
    /// Data folder and archive folder elsewhere (e.g. on ZFS datasets), with `[zfs]`.
    pub placed: Option<Placement>,
}

/// Where the data and the archive live when not in the cluster's temporary folder.
#[derive(Clone)]
pub struct Placement {
    pub data_dir: PathBuf,
    pub archive_dir: PathBuf,
    pub zfs: Option<pgpitr_config::ZfsConfig>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            encrypted: false,
            level: 3,
            metrics: false,
            placed: None,
        }
    }
}

/// A real PostgreSQL cluster archiving through `archive-wal` into its own archive.
pub struct Cluster {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub bins: Bins,
    pub account: Option<Account>,
    pub tools: PathBuf,
    pub cfg: Config,
    pub cfg_path: PathBuf,
    pub identity: Option<PathBuf>,
    /// Data folders of servers to stop when the cluster is dropped.
    servers: std::cell::RefCell<Vec<PathBuf>>,
}

impl Cluster {
    pub fn start(opts: ClusterOptions) -> Cluster {
        let bins = pg_bins();
        let account = Account::for_server("postgres")
            .expect("postgres account (apt-get install -y postgresql-15 creates it)");
        let tmp = tempfile::Builder::new()
            .prefix("pgpitr-test-")
            .tempdir()
            .unwrap();
        let root = tmp.path().to_path_buf();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        for d in ["archive", "backups", "sock", "bin", "metrics"] {
            fs::create_dir(root.join(d)).unwrap();
        }
        // The server account must be able to run the tools wherever the checkout lives.
        let built = built_bins();
        let tools = root.join("bin");
        for t in TOOLS {
            fs::copy(built.join(t), tools.join(t)).unwrap();
        }
        let identity = opts.encrypted.then(|| root.join("identity.txt"));
        let encryption = identity.as_ref().map(|path| {
            use age::secrecy::ExposeSecret;
            let id = age::x25519::Identity::generate();
            fs::write(
                path,
                format!("# test identity\n{}\n", id.to_string().expose_secret()),
            )
            .unwrap();
            fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
            EncryptionConfig {
                recipients: vec![id.to_public().to_string()],
                identity_file: Some(path.clone()),
            }
        });
        let cfg = Config {
            instance: "test".into(),
            postgres: PostgresConfig {
                bin_dir: Some(bins.dir.clone()),
                data_dir: opts
                    .placed
                    .as_ref()
                    .map(|p| p.data_dir.clone())
                    .unwrap_or_else(|| root.join("data")),
                port: 5432,
                socket_dir: root.join("sock"),
                user: "postgres".into(),
                os_user: "postgres".into(),
                service: None,
            },
            archive: ArchiveConfig {
                dir: opts
                    .placed
                    .as_ref()
                    .map(|p| p.archive_dir.clone())
                    .unwrap_or_else(|| root.join("archive")),
                compression: Compression::Zstd,
                level: opts.level,
                parallel: None,
            },
            backup: BackupConfig {
                dir: root.join("backups"),
            },
            encryption,
            metrics: opts.metrics.then(|| pgpitr_config::MetricsConfig {
                textfile_dir: root.join("metrics"),
            }),
            pgpitr: ToolsConfig {
                bin_dir: Some(tools.clone()),
            },
            health: Default::default(),
            offsite: None,
            zfs: opts.placed.as_ref().and_then(|p| p.zfs.clone()),
            databases: Default::default(),
            provision: pgpitr_config::ProvisionConfig {
                state_dir: Some(root.join("state")),
                wait_timeout_seconds: Some(30),
            },
            retention: None,
            drill: Default::default(),
            restore: Default::default(),
            preseed: Default::default(),
        };
        let cfg_path = root.join("pgpitr.toml");
        fs::write(&cfg_path, cfg.to_toml()).unwrap();
        let c = Cluster {
            _tmp: tmp,
            root,
            bins,
            account,
            tools,
            cfg,
            cfg_path,
            identity,
            servers: Default::default(),
        };
        c.chown(&c.root);
        for d in [&c.cfg.postgres.data_dir, &c.cfg.archive.dir] {
            if d.exists() {
                c.chown(d);
            }
        }
        c.initdb(&c.cfg.postgres.data_dir, true);
        c.start_server(&c.cfg.postgres.data_dir);
        c
    }

    pub fn chown(&self, p: &Path) {
        if let Some(a) = &self.account {
            a.chown_tree(p).unwrap();
        }
    }

    /// initdb a data folder configured like the instance (socket only, archiving on or off).
    pub fn initdb(&self, data: &Path, archive: bool) {
        let mut c = command_as(&self.bins.path("initdb"), self.account.as_ref());
        c.arg("-D")
            .arg(data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ])
            .current_dir(&self.root);
        run(&mut c).unwrap();
        let archive_cmd = format!(
            "\"{}\" --config \"{}\" %p %f",
            self.tools.join("archive-wal").display(),
            self.cfg_path.display()
        );
        let conf = format!(
            "\nlisten_addresses = ''\nport = 5432\nunix_socket_directories = '{}'\nwal_level = replica\n\
             archive_mode = {}\narchive_command = '{}'\nfsync = off\nlog_min_messages = info\n",
            self.cfg.postgres.socket_dir.display(),
            if archive { "on" } else { "off" },
            archive_cmd.replace('\'', "''")
        );
        let p = data.join("postgresql.conf");
        let mut text = fs::read_to_string(&p).unwrap();
        text.push_str(&conf);
        fs::write(&p, text).unwrap();
    }

    pub fn start_server(&self, data: &Path) {
        let ctl = PgCtl {
            bins: &self.bins,
            account: self.account.as_ref(),
            data_dir: data,
        };
        let name = data.file_name().unwrap().to_string_lossy();
        ctl.start(&self.root.join(format!("{name}.log")), "", true)
            .unwrap();
        self.track(data);
    }

    /// Remembers a server to stop on drop (restored servers started by `pgpitr restore`).
    pub fn track(&self, data: &Path) {
        self.servers.borrow_mut().push(data.to_path_buf());
    }

    pub fn stop_server(&self, data: &Path) {
        let ctl = PgCtl {
            bins: &self.bins,
            account: self.account.as_ref(),
            data_dir: data,
        };
        if ctl.is_running() {
            ctl.stop().unwrap();
        }
    }

    pub fn endpoint(&self, port: u16) -> Endpoint {
        Endpoint {
            socket_dir: self.cfg.postgres.socket_dir.clone(),
            port,
            user: "postgres".into(),
        }
    }

    pub fn connect(&self, port: u16) -> Client {
        self.endpoint(port)
            .wait_connect("postgres", Duration::from_secs(30))
            .unwrap()
    }

    pub fn data(&self) -> &Path {
        &self.cfg.postgres.data_dir
    }

    /// Runs one of the workspace binaries with `--config` and extra arguments.
    pub fn tool(&self, tool: &str, args: &[&str]) -> Run {
        self.tool_with(&self.cfg_path, tool, args)
    }

    /// Same with another config file (see `write_config`).
    pub fn tool_with(&self, cfg_path: &Path, tool: &str, args: &[&str]) -> Run {
        self.tool_env(cfg_path, tool, &[], args)
    }

    /// Like `tool_with`, with extra environment variables.
    pub fn tool_env(
        &self,
        cfg_path: &Path,
        tool: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Run {
        let out = Command::new(self.tools.join(tool))
            .arg("--config")
            .arg(cfg_path)
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        Run::from(out)
    }

    /// An `[offsite]` section for a restic repository under the test root, its password in a
    /// 0600 file (restic must be installed).
    pub fn offsite_config(&self, password: &str) -> OffsiteConfig {
        require_tool("restic", "restic");
        let pw = self.root.join("restic-password");
        fs::write(&pw, format!("{password}\n")).unwrap();
        fs::set_permissions(&pw, fs::Permissions::from_mode(0o600)).unwrap();
        OffsiteConfig {
            repository: self.root.join("restic-repo").display().to_string(),
            password_file: pw,
            environment_file: None,
            init: true,
            restic_bin: None,
            forget: Default::default(),
            prune_interval_hours: 0,
        }
    }

    /// Writes a variant of the instance config under `name` and returns its path.
    pub fn write_config(&self, cfg: &Config, name: &str) -> PathBuf {
        let p = self.root.join(name);
        fs::write(&p, cfg.to_toml()).unwrap();
        p
    }

    /// Takes a base backup with the real `basebackup` binary; returns its id.
    pub fn basebackup(&self) -> String {
        self.tool("basebackup", &[]).ok().stdout.trim().to_string()
    }

    /// Forces a segment switch on the server at `port` and waits until it is archived.
    pub fn switch_and_wait(&self, port: u16) {
        let mut db = self.connect(port);
        let seg: String = db
            .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
            .unwrap()
            .get(0);
        pgpitr_demo::wait_archived(&mut db, &seg).unwrap();
    }

    /// `pgpitr restore --to TARGET --into DIR --port PORT [extra]`; tracks the server.
    pub fn restore(&self, target: &str, into: &Path, port: u16, extra: &[&str]) -> Run {
        let p = port.to_string();
        let mut args = vec![
            "restore",
            "--to",
            target,
            "--into",
            into.to_str().unwrap(),
            "--port",
            &p,
        ];
        args.extend_from_slice(extra);
        self.track(into);
        self.tool("pgpitr", &args)
    }

    /// Stops a restored server and removes its folder.
    pub fn discard(&self, data: &Path) {
        self.stop_server(data);
        fs::remove_dir_all(data).unwrap();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for d in self.servers.borrow().iter() {
            if d.exists() {
                self.stop_server(d);
            }
        }
    }
}

/// Rows of `SELECT tag FROM t` on a server, sorted.
pub fn tags(db: &mut Client) -> Vec<String> {
    let mut v: Vec<String> = db
        .query("SELECT tag FROM t", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    v.sort();
    v
}

/// Commits a row tagged `before`, waits past a whole second, takes the target time, waits
/// again and commits a row tagged `after`: a time-target restore must keep the first and
/// not the second.
pub fn rows_around_target(
    db: &mut Client,
    before: &str,
    after: &str,
) -> chrono::DateTime<chrono::Utc> {
    db.execute("INSERT INTO t (tag) VALUES ($1)", &[&before])
        .unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let target = chrono::Utc::now();
    std::thread::sleep(Duration::from_millis(1100));
    db.execute("INSERT INTO t (tag) VALUES ($1)", &[&after])
        .unwrap();
    target
}

/// A connection to database `db` on the cluster's socket at `port`.
pub fn connect_db(c: &Cluster, port: u16, db: &str) -> Client {
    c.endpoint(port)
        .wait_connect(db, Duration::from_secs(30))
        .unwrap()
}

/// How scripts/test.sh installs the PostgreSQL 16 the tests run on a second time.
pub const PG16_INSTALL: &str = "python3 -m venv /opt/pgpitr-pg16-venv && /opt/pgpitr-pg16-venv/bin/pip install pgserver && mkdir -p /opt/pgpitr-pg16/pgserver && cp -a /opt/pgpitr-pg16-venv/lib/python3*/site-packages/pgserver/pginstall /opt/pgpitr-pg16/pgserver/ && cp -a /opt/pgpitr-pg16-venv/lib/python3*/site-packages/pgserver.libs /opt/pgpitr-pg16/ && chmod -R a+rX /opt/pgpitr-pg16; then PGPITR_PG_BIN=/opt/pgpitr-pg16/pgserver/pginstall/bin PGPITR_PG_MAJOR=16";

/// `PGPITR_PG_BIN` (a binaries folder the server account can run), checked against
/// `PGPITR_PG_MAJOR` when that is set: a run meant for PostgreSQL 16 that does not find it
/// fails loudly with the install command instead of quietly testing another version.
pub fn pg_bins_from_env() -> Option<Bins> {
    let want: Option<u32> = std::env::var("PGPITR_PG_MAJOR")
        .ok()
        .map(|v| v.parse().expect("PGPITR_PG_MAJOR must be a number"));
    let Some(dir) = std::env::var_os("PGPITR_PG_BIN") else {
        if let Some(m) = want {
            panic!(
                "PGPITR_PG_MAJOR={m} but PGPITR_PG_BIN is not set; install it with: {PG16_INSTALL}"
            );
        }
        return None;
    };
    let bins = Bins::discover(Some(Path::new(&dir))).unwrap_or_else(|e| {
        panic!(
            "PGPITR_PG_BIN={}: {e}\ninstall PostgreSQL 16 with: {PG16_INSTALL}",
            Path::new(&dir).display()
        )
    });
    let major = bins.major_version().unwrap_or_else(|e| {
        panic!(
            "PGPITR_PG_BIN={}: {e}\ninstall it with: {PG16_INSTALL}",
            bins.dir.display()
        )
    });
    if let Some(m) = want {
        assert_eq!(
            major, m,
            "PGPITR_PG_BIN={} is PostgreSQL {major}, PGPITR_PG_MAJOR wants {m}; install it with: {PG16_INSTALL}",
            bins.dir.display()
        );
    }
    Some(bins)
}

/// Makes sure zfs-fuse's daemon answers (starts it when it is not running, reuses it when it
/// is), failing loudly with the install command when zfs-fuse is missing.
pub fn ensure_zfs_fuse() {
    require_tool("zfs-fuse", "zfs-fuse");
    require_tool("zpool", "zfs-fuse");
    let zpool_answers = || {
        Command::new("zpool")
            .arg("list")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if zpool_answers() {
        return;
    }
    let out = Command::new("zfs-fuse").output().unwrap();
    assert!(
        out.status.success(),
        "cannot start zfs-fuse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = std::time::Instant::now();
    while !zpool_answers() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "zfs-fuse did not come up (is /dev/fuse there?)"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
