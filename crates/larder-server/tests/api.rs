//! The HTTP contract of `shared/API.md`, over real HTTP, against a server on each backend:
//! the embedded store, a real redis-server and a real 3x2 Redis Cluster.

mod common;

use std::time::Duration;

use common::{assert_error, code, TestServer};
use larder_server::config::Config;
use larder_testkit::{RedisCluster, RedisServer};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn vector(seed: usize, dim: usize) -> Vec<f32> {
    (0..dim)
        .map(|i| ((seed * 31 + i * 7) % 97) as f32 / 97.0 - 0.5)
        .collect()
}

fn as_f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// The whole embedding contract, on one server.
async fn contract(s: &TestServer) {
    // Namespaces.
    let (status, body) = s
        .put(
            "/v1/namespaces/users",
            json!({"fields": {"a32": {"dim": 8, "dtype": "f32"}, "a16": {"dim": 8, "dtype": "f16"},
                              "abf": {"dim": 8, "dtype": "bf16"}, "ai8": {"dim": 8, "dtype": "i8"}},
                   "ttl_seconds": null}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["fields"]["a16"]["dtype"], "f16");
    let (status, body) = s.get("/v1/namespaces").await;
    assert_eq!(status, 200);
    assert_eq!(body["namespaces"][0]["name"], "users");
    assert_error(
        s.get("/v1/namespaces/nobody").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // Upsert and read back: f32 exact, other dtypes within their bounds.
    let entities: Vec<Value> = (0..20)
        .map(|i| {
            let v = vector(i, 8);
            json!({"key": format!("user:{i}"), "fields": {"a32": v, "a16": v, "abf": v, "ai8": v}})
        })
        .collect();
    let (status, body) = s
        .post(
            "/v1/namespaces/users/entities",
            json!({"entities": entities}),
        )
        .await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({"upserted": 20})));
    let (status, body) = s.get("/v1/namespaces/users/entities/user:3").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        as_f32s(&body["fields"]["a32"]),
        vector(3, 8),
        "f32 is exact"
    );
    assert!(cosine(&as_f32s(&body["fields"]["a16"]), &vector(3, 8)) >= 0.999);
    assert!(cosine(&as_f32s(&body["fields"]["abf"]), &vector(3, 8)) >= 0.999);
    assert!(cosine(&as_f32s(&body["fields"]["ai8"]), &vector(3, 8)) >= 0.99);
    let (status, body) = s.get("/v1/namespaces/users").await;
    assert_eq!(status, 200);
    assert_eq!(body["entity_count"], 20);

    // Fields merge: writing one field leaves the others alone.
    let (status, _) = s
        .post(
            "/v1/namespaces/users/entities",
            json!({"entities": [{"key": "user:3", "fields": {"a32": vector(99, 8)}}]}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, body) = s.get("/v1/namespaces/users/entities/user:3").await;
    assert_eq!(as_f32s(&body["fields"]["a32"]), vector(99, 8));
    assert!(body["fields"]["a16"].is_array(), "untouched field kept");

    // JSON lookup: request order, duplicates in place, missing and null fields.
    let (status, body) = s
        .post(
            "/v1/namespaces/users/lookup",
            json!({"keys": ["user:1", "ghost", "user:1"], "fields": ["a32"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["missing"], json!(["ghost"]));
    assert_eq!(body["degraded"], false);
    assert_eq!(body["results"][0]["key"], "user:1");
    assert_eq!(as_f32s(&body["results"][0]["fields"]["a32"]), vector(1, 8));
    assert_eq!(body["results"][1]["fields"]["a32"], Value::Null);
    assert_eq!(body["results"][2], body["results"][0]);
    let (_, body) = s
        .post("/v1/namespaces/users/lookup", json!({"keys": ["user:2"]}))
        .await;
    assert_eq!(
        body["results"][0]["fields"]
            .as_object()
            .expect("fields")
            .len(),
        4,
        "all fields by default"
    );

    // Safetensors lookup, f32 and stored dtypes.
    let resp = s
        .lookup_binary(
            "users",
            json!({"keys": ["user:1", "ghost"], "fields": ["a32", "ai8"]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let bytes = resp.bytes().await.expect("bytes");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let a32 = st.tensor("a32").expect("a32");
    assert_eq!(
        (a32.dtype(), a32.shape()),
        (safetensors::Dtype::F32, &[2usize, 8][..])
    );
    let row0: Vec<f32> = a32.data()[..32]
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(row0, vector(1, 8));
    assert!(
        a32.data()[32..].iter().all(|b| *b == 0),
        "absent row is zeros"
    );
    assert_eq!(st.tensor("a32.present").expect("present").data(), &[1, 0]);
    assert_eq!(
        st.tensor("ai8").expect("ai8").dtype(),
        safetensors::Dtype::F32
    );
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("metadata");
    assert_eq!(
        meta.metadata()
            .as_ref()
            .and_then(|m| m.get("degraded"))
            .map(String::as_str),
        Some("false")
    );
    let resp = s
        .lookup_binary(
            "users",
            json!({"keys": ["user:1"], "fields": ["ai8", "a16"], "dtype": "stored"}),
        )
        .await;
    let bytes = resp.bytes().await.expect("bytes");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    assert_eq!(
        st.tensor("ai8").expect("ai8").dtype(),
        safetensors::Dtype::I8
    );
    assert_eq!(
        st.tensor("a16").expect("a16").dtype(),
        safetensors::Dtype::F16
    );
    assert_eq!(st.tensor("ai8.scale").expect("scale").shape(), &[1]);
    assert!(st.tensor("a16.scale").is_err(), "scale only for i8");

    // Bad input: documented codes, and nothing of a rejected batch is written.
    let bad = |fields: Value| json!({"entities": [{"key": "new:1", "fields": {"a32": vector(0, 8)}}, {"key": "new:2", "fields": fields}]});
    for (body, status, expected) in [
        (bad(json!({"nope": vector(0, 8)})), 400, "unknown_field"),
        (bad(json!({"a32": vector(0, 7)})), 400, "dimension_mismatch"),
        (
            json!({"entities": [{"key": "new:1", "fields": {"a32": [0, 0, 0, 0, 0, 0, 0, 1e39]}}]}),
            400,
            "non_finite",
        ),
        (
            json!({"entities": [{"key": "", "fields": {"a32": vector(0, 8)}}]}),
            400,
            "bad_request",
        ),
        (json!({"entities": "nope"}), 400, "bad_request"),
        (
            json!({"entities": (0..1001).map(|i| json!({"key": format!("k{i}"), "fields": {"a32": vector(0, 8)}})).collect::<Vec<_>>()}),
            413,
            "too_large",
        ),
    ] {
        let (got, resp) = s.post("/v1/namespaces/users/entities", body).await;
        assert_eq!((got.as_u16(), code(&resp)), (status, expected), "{resp}");
        assert!(resp["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let (_, body) = s
        .post(
            "/v1/namespaces/users/lookup",
            json!({"keys": ["new:1", "new:2"]}),
        )
        .await;
    assert_eq!(
        body["missing"],
        json!(["new:1", "new:2"]),
        "rejected batches wrote nothing"
    );
    let resp = s
        .client
        .post(s.url("/v1/namespaces/users/entities"))
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 400);
    assert_error(
        s.post("/v1/namespaces/nobody/entities", json!({"entities": []}))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        s.post(
            "/v1/namespaces/users/lookup",
            json!({"keys": ["a"], "fields": ["nope"]}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "unknown_field",
    );
    assert_error(
        s.post(
            "/v1/namespaces/users/lookup",
            json!({"keys": ["a"], "fields": ["a32", "a32"]}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    let keys: Vec<String> = (0..1001).map(|i| format!("k{i}")).collect();
    assert_error(
        s.post("/v1/namespaces/users/lookup", json!({"keys": keys}))
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
    );
    assert_error(
        s.put(
            "/v1/namespaces/Bad.Name",
            json!({"fields": {"a": {"dim": 2, "dtype": "f32"}}}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        s.put(
            "/v1/namespaces/x",
            json!({"fields": {"a": {"dim": 2, "dtype": "f64"}}}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        s.get("/v1/namespaces/users/entities/ghost").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        s.get("/no/such/route").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // Schema changes: adding a field is fine; changing one needs force, which drops its data.
    let (status, body) = s
        .put(
            "/v1/namespaces/users",
            json!({"fields": {"extra": {"dim": 2, "dtype": "f32"}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["fields"]["a32"].is_object(), "existing fields kept");
    let change = json!({"fields": {"a16": {"dim": 4, "dtype": "f16"}}});
    assert_error(
        s.put("/v1/namespaces/users", change.clone()).await,
        StatusCode::CONFLICT,
        "bad_request",
    );
    let (status, _) = s.put("/v1/namespaces/users?force=true", change).await;
    assert_eq!(status, 200);
    let (_, body) = s
        .post(
            "/v1/namespaces/users/lookup",
            json!({"keys": ["user:1"], "fields": ["a16", "a32"]}),
        )
        .await;
    assert_eq!(
        body["results"][0]["fields"]["a16"],
        Value::Null,
        "old a16 data dropped"
    );
    assert!(
        body["results"][0]["fields"]["a32"].is_array(),
        "other fields untouched"
    );

    // Delete answers 204, also for an absent key.
    for _ in 0..2 {
        let resp = s
            .client
            .delete(s.url("/v1/namespaces/users/entities/user:1"))
            .send()
            .await
            .expect("delete");
        assert_eq!(resp.status(), 204);
    }
    let (status, _) = s.get("/v1/namespaces/users/entities/user:1").await;
    assert_eq!(status, 404);

    // Operations.
    let (status, body) = s.get("/healthz").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, _) = s.get("/readyz").await;
    assert_eq!(status, 200);
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
        metrics.contains(
            "larder_http_requests_total{method=\"POST\",route=\"/v1/namespaces/{ns}/lookup\""
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("larder_store_call_seconds_bucket"),
        "store latency histogram"
    );
}

/// The whole contract against a fresh server on `store`.
async fn contract_on(store: &str) {
    let s = TestServer::on(store).await;
    contract(&s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_on_embedded() {
    contract_on("embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_on_redis() {
    let redis = RedisServer::start();
    contract_on(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_on_redis_cluster() {
    let cluster = RedisCluster::start();
    contract_on(&cluster.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degraded_while_redis_is_down_and_back_after_restart() {
    let mut redis = RedisServer::start();
    let mut config = Config {
        store: redis.url().parse().expect("store URL"),
        ..Config::default()
    };
    config.timeouts.lookup_ms = 300;
    config.breaker.failure_threshold = 2;
    config.breaker.open_ms = 200;
    let s = TestServer::start(config).await;
    let (status, _) = s
        .put(
            "/v1/namespaces/items",
            json!({"fields": {"v": {"dim": 3, "dtype": "f32"}, "w": {"dim": 2, "dtype": "i8"}},
                                             "fallback": {"v": [0.5, 0.5, 0.5]}}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = s
        .post(
            "/v1/namespaces/items/entities",
            json!({"entities": [{"key": "a", "fields": {"v": [1, 2, 3]}}]}),
        )
        .await;
    assert_eq!(status, 200);

    redis.stop();
    for _ in 0..4 {
        let resp = s
            .client
            .post(s.url("/v1/namespaces/items/lookup"))
            .json(&json!({"keys": ["a", "b"]}))
            .send()
            .await
            .expect("lookup");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()
                .get("x-larder-degraded")
                .map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["degraded"], true);
        assert_eq!(
            as_f32s(&body["results"][0]["fields"]["v"]),
            vec![0.5, 0.5, 0.5],
            "configured fallback"
        );
        assert_eq!(
            as_f32s(&body["results"][1]["fields"]["w"]),
            vec![0.0, 0.0],
            "zeros without one"
        );
    }
    let resp = s.lookup_binary("items", json!({"keys": ["a", "b"]})).await;
    assert_eq!(resp.status(), 200);
    let bytes = resp.bytes().await.expect("bytes");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    assert_eq!(
        st.tensor("v.present").expect("present").data(),
        &[0, 0],
        "no row is real"
    );
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("metadata");
    assert_eq!(
        meta.metadata()
            .as_ref()
            .and_then(|m| m.get("degraded"))
            .map(String::as_str),
        Some("true")
    );
    assert_error(
        s.get("/readyz").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    assert_error(
        s.post(
            "/v1/namespaces/items/entities",
            json!({"entities": [{"key": "a", "fields": {"v": [1, 2, 3]}}]}),
        )
        .await,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );

    // Redis comes back (empty: it keeps nothing on disk); the same server answers again.
    redis.restart();
    let mut recovered = false;
    for _ in 0..50 {
        let (status, body) = s
            .post("/v1/namespaces/items/lookup", json!({"keys": ["a"]}))
            .await;
        if status == 200 && body["degraded"] == false {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "lookups leave degraded mode once Redis is back");
    let (status, _) = s.get("/readyz").await;
    assert_eq!(status, 200);
    s.stop().await;
}

#[tokio::test]
async fn tokens_guard_v1() {
    let mut config = Config {
        ephemeral: true,
        ..Config::default()
    };
    config.auth.write_tokens = vec!["w-token".into()];
    config.auth.read_tokens = vec!["r-token".into()];
    let s = TestServer::start(config).await;
    let put = |token: Option<&'static str>| {
        let mut req = s
            .client
            .put(s.url("/v1/namespaces/n"))
            .json(&json!({"fields": {"v": {"dim": 2, "dtype": "f32"}}}));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    assert_eq!(put(None).await.expect("send").status(), 401);
    assert_eq!(put(Some("wrong")).await.expect("send").status(), 401);
    let resp = put(Some("r-token")).await.expect("send");
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.json::<Value>().await.expect("json")["error"]["code"],
        "forbidden"
    );
    assert_eq!(put(Some("w-token")).await.expect("send").status(), 200);
    let lookup = s
        .client
        .post(s.url("/v1/namespaces/n/lookup"))
        .bearer_auth("r-token")
        .json(&json!({"keys": ["x"]}))
        .send()
        .await
        .expect("send");
    assert_eq!(lookup.status(), 200, "read tokens may look up");
    assert_eq!(
        s.client
            .get(s.url("/healthz"))
            .send()
            .await
            .expect("send")
            .status(),
        200,
        "probes need no token"
    );
    s.stop().await;
}

#[tokio::test]
async fn body_limit_answers_413_json() {
    let mut config = Config {
        ephemeral: true,
        ..Config::default()
    };
    config.limits.max_body_bytes = 1024;
    let s = TestServer::start(config).await;
    let big = json!({"fields": {"v": {"dim": 2, "dtype": "f32"}}, "pad": "x".repeat(4096)});
    assert_error(
        s.put("/v1/namespaces/n", big).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
    );
    s.stop().await;
}

#[tokio::test]
async fn embedded_data_survives_a_server_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    let s = TestServer::start(config.clone()).await;
    s.put(
        "/v1/namespaces/n",
        json!({"fields": {"v": {"dim": 2, "dtype": "f32"}}}),
    )
    .await;
    s.post(
        "/v1/namespaces/n/entities",
        json!({"entities": [{"key": "k", "fields": {"v": [1.5, -2.0]}}]}),
    )
    .await;
    s.stop().await;
    let s = TestServer::start(config).await;
    let (status, body) = s.get("/v1/namespaces/n/entities/k").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(as_f32s(&body["fields"]["v"]), vec![1.5, -2.0]);
    s.stop().await;
}
