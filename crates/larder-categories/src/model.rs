//! The requests [`crate::Categories`] takes and the answers it gives, as the API's JSON
//! bodies (typed, so the shapes are checked by the compiler and listed in one place).

use larder_db::FeedbackKind;
use serde::{Deserialize, Serialize};

/// `PUT /v1/categories/{c}` body (optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub description: Option<String>,
    pub locale: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Registered {
    pub category: String,
    pub created: bool,
    pub queued: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CategoryStatus {
    Pending,
    Ready,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CategoryList {
    pub categories: Vec<CategoryEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CategoryEntry {
    pub name: String,
    pub status: CategoryStatus,
    pub pool_size: u64,
    pub evaluated: u64,
    pub description: Option<String>,
    pub locale: Option<String>,
}

/// `GET …/items` query. Unknown parameters (a client's cache-buster) are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ItemsRequest {
    pub limit: Option<usize>,
    pub explore: Option<bool>,
    pub wait_ms: Option<u64>,
}

pub enum ItemsAnswer {
    /// The `200` JSON body, rendered from the view's pre-rendered items.
    Ready(Vec<u8>),
    /// Not generated yet: `202` with this body.
    Pending(Pending),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pending {
    pub category: String,
    pub status: CategoryStatus,
    pub items: [(); 0],
}

impl Pending {
    pub fn new(category: &str) -> Pending {
        Pending {
            category: category.to_string(),
            status: CategoryStatus::Pending,
            items: [],
        }
    }
}

/// `GET …/items/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemAnswer {
    pub id: String,
    pub category: String,
    pub text: String,
    /// `active` | `rejected`.
    pub status: &'static str,
    pub reason: Option<String>,
    pub score: f64,
    /// The central 95% interval of the score (its posterior), `[low, high]`.
    pub interval: [f64; 2],
    pub generator: Generator,
    pub created_at: String,
    pub evaluations: Vec<Evaluated>,
    pub impressions: u64,
    pub selections: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Generator {
    pub provider: String,
    pub model: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluated {
    pub evaluator: String,
    pub model: String,
    pub score: f64,
    pub reason: Option<String>,
    pub created_at: String,
}

/// `POST …/feedback` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    pub events: Vec<FeedbackIn>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackIn {
    pub item_id: String,
    pub event: FeedbackKind,
    #[serde(default)]
    pub position: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Accepted {
    pub accepted: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Refreshed {
    pub category: String,
    pub queued: bool,
}
