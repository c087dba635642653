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

use futures::stream::TryStreamExt;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;

use crate::{EntityState, EntityWrite, Result, StoreError};

/// How long a write waits for a pooled connection before the backup counts as down.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

const PG_SCHEMA: [&str; 6] = [
    "CREATE TABLE IF NOT EXISTS larder_backup_schemas (
        ns TEXT PRIMARY KEY, schema TEXT NOT NULL, version BIGINT NOT NULL,
        pending BOOLEAN NOT NULL, updated_at_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS larder_backup_entities (
        ns TEXT NOT NULL, key BYTEA NOT NULL, version BIGINT NOT NULL, expires_at_ms BIGINT,
        deleted BOOLEAN NOT NULL, pending BOOLEAN NOT NULL, slot INTEGER NOT NULL,
        updated_at_ms BIGINT NOT NULL, PRIMARY KEY (ns, key))",
    "CREATE INDEX IF NOT EXISTS larder_backup_entities_pending
        ON larder_backup_entities (version) WHERE pending",
    "CREATE INDEX IF NOT EXISTS larder_backup_entities_updated
        ON larder_backup_entities (updated_at_ms)",
    "CREATE TABLE IF NOT EXISTS larder_backup_fields (
        ns TEXT NOT NULL, key BYTEA NOT NULL, field TEXT NOT NULL, value BYTEA NOT NULL,
        PRIMARY KEY (ns, key, field))",
    "SELECT 1",
];

const SQLITE_SCHEMA: [&str; 6] = [
    "CREATE TABLE IF NOT EXISTS larder_backup_schemas (
        ns TEXT PRIMARY KEY, schema TEXT NOT NULL, version INTEGER NOT NULL,
        pending BOOLEAN NOT NULL, updated_at_ms INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS larder_backup_entities (
        ns TEXT NOT NULL, key BLOB NOT NULL, version INTEGER NOT NULL, expires_at_ms INTEGER,
        deleted BOOLEAN NOT NULL, pending BOOLEAN NOT NULL, slot INTEGER NOT NULL,
        updated_at_ms INTEGER NOT NULL, PRIMARY KEY (ns, key))",
    "CREATE INDEX IF NOT EXISTS larder_backup_entities_pending
        ON larder_backup_entities (version) WHERE pending",
    "CREATE INDEX IF NOT EXISTS larder_backup_entities_updated
        ON larder_backup_entities (updated_at_ms)",
    "CREATE TABLE IF NOT EXISTS larder_backup_fields (
        ns TEXT NOT NULL, key BLOB NOT NULL, field TEXT NOT NULL, value BLOB NOT NULL,
        PRIMARY KEY (ns, key, field))",
    "SELECT 1",
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
    pub(crate) async fn connect(url: &str) -> Result<Db> {
        let db = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect(url)
                .await
                .map_err(down)?;
            Db::Postgres(pool)
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() || path.starts_with(":memory:") {
                return Err(StoreError::Config(
                    "backup: an in-memory SQLite backup would be lost with the process; give a file: sqlite://FILE".into(),
                ));
            }
            if let Some(parent) = std::path::Path::new(path).parent() {
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
            let options = SqliteConnectOptions::from_str(url)
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
        } else {
            return Err(StoreError::Config(format!(
                "backup: expected postgres://… or sqlite://FILE, got {url:?}"
            )));
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
                for statement in PG_SCHEMA {
                    sqlx::query(statement)
                        .execute(&mut *tx)
                        .await
                        .map_err(down)?;
                }
                tx.commit().await.map_err(down)
            }
            Db::Sqlite(pool) => {
                for statement in SQLITE_SCHEMA {
                    sqlx::query(statement).execute(pool).await.map_err(down)?;
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

    /// Merge every entity's fields, set its expiry, bump its version: one transaction.
    /// Answers per entity, in the order given. `entities` must not repeat a key.
    pub(crate) async fn upsert(
        &self,
        ns: &str,
        expires_at_ms: Option<i64>,
        entities: &[EntityWrite],
        slots: &[i32],
        now_ms: i64,
    ) -> Result<Vec<Written>> {
        match self {
            Db::Postgres(pool) => {
                let keys: Vec<&[u8]> = entities.iter().map(|e| e.key.as_bytes()).collect();
                let mut f_keys: Vec<&[u8]> = Vec::new();
                let mut f_names: Vec<&str> = Vec::new();
                let mut f_values: Vec<&[u8]> = Vec::new();
                for e in entities {
                    for (name, value) in &e.fields {
                        f_keys.push(e.key.as_bytes());
                        f_names.push(name);
                        f_values.push(value);
                    }
                }
                let mut tx = pool.begin().await.map_err(down)?;
                let rows = sqlx::query(
                    "INSERT INTO larder_backup_entities AS e
                        (ns, key, version, expires_at_ms, deleted, pending, slot, updated_at_ms)
                     SELECT $1, u.key, 1, $2, FALSE, FALSE, u.slot, $3
                     FROM UNNEST($4::bytea[], $5::int[]) AS u(key, slot)
                     ON CONFLICT (ns, key) DO UPDATE SET version = e.version + 1,
                        expires_at_ms = EXCLUDED.expires_at_ms, deleted = FALSE,
                        updated_at_ms = EXCLUDED.updated_at_ms
                     RETURNING key, version, pending",
                )
                .bind(ns)
                .bind(expires_at_ms)
                .bind(now_ms)
                .bind(&keys)
                .bind(slots)
                .fetch_all(&mut *tx)
                .await
                .map_err(down)?;
                sqlx::query(
                    "INSERT INTO larder_backup_fields AS f (ns, key, field, value)
                     SELECT $1, u.key, u.field, u.value
                     FROM UNNEST($2::bytea[], $3::text[], $4::bytea[]) AS u(key, field, value)
                     ON CONFLICT (ns, key, field) DO UPDATE SET value = EXCLUDED.value",
                )
                .bind(ns)
                .bind(&f_keys)
                .bind(&f_names)
                .bind(&f_values)
                .execute(&mut *tx)
                .await
                .map_err(down)?;
                tx.commit().await.map_err(down)?;
                // RETURNING has no defined order: put the rows back in request order.
                let mut by_key = std::collections::HashMap::with_capacity(rows.len());
                for row in rows {
                    let key: Vec<u8> = row.try_get(0).map_err(down)?;
                    let written = Written {
                        version: row.try_get(1).map_err(down)?,
                        pending: row.try_get(2).map_err(down)?,
                    };
                    by_key.insert(key, written);
                }
                entities
                    .iter()
                    .map(|e| {
                        by_key.get(e.key.as_bytes()).copied().ok_or_else(|| {
                            StoreError::BackupUnavailable(format!(
                                "the backup did not answer for key {:?}",
                                e.key
                            ))
                        })
                    })
                    .collect()
            }
            Db::Sqlite(pool) => {
                let mut tx = pool.begin().await.map_err(down)?;
                let mut out = Vec::with_capacity(entities.len());
                for (e, slot) in entities.iter().zip(slots) {
                    let row = sqlx::query(
                        "INSERT INTO larder_backup_entities AS e
                            (ns, key, version, expires_at_ms, deleted, pending, slot, updated_at_ms)
                         VALUES ($1, $2, 1, $3, FALSE, FALSE, $4, $5)
                         ON CONFLICT (ns, key) DO UPDATE SET version = e.version + 1,
                            expires_at_ms = excluded.expires_at_ms, deleted = FALSE,
                            updated_at_ms = excluded.updated_at_ms
                         RETURNING version, pending",
                    )
                    .bind(ns)
                    .bind(e.key.as_bytes())
                    .bind(expires_at_ms)
                    .bind(slot)
                    .bind(now_ms)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(down)?;
                    out.push(Written {
                        version: row.try_get(0).map_err(down)?,
                        pending: row.try_get(1).map_err(down)?,
                    });
                    for (name, value) in &e.fields {
                        sqlx::query(
                            "INSERT INTO larder_backup_fields (ns, key, field, value)
                             VALUES ($1, $2, $3, $4)
                             ON CONFLICT (ns, key, field) DO UPDATE SET value = excluded.value",
                        )
                        .bind(ns)
                        .bind(e.key.as_bytes())
                        .bind(name)
                        .bind(value.as_slice())
                        .execute(&mut *tx)
                        .await
                        .map_err(down)?;
                    }
                }
                tx.commit().await.map_err(down)?;
                Ok(out)
            }
        }
    }

    /// Tombstone the entity and drop its fields.
    pub(crate) async fn delete(
        &self,
        ns: &str,
        key: &str,
        slot: i32,
        now_ms: i64,
    ) -> Result<Written> {
        both!(self, |pool| {
            let mut tx = pool.begin().await.map_err(down)?;
            let row = sqlx::query(
                "INSERT INTO larder_backup_entities AS e
                    (ns, key, version, expires_at_ms, deleted, pending, slot, updated_at_ms)
                 VALUES ($1, $2, 1, NULL, TRUE, FALSE, $3, $4)
                 ON CONFLICT (ns, key) DO UPDATE SET version = e.version + 1,
                    expires_at_ms = NULL, deleted = TRUE, updated_at_ms = excluded.updated_at_ms
                 RETURNING version, pending",
            )
            .bind(ns)
            .bind(key.as_bytes())
            .bind(slot)
            .bind(now_ms)
            .fetch_one(&mut *tx)
            .await
            .map_err(down)?;
            sqlx::query("DELETE FROM larder_backup_fields WHERE ns = $1 AND key = $2")
                .bind(ns)
                .bind(key.as_bytes())
                .execute(&mut *tx)
                .await
                .map_err(down)?;
            tx.commit().await.map_err(down)?;
            Ok(Written {
                version: row.try_get(0).map_err(down)?,
                pending: row.try_get(1).map_err(down)?,
            })
        })
    }

    /// Store a namespace schema (JSON).
    pub(crate) async fn put_schema(&self, ns: &str, json: &str, now_ms: i64) -> Result<Written> {
        both!(self, |pool| {
            let row = sqlx::query(
                "INSERT INTO larder_backup_schemas AS s (ns, schema, version, pending, updated_at_ms)
                 VALUES ($1, $2, 1, FALSE, $3)
                 ON CONFLICT (ns) DO UPDATE SET schema = excluded.schema,
                    version = s.version + 1, updated_at_ms = excluded.updated_at_ms
                 RETURNING version, pending",
            )
            .bind(ns)
            .bind(json)
            .bind(now_ms)
            .fetch_one(pool)
            .await
            .map_err(down)?;
            Ok(Written {
                version: row.try_get(0).map_err(down)?,
                pending: row.try_get(1).map_err(down)?,
            })
        })
    }

    /// Drop one field of every entity of `ns`.
    pub(crate) async fn drop_field(&self, ns: &str, field: &str) -> Result<()> {
        both!(self, |pool| sqlx::query(
            "DELETE FROM larder_backup_fields WHERE ns = $1 AND field = $2"
        )
        .bind(ns)
        .bind(field)
        .execute(pool)
        .await
        .map(drop)
        .map_err(down))
    }

    /// Mark keys as waiting for replay (their Redis write failed or may have been overtaken).
    pub(crate) async fn mark_pending(&self, ns: &str, keys: &[&str]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        match self {
            Db::Postgres(pool) => {
                let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
                sqlx::query(
                    "UPDATE larder_backup_entities SET pending = TRUE
                     WHERE ns = $1 AND key = ANY($2::bytea[])",
                )
                .bind(ns)
                .bind(&keys)
                .execute(pool)
                .await
                .map_err(down)?;
            }
            Db::Sqlite(pool) => {
                let mut tx = pool.begin().await.map_err(down)?;
                for key in keys {
                    sqlx::query(
                        "UPDATE larder_backup_entities SET pending = TRUE
                         WHERE ns = $1 AND key = $2",
                    )
                    .bind(ns)
                    .bind(key.as_bytes())
                    .execute(&mut *tx)
                    .await
                    .map_err(down)?;
                }
                tx.commit().await.map_err(down)?;
            }
        }
        Ok(())
    }

    /// Mark a schema as waiting for replay.
    pub(crate) async fn mark_schema_pending(&self, ns: &str) -> Result<()> {
        both!(self, |pool| sqlx::query(
            "UPDATE larder_backup_schemas SET pending = TRUE WHERE ns = $1"
        )
        .bind(ns)
        .execute(pool)
        .await
        .map(drop)
        .map_err(down))
    }

    /// Mark every entity written since `since_ms` in the given slot ranges as waiting for
    /// replay (a primary failed over: its last writes may not have reached the replica).
    pub(crate) async fn mark_recent_pending(
        &self,
        since_ms: i64,
        slots: &[(u16, u16)],
    ) -> Result<u64> {
        both!(self, |pool| {
            let mut tx = pool.begin().await.map_err(down)?;
            let mut marked = 0;
            for (start, end) in slots {
                marked += sqlx::query(
                    "UPDATE larder_backup_entities SET pending = TRUE
                     WHERE updated_at_ms >= $1 AND slot BETWEEN $2 AND $3 AND NOT pending",
                )
                .bind(since_ms)
                .bind(i32::from(*start))
                .bind(i32::from(*end))
                .execute(&mut *tx)
                .await
                .map_err(down)?
                .rows_affected();
            }
            tx.commit().await.map_err(down)?;
            Ok(marked)
        })
    }

    /// Of the given keys, those whose version moved past the one given: another write
    /// committed after this one, and may have reached Redis before it.
    pub(crate) async fn overtaken(&self, ns: &str, written: &[(&str, i64)]) -> Result<Vec<String>> {
        if written.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Db::Postgres(pool) => {
                let keys: Vec<&[u8]> = written.iter().map(|(k, _)| k.as_bytes()).collect();
                let versions: Vec<i64> = written.iter().map(|(_, v)| *v).collect();
                let rows = sqlx::query(
                    "SELECT e.key FROM larder_backup_entities e
                     JOIN UNNEST($2::bytea[], $3::bigint[]) AS u(key, version)
                       ON e.key = u.key AND e.version > u.version
                     WHERE e.ns = $1",
                )
                .bind(ns)
                .bind(&keys)
                .bind(&versions)
                .fetch_all(pool)
                .await
                .map_err(down)?;
                rows.into_iter()
                    .map(|r| text_key(ns, r.try_get(0).map_err(down)?))
                    .collect()
            }
            Db::Sqlite(pool) => {
                let mut conn = pool.acquire().await.map_err(down)?;
                let mut out = Vec::new();
                for (key, version) in written {
                    let newer = sqlx::query(
                        "SELECT 1 FROM larder_backup_entities
                         WHERE ns = $1 AND key = $2 AND version > $3",
                    )
                    .bind(ns)
                    .bind(key.as_bytes())
                    .bind(version)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(down)?;
                    if newer.is_some() {
                        out.push((*key).to_owned());
                    }
                }
                Ok(out)
            }
        }
    }

    /// Up to `limit` keys waiting for replay, with their current state (one snapshot).
    pub(crate) async fn pending(&self, limit: i64) -> Result<Vec<PendingEntity>> {
        both!(self, |pool| {
            let rows = sqlx::query(
                "SELECT e.ns, e.key, e.version, e.expires_at_ms, e.deleted, f.field, f.value
                 FROM (SELECT ns, key, version, expires_at_ms, deleted
                       FROM larder_backup_entities WHERE pending LIMIT $1) AS e
                 LEFT JOIN larder_backup_fields f ON f.ns = e.ns AND f.key = e.key
                 ORDER BY e.ns, e.key",
            )
            .bind(limit)
            .fetch_all(pool)
            .await
            .map_err(down)?;
            let mut folder = Folder { current: None };
            let mut out = Vec::new();
            for row in rows {
                let ns: String = row.try_get(0).map_err(down)?;
                let key = text_key(&ns, row.try_get(1).map_err(down)?)?;
                let field: Option<String> = row.try_get(5).map_err(down)?;
                let value: Option<Vec<u8>> = row.try_get(6).map_err(down)?;
                let head = (row.try_get(3).map_err(down)?, row.try_get(4).map_err(down)?);
                if let Some((ns, state, version)) = folder.push(
                    ns,
                    key,
                    row.try_get(2).map_err(down)?,
                    head,
                    field.zip(value),
                ) {
                    out.push(PendingEntity { ns, version, state });
                }
            }
            if let Some((ns, state, version)) = folder.current.take() {
                out.push(PendingEntity { ns, version, state });
            }
            Ok(out)
        })
    }

    /// Clear the pending mark of keys still at the version that was replayed (a write that
    /// committed since keeps its key pending).
    pub(crate) async fn clear_pending(&self, done: &[Versioned]) -> Result<()> {
        if done.is_empty() {
            return Ok(());
        }
        match self {
            Db::Postgres(pool) => {
                let ns: Vec<&str> = done.iter().map(|d| d.ns.as_str()).collect();
                let keys: Vec<&[u8]> = done.iter().map(|d| d.key.as_bytes()).collect();
                let versions: Vec<i64> = done.iter().map(|d| d.version).collect();
                sqlx::query(
                    "UPDATE larder_backup_entities AS e SET pending = FALSE
                     FROM UNNEST($1::text[], $2::bytea[], $3::bigint[]) AS u(ns, key, version)
                     WHERE e.ns = u.ns AND e.key = u.key AND e.version = u.version",
                )
                .bind(&ns)
                .bind(&keys)
                .bind(&versions)
                .execute(pool)
                .await
                .map_err(down)?;
            }
            Db::Sqlite(pool) => {
                let mut tx = pool.begin().await.map_err(down)?;
                for d in done {
                    sqlx::query(
                        "UPDATE larder_backup_entities SET pending = FALSE
                         WHERE ns = $1 AND key = $2 AND version = $3",
                    )
                    .bind(&d.ns)
                    .bind(d.key.as_bytes())
                    .bind(d.version)
                    .execute(&mut *tx)
                    .await
                    .map_err(down)?;
                }
                tx.commit().await.map_err(down)?;
            }
        }
        Ok(())
    }

    /// Schemas waiting for replay: `(ns, json, version)`.
    pub(crate) async fn pending_schemas(&self) -> Result<Vec<(String, String, i64)>> {
        both!(self, |pool| {
            let rows =
                sqlx::query("SELECT ns, schema, version FROM larder_backup_schemas WHERE pending")
                    .fetch_all(pool)
                    .await
                    .map_err(down)?;
            rows.into_iter()
                .map(|r| {
                    Ok((
                        r.try_get(0).map_err(down)?,
                        r.try_get(1).map_err(down)?,
                        r.try_get(2).map_err(down)?,
                    ))
                })
                .collect()
        })
    }

    pub(crate) async fn clear_schema_pending(&self, ns: &str, version: i64) -> Result<()> {
        both!(self, |pool| sqlx::query(
            "UPDATE larder_backup_schemas SET pending = FALSE WHERE ns = $1 AND version = $2"
        )
        .bind(ns)
        .bind(version)
        .execute(pool)
        .await
        .map(drop)
        .map_err(down))
    }

    /// Keys and schemas waiting for replay.
    pub(crate) async fn backlog(&self) -> Result<u64> {
        both!(self, |pool| {
            let row = sqlx::query(
                "SELECT (SELECT COUNT(*) FROM larder_backup_entities WHERE pending)
                      + (SELECT COUNT(*) FROM larder_backup_schemas WHERE pending)",
            )
            .fetch_one(pool)
            .await
            .map_err(down)?;
            let n: i64 = row.try_get(0).map_err(down)?;
            Ok(n.max(0) as u64)
        })
    }

    /// Every schema, or `only`'s: `(ns, json)`.
    pub(crate) async fn schemas(&self, only: Option<&str>) -> Result<Vec<(String, String)>> {
        both!(self, |pool| {
            let rows = match only {
                Some(ns) => {
                    sqlx::query("SELECT ns, schema FROM larder_backup_schemas WHERE ns = $1")
                        .bind(ns)
                        .fetch_all(pool)
                        .await
                }
                None => {
                    sqlx::query("SELECT ns, schema FROM larder_backup_schemas ORDER BY ns")
                        .fetch_all(pool)
                        .await
                }
            }
            .map_err(down)?;
            rows.into_iter()
                .map(|r| Ok((r.try_get(0).map_err(down)?, r.try_get(1).map_err(down)?)))
                .collect()
        })
    }

    /// Live entities of every namespace, or `only`'s.
    pub(crate) async fn count_live(&self, only: Option<&str>) -> Result<u64> {
        both!(self, |pool| {
            let row =
                match only {
                    Some(ns) => sqlx::query(
                        "SELECT COUNT(*) FROM larder_backup_entities WHERE NOT deleted AND ns = $1",
                    )
                    .bind(ns)
                    .fetch_one(pool)
                    .await,
                    None => {
                        sqlx::query("SELECT COUNT(*) FROM larder_backup_entities WHERE NOT deleted")
                            .fetch_one(pool)
                            .await
                    }
                }
                .map_err(down)?;
            let n: i64 = row.try_get(0).map_err(down)?;
            Ok(n.max(0) as u64)
        })
    }

    /// Stream every live entity (of `only`, when given) in batches of `batch` entities, read
    /// by a task of its own so that reading the DB overlaps with writing Redis.
    pub(crate) fn live_entities(
        &self,
        only: Option<String>,
        batch: usize,
    ) -> tokio::sync::mpsc::Receiver<Result<Vec<(String, EntityState)>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let db = self.clone();
        tokio::spawn(async move {
            let out = db.send_live(only, batch, &tx).await;
            if let Err(error) = out {
                let _ = tx.send(Err(error)).await;
            }
        });
        rx
    }

    async fn send_live(
        &self,
        only: Option<String>,
        batch: usize,
        tx: &tokio::sync::mpsc::Sender<Result<Vec<(String, EntityState)>>>,
    ) -> Result<()> {
        const ALL: &str = "SELECT e.ns, e.key, e.version, e.expires_at_ms, f.field, f.value
             FROM larder_backup_entities e
             JOIN larder_backup_fields f ON f.ns = e.ns AND f.key = e.key
             WHERE NOT e.deleted ORDER BY e.ns, e.key";
        const ONE: &str = "SELECT e.ns, e.key, e.version, e.expires_at_ms, f.field, f.value
             FROM larder_backup_entities e
             JOIN larder_backup_fields f ON f.ns = e.ns AND f.key = e.key
             WHERE NOT e.deleted AND e.ns = $1 ORDER BY e.ns, e.key";
        both!(self, |pool| {
            let query = match &only {
                Some(ns) => sqlx::query(ONE).bind(ns.clone()),
                None => sqlx::query(ALL),
            };
            let mut rows = query.fetch(pool);
            let mut folder = Folder { current: None };
            let mut out = Vec::with_capacity(batch);
            while let Some(row) = rows.try_next().await.map_err(down)? {
                let ns: String = row.try_get(0).map_err(down)?;
                let key = text_key(&ns, row.try_get(1).map_err(down)?)?;
                let head = (row.try_get(3).map_err(down)?, false);
                let field = (row.try_get(4).map_err(down)?, row.try_get(5).map_err(down)?);
                if let Some((ns, state, _)) =
                    folder.push(ns, key, row.try_get(2).map_err(down)?, head, Some(field))
                {
                    out.push((ns, state));
                    if out.len() >= batch
                        && tx
                            .send(Ok(std::mem::replace(&mut out, Vec::with_capacity(batch))))
                            .await
                            .is_err()
                    {
                        return Ok(());
                    }
                }
            }
            if let Some((ns, state, _)) = folder.current.take() {
                out.push((ns, state));
            }
            if !out.is_empty() {
                let _ = tx.send(Ok(out)).await;
            }
            Ok(())
        })
    }
}
