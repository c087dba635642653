//! Bearer-token auth for `/v1`: write tokens may do anything, read tokens may GET and run
//! batch lookups (a POST that only reads). Every request also gets its [`Caller`]: the key its
//! category registrations are rate-limited by.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use crate::config::Auth;
use crate::error::ApiError;
use crate::state::AppState;

/// Who sent a request: `write:N` / `read:N` (the token's position in the configuration, so the
/// key never holds a secret), else the client's address, else `anonymous`.
#[derive(Debug, Clone)]
pub struct Caller(pub String);

pub async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let reads = matches!(*req.method(), Method::GET | Method::HEAD)
        || (req.method() == Method::POST && req.uri().path().ends_with("/lookup"));
    let caller = match check(&state.config.auth, token, reads)? {
        Some(key) => key,
        None => req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(|| "anonymous".to_owned(), |c| c.0.ip().to_string()),
    };
    req.extensions_mut().insert(Caller(caller));
    Ok(next.run(req).await)
}

/// Whether a request carrying `authorization` (the header's or the gRPC metadata's value,
/// `Bearer <token>`) may go on: anything with a write token, only reads with a read token,
/// anything when no token is configured. On success, the token's key (`write:N`, `read:N`),
/// or `None` when auth is off.
///
/// Tokens are compared in constant time, and every configured token is compared, so the
/// answer's timing tells nothing about how much of a guess matched or which token it was.
pub fn check(
    auth: &Auth,
    authorization: Option<&str>,
    reads: bool,
) -> Result<Option<String>, ApiError> {
    if !auth.is_on() {
        return Ok(None);
    }
    let token = authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else {
        return Err(ApiError::Unauthorized(
            "missing Authorization: Bearer <token> header".into(),
        ));
    };
    if let Some(n) = position(&auth.write_tokens, token) {
        return Ok(Some(format!("write:{n}")));
    }
    if let Some(n) = position(&auth.read_tokens, token) {
        if reads {
            return Ok(Some(format!("read:{n}")));
        }
        return Err(ApiError::Forbidden(
            "this token is read-only and cannot write".into(),
        ));
    }
    Err(ApiError::Unauthorized("unknown token".into()))
}

/// The position of `token` in `tokens`, comparing with every one in constant time.
fn position(tokens: &[String], token: &str) -> Option<usize> {
    let mut found = None;
    for (n, candidate) in tokens.iter().enumerate() {
        if bool::from(candidate.as_bytes().ct_eq(token.as_bytes())) && found.is_none() {
            found = Some(n);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth {
            write_tokens: vec!["w-one".into(), "w-two".into()],
            read_tokens: vec!["r-one".into()],
        }
    }

    #[test]
    fn tokens_name_their_caller_and_read_tokens_only_read() {
        let auth = auth();
        let key = check(&auth, Some("Bearer w-two"), false).expect("write token writes");
        assert_eq!(key.as_deref(), Some("write:1"));
        let key = check(&auth, Some("Bearer r-one"), true).expect("read token reads");
        assert_eq!(key.as_deref(), Some("read:0"));
        assert!(matches!(
            check(&auth, Some("Bearer r-one"), false),
            Err(ApiError::Forbidden(_))
        ));
        for bad in [
            None,
            Some("w-one"),
            Some("Bearer w-on"),
            Some("Bearer w-one2"),
        ] {
            assert!(matches!(
                check(&auth, bad, true),
                Err(ApiError::Unauthorized(_))
            ));
        }
        assert_eq!(
            check(&Auth::default(), None, false).expect("auth off"),
            None
        );
    }
}
