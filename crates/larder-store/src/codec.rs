//! Vector codec: how an embedding is laid out as bytes in the store.
//!
//! Every dtype is little-endian and headerless except `i8`, which carries a 4-byte f32 scale
//! before its `dim` signed bytes (symmetric per-vector quantisation: `value ≈ scale · q`).
//! This layout is part of the public contract (`shared/API.md`, "Redis layout").

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// How a field's vectors are stored and sent raw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    F16,
    Bf16,
    I8,
}

#[derive(Debug, Error, PartialEq)]
pub enum CodecError {
    #[error("expected {expected} values, got {got}")]
    DimensionMismatch { expected: usize, got: usize },
    #[error("value at index {index} is not finite (NaN, ±Inf or outside the f32 range)")]
    NonFinite { index: usize },
    #[error("stored value has {got} bytes, expected {expected} for {dtype:?}")]
    BadLength {
        dtype: Dtype,
        expected: usize,
        got: usize,
    },
}

/// Size of the i8 scale header.
const SCALE_BYTES: usize = 4;

impl Dtype {
    /// Bytes one stored vector of `dim` values takes.
    pub fn stored_len(self, dim: usize) -> usize {
        match self {
            Dtype::F32 => 4 * dim,
            Dtype::F16 | Dtype::Bf16 => 2 * dim,
            Dtype::I8 => SCALE_BYTES + dim,
        }
    }

    /// Bytes per element of the raw tensor data (excluding the i8 scale).
    pub fn element_size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
            Dtype::I8 => 1,
        }
    }
}

/// Encode `values` (which must have exactly `dim` finite entries) in `dtype`.
pub fn encode(dtype: Dtype, dim: usize, values: &[f32]) -> Result<Vec<u8>, CodecError> {
    if values.len() != dim {
        return Err(CodecError::DimensionMismatch {
            expected: dim,
            got: values.len(),
        });
    }
    // Branch-free over the whole vector (it vectorises); the index only on failure.
    if !values.iter().fold(true, |ok, v| ok & v.is_finite()) {
        let index = values.iter().position(|v| !v.is_finite()).unwrap_or(0);
        return Err(CodecError::NonFinite { index });
    }
    // Sized once and written in place: per-element `extend_from_slice` was the top cost of
    // `larder load` in `perf` (17% of its samples for 768-d f16, beside 6% in the conversion).
    let mut out = vec![0u8; dtype.stored_len(dim)];
    match dtype {
        Dtype::F32 => {
            for (c, v) in out.chunks_exact_mut(4).zip(values) {
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        // `half`'s slice conversion uses the CPU's F16C instructions when it has them; it goes
        // through a small stack buffer so that encoding allocates nothing but its output.
        Dtype::F16 => {
            let mut halves = [f16::ZERO; 64];
            for (out, values) in out.chunks_mut(128).zip(values.chunks(64)) {
                let halves = &mut halves[..values.len()];
                halves.convert_from_f32_slice(values);
                for (c, h) in out.chunks_exact_mut(2).zip(halves.iter()) {
                    c.copy_from_slice(&h.to_le_bytes());
                }
            }
        }
        Dtype::Bf16 => {
            let mut halves = [bf16::ZERO; 64];
            for (out, values) in out.chunks_mut(128).zip(values.chunks(64)) {
                let halves = &mut halves[..values.len()];
                halves.convert_from_f32_slice(values);
                for (c, h) in out.chunks_exact_mut(2).zip(halves.iter()) {
                    c.copy_from_slice(&h.to_le_bytes());
                }
            }
        }
        Dtype::I8 => {
            let max = values.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = if max > 0.0 { max / 127.0 } else { 0.0 };
            out[..SCALE_BYTES].copy_from_slice(&scale.to_le_bytes());
            for (o, v) in out[SCALE_BYTES..].iter_mut().zip(values) {
                let q = if scale > 0.0 {
                    (v / scale).round().clamp(-127.0, 127.0) as i8
                } else {
                    0
                };
                *o = q as u8;
            }
        }
    }
    Ok(out)
}

fn check_len(dtype: Dtype, dim: usize, bytes: &[u8]) -> Result<(), CodecError> {
    let expected = dtype.stored_len(dim);
    if bytes.len() != expected {
        return Err(CodecError::BadLength {
            dtype,
            expected,
            got: bytes.len(),
        });
    }
    Ok(())
}

/// Decode a stored vector to f32, appending `dim` values to `out`.
pub fn decode_into(
    dtype: Dtype,
    dim: usize,
    bytes: &[u8],
    out: &mut Vec<f32>,
) -> Result<(), CodecError> {
    check_len(dtype, dim, bytes)?;
    out.reserve(dim);
    match dtype {
        Dtype::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        Dtype::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        Dtype::Bf16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        Dtype::I8 => {
            let (scale, q) = split_i8(bytes);
            out.extend(q.iter().map(|b| scale * (*b as i8) as f32));
        }
    }
    Ok(())
}

/// Decode a stored vector to a fresh f32 vector.
pub fn decode(dtype: Dtype, dim: usize, bytes: &[u8]) -> Result<Vec<f32>, CodecError> {
    let mut out = Vec::with_capacity(dim);
    decode_into(dtype, dim, bytes, &mut out)?;
    Ok(out)
}

/// Append a stored vector's f32 little-endian bytes to `out` (the safetensors F32 path:
/// for f32 this is a plain copy).
pub fn decode_le_bytes_into(
    dtype: Dtype,
    dim: usize,
    bytes: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    check_len(dtype, dim, bytes)?;
    if dtype == Dtype::F32 {
        out.extend_from_slice(bytes);
        return Ok(());
    }
    let mut tmp = Vec::with_capacity(dim);
    decode_into(dtype, dim, bytes, &mut tmp)?;
    out.reserve(4 * dim);
    tmp.iter()
        .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    Ok(())
}

/// Split a stored vector into (i8 scale, raw element bytes). For dtypes other than i8 the
/// scale is 1.0 and the elements are all the bytes. The length is checked first.
pub fn split_stored(dtype: Dtype, dim: usize, bytes: &[u8]) -> Result<(f32, &[u8]), CodecError> {
    check_len(dtype, dim, bytes)?;
    Ok(match dtype {
        Dtype::I8 => split_i8(bytes),
        _ => (1.0, bytes),
    })
}

/// Caller has checked the length, so the 4-byte header is there.
fn split_i8(bytes: &[u8]) -> (f32, &[u8]) {
    let (head, q) = bytes.split_at(SCALE_BYTES);
    (f32::from_le_bytes([head[0], head[1], head[2], head[3]]), q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cosine(a: &[f32], b: &[f32]) -> f64 {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        if na == 0.0 || nb == 0.0 {
            return if na == nb { 1.0 } else { 0.0 };
        }
        dot / (na * nb)
    }

    fn round_trip(dtype: Dtype, v: &[f32]) -> Vec<f32> {
        let bytes = encode(dtype, v.len(), v).expect("finite input encodes");
        assert_eq!(bytes.len(), dtype.stored_len(v.len()));
        decode(dtype, v.len(), &bytes).expect("own output decodes")
    }

    /// Random vectors: independent values over several magnitudes.
    fn random_vec() -> impl Strategy<Value = Vec<f32>> {
        (1usize..=1024, -3i32..=3).prop_flat_map(|(dim, exp)| {
            let mag = 10f32.powi(exp);
            proptest::collection::vec(-mag..mag, dim)
        })
    }

    /// Real-like vectors: a shared cluster centre plus small noise, a few large outlier
    /// dimensions (as real embedding models have), L2-normalised.
    fn clustered_vec() -> impl Strategy<Value = Vec<f32>> {
        (16usize..=768)
            .prop_flat_map(|dim| {
                (
                    proptest::collection::vec(-1f32..1f32, dim),
                    proptest::collection::vec(-0.1f32..0.1f32, dim),
                    proptest::collection::vec(0usize..dim, 0..4),
                )
            })
            .prop_map(|(centre, noise, outliers)| {
                let mut v: Vec<f32> = centre.iter().zip(&noise).map(|(c, n)| c + n).collect();
                for i in outliers {
                    v[i] *= 8.0;
                }
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
                v.iter().map(|x| x / norm).collect()
            })
    }

    proptest! {
        #[test]
        fn f32_is_exact(v in random_vec()) {
            prop_assert_eq!(round_trip(Dtype::F32, &v), v);
        }

        #[test]
        fn half_precision_keeps_cosine(v in random_vec(), w in clustered_vec()) {
            for dtype in [Dtype::F16, Dtype::Bf16] {
                prop_assert!(cosine(&v, &round_trip(dtype, &v)) >= 0.999, "{dtype:?} random");
                prop_assert!(cosine(&w, &round_trip(dtype, &w)) >= 0.999, "{dtype:?} clustered");
            }
        }

        #[test]
        fn i8_keeps_cosine(v in random_vec(), w in clustered_vec()) {
            prop_assert!(cosine(&v, &round_trip(Dtype::I8, &v)) >= 0.99);
            prop_assert!(cosine(&w, &round_trip(Dtype::I8, &w)) >= 0.99);
        }
    }

    #[test]
    fn rejects_non_finite_and_wrong_length() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e39f64 as f32] {
            assert_eq!(
                encode(Dtype::F16, 3, &[0.0, bad, 1.0]),
                Err(CodecError::NonFinite { index: 1 })
            );
        }
        assert_eq!(
            encode(Dtype::F32, 4, &[0.0; 3]),
            Err(CodecError::DimensionMismatch {
                expected: 4,
                got: 3
            })
        );
        assert!(matches!(
            decode(Dtype::I8, 4, &[0; 7]),
            Err(CodecError::BadLength { .. })
        ));
    }

    #[test]
    fn i8_layout_is_scale_then_bytes() {
        let bytes = encode(Dtype::I8, 2, &[1.27, -0.635]).expect("encodes");
        assert_eq!(
            f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            0.01
        );
        assert_eq!(bytes[4] as i8, 127);
        assert_eq!(bytes[5] as i8, -64);
        // All-zero vectors stay all-zero rather than dividing by zero.
        assert_eq!(round_trip(Dtype::I8, &[0.0; 5]), vec![0.0; 5]);
    }
}
