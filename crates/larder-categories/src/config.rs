//! `[categories]` in the server's configuration: the spend guards ([`crate::admission`]) and
//! similar-category reuse ([`crate::reuse`]).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CategoriesConfig {
    /// The most categories there may be.
    pub max: u64,
    /// Whether a read of an unknown category registers it. Unset: yes when no auth tokens are
    /// configured (v1's open behaviour), no when they are (only writers create categories).
    pub auto_register: Option<bool>,
    /// New categories one client (one token, or one address without auth) may register per
    /// minute; 0 turns the limit off.
    pub new_per_minute: u32,
    /// The provider (a `[[pipeline.providers]]` name) that embeds category texts for
    /// similar-category reuse; empty: reuse is off.
    pub reuse_provider: String,
    /// The cosine a cold category's nearest ready category must reach for its pool to be
    /// borrowed. Chosen per embedding model: `larder bench reuse --provider NAME`.
    pub reuse_threshold: f32,
}

impl Default for CategoriesConfig {
    fn default() -> Self {
        CategoriesConfig {
            max: 10_000,
            auto_register: None,
            new_per_minute: 60,
            reuse_provider: String::new(),
            reuse_threshold: crate::reuse::DEFAULT_THRESHOLD,
        }
    }
}
