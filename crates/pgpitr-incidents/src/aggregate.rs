//! Per-transaction accounting: what each transaction did to which relation file, merged
//! across the chunks pg_waldump runs over in parallel.

use crate::waldump::{End, Event, Record, RelFile};
use pgpitr_wal::Lsn;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub inserted: u64,
    pub updated: u64,
    pub hot_updated: u64,
    pub deleted: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.inserted += o.inserted;
        self.updated += o.updated;
        self.hot_updated += o.hot_updated;
        self.deleted += o.deleted;
    }
}

/// What one transaction (with its subtransactions) did, so far.
#[derive(Debug, Clone, Default)]
pub struct Acc {
    pub rels: Vec<(RelFile, Counts)>,
    pub created: Vec<RelFile>,
    pub truncated_files: Vec<RelFile>,
    pub dropped_databases: Vec<u32>,
    pub relmap_updates: u32,
}

impl Acc {
    fn counts(&mut self, rel: RelFile) -> &mut Counts {
        let i = match self.rels.iter().position(|(r, _)| *r == rel) {
            Some(i) => i,
            None => {
                self.rels.push((rel, Counts::default()));
                self.rels.len() - 1
            }
        };
        &mut self.rels[i].1
    }

    pub fn apply(&mut self, ev: &Event) {
        match ev {
            Event::Inserted(r, n) => self.counts(*r).inserted += n,
            Event::Updated { rel, hot } => {
                let c = self.counts(*rel);
                c.updated += 1;
                if *hot {
                    c.hot_updated += 1;
                }
            }
            Event::Deleted(r) => self.counts(*r).deleted += 1,
            Event::FileCreated(r) => self.created.push(*r),
            Event::FileTruncated(r, _) => self.truncated_files.push(*r),
            Event::RelMapUpdated { .. } => self.relmap_updates += 1,
            Event::DatabaseDropped(d) => self.dropped_databases.extend(d),
            Event::End(_) | Event::Other => {}
        }
    }

    pub fn merge(&mut self, o: Acc) {
        for (r, c) in &o.rels {
            self.counts(*r).add(c);
        }
        self.created.extend(o.created);
        self.truncated_files.extend(o.truncated_files);
        self.dropped_databases.extend(o.dropped_databases);
        self.relmap_updates += o.relmap_updates;
    }
}

/// A transaction that ended inside a chunk, with what the chunk saw of it.
#[derive(Debug, Clone)]
pub struct Ended {
    pub xid: u32,
    pub lsn: Lsn,
    pub end: End,
    pub acc: Acc,
}

/// One chunk's result: ends in LSN order, and what transactions still open did.
#[derive(Debug, Default)]
pub struct ChunkResult {
    pub ended: Vec<Ended>,
    pub open: HashMap<u32, Acc>,
    pub records: u64,
    pub first_lsn: Option<Lsn>,
    pub last_lsn: Option<Lsn>,
}

impl ChunkResult {
    /// Adds one record (records arrive in LSN order).
    pub fn add(&mut self, rec: Record) {
        self.records += 1;
        self.first_lsn.get_or_insert(rec.lsn);
        self.last_lsn = Some(rec.lsn);
        match rec.event {
            Event::End(end) => {
                let mut acc = self.open.remove(&rec.xid).unwrap_or_default();
                for s in &end.subxacts {
                    if let Some(a) = self.open.remove(s) {
                        acc.merge(a);
                    }
                }
                self.ended.push(Ended {
                    xid: rec.xid,
                    lsn: rec.lsn,
                    end,
                    acc,
                });
            }
            Event::Other => {}
            ev => {
                if rec.xid != 0 {
                    self.open.entry(rec.xid).or_default().apply(&ev);
                }
            }
        }
    }
}

/// Carries open transactions from chunk to chunk, in order.
#[derive(Default)]
pub struct Merger {
    carry: HashMap<u32, Acc>,
}

impl Merger {
    /// Completes each transaction ended in `chunk` with what earlier chunks saw of it and
    /// hands it to `out`; keeps the chunk's open transactions for later chunks.
    pub fn push(&mut self, chunk: ChunkResult, out: &mut dyn FnMut(Ended)) {
        for mut e in chunk.ended {
            if let Some(a) = self.carry.remove(&e.xid) {
                e.acc.merge(a);
            }
            for s in &e.end.subxacts {
                if let Some(a) = self.carry.remove(s) {
                    e.acc.merge(a);
                }
            }
            out(e);
        }
        for (x, a) in chunk.open {
            match self.carry.get_mut(&x) {
                Some(c) => c.merge(a),
                None => {
                    self.carry.insert(x, a);
                }
            }
        }
    }

    /// Transactions with changes but no end in the scanned WAL (still running, or ended
    /// after it).
    pub fn still_open(&self) -> usize {
        self.carry.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::waldump::parse_line;

    fn chunk(lines: &[&str]) -> ChunkResult {
        let mut c = ChunkResult::default();
        for l in lines {
            c.add(parse_line(l).unwrap());
        }
        c
    }

    #[test]
    fn transaction_across_chunks_and_subtransactions() {
        let a = chunk(&[
            "rmgr: Heap len (rec/tot): 54/ 54, tx: 10, lsn: 0/01000028, prev 0/0, desc: DELETE off 1 flags 0x00 , blkref #0: rel 1663/5/16384 blk 0",
            "rmgr: Heap len (rec/tot): 54/ 54, tx: 11, lsn: 0/01000060, prev 0/0, desc: DELETE off 2 flags 0x00 , blkref #0: rel 1663/5/16384 blk 0",
        ]);
        let b = chunk(&[
            "rmgr: Heap len (rec/tot): 54/ 54, tx: 10, lsn: 0/02000028, prev 0/0, desc: DELETE off 3 flags 0x00 , blkref #0: rel 1663/5/16384 blk 0",
            "rmgr: Heap2 len (rec/tot): 54/ 54, tx: 10, lsn: 0/02000060, prev 0/0, desc: MULTI_INSERT 4 tuples flags 0x00, blkref #0: rel 1663/5/16390 blk 0",
            "rmgr: Transaction len (rec/tot): 34/ 34, tx: 10, lsn: 0/02000090, prev 0/0, desc: COMMIT 2026-11-22 15:47:02.331 UTC; subxacts: 11",
        ]);
        let mut m = Merger::default();
        let mut got = Vec::new();
        m.push(a, &mut |e| got.push(e));
        assert!(got.is_empty());
        m.push(b, &mut |e| got.push(e));
        assert_eq!(got.len(), 1);
        let e = &got[0];
        assert_eq!(e.xid, 10);
        let del: u64 = e.acc.rels.iter().map(|(_, c)| c.deleted).sum();
        let ins: u64 = e.acc.rels.iter().map(|(_, c)| c.inserted).sum();
        assert_eq!((del, ins), (3, 4));
        assert_eq!(m.still_open(), 0);
    }
}
