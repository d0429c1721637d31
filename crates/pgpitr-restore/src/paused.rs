//! A restore that paused at its target (`--pause`): the server is read-only in recovery so
//! the operator can look. `--promote` finishes it; `--retarget` moves the target later
//! without starting over (stop, rewrite the target, start, replay on from where it was).

use crate::execute::{follow_replay, log_path, RestoreReport, Step};
use crate::plan::Plan;
use crate::recovery_conf::{reset_after_promotion, setting_key};
use crate::target::Target;
use crate::{io_err, RestoreError, Result};
use chrono::{DateTime, Utc};
use pgpitr_config::Config;
use pgpitr_pg::{Account, Bins, Client, Endpoint, PgCtl};
use pgpitr_wal::Lsn;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Port and socket folder of the server running on `data_dir`, from its postmaster.pid.
pub fn running_endpoint(cfg: &Config, data_dir: &Path) -> Result<Endpoint> {
    let pid = data_dir.join("postmaster.pid");
    let text = fs::read_to_string(&pid).map_err(|_| {
        RestoreError::Refused(format!(
            "no server is running on {} ({} is missing): start it with pg_ctl first",
            data_dir.display(),
            pid.display()
        ))
    })?;
    let lines: Vec<&str> = text.lines().collect();
    let port: u16 = lines
        .get(3)
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| {
            RestoreError::Refused(format!("cannot read the port from {}", pid.display()))
        })?;
    let socket_dir = lines
        .get(4)
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| cfg.postgres.socket_dir.clone());
    Ok(Endpoint {
        socket_dir,
        port,
        user: cfg.postgres.user.clone(),
    })
}

struct Replay {
    in_recovery: bool,
    paused: bool,
    lsn: Option<Lsn>,
    time: Option<DateTime<Utc>>,
}

fn replay_state(c: &mut Client) -> Result<Replay> {
    let row = c
        .query_one(
            "SELECT pg_is_in_recovery(), \
             CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() = 'paused' ELSE false END, \
             pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp()",
            &[],
        )
        .map_err(pgpitr_pg::PgError::from)?;
    let lsn: Option<String> = row.get(2);
    let t: Option<std::time::SystemTime> = row.get(3);
    Ok(Replay {
        in_recovery: row.get(0),
        paused: row.get(1),
        lsn: lsn.and_then(|s| s.parse().ok()),
        time: t.map(DateTime::<Utc>::from),
    })
}

#[allow(clippy::too_many_arguments)]
fn report(
    cfg: &Config,
    bins: &Bins,
    data_dir: &Path,
    ep: &Endpoint,
    target: String,
    timeline: u32,
    st: &Replay,
    promoted: bool,
    steps: Vec<Step>,
) -> Result<RestoreReport> {
    let account = Account::for_server(&cfg.postgres.os_user)?;
    let ctl = PgCtl {
        bins,
        account: account.as_ref(),
        data_dir,
    };
    let log_file = log_path(data_dir);
    let log = fs::read_to_string(&log_file).unwrap_or_default();
    let stop_reason = log.lines().rev().find_map(|l| {
        l.find("recovery stopping")
            .map(|i| l[i..].trim().to_string())
    });
    Ok(RestoreReport {
        backup_id: String::new(),
        target,
        data_dir: data_dir.to_path_buf(),
        port: ep.port,
        socket_dir: ep.socket_dir.clone(),
        stopped_at_lsn: st.lsn,
        stopped_at_time: st.time,
        stop_reason,
        timeline,
        steps,
        log_file,
        stop_command: ctl.stop_hint(),
        promoted,
        neutralised: Vec::new(),
        warnings: Vec::new(),
    })
}

/// `pgpitr restore --promote --into DIR`: ends the paused recovery, removes the recovery
/// settings pgpitr wrote, reports the new timeline.
pub fn promote(cfg: &Config, bins: &Bins, data_dir: &Path) -> Result<RestoreReport> {
    let began = Instant::now();
    let ep = running_endpoint(cfg, data_dir)?;
    let mut c = ep.wait_connect("postgres", Duration::from_secs(30))?;
    let st = replay_state(&mut c)?;
    if !st.in_recovery {
        return Err(RestoreError::Refused(format!(
            "the server on {} is not in recovery: it was promoted already",
            data_dir.display()
        )));
    }
    let ok: bool = c
        .query_one("SELECT pg_promote(true, 120)", &[])
        .map_err(pgpitr_pg::PgError::from)?
        .get(0);
    if !ok {
        return Err(RestoreError::Recovery(format!(
            "PostgreSQL did not finish promoting within 120 s; see {}",
            log_path(data_dir).display()
        )));
    }
    reset_after_promotion(&mut c)?;
    let timeline = crate::execute::current_timeline(&mut c)?;
    drop(c);
    // Paused as root, the server ran with pgpitr's own access files: now it is the operator's.
    let account = Account::for_server(&cfg.postgres.os_user)?;
    let ctl = PgCtl {
        bins,
        account: account.as_ref(),
        data_dir,
    };
    let mut warnings = Vec::new();
    match crate::access::hand_over(&ctl, &log_path(data_dir)) {
        Some(Ok(note)) => eprintln!("{note}"),
        // The report carries it (its human form and the CLI's --json path both print it).
        Some(Err(w)) => warnings.push(w),
        None => {}
    }
    let mut r = report(
        cfg,
        bins,
        data_dir,
        &ep,
        "promoted where it paused".into(),
        timeline,
        &st,
        true,
        vec![Step {
            step: "promote".into(),
            seconds: began.elapsed().as_secs_f64(),
        }],
    )?;
    r.warnings = warnings;
    Ok(r)
}

/// `pgpitr restore --retarget --to LATER --into DIR`: moves a paused restore's target later
/// and replays on to it (paused again), without extracting anything again.
pub fn retarget(
    cfg: &Config,
    bins: &Bins,
    plan: &Plan,
    data_dir: &Path,
    progress: bool,
    say: &mut dyn FnMut(&str),
) -> Result<RestoreReport> {
    let began = Instant::now();
    let ep = running_endpoint(cfg, data_dir)?;
    let mut c = ep.wait_connect("postgres", Duration::from_secs(30))?;
    let st = replay_state(&mut c)?;
    if !st.in_recovery || !st.paused {
        return Err(RestoreError::Refused(format!(
            "the server on {} is not paused in recovery{}: only a restore made with --pause can be moved",
            data_dir.display(),
            if st.in_recovery { "" } else { " (it was promoted)" }
        )));
    }
    let back = match &plan.target {
        Target::Time(t) => st.time.map(|now| *t <= now).unwrap_or(false),
        Target::Lsn(l) => st.lsn.map(|now| *l <= now).unwrap_or(false),
        Target::Immediate => true,
        Target::Latest => {
            return Err(RestoreError::Refused(
                "--retarget needs a target to pause at; to replay everything and finish, use --promote after a later target, or restore anew with --to latest".into(),
            ))
        }
        Target::Xid(_) | Target::Name(_) => false,
    };
    if back {
        return Err(RestoreError::Refused(format!(
            "{} is not after where replay paused (lsn {}, last transaction {}): replay cannot go back; restore anew into an empty folder",
            plan.target,
            st.lsn.map(|l| l.to_string()).unwrap_or_else(|| "?".into()),
            st.time
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
                .unwrap_or_else(|| "?".into())
        )));
    }
    drop(c);
    let account = Account::for_server(&cfg.postgres.os_user)?;
    let ctl = PgCtl {
        bins,
        account: account.as_ref(),
        data_dir,
    };
    say("stopping the paused server to move its target");
    ctl.stop()?;
    let auto = data_dir.join("postgresql.auto.conf");
    let text = fs::read_to_string(&auto).map_err(io_err(format!("read {}", auto.display())))?;
    let mut out = String::new();
    for line in text.lines() {
        match setting_key(line) {
            Some(k) if k.starts_with("recovery_target") && k != "recovery_target_timeline" => {
                out.push_str(&format!(
                    "# replaced by pgpitr restore --retarget: {line}\n"
                ));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out.push_str(&format!(
        "# moved by pgpitr restore --retarget at {}: {}\nrecovery_target_action = 'pause'\n",
        Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        plan.target
    ));
    for (k, v) in plan.target.recovery_settings() {
        out.push_str(&format!("{k} = {v}\n"));
    }
    pgpitr_durable::write_replace(&auto, out.as_bytes(), 0o600)?;
    if let Some(a) = &account {
        a.chown_tree(&auto)?;
    }
    if !data_dir.join("recovery.signal").exists() {
        return Err(RestoreError::Refused(format!(
            "{} has no recovery.signal: it is not a paused restore",
            data_dir.display()
        )));
    }
    let log_file = log_path(data_dir);
    say(&format!("replaying on to {}", plan.target));
    let access = crate::access::start_options(account.as_ref(), data_dir, &cfg.postgres.user)?;
    ctl.start(&log_file, &access, false)?;
    let replayed = follow_replay(&ctl, &ep, plan, &log_file, progress, true, &mut *say)?;
    let (lsn, time) = (replayed.lsn, replayed.time);
    let st = Replay {
        in_recovery: true,
        paused: true,
        lsn,
        time,
    };
    let mut r = report(
        cfg,
        bins,
        data_dir,
        &ep,
        plan.target.to_string(),
        plan.timeline,
        &st,
        false,
        vec![Step {
            step: "replay to the new target".into(),
            seconds: began.elapsed().as_secs_f64(),
        }],
    )?;
    r.backup_id = plan.backup.id.clone();
    Ok(r)
}
