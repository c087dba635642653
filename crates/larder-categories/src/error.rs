//! What the category domain can fail with. The HTTP crate maps it to status codes in its one
//! error mapping.

#[derive(Debug, thiserror::Error)]
pub enum CategoriesError {
    /// The request breaks a rule of the domain (a name too long, an unknown item id).
    #[error("{0}")]
    BadRequest(String),
    /// More of something than the domain allows in one request.
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    NotFound(String),
    /// A client made too many new categories; it may try again after `retry_after`.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: std::time::Duration,
    },
    #[error(transparent)]
    Db(#[from] larder_db::DbError),
    #[error(transparent)]
    Store(#[from] larder_store::StoreError),
    /// The pipeline's queue did not take a job.
    #[error("pipeline queue: {0}")]
    Queue(#[from] larder_broker::BrokerError),
}

pub type Result<T, E = CategoriesError> = std::result::Result<T, E>;
