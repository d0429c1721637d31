//! `pgpitr incidents`: reads the archived WAL of a time range with pg_waldump and finds the
//! bad moment (a DELETE without WHERE, a TRUNCATE, a DROP TABLE or DATABASE, a large UPDATE),
//! so the operator restores to just before it (`restore --to xid:N --exclusive`) without
//! guessing a second.
//!
//! Segments are decoded (and decrypted) into a private temporary folder in chunks; one
//! pg_waldump runs per chunk, a few at a time; the chunks' per-transaction counts are merged
//! in WAL order.

pub mod aggregate;
pub mod names;
pub mod scan;
pub mod waldump;

use chrono::{DateTime, Utc};
use pgpitr_wal::Lsn;
use serde::Serialize;

pub use scan::{scan, ScanOptions};

#[derive(Debug, thiserror::Error)]
pub enum IncidentsError {
    #[error(transparent)]
    Restore(#[from] pgpitr_restore::RestoreError),
    #[error(transparent)]
    Wal(#[from] pgpitr_wal::WalError),
    #[error(transparent)]
    Pg(#[from] pgpitr_pg::PgError),
    #[error(transparent)]
    Backup(#[from] pgpitr_backup::BackupError),
    #[error(transparent)]
    Io(#[from] pgpitr_durable::IoError),
    #[error("{0}")]
    Refused(String),
}

pub type Result<T> = std::result::Result<T, IncidentsError>;

/// What kind of harm a transaction did, most destructive last (the ranking order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Kind {
    Insert,
    /// VACUUM FULL, CLUSTER, ALTER TABLE rewrites: new files, rows kept.
    Rewrite,
    Update,
    Delete,
    Truncate,
    DropTable,
    DropDatabase,
}

impl Kind {
    pub fn label(&self) -> &'static str {
        match self {
            Kind::Insert => "INSERT",
            Kind::Rewrite => "REWRITE",
            Kind::Update => "UPDATE",
            Kind::Delete => "DELETE",
            Kind::Truncate => "TRUNCATE",
            Kind::DropTable => "DROP TABLE",
            Kind::DropDatabase => "DROP DATABASE",
        }
    }
}

/// What one transaction did to one relation.
#[derive(Debug, Clone, Serialize)]
pub struct RelationChange {
    pub database: String,
    pub relation: String,
    /// tablespace/database/relfilenode as the WAL names it.
    pub file: String,
    pub name_source: String,
    pub deleted: u64,
    pub updated: u64,
    /// Of `updated`, those that stayed on their page (HOT).
    pub hot_updated: u64,
    pub inserted: u64,
    /// Its file was replaced by an empty one (TRUNCATE).
    pub truncated: bool,
    /// Its file was removed (DROP TABLE).
    pub dropped: bool,
    /// Its file was replaced with a rewritten copy (VACUUM FULL, CLUSTER).
    pub rewritten: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Incident {
    pub rank: usize,
    pub kind: Kind,
    pub xid: u32,
    pub committed_at: DateTime<Utc>,
    pub commit_lsn: Lsn,
    pub rows_deleted: u64,
    pub rows_updated: u64,
    pub rows_inserted: u64,
    /// Rows changed compared with the range: at least ten times its 99th percentile.
    pub large: bool,
    pub relations: Vec<RelationChange>,
    pub dropped_databases: Vec<String>,
    /// Files of system catalogs rewritten through the relation map (VACUUM FULL pg_class...).
    pub relmap_updates: u32,
    /// `xid:N` with `--exclusive`: stops just before this transaction's commit.
    pub restore_target: String,
    pub restore_command: String,
}

impl Incident {
    pub fn rows(&self) -> u64 {
        self.rows_deleted + self.rows_updated + self.rows_inserted
    }

    /// One line: "DELETE xid 748 at ...: 1,204,551 rows deleted from public.orders".
    pub fn summary(&self) -> String {
        let rels = |f: &dyn Fn(&RelationChange) -> bool| {
            let v: Vec<&str> = self
                .relations
                .iter()
                .filter(|r| f(r))
                .map(|r| r.relation.as_str())
                .collect();
            v.join(", ")
        };
        let what = match self.kind {
            Kind::DropDatabase => format!("dropped database {}", self.dropped_databases.join(", ")),
            Kind::DropTable => format!("dropped {}", rels(&|r| r.dropped)),
            Kind::Truncate => format!("truncated {}", rels(&|r| r.truncated)),
            Kind::Delete => format!(
                "deleted {} rows from {}",
                thousands(self.rows_deleted),
                rels(&|r| r.deleted > 0)
            ),
            Kind::Update => format!(
                "updated {} rows in {}",
                thousands(self.rows_updated),
                rels(&|r| r.updated > 0)
            ),
            Kind::Rewrite => format!("rewrote {}", rels(&|r| r.rewritten)),
            Kind::Insert => format!(
                "inserted {} rows into {}",
                thousands(self.rows_inserted),
                rels(&|r| r.inserted > 0)
            ),
        };
        format!(
            "{} xid {} committed {}: {what}",
            self.kind.label(),
            self.xid,
            self.committed_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        )
    }
}

/// What was scanned.
#[derive(Debug, Clone, Serialize)]
pub struct Scanned {
    pub timelines: Vec<u32>,
    pub first_segment: Option<String>,
    pub last_segment: Option<String>,
    pub segments: usize,
    pub wal_bytes: u64,
    pub records: u64,
    /// Committed transactions in the range.
    pub committed: u64,
    pub aborted: u64,
    /// Transactions with changes whose end is not in the scanned WAL.
    pub still_open: usize,
    pub first_commit: Option<DateTime<Utc>>,
    pub last_commit: Option<DateTime<Utc>>,
    /// 99th percentile of user rows changed per committed transaction.
    pub p99_rows: u64,
    pub seconds: f64,
    pub jobs: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scanned: Scanned,
    /// Where relation names came from, in order of preference.
    pub names_from: Vec<String>,
    /// Ranked, most destructive first.
    pub incidents: Vec<Incident>,
    pub warnings: Vec<String>,
}

pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut parts = Vec::new();
    let mut end = s.len();
    while end > 3 {
        parts.push(&s[end - 3..end]);
        end -= 3;
    }
    parts.push(&s[..end]);
    parts.reverse();
    parts.join(",")
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.scanned;
        let t = |x: Option<DateTime<Utc>>| {
            x.map(|x| x.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_else(|| "-".into())
        };
        writeln!(
            f,
            "scanned {} segments ({} .. {}, timeline {}) in {:.1} s: {} transactions committed from {} to {}, {} aborted",
            s.segments,
            s.first_segment.as_deref().unwrap_or("-"),
            s.last_segment.as_deref().unwrap_or("-"),
            s.timelines.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" → "),
            s.seconds,
            thousands(s.committed),
            t(s.first_commit),
            t(s.last_commit),
            thousands(s.aborted)
        )?;
        writeln!(
            f,
            "names from: {}",
            if self.names_from.is_empty() {
                "nothing (relations shown as file numbers)".to_string()
            } else {
                self.names_from.join(", ")
            }
        )?;
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        if self.incidents.is_empty() {
            writeln!(
                f,
                "no incident in this range: no DROP, TRUNCATE, and no transaction changed at least the --min-rows threshold"
            )?;
        }
        for i in &self.incidents {
            writeln!(f)?;
            writeln!(
                f,
                "#{} {}{}",
                i.rank,
                i.summary(),
                if i.large {
                    format!(
                        " (large: the range's 99th percentile is {} rows)",
                        s.p99_rows
                    )
                } else {
                    String::new()
                }
            )?;
            writeln!(f, "   commit lsn {}", i.commit_lsn)?;
            for r in &i.relations {
                let mut parts = Vec::new();
                if r.dropped {
                    parts.push("dropped".to_string());
                }
                if r.truncated {
                    parts.push("truncated".to_string());
                }
                if r.rewritten {
                    parts.push("rewritten".to_string());
                }
                if r.deleted > 0 {
                    parts.push(format!("{} deleted", thousands(r.deleted)));
                }
                if r.updated > 0 {
                    parts.push(format!(
                        "{} updated ({} HOT)",
                        thousands(r.updated),
                        thousands(r.hot_updated)
                    ));
                }
                if r.inserted > 0 {
                    parts.push(format!("{} inserted", thousands(r.inserted)));
                }
                writeln!(
                    f,
                    "   {} (database {}): {}  [names: {}]",
                    r.relation,
                    r.database,
                    parts.join(", "),
                    r.name_source
                )?;
            }
            writeln!(f, "   restore to just before it:")?;
            writeln!(f, "     {}", i.restore_command)?;
        }
        Ok(())
    }
}

/// The incident `restore --before-incident` undoes: the top-ranked one, or, when `ask` is
/// given (a terminal), the one the operator picks from the top five.
pub fn choose<'a>(
    report: &'a Report,
    ask: Option<(&mut dyn std::io::BufRead, &mut dyn std::io::Write)>,
) -> Result<&'a Incident> {
    let Some(top) = report.incidents.first() else {
        return Err(IncidentsError::Refused(format!(
            "no incident found in the scanned range ({} segments, {} committed transactions): nothing to restore before. Narrow or widen it with --around, or pass --to",
            report.scanned.segments, report.scanned.committed
        )));
    };
    let Some((input, out)) = ask else {
        return Ok(top);
    };
    let shown: Vec<&Incident> = report.incidents.iter().take(5).collect();
    let io = || pgpitr_durable::io_context("ask which incident");
    for i in &shown {
        writeln!(out, "  {}) {}", i.rank, i.summary()).map_err(io())?;
    }
    write!(out, "restore to just before which one? [1] ").map_err(io())?;
    out.flush().map_err(io())?;
    let mut line = String::new();
    input.read_line(&mut line).map_err(io())?;
    let line = line.trim();
    if line.is_empty() {
        return Ok(top);
    }
    line.parse::<usize>()
        .ok()
        .and_then(|n| shown.iter().find(|i| i.rank == n).copied())
        .ok_or_else(|| {
            IncidentsError::Refused(format!(
                "{line:?} is not one of 1..{}: nothing was changed",
                shown.len()
            ))
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands() {
        assert_eq!(super::thousands(1204551), "1,204,551");
        assert_eq!(super::thousands(300), "300");
        assert_eq!(super::thousands(3000), "3,000");
    }
}

#[cfg(test)]
mod choose_tests {
    use super::*;

    fn report(n: usize) -> Report {
        let inc = |rank: usize| Incident {
            rank,
            kind: Kind::Delete,
            xid: 700 + rank as u32,
            committed_at: Utc::now(),
            commit_lsn: Lsn(0x3000000),
            rows_deleted: 10,
            rows_updated: 0,
            rows_inserted: 0,
            large: true,
            relations: vec![],
            dropped_databases: vec![],
            relmap_updates: 0,
            restore_target: format!("xid:{}", 700 + rank),
            restore_command: String::new(),
        };
        Report {
            scanned: Scanned {
                timelines: vec![1],
                first_segment: None,
                last_segment: None,
                segments: 1,
                wal_bytes: 0,
                records: 0,
                committed: 0,
                aborted: 0,
                still_open: 0,
                first_commit: None,
                last_commit: None,
                p99_rows: 0,
                seconds: 0.0,
                jobs: 1,
            },
            names_from: vec![],
            incidents: (1..=n).map(inc).collect(),
            warnings: vec![],
        }
    }

    #[test]
    fn top_one_without_a_terminal_and_the_operator_s_pick_with_one() {
        let r = report(3);
        assert_eq!(choose(&r, None).unwrap().xid, 701);
        let mut out = Vec::new();
        let mut input = std::io::Cursor::new(b"2\n".to_vec());
        assert_eq!(choose(&r, Some((&mut input, &mut out))).unwrap().xid, 702);
        let shown = String::from_utf8(out).unwrap();
        assert!(shown.contains("3) DELETE xid 703"), "{shown}");
        let mut input = std::io::Cursor::new(b"\n".to_vec());
        assert_eq!(
            choose(&r, Some((&mut input, &mut Vec::new()))).unwrap().xid,
            701
        );
        let mut input = std::io::Cursor::new(b"9\n".to_vec());
        assert!(choose(&r, Some((&mut input, &mut Vec::new()))).is_err());
        assert!(choose(&report(0), None)
            .unwrap_err()
            .to_string()
            .contains("no incident found"));
    }
}
