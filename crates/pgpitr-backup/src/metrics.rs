//! basebackup's metrics. A failed run still rewrites them: the failure counter goes up and
//! the last-success time stays what the catalog says.

use crate::BackupInfo;
use pgpitr_metrics::{unix_now, JobState, Kind, MetricsFile};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const JOB: &str = "basebackup";

#[derive(Debug, Default, Serialize, Deserialize)]
struct BackupState {
    failures_total: u64,
    last_failure: f64,
    last_run_ok: bool,
}

/// Records the outcome of a basebackup run (`Ok(info)` or a failure).
pub fn record(
    textfile_dir: &Path,
    instance: &str,
    backup_dir: &Path,
    outcome: Option<&BackupInfo>,
) -> pgpitr_metrics::Result<()> {
    let state = JobState::new(textfile_dir, JOB, instance);
    let _lock = state.lock()?;
    let mut st: BackupState = state.load().unwrap_or_default();
    st.last_run_ok = outcome.is_some();
    if outcome.is_none() {
        st.failures_total += 1;
        st.last_failure = unix_now();
    }
    state.save(&st)?;
    let catalog = crate::catalog(backup_dir).unwrap_or_default();
    let newest = outcome.or(catalog.last());
    let mut m = MetricsFile::new(JOB, instance);
    m.gauge(
        "postgresql_backup_last_success_timestamp",
        "Unix time the newest complete base backup ended.",
        newest
            .map(|b| b.stop_time.timestamp() as f64)
            .unwrap_or(0.0),
    )
    .gauge(
        "pgpitr_backup_last_run_success",
        "1 if the last basebackup run succeeded, 0 if it failed.",
        if st.last_run_ok { 1.0 } else { 0.0 },
    )
    .counter(
        "pgpitr_backup_failures_total",
        "basebackup runs that failed.",
        st.failures_total as f64,
    )
    .gauge(
        "pgpitr_backup_last_failure_timestamp_seconds",
        "Unix time basebackup last failed (0 if never).",
        st.last_failure,
    )
    .gauge(
        "pgpitr_backups",
        "Complete base backups in the catalog.",
        catalog.len() as f64,
    );
    if let Some(b) = newest {
        m.gauge(
            "pgpitr_backup_duration_seconds",
            "Duration of the newest complete base backup.",
            b.duration_seconds,
        )
        .sample(
            "pgpitr_backup_size_bytes",
            "Size of the newest complete base backup: raw (tar) and stored.",
            Kind::Gauge,
            &[("kind", "raw")],
            b.raw_bytes() as f64,
        )
        .sample(
            "pgpitr_backup_size_bytes",
            "Size of the newest complete base backup: raw (tar) and stored.",
            Kind::Gauge,
            &[("kind", "stored")],
            b.stored_bytes() as f64,
        );
    }
    m.write(textfile_dir)
}
