//! The two halves meet: with `pipeline.embed` on, every item that joins a category's pool gets
//! a vector from an OpenAI-compatible `/v1/embeddings` provider (`larder mock-llm`), stored in
//! the namespace `items-{model}` keyed by item id, and the batch lookup serves it. Feedback
//! re-ranks embed nothing; a refresh embeds only the new items.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use larder_testkit::support::{self, Proc};
use serde_json::{json, Value};

const NAMESPACE: &str = "items-text-embedding-mock";

fn larder(dir: &Path, name: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_larder"));
    command
        .args(args)
        .env("RUST_LOG", "info")
        .env("TEST_CLOVA_KEY", "clova-test-key")
        .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).expect("log"));
    command
}

async fn serve(dir: &Path, mock: &str) -> Proc {
    // A SQLite file: the in-memory DB is one connection that serving shares with the pipeline.
    let db = dir.join("larder.db").display().to_string();
    let config = format!(
        r#"ephemeral = true
db = "sqlite://{db}"

[pipeline]
seed_categories = []
generation_cooldown_ms = 0

[pipeline.generate]
generators = ["gpt"]

[pipeline.evaluate]
evaluators = ["judge"]

[pipeline.embed]
provider = "embedder"

[[pipeline.providers]]
name = "gpt"
kind = "openai"
base_url = "{mock}/v1"
model = "gpt-4o-mock"

[[pipeline.providers]]
name = "judge"
kind = "clova-v3"
base_url = "{mock}"
model = "HCX-005"
api_key_env = "TEST_CLOVA_KEY"

[[pipeline.providers]]
name = "embedder"
kind = "openai"
base_url = "{mock}/v1"
model = "text-embedding-mock"
"#
    );
    let mut command = larder(dir, "serve", &[]);
    command.stdout(Stdio::null());
    support::serve_config(command, dir, &config, Some(dir.join("serve.log")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn json(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The ids of every active item of `category` (limit 100, explore off), once it is ready.
async fn active_ids(client: &reqwest::Client, server: &Proc, category: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = json(client.get(format!(
            "{}/v1/categories/{}/items?limit=100&explore=false&wait_ms=2000",
            server.url,
            support::percent_encode(category)
        )))
        .await;
        if status == 200 {
            return body["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|i| i["id"].as_str().expect("id").to_owned())
                .collect();
        }
        assert_eq!(status, 202, "{body}");
        assert!(Instant::now() < deadline, "not ready{}", server.log_text());
    }
}

/// Look `ids` up in the items' namespace until every one is present; their vectors.
async fn vectors(client: &reqwest::Client, server: &Proc, ids: &[String]) -> Vec<Vec<f64>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = json(
            client
                .post(format!("{}/v1/namespaces/{NAMESPACE}/lookup", server.url))
                .json(&json!({"keys": ids})),
        )
        .await;
        if status == 200 && body["missing"].as_array().is_some_and(Vec::is_empty) {
            return body["results"]
                .as_array()
                .expect("results")
                .iter()
                .map(|r| {
                    r["fields"]["embedding"]
                        .as_array()
                        .expect("a vector")
                        .iter()
                        .map(|v| v.as_f64().expect("number"))
                        .collect()
                })
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "items not embedded: {status} {body}{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn metric(client: &reqwest::Client, server: &Proc, name: &str, label: &str) -> f64 {
    let text = support::metrics_text(client, &server.url)
        .await
        .expect("metrics");
    support::metric_sum(&text, name, label)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_items_get_vectors_the_lookup_serves_and_only_new_items_are_embedded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mock = Proc::announcing(
        larder(
            dir.path(),
            "mock-llm",
            &["mock-llm", "--listen", "127.0.0.1:0"],
        ),
        "mock-llm",
        Some(dir.path().join("mock-llm.log")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let server = serve(dir.path(), &mock.url).await;
    let client = reqwest::Client::new();

    let category = "이사 준비";
    let (status, body) = json(client.put(format!(
        "{}/v1/categories/{}",
        server.url,
        support::percent_encode(category)
    )))
    .await;
    assert_eq!(status, 201, "{body}");
    let ids = active_ids(&client, &server, category).await;
    assert!(ids.len() >= 5, "{ids:?}");
    let first = vectors(&client, &server, &ids).await;
    for vector in &first {
        assert_eq!(vector.len(), 64);
        let norm: f64 = vector.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "unit vectors: {norm}");
    }
    let (status, schema) =
        json(client.get(format!("{}/v1/namespaces/{NAMESPACE}", server.url))).await;
    assert_eq!(status, 200, "{schema}");
    assert_eq!(
        schema["fields"]["embedding"],
        json!({"dim": 64, "dtype": "f32"})
    );
    // Feedback re-ranks the category (re-ranks activate nothing, so they queue no embed job;
    // refills may still be adding items meanwhile, which do get embedded).
    let events: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(position, id)| json!({"item_id": id, "event": "impression", "position": position}))
        .collect();
    let (status, body) = json(
        client
            .post(format!(
                "{}/v1/categories/{}/feedback",
                server.url,
                support::percent_encode(category)
            ))
            .json(&json!({ "events": events })),
    )
    .await;
    assert_eq!(status, 202, "{body}");

    // A refresh adds items: only they are embedded, and every active item has its vector.
    let (status, body) = json(client.post(format!(
        "{}/v1/categories/{}/refresh",
        server.url,
        support::percent_encode(category)
    )))
    .await;
    assert_eq!(status, 202, "{body}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let all = loop {
        let now = active_ids(&client, &server, category).await;
        if now.len() > ids.len() {
            break now;
        }
        assert!(Instant::now() < deadline, "the refresh added no item");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let again = vectors(&client, &server, &all).await;
    assert_eq!(again.len(), all.len());
    // Every item was embedded once: the vectors written equal the entities in the namespace
    // (refills keep adding items meanwhile, so wait for the two to meet). Had a re-rank or the
    // refresh embedded old items again, the count would stay ahead for good.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let total = metric(&client, &server, "larder_embed_items_total", "").await;
        let (status, schema) =
            json(client.get(format!("{}/v1/namespaces/{NAMESPACE}", server.url))).await;
        assert_eq!(status, 200, "{schema}");
        let entities = schema["entity_count"].as_f64().expect("entity_count");
        if total == entities && entities >= all.len() as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{total} vectors written for {entities} items{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The old items' vectors are the ones first stored.
    for (id, vector) in ids.iter().zip(&first) {
        if let Some(position) = all.iter().position(|a| a == id) {
            assert_eq!(&again[position], vector);
        }
    }
}
