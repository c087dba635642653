//! `POST /v1/namespaces/{ns}/lookup`: batch lookup answered as JSON or safetensors.
//!
//! When the store fails, times out, or the circuit breaker is open, the lookup still answers
//! 200 with the namespace's fallback vectors (else zeros), `degraded: true`, the
//! `X-Larder-Degraded: 1` header and every row marked not present.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use larder_store::Looked;
use serde::Deserialize;

use crate::answer::{self, Answer};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, JsonBody};
use crate::metrics::names;
use crate::routes::entities::check_key;
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupRequest {
    keys: Vec<String>,
    #[serde(default)]
    fields: Option<Vec<String>>,
    #[serde(default)]
    dtype: OutDtype,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum OutDtype {
    #[default]
    F32,
    Stored,
}

pub async fn lookup(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<LookupRequest>,
) -> ApiResult<Response> {
    let answer = answer(&state, &name, req.keys, req.fields).await?;
    let binary = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/octet-stream"));
    let mut response = if binary {
        let body = answer::safetensors(&answer, req.dtype == OutDtype::Stored)?;
        ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response()
    } else {
        let body = answer::json(&answer)?;
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    };
    if answer.fallback.is_some() {
        response
            .headers_mut()
            .insert("x-larder-degraded", HeaderValue::from_static("1"));
    }
    Ok(response)
}

/// A batch lookup of `keys` in the namespace (or alias) `name`, validated, resolved, fetched,
/// and answered degraded when the store cannot: what the HTTP and gRPC lookups both answer.
pub(crate) async fn answer(
    state: &AppState,
    name: &str,
    keys: Vec<String>,
    fields: Option<Vec<String>>,
) -> ApiResult<Answer> {
    ApiError::check_limit(
        keys.len(),
        state.config.limits.max_lookup_keys,
        "keys in one lookup",
    )?;
    for key in &keys {
        check_key(key)?;
    }
    // One deadline for the whole request: the schema (when it is not cached) and the lookup.
    let deadline = Instant::now() + Duration::from_millis(state.config.timeouts.lookup_ms);
    let (ns, schema) = match tokio::time::timeout_at(deadline.into(), state.namespace(name)).await {
        Ok(resolved) => resolved?,
        Err(_) => {
            return Err(ApiError::Unavailable(format!(
                "the store did not answer for namespace {name:?} within {} ms",
                state.config.timeouts.lookup_ms
            )))
        }
    };
    let names: Vec<String> = match fields {
        Some(fields) => fields,
        None => schema.fields.keys().cloned().collect(),
    };
    if let Some(twice) = names
        .iter()
        .enumerate()
        .find(|(i, name)| names[..*i].contains(name))
    {
        return Err(ApiError::BadRequest(format!(
            "field {:?} is listed twice",
            twice.1
        )));
    }
    let fields = names
        .iter()
        .map(|name| {
            schema
                .fields
                .get(name)
                .map(|spec| (name.clone(), *spec))
                .ok_or_else(|| ApiError::UnknownField(format!("namespace has no field {name:?}")))
        })
        .collect::<ApiResult<Vec<_>>>()?;
    metrics::counter!(names::LOOKUP_KEYS).increment(keys.len() as u64);
    state.hot.record(&ns, &keys);

    let looked = fetch(state, &ns, &keys, &names, deadline).await;
    let near_cache = state.config.near_cache.is_some();
    Ok(match looked {
        Some(looked) => Answer {
            keys,
            fallback: None,
            rows: looked.rows,
            cached: near_cache.then_some(looked.cached),
            fields,
        },
        None => Answer {
            fallback: Some(answer::fallback_bytes(&schema, &fields)?),
            keys,
            rows: Vec::new(),
            cached: near_cache.then_some(0),
            fields,
        },
    })
}

/// Ask the store unless the breaker is open; `None` means "answer degraded".
async fn fetch(
    state: &AppState,
    ns: &str,
    keys: &[String],
    fields: &[String],
    deadline: Instant,
) -> Option<Looked> {
    let Some(permit) = state.breaker.allow() else {
        metrics::counter!(names::DEGRADED, "reason" => "breaker_open").increment(1);
        return None;
    };
    let lookup = state.store.lookup_counted(ns, keys, fields);
    match tokio::time::timeout_at(deadline.into(), lookup).await {
        Ok(Ok(rows)) => {
            permit.record(true);
            Some(rows)
        }
        Ok(Err(error)) => {
            tracing::debug!(%error, ns, "lookup failed; answering degraded");
            metrics::counter!(names::DEGRADED, "reason" => "store_error").increment(1);
            permit.record(false);
            None
        }
        Err(_) => {
            tracing::debug!(ns, "lookup timed out; answering degraded");
            metrics::counter!(names::DEGRADED, "reason" => "timeout").increment(1);
            permit.record(false);
            None
        }
    }
}
