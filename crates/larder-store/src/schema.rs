//! Namespace schemas and the naming rules shared by every backend and the API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec::Dtype;

/// Largest accepted vector dimension.
pub const MAX_DIM: usize = 65_536;
/// Entity keys are 1..=512 bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 512;
/// Default of [`NamespaceSchema::max_entity_bytes`]: 1 MiB. Redis serves a hash of this size
/// in about a millisecond of its single thread; much bigger entities stall every other client.
pub const DEFAULT_MAX_ENTITY_BYTES: u64 = 1 << 20;
/// Default of [`NamespaceSchema::max_fields`].
pub const DEFAULT_MAX_FIELDS: usize = 64;

/// One embedding type of a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    pub dim: usize,
    pub dtype: Dtype,
}

/// What `PUT /v1/namespaces/{ns}` stores and `larder:ns:{ns}` holds (as JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NamespaceSchema {
    pub fields: BTreeMap<String, FieldSpec>,
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// Vectors served in degraded mode instead of zeros, per field (f32 values).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fallback: BTreeMap<String, Vec<f32>>,
    /// Largest entity, in bytes of key, field names and values; `None` means
    /// [`DEFAULT_MAX_ENTITY_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entity_bytes: Option<u64>,
    /// Most fields the namespace may define; `None` means [`DEFAULT_MAX_FIELDS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_fields: Option<usize>,
    /// Set on an alias: the name is not a namespace of its own but points at this one (whose
    /// record holds the fields). Aliases live among the schemas so that a name is either one or
    /// the other, a flip is one atomic SET, and the backup keeps them like schemas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Set while the namespace is being deleted: it no longer resolves, and cannot be created
    /// again until [`crate::Store::delete_namespace`] has removed its entities and this record.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleting: bool,
}

impl NamespaceSchema {
    pub fn max_entity_bytes(&self) -> u64 {
        self.max_entity_bytes.unwrap_or(DEFAULT_MAX_ENTITY_BYTES)
    }

    pub fn max_fields(&self) -> usize {
        self.max_fields.unwrap_or(DEFAULT_MAX_FIELDS)
    }

    /// The size limits a schema must keep: at most [`Self::max_fields`] fields, and an entity
    /// holding every field (with the longest key) within [`Self::max_entity_bytes`]. Because
    /// every field has a fixed size, an upsert into a schema that passes can never build an
    /// entity over the limit, whatever it merges with. The error says what to change.
    pub fn check_limits(&self) -> Result<(), String> {
        if self.fields.len() > self.max_fields() {
            return Err(format!(
                "{} fields; the limit is {} (max_fields)",
                self.fields.len(),
                self.max_fields()
            ));
        }
        let full = MAX_KEY_BYTES as u64
            + self
                .fields
                .iter()
                .map(|(name, spec)| name.len() as u64 + spec.value_bytes() as u64)
                .sum::<u64>();
        if full > self.max_entity_bytes() {
            return Err(format!(
                "an entity with every field would take up to {full} bytes; the limit is {} (max_entity_bytes)",
                self.max_entity_bytes()
            ));
        }
        Ok(())
    }

    /// Bytes one write of `fields` under `key` adds to an entity: the check for namespaces
    /// stored before [`Self::check_limits`] existed, which may exceed it as a whole.
    pub fn check_entity<'a>(
        &self,
        key: &str,
        fields: impl IntoIterator<Item = (&'a str, usize)>,
    ) -> Result<(), String> {
        let bytes = key.len() as u64
            + fields
                .into_iter()
                .map(|(name, len)| (name.len() + len) as u64)
                .sum::<u64>();
        if bytes > self.max_entity_bytes() {
            return Err(format!(
                "entity {key:?} would take {bytes} bytes; the limit is {} (max_entity_bytes)",
                self.max_entity_bytes()
            ));
        }
        Ok(())
    }
}

impl FieldSpec {
    /// Bytes of one stored vector of this field.
    pub fn value_bytes(&self) -> usize {
        self.dtype.stored_len(self.dim)
    }
}

/// `^[a-z0-9][a-z0-9_-]{0,63}$`: namespace and field names.
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

/// A namespace name, optionally versioned: `name` or `name@version`, the version matching
/// `^[a-z0-9][a-z0-9_-]{0,31}$`. A version is part of the name (`larder:e:users@v2:K`), so
/// versions of one namespace are namespaces side by side and existing keys keep their layout.
pub fn valid_namespace(name: &str) -> bool {
    match name.split_once('@') {
        None => valid_name(name),
        Some((base, version)) => valid_name(base) && version.len() <= 32 && valid_name(version),
    }
}

/// Entity keys: any UTF-8 string of 1..=512 bytes.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "0", "clip", "text_v2", "a-b", &"x".repeat(64)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "_a", "-a", "A", "a.b", "a:b", "é", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
        for ok in ["users", "users@v2", "a@0", &format!("a@{}", "v".repeat(32))] {
            assert!(valid_namespace(ok), "{ok}");
        }
        for bad in [
            "users@",
            "@v2",
            "users@V2",
            "a@b@c",
            &format!("a@{}", "v".repeat(33)),
        ] {
            assert!(!valid_namespace(bad), "{bad}");
        }
        assert!(valid_key("user:42"));
        assert!(valid_key("이사"));
        assert!(!valid_key(""));
        assert!(!valid_key(&"k".repeat(513)));
    }
}
