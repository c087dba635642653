//! Prometheus metrics: the process-wide recorder, the per-route middleware, and every metric
//! name the server emits (store metrics are named in `larder_store::metered`).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub mod names {
    pub const HTTP_REQUESTS: &str = "larder_http_requests_total";
    pub const HTTP_SECONDS: &str = "larder_http_request_seconds";
    pub const LOOKUP_KEYS: &str = "larder_lookup_keys_total";
    pub const DEGRADED: &str = "larder_lookup_degraded_total";
    pub const BREAKER_OPEN: &str = "larder_breaker_open";
    pub const SCHEMA_CACHE: &str = "larder_schema_cache_total";
}

/// The global recorder is installed once per process (tests start many servers in one
/// process; they share it).
pub fn handle() -> PrometheusHandle {
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

/// Per-route request counter and latency histogram, labelled by the matched route template.
pub async fn track(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(names::HTTP_REQUESTS, "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(names::HTTP_SECONDS, "method" => method, "route" => route)
        .record(start.elapsed().as_secs_f64());
    response
}
