//! The entry side of the pipeline, used by the API: queue generation for a category (at most
//! once per cooldown, claimed atomically in the DB so that several servers never queue it
//! twice) and queue a re-rank after feedback.

use std::sync::Arc;

use larder_broker::Broker;
use larder_db::Db;

use crate::job::{GenerateJob, Job, RankJob};
use crate::stage::{now_ms, StageError};

#[derive(Clone)]
pub struct Queue {
    broker: Arc<dyn Broker>,
    db: Db,
    cooldown_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Db(#[from] larder_db::DbError),
    #[error(transparent)]
    Broker(#[from] larder_broker::BrokerError),
}

impl From<QueueError> for StageError {
    fn from(error: QueueError) -> StageError {
        match error {
            QueueError::Db(e) => StageError::Db(e),
            QueueError::Broker(e) => StageError::Providers(e.to_string()),
        }
    }
}

impl Queue {
    pub fn new(broker: Arc<dyn Broker>, db: Db, cooldown_ms: i64) -> Queue {
        Queue {
            broker,
            db,
            cooldown_ms,
        }
    }

    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// Queue generation unless the category had one queued within the cooldown (or
    /// `min_gap_ms` when given). Returns whether a job was queued.
    pub async fn generation(
        &self,
        category: &str,
        reason: &str,
        min_gap_ms: Option<i64>,
    ) -> Result<bool, QueueError> {
        let gap = min_gap_ms.unwrap_or(self.cooldown_ms);
        if !self.db.claim_generation(category, now_ms(), gap).await? {
            return Ok(false);
        }
        let job = Job::Generate(GenerateJob {
            category: category.to_string(),
            reason: reason.to_string(),
        });
        self.broker
            .publish(job.stage().as_str(), &job.encode())
            .await?;
        Ok(true)
    }

    /// Queue a recompute of the category's serving view (after feedback).
    pub async fn rank(&self, category: &str) -> Result<(), QueueError> {
        let job = Job::Rank(RankJob {
            category: category.to_string(),
            activate: Vec::new(),
        });
        self.broker
            .publish(job.stage().as_str(), &job.encode())
            .await?;
        Ok(())
    }
}
