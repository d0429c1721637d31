//! archive-wal's metrics. archive-wal runs once per segment on PostgreSQL's critical path, so
//! it keeps running totals in a small state file instead of scanning the archive; only the
//! very first run with metrics on counts the objects already there.

use crate::store::{Pushed, Store};
use crate::WalName;
use pgpitr_metrics::{unix_now, JobState, Kind, MetricsFile};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const JOB: &str = "archive";

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ArchiveState {
    pub files_present: u64,
    pub stored_total: u64,
    pub already_archived_total: u64,
    pub raw_bytes_total: u64,
    pub stored_bytes_total: u64,
    pub failures_total: u64,
    pub last_success: f64,
    pub last_failure: f64,
    pub last_duration: f64,
    pub newest_segment: String,
    pub newest_segment_time: f64,
}

/// What one archive-wal run did.
pub enum Outcome<'a> {
    Pushed(&'a Pushed),
    Failed,
}

/// Updates the running totals and rewrites the archive job's metrics file.
pub fn record(
    textfile_dir: &Path,
    instance: &str,
    store: &Store,
    name: &WalName,
    outcome: Outcome<'_>,
    duration: f64,
) -> pgpitr_metrics::Result<()> {
    let state_file = JobState::new(textfile_dir, JOB, instance);
    let _lock = state_file.lock()?;
    // First run with metrics on: count once what is already there (this push included).
    let (mut st, counted) = match state_file.load::<ArchiveState>() {
        Some(s) => (s, false),
        None => {
            let present = store.list().map(|l| l.len() as u64).unwrap_or(0);
            (
                ArchiveState {
                    files_present: present,
                    ..Default::default()
                },
                true,
            )
        }
    };
    let now = unix_now();
    match outcome {
        Outcome::Pushed(Pushed::Stored(e)) => {
            st.stored_total += 1;
            if !counted {
                st.files_present += 1;
            }
            st.raw_bytes_total += e.raw_bytes;
            st.stored_bytes_total += e.stored_bytes;
            st.last_success = now;
            st.last_duration = duration;
            if name.is_segment() && name.to_string() > st.newest_segment {
                st.newest_segment = name.to_string();
                st.newest_segment_time = now;
            }
        }
        Outcome::Pushed(Pushed::AlreadyArchived { .. }) => {
            st.already_archived_total += 1;
            st.last_success = now;
            st.last_duration = duration;
        }
        Outcome::Failed => {
            st.failures_total += 1;
            st.last_failure = now;
        }
    }
    state_file.save(&st)?;
    render(instance, &st).write(textfile_dir)
}

pub fn render(instance: &str, st: &ArchiveState) -> MetricsFile {
    let mut m = MetricsFile::new(JOB, instance);
    m.gauge(
        "postgresql_wal_archive_files_present",
        "Objects (segments, history, backup and partial files) in the WAL archive.",
        st.files_present as f64,
    )
    .gauge(
        "postgresql_wal_archive_last_success_timestamp",
        "Unix time archive-wal last succeeded.",
        st.last_success,
    )
    .gauge(
        "pgpitr_archive_last_failure_timestamp_seconds",
        "Unix time archive-wal last failed (0 if never).",
        st.last_failure,
    )
    .counter(
        "pgpitr_archive_failures_total",
        "archive-wal runs that failed.",
        st.failures_total as f64,
    )
    .sample(
        "pgpitr_archive_pushes_total",
        "archive-wal runs that succeeded, by result.",
        Kind::Counter,
        &[("result", "stored")],
        st.stored_total as f64,
    )
    .sample(
        "pgpitr_archive_pushes_total",
        "archive-wal runs that succeeded, by result.",
        Kind::Counter,
        &[("result", "already_archived")],
        st.already_archived_total as f64,
    )
    .sample(
        "pgpitr_archive_pushed_bytes_total",
        "Bytes archived: raw (original) and stored (compressed, encrypted).",
        Kind::Counter,
        &[("kind", "raw")],
        st.raw_bytes_total as f64,
    )
    .sample(
        "pgpitr_archive_pushed_bytes_total",
        "Bytes archived: raw (original) and stored (compressed, encrypted).",
        Kind::Counter,
        &[("kind", "stored")],
        st.stored_bytes_total as f64,
    )
    .gauge(
        "pgpitr_archive_compression_ratio",
        "Raw bytes divided by stored bytes over everything archived since metrics began.",
        if st.stored_bytes_total > 0 {
            st.raw_bytes_total as f64 / st.stored_bytes_total as f64
        } else {
            0.0
        },
    )
    .gauge(
        "pgpitr_archive_push_duration_seconds",
        "Duration of the last successful archive-wal run.",
        st.last_duration,
    )
    .gauge(
        "pgpitr_archive_newest_segment_timestamp_seconds",
        "Unix time the newest WAL segment was archived.",
        st.newest_segment_time,
    );
    m
}
