use thiserror::Error;

/// Everything that can go wrong inside the store crate. The server maps these to HTTP in
/// exactly one place (`larder-server/src/error.rs`).
#[derive(Debug, Error)]
pub enum StoreError {
    /// The backend could not be reached or answered with an error.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The backup DB could not take a write, so the write was refused (reads carry on).
    #[error("backup DB unavailable, so writes are refused until it answers (reads carry on): {0}")]
    BackupUnavailable(String),
    /// A value read back from the store does not have the shape the schema promises.
    #[error("corrupt value for {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// A bad store URL or backend option.
    #[error("invalid store configuration: {0}")]
    Config(String),
    /// A vector that cannot be encoded (wrong length, NaN/Inf, overflow).
    #[error(transparent)]
    Codec(#[from] crate::codec::CodecError),
}

impl From<redis::RedisError> for StoreError {
    fn from(error: redis::RedisError) -> Self {
        StoreError::Unavailable(error.to_string())
    }
}

impl From<redis::ParsingError> for StoreError {
    fn from(error: redis::ParsingError) -> Self {
        StoreError::Corrupt {
            key: "redis reply".into(),
            reason: error.to_string(),
        }
    }
}

impl From<redb::Error> for StoreError {
    fn from(error: redb::Error) -> Self {
        StoreError::Unavailable(format!("embedded store: {error}"))
    }
}

macro_rules! redb_error {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(error: $t) -> Self {
                StoreError::from(redb::Error::from(error))
            }
        }
    )*};
}
redb_error!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
