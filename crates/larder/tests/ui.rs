//! The operator page and its event stream, against a running `larder serve` on the embedded
//! default (the demo categories, simulated providers): a real SSE client reads `/v1/events`,
//! and headless Chromium (driven by Selenium from PyPI, `tests/python/ui_check.py`) opens
//! `/ui`, waits for a category to turn ready, clicks it, checks its ranked items, saves a
//! screenshot (`target/tmp/ui.png`), and follows a deep link.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use larder_testkit::support::{self, Proc, Sse};
use serde_json::Value;

async fn serve(dir: &Path) -> Proc {
    let port = support::free_port().expect("free port");
    let mut command = Command::new(env!("CARGO_BIN_EXE_larder"));
    command
        .args(["serve", "--ephemeral", "--grpc-listen", "off"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir)
        .env_remove("LARDER_STORE")
        // A SQLite file, not the one in-memory connection serving would share with the demo's
        // pipeline.
        .env(
            "LARDER_DB",
            format!("sqlite://{}", dir.join("larder.db").display()),
        )
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("serve.log")).expect("log"));
    Proc::ready(
        command,
        "serve",
        format!("http://127.0.0.1:{port}"),
        Some(dir.join("serve.log")),
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_reports_a_generation_from_start_to_published_view() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path()).await;
    let client = reqwest::Client::new();
    let mut events = Sse::open(&client, &format!("{}/v1/events", server.url))
        .await
        .expect("GET /v1/events is an event stream");
    let category = "sse 점검";
    let refresh = client
        .post(format!(
            "{}/v1/categories/{}/refresh",
            server.url,
            support::percent_encode(category)
        ))
        .send()
        .await
        .expect("refresh");
    assert_eq!(refresh.status(), 202);

    let mut seen: Vec<(String, Value)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let (name, data) = events
            .next(Duration::from_secs(30))
            .await
            .expect("an event within 30 s");
        let data: Value = serde_json::from_str(&data).expect("data is JSON");
        // The rank stage publishes the view, then finishes its job.
        let done = name == "stage"
            && data["category"] == category
            && data["stage"] == "rank"
            && data["state"] == "finished";
        seen.push((name, data));
        if done {
            break;
        }
    }
    let ours = |name: &str| -> Vec<&Value> {
        seen.iter()
            .filter(|(n, d)| n == name && d["category"] == category)
            .map(|(_, d)| d)
            .collect()
    };
    let views = ours("view");
    assert!(
        !views.is_empty() && views.iter().all(|v| v["items"].as_u64() > Some(0)),
        "{seen:?}"
    );
    for stage in ["generate", "filter", "evaluate", "rank"] {
        for state in ["started", "finished"] {
            assert!(
                ours("stage")
                    .iter()
                    .any(|d| d["stage"] == stage && d["state"] == state),
                "no {stage} {state}: {seen:?}"
            );
        }
    }
    let filtered = ours("filtered");
    assert!(!filtered.is_empty(), "{seen:?}");
    let kept: u64 = filtered.iter().filter_map(|d| d["kept"].as_u64()).sum();
    assert!(kept > 0, "{filtered:?}");
    assert!(
        filtered.iter().all(|d| d["rejected"].is_object()),
        "{filtered:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_watches_the_demo_turn_ready_and_opens_a_category() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path()).await;
    let page = reqwest::get(format!("{}/ui", server.url))
        .await
        .expect("GET /ui");
    assert_eq!(page.status(), 200);
    assert!(page.text().await.expect("html").contains("/v1/events"));

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui.png");
    let _ = std::fs::remove_file(&screenshot);
    let out = tokio::task::spawn_blocking({
        let (base, screenshot) = (server.url.clone(), screenshot.clone());
        move || {
            larder_testkit::python::chromium_check(
                Path::new(env!("CARGO_TARGET_TMPDIR")),
                &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/ui_check.py"),
                &[&base, screenshot.to_str().expect("utf-8 path")],
            )
        }
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}{}",
        String::from_utf8_lossy(&out.stderr),
        server.log_text()
    );
    assert!(stdout.starts_with("ok: clicked"), "{stdout}");
    let png = std::fs::read(&screenshot).expect("screenshot saved");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
}
