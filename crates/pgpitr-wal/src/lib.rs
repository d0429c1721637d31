//! The WAL archive: file names, LSNs, timelines, segment headers, the object codec
//! (zstd, optionally wrapped in age) and the on-disk store.

pub mod chain;
pub mod codec;
pub mod header;
pub mod history;
pub mod lookahead;
pub mod lsn;
pub mod metrics;
pub mod names;
pub mod prefetch;
pub mod store;
pub mod timeline;

pub use lsn::Lsn;
pub use names::WalName;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error(transparent)]
    Durable(#[from] pgpitr_durable::DurableError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("encryption: {0}")]
    Crypto(String),
    #[error("{name} is already archived with different contents (stored sha256 {stored}, new sha256 {new}); the stored object was left untouched. Find out why the cluster produced a different {name} before going on")]
    Conflict {
        name: String,
        stored: String,
        new: String,
    },
    #[error("{name} belongs to another cluster: its system identifier is {found}, the archive at {archive} holds cluster {expected}. Point this cluster at its own archive dir")]
    ForeignCluster {
        name: String,
        found: u64,
        expected: u64,
        archive: String,
    },
    #[error("checksum mismatch for {name}: expected sha256 {expected}, got {actual}; the archived object is corrupt")]
    Corrupt {
        name: String,
        expected: String,
        actual: String,
    },
}

impl WalError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        WalError::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, WalError>;
