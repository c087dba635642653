//! Namespace schemas and the naming rules shared by every backend and the API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec::Dtype;

/// Largest accepted vector dimension.
pub const MAX_DIM: usize = 65_536;
/// Entity keys are 1..=512 bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 512;

/// One embedding type of a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    pub dim: usize,
    pub dtype: Dtype,
}

/// What `PUT /v1/namespaces/{ns}` stores and `larder:ns:{ns}` holds (as JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamespaceSchema {
    pub fields: BTreeMap<String, FieldSpec>,
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// Vectors served in degraded mode instead of zeros, per field (f32 values).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fallback: BTreeMap<String, Vec<f32>>,
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
        assert!(valid_key("user:42"));
        assert!(valid_key("이사"));
        assert!(!valid_key(""));
        assert!(!valid_key(&"k".repeat(513)));
    }
}
