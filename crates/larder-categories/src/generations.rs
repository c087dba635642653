//! Generation claims: the one place a category's generation is claimed, queued, and given back
//! when it could not be queued.
//!
//! A claim is a single atomic DB update (`last_generation_ms`, at most once per gap), so
//! several servers and rank workers never queue one category twice. Every path that queues
//! generation (registration, a request for a pending category, refresh, the rank stage's
//! refill, seeding) goes through [`Generations::queue`], so every path gives its claim back
//! when the job cannot be published: otherwise the category would wait out the whole cooldown
//! for a generation that never happens.

use std::sync::Arc;

use async_trait::async_trait;
use larder_broker::BrokerError;
use larder_db::Db;

use crate::error::CategoriesError;
use crate::now_ms;

/// Where category work is queued: the pipeline's broker. A port, so that this crate does not
/// depend on the pipeline (the pipeline depends on it, for the ranking math and the claims).
#[async_trait]
pub trait Jobs: Send + Sync + 'static {
    /// Queue a generation of `category`; `reason` is for logs.
    async fn generate(&self, category: &str, reason: &str) -> Result<(), BrokerError>;
    /// Queue a recompute of the category's serving view (after feedback).
    async fn rank(&self, category: &str) -> Result<(), BrokerError>;
}

/// Claims generations in the main DB and queues them on [`Jobs`].
#[derive(Clone)]
pub struct Generations {
    db: Db,
    jobs: Arc<dyn Jobs>,
    cooldown_ms: i64,
}

impl Generations {
    /// `cooldown_ms` is the gap between two generations of one category unless a caller asks
    /// for another.
    pub fn new(db: Db, jobs: Arc<dyn Jobs>, cooldown_ms: i64) -> Generations {
        Generations {
            db,
            jobs,
            cooldown_ms,
        }
    }

    pub fn jobs(&self) -> &Arc<dyn Jobs> {
        &self.jobs
    }

    /// Queue generation unless the category had one queued within the cooldown (or
    /// `min_gap_ms` when given). Returns whether a job was queued.
    pub async fn queue(
        &self,
        category: &str,
        reason: &str,
        min_gap_ms: Option<i64>,
    ) -> Result<bool, CategoriesError> {
        let gap = min_gap_ms.unwrap_or(self.cooldown_ms);
        let now = now_ms();
        if !self.db.claim_generation(category, now, gap).await? {
            return Ok(false);
        }
        if let Err(error) = self.jobs.generate(category, reason).await {
            // Nothing was queued: give the claim back.
            if let Err(release) = self.db.release_generation(category, now).await {
                tracing::warn!(category, error = %release, "cannot release the generation claim");
            }
            return Err(error.into());
        }
        Ok(true)
    }
}
