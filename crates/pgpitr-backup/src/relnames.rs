//! The catalog snapshot a base backup keeps (`catalog.json` in its folder): for every
//! database, each relation's file node, oid, schema and name. `pgpitr incidents` names the
//! relations a WAL record touched with it when the live server no longer can (the table was
//! dropped, truncated or rewritten since).

use crate::{BackupInfo, Result};
use chrono::{DateTime, Utc};
use pgpitr_pg::Endpoint;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const CATALOG_JSON: &str = "catalog.json";

/// One relation with storage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RelationName {
    pub oid: u32,
    pub filenode: u32,
    /// Tablespace oid as file paths use it (1663 for the default, 1664 for global).
    pub tablespace: u32,
    pub schema: String,
    pub name: String,
    /// pg_class.relkind: r table, p partitioned, m materialized view, t TOAST, i index, S sequence.
    pub kind: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatabaseNames {
    pub oid: u32,
    pub name: String,
    pub relations: Vec<RelationName>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CatalogSnapshot {
    pub format: u32,
    pub taken_at: DateTime<Utc>,
    pub databases: Vec<DatabaseNames>,
}

const RELATIONS_SQL: &str = "SELECT c.oid::oid, pg_relation_filenode(c.oid)::oid, \
     (CASE WHEN c.reltablespace = 0 THEN (SELECT dattablespace FROM pg_database WHERE datname = current_database()) ELSE c.reltablespace END)::oid, \
     n.nspname::text, c.relname::text, c.relkind::text \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE pg_relation_filenode(c.oid) IS NOT NULL";

/// Reads the names from every database that accepts connections.
pub fn take_snapshot(ep: &Endpoint) -> Result<CatalogSnapshot> {
    let mut client = ep.connect("postgres")?;
    let dbs = client
        .query(
            "SELECT oid::oid, datname::text FROM pg_database WHERE datallowconn ORDER BY oid",
            &[],
        )
        .map_err(pgpitr_pg::PgError::from)?;
    let mut databases = Vec::new();
    for row in dbs {
        let oid: u32 = row.get(0);
        let name: String = row.get(1);
        let mut c = ep.connect(&name)?;
        let relations = c
            .query(RELATIONS_SQL, &[])
            .map_err(pgpitr_pg::PgError::from)?
            .iter()
            .map(|r| RelationName {
                oid: r.get(0),
                filenode: r.get(1),
                tablespace: r.get(2),
                schema: r.get(3),
                name: r.get(4),
                kind: r.get(5),
            })
            .collect();
        databases.push(DatabaseNames {
            oid,
            name,
            relations,
        });
    }
    Ok(CatalogSnapshot {
        format: 1,
        taken_at: Utc::now(),
        databases,
    })
}

/// Takes the snapshot into `dir/catalog.json`. Names are a convenience for `incidents`, not
/// part of what a restore needs, so a failure is reported through `progress` and the backup
/// goes on.
pub fn write_snapshot(ep: &Endpoint, dir: &Path, progress: &mut dyn FnMut(&str)) {
    let r = take_snapshot(ep).and_then(|s| {
        let body = serde_json::to_vec_pretty(&s).expect("catalog snapshot serialises");
        pgpitr_durable::write_new(&dir.join(CATALOG_JSON), &body, 0o640)?;
        Ok(s.databases.iter().map(|d| d.relations.len()).sum::<usize>())
    });
    match r {
        Ok(n) => progress(&format!("catalog snapshot: {n} relation names")),
        Err(e) => {
            tracing::warn!("no catalog snapshot: {e}");
            progress(&format!(
                "warning: no catalog snapshot ({e}); `pgpitr incidents` will show relations dropped later as numbers"
            ))
        }
    }
}

/// The snapshots of `backups` (those that have one), oldest first.
pub fn load_snapshots(backup_dir: &Path, backups: &[BackupInfo]) -> Vec<(String, CatalogSnapshot)> {
    backups
        .iter()
        .filter_map(|b| {
            let p = backup_dir.join(&b.id).join(CATALOG_JSON);
            let bytes = std::fs::read(&p).ok()?;
            match serde_json::from_slice(&bytes) {
                Ok(s) => Some((b.id.clone(), s)),
                Err(e) => {
                    tracing::warn!("{} is unreadable: {e}", p.display());
                    None
                }
            }
        })
        .collect()
}
