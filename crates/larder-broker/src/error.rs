use thiserror::Error;

/// Everything that can go wrong in the broker. Callers (pipeline workers) retry `Unavailable`
/// after a pause; the other variants are bugs or bad configuration.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// Redis could not be reached, timed out, or answered a command with an error.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// A bad broker URL or option.
    #[error("invalid broker configuration: {0}")]
    Config(String),
    /// Redis answered with a reply of a shape the stream commands never produce.
    #[error("unexpected reply to {command}: {reason}")]
    Protocol {
        command: &'static str,
        reason: String,
    },
    /// An id passed to `ack` that this broker never hands out.
    #[error("invalid message id {0:?}")]
    InvalidId(String),
}

impl From<larder_store::UrlError> for BrokerError {
    fn from(error: larder_store::UrlError) -> Self {
        BrokerError::Config(error.0)
    }
}

impl From<redis::RedisError> for BrokerError {
    fn from(error: redis::RedisError) -> Self {
        BrokerError::Unavailable(error.to_string())
    }
}

impl From<larder_store::StoreError> for BrokerError {
    /// The store crate's cluster client: a bad URL is configuration, the rest unavailability.
    fn from(error: larder_store::StoreError) -> Self {
        match error {
            larder_store::StoreError::Config(msg) => BrokerError::Config(msg),
            other => BrokerError::Unavailable(other.to_string()),
        }
    }
}
