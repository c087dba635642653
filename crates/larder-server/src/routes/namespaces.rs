//! `PUT /v1/namespaces/{ns}`, `GET /v1/namespaces`, `GET /v1/namespaces/{ns}`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use larder_store::schema::{valid_name, MAX_DIM};
use larder_store::{FieldSpec, NamespaceSchema};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, ApiQuery, JsonBody};
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutNamespace {
    fields: BTreeMap<String, FieldSpec>,
    #[serde(default)]
    ttl_seconds: Option<u64>,
    #[serde(default)]
    fallback: BTreeMap<String, Vec<f32>>,
    /// Size guards; absent keeps what the namespace has (else the defaults).
    #[serde(default)]
    max_entity_bytes: Option<u64>,
    #[serde(default)]
    max_fields: Option<usize>,
}

#[derive(Deserialize)]
pub struct PutQuery {
    #[serde(default)]
    force: bool,
}

#[derive(Serialize)]
pub struct NamespaceView {
    name: String,
    #[serde(flatten)]
    schema: NamespaceSchema,
    #[serde(skip_serializing_if = "Option::is_none")]
    entity_count: Option<u64>,
}

pub fn check_namespace_name(ns: &str) -> ApiResult<()> {
    if valid_name(ns) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "namespace name {ns:?} must match ^[a-z0-9][a-z0-9_-]{{0,63}}$"
        )))
    }
}

/// Create or update. Fields not named are kept; changing a field's dim or dtype needs
/// `?force=true`, which drops that field's stored data first.
pub async fn put(
    State(state): State<AppState>,
    ApiPath(ns): ApiPath<String>,
    ApiQuery(query): ApiQuery<PutQuery>,
    JsonBody(body): JsonBody<PutNamespace>,
) -> ApiResult<Json<NamespaceView>> {
    check_namespace_name(&ns)?;
    if body.fields.is_empty() {
        return Err(ApiError::BadRequest(
            "fields must name at least one field".into(),
        ));
    }
    for (name, spec) in &body.fields {
        if !valid_name(name) {
            return Err(ApiError::BadRequest(format!(
                "field name {name:?} must match ^[a-z0-9][a-z0-9_-]{{0,63}}$"
            )));
        }
        if spec.dim == 0 || spec.dim > MAX_DIM {
            return Err(ApiError::BadRequest(format!(
                "field {name:?}: dim must be 1..={MAX_DIM}"
            )));
        }
    }
    let mut schema = state.store.get_schema(&ns).await?.unwrap_or_default();
    let mut changed = Vec::new();
    for (name, spec) in &body.fields {
        if let Some(old) = schema.fields.get(name) {
            if old != spec {
                if !query.force {
                    return Err(ApiError::Conflict(format!(
                        "field {name:?} is {}-d {:?}; changing it to {}-d {:?} drops its data: repeat with ?force=true",
                        old.dim, old.dtype, spec.dim, spec.dtype
                    )));
                }
                changed.push(name.clone());
            }
        }
        schema.fields.insert(name.clone(), *spec);
    }
    for (name, values) in &body.fallback {
        let spec = schema.fields.get(name).ok_or_else(|| {
            ApiError::UnknownField(format!("fallback names unknown field {name:?}"))
        })?;
        // Validates length and finiteness the same way stored vectors are.
        larder_store::codec::encode(spec.dtype, spec.dim, values)
            .map_err(|e| ApiError::codec(&format!("fallback.{name}"), e))?;
    }
    schema.ttl_seconds = body.ttl_seconds;
    if body.max_entity_bytes.is_some() {
        schema.max_entity_bytes = body.max_entity_bytes;
    }
    if body.max_fields.is_some() {
        schema.max_fields = body.max_fields;
    }
    // Before anything is dropped or stored: a refused schema changes nothing.
    schema.check_limits().map_err(ApiError::TooLarge)?;
    schema.fallback.retain(|name, _| !changed.contains(name));
    schema.fallback.extend(body.fallback);
    for name in &changed {
        let dropped = state.store.drop_field(&ns, name).await?;
        tracing::info!(ns, field = %name, dropped, "field redefined with force; old data dropped");
    }
    state.store.put_schema(&ns, &schema).await?;
    let schema = state.schemas.put(&ns, schema);
    Ok(Json(NamespaceView {
        name: ns,
        schema: (*schema).clone(),
        entity_count: None,
    }))
}

#[derive(Serialize)]
pub struct NamespaceList {
    namespaces: Vec<NamespaceView>,
}

pub async fn list(State(state): State<AppState>) -> ApiResult<Json<NamespaceList>> {
    let mut namespaces = Vec::new();
    for name in state.store.list_namespaces().await? {
        if let Some(schema) = state.schemas.get(&state.store, &name).await? {
            namespaces.push(NamespaceView {
                name,
                schema: (*schema).clone(),
                entity_count: None,
            });
        }
    }
    Ok(Json(NamespaceList { namespaces }))
}

pub async fn get(
    State(state): State<AppState>,
    ApiPath(ns): ApiPath<String>,
) -> ApiResult<Json<NamespaceView>> {
    check_namespace_name(&ns)?;
    let schema = state.schema(&ns).await?;
    let entity_count = state.store.count_entities(&ns).await?;
    Ok(Json(NamespaceView {
        name: ns,
        schema: (*schema).clone(),
        entity_count: Some(entity_count),
    }))
}
