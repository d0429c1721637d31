//! `provision-dbs`: make the server hold the declared databases, roles, extensions and
//! grants. The desired state is hashed in a canonical form; when the stamp in the state
//! folder matches, nothing is sent to the server at all. Otherwise idempotent SQL runs and
//! the stamp is written last. Nothing is ever dropped: what exists but is not declared is
//! reported.

use pgpitr_config::{Config, DatabaseConfig};
use pgpitr_pg::{Client, Endpoint};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const STAMP: &str = "provision.stamp";
const TABLE_PRIVS: [&str; 7] = [
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "TRUNCATE",
    "REFERENCES",
    "TRIGGER",
];

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("password file {path}: {message}")]
    PasswordFile { path: PathBuf, message: String },
    #[error("the server did not accept connections (or stayed in recovery) within {seconds} s: {last}. Start PostgreSQL or raise provision.wait_timeout_seconds")]
    NotReady { seconds: u64, last: String },
    #[error("database {database:?}: {statement}: {message}")]
    Statement {
        database: String,
        statement: String,
        message: String,
    },
    #[error(transparent)]
    Pg(#[from] pgpitr_pg::PgError),
    #[error(transparent)]
    Durable(#[from] pgpitr_durable::DurableError),
}

pub type Result<T> = std::result::Result<T, ProvisionError>;

/// `"name"` with embedded quotes doubled: any string is a safe identifier.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled (standard_conforming_strings is on since 9.1).
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The canonical desired state: sorted maps, sorted and de-duplicated lists, upper-case
/// privileges, and the sha256 of each password (so a password change re-applies, while the
/// password itself never enters the stamp).
#[derive(Debug, Serialize)]
struct Canonical<'a> {
    databases: BTreeMap<&'a str, CanonicalDb<'a>>,
}

#[derive(Debug, Serialize)]
struct CanonicalDb<'a> {
    owner: &'a str,
    owner_password_sha256: Option<String>,
    extensions: BTreeSet<&'a str>,
    permissions: BTreeMap<&'a str, BTreeSet<String>>,
    encoding: Option<&'a str>,
    locale: Option<&'a str>,
    connection_limit: Option<i32>,
}

/// Reads a password file: must exist and not be readable by group or others. Errors name
/// the file, never its content.
pub fn read_password(path: &Path) -> Result<String> {
    let err = |message: String| ProvisionError::PasswordFile {
        path: path.to_path_buf(),
        message,
    };
    let md = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if md.permissions().mode() & 0o077 != 0 {
        return Err(err(format!(
            "mode {:o} lets others read it: chmod 600 it",
            md.permissions().mode() & 0o777
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let pw = text.trim_end_matches(['\n', '\r']).to_string();
    if pw.is_empty() {
        return Err(err("it is empty".into()));
    }
    Ok(pw)
}

/// sha256 of the canonical desired state.
pub fn desired_hash(dbs: &BTreeMap<String, DatabaseConfig>) -> Result<String> {
    let mut databases = BTreeMap::new();
    for (name, d) in dbs {
        let pw = match &d.owner_password_file {
            Some(p) => Some(hex::encode(Sha256::digest(read_password(p)?.as_bytes()))),
            None => None,
        };
        databases.insert(
            name.as_str(),
            CanonicalDb {
                owner: &d.owner,
                owner_password_sha256: pw,
                extensions: d.extensions.iter().map(String::as_str).collect(),
                permissions: d
                    .permissions
                    .iter()
                    .map(|(r, p)| {
                        (
                            r.as_str(),
                            p.iter().map(|x| x.to_ascii_uppercase()).collect(),
                        )
                    })
                    .collect(),
                encoding: d.encoding.as_deref(),
                locale: d.locale.as_deref(),
                connection_limit: d.connection_limit,
            },
        );
    }
    let json = serde_json::to_vec(&Canonical { databases }).expect("canonical state serialises");
    Ok(hex::encode(Sha256::digest(json)))
}

/// One statement, with a redacted form for printing.
#[derive(Debug, Clone)]
pub struct Statement {
    pub database: String,
    pub sql: String,
    pub shown: String,
}

impl Statement {
    fn new(database: &str, sql: String) -> Statement {
        Statement {
            database: database.into(),
            shown: sql.clone(),
            sql,
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    pub hash: String,
    pub up_to_date: bool,
    pub statements: usize,
    pub databases_total: usize,
    pub declared: usize,
    pub undeclared: Vec<String>,
}

/// Options of one run.
pub struct Options {
    pub force: bool,
    pub dry_run: bool,
}

fn stamp_path(cfg: &Config) -> PathBuf {
    cfg.provision.state_dir(&cfg.instance).join(STAMP)
}

/// The whole run. `say` gets human-readable lines (and, with dry_run, the statements).
pub fn run(cfg: &Config, opts: &Options, say: &mut dyn FnMut(&str)) -> Result<Outcome> {
    let hash = desired_hash(&cfg.databases)?;
    let stamp = std::fs::read_to_string(stamp_path(cfg)).unwrap_or_default();
    if stamp.trim() == hash && !opts.force && !opts.dry_run {
        say(&format!(
            "up to date (state {}), nothing sent to the server",
            &hash[..12]
        ));
        return Ok(Outcome {
            hash,
            up_to_date: true,
            declared: cfg.databases.len(),
            ..Default::default()
        });
    }
    let ep = Endpoint {
        socket_dir: cfg.postgres.socket_dir.clone(),
        port: cfg.postgres.port,
        user: cfg.postgres.user.clone(),
    };
    let mut db = wait_ready(&ep, cfg.provision.wait_timeout())?;
    let global = global_statements(&mut db, &cfg.databases)?;
    let mut count = 0;
    execute_all(&mut db, &global, opts.dry_run, say, &mut count)?;
    for (name, d) in &cfg.databases {
        let stmts = database_statements(name, d);
        if opts.dry_run {
            for s in &stmts {
                say(&format!("[{name}] {}", s.shown));
            }
            count += stmts.len();
            continue;
        }
        let mut c = ep.connect(name)?;
        execute_all(&mut c, &stmts, false, say, &mut count)?;
    }
    if cfg.drill.heartbeat && !opts.dry_run {
        // Restore drills measure the real RPO from the heartbeat healthcheck keeps here.
        pgpitr_pg::heartbeat::ensure(&mut db)?;
        say(&format!(
            "heartbeat table {} present in database postgres (healthcheck writes it; restore drills measure the RPO from it)",
            pgpitr_pg::heartbeat::TABLE
        ));
    }
    let (databases_total, undeclared) = undeclared(&mut db, &cfg.databases)?;
    for u in &undeclared {
        say(&format!("not declared (left alone): {u}"));
    }
    if !opts.dry_run {
        let dir = cfg.provision.state_dir(&cfg.instance);
        pgpitr_durable::create_dir_all_durable(&dir)?;
        pgpitr_durable::write_replace(&stamp_path(cfg), format!("{hash}\n").as_bytes(), 0o644)?;
        say(&format!(
            "applied {count} statements; state {}",
            &hash[..12]
        ));
    }
    Ok(Outcome {
        hash,
        up_to_date: false,
        statements: count,
        databases_total,
        declared: cfg.databases.len(),
        undeclared,
    })
}

fn execute_all(
    db: &mut Client,
    stmts: &[Statement],
    dry_run: bool,
    say: &mut dyn FnMut(&str),
    count: &mut usize,
) -> Result<()> {
    for s in stmts {
        *count += 1;
        if dry_run {
            say(&s.shown);
            continue;
        }
        tracing::info!("{}", s.shown);
        db.batch_execute(&s.sql)
            .map_err(|e| ProvisionError::Statement {
                database: s.database.clone(),
                statement: s.shown.clone(),
                message: e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string()),
            })?;
    }
    Ok(())
}

/// Waits until the server accepts connections and is not in recovery.
pub fn wait_ready(ep: &Endpoint, timeout: Duration) -> Result<Client> {
    let start = Instant::now();
    let mut last;
    loop {
        match ep.connect("postgres") {
            Ok(mut c) => match c.query_one("SELECT pg_is_in_recovery()", &[]) {
                Ok(r) if !r.get::<_, bool>(0) => return Ok(c),
                Ok(_) => last = "the server is in recovery".to_string(),
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        if start.elapsed() >= timeout {
            return Err(ProvisionError::NotReady {
                seconds: timeout.as_secs(),
                last,
            });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn exists(db: &mut Client, sql: &str, name: &str) -> Result<bool> {
    Ok(db
        .query_opt(sql, &[&name])
        .map_err(pgpitr_pg::PgError::from)?
        .is_some())
}

/// Roles and databases (run on the `postgres` database).
fn global_statements(
    db: &mut Client,
    dbs: &BTreeMap<String, DatabaseConfig>,
) -> Result<Vec<Statement>> {
    let mut out = Vec::new();
    // Every role: owners (LOGIN when they have a password) and roles named in permissions.
    let mut roles: BTreeMap<&str, Option<&Path>> = BTreeMap::new();
    for d in dbs.values() {
        for r in d.permissions.keys() {
            roles.entry(r.as_str()).or_insert(None);
        }
    }
    for d in dbs.values() {
        let e = roles.entry(d.owner.as_str()).or_insert(None);
        if let Some(p) = &d.owner_password_file {
            *e = Some(p.as_path());
        }
    }
    for (role, pw) in &roles {
        if !exists(db, "SELECT 1 FROM pg_roles WHERE rolname = $1", role)? {
            let login = if pw.is_some() { "LOGIN" } else { "NOLOGIN" };
            out.push(Statement::new(
                "postgres",
                format!("CREATE ROLE {} {login}", ident(role)),
            ));
        }
        if let Some(p) = pw {
            let verifier = postgres_protocol::password::scram_sha_256(read_password(p)?.as_bytes());
            out.push(Statement {
                database: "postgres".into(),
                sql: format!(
                    "ALTER ROLE {} LOGIN PASSWORD {}",
                    ident(role),
                    literal(&verifier)
                ),
                shown: format!("ALTER ROLE {} LOGIN PASSWORD '<redacted>'", ident(role)),
            });
        }
    }
    for (name, d) in dbs {
        if !exists(db, "SELECT 1 FROM pg_database WHERE datname = $1", name)? {
            let mut sql = format!("CREATE DATABASE {} OWNER {}", ident(name), ident(&d.owner));
            if d.encoding.is_some() || d.locale.is_some() {
                sql.push_str(" TEMPLATE template0");
            }
            if let Some(e) = &d.encoding {
                sql.push_str(&format!(" ENCODING {}", literal(e)));
            }
            if let Some(l) = &d.locale {
                sql.push_str(&format!(" LOCALE {}", literal(l)));
            }
            out.push(Statement::new(name, sql));
        } else {
            out.push(Statement::new(
                name,
                format!(
                    "ALTER DATABASE {} OWNER TO {}",
                    ident(name),
                    ident(&d.owner)
                ),
            ));
        }
        if let Some(n) = d.connection_limit {
            out.push(Statement::new(
                name,
                format!("ALTER DATABASE {} CONNECTION LIMIT {n}", ident(name)),
            ));
        }
        for (role, privs) in &d.permissions {
            let p = database_privileges(privs);
            out.push(Statement::new(
                name,
                format!("GRANT {p} ON DATABASE {} TO {}", ident(name), ident(role)),
            ));
        }
    }
    Ok(out)
}

fn upper(privs: &[String]) -> BTreeSet<String> {
    privs.iter().map(|p| p.to_ascii_uppercase()).collect()
}

fn database_privileges(privs: &[String]) -> String {
    let p = upper(privs);
    if p.contains("ALL") {
        return "ALL PRIVILEGES".into();
    }
    let mut v = vec!["CONNECT"];
    if p.contains("CREATE") {
        v.push("CREATE");
    }
    if p.contains("TEMPORARY") || p.contains("TEMP") {
        v.push("TEMPORARY");
    }
    v.join(", ")
}

/// Extensions and grants inside one database (run connected to it).
pub fn database_statements(db: &str, d: &DatabaseConfig) -> Vec<Statement> {
    let mut out = Vec::new();
    for e in d.extensions.iter().collect::<BTreeSet<_>>() {
        out.push(Statement::new(
            db,
            format!("CREATE EXTENSION IF NOT EXISTS {}", ident(e)),
        ));
    }
    for (role, privs) in &d.permissions {
        let p = upper(privs);
        let r = ident(role);
        let all = p.contains("ALL");
        let table: Vec<&str> = TABLE_PRIVS
            .iter()
            .copied()
            .filter(|t| all || p.contains(*t))
            .collect();
        let schema = if all || p.contains("CREATE") {
            "USAGE, CREATE"
        } else {
            "USAGE"
        };
        out.push(Statement::new(
            db,
            format!("GRANT {schema} ON SCHEMA public TO {r}"),
        ));
        let seq = if all || p.contains("UPDATE") {
            "USAGE, SELECT, UPDATE"
        } else {
            "USAGE, SELECT"
        };
        let wants_seq = all || p.contains("USAGE") || p.contains("SELECT") || p.contains("INSERT");
        if !table.is_empty() {
            let t = table.join(", ");
            out.push(Statement::new(
                db,
                format!("GRANT {t} ON ALL TABLES IN SCHEMA public TO {r}"),
            ));
            for owner in [Some(&d.owner), None] {
                let for_role = owner
                    .map(|o| format!("FOR ROLE {} ", ident(o)))
                    .unwrap_or_default();
                out.push(Statement::new(db, format!("ALTER DEFAULT PRIVILEGES {for_role}IN SCHEMA public GRANT {t} ON TABLES TO {r}")));
            }
        }
        if wants_seq {
            out.push(Statement::new(
                db,
                format!("GRANT {seq} ON ALL SEQUENCES IN SCHEMA public TO {r}"),
            ));
            for owner in [Some(&d.owner), None] {
                let for_role = owner
                    .map(|o| format!("FOR ROLE {} ", ident(o)))
                    .unwrap_or_default();
                out.push(Statement::new(db, format!("ALTER DEFAULT PRIVILEGES {for_role}IN SCHEMA public GRANT {seq} ON SEQUENCES TO {r}")));
            }
        }
    }
    out
}

/// (databases on the server, "database x"/"role y" that exist but are not declared).
fn undeclared(
    db: &mut Client,
    dbs: &BTreeMap<String, DatabaseConfig>,
) -> Result<(usize, Vec<String>)> {
    let names: Vec<String> = db
        .query(
            "SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY 1",
            &[],
        )
        .map_err(pgpitr_pg::PgError::from)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut roles_declared: BTreeSet<&str> = BTreeSet::new();
    for d in dbs.values() {
        roles_declared.insert(&d.owner);
        roles_declared.extend(d.permissions.keys().map(String::as_str));
    }
    let roles: Vec<String> = db
        .query(
            "SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_' AND rolname <> current_user ORDER BY 1",
            &[],
        )
        .map_err(pgpitr_pg::PgError::from)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out: Vec<String> = names
        .iter()
        .filter(|n| n.as_str() != "postgres" && !dbs.contains_key(n.as_str()))
        .map(|n| format!("database {n:?}"))
        .collect();
    out.extend(
        roles
            .iter()
            .filter(|r| !roles_declared.contains(r.as_str()))
            .map(|r| format!("role {r:?}")),
    );
    Ok((names.len(), out))
}

/// The provisioning metrics (a failed run still counts).
pub fn record_metrics(cfg: &Config, outcome: Option<&Outcome>) -> pgpitr_metrics::Result<()> {
    use pgpitr_metrics::{unix_now, JobState, Kind, MetricsFile};
    let Some(m) = &cfg.metrics else { return Ok(()) };
    #[derive(Default, serde::Serialize, serde::Deserialize)]
    struct St {
        hash: String,
        provisioned_at: f64,
        count: u64,
        total: u64,
        undeclared: u64,
        failures_total: u64,
        last_failure: f64,
    }
    let state = JobState::new(&m.textfile_dir, "provision", &cfg.instance);
    let _l = state.lock()?;
    let mut st: St = state.load().unwrap_or_default();
    match outcome {
        Some(o) if o.up_to_date => {}
        Some(o) => {
            st.hash = o.hash.clone();
            st.provisioned_at = unix_now();
            st.count = o.declared as u64;
            st.total = o.databases_total as u64;
            st.undeclared = o.undeclared.len() as u64;
        }
        None => {
            st.failures_total += 1;
            st.last_failure = unix_now();
        }
    }
    state.save(&st)?;
    let mut f = MetricsFile::new("provision", &cfg.instance);
    f.gauge(
        "postgresql_databases_total",
        "Databases on the server (templates excluded).",
        st.total as f64,
    )
    .gauge(
        "postgresql_databases_provisioned_timestamp",
        "Unix time provisioning last applied a change.",
        st.provisioned_at,
    )
    .gauge(
        "postgresql_databases_provisioned_count",
        "Databases declared in the config.",
        st.count as f64,
    )
    .sample(
        "postgresql_databases_provisioned_hash",
        "1 for the hash of the provisioned state.",
        Kind::Gauge,
        &[("hash", &st.hash)],
        1.0,
    )
    .gauge(
        "pgpitr_databases_undeclared",
        "Databases and roles on the server that are not declared (never dropped).",
        st.undeclared as f64,
    )
    .counter(
        "pgpitr_provision_failures_total",
        "provision-dbs runs that failed.",
        st.failures_total as f64,
    )
    .gauge(
        "pgpitr_provision_last_failure_timestamp_seconds",
        "Unix time provision-dbs last failed (0 if never).",
        st.last_failure,
    );
    f.write(&m.textfile_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(owner: &str, ext: &[&str], perms: &[(&str, &[&str])]) -> DatabaseConfig {
        DatabaseConfig {
            owner: owner.into(),
            owner_password_file: None,
            extensions: ext.iter().map(|s| s.to_string()).collect(),
            permissions: perms
                .iter()
                .map(|(r, p)| (r.to_string(), p.iter().map(|s| s.to_string()).collect()))
                .collect(),
            encoding: None,
            locale: None,
            connection_limit: None,
        }
    }

    #[test]
    fn quoting_is_injection_proof() {
        assert_eq!(
            ident(r#"x"; DROP TABLE t; --"#),
            r#""x""; DROP TABLE t; --""#
        );
        assert_eq!(literal("it's"), "'it''s'");
    }

    #[test]
    fn hash_ignores_order_and_case_but_not_content() {
        let mut a = BTreeMap::new();
        a.insert(
            "app".to_string(),
            db(
                "app",
                &["pg_trgm", "uuid-ossp"],
                &[("reader", &["select", "USAGE"])],
            ),
        );
        let mut b = BTreeMap::new();
        b.insert(
            "app".to_string(),
            db(
                "app",
                &["uuid-ossp", "pg_trgm"],
                &[("reader", &["USAGE", "SELECT"])],
            ),
        );
        assert_eq!(desired_hash(&a).unwrap(), desired_hash(&b).unwrap());
        b.get_mut("app").unwrap().extensions.push("hstore".into());
        assert_ne!(desired_hash(&a).unwrap(), desired_hash(&b).unwrap());
    }

    #[test]
    fn password_file_checks_never_show_content() {
        let d = std::env::temp_dir().join(format!("pgpitr-pw-{}", std::process::id()));
        std::fs::write(&d, "hunter2\n").unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_password(&d).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && !e.contains("hunter2"), "{e}");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_password(&d).unwrap(), "hunter2");
        std::fs::remove_file(&d).unwrap();
        assert!(read_password(&d).is_err());
    }

    #[test]
    fn grants_cover_tables_sequences_and_future_tables() {
        let s: Vec<String> =
            database_statements("app", &db("app", &["pg_trgm"], &[("reader", &["SELECT"])]))
                .into_iter()
                .map(|s| s.sql)
                .collect();
        assert!(s.contains(&"CREATE EXTENSION IF NOT EXISTS \"pg_trgm\"".to_string()));
        assert!(s
            .iter()
            .any(|x| x == "GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"reader\""));
        assert!(s.iter().any(|x| x == "ALTER DEFAULT PRIVILEGES FOR ROLE \"app\" IN SCHEMA public GRANT SELECT ON TABLES TO \"reader\""));
        assert!(s
            .iter()
            .any(|x| x.starts_with("GRANT USAGE, SELECT ON ALL SEQUENCES")));
    }
}
