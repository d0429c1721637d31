//! The heartbeat: one row in `pgpitr.heartbeat` of the `postgres` database, rewritten by
//! `healthcheck` on every run with the server's time and WAL position. A restored copy shows
//! in that row how far back its data really is, which is how a restore drill measures the
//! real RPO.

use crate::{Client, PgError, Result};
use chrono::{DateTime, Utc};
use pgpitr_wal::Lsn;

/// Database, schema and table of the heartbeat.
pub const DATABASE: &str = "postgres";
pub const TABLE: &str = "pgpitr.heartbeat";

/// One heartbeat as read back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Beat {
    pub at: DateTime<Utc>,
    pub lsn: Lsn,
}

/// Creates the schema and table when missing (idempotent).
pub fn ensure(db: &mut Client) -> Result<()> {
    db.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS pgpitr; \
         CREATE TABLE IF NOT EXISTS pgpitr.heartbeat ( \
           id int PRIMARY KEY CHECK (id = 1), \
           at timestamptz NOT NULL, \
           lsn pg_lsn NOT NULL); \
         COMMENT ON TABLE pgpitr.heartbeat IS \
           'written by pgpitr healthcheck on every run; restore drills read it to measure the real RPO'",
    )?;
    Ok(())
}

/// Writes the heartbeat unless the server is in recovery (a standby or a restore still
/// replaying must not be written to). Returns the beat written, `None` in recovery.
pub fn beat(db: &mut Client) -> Result<Option<Beat>> {
    let in_recovery: bool = db.query_one("SELECT pg_is_in_recovery()", &[])?.get(0);
    if in_recovery {
        return Ok(None);
    }
    ensure(db)?;
    let row = db.query_one(
        "INSERT INTO pgpitr.heartbeat (id, at, lsn) VALUES (1, now(), pg_current_wal_lsn()) \
         ON CONFLICT (id) DO UPDATE SET at = excluded.at, lsn = excluded.lsn \
         RETURNING at, lsn::text",
        &[],
    )?;
    Ok(Some(to_beat(&row)?))
}

/// Reads the heartbeat; `None` when the table or the row does not exist.
pub fn read(db: &mut Client) -> Result<Option<Beat>> {
    let exists: bool = db
        .query_one("SELECT to_regclass('pgpitr.heartbeat') IS NOT NULL", &[])?
        .get(0);
    if !exists {
        return Ok(None);
    }
    match db.query_opt(
        "SELECT at, lsn::text FROM pgpitr.heartbeat WHERE id = 1",
        &[],
    )? {
        Some(row) => Ok(Some(to_beat(&row)?)),
        None => Ok(None),
    }
}

fn to_beat(row: &postgres::Row) -> Result<Beat> {
    let at: std::time::SystemTime = row.get(0);
    let lsn: String = row.get(1);
    Ok(Beat {
        at: DateTime::<Utc>::from(at),
        lsn: lsn
            .parse()
            .map_err(|e| PgError::Other(format!("heartbeat lsn {lsn:?}: {e}")))?,
    })
}
