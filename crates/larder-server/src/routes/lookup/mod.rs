//! `POST /v1/namespaces/{ns}/lookup`: batch lookup answered as JSON or safetensors.
//!
//! When the store fails, times out, or the circuit breaker is open, the lookup still answers
//! 200 with the namespace's fallback vectors (else zeros), `degraded: true`, the
//! `X-Larder-Degraded: 1` header and every row marked not present.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use larder_store::codec;
use larder_store::{FieldSpec, NamespaceSchema, Row};
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, JsonBody};
use crate::metrics::names;
use crate::routes::entities::check_key;
use crate::routes::namespaces::check_namespace_name;
use crate::state::AppState;

mod safetensors;

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

/// What the store answered, or the fallback when it could not.
struct Answer<'a> {
    keys: &'a [String],
    fields: Vec<(&'a str, FieldSpec)>,
    rows: Vec<Row>,
    /// Per field: stored bytes of the vector served in degraded mode.
    fallback: Option<Vec<Vec<u8>>>,
}

impl Answer<'_> {
    /// The bytes for (row, field), and whether they are real.
    fn cell(&self, row: usize, field: usize) -> (Option<&[u8]>, bool) {
        if let Some(fallback) = &self.fallback {
            return (Some(&fallback[field]), false);
        }
        match &self.rows[row] {
            Some(values) => match values[field].as_deref() {
                Some(bytes) => (Some(bytes), true),
                None => (None, false),
            },
            None => (None, false),
        }
    }
}

pub async fn lookup(
    State(state): State<AppState>,
    ApiPath(ns): ApiPath<String>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<LookupRequest>,
) -> ApiResult<Response> {
    check_namespace_name(&ns)?;
    ApiError::check_limit(
        req.keys.len(),
        state.config.limits.max_lookup_keys,
        "keys in one lookup",
    )?;
    for key in &req.keys {
        check_key(key)?;
    }
    // One deadline for the whole request: the schema (when it is not cached) and the lookup.
    let deadline = Instant::now() + Duration::from_millis(state.config.timeouts.lookup_ms);
    let schema = match tokio::time::timeout_at(deadline.into(), state.schema(&ns)).await {
        Ok(schema) => schema?,
        Err(_) => {
            return Err(ApiError::Unavailable(format!(
                "the store did not answer for namespace {ns:?} within {} ms",
                state.config.timeouts.lookup_ms
            )))
        }
    };
    let names: Vec<String> = match req.fields {
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
                .map(|spec| (name.as_str(), *spec))
                .ok_or_else(|| ApiError::UnknownField(format!("namespace has no field {name:?}")))
        })
        .collect::<ApiResult<Vec<_>>>()?;
    metrics::counter!(names::LOOKUP_KEYS).increment(req.keys.len() as u64);

    let rows = fetch(&state, &ns, &req.keys, &names, deadline).await;
    let answer = Answer {
        keys: &req.keys,
        fallback: match rows {
            Some(_) => None,
            None => Some(fallback_bytes(&schema, &fields)?),
        },
        rows: rows.unwrap_or_default(),
        fields,
    };
    let binary = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/octet-stream"));
    let mut response = if binary {
        let body = safetensors::encode(&answer, req.dtype == OutDtype::Stored)?;
        ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response()
    } else {
        // About 12 bytes per number ("-0.12345678,"): sizing the buffer once avoids ~20
        // reallocations and copies of a growing multi-megabyte body.
        let numbers: usize = answer.fields.iter().map(|(_, spec)| spec.dim).sum();
        let mut body = Vec::with_capacity(answer.keys.len() * (64 + 12 * numbers));
        serde_json::to_writer(&mut body, &JsonAnswer(&answer))
            .map_err(|e| ApiError::Internal(format!("cannot encode answer: {e}")))?;
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    };
    if answer.fallback.is_some() {
        response
            .headers_mut()
            .insert("x-larder-degraded", HeaderValue::from_static("1"));
    }
    Ok(response)
}

/// Ask the store unless the breaker is open; `None` means "answer degraded".
async fn fetch(
    state: &AppState,
    ns: &str,
    keys: &[String],
    fields: &[String],
    deadline: Instant,
) -> Option<Vec<Row>> {
    let Some(permit) = state.breaker.allow() else {
        metrics::counter!(names::DEGRADED, "reason" => "breaker_open").increment(1);
        return None;
    };
    let lookup = state.store.lookup(ns, keys, fields);
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

fn fallback_bytes(
    schema: &NamespaceSchema,
    fields: &[(&str, FieldSpec)],
) -> ApiResult<Vec<Vec<u8>>> {
    fields
        .iter()
        .map(|(name, spec)| {
            let zeros;
            let values = match schema.fallback.get(*name) {
                Some(v) => v.as_slice(),
                None => {
                    zeros = vec![0f32; spec.dim];
                    &zeros
                }
            };
            codec::encode(spec.dtype, spec.dim, values)
                .map_err(|e| ApiError::codec(&format!("fallback.{name}"), e))
        })
        .collect()
}

struct JsonAnswer<'a>(&'a Answer<'a>);
struct JsonRow<'a>(&'a Answer<'a>, usize);

impl Serialize for JsonAnswer<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let a = self.0;
        let missing: Vec<&str> = match a.fallback {
            Some(_) => Vec::new(),
            None => a
                .keys
                .iter()
                .zip(&a.rows)
                .filter(|(_, row)| row.is_none())
                .map(|(k, _)| k.as_str())
                .collect(),
        };
        let rows: Vec<JsonRow> = (0..a.keys.len()).map(|i| JsonRow(a, i)).collect();
        let mut out = s.serialize_struct("Answer", 3)?;
        out.serialize_field("results", &rows)?;
        out.serialize_field("missing", &missing)?;
        out.serialize_field("degraded", &a.fallback.is_some())?;
        out.end()
    }
}

impl Serialize for JsonRow<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let JsonRow(a, row) = *self;
        let mut out = s.serialize_map(Some(2))?;
        out.serialize_entry("key", &a.keys[row])?;
        out.serialize_entry("fields", &JsonFields(a, row))?;
        out.end()
    }
}

/// `{"field": [values] | null, ...}`, decoding each vector straight into the output.
struct JsonFields<'a>(&'a Answer<'a>, usize);
struct JsonVector<'a>(FieldSpec, &'a [u8]);

impl Serialize for JsonFields<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let JsonFields(a, row) = *self;
        let mut out = s.serialize_map(Some(a.fields.len()))?;
        for (f, (name, spec)) in a.fields.iter().enumerate() {
            out.serialize_entry(
                name,
                &a.cell(row, f).0.map(|bytes| JsonVector(*spec, bytes)),
            )?;
        }
        out.end()
    }
}

impl Serialize for JsonVector<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let JsonVector(spec, bytes) = *self;
        let mut values = Vec::with_capacity(spec.dim);
        codec::decode_into(spec.dtype, spec.dim, bytes, &mut values)
            .map_err(serde::ser::Error::custom)?;
        s.collect_seq(values)
    }
}
