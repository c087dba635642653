//! The mock's HTTP routes. One handler body serves the three wire formats; `Wire` holds what
//! differs between them (auth header, request body, answer and error shapes).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};

use super::faults::{self, chance};
use super::Shared;
use crate::{brain, ChatMessage, Role, Usage};

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/stats", get(stats))
        .route("/v1/chat/completions", post(openai))
        .route("/testapp/v1/chat-completions/{model}", post(clova_v1))
        .route("/v3/chat-completions/{model}", post(clova_v3))
        .with_state(shared)
}

async fn root() -> &'static str {
    "larder mock-llm: POST /v1/chat/completions, /testapp/v1/chat-completions/{model}, /v3/chat-completions/{model}\n"
}

async fn stats(State(shared): State<Arc<Shared>>) -> Json<super::MockStats> {
    Json(shared.stats())
}

async fn openai(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    chat(shared, Wire::OpenAi, None, headers, body).await
}

async fn clova_v1(
    State(shared): State<Arc<Shared>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    chat(shared, Wire::ClovaV1, Some(model), headers, body).await
}

async fn clova_v3(
    State(shared): State<Arc<Shared>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    chat(shared, Wire::ClovaV3, Some(model), headers, body).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    OpenAi,
    ClovaV1,
    ClovaV3,
}

/// A chat request decoded from any of the wire formats.
struct Parsed {
    model: String,
    messages: Vec<ChatMessage>,
    json: bool,
}

/// Counts a request as in flight until its handler finishes or is dropped (client gone).
struct Flight(Arc<Shared>);

impl Drop for Flight {
    fn drop(&mut self) {
        self.0.with_stats(|s| s.leave());
    }
}

async fn chat(
    shared: Arc<Shared>,
    wire: Wire,
    model: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let since_start = shared.started.elapsed();
    shared.with_stats(|s| s.enter(wire.route(), since_start));
    let _flight = Flight(shared.clone());
    let response = answer(&shared, wire, model, &headers, &body).await;
    shared.with_stats(|s| s.status(response.status().as_u16()));
    response
}

async fn answer(
    shared: &Shared,
    wire: Wire,
    model: Option<String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let config = shared.config();
    let n = shared.counter.fetch_add(1, Ordering::Relaxed);
    let mut rng = brain::rng_for(&[config.seed, n, 0x6d6f_636b]);

    if let Err(message) = wire.authorize(headers) {
        return wire.error(StatusCode::UNAUTHORIZED, &message, None);
    }
    if wire != Wire::OpenAi && headers.contains_key("x-ncp-clovastudio-request-id") {
        shared.with_stats(|s| s.request_id());
    }
    let parsed = match wire.parse(body, model) {
        Ok(parsed) => parsed,
        Err(message) => return wire.error(StatusCode::BAD_REQUEST, &message, None),
    };
    let retry_after = (config.retry_after_secs > 0).then_some(config.retry_after_secs);
    // A real rate limiter answers before the model runs, so 429s skip the latency.
    if chance(&mut rng, config.rate_429) {
        shared.with_stats(|s| s.fault("rate_429"));
        return wire.error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate limit reached",
            retry_after,
        );
    }
    let delay = brain::latency(config.latency_ms, config.latency_jitter, &mut rng);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if chance(&mut rng, config.rate_5xx) {
        shared.with_stats(|s| s.fault("5xx"));
        return if rng.random::<bool>() {
            wire.error(
                StatusCode::SERVICE_UNAVAILABLE,
                "service unavailable",
                retry_after,
            )
        } else {
            wire.error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal server error",
                None,
            )
        };
    }
    let content = faults::content(
        &parsed.messages,
        parsed.json,
        &config,
        &mut rng,
        n,
        |kind| shared.with_stats(|s| s.fault(kind)),
    );
    let usage = brain::usage(&parsed.messages, &content);
    (
        StatusCode::OK,
        Json(wire.success(&parsed.model, &content, usage, n)),
    )
        .into_response()
}

#[derive(Deserialize)]
struct OpenAiBody {
    model: String,
    messages: Vec<WireMessage>,
    #[serde(default)]
    response_format: Option<FormatBody>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    max_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct FormatBody {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClovaBody {
    messages: Vec<WireMessage>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    top_k: Option<i64>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    max_tokens: Option<i64>,
    #[serde(default)]
    repeat_penalty: Option<f64>,
    #[serde(default)]
    repetition_penalty: Option<f64>,
}

#[derive(Deserialize)]
struct WireMessage {
    role: Role,
    content: Content,
}

/// A string, or (OpenAI, CLOVA v3) a list of typed parts of which the text ones count.
#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(default)]
    text: Option<String>,
}

impl WireMessage {
    fn into_message(self) -> ChatMessage {
        let content = match self.content {
            Content::Text(text) => text,
            Content::Parts(parts) => parts
                .into_iter()
                .filter_map(|p| p.text)
                .collect::<Vec<_>>()
                .join("\n"),
        };
        ChatMessage {
            role: self.role,
            content,
        }
    }
}

fn in_range(name: &str, value: Option<f64>, low_exclusive: f64, high: f64) -> Result<(), String> {
    match value {
        Some(v) if !(v > low_exclusive && v <= high) => Err(format!(
            "{name} must be > {low_exclusive} and <= {high}, got {v}"
        )),
        _ => Ok(()),
    }
}

impl Wire {
    fn route(self) -> &'static str {
        match self {
            Wire::OpenAi => "openai",
            Wire::ClovaV1 => "clova-v1",
            Wire::ClovaV3 => "clova-v3",
        }
    }

    /// OpenAI-compatible servers often run without keys (Ollama), so a missing header is
    /// fine there; a malformed one is not. CLOVA always needs its key.
    fn authorize(self, headers: &HeaderMap) -> Result<(), String> {
        let bearer = || {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(|v| {
                    v.strip_prefix("Bearer ")
                        .is_some_and(|key| !key.trim().is_empty())
                })
        };
        match self {
            Wire::OpenAi => match bearer() {
                Some(false) => Err("Authorization must be 'Bearer <key>'".into()),
                _ => Ok(()),
            },
            Wire::ClovaV1 => {
                let key = headers
                    .get("x-ncp-clovastudio-api-key")
                    .and_then(|v| v.to_str().ok());
                match key {
                    Some(k) if !k.trim().is_empty() => Ok(()),
                    _ => Err("missing X-NCP-CLOVASTUDIO-API-KEY".into()),
                }
            }
            Wire::ClovaV3 => match bearer() {
                Some(true) => Ok(()),
                _ => Err("missing Authorization: Bearer <key>".into()),
            },
        }
    }

    fn parse(self, body: &[u8], path_model: Option<String>) -> Result<Parsed, String> {
        let (model, messages, json) = match self {
            Wire::OpenAi => {
                let body: OpenAiBody =
                    serde_json::from_slice(body).map_err(|e| format!("invalid body: {e}"))?;
                let json = match body.response_format.as_ref().map(|f| f.kind.as_str()) {
                    None | Some("text") => false,
                    Some("json_object" | "json_schema") => true,
                    Some(other) => return Err(format!("unknown response_format type {other:?}")),
                };
                match body.temperature {
                    Some(t) if !(0.0..=2.0).contains(&t) => {
                        return Err(format!("temperature {t} is not in 0..=2"))
                    }
                    _ => {}
                }
                if body.max_tokens == Some(0) {
                    return Err("max_tokens must be at least 1".into());
                }
                (body.model, body.messages, json)
            }
            Wire::ClovaV1 | Wire::ClovaV3 => {
                let body: ClovaBody =
                    serde_json::from_slice(body).map_err(|e| format!("invalid body: {e}"))?;
                in_range(
                    "temperature",
                    body.temperature,
                    if self == Wire::ClovaV1 {
                        0.0
                    } else {
                        -f64::MIN_POSITIVE
                    },
                    1.0,
                )?;
                in_range("topP", body.top_p, 0.0, 1.0)?;
                in_range("repeatPenalty", body.repeat_penalty, 0.0, 10.0)?;
                in_range("repetitionPenalty", body.repetition_penalty, 0.0, 10.0)?;
                if body.top_k.is_some_and(|k| !(0..=128).contains(&k)) {
                    return Err("topK must be in 0..=128".into());
                }
                if body.max_tokens.is_some_and(|m| !(1..=8192).contains(&m)) {
                    return Err("maxTokens must be in 1..=8192".into());
                }
                (path_model.unwrap_or_default(), body.messages, true)
            }
        };
        if model.trim().is_empty() {
            return Err("model is required".into());
        }
        if messages.is_empty() {
            return Err("messages must not be empty".into());
        }
        Ok(Parsed {
            model,
            messages: messages
                .into_iter()
                .map(WireMessage::into_message)
                .collect(),
            json,
        })
    }

    fn success(self, model: &str, content: &str, usage: Usage, n: u64) -> Value {
        let created_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let ok = json!({"code": "20000", "message": "OK"});
        let message = json!({"role": "assistant", "content": content});
        match self {
            Wire::OpenAi => json!({
                "id": format!("chatcmpl-mock-{n}"),
                "object": "chat.completion",
                "created": created_ms / 1000,
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                    "total_tokens": usage.prompt_tokens + usage.completion_tokens,
                },
            }),
            Wire::ClovaV1 => json!({
                "status": ok,
                "result": {
                    "message": message,
                    "inputLength": usage.prompt_tokens,
                    "outputLength": usage.completion_tokens,
                    "stopReason": "stop_before",
                    "seed": n,
                    "aiFilter": [],
                },
            }),
            Wire::ClovaV3 => json!({
                "status": ok,
                "result": {
                    "created": created_ms,
                    "usage": {
                        "promptTokens": usage.prompt_tokens,
                        "completionTokens": usage.completion_tokens,
                        "totalTokens": usage.prompt_tokens + usage.completion_tokens,
                    },
                    "message": message,
                    "finishReason": "stop",
                    "seed": n,
                    "aiFilter": [],
                },
            }),
        }
    }

    /// An error in the wire format's own shape, with `Retry-After` when given.
    fn error(self, status: StatusCode, message: &str, retry_after_secs: Option<u64>) -> Response {
        let body = match self {
            Wire::OpenAi => {
                let (kind, code) = match status.as_u16() {
                    401 => ("invalid_request_error", "invalid_api_key"),
                    429 => ("requests", "rate_limit_exceeded"),
                    400..=499 => ("invalid_request_error", "invalid_request"),
                    _ => ("server_error", "server_error"),
                };
                json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
            }
            Wire::ClovaV1 | Wire::ClovaV3 => {
                let code = match status.as_u16() {
                    400 => "40001",
                    401 => "40100",
                    429 => "42900",
                    _ => "50000",
                };
                json!({"status": {"code": code, "message": message}})
            }
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
