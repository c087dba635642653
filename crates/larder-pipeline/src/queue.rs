//! The broker side of the category domain's [`Jobs`] port: a generation or a re-rank asked for
//! by the API (or the rank stage's refill) becomes a job on the stage's queue. Claims and their
//! release live in [`larder_categories::Generations`], which calls this.

use std::sync::Arc;

use async_trait::async_trait;
use larder_broker::{Broker, BrokerError};
use larder_categories::Jobs;

use crate::job::{GenerateJob, Job, RankJob};

#[derive(Clone)]
pub struct Queue {
    broker: Arc<dyn Broker>,
}

impl Queue {
    pub fn new(broker: Arc<dyn Broker>) -> Queue {
        Queue { broker }
    }

    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    async fn publish(&self, job: Job) -> Result<(), BrokerError> {
        self.broker
            .publish(job.stage().as_str(), &job.encode())
            .await
    }
}

#[async_trait]
impl Jobs for Queue {
    async fn generate(&self, category: &str, reason: &str) -> Result<(), BrokerError> {
        self.publish(Job::Generate(GenerateJob {
            category: category.to_string(),
            reason: reason.to_string(),
        }))
        .await
    }

    async fn rank(&self, category: &str) -> Result<(), BrokerError> {
        self.publish(Job::Rank(RankJob {
            category: category.to_string(),
            activate: Vec::new(),
        }))
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use larder_categories::Generations;
    use larder_db::Db;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_generation_that_cannot_be_queued_gives_its_claim_back() {
        let mut redis = larder_testkit::RedisServer::start();
        let broker =
            larder_broker::redis(&redis.url().parse().expect("redis URL"), Default::default())
                .await
                .expect("broker");
        let db = Db::connect(&larder_url::DbUrl::SqliteMemory)
            .await
            .expect("db");
        db.register_category("c", None, None, 0)
            .await
            .expect("registers");
        let generations = Generations::new(db.clone(), Arc::new(Queue::new(broker)), 60_000);
        assert!(generations.queue("c", "test", None).await.expect("queued"));
        assert!(!generations
            .queue("c", "test", None)
            .await
            .expect("cooling down"));

        db.register_category("d", None, None, 0)
            .await
            .expect("registers");
        redis.stop();
        let result = generations.queue("d", "test", None).await;
        assert!(result.is_err(), "{result:?}");
        let d = db.category("d").await.expect("reads").expect("exists");
        assert_eq!(d.last_generation_ms, None, "the claim was given back");
    }
}
