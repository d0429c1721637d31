//! `pgpitr verify`: every object readable and matching its checksum (or, with `--quick`,
//! present with a plausible size), timeline histories consistent, no missing segment from
//! the oldest backup to the newest WAL, backups intact; and the restorable windows.

use pgpitr_config::Config;
use pgpitr_restore::inventory::Stretch;
use pgpitr_wal::chain::{walk, SegmentIndex};
use pgpitr_wal::codec::Decoder;
use pgpitr_wal::store::Store;
use pgpitr_wal::timeline::{parse_history, Timelines};
use pgpitr_wal::WalName;
use serde::Serialize;
use std::collections::HashSet;
use std::io::IsTerminal;

/// Smallest possible object: a zstd frame header with checksum, or an age header.
const MIN_ZSTD: u64 = 13;
const MIN_AGE: u64 = 100;

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub kind: &'static str,
    pub name: String,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub quick: bool,
    pub objects_checked: usize,
    pub bytes_checked: u64,
    pub backups_checked: usize,
    pub problems: Vec<Problem>,
    /// The restorable windows per timeline, cut at the first missing or damaged segment
    /// (and without damaged backups): pgpitr-restore's one window model.
    pub windows: Vec<Stretch>,
    pub gaps: usize,
    pub corrupt_objects: usize,
    /// What to do now, in order (empty when nothing is wrong).
    pub next_steps: Vec<String>,
    /// What could not be computed (e.g. windows without pg_waldump).
    pub warnings: Vec<String>,
}

pub fn verify(cfg: &Config, quick: bool) -> crate::Result<VerifyReport> {
    let store = Store::new(&cfg.archive.dir);
    let decoder = Decoder::from_config(cfg.encryption.as_ref())?;
    let objects = store.list()?;
    let backups = pgpitr_backup::catalog(&cfg.backup.dir)?;
    let seg = store
        .meta()?
        .map(|m| m.wal_segment_size)
        .or_else(|| backups.first().map(|b| b.wal_segment_size))
        .unwrap_or(16 << 20);
    let mut problems = Vec::new();
    let tty = std::io::stderr().is_terminal();
    let mut bytes = 0u64;
    let mut corrupt = 0;
    // Objects.
    for (i, o) in objects.iter().enumerate() {
        bytes += o.stored_bytes;
        if tty && i % 50 == 0 {
            eprint!("\r  checking objects {}/{}", i + 1, objects.len());
        }
        let min = if o.suffix.ends_with(".age") {
            MIN_AGE
        } else if o.suffix == ".zst" {
            MIN_ZSTD
        } else {
            1
        };
        if o.stored_bytes < min {
            corrupt += 1;
            problems.push(Problem {
                kind: "truncated",
                name: o.name.to_string(),
                detail: format!("{} is {} bytes", o.path.display(), o.stored_bytes),
            });
            continue;
        }
        if !quick {
            if let Err(e) = store.decode_object(o, &decoder, std::io::sink()) {
                corrupt += 1;
                problems.push(Problem {
                    kind: "corrupt",
                    name: o.name.to_string(),
                    detail: e.to_string(),
                });
            }
        }
    }
    if tty && !objects.is_empty() {
        eprintln!();
    }
    // Timeline histories.
    let mut timelines = Timelines::default();
    for o in objects
        .iter()
        .filter(|o| matches!(o.name, WalName::History { .. }))
    {
        let mut buf = Vec::new();
        if store.decode_object(o, &decoder, &mut buf).is_err() {
            continue; // already reported above (or quick mode: reported when read fully)
        }
        match parse_history(&String::from_utf8_lossy(&buf)) {
            Ok(h) => {
                timelines.histories.insert(o.name.tli(), h);
            }
            Err(e) => problems.push(Problem {
                kind: "history",
                name: o.name.to_string(),
                detail: e,
            }),
        }
    }
    let mut seg_tlis: Vec<u32> = objects
        .iter()
        .filter(|o| o.name.is_segment())
        .map(|o| o.name.tli())
        .collect();
    seg_tlis.sort();
    seg_tlis.dedup();
    for &t in &seg_tlis {
        if t > 1 && !timelines.histories.contains_key(&t) {
            problems.push(Problem {
                kind: "history",
                name: WalName::History { tli: t }.to_string(),
                detail: format!("timeline {t} has segments but its history file is missing: restores cannot follow it"),
            });
        }
    }
    for (&t, h) in &timelines.histories {
        if let Err(e) = timelines.path_to(t) {
            problems.push(Problem {
                kind: "history",
                name: WalName::History { tli: t }.to_string(),
                detail: e,
            });
            continue;
        }
        // The parent's own history must be the child's minus its last line.
        if let Some(last) = h.last() {
            if last.parent >= t {
                problems.push(Problem {
                    kind: "history",
                    name: WalName::History { tli: t }.to_string(),
                    detail: format!("parent timeline {} is not older than {t}", last.parent),
                });
            } else if let Some(ph) = timelines.histories.get(&last.parent) {
                if ph.as_slice() != &h[..h.len() - 1] {
                    problems.push(Problem {
                        kind: "history",
                        name: WalName::History { tli: t }.to_string(),
                        detail: format!(
                            "does not extend the history of its parent timeline {}",
                            last.parent
                        ),
                    });
                }
            }
        }
    }
    // Gaps per timeline, from the oldest backup on its history to its newest segment.
    let idx = SegmentIndex::new(&objects, seg);
    let mut gaps = 0;
    for &t in &seg_tlis {
        let Ok(path) = timelines.path_to(t) else {
            continue;
        };
        let on_path: Vec<&pgpitr_backup::BackupInfo> =
            pgpitr_wal::history::History::on_path_ordered(&path, &backups);
        let Some(oldest) = on_path.first() else {
            continue;
        };
        let w = walk(&idx, &path, oldest.start_lsn, None);
        // Only gaps on this timeline's own stretch are reported here (ancestors report theirs).
        let own: Vec<_> = w
            .gaps
            .iter()
            .filter(|g| g.tli == t || path.len() == 1)
            .collect();
        for g in &own {
            gaps += 1;
            problems.push(Problem {
                kind: "gap",
                name: g.first.to_string(),
                detail: format!("missing {g}"),
            });
        }
    }
    // Backups.
    for b in &backups {
        let dir = cfg.backup.dir.join(&b.id);
        let r = if quick {
            b.files
                .iter()
                .try_for_each(|f| match std::fs::metadata(dir.join(&f.name)) {
                    Ok(m) if m.len() == f.stored_bytes => Ok(()),
                    Ok(m) => Err(format!(
                        "{} is {} bytes, expected {}",
                        f.name,
                        m.len(),
                        f.stored_bytes
                    )),
                    Err(e) => Err(format!("{}: {e}", f.name)),
                })
        } else {
            pgpitr_backup::verify_stored_checksums(&dir, &b.files, &b.id)
                .map_err(|e| e.to_string())
                .and_then(|_| {
                    let encrypted_without_key = b.encrypted
                        && cfg
                            .encryption
                            .as_ref()
                            .and_then(|e| e.identity_file.as_ref())
                            .is_none();
                    if encrypted_without_key {
                        return Ok(());
                    }
                    let manifest = std::fs::read(dir.join("backup_manifest"))
                        .map_err(|e| format!("backup_manifest: {e}"))
                        .and_then(|m| pgpitr_backup::Manifest::parse(&m))?;
                    pgpitr_backup::verify_contents(&dir, &b.files, &manifest, &decoder, &b.id)
                        .map_err(|e| e.to_string())
                })
        };
        if let Err(detail) = r {
            problems.push(Problem {
                kind: "backup",
                name: b.id.clone(),
                detail,
            });
        }
    }
    let mut warnings = Vec::new();
    let computed = match windows(cfg, &decoder, &problems) {
        Ok(w) => Some(w),
        Err(e) => {
            warnings.push(format!("the restorable windows cannot be computed: {e}"));
            None
        }
    };
    let next_steps = next_steps(cfg, &problems, computed.as_deref());
    let windows = computed.unwrap_or_default();
    Ok(VerifyReport {
        ok: problems.is_empty(),
        quick,
        objects_checked: objects.len(),
        bytes_checked: bytes,
        backups_checked: backups.len(),
        problems,
        windows,
        gaps,
        corrupt_objects: corrupt,
        next_steps,
        warnings,
    })
}

/// The windows of every timeline with segments, with what `problems` names damaged left
/// out: a window ends before a truncated, corrupt or missing segment, a damaged backup
/// begins none.
fn windows(cfg: &Config, decoder: &Decoder, problems: &[Problem]) -> Result<Vec<Stretch>, String> {
    let bins = pgpitr_pg::Bins::discover(cfg.postgres.bin_dir.as_deref())
        .map_err(|e| format!("pg_waldump is needed to find each window's last transaction: {e} (set postgres.bin_dir)"))?;
    let mut inv = pgpitr_restore::Inventory::load(cfg, decoder).map_err(|e| e.to_string())?;
    let damaged = |kinds: &[&str]| -> HashSet<String> {
        problems
            .iter()
            .filter(|p| kinds.contains(&p.kind))
            .map(|p| p.name.clone())
            .collect()
    };
    inv.without_damaged(&damaged(&["truncated", "corrupt"]), &damaged(&["backup"]));
    let mut tlis: Vec<u32> = inv
        .objects
        .iter()
        .filter(|o| o.name.is_segment())
        .map(|o| o.name.tli())
        .collect();
    tlis.sort();
    tlis.dedup();
    let mut out = Vec::new();
    for t in tlis {
        let Ok(path) = inv.history.path_to(t) else {
            continue; // reported as a history problem
        };
        out.extend(
            inv.windows_on(&bins, decoder, &path)
                .map_err(|e| e.to_string())?,
        );
    }
    Ok(out)
}

/// What the operator does next, given what is damaged and where the windows now end (`None`:
/// they could not be computed, so nothing is said about them).
fn next_steps(cfg: &Config, problems: &[Problem], windows: Option<&[Stretch]>) -> Vec<String> {
    let none_left = windows.is_some_and(|w| w.is_empty());
    let windows = windows.unwrap_or_default();
    let mut steps = Vec::new();
    if problems.is_empty() {
        return steps;
    }
    let config = "basebackup --config <config>";
    let cuts: Vec<&Stretch> = windows.iter().filter(|w| w.cut_at.is_some()).collect();
    let damaged_backups: Vec<&str> = problems
        .iter()
        .filter(|p| p.kind == "backup")
        .map(|p| p.name.as_str())
        .collect();
    let bad_objects: Vec<&str> = problems
        .iter()
        .filter(|p| matches!(p.kind, "gap" | "truncated" | "corrupt"))
        .map(|p| p.name.as_str())
        .collect();
    if !cuts.is_empty() || !damaged_backups.is_empty() || none_left {
        let mut s = format!(
            "take a new base backup now ({config}) so the restorable window restarts after the damage"
        );
        for w in &cuts {
            s.push_str(&format!(
                "; until then timeline {} restores only up to {} (the window is cut at {})",
                w.timeline,
                pgpitr_time::human(w.to),
                w.cut_at.as_deref().unwrap_or("?")
            ));
        }
        steps.push(s);
    }
    if !bad_objects.is_empty() {
        steps.push(format!(
            "find what removed or damaged {} in {} (disk errors in dmesg, a manual clean-up, a second server archiving into the same folder) before it strikes again; keep the damaged files for inspection",
            bad_objects.join(", "),
            cfg.archive.dir.display()
        ));
    }
    for b in &damaged_backups {
        steps.push(format!(
            "backup {b} is damaged: no restore can start from it; once a new backup verifies, move {} aside and find what damaged it",
            cfg.backup.dir.join(b).display()
        ));
    }
    if problems.iter().any(|p| p.kind == "history") {
        steps.push(
            "restore the missing or damaged timeline history file into the archive (PostgreSQL's pg_wal of the server that created the timeline still has it), else restores cannot follow that timeline".into(),
        );
    }
    steps
}

fn fmt_window(w: &Stretch) -> String {
    let mut s = format!(
        "timeline {}: restorable from {} to {} (backups {}..{}",
        w.timeline,
        pgpitr_time::human(w.from),
        pgpitr_time::human(w.to),
        w.from_backup,
        w.newest_backup
    );
    match &w.cut_at {
        Some(c) => s.push_str(&format!("), CUT at {c}: not beyond it")),
        None => s.push(')'),
    }
    s
}

/// `pgpitr_verify_*` metrics.
pub fn record_metrics(cfg: &Config, r: &VerifyReport) -> pgpitr_metrics::Result<()> {
    use pgpitr_metrics::{unix_now, JobState, MetricsFile};
    let Some(m) = &cfg.metrics else { return Ok(()) };
    let state = JobState::new(&m.textfile_dir, "verify", &cfg.instance);
    let _l = state.lock()?;
    let mut last_ok: f64 = state.load().unwrap_or(0.0);
    if r.ok {
        last_ok = unix_now();
    }
    state.save(&last_ok)?;
    let mut f = MetricsFile::new("verify", &cfg.instance);
    f.gauge(
        "pgpitr_verify_gaps",
        "Missing segment runs found by the last verify.",
        r.gaps as f64,
    )
    .gauge(
        "pgpitr_verify_corrupt_objects",
        "Objects truncated or failing their checksum in the last verify.",
        r.corrupt_objects as f64,
    )
    .gauge(
        "pgpitr_verify_problems",
        "Problems of any kind found by the last verify.",
        r.problems.len() as f64,
    )
    .gauge(
        "pgpitr_verify_last_run_timestamp_seconds",
        "Unix time verify last ran.",
        unix_now(),
    )
    .gauge(
        "pgpitr_verify_last_success_timestamp_seconds",
        "Unix time verify last found nothing wrong.",
        last_ok,
    );
    f.write(&m.textfile_dir)
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "checked {} objects ({} bytes{}) and {} backups",
            self.objects_checked,
            self.bytes_checked,
            if self.quick {
                ", names and sizes only"
            } else {
                ", every checksum"
            },
            self.backups_checked
        )?;
        for w in &self.windows {
            writeln!(f, "{}", fmt_window(w))?;
        }
        for p in &self.problems {
            writeln!(f, "PROBLEM {}: {}: {}", p.kind, p.name, p.detail)?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        for s in &self.next_steps {
            writeln!(f, "next step: {s}")?;
        }
        write!(
            f,
            "{}",
            if self.ok {
                "ok"
            } else {
                "verify found problems"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_that_cannot_be_computed_are_not_taken_for_none_left() {
        let cfg = Config::parse(
            std::path::Path::new("t.toml"),
            "instance = \"t\"\n[archive]\ndir = \"/a\"\n[backup]\ndir = \"/b\"\n",
        )
        .unwrap();
        let history = [Problem {
            kind: "history",
            name: "00000002.history".into(),
            detail: "missing".into(),
        }];
        let new_backup = |steps: &[String]| steps.iter().any(|s| s.contains("new base backup"));
        // Unknown windows: only the history step, no claim that nothing is restorable.
        let steps = next_steps(&cfg, &history, None);
        assert!(!new_backup(&steps), "{steps:?}");
        assert!(steps.iter().any(|s| s.contains("history")), "{steps:?}");
        // Computed and empty: nothing is restorable, a new base backup is the first step.
        assert!(new_backup(&next_steps(&cfg, &history, Some(&[]))));
    }
}
