//! Times in one place: what operators type (`--to`) and what pgpitr prints.
//!
//! Input: RFC 3339 and the forms PostgreSQL prints (`2026-11-22 13:28:28.40844+00` from psql,
//! `2026-11-22 13:29:18.178 UTC` from a log line): `T` or space between date and time,
//! optional seconds and fraction, then `Z`, `+HH`, `+HHMM`, `+HH:MM`, or a zone name (`UTC`,
//! `Europe/Berlin`); relative times (`30 minutes ago`, `now`); a time without a zone is read as
//! local time (`TZ`, else the system's zone) and the assumption is returned so callers state it.
//!
//! Output for people: one format, local time with its offset to the microsecond
//! (`2026-11-22 14:28:21.857553+01:00`), UTC after [`set_utc`] (`--utc`). For JSON: RFC 3339
//! with microseconds ([`rfc3339`]). Every printed form parses back to the same microsecond.

use chrono::{
    DateTime, Duration, FixedOffset, LocalResult, NaiveDateTime, Offset, SecondsFormat, TimeZone,
    Timelike, Utc,
};
use std::sync::atomic::{AtomicBool, Ordering};

/// A parsed time, and the assumption made when it had no zone.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub time: DateTime<Utc>,
    /// "`2026-11-22 14:28:28` has no zone: read as local time Europe/Berlin (+01:00) ...".
    pub assumption: Option<String>,
}

/// The forms [`parse`] accepts, for error messages.
pub const FORMS: &str = "RFC 3339 (2026-11-22T15:46:59+01:00), PostgreSQL's printed forms (2026-11-22 14:46:59.123456+00, +0100, 2026-11-22 14:46:59 UTC, 2026-11-22 15:46:59 Europe/Berlin), a local time without a zone, or a relative time (\"30 minutes ago\")";

/// Parses a time as an operator types or pastes it; relative times count back from `now`.
pub fn parse(s: &str, now: DateTime<Utc>) -> Result<Parsed, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("now") {
        return Ok(Parsed {
            time: now,
            assumption: None,
        });
    }
    if let Some(rel) = t.strip_suffix(" ago") {
        return relative(rel).map(|d| Parsed {
            time: now - d,
            assumption: None,
        });
    }
    let (naive, rest) = split_naive(t)?;
    let zone = rest.trim();
    if zone.is_empty() {
        return local(naive, t);
    }
    let fixed = match zone {
        "Z" | "z" => FixedOffset::east_opt(0),
        _ => parse_offset(zone).ok(),
    };
    if let Some(off) = fixed {
        return single(off.from_local_datetime(&naive), t, zone).map(|time| Parsed {
            time,
            assumption: None,
        });
    }
    if zone.starts_with('+') || zone.starts_with('-') {
        return Err(format!(
            "{t:?}: offset {zone:?} is not +HH, +HHMM or +HH:MM (hours 0-15)"
        ));
    }
    let tz: chrono_tz::Tz = zone
        .parse()
        .map_err(|_| format!("{t:?}: unknown time zone {zone:?} (use an IANA name such as UTC or Europe/Berlin, or an offset)"))?;
    single(tz.from_local_datetime(&naive), t, zone).map(|time| Parsed {
        time,
        assumption: None,
    })
}

fn relative(rel: &str) -> Result<Duration, String> {
    let bad = |why: &str| format!("{rel:?} ago: {why}");
    let rel = rel.trim();
    // "30 minutes", "30min", "1.5 hours"
    let split = rel
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rel.len());
    let (n, unit) = rel.split_at(split);
    let n: f64 = n
        .parse()
        .map_err(|_| bad("expected \"N unit ago\", e.g. \"30 minutes ago\""))?;
    let unit = unit.trim().trim_end_matches('s');
    let secs = match unit {
        "second" | "sec" | "" => 1.0,
        "minute" | "min" | "m" => 60.0,
        "hour" | "hr" | "h" => 3600.0,
        "day" | "d" => 86400.0,
        "week" | "w" => 7.0 * 86400.0,
        _ => return Err(bad("unit must be seconds, minutes, hours, days or weeks")),
    };
    if unit.is_empty() {
        return Err(bad("say the unit: seconds, minutes, hours, days or weeks"));
    }
    Ok(Duration::microseconds((n * secs * 1e6).round() as i64))
}

/// Date and time (T or space, optional seconds and fraction), and what follows.
fn split_naive(t: &str) -> Result<(NaiveDateTime, &str), String> {
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok((n, rest)) = NaiveDateTime::parse_and_remainder(t, fmt) {
            // "%H:%M" must not have eaten only part of "HH:MM:SS".
            if rest.starts_with(':') {
                continue;
            }
            return Ok((n, rest));
        }
    }
    Err(format!("{t:?} is not a time; use {FORMS}"))
}

fn parse_offset(z: &str) -> Result<FixedOffset, ()> {
    let (sign, digits) = match z.as_bytes().first() {
        Some(b'+') => (1, &z[1..]),
        Some(b'-') => (-1, &z[1..]),
        _ => return Err(()),
    };
    let digits = digits.replace(':', "");
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(());
    }
    let (h, m) = match digits.len() {
        1 | 2 => (digits.parse::<i32>().map_err(|_| ())?, 0),
        4 => (
            digits[..2].parse::<i32>().map_err(|_| ())?,
            digits[2..].parse::<i32>().map_err(|_| ())?,
        ),
        _ => return Err(()),
    };
    if h > 15 || m > 59 {
        return Err(());
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60)).ok_or(())
}

fn single<T: TimeZone>(
    r: LocalResult<DateTime<T>>,
    t: &str,
    zone: &str,
) -> Result<DateTime<Utc>, String> {
    match r {
        LocalResult::Single(d) => Ok(d.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, b) => Err(format!(
            "{t:?} happens twice in {zone} (clocks went back): add the offset, {} or {}",
            a.fixed_offset().format("%:z"),
            b.fixed_offset().format("%:z")
        )),
        LocalResult::None => Err(format!(
            "{t:?} does not exist in {zone} (clocks went forward): add an offset"
        )),
    }
}

/// The local zone: `TZ` when it names a zone, else the system's (`/etc/localtime`).
fn local_zone() -> Option<(chrono_tz::Tz, String)> {
    let name = match std::env::var("TZ") {
        Ok(v) if !v.is_empty() => v.trim_start_matches(':').to_string(),
        _ => std::fs::read_link("/etc/localtime")
            .ok()
            .and_then(|p| {
                let s = p.to_string_lossy().into_owned();
                s.split("zoneinfo/").nth(1).map(str::to_string)
            })
            .or_else(|| {
                std::fs::read_to_string("/etc/timezone")
                    .ok()
                    .map(|s| s.trim().to_string())
            })?,
    };
    let tz: chrono_tz::Tz = name.parse().ok()?;
    Some((tz, name))
}

fn local(naive: NaiveDateTime, t: &str) -> Result<Parsed, String> {
    let (time, name, off) = match local_zone() {
        Some((tz, name)) => {
            let time = single(tz.from_local_datetime(&naive), t, &name)?;
            let off = tz.offset_from_utc_datetime(&naive).fix();
            (time, name, off)
        }
        None => {
            let time = single(chrono::Local.from_local_datetime(&naive), t, "local time")?;
            let off = time.with_timezone(&chrono::Local).offset().fix();
            (time, "of this machine".to_string(), off)
        }
    };
    Ok(Parsed {
        time,
        assumption: Some(format!(
            "{t:?} has no zone: read as local time {name} ({}), i.e. {}; add Z or an offset to mean another zone",
            off,
            rfc3339(time)
        )),
    })
}

static UTC_OUTPUT: AtomicBool = AtomicBool::new(false);

/// `--utc`: print times for people in UTC instead of local time.
pub fn set_utc(on: bool) {
    UTC_OUTPUT.store(on, Ordering::Relaxed);
}

/// `2026-11-22 14:28:21.857553+01:00` (local time with its offset; `Z` in UTC mode or when
/// the local zone is UTC). Truncated to the microsecond, PostgreSQL's own precision.
pub fn human(t: DateTime<Utc>) -> String {
    let t = trunc_micros(t);
    if !UTC_OUTPUT.load(Ordering::Relaxed) {
        let local = match local_zone() {
            Some((tz, _)) => t.with_timezone(&tz).fixed_offset(),
            None => t.with_timezone(&chrono::Local).fixed_offset(),
        };
        if local.offset().local_minus_utc() != 0 {
            return local.format("%Y-%m-%d %H:%M:%S%.6f%:z").to_string();
        }
    }
    t.format("%Y-%m-%d %H:%M:%S%.6fZ").to_string()
}

/// RFC 3339 with microseconds, for JSON: `2026-11-22T13:28:21.857553Z`.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    trunc_micros(t).to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// `t` without its sub-microsecond part (PostgreSQL's timestamps are microseconds).
pub fn trunc_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    let n = t.nanosecond();
    t.with_nanosecond(n - n % 1000).unwrap_or(t)
}

/// `#[serde(with = "pgpitr_time::json")]`: a time as RFC 3339 with microseconds.
pub mod json {
    use chrono::{DateTime, Utc};
    use serde::Serializer;
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339(*t))
    }
    /// For `Option<DateTime<Utc>>` fields.
    pub mod option {
        use chrono::{DateTime, Utc};
        use serde::Serializer;
        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_str(&super::super::rfc3339(*t)),
                None => s.serialize_none(),
            }
        }
    }
}

/// Seconds between progress lines when stderr is not a terminal (journald, a pipe):
/// `PGPITR_PROGRESS_SECONDS`, default 5.
pub fn progress_interval() -> std::time::Duration {
    std::env::var("PGPITR_PROGRESS_SECONDS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(std::time::Duration::from_secs_f64)
        .unwrap_or(std::time::Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn p(s: &str) -> DateTime<Utc> {
        parse(s, utc("2026-11-22T15:47:00Z"))
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .time
    }

    #[test]
    fn every_form_a_dba_copies() {
        let want = utc("2026-11-22T13:28:28.40844Z");
        for s in [
            "2026-11-22T13:28:28.40844Z",
            "2026-11-22T14:28:28.40844+01:00",
            "2026-11-22 13:28:28.40844+00",
            "2026-11-22 14:28:28.40844+01",
            "2026-11-22 14:28:28.40844+0100",
            "2026-11-22 14:28:28.40844 +01:00",
            "2026-11-22 13:28:28.40844 UTC",
            "2026-11-22 14:28:28.40844 Europe/Berlin",
            "2026-11-22 08:28:28.40844-05",
            "2026-11-22 18:58:28.40844+05:30",
        ] {
            assert_eq!(p(s), want, "{s}");
        }
        assert_eq!(
            p("2026-11-22 13:29:18.178 UTC"),
            utc("2026-11-22T13:29:18.178Z")
        );
        assert_eq!(p("2026-11-22 13:29 UTC"), utc("2026-11-22T13:29:00Z"));
        assert_eq!(
            p("2026-07-01 14:00:00 Europe/Berlin"),
            utc("2026-07-01T12:00:00Z")
        );
    }

    #[test]
    fn relative_and_now() {
        assert_eq!(p("2 minutes ago"), utc("2026-11-22T15:45:00Z"));
        assert_eq!(p("30min ago"), utc("2026-11-22T15:17:00Z"));
        assert_eq!(p("1 day ago"), utc("2026-11-21T15:47:00Z"));
        assert_eq!(p("1.5 hours ago"), utc("2026-11-22T14:17:00Z"));
        assert_eq!(p("now"), utc("2026-11-22T15:47:00Z"));
    }

    #[test]
    fn zone_less_is_local_and_says_so() {
        // The process-wide TZ is only read, never set, here: compare with the same rule.
        let r = parse("2026-11-22 14:28:28", Utc::now()).unwrap();
        let a = r.assumption.expect("assumption stated");
        assert!(a.contains("has no zone: read as local time"), "{a}");
        assert!(a.contains(&rfc3339(r.time)), "{a}");
    }

    #[test]
    fn bad_input_says_why() {
        let now = Utc::now();
        for (s, why) in [
            ("yesterday", "not a time"),
            ("2026-11-22 14:28:28 Mars/Base", "unknown time zone"),
            ("2026-11-22 14:28:28+25", "offset"),
            ("3 fortnights ago", "unit"),
            ("2026-11-22 02:30:00 Europe/Berlin", ""),
            ("2026-03-29 02:30:00 Europe/Berlin", "does not exist"),
            ("2026-10-25 02:30:00 Europe/Berlin", "happens twice"),
        ] {
            match parse(s, now) {
                Ok(_) if why.is_empty() => {}
                Ok(t) => panic!("{s} parsed as {t:?}"),
                Err(e) => assert!(e.contains(why), "{s}: {e}"),
            }
        }
    }

    #[test]
    fn printed_times_parse_back_to_the_microsecond() {
        let t = utc("2026-11-22T13:28:21.857553468Z");
        for utc_mode in [false, true] {
            set_utc(utc_mode);
            let shown = human(t);
            assert_eq!(p(&shown), trunc_micros(t), "{shown}");
        }
        set_utc(false);
        assert_eq!(rfc3339(t), "2026-11-22T13:28:21.857553Z");
        assert_eq!(p(&rfc3339(t)), trunc_micros(t));
    }
}
