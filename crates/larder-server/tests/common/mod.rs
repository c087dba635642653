//! Test support shared by the HTTP test binaries (`tests/api.rs`, `tests/categories.rs`): a
//! real server on port 0 and the contract's error-shape assertion.
//!
//! Each test binary compiles this module separately and uses only part of it, so unused items
//! are expected in any one binary.
#![allow(dead_code)]

use std::time::Duration;

use larder_server::config::Config;
use reqwest::header::HeaderMap;
use reqwest::{Client, StatusCode};
use serde_json::Value;

/// A server on an ephemeral port, stopped (gracefully, bounded) by [`TestServer::stop`].
pub struct TestServer {
    pub base: String,
    pub client: Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    /// Serve `config`. Tests never write the main DB into the working directory: without an
    /// explicit `db`, it lives in memory.
    pub async fn start(mut config: Config) -> TestServer {
        if config.db.is_none() {
            config.db = Some(larder_server::config::DbUrl::SqliteMemory);
        }
        // Tests run many servers at once: the default gRPC port would collide. Tests of the
        // gRPC API choose a free port themselves.
        if config.grpc_listen == Config::default().grpc_listen {
            config.grpc_listen = None;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind port 0");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            larder_server::run(listener, config, async {
                let _ = rx.await;
            })
            .await
            .expect("server runs");
        });
        TestServer {
            base,
            client: Client::new(),
            stop: Some(tx),
            task,
        }
    }

    pub async fn on(store: &str) -> TestServer {
        TestServer::start(Config {
            store: store.parse().expect("store URL"),
            ephemeral: true,
            ..Config::default()
        })
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Send a request and return its status, headers and body (JSON, a JSON string for a
    /// non-JSON body, or null when empty).
    pub async fn exchange(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut req = self.client.request(method, self.url(path));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, headers, value)
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (status, _, value) = self.exchange(method, path, body).await;
        (status, value)
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn lookup_binary(&self, ns: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/v1/namespaces/{ns}/lookup")))
            .header("accept", "application/octet-stream")
            .json(&body)
            .send()
            .await
            .expect("lookup")
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
    }
}

pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

/// The contract's error shape: this status, this code, and a message.
#[track_caller]
pub fn assert_error(
    (status, body): (StatusCode, Value),
    expected: StatusCode,
    expected_code: &str,
) {
    assert_eq!((status, code(&body)), (expected, expected_code), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error has a message: {body}"
    );
}
