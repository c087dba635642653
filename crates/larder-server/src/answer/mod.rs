//! The lookup answer and its two encodings: JSON (serialised straight from the stored bytes, in
//! field order) and safetensors ([`safetensors`]). The handler (`routes/lookup.rs`) decides
//! what to answer; this module only writes it.

use larder_store::codec;
use larder_store::{FieldSpec, NamespaceSchema, Row};
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};

use crate::error::{ApiError, ApiResult};

mod safetensors;

pub(crate) use safetensors::{encode as safetensors, stored_name, write_part, Part};

/// What the store answered, or the fallback when it could not.
pub(crate) struct Answer {
    pub keys: Vec<String>,
    pub fields: Vec<(String, FieldSpec)>,
    pub rows: Vec<Row>,
    /// Per field: stored bytes of the vector served in degraded mode.
    pub fallback: Option<Vec<Vec<u8>>>,
    /// Rows the near cache answered, when there is one.
    pub cached: Option<usize>,
}

impl Answer {
    /// The bytes for (row, field), and whether they are real.
    pub fn cell(&self, row: usize, field: usize) -> (Option<&[u8]>, bool) {
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

/// Per field, the stored bytes of the vector a degraded answer serves: the namespace's
/// configured fallback, else zeros.
pub(crate) fn fallback_bytes(
    schema: &NamespaceSchema,
    fields: &[(String, FieldSpec)],
) -> ApiResult<Vec<Vec<u8>>> {
    fields
        .iter()
        .map(|(name, spec)| {
            let zeros;
            let values = match schema.fallback.get(name) {
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

/// The JSON answer body.
pub(crate) fn json(answer: &Answer) -> ApiResult<Vec<u8>> {
    // About 12 bytes per number ("-0.12345678,"): sizing the buffer once avoids ~20
    // reallocations and copies of a growing multi-megabyte body.
    let numbers: usize = answer.fields.iter().map(|(_, spec)| spec.dim).sum();
    let mut body = Vec::with_capacity(answer.keys.len() * (64 + 12 * numbers));
    serde_json::to_writer(&mut body, &JsonAnswer(answer))
        .map_err(|e| ApiError::Internal(format!("cannot encode answer: {e}")))?;
    Ok(body)
}

struct JsonAnswer<'a>(&'a Answer);
struct JsonRow<'a>(&'a Answer, usize);

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
        let mut out = s.serialize_struct("Answer", 4)?;
        out.serialize_field("results", &rows)?;
        out.serialize_field("missing", &missing)?;
        out.serialize_field("degraded", &a.fallback.is_some())?;
        if let Some(cached) = a.cached {
            out.serialize_field("cached", &cached)?;
        }
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
struct JsonFields<'a>(&'a Answer, usize);
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
