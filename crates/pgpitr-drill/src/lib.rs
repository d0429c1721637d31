//! Restore drills: restore the instance's backups into a scratch folder on a scratch port
//! with the restore library, prove the copy is whole (target reached, promoted, every
//! database connects, pg_amcheck, heartbeat), measure the real RPO and the RTO by phase,
//! remove the copy, and record the result (history line and metrics).

pub mod history;
pub mod metrics;
mod scratch;

pub use history::{CheckResult, DrillRecord, Durations};

use chrono::{DateTime, Utc};
use pgpitr_config::Config;
use pgpitr_pg::{command_as, Account, Bins, Endpoint};
use pgpitr_restore::{execute, parse_target, plan, ExecuteOptions, Inventory, PlanRequest, Target};
use pgpitr_wal::codec::Decoder;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// The drill cannot run as configured; nothing was restored.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Io(#[from] pgpitr_durable::IoError),
    #[error(transparent)]
    Durable(#[from] pgpitr_durable::DurableError),
    #[error(transparent)]
    Pg(#[from] pgpitr_pg::PgError),
    #[error(transparent)]
    Metrics(#[from] pgpitr_metrics::MetricsError),
    #[error(transparent)]
    Restore(#[from] pgpitr_restore::RestoreError),
}

pub type Result<T> = std::result::Result<T, DrillError>;

/// Where the drill restores from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Local,
    Offsite,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Local => "local",
            Source::Offsite => "offsite",
        }
    }
}

pub struct DrillOptions {
    /// `random`, `latest` or a target as `pgpitr restore --to` takes it; `None` alternates
    /// between random and latest from the history.
    pub to: Option<String>,
    pub source: Source,
    /// Leave the restored copy running (the next drill removes it).
    pub keep: bool,
    /// The instance config file (restore_command points at it).
    pub config_path: PathBuf,
    /// Folder holding restore-wal.
    pub tools_dir: PathBuf,
    /// Draw replay progress on stderr.
    pub progress: bool,
}

/// The scratch folder and port, checked against the instance's own.
pub struct Scratch {
    pub dir: PathBuf,
    pub port: u16,
}

impl Scratch {
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn staging(&self) -> PathBuf {
        self.dir.join("staging")
    }
}

/// The scratch folder and port from `[drill]`, refused when they are the instance's own.
pub fn scratch(cfg: &Config) -> Result<Scratch> {
    let dir = cfg.drill.scratch_dir(&cfg.instance);
    let port = cfg.drill.port(cfg.postgres.port);
    if !dir.is_absolute() {
        return Err(DrillError::Refused(format!(
            "drill.scratch_dir {} must be an absolute path",
            dir.display()
        )));
    }
    if port == cfg.postgres.port {
        return Err(DrillError::Refused(format!(
            "drill.port {port} is the instance's own port (postgres.port): set drill.port to a free port (nothing was changed)"
        )));
    }
    for (key, p) in [
        ("postgres.data_dir", &cfg.postgres.data_dir),
        ("archive.dir", &cfg.archive.dir),
        ("backup.dir", &cfg.backup.dir),
    ] {
        if scratch::overlaps(&dir, p) {
            return Err(DrillError::Refused(format!(
                "drill.scratch_dir {} is or overlaps {key} {}: the drill removes its scratch folder, so it must be a folder of its own (nothing was changed)",
                dir.display(),
                p.display()
            )));
        }
    }
    Ok(Scratch { dir, port })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Random,
    Latest,
    Given,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Random => "random",
            Mode::Latest => "latest",
            Mode::Given => "given",
        }
    }
}

/// Alternates: after a random drill comes a latest one and the other way round; the first
/// drill goes to latest.
fn next_mode(history: &[DrillRecord]) -> Mode {
    match history.last().map(|r| r.mode.as_str()) {
        Some("latest") => Mode::Random,
        _ => Mode::Latest,
    }
}

struct Ctx {
    checks: Vec<CheckResult>,
    warnings: Vec<String>,
}

impl Ctx {
    fn check(&mut self, check: &str, ok: bool, detail: impl Into<String>) {
        self.checks.push(CheckResult {
            check: check.into(),
            ok,
            skipped: false,
            detail: detail.into(),
        });
    }
    fn skip(&mut self, check: &str, detail: impl Into<String>) {
        self.checks.push(CheckResult {
            check: check.into(),
            ok: false,
            skipped: true,
            detail: detail.into(),
        });
    }
}

/// Checks every drill runs, in order; those an earlier failure prevented are recorded as
/// skipped (and the drill fails).
pub const CHECKS: [&str; 8] = [
    "wal_chain",
    "plan",
    "restore",
    "target_reached",
    "promoted",
    "databases_connect",
    "amcheck",
    "heartbeat",
];

/// Runs one drill. Refusals (scratch folder or port of the instance, short free space,
/// another drill running) are errors and leave no record; everything else ends in a record
/// that is appended to the history and written to the metrics, passed or failed.
pub fn run(cfg: &Config, opts: &DrillOptions, say: &mut dyn FnMut(&str)) -> Result<DrillRecord> {
    let started = Utc::now();
    let t0 = Instant::now();
    let sc = scratch(cfg)?;
    let history = history::read(&cfg.backup.dir)?;
    let (mode, given) = match opts.to.as_deref() {
        None => (next_mode(&history), None),
        Some("random") => (Mode::Random, None),
        Some("latest") => (Mode::Latest, None),
        Some(t) => (
            Mode::Given,
            Some(parse_target(t, started).map_err(DrillError::Refused)?),
        ),
    };
    let bins = Bins::discover(cfg.postgres.bin_dir.as_deref())?;
    let account = Account::for_server(&cfg.postgres.os_user)?;
    std::fs::create_dir_all(&sc.dir).map_err(pgpitr_durable::io_context(format!(
        "create {}",
        sc.dir.display()
    )))?;
    let _lock = pgpitr_durable::FileLock::try_exclusive(&sc.dir.join(".drill.lock"), "a drill")
        .map_err(|e| match e {
            pgpitr_durable::DurableError::Locked { .. } => DrillError::Refused(format!(
                "another drill is running in {} (wait for it to finish)",
                sc.dir.display()
            )),
            e => e.into(),
        })?;
    let mut ctx = Ctx {
        checks: Vec::new(),
        warnings: Vec::new(),
    };
    if let Some(w) = scratch::clean(cfg, &bins, account.as_ref(), &sc)? {
        say(&w);
        ctx.warnings.push(w);
    }

    // Fetch (offsite), then everything from the config that points at what to restore.
    let mut durations = Durations::default();
    let (rcfg, rcfg_path) = match opts.source {
        Source::Local => (cfg.clone(), opts.config_path.clone()),
        Source::Offsite => {
            let t = Instant::now();
            let fetch_target = given.clone().unwrap_or(Target::Latest);
            let r = pgpitr_offsite::fetch_for_restore(cfg, &fetch_target, None, &sc.staging(), say);
            durations.fetch = t.elapsed().as_secs_f64();
            match r {
                Ok(x) => {
                    ctx.check(
                        "fetch",
                        true,
                        format!("fetched into {}", sc.staging().display()),
                    );
                    x
                }
                Err(e) => {
                    ctx.check(
                        "fetch",
                        false,
                        format!("fetching from the offsite repository failed: {e}"),
                    );
                    return finish(
                        cfg,
                        opts,
                        &sc,
                        &bins,
                        account.as_ref(),
                        ctx,
                        Partial {
                            started,
                            t0,
                            mode,
                            target: given
                                .map(|t| t.to_string())
                                .unwrap_or_else(|| mode.as_str().into()),
                            target_time: None,
                            backup_id: None,
                            durations,
                            rpo: None,
                            heartbeat_time: None,
                            stopped_at_time: None,
                            running: false,
                        },
                        say,
                    );
                }
            }
        }
    };
    let decoder = match Decoder::from_config(rcfg.encryption.as_ref()) {
        Ok(d) => d,
        Err(e) => {
            return Err(DrillError::Refused(format!(
                "cannot decrypt the archive: {e}"
            )))
        }
    };
    let t_plan = Instant::now();
    let inv = Inventory::load(&rcfg, &decoder)
        .map_err(|e| DrillError::Refused(format!("cannot read the archive and backups: {e}")))?;

    // wal_chain: the window as `pgpitr status` computes it, with its gaps.
    let window = match inv.status(Some(&bins), &decoder) {
        Ok(st) => st.window,
        Err(e) => {
            ctx.check(
                "wal_chain",
                false,
                format!("cannot compute the restorable window: {e}"),
            );
            None
        }
    };
    if let Some(w) = &window {
        if w.gaps.is_empty() {
            ctx.check(
                "wal_chain",
                true,
                format!(
                    "no missing segments on timeline {} ({} to {})",
                    w.timeline,
                    fmt_time(w.oldest),
                    fmt_time(w.newest)
                ),
            );
        } else {
            ctx.check(
                "wal_chain",
                false,
                format!(
                    "WAL missing inside the window on timeline {}: {}; nothing after the gap can be restored",
                    w.timeline,
                    w.gaps.join(", ")
                ),
            );
        }
    } else if !ctx.checks.iter().any(|c| c.check == "wal_chain") {
        ctx.check(
            "wal_chain",
            false,
            "there is no complete base backup to restore from",
        );
    }

    // The target.
    let target = match (mode, &given, &window) {
        (Mode::Given, Some(t), _) => t.clone(),
        (Mode::Latest, _, _) => Target::Latest,
        (Mode::Random, _, Some(w)) => {
            let span = (w.newest - w.oldest).num_milliseconds();
            if span > 1 {
                let off = random_u64() % (span as u64 - 1);
                let t = w.oldest + chrono::Duration::milliseconds(off as i64);
                Target::Time(t)
            } else {
                ctx.warnings.push(
                    "the window holds no transaction after the newest backup: drilling to latest instead of a random point".into(),
                );
                Target::Latest
            }
        }
        (_, _, _) => Target::Latest,
    };
    let target_text = match &target {
        Target::Time(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        Target::Latest => "latest".into(),
        other => opts.to.clone().unwrap_or_else(|| other.to_string()),
    };
    say(&format!("{} drill to {target}", mode.as_str()));
    let mut partial = Partial {
        started,
        t0,
        mode,
        target: target_text,
        target_time: None,
        backup_id: None,
        durations,
        rpo: None,
        heartbeat_time: None,
        stopped_at_time: None,
        running: false,
    };
    let p = match plan(
        &inv,
        &bins,
        &decoder,
        &PlanRequest {
            target: target.clone(),
            backup: None,
            timeline: None,
            exclusive: false,
        },
    ) {
        Ok(p) => {
            ctx.check(
                "plan",
                true,
                format!(
                    "backup {}, {} archived segments, timeline {}",
                    p.backup.id, p.segments, p.timeline
                ),
            );
            p
        }
        Err(e) => {
            ctx.check("plan", false, e.to_string());
            return finish(cfg, opts, &sc, &bins, account.as_ref(), ctx, partial, say);
        }
    };
    partial.backup_id = Some(p.backup.id.clone());
    partial.target_time = match &target {
        Target::Time(t) => Some(*t),
        Target::Latest => Some(p.window_end),
        _ => None,
    };
    scratch::check_space(&sc, &p, inv.seg_size)?;
    let plan_secs = t_plan.elapsed().as_secs_f64();

    // Restore with the restore library: archiving off, the scratch port.
    let eo = ExecuteOptions {
        into: sc.data(),
        port: sc.port,
        config_path: rcfg_path,
        tools_dir: opts.tools_dir.clone(),
        archive: false,
        progress: opts.progress,
        pause: false,
        hand_over: false,
    };
    let report = match execute(&rcfg, &bins, &decoder, &p, &eo, say) {
        Ok(r) => r,
        Err(e) => {
            partial.running = true;
            ctx.check("restore", false, e.to_string());
            partial.durations.extract = plan_secs;
            return finish(cfg, opts, &sc, &bins, account.as_ref(), ctx, partial, say);
        }
    };
    partial.running = true;
    ctx.check(
        "restore",
        true,
        format!(
            "backup {} restored into {} on port {}",
            p.backup.id,
            sc.data().display(),
            sc.port
        ),
    );
    partial.stopped_at_time = report.stopped_at_time;
    let step = |name: &str| -> f64 {
        report
            .steps
            .iter()
            .filter(|s| s.step.starts_with(name))
            .map(|s| s.seconds)
            .sum()
    };
    partial.durations.extract = plan_secs + step("extract") + step("configure");
    let replay_and_promote = step("replay");
    let log = std::fs::read_to_string(&report.log_file).unwrap_or_default();
    match promote_seconds(&log) {
        Some(pr) if pr <= replay_and_promote => {
            partial.durations.promote = Some(pr);
            partial.durations.replay = replay_and_promote - pr;
        }
        _ => {
            partial.durations.replay = replay_and_promote;
            ctx.warnings.push(format!(
                "cannot time the promotion from {} (log_line_prefix without %m?): replay includes it",
                report.log_file.display()
            ));
        }
    }

    // Checks on the restored copy.
    let t_checks = Instant::now();
    let ep = Endpoint {
        socket_dir: rcfg.postgres.socket_dir.clone(),
        port: sc.port,
        user: rcfg.postgres.user.clone(),
    };
    let ro = make_read_only(&ep);
    if let Err(e) = &ro {
        ctx.warnings
            .push(format!("cannot make the scratch server read-only: {e}"));
    }
    check_target_reached(&mut ctx, &target, &report, &log);
    check_promoted(&mut ctx, &ep, &p, report.timeline);
    let dbs = check_databases(&mut ctx, &ep);
    check_amcheck(&mut ctx, &bins, account.as_ref(), &ep, &dbs);
    let (rpo, hb) = check_heartbeat(cfg, &mut ctx, &ep, &target, &partial, started);
    partial.rpo = rpo;
    partial.heartbeat_time = hb;
    if partial.target_time.is_none() {
        partial.target_time = report.stopped_at_time;
    }
    partial.durations.checks = t_checks.elapsed().as_secs_f64();
    finish(cfg, opts, &sc, &bins, account.as_ref(), ctx, partial, say)
}

struct Partial {
    started: DateTime<Utc>,
    t0: Instant,
    mode: Mode,
    target: String,
    target_time: Option<DateTime<Utc>>,
    backup_id: Option<String>,
    durations: Durations,
    rpo: Option<f64>,
    heartbeat_time: Option<DateTime<Utc>>,
    stopped_at_time: Option<DateTime<Utc>>,
    /// A scratch server may be running.
    running: bool,
}

/// Marks the checks that did not run, removes the copy (unless kept), appends the history
/// line and writes the metrics.
#[allow(clippy::too_many_arguments)]
fn finish(
    cfg: &Config,
    opts: &DrillOptions,
    sc: &Scratch,
    bins: &Bins,
    account: Option<&Account>,
    mut ctx: Ctx,
    mut part: Partial,
    say: &mut dyn FnMut(&str),
) -> Result<DrillRecord> {
    for c in CHECKS {
        if !ctx.checks.iter().any(|x| x.check == c) {
            ctx.skip(c, "not run: an earlier step failed");
        }
    }
    // A check not run because an earlier one failed has ok = false.
    let success = ctx.checks.iter().all(|c| c.ok);
    let mut kept = None;
    if opts.keep && part.running {
        kept = Some(sc.data());
    } else {
        if let Err(e) = scratch::remove(bins, account, sc) {
            ctx.warnings.push(format!("cleanup: {e}"));
        } else {
            say(&format!("scratch copy removed from {}", sc.dir.display()));
        }
    }
    part.durations.total = part.t0.elapsed().as_secs_f64();
    let rec = DrillRecord {
        time: part.started,
        finished: Utc::now(),
        instance: cfg.instance.clone(),
        mode: part.mode.as_str().into(),
        target: part.target,
        target_time: part.target_time,
        backup_id: part.backup_id,
        source: opts.source.as_str().into(),
        success,
        checks: ctx.checks,
        durations: part.durations,
        rpo_seconds: part.rpo,
        heartbeat_time: part.heartbeat_time,
        stopped_at_time: part.stopped_at_time,
        warnings: ctx.warnings,
        kept,
    };
    history::append(&cfg.backup.dir, &rec)?;
    if let Some(m) = &cfg.metrics {
        let all = history::read(&cfg.backup.dir)?;
        metrics::metrics(&rec, &all).write(&m.textfile_dir)?;
    }
    Ok(rec)
}

/// PostgreSQL's own message for a failed query.
fn pg_msg(e: &pgpitr_pg::PgError) -> String {
    match e {
        pgpitr_pg::PgError::Query(q) => q
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| q.to_string()),
        e => e.to_string(),
    }
}

fn fmt_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Seconds from PostgreSQL's end-of-recovery line to "ready to accept connections", from
/// the log's `%m` timestamps.
pub fn promote_seconds(log: &str) -> Option<f64> {
    let lines: Vec<&str> = log.lines().collect();
    let stop = lines
        .iter()
        .position(|l| l.contains("recovery stopping") || l.contains("redo done at"))?;
    let ready = lines[stop..]
        .iter()
        .find(|l| l.contains("database system is ready to accept connections"))?;
    let a = log_time(lines[stop])?;
    let b = log_time(ready)?;
    Some(((b - a).num_microseconds()? as f64 / 1e6).max(0.0))
}

fn log_time(line: &str) -> Option<chrono::NaiveDateTime> {
    let s = line.get(..23)?;
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.3f").ok()
}

/// `default_transaction_read_only = on` for every later session of the scratch server.
fn make_read_only(ep: &Endpoint) -> pgpitr_pg::Result<()> {
    let mut c = ep.wait_connect("postgres", Duration::from_secs(30))?;
    c.batch_execute("ALTER SYSTEM SET default_transaction_read_only = on")?;
    c.query_one("SELECT pg_reload_conf()", &[])?;
    // The reload is asynchronous: wait until new sessions see it.
    for _ in 0..50 {
        let mut n = ep.connect("postgres")?;
        let v: String = n
            .query_one("SHOW default_transaction_read_only", &[])?
            .get(0);
        if v == "on" {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(pgpitr_pg::PgError::Other(
        "default_transaction_read_only still off after reload".into(),
    ))
}

fn check_target_reached(
    ctx: &mut Ctx,
    target: &Target,
    report: &pgpitr_restore::RestoreReport,
    log: &str,
) {
    let line_with = |needle: &str| {
        log.lines()
            .find_map(|l| l.find(needle).map(|i| l[i..].trim().to_string()))
    };
    match target {
        Target::Latest => match (line_with("redo done at"), line_with("archive recovery complete")) {
            (Some(redo), Some(_)) => ctx.check("target_reached", true, format!("PostgreSQL: {redo}; archive recovery complete")),
            _ => ctx.check(
                "target_reached",
                false,
                format!("PostgreSQL's log {} has no \"redo done at\" / \"archive recovery complete\" line", report.log_file.display()),
            ),
        },
        _ => match &report.stop_reason {
            Some(r) => ctx.check("target_reached", true, format!("PostgreSQL: {r}")),
            None => ctx.check(
                "target_reached",
                false,
                format!(
                    "PostgreSQL's log {} has no \"recovery stopping\" line: replay ended without reaching the target",
                    report.log_file.display()
                ),
            ),
        },
    }
}

fn check_promoted(ctx: &mut Ctx, ep: &Endpoint, p: &pgpitr_restore::Plan, timeline: u32) {
    let r = ep.connect("postgres").and_then(|mut c| {
        Ok(c.query_one("SELECT pg_is_in_recovery()", &[])
            .map_err(pgpitr_pg::PgError::from)?
            .get::<_, bool>(0))
    });
    match r {
        Ok(false) if timeline > p.timeline => ctx.check(
            "promoted",
            true,
            format!(
                "out of recovery on new timeline {timeline} (from {})",
                p.timeline
            ),
        ),
        Ok(false) => ctx.check(
            "promoted",
            false,
            format!("out of recovery but still on timeline {timeline}: no new timeline was chosen"),
        ),
        Ok(true) => ctx.check("promoted", false, "the scratch server is still in recovery"),
        Err(e) => ctx.check(
            "promoted",
            false,
            format!("cannot ask the scratch server: {e}"),
        ),
    }
}

/// Connects to every database that allows connections; returns those that answered.
fn check_databases(ctx: &mut Ctx, ep: &Endpoint) -> Vec<String> {
    let names: Vec<String> = match ep.connect("postgres").and_then(|mut c| {
        Ok(c.query(
            "SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1",
            &[],
        )
        .map_err(pgpitr_pg::PgError::from)?
        .iter()
        .map(|r| r.get(0))
        .collect())
    }) {
        Ok(n) => n,
        Err(e) => {
            ctx.check(
                "databases_connect",
                false,
                format!("cannot list databases: {e}"),
            );
            return Vec::new();
        }
    };
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for n in &names {
        match ep.connect(n).and_then(|mut c| {
            c.query_one("SELECT 1", &[])
                .map_err(pgpitr_pg::PgError::from)?;
            Ok(())
        }) {
            Ok(()) => ok.push(n.clone()),
            Err(e) => bad.push(format!("{n}: {}", pg_msg(&e))),
        }
    }
    if bad.is_empty() {
        ctx.check(
            "databases_connect",
            true,
            format!(
                "{} databases accept connections: {}",
                ok.len(),
                ok.join(", ")
            ),
        );
    } else {
        ctx.check(
            "databases_connect",
            false,
            format!("cannot connect: {}", bad.join("; ")),
        );
    }
    ok
}

/// pg_amcheck over every database; the amcheck extension is created in the scratch copy.
fn check_amcheck(
    ctx: &mut Ctx,
    bins: &Bins,
    account: Option<&Account>,
    ep: &Endpoint,
    dbs: &[String],
) {
    if dbs.is_empty() {
        ctx.skip("amcheck", "no database to check");
        return;
    }
    for d in dbs {
        // Two statements: the SET must come before the transaction that creates.
        let r = ep.connect(d).and_then(|mut c| {
            c.batch_execute("SET default_transaction_read_only = off")?;
            c.batch_execute("CREATE EXTENSION IF NOT EXISTS amcheck")?;
            Ok(())
        });
        if let Err(e) = r {
            ctx.check(
                "amcheck",
                false,
                format!(
                    "cannot create the amcheck extension in {d} of the scratch copy: {} (install postgresql-contrib)",
                    pg_msg(&e)
                ),
            );
            return;
        }
    }
    let tool = bins.path("pg_amcheck");
    let mut cmd = command_as(&tool, account);
    cmd.arg("--host")
        .arg(&ep.socket_dir)
        .arg("--port")
        .arg(ep.port.to_string())
        .arg("--username")
        .arg(&ep.user)
        .arg("--no-password")
        .arg("--all")
        .current_dir("/");
    match cmd.output() {
        Err(e) => ctx.check(
            "amcheck",
            false,
            format!("cannot run {}: {e}", tool.display()),
        ),
        Ok(o) if o.status.success() => ctx.check(
            "amcheck",
            true,
            format!("pg_amcheck found no corruption in {} databases", dbs.len()),
        ),
        Ok(o) => {
            let out = String::from_utf8_lossy(&o.stdout);
            let err = String::from_utf8_lossy(&o.stderr);
            let text: Vec<&str> = out
                .lines()
                .chain(err.lines())
                .filter(|l| !l.trim().is_empty())
                .take(6)
                .collect();
            ctx.check(
                "amcheck",
                false,
                format!("pg_amcheck ({}): {}", o.status, text.join(" | ")),
            );
        }
    }
}

/// The restored heartbeat must lie at or before the target and no further back than the
/// heartbeat interval plus archive_timeout. Returns (RPO, heartbeat time).
fn check_heartbeat(
    cfg: &Config,
    ctx: &mut Ctx,
    ep: &Endpoint,
    target: &Target,
    part: &Partial,
    started: DateTime<Utc>,
) -> (Option<f64>, Option<DateTime<Utc>>) {
    if !cfg.drill.heartbeat {
        // Turned off on purpose: not a failure, but visibly not measured.
        ctx.checks.push(CheckResult {
            check: "heartbeat".into(),
            ok: true,
            skipped: true,
            detail: "drill.heartbeat is off: the RPO is not measured".into(),
        });
        ctx.warnings
            .push("RPO not measured: drill.heartbeat is off".into());
        return (None, None);
    }
    // archive_timeout is what the instance promises: read it from the instance. The scratch
    // copy's own setting is whatever its base backup carried (under the NixOS module, whose
    // config_file lies outside the data folder, initdb's default 0), so it is only the
    // fallback when the instance cannot be reached (an off-site drill on a rebuilt host).
    let instance = Endpoint {
        socket_dir: cfg.postgres.socket_dir.clone(),
        port: cfg.postgres.port,
        user: cfg.postgres.user.clone(),
    };
    let from_instance = instance
        .connect(pgpitr_pg::heartbeat::DATABASE)
        .and_then(|mut c| archive_timeout_of(&mut c));
    let read = ep
        .connect(pgpitr_pg::heartbeat::DATABASE)
        .and_then(|mut c| {
            let beat = pgpitr_pg::heartbeat::read(&mut c)?;
            let timeout = match &from_instance {
                Ok(t) => (*t, "the instance"),
                Err(_) => (archive_timeout_of(&mut c)?, "the restored copy"),
            };
            Ok((beat, timeout))
        });
    let (beat, (archive_timeout, timeout_source)) = match read {
        Ok(x) => x,
        Err(e) => {
            ctx.check(
                "heartbeat",
                false,
                format!(
                    "cannot read {}: {}",
                    pgpitr_pg::heartbeat::TABLE,
                    pg_msg(&e)
                ),
            );
            return (None, None);
        }
    };
    if let Err(e) = &from_instance {
        ctx.warnings.push(format!(
            "cannot read archive_timeout from the instance (port {}): {}; the heartbeat allowance uses the restored copy's ({archive_timeout} s)",
            cfg.postgres.port,
            pg_msg(e)
        ));
    }
    let Some(beat) = beat else {
        ctx.check(
            "heartbeat",
            false,
            format!(
                "no heartbeat in the restored copy ({} in database postgres): healthcheck had not written it before the target; check that healthcheck runs (its timer) with drill.heartbeat on",
                pgpitr_pg::heartbeat::TABLE
            ),
        );
        return (None, None);
    };
    let Some(tt) = part.target_time.or(part.stopped_at_time) else {
        ctx.check(
            "heartbeat",
            false,
            format!(
                "heartbeat {} restored, but the target's time cannot be computed (no transaction replayed)",
                fmt_time(beat.at)
            ),
        );
        return (None, Some(beat.at));
    };
    let allowed = cfg.drill.heartbeat_interval_seconds as f64 + archive_timeout.max(0) as f64;
    let age = (tt - beat.at).num_milliseconds() as f64 / 1000.0;
    let rpo = match target {
        Target::Latest => (started - beat.at).num_milliseconds() as f64 / 1000.0,
        _ => age,
    };
    if age < 0.0 {
        ctx.check(
            "heartbeat",
            false,
            format!(
                "heartbeat {} is after the target {}: replay went past the target",
                fmt_time(beat.at),
                fmt_time(tt)
            ),
        );
    } else if age > allowed {
        ctx.check(
            "heartbeat",
            false,
            format!(
                "heartbeat {} is {age:.0} s before the target {} (allowed: heartbeat interval {} s + archive_timeout {} s of {timeout_source}): the newest data restored is older than promised; check that healthcheck runs every drill.heartbeat_interval_seconds and WAL is archived",
                fmt_time(beat.at),
                fmt_time(tt),
                cfg.drill.heartbeat_interval_seconds,
                archive_timeout
            ),
        );
    } else {
        ctx.check(
            "heartbeat",
            true,
            format!(
                "heartbeat {} (lsn {}) is {age:.1} s before the target (allowed {allowed:.0} s: heartbeat interval {} s + archive_timeout {archive_timeout} s of {timeout_source})",
                beat.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                beat.lsn,
                cfg.drill.heartbeat_interval_seconds
            ),
        );
    }
    (Some(rpo), Some(beat.at))
}

fn archive_timeout_of(c: &mut pgpitr_pg::Client) -> pgpitr_pg::Result<i32> {
    Ok(c.query_one(
        "SELECT setting::int FROM pg_settings WHERE name = 'archive_timeout'",
        &[],
    )
    .map_err(pgpitr_pg::PgError::from)?
    .get(0))
}

/// The path of the history file for `cfg`.
pub fn history_path(cfg: &Config) -> PathBuf {
    history::path(&cfg.backup.dir)
}

/// The newest drill of the instance, for `pgpitr status`.
pub fn last_drill(cfg: &Config) -> Result<Option<DrillRecord>> {
    history::last(&cfg.backup.dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promote_is_timed_from_the_log() {
        let log = "2026-11-22 15:00:00.100 UTC [1] LOG:  starting\n\
                   2026-11-22 15:00:01.250 UTC [2] LOG:  recovery stopping before commit of transaction 740, time 2026-11-22 14:59:59.9+00\n\
                   2026-11-22 15:00:01.300 UTC [2] LOG:  selected new timeline ID: 2\n\
                   2026-11-22 15:00:01.750 UTC [1] LOG:  database system is ready to accept connections\n";
        assert_eq!(promote_seconds(log), Some(0.5));
        assert_eq!(promote_seconds("no timestamps here"), None);
    }

    fn rec(mode: &str) -> DrillRecord {
        DrillRecord {
            time: Utc::now(),
            finished: Utc::now(),
            instance: "x".into(),
            mode: mode.into(),
            target: "latest".into(),
            target_time: None,
            backup_id: None,
            source: "local".into(),
            success: true,
            checks: vec![],
            durations: Durations::default(),
            rpo_seconds: None,
            heartbeat_time: None,
            stopped_at_time: None,
            warnings: vec![],
            kept: None,
        }
    }

    #[test]
    fn modes_alternate() {
        assert_eq!(next_mode(&[]), Mode::Latest);
        assert_eq!(next_mode(&[rec("latest")]), Mode::Random);
        assert_eq!(next_mode(&[rec("latest"), rec("random")]), Mode::Latest);
        assert_eq!(next_mode(&[rec("given")]), Mode::Latest);
    }

    #[test]
    fn history_appends_and_skips_torn_lines() {
        let d = tempfile::tempdir().unwrap();
        history::append(d.path(), &rec("latest")).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(history::path(d.path()))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"time\": \"tor"))
            .unwrap();
        let all = history::read(d.path()).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].mode, "latest");
    }
}
