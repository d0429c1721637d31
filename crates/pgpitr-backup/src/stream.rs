//! One pass over pg_basebackup's output: its tar on stdout (`-D - -F tar -X fetch`, with the
//! backup manifest injected into it) is compressed (and encrypted) into the backup folder
//! while a second thread checks every member against the manifest. Nothing uncompressed ever
//! lands on disk, so the peak extra disk of a backup is its compressed size.

use crate::manifest;
use crate::{BackupError, BackupFile, Result};
use pgpitr_wal::codec::{Encoder, HashingWriter};
use std::collections::HashMap;
use std::io::{BufReader, IsTerminal, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What the pass produced.
pub(crate) struct Streamed {
    pub manifest_bytes: Vec<u8>,
    pub manifest: manifest::Manifest,
    pub label_text: String,
    pub file: BackupFile,
}

/// Progress of a byte stream: a `\r` line on a terminal, else a line every `every` through
/// `say` (journald gets something periodic).
pub struct Meter<'a> {
    what: String,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last: Instant,
    every: Duration,
    tty: bool,
    say: &'a mut dyn FnMut(&str),
}

impl<'a> Meter<'a> {
    pub fn new(what: &str, total: Option<u64>, say: &'a mut dyn FnMut(&str)) -> Meter<'a> {
        let now = Instant::now();
        Meter {
            what: what.into(),
            total,
            done: 0,
            started: now,
            last: now,
            every: pgpitr_time::progress_interval(),
            tty: std::io::stderr().is_terminal(),
            say,
        }
    }

    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = human(self.done as f64 / secs);
        match self.total {
            Some(t) if t > 0 => format!(
                "{}: {} of {} ({:.0}%), {rate}/s",
                self.what,
                human(self.done as f64),
                human(t as f64),
                self.done as f64 / t as f64 * 100.0
            ),
            _ => format!("{}: {}, {rate}/s", self.what, human(self.done as f64)),
        }
    }

    pub fn add(&mut self, n: u64) {
        self.done += n;
        let tick = if self.tty {
            Duration::from_millis(250)
        } else {
            self.every
        };
        if self.last.elapsed() >= tick {
            self.last = Instant::now();
            if self.tty {
                eprint!("\r  {}   ", self.line());
            } else {
                let l = self.line();
                (self.say)(&l);
            }
        }
    }

    pub fn finish(&mut self) {
        if self.tty && self.started.elapsed() >= Duration::from_millis(250) {
            eprintln!("\r  {}   ", self.line());
        }
    }
}

/// Reads from `inner` and counts what it read on `meter`.
pub struct Metered<'m, 'a, R> {
    pub inner: R,
    pub meter: &'m mut Meter<'a>,
}

impl<R: Read> Read for Metered<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.meter.add(n as u64);
        Ok(n)
    }
}

/// Reads from `inner`, copies every chunk to `tee` (the checking thread) and counts it.
struct Tee<'m, 'a, R> {
    inner: R,
    tee: crate::PipeWriter,
    meter: &'m mut Meter<'a>,
}

impl<R: Read> Read for Tee<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            // A checker that stopped (bad tar) must not stop the copy: its error is reported.
            let _ = self.tee.write_all(&buf[..n]);
            self.meter.add(n as u64);
        }
        Ok(n)
    }
}

/// Runs `cmd` (pg_basebackup without `-D`) writing its tar to stdout, and stores it as
/// `dir/base.tar<suffix>`.
pub(crate) fn stream(
    mut cmd: Command,
    dir: &Path,
    encoder: &Encoder,
    id: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<Streamed> {
    let verr = |message: String| BackupError::Verify {
        id: id.into(),
        message,
    };
    cmd.arg("-D")
        .arg("-")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| pgpitr_pg::PgError::Spawn {
        cmd: "pg_basebackup".into(),
        source,
    })?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let tar_name = "base.tar";
    let stored_name = format!("{tar_name}{}", encoder.suffix());
    let dest = dir.join(&stored_name);

    let (reader, writer) = crate::pipe_channel();
    let result = std::thread::scope(|s| -> Result<Streamed> {
        let err_thread = s.spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let check_thread = s.spawn(move || {
            let mut seen = HashMap::new();
            let mut label = None;
            let mut manifest = Some(Vec::new());
            let r = manifest::check_tar_capturing(
                BufReader::with_capacity(1 << 20, reader),
                "",
                &mut seen,
                &mut label,
                &mut manifest,
            );
            r.map(|()| (seen, label, manifest))
        });

        let mut meter = Meter::new(
            "streaming, checking and compressing base.tar",
            None,
            progress,
        );
        let mut tmp = pgpitr_durable::TempFile::new_in(dir, &stored_name, 0o640)?;
        let mut hw = HashingWriter::new(tmp.file(), true);
        let encoded = encoder.encode(
            Tee {
                inner: BufReader::with_capacity(1 << 20, stdout),
                tee: writer,
                meter: &mut meter,
            },
            &mut hw,
        );
        meter.finish();
        let (stored_sha, _) = hw.finish();
        let status = child.wait().map_err(|source| pgpitr_pg::PgError::Spawn {
            cmd: "pg_basebackup".into(),
            source,
        })?;
        let stderr_text = err_thread.join().expect("stderr thread");
        let checked = check_thread.join().expect("check thread");
        if !status.success() {
            return Err(pgpitr_pg::PgError::Command {
                cmd: "pg_basebackup".into(),
                status: status.to_string(),
                stderr: stderr_text.trim().to_string(),
            }
            .into());
        }
        let enc = encoded?;
        let (seen, label, manifest_bytes) = checked.map_err(verr)?;
        let manifest_bytes = manifest_bytes
            .filter(|m| !m.is_empty())
            .ok_or_else(|| verr("pg_basebackup's tar has no backup_manifest".into()))?;
        let manifest = manifest::Manifest::parse(&manifest_bytes).map_err(verr)?;
        manifest.compare(&seen).map_err(verr)?;
        tmp.publish_new(&dest)?;
        Ok(Streamed {
            manifest_bytes,
            manifest,
            label_text: label.unwrap_or_default(),
            file: BackupFile {
                name: stored_name.clone(),
                original: tar_name.into(),
                raw_bytes: enc.raw_bytes,
                stored_bytes: enc.stored_bytes,
                raw_sha256: enc.sha256,
                stored_sha256: stored_sha,
            },
        })
    });
    if result.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

fn human(n: f64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", U[i])
}
