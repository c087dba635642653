//! # larder-broker
//!
//! The message broker between Larder's pipeline stages (generate → filter → evaluate → rank,
//! and rank → generate again). Every stage reads its own queue as one of a group of *competing
//! consumers*: each message goes to one consumer of the group, and the consumer acknowledges it
//! once it has been processed.
//!
//! ## Layout
//!
//! - `lib.rs`: the public contract ([`Broker`], [`Subscription`], [`Delivery`],
//!   [`BrokerOptions`]) and the two constructors, [`memory`] and [`redis`].
//! - `error.rs`: [`BrokerError`], the one error type of this crate.
//! - `metrics.rs`: every metric name this crate records, in one place.
//! - `memory.rs`: in-process channels, the embedded default.
//! - `redis_streams/`: Redis Streams with consumer groups. `mod.rs` is the broker (publish,
//!   backlog, dead letters), `conn.rs` the connections (one shared connection for quick commands,
//!   one dedicated connection per subscription for the blocking read), `subscription.rs` the
//!   consumer loop (reclaim → dead-letter → read), `broadcast.rs` the fan-out topics (every
//!   listener reads the whole stream), `reply.rs` the parsing of stream replies.
//!
//! Redis key names come from `larder_store::keys` only: the queue into stage `S` is the stream
//! `larder:q:S` read by the group `larder`, its dead letters go to `larder:dlq:S`.

mod error;
mod memory;
pub mod metrics;
mod redis_streams;

use std::sync::Arc;
use std::time::Duration;

pub use error::BrokerError;

/// One message handed to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Broker-specific id (the stream entry id on Redis, a counter in memory); pass it to `ack`.
    pub id: String,
    pub payload: Vec<u8>,
    /// How many times this message has been delivered, this delivery included (1 on first
    /// delivery).
    pub deliveries: u64,
}

#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// A delivered but unacknowledged message is reclaimed by another consumer (XAUTOCLAIM)
    /// after this idle time.
    pub claim_idle: Duration,
    /// After this many deliveries a message goes to the dead-letter stream instead of a
    /// consumer.
    pub max_deliveries: u64,
    /// Approximate cap on each stream's length (XADD MAXLEN ~), None = unbounded.
    pub max_len: Option<u64>,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            claim_idle: Duration::from_secs(30),
            max_deliveries: 5,
            max_len: Some(1_000_000),
        }
    }
}

#[async_trait::async_trait]
pub trait Broker: Send + Sync + 'static {
    /// "memory" or "redis-streams".
    fn kind(&self) -> &'static str;
    /// Append a message to the queue into `stage` ("generate" | "filter" | "evaluate" |
    /// "rank"; any `[a-z_]+` name works).
    async fn publish(&self, stage: &str, payload: &[u8]) -> Result<(), BrokerError>;
    /// Join the consumer group of `stage` as `consumer` (unique per process+task, e.g.
    /// "host-pid-3"). Competing consumers: each message goes to ONE consumer of the group.
    async fn subscribe(
        &self,
        stage: &str,
        consumer: &str,
    ) -> Result<Arc<dyn Subscription>, BrokerError>;
    /// Messages waiting or in flight for `stage` (Redis: entries not yet delivered + delivered
    /// but not acknowledged; memory: queued + unacked). Used by benches and /metrics.
    async fn backlog(&self, stage: &str) -> Result<u64, BrokerError>;
    /// Dead-lettered messages of `stage` (oldest first, at most `limit`), each with the id it
    /// had in the queue and how often it was delivered before it was given up on.
    async fn dead_letters(&self, stage: &str, limit: usize) -> Result<Vec<Delivery>, BrokerError>;
    /// Fan-out, unlike [`Broker::publish`]: every listener of `topic` gets `payload`. For what
    /// people watch (the pipeline events of every process), not for work: bounded (Redis keeps
    /// the last 1000 per topic in the stream `larder:bc:{topic}`), and a listener that falls
    /// further behind skips the oldest.
    async fn broadcast(&self, topic: &str, payload: &[u8]) -> Result<(), BrokerError>;
    /// Every payload broadcast on `topic` from now on, from any process on this broker, until
    /// the stream is dropped. Fails when the broker cannot be reached now; later outages are
    /// ridden out (Redis: the reading resumes after the last entry read).
    async fn listen(
        &self,
        topic: &str,
    ) -> Result<futures::stream::BoxStream<'static, Vec<u8>>, BrokerError>;
}

#[async_trait::async_trait]
pub trait Subscription: Send + Sync {
    /// The next message for this consumer, waiting up to `block`; `Ok(None)` on timeout.
    ///
    /// First hands out messages reclaimed from consumers idle longer than `claim_idle`
    /// (XAUTOCLAIM: how a SIGKILLed worker's messages get processed), then new ones
    /// (XREADGROUP >). A message whose delivery count would exceed `max_deliveries` is moved to
    /// the dead-letter stream and skipped.
    async fn next(&self, block: Duration) -> Result<Option<Delivery>, BrokerError>;
    /// Acknowledge a processed message. Acking twice is harmless.
    async fn ack(&self, id: &str) -> Result<(), BrokerError>;
    /// Tell the broker this consumer is still working on `id`, so it is not reclaimed by
    /// another consumer while a slow job (a provider honouring a long Retry-After) runs.
    /// Callers send this every fraction of `claim_idle`; a killed consumer stops sending it.
    async fn touch(&self, id: &str) -> Result<(), BrokerError>;
    /// Give a message back after its consumer failed: it is delivered again (to any consumer)
    /// after `after`, or dead-lettered after `max_deliveries`. Redis Streams need nothing for
    /// this (an unacknowledged message is reclaimed after `claim_idle`); the in-memory broker,
    /// which never reclaims, re-queues it.
    async fn release(&self, id: &str, after: Duration) -> Result<(), BrokerError>;
}

/// In-process channels: the embedded default.
///
/// Unbounded, because the pipeline has a cycle (rank → generate) that a bounded queue could
/// deadlock; stages bound their own concurrency instead (`max_len` is therefore ignored).
/// Competing consumers per stage; concurrent `next` calls are safe. Messages delivered but never
/// acked are not redelivered unless their consumer releases them (in-process, a crash loses
/// the whole process anyway); a message released `max_deliveries` times is dead-lettered.
pub fn memory(options: BrokerOptions) -> Arc<dyn Broker> {
    Arc::new(memory::MemoryBroker::new(options))
}

/// Redis Streams with consumer groups on `redis://`, `rediss://`, `redis-cluster://…` or
/// `rediss-cluster://…`. Connects before returning, so a bad URL or an unreachable server fails
/// here.
pub async fn redis(
    url: &larder_store::RedisUrl,
    options: BrokerOptions,
) -> Result<Arc<dyn Broker>, BrokerError> {
    Ok(Arc::new(
        redis_streams::RedisBroker::connect(url, options).await?,
    ))
}
