//! ZFS through its command lines (`zfs`, with `-H -p` where the installed ZFS has it).
//!
//! What it can do: read and set properties, create a dataset with properties, snapshot,
//! list snapshots, roll back to the newest snapshot, destroy a snapshot. What it never does:
//! destroy a dataset, or roll back past newer snapshots (that would destroy them).
//! Old ZFS (zfs-fuse, pool v23) lacks lz4 and xattr=sa: [`Zfs::allowed_values`] probes what
//! the installed ZFS accepts and the defaults fall back to what it has.

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum ZfsError {
    #[error("zfs is not installed or not runnable ({0}): install ZFS (Debian: apt-get install zfsutils-linux, or zfs-fuse)")]
    Missing(String),
    #[error("zfs {args}: {stderr}")]
    Failed { args: String, stderr: String },
    #[error("refusing to destroy {0}: only snapshots (dataset@name) are ever destroyed")]
    NotASnapshot(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, ZfsError>;

pub struct Zfs {
    bin: PathBuf,
}

/// A property as `zfs get` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Property {
    pub value: String,
    pub source: String,
}

impl Default for Zfs {
    fn default() -> Self {
        Zfs {
            bin: PathBuf::from("zfs"),
        }
    }
}

impl Zfs {
    pub fn with_bin(bin: &Path) -> Zfs {
        Zfs {
            bin: bin.to_path_buf(),
        }
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| ZfsError::Missing(format!("{}: {e}", self.bin.display())))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(ZfsError::Failed {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr)
                    .trim()
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string(),
            })
        }
    }

    pub fn exists(&self, dataset: &str) -> Result<bool> {
        match self.run(&["list", "-H", "-o", "name", dataset]) {
            Ok(_) => Ok(true),
            Err(ZfsError::Failed { stderr, .. }) if stderr.contains("does not exist") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Properties of a dataset (`zfs get -H -p`), exact values.
    pub fn get(&self, dataset: &str, props: &[&str]) -> Result<BTreeMap<String, Property>> {
        let list = props.join(",");
        let out = self.run(&[
            "get",
            "-H",
            "-p",
            "-o",
            "property,value,source",
            &list,
            dataset,
        ])?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut f = l.split('\t');
                let (k, v, s) = (f.next()?, f.next()?, f.next().unwrap_or(""));
                Some((
                    k.to_string(),
                    Property {
                        value: v.to_string(),
                        source: s.to_string(),
                    },
                ))
            })
            .collect())
    }

    pub fn set(&self, dataset: &str, prop: &str, value: &str) -> Result<()> {
        self.run(&["set", &format!("{prop}={value}"), dataset])
            .map(|_| ())
    }

    /// Creates a dataset (and missing parents) with properties.
    pub fn create(&self, dataset: &str, props: &[(String, String)]) -> Result<()> {
        let mut args: Vec<String> = vec!["create".into(), "-p".into()];
        for (k, v) in props {
            args.push("-o".into());
            args.push(format!("{k}={v}"));
        }
        args.push(dataset.into());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&refs).map(|_| ())
    }

    /// Takes `dataset@name`; returns the full snapshot name.
    pub fn snapshot(&self, dataset: &str, name: &str) -> Result<String> {
        let full = format!("{dataset}@{name}");
        self.run(&["snapshot", &full]).map(|_| full)
    }

    /// Snapshots of `dataset`, oldest first.
    pub fn snapshots(&self, dataset: &str) -> Result<Vec<String>> {
        let out = self.run(&[
            "list", "-H", "-t", "snapshot", "-o", "name", "-s", "creation", "-r", dataset,
        ])?;
        let prefix = format!("{dataset}@");
        Ok(out
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .map(str::to_string)
            .collect())
    }

    /// Rolls `snapshot`'s dataset back to it; refuses when newer snapshots exist (rolling
    /// back past them would destroy them).
    pub fn rollback(&self, snapshot: &str) -> Result<()> {
        let (ds, _) = snapshot
            .split_once('@')
            .ok_or_else(|| ZfsError::NotASnapshot(snapshot.into()))?;
        let snaps = self.snapshots(ds)?;
        if snaps.last().map(String::as_str) != Some(snapshot) {
            return Err(ZfsError::Invalid(format!(
                "{snapshot} is not the newest snapshot of {ds}: rolling back would destroy the newer ones ({}); do it by hand if that is really wanted",
                snaps.iter().skip_while(|s| s.as_str() != snapshot).skip(1).cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        self.run(&["rollback", snapshot]).map(|_| ())
    }

    /// Destroys a snapshot. Anything that is not `dataset@name` is refused without running zfs.
    pub fn destroy_snapshot(&self, snapshot: &str) -> Result<()> {
        match snapshot.split_once('@') {
            Some((ds, name))
                if !ds.is_empty() && !name.is_empty() && !name.contains(['%', ',']) =>
            {
                self.run(&["destroy", snapshot]).map(|_| ())
            }
            _ => Err(ZfsError::NotASnapshot(snapshot.into())),
        }
    }

    /// Dataset mounted exactly at `path`, if any.
    pub fn dataset_mounted_at(&self, path: &Path) -> Result<Option<String>> {
        let out = self.run(&["list", "-H", "-o", "name,mountpoint", "-t", "filesystem"])?;
        Ok(out.lines().find_map(|l| {
            let (n, m) = l.split_once('\t')?;
            (Path::new(m) == path).then(|| n.to_string())
        }))
    }

    /// Renames a dataset (preseed moves an empty data dataset aside this way; never destroys).
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.run(&["rename", from, to]).map(|_| ())
    }

    pub fn mount(&self, dataset: &str) -> Result<()> {
        self.run(&["mount", dataset]).map(|_| ())
    }

    pub fn unmount(&self, dataset: &str) -> Result<()> {
        self.run(&["umount", dataset]).map(|_| ())
    }

    /// Values each property accepts, read from the property table `zfs get` prints as its
    /// usage; used to probe what an old ZFS supports (an empty map if it prints none).
    pub fn allowed_values(&self) -> BTreeMap<String, Vec<String>> {
        let out = Command::new(&self.bin)
            .arg("get")
            .stdin(Stdio::null())
            .output();
        let text = match out {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(_) => return BTreeMap::new(),
        };
        parse_allowed_values(&text)
    }
}

/// Parses `zfs get`'s usage table: `compression YES YES on | off | lzjb | gzip | ...`.
pub fn parse_allowed_values(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(name), Some(edit), Some(_inherit)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if edit != "YES" {
            continue;
        }
        let rest: Vec<&str> = f.collect();
        let values = rest.join(" ");
        if values.contains('<') || !values.contains('|') {
            continue;
        }
        out.insert(
            name.to_string(),
            values.split('|').map(|v| v.trim().to_string()).collect(),
        );
    }
    out
}

/// Normalises a value for comparison (`8K` and `8192` are the same recordsize).
pub fn normalise(prop: &str, value: &str) -> String {
    if prop == "recordsize" || prop == "volblocksize" {
        let v = value.trim();
        let (num, mult) = match v.chars().last() {
            Some('K') | Some('k') => (&v[..v.len() - 1], 1024u64),
            Some('M') | Some('m') => (&v[..v.len() - 1], 1 << 20),
            _ => (v, 1),
        };
        if let Ok(n) = num.parse::<u64>() {
            return (n * mult).to_string();
        }
    }
    value.to_string()
}

/// Default properties of the data dataset (8K records for PostgreSQL pages).
pub fn data_defaults() -> Vec<(&'static str, &'static str)> {
    vec![
        ("recordsize", "8K"),
        ("compression", "lz4"),
        ("atime", "off"),
        ("xattr", "sa"),
        ("logbias", "latency"),
    ]
}

/// Default properties of the WAL archive dataset (large sequential files).
pub fn wal_defaults() -> Vec<(&'static str, &'static str)> {
    vec![
        ("recordsize", "128K"),
        ("compression", "lz4"),
        ("atime", "off"),
        ("logbias", "throughput"),
    ]
}

/// Older ZFS fallbacks for defaults it does not support.
fn fallback(prop: &str, value: &str) -> Option<&'static str> {
    match (prop, value) {
        ("compression", "lz4") => Some("on"),
        ("xattr", "sa") => Some("on"),
        _ => None,
    }
}

/// One property's state in `zfs ensure`.
#[derive(Debug, Clone, Serialize)]
pub struct PropertyState {
    pub property: String,
    pub wanted: String,
    pub actual: Option<String>,
    /// A note when a default was replaced by what this ZFS supports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub fixed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatasetState {
    pub dataset: String,
    pub mountpoint: String,
    pub created: bool,
    pub properties: Vec<PropertyState>,
}

impl DatasetState {
    /// Properties that differ and were not fixed.
    pub fn drift(&self) -> Vec<&PropertyState> {
        self.properties
            .iter()
            .filter(|p| {
                !p.fixed
                    && p.actual.as_deref().map(|a| normalise(&p.property, a))
                        != Some(normalise(&p.property, &p.wanted))
            })
            .collect()
    }
}

/// Wanted properties: defaults (with fallbacks this ZFS needs) overridden by the config.
/// An override this ZFS cannot take is an error; a default it cannot take falls back.
pub fn wanted(
    defaults: &[(&str, &str)],
    overrides: &BTreeMap<String, String>,
    allowed: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<(String, String, Option<String>)>> {
    let supports = |p: &str, v: &str| {
        allowed
            .get(p)
            .map(|vals| {
                vals.iter().any(|a| {
                    a == v || a.ends_with("-[1-9]") && v.starts_with(a.trim_end_matches("-[1-9]"))
                })
            })
            .unwrap_or(true)
    };
    let mut out: Vec<(String, String, Option<String>)> = Vec::new();
    for (p, v) in defaults {
        if overrides.contains_key(*p) {
            continue;
        }
        if supports(p, v) {
            out.push((p.to_string(), v.to_string(), None));
        } else if let Some(f) = fallback(p, v).filter(|f| supports(p, f)) {
            out.push((
                p.to_string(),
                f.to_string(),
                Some(format!(
                    "{p}={v} is not supported by this ZFS; using {p}={f}"
                )),
            ));
        } else {
            out.push((
                p.to_string(),
                v.to_string(),
                Some(format!("{p}={v} may not be supported by this ZFS")),
            ));
        }
    }
    for (p, v) in overrides {
        if !supports(p, v) {
            return Err(ZfsError::Invalid(format!(
                "{p}={v} is not supported by this ZFS (it accepts {})",
                allowed.get(p).map(|a| a.join(", ")).unwrap_or_default()
            )));
        }
        out.push((p.clone(), v.clone(), None));
    }
    Ok(out)
}

/// Makes sure `dataset` exists mounted at `mountpoint` with `props`; creates it when
/// missing, reports drift, and fixes drift only when `fix`. Never destroys anything.
pub fn ensure_dataset(
    zfs: &Zfs,
    dataset: &str,
    mountpoint: &Path,
    props: &[(String, String, Option<String>)],
    fix: bool,
) -> Result<DatasetState> {
    let mut created = false;
    if !zfs.exists(dataset)? {
        let mut create: Vec<(String, String)> = props
            .iter()
            .map(|(k, v, _)| (k.clone(), v.clone()))
            .collect();
        create.push(("mountpoint".into(), mountpoint.display().to_string()));
        zfs.create(dataset, &create)?;
        created = true;
    }
    let mut names: Vec<&str> = props.iter().map(|(k, _, _)| k.as_str()).collect();
    names.push("mountpoint");
    let actual = zfs.get(dataset, &names)?;
    let mut properties = Vec::new();
    let mount_wanted = mountpoint.display().to_string();
    for (k, v, note) in props
        .iter()
        .map(|(k, v, n)| (k.as_str(), v.as_str(), n.clone()))
        .chain([("mountpoint", mount_wanted.as_str(), None)])
    {
        let a = actual.get(k).map(|p| p.value.clone());
        let same = a.as_deref().map(|a| normalise(k, a)) == Some(normalise(k, v));
        let mut fixed = false;
        if !same && fix && !created {
            zfs.set(dataset, k, v)?;
            fixed = true;
        }
        properties.push(PropertyState {
            property: k.into(),
            wanted: v.into(),
            actual: a,
            note,
            fixed,
        });
    }
    Ok(DatasetState {
        dataset: dataset.into(),
        mountpoint: mount_wanted,
        created,
        properties,
    })
}

/// `pgpitr zfs ensure`: the data and WAL archive datasets of an instance.
pub fn ensure_instance(cfg: &pgpitr_config::Config, fix: bool) -> Result<Vec<DatasetState>> {
    let z = cfg
        .zfs
        .as_ref()
        .ok_or_else(|| ZfsError::Invalid("no [zfs] section in the config".into()))?;
    let zfs = Zfs::default();
    let allowed = zfs.allowed_values();
    let data = wanted(&data_defaults(), &z.data_properties, &allowed)?;
    let wal = wanted(&wal_defaults(), &z.wal_properties, &allowed)?;
    Ok(vec![
        ensure_dataset(&zfs, &z.data_dataset, &cfg.postgres.data_dir, &data, fix)?,
        ensure_dataset(&zfs, &z.wal_dataset, &cfg.archive.dir, &wal, fix)?,
    ])
}

/// Before a restore into `into`: when a dataset is mounted exactly there, snapshots it and
/// returns the snapshot name (roll back with `zfs rollback NAME`).
pub fn safety_snapshot(into: &Path) -> Result<Option<String>> {
    let zfs = Zfs::default();
    let Some(ds) = zfs.dataset_mounted_at(into)? else {
        return Ok(None);
    };
    let name = format!(
        "pgpitr-before-restore-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    );
    zfs.snapshot(&ds, &name).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    const OLD_ZFS: &str = "\tcompression     YES      YES   on | off | lzjb | gzip | gzip-[1-9] | zle\n\txattr           YES      YES   on | off\n\trecordsize      YES      YES   512 to 128k, power of 2\n\tlogbias         YES      YES   latency | throughput\n\tatime           YES      YES   on | off\n\tused             NO       NO   <size>\n";

    #[test]
    fn probes_and_falls_back() {
        let allowed = parse_allowed_values(OLD_ZFS);
        assert_eq!(allowed["xattr"], vec!["on", "off"]);
        assert!(!allowed.contains_key("recordsize") && !allowed.contains_key("used"));
        let w = wanted(&data_defaults(), &BTreeMap::new(), &allowed).unwrap();
        let get = |p: &str| w.iter().find(|x| x.0 == p).unwrap().clone();
        assert_eq!(get("compression").1, "on");
        assert!(get("compression").2.unwrap().contains("lz4"));
        assert_eq!(get("xattr").1, "on");
        assert_eq!(get("recordsize").1, "8K");
        let mut o = BTreeMap::new();
        o.insert("compression".to_string(), "gzip-3".to_string());
        assert_eq!(
            wanted(&wal_defaults(), &o, &allowed)
                .unwrap()
                .iter()
                .find(|x| x.0 == "compression")
                .unwrap()
                .1,
            "gzip-3"
        );
        o.insert("compression".to_string(), "zstd".to_string());
        assert!(wanted(&wal_defaults(), &o, &allowed)
            .unwrap_err()
            .to_string()
            .contains("not supported"));
    }

    #[test]
    fn normalises_sizes_and_refuses_datasets() {
        assert_eq!(normalise("recordsize", "8K"), "8192");
        assert_eq!(
            normalise("recordsize", "131072"),
            normalise("recordsize", "128K")
        );
        let z = Zfs::with_bin(Path::new("/nonexistent/zfs"));
        assert!(matches!(
            z.destroy_snapshot("tank/data"),
            Err(ZfsError::NotASnapshot(_))
        ));
        assert!(matches!(
            z.destroy_snapshot("tank/data@"),
            Err(ZfsError::NotASnapshot(_))
        ));
    }
}
