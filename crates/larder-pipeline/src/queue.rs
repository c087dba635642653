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
        let now = now_ms();
        if !self.db.claim_generation(category, now, gap).await? {
            return Ok(false);
        }
        let job = Job::Generate(GenerateJob {
            category: category.to_string(),
            reason: reason.to_string(),
        });
        if let Err(error) = self
            .broker
            .publish(job.stage().as_str(), &job.encode())
            .await
        {
            // Nothing was queued: give the claim back, or the category would wait out the
            // whole cooldown for a generation that never happens.
            if let Err(release) = self.db.release_generation(category, now).await {
                tracing::warn!(category, error = %release, "cannot release the generation claim");
            }
            return Err(error.into());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_generation_that_cannot_be_queued_gives_its_claim_back() {
        let mut redis = larder_testkit::RedisServer::start();
        let broker = larder_broker::redis(&redis.url(), Default::default())
            .await
            .expect("broker");
        let db = Db::connect("sqlite::memory:").await.expect("db");
        db.register_category("c", None, None, 0)
            .await
            .expect("registers");
        let queue = Queue::new(broker, db.clone(), 60_000);
        assert!(queue.generation("c", "test", None).await.expect("queued"));
        assert!(!queue
            .generation("c", "test", None)
            .await
            .expect("cooling down"));

        db.register_category("d", None, None, 0)
            .await
            .expect("registers");
        redis.stop();
        let result = queue.generation("d", "test", None).await;
        assert!(result.is_err(), "{result:?}");
        let d = db.category("d").await.expect("reads").expect("exists");
        assert_eq!(d.last_generation_ms, None, "the claim was given back");
    }
}
