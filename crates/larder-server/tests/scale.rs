//! Serving at scale, through HTTP: the near cache across two servers on one Redis, and the
//! size guards.

mod common;

use std::time::{Duration, Instant};

use common::{assert_error, TestServer};
use larder_server::config::{Config, NearCache};
use larder_testkit::RedisServer;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn near_cached_server(redis: &RedisServer) -> TestServer {
    TestServer::start(Config {
        store: redis.url().parse().expect("store URL"),
        ephemeral: true,
        near_cache: Some(NearCache {
            max_bytes: 16 * 1024 * 1024,
            ttl_ms: 60_000,
        }),
        ..Config::default()
    })
    .await
}

async fn lookup(s: &TestServer, key: &str) -> Value {
    let (status, body) = s
        .post("/v1/namespaces/emb/lookup", json!({"keys": [key]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_server_is_served_by_the_other_within_100_ms() {
    let redis = RedisServer::start();
    let a = near_cached_server(&redis).await;
    let b = near_cached_server(&redis).await;
    let (status, body) = a
        .put(
            "/v1/namespaces/emb",
            json!({"fields": {"v": {"dim": 3, "dtype": "f32"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let put = |v: f32| json!({"entities": [{"key": "k", "fields": {"v": [v, v, v]}}]});
    assert_eq!(
        a.post("/v1/namespaces/emb/entities", put(0.0)).await.0,
        StatusCode::OK
    );

    // B caches the entity (the JSON answer says how many rows came from the cache); its
    // subscription may take a moment to come up after start, and its own first reads miss.
    let started = Instant::now();
    loop {
        let body = lookup(&b, "k").await;
        assert_eq!(body["results"][0]["fields"]["v"], json!([0.0, 0.0, 0.0]));
        if body["cached"] == 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{body}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let mut slowest = Duration::ZERO;
    for round in 1..=10 {
        let v = round as f32;
        assert_eq!(
            a.post("/v1/namespaces/emb/entities", put(v)).await.0,
            StatusCode::OK
        );
        let acked = Instant::now();
        loop {
            let body = lookup(&b, "k").await;
            if body["results"][0]["fields"]["v"] == json!([v, v, v]) {
                break;
            }
            assert!(
                acked.elapsed() < Duration::from_millis(100),
                "round {round}: B still serves {body} 100 ms after A's write was acknowledged"
            );
        }
        slowest = slowest.max(acked.elapsed());
    }
    eprintln!("slowest propagation over 10 writes: {slowest:?}");

    // The safetensors answer carries the count in its metadata.
    let resp = b
        .lookup_binary("emb", json!({"keys": ["k", "k", "absent"]}))
        .await;
    let bytes = resp.bytes().await.expect("body");
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).expect("header");
    assert!(
        header["__metadata__"]["cached"].is_string(),
        "{}",
        header["__metadata__"]
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn entities_over_the_size_guards_are_refused_and_nothing_is_written() {
    let s = TestServer::start(Config {
        ephemeral: true,
        ..Config::default()
    })
    .await;
    // 2 MiB entities: eight 65,536-d f32 fields (256 KiB each). The default limit is 1 MiB.
    let fields: serde_json::Map<String, Value> = (0..8)
        .map(|i| (format!("f{i}"), json!({"dim": 65536, "dtype": "f32"})))
        .collect();
    assert_error(
        s.put("/v1/namespaces/big", json!({ "fields": fields }))
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
    );
    assert_error(
        s.get("/v1/namespaces/big").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // With the limit raised for this namespace, then lowered again: the lower limit would make
    // stored entities too large, so it is refused and the namespace keeps its schema.
    let (status, body) = s
        .put(
            "/v1/namespaces/big",
            json!({"fields": fields, "max_entity_bytes": 3 * 1024 * 1024}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["max_entity_bytes"], 3 * 1024 * 1024);
    assert_error(
        s.put(
            "/v1/namespaces/big",
            json!({"fields": fields, "max_entity_bytes": 1024 * 1024}),
        )
        .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
    );
    assert_eq!(
        s.get("/v1/namespaces/big").await.1["max_entity_bytes"],
        3 * 1024 * 1024
    );

    // The field cap: 65 fields are refused by default, and allowed when raised.
    let many: serde_json::Map<String, Value> = (0..65)
        .map(|i| (format!("f{i}"), json!({"dim": 2, "dtype": "f32"})))
        .collect();
    assert_error(
        s.put("/v1/namespaces/wide", json!({ "fields": many }))
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
    );
    let (status, body) = s
        .put(
            "/v1/namespaces/wide",
            json!({"fields": many, "max_fields": 100}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    s.stop().await;
}
