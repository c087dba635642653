//! The durable backup behind a Redis main store: every entity upsert, delete and schema
//! change is written here first, and Redis is rebuilt from here when it lost data.
//!
//! - [`db`]: the tables and their SQL, on PostgreSQL or SQLite.
//! - [`Backed`]: a [`Store`](crate::Store) wrapper that dual-writes. A write is acknowledged
//!   once it is durable in the backup and either applied to Redis or queued for replay.
//! - `replay`: the task that applies queued writes once Redis answers, and re-applies a
//!   failed-over primary's recent writes.
//! - [`restore`]: rebuild a store from the backup (`larder restore`).
//!
//! The write path, in order, for one batch:
//!
//! 1. one backup transaction merges the fields, sets the expiry, bumps each key's version and
//!    reads each key's `pending` mark; if it fails, the write is refused (`503`);
//! 2. keys with no earlier write waiting go to Redis, bounded by `write_timeout`; keys that
//!    have one are left to the replay, so that a key's writes reach Redis in order;
//! 3. keys Redis did not take are marked pending (if that fails too, the write is refused:
//!    it is in the backup, and a retry repeats it idempotently);
//! 4. the versions are read back: a key whose version moved on was written again meanwhile,
//!    and that newer write may have reached Redis first, so it is marked pending and the
//!    replay writes its latest state.
//!
//! A replay writes a key's whole current state (fields, absolute expiry, or a delete), so it
//! is idempotent and the last committed write wins; its mark is cleared only if the key's
//! version is still the one it wrote.

mod backed;
pub(crate) mod db;
mod replay;
mod restore;

pub use backed::{Backed, BackedOptions};
pub use db::PendingEntity;
pub use restore::restore;

use crate::DbUrl;
use crate::{EntityState, NamespaceSchema, Result, StoreError};

/// A handle on the backup DB for tools that read it whole (`larder restore`).
#[derive(Clone)]
pub struct Backup {
    db: db::Db,
}

impl Backup {
    /// `postgres://…`, `postgresql://…` or `sqlite://FILE`; creates the tables.
    pub async fn connect(url: &DbUrl) -> Result<Backup> {
        Ok(Backup {
            db: db::Db::connect(url).await?,
        })
    }

    /// `postgres` | `sqlite`.
    pub fn kind(&self) -> &'static str {
        self.db.kind()
    }

    /// Every namespace schema (or only `ns`'s).
    pub async fn schemas(&self, ns: Option<&str>) -> Result<Vec<(String, NamespaceSchema)>> {
        self.db
            .schemas(ns)
            .await?
            .into_iter()
            .map(|(name, json)| {
                serde_json::from_str(&json)
                    .map(|schema| (name.clone(), schema))
                    .map_err(|e| StoreError::Corrupt {
                        key: format!("backup schema {name}"),
                        reason: e.to_string(),
                    })
            })
            .collect()
    }

    /// How many live entities the backup holds (of `ns`, or all).
    pub async fn count(&self, ns: Option<&str>) -> Result<u64> {
        self.db.count_live(ns).await
    }

    /// Every live entity (of `ns`, or all), as `(namespace, state)`, in batches of about
    /// `batch`, read ahead by a task of its own.
    pub fn entities(
        &self,
        ns: Option<String>,
        batch: usize,
    ) -> tokio::sync::mpsc::Receiver<Result<Vec<(String, EntityState)>>> {
        self.db.live_entities(ns, batch.max(1))
    }

    /// Keys and schemas waiting for replay.
    pub async fn backlog(&self) -> Result<u64> {
        self.db.backlog().await
    }
}

/// Now as unix milliseconds, as the backup records times.
pub(crate) fn now_ms() -> i64 {
    crate::unix_ms() as i64
}
