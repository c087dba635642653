//! Similar-category reuse through a running `larder serve` over real HTTP: a cold category
//! whose description embeds close enough to a ready one's (`categories.reuse_threshold`) is
//! answered at once with that pool, flagged `borrowed_from`; a near miss ("Disable" against
//! "Enable two-factor authentication") and an unrelated one wait for their own; once the
//! cold category's own pool is made, it serves its own items unflagged.
//!
//! The providers are Larder's mock server (OpenAI wire format, its `/v1/embeddings` gives the
//! offline hashed n-gram vectors). While the cold categories are checked the mock answers
//! every chat with garbage, so they stay cold for as long as the test looks at them. Headless
//! Chromium checks that the operator page shows the borrow (`tests/python/ui_borrowed.py`).

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use larder_providers::mock::{MockConfig, MockServer};
use larder_testkit::support::{self, Proc};
use serde_json::{json, Value};

async fn serve(dir: &Path, mock: &str) -> Proc {
    let db = dir.join("larder.db").display().to_string();
    let config = format!(
        r#"ephemeral = true
db = "sqlite://{db}"

[categories]
reuse_provider = "embedder"

[pipeline]
seed_categories = []
generation_cooldown_ms = 0

[pipeline.generate]
generators = ["gpt"]

[pipeline.evaluate]
evaluators = ["judge"]

[[pipeline.providers]]
name = "gpt"
kind = "openai"
base_url = "{mock}"
model = "gpt-4o-mock"

[[pipeline.providers]]
name = "judge"
kind = "openai"
base_url = "{mock}"
model = "judge-mock"

[[pipeline.providers]]
name = "embedder"
kind = "openai"
base_url = "{mock}"
model = "text-embedding-mock"
"#
    );
    let mut command = Command::new(env!("CARGO_BIN_EXE_larder"));
    command
        .env("RUST_LOG", "info,larder_categories=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("serve.log")).expect("log"));
    support::serve_config(command, dir, &config, Some(dir.join("serve.log")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn json(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn items_url(server: &Proc, category: &str, query: &str) -> String {
    format!(
        "{}/v1/categories/{}/items?{query}",
        server.url,
        support::percent_encode(category)
    )
}

async fn register(client: &reqwest::Client, server: &Proc, category: &str, description: &str) {
    let (status, body) = json(
        client
            .put(format!(
                "{}/v1/categories/{}",
                server.url,
                support::percent_encode(category)
            ))
            .json(&json!({ "description": description })),
    )
    .await;
    assert_eq!((status, &body["created"]), (201, &json!(true)), "{body}");
}

/// The ids of `category`'s own items once it serves them (no `borrowed_from`).
async fn own_ids(client: &reqwest::Client, server: &Proc, category: &str) -> HashSet<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let url = items_url(server, category, "limit=100&explore=false&wait_ms=2000");
        let (status, body) = json(client.get(url)).await;
        if status == 200 && body.get("borrowed_from").is_none() {
            assert_eq!(body["status"], "ready", "{body}");
            return ids(&body);
        }
        assert!(matches!(status, 200 | 202), "{status} {body}");
        assert!(
            Instant::now() < deadline,
            "{category} not ready{}",
            server.log_text()
        );
    }
}

fn ids(body: &Value) -> HashSet<String> {
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_owned())
        .collect()
}

fn counter(metrics: &str, result: &str) -> u64 {
    let prefix = format!("larder_category_reuse_total{{result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().expect("counter value"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_category_borrows_the_pool_of_a_near_identical_one_until_its_own_is_made() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mock = MockServer::start(MockConfig::default())
        .await
        .expect("mock server");
    let server = serve(dir.path(), &mock.openai_base_url()).await;
    let client = reqwest::Client::new();

    register(
        &client,
        &server,
        "moving house",
        "Checklist items for moving house",
    )
    .await;
    register(
        &client,
        &server,
        "enable 2fa",
        "Enable two-factor authentication",
    )
    .await;
    own_ids(&client, &server, "moving house").await;
    own_ids(&client, &server, "enable 2fa").await;

    // From here every generation answers garbage: new categories stay cold.
    mock.set_config(MockConfig {
        rate_garbage: 1.0,
        ..MockConfig::default()
    });
    register(
        &client,
        &server,
        "이사 체크",
        "Checklist items for moving house",
    )
    .await;
    register(
        &client,
        &server,
        "disable 2fa",
        "Disable two-factor authentication",
    )
    .await;
    register(&client, &server, "camping", "Camping gear checklist").await;

    // Near-identical texts: borrowed at once (no wait_ms), flagged, with the source's ids.
    let (status, body) = json(client.get(items_url(&server, "이사 체크", "explore=false"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["category"], "이사 체크", "{body}");
    assert_eq!(body["status"], "pending", "{body}");
    assert_eq!(body["borrowed_from"], "moving house", "{body}");
    let borrowed = ids(&body);
    // (The source's pool may have grown by refills before the garbage began: read it now.)
    let moving = own_ids(&client, &server, "moving house").await;
    assert!(
        !borrowed.is_empty() && borrowed.is_subset(&moving),
        "{body}"
    );
    // Exploring answers borrow too.
    let (status, body) = json(client.get(items_url(&server, "이사 체크", "limit=3"))).await;
    assert_eq!(
        (status, body["items"].as_array().map(Vec::len)),
        (200, Some(3)),
        "{body}"
    );
    assert_eq!(body["borrowed_from"], "moving house");

    // The near miss (cosine 0.92 < 0.96) and the unrelated one are not borrowed.
    for cold in ["disable 2fa", "camping"] {
        let (status, body) = json(client.get(items_url(&server, cold, ""))).await;
        assert_eq!(status, 202, "{cold}: {body}");
        assert!(body.get("borrowed_from").is_none(), "{body}");
    }
    let metrics = client
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(counter(&metrics, "borrowed") >= 1, "{metrics}");
    assert!(counter(&metrics, "none") >= 2, "{metrics}");
    assert_eq!(counter(&metrics, "error"), 0, "{metrics}");

    // The operator page says the cold category is pending and links the category it borrows
    // from (headless Chromium, tests/python/ui_borrowed.py).
    let out = tokio::task::spawn_blocking({
        let base = server.url.clone();
        move || {
            larder_testkit::python::chromium_check(
                Path::new(env!("CARGO_TARGET_TMPDIR")),
                &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/ui_borrowed.py"),
                &[&base, "이사 체크", "moving house"],
            )
        }
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("ok: "),
        "{stdout}\n{}{}",
        String::from_utf8_lossy(&out.stderr),
        server.log_text()
    );

    // Healthy again: a refresh makes the category's own pool, served unflagged.
    mock.set_config(MockConfig::default());
    let (status, body) = json(client.post(format!(
        "{}/v1/categories/{}/refresh",
        server.url,
        support::percent_encode("이사 체크")
    )))
    .await;
    assert_eq!(status, 202, "{body}");
    let own = own_ids(&client, &server, "이사 체크").await;
    assert!(own.is_disjoint(&moving), "own items are this category's");
}
