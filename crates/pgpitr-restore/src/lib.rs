//! Point-in-time restore: the inventory of backups and archived WAL, the restorable window,
//! the plan (backup, timeline, WAL chain, target) checked before anything is touched, and
//! the execution (extract, configure recovery, start, replay, promote, report).

pub mod access;
pub mod execute;
pub mod inplace;
pub mod inventory;
pub mod paused;
pub mod plan;
pub mod preflight;
pub mod recovery_conf;
pub mod serverlog;
pub mod target;
pub mod window_cache;

pub use execute::{execute, ExecuteOptions, RestoreReport};
pub use inventory::{Inventory, Status};
pub use plan::{plan, Plan, PlanRequest};
pub use target::{parse_target, Target};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Wal(#[from] pgpitr_wal::WalError),
    #[error(transparent)]
    Backup(#[from] pgpitr_backup::BackupError),
    #[error(transparent)]
    Pg(#[from] pgpitr_pg::PgError),
    #[error(transparent)]
    Durable(#[from] pgpitr_durable::DurableError),
    #[error(transparent)]
    Io(#[from] pgpitr_durable::IoError),
    /// The request cannot be satisfied; nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// PostgreSQL failed during recovery.
    #[error("{0}")]
    Recovery(String),
}

pub type Result<T> = std::result::Result<T, RestoreError>;

pub(crate) use pgpitr_durable::io_context as io_err;
