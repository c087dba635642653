//! The mock's HTTP routes. One handler body serves the three chat wire formats; `Wire` holds
//! what differs between them (auth header, request body, answer and error shapes).
//! `POST /v1/embeddings` (OpenAI's wire) shares the counting, auth, error shapes, 429/5xx
//! faults and latency with them.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::rngs::StdRng;
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};

use super::faults::{self, chance};
use super::{MockConfig, Shared};
use crate::embedding::{self, DEFAULT_EMBEDDING_DIM};
use crate::{brain, ChatMessage, Role, Usage};

/// The largest `dimensions` an embeddings request may ask for.
const MAX_EMBEDDING_DIM: u64 = 4096;
/// OpenAI's limit on inputs per embeddings request.
const MAX_EMBEDDING_INPUTS: usize = 2048;
/// Embeddings take this fraction of `latency_ms`: there are no tokens to generate.
const EMBED_LATENCY_DIVISOR: u64 = 10;
/// The `by_route` name of `POST /v1/embeddings`.
const EMBEDDINGS_ROUTE: &str = "openai-embeddings";

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/stats", get(stats))
        .route("/v1/chat/completions", post(openai))
        .route("/v1/embeddings", post(embeddings))
        .route("/testapp/v1/chat-completions/{model}", post(clova_v1))
        .route("/v3/chat-completions/{model}", post(clova_v3))
        .with_state(shared)
}

async fn root() -> &'static str {
    "larder mock-llm: POST /v1/chat/completions, /v1/embeddings, /testapp/v1/chat-completions/{model}, /v3/chat-completions/{model}; GET /stats\n"
}

async fn stats(State(shared): State<Arc<Shared>>) -> Json<super::MockStats> {
    Json(shared.stats())
}

async fn openai(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    chat(shared, Wire::OpenAi, None, headers, body).await
}

async fn embeddings(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    counted(
        &shared,
        EMBEDDINGS_ROUTE,
        embeddings_answer(&shared, &headers, &body),
    )
    .await
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
    counted(
        &shared,
        wire.route(),
        answer(&shared, wire, model, &headers, &body),
    )
    .await
}

/// Runs a model route's `answer`, counted in the stats as a request on `route`, in flight
/// until it finishes, with its status.
async fn counted(
    shared: &Arc<Shared>,
    route: &'static str,
    answer: impl Future<Output = Response>,
) -> Response {
    let since_start = shared.started.elapsed();
    shared.with_stats(|s| s.enter(route, since_start));
    let _flight = Flight(shared.clone());
    let response = answer.await;
    shared.with_stats(|s| s.status(response.status().as_u16()));
    response
}

/// The HTTP-level faults every model route goes through, in this order: a 429 (before the
/// model runs, so without latency), the latency of `latency_ms`, then a 500/503.
async fn http_faults(
    shared: &Shared,
    wire: Wire,
    config: &MockConfig,
    latency_ms: u64,
    rng: &mut StdRng,
) -> Result<(), Response> {
    let retry_after = (config.retry_after_secs > 0).then_some(config.retry_after_secs);
    // A real rate limiter answers before the model runs, so 429s skip the latency.
    if chance(rng, config.rate_429) {
        shared.with_stats(|s| s.fault("rate_429"));
        return Err(wire.error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate limit reached",
            retry_after,
        ));
    }
    let delay = brain::latency(latency_ms, config.latency_jitter, rng);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if chance(rng, config.rate_5xx) {
        shared.with_stats(|s| s.fault("5xx"));
        return Err(if rng.random::<bool>() {
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
        });
    }
    Ok(())
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
    if let Err(fault) = http_faults(shared, wire, &config, config.latency_ms, &mut rng).await {
        return fault;
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

/// `POST /v1/embeddings`: a [`hashed_embedding`](embedding::hashed_embedding) per input,
/// `dimensions` long (default [`DEFAULT_EMBEDDING_DIM`]). Goes through the 429/5xx faults
/// and a tenth of the latency; content faults (garbage, overlong, …) are about what a model
/// writes and do not apply.
async fn embeddings_answer(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Response {
    let wire = Wire::OpenAi;
    let config = shared.config();
    let n = shared.counter.fetch_add(1, Ordering::Relaxed);
    let mut rng = brain::rng_for(&[config.seed, n, 0x6d6f_636b]);

    if let Err(message) = wire.authorize(headers) {
        return wire.error(StatusCode::UNAUTHORIZED, &message, None);
    }
    let request = match parse_embeddings(body) {
        Ok(request) => request,
        Err(message) => return wire.error(StatusCode::BAD_REQUEST, &message, None),
    };
    let latency_ms = config.latency_ms / EMBED_LATENCY_DIVISOR;
    if let Err(fault) = http_faults(shared, wire, &config, latency_ms, &mut rng).await {
        return fault;
    }
    let answer = embedding::embed_all(&request.input, request.dim);
    let data: Vec<Value> = answer
        .vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| json!({"object": "embedding", "index": index, "embedding": vector}))
        .collect();
    let tokens = answer.usage.prompt_tokens;
    (
        StatusCode::OK,
        Json(json!({
            "object": "list",
            "data": data,
            "model": request.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })),
    )
        .into_response()
}

/// An embeddings request, checked as OpenAI checks it.
struct EmbeddingsRequest {
    model: String,
    input: Vec<String>,
    dim: usize,
}

#[derive(Deserialize)]
struct EmbeddingsBody {
    model: String,
    input: Value,
    #[serde(default)]
    dimensions: Option<Value>,
    #[serde(default)]
    encoding_format: Option<String>,
}

fn parse_embeddings(body: &[u8]) -> Result<EmbeddingsRequest, String> {
    let body: EmbeddingsBody =
        serde_json::from_slice(body).map_err(|e| format!("invalid body: {e}"))?;
    if body.model.trim().is_empty() {
        return Err("model is required".into());
    }
    let not_text = || "input must be a string or an array of strings".to_owned();
    let input = match body.input {
        Value::String(text) => vec![text],
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::String(text) => Ok(text),
                _ => Err(not_text()),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err(not_text()),
    };
    if input.is_empty() {
        return Err("input must not be empty".into());
    }
    if input.len() > MAX_EMBEDDING_INPUTS {
        return Err(format!(
            "input has {} items, at most {MAX_EMBEDDING_INPUTS} are allowed",
            input.len()
        ));
    }
    if let Some(i) = input.iter().position(String::is_empty) {
        return Err(format!("input[{i}] must not be an empty string"));
    }
    let dim = match body.dimensions {
        None | Some(Value::Null) => DEFAULT_EMBEDDING_DIM,
        Some(value) => match value.as_u64() {
            Some(d) if (1..=MAX_EMBEDDING_DIM).contains(&d) => d as usize,
            _ => {
                return Err(format!(
                    "dimensions must be an integer in 1..={MAX_EMBEDDING_DIM}, got {value}"
                ))
            }
        },
    };
    match body.encoding_format.as_deref() {
        None | Some("float") => {}
        Some(other) => {
            return Err(format!(
                "encoding_format {other:?} is not supported by the mock; use \"float\""
            ))
        }
    }
    Ok(EmbeddingsRequest {
        model: body.model,
        input,
        dim,
    })
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
