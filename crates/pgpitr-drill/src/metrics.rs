//! The drill's metrics (`pgpitr_drill_<instance>.prom`), from the record just made and the
//! history (for the last success).

use crate::DrillRecord;
use pgpitr_metrics::{Kind, MetricsFile};

pub const JOB: &str = "drill";

pub fn metrics(rec: &DrillRecord, history: &[DrillRecord]) -> MetricsFile {
    let mut m = MetricsFile::new(JOB, &rec.instance);
    let ts = |t: chrono::DateTime<chrono::Utc>| t.timestamp_millis() as f64 / 1000.0;
    m.gauge(
        "pgpitr_drill_last_run_timestamp_seconds",
        "Unix time the last restore drill finished.",
        ts(rec.finished),
    );
    m.gauge(
        "pgpitr_drill_last_success_timestamp_seconds",
        "Unix time the last successful restore drill finished (0 if none).",
        history
            .iter()
            .filter(|r| r.success)
            .map(|r| ts(r.finished))
            .fold(0.0, f64::max),
    );
    m.gauge(
        "pgpitr_drill_success",
        "1 if the last restore drill passed every check, 0 if not.",
        if rec.success { 1.0 } else { 0.0 },
    );
    let d = &rec.durations;
    let mut phases = vec![
        ("fetch", d.fetch),
        ("extract", d.extract),
        ("replay", d.replay),
        ("checks", d.checks),
        ("total", d.total),
    ];
    if let Some(p) = d.promote {
        phases.insert(3, ("promote", p));
    }
    for (phase, v) in phases {
        m.sample(
            "pgpitr_drill_duration_seconds",
            "Seconds the last restore drill spent per phase (fetch, extract, replay, promote, checks, total).",
            Kind::Gauge,
            &[("phase", phase)],
            v,
        );
    }
    if let Some(r) = rec.rpo_seconds {
        m.gauge(
            "pgpitr_drill_rpo_seconds",
            "RPO measured by the last restore drill: target time minus the restored heartbeat's time.",
            r,
        );
    }
    if let Some(b) = &rec.backup_id {
        m.sample(
            "pgpitr_drill_backup_info",
            "The backup the last restore drill restored (value 1).",
            Kind::Gauge,
            &[("backup_id", b)],
            1.0,
        );
    }
    for c in &rec.checks {
        m.sample(
            "pgpitr_drill_check",
            "1 if this check of the last restore drill passed, 0 if it failed or did not run.",
            Kind::Gauge,
            &[("check", &c.check)],
            if c.ok && !c.skipped { 1.0 } else { 0.0 },
        );
    }
    m
}
