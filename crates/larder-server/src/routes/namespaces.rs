//! `PUT /v1/namespaces/{ns}`, `GET /v1/namespaces`, `GET` and `DELETE /v1/namespaces/{ns}`,
//! and aliases: `PUT` and `GET /v1/aliases/{alias}`.
//!
//! A namespace name may carry a version (`users@v2`): versions are namespaces side by side.
//! An alias is a record among the schemas that points at one namespace; every
//! `/v1/namespaces/{name}/…` route follows it ([`AppState::namespace`]).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use larder_store::schema::{valid_name, valid_namespace, MAX_DIM};
use larder_store::{FieldSpec, NamespaceSchema};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, ApiQuery, JsonBody};
use crate::state::AppState;

/// The longest `ttl_seconds` a namespace may have: 100 years.
const MAX_TTL_SECONDS: u64 = 100 * 365 * 24 * 3600;

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
    if valid_namespace(ns) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "namespace name {ns:?} must match ^[a-z0-9][a-z0-9_-]{{0,63}}$, optionally followed by @version matching ^[a-z0-9][a-z0-9_-]{{0,31}}$"
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
    if let Some(target) = &schema.alias {
        return Err(ApiError::Conflict(format!(
            "{ns:?} is an alias of {target:?}; an alias and a namespace cannot share a name"
        )));
    }
    if schema.deleting {
        return Err(ApiError::Conflict(format!(
            "namespace {ns:?} is being deleted; create it again once that is done"
        )));
    }
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
    if let Some(ttl) = body.ttl_seconds {
        // 0 would expire every write at once; past 100 years Redis refuses the expiry (after
        // storing the write) and the embedded store's clock arithmetic would overflow.
        if !(1..=MAX_TTL_SECONDS).contains(&ttl) {
            return Err(ApiError::BadRequest(format!(
                "ttl_seconds must be 1..={MAX_TTL_SECONDS} (100 years), or null for no expiry; got {ttl}"
            )));
        }
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
            if schema.deleting {
                continue;
            }
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
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<NamespaceView>> {
    let (ns, schema) = state.namespace(&name).await?;
    let entity_count = state.store.count_entities(&ns).await?;
    Ok(Json(NamespaceView {
        name: ns,
        schema: (*schema).clone(),
        entity_count: Some(entity_count),
    }))
}

#[derive(Serialize)]
pub struct Deleting {
    namespace: String,
    status: &'static str,
}

/// `DELETE /v1/namespaces/{ns}`: the name stops resolving at once (its schema is marked
/// `deleting`); its entities are removed in the background (SCAN and UNLINK in batches on
/// Redis), then its schema, so the answer is `202`. Repeating it resumes a deletion that a
/// restart cut short. Deleting an alias removes the alias only. A namespace that an alias still
/// points at is refused (`409`).
pub async fn delete(
    State(state): State<AppState>,
    ApiPath(ns): ApiPath<String>,
) -> ApiResult<(StatusCode, Json<Deleting>)> {
    check_namespace_name(&ns)?;
    let mut schema = state
        .store
        .get_schema(&ns)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("namespace {ns:?} does not exist")))?;
    if schema.alias.is_none() {
        if let Some(alias) = aliases_of(&state, &ns).await?.first() {
            return Err(ApiError::Conflict(format!(
                "alias {alias:?} still points at {ns:?}; point it elsewhere first"
            )));
        }
    }
    schema.deleting = true;
    state.store.put_schema(&ns, &schema).await?;
    state.schemas.forget(&ns);
    let (store, name) = (state.store.clone(), ns.clone());
    tokio::spawn(async move {
        match store.delete_namespace(&name).await {
            Ok(removed) => tracing::info!(ns = %name, removed, "namespace deleted"),
            Err(error) => tracing::warn!(ns = %name, %error, "deleting the namespace failed"),
        }
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(Deleting {
            namespace: ns,
            status: "deleting",
        }),
    ))
}

/// The aliases that point at `ns`.
async fn aliases_of(state: &AppState, ns: &str) -> ApiResult<Vec<String>> {
    let mut aliases = Vec::new();
    for name in state.store.list_namespaces().await? {
        if let Some(schema) = state.store.get_schema(&name).await? {
            if schema.alias.as_deref() == Some(ns) {
                aliases.push(name);
            }
        }
    }
    Ok(aliases)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutAlias {
    namespace: String,
}

#[derive(Serialize)]
pub struct AliasView {
    alias: String,
    namespace: String,
}

/// `PUT /v1/aliases/{alias}`: point `alias` at a namespace, atomically (one write of the
/// alias's record). Lookups by the alias follow it from their next request on.
pub async fn put_alias(
    State(state): State<AppState>,
    ApiPath(alias): ApiPath<String>,
    JsonBody(body): JsonBody<PutAlias>,
) -> ApiResult<Json<AliasView>> {
    if !valid_name(&alias) {
        return Err(ApiError::BadRequest(format!(
            "alias name {alias:?} must match ^[a-z0-9][a-z0-9_-]{{0,63}}$"
        )));
    }
    check_namespace_name(&body.namespace)?;
    match state.store.get_schema(&body.namespace).await? {
        Some(target) if target.alias.is_none() && !target.deleting => {}
        Some(target) if target.alias.is_some() => {
            return Err(ApiError::BadRequest(format!(
                "{:?} is an alias; an alias must point at a namespace",
                body.namespace
            )))
        }
        Some(_) | None => {
            return Err(ApiError::NotFound(format!(
                "namespace {:?} does not exist",
                body.namespace
            )))
        }
    }
    if let Some(existing) = state.store.get_schema(&alias).await? {
        if existing.alias.is_none() {
            return Err(ApiError::Conflict(format!(
                "{alias:?} is a namespace; an alias and a namespace cannot share a name"
            )));
        }
    }
    let record = NamespaceSchema {
        alias: Some(body.namespace.clone()),
        ..NamespaceSchema::default()
    };
    state.store.put_schema(&alias, &record).await?;
    state.schemas.put(&alias, record);
    Ok(Json(AliasView {
        alias,
        namespace: body.namespace,
    }))
}

/// `GET /v1/aliases/{alias}`.
pub async fn get_alias(
    State(state): State<AppState>,
    ApiPath(alias): ApiPath<String>,
) -> ApiResult<Json<AliasView>> {
    match state.store.get_schema(&alias).await? {
        Some(NamespaceSchema {
            alias: Some(namespace),
            ..
        }) => Ok(Json(AliasView { alias, namespace })),
        _ => Err(ApiError::NotFound(format!("no alias {alias:?}"))),
    }
}

#[derive(Serialize)]
pub struct StatsView {
    namespace: String,
    #[serde(flatten)]
    stats: larder_store::stats::NamespaceStats,
    hot_keys: Vec<crate::hot::HotKey>,
}

/// `GET /v1/namespaces/{ns}/stats`: entity count, sizes and spread over primaries from
/// sampling the store (SCAN and `MEMORY USAGE`, never a blocking command), and this server's
/// hot keys.
pub async fn stats(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<StatsView>> {
    let (ns, _) = state.namespace(&name).await?;
    let stats = state.store.stats(&ns).await?;
    Ok(Json(StatsView {
        hot_keys: state.hot.top(&ns),
        namespace: ns,
        stats,
    }))
}
