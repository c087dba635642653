//! The mock provider server used by tests and `larder mock-llm`: OpenAI, CLOVA v1 and CLOVA v3
//! routes answering from `brain`, with latency and deterministic fault injection.
//!
//! Routes:
//!
//! - `POST /v1/chat/completions`: OpenAI chat completions.
//! - `POST /v1/embeddings`: OpenAI embeddings; [`hashed_embedding`](crate::hashed_embedding)
//!   vectors, `dimensions` long (1..=4096, default
//!   [`DEFAULT_EMBEDDING_DIM`](crate::DEFAULT_EMBEDDING_DIM)).
//! - `POST /testapp/v1/chat-completions/{model}`: CLOVA Studio v1.
//! - `POST /v3/chat-completions/{model}`: CLOVA Studio v3.
//! - `GET /`: the route list; `GET /stats`: [`MockStats`] as JSON.

mod faults;
mod routes;
mod stats;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

pub use stats::MockStats;

/// Latency and fault injection. Each `rate_*` is a probability 0..=1 per request, drawn
/// deterministically from `seed` and the request counter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MockConfig {
    /// Mean latency of a chat answer; embeddings take a tenth of it.
    pub latency_ms: u64,
    /// Log-normal sigma; 0 = every request takes exactly `latency_ms`.
    pub latency_jitter: f64,
    pub seed: u64,
    /// 429 Too Many Requests (with `Retry-After` when `retry_after_secs` > 0).
    pub rate_429: f64,
    /// Sent as `Retry-After` on 429 and 503; 0 = no header.
    pub retry_after_secs: u64,
    /// 500 or 503.
    pub rate_5xx: f64,
    /// 200 with content that is not JSON. This and the other content faults below apply to
    /// chat routes only; embeddings get 429s, 5xx and latency.
    pub rate_garbage: f64,
    /// Items longer than `max_chars`.
    pub rate_overlong: f64,
    /// Items containing prompt-injection text ("Ignore previous instructions and …").
    pub rate_injection: f64,
    /// Items in the other language (Korean ↔ English).
    pub rate_wrong_language: f64,
    /// `{"items": []}` or "".
    pub rate_empty: f64,
    /// The same item repeated.
    pub rate_duplicates: f64,
}

/// State shared by every request of one server.
pub(crate) struct Shared {
    config: RwLock<MockConfig>,
    /// Numbers requests; with the seed it decides latency, faults and content.
    counter: AtomicU64,
    stats: Mutex<stats::Recorder>,
    started: Instant,
}

impl Shared {
    fn new(config: MockConfig) -> Shared {
        Shared {
            config: RwLock::new(config),
            counter: AtomicU64::new(0),
            stats: Mutex::new(stats::Recorder::default()),
            started: Instant::now(),
        }
    }

    pub(crate) fn config(&self) -> MockConfig {
        // A poisoned lock only means a panicking writer; the config itself is still whole.
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_config(&self, config: MockConfig) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
    }

    pub(crate) fn with_stats<T>(&self, f: impl FnOnce(&mut stats::Recorder) -> T) -> T {
        f(&mut self.stats.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn stats(&self) -> MockStats {
        self.with_stats(|s| s.snapshot())
    }
}

/// A mock server on 127.0.0.1, serving in a background task until dropped.
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl MockServer {
    /// Bind 127.0.0.1:0 and serve in a background tokio task; stopped on drop.
    pub async fn start(config: MockConfig) -> std::io::Result<MockServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config));
        let (tx, rx) = oneshot::channel::<()>();
        let serving = shared.clone();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.await;
            };
            if let Err(error) = serve(listener, serving, shutdown).await {
                tracing::warn!(error = %error, "mock provider server stopped with an error");
            }
        });
        Ok(MockServer {
            addr,
            shared,
            shutdown: Some(tx),
        })
    }

    /// "http://127.0.0.1:PORT"
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `base_url()` + "/v1", what an OpenAI-compatible provider is configured with.
    pub fn openai_base_url(&self) -> String {
        format!("{}/v1", self.base_url())
    }

    pub fn stats(&self) -> MockStats {
        self.shared.stats()
    }

    /// Change latency and faults at runtime; applies to requests that arrive afterwards.
    pub fn set_config(&self, config: MockConfig) {
        self.shared.set_config(config);
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Serve on an existing listener until `shutdown` resolves (what `larder mock-llm` calls).
pub async fn run(
    listener: tokio::net::TcpListener,
    config: MockConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve(listener, Arc::new(Shared::new(config)), shutdown).await
}

async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(addr = %addr, "mock provider server listening");
    }
    axum::serve(listener, routes::router(shared))
        .with_graceful_shutdown(shutdown)
        .await
}
