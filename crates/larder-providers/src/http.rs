//! What the HTTP providers share: secrets read from the environment, one POST-and-decode
//! step that maps statuses to `ProviderError`, `Retry-After` parsing and redaction.

use std::fmt;
use std::time::{Duration, SystemTime};

use rand::Rng;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::de::DeserializeOwned;

use crate::ProviderError;

/// How much of an error body goes into an error message.
const BODY_EXCERPT_CHARS: usize = 300;

/// An API key. Its `Debug` never shows the value, so a derived or hand-written `Debug` of
/// anything holding it stays safe to log.
#[derive(Clone)]
pub(crate) struct Secret(String);

impl Secret {
    #[cfg(test)]
    pub(crate) fn new(value: String) -> Secret {
        Secret(value)
    }

    /// Reads the key from `var` at build time. Errors name the variable, never a value.
    pub(crate) fn from_env(var: &str, provider: &str) -> Result<Secret, ProviderError> {
        match std::env::var(var) {
            Ok(value) if !value.trim().is_empty() => Ok(Secret(value.trim().to_owned())),
            Ok(_) => Err(ProviderError::Config(format!(
                "provider {provider:?}: environment variable {var} is empty"
            ))),
            Err(std::env::VarError::NotPresent) => Err(ProviderError::Config(format!(
                "provider {provider:?}: environment variable {var} is not set"
            ))),
            Err(std::env::VarError::NotUnicode(_)) => Err(ProviderError::Config(format!(
                "provider {provider:?}: environment variable {var} is not valid UTF-8"
            ))),
        }
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// A header value marked sensitive, so hyper/reqwest debug output hides it too.
    pub(crate) fn header(
        &self,
        prefix: &str,
    ) -> Result<reqwest::header::HeaderValue, ProviderError> {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("{prefix}{}", self.0))
            .map_err(|_| {
                ProviderError::Config(
                    "API key contains characters not allowed in an HTTP header".into(),
                )
            })?;
        value.set_sensitive(true);
        Ok(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One client per provider: its pool is sized for the provider's concurrency.
pub(crate) fn client(concurrency: usize) -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(concurrency)
        .build()
        .map_err(|e| ProviderError::Config(format!("cannot build HTTP client: {e}")))
}

/// Sends the request and decodes a 2xx body as `T`. Non-2xx becomes `RateLimited` (429) or
/// `Http` with `Retry-After` and a redacted excerpt of the body.
pub(crate) async fn send_json<T: DeserializeOwned>(
    request: reqwest::RequestBuilder,
    secrets: &[&Secret],
) -> Result<T, ProviderError> {
    let response = request
        .send()
        .await
        .map_err(|e| ProviderError::Transport(redact(&e.to_string(), secrets)))?;
    let status = response.status();
    let retry_after = retry_after(response.headers(), SystemTime::now());
    let body = response
        .bytes()
        .await
        .map_err(|e| ProviderError::Transport(redact(&e.to_string(), secrets)))?;
    if status.as_u16() == 429 {
        return Err(ProviderError::RateLimited { retry_after });
    }
    if !status.is_success() {
        return Err(ProviderError::Http {
            status: status.as_u16(),
            retry_after,
            message: redact(&excerpt(&String::from_utf8_lossy(&body)), secrets),
        });
    }
    serde_json::from_slice(&body).map_err(|e| {
        ProviderError::BadResponse(redact(
            &format!(
                "{e}; body starts {:?}",
                excerpt(&String::from_utf8_lossy(&body))
            ),
            secrets,
        ))
    })
}

/// `Retry-After` as delta-seconds or an HTTP date (RFC 9110 §10.2.3).
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    parse_retry_after(value, now)
}

pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    // A date in the past means "now".
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A fresh random id for `X-NCP-CLOVASTUDIO-REQUEST-ID`: lets CLOVA support find one call.
pub(crate) fn request_id() -> String {
    let n: u128 = rand::rng().random();
    format!("{n:032x}")
}

/// Rounds an `f32` sampling value to two decimals so `0.9` is sent as `0.9`, not
/// `0.8999999761581421` (CLOVA documents two decimals).
pub(crate) fn two_decimals(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

fn excerpt(text: &str) -> String {
    let mut out: String = text.chars().take(BODY_EXCERPT_CHARS).collect();
    if text.chars().nth(BODY_EXCERPT_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// Servers sometimes echo request headers in error bodies; never let a key through.
fn redact(text: &str, secrets: &[&Secret]) -> String {
    secrets
        .iter()
        .filter(|s| !s.0.is_empty())
        .fold(text.to_owned(), |acc, s| {
            acc.replace(s.expose(), "<redacted>")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(120));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(120))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(120));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn secrets_are_redacted() {
        let key = Secret("sk-very-secret".into());
        assert_eq!(format!("{key:?}"), "<redacted>");
        assert_eq!(
            redact("bad key sk-very-secret given", &[&key]),
            "bad key <redacted> given"
        );
        let header = key.header("Bearer ").expect("ascii key");
        assert!(header.is_sensitive());
        assert!(!format!("{header:?}").contains("sk-very-secret"));
    }

    #[test]
    fn excerpt_cuts_on_char_boundaries() {
        let long = "가".repeat(400);
        let cut = excerpt(&long);
        assert_eq!(cut.chars().count(), BODY_EXCERPT_CHARS + 1);
        assert_eq!(excerpt("short"), "short");
        assert_eq!(two_decimals(0.9f32 as f64), 0.9);
        assert_eq!(request_id().len(), 32);
        assert_ne!(request_id(), request_id());
    }
}
