//! Prometheus textfile-collector metrics.
//!
//! Each job writes one file, `<textfile_dir>/pgpitr_<job>_<instance>.prom`, in the classic
//! Prometheus text format node_exporter reads (not OpenMetrics): written to a temp file in
//! the same folder, fsynced, renamed. Every sample carries `instance="<name>"`. Counters that
//! must survive between runs live in a small state file beside it
//! (`.pgpitr_<job>_<instance>.state.json`, which node_exporter ignores), so no job ever scans
//! the archive to update its metrics.

use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics: {0}")]
    Durable(#[from] pgpitr_durable::DurableError),
}

pub type Result<T> = std::result::Result<T, MetricsError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

#[derive(Debug, Clone)]
struct Family {
    name: String,
    help: String,
    kind: Kind,
    samples: Vec<(Vec<(String, String)>, f64)>,
}

/// The metrics one job writes for one instance.
#[derive(Debug, Clone)]
pub struct MetricsFile {
    job: String,
    instance: String,
    families: Vec<Family>,
}

impl MetricsFile {
    pub fn new(job: &str, instance: &str) -> MetricsFile {
        MetricsFile {
            job: job.into(),
            instance: instance.into(),
            families: Vec::new(),
        }
    }

    /// Adds a sample with only the `instance` label.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) -> &mut Self {
        self.sample(name, help, Kind::Gauge, &[], value)
    }

    pub fn counter(&mut self, name: &str, help: &str, value: f64) -> &mut Self {
        self.sample(name, help, Kind::Counter, &[], value)
    }

    /// Adds a sample with extra labels (after `instance`).
    pub fn sample(
        &mut self,
        name: &str,
        help: &str,
        kind: Kind,
        labels: &[(&str, &str)],
        value: f64,
    ) -> &mut Self {
        debug_assert!(valid_name(name), "bad metric name {name}");
        let mut l = vec![("instance".to_string(), self.instance.clone())];
        l.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        match self.families.iter_mut().find(|f| f.name == name) {
            Some(f) => f.samples.push((l, value)),
            None => self.families.push(Family {
                name: name.into(),
                help: help.into(),
                kind,
                samples: vec![(l, value)],
            }),
        }
        self
    }

    /// The classic text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(&f.help));
            let kind = match f.kind {
                Kind::Gauge => "gauge",
                Kind::Counter => "counter",
            };
            let _ = writeln!(out, "# TYPE {} {kind}", f.name);
            for (labels, v) in &f.samples {
                let l: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                    .collect();
                let _ = writeln!(out, "{}{{{}}} {}", f.name, l.join(","), fmt_value(*v));
            }
        }
        out
    }

    pub fn path(&self, dir: &Path) -> PathBuf {
        dir.join(format!("pgpitr_{}_{}.prom", self.job, self.instance))
    }

    /// Writes the file atomically (temp file in the same folder, fsync, rename).
    pub fn write(&self, dir: &Path) -> Result<()> {
        pgpitr_durable::write_replace_atomic(&self.path(dir), self.render().as_bytes(), 0o644)?;
        Ok(())
    }
}

/// Persistent counters of one job, beside its metrics file.
pub struct JobState {
    path: PathBuf,
}

impl JobState {
    pub fn new(dir: &Path, job: &str, instance: &str) -> JobState {
        JobState {
            path: dir.join(format!(".pgpitr_{job}_{instance}.state.json")),
        }
    }

    /// The stored state, or `None` when there is none yet (or it is unreadable).
    pub fn load<T: DeserializeOwned>(&self) -> Option<T> {
        let bytes = std::fs::read(&self.path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Saves the state atomically but without fsync: it is a cache of counters on a hot path.
    /// After a crash it may be old or unreadable; an unreadable state starts afresh (counters
    /// restart, which Prometheus treats as a counter reset; archive-wal recounts its objects).
    pub fn save<T: Serialize>(&self, state: &T) -> Result<()> {
        let body = serde_json::to_vec(state).expect("state serialises");
        pgpitr_durable::write_replace_cache(&self.path, &body, 0o644)?;
        Ok(())
    }

    /// A lock serialising read-modify-write of this state between processes.
    pub fn lock(&self) -> Result<pgpitr_durable::FileLock> {
        Ok(pgpitr_durable::FileLock::exclusive(
            &self.path.with_extension("lock"),
        )?)
    }
}

/// Seconds since the Unix epoch, as Prometheus timestamps are.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_classic_format() {
        let mut m = MetricsFile::new("archive", "main");
        m.gauge("postgresql_health", "1 healthy, 0 not", 1.0);
        m.sample(
            "pgpitr_health_check",
            "per check",
            Kind::Gauge,
            &[("check", "a\"b\\c\nd")],
            0.0,
        );
        m.sample(
            "pgpitr_health_check",
            "per check",
            Kind::Gauge,
            &[("check", "x")],
            1.0,
        );
        m.counter("pgpitr_archive_pushed_bytes_total", "bytes", 1.5e9);
        let t = m.render();
        assert!(
            t.contains("# TYPE postgresql_health gauge\npostgresql_health{instance=\"main\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains(r#"pgpitr_health_check{instance="main",check="a\"b\\c\nd"} 0"#),
            "{t}"
        );
        assert_eq!(t.matches("# TYPE pgpitr_health_check").count(), 1);
        assert!(t.contains("pgpitr_archive_pushed_bytes_total{instance=\"main\"} 1500000000\n"));
    }

    #[test]
    fn writes_atomically_and_keeps_state() {
        let d = tempfile::tempdir().unwrap();
        let mut m = MetricsFile::new("backup", "x");
        m.gauge("a", "b", 2.0);
        m.write(d.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("pgpitr_backup_x.prom")).unwrap(),
            m.render()
        );
        let s = JobState::new(d.path(), "backup", "x");
        assert_eq!(s.load::<u64>(), None);
        s.save(&41u64).unwrap();
        assert_eq!(s.load::<u64>(), Some(41));
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(names
            .iter()
            .all(|n| !n.to_string_lossy().starts_with(".tmp-")));
    }
}
