//! The spend and abuse guards, as separate processes over real HTTP (`larder mock-llm` and
//! `larder serve`): with auth on, only write tokens create categories, `categories.max` and the
//! per-client rate refuse new ones, a spent provider budget stops generation, and no token or
//! API key shows up in the logs (at trace level), in `/metrics` or in an answer.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use larder_testkit::support::{self, Proc};
use reqwest::{Client, Method};
use serde_json::{json, Value};

const WRITE_TOKEN: &str = "wtok-SECRET-7f3a9c11";
const WRITE_TOKEN_2: &str = "wtok-SECRET-2e8d40b7";
const READ_TOKEN: &str = "rtok-SECRET-1b2d9e05";
const OPENAI_KEY: &str = "sk-SECRET-openai-55aa0c3e";
const CLOVA_KEY: &str = "clova-SECRET-99f1e7d2";
const CLOVA_GATEWAY: &str = "gateway-SECRET-4c6b8a13";
const SECRETS: &[&str] = &[
    WRITE_TOKEN,
    WRITE_TOKEN_2,
    READ_TOKEN,
    OPENAI_KEY,
    CLOVA_KEY,
    CLOVA_GATEWAY,
];

/// `larder ARGS` with the providers' keys in its environment and every log line, down to
/// trace, in `dir/{name}.log` (stdout and stderr both).
fn larder(dir: &Path, name: &str, args: &[&str]) -> (Command, PathBuf) {
    let log = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log).expect("log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_larder"));
    command
        .args(args)
        .env("TEST_OPENAI_KEY", OPENAI_KEY)
        .env("TEST_CLOVA_KEY", CLOVA_KEY)
        .env("TEST_CLOVA_GATEWAY", CLOVA_GATEWAY)
        .env("RUST_LOG", "trace")
        .stdout(file.try_clone().expect("log file"))
        .stderr(file);
    (command, log)
}

fn mock_llm(dir: &Path) -> Proc {
    let (mut command, log) = larder(dir, "mock-llm", &["mock-llm", "--listen", "127.0.0.1:0"]);
    command.env("RUST_LOG", "info");
    Proc::announcing(command, "mock-llm", Some(log)).unwrap_or_else(|e| panic!("{e}"))
}

/// `larder serve` on the embedded store with `extra` TOML (auth, categories, limits) and the
/// mock's providers: an OpenAI-compatible and a CLOVA v1 generator, a CLOVA v3 judge.
async fn serve(dir: &Path, mock: &str, extra: &str, gpt_limits: &str) -> Proc {
    // A SQLite file, not the in-memory DB `ephemeral` would pick: that one is a single
    // connection shared by serving and the pipeline, and under trace logging on a loaded
    // machine a request could wait on the pipeline past the pool's 10 s acquire timeout.
    let db = dir.join("larder.db").display().to_string();
    let text = format!(
        r#"ephemeral = true
db = "sqlite://{db}"
{extra}

[pipeline]
seed_categories = []
generation_cooldown_ms = 0

[pipeline.generate]
generators = ["gpt", "clova-v1"]

[pipeline.evaluate]
evaluators = ["clova-v3"]

[[pipeline.providers]]
name = "gpt"
kind = "openai"
base_url = "{mock}/v1"
model = "gpt-4o-mock"
api_key_env = "TEST_OPENAI_KEY"
limits = {{ max_retries = 1, backoff_base_ms = 50{gpt_limits} }}

[[pipeline.providers]]
name = "clova-v1"
kind = "clova-v1"
base_url = "{mock}"
model = "HCX-003"
api_key_env = "TEST_CLOVA_KEY"
gateway_key_env = "TEST_CLOVA_GATEWAY"
limits = {{ max_retries = 1, backoff_base_ms = 50{gpt_limits} }}

[[pipeline.providers]]
name = "clova-v3"
kind = "clova-v3"
base_url = "{mock}"
model = "HCX-005"
api_key_env = "TEST_CLOVA_KEY"
limits = {{ max_retries = 1, backoff_base_ms = 50 }}
"#
    );
    let (command, log) = larder(dir, "serve", &[]);
    support::serve_config(command, dir, &text, Some(log))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Every answer a test got, to search for secrets afterwards.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    async fn call(
        &mut self,
        client: &Client,
        method: Method,
        url: String,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Option<String>, Value) {
        let mut request = client.request(method, url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await.expect("body");
        self.0.push(text.clone());
        (
            status,
            retry_after,
            serde_json::from_str(&text).unwrap_or(Value::Null),
        )
    }
}

fn category_url(server: &Proc, category: &str, rest: &str) -> String {
    format!(
        "{}/v1/categories/{}{rest}",
        server.url,
        support::percent_encode(category)
    )
}

fn assert_error(status: u16, body: &Value, want_status: u16, code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].as_str().is_some(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_only_writers_create_categories_within_the_caps_and_no_secret_leaks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mock = mock_llm(dir.path());
    let extra = format!(
        "[auth]\nwrite_tokens = [\"{WRITE_TOKEN}\", \"{WRITE_TOKEN_2}\"]\nread_tokens = [\"{READ_TOKEN}\"]\n\n\
         [categories]\nmax = 3\nnew_per_minute = 2\n"
    );
    let mut server = serve(dir.path(), &mock.url, &extra, "").await;
    let client = Client::new();
    let mut seen = Seen::default();

    // No token, and a wrong token that shares a prefix with a real one: 401, the guess is
    // not echoed.
    let (status, _, body) = seen
        .call(
            &client,
            Method::GET,
            category_url(&server, "x", "/items"),
            None,
            None,
        )
        .await;
    assert_error(status, &body, 401, "unauthorized");
    let guess = format!("{WRITE_TOKEN}0");
    let (status, _, body) = seen
        .call(
            &client,
            Method::PUT,
            category_url(&server, "x", ""),
            Some(&guess),
            None,
        )
        .await;
    assert_error(status, &body, 401, "unauthorized");
    assert!(!body.to_string().contains(&guess), "{body}");

    // A read of an unknown category neither registers it nor queues generation.
    let (status, _, body) = seen
        .call(
            &client,
            Method::GET,
            category_url(&server, "안전 점검", "/items"),
            Some(READ_TOKEN),
            None,
        )
        .await;
    assert_error(status, &body, 404, "not_found");
    // Again, now that the server remembers there is no view for it, and with a write token.
    for token in [READ_TOKEN, WRITE_TOKEN] {
        let (status, _, body) = seen
            .call(
                &client,
                Method::GET,
                category_url(&server, "안전 점검", "/items"),
                Some(token),
                None,
            )
            .await;
        assert_error(status, &body, 404, "not_found");
    }
    let (status, _, body) = seen
        .call(
            &client,
            Method::PUT,
            category_url(&server, "안전 점검", ""),
            Some(READ_TOKEN),
            None,
        )
        .await;
    assert_error(status, &body, 403, "forbidden");
    let (status, _, list) = seen
        .call(
            &client,
            Method::GET,
            format!("{}/v1/categories", server.url),
            Some(READ_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["categories"], json!([]), "{list}");

    // The first writer may create two a minute; a third is 429 with Retry-After; a
    // re-registration costs nothing.
    for name in ["이사 준비", "b"] {
        let (status, _, body) = seen
            .call(
                &client,
                Method::PUT,
                category_url(&server, name, ""),
                Some(WRITE_TOKEN),
                Some(json!({"description": "이사 체크리스트", "locale": "ko"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, retry_after, body) = seen
        .call(
            &client,
            Method::POST,
            category_url(&server, "c", "/refresh"),
            Some(WRITE_TOKEN),
            None,
        )
        .await;
    assert_error(status, &body, 429, "rate_limited");
    assert_eq!(retry_after.as_deref(), Some("30"));
    let (status, _, body) = seen
        .call(
            &client,
            Method::PUT,
            category_url(&server, "b", ""),
            Some(WRITE_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Another writer has its own rate, but `categories.max = 3` holds for everyone.
    let (status, _, body) = seen
        .call(
            &client,
            Method::PUT,
            category_url(&server, "c", ""),
            Some(WRITE_TOKEN_2),
            None,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, _, body) = seen
        .call(
            &client,
            Method::PUT,
            category_url(&server, "d", ""),
            Some(WRITE_TOKEN_2),
            None,
        )
        .await;
    assert_error(status, &body, 413, "too_large");

    // The registered category is generated by the mock's providers (keys sent) and served
    // to a read token.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _, body) = seen
            .call(
                &client,
                Method::GET,
                category_url(&server, "이사 준비", "/items?wait_ms=2000"),
                Some(READ_TOKEN),
                None,
            )
            .await;
        if status == 200 {
            assert!(
                !body["items"].as_array().expect("items").is_empty(),
                "{body}"
            );
            break;
        }
        assert_eq!(status, 202, "{body}");
        assert!(Instant::now() < deadline, "not ready{}", server.log_text());
    }
    let metrics = support::metrics_text(&client, &server.url)
        .await
        .expect("metrics");
    assert!(
        support::metric_sum(
            &metrics,
            "larder_provider_requests_total",
            "provider=\"gpt\""
        ) > 0.0
            && support::metric_sum(
                &metrics,
                "larder_provider_requests_total",
                "provider=\"clova-v1\""
            ) > 0.0,
        "the keyed providers were called:\n{metrics}"
    );
    seen.0.push(metrics);

    server.kill();
    let log = std::fs::read_to_string(dir.path().join("serve.log")).expect("serve log");
    // The log really is at trace level, and it logged the requests that carried secrets.
    assert!(log.contains("TRACE"), "RUST_LOG=trace took effect");
    for secret in SECRETS {
        assert!(!log.contains(secret), "{secret} is in the server log");
        for answer in &seen.0 {
            assert!(
                !answer.contains(secret),
                "{secret} is in an answer: {answer}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_provider_budget_stops_generation_and_shows_in_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mock = mock_llm(dir.path());
    // Each generator may make one call a day: the first category's generation spends it.
    let server = serve(dir.path(), &mock.url, "", ", requests_per_day = 1").await;
    let client = Client::new();
    let mut seen = Seen::default();

    seen.create(&client, &server, "first").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _, body) = seen
            .call(
                &client,
                Method::GET,
                category_url(&server, "first", "/items?wait_ms=2000"),
                None,
                None,
            )
            .await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 202, "{body}");
        assert!(Instant::now() < deadline, "not ready{}", server.log_text());
    }

    seen.create(&client, &server, "second").await;
    // The second generation is refused by both generators' budgets, without an HTTP call.
    let metrics = budget_refusals(&client, &server).await;
    for provider in ["gpt", "clova-v1"] {
        assert_eq!(
            calls(&metrics, provider),
            1.0,
            "{provider} made exactly one call:\n{metrics}"
        );
        let label = format!("provider=\"{provider}\"");
        let remaining = metrics
            .lines()
            .find(|l| {
                l.starts_with("larder_provider_budget_remaining{")
                    && l.contains(&label)
                    && l.contains("resource=\"requests\"")
            })
            .unwrap_or_else(|| panic!("no budget gauge for {provider}:\n{metrics}"));
        assert!(remaining.ends_with(" 0"), "{remaining}");
    }
    let (status, _, body) = seen
        .call(
            &client,
            Method::GET,
            category_url(&server, "second", "/items"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 202, "still pending: {body}");

    // The day's spend is counted on the main DB, not in the process: another process on it
    // (a restarted serve here, a `larder worker` elsewhere) finds the budget spent and calls
    // nobody.
    drop(server);
    let server = serve(dir.path(), &mock.url, "", ", requests_per_day = 1").await;
    seen.create(&client, &server, "third").await;
    let metrics = budget_refusals(&client, &server).await;
    for provider in ["gpt", "clova-v1"] {
        assert_eq!(calls(&metrics, provider), 0.0, "{provider}:\n{metrics}");
    }
}

impl Seen {
    /// `PUT` a new category (no token), which must answer 201.
    async fn create(&mut self, client: &Client, server: &Proc, name: &str) {
        let url = category_url(server, name, "");
        let (status, _, body) = self.call(client, Method::PUT, url, None, None).await;
        assert_eq!(status, 201, "{name}: {body}");
    }
}

/// `/metrics` once both generators have refused a call for their spent budget (within 60 s).
async fn budget_refusals(client: &Client, server: &Proc) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = support::metrics_text(client, &server.url)
            .await
            .expect("metrics");
        if support::metric_sum(&text, "larder_provider_errors_total", "kind=\"budget\"") >= 2.0 {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no budget refusal:\n{text}{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// HTTP calls `provider` made (answered or retried), from a `/metrics` page.
fn calls(metrics: &str, provider: &str) -> f64 {
    let label = format!("provider=\"{provider}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("larder_provider_requests_total{") && l.contains(&label))
        .filter(|l| l.contains("outcome=\"ok\"") || l.contains("outcome=\"retry\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
