//! The ONLY place Redis key names are built. The layout is part of the public contract
//! (`shared/API.md`, "Redis layout") so that any Redis client can read Larder's data:
//!
//! - entity `K` of namespace `N` is the hash `larder:e:N:K` (field = embedding type,
//!   value = raw little-endian vector bytes in the stored dtype);
//! - the schema of namespace `N` is the string `larder:ns:N` (JSON);
//! - `larder:namespaces` is a set of every namespace name, so listing needs no SCAN.

/// Prefix of every entity hash.
pub const ENTITY_PREFIX: &str = "larder:e:";
/// Prefix of every namespace schema.
pub const SCHEMA_PREFIX: &str = "larder:ns:";
/// The set of namespace names.
pub const NAMESPACE_INDEX: &str = "larder:namespaces";

/// `larder:e:{ns}:{key}` as bytes (entity keys are arbitrary UTF-8, so build bytes once).
pub fn entity(ns: &str, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENTITY_PREFIX.len() + ns.len() + 1 + key.len());
    out.extend_from_slice(ENTITY_PREFIX.as_bytes());
    out.extend_from_slice(ns.as_bytes());
    out.push(b':');
    out.extend_from_slice(key.as_bytes());
    out
}

/// The SCAN pattern that matches every entity of `ns`. Namespace names are restricted to
/// `[a-z0-9_-]`, so they never contain glob characters; the trailing `:` keeps `ns` from
/// matching `ns2`.
pub fn entity_pattern(ns: &str) -> String {
    format!("{ENTITY_PREFIX}{ns}:*")
}

/// `larder:ns:{ns}`
pub fn schema(ns: &str) -> String {
    format!("{SCHEMA_PREFIX}{ns}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_contract() {
        assert_eq!(
            entity("users", "user:42"),
            b"larder:e:users:user:42".to_vec()
        );
        assert_eq!(schema("users"), "larder:ns:users");
        assert_eq!(entity_pattern("users"), "larder:e:users:*");
    }
}
