//! A thin, careful driver for the `restic` command line.
//!
//! The password reaches restic only as `RESTIC_PASSWORD_FILE`; backend credentials only
//! through the environment, read from a `KEY=VALUE` file the config names. Neither ever
//! appears in argv, in logs or in errors. restic's own error text is kept in errors, with
//! what to do next.

use serde::Deserialize;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum ResticError {
    #[error("restic is not installed or not runnable ({0}): apt-get install -y restic")]
    Missing(String),
    #[error("restic repository {repo} does not exist: create it with `restic -r {repo} init` (password from {password_file}), or set offsite.init = true")]
    NoRepository {
        repo: String,
        password_file: PathBuf,
    },
    #[error("restic could not open {repo}: wrong password or no key found. Check offsite.password_file ({password_file}) holds this repository's password")]
    WrongPassword {
        repo: String,
        password_file: PathBuf,
    },
    #[error("restic repository {repo} is locked: {detail}. If no other restic runs, the lock is stale: remove it with `restic -r {repo} unlock`, or rerun with --unlock-stale")]
    Locked { repo: String, detail: String },
    #[error("restic {command} failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("cannot read {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("restic {command}: unexpected output: {message}")]
    Output { command: String, message: String },
}

pub type Result<T> = std::result::Result<T, ResticError>;

/// One repository and how to reach it.
#[derive(Debug, Clone)]
pub struct Restic {
    pub bin: PathBuf,
    pub repository: String,
    pub password_file: PathBuf,
    env: Vec<(String, String)>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Snapshot {
    pub id: String,
    pub short_id: String,
    pub time: String,
    pub paths: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub hostname: String,
}

impl Snapshot {
    /// Value of a `key:value` tag.
    pub fn tag(&self, key: &str) -> Option<&str> {
        let prefix = format!("{key}:");
        self.tags.iter().find_map(|t| t.strip_prefix(&prefix))
    }
}

/// restic backup's JSON summary.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
pub struct BackupSummary {
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    pub data_added: u64,
    pub total_files_processed: u64,
    pub total_bytes_processed: u64,
    pub snapshot_id: String,
}

/// Bytes of the regular files under `dir` (0 when it does not exist yet).
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// A `status` line of `restic backup --json`.
#[derive(Debug, Deserialize)]
struct BackupStatus {
    #[serde(default)]
    percent_done: f64,
    #[serde(default)]
    bytes_done: u64,
    #[serde(default)]
    total_bytes: u64,
    #[serde(default)]
    files_done: u64,
    #[serde(default)]
    total_files: u64,
}

impl BackupStatus {
    fn line(&self) -> String {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        format!(
            "restic: {:.0}% ({:.1} of {:.1} MiB, {} of {} files)",
            self.percent_done * 100.0,
            mib(self.bytes_done),
            mib(self.total_bytes),
            self.files_done,
            self.total_files
        )
    }
}

/// A file or folder in a snapshot (`restic ls --json`).
#[derive(Debug, Clone, Deserialize)]
pub struct Node {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub size: u64,
}

/// Parses a `KEY=VALUE` environment file (blank lines and `#` comments ignored, optional
/// `export ` prefix and surrounding quotes). Errors never quote values.
pub fn parse_env_file(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).map_err(|e| ResticError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            return Err(ResticError::File {
                path: path.to_path_buf(),
                message: format!("line {}: expected KEY=VALUE", i + 1),
            });
        };
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        out.push((k.trim().to_string(), v.to_string()));
    }
    Ok(out)
}

impl Restic {
    pub fn new(
        bin: Option<&Path>,
        repository: &str,
        password_file: &Path,
        environment_file: Option<&Path>,
    ) -> Result<Restic> {
        if !password_file.is_file() {
            return Err(ResticError::File {
                path: password_file.to_path_buf(),
                message: "the restic password file does not exist".into(),
            });
        }
        let env = match environment_file {
            Some(p) => parse_env_file(p)?,
            None => Vec::new(),
        };
        Ok(Restic {
            bin: bin
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("restic")),
            repository: repository.to_string(),
            password_file: password_file.to_path_buf(),
            env,
        })
    }

    /// restic could not be run or waited for.
    fn missing(&self, e: std::io::Error) -> ResticError {
        ResticError::Missing(format!("{}: {e}", self.bin.display()))
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .env_remove("RESTIC_PASSWORD")
            .env_remove("RESTIC_PASSWORD_COMMAND")
            .env("RESTIC_REPOSITORY", &self.repository)
            .env("RESTIC_PASSWORD_FILE", &self.password_file)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null());
        c
    }

    /// Runs restic and returns stdout, mapping its well-known failures.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let command = args.first().copied().unwrap_or("").to_string();
        tracing::debug!("restic {}", args.join(" "));
        let out = self.command(args).output().map_err(|e| self.missing(e))?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(self.classify(command, stderr))
    }

    fn classify(&self, command: String, stderr: String) -> ResticError {
        if stderr.contains("wrong password") {
            ResticError::WrongPassword {
                repo: self.repository.clone(),
                password_file: self.password_file.clone(),
            }
        } else if stderr.contains("Is there a repository at the following location")
            || stderr.contains("repository does not exist")
        {
            ResticError::NoRepository {
                repo: self.repository.clone(),
                password_file: self.password_file.clone(),
            }
        } else if stderr.contains("already locked") {
            let detail = stderr
                .lines()
                .find(|l| l.contains("locked"))
                .unwrap_or("")
                .trim()
                .to_string();
            ResticError::Locked {
                repo: self.repository.clone(),
                detail,
            }
        } else {
            ResticError::Failed {
                command,
                stderr: stderr.lines().collect::<Vec<_>>().join(" | "),
            }
        }
    }

    /// Whether the repository exists and opens with the password.
    pub fn exists(&self) -> Result<bool> {
        match self.run(&["cat", "config", "--no-lock"]) {
            Ok(_) => Ok(true),
            Err(ResticError::NoRepository { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Opens the repository, creating it first when `init` allows.
    pub fn ensure(&self, init: bool) -> Result<()> {
        if self.exists()? {
            return Ok(());
        }
        if !init {
            return Err(ResticError::NoRepository {
                repo: self.repository.clone(),
                password_file: self.password_file.clone(),
            });
        }
        self.run(&["init"]).map(|_| ())
    }

    /// `restic backup --json` of `paths` with `tags`. restic's status lines arrive while it
    /// runs (every 5 s: `RESTIC_PROGRESS_FPS`) and go to `progress` as one line each.
    pub fn backup(
        &self,
        paths: &[&Path],
        tags: &[String],
        host: Option<&str>,
        progress: &mut dyn FnMut(&str),
    ) -> Result<BackupSummary> {
        let mut args: Vec<String> = vec!["backup".into(), "--json".into()];
        for t in tags {
            args.push("--tag".into());
            args.push(t.clone());
        }
        if let Some(h) = host {
            args.push("--host".into());
            args.push(h.into());
        }
        args.extend(paths.iter().map(|p| p.display().to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        tracing::debug!("restic {}", refs.join(" "));
        let mut child = self
            .command(&refs)
            .env(
                "RESTIC_PROGRESS_FPS",
                // One status line per progress interval (PGPITR_PROGRESS_SECONDS, default 5).
                std::env::var("RESTIC_PROGRESS_FPS").unwrap_or_else(|_| {
                    format!("{}", 1.0 / pgpitr_time::progress_interval().as_secs_f64())
                }),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.missing(e))?;
        let err_reader = read_stderr_in_background(&mut child);
        let mut summary = None;
        for line in BufReader::new(child.stdout.take().expect("piped stdout"))
            .lines()
            .map_while(std::result::Result::ok)
        {
            if line.contains("\"message_type\":\"summary\"") {
                summary = serde_json::from_str::<BackupSummary>(&line).ok();
            } else if line.contains("\"message_type\":\"status\"") {
                if let Ok(st) = serde_json::from_str::<BackupStatus>(&line) {
                    progress(&st.line());
                }
            }
        }
        let status = child.wait().map_err(|e| self.missing(e))?;
        let stderr = err_reader.join().unwrap_or_default();
        if !status.success() {
            return Err(self.classify("backup".into(), stderr.trim().to_string()));
        }
        summary.ok_or_else(|| ResticError::Output {
            command: "backup".into(),
            message: "no summary line".into(),
        })
    }

    /// Snapshots carrying every tag in `tags`.
    pub fn snapshots(&self, tags: &[String]) -> Result<Vec<Snapshot>> {
        let joined = tags.join(",");
        let mut args = vec!["snapshots", "--json"];
        if !tags.is_empty() {
            args.push("--tag");
            args.push(&joined);
        }
        let out = self.run(&args)?;
        serde_json::from_str(&out).map_err(|e| ResticError::Output {
            command: "snapshots".into(),
            message: e.to_string(),
        })
    }

    /// Files and folders of a snapshot.
    pub fn ls(&self, snapshot: &str) -> Result<Vec<Node>> {
        let out = self.run(&["ls", "--json", snapshot])?;
        Ok(out
            .lines()
            .filter(|l| l.contains("\"struct_type\":\"node\""))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    /// Restores the `include` paths (all when empty) of a snapshot under `target`.
    pub fn restore(
        &self,
        snapshot: &str,
        target: &Path,
        include: &[String],
        progress: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let mut args: Vec<String> = vec![
            "restore".into(),
            snapshot.into(),
            "--target".into(),
            target.display().to_string(),
        ];
        for i in include {
            args.push("--include".into());
            args.push(i.clone());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        tracing::debug!("restic {}", refs.join(" "));
        // restic 0.14's restore prints no progress of its own without a terminal: what has
        // arrived under `target` is measured instead, once per progress interval.
        let mut child = self
            .command(&refs)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.missing(e))?;
        let err_reader = read_stderr_in_background(&mut child);
        let started = std::time::Instant::now();
        let mut said = started;
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) => {}
                Err(e) => return Err(self.missing(e)),
            }
            if said.elapsed() >= pgpitr_time::progress_interval() {
                said = std::time::Instant::now();
                progress(&format!(
                    "restic restore of {}: {:.1} MiB so far, {:.0} s",
                    &snapshot[..snapshot.len().min(8)],
                    tree_bytes(target) as f64 / (1024.0 * 1024.0),
                    started.elapsed().as_secs_f64()
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        let stderr = err_reader.join().unwrap_or_default();
        if status.success() {
            Ok(())
        } else {
            Err(self.classify("restore".into(), stderr.trim().to_string()))
        }
    }

    /// One file of a snapshot, in memory.
    pub fn dump(&self, snapshot: &str, path: &str) -> Result<Vec<u8>> {
        let out = self
            .command(&["dump", snapshot, path])
            .output()
            .map_err(|e| ResticError::Missing(e.to_string()))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(self.classify(
                "dump".into(),
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ))
        }
    }

    /// `restic forget` with `keep` options for snapshots with `tags`, grouped by host.
    pub fn forget(&self, tags: &[String], keep: &[(String, String)], prune: bool) -> Result<()> {
        let joined = tags.join(",");
        let mut args: Vec<String> = vec![
            "forget".into(),
            "--tag".into(),
            joined,
            "--group-by".into(),
            "host".into(),
        ];
        for (k, v) in keep {
            args.push(format!("--{k}"));
            args.push(v.clone());
        }
        if prune {
            args.push("--prune".into());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&refs).map(|_| ())
    }

    /// Removes stale locks (`restic unlock`).
    pub fn unlock(&self) -> Result<()> {
        self.run(&["unlock"]).map(|_| ())
    }
}

/// Reads a child's piped stderr to the end on a thread (so a chatty child never blocks on a
/// full pipe while we read its stdout or watch its progress); join for the text.
fn read_stderr_in_background(child: &mut std::process::Child) -> std::thread::JoinHandle<String> {
    let stderr = child.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn env_file_parsing_never_echoes_values() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("env");
        std::fs::write(
            &p,
            "# creds\nexport AWS_ACCESS_KEY_ID=AKIA\nAWS_SECRET_ACCESS_KEY=\"s3cr3t\"\n\nB2='x'\n",
        )
        .unwrap();
        let v = parse_env_file(&p).unwrap();
        assert_eq!(v[0], ("AWS_ACCESS_KEY_ID".into(), "AKIA".into()));
        assert_eq!(v[1].1, "s3cr3t");
        assert_eq!(v[2].1, "x");
        std::fs::write(&p, "TOKEN s3cr3t\n").unwrap();
        let e = parse_env_file(&p).unwrap_err().to_string();
        assert!(e.contains("line 1") && !e.contains("s3cr3t"), "{e}");
    }
}
