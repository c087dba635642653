//! The ONLY place Redis key names are built. The layout is part of the public contract
//! (`shared/API.md`, "Redis layout") so that any Redis client can read Larder's data:
//!
//! - entity `K` of namespace `N` is the hash `larder:e:N:K` (field = embedding type,
//!   value = raw little-endian vector bytes in the stored dtype);
//! - the schema of namespace `N` is the string `larder:ns:N` (JSON);
//! - `larder:namespaces` is a set of every namespace name, so listing needs no SCAN.
//! - the serving view of category `C` (its ranked active items) is the string `larder:c:C`;
//!   serving nodes learn of a new view from the pub/sub channel `larder:invalidate`, whose
//!   messages are category names;
//! - near caches learn of entity writes from the pub/sub channel `larder:invalidate:e`, whose
//!   messages are JSON `{"ns": N, "keys": [K, …]}` (no `keys`: the whole namespace);
//! - the pipeline's queue into stage `S` is the stream `larder:q:S` (consumer group
//!   `larder`), and messages delivered too often move to the dead-letter stream `larder:dlq:S`.

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

/// Prefix of every category serving view.
pub const VIEW_PREFIX: &str = "larder:c:";
/// Pub/sub channel on which a new serving view is announced (message = category name).
pub const INVALIDATE_CHANNEL: &str = "larder:invalidate";
/// Pub/sub channel on which entity writes are announced to near caches.
pub const ENTITY_INVALIDATE_CHANNEL: &str = "larder:invalidate:e";
/// Consumer group every pipeline stage reads its stream with.
pub const STAGE_GROUP: &str = "larder";

/// `larder:c:{category}` as bytes (category names are arbitrary UTF-8).
pub fn view(category: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(VIEW_PREFIX.len() + category.len());
    out.extend_from_slice(VIEW_PREFIX.as_bytes());
    out.extend_from_slice(category.as_bytes());
    out
}

/// `larder:q:{stage}`: the stream of messages into a pipeline stage.
pub fn stage_stream(stage: &str) -> String {
    format!("larder:q:{stage}")
}

/// `larder:dlq:{stage}`: messages of `stage` that were delivered too often.
pub fn dead_letter_stream(stage: &str) -> String {
    format!("larder:dlq:{stage}")
}

/// `larder:bc:{topic}`: a bounded stream every listener of `topic` reads in full (fan-out, no
/// consumer group), e.g. the pipeline events of worker processes for the operator page.
pub fn broadcast_stream(topic: &str) -> String {
    format!("larder:bc:{topic}")
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
        assert_eq!(view("이사 준비"), "larder:c:이사 준비".as_bytes().to_vec());
        assert_eq!(stage_stream("filter"), "larder:q:filter");
        assert_eq!(dead_letter_stream("filter"), "larder:dlq:filter");
    }
}
