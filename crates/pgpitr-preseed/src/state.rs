//! What the data folder really holds: decided from `PG_VERSION`, `global/pg_control` (read by
//! `pg_controldata` from the configured binaries, which checks its CRC) and the system
//! identifier, never from a marker file.

use crate::{io_err, PreseedError, Result};
use pgpitr_pg::Bins;
use serde::Serialize;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Entries a freshly created file system or dataset may hold that do not make it "non-empty".
const IGNORED: [&str; 1] = ["lost+found"];

/// Folder inside a data folder that is a mount point, where a restore is staged before its
/// entries are moved into place (see [`crate::place`]).
pub const INNER_STAGING: &str = ".pgpitr-preseed-staging";

/// What `pg_controldata` says about a cluster.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClusterInfo {
    /// A string in JSON, as everywhere (64 bits do not fit a JSON number exactly).
    #[serde(serialize_with = "as_string")]
    pub system_identifier: u64,
    pub major: u32,
    /// pg_controldata's "Database cluster state" (`state` names the folder's state).
    #[serde(rename = "cluster_state")]
    pub state: String,
    pub checkpoint_lsn: Option<String>,
    /// Where replay of the latest checkpoint starts (`Latest checkpoint's REDO location`):
    /// where preseed starts reading the folder's own WAL (not part of the JSON report).
    #[serde(skip)]
    pub redo_lsn: Option<String>,
    #[serde(with = "pgpitr_time::json::option")]
    pub checkpoint_time: Option<chrono::DateTime<chrono::Utc>>,
    pub timeline: Option<u32>,
    /// `Min recovery ending loc's timeline`: a promotion by end-of-recovery record sets it to
    /// the new timeline before any checkpoint there (0 when unset). Not in the JSON report.
    #[serde(skip)]
    pub min_recovery_timeline: Option<u32>,
}

fn as_string<S: serde::Serializer>(v: &u64, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

/// pg_controldata's "Sun Nov 22 15:00:00 2026": UTC, since `controldata` runs it with
/// `TZ=UTC` (a local time is ambiguous in the hour the clocks go back).
fn controldata_time(t: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::NaiveDateTime::parse_from_str(t.trim(), "%a %b %e %H:%M:%S %Y")
        .ok()
        .map(|n| n.and_utc())
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DataState {
    /// The folder does not exist.
    Missing,
    /// It exists and holds nothing (or only `lost+found`).
    Empty,
    /// A cluster PostgreSQL can start on.
    Cluster(ClusterInfo),
    /// Left by a preseed that was killed while moving a staged restore into a data folder
    /// that is a mount point: no `PG_VERSION` yet, and preseed's own staging folder inside.
    Interrupted { entries: usize },
    /// Something else: never touched without `--quarantine`.
    Foreign { what: String },
}

impl DataState {
    pub fn is_empty(&self) -> bool {
        matches!(self, DataState::Missing | DataState::Empty)
    }
}

impl std::fmt::Display for DataState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataState::Missing => write!(f, "missing"),
            DataState::Empty => write!(f, "empty"),
            DataState::Cluster(c) => write!(
                f,
                "a PostgreSQL {} cluster (system identifier {}, {}{})",
                c.major,
                c.system_identifier,
                c.state,
                c.checkpoint_lsn
                    .as_ref()
                    .map(|l| format!(", latest checkpoint at {l}"))
                    .unwrap_or_default()
            ),
            DataState::Interrupted { entries } => write!(
                f,
                "the leftover of an interrupted preseed ({entries} entries, no PG_VERSION)"
            ),
            DataState::Foreign { what } => write!(f, "{what}"),
        }
    }
}

/// Entries of `dir` that count (not `lost+found`), or `None` when it does not exist.
pub fn entries(dir: &Path) -> Result<Option<Vec<PathBuf>>> {
    match fs::read_dir(dir) {
        Ok(rd) => {
            let mut v = Vec::new();
            for e in rd {
                let e = e.map_err(io_err(format!("list {}", dir.display())))?;
                if !IGNORED.iter().any(|i| e.file_name() == *i) {
                    v.push(e.path());
                }
            }
            v.sort();
            Ok(Some(v))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(format!("read {}", dir.display()))(e).into()),
    }
}

/// Inspects `dir`. `expected_major` is the configured binaries' major version.
pub fn inspect(dir: &Path, bins: &Bins, expected_major: u32) -> Result<DataState> {
    let Some(list) = entries(dir)? else {
        return Ok(DataState::Missing);
    };
    if list.is_empty() {
        return Ok(DataState::Empty);
    }
    let version_file = dir.join("PG_VERSION");
    let version = match fs::read_to_string(&version_file) {
        Ok(v) => v.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if dir.join(INNER_STAGING).is_dir() {
                return Ok(DataState::Interrupted {
                    entries: list.len(),
                });
            }
            let names: Vec<String> = list
                .iter()
                .take(5)
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect();
            return Ok(DataState::Foreign {
                what: format!(
                    "a non-empty folder that is not a PostgreSQL cluster (no PG_VERSION; {} entries: {}{})",
                    list.len(),
                    names.join(", "),
                    if list.len() > names.len() { ", ..." } else { "" }
                ),
            });
        }
        Err(e) => return Err(io_err(format!("read {}", version_file.display()))(e).into()),
    };
    let major: u32 = match version.split('.').next().and_then(|m| m.parse().ok()) {
        Some(m) => m,
        None => {
            return Ok(DataState::Foreign {
                what: format!("a folder whose PG_VERSION reads {version:?}"),
            })
        }
    };
    if major != expected_major {
        return Ok(DataState::Foreign {
            what: format!(
                "a PostgreSQL {major} cluster, but the configured binaries are PostgreSQL {expected_major} (upgrade it with pg_upgrade, or point postgres.bin_dir at PostgreSQL {major})"
            ),
        });
    }
    if !dir.join("global").join("pg_control").is_file() {
        return Ok(DataState::Foreign {
            what: "a PostgreSQL folder without global/pg_control (an incomplete copy)".into(),
        });
    }
    match controldata(bins, dir)? {
        Ok(mut c) => {
            c.major = major;
            Ok(DataState::Cluster(c))
        }
        Err(why) => Ok(DataState::Foreign {
            what: format!("a PostgreSQL folder whose global/pg_control is unreadable ({why})"),
        }),
    }
}

/// Runs `pg_controldata`; the inner error says why the control file cannot be trusted.
pub fn controldata(bins: &Bins, dir: &Path) -> Result<std::result::Result<ClusterInfo, String>> {
    let out = Command::new(bins.path("pg_controldata"))
        .arg("-D")
        .arg(dir)
        .env("LC_ALL", "C")
        .env("LANG", "C")
        .env("TZ", "UTC")
        .output()
        .map_err(io_err(format!(
            "run {}",
            bins.path("pg_controldata").display()
        )))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Ok(Err(stderr.trim().replace('\n', " ")));
    }
    if let Some(w) = stdout
        .lines()
        .chain(stderr.lines())
        .find(|l| l.contains("WARNING"))
    {
        return Ok(Err(w.trim().to_string()));
    }
    Ok(parse_controldata(&stdout))
}

/// Parses `pg_controldata` output (C locale).
pub fn parse_controldata(text: &str) -> std::result::Result<ClusterInfo, String> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.strip_prefix(':'))
                .map(|v| v.trim().to_string())
        })
    };
    let sysid = field("Database system identifier")
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or("no database system identifier in pg_controldata's output")?;
    Ok(ClusterInfo {
        system_identifier: sysid,
        major: 0,
        state: field("Database cluster state").unwrap_or_else(|| "unknown state".into()),
        checkpoint_lsn: field("Latest checkpoint location"),
        redo_lsn: field("Latest checkpoint's REDO location"),
        checkpoint_time: field("Time of latest checkpoint").and_then(|t| controldata_time(&t)),
        timeline: field("Latest checkpoint's TimeLineID").and_then(|t| t.parse().ok()),
        min_recovery_timeline: field("Min recovery ending loc's timeline")
            .and_then(|t| t.parse().ok()),
    })
}

/// Refuses a cluster whose system identifier is not the archive's (or the backups').
pub fn check_identity(
    c: &ClusterInfo,
    expected: Option<(u64, String)>,
) -> std::result::Result<(), PreseedError> {
    match expected {
        Some((id, source)) if id != c.system_identifier => Err(PreseedError::Refused(format!(
            "the data folder holds another cluster: system identifier {} but {source} belongs to {id}",
            c.system_identifier
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_controldata() {
        let text = "pg_control version number:            1300\nDatabase system identifier:           7311111111111111111\nDatabase cluster state:               shut down\nLatest checkpoint location:           0/3000028\nLatest checkpoint's REDO location:    0/3000020\nLatest checkpoint's TimeLineID:       2\nTime of latest checkpoint:            Sun Nov 22 15:00:00 2026\nMin recovery ending loc's timeline:   3\n";
        let c = parse_controldata(text).unwrap();
        assert_eq!(c.system_identifier, 7311111111111111111);
        assert_eq!(c.state, "shut down");
        assert_eq!(c.checkpoint_lsn.as_deref(), Some("0/3000028"));
        assert_eq!(c.redo_lsn.as_deref(), Some("0/3000020"));
        assert_eq!(c.timeline, Some(2));
        assert_eq!(c.min_recovery_timeline, Some(3));
        let t = c.checkpoint_time.expect("checkpoint time parsed");
        assert_eq!(t.to_rfc3339(), "2026-11-22T15:00:00+00:00");
        let j = serde_json::to_value(&c).unwrap();
        assert_eq!(j["system_identifier"], "7311111111111111111");
        assert_eq!(j["cluster_state"], "shut down");
        assert!(j["checkpoint_time"].as_str().unwrap().ends_with('Z'), "{j}");
        assert!(parse_controldata("garbage").is_err());
    }

    #[test]
    fn identity_mismatch_is_refused() {
        let c = parse_controldata("Database system identifier: 5\n").unwrap();
        assert!(check_identity(&c, Some((5, "archive.json".into()))).is_ok());
        assert!(check_identity(&c, None).is_ok());
        let e = check_identity(&c, Some((6, "the archive".into())))
            .unwrap_err()
            .to_string();
        assert!(e.contains("another cluster") && e.contains('6'), "{e}");
    }
}
