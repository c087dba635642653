//! In-process broker: one unbounded channel per stage, whose receiver the stage's consumers
//! take turns on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use tokio::sync::broadcast;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

use crate::metrics::{self, ACKED, DEAD_LETTERED, DELIVERED, PUBLISHED};
use crate::{Broker, BrokerError, BrokerOptions, Delivery, Subscription};

struct Message {
    id: u64,
    payload: Vec<u8>,
    /// Deliveries so far (0 when new).
    deliveries: u64,
}

/// A message handed out and not yet acked, kept so that a `release` can hand it out again.
struct Unacked {
    payload: Vec<u8>,
    deliveries: u64,
}

/// The queue into one stage.
struct Stage {
    name: String,
    tx: UnboundedSender<Message>,
    /// Competing consumers share the one receiver. A tokio mutex, because a consumer holds it
    /// across the wait for the next message; that also makes "each message to one consumer"
    /// true by construction.
    rx: tokio::sync::Mutex<UnboundedReceiver<Message>>,
    /// Published but not yet handed out.
    queued: AtomicU64,
    /// Handed out but not yet acked. A std mutex: only held for an insert or a remove.
    unacked: Mutex<HashMap<u64, Unacked>>,
    /// Released too often (more than `max_deliveries`).
    dead: Mutex<Vec<Delivery>>,
    max_deliveries: u64,
}

impl Stage {
    fn new(name: &str, max_deliveries: u64) -> Stage {
        let (tx, rx) = mpsc::unbounded_channel();
        Stage {
            name: name.to_owned(),
            tx,
            rx: tokio::sync::Mutex::new(rx),
            queued: AtomicU64::new(0),
            unacked: Mutex::new(HashMap::new()),
            dead: Mutex::new(Vec::new()),
            max_deliveries,
        }
    }

    fn unacked(&self) -> MutexGuard<'_, HashMap<u64, Unacked>> {
        // The set stays consistent even if a holder panicked: every critical section is one
        // insert, remove or len.
        self.unacked.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(crate) struct MemoryBroker {
    stages: Mutex<HashMap<String, Arc<Stage>>>,
    /// One broadcast channel per topic of [`Broker::broadcast`].
    topics: Mutex<HashMap<String, broadcast::Sender<Vec<u8>>>>,
    next_id: AtomicU64,
    max_deliveries: u64,
}

impl MemoryBroker {
    /// Only `max_deliveries` applies in memory: a message is delivered again only when its
    /// consumer releases it, and the queues are unbounded on purpose (see [`crate::memory`]).
    pub(crate) fn new(options: BrokerOptions) -> MemoryBroker {
        MemoryBroker {
            stages: Mutex::new(HashMap::new()),
            topics: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            max_deliveries: options.max_deliveries.max(1),
        }
    }

    fn stage(&self, name: &str) -> Arc<Stage> {
        let mut stages = self.stages.lock().unwrap_or_else(PoisonError::into_inner);
        stages
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Stage::new(name, self.max_deliveries)))
            .clone()
    }

    fn topic(&self, name: &str) -> broadcast::Sender<Vec<u8>> {
        let mut topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        topics
            .entry(name.to_owned())
            .or_insert_with(|| broadcast::channel(TOPIC_CAPACITY).0)
            .clone()
    }
}

/// Broadcasts a listener may fall behind by before it skips the oldest (as the Redis stream
/// keeps only its last entries).
const TOPIC_CAPACITY: usize = 1024;

#[async_trait]
impl Broker for MemoryBroker {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn publish(&self, stage: &str, payload: &[u8]) -> Result<(), BrokerError> {
        let stage = self.stage(stage);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Count before sending so that `backlog` never under-counts a message in transit.
        stage.queued.fetch_add(1, Ordering::SeqCst);
        let message = Message {
            id,
            payload: payload.to_vec(),
            deliveries: 0,
        };
        if stage.tx.send(message).is_err() {
            // Unreachable while `stage` (which owns the receiver) is alive; kept as an error
            // rather than a panic.
            stage.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(BrokerError::Unavailable(format!(
                "in-memory queue {:?} is closed",
                stage.name
            )));
        }
        metrics::count(PUBLISHED, &stage.name);
        Ok(())
    }

    async fn subscribe(
        &self,
        stage: &str,
        consumer: &str,
    ) -> Result<Arc<dyn Subscription>, BrokerError> {
        tracing::debug!(stage, consumer, "memory subscription");
        Ok(Arc::new(MemorySubscription {
            stage: self.stage(stage),
        }))
    }

    async fn backlog(&self, stage: &str) -> Result<u64, BrokerError> {
        let stage = self.stage(stage);
        let unacked = stage.unacked().len() as u64;
        Ok(stage.queued.load(Ordering::SeqCst) + unacked)
    }

    async fn broadcast(&self, topic: &str, payload: &[u8]) -> Result<(), BrokerError> {
        // An error only means nobody listens.
        let _ = self.topic(topic).send(payload.to_vec());
        Ok(())
    }

    async fn listen(&self, topic: &str) -> Result<BoxStream<'static, Vec<u8>>, BrokerError> {
        let rx = self.topic(topic).subscribe();
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(payload) => return Some((payload, rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })))
    }

    async fn dead_letters(&self, stage: &str, limit: usize) -> Result<Vec<Delivery>, BrokerError> {
        let stage = self.stage(stage);
        let dead = stage.dead.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(dead.iter().take(limit).cloned().collect())
    }
}

struct MemorySubscription {
    stage: Arc<Stage>,
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next(&self, block: Duration) -> Result<Option<Delivery>, BrokerError> {
        let stage = &self.stage;
        // Both the lock and `recv` are cancel-safe, so giving up at the deadline loses nothing.
        // `timeout` polls the inner future before its deadline, so a zero `block` still takes a
        // message that is already queued.
        let received = tokio::time::timeout(block, async {
            let mut rx = stage.rx.lock().await;
            rx.recv().await
        })
        .await;
        let message = match received {
            Ok(Some(message)) => message,
            // Timed out, or (unreachable: the stage owns a sender) the channel closed.
            Ok(None) | Err(_) => return Ok(None),
        };
        // Insert before decrementing `queued`, so `backlog` never dips below the truth.
        let deliveries = message.deliveries + 1;
        stage.unacked().insert(
            message.id,
            Unacked {
                payload: message.payload.clone(),
                deliveries,
            },
        );
        stage.queued.fetch_sub(1, Ordering::SeqCst);
        metrics::count(DELIVERED, &stage.name);
        Ok(Some(Delivery {
            id: message.id.to_string(),
            payload: message.payload,
            deliveries,
        }))
    }

    async fn ack(&self, id: &str) -> Result<(), BrokerError> {
        let id: u64 = id
            .parse()
            .map_err(|_| BrokerError::InvalidId(id.to_owned()))?;
        if self.stage.unacked().remove(&id).is_some() {
            metrics::count(ACKED, &self.stage.name);
        }
        Ok(())
    }

    /// Queue the message again after `after` (its consumer failed), or dead-letter it once it
    /// has been delivered `max_deliveries` times.
    async fn release(&self, id: &str, after: Duration) -> Result<(), BrokerError> {
        let key: u64 = id
            .parse()
            .map_err(|_| BrokerError::InvalidId(id.to_owned()))?;
        let Some(unacked) = self.stage.unacked().remove(&key) else {
            return Ok(());
        };
        let stage = self.stage.clone();
        if unacked.deliveries >= stage.max_deliveries {
            metrics::count(DEAD_LETTERED, &stage.name);
            let mut dead = stage.dead.lock().unwrap_or_else(PoisonError::into_inner);
            dead.push(Delivery {
                id: id.to_owned(),
                payload: unacked.payload,
                deliveries: unacked.deliveries,
            });
            return Ok(());
        }
        stage.queued.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let message = Message {
                id: key,
                payload: unacked.payload,
                deliveries: unacked.deliveries,
            };
            if stage.tx.send(message).is_err() {
                stage.queued.fetch_sub(1, Ordering::SeqCst);
            }
        });
        Ok(())
    }

    /// Nothing to do: in memory, messages are never reclaimed.
    async fn touch(&self, _id: &str) -> Result<(), BrokerError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn zero_block_takes_a_queued_message_and_bad_ids_are_rejected() {
        let broker = MemoryBroker::new(BrokerOptions::default());
        let sub = broker.subscribe("s", "c").await.expect("subscribe");
        assert!(sub.next(Duration::ZERO).await.expect("next").is_none());
        broker.publish("s", b"x").await.expect("publish");
        let d = sub
            .next(Duration::ZERO)
            .await
            .expect("next")
            .expect("a queued message is taken without waiting");
        assert_eq!(d.payload, b"x");
        assert!(matches!(
            sub.ack("not-a-number").await,
            Err(BrokerError::InvalidId(_))
        ));
        // An id that was never handed out is harmless, like a repeated ack.
        sub.ack("999999").await.expect("unknown id");
        assert_eq!(broker.backlog("s").await.expect("backlog"), 1);
        sub.ack(&d.id).await.expect("ack");
        assert_eq!(broker.backlog("s").await.expect("backlog"), 0);
    }
}
