//! Bearer-token auth for `/v1`: write tokens may do anything, read tokens may GET and run
//! batch lookups (a POST that only reads).

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::Response;

use crate::config::Auth;
use crate::error::ApiError;
use crate::state::AppState;

pub async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let reads = matches!(*req.method(), Method::GET | Method::HEAD)
        || (req.method() == Method::POST && req.uri().path().ends_with("/lookup"));
    check(&state.config.auth, token, reads)?;
    Ok(next.run(req).await)
}

/// Whether a request carrying `authorization` (the header's or the gRPC metadata's value,
/// `Bearer <token>`) may go on: anything with a write token, only reads with a read token,
/// anything when no token is configured.
pub fn check(auth: &Auth, authorization: Option<&str>, reads: bool) -> Result<(), ApiError> {
    if auth.write_tokens.is_empty() && auth.read_tokens.is_empty() {
        return Ok(());
    }
    let token = authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else {
        return Err(ApiError::Unauthorized(
            "missing Authorization: Bearer <token> header".into(),
        ));
    };
    if auth.write_tokens.iter().any(|t| t == token) {
        return Ok(());
    }
    if auth.read_tokens.iter().any(|t| t == token) {
        if reads {
            return Ok(());
        }
        return Err(ApiError::Forbidden(
            "this token is read-only and cannot write".into(),
        ));
    }
    Err(ApiError::Unauthorized("unknown token".into()))
}
