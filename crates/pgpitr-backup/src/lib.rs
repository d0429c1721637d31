//! Base backups: taking them with pg_basebackup, storing them compressed (and encrypted),
//! verifying them against PostgreSQL's backup manifest, and the catalog of complete backups.
//!
//! `<backup.dir>/<id>/` holds `base.tar.zst[.age]` (and one tar per tablespace),
//! `backup_manifest`, and `backup.json`, written last: a folder without it is not a backup.

mod manifest;
pub mod metrics;
pub mod relnames;
mod stream;
pub use stream::{Meter, Metered};

use chrono::{DateTime, Utc};
use pgpitr_config::Config;
use pgpitr_durable::{create_dir_all_durable, write_new};
use pgpitr_pg::{Bins, Endpoint};
use pgpitr_wal::codec::{Decoder, Encoder};
use pgpitr_wal::Lsn;
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

pub use manifest::Manifest;

pub const BACKUP_JSON: &str = "backup.json";

/// Lock in the backup folder: basebackup and restore hold it shared for their whole run,
/// walprune exclusive, so retention never races a backup being written or a restore reading.
pub const LOCK_FILE: &str = ".pgpitr.lock";

/// Takes the backup folder's lock shared (creating the folder when missing).
pub fn lock_shared(backup_dir: &Path) -> Result<pgpitr_durable::FileLock> {
    create_dir_all_durable(backup_dir)?;
    Ok(pgpitr_durable::FileLock::shared(
        &backup_dir.join(LOCK_FILE),
    )?)
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Pg(#[from] pgpitr_pg::PgError),
    #[error(transparent)]
    Wal(#[from] pgpitr_wal::WalError),
    #[error(transparent)]
    Durable(#[from] pgpitr_durable::DurableError),
    #[error(transparent)]
    Io(#[from] pgpitr_durable::IoError),
    #[error("backup {id} failed verification: {message}")]
    Verify { id: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

use pgpitr_durable::io_context as io_err;

pub type Result<T> = std::result::Result<T, BackupError>;

/// One stored file of a backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackupFile {
    /// Stored name, e.g. `base.tar.zst.age`.
    pub name: String,
    /// Name of the original, e.g. `base.tar`.
    pub original: String,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub raw_sha256: String,
    pub stored_sha256: String,
}

/// `backup.json`: what a restore needs to know about a backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackupInfo {
    pub format: u32,
    pub id: String,
    pub instance: String,
    pub label: String,
    pub start_lsn: Lsn,
    pub checkpoint_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub timeline: u32,
    pub start_time: DateTime<Utc>,
    /// When the backup became usable (pg_basebackup returned): the earliest time target.
    pub stop_time: DateTime<Utc>,
    pub system_identifier: String,
    pub pg_version_num: u32,
    pub wal_segment_size: u64,
    /// Next transaction id after the backup ended: `xid:` targets at or above it are reachable.
    pub next_xid: u64,
    pub compression: String,
    pub encrypted: bool,
    pub files: Vec<BackupFile>,
    pub manifest_sha256: String,
    pub duration_seconds: f64,
}

impl BackupInfo {
    pub fn raw_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.raw_bytes).sum()
    }
    pub fn stored_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.stored_bytes).sum()
    }
}

impl pgpitr_wal::history::Placed for BackupInfo {
    fn timeline(&self) -> u32 {
        self.timeline
    }
    fn start_lsn(&self) -> Lsn {
        self.start_lsn
    }
    fn stop_lsn(&self) -> Lsn {
        self.stop_lsn
    }
    fn stop_time(&self) -> DateTime<Utc> {
        self.stop_time
    }
}

/// Complete backups (those with a readable `backup.json`) in the order they ended (wall
/// clock). This is not the history order: after a restore to an earlier point, backups on
/// an abandoned branch can be newer in time than the live timeline's; whatever reasons
/// about "newest" or "oldest" orders them with `pgpitr_wal::history::History`.
pub fn catalog(backup_dir: &Path) -> Result<Vec<BackupInfo>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(backup_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(format!("list {}", backup_dir.display()))(e).into()),
    };
    for ent in rd {
        let ent = ent.map_err(io_err(format!("list {}", backup_dir.display())))?;
        let p = ent.path().join(BACKUP_JSON);
        let Ok(bytes) = fs::read(&p) else { continue };
        match serde_json::from_slice::<BackupInfo>(&bytes) {
            Ok(info) => out.push(info),
            Err(e) => tracing::warn!("ignoring {}: {e}", p.display()),
        }
    }
    out.sort_by(|a, b| a.stop_time.cmp(&b.stop_time).then(a.id.cmp(&b.id)));
    Ok(out)
}

/// Takes a base backup of the instance's server. `progress` receives human-readable steps.
pub fn take(config: &Config, progress: &mut dyn FnMut(&str)) -> Result<BackupInfo> {
    let started = Instant::now();
    let bins = Bins::discover(config.postgres.bin_dir.as_deref())?;
    let ep = Endpoint {
        socket_dir: config.postgres.socket_dir.clone(),
        port: config.postgres.port,
        user: config.postgres.user.clone(),
    };
    let encoder = Encoder::new(
        config.archive.compression,
        config.archive.level,
        config.encryption.as_ref(),
    )?;
    let mut client = ep.connect("postgres")?;
    let row = client.query_one(
        "SELECT system_identifier::text, current_setting('server_version_num')::int, \
         (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'), current_setting('archive_mode') \
         FROM pg_control_system()",
        &[],
    ).map_err(pgpitr_pg::PgError::from)?;
    let sysid: String = row.get(0);
    let version_num: i32 = row.get(1);
    let seg_size: i64 = row.get(2);
    let archive_mode: String = row.get(3);
    if archive_mode == "off" {
        return Err(BackupError::Invalid(
            "archive_mode is off on the server: a base backup without WAL archiving cannot be rewound to a point in time. Set archive_mode = on and archive_command to archive-wal, then restart PostgreSQL".into(),
        ));
    }

    let _lock = lock_shared(&config.backup.dir)?;
    let id = new_id(&config.backup.dir);
    let dir = config.backup.dir.join(&id);
    fs::create_dir(&dir).map_err(io_err(format!("create {}", dir.display())))?;
    pgpitr_durable::sync_dir(&config.backup.dir)?;
    // Whatever happens from here, a failed run removes its folder; a killed run leaves a
    // folder without backup.json, which is never counted.
    let guard = RemoveOnDrop(Some(dir.clone()));
    let start_time = Utc::now();
    progress(&format!("pg_basebackup into {}", dir.display()));
    let label = format!("pgpitr {} {id}", config.instance);
    let mut cmd = Command::new(bins.path("pg_basebackup"));
    cmd.args([
        "-F",
        "tar",
        "-X",
        "fetch",
        "--checkpoint=fast",
        "--no-password",
    ])
    .arg("-l")
    .arg(&label)
    .arg("-h")
    .arg(&config.postgres.socket_dir)
    .arg("-p")
    .arg(config.postgres.port.to_string())
    .arg("-U")
    .arg(&config.postgres.user);
    // One pass: pg_basebackup's tar is checked against its manifest and compressed as it
    // arrives; no uncompressed copy is staged on disk.
    let streamed = stream::stream(cmd, &dir, &encoder, &id, progress)?;
    let stop_time = Utc::now();
    let next_xid: String = client
        .query_one("SELECT pg_snapshot_xmax(pg_current_snapshot())::text", &[])
        .map_err(pgpitr_pg::PgError::from)?
        .get(0);
    let manifest_bytes = streamed.manifest_bytes;
    let manifest = streamed.manifest;
    let (start_lsn, checkpoint_lsn, timeline) = manifest::parse_backup_label(&streamed.label_text)
        .map_err(|message| BackupError::Verify {
            id: id.clone(),
            message,
        })?;
    let files = vec![streamed.file];
    write_new(&dir.join("backup_manifest"), &manifest_bytes, 0o640)?;

    progress("verifying the stored files");
    verify_stored_checksums(&dir, &files, &id)?;
    // Decode back what we stored when we can: always without encryption, and with it when
    // the identity file is readable here (it often lives offline, which is fine).
    let decoder = match (&config.encryption, encoder.encrypted()) {
        (_, false) => Some(Decoder::plain()),
        (Some(enc), true) => enc
            .identity_file
            .as_deref()
            .filter(|p| p.is_file())
            .and_then(|p| Decoder::from_identity_file(p).ok()),
        (None, true) => None,
    };
    if let Some(decoder) = decoder {
        verify_decodes(&dir, &files, &decoder, &id)?;
    }

    let stop_lsn = manifest
        .end_lsn()
        .ok_or_else(|| BackupError::Invalid("backup_manifest has no WAL-Ranges".into()))?;

    let info = BackupInfo {
        format: 1,
        id: id.clone(),
        instance: config.instance.clone(),
        label,
        start_lsn,
        checkpoint_lsn,
        stop_lsn,
        timeline,
        start_time,
        stop_time,
        system_identifier: sysid,
        pg_version_num: version_num as u32,
        wal_segment_size: seg_size as u64,
        next_xid: next_xid.parse().unwrap_or(0),
        compression: format!("{:?}", config.archive.compression).to_lowercase(),
        encrypted: encoder.encrypted(),
        files,
        manifest_sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&manifest_bytes)),
        duration_seconds: started.elapsed().as_secs_f64(),
    };
    relnames::write_snapshot(&ep, &dir, progress);
    let body = serde_json::to_vec_pretty(&info).expect("backup.json serialises");
    write_new(&dir.join(BACKUP_JSON), &body, 0o640)?;
    guard.disarm();
    progress(&format!("backup {id} complete"));
    Ok(info)
}

/// Checks the stored files' sha256 against `backup.json` (no decryption needed).
pub fn verify_stored_checksums(dir: &Path, files: &[BackupFile], id: &str) -> Result<()> {
    for f in files {
        let p = dir.join(&f.name);
        let file = File::open(&p).map_err(io_err(format!("open {}", p.display())))?;
        let (sha, n) = pgpitr_wal::codec::sha256_reader(BufReader::new(file))
            .map_err(io_err(format!("read {}", p.display())))?;
        if sha != f.stored_sha256 || n != f.stored_bytes {
            return Err(BackupError::Verify {
                id: id.into(),
                message: format!(
                    "{} is damaged (sha256 {sha}, expected {})",
                    f.name, f.stored_sha256
                ),
            });
        }
    }
    Ok(())
}

/// Decodes every stored file and compares it with the original's sha256.
pub fn verify_decodes(dir: &Path, files: &[BackupFile], decoder: &Decoder, id: &str) -> Result<()> {
    for f in files {
        let p = dir.join(&f.name);
        let file = File::open(&p).map_err(io_err(format!("open {}", p.display())))?;
        let suffix = f.name.strip_prefix(&f.original).unwrap_or("");
        let (sha, n) = decoder.decode(suffix, BufReader::new(file), std::io::sink())?;
        if sha != f.raw_sha256 || n != f.raw_bytes {
            return Err(BackupError::Verify {
                id: id.into(),
                message: format!(
                    "{} decodes to sha256 {sha}, expected {}",
                    f.name, f.raw_sha256
                ),
            });
        }
    }
    Ok(())
}

/// Full check of a stored backup: decodes every tar and checks each file inside against
/// the manifest (size and CRC32C).
pub fn verify_contents(
    dir: &Path,
    files: &[BackupFile],
    manifest: &Manifest,
    decoder: &Decoder,
    id: &str,
) -> Result<()> {
    let mut seen = std::collections::HashMap::new();
    let mut label = None;
    let verr = |message: String| BackupError::Verify {
        id: id.into(),
        message,
    };
    for f in files {
        let p = dir.join(&f.name);
        let file = File::open(&p).map_err(io_err(format!("open {}", p.display())))?;
        let suffix = f.name.strip_prefix(&f.original).unwrap_or("");
        let (reader, writer) = pipe_channel();
        let prefix = tar_prefix(&f.original);
        std::thread::scope(|s| -> Result<()> {
            let h = s.spawn(move || decoder.decode(suffix, file, writer));
            let r = manifest::check_tar(reader, &prefix, &mut seen, &mut label);
            let (sha, _) = h.join().expect("decoder thread")?;
            r.map_err(verr)?;
            if sha != f.raw_sha256 {
                return Err(verr(format!(
                    "{} decodes to sha256 {sha}, expected {}",
                    f.name, f.raw_sha256
                )));
            }
            Ok(())
        })?;
    }
    manifest.compare(&seen).map_err(verr)
}

/// Path prefix the manifest uses for files of a tablespace tar (`<oid>.tar`).
fn tar_prefix(tar_name: &str) -> String {
    if tar_name == "base.tar" {
        String::new()
    } else {
        format!("pg_tblspc/{}/", tar_name.trim_end_matches(".tar"))
    }
}

/// A bounded in-memory pipe between a decoding thread and a reader.
fn pipe_channel() -> (PipeReader, PipeWriter) {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
    (
        PipeReader {
            rx,
            buf: Vec::new(),
            pos: 0,
        },
        PipeWriter { tx },
    )
}

pub struct PipeWriter {
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
}

impl std::io::Write for PipeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx
            .send(buf.to_vec())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "reader gone"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct PipeReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl std::io::Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.buf.len() {
            match self.rx.recv() {
                Ok(b) => {
                    self.buf = b;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for PipeReader {
    fn drop(&mut self) {
        // Drain so a writer blocked on a full channel can finish.
        while self.rx.try_recv().is_ok() {}
    }
}

/// Extracts a backup's data into `into` (which must exist and be empty).
/// Progress goes through `say`: a line on a terminal, else one every few seconds.
pub fn extract(
    info: &BackupInfo,
    backup_dir: &Path,
    decoder: &Decoder,
    into: &Path,
    say: &mut dyn FnMut(&str),
) -> Result<()> {
    let dir = backup_dir.join(&info.id);
    for f in &info.files {
        if f.original != "base.tar" {
            return Err(BackupError::Invalid(format!(
                "backup {} has tablespace archive {}; restoring tablespaces is not supported yet",
                info.id, f.original
            )));
        }
    }
    for f in &info.files {
        let p = dir.join(&f.name);
        let file = File::open(&p).map_err(io_err(format!("open {}", p.display())))?;
        let suffix = f.name.strip_prefix(&f.original).unwrap_or("");
        let (reader, writer) = pipe_channel();
        std::thread::scope(|s| -> Result<()> {
            let h = s.spawn(move || decoder.decode(suffix, file, writer));
            let mut meter = Meter::new(
                &format!("extracting {}", f.original),
                Some(f.raw_bytes),
                &mut *say,
            );
            let mut ar = tar::Archive::new(Metered {
                inner: reader,
                meter: &mut meter,
            });
            ar.set_preserve_permissions(true);
            let r = ar.unpack(into).map_err(io_err(format!(
                "extract {} into {}",
                f.name,
                into.display()
            )));
            let decoded = h.join().expect("decoder thread");
            drop(ar);
            meter.finish();
            r?;
            let (sha, _) = decoded?;
            if sha != f.raw_sha256 {
                return Err(BackupError::Verify {
                    id: info.id.clone(),
                    message: format!(
                        "{} decodes to sha256 {sha}, expected {}",
                        f.name, f.raw_sha256
                    ),
                });
            }
            Ok(())
        })?;
    }
    Ok(())
}

fn new_id(backup_dir: &Path) -> String {
    let base = Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let mut id = base.clone();
    let mut n = 1;
    while backup_dir.join(&id).exists() {
        n += 1;
        id = format!("{base}-{n}");
    }
    id
}

struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_dir_all(&p);
        }
    }
}
