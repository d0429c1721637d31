//! The scan: which segments, decoding them in chunks, pg_waldump in parallel, merging in
//! WAL order, classifying and ranking.

use crate::aggregate::{ChunkResult, Ended, Merger};
use crate::names::Resolver;
use crate::waldump::{parse_line, RelFile};
use crate::{Incident, IncidentsError, Kind, RelationChange, Report, Result, Scanned};
use chrono::{DateTime, Duration, Utc};
use pgpitr_config::Config;
use pgpitr_pg::{Bins, Endpoint};
use pgpitr_restore::Inventory;
use pgpitr_wal::codec::Decoder;
use pgpitr_wal::store::Object;
use pgpitr_wal::{Lsn, WalName};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

/// Segments per pg_waldump run.
const CHUNK: usize = 8;
/// `--around T` looks this far either side of T.
const AROUND_MINUTES: i64 = 15;

pub struct ScanOptions {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub around: Option<DateTime<Utc>>,
    /// List a transaction that deleted or updated at least this many user rows.
    pub min_rows: u64,
    /// pg_waldump processes at a time (default: the CPUs, at most 4).
    pub jobs: Option<usize>,
    /// Name relations through the instance's server when it answers.
    pub live_names: bool,
    /// `--config` as the printed restore commands should show it.
    pub config_path: String,
    /// Keep at most this many incidents (most destructive first).
    pub limit: Option<usize>,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            since: None,
            until: None,
            around: None,
            min_rows: 10,
            jobs: None,
            live_names: true,
            config_path: "CONFIG".into(),
            limit: None,
        }
    }
}

struct Chunk {
    tli: u32,
    /// (segno, object) in order.
    segments: Vec<(u64, Object)>,
    /// The segment after the last one, read so that a record crossing into it is complete.
    extension: Option<Object>,
}

/// Scans the archived WAL of the range and ranks what it finds.
pub fn scan(cfg: &Config, opts: &ScanOptions, progress: &mut dyn FnMut(&str)) -> Result<Report> {
    let t0 = Instant::now();
    let decoder = Decoder::from_config(cfg.encryption.as_ref())?;
    let inv = Inventory::load(cfg, &decoder)?;
    let bins = Bins::discover(cfg.postgres.bin_dir.as_deref())?;
    let since = opts
        .since
        .or(opts.around.map(|t| t - Duration::minutes(AROUND_MINUTES)));
    let until = opts
        .until
        .or(opts.around.map(|t| t + Duration::minutes(AROUND_MINUTES)));
    if let (Some(a), Some(b)) = (since, until) {
        if a > b {
            return Err(IncidentsError::Refused(format!(
                "--since {a} is after --until {b}: swap them"
            )));
        }
    }
    let Some(base_tli) = inv.backups.iter().map(|b| b.timeline).min() else {
        return Err(IncidentsError::Refused(
            "there is no complete base backup: nothing could be restored to before an incident. Take one with `basebackup --config ...`".into(),
        ));
    };
    // The same timeline and oldest backup a restore would use.
    let tli = inv.latest_timeline_from(base_tli);
    let path = inv.path_to(tli)?;
    let oldest = inv
        .backups
        .iter()
        .find(|b| Inventory::backup_on_path(b, &path))
        .ok_or_else(|| {
            IncidentsError::Refused(format!("no backup lies on the history of timeline {tli}"))
        })?;
    let walk = inv.walk_from_lsn(&path, oldest.start_lsn);
    let mut warnings = Vec::new();
    if !walk.gaps.is_empty() {
        warnings.push(format!(
            "the WAL chain breaks: missing {}; only the WAL before the first gap was scanned",
            walk.gaps
                .iter()
                .map(|g| g.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let idx = inv.index();
    let contiguous: Vec<(u64, u32)> = match walk.contiguous_end {
        Some(end) => walk
            .segments
            .iter()
            .copied()
            .take_while(|s| s.0 <= end.0)
            .collect(),
        None => Vec::new(),
    };
    // A segment archived before `since` holds only older WAL; the first one archived after
    // `until` is the last that can hold WAL from before it.
    let mut selected: Vec<usize> = Vec::new();
    for (i, (segno, t)) in contiguous.iter().enumerate() {
        let obj = idx.get(*t, *segno).expect("walk found it");
        let archived: DateTime<Utc> = obj.mtime.into();
        if since.map(|s| archived < s).unwrap_or(false) {
            continue;
        }
        selected.push(i);
        if until.map(|u| archived > u).unwrap_or(false) {
            break;
        }
    }
    let mut chunks: Vec<Chunk> = Vec::new();
    for &i in &selected {
        let (segno, t) = contiguous[i];
        let obj = idx.get(t, segno).unwrap().clone();
        let start_new = match chunks.last() {
            Some(c) => {
                c.tli != t
                    || c.segments.len() >= CHUNK
                    || c.segments.last().map(|s| s.0 + 1) != Some(segno)
            }
            None => true,
        };
        if start_new {
            chunks.push(Chunk {
                tli: t,
                segments: Vec::new(),
                extension: None,
            });
        }
        chunks.last_mut().unwrap().segments.push((segno, obj));
    }
    for c in &mut chunks {
        let next = c.segments.last().unwrap().0 + 1;
        c.extension = contiguous
            .iter()
            .find(|s| s.0 == next)
            .and_then(|(s, t)| idx.get(*t, *s))
            .cloned();
    }
    let seg_size = inv.seg_size;
    let total_segments: usize = chunks.iter().map(|c| c.segments.len()).sum();
    let jobs = opts
        .jobs
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .min(4)
        })
        .max(1);
    progress(&format!(
        "scanning {total_segments} segments with {jobs} pg_waldump processes at a time"
    ));

    let ep = Endpoint {
        socket_dir: cfg.postgres.socket_dir.clone(),
        port: cfg.postgres.port,
        user: cfg.postgres.user.clone(),
    };
    let snapshots = pgpitr_backup::relnames::load_snapshots(&cfg.backup.dir, &inv.backups);
    let mut resolver = Resolver::new(opts.live_names.then_some(&ep), &snapshots);

    let tmp = tempfile::Builder::new()
        .prefix("pgpitr-incidents-")
        .tempdir()
        .map_err(pgpitr_durable::io_context("create a temporary folder"))?;
    let mut stats = Stats::default();
    let mut candidates: Vec<Incident> = Vec::new();
    let mut merger = Merger::default();
    let mut records = 0u64;
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<(usize, Result<(ChunkResult, Vec<String>)>)>();
    let mut first_error = None;
    std::thread::scope(|s| {
        for _ in 0..jobs.min(chunks.len().max(1)) {
            let tx = tx.clone();
            let (chunks, next, store, decoder, bins, dir) =
                (&chunks, &next, &inv.store, &decoder, &bins, tmp.path());
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= chunks.len() {
                    break;
                }
                let r = run_chunk(&chunks[i], i, store, decoder, bins, dir, seg_size);
                let failed = r.is_err();
                if tx.send((i, r)).is_err() || failed {
                    // Stop handing out work after a failure.
                    next.store(usize::MAX / 2, Ordering::SeqCst);
                    break;
                }
            });
        }
        drop(tx);
        let mut pending: BTreeMap<usize, (ChunkResult, Vec<String>)> = BTreeMap::new();
        let mut want = 0usize;
        let mut done_segments = 0usize;
        for (i, r) in rx {
            match r {
                Ok(v) => {
                    pending.insert(i, v);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                    continue;
                }
            }
            while let Some((res, warns)) = pending.remove(&want) {
                warnings.extend(warns);
                records += res.records;
                done_segments += chunks[want].segments.len();
                merger.push(res, &mut |e| {
                    if let Some(inc) = classify(e, opts, since, until, &mut resolver, &mut stats) {
                        candidates.push(inc);
                    }
                });
                want += 1;
                progress(&format!(
                    "scanned {done_segments}/{total_segments} segments"
                ));
            }
        }
    });
    if let Some(e) = first_error {
        return Err(e);
    }

    let p99 = stats.percentile(0.99);
    let large_from = (p99 * 10).max(opts.min_rows);
    for c in &mut candidates {
        c.large = c.rows() >= large_from && c.rows() > 0;
    }
    candidates.retain(|c| c.kind != Kind::Insert || c.large);
    candidates.sort_by(|a, b| {
        b.kind
            .cmp(&a.kind)
            .then(b.large.cmp(&a.large))
            .then(kind_rows(b).cmp(&kind_rows(a)))
            .then(b.committed_at.cmp(&a.committed_at))
    });
    if let Some(l) = opts.limit {
        candidates.truncate(l);
    }
    for (i, c) in candidates.iter_mut().enumerate() {
        c.rank = i + 1;
    }
    let first = chunks.first().and_then(|c| c.segments.first());
    let last = chunks.last().and_then(|c| c.segments.last());
    let mut tlis: Vec<u32> = chunks.iter().map(|c| c.tli).collect();
    tlis.dedup();
    if total_segments == 0 {
        warnings.push(
            "no archived segment lies in this range: nothing was scanned (check --since/--until against `pgpitr status`)".into(),
        );
    }
    Ok(Report {
        scanned: Scanned {
            timelines: tlis,
            first_segment: first.map(|s| s.1.name.to_string()),
            last_segment: last.map(|s| s.1.name.to_string()),
            segments: total_segments,
            wal_bytes: total_segments as u64 * seg_size,
            records,
            committed: stats.committed,
            aborted: stats.aborted,
            still_open: merger.still_open(),
            first_commit: stats.first,
            last_commit: stats.last,
            p99_rows: p99,
            seconds: t0.elapsed().as_secs_f64(),
            jobs,
        },
        names_from: resolver.sources.clone(),
        incidents: candidates,
        warnings,
    })
}

fn kind_rows(i: &Incident) -> u64 {
    match i.kind {
        Kind::Delete => i.rows_deleted,
        Kind::Update => i.rows_updated,
        Kind::Insert => i.rows_inserted,
        _ => i.rows(),
    }
}

#[derive(Default)]
struct Stats {
    committed: u64,
    aborted: u64,
    first: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
    /// user rows changed → committed transactions.
    rows: BTreeMap<u64, u64>,
}

impl Stats {
    fn percentile(&self, p: f64) -> u64 {
        let want = (self.committed as f64 * p).ceil() as u64;
        let mut seen = 0;
        for (rows, n) in &self.rows {
            seen += n;
            if seen >= want {
                return *rows;
            }
        }
        0
    }
}

/// Decides what an ended transaction was; `Some` for those worth listing.
fn classify(
    e: Ended,
    opts: &ScanOptions,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    resolver: &mut Resolver,
    stats: &mut Stats,
) -> Option<Incident> {
    let t = e.end.time;
    if since.map(|s| t < s).unwrap_or(false) || until.map(|u| t > u).unwrap_or(false) {
        return None;
    }
    if !e.end.committed {
        stats.aborted += 1;
        return None;
    }
    stats.committed += 1;
    stats.first = Some(stats.first.map_or(t, |f| f.min(t)));
    stats.last = Some(stats.last.map_or(t, |l| l.max(t)));

    let mut changes: Vec<RelationChange> = Vec::new();
    let mut pg_class_inserts: HashMap<u32, u64> = HashMap::new();
    let (mut del, mut upd, mut ins) = (0u64, 0u64, 0u64);
    let change_for = |changes: &mut Vec<RelationChange>, f: RelFile, resolver: &mut Resolver| {
        let n = resolver.name(f);
        let file = f.to_string();
        if let Some(i) = changes.iter().position(|c| c.file == file) {
            return i;
        }
        changes.push(RelationChange {
            database: n.database,
            relation: n.name,
            file,
            name_source: n.source,
            deleted: 0,
            updated: 0,
            hot_updated: 0,
            inserted: 0,
            truncated: false,
            dropped: false,
            rewritten: false,
        });
        changes.len() - 1
    };
    for (f, c) in &e.acc.rels {
        let n = resolver.name(*f);
        if n.catalog {
            if n.name == "pg_catalog.pg_class" || (n.oid.is_none() && f.node == 1259) {
                *pg_class_inserts.entry(f.db).or_default() += c.inserted;
            }
            continue;
        }
        let i = change_for(&mut changes, *f, resolver);
        let ch = &mut changes[i];
        ch.deleted += c.deleted;
        ch.updated += c.updated;
        ch.hot_updated += c.hot_updated;
        ch.inserted += c.inserted;
        del += c.deleted;
        upd += c.updated;
        ins += c.inserted;
    }
    *stats.rows.entry(del + upd + ins).or_default() += 1;

    let created: HashSet<RelFile> = e.acc.created.iter().copied().collect();
    let mut any_dropped = false;
    let mut any_truncated = false;
    let mut any_rewritten = false;
    // Storage TRUNCATE records are VACUUM cutting empty pages off the end (it takes an xid
    // to log its lock); a user's TRUNCATE gives the table a new file instead, so only the
    // files removed at commit count.
    let removed: Vec<RelFile> = e
        .end
        .dropped_files
        .iter()
        .filter(|f| !created.contains(f))
        .copied()
        .collect();
    for f in removed {
        let n = resolver.name(f);
        if n.catalog || matches!(n.kind.as_deref(), Some("i" | "I" | "t" | "S")) {
            continue;
        }
        let still_there = n.oid.and_then(|oid| resolver.live_has(f.db, oid));
        // Without the live server: new files in the same database mean the relation got a
        // new file (TRUNCATE, VACUUM FULL), none mean it is gone.
        let replaced = still_there.unwrap_or_else(|| created.iter().any(|c| c.db == f.db));
        let i = change_for(&mut changes, f, resolver);
        if !replaced {
            changes[i].dropped = true;
            any_dropped = true;
        } else if pg_class_inserts.get(&f.db).copied().unwrap_or(0) > 0 {
            // VACUUM FULL and CLUSTER build a transient relation (a pg_class insert);
            // TRUNCATE only swaps the file.
            changes[i].rewritten = true;
            any_rewritten = true;
        } else {
            changes[i].truncated = true;
            any_truncated = true;
        }
    }
    let mut dbs = e.acc.dropped_databases.clone();
    dbs.sort();
    dbs.dedup();
    let kind = if !dbs.is_empty() {
        Kind::DropDatabase
    } else if any_dropped {
        Kind::DropTable
    } else if any_truncated {
        Kind::Truncate
    } else if del >= opts.min_rows && del > 0 {
        Kind::Delete
    } else if upd >= opts.min_rows && upd > 0 {
        Kind::Update
    } else if any_rewritten {
        Kind::Rewrite
    } else if ins >= opts.min_rows && ins > 0 {
        Kind::Insert
    } else {
        return None;
    };
    changes.sort_by(|a, b| {
        (b.dropped, b.truncated, b.deleted, b.updated, b.inserted).cmp(&(
            a.dropped,
            a.truncated,
            a.deleted,
            a.updated,
            a.inserted,
        ))
    });
    let target = format!("xid:{}", e.xid);
    Some(Incident {
        rank: 0,
        kind,
        xid: e.xid,
        committed_at: t,
        commit_lsn: e.lsn,
        rows_deleted: del,
        rows_updated: upd,
        rows_inserted: ins,
        large: false,
        relations: changes,
        dropped_databases: dbs.iter().map(|d| resolver.database(*d)).collect(),
        relmap_updates: e.acc.relmap_updates,
        restore_command: format!(
            "pgpitr --config {} restore --to {target} --exclusive --into NEW_DIR --port PORT",
            opts.config_path
        ),
        restore_target: target,
    })
}

/// Decodes a chunk's segments into a private folder and reads them with one pg_waldump.
fn run_chunk(
    c: &Chunk,
    i: usize,
    store: &pgpitr_wal::store::Store,
    decoder: &Decoder,
    bins: &Bins,
    tmp: &Path,
    seg_size: u64,
) -> Result<(ChunkResult, Vec<String>)> {
    let dir = tmp.join(format!("chunk-{i}"));
    std::fs::create_dir(&dir).map_err(pgpitr_durable::io_context(format!(
        "create {}",
        dir.display()
    )))?;
    let decode = |obj: &Object, name: WalName| -> Result<()> {
        let p = dir.join(name.to_string());
        let f = std::fs::File::create(&p).map_err(pgpitr_durable::io_context(format!(
            "create {}",
            p.display()
        )))?;
        store.decode_object(obj, decoder, std::io::BufWriter::with_capacity(1 << 20, f))?;
        Ok(())
    };
    for (segno, obj) in &c.segments {
        decode(obj, WalName::segment(c.tli, *segno, seg_size))?;
    }
    let first = c.segments[0].0;
    let last = c.segments.last().unwrap().0;
    if let Some(ext) = &c.extension {
        // Under this chunk's timeline name: pg_waldump follows one timeline's file names.
        decode(ext, WalName::segment(c.tli, last + 1, seg_size))?;
    }
    let start = Lsn(first * seg_size);
    let end = Lsn((last + 1) * seg_size);
    let mut child = Command::new(bins.path("pg_waldump"))
        .arg("--path")
        .arg(&dir)
        .arg("--timeline")
        .arg(c.tli.to_string())
        .arg("--start")
        .arg(start.to_string())
        .env("TZ", "UTC")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| pgpitr_pg::PgError::Spawn {
            cmd: bins.path("pg_waldump").display().to_string(),
            source,
        })?;
    let mut stderr = child.stderr.take().unwrap();
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut res = ChunkResult::default();
    let out = BufReader::with_capacity(1 << 20, child.stdout.take().unwrap());
    for line in out.lines() {
        let line = line.map_err(pgpitr_durable::io_context("read pg_waldump output"))?;
        if let Some(rec) = parse_line(&line) {
            if rec.lsn >= end {
                // Belongs to the next chunk; everything up to here is complete.
                break;
            }
            res.add(rec);
        }
    }
    // pg_waldump stops with an error at the end of the files it was given; that is
    // expected, the output up to there is good.
    let _ = child.kill();
    let _ = child.wait();
    let err = err_thread.join().unwrap_or_default();
    std::fs::remove_dir_all(&dir).ok();
    let names = format!(
        "{}..{}",
        WalName::segment(c.tli, first, seg_size),
        WalName::segment(c.tli, last, seg_size)
    );
    if res.records == 0 {
        return Err(IncidentsError::Refused(format!(
            "pg_waldump read no record from segments {names}: {}",
            err.trim()
        )));
    }
    let mut warnings = Vec::new();
    // Stopped before reaching the chunk's last segment: WAL in between is unreadable.
    if let Some(l) = res.last_lsn {
        if l.segno(seg_size) < last {
            warnings.push(format!(
                "pg_waldump stopped at {l} inside segments {names}; transactions after it in those segments are not counted: {}",
                err.trim()
            ));
        }
    }
    Ok((res, warnings))
}
