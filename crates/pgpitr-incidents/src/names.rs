//! Naming relation files: the live server first (`pg_filenode_relation`), then the catalog
//! snapshots basebackup keeps, newest first, else the numbers themselves.

use crate::waldump::RelFile;
use pgpitr_backup::relnames::CatalogSnapshot;
use pgpitr_pg::Endpoint;
use serde::Serialize;
use std::collections::HashMap;

/// First oid of user objects: below are the system catalogs.
const FIRST_NORMAL_OID: u32 = 16384;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RelName {
    pub database: String,
    /// `schema.table`, or the file's numbers when nothing could name it.
    pub name: String,
    pub oid: Option<u32>,
    /// pg_class.relkind when known.
    pub kind: Option<String>,
    /// `live server`, `catalog snapshot of backup ID`, or `unknown`.
    pub source: String,
    /// A system catalog (its rows change with DDL, they are not user data).
    pub catalog: bool,
}

struct Known {
    database: String,
    name: String,
    oid: u32,
    kind: String,
    source: String,
}

pub struct Resolver {
    live: Option<Live>,
    /// (spc, db, filenode) → name, newest snapshot first wins.
    snap: HashMap<RelFile, Known>,
    snap_dbs: HashMap<u32, String>,
    cache: HashMap<RelFile, RelName>,
    pub sources: Vec<String>,
}

struct Live {
    ep: Endpoint,
    dbs: HashMap<u32, (String, u32)>,
    clients: HashMap<u32, Option<pgpitr_pg::Client>>,
}

impl Resolver {
    /// `ep`: the instance's server, used when it answers.
    pub fn new(ep: Option<&Endpoint>, snapshots: &[(String, CatalogSnapshot)]) -> Resolver {
        let mut sources = Vec::new();
        let live = ep.and_then(|ep| {
            let mut c = ep.connect("postgres").ok()?;
            let rows = c
                .query(
                    "SELECT oid::oid, datname::text, dattablespace::oid FROM pg_database",
                    &[],
                )
                .ok()?;
            let dbs = rows
                .iter()
                .map(|r| (r.get::<_, u32>(0), (r.get(1), r.get(2))))
                .collect();
            Some(Live {
                ep: ep.clone(),
                dbs,
                clients: HashMap::new(),
            })
        });
        if live.is_some() {
            sources.push("live server".to_string());
        }
        let mut snap = HashMap::new();
        let mut snap_dbs = HashMap::new();
        for (id, s) in snapshots.iter().rev() {
            sources.push(format!("catalog snapshot of backup {id}"));
            for d in &s.databases {
                snap_dbs.entry(d.oid).or_insert_with(|| d.name.clone());
                for r in &d.relations {
                    let key = RelFile {
                        spc: r.tablespace,
                        db: if r.tablespace == 1664 { 0 } else { d.oid },
                        node: r.filenode,
                    };
                    snap.entry(key).or_insert_with(|| Known {
                        database: d.name.clone(),
                        name: format!("{}.{}", r.schema, r.name),
                        oid: r.oid,
                        kind: r.kind.clone(),
                        source: format!("catalog snapshot of backup {id}"),
                    });
                }
            }
        }
        Resolver {
            live,
            snap,
            snap_dbs,
            cache: HashMap::new(),
            sources,
        }
    }

    pub fn database(&self, oid: u32) -> String {
        if oid == 0 {
            return "(shared)".into();
        }
        self.live
            .as_ref()
            .and_then(|l| l.dbs.get(&oid).map(|d| d.0.clone()))
            .or_else(|| self.snap_dbs.get(&oid).cloned())
            .unwrap_or_else(|| format!("database oid {oid}"))
    }

    fn live_lookup(&mut self, f: RelFile) -> Option<Known> {
        let live = self.live.as_mut()?;
        let (dbname, dbspc) = live.dbs.get(&f.db)?.clone();
        let client = live
            .clients
            .entry(f.db)
            .or_insert_with(|| live.ep.connect(&dbname).ok())
            .as_mut()?;
        let spc = if f.spc == dbspc { 0 } else { f.spc };
        let row = client
            .query_opt(
                "SELECT c.oid::oid, n.nspname::text, c.relname::text, c.relkind::text \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.oid = pg_filenode_relation($1::oid, $2::oid)",
                &[&spc, &f.node],
            )
            .ok()??;
        Some(Known {
            database: dbname,
            name: format!("{}.{}", row.get::<_, String>(1), row.get::<_, String>(2)),
            oid: row.get(0),
            kind: row.get(3),
            source: "live server".into(),
        })
    }

    /// Whether the live server still has relation `oid` in database `db` (None: cannot tell).
    pub fn live_has(&mut self, db: u32, oid: u32) -> Option<bool> {
        let live = self.live.as_mut()?;
        let (dbname, _) = live.dbs.get(&db)?.clone();
        let client = live
            .clients
            .entry(db)
            .or_insert_with(|| live.ep.connect(&dbname).ok())
            .as_mut()?;
        client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_class WHERE oid = $1::oid)",
                &[&oid],
            )
            .ok()
            .map(|r| r.get(0))
    }

    pub fn name(&mut self, f: RelFile) -> RelName {
        if let Some(n) = self.cache.get(&f) {
            return n.clone();
        }
        let known = self.live_lookup(f).or_else(|| {
            self.snap.get(&f).map(|k| Known {
                database: k.database.clone(),
                name: k.name.clone(),
                oid: k.oid,
                kind: k.kind.clone(),
                source: k.source.clone(),
            })
        });
        let n = match known {
            Some(k) => RelName {
                catalog: k.oid < FIRST_NORMAL_OID,
                database: k.database,
                name: k.name,
                oid: Some(k.oid),
                kind: Some(k.kind),
                source: k.source,
            },
            None => RelName {
                database: self.database(f.db),
                name: format!("relation file {f}"),
                oid: None,
                kind: None,
                source: "unknown".into(),
                catalog: f.spc == 1664 || f.node < FIRST_NORMAL_OID,
            },
        };
        self.cache.insert(f, n.clone());
        n
    }
}
