//! Opening the database: URL parsing, the pool, SQLite pragmas and the schema.

use std::str::FromStr;
use std::time::{Duration, Instant};

use larder_url::DbUrl;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Any, AnyPool, ConnectOptions, Connection, Executor, Row, Transaction};
use tracing::info;

use crate::error::{is_sqlite_busy, DbError, Result};

/// How long SQLite waits for another connection's (or process's) write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a call waits for a free pooled connection before reporting `Unavailable`.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pool sizes. SQLite serialises writers anyway; WAL lets the other connections read meanwhile.
const SQLITE_MAX_CONNECTIONS: u32 = 8;
const POSTGRES_MAX_CONNECTIONS: u32 = 10;
/// Per-connection SQLite settings. `synchronous=FULL` (not NORMAL) because feedback must be on
/// disk before the HTTP answer; in WAL mode that costs one fsync of the WAL per commit.
const SQLITE_PRAGMAS: [&str; 3] = [
    "PRAGMA busy_timeout = 5000",
    "PRAGMA synchronous = FULL",
    "PRAGMA foreign_keys = ON",
];

/// The schema this build writes. Bump it (and migrate in [`Db::create_schema`]) on changes.
pub(crate) const SCHEMA_VERSION: i64 = 1;
/// Key of the PostgreSQL advisory lock that serialises schema creation between processes.
const SCHEMA_LOCK_KEY: i64 = 0x6c61_7264_6572; // "larder"

/// Portable DDL: TEXT, BIGINT (unix ms, counters) and DOUBLE PRECISION mean the same on SQLite
/// and PostgreSQL and map onto sqlx's `Any` types. There is no foreign key from items to
/// categories on purpose: items are written by pipeline workers that may run before the
/// category row exists elsewhere; evaluations and feedback must name a real item.
const SCHEMA: [&str; 9] = [
    "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS categories (
        name TEXT NOT NULL PRIMARY KEY,
        description TEXT,
        locale TEXT,
        created_at_ms BIGINT NOT NULL,
        last_generation_ms BIGINT
    )",
    "CREATE TABLE IF NOT EXISTS items (
        id TEXT NOT NULL PRIMARY KEY,
        category TEXT NOT NULL,
        text TEXT NOT NULL,
        norm TEXT NOT NULL,
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'active', 'rejected')),
        reason TEXT,
        impressions BIGINT NOT NULL DEFAULT 0,
        weighted_impressions DOUBLE PRECISION NOT NULL DEFAULT 0.0,
        selections BIGINT NOT NULL DEFAULT 0
    )",
    "CREATE INDEX IF NOT EXISTS items_category_status ON items (category, status)",
    "CREATE TABLE IF NOT EXISTS evaluations (
        item_id TEXT NOT NULL REFERENCES items (id),
        evaluator TEXT NOT NULL,
        model TEXT NOT NULL,
        score DOUBLE PRECISION NOT NULL,
        reason TEXT,
        created_at_ms BIGINT NOT NULL,
        PRIMARY KEY (item_id, evaluator)
    )",
    "CREATE TABLE IF NOT EXISTS feedback (
        category TEXT NOT NULL,
        item_id TEXT NOT NULL REFERENCES items (id),
        kind TEXT NOT NULL CHECK (kind IN ('impression', 'select')),
        position BIGINT NOT NULL,
        weight DOUBLE PRECISION NOT NULL,
        at_ms BIGINT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS feedback_category ON feedback (category)",
    "CREATE INDEX IF NOT EXISTS feedback_item ON feedback (item_id)",
    // Daily spend per provider (budget.rs): every process on this DB draws on one budget.
    "CREATE TABLE IF NOT EXISTS provider_spend (
        provider TEXT NOT NULL,
        day BIGINT NOT NULL,
        tokens BIGINT NOT NULL,
        requests BIGINT NOT NULL,
        PRIMARY KEY (provider, day)
    )",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// Larder's main database: categories, items, evaluations and feedback.
///
/// Cheap to clone: clones share one connection pool.
#[derive(Debug, Clone)]
pub struct Db {
    pub(crate) pool: AnyPool,
    pub(crate) backend: Backend,
}

impl Db {
    /// "sqlite://path/to/file.db" (created if missing, parent dirs too), "sqlite::memory:",
    /// "postgres://…"/"postgresql://…". Creates the schema.
    pub async fn connect(url: &DbUrl) -> Result<Db> {
        sqlx::any::install_default_drivers();
        let (pool, backend) = match url {
            DbUrl::Postgres(url) => {
                let pool = AnyPoolOptions::new()
                    .max_connections(POSTGRES_MAX_CONNECTIONS)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect(url)
                    .await
                    .map_err(connect_error)?;
                (pool, Backend::Postgres)
            }
            DbUrl::SqliteMemory => {
                // Every new connection to `:memory:` is a new, empty database, so the pool holds
                // exactly one connection and never closes it.
                let pool = sqlite_pool_options()
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connect("sqlite::memory:")
                    .await
                    .map_err(connect_error)?;
                (pool, Backend::Sqlite)
            }
            DbUrl::SqliteFile(url) => {
                let options = SqliteConnectOptions::from_str(url).map_err(DbError::from)?;
                let options = prepare_sqlite_file(options).await?;
                let pool = sqlite_pool_options()
                    .max_connections(SQLITE_MAX_CONNECTIONS)
                    .connect(options.to_url_lossy().as_str())
                    .await
                    .map_err(connect_error)?;
                (pool, Backend::Sqlite)
            }
        };
        let db = Db { pool, backend };
        db.create_schema().await?;
        info!(
            kind = db.kind(),
            schema_version = SCHEMA_VERSION,
            "database ready"
        );
        Ok(db)
    }

    /// "sqlite" | "postgres".
    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    pub async fn ping(&self) -> Result<()> {
        let row: AnyRow = sqlx::query("SELECT CAST(1 AS BIGINT)")
            .fetch_one(&self.pool)
            .await?;
        // Decoding proves a full round trip, not just a checked-out connection.
        let one: i64 = row.try_get(0)?;
        if one == 1 {
            Ok(())
        } else {
            Err(DbError::Query(format!("ping answered {one}")))
        }
    }

    /// A transaction for writing. On SQLite it is `BEGIN IMMEDIATE`: it takes the write lock up
    /// front (waiting up to the busy timeout), so a transaction that reads before it writes can
    /// never fail with SQLITE_BUSY_SNAPSHOT when another process wrote in between.
    pub(crate) async fn write_tx(&self) -> Result<Transaction<'static, Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Create missing tables and indexes and check the stored schema version.
    async fn create_schema(&self) -> Result<()> {
        let mut tx = self.write_tx().await?;
        if self.backend == Backend::Postgres {
            // Concurrent `CREATE TABLE IF NOT EXISTS` can still collide in PostgreSQL's catalog
            // when workers start together; the lock lasts until commit. The COUNT wrapper exists
            // because the function returns `void`, which sqlx's Any driver cannot decode.
            sqlx::query("SELECT COUNT(*) FROM (SELECT pg_advisory_xact_lock($1)) AS l")
                .bind(SCHEMA_LOCK_KEY)
                .execute(&mut *tx)
                .await?;
        }
        for statement in SCHEMA {
            // Plain text (no arguments) goes out unprepared, which DDL needs on PostgreSQL.
            (&mut *tx).execute(statement).await?;
        }
        sqlx::query(
            "INSERT INTO schema_version (version) \
             SELECT $1 WHERE NOT EXISTS (SELECT 1 FROM schema_version)",
        )
        .bind(SCHEMA_VERSION)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query("SELECT MAX(version) FROM schema_version")
            .fetch_one(&mut *tx)
            .await?;
        let stored: i64 = row.try_get(0)?;
        if stored > SCHEMA_VERSION {
            return Err(DbError::Query(format!(
                "database schema version {stored} is newer than this build's {SCHEMA_VERSION}"
            )));
        }
        tx.commit().await?;
        Ok(())
    }
}

fn sqlite_pool_options() -> AnyPoolOptions {
    AnyPoolOptions::new()
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                for pragma in SQLITE_PRAGMAS {
                    conn.execute(pragma).await?;
                }
                Ok(())
            })
        })
}

/// Make sure the file exists (parent dirs too) and is in WAL mode; return options for the pool.
///
/// WAL is a property of the file, so it is set once here on a plain SQLite connection: switching
/// the journal mode needs an exclusive lock that SQLite's busy timeout does not wait for, so the
/// switch is retried while another process holds the file.
async fn prepare_sqlite_file(options: SqliteConnectOptions) -> Result<SqliteConnectOptions> {
    let mut path = options.get_filename().to_path_buf();
    if path.is_relative() {
        // The pool re-parses the URL; an absolute path keeps `sqlite://dir/x.db` from turning
        // `dir` into a (lowercased) URL host on the way.
        let cwd = std::env::current_dir()
            .map_err(|e| DbError::Unavailable(format!("current directory: {e}")))?;
        path = cwd.join(path);
    }
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| DbError::Unavailable(format!("create {}: {e}", parent.display())))?;
    }
    let options = options.filename(&path).create_if_missing(true);
    let setup = options
        .clone()
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT);
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        match setup.connect().await {
            Ok(conn) => {
                conn.close().await?;
                return Ok(options);
            }
            Err(e) if is_sqlite_busy(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(connect_error(e)),
        }
    }
}

/// Any failure to open the database is "unavailable", except a malformed URL/configuration.
fn connect_error(error: sqlx::Error) -> DbError {
    match DbError::from(error) {
        DbError::Query(message) => DbError::Unavailable(message),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn urls_are_classified() {
        let url = |s: &str| s.parse::<DbUrl>();
        assert!(matches!(url("sqlite::memory:"), Ok(DbUrl::SqliteMemory)));
        assert!(matches!(
            url("sqlite://?mode=memory"),
            Ok(DbUrl::SqliteMemory)
        ));
        assert!(matches!(url("postgresql://u@h/db"), Ok(DbUrl::Postgres(_))));
        assert!(matches!(url("postgres://h/db"), Ok(DbUrl::Postgres(_))));
        assert!(matches!(
            url("sqlite://data/larder.db"),
            Ok(DbUrl::SqliteFile(_))
        ));
        assert!(url("mysql://h/db").is_err());
        assert!(url("sqlite://").is_err());
        // An option sqlx does not know is a config error when connecting.
        let bad = url("sqlite://x.db?journal=wal").expect("a file URL");
        assert!(matches!(Db::connect(&bad).await, Err(DbError::Config(_))));
    }

    async fn pragma(db: &Db, name: &str) -> String {
        let row = sqlx::query(&format!("PRAGMA {name}"))
            .fetch_one(&db.pool)
            .await
            .expect("pragma");
        row.try_get::<String, _>(0)
            .or_else(|_| row.try_get::<i64, _>(0).map(|v| v.to_string()))
            .expect("pragma value")
    }

    #[tokio::test]
    async fn sqlite_file_is_wal_with_full_sync_in_a_new_subdir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/b/larder.db");
        let db = Db::connect(&DbUrl::sqlite_file(&path))
            .await
            .expect("connect");
        assert!(path.exists());
        assert_eq!(db.kind(), "sqlite");
        assert_eq!(pragma(&db, "journal_mode").await, "wal");
        // 2 = FULL
        assert_eq!(pragma(&db, "synchronous").await, "2");
        assert_eq!(pragma(&db, "busy_timeout").await, "5000");
        assert_eq!(pragma(&db, "foreign_keys").await, "1");
        let version: i64 = sqlx::query("SELECT MAX(version) FROM schema_version")
            .fetch_one(&db.pool)
            .await
            .expect("version")
            .try_get(0)
            .expect("decode");
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[tokio::test]
    async fn unreachable_postgres_is_unavailable() {
        // Port 1 on loopback refuses connections.
        let err = Db::connect(&"postgres://postgres@127.0.0.1:1/nope".parse().expect("url"))
            .await
            .expect_err("no server");
        assert!(matches!(err, DbError::Unavailable(_)), "{err:?}");
    }

    #[tokio::test]
    async fn newer_schema_version_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = DbUrl::sqlite_file(&dir.path().join("v.db"));
        let db = Db::connect(&url).await.expect("connect");
        sqlx::query("UPDATE schema_version SET version = $1")
            .bind(SCHEMA_VERSION + 1)
            .execute(&db.pool)
            .await
            .expect("bump");
        db.pool.close().await;
        let err = Db::connect(&url).await.expect_err("newer schema");
        assert!(matches!(err, DbError::Query(m) if m.contains("newer")));
    }
}
