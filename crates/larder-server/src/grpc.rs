//! gRPC: the service `larder.v1.Embeddings` (`proto/larder/v1/larder.proto`) with `Lookup` and
//! `Upsert`, on `grpc_listen`, with server reflection so generic clients (grpcurl, grpcio's
//! reflection client) can call it.
//!
//! It is the HTTP API's lookup and upsert behind another codec: the same
//! [`crate::routes::lookup::answer`] and [`crate::routes::entities::upsert_entities`], the same
//! token check ([`crate::auth::check`] on the `authorization` metadata), limits and degraded
//! answers. Vectors travel as raw bytes per field, written by the same code as the
//! safetensors answer ([`crate::answer::write_part`]).

use std::collections::BTreeMap;
use std::future::Future;

use larder_store::codec::Dtype;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::answer::{self, Part};
use crate::error::ApiError;
use crate::routes::entities::{upsert_entities, UpsertEntity};
use crate::routes::lookup;
use crate::state::AppState;

/// The generated messages, client and server.
pub mod pb {
    tonic::include_proto!("larder.v1");
}

/// The encoded descriptor set of `larder.proto`, served by reflection.
pub const DESCRIPTOR: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/larder_descriptor.bin"));

/// The contract's error as a gRPC status: the code maps as `shared/API.md` says, and the
/// message starts with the contract's error code.
fn status(error: ApiError) -> Status {
    let (_, code) = error.parts();
    let grpc = match &error {
        ApiError::BadRequest(_)
        | ApiError::UnknownField(_)
        | ApiError::DimensionMismatch(_)
        | ApiError::NonFinite(_)
        | ApiError::MethodNotAllowed(_) => tonic::Code::InvalidArgument,
        ApiError::Conflict(_) => tonic::Code::FailedPrecondition,
        ApiError::NotFound(_) => tonic::Code::NotFound,
        ApiError::TooLarge(_) | ApiError::RateLimited { .. } => tonic::Code::ResourceExhausted,
        ApiError::Unauthorized(_) => tonic::Code::Unauthenticated,
        ApiError::Forbidden(_) => tonic::Code::PermissionDenied,
        ApiError::Unavailable(_) => tonic::Code::Unavailable,
        ApiError::Internal(_) => tonic::Code::Internal,
    };
    Status::new(grpc, format!("{code}: {error}"))
}

pub struct Embeddings {
    state: AppState,
}

impl Embeddings {
    fn authorize<T>(&self, request: &Request<T>, reads: bool) -> Result<(), Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        crate::auth::check(&self.state.config.auth, authorization, reads)
            .map(drop)
            .map_err(status)
    }
}

#[tonic::async_trait]
impl pb::embeddings_server::Embeddings for Embeddings {
    async fn lookup(
        &self,
        request: Request<pb::LookupRequest>,
    ) -> Result<Response<pb::LookupResponse>, Status> {
        self.authorize(&request, true)?;
        let req = request.into_inner();
        let stored = match req.dtype.as_str() {
            "" | "f32" => false,
            "stored" => true,
            other => {
                return Err(status(ApiError::BadRequest(format!(
                    "dtype must be \"f32\" or \"stored\", got {other:?}"
                ))))
            }
        };
        let fields = (!req.fields.is_empty()).then_some(req.fields);
        let answer = lookup::answer(&self.state, &req.namespace, req.keys, fields)
            .await
            .map_err(status)?;
        let n = answer.keys.len();
        let mut tensors = Vec::with_capacity(answer.fields.len());
        for (f, (name, spec)) in answer.fields.iter().enumerate() {
            let (dtype, elem) = if stored {
                (answer::stored_name(spec.dtype), spec.dtype.element_size())
            } else {
                ("F32", 4)
            };
            let mut data = Vec::with_capacity(n * spec.dim * elem);
            answer::write_part(&answer, f, Part::Values, stored, &mut data).map_err(status)?;
            let mut present = Vec::with_capacity(n);
            answer::write_part(&answer, f, Part::Present, stored, &mut present).map_err(status)?;
            let mut scale = Vec::new();
            if stored && spec.dtype == Dtype::I8 {
                answer::write_part(&answer, f, Part::Scale, stored, &mut scale).map_err(status)?;
            }
            tensors.push(pb::Tensor {
                name: name.clone(),
                dtype: dtype.to_owned(),
                shape: vec![n as u64, spec.dim as u64],
                data,
                present,
                scale,
            });
        }
        let missing = match answer.fallback {
            Some(_) => Vec::new(),
            None => answer
                .keys
                .iter()
                .zip(&answer.rows)
                .filter(|(_, row)| row.is_none())
                .map(|(key, _)| key.clone())
                .collect(),
        };
        Ok(Response::new(pb::LookupResponse {
            tensors,
            degraded: answer.fallback.is_some(),
            missing,
            cached: answer.cached.unwrap_or(0) as u32,
        }))
    }

    async fn upsert(
        &self,
        request: Request<pb::UpsertRequest>,
    ) -> Result<Response<pb::UpsertResponse>, Status> {
        self.authorize(&request, false)?;
        let req = request.into_inner();
        let entities = entities(req.keys, req.tensors).map_err(status)?;
        let upserted = upsert_entities(&self.state, &req.namespace, entities)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UpsertResponse {
            upserted: upserted as u64,
        }))
    }
}

/// One entity per key, with each tensor's row as that field (unless the row is not present).
fn entities(keys: Vec<String>, tensors: Vec<pb::Tensor>) -> Result<Vec<UpsertEntity>, ApiError> {
    let n = keys.len();
    let mut entities: Vec<UpsertEntity> = keys
        .into_iter()
        .map(|key| UpsertEntity {
            key,
            fields: BTreeMap::new(),
        })
        .collect();
    for tensor in tensors {
        let name = &tensor.name;
        if tensor.dtype != "F32" {
            return Err(ApiError::BadRequest(format!(
                "tensor {name:?}: upserts take dtype F32, got {:?}",
                tensor.dtype
            )));
        }
        let dim = match tensor.shape.as_slice() {
            [rows, dim] if *rows == n as u64 && *dim >= 1 => *dim as usize,
            shape => {
                return Err(ApiError::BadRequest(format!(
                    "tensor {name:?}: shape must be [{n}, dim] (one row per key), got {shape:?}"
                )))
            }
        };
        if tensor.data.len() != n * dim * 4 {
            return Err(ApiError::DimensionMismatch(format!(
                "tensor {name:?}: {} bytes of data for shape [{n}, {dim}] F32 ({} expected)",
                tensor.data.len(),
                n * dim * 4
            )));
        }
        if !tensor.present.is_empty() && tensor.present.len() != n {
            return Err(ApiError::BadRequest(format!(
                "tensor {name:?}: present must have one byte per key ({n}), got {}",
                tensor.present.len()
            )));
        }
        for (row, bytes) in tensor.data.chunks_exact(dim * 4).enumerate() {
            if tensor.present.get(row) == Some(&0) {
                continue;
            }
            let values = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            entities[row].fields.insert(name.clone(), values);
        }
    }
    Ok(entities)
}

/// Serve the gRPC API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(DESCRIPTOR)
        .build_v1()
        .map_err(|e| format!("gRPC reflection: {e}"))?;
    let max_message = state.config.limits.max_body_bytes;
    let embeddings = pb::embeddings_server::EmbeddingsServer::new(Embeddings { state })
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(usize::MAX);
    // h2's default 64 KiB stream window makes a 300 KB answer wait for WINDOW_UPDATEs; a
    // window as large as the largest message lets one flow through in one go.
    // HTTP/2 windows are at most 2^31 - 1.
    const MAX_WINDOW: u32 = i32::MAX as u32;
    let window = u32::try_from(max_message.max(1 << 20))
        .unwrap_or(MAX_WINDOW)
        .min(MAX_WINDOW);
    tonic::transport::Server::builder()
        .initial_stream_window_size(window)
        .initial_connection_window_size(window.saturating_mul(4).min(MAX_WINDOW))
        .add_service(embeddings)
        .add_service(reflection)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            shutdown,
        )
        .await
        .map_err(|e| format!("gRPC server: {e}"))
}
