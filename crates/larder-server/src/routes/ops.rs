//! `/healthz`, `/readyz`, `/metrics`, `/openapi.json`.

use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub use larder_ops::healthz;

/// `GET /metrics`: what every Larder process serves, and the hot keys.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = larder_ops::recorder().render();
    text.push_str(&state.hot.render());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// Ready when the store answers a ping within the response timeout. With a backup, the body
/// also says whether the backup answers (writes are refused while it does not) and how many
/// writes wait to be replayed into the store.
pub async fn readyz(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let timeout = Duration::from_millis(state.config.timeouts.response_ms);
    match tokio::time::timeout(timeout, state.store.ping()).await {
        Ok(Ok(())) => {
            let mut body = json!({"status": "ready", "store": state.store.backend()});
            if let Some(backup) = state.store.backup_status().await {
                body["backup"] = json!(backup);
                if backup.replay_backlog > 0 {
                    body["status"] = json!("replaying");
                }
            }
            Ok(Json(body))
        }
        Ok(Err(error)) => Err(ApiError::Unavailable(format!(
            "store is not answering: {error}"
        ))),
        Err(_) => Err(ApiError::Unavailable(format!(
            "store did not answer a ping within {timeout:?}"
        ))),
    }
}

pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../openapi.json"),
    )
}
