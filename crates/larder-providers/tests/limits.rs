//! The limits layer over real HTTP: Retry-After, bounded retries, which errors are retried,
//! concurrency, requests per minute, timeouts, and real concurrency in the mock itself.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use larder_providers::mock::{MockConfig, MockServer};
use larder_providers::{ChatRequest, Limits, Provider, ProviderError};
use support::*;

/// Runs `n` identical calls at once; all must succeed. Returns how long they took together.
async fn all_ok_at_once(provider: &Arc<dyn Provider>, n: usize, request: &ChatRequest) -> Duration {
    let started = Instant::now();
    let results = join_all((0..n).map(|_| provider.chat(request))).await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "{failed:?}");
    started.elapsed()
}

#[tokio::test]
async fn rate_limited_calls_wait_for_retry_after_and_do_not_storm() {
    let server = MockServer::start(MockConfig {
        rate_429: 1.0,
        retry_after_secs: 1,
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let provider = openai(
        &server,
        Limits {
            max_retries: 2,
            ..fast_limits()
        },
    );
    let started = Instant::now();
    let error = provider
        .chat(&korean_generation(3))
        .await
        .expect_err("429 every time");
    let elapsed = started.elapsed();
    assert!(
        matches!(error, ProviderError::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(1)),
        "{error:?}"
    );
    assert!(
        elapsed >= Duration::from_secs(2),
        "two waits of Retry-After = 1 s, took {elapsed:?}"
    );
    let stats = server.stats();
    assert_eq!(stats.requests, 3, "1 + max_retries requests, no storm");
    assert_eq!(stats.responses_429, 3);
    assert_eq!(stats.faults.get("rate_429"), Some(&3));
}

#[tokio::test]
async fn retries_are_bounded_without_retry_after_too() {
    let server = MockServer::start(MockConfig {
        rate_429: 1.0,
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let provider = openai(
        &server,
        Limits {
            max_retries: 4,
            ..fast_limits()
        },
    );
    let error = provider
        .chat(&korean_generation(3))
        .await
        .expect_err("429 every time");
    assert!(
        matches!(error, ProviderError::RateLimited { retry_after: None }),
        "{error:?}"
    );
    assert_eq!(server.stats().requests, 5);
    assert!(server.stats().max_requests_per_second <= 5);
}

#[tokio::test]
async fn a_429_then_success_waits_at_least_retry_after() {
    let server = MockServer::start(MockConfig {
        rate_429: 1.0,
        retry_after_secs: 1,
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let provider = openai(&server, fast_limits());
    let started = Instant::now();
    let call = tokio::spawn({
        let provider = provider.clone();
        async move { provider.chat(&korean_generation(4)).await }
    });
    // Heal the mock as soon as it has answered the first 429.
    while server.stats().requests == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.set_config(MockConfig::default());
    let answer = call.await.expect("task").expect("second attempt succeeds");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited {:?}",
        started.elapsed()
    );
    assert!(!answer.content.is_empty());
    let stats = server.stats();
    assert_eq!(
        (stats.requests, stats.responses_429, stats.responses_2xx),
        (2, 1, 1)
    );
}

#[tokio::test]
async fn server_errors_are_retried_client_errors_are_not() {
    let server = MockServer::start(MockConfig {
        rate_5xx: 1.0,
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let provider = openai(
        &server,
        Limits {
            max_retries: 3,
            ..fast_limits()
        },
    );
    let error = provider
        .chat(&korean_generation(3))
        .await
        .expect_err("5xx every time");
    assert!(
        matches!(
            error,
            ProviderError::Http {
                status: 500 | 503,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.retryable());
    assert_eq!(server.stats().requests, 4, "1 + max_retries");
    assert_eq!(server.stats().responses_5xx, 4);

    // Heal after the first 5xx: the retry succeeds.
    let before = server.stats().requests;
    let call = tokio::spawn({
        let provider = provider.clone();
        async move { provider.chat(&korean_generation(3)).await }
    });
    while server.stats().requests == before {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.set_config(MockConfig::default());
    call.await
        .expect("task")
        .expect("retry after a 5xx succeeds");

    // A temperature the server rejects is a 400: one request, no retry.
    let before = server.stats().requests;
    let mut bad = korean_generation(3);
    bad.temperature = Some(5.0);
    let error = provider.chat(&bad).await.expect_err("400");
    assert!(
        matches!(error, ProviderError::Http { status: 400, .. }),
        "{error:?}"
    );
    assert!(!error.retryable());
    assert_eq!(server.stats().requests, before + 1, "400 is not retried");
}

#[tokio::test]
async fn concurrency_limit_holds_in_flight_requests() {
    let server = MockServer::start(MockConfig {
        latency_ms: 200,
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let provider = openai(
        &server,
        Limits {
            concurrency: 2,
            ..fast_limits()
        },
    );
    let elapsed = all_ok_at_once(&provider, 6, &korean_generation(3)).await;
    assert!(
        elapsed >= Duration::from_millis(600),
        "6 calls, 2 at a time, 200 ms each: {elapsed:?}"
    );
    let stats = server.stats();
    assert_eq!(stats.max_in_flight, 2, "never more than 2 in flight");
    assert_eq!(stats.requests, 6);
}

#[tokio::test]
async fn requests_per_minute_spaces_requests_evenly() {
    let server = MockServer::start(MockConfig::default())
        .await
        .expect("mock");
    let provider = openai(
        &server,
        Limits {
            requests_per_minute: 120,
            ..fast_limits()
        },
    );
    let elapsed = all_ok_at_once(&provider, 5, &korean_generation(2)).await;
    // 120/min is one every 500 ms: the first at once, four more 500 ms apart.
    assert!(
        elapsed >= Duration::from_millis(1_950),
        "5 calls at 2/s took {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(4),
        "but not much longer: {elapsed:?}"
    );
    assert!(
        server.stats().max_requests_per_second <= 3,
        "{:?}",
        server.stats()
    );
}

#[tokio::test]
async fn slow_answers_time_out() {
    let server = MockServer::start(MockConfig {
        latency_ms: 2_000,
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let provider = openai(
        &server,
        Limits {
            timeout_ms: 150,
            max_retries: 0,
            ..fast_limits()
        },
    );
    let started = Instant::now();
    let error = provider
        .chat(&korean_generation(3))
        .await
        .expect_err("timeout");
    assert!(
        matches!(error, ProviderError::Timeout(d) if d == Duration::from_millis(150)),
        "{error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1_000),
        "gave up early: {:?}",
        started.elapsed()
    );
    assert!(error.retryable());
    // The timed-out request is dropped client-side; the mock notices and stops counting it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.stats().in_flight, 0);
}

#[tokio::test]
async fn timeouts_are_retried_up_to_the_limit() {
    let server = MockServer::start(MockConfig {
        latency_ms: 1_000,
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let provider = openai(
        &server,
        Limits {
            timeout_ms: 100,
            max_retries: 2,
            ..fast_limits()
        },
    );
    let error = provider
        .chat(&korean_generation(3))
        .await
        .expect_err("timeout");
    assert!(matches!(error, ProviderError::Timeout(_)), "{error:?}");
    assert_eq!(server.stats().requests, 3);
}

#[tokio::test]
async fn sixty_four_concurrent_calls_are_served_concurrently() {
    let server = MockServer::start(MockConfig {
        latency_ms: 500,
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let provider = openai(
        &server,
        Limits {
            concurrency: 64,
            ..fast_limits()
        },
    );
    let elapsed = all_ok_at_once(&provider, 64, &korean_generation(5)).await;
    assert!(
        elapsed < Duration::from_secs(4),
        "64 × 500 ms took {elapsed:?} (serial would be 32 s)"
    );
    assert!(server.stats().max_in_flight >= 32, "{:?}", server.stats());
}
