//! Each wire format over real HTTP against the mock server: generation and evaluation round
//! trips through `build()`-made providers, headers, error shapes, and key redaction.

mod support;

use std::sync::Arc;

use larder_providers::mock::{self, MockConfig, MockServer, MockStats};
use larder_providers::protocol::{GeneratedItems, PickAnswer, ScoreAnswer};
use larder_providers::{
    build, ChatMessage, ChatRequest, Provider, ProviderError, ResponseFormat, Role,
};
use serde_json::Value;
use support::*;

fn is_hangul(s: &str) -> bool {
    s.chars().any(|c| ('\u{AC00}'..='\u{D7A3}').contains(&c))
}

/// Generate 12 Korean items, then score them and pick the best 3, all through `provider`.
async fn round_trip(provider: &Arc<dyn Provider>) {
    let generated = provider
        .chat(&korean_generation(12))
        .await
        .expect("generation call");
    let items: GeneratedItems = serde_json::from_str(&generated.content).expect("items JSON");
    assert_eq!(items.items.len(), 12, "{:?}", items.items);
    assert!(
        items
            .items
            .iter()
            .all(|i| is_hangul(i) && i.chars().count() <= 30),
        "{:?}",
        items.items
    );
    assert!(generated.usage.prompt_tokens > 0 && generated.usage.completion_tokens > 0);

    let scored = provider
        .chat(&score_request("ko", &items.items))
        .await
        .expect("score call");
    let scores: ScoreAnswer = serde_json::from_str(&scored.content).expect("scores JSON");
    assert_eq!(scores.scores.len(), 12);
    assert!(scores
        .scores
        .iter()
        .all(|s| (0.0..=10.0).contains(&s.score)));
    assert!(scores
        .scores
        .iter()
        .all(|s| s.reason.as_deref().is_some_and(is_hangul)));

    let picked = provider
        .chat(&pick_request("ko", &items.items, 3))
        .await
        .expect("pick call");
    let best: PickAnswer = serde_json::from_str(&picked.content).expect("pick JSON");
    assert_eq!(best.best.len(), 3);
    let best_score = scores
        .scores
        .iter()
        .map(|s| s.score)
        .fold(f64::MIN, f64::max);
    let first = scores
        .scores
        .iter()
        .find(|s| s.id == best.best[0].id)
        .expect("picked id exists");
    assert_eq!(
        first.score, best_score,
        "PickBest puts the best-scored item first"
    );
}

#[tokio::test]
async fn openai_round_trip() {
    let server = MockServer::start(MockConfig::default())
        .await
        .expect("mock");
    set_key("LARDER_TEST_OPENAI_KEY", "sk-openai-round-trip");
    let provider = build(&openai_config(
        &server,
        Some("LARDER_TEST_OPENAI_KEY"),
        fast_limits(),
    ))
    .expect("provider");
    assert_eq!(
        (provider.kind(), provider.model(), provider.name()),
        ("openai", "gpt-mock", "mock-openai")
    );
    round_trip(&provider).await;
    let stats = server.stats();
    assert_eq!(stats.by_route.get("openai"), Some(&3));
    assert_eq!(stats.responses_2xx, 3);
    assert_eq!(stats.clova_request_ids, 0);
}

#[tokio::test]
async fn openai_without_key_and_text_format() {
    let server = MockServer::start(MockConfig::default())
        .await
        .expect("mock");
    let provider = openai(&server, fast_limits());
    let request = ChatRequest {
        messages: vec![ChatMessage {
            role: Role::User,
            content: "hello".into(),
        }],
        response: ResponseFormat::Text,
        temperature: None,
        max_tokens: None,
    };
    let answer = provider.chat(&request).await.expect("plain chat");
    assert!(
        answer.content.contains("simulated model"),
        "{}",
        answer.content
    );
    let json = provider
        .chat(&ChatRequest {
            response: ResponseFormat::JsonObject,
            ..request
        })
        .await
        .expect("json chat");
    let value: Value =
        serde_json::from_str(&json.content).expect("JSON when json_object was asked");
    assert!(value["message"].is_string());
}

#[tokio::test]
async fn clova_v1_round_trip_sends_keys_and_request_ids() {
    let server = MockServer::start(MockConfig::default())
        .await
        .expect("mock");
    set_key("LARDER_TEST_CLOVA_V1_KEY", "clova-v1-secret");
    set_key("LARDER_TEST_CLOVA_V1_GW", "clova-gateway-secret");
    let provider = clova_v1(
        &server,
        "LARDER_TEST_CLOVA_V1_KEY",
        Some("LARDER_TEST_CLOVA_V1_GW"),
    );
    assert_eq!(provider.kind(), "clova-v1");
    round_trip(&provider).await;
    let stats = server.stats();
    assert_eq!(stats.by_route.get("clova-v1"), Some(&3));
    assert_eq!(
        stats.clova_request_ids, 3,
        "every CLOVA call carries a request id"
    );
    assert_eq!(stats.responses_4xx, 0, "the mock accepted the key header");
}

#[tokio::test]
async fn clova_v3_round_trip() {
    let server = MockServer::start(MockConfig::default())
        .await
        .expect("mock");
    set_key("LARDER_TEST_CLOVA_V3_KEY", "nv-clova-v3-secret");
    let provider = clova_v3(&server, "LARDER_TEST_CLOVA_V3_KEY");
    assert_eq!(provider.kind(), "clova-v3");
    round_trip(&provider).await;
    let stats = server.stats();
    assert_eq!(stats.by_route.get("clova-v3"), Some(&3));
    assert_eq!(stats.clova_request_ids, 3);
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
async fn mock_checks_headers_and_bodies_in_each_wire_shape() {
    let server = MockServer::start(MockConfig::default())
        .await
        .expect("mock");
    let base = server.base_url();
    let v1 = format!("{base}/testapp/v1/chat-completions/HCX-003");
    let v3 = format!("{base}/v3/chat-completions/HCX-005");
    let openai = format!("{}/chat/completions", server.openai_base_url());
    let good_clova = r#"{"messages":[{"role":"user","content":"hi"}]}"#;

    let (status, body) = post(&v1, &[], good_clova).await;
    assert_eq!(status, 401);
    assert_eq!(body["status"]["code"], "40100");
    let (status, body) = post(&v1, &[("X-NCP-CLOVASTUDIO-API-KEY", "k")], good_clova).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"]["code"], "20000");
    assert!(body["result"]["message"]["content"].is_string());
    assert!(body["result"]["inputLength"].is_u64());

    let (status, body) = post(&v3, &[("X-NCP-CLOVASTUDIO-API-KEY", "k")], good_clova).await;
    assert_eq!(status, 401, "v3 wants Authorization: Bearer");
    assert_eq!(body["status"]["code"], "40100");
    let (status, body) = post(&v3, &[("Authorization", "Bearer k")], good_clova).await;
    assert_eq!(status, 200);
    assert!(body["result"]["usage"]["promptTokens"].is_u64());

    // v3 content may be a list of parts.
    let parts = r#"{"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}"#;
    assert_eq!(
        post(&v3, &[("Authorization", "Bearer k")], parts).await.0,
        200
    );

    let (status, body) = post(&v1, &[("X-NCP-CLOVASTUDIO-API-KEY", "k")], "not json").await;
    assert_eq!(status, 400);
    assert_eq!(body["status"]["code"], "40001");
    let zero_temp = r#"{"messages":[{"role":"user","content":"hi"}],"temperature":0}"#;
    assert_eq!(
        post(&v1, &[("X-NCP-CLOVASTUDIO-API-KEY", "k")], zero_temp)
            .await
            .0,
        400
    );
    let no_messages = r#"{"messages":[]}"#;
    assert_eq!(
        post(&v3, &[("Authorization", "Bearer k")], no_messages)
            .await
            .0,
        400
    );

    let (status, body) = post(&openai, &[], r#"{"messages":[]}"#).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let bad_format = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"xml"}}"#;
    assert_eq!(post(&openai, &[], bad_format).await.0, 400);
    let (status, body) = post(&openai, &[("Authorization", "Basic abc")], bad_format).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_api_key");

    let stats = server.stats();
    assert_eq!(stats.by_status.get(&401), Some(&3));
    assert_eq!(stats.by_status.get(&400), Some(&5));
    assert_eq!(stats.responses_2xx, 3);
    assert_eq!(stats.in_flight, 0);
}

#[tokio::test]
async fn root_and_stats_routes() {
    let server = MockServer::start(MockConfig::default())
        .await
        .expect("mock");
    let root = reqwest::get(server.base_url()).await.expect("GET /");
    assert_eq!(root.status().as_u16(), 200);
    let provider = openai(&server, fast_limits());
    provider
        .chat(&english_generation("new puppy", 3))
        .await
        .expect("chat");
    let stats: MockStats = reqwest::get(format!("{}/stats", server.base_url()))
        .await
        .expect("GET /stats")
        .json()
        .await
        .expect("stats JSON");
    assert_eq!(stats, server.stats());
    assert_eq!(stats.requests, 1);
}

#[tokio::test]
async fn run_serves_until_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(mock::run(listener, MockConfig::default(), async move {
        let _ = rx.await;
    }));
    let root = reqwest::get(format!("http://{addr}/"))
        .await
        .expect("GET /");
    assert_eq!(root.status().as_u16(), 200);
    tx.send(()).expect("server still running");
    let result = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
    assert!(
        matches!(result, Ok(Ok(Ok(())))),
        "run returns Ok after shutdown: {result:?}"
    );
}

#[tokio::test]
async fn api_keys_never_show_in_debug_or_errors() {
    let server = MockServer::start(MockConfig {
        rate_5xx: 1.0,
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    set_key("LARDER_TEST_REDACT_OPENAI", "sk-do-not-leak-1");
    set_key("LARDER_TEST_REDACT_V1", "clova-do-not-leak-2");
    set_key("LARDER_TEST_REDACT_GW", "gateway-do-not-leak-3");
    set_key("LARDER_TEST_REDACT_V3", "nv-do-not-leak-4");
    let secrets = [
        "sk-do-not-leak-1",
        "clova-do-not-leak-2",
        "gateway-do-not-leak-3",
        "nv-do-not-leak-4",
    ];
    let providers = [
        build(&openai_config(
            &server,
            Some("LARDER_TEST_REDACT_OPENAI"),
            fast_limits(),
        ))
        .expect("openai"),
        clova_v1(
            &server,
            "LARDER_TEST_REDACT_V1",
            Some("LARDER_TEST_REDACT_GW"),
        ),
        clova_v3(&server, "LARDER_TEST_REDACT_V3"),
    ];
    for provider in &providers {
        let debug = format!("{provider:?}");
        assert!(debug.contains("<redacted>"), "{debug}");
        assert!(
            debug.contains(provider.model()),
            "Debug still says what it is: {debug}"
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
        for text in [debug, error.to_string(), format!("{error:?}")] {
            for secret in secrets {
                assert!(!text.contains(secret), "{secret} leaked in {text}");
            }
        }
    }
}

#[tokio::test]
async fn missing_key_variable_is_a_config_error_naming_it() {
    let server = MockServer::start(MockConfig::default())
        .await
        .expect("mock");
    let config = openai_config(&server, Some("LARDER_TEST_NEVER_SET_KEY"), fast_limits());
    match build(&config) {
        Err(ProviderError::Config(message)) => {
            assert!(message.contains("LARDER_TEST_NEVER_SET_KEY"), "{message}")
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[tokio::test]
async fn garbage_is_delivered_not_hidden() {
    // A 200 with non-JSON content is a good HTTP answer: the pipeline, not the provider,
    // decides what to do with unparseable content.
    let server = MockServer::start(MockConfig {
        rate_garbage: 1.0,
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let provider = openai(&server, fast_limits());
    let answer = provider
        .chat(&english_generation("moving house", 5))
        .await
        .expect("200 answer");
    assert!(
        serde_json::from_str::<GeneratedItems>(&answer.content).is_err(),
        "{}",
        answer.content
    );
    assert_eq!(server.stats().faults.get("garbage"), Some(&1));
    assert_eq!(server.stats().requests, 1, "garbage is not retried");
}
