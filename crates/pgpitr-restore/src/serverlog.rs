//! What a restored server's own log says about its recovery: where replay stopped, the last
//! transaction it replayed, the timeline it chose at promotion. Used when pgpitr cannot
//! connect to the restored server (peer authentication as root, for one): the server's log
//! is then the record of what happened.

use chrono::{DateTime, Utc};
use pgpitr_wal::Lsn;

/// `selected new timeline ID: 2`.
pub fn new_timeline(log: &str) -> Option<u32> {
    log.lines()
        .rev()
        .filter_map(|l| l.split("selected new timeline ID: ").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .next()
}

/// `redo done at 0/3000148 ...`.
pub fn redo_done(log: &str) -> Option<Lsn> {
    log.lines()
        .rev()
        .filter_map(|l| l.split("redo done at ").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .next()
}

/// `last completed transaction was at log time 2026-11-22 13:28:28.40844+00`, else the time
/// in `recovery stopping before commit of transaction 740, time ...`.
pub fn last_xact_time(log: &str) -> Option<DateTime<Utc>> {
    let after = |marker: &str| {
        log.lines()
            .rev()
            .filter_map(|l| l.split(marker).nth(1))
            .filter_map(|r| parse_pg_time(r.trim()))
            .next()
    };
    after("last completed transaction was at log time ").or_else(|| after(", time "))
}

/// PostgreSQL's printed timestamptz: `2026-11-22 13:28:28.40844+00` (offset `+HH`, `+HHMM`
/// or `+HH:MM`).
fn parse_pg_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z")
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    const LOG: &str = "2026-11-22 13:29:18.178 UTC [811] LOG:  recovery stopping before commit of transaction 740, time 2026-11-22 13:28:28.40844+00\n\
        2026-11-22 13:29:18.178 UTC [811] LOG:  redo done at 0/3000148 system usage: CPU: user: 0.00 s\n\
        2026-11-22 13:29:18.178 UTC [811] LOG:  last completed transaction was at log time 2026-11-22 13:28:27.1+01\n\
        2026-11-22 13:29:18.190 UTC [811] LOG:  selected new timeline ID: 2\n";

    #[test]
    fn reads_recovery_from_the_log() {
        assert_eq!(new_timeline(LOG), Some(2));
        assert_eq!(redo_done(LOG), Some("0/3000148".parse().unwrap()));
        assert_eq!(
            last_xact_time(LOG).unwrap().to_rfc3339(),
            "2026-11-22T12:28:27.100+00:00"
        );
        assert_eq!(new_timeline("nothing"), None);
    }
}
