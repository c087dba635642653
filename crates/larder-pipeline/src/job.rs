//! The messages that flow between stages. Every job names the stage it is for, and is
//! serialized as JSON on the broker so that any worker process can pick it up.
//!
//! Handlers are idempotent: item ids are a hash of the category and the item's normalized
//! text ([`crate::text::item_id`]), DB writes are upserts, and ranking recomputes a category
//! from the DB. So a message delivered twice (a worker killed after its work but before its
//! ack) changes nothing.

use serde::{Deserialize, Serialize};

/// The stages of the pipe-and-filter chain, in flow order: the four every deployment runs,
/// and `embed`, which only works when `pipeline.embed.provider` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    Generate,
    Filter,
    Evaluate,
    Rank,
    Embed,
}

impl StageKind {
    pub const ALL: [StageKind; 5] = [
        StageKind::Generate,
        StageKind::Filter,
        StageKind::Evaluate,
        StageKind::Rank,
        StageKind::Embed,
    ];

    /// The name used for the broker queue, metrics labels and `larder worker --stage`.
    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::Generate => "generate",
            StageKind::Filter => "filter",
            StageKind::Evaluate => "evaluate",
            StageKind::Rank => "rank",
            StageKind::Embed => "embed",
        }
    }

    pub fn parse(name: &str) -> Option<StageKind> {
        StageKind::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// Generate candidates for a category with every configured generator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateJob {
    pub category: String,
    /// Why generation was queued (`registered`, `refresh`, `refill`, `pending_request`); for logs.
    pub reason: String,
}

/// One generator's raw answer, to be parsed and checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilterJob {
    pub category: String,
    pub locale: String,
    pub provider: String,
    pub model: String,
    /// The model's message content, unparsed: parsing is the filter's job.
    pub content: String,
    pub generated_at_ms: i64,
}

/// Items that passed the filter and wait for evaluators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluateJob {
    pub category: String,
    pub item_ids: Vec<String>,
}

/// Recompute a category's posteriors and serving view; `activate` lists items whose
/// evaluation is done (they join the served pool).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankJob {
    pub category: String,
    #[serde(default)]
    pub activate: Vec<String>,
}

/// Embed the category's active items that have no vector yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedJob {
    pub category: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "job", rename_all = "lowercase")]
pub enum Job {
    Generate(GenerateJob),
    Filter(FilterJob),
    Evaluate(EvaluateJob),
    Rank(RankJob),
    Embed(EmbedJob),
}

impl Job {
    /// The stage this job is addressed to.
    pub fn stage(&self) -> StageKind {
        match self {
            Job::Generate(_) => StageKind::Generate,
            Job::Filter(_) => StageKind::Filter,
            Job::Evaluate(_) => StageKind::Evaluate,
            Job::Rank(_) => StageKind::Rank,
            Job::Embed(_) => StageKind::Embed,
        }
    }

    pub fn category(&self) -> &str {
        match self {
            Job::Generate(j) => &j.category,
            Job::Filter(j) => &j.category,
            Job::Evaluate(j) => &j.category,
            Job::Rank(j) => &j.category,
            Job::Embed(j) => &j.category,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serializing these plain structs cannot fail (no maps with non-string keys).
        serde_json::to_vec(self).expect("jobs serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<Job, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_round_trip_and_route_to_their_stage() {
        let jobs = [
            Job::Generate(GenerateJob {
                category: "이사 준비".into(),
                reason: "registered".into(),
            }),
            Job::Rank(RankJob {
                category: "x".into(),
                activate: vec!["ab".into()],
            }),
        ];
        for job in jobs {
            let back = Job::decode(&job.encode()).expect("decodes");
            assert_eq!(back, job);
        }
        assert_eq!(
            Job::decode(br#"{"job":"rank","category":"c"}"#)
                .expect("activate defaults")
                .stage(),
            StageKind::Rank
        );
        assert!(Job::decode(b"{\"job\":\"nope\"}").is_err());
        for s in StageKind::ALL {
            assert_eq!(StageKind::parse(s.as_str()), Some(s));
        }
    }
}
