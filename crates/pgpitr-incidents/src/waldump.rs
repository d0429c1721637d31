//! Reading pg_waldump's text output: one line per WAL record, reduced to what the
//! per-transaction accounting needs.

use pgpitr_wal::Lsn;

/// A relation file as WAL names it: tablespace / database / relfilenode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct RelFile {
    pub spc: u32,
    pub db: u32,
    pub node: u32,
}

impl std::fmt::Display for RelFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.spc, self.db, self.node)
    }
}

/// What one record means for its transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Inserted(RelFile, u64),
    Updated {
        rel: RelFile,
        hot: bool,
    },
    Deleted(RelFile),
    /// Storage CREATE: a new relation file (CREATE TABLE, TRUNCATE, VACUUM FULL, ...).
    FileCreated(RelFile),
    /// Storage TRUNCATE: a file cut to N blocks.
    FileTruncated(RelFile, u64),
    /// A mapped catalog got a new file (relation-map UPDATE).
    RelMapUpdated {
        db: u32,
    },
    DatabaseDropped(Vec<u32>),
    End(End),
    /// Anything else (its LSN still counts for progress).
    Other,
}

#[derive(Debug, Clone, PartialEq)]
pub struct End {
    pub committed: bool,
    pub time: chrono::DateTime<chrono::Utc>,
    /// Files removed at commit (DROP TABLE, the old file of TRUNCATE, ...).
    pub dropped_files: Vec<RelFile>,
    pub subxacts: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub lsn: Lsn,
    pub xid: u32,
    pub event: Event,
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(key)? + key.len();
    let rest = line[at..].trim_start();
    Some(rest.split([',', ' ']).next().unwrap_or(""))
}

/// `1663/5/16384` (blkref) or `base/5/16384`, `global/1262`, `pg_tblspc/S/PG_15_x/D/R` (paths).
pub fn parse_relfile(s: &str) -> Option<RelFile> {
    let parts: Vec<&str> = s.split('/').collect();
    let num = |x: &str| x.parse::<u32>().ok();
    match parts.as_slice() {
        ["base", db, node] => Some(RelFile {
            spc: 1663,
            db: num(db)?,
            node: num(node)?,
        }),
        ["global", node] => Some(RelFile {
            spc: 1664,
            db: 0,
            node: num(node)?,
        }),
        ["pg_tblspc", spc, _ver, db, node] => Some(RelFile {
            spc: num(spc)?,
            db: num(db)?,
            node: num(node)?,
        }),
        [spc, db, node] => Some(RelFile {
            spc: num(spc)?,
            db: num(db)?,
            node: num(node.trim_end_matches(','))?,
        }),
        _ => None,
    }
}

/// The first block reference on the main fork, if any.
fn blkref0(desc: &str) -> Option<RelFile> {
    let at = desc.find("blkref #0: rel ")? + "blkref #0: rel ".len();
    let rest = &desc[at..];
    let spec = rest.split([' ', ',']).next()?;
    // Other forks are named (" fork fsm"); main is not.
    let after = rest[spec.len()..].trim_start_matches(',').trim_start();
    if after.starts_with("fork ") && !after.starts_with("fork main") {
        return None;
    }
    parse_relfile(spec)
}

fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let s = s.trim().trim_end_matches(" UTC");
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc())
}

fn parse_end(committed: bool, rest: &str) -> Option<End> {
    let mut parts = rest.split("; ");
    let time = parse_time(parts.next()?)?;
    let mut end = End {
        committed,
        time,
        dropped_files: Vec::new(),
        subxacts: Vec::new(),
    };
    for p in parts {
        if let Some(v) = p.strip_prefix("rels: ") {
            end.dropped_files = v.split_whitespace().filter_map(parse_relfile).collect();
        } else if let Some(v) = p.strip_prefix("subxacts: ") {
            end.subxacts = v
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
        }
    }
    Some(end)
}

/// Parses one line of `pg_waldump` output (run with TZ=UTC); `None` for lines that are not
/// records.
pub fn parse_line(line: &str) -> Option<Record> {
    let rmgr = line.strip_prefix("rmgr: ")?.split_whitespace().next()?;
    let xid: u32 = field(line, "tx:")?.parse().ok()?;
    let lsn: Lsn = field(line, "lsn:")?.parse().ok()?;
    let desc = &line[line.find("desc: ")? + 6..];
    let op = desc.split([' ', ',']).next().unwrap_or("");
    let event = match (rmgr, op) {
        ("Heap", "INSERT" | "INSERT+INIT") => blkref0(desc).map(|r| Event::Inserted(r, 1)),
        ("Heap", "DELETE") => blkref0(desc).map(Event::Deleted),
        ("Heap", "UPDATE" | "UPDATE+INIT") => {
            blkref0(desc).map(|rel| Event::Updated { rel, hot: false })
        }
        ("Heap", "HOT_UPDATE" | "HOT_UPDATE+INIT") => {
            blkref0(desc).map(|rel| Event::Updated { rel, hot: true })
        }
        ("Heap2", "MULTI_INSERT" | "MULTI_INSERT+INIT") => {
            // PostgreSQL 15: "MULTI_INSERT 3 tuples flags 0x02"; 16: "ntuples: 3, flags: ...".
            let rest = desc[op.len()..].trim_start();
            let n = rest
                .strip_prefix("ntuples: ")
                .unwrap_or(rest)
                .split([' ', ','])
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(1);
            blkref0(desc).map(|r| Event::Inserted(r, n))
        }
        ("Storage", "CREATE") => desc
            .split_whitespace()
            .nth(1)
            .and_then(parse_relfile)
            .map(Event::FileCreated),
        ("Storage", "TRUNCATE") => {
            let mut w = desc.split_whitespace();
            let file = w.nth(1).and_then(parse_relfile);
            let blocks = w.nth(1).and_then(|x| x.parse().ok()).unwrap_or(0);
            file.map(|f| Event::FileTruncated(f, blocks))
        }
        ("RelMap", "UPDATE") => field(desc, "database")
            .and_then(|d| d.parse().ok())
            .map(|db| Event::RelMapUpdated { db }),
        ("Database", "DROP") => {
            // "DROP dir 1663/16401 ..." (one per tablespace).
            let dbs: Vec<u32> = desc
                .split_whitespace()
                .filter_map(|w| w.split_once('/'))
                .filter_map(|(_, d)| d.trim_end_matches(',').parse().ok())
                .collect();
            let mut dbs = dbs;
            dbs.dedup();
            Some(Event::DatabaseDropped(dbs))
        }
        ("Transaction", "COMMIT") => parse_end(true, &desc[7..]).map(Event::End),
        ("Transaction", "ABORT") => parse_end(false, &desc[6..]).map(Event::End),
        _ => Some(Event::Other),
    };
    Some(Record {
        lsn,
        xid,
        event: event.unwrap_or(Event::Other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(line: &str) -> Event {
        parse_line(line).unwrap().event
    }
    const A: RelFile = RelFile {
        spc: 1663,
        db: 5,
        node: 16384,
    };

    // Lines as PostgreSQL 15's pg_waldump prints them.
    #[test]
    fn heap_records() {
        assert_eq!(ev("rmgr: Heap        len (rec/tot):     54/    54, tx:        735, lsn: 0/0153AE08, prev 0/0153ADE0, desc: DELETE off 4 flags 0x00 KEYS_UPDATED , blkref #0: rel 1663/5/16384 blk 0"), Event::Deleted(A));
        assert_eq!(ev("rmgr: Heap        len (rec/tot):     61/    61, tx:        725, lsn: 0/01538538, prev 0/01537FE8, desc: INSERT+INIT off 1 flags 0x00, blkref #0: rel 1663/5/16384 blk 0"), Event::Inserted(A, 1));
        assert_eq!(ev("rmgr: Heap2       len (rec/tot):     98/    98, tx:        726, lsn: 0/01538840, prev 0/01538818, desc: MULTI_INSERT 3 tuples flags 0x02, blkref #0: rel 1663/5/16384 blk 0"), Event::Inserted(A, 3));
        assert_eq!(ev("rmgr: Heap2       len (rec/tot):     98/    98, tx:        726, lsn: 0/01538840, prev 0/01538818, desc: MULTI_INSERT+INIT ntuples: 7, flags: 0x02, blkref #0: rel 1663/5/16384, blk 0"), Event::Inserted(A, 7));
        assert_eq!(ev("rmgr: Heap        len (rec/tot):     69/    69, tx:        733, lsn: 0/0153ACE8, prev 0/0153ACB8, desc: HOT_UPDATE off 2 xmax 733 flags 0x20 ; new off 9 xmax 0, blkref #0: rel 1663/5/16384 blk 0"), Event::Updated { rel: A, hot: true });
        assert_eq!(ev("rmgr: Heap        len (rec/tot):     69/    69, tx:        734, lsn: 0/0153AD58, prev 0/0153AD30, desc: UPDATE off 3 xmax 734 flags 0x40 KEYS_UPDATED ; new off 10 xmax 0, blkref #0: rel 1663/5/16384 blk 0"), Event::Updated { rel: A, hot: false });
        // Not the main fork: not a row.
        assert_eq!(ev("rmgr: Heap        len (rec/tot):     61/    61, tx:        725, lsn: 0/01538538, prev 0/01537FE8, desc: INSERT off 1 flags 0x00, blkref #0: rel 1663/5/16384 fork fsm blk 0"), Event::Other);
    }

    #[test]
    fn storage_and_ends() {
        assert_eq!(ev("rmgr: Storage     len (rec/tot):     42/    42, tx:        736, lsn: 0/0153AFE8, prev 0/0153AFB8, desc: CREATE base/5/16397"), Event::FileCreated(RelFile { spc: 1663, db: 5, node: 16397 }));
        assert_eq!(ev("rmgr: Database    len (rec/tot):     38/    38, tx:        740, lsn: 0/01970950, prev 0/019708D8, desc: DROP dir 1663/16401"), Event::DatabaseDropped(vec![16401]));
        assert_eq!(ev("rmgr: RelMap      len (rec/tot):    553/   553, tx:        739, lsn: 0/0153FCB0, prev 0/0153FC88, desc: UPDATE database 16401 tablespace 1663 size 512"), Event::RelMapUpdated { db: 16401 });
        let r = parse_line("rmgr: Transaction len (rec/tot):    469/   469, tx:        737, lsn: 0/0153B4D8, prev 0/0153B4A0, desc: COMMIT 2026-11-22 15:10:31.631934 UTC; rels: base/5/16394 base/5/16395; dropped stats: 2/5/16394; subxacts: 738 739; inval msgs: catcache 80").unwrap();
        assert_eq!(r.xid, 737);
        assert_eq!(r.lsn, "0/0153B4D8".parse().unwrap());
        let Event::End(e) = r.event else { panic!() };
        assert!(e.committed);
        assert_eq!(e.time.to_rfc3339(), "2026-11-22T15:10:31.631934+00:00");
        assert_eq!(e.dropped_files.len(), 2);
        assert_eq!(e.subxacts, vec![738, 739]);
        let Event::End(a) = ev("rmgr: Transaction len (rec/tot):     34/    34, tx:        725, lsn: 0/01538818, prev 0/015387D8, desc: ABORT 2026-11-22 15:10:31.537643 UTC") else { panic!() };
        assert!(!a.committed);
        assert!(parse_line("pg_waldump: error: error in WAL record at 0/1970978").is_none());
    }
}
