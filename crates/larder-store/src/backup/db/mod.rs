//! The backup DB: PostgreSQL or SQLite through sqlx's typed drivers.
//!
//! Typed pools rather than sqlx's `Any` driver (which the main DB uses): batches go to
//! PostgreSQL as one `INSERT … SELECT … FROM UNNEST($arrays)` per table, a single statement
//! for a whole 1,000-entity upsert, and `Any` has no array types. SQLite has no arrays; there a
//! batch is one transaction of prepared single-row statements, which SQLite runs in
//! microseconds each.
//!
//! Tables (prefixed, so the backup may share a database with the main DB):
//!
//! - `larder_backup_schemas (ns, schema, version, pending, updated_at_ms)`;
//! - `larder_backup_entities (ns, key, version, expires_at_ms, deleted, pending, slot,
//!   updated_at_ms)`: one row per entity ever written, a tombstone (`deleted`) after a delete;
//!   `version` grows by one per write of the key; `pending` means Redis may not have it yet;
//! - `larder_backup_fields (ns, key, field, value)`: the stored-dtype bytes, merged per field
//!   like `HSET`.
//!
//! Keys are bytes (`BYTEA`/`BLOB`): entity keys are any UTF-8, NUL included, which PostgreSQL
//! `TEXT` cannot hold.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::{DbUrl, EntityState, Result, StoreError};

/// How long a write waits for a pooled connection before the backup counts as down.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// The tables, for both databases: `BYTES` becomes `BYTEA` on PostgreSQL and `BLOB` on SQLite
/// (BIGINT and BOOLEAN mean the same to both).
const SCHEMA: [&str; 5] = [
    "CREATE TABLE IF NOT EXISTS larder_backup_schemas (
        ns TEXT PRIMARY KEY, schema TEXT NOT NULL, version BIGINT NOT NULL,
        pending BOOLEAN NOT NULL, updated_at_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS larder_backup_entities (
        ns TEXT NOT NULL, key BYTES NOT NULL, version BIGINT NOT NULL, expires_at_ms BIGINT,
        deleted BOOLEAN NOT NULL, pending BOOLEAN NOT NULL, slot INTEGER NOT NULL,
        updated_at_ms BIGINT NOT NULL, PRIMARY KEY (ns, key))",
    "CREATE INDEX IF NOT EXISTS larder_backup_entities_pending
        ON larder_backup_entities (version) WHERE pending",
    "CREATE INDEX IF NOT EXISTS larder_backup_entities_updated
        ON larder_backup_entities (updated_at_ms)",
    "CREATE TABLE IF NOT EXISTS larder_backup_fields (
        ns TEXT NOT NULL, key BYTES NOT NULL, field TEXT NOT NULL, value BYTES NOT NULL,
        PRIMARY KEY (ns, key, field))",
];

/// Key of the PostgreSQL advisory lock that serialises schema creation between processes.
const SCHEMA_LOCK_KEY: i64 = 0x6c61_7264_6562; // "lardeb"

/// What one write did to one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub version: i64,
    /// An earlier write of this key still waits for replay: this one must queue behind it.
    pub pending: bool,
}

/// A key and the version a write or replay saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub ns: String,
    pub key: String,
    pub version: i64,
}

/// A key waiting for replay, with its whole current state.
#[derive(Debug, Clone)]
pub struct PendingEntity {
    pub ns: String,
    pub version: i64,
    pub state: EntityState,
}

#[derive(Clone)]
pub(crate) enum Db {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// The error a backup failure becomes: the backup is down (or refused the write).
fn down(error: sqlx::Error) -> StoreError {
    StoreError::BackupUnavailable(error.to_string())
}

fn text_key(ns: &str, key: Vec<u8>) -> Result<String> {
    String::from_utf8(key).map_err(|_| StoreError::Corrupt {
        key: format!("backup entity in {ns}"),
        reason: "key is not UTF-8".into(),
    })
}

/// Run the same code on either pool; each arm is type-checked on its own driver.
macro_rules! both {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            Db::Postgres($pool) => $body,
            Db::Sqlite($pool) => $body,
        }
    };
}

mod read;
mod write;

/// Rows `(ns, key, …, field, value)` ordered by (ns, key), folded into entity states.
struct Folder {
    current: Option<(String, EntityState, i64)>,
}

impl Folder {
    /// Add one row; returns the previous entity when this row starts a new one.
    fn push(
        &mut self,
        ns: String,
        key: String,
        version: i64,
        head: (Option<i64>, bool),
        field: Option<(String, Vec<u8>)>,
    ) -> Option<(String, EntityState, i64)> {
        let same = matches!(&self.current, Some((n, s, _)) if *n == ns && s.key == key);
        let done = if same {
            None
        } else {
            self.current.replace((
                ns,
                EntityState {
                    key,
                    fields: Vec::new(),
                    expires_at_ms: head.0.map(|v| v.max(0) as u64),
                    deleted: head.1,
                },
                version,
            ))
        };
        if let (Some((_, state, _)), Some(field)) = (&mut self.current, field) {
            state.fields.push(field);
        }
        done
    }
}

impl Db {
    /// `postgres://…`, `postgresql://…` or `sqlite://FILE` (created with its parent dirs).
    pub(crate) async fn connect(url: &DbUrl) -> Result<Db> {
        let db = match url {
            DbUrl::Postgres(url) => {
                let pool = PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect(url)
                    .await
                    .map_err(down)?;
                Db::Postgres(pool)
            }
            DbUrl::SqliteMemory => {
                return Err(StoreError::Config(
                    "backup: an in-memory SQLite backup would be lost with the process; give a file: sqlite://FILE".into(),
                ));
            }
            DbUrl::SqliteFile(text) => {
                if let Some(parent) = url
                    .sqlite_path()
                    .and_then(|p| std::path::Path::new(p).parent())
                {
                    if !parent.as_os_str().is_empty() {
                        std::fs::create_dir_all(parent).map_err(|e| {
                            StoreError::Config(format!(
                                "backup: cannot create {}: {e}",
                                parent.display()
                            ))
                        })?;
                    }
                }
                // FULL: a write is acknowledged only once it is on disk.
                let options = SqliteConnectOptions::from_str(text)
                    .map_err(|e| StoreError::Config(format!("backup: {e}")))?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(5));
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(options)
                    .await
                    .map_err(down)?;
                Db::Sqlite(pool)
            }
        };
        db.create_schema().await?;
        Ok(db)
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Db::Postgres(_) => "postgres",
            Db::Sqlite(_) => "sqlite",
        }
    }

    async fn create_schema(&self) -> Result<()> {
        match self {
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await.map_err(down)?;
                // Concurrent CREATE … IF NOT EXISTS can still collide in the catalog when
                // several servers start together; the lock lasts until commit.
                // `CREATE … IF NOT EXISTS` would otherwise send a notice per existing table.
                sqlx::query("SET LOCAL client_min_messages = warning")
                    .execute(&mut *tx)
                    .await
                    .map_err(down)?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(SCHEMA_LOCK_KEY)
                    .execute(&mut *tx)
                    .await
                    .map_err(down)?;
                for statement in SCHEMA {
                    sqlx::query(&statement.replace("BYTES", "BYTEA"))
                        .execute(&mut *tx)
                        .await
                        .map_err(down)?;
                }
                tx.commit().await.map_err(down)
            }
            Db::Sqlite(pool) => {
                for statement in SCHEMA {
                    sqlx::query(&statement.replace("BYTES", "BLOB"))
                        .execute(pool)
                        .await
                        .map_err(down)?;
                }
                Ok(())
            }
        }
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        both!(self, |pool| sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map(drop)
            .map_err(down))
    }
}
