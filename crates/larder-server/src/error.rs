//! The one place where errors become HTTP responses:
//! `{"error": {"code": "<snake_case>", "message": "<sentence>"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use larder_store::codec::CodecError;
use larder_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    /// A schema change that would invalidate stored data (409, code `bad_request`).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    UnknownField(String),
    #[error("{0}")]
    DimensionMismatch(String),
    #[error("{0}")]
    NonFinite(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Unavailable(String),
    /// Too many of something from one client (429, code `rate_limited`, with `Retry-After`).
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: std::time::Duration,
    },
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub(crate) fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "bad_request"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::UnknownField(_) => (StatusCode::BAD_REQUEST, "unknown_field"),
            ApiError::DimensionMismatch(_) => (StatusCode::BAD_REQUEST, "dimension_mismatch"),
            ApiError::NonFinite(_) => (StatusCode::BAD_REQUEST, "non_finite"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "bad_request"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// `413 too_large` when a request carries more than `max` items.
    pub fn check_limit(count: usize, max: usize, what: &str) -> ApiResult<()> {
        if count > max {
            return Err(ApiError::TooLarge(format!(
                "{count} {what}; the limit is {max}"
            )));
        }
        Ok(())
    }

    /// A codec error about the value at `path` (e.g. `entities[3].fields.clip`).
    pub fn codec(path: &str, error: CodecError) -> ApiError {
        match error {
            CodecError::DimensionMismatch { .. } => {
                ApiError::DimensionMismatch(format!("{path}: {error}"))
            }
            CodecError::NonFinite { .. } => ApiError::NonFinite(format!("{path}: {error}")),
            CodecError::BadLength { .. } => ApiError::Internal(format!("{path}: {error}")),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) | StoreError::BackupUnavailable(_) => {
                ApiError::Unavailable(error.to_string())
            }
            StoreError::Codec(e) => ApiError::codec("stored value", e),
            StoreError::Corrupt { .. } | StoreError::Config(_) => {
                ApiError::Internal(error.to_string())
            }
        }
    }
}

impl From<larder_db::DbError> for ApiError {
    fn from(error: larder_db::DbError) -> Self {
        use larder_db::DbError;
        match error {
            DbError::UnknownItem(..) => ApiError::BadRequest(error.to_string()),
            DbError::Unavailable(_) => ApiError::Unavailable(error.to_string()),
            DbError::Config(_) | DbError::Query(_) => ApiError::Internal(error.to_string()),
        }
    }
}

impl From<larder_categories::CategoriesError> for ApiError {
    fn from(error: larder_categories::CategoriesError) -> Self {
        use larder_categories::CategoriesError;
        match error {
            CategoriesError::BadRequest(m) => ApiError::BadRequest(m),
            CategoriesError::TooLarge(m) => ApiError::TooLarge(m),
            CategoriesError::NotFound(m) => ApiError::NotFound(m),
            CategoriesError::RateLimited {
                message,
                retry_after,
            } => ApiError::RateLimited {
                message,
                retry_after,
            },
            CategoriesError::Db(e) => e.into(),
            CategoriesError::Store(e) => e.into(),
            CategoriesError::Queue(e) => ApiError::Unavailable(format!("pipeline queue: {e}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        if status.is_server_error() {
            tracing::warn!(error = %self, code, "request failed");
        }
        let mut response = larder_ops::error_response(status, code, &self.to_string());
        if let ApiError::RateLimited { retry_after, .. } = &self {
            // Whole seconds, rounded up: `Retry-After: 0` would invite an immediate retry.
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
