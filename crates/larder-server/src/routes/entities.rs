//! `POST /v1/namespaces/{ns}/entities` (upsert a batch), `GET` and `DELETE`
//! `/v1/namespaces/{ns}/entities/{key}`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use larder_store::schema::{valid_key, MAX_KEY_BYTES};
use larder_store::{codec, EntityWrite, NamespaceSchema};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, JsonBody};
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upsert {
    entities: Vec<UpsertEntity>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpsertEntity {
    pub key: String,
    pub fields: BTreeMap<String, Vec<f32>>,
}

#[derive(Serialize)]
pub struct Upserted {
    upserted: usize,
}

pub fn check_key(key: &str) -> ApiResult<()> {
    if valid_key(key) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "entity keys must be 1..={MAX_KEY_BYTES} bytes of UTF-8, got {} bytes",
            key.len()
        )))
    }
}

/// Encode the whole batch before anything is written: one bad entity rejects the request.
fn encode_batch(
    schema: &NamespaceSchema,
    entities: Vec<UpsertEntity>,
) -> ApiResult<Vec<EntityWrite>> {
    entities
        .into_iter()
        .enumerate()
        .map(|(i, entity)| {
            check_key(&entity.key)
                .map_err(|e| ApiError::BadRequest(format!("entities[{i}]: {e}")))?;
            if entity.fields.is_empty() {
                return Err(ApiError::BadRequest(format!(
                    "entities[{i}] ({:?}) has no fields",
                    entity.key
                )));
            }
            let fields = entity
                .fields
                .into_iter()
                .map(|(name, values)| {
                    let spec = schema.fields.get(&name).ok_or_else(|| {
                        ApiError::UnknownField(format!(
                            "entities[{i}]: namespace has no field {name:?}"
                        ))
                    })?;
                    let bytes = codec::encode(spec.dtype, spec.dim, &values)
                        .map_err(|e| ApiError::codec(&format!("entities[{i}].fields.{name}"), e))?;
                    Ok((name, bytes))
                })
                .collect::<ApiResult<Vec<_>>>()?;
            schema
                .check_entity(
                    &entity.key,
                    fields
                        .iter()
                        .map(|(n, v): &(String, Vec<u8>)| (n.as_str(), v.len())),
                )
                .map_err(|e| ApiError::TooLarge(format!("entities[{i}]: {e}")))?;
            Ok(EntityWrite {
                key: entity.key,
                fields,
            })
        })
        .collect()
}

pub async fn upsert(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    JsonBody(body): JsonBody<Upsert>,
) -> ApiResult<Json<Upserted>> {
    let upserted = upsert_entities(&state, &name, body.entities).await?;
    Ok(Json(Upserted { upserted }))
}

/// Validate the whole batch, then write it to the namespace (or alias) `name`: what the HTTP
/// and gRPC upserts both do. Returns how many entities were written.
pub(crate) async fn upsert_entities(
    state: &AppState,
    name: &str,
    entities: Vec<UpsertEntity>,
) -> ApiResult<usize> {
    ApiError::check_limit(
        entities.len(),
        state.config.limits.max_upsert_entities,
        "entities in one upsert",
    )?;
    let (ns, schema) = state.namespace(name).await?;
    let writes = encode_batch(&schema, entities)?;
    let upserted = writes.len();
    state.store.upsert(&ns, schema.ttl_seconds, writes).await?;
    Ok(upserted)
}

#[derive(Serialize)]
pub struct EntityView {
    key: String,
    fields: BTreeMap<String, Vec<f32>>,
}

pub async fn get(
    State(state): State<AppState>,
    ApiPath((name, key)): ApiPath<(String, String)>,
) -> ApiResult<Json<EntityView>> {
    check_key(&key)?;
    let (ns, schema) = state.namespace(&name).await?;
    let stored = state
        .store
        .get_entity(&ns, &key)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no entity {key:?} in namespace {ns:?}")))?;
    let mut fields = BTreeMap::new();
    for (name, bytes) in stored {
        // Fields the schema no longer knows are not served.
        let Some(spec) = schema.fields.get(&name) else {
            continue;
        };
        let values = codec::decode(spec.dtype, spec.dim, &bytes)
            .map_err(|e| ApiError::codec(&format!("{key}.{name}"), e))?;
        fields.insert(name, values);
    }
    Ok(Json(EntityView { key, fields }))
}

pub async fn delete(
    State(state): State<AppState>,
    ApiPath((name, key)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    check_key(&key)?;
    let (ns, _) = state.namespace(&name).await?;
    state.store.delete_entity(&ns, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}
