//! Restore targets as `--to` accepts them.

use chrono::{DateTime, Utc};
use pgpitr_wal::Lsn;
use serde::Serialize;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum Target {
    Time(DateTime<Utc>),
    Xid(u64),
    Name(String),
    Lsn(Lsn),
    Immediate,
    Latest,
}

const FORMS: &str = "xid:N, name:LABEL, lsn:X/Y, immediate or latest";

/// Parses `--to`; relative times are resolved against `now`.
pub fn parse_target(s: &str, now: DateTime<Utc>) -> Result<Target, String> {
    parse_target_noted(s, now).map(|(t, _)| t)
}

/// Same, with the assumption made for a time without a zone (read as local time), which the
/// plan states.
pub fn parse_target_noted(s: &str, now: DateTime<Utc>) -> Result<(Target, Option<String>), String> {
    let t = s.trim();
    let bad = |why: &str| {
        format!(
            "cannot parse target {s:?}: {why}; use a time ({}), {FORMS}",
            pgpitr_time::FORMS
        )
    };
    let plain = |r: Result<Target, String>| r.map(|t| (t, None));
    plain(match t {
        "immediate" => Ok(Target::Immediate),
        "latest" => Ok(Target::Latest),
        _ if t.starts_with("xid:") || t.starts_with("name:") || t.starts_with("lsn:") => {
            parse_labelled(t).map_err(|why| bad(&why))
        }
        _ => {
            return pgpitr_time::parse(t, now)
                .map(|p| (Target::Time(p.time), p.assumption))
                .map_err(|why| bad(&why))
        }
    })
}

fn parse_labelled(t: &str) -> Result<Target, String> {
    let bad = |why: &str| why.to_string();
    if let Some(x) = t.strip_prefix("xid:") {
        return x
            .trim()
            .parse()
            .map(Target::Xid)
            .map_err(|_| bad("xid must be a number"));
    }
    if let Some(n) = t.strip_prefix("name:") {
        if n.is_empty() {
            return Err(bad("empty restore point name"));
        }
        return Ok(Target::Name(n.to_string()));
    }
    if let Some(l) = t.strip_prefix("lsn:") {
        return l.parse().map(Target::Lsn).map_err(|e: String| bad(&e));
    }
    Err(bad("not a known form"))
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Time(t) => write!(f, "time {}", pgpitr_time::human(*t)),
            Target::Xid(x) => write!(f, "xid {x}"),
            Target::Name(n) => write!(f, "restore point {n:?}"),
            Target::Lsn(l) => write!(f, "lsn {l}"),
            Target::Immediate => write!(f, "immediate (end of the base backup)"),
            Target::Latest => write!(f, "latest (end of the archived WAL)"),
        }
    }
}

/// Quotes a value for postgresql.conf.
pub fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

impl Target {
    /// The recovery_target_* lines for postgresql.auto.conf.
    pub fn recovery_settings(&self) -> Vec<(String, String)> {
        self.recovery_settings_with(false)
    }

    /// Same, with `--exclusive`: stop just before the target (`recovery_target_inclusive =
    /// off`), e.g. before the commit of the DELETE's own transaction.
    pub fn recovery_settings_with(&self, exclusive: bool) -> Vec<(String, String)> {
        let mut s = self.target_lines();
        if exclusive && !s.is_empty() {
            s.push(("recovery_target_inclusive".into(), "off".into()));
        }
        s
    }

    /// Whether `--exclusive` means something for this target; the error says what to do.
    pub fn check_exclusive(&self) -> Result<(), String> {
        match self {
            Target::Time(_) | Target::Xid(_) | Target::Lsn(_) => Ok(()),
            other => Err(format!(
                "--exclusive applies to xid:N, time and lsn:X/Y targets only, not to {other}: drop --exclusive"
            )),
        }
    }

    fn target_lines(&self) -> Vec<(String, String)> {
        let one = |k: &str, v: String| vec![(k.to_string(), v)];
        match self {
            Target::Time(t) => one(
                "recovery_target_time",
                conf_quote(&t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()),
            ),
            Target::Xid(x) => one("recovery_target_xid", conf_quote(&x.to_string())),
            Target::Name(n) => one("recovery_target_name", conf_quote(n)),
            Target::Lsn(l) => one("recovery_target_lsn", conf_quote(&l.to_string())),
            Target::Immediate => one("recovery_target", conf_quote("immediate")),
            Target::Latest => vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    #[test]
    fn all_forms() {
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 15, 47, 0).unwrap();
        assert_eq!(
            parse_target("2026-11-22T16:46:59.5+01:00", now).unwrap(),
            Target::Time(
                Utc.with_ymd_and_hms(2026, 11, 22, 15, 46, 59).unwrap()
                    + Duration::milliseconds(500)
            )
        );
        assert_eq!(
            parse_target("2 minutes ago", now).unwrap(),
            Target::Time(Utc.with_ymd_and_hms(2026, 11, 22, 15, 45, 0).unwrap())
        );
        assert_eq!(
            parse_target("1 day ago", now).unwrap(),
            Target::Time(now - Duration::days(1))
        );
        assert_eq!(parse_target("xid:735", now).unwrap(), Target::Xid(735));
        assert_eq!(
            parse_target("name:before-migration", now).unwrap(),
            Target::Name("before-migration".into())
        );
        assert_eq!(
            parse_target("lsn:0/3000148", now).unwrap(),
            Target::Lsn(Lsn(0x3000148))
        );
        assert_eq!(parse_target("immediate", now).unwrap(), Target::Immediate);
        assert_eq!(parse_target("latest", now).unwrap(), Target::Latest);
        for bad in ["yesterday", "xid:abc", "lsn:12", "3 fortnights ago", ""] {
            let e = parse_target(bad, now).unwrap_err();
            assert!(e.contains("RFC 3339") && e.contains("xid:N"), "{bad}: {e}");
        }
        // psql's, a log line's and a short offset's forms; a zone-less time is local and noted.
        let want = Utc.with_ymd_and_hms(2026, 11, 22, 13, 28, 28).unwrap()
            + Duration::microseconds(408440);
        for s in [
            "2026-11-22 13:28:28.40844+00",
            "2026-11-22 13:28:28.40844 UTC",
            "2026-11-22 14:28:28.40844+01",
        ] {
            assert_eq!(
                parse_target_noted(s, now).unwrap(),
                (Target::Time(want), None),
                "{s}"
            );
        }
        let (t, note) = parse_target_noted("2026-11-22 15:46:59", now).unwrap();
        assert!(matches!(t, Target::Time(_)));
        assert!(note.unwrap().contains("local time"));
    }

    #[test]
    fn settings_are_quoted() {
        let s = Target::Name("it's".into()).recovery_settings();
        assert_eq!(s[0].1, "'it''s'");
        let t =
            Target::Time(Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()).recovery_settings();
        assert_eq!(t[0].1, "'2026-01-02 03:04:05.000000+00'");
    }

    #[test]
    fn exclusive_stops_before_the_target() {
        let x = Target::Xid(735);
        assert_eq!(x.recovery_settings().len(), 1);
        let s = x.recovery_settings_with(true);
        assert_eq!(s[1], ("recovery_target_inclusive".into(), "off".into()));
        assert!(Target::Lsn(Lsn(1)).check_exclusive().is_ok());
        for t in [Target::Latest, Target::Immediate, Target::Name("n".into())] {
            assert!(t.check_exclusive().unwrap_err().contains("--exclusive"));
        }
    }
}
