//! The instance config: one file per PostgreSQL instance, TOML or JSON with the same schema.
//!
//! This schema is the single source of truth: the NixOS module writes this file, every binary
//! reads it, and `docs/config.md` documents it. Unknown keys and wrong types are errors that
//! name the file, the line and the key.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Folder searched by `--instance NAME` unless `PGPITR_CONFIG_DIR` is set.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/pgpitr";

/// Set by systemd for a unit with `LoadCredential=`: the folder holding its credentials.
pub const CREDENTIALS_ENV: &str = "CREDENTIALS_DIRECTORY";
/// Credential names that stand in for secret paths of the config ([`Config::use_credentials`]).
pub const CRED_AGE_IDENTITY: &str = "age-identity";
pub const CRED_RESTIC_PASSWORD: &str = "restic-password";
pub const CRED_RESTIC_ENVIRONMENT: &str = "restic-environment";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {}: {message}", key_text(key))]
    Parse {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("config {path}: unsupported extension (use .toml or .json)")]
    Extension { path: PathBuf },
    #[error("config {path}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
    #[error("no config for instance `{name}`: looked for {toml} and {json} (set PGPITR_CONFIG_DIR or pass --config PATH)")]
    NoInstance {
        name: String,
        toml: PathBuf,
        json: PathBuf,
    },
}

/// Where in the file a parse error is: `key `archive.level``, or `top level` for the root
/// (serde_path_to_error says `.`), where a missing field is a missing section or key.
fn key_text(key: &str) -> String {
    if key.is_empty() || key == "." {
        "top level".into()
    } else {
        format!("key `{key}`")
    }
}

pub type Result<T> = std::result::Result<T, ConfigError>;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of the instance, used in metric labels and lock names.
    pub instance: String,
    #[serde(default)]
    pub postgres: PostgresConfig,
    pub archive: ArchiveConfig,
    pub backup: BackupConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub pgpitr: ToolsConfig,
    #[serde(default)]
    pub health: HealthConfig,
    /// Offsite copies through restic; absent means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offsite: Option<OffsiteConfig>,
    /// ZFS datasets for the data folder and the WAL archive; absent means not on ZFS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs: Option<ZfsConfig>,
    /// Databases `provision-dbs` makes the server match, keyed by database name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub databases: BTreeMap<String, DatabaseConfig>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub provision: ProvisionConfig,
    /// Which base backups walprune keeps; WAL retention follows from them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionConfig>,
    /// Restore drills (`pgpitr drill`) and the heartbeat they measure the RPO with.
    #[serde(default, skip_serializing_if = "is_default")]
    pub drill: DrillConfig,
    /// How restore-wal feeds recovery (issue 14).
    #[serde(default, skip_serializing_if = "is_default")]
    pub restore: RestoreConfig,
    /// How `preseed` brings the data folder back on a rebuilt node (issue 12).
    #[serde(default, skip_serializing_if = "is_default")]
    pub preseed: PreseedConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Folder with pg_ctl, pg_basebackup, postgres. Found automatically when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bin_dir: Option<PathBuf>,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default = "default_socket_dir")]
    pub socket_dir: PathBuf,
    /// Database role pgpitr connects as.
    #[serde(default = "default_user")]
    pub user: String,
    /// Operating-system account that runs server processes when a pgpitr tool runs as root.
    #[serde(default = "default_user")]
    pub os_user: String,
    /// systemd unit that runs the server (e.g. `postgresql.service`): `pgpitr restore
    /// --in-place` stops and starts it; absent means the server is run with `pg_ctl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            bin_dir: None,
            data_dir: default_data_dir(),
            port: default_port(),
            socket_dir: default_socket_dir(),
            user: default_user(),
            os_user: default_user(),
            service: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Zstd,
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    pub dir: PathBuf,
    #[serde(default = "default_compression")]
    pub compression: Compression,
    #[serde(default = "default_level")]
    pub level: i32,
    // --- issue 14 (speed): look-ahead archiving and prefetching restore ---
    /// Workers `archive-wal` uses to push the segments PostgreSQL has marked ready after the
    /// one it was called for (look-ahead). Absent: the number of cores; 1: one segment per call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel: Option<usize>,
}

impl ArchiveConfig {
    /// `archive.parallel`, or the number of cores when absent.
    pub fn parallel(&self) -> usize {
        self.parallel.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }
}

/// `[restore]`: how `restore-wal` feeds recovery.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RestoreConfig {
    /// Segments `restore-wal` fetches ahead of the one PostgreSQL asked for, into a spool
    /// inside pg_wal (each up to one segment of disk). 0 turns prefetching off.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
}

impl Default for RestoreConfig {
    fn default() -> Self {
        RestoreConfig {
            prefetch: default_prefetch(),
        }
    }
}

fn default_prefetch() -> usize {
    8
}
// --- end issue 14 ---

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// age X25519 recipients (`age1...`); every object is encrypted to all of them.
    pub recipients: Vec<String>,
    /// age identity file; only needed to restore. Read, never copied or logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub textfile_dir: PathBuf,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ToolsConfig {
    /// Folder holding `archive-wal` and `restore-wal`, used in archive_command and
    /// restore_command. Defaults to the folder of the running executable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bin_dir: Option<PathBuf>,
}

/// Offsite copies in a restic repository (any backend restic supports).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OffsiteConfig {
    /// restic repository: a path, `s3:...`, `b2:...`, `azure:...`, `gs:...`, `rest:...`, `sftp:...`.
    pub repository: String,
    /// File holding the repository password (given to restic as RESTIC_PASSWORD_FILE).
    pub password_file: PathBuf,
    /// Optional `KEY=VALUE` file with backend credentials (AWS_ACCESS_KEY_ID, B2_ACCOUNT_KEY...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_file: Option<PathBuf>,
    /// Create the repository when it does not exist yet.
    #[serde(default)]
    pub init: bool,
    /// restic executable (found on PATH when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restic_bin: Option<PathBuf>,
    /// Retention of the offsite copy (restic forget), independent of local retention.
    #[serde(default)]
    pub forget: ForgetPolicy,
    /// Run `forget --prune` at most this often (0: on every sync).
    #[serde(default = "default_prune_interval")]
    pub prune_interval_hours: u64,
}

/// restic `forget` options; all zero/absent keeps everything.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ForgetPolicy {
    #[serde(default)]
    pub keep_last: u32,
    #[serde(default)]
    pub keep_daily: u32,
    #[serde(default)]
    pub keep_weekly: u32,
    #[serde(default)]
    pub keep_monthly: u32,
    #[serde(default)]
    pub keep_yearly: u32,
    /// restic duration such as `30d` or `1y6m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_within: Option<String>,
}

fn default_prune_interval() -> u64 {
    168
}

/// Retention of base backups (as restic's `forget` expresses it). A backup is kept when
/// any rule keeps it; the newest complete backup is always kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Keep the newest N backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// Keep every backup that ended within the last D days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_within_days: Option<u32>,
    /// Keep the newest backup of each of the last N days / weeks / months / years.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<u32>,
    /// A backup folder without backup.json older than this is a leftover of a killed run.
    #[serde(default = "default_grace_hours")]
    pub partial_grace_hours: u64,
}

fn default_grace_hours() -> u64 {
    24
}

/// One declared database.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Role that owns the database (created when missing).
    pub owner: String,
    /// File holding the owner's password: the owner can then log in (SCRAM-SHA-256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_password_file: Option<PathBuf>,
    /// Extensions to create (`CREATE EXTENSION IF NOT EXISTS`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<String>,
    /// Role -> privileges (`ALL`, `SELECT`, `INSERT`, `UPDATE`, `DELETE`, `TRUNCATE`,
    /// `REFERENCES`, `TRIGGER`, `USAGE`, `CREATE`, `CONNECT`, `TEMPORARY`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub permissions: BTreeMap<String, Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_limit: Option<i32>,
}

/// Privileges `permissions` accepts.
pub const PRIVILEGES: [&str; 13] = [
    "ALL",
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "TRUNCATE",
    "REFERENCES",
    "TRIGGER",
    "USAGE",
    "CREATE",
    "CONNECT",
    "TEMPORARY",
    "TEMP",
];

/// Settings of `provision-dbs`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ProvisionConfig {
    /// Where the hash stamp of the applied state lives (default /var/lib/pgpitr/<instance>).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// How long to wait for the server to accept connections and leave recovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_timeout_seconds: Option<u64>,
}

impl ProvisionConfig {
    pub fn state_dir(&self, instance: &str) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/pgpitr").join(instance))
    }
    pub fn wait_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.wait_timeout_seconds.unwrap_or(60))
    }
}

/// ZFS datasets tuned for PostgreSQL. Property values here override the defaults
/// (data: recordsize=8K compression=lz4 atime=off xattr=sa logbias=latency;
/// WAL archive: recordsize=128K compression=lz4 atime=off logbias=throughput).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ZfsConfig {
    /// Dataset mounted at postgres.data_dir, e.g. `tank/postgres/main`.
    pub data_dataset: String,
    /// Dataset mounted at archive.dir, e.g. `tank/postgres/main-wal`.
    pub wal_dataset: String,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub data_properties: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub wal_properties: std::collections::BTreeMap<String, String>,
}

// --- [drill]: restore drills (issue 13) ---

/// Restore drills: `pgpitr drill` restores into `scratch_dir` on `port`, checks the copy,
/// and removes it; `healthcheck` keeps the heartbeat row the drill measures the RPO with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DrillConfig {
    /// Folder the drill owns: the restored copy goes to `<scratch_dir>/data` (and offsite
    /// downloads to `<scratch_dir>/staging`). Default `/var/lib/pgpitr/<instance>/drill`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch_dir: Option<PathBuf>,
    /// Port of the scratch server (socket in postgres.socket_dir). Default postgres.port + 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `healthcheck` writes the heartbeat row (`pgpitr.heartbeat` in database `postgres`).
    #[serde(default = "default_true")]
    pub heartbeat: bool,
    /// How often healthcheck runs (its timer), i.e. how old the heartbeat may be.
    #[serde(default = "default_heartbeat_interval")]
    pub heartbeat_interval_seconds: u64,
}

impl Default for DrillConfig {
    fn default() -> Self {
        DrillConfig {
            scratch_dir: None,
            port: None,
            heartbeat: true,
            heartbeat_interval_seconds: default_heartbeat_interval(),
        }
    }
}

impl DrillConfig {
    pub fn scratch_dir(&self, instance: &str) -> PathBuf {
        self.scratch_dir.clone().unwrap_or_else(|| {
            PathBuf::from("/var/lib/pgpitr")
                .join(instance)
                .join("drill")
        })
    }
    pub fn port(&self, instance_port: u16) -> u16 {
        self.port
            .unwrap_or_else(|| instance_port.wrapping_add(10000))
    }
}

fn default_true() -> bool {
    true
}
fn default_heartbeat_interval() -> u64 {
    300
}

// --- end [drill] ---

/// Thresholds of `healthcheck`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Unhealthy when completed WAL has waited longer than this for archiving.
    #[serde(default = "default_archive_max_age")]
    pub archive_max_age_seconds: u64,
    /// Unhealthy when more segments than this wait in pg_wal/archive_status/*.ready.
    #[serde(default = "default_ready_max")]
    pub ready_segments_max: u64,
    /// Unhealthy when the newest complete base backup is older than this.
    #[serde(default = "default_backup_max_age")]
    pub backup_max_age_seconds: u64,
    /// Unhealthy when the archive or backup folder's file system has less free space (percent).
    #[serde(default = "default_min_free_percent")]
    pub min_free_percent: f64,
    /// How long to wait for the server to answer.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_seconds: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            archive_max_age_seconds: default_archive_max_age(),
            ready_segments_max: default_ready_max(),
            backup_max_age_seconds: default_backup_max_age(),
            min_free_percent: default_min_free_percent(),
            connect_timeout_seconds: default_connect_timeout(),
        }
    }
}

fn default_archive_max_age() -> u64 {
    900
}
fn default_ready_max() -> u64 {
    16
}
fn default_backup_max_age() -> u64 {
    26 * 3600
}
fn default_min_free_percent() -> f64 {
    10.0
}
fn default_connect_timeout() -> u64 {
    5
}

// ---- [preseed] (issue 12): how a rebuilt node brings its data folder back ----

/// Methods `preseed` tries, in order, when the data folder is empty or missing.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PreseedMethod {
    /// Receive the data dataset from a replica with syncoid.
    Syncoid,
    /// Roll the data dataset back to its newest snapshot, else the newest local base backup.
    Local,
    /// Point-in-time restore to `latest` from the local archive and backups.
    Archive,
    /// The same from the offsite restic repository.
    Restic,
    /// initdb, only when no source shows the instance ever had data.
    Empty,
}

impl PreseedMethod {
    pub fn name(self) -> &'static str {
        match self {
            PreseedMethod::Syncoid => "syncoid",
            PreseedMethod::Local => "local",
            PreseedMethod::Archive => "archive",
            PreseedMethod::Restic => "restic",
            PreseedMethod::Empty => "empty",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PreseedConfig {
    #[serde(default = "default_preseed_methods")]
    pub methods: Vec<PreseedMethod>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub syncoid: SyncoidConfig,
    /// Extra `initdb` arguments for the `empty` method (e.g. `["--locale=C.UTF-8"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub initdb_args: Vec<String>,
    /// How long to wait for a restored server to replay and promote.
    #[serde(default = "default_preseed_timeout")]
    pub recovery_timeout_seconds: u64,
}

impl Default for PreseedConfig {
    fn default() -> Self {
        PreseedConfig {
            methods: default_preseed_methods(),
            syncoid: SyncoidConfig::default(),
            initdb_args: Vec::new(),
            recovery_timeout_seconds: default_preseed_timeout(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SyncoidConfig {
    /// Replica dataset in syncoid's own syntax: `[[user@]host:]pool/dataset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// syncoid executable (found on PATH when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bin: Option<PathBuf>,
    /// Extra syncoid arguments (e.g. `["--sshkey=/run/keys/replica"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

fn default_preseed_methods() -> Vec<PreseedMethod> {
    vec![
        PreseedMethod::Syncoid,
        PreseedMethod::Local,
        PreseedMethod::Restic,
    ]
}

fn default_preseed_timeout() -> u64 {
    3600
}

// ---- end of [preseed] ----

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/postgresql/15/main")
}
fn default_port() -> u16 {
    5432
}
fn default_socket_dir() -> PathBuf {
    PathBuf::from("/run/postgresql")
}
fn default_user() -> String {
    "postgres".into()
}
fn default_compression() -> Compression {
    Compression::Zstd
}
fn default_level() -> i32 {
    3
}

impl Config {
    /// Loads and validates a config file; the format follows the extension.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Self::parse(path, &text)?;
        cfg.validate(path)?;
        if let Some(dir) = std::env::var_os(CREDENTIALS_ENV) {
            cfg.use_credentials(Path::new(&dir));
        }
        Ok(cfg)
    }

    /// Points secret paths the config names at this systemd unit's copies of them: under a
    /// unit with `LoadCredential=` (`$CREDENTIALS_DIRECTORY` set), a credential named
    /// [`CRED_AGE_IDENTITY`], [`CRED_RESTIC_PASSWORD`] or [`CRED_RESTIC_ENVIRONMENT`] takes the
    /// place of `encryption.identity_file`, `offsite.password_file` or
    /// `offsite.environment_file`. Only a key the config sets is replaced (a credential never
    /// adds a secret the config does not name), so the source files can stay root-only while
    /// the job runs as the server's user. Returns the keys replaced.
    pub fn use_credentials(&mut self, dir: &Path) -> Vec<&'static str> {
        let mut used = Vec::new();
        let cred = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
        if let Some(enc) = &mut self.encryption {
            if let (Some(f), Some(c)) = (&mut enc.identity_file, cred(CRED_AGE_IDENTITY)) {
                *f = c;
                used.push("encryption.identity_file");
            }
        }
        if let Some(o) = &mut self.offsite {
            if let Some(c) = cred(CRED_RESTIC_PASSWORD) {
                o.password_file = c;
                used.push("offsite.password_file");
            }
            if let (Some(f), Some(c)) = (&mut o.environment_file, cred(CRED_RESTIC_ENVIRONMENT)) {
                *f = c;
                used.push("offsite.environment_file");
            }
        }
        used
    }

    /// Resolves `--instance NAME` to `$PGPITR_CONFIG_DIR/NAME.{toml,json}`.
    pub fn instance_path(name: &str) -> Result<PathBuf> {
        let dir = std::env::var_os("PGPITR_CONFIG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_DIR));
        let toml = dir.join(format!("{name}.toml"));
        let json = dir.join(format!("{name}.json"));
        if toml.is_file() {
            Ok(toml)
        } else if json.is_file() {
            Ok(json)
        } else {
            Err(ConfigError::NoInstance {
                name: name.into(),
                toml,
                json,
            })
        }
    }

    /// Loads from `--config` or `--instance`, exactly one of which must be given.
    pub fn from_args(config: Option<&Path>, instance: Option<&str>) -> Result<Config> {
        match (config, instance) {
            (Some(p), _) => Self::load(p),
            (None, Some(name)) => Self::load(&Self::instance_path(name)?),
            (None, None) => Self::load(&Self::instance_path("main")?),
        }
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        match ext {
            "toml" => {
                let de = toml::Deserializer::new(text);
                serde_path_to_error::deserialize(de).map_err(|e| {
                    let key = e.path().to_string();
                    let inner = e.into_inner();
                    let (line, col) = inner
                        .span()
                        .map(|s| line_col(text, s.start))
                        .unwrap_or((0, 0));
                    ConfigError::Parse {
                        path: path.to_path_buf(),
                        key,
                        message: format!("{} (line {line}, column {col})", inner.message()),
                    }
                })
            }
            "json" => {
                let mut de = serde_json::Deserializer::from_str(text);
                serde_path_to_error::deserialize(&mut de).map_err(|e| {
                    let key = e.path().to_string();
                    let inner = e.into_inner();
                    ConfigError::Parse {
                        path: path.to_path_buf(),
                        key,
                        message: inner.to_string(),
                    }
                })
            }
            _ => Err(ConfigError::Extension {
                path: path.to_path_buf(),
            }),
        }
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let invalid = |key, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        if self.instance.is_empty()
            || !self
                .instance
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(invalid(
                "instance",
                format!(
                    "{:?} must be non-empty letters, digits, '-', '_' or '.'",
                    self.instance
                ),
            ));
        }
        if !(1..=19).contains(&self.archive.level) {
            return Err(invalid(
                "archive.level",
                format!("{} is outside 1..=19", self.archive.level),
            ));
        }
        if self.archive.parallel == Some(0) {
            return Err(invalid(
                "archive.parallel",
                "must be at least 1 (1 archives one segment per call)".into(),
            ));
        }
        if let Some(enc) = &self.encryption {
            if enc.recipients.is_empty() {
                return Err(invalid(
                    "encryption.recipients",
                    "at least one age recipient is needed (remove [encryption] to disable)".into(),
                ));
            }
            for r in &enc.recipients {
                if !r.starts_with("age1") {
                    return Err(invalid(
                        "encryption.recipients",
                        format!("{r:?} is not an age X25519 recipient (age1...)"),
                    ));
                }
            }
        }
        if !(0.0..100.0).contains(&self.health.min_free_percent) {
            return Err(invalid(
                "health.min_free_percent",
                format!("{} is outside 0..100", self.health.min_free_percent),
            ));
        }
        if let Some(r) = &self.retention {
            let rules = [
                r.keep_last,
                r.keep_within_days,
                r.keep_daily,
                r.keep_weekly,
                r.keep_monthly,
                r.keep_yearly,
            ];
            if rules.contains(&Some(0)) {
                return Err(invalid(
                    "retention",
                    "a keep_* value of 0 keeps nothing: remove the key or give at least 1".into(),
                ));
            }
            if rules.iter().all(Option::is_none) {
                return Err(invalid(
                    "retention",
                    "no rule: set keep_last, keep_within_days or keep_daily/weekly/monthly/yearly"
                        .into(),
                ));
            }
        }
        for (db, d) in &self.databases {
            for (role, privs) in &d.permissions {
                for p in privs {
                    if !PRIVILEGES.contains(&p.to_ascii_uppercase().as_str()) {
                        return Err(invalid(
                            "databases.permissions",
                            format!(
                                "{db:?}: {role:?} has unknown privilege {p:?} (use {})",
                                PRIVILEGES.join(", ")
                            ),
                        ));
                    }
                }
            }
            if db.is_empty() || d.owner.is_empty() {
                return Err(invalid(
                    "databases",
                    "database and owner names must not be empty".into(),
                ));
            }
        }
        for (key, p) in [
            ("archive.dir", &self.archive.dir),
            ("backup.dir", &self.backup.dir),
            ("postgres.socket_dir", &self.postgres.socket_dir),
        ] {
            if !p.is_absolute() {
                return Err(invalid(
                    key,
                    format!("{} must be an absolute path", p.display()),
                ));
            }
        }
        Ok(())
    }

    /// Serialises as TOML (used by the demo and tests to write configs).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
instance = "main"
[postgres]
port = 5433
[archive]
dir = "/srv/wal"
[backup]
dir = "/srv/backup"
"#;

    #[test]
    fn credentials_replace_only_the_secret_paths_the_config_names() {
        let dir = std::env::temp_dir().join(format!("pgpitr-config-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for n in [CRED_AGE_IDENTITY, CRED_RESTIC_PASSWORD] {
            std::fs::write(dir.join(n), "x").unwrap();
        }
        let text = format!(
            "{GOOD}[encryption]\nrecipients = [\"age1x\"]\nidentity_file = \"/root/key.age\"\n\
             [offsite]\nrepository = \"/r\"\npassword_file = \"/root/pw\"\n"
        );
        let mut c = Config::parse(Path::new("c.toml"), &text).unwrap();
        let used = c.use_credentials(&dir);
        assert_eq!(used, ["encryption.identity_file", "offsite.password_file"]);
        let enc = c.encryption.as_ref().unwrap();
        assert_eq!(
            enc.identity_file.as_deref(),
            Some(dir.join(CRED_AGE_IDENTITY).as_path())
        );
        let o = c.offsite.as_ref().unwrap();
        assert_eq!(o.password_file, dir.join(CRED_RESTIC_PASSWORD));
        // No environment file in the config: the credential (absent here anyway) adds none.
        std::fs::write(dir.join(CRED_RESTIC_ENVIRONMENT), "x").unwrap();
        assert!(!c
            .use_credentials(&dir)
            .contains(&"offsite.environment_file"));
        assert!(c.offsite.as_ref().unwrap().environment_file.is_none());
        // No identity in the config, or no credential: nothing changes.
        let mut plain = Config::parse(Path::new("c.toml"), GOOD).unwrap();
        assert!(plain.use_credentials(&dir).is_empty());
        let mut keep = Config::parse(Path::new("c.toml"), &text).unwrap();
        assert!(keep.use_credentials(&dir.join("missing")).is_empty());
        assert_eq!(
            keep.encryption.unwrap().identity_file.as_deref(),
            Some(Path::new("/root/key.age"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn toml_defaults() {
        let c = Config::parse(Path::new("x.toml"), GOOD).unwrap();
        assert_eq!(c.postgres.port, 5433);
        assert_eq!(c.postgres.user, "postgres");
        assert_eq!(c.archive.compression, Compression::Zstd);
        assert_eq!(c.archive.level, 3);
        assert!(c.encryption.is_none());
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = GOOD.replace("port = 5433", "port = 5433\nprot = 1");
        let e = Config::parse(Path::new("/etc/pgpitr/main.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/etc/pgpitr/main.toml"), "{e}");
        assert!(e.contains("prot"), "{e}");
        assert!(e.contains("line 5"), "{e}");
    }

    #[test]
    fn missing_section_is_at_the_top_level_not_key_dot() {
        let text = GOOD.replace("[backup]\ndir = \"/srv/backup\"\n", "");
        let e = Config::parse(Path::new("c.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("key `.`") && !e.contains("key '.'"), "{e}");
        assert!(e.contains("top level") && e.contains("backup"), "{e}");
    }

    #[test]
    fn wrong_type_names_key() {
        let text = GOOD.replace("port = 5433", "port = \"x\"");
        let e = Config::parse(Path::new("c.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("postgres.port"), "{e}");
        assert!(e.contains("line 4"), "{e}");
    }

    #[test]
    fn json_same_schema() {
        let j = r#"{"instance":"a","archive":{"dir":"/a"},"backup":{"dir":"/b"},
            "bogus": 1}"#;
        let e = Config::parse(Path::new("c.json"), j)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus") && e.contains("line 2"), "{e}");
        let ok = r#"{"instance":"a","archive":{"dir":"/a"},"backup":{"dir":"/b"}}"#;
        assert_eq!(
            Config::parse(Path::new("c.json"), ok).unwrap().instance,
            "a"
        );
    }

    #[test]
    fn validation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, GOOD.replace("[archive]", "[archive]\nlevel = 40")).unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("archive.level"), "{e}");
        std::fs::write(
            &p,
            format!("{GOOD}\n[encryption]\nrecipients = [\"nope\"]\n"),
        )
        .unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("encryption.recipients"), "{e}");
    }

    #[test]
    fn bad_retention_policies() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        for (body, expect) in [
            ("[retention]\nkeep_last = 0\n", "keeps nothing"),
            (
                "[retention]\nkeep_within_days = -3\n",
                "retention.keep_within_days",
            ),
            ("[retention]\nkeep_hourly = 3\n", "keep_hourly"),
            ("[retention]\n", "no rule"),
        ] {
            std::fs::write(&p, format!("{GOOD}{body}")).unwrap();
            let e = Config::load(&p).unwrap_err().to_string();
            assert!(e.contains(expect), "{body}: {e}");
        }
        std::fs::write(
            &p,
            format!("{GOOD}[retention]\nkeep_last = 2\nkeep_daily = 7\n"),
        )
        .unwrap();
        assert_eq!(
            Config::load(&p).unwrap().retention.unwrap().keep_daily,
            Some(7)
        );
    }

    #[test]
    fn roundtrip_toml() {
        let c = Config::parse(Path::new("x.toml"), GOOD).unwrap();
        let again = Config::parse(Path::new("y.toml"), &c.to_toml()).unwrap();
        assert_eq!(c, again);
    }
}
