use std::time::Duration;

use thiserror::Error;

/// Everything a provider call can fail with. `retryable()` is the one place that decides what
/// the limits layer retries.
///
/// Messages never contain an API key: bodies quoted from a server pass through
/// `http::redact` first, and `Config` names the environment variable, never its value.
#[derive(Debug, Error)]
pub enum ProviderError {
    /// Bad configuration, e.g. a missing API-key environment variable or an empty model.
    #[error("provider configuration: {0}")]
    Config(String),
    /// The server answered 429 (or CLOVA's 42900 code).
    #[error("rate limited by provider{}", retry_after_text(.retry_after))]
    RateLimited { retry_after: Option<Duration> },
    /// Any other non-2xx status. `message` is a short, redacted excerpt of the body.
    #[error("provider answered HTTP {status}{}: {message}", retry_after_text(.retry_after))]
    Http {
        status: u16,
        retry_after: Option<Duration>,
        message: String,
    },
    /// One attempt took longer than `limits.timeout_ms`.
    #[error("provider call timed out after {} ms", .0.as_millis())]
    Timeout(Duration),
    /// Connecting, sending or reading the body failed.
    #[error("provider transport error: {0}")]
    Transport(String),
    /// A 2xx answer that does not decode as the wire format, or a CLOVA envelope whose
    /// `status.code` is not "20000".
    #[error("bad provider response: {0}")]
    BadResponse(String),
    /// The provider's daily budget (`limits.tokens_per_day` / `requests_per_day`) is spent;
    /// it refills at 00:00 UTC.
    #[error("provider budget spent: {0}")]
    BudgetSpent(String),
}

fn retry_after_text(retry_after: &Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(" (retry after {} s)", d.as_secs_f64()),
        None => String::new(),
    }
}

impl ProviderError {
    /// Whether another attempt may succeed: rate limits, timeouts, transport failures,
    /// 408/409/425 and 5xx. Client errors (400, 401, 404, …), bad responses and bad
    /// configuration are not retried, since repeating them only burns quota.
    pub fn retryable(&self) -> bool {
        match self {
            ProviderError::RateLimited { .. }
            | ProviderError::Timeout(_)
            | ProviderError::Transport(_) => true,
            ProviderError::Http { status, .. } => {
                matches!(status, 408 | 409 | 425) || (500..=599).contains(status)
            }
            ProviderError::Config(_)
            | ProviderError::BadResponse(_)
            | ProviderError::BudgetSpent(_) => false,
        }
    }

    /// The server's requested wait before the next attempt, when it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::RateLimited { retry_after } => *retry_after,
            ProviderError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short, stable label for the `kind` label of `larder_provider_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderError::Config(_) => "config",
            ProviderError::RateLimited { .. } => "rate_limited",
            ProviderError::Http { status, .. } if *status >= 500 => "http_5xx",
            ProviderError::Http { .. } => "http_4xx",
            ProviderError::Timeout(_) => "timeout",
            ProviderError::Transport(_) => "transport",
            ProviderError::BadResponse(_) => "bad_response",
            ProviderError::BudgetSpent(_) => "budget",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classification() {
        assert!(ProviderError::RateLimited { retry_after: None }.retryable());
        assert!(ProviderError::Timeout(Duration::from_secs(1)).retryable());
        assert!(ProviderError::Transport("reset".into()).retryable());
        let http = |status| ProviderError::Http {
            status,
            retry_after: None,
            message: String::new(),
        };
        assert!(http(500).retryable());
        assert!(http(503).retryable());
        assert!(http(408).retryable());
        assert!(!http(400).retryable());
        assert!(!http(401).retryable());
        assert!(!http(404).retryable());
        assert!(!ProviderError::BadResponse("x".into()).retryable());
        assert!(!ProviderError::Config("x".into()).retryable());
    }

    #[test]
    fn messages_mention_retry_after() {
        let e = ProviderError::RateLimited {
            retry_after: Some(Duration::from_secs(2)),
        };
        assert_eq!(e.to_string(), "rate limited by provider (retry after 2 s)");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(e.kind(), "rate_limited");
    }
}
