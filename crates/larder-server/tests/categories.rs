//! The category contract of `shared/API.md` ("Categories"), over real HTTP, against a server
//! that runs the whole pipeline in-process: embedded store in memory, in-memory SQLite main DB,
//! memory broker, and the simulated providers answering at once.

mod common;

use larder_testkit::support::percent_encode;
use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{assert_error, TestServer};
use larder_server::config::Config;
use larder_server::config::PipelineConfig;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// "이사 준비" percent-encoded, as a client sends it.
const KOREAN_PATH: &str = "/v1/categories/%EC%9D%B4%EC%82%AC%20%EC%A4%80%EB%B9%84";
const KOREAN: &str = "이사 준비";
/// How long a test waits for the pipeline before failing. Generation is instant here; the
/// margin is for a loaded 2-core CI machine.
const PIPELINE_DEADLINE: Duration = Duration::from_secs(20);

async fn server() -> TestServer {
    TestServer::start(Config {
        ephemeral: true,
        pipeline: PipelineConfig {
            seed_categories: vec![],
            ..PipelineConfig::default().without_latency()
        },
        ..Config::default()
    })
    .await
}

fn category(name: &str) -> String {
    format!("/v1/categories/{}", percent_encode(name))
}

fn items(name: &str, query: &str) -> String {
    format!("{}/items?{query}", category(name))
}

fn item(name: &str, id: &str) -> String {
    format!("{}/items/{}", category(name), percent_encode(id))
}

fn feedback(name: &str) -> String {
    format!("{}/feedback", category(name))
}

/// A request with a raw (possibly malformed) body.
async fn raw(s: &TestServer, method: Method, path: &str, body: &str) -> (StatusCode, Value) {
    let resp = s
        .client
        .request(method, s.url(path))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("request");
    let status = resp.status();
    let text = resp.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// The keys of a JSON object.
fn keys(v: &Value) -> Option<HashSet<&str>> {
    v.as_object()
        .map(|o| o.keys().map(String::as_str).collect())
}

/// The contract's error: this status and code, a message, and nothing else in the body.
#[track_caller]
fn assert_contract_error(resp: (StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(
        keys(&resp.1),
        Some(HashSet::from(["error"])),
        "error body: {}",
        resp.1
    );
    assert_eq!(
        keys(&resp.1["error"]),
        Some(HashSet::from(["code", "message"])),
        "error object: {}",
        resp.1
    );
    assert_error(resp, status, code);
}

/// A served item: an id, a text, and a score in 0..=1.
#[track_caller]
fn assert_item(item: &Value) {
    assert!(
        item["id"].as_str().is_some_and(|id| !id.is_empty()),
        "{item}"
    );
    assert!(
        item["text"].as_str().is_some_and(|t| !t.trim().is_empty()),
        "{item}"
    );
    let score = item["score"].as_f64().expect("score is a number");
    assert!((0.0..=1.0).contains(&score), "score out of 0..=1: {item}");
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_owned())
        .collect()
}

/// The `GET /v1/categories` entry of `name`, if listed.
async fn summary(s: &TestServer, name: &str) -> Option<Value> {
    let (status, body) = s.get("/v1/categories").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["categories"]
        .as_array()
        .expect("categories is an array")
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
}

/// The full posterior-mean order (`explore=false`, up to 100 items).
async fn ranked(s: &TestServer, name: &str) -> Vec<Value> {
    let (status, body) = s.get(&items(name, "explore=false&limit=100")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["items"].as_array().expect("items").clone()
}

/// Register `name`, wait for its first items, then until the pipeline is done with the first
/// generation (the served order and the pool size stay the same for a while and agree).
/// Returns the full posterior-mean order.
async fn settled(s: &TestServer, name: &str) -> Vec<Value> {
    let (status, body) = s.send(Method::PUT, &category(name), None).await;
    assert!(
        status == StatusCode::CREATED || status == StatusCode::OK,
        "{status} {body}"
    );
    let (status, body) = s
        .get(&items(name, "wait_ms=10000&explore=false&limit=100"))
        .await;
    assert_eq!(status, StatusCode::OK, "first items within 10 s: {body}");
    let deadline = Instant::now() + PIPELINE_DEADLINE;
    let mut last: Option<(Vec<Value>, u64)> = None;
    let mut stable = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let order = ranked(s, name).await;
        let pool = summary(s, name).await.expect("listed")["pool_size"]
            .as_u64()
            .expect("pool_size");
        let now = (order, pool);
        if last.as_ref() == Some(&now) {
            stable += 1;
        } else {
            stable = 0;
        }
        if stable >= 3 && now.0.len() as u64 == now.1.min(100) && !now.0.is_empty() {
            return now.0;
        }
        assert!(
            Instant::now() < deadline,
            "category {name:?} never settled; last {last:?}"
        );
        last = Some(now);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_answers_201_then_200_and_validates_its_input() {
    let s = server().await;
    assert_eq!(category(KOREAN), KOREAN_PATH);

    // No body at all: new → 201, the name percent-decoded.
    let (status, body) = s.send(Method::PUT, KOREAN_PATH, None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["category"], KOREAN);
    assert_eq!(body["created"], true);
    // Again (empty object body this time): known → 200.
    let (status, body) = s.put(KOREAN_PATH, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["category"], KOREAN);
    assert_eq!(body["created"], false);

    // The optional body is stored.
    let (status, body) = s
        .put(
            &category("moving house"),
            json!({"description": "Checklist items for moving house", "locale": "en-US"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let listed = summary(&s, "moving house").await.expect("listed");
    assert_eq!(listed["description"], "Checklist items for moving house");
    assert_eq!(listed["locale"], "en-US");

    // Any UTF-8 of 1..=100 characters, counted in characters, a '/' included.
    let hundred = "가".repeat(100);
    let (status, body) = s.put(&category(&hundred), json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["category"], hundred.as_str());
    let (status, body) = s.put(&category("a/b: 100%"), json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["category"], "a/b: 100%");

    // Bad input: 400 bad_request, and nothing registered.
    let too_long = "가".repeat(101);
    assert_contract_error(
        s.put(&category(&too_long), json!({})).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_contract_error(
        raw(&s, Method::PUT, &category("bad json"), "{not json").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_contract_error(
        s.put(&category("bad body"), json!({"descr": "typo"})).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    for locale in ["ko_KR", "", "not a locale", "abcdefghijklmnopq"] {
        assert_contract_error(
            s.put(&category("bad locale"), json!({"locale": locale}))
                .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
    }
    assert_contract_error(
        s.put(
            &category("long description"),
            json!({"description": "x".repeat(1001)}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    for rejected in [
        too_long.as_str(),
        "bad json",
        "bad body",
        "bad locale",
        "long description",
    ] {
        assert!(
            summary(&s, rejected).await.is_none(),
            "{rejected:?} was registered"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_category_items_answer_202_pending_and_register_it() {
    let s = server().await;
    let (status, headers, body) = s
        .exchange(Method::GET, &items("여행 준비", "limit=5"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let retry_after = headers
        .get("retry-after")
        .expect("Retry-After header")
        .to_str()
        .expect("ASCII")
        .parse::<u64>()
        .expect("Retry-After is delay-seconds");
    assert!(retry_after >= 1, "Retry-After {retry_after}");
    assert_eq!(
        body,
        json!({"category": "여행 준비", "status": "pending", "items": []})
    );

    // The request registered it (and queued its generation).
    let listed = summary(&s, "여행 준비").await.expect("registered by GET");
    assert!(
        listed["status"] == "pending" || listed["status"] == "ready",
        "{listed}"
    );
    let (status, body) = s.put(&category("여행 준비"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "already registered: {body}");

    // wait_ms waits for a category that stays pending, then answers 202. This one can never
    // fill: the simulated writers only write Korean and English, and the filter drops every
    // item that is not in the category's script (ja needs Kana or Han).
    let (status, _) = s
        .put(&category("japan trip"), json!({"locale": "ja"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let started = Instant::now();
    let (status, headers, body) = s
        .exchange(Method::GET, &items("japan trip", "wait_ms=600"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "answered after {:?}, before wait_ms",
        started.elapsed()
    );
    assert!(headers.contains_key("retry-after"));
    assert_eq!(
        body,
        json!({"category": "japan trip", "status": "pending", "items": []})
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_wait_for_generation_and_respect_limit_and_order() {
    let s = server().await;
    let (status, _) = s.put(KOREAN_PATH, json!({})).await;
    assert_eq!(status, StatusCode::CREATED);

    // wait_ms answers as soon as the first items are ready; default limit 10.
    let started = Instant::now();
    let (status, body) = s.get(&items(KOREAN, "wait_ms=10000")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(body["category"], KOREAN);
    assert_eq!(body["status"], "ready");
    let first = body["items"].as_array().expect("items");
    assert!((1..=10).contains(&first.len()), "{body}");
    for it in first {
        assert_item(it);
        // No locale given: a Hangul name is a Korean category, and items are in Korean.
        let text = it["text"].as_str().unwrap_or_default();
        assert!(text.chars().any(|c| ('가'..='힣').contains(&c)), "{text:?}");
    }

    let full = settled(&s, KOREAN).await;
    assert!(
        full.len() > 3,
        "a pool bigger than the limits below: {full:?}"
    );
    full.iter().for_each(assert_item);
    let full_ids = ids(&full);
    assert_eq!(
        full_ids.iter().collect::<HashSet<_>>().len(),
        full_ids.len(),
        "no duplicates"
    );

    // explore=false: posterior-mean order, score descending, the same on every call.
    let scores: Vec<f64> = full
        .iter()
        .map(|i| i["score"].as_f64().expect("score"))
        .collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "sorted by score descending: {scores:?}"
    );
    for _ in 0..5 {
        assert_eq!(ranked(&s, KOREAN).await, full, "deterministic");
    }
    let (status, body) = s.get(&items(KOREAN, "explore=false&limit=3")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["items"].as_array().expect("items")[..], full[..3]);

    // explore=true (the default): `limit` valid, distinct items of the pool. Before any
    // feedback the evaluators' prior (worth 1,000 impressions by default) keeps their top 3.
    let sample = || async {
        let mut shown = HashSet::new();
        for query in ["limit=3", "limit=3&explore=true"].iter().cycle().take(50) {
            let (status, body) = s.get(&items(KOREAN, query)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["status"], "ready");
            let got = body["items"].as_array().expect("items");
            assert_eq!(got.len(), 3, "{body}");
            got.iter().for_each(assert_item);
            let got_ids = ids(got);
            assert_eq!(got_ids.iter().collect::<HashSet<_>>().len(), 3, "distinct");
            for id in got_ids {
                assert!(full_ids.contains(&id), "{id} is not in the pool");
                shown.insert(id);
            }
        }
        shown
    };
    let before = sample().await;
    assert_eq!(
        before,
        full_ids[..3].iter().cloned().collect::<HashSet<_>>(),
        "no feedback yet: the evaluators' top 3"
    );
    // 100 users see the top 3 and pick none of them: Thompson sampling now shows others.
    let events: Vec<Value> = (0..100)
        .flat_map(|_| {
            full[..3]
                .iter()
                .enumerate()
                .map(|(p, i)| json!({"item_id": i["id"], "event": "impression", "position": p}))
        })
        .collect();
    let (status, body) = s.post(&feedback(KOREAN), json!({ "events": events })).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let shown = sample().await;
        if shown.len() > 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Thompson sampling explores: {shown:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = s.get(&items(KOREAN, "limit=100")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["items"].as_array().expect("items").len(),
        full.len(),
        "the whole pool when it is below the limit"
    );
    let (status, _) = s.get(&items(KOREAN, "limit=1&wait_ms=30000")).await;
    assert_eq!(status, StatusCode::OK, "wait_ms = 30000 is allowed");

    // Out of range or malformed parameters.
    for query in [
        "limit=0",
        "limit=101",
        "limit=-1",
        "limit=ten",
        "wait_ms=30001",
        "explore=maybe",
    ] {
        let resp = s.get(&items(KOREAN, query)).await;
        assert_contract_error(resp, StatusCode::BAD_REQUEST, "bad_request");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_reports_status_pool_size_and_evaluated() {
    let s = server().await;
    let (status, body) = s.get("/v1/categories").await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"categories": []})),
        "nothing seeded"
    );

    let full = settled(&s, "moving house").await;
    // Never fills (see unknown_category_items_answer_202_pending_and_register_it).
    let (status, _) = s
        .put(&category("japan trip"), json!({"locale": "ja"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // Give its generation time to run through the filter.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (status, body) = s.get("/v1/categories").await;
    assert_eq!(status, StatusCode::OK);
    let listed = body["categories"].as_array().expect("categories");
    assert_eq!(listed.len(), 2, "{body}");
    for entry in listed {
        assert!(entry["name"].is_string(), "{entry}");
        assert!(entry["pool_size"].is_u64(), "{entry}");
        assert!(entry["evaluated"].is_u64(), "{entry}");
        let ready = entry["pool_size"].as_u64() > Some(0);
        assert_eq!(
            entry["status"],
            if ready { "ready" } else { "pending" },
            "{entry}"
        );
    }
    let ready = summary(&s, "moving house").await.expect("listed");
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["pool_size"], full.len() as u64, "{ready}");
    // Items join the pool only after evaluation.
    assert!(
        ready["evaluated"].as_u64() >= ready["pool_size"].as_u64(),
        "{ready}"
    );
    let pending = summary(&s, "japan trip").await.expect("listed");
    assert_eq!(pending["status"], "pending", "{pending}");
    assert_eq!(pending["pool_size"], 0);
    assert_eq!(pending["evaluated"], 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_detail_shows_provenance_evaluations_and_counts() {
    let s = server().await;
    let full = settled(&s, KOREAN).await;
    let generators = [
        ("sim-writer-a", "sim-gpt"),
        ("sim-writer-b", "sim-hyperclova-x"),
    ];
    for served in &full {
        let id = served["id"].as_str().expect("id");
        let (status, detail) = s.get(&item(KOREAN, id)).await;
        assert_eq!(status, StatusCode::OK, "{detail}");
        assert_eq!(detail["id"], id);
        assert_eq!(detail["text"], served["text"]);
        assert_eq!(detail["status"], "active");
        let generator = (
            detail["generator"]["provider"].as_str().unwrap_or_default(),
            detail["generator"]["model"].as_str().unwrap_or_default(),
        );
        assert!(generators.contains(&generator), "{detail}");
        // RFC 3339 in UTC, e.g. 2026-11-23T09:12:45.123Z.
        let created = detail["created_at"].as_str().expect("created_at");
        assert!(
            created.len() >= 20
                && created.ends_with('Z')
                && created.as_bytes()[10] == b'T'
                && created[..4].parse::<u32>().is_ok_and(|y| y >= 2024),
            "{created}"
        );
        let evaluations = detail["evaluations"].as_array().expect("evaluations");
        assert!(!evaluations.is_empty(), "served items were evaluated");
        for evaluation in evaluations {
            assert_eq!(evaluation["evaluator"], "sim-judge", "{evaluation}");
            let score = evaluation["score"].as_f64().expect("score");
            assert!((0.0..=10.0).contains(&score), "{evaluation}");
            assert!(
                evaluation["reason"].as_str().is_some_and(|r| !r.is_empty()),
                "the simulated judge gives reasons: {evaluation}"
            );
        }
        assert_eq!(
            (
                detail["impressions"].as_u64(),
                detail["selections"].as_u64()
            ),
            (Some(0), Some(0))
        );
        let score = detail["score"].as_f64().expect("score");
        let served_score = served["score"].as_f64().expect("score");
        assert!(
            (score - served_score).abs() < 1e-3,
            "detail {score} vs served {served_score}"
        );
    }

    assert_contract_error(
        s.get(&item(KOREAN, "no-such-item")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let id = full[0]["id"].as_str().expect("id");
    assert_contract_error(
        s.get(&item("another category", id)).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_is_validated_whole_recorded_and_counted() {
    let s = server().await;
    let full = settled(&s, "moving house").await;
    let other = settled(&s, KOREAN).await;
    let a = full[0]["id"].as_str().expect("id");
    let b = full[1]["id"].as_str().expect("id");
    let counts = |id: &str| {
        let path = item("moving house", id);
        let s = &s;
        async move {
            let (status, detail) = s.get(&path).await;
            assert_eq!(status, StatusCode::OK, "{detail}");
            (
                detail["impressions"].as_u64().expect("impressions"),
                detail["selections"].as_u64().expect("selections"),
            )
        }
    };

    let (status, body) = s
        .post(
            &feedback("moving house"),
            json!({"events": [
                {"item_id": a, "event": "impression", "position": 0},
                {"item_id": b, "event": "impression", "position": 1},
                {"item_id": b, "event": "select", "position": 1},
                {"item_id": a, "event": "impression"},
            ]}),
        )
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::ACCEPTED, json!({"accepted": 4}))
    );
    assert_eq!(counts(a).await, (2, 0));
    assert_eq!(counts(b).await, (1, 1));

    // One bad event rejects the whole request: nothing of it is recorded.
    let other_category_item = other[0]["id"].as_str().expect("id");
    for events in [
        json!([{"item_id": a, "event": "select"}, {"item_id": "no-such-item", "event": "impression"}]),
        json!([{"item_id": a, "event": "select"}, {"item_id": other_category_item, "event": "select"}]),
        json!([{"item_id": a, "event": "select"}, {"item_id": b, "event": "click"}]),
        json!([{"item_id": a, "event": "select", "position": -1}]),
        json!([{"item_id": a, "event": "select", "extra": 1}]),
        json!([]),
    ] {
        assert_contract_error(
            s.post(&feedback("moving house"), json!({ "events": events }))
                .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
    }
    assert_contract_error(
        s.post(&feedback("moving house"), json!({"evts": []})).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_contract_error(
        raw(&s, Method::POST, &feedback("moving house"), "{not json").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    let too_many: Vec<Value> = (0..1001)
        .map(|_| json!({"item_id": a, "event": "select"}))
        .collect();
    assert_contract_error(
        s.post(&feedback("moving house"), json!({ "events": too_many }))
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
    );
    assert_eq!(
        counts(a).await,
        (2, 0),
        "rejected requests recorded nothing"
    );
    assert_eq!(
        counts(b).await,
        (1, 1),
        "rejected requests recorded nothing"
    );

    // A category that does not exist has no items: its item ids are unknown.
    assert_contract_error(
        s.post(
            &feedback("no such category"),
            json!({"events": [{"item_id": a, "event": "select"}]}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_selections_moves_the_last_item_to_the_top() {
    let s = server().await;
    let full = settled(&s, KOREAN).await;
    let last = full.last().expect("items")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_ne!(full[0]["id"], last.as_str(), "a pool of more than one item");
    let position = full.len() - 1;
    // 200 users are shown the list and every one of them selects its last item: that
    // outweighs the evaluators' prior, however strong (1,000 impressions by default).
    let round: Vec<Value> = full
        .iter()
        .enumerate()
        .map(|(p, i)| json!({"item_id": i["id"], "event": "impression", "position": p}))
        .chain([json!({"item_id": last, "event": "select", "position": position})])
        .collect();
    let rounds_per_request = 1000 / round.len();
    let mut sent = 0;
    while sent < 200 {
        let n = rounds_per_request.min(200 - sent);
        let events: Vec<Value> = (0..n).flat_map(|_| round.iter().cloned()).collect();
        let (status, body) = s.post(&feedback(KOREAN), json!({ "events": events })).await;
        assert_eq!(
            (status, body),
            (StatusCode::ACCEPTED, json!({"accepted": events.len()}))
        );
        sent += n;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let order = ranked(&s, KOREAN).await;
        if order[0]["id"] == last.as_str() {
            // Scores are posterior means, rescaled to this category's selection rates by
            // the feedback, so the new top is compared with the others as they are now.
            assert!(
                order[0]["score"].as_f64() > order[1]["score"].as_f64(),
                "{order:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{last} is not first after 10 s: {order:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, detail) = s.get(&item(KOREAN, &last)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["selections"], 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_answers_202_queues_at_most_once_a_second_and_registers_unknown_categories() {
    let s = server().await;
    let (status, _) = s.put(&category("travel packing"), json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    let refresh = format!("{}/refresh", category("travel packing"));
    let (status, body) = s.send(Method::POST, &refresh, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["category"], "travel packing");
    assert!(body["queued"].is_boolean(), "{body}");
    // The refreshed category still becomes ready.
    let (status, body) = s.get(&items("travel packing", "wait_ms=10000")).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Refresh answers 202 for any category; an unknown one is registered, as a request for
    // its items would.
    let unknown = format!("{}/refresh", category("no such category"));
    let (status, body) = s.send(Method::POST, &unknown, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        body["queued"], true,
        "a new category is generated at once: {body}"
    );
    assert!(
        summary(&s, "no such category").await.is_some(),
        "refresh registers"
    );
    // A client looping on refresh cannot flood the providers: at most one a second.
    let (status, body) = s.send(Method::POST, &unknown, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["queued"], false, "{body}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn category_routes_are_documented_and_errors_keep_the_shape() {
    let s = server().await;
    let (status, doc) = s.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    for (path, method) in [
        ("/v1/categories", "get"),
        ("/v1/categories/{category}", "put"),
        ("/v1/categories/{category}/items", "get"),
        ("/v1/categories/{category}/items/{id}", "get"),
        ("/v1/categories/{category}/feedback", "post"),
        ("/v1/categories/{category}/refresh", "post"),
    ] {
        assert!(
            doc["paths"][path][method]["responses"].is_object(),
            "{} {path} is not documented",
            method.to_uppercase()
        );
    }

    assert_contract_error(
        s.send(Method::DELETE, &category("x"), None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "bad_request",
    );
    assert_contract_error(
        s.get(&format!("{}/nope", category("x"))).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let too_long = "a".repeat(101);
    assert_contract_error(
        s.get(&items(&too_long, "")).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_contract_error(
        s.get(&item(&too_long, "id")).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    s.stop().await;
}
