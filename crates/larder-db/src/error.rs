//! The crate's one error type and how sqlx errors map onto it.

use sqlx::error::DatabaseError;
use sqlx::sqlite::SqliteError;

pub type Result<T> = std::result::Result<T, DbError>;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unknown item {0:?} in category {1:?}")]
    UnknownItem(String, String),
    /// Connection, IO, pool exhaustion, or a lock held past the busy timeout: worth retrying.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("bad database URL: {0}")]
    Config(String),
    #[error("database error: {0}")]
    Query(String),
}

impl From<larder_url::UrlError> for DbError {
    fn from(error: larder_url::UrlError) -> Self {
        DbError::Config(error.0)
    }
}

impl From<sqlx::Error> for DbError {
    fn from(error: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match &error {
            E::Configuration(_) => DbError::Config(error.to_string()),
            E::Io(_)
            | E::Tls(_)
            | E::Protocol(_)
            | E::PoolTimedOut
            | E::PoolClosed
            | E::WorkerCrashed => DbError::Unavailable(error.to_string()),
            E::Database(db) if is_transient(db.as_ref()) => DbError::Unavailable(error.to_string()),
            _ => DbError::Query(error.to_string()),
        }
    }
}

/// SQLite primary result codes (the low byte of the extended code sqlx reports).
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;
const SQLITE_IOERR: i64 = 10;
const SQLITE_FULL: i64 = 13;
const SQLITE_CANTOPEN: i64 = 14;

/// True for SQLite's "database is locked"/"busy" (another writer held the lock longer than the
/// busy timeout): the operation may succeed when retried.
pub(crate) fn is_sqlite_busy(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => sqlite_code(db.as_ref())
            .is_some_and(|c| matches!(c & 0xff, SQLITE_BUSY | SQLITE_LOCKED)),
        _ => false,
    }
}

fn sqlite_code(db: &dyn DatabaseError) -> Option<i64> {
    db.try_downcast_ref::<SqliteError>()?;
    db.code()?.parse().ok()
}

/// Errors the server should report as "unavailable" rather than as a bad query: lock timeouts and
/// IO trouble on SQLite; PostgreSQL SQLSTATE classes 08 (connection), 53 (resources) and 57P
/// (server shutting down / starting).
fn is_transient(db: &dyn DatabaseError) -> bool {
    if let Some(code) = sqlite_code(db) {
        return matches!(
            code & 0xff,
            SQLITE_BUSY | SQLITE_LOCKED | SQLITE_IOERR | SQLITE_FULL | SQLITE_CANTOPEN
        );
    }
    db.code()
        .is_some_and(|c| c.starts_with("08") || c.starts_with("53") || c.starts_with("57P"))
}
