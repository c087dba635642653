//! The binary lookup answer: one safetensors file, written in a single pass.
//!
//! For each requested field `F`: `F` `[n, dim]` (F32, or the stored dtype), `F.present` `[n]`
//! U8, and for stored i8 `F.scale` `[n]` F32; rows in request order, zeros where absent;
//! `__metadata__` holds `degraded`. The `safetensors` crate's `serialize` needs every tensor
//! assembled in its own buffer first and then copies them all again; at 100 × 768-d f32 that is
//! two extra 300 KB copies per request, so the (simple, documented) container is written here
//! straight from the store's bytes into one buffer. Tests read it back with the crate.

use std::collections::BTreeMap;

use larder_store::codec::{self, Dtype};
use serde::Serialize;

use super::Answer;
use crate::error::{ApiError, ApiResult};

/// One of the arrays written per field.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Part {
    /// The vectors.
    Values,
    Present,
    Scale,
}

struct Tensor {
    name: String,
    field: usize,
    part: Part,
    dtype: &'static str,
    shape: Vec<usize>,
    bytes: usize,
    /// Element alignment: larger first keeps every tensor naturally aligned.
    align: usize,
}

#[derive(Serialize)]
struct Entry<'a> {
    dtype: &'a str,
    shape: &'a [usize],
    data_offsets: [usize; 2],
}

#[derive(Serialize)]
#[serde(untagged)]
enum HeaderValue<'a> {
    Meta(BTreeMap<&'static str, String>),
    Tensor(Entry<'a>),
}

pub(crate) fn stored_name(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::F32 => "F32",
        Dtype::F16 => "F16",
        Dtype::Bf16 => "BF16",
        Dtype::I8 => "I8",
    }
}

pub(crate) fn encode(a: &Answer, stored: bool) -> ApiResult<Vec<u8>> {
    let n = a.keys.len();
    let mut tensors = Vec::with_capacity(a.fields.len() * 3);
    for (f, (name, spec)) in a.fields.iter().enumerate() {
        let (dtype, elem) = if stored {
            (stored_name(spec.dtype), spec.dtype.element_size())
        } else {
            ("F32", 4)
        };
        tensors.push(Tensor {
            name: name.to_string(),
            field: f,
            part: Part::Values,
            dtype,
            shape: vec![n, spec.dim],
            bytes: n * spec.dim * elem,
            align: elem,
        });
        tensors.push(Tensor {
            name: format!("{name}.present"),
            field: f,
            part: Part::Present,
            dtype: "U8",
            shape: vec![n],
            bytes: n,
            align: 1,
        });
        if stored && spec.dtype == Dtype::I8 {
            tensors.push(Tensor {
                name: format!("{name}.scale"),
                field: f,
                part: Part::Scale,
                dtype: "F32",
                shape: vec![n],
                bytes: 4 * n,
                align: 4,
            });
        }
    }
    tensors.sort_by(|x, y| y.align.cmp(&x.align).then_with(|| x.name.cmp(&y.name)));

    let mut header: BTreeMap<&str, HeaderValue> = BTreeMap::new();
    let mut meta = BTreeMap::from([("degraded", a.fallback.is_some().to_string())]);
    if let Some(cached) = a.cached {
        meta.insert("cached", cached.to_string());
    }
    header.insert("__metadata__", HeaderValue::Meta(meta));
    let mut offset = 0;
    for t in &tensors {
        header.insert(
            &t.name,
            HeaderValue::Tensor(Entry {
                dtype: t.dtype,
                shape: &t.shape,
                data_offsets: [offset, offset + t.bytes],
            }),
        );
        offset += t.bytes;
    }
    let mut json = serde_json::to_vec(&header)
        .map_err(|e| ApiError::Internal(format!("safetensors header: {e}")))?;
    // Pad the header with spaces so the data starts 8-byte aligned, as the format recommends.
    json.resize(json.len().div_ceil(8) * 8, b' ');

    let mut out = Vec::with_capacity(8 + json.len() + offset);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for t in &tensors {
        let start = out.len();
        write_part(a, t.field, t.part, stored, &mut out)?;
        debug_assert_eq!(out.len() - start, t.bytes);
    }
    Ok(out)
}

/// Append one array of field `field` to `out`: the vectors (`[n, dim]` as F32, or as stored
/// with `stored`), the present flags, or the i8 scales; rows in request order, zeros where
/// absent. The safetensors answer and the gRPC answer write their bytes with this.
pub(crate) fn write_part(
    a: &Answer,
    field: usize,
    part: Part,
    stored: bool,
    out: &mut Vec<u8>,
) -> ApiResult<()> {
    let (name, spec) = &a.fields[field];
    let n = a.keys.len();
    let row_bytes = if stored {
        spec.dim * spec.dtype.element_size()
    } else {
        spec.dim * 4
    };
    for row in 0..n {
        let (bytes, real) = a.cell(row, field);
        match part {
            Part::Present => out.push(u8::from(real)),
            Part::Scale => {
                let scale = match bytes {
                    Some(b) => {
                        codec::split_stored(spec.dtype, spec.dim, b)
                            .map_err(|e| ApiError::codec(name, e))?
                            .0
                    }
                    None => 0.0,
                };
                out.extend_from_slice(&scale.to_le_bytes());
            }
            Part::Values => {
                let row_start = out.len();
                match bytes {
                    Some(b) if stored => out.extend_from_slice(
                        codec::split_stored(spec.dtype, spec.dim, b)
                            .map_err(|e| ApiError::codec(name, e))?
                            .1,
                    ),
                    Some(b) => codec::decode_le_bytes_into(spec.dtype, spec.dim, b, out)
                        .map_err(|e| ApiError::codec(name, e))?,
                    None => {}
                }
                out.resize(row_start + row_bytes, 0);
            }
        }
    }
    Ok(())
}
