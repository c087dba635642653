//! Prometheus metrics: the process-wide recorder, the per-route middleware, and every metric
//! name the server emits (store metrics are named in `larder_store::metered`).

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

pub mod names {
    pub const HTTP_REQUESTS: &str = "larder_http_requests_total";
    pub const HTTP_SECONDS: &str = "larder_http_request_seconds";
    pub const LOOKUP_KEYS: &str = "larder_lookup_keys_total";
    pub const DEGRADED: &str = "larder_lookup_degraded_total";
    pub const BREAKER_OPEN: &str = "larder_breaker_open";
    pub const SCHEMA_CACHE: &str = "larder_schema_cache_total";
}

/// The process-wide recorder (installed by [`larder_ops::recorder`], shared with workers).
pub fn handle() -> metrics_exporter_prometheus::PrometheusHandle {
    larder_ops::recorder()
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
