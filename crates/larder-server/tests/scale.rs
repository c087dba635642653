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

/// `users@v1` and `users@v2` side by side; the alias `users` flips between them under lookup
/// load. Every answer must be whole: all rows from one version (v1 rows hold 1.0, v2 rows 2.0).
async fn versions_and_aliases(s: &TestServer) {
    for (version, value) in [("v1", 1.0), ("v2", 2.0)] {
        let (status, body) = s
            .put(
                &format!("/v1/namespaces/users@{version}"),
                json!({"fields": {"v": {"dim": 4, "dtype": "f32"}}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let entities: Vec<Value> = (0..50)
            .map(|i| json!({"key": format!("u{i}"), "fields": {"v": vec![value; 4]}}))
            .collect();
        let (status, body) = s
            .post(
                &format!("/v1/namespaces/users@{version}/entities"),
                json!({ "entities": entities }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_error(
        s.put("/v1/aliases/users", json!({"namespace": "users@v9"}))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let (status, body) = s
        .put("/v1/aliases/users", json!({"namespace": "users@v1"}))
        .await;
    assert_eq!(
        (status, body.clone()),
        (
            StatusCode::OK,
            json!({"alias": "users", "namespace": "users@v1"})
        )
    );
    assert_eq!(s.get("/v1/aliases/users").await.1["namespace"], "users@v1");
    // A name is an alias or a namespace, never both.
    assert_error(
        s.put(
            "/v1/namespaces/users",
            json!({"fields": {"v": {"dim": 4, "dtype": "f32"}}}),
        )
        .await,
        StatusCode::CONFLICT,
        "bad_request",
    );
    assert_error(
        s.put("/v1/aliases/users@v2", json!({"namespace": "users@v1"}))
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        s.send(reqwest::Method::DELETE, "/v1/namespaces/users@v1", None)
            .await,
        StatusCode::CONFLICT,
        "bad_request",
    );

    let keys: Vec<String> = (0..50).map(|i| format!("u{i}")).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (client, url, keys, stop) = (
                s.client.clone(),
                s.url("/v1/namespaces/users/lookup"),
                keys.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut seen = [0u32; 2];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let resp = client
                        .post(&url)
                        .json(&json!({ "keys": keys }))
                        .send()
                        .await
                        .expect("lookup");
                    assert_eq!(resp.status(), StatusCode::OK);
                    let body: Value = resp.json().await.expect("json");
                    assert_eq!(body["degraded"], false, "{body}");
                    let firsts: Vec<f64> = body["results"]
                        .as_array()
                        .expect("results")
                        .iter()
                        .map(|r| r["fields"]["v"][0].as_f64().expect("present"))
                        .collect();
                    assert!(
                        firsts.iter().all(|v| *v == firsts[0]),
                        "one answer mixed versions: {firsts:?}"
                    );
                    seen[(firsts[0] == 2.0) as usize] += 1;
                }
                seen
            })
        })
        .collect();
    for flip in 0..20 {
        let target = if flip % 2 == 0 {
            "users@v2"
        } else {
            "users@v1"
        };
        let (status, body) = s
            .put("/v1/aliases/users", json!({ "namespace": target }))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut seen = [0u32; 2];
    for reader in readers {
        let counts = reader.await.expect("reader");
        seen[0] += counts[0];
        seen[1] += counts[1];
    }
    assert!(
        seen[0] > 0 && seen[1] > 0,
        "both versions were served: {seen:?}"
    );
    // The last flip pointed back at v1: rolling back is a flip.
    let body = s
        .post("/v1/namespaces/users/lookup", json!({"keys": ["u0"]}))
        .await
        .1;
    assert_eq!(
        body["results"][0]["fields"]["v"],
        json!([1.0, 1.0, 1.0, 1.0])
    );

    // v2 is no longer aliased: delete it in the background; it stops resolving at once and
    // its keys go.
    let (status, body) = s
        .send(reqwest::Method::DELETE, "/v1/namespaces/users@v2", None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_error(
        s.get("/v1/namespaces/users@v2").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // Once the background deletion is done, the name can be created again, empty.
    let started = Instant::now();
    loop {
        let (status, body) = s
            .put(
                "/v1/namespaces/users@v2",
                json!({"fields": {"v": {"dim": 4, "dtype": "f32"}}}),
            )
            .await;
        if status == StatusCode::OK {
            break;
        }
        assert_error((status, body), StatusCode::CONFLICT, "bad_request");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "deleted within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.get("/v1/namespaces/users@v2").await.1["entity_count"], 0);
    // v1 still serves through the alias.
    assert_eq!(s.get("/v1/namespaces/users").await.1["entity_count"], 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_and_aliases_on_embedded() {
    let s = TestServer::start(Config {
        ephemeral: true,
        ..Config::default()
    })
    .await;
    versions_and_aliases(&s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_and_aliases_on_redis_with_the_near_cache() {
    let redis = RedisServer::start();
    let s = near_cached_server(&redis).await;
    versions_and_aliases(&s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_the_spread_over_the_cluster_and_the_hot_keys() {
    let cluster = larder_testkit::RedisCluster::start();
    let s = TestServer::on(&cluster.url()).await;
    let (status, body) = s
        .put(
            "/v1/namespaces/spread",
            json!({"fields": {"v": {"dim": 64, "dtype": "f32"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for batch in 0..6 {
        let entities: Vec<Value> = (0..500)
            .map(|i| json!({"key": format!("e{}", batch * 500 + i), "fields": {"v": vec![0.25; 64]}}))
            .collect();
        let (status, body) = s
            .post(
                "/v1/namespaces/spread/entities",
                json!({ "entities": entities }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    for _ in 0..30 {
        s.post(
            "/v1/namespaces/spread/lookup",
            json!({"keys": ["e7", "e7", "e7", "e42"]}),
        )
        .await;
    }

    let (status, stats) = s.get("/v1/namespaces/spread/stats").await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    assert_eq!(stats["entity_count"], 3000, "{stats}");
    let primaries = stats["primaries"].as_array().expect("primaries");
    assert_eq!(primaries.len(), 3, "{stats}");
    for primary in primaries {
        let n = primary["entities"].as_f64().expect("count");
        assert!(
            (n - 1000.0).abs() <= 150.0,
            "each primary holds 1000 ± 15%: {stats}"
        );
    }
    assert!(stats["max_over_mean"].as_f64().expect("ratio") <= 1.15);
    // A 64-d f32 value is 256 bytes; MEMORY USAGE adds the key and Redis's overhead.
    let p50 = stats["bytes_per_entity"]["p50"].as_u64().expect("p50");
    assert!((256..2048).contains(&p50), "{stats}");
    assert_eq!(stats["sampled"], 1000, "{stats}");
    assert_eq!(stats["largest"].as_array().map(Vec::len), Some(10));
    assert_eq!(stats["hot_keys"][0]["key"], "e7", "{stats}");
    assert_eq!(stats["hot_keys"][1]["key"], "e42", "{stats}");

    let metrics = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("larder_hot_keys{namespace=\"spread\",rank=\"1\",key=\"e7\"}"),
        "{metrics}"
    );
    assert_error(
        s.get("/v1/namespaces/nothing/stats").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_flip_on_one_server_is_followed_by_the_other_at_once() {
    let redis = RedisServer::start();
    let a = TestServer::on(&redis.url()).await;
    let b = TestServer::on(&redis.url()).await;
    for (version, value) in [("v1", 1.0), ("v2", 2.0)] {
        let path = format!("/v1/namespaces/items@{version}");
        let (status, body) = a
            .put(&path, json!({"fields": {"v": {"dim": 2, "dtype": "f32"}}}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let entity = json!({"entities": [{"key": "k", "fields": {"v": [value, value]}}]});
        assert_eq!(
            a.post(&format!("{path}/entities"), entity).await.0,
            StatusCode::OK
        );
    }
    let value_on_b = || async {
        b.post("/v1/namespaces/items/lookup", json!({"keys": ["k"]}))
            .await
            .1["results"][0]["fields"]["v"][0]
            .as_f64()
    };
    assert_eq!(
        a.put("/v1/aliases/items", json!({"namespace": "items@v1"}))
            .await
            .0,
        StatusCode::OK
    );
    // B may first need its subscription; from then on, flips reach it within 100 ms.
    let started = Instant::now();
    while value_on_b().await != Some(1.0) {
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (round, (target, value)) in [("items@v2", 2.0), ("items@v1", 1.0), ("items@v2", 2.0)]
        .into_iter()
        .enumerate()
    {
        assert_eq!(
            a.put("/v1/aliases/items", json!({ "namespace": target }))
                .await
                .0,
            StatusCode::OK
        );
        let flipped = Instant::now();
        while value_on_b().await != Some(value) {
            assert!(
                flipped.elapsed() < Duration::from_millis(100),
                "flip {round}: B still follows the old target 100 ms later"
            );
        }
    }
    a.stop().await;
    b.stop().await;
}
