//! Which backups a policy keeps, and what the archive may lose: pure functions over names
//! and numbers, so property tests can drive them.

use chrono::{DateTime, Datelike, Utc};
use pgpitr_config::RetentionConfig;
use std::collections::BTreeSet;

/// What retention needs to know about a backup.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupRef {
    pub id: String,
    pub stop_time: DateTime<Utc>,
    /// Segment number of the backup's start LSN.
    pub start_segno: u64,
}

/// Names the period (day, ISO week, month, year) a time falls in.
type Bucket = fn(&DateTime<Utc>) -> String;

/// Ids of the backups to keep (`backups` oldest first along the history, as
/// `History::order` gives them: the last one is the newest on the live timeline). The newest
/// is always kept; `keep_last` counts back along the history, so backups on an abandoned
/// branch never push the live timeline's out; the period rules look at each backup's time.
pub fn kept(
    backups: &[BackupRef],
    policy: &RetentionConfig,
    now: DateTime<Utc>,
) -> BTreeSet<String> {
    let mut keep = BTreeSet::new();
    let newest_first: Vec<&BackupRef> = backups.iter().rev().collect();
    if let Some(b) = newest_first.first() {
        keep.insert(b.id.clone());
    }
    if let Some(n) = policy.keep_last {
        keep.extend(newest_first.iter().take(n as usize).map(|b| b.id.clone()));
    }
    if let Some(d) = policy.keep_within_days {
        let cutoff = now - chrono::Duration::days(d as i64);
        keep.extend(
            backups
                .iter()
                .filter(|b| b.stop_time >= cutoff)
                .map(|b| b.id.clone()),
        );
    }
    let buckets: [(Option<u32>, Bucket); 4] = [
        (policy.keep_daily, |t| t.format("%Y-%m-%d").to_string()),
        (policy.keep_weekly, |t| {
            let w = t.iso_week();
            format!("{}-W{:02}", w.year(), w.week())
        }),
        (policy.keep_monthly, |t| t.format("%Y-%m").to_string()),
        (policy.keep_yearly, |t| t.format("%Y").to_string()),
    ];
    for (count, bucket) in buckets {
        let Some(n) = count else { continue };
        // restic's rule: the newest backup of each of the newest n distinct periods.
        let mut seen = BTreeSet::new();
        for b in &newest_first {
            if seen.len() >= n as usize {
                break;
            }
            if seen.insert(bucket(&b.stop_time)) {
                keep.insert(b.id.clone());
            }
        }
    }
    keep
}

/// An archived object as retention sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectRef {
    pub name: String,
    pub tli: u32,
    /// Segment number (segments, partials, .backup files); None for .history files.
    pub segno: Option<u64>,
    pub bytes: u64,
}

/// The archive objects no kept backup can use: everything below the oldest kept backup's
/// start segment, on every timeline. `.history` files are always kept (they are tiny and
/// every restore that follows a timeline needs them).
pub fn prunable_objects(
    objects: &[ObjectRef],
    kept_starts: impl IntoIterator<Item = u64>,
) -> Vec<&ObjectRef> {
    let Some(floor) = kept_starts.into_iter().min() else {
        // No backup: nothing can be restored from this WAL, but nothing is known either.
        return Vec::new();
    };
    objects
        .iter()
        .filter(|o| o.segno.map(|s| s < floor).unwrap_or(false))
        .collect()
}

/// The archive objects the history model says nobody needs (`needed`: what the kept
/// backups and the window read, from `History::needed`).
pub fn prunable_by_history<'a>(
    objects: &'a [ObjectRef],
    needed: &pgpitr_wal::history::Needed,
) -> Vec<&'a ObjectRef> {
    objects
        .iter()
        .filter(|o| !needed.needs(o.tli, o.segno))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn b(id: &str, day: u32, hour: u32, seg: u64) -> BackupRef {
        BackupRef {
            id: id.into(),
            stop_time: Utc.with_ymd_and_hms(2026, 11, day, hour, 0, 0).unwrap(),
            start_segno: seg,
        }
    }

    #[test]
    fn rules_combine_and_newest_is_always_kept() {
        let bs = vec![
            b("a", 1, 1, 1),
            b("b", 1, 12, 5),
            b("c", 2, 1, 9),
            b("d", 9, 1, 20),
            b("e", 10, 1, 30),
        ];
        let now = Utc.with_ymd_and_hms(2026, 11, 10, 12, 0, 0).unwrap();
        let p = |f: fn(&mut RetentionConfig)| {
            let mut r = RetentionConfig::default();
            f(&mut r);
            kept(&bs, &r, now).into_iter().collect::<Vec<_>>()
        };
        assert_eq!(p(|r| r.keep_last = Some(2)), vec!["d", "e"]);
        assert_eq!(p(|r| r.keep_within_days = Some(1)), vec!["e"]);
        assert_eq!(p(|r| r.keep_daily = Some(3)), vec!["c", "d", "e"]);
        assert_eq!(p(|r| r.keep_weekly = Some(2)), vec!["c", "e"]);
        assert_eq!(p(|r| r.keep_monthly = Some(5)), vec!["e"]);
        assert_eq!(p(|_| {}), vec!["e"]);
    }

    #[test]
    fn prunes_below_the_oldest_kept_start_only() {
        let objs: Vec<ObjectRef> = (1..10)
            .map(|s| ObjectRef {
                name: format!("s{s}"),
                tli: 1,
                segno: Some(s),
                bytes: 1,
            })
            .chain([ObjectRef {
                name: "00000002.history".into(),
                tli: 2,
                segno: None,
                bytes: 1,
            }])
            .collect();
        let p: Vec<&str> = prunable_objects(&objs, [5, 7])
            .iter()
            .map(|o| o.name.as_str())
            .collect();
        assert_eq!(p, vec!["s1", "s2", "s3", "s4"]);
        assert!(prunable_objects(&objs, []).is_empty());
    }
}
