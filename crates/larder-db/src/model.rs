//! The rows Larder reads and writes, as plain structs.

use crate::error::{DbError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemStatus {
    Pending,
    Active,
    Rejected,
}

impl ItemStatus {
    /// The text stored in `items.status` (same as the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            ItemStatus::Pending => "pending",
            ItemStatus::Active => "active",
            ItemStatus::Rejected => "rejected",
        }
    }

    pub(crate) fn parse(text: &str) -> Result<ItemStatus> {
        match text {
            "pending" => Ok(ItemStatus::Pending),
            "active" => Ok(ItemStatus::Active),
            "rejected" => Ok(ItemStatus::Rejected),
            other => Err(DbError::Query(format!(
                "unknown item status {other:?} in database"
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedbackKind {
    Impression,
    Select,
}

impl FeedbackKind {
    /// The text stored in `feedback.kind` (same as the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            FeedbackKind::Impression => "impression",
            FeedbackKind::Select => "select",
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Category {
    pub name: String,
    pub description: Option<String>,
    pub locale: Option<String>,
    pub created_at_ms: i64,
    pub last_generation_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CategorySummary {
    pub name: String,
    pub description: Option<String>,
    pub locale: Option<String>,
    /// Active items.
    pub pool_size: u64,
    /// Items (of any status) with at least one evaluation.
    pub evaluated: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewItem {
    pub id: String,
    pub category: String,
    pub text: String,
    /// Normalised text, for deduplication.
    pub norm: String,
    pub provider: String,
    pub model: String,
    pub created_at_ms: i64,
    pub status: ItemStatus,
    /// Reject reason.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Item {
    pub id: String,
    pub category: String,
    pub text: String,
    pub provider: String,
    pub model: String,
    pub created_at_ms: i64,
    pub status: ItemStatus,
    pub reason: Option<String>,
    pub impressions: u64,
    pub weighted_impressions: f64,
    pub selections: u64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Evaluation {
    pub item_id: String,
    /// Provider name.
    pub evaluator: String,
    pub model: String,
    /// 0..=10.
    pub score: f64,
    pub reason: Option<String>,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ItemDetail {
    pub item: Item,
    pub evaluations: Vec<Evaluation>,
}

/// What ranking needs per item of a category.
#[derive(Debug, Clone, PartialEq)]
pub struct RankInput {
    pub id: String,
    pub text: String,
    pub status: ItemStatus,
    /// Mean score over evaluations, None if none.
    pub eval_mean: Option<f64>,
    pub eval_count: u64,
    pub impressions: u64,
    pub weighted_impressions: f64,
    pub selections: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackEvent {
    pub item_id: String,
    pub kind: FeedbackKind,
    pub position: u32,
    /// Position weight, precomputed by the caller.
    pub weight: f64,
    pub at_ms: i64,
}
