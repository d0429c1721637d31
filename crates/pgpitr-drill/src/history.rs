//! The drill history: `<backup.dir>/drills.jsonl`, one JSON line per drill, appended and
//! fsynced. The metrics (last success) and the next drill's choice of target come from it.

use crate::{DrillError, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const FILE: &str = "drills.jsonl";

/// The result of one check of the restored copy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckResult {
    pub check: String,
    pub ok: bool,
    /// The check did not run: because an earlier step failed (then `ok` is false), or
    /// because it is turned off (`heartbeat` with drill.heartbeat = false; then `ok` is true).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    pub detail: String,
}

/// Seconds spent in each phase (the RTO, split).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Durations {
    /// Downloading from the offsite repository (0 for a local drill).
    pub fetch: f64,
    /// Planning, extracting the backup and writing the recovery settings.
    pub extract: f64,
    /// Replaying WAL up to the target.
    pub replay: f64,
    /// From the stop line to accepting connections on the new timeline (null when the log
    /// lines could not be timed; then `replay` includes it).
    pub promote: Option<f64>,
    /// Connecting, pg_amcheck, heartbeat.
    pub checks: f64,
    pub total: f64,
}

/// One drill, as appended to the history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DrillRecord {
    /// When the drill started.
    pub time: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub instance: String,
    /// `random`, `latest` or `given` (an explicit `--to`).
    pub mode: String,
    /// The target as `--to` accepts it.
    pub target: String,
    /// The point in time the target stands for (for `latest`: the newest archived
    /// transaction), when known.
    pub target_time: Option<DateTime<Utc>>,
    pub backup_id: Option<String>,
    /// `local` or `offsite`.
    pub source: String,
    pub success: bool,
    pub checks: Vec<CheckResult>,
    pub durations: Durations,
    /// How far back the restored data is: target time (for `latest`, the drill's start)
    /// minus the restored heartbeat's time.
    pub rpo_seconds: Option<f64>,
    pub heartbeat_time: Option<DateTime<Utc>>,
    pub stopped_at_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// With `--keep`: the restored copy left running here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<PathBuf>,
}

impl DrillRecord {
    pub fn failed_checks(&self) -> Vec<&CheckResult> {
        self.checks.iter().filter(|c| !c.ok && !c.skipped).collect()
    }

    /// One line for `pgpitr status`.
    pub fn summary(&self) -> String {
        let failed: Vec<&str> = self
            .failed_checks()
            .iter()
            .map(|c| c.check.as_str())
            .collect();
        format!(
            "last drill {}: {} ({} drill to {}, backup {}, from {}){}{}",
            self.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            if self.success { "passed" } else { "FAILED" },
            self.mode,
            self.target,
            self.backup_id.as_deref().unwrap_or("?"),
            self.source,
            if failed.is_empty() {
                String::new()
            } else {
                format!(", failed checks: {}", failed.join(", "))
            },
            match self.rpo_seconds {
                Some(r) => format!(", RPO {r:.0} s, RTO {:.0} s", self.rto_seconds()),
                None => format!(", RTO {:.0} s", self.rto_seconds()),
            }
        )
    }

    /// Time to a usable copy: fetch + extract + replay + promote.
    pub fn rto_seconds(&self) -> f64 {
        let d = &self.durations;
        d.fetch + d.extract + d.replay + d.promote.unwrap_or(0.0)
    }
}

impl std::fmt::Display for DrillRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "drill {} ({} to {}, backup {}, from {})",
            if self.success { "passed" } else { "FAILED" },
            self.mode,
            self.target,
            self.backup_id.as_deref().unwrap_or("?"),
            self.source
        )?;
        for c in &self.checks {
            let state = if c.skipped {
                "skip"
            } else if c.ok {
                "ok  "
            } else {
                "FAIL"
            };
            writeln!(f, "  {state} {:<18} {}", c.check, c.detail)?;
        }
        let d = &self.durations;
        writeln!(
            f,
            "  durations: fetch {:.1} s, extract {:.1} s, replay {:.1} s, promote {}, checks {:.1} s, total {:.1} s",
            d.fetch,
            d.extract,
            d.replay,
            d.promote
                .map(|p| format!("{p:.1} s"))
                .unwrap_or_else(|| "? (in replay)".into()),
            d.checks,
            d.total
        )?;
        match self.rpo_seconds {
            Some(r) => writeln!(f, "  measured RPO {r:.1} s")?,
            None => writeln!(f, "  RPO not measured")?,
        }
        for w in &self.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        if let Some(k) = &self.kept {
            writeln!(
                f,
                "  kept running in {} (the next drill removes it)",
                k.display()
            )?;
        }
        Ok(())
    }
}

pub fn path(backup_dir: &Path) -> PathBuf {
    backup_dir.join(FILE)
}

/// Appends one line durably (write, fsync; fsync the folder when the file is new).
pub fn append(backup_dir: &Path, rec: &DrillRecord) -> Result<()> {
    let p = path(backup_dir);
    let io = |what: &str| {
        let what = format!("{what} {}", p.display());
        move |e| DrillError::Io(pgpitr_durable::io_context(what)(e))
    };
    std::fs::create_dir_all(backup_dir).map_err(io("create folder of"))?;
    let existed = p.exists();
    let mut line = serde_json::to_string(rec).expect("record serialises");
    line.push('\n');
    // A torn last line (crash mid-append) must not swallow this one.
    if let Ok(bytes) = std::fs::read(&p) {
        if bytes.last().is_some_and(|b| *b != b'\n') {
            line.insert(0, '\n');
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(&p)
        .map_err(io("open"))?;
    f.write_all(line.as_bytes()).map_err(io("append to"))?;
    f.sync_all().map_err(io("fsync"))?;
    if !existed {
        pgpitr_durable::sync_dir(backup_dir)?;
    }
    Ok(())
}

/// Every readable record, oldest first; unreadable lines (a torn last line after a crash)
/// are skipped with a warning.
pub fn read(backup_dir: &Path) -> Result<Vec<DrillRecord>> {
    let p = path(backup_dir);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(DrillError::Io(pgpitr_durable::io_context(format!(
                "read {}",
                p.display()
            ))(e)))
        }
    };
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(l) {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!(
                "{} line {}: unreadable drill record: {e}",
                p.display(),
                i + 1
            ),
        }
    }
    Ok(out)
}

/// The newest record.
pub fn last(backup_dir: &Path) -> Result<Option<DrillRecord>> {
    Ok(read(backup_dir)?.pop())
}
