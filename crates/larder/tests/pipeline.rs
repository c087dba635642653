//! The category pipeline end to end, as separate processes over real HTTP: `larder mock-llm`
//! speaking the OpenAI and both CLOVA Studio wire formats, `larder serve`, and one
//! `larder worker` per stage on real Redis Streams, sharing a SQLite main DB.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use larder_testkit::support::{self, Proc, Sse};
use larder_testkit::RedisServer;
use serde_json::{json, Value};

fn free_port() -> u16 {
    support::free_port().expect("free port")
}

/// `larder ARGS` with the mock's test keys, its stderr in `dir/{name}.log`.
fn larder(dir: &Path, name: &str, args: &[&str]) -> (Command, PathBuf) {
    let log = dir.join(format!("{name}.log"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_larder"));
    command
        .args(args)
        .env("TEST_CLOVA_KEY", "clova-test-key")
        .env("TEST_CLOVA_GATEWAY", "clova-test-gateway")
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).expect("log file"));
    (command, log)
}

/// Start `larder ARGS` whose first stdout line ends with its URL.
fn start_announcing(dir: &Path, name: &str, args: &[&str]) -> Proc {
    let (command, log) = larder(dir, name, args);
    Proc::announcing(command, name, Some(log)).unwrap_or_else(|e| panic!("{e}"))
}

fn mock_llm(dir: &Path, extra: &[&str]) -> Proc {
    let mut args = vec!["mock-llm", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    start_announcing(dir, "mock-llm", &args)
}

fn worker(dir: &Path, config: &Path, stage: &str, n: usize) -> Proc {
    start_announcing(
        dir,
        &format!("worker-{stage}-{n}"),
        &[
            "worker",
            "--stage",
            stage,
            "--config",
            config.to_str().expect("utf-8"),
        ],
    )
}

async fn serve(dir: &Path, config: &Path, port: u16) -> Proc {
    let (mut command, log) = larder(
        dir,
        &format!("serve-{port}"),
        &["serve", "--config", config.to_str().expect("utf-8")],
    );
    command
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--grpc-listen", "off"])
        .stdout(Stdio::null());
    Proc::ready(
        command,
        "serve",
        format!("http://127.0.0.1:{port}"),
        Some(log),
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Every provider on the mock: an OpenAI-compatible and a CLOVA v1 writer, a CLOVA v3 judge;
/// the main DB is a SQLite file in `dir`.
fn config(dir: &Path, store: &str, mock: &str, extra_pipeline: &str) -> PathBuf {
    let db = format!("sqlite://{}", dir.join("larder.db").display());
    config_with_db(dir, store, &db, mock, extra_pipeline)
}

fn config_with_db(dir: &Path, store: &str, db: &str, mock: &str, extra_pipeline: &str) -> PathBuf {
    let path = dir.join("larder.toml");
    let text = format!(
        r#"store = "{store}"
db = "{db}"

[pipeline]
seed_categories = []
claim_idle_ms = 1500
generation_cooldown_ms = 0
{extra_pipeline}

[pipeline.generate]
generators = ["gpt", "clova-v1"]

[pipeline.evaluate]
evaluators = ["clova-v3"]

[[pipeline.providers]]
name = "gpt"
kind = "openai"
base_url = "{mock}/v1"
model = "gpt-4o-mock"
limits = {{ max_retries = 2, backoff_base_ms = 50 }}

[[pipeline.providers]]
name = "clova-v1"
kind = "clova-v1"
base_url = "{mock}"
model = "HCX-003"
api_key_env = "TEST_CLOVA_KEY"
gateway_key_env = "TEST_CLOVA_GATEWAY"
limits = {{ max_retries = 2, backoff_base_ms = 50 }}

[[pipeline.providers]]
name = "clova-v3"
kind = "clova-v3"
base_url = "{mock}"
model = "HCX-005"
api_key_env = "TEST_CLOVA_KEY"
limits = {{ max_retries = 2, backoff_base_ms = 50 }}
"#
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn path_of(category: &str) -> String {
    support::percent_encode(category)
}

async fn get(client: &reqwest::Client, url: String) -> (u16, Value) {
    let resp = client.get(&url).send().await.expect("GET");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The served items of a category (explore=false), waiting until it is ready.
async fn ready_items(
    client: &reqwest::Client,
    server: &Proc,
    category: &str,
    within: Duration,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = get(
            client,
            format!(
                "{}/v1/categories/{}/items?limit=100&explore=false&wait_ms=2000",
                server.url,
                path_of(category)
            ),
        )
        .await;
        if status == 200 {
            return body["items"].as_array().cloned().unwrap_or_default();
        }
        assert_eq!(status, 202, "{body}");
        assert!(
            Instant::now() < deadline,
            "{category} not ready; serve log: {}",
            server.log_text()
        );
    }
}

async fn metric(client: &reqwest::Client, url: &str, name: &str, label: &str) -> f64 {
    let text = support::metrics_text(client, url).await.expect("metrics");
    support::metric_sum(&text, name, label)
}

fn redis_int(redis: &RedisServer, args: &[&str]) -> i64 {
    redis.cli(args).trim().parse().unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_on_redis_streams_serve_ranked_items_and_feedback_survives_restart() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mock = mock_llm(dir.path(), &["--latency-ms", "20"]);
    let config = config(dir.path(), &redis.url(), &mock.url, "stages = []");
    let port = free_port();
    let mut server = serve(dir.path(), &config, port).await;
    let _workers: Vec<Proc> = ["generate", "filter", "evaluate", "rank"]
        .iter()
        .map(|stage| worker(dir.path(), &config, stage, 0))
        .collect();
    let client = reqwest::Client::new();
    // The stages run in the worker processes; serve's event stream relays theirs.
    let mut events = Sse::open(&client, &format!("{}/v1/events", server.url))
        .await
        .expect("GET /v1/events");

    let category = "이사 준비";
    let resp = client
        .put(format!(
            "{}/v1/categories/{}",
            server.url,
            path_of(category)
        ))
        .json(&json!({"description": "이사 체크리스트", "locale": "ko"}))
        .send()
        .await
        .expect("register");
    assert_eq!(resp.status().as_u16(), 201);
    // Provenance: both generators' items get served (each generator's answer flows on its
    // own), every one evaluated by the CLOVA v3 judge.
    let both = HashSet::from(["gpt".to_string(), "clova-v1".to_string()]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (items, generators) = loop {
        let items = ready_items(&client, &server, category, Duration::from_secs(60)).await;
        let mut generators = HashSet::new();
        for item in &items {
            let id = item["id"].as_str().expect("id");
            let (status, detail) = get(
                &client,
                format!(
                    "{}/v1/categories/{}/items/{id}",
                    server.url,
                    path_of(category)
                ),
            )
            .await;
            assert_eq!(status, 200, "{detail}");
            generators.insert(
                detail["generator"]["provider"]
                    .as_str()
                    .expect("provider")
                    .to_string(),
            );
            assert_eq!(detail["status"], "active", "{detail}");
            assert_eq!(
                detail["evaluations"][0]["evaluator"], "clova-v3",
                "{detail}"
            );
            let text = detail["text"].as_str().expect("text");
            assert!(
                text.chars().count() <= 30 && text.chars().any(|c| ('가'..='힣').contains(&c)),
                "{text}"
            );
        }
        if generators == both || Instant::now() > deadline {
            break (items, generators);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(items.len() >= 5, "{items:?}");
    assert_eq!(generators, both);
    let mut seen = HashSet::new();
    let wanted: HashSet<String> = ["generate", "filter", "evaluate", "rank"]
        .iter()
        .flat_map(|stage| {
            [
                format!("stage {stage} started"),
                format!("stage {stage} finished"),
            ]
        })
        .chain(["filtered".to_owned(), "view".to_owned()])
        .collect();
    while !wanted.is_subset(&seen) {
        let Some((name, data)) = events.next(Duration::from_secs(20)).await else {
            panic!("worker events missing from serve's /v1/events: saw {seen:?}");
        };
        let data: Value = serde_json::from_str(&data).expect("JSON event");
        if data["category"] != category {
            continue;
        }
        seen.insert(match name.as_str() {
            "stage" => format!(
                "stage {} {}",
                data["stage"].as_str().unwrap_or("?"),
                data["state"].as_str().unwrap_or("?")
            ),
            other => other.to_owned(),
        });
    }
    // The jobs went through Redis Streams and were all acknowledged.
    assert!(redis_int(&redis, &["XLEN", "larder:q:generate"]) >= 1);
    for stage in ["generate", "filter", "evaluate", "rank"] {
        let pending = redis.cli(&["XPENDING", &format!("larder:q:{stage}"), "larder"]);
        assert!(
            pending.starts_with('0'),
            "{stage} has unacknowledged jobs: {pending}"
        );
    }

    // Users are shown the top 10 and keep picking the 10th: it moves to the top of
    // explore=false.
    let shown = items.len().min(10);
    let last = items[shown - 1]["id"].as_str().expect("id").to_string();
    // 100 rounds, sent as two requests of 50 (a request carries at most 1,000 events).
    for _ in 0..2 {
        let events: Vec<Value> = (0..50)
            .flat_map(|_| {
                items
                    .iter()
                    .take(shown)
                    .enumerate()
                    .map(|(position, item)| {
                        json!({"item_id": item["id"], "event": "impression", "position": position})
                    })
                    .chain([json!({"item_id": last, "event": "select", "position": shown - 1})])
                    .collect::<Vec<_>>()
            })
            .collect();
        let resp = client
            .post(format!(
                "{}/v1/categories/{}/feedback",
                server.url,
                path_of(category)
            ))
            .json(&json!({ "events": events }))
            .send()
            .await
            .expect("feedback");
        assert_eq!(resp.status().as_u16(), 202);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = ready_items(&client, &server, category, Duration::from_secs(5)).await;
        if now[0]["id"] == last {
            break;
        }
        if Instant::now() > deadline {
            let detail = get(
                &client,
                format!(
                    "{}/v1/categories/{}/items/{last}",
                    server.url,
                    path_of(category)
                ),
            )
            .await
            .1;
            panic!("selected item never reached the top: {detail} {now:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Feedback is durable: a killed and restarted server still has it, and serves the same top.
    server.kill();
    let server = serve(dir.path(), &config, port).await;
    let (status, detail) = get(
        &client,
        format!(
            "{}/v1/categories/{}/items/{last}",
            server.url,
            path_of(category)
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(detail["selections"], 100, "{detail}");
    assert_eq!(detail["impressions"], 100, "{detail}");
    let after = ready_items(&client, &server, category, Duration::from_secs(10)).await;
    assert_eq!(after[0]["id"], last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_loses_nothing_and_duplicates_nothing() {
    let redis = RedisServer::start();
    // The workers share a PostgreSQL main DB here (the other tests use a SQLite file).
    let postgres = larder_testkit::PostgresDb::start();
    let dir = tempfile::tempdir().expect("tempdir");
    // Slow answers, so the evaluate worker is surely mid-job when it is killed.
    let mock = mock_llm(dir.path(), &["--latency-ms", "700"]);
    let config = config_with_db(
        dir.path(),
        &redis.url(),
        &postgres.url(),
        &mock.url,
        "stages = []",
    );
    let server = serve(dir.path(), &config, free_port()).await;
    let mut workers: Vec<Proc> = ["generate", "filter", "rank"]
        .iter()
        .map(|stage| worker(dir.path(), &config, stage, 0))
        .collect();
    let mut doomed = worker(dir.path(), &config, "evaluate", 0);
    let client = reqwest::Client::new();
    let categories: Vec<String> = (0..6).map(|i| format!("moving house {i}")).collect();
    for name in &categories {
        let resp = client
            .put(format!("{}/v1/categories/{}", server.url, path_of(name)))
            .json(&json!({"locale": "en"}))
            .send()
            .await
            .expect("register");
        assert_eq!(resp.status().as_u16(), 201);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(
        &client,
        &doomed.url,
        "larder_pipeline_in_flight",
        "stage=\"evaluate\"",
    )
    .await
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the evaluate worker never got a job"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    doomed.kill(); // SIGKILL, mid-batch: its jobs are delivered but never acknowledged.
    workers.push(worker(dir.path(), &config, "evaluate", 1));

    let db = larder_db::Db::connect(&postgres.url().parse().expect("db URL"))
        .await
        .expect("main DB");
    for name in &categories {
        let items = ready_items(&client, &server, name, Duration::from_secs(60)).await;
        let ids: HashSet<&str> = items.iter().filter_map(|i| i["id"].as_str()).collect();
        assert_eq!(ids.len(), items.len(), "an item is served twice in {name}");
        let texts: HashSet<String> = items
            .iter()
            .filter_map(|i| i["text"].as_str())
            .map(larder_pipeline::text::normalize)
            .collect();
        assert_eq!(texts.len(), items.len(), "duplicate texts in {name}");
    }
    // Every job was processed: nothing left pending in any stream, no item left unevaluated,
    // nothing dead-lettered.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut stuck = Vec::new();
        for name in &categories {
            for input in db.rank_inputs(name).await.expect("rank inputs") {
                if input.status != larder_db::ItemStatus::Active {
                    stuck.push((name.clone(), input.text));
                }
            }
        }
        let pending: Vec<String> = ["generate", "filter", "evaluate", "rank"]
            .iter()
            .map(|s| redis.cli(&["XPENDING", &format!("larder:q:{s}"), "larder"]))
            .filter(|p| !p.starts_with('0'))
            .collect();
        if stuck.is_empty() && pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stuck items {stuck:?}, pending {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for stage in ["generate", "filter", "evaluate", "rank"] {
        assert_eq!(
            redis_int(&redis, &["XLEN", &format!("larder:dlq:{stage}")]),
            0,
            "{stage} dead letters"
        );
    }
    let categories_body = get(&client, format!("{}/v1/categories", server.url))
        .await
        .1;
    for c in categories_body["categories"].as_array().expect("list") {
        assert_eq!(c["status"], "ready", "{c}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_model_output_is_filtered_counted_and_never_served() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mock = mock_llm(
        dir.path(),
        &[
            "--latency-ms",
            "5",
            "--rate-garbage",
            "0.15",
            "--rate-overlong",
            "0.15",
            "--rate-injection",
            "0.15",
            "--rate-wrong-language",
            "0.15",
            "--rate-empty",
            "0.1",
            "--rate-duplicates",
            "0.15",
        ],
    );
    // Every stage in-process, but the queues are Redis Streams.
    let config = config(dir.path(), &redis.url(), &mock.url, "broker = \"redis\"");
    let server = serve(dir.path(), &config, free_port()).await;
    let client = reqwest::Client::new();
    let categories = ["이사 준비", "여행 준비", "moving house", "travel packing"];
    for name in categories {
        client
            .put(format!("{}/v1/categories/{}", server.url, path_of(name)))
            .send()
            .await
            .expect("register");
    }
    // Keep asking for more until every kind of bad output was seen and dropped.
    let reasons = [
        "not_json",
        "too_long",
        "injection",
        "wrong_locale",
        "empty",
        "duplicate",
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut missing = Vec::new();
        for reason in reasons {
            let label = format!("reason=\"{reason}\"");
            if metric(&client, &server.url, "larder_filter_rejected_total", &label).await < 1.0 {
                missing.push(reason);
            }
        }
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "never filtered: {missing:?}");
        for name in categories {
            client
                .post(format!(
                    "{}/v1/categories/{}/refresh",
                    server.url,
                    path_of(name)
                ))
                .send()
                .await
                .expect("refresh");
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let mut served = HashMap::new();
    for name in categories {
        let items = ready_items(&client, &server, name, Duration::from_secs(30)).await;
        let locale = if name.is_ascii() { "en" } else { "ko" };
        for item in &items {
            let text = item["text"].as_str().expect("text");
            assert!(text.chars().count() <= 30, "overlong served: {text}");
            assert!(
                larder_pipeline::text::injection_marker(text).is_none(),
                "injection served: {text}"
            );
            assert!(
                larder_pipeline::text::fits_locale(text, locale),
                "wrong language served in {name}: {text}"
            );
        }
        let norms: HashSet<String> = items
            .iter()
            .filter_map(|i| i["text"].as_str())
            .map(larder_pipeline::text::normalize)
            .collect();
        assert_eq!(norms.len(), items.len(), "duplicates served in {name}");
        served.insert(name, items.len());
    }
    assert!(served.values().all(|&n| n > 0), "{served:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_providers_are_retried_after_retry_after_without_a_storm() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mock = mock_llm(dir.path(), &["--rate-429", "1", "--retry-after-secs", "1"]);
    let config = config(dir.path(), &redis.url(), &mock.url, "broker = \"redis\"");
    let server = serve(dir.path(), &config, free_port()).await;
    let client = reqwest::Client::new();
    let started = Instant::now();
    let resp = client
        .put(format!("{}/v1/categories/moving%20house", server.url))
        .send()
        .await
        .expect("register");
    assert_eq!(resp.status().as_u16(), 201);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stats = get(&client, format!("{}/stats", mock.url)).await.1;
    let elapsed = started.elapsed().as_secs_f64();
    let requests = stats["requests"].as_u64().expect("requests");
    // Two generators, each waiting Retry-After (1 s) between attempts: at most one attempt per
    // generator per second (plus the first), and redelivery of the failed job only after
    // claim_idle (1.5 s). A storm would be hundreds.
    assert!(requests >= 4, "the generators did retry: {stats}");
    assert!(
        (requests as f64) <= 2.0 * (elapsed + 1.0),
        "{requests} requests in {elapsed:.1} s: {stats}"
    );
    assert!(
        stats["max_requests_per_second"].as_u64().expect("max") <= 4,
        "{stats}"
    );
    assert_eq!(stats["responses_429"], stats["requests"]);
    let retries = metric(
        &client,
        &server.url,
        "larder_provider_requests_total",
        "outcome=\"retry\"",
    )
    .await;
    assert!(retries >= 2.0, "retries are counted: {retries}");
    // Nothing was served from a failing provider, and the category says so.
    let (status, body) = get(
        &client,
        format!("{}/v1/categories/moving%20house/items", server.url),
    )
    .await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_restores_serving_views_from_the_main_db() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mock = mock_llm(dir.path(), &[]);
    let config = config(dir.path(), &redis.url(), &mock.url, "");
    let client = reqwest::Client::new();
    let before = {
        let server = serve(dir.path(), &config, free_port()).await;
        client
            .put(format!("{}/v1/categories/moving%20house", server.url))
            .send()
            .await
            .expect("register");
        ready_items(&client, &server, "moving house", Duration::from_secs(30)).await;
        // Let the pipeline finish (the second generator's answer, the refill), then take the
        // view it left.
        let mut quiet_since = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(30);
        while quiet_since.elapsed() < Duration::from_secs(1) {
            assert!(Instant::now() < deadline, "the pipeline never settled");
            if metric(&client, &server.url, "larder_pipeline_in_flight", "").await > 0.0 {
                quiet_since = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (_, body) = get(
            &client,
            format!(
                "{}/v1/categories/moving%20house/items?limit=100&explore=false",
                server.url
            ),
        )
        .await;
        body["items"].as_array().cloned().unwrap_or_default()
    };
    assert!(!before.is_empty());
    // Redis loses everything.
    assert_eq!(redis.cli(&["FLUSHALL"]), "OK");
    assert_eq!(redis_int(&redis, &["EXISTS", "larder:c:moving house"]), 0);
    let out = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(["rebuild", "--config", config.to_str().expect("utf-8")])
        .output()
        .expect("run rebuild");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("rebuilt 1 serving views"));
    assert_eq!(redis_int(&redis, &["EXISTS", "larder:c:moving house"]), 1);
    // Served again at once, without generation: the mock is gone.
    drop(mock);
    let server = serve(dir.path(), &config, free_port()).await;
    let (status, body) = get(
        &client,
        format!(
            "{}/v1/categories/moving%20house/items?limit=100&explore=false",
            server.url
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let ids = |items: &[Value]| items.iter().map(|i| i["id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(body["items"].as_array().expect("items")), ids(&before));
}
