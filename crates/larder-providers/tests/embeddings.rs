//! Embeddings over real HTTP against the mock server, through `build()`-made providers: the
//! OpenAI wire, the mock's `POST /v1/embeddings`, the limits layer (retries, budget, timeout)
//! applied to embed calls, the simulated provider, and chat-only providers refusing.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use larder_providers::embedding::cosine;
use larder_providers::mock::{MockConfig, MockServer};
use larder_providers::{
    build, hashed_embedding, Latency, Limits, Provider, ProviderConfig, ProviderError,
    ProviderKind, DEFAULT_EMBEDDING_DIM,
};
use serde_json::{json, Value};
use support::*;

fn strings(texts: &[&str]) -> Vec<String> {
    texts.iter().map(|t| (*t).to_owned()).collect()
}

fn norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt()
}

#[tokio::test]
async fn openai_embed_answers_the_mocks_hashed_vectors() {
    let server = MockServer::start(MockConfig::default())
        .await
        .expect("mock");
    set_key("LARDER_TEST_EMBED_OPENAI_KEY", "sk-embed");
    let provider = build(&openai_config(
        &server,
        Some("LARDER_TEST_EMBED_OPENAI_KEY"),
        fast_limits(),
    ))
    .expect("provider");
    let texts = strings(&["이사 준비 체크리스트", "Enable 2FA", "x"]);
    let answer = provider.embed(&texts).await.expect("embed");
    assert_eq!(answer.vectors.len(), 3);
    for (text, vector) in texts.iter().zip(&answer.vectors) {
        assert_eq!(vector.len(), DEFAULT_EMBEDDING_DIM);
        assert!((norm(vector) - 1.0).abs() < 1e-5, "{text}: {vector:?}");
        assert_eq!(
            *vector,
            hashed_embedding(text, DEFAULT_EMBEDDING_DIM),
            "{text}"
        );
    }
    // About 4 characters a token, at least 1 a text: 3 + 3 + 1.
    assert_eq!(answer.usage.prompt_tokens, 7);
    assert_eq!(answer.usage.completion_tokens, 0);

    let stats = server.stats();
    assert_eq!(stats.by_route.get("openai-embeddings"), Some(&1));
    assert_eq!((stats.requests, stats.responses_2xx), (1, 1));

    // No texts: no vectors, and no request.
    let none = provider.embed(&[]).await.expect("empty embed");
    assert!(none.vectors.is_empty());
    assert_eq!(none.usage.prompt_tokens, 0);
    assert_eq!(server.stats().requests, 1);
}

#[tokio::test]
async fn similar_texts_are_closer_than_unrelated_ones() {
    let server = MockServer::start(MockConfig::default())
        .await
        .expect("mock");
    let provider = openai(&server, fast_limits());
    let v = provider
        .embed(&strings(&[
            "이사 준비 체크리스트",
            "이사 준비 목록",
            "이사 준비",
            "enable 2FA",
        ]))
        .await
        .expect("embed")
        .vectors;
    let similar = cosine(&v[0], &v[1]);
    let unrelated = cosine(&v[2], &v[3]);
    assert!(
        similar > unrelated + 0.2 && similar > 0.4,
        "similar {similar}, unrelated {unrelated}"
    );
    assert!((cosine(&v[0], &v[0]) - 1.0).abs() < 1e-5);
}

async fn post(url: &str, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(url).body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn mock_embeddings_route_speaks_openai() {
    let server = MockServer::start(MockConfig::default())
        .await
        .expect("mock");
    let url = format!("{}/embeddings", server.openai_base_url());

    // One string, and a chosen dimension.
    let (status, body) = post(
        &url,
        &[("Authorization", "Bearer k")],
        r#"{"model":"text-embedding-3-small","input":"이사 준비","dimensions":256}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "text-embedding-3-small");
    assert_eq!(body["data"][0]["object"], "embedding");
    assert_eq!(body["data"][0]["index"], 0);
    let vector: Vec<f32> =
        serde_json::from_value(body["data"][0]["embedding"].clone()).expect("floats");
    assert_eq!(vector, hashed_embedding("이사 준비", 256));
    assert_eq!(body["usage"]["prompt_tokens"], 2);
    assert_eq!(body["usage"]["total_tokens"], 2);

    // A list, in order, default dimension.
    let (status, body) = post(&url, &[], r#"{"model":"m","input":["a","b c"]}"#).await;
    assert_eq!(status, 200, "{body}");
    let data = body["data"].as_array().expect("data list");
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["index"], 1);
    assert_eq!(
        data[1]["embedding"].as_array().map(Vec::len),
        Some(DEFAULT_EMBEDDING_DIM)
    );

    let rejected = [
        "not json",
        r#"{"input":"a"}"#,
        r#"{"model":"","input":"a"}"#,
        r#"{"model":"m","input":[]}"#,
        r#"{"model":"m","input":[""]}"#,
        r#"{"model":"m","input":[1,2,3]}"#,
        r#"{"model":"m","input":{"text":"a"}}"#,
        r#"{"model":"m","input":"a","dimensions":0}"#,
        r#"{"model":"m","input":"a","dimensions":4097}"#,
        r#"{"model":"m","input":"a","dimensions":1.5}"#,
        r#"{"model":"m","input":"a","dimensions":"64"}"#,
        r#"{"model":"m","input":"a","encoding_format":"base64"}"#,
    ];
    for bad in rejected {
        let (status, body) = post(&url, &[], bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{bad}");
        assert!(body["error"]["message"].is_string(), "{bad}");
    }
    let (status, body) = post(&url, &[("Authorization", "Basic abc")], "{}").await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let (status, _) = post(&url, &[], r#"{"model":"m","input":"a","dimensions":4096}"#).await;
    assert_eq!(status, 200);

    let stats = server.stats();
    assert_eq!(stats.by_status.get(&400), Some(&(rejected.len() as u64)));
    assert_eq!(
        stats.by_route.get("openai-embeddings"),
        Some(&(rejected.len() as u64 + 4))
    );
    assert_eq!(stats.in_flight, 0);

    let root = reqwest::get(server.base_url())
        .await
        .expect("GET /")
        .text()
        .await
        .expect("text");
    assert!(root.contains("/v1/embeddings"), "{root}");
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried() {
    let server = MockServer::start(MockConfig {
        rate_429: 1.0,
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
    let texts = strings(&["이사 준비"]);
    let error = provider.embed(&texts).await.expect_err("429 every time");
    assert!(
        matches!(error, ProviderError::RateLimited { .. }),
        "{error:?}"
    );
    let stats = server.stats();
    assert_eq!(
        (stats.requests, stats.responses_429),
        (4, 4),
        "1 + max_retries"
    );

    // Heal after the next 429: the retry answers.
    heals_after_one_fault(&server, &provider, &texts).await;

    server.set_config(MockConfig {
        rate_5xx: 1.0,
        ..MockConfig::default()
    });
    let before = server.stats().requests;
    let error = provider.embed(&texts).await.expect_err("5xx every time");
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
    assert_eq!(server.stats().requests, before + 4);
    heals_after_one_fault(&server, &provider, &texts).await;

    // A request the server rejects (400) is not retried.
    let before = server.stats().requests;
    let error = provider
        .embed(&strings(&["fine", ""]))
        .await
        .expect_err("empty input string is a 400");
    assert!(
        matches!(error, ProviderError::Http { status: 400, .. }),
        "{error:?}"
    );
    assert_eq!(server.stats().requests, before + 1);
}

/// Starts an embed call against a faulty mock, heals the mock once the first attempt has
/// been answered, and expects the retry to succeed.
async fn heals_after_one_fault(
    server: &MockServer,
    provider: &Arc<dyn Provider>,
    texts: &[String],
) {
    let before = server.stats().requests;
    let faulty = server.stats().responses_2xx;
    let call = tokio::spawn({
        let provider = provider.clone();
        let texts = texts.to_vec();
        async move { provider.embed(&texts).await }
    });
    while server.stats().requests == before {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.set_config(MockConfig::default());
    let answer = call.await.expect("task").expect("the retry answers");
    assert_eq!(answer.vectors.len(), texts.len());
    let stats = server.stats();
    assert_eq!(stats.responses_2xx, faulty + 1);
    assert!(stats.requests >= before + 2, "{stats:?}");
}

#[tokio::test]
async fn slow_embeddings_time_out() {
    // Embeddings take a tenth of latency_ms: 300 ms here.
    let server = MockServer::start(MockConfig {
        latency_ms: 3_000,
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let provider = openai(
        &server,
        Limits {
            timeout_ms: 50,
            max_retries: 1,
            ..fast_limits()
        },
    );
    let error = provider.embed(&strings(&["a"])).await.expect_err("timeout");
    assert!(
        matches!(error, ProviderError::Timeout(d) if d == Duration::from_millis(50)),
        "{error:?}"
    );
    assert_eq!(server.stats().requests, 2, "timeouts are retried");
}

#[tokio::test]
async fn the_daily_budget_stops_embed_calls() {
    let server = MockServer::start(MockConfig::default())
        .await
        .expect("mock");
    let by_requests = openai(
        &server,
        Limits {
            requests_per_day: 2,
            ..fast_limits()
        },
    );
    let texts = strings(&["이사 준비 체크리스트", "이사 준비 목록"]);
    by_requests.embed(&texts).await.expect("first");
    by_requests.embed(&texts).await.expect("second");
    let error = by_requests.embed(&texts).await.expect_err("budget spent");
    assert!(
        matches!(&error, ProviderError::BudgetSpent(m) if m.contains("requests_per_day")),
        "{error:?}"
    );
    assert!(!error.retryable());
    assert_eq!(server.stats().requests, 2, "no HTTP once spent");

    // 3 + 2 = 5 prompt tokens a call: 5, then 10 ≥ 8 stops the third.
    let by_tokens = openai(
        &server,
        Limits {
            tokens_per_day: 8,
            ..fast_limits()
        },
    );
    by_tokens.embed(&texts).await.expect("5 tokens");
    by_tokens.embed(&texts).await.expect("starts under 8");
    let error = by_tokens.embed(&texts).await.expect_err("budget spent");
    assert!(
        matches!(&error, ProviderError::BudgetSpent(m) if m.contains("10 of limits.tokens_per_day = 8")),
        "{error:?}"
    );
    assert_eq!(server.stats().requests, 4);
}

#[tokio::test]
async fn clova_providers_cannot_embed() {
    let server = MockServer::start(MockConfig::default())
        .await
        .expect("mock");
    set_key("LARDER_TEST_EMBED_CLOVA_V1", "clova-v1-key");
    set_key("LARDER_TEST_EMBED_CLOVA_V3", "clova-v3-key");
    let providers = [
        clova_v1(&server, "LARDER_TEST_EMBED_CLOVA_V1", None),
        clova_v3(&server, "LARDER_TEST_EMBED_CLOVA_V3"),
    ];
    for provider in &providers {
        let error = provider
            .embed(&strings(&["이사 준비"]))
            .await
            .expect_err("chat only");
        let expected = format!(
            "provider {:?} ({}) cannot embed",
            provider.name(),
            provider.kind()
        );
        assert!(
            matches!(&error, ProviderError::Config(m) if *m == expected),
            "{error:?}"
        );
        assert!(!error.retryable());
    }
    assert_eq!(server.stats().requests, 0, "nothing was sent");
}

fn simulated(latency: Latency) -> Arc<dyn Provider> {
    build(&ProviderConfig {
        name: "sim".into(),
        kind: ProviderKind::Simulated {
            seed: 5,
            model: None,
            latency,
        },
        limits: Limits::default(),
    })
    .expect("simulated provider")
}

#[tokio::test]
async fn simulated_embeds_with_hashed_vectors_and_a_tenth_of_the_latency() {
    let provider = simulated(Latency {
        mean_ms: 1_000,
        jitter: 0.0,
    });
    let texts = strings(&["이사 준비 체크리스트", "enable 2FA", ""]);
    let started = Instant::now();
    let answer = provider.embed(&texts).await.expect("embed");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(100) && elapsed < Duration::from_millis(900),
        "a tenth of 1 s: {elapsed:?}"
    );
    for (text, vector) in texts.iter().zip(&answer.vectors) {
        assert_eq!(*vector, hashed_embedding(text, DEFAULT_EMBEDDING_DIM));
    }
    // 3 + 3 + 1 (at least one a text).
    assert_eq!(answer.usage.prompt_tokens, 7);
    assert_eq!(answer, provider.embed(&texts).await.expect("again"));

    let instant = simulated(Latency {
        mean_ms: 0,
        jitter: 0.0,
    });
    assert_eq!(
        instant.embed(&texts).await.expect("embed").vectors,
        answer.vectors
    );
    assert!(instant.embed(&[]).await.expect("empty").vectors.is_empty());
}

#[tokio::test]
async fn bad_vectors_from_a_server_are_bad_responses() {
    // A server answering fewer vectors than inputs: the mock cannot, so answer by hand.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route(
        "/v1/embeddings",
        axum::routing::post(|| async {
            axum::Json(json!({
                "data": [{"index": 0, "embedding": [0.6, 0.8]}],
                "usage": {"prompt_tokens": 1}
            }))
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let provider = build(&ProviderConfig {
        name: "short".into(),
        kind: ProviderKind::Openai {
            base_url: format!("http://{addr}/v1"),
            model: "m".into(),
            api_key_env: None,
            json_mode: Default::default(),
        },
        limits: fast_limits(),
    })
    .expect("provider");
    let one = provider.embed(&strings(&["a"])).await.expect("one is fine");
    assert_eq!(one.vectors, vec![vec![0.6, 0.8]]);
    assert_eq!(one.usage.prompt_tokens, 1);
    let error = provider
        .embed(&strings(&["a", "b"]))
        .await
        .expect_err("one vector for two texts");
    assert!(
        matches!(&error, ProviderError::BadResponse(m) if m.contains("1 embeddings for 2 inputs")),
        "{error:?}"
    );
}
