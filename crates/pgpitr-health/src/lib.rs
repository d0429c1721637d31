//! `healthcheck`: can this instance still be recovered to a second ago? Each check says what
//! is wrong and what to do; the result goes to stdout, stderr and the textfile metrics.

use chrono::{DateTime, Utc};
use pgpitr_config::Config;
use pgpitr_metrics::{unix_now, Kind, MetricsFile};
use pgpitr_pg::{Bins, Endpoint};
use pgpitr_restore::Inventory;
use pgpitr_wal::codec::Decoder;
use pgpitr_wal::store::Store;
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

pub const JOB: &str = "health";

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What to do about it (failing checks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<String>,
}

impl Check {
    fn pass(check: &'static str, detail: impl Into<String>) -> Check {
        Check {
            check,
            ok: true,
            detail: detail.into(),
            advice: None,
        }
    }
    fn fail(check: &'static str, detail: impl Into<String>, advice: impl Into<String>) -> Check {
        Check {
            check,
            ok: false,
            detail: detail.into(),
            advice: Some(advice.into()),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub instance: String,
    pub healthy: bool,
    pub checks: Vec<Check>,
    /// Oldest point a restore reaches (RFC 3339; the metrics carry it as unix seconds).
    #[serde(with = "pgpitr_time::json::option")]
    pub window_oldest: Option<DateTime<Utc>>,
    /// Newest point a restore reaches.
    #[serde(with = "pgpitr_time::json::option")]
    pub window_newest: Option<DateTime<Utc>>,
    /// What could only be approximated (never silently): printed on stderr too.
    pub warnings: Vec<String>,
}

/// Runs every check. Checks that need the server are left out when it does not answer.
pub fn run(cfg: &Config) -> Report {
    let h = &cfg.health;
    let mut checks = Vec::new();
    let ep = Endpoint {
        socket_dir: cfg.postgres.socket_dir.clone(),
        port: cfg.postgres.port,
        user: cfg.postgres.user.clone(),
    };
    let store = Store::new(&cfg.archive.dir);
    match ep.wait_connect("postgres", Duration::from_secs(h.connect_timeout_seconds)) {
        Err(e) => checks.push(Check::fail("server", e.to_string(), server_advice(cfg, &e))),
        Ok(mut db) => {
            checks.push(Check::pass("server", "answers"));
            checks.extend(server_checks(cfg, &mut db, &store));
            if cfg.drill.heartbeat {
                checks.push(heartbeat(cfg, &mut db));
            }
        }
    }
    // One history model for the backup age and the window: "newest" is the newest backup
    // on the live timeline, never one on an abandoned branch.
    let decoder =
        Decoder::from_config(cfg.encryption.as_ref()).unwrap_or_else(|_| Decoder::plain());
    let inv = Inventory::load(cfg, &decoder);
    checks.push(backup_age(cfg, inv.as_ref().ok()));
    for (check, dir) in [
        ("archive_space", &cfg.archive.dir),
        ("backup_space", &cfg.backup.dir),
    ] {
        checks.push(free_space(check, dir, h.min_free_percent));
    }
    let mut warnings = Vec::new();
    let (window_oldest, window_newest, chain) = window(cfg, inv, &decoder, &mut warnings);
    if let Some(c) = chain {
        checks.push(c);
    }
    Report {
        instance: cfg.instance.clone(),
        healthy: checks.iter().all(|c| c.ok),
        checks,
        window_oldest,
        window_newest,
        warnings,
    }
}

/// What to do when the server does not let us in: start it only when it is really not
/// running (it answered, or its postmaster.pid names a live process, means it is).
fn server_advice(cfg: &Config, e: &pgpitr_pg::PgError) -> String {
    if let pgpitr_pg::PgError::Connect {
        server_answered: true,
        ..
    } = e
    {
        return format!(
            "the server is running and refused the connection: let database user {:?} in over the socket (pg_hba.conf) or run healthcheck as the matching OS user",
            cfg.postgres.user
        );
    }
    let pid_file = cfg.postgres.data_dir.join("postmaster.pid");
    let live_pid = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok())
        .filter(|pid| {
            // SAFETY: kill with signal 0 only checks that the process exists.
            *pid > 0
                && (unsafe { libc::kill(*pid, 0) } == 0
                    || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
        });
    match live_pid {
        Some(pid) => format!(
            "the server is running (pid {pid} in {}) but not reachable at socket folder {} port {}: fix postgres.socket_dir/port in the config to match its unix_socket_directories/port",
            pid_file.display(),
            cfg.postgres.socket_dir.display(),
            cfg.postgres.port
        ),
        None => format!(
            "start PostgreSQL (systemctl start postgresql-{0}) or fix postgres.socket_dir/port in the config",
            cfg.instance
        ),
    }
}

fn server_checks(cfg: &Config, db: &mut pgpitr_pg::Client, store: &Store) -> Vec<Check> {
    let h = &cfg.health;
    let mut out = Vec::new();
    let row = db.query_one(
        "SELECT current_setting('archive_mode'), failed_count, coalesce(last_failed_wal, ''), \
         coalesce(extract(epoch FROM last_failed_time), 0)::float8, \
         coalesce(extract(epoch FROM last_archived_time), 0)::float8, \
         system_identifier::text \
         FROM pg_stat_archiver, pg_control_system()",
        &[],
    );
    let ready = db.query_one(
        "SELECT count(*), coalesce(extract(epoch FROM now() - min(modification)), 0)::float8 \
         FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'",
        &[],
    );
    let (row, ready) = match (row, ready) {
        (Ok(r), Ok(q)) => (r, q),
        (Err(e), _) | (_, Err(e)) => {
            out.push(Check::fail(
                "archiver",
                format!("cannot read pg_stat_archiver: {e}"),
                format!(
                    "connect as a superuser or a member of pg_monitor (postgres.user = {:?})",
                    cfg.postgres.user
                ),
            ));
            return out;
        }
    };
    let mode: String = row.get(0);
    let failed_count: i64 = row.get(1);
    let failed_wal: String = row.get(2);
    let failed_at: f64 = row.get(3);
    let archived_at: f64 = row.get(4);
    let sysid: String = row.get(5);
    let ready_count: i64 = ready.get(0);
    let oldest_ready: f64 = ready.get(1);
    let archive_dir = cfg.archive.dir.display();
    if mode == "off" {
        out.push(Check::fail(
            "archiver",
            "archive_mode is off",
            "set archive_mode = on and archive_command = 'archive-wal --config ... %p %f', then restart PostgreSQL",
        ));
    } else if failed_at > archived_at {
        out.push(Check::fail(
            "archiver",
            format!(
                "archive_command failing since {} ({failed_count} failures, last on {failed_wal})",
                fmt_unix(failed_at)
            ),
            format!("read the PostgreSQL log for archive-wal's error; check that {archive_dir} exists and is writable by the server"),
        ));
    } else if ready_count > 0 && oldest_ready > h.archive_max_age_seconds as f64 {
        out.push(Check::fail(
            "archiver",
            format!("the oldest completed segment has waited {oldest_ready:.0} s to be archived (limit {} s)", h.archive_max_age_seconds),
            "check archive_command and the PostgreSQL log; archiving is not keeping up",
        ));
    } else {
        out.push(Check::pass(
            "archiver",
            if archived_at > 0.0 {
                format!("last archived {}", fmt_unix(archived_at))
            } else {
                "nothing to archive yet".into()
            },
        ));
    }
    out.push(if ready_count as u64 > h.ready_segments_max {
        Check::fail(
            "archive_ready",
            format!("{ready_count} segments wait in pg_wal/archive_status (limit {})", h.ready_segments_max),
            "archiving is falling behind: check archive-wal's errors in the PostgreSQL log and the archive's disk",
        )
    } else {
        Check::pass("archive_ready", format!("{ready_count} segments waiting"))
    });
    out.push(match store.meta() {
        Ok(Some(m)) if m.system_identifier.to_string() != sysid => Check::fail(
            "system_identifier",
            format!("the server is cluster {sysid} but {archive_dir} holds cluster {}", m.system_identifier),
            "point archive.dir at this cluster's own archive (a re-initialised cluster needs a new archive)",
        ),
        Ok(Some(_)) => Check::pass("system_identifier", format!("archive and server are cluster {sysid}")),
        Ok(None) => Check::pass("system_identifier", "archive is still empty"),
        Err(e) => Check::fail("system_identifier", e.to_string(), format!("check {archive_dir}/archive.json")),
    });
    out
}

/// Rewrites the heartbeat row restore drills measure the RPO with (never in recovery).
fn heartbeat(cfg: &Config, db: &mut pgpitr_pg::Client) -> Check {
    match pgpitr_pg::heartbeat::beat(db) {
        Ok(Some(b)) => Check::pass(
            "heartbeat",
            format!("{} set to {} at lsn {}", pgpitr_pg::heartbeat::TABLE, b.at.to_rfc3339(), b.lsn),
        ),
        Ok(None) => Check::pass("heartbeat", "server is in recovery: heartbeat not written"),
        Err(e) => Check::fail(
            "heartbeat",
            format!("cannot write {}: {e}", pgpitr_pg::heartbeat::TABLE),
            format!(
                "let postgres.user ({:?}) create schema pgpitr in database postgres, or turn the heartbeat off with drill.heartbeat = false (drills then cannot measure the RPO)",
                cfg.postgres.user
            ),
        ),
    }
}

fn backup_age(cfg: &Config, inv: Option<&Inventory>) -> Check {
    let limit = cfg.health.backup_max_age_seconds;
    let newest = match inv {
        Some(inv) => Ok(inv.newest_backup().map(|b| b.stop_time)),
        // Without the history (unreadable archive) the catalog's newest in time stands in.
        None => {
            pgpitr_backup::catalog(&cfg.backup.dir).map(|c| c.iter().map(|b| b.stop_time).max())
        }
    };
    match newest {
        Err(e) => Check::fail(
            "backup_age",
            e.to_string(),
            format!("check {}", cfg.backup.dir.display()),
        ),
        Ok(newest) => match newest {
            None if inv.map(|i| !i.backups.is_empty()).unwrap_or(false) => Check::fail(
                "backup_age",
                format!(
                    "no complete base backup on the live timeline {} (the others are on abandoned branches)",
                    inv.map(|i| i.history.live).unwrap_or(1)
                ),
                "take one now: basebackup --config <config>",
            ),
            None => Check::fail(
                "backup_age",
                "no complete base backup",
                "take one: basebackup --config <config> (and check its timer)",
            ),
            Some(t) => {
                let age = (Utc::now() - t).num_seconds().max(0) as u64;
                if age > limit {
                    Check::fail(
                        "backup_age",
                        format!("newest complete backup ended {} ({age} s ago, limit {limit} s)", pgpitr_time::human(t)),
                        "basebackup has not succeeded recently: check its timer and its log (journalctl -u postgresql-basebackup-<instance>)",
                    )
                } else {
                    Check::pass(
                        "backup_age",
                        format!("newest complete backup is {age} s old"),
                    )
                }
            }
        },
    }
}

/// Percentage of the file system holding `dir` that is available.
pub fn free_percent(dir: &Path) -> std::io::Result<f64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path has a NUL byte"))?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string and s a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if s.f_blocks == 0 {
        return Ok(100.0);
    }
    Ok(s.f_bavail as f64 / s.f_blocks as f64 * 100.0)
}

fn free_space(check: &'static str, dir: &Path, min: f64) -> Check {
    match free_percent(dir) {
        Err(e) => Check::fail(
            check,
            format!("{}: {e}", dir.display()),
            "create the folder or fix its path in the config",
        ),
        Ok(p) if p < min => Check::fail(
            check,
            format!("{} has {p:.1}% free (limit {min}%)", dir.display()),
            "free space or grow the file system; walprune removes what retention no longer needs",
        ),
        Ok(p) => Check::pass(check, format!("{p:.1}% free")),
    }
}

/// Restorable window (oldest, newest) and a WAL chain check when the archive can be read
/// here (encrypted history needs the identity; without it the window is approximated from
/// the catalog and the newest object's time, and a warning says so). A window that cannot
/// be computed is a failing check, never silence.
fn window(
    cfg: &Config,
    inv: pgpitr_restore::Result<Inventory>,
    decoder: &Decoder,
    warnings: &mut Vec<String>,
) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<Check>) {
    let bins = Bins::discover(cfg.postgres.bin_dir.as_deref()).ok();
    match inv.and_then(|inv| inv.status(bins.as_ref(), decoder)) {
        Ok(st) => match st.window {
            Some(w) => {
                let chain = if w.gaps.is_empty() {
                    Check::pass(
                        "wal_chain",
                        format!("no missing segments on timeline {}", w.timeline),
                    )
                } else {
                    Check::fail(
                        "wal_chain",
                        format!("missing: {}", w.gaps.join(", ")),
                        "restores past the gap are impossible: take a new base backup now, then find out what removed the segments",
                    )
                };
                (Some(w.oldest), Some(w.newest), Some(chain))
            }
            None if !st.warnings.is_empty() => (
                None,
                None,
                Some(Check::fail(
                    "wal_chain",
                    st.warnings.join("; "),
                    "the restorable window cannot be computed: fix what the warning names",
                )),
            ),
            None => (
                None,
                None,
                Some(Check::fail(
                    "wal_chain",
                    if st.backups.is_empty() {
                        "no restorable window: no complete base backup to start from".to_string()
                    } else {
                        format!(
                            "no restorable window: no backup lies on the history of the live timeline {}",
                            st.live_timeline
                        )
                    },
                    "take a base backup now: basebackup --config <config>",
                )),
            ),
        },
        Err(e) => {
            warnings.push(format!(
                "restorable window approximated from the backup catalog and the newest archived object's time: {e}"
            ));
            let catalog = pgpitr_backup::catalog(&cfg.backup.dir).unwrap_or_default();
            let oldest = catalog.first().map(|b| b.stop_time);
            let newest = Store::new(&cfg.archive.dir)
                .list()
                .ok()
                .and_then(|l| l.iter().map(|o| o.mtime).max())
                .map(DateTime::<Utc>::from);
            (oldest, newest.filter(|_| oldest.is_some()), None)
        }
    }
}

fn fmt_unix(t: f64) -> String {
    chrono::DateTime::<Utc>::from_timestamp_micros((t * 1e6) as i64)
        .map(pgpitr_time::human)
        .unwrap_or_else(|| t.to_string())
}

/// The health job's metrics.
pub fn metrics(r: &Report) -> MetricsFile {
    let mut m = MetricsFile::new(JOB, &r.instance);
    m.gauge(
        "postgresql_health",
        "1 if every health check passes, 0 if not.",
        if r.healthy { 1.0 } else { 0.0 },
    );
    for c in &r.checks {
        m.sample(
            "pgpitr_health_check",
            "1 if this health check passes, 0 if not.",
            Kind::Gauge,
            &[("check", c.check)],
            if c.ok { 1.0 } else { 0.0 },
        );
    }
    m.gauge(
        "pgpitr_health_last_run_timestamp_seconds",
        "Unix time healthcheck last ran.",
        unix_now(),
    );
    if let (Some(o), Some(n)) = (r.window_oldest, r.window_newest) {
        let unix = |t: DateTime<Utc>| t.timestamp_micros() as f64 / 1e6;
        let (o, n) = (unix(o), unix(n));
        m.gauge(
            "pgpitr_restorable_window_oldest_timestamp_seconds",
            "Oldest point a restore can reach (end of the oldest backup).",
            o,
        )
        .gauge(
            "pgpitr_restorable_window_newest_timestamp_seconds",
            "Newest point a restore can reach (last archived transaction).",
            n,
        )
        .gauge(
            "pgpitr_restorable_window_seconds",
            "Length of the restorable window.",
            (n - o).max(0.0),
        );
    }
    m
}
