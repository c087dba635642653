//! # larder-ops
//!
//! What every Larder process serves for its operators, the HTTP server and each
//! `larder worker` alike: the process-wide Prometheus recorder ([`recorder`]), `/healthz`,
//! `/metrics`, a `/readyz` built from a probe ([`router`]), and the contract's error body
//! (`{"error": {"code", "message"}}`, [`error_response`]), which the server's one error
//! mapping uses too.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{json, Value};

/// The global recorder is installed once per process (tests start many servers in one
/// process; they share it).
pub fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets(&buckets)
                .map(PrometheusBuilder::build_recorder)
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding application's); then
            // ours still renders what it saw, which is nothing, and that is visible at /metrics.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                })
                .ok();
            handle
        })
        .clone()
}

/// The contract's error answer: `status` with `{"error": {"code", "message"}}`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = Json(json!({"error": {"code": code, "message": message}}));
    (status, body).into_response()
}

/// `GET /healthz`: the process runs.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /metrics`: the Prometheus text format.
pub async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        recorder().render(),
    )
}

/// Why a process is not ready; `/readyz` answers `503 unavailable` with it.
pub struct Unready(pub String);

/// `/healthz`, `/metrics`, and a `/readyz` that answers `probe`'s body, or `503 unavailable`.
pub fn router<F, Fut>(probe: F) -> Router
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, Unready>> + Send + 'static,
{
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route(
            "/readyz",
            get(move || {
                let probe = probe.clone();
                async move {
                    match probe().await {
                        Ok(body) => Json(body).into_response(),
                        Err(Unready(message)) => {
                            error_response(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &message)
                        }
                    }
                }
            }),
        )
}
