//! The subscription to `larder:invalidate` (views) and `larder:invalidate:e` (entities) behind
//! [`crate::Store::invalidations`] on Redis.
//!
//! One dedicated pub/sub connection per store (not one per listener), held by a background
//! task that forwards every message into the store's [`Announcer`]. When the connection is
//! lost it announces [`Invalidation::Lost`] at once (so a near cache stops serving), reconnects
//! with backoff and then announces [`Invalidation::All`], because whatever was published
//! meanwhile is gone: Redis pub/sub keeps nothing for absent subscribers.
//!
//! The task tries its nodes in turn, starting after the one it lost: a standalone store has
//! one node, so it waits for that server to return; a cluster store has the seed list, and
//! classic (non-sharded) pub/sub is relayed to every node over the cluster bus, so any live
//! node will do.
//!
//! A SIGKILLed or restarted server closes the socket, which ends the message stream at once.
//! A silent network loss closes nothing, so the task also PINGs every [`PING_EVERY`] and treats
//! a missing answer as a lost connection.

use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use redis::aio::{PubSubSink, PubSubStream};
use redis::Value;
use tokio::task::JoinHandle;

use crate::invalidation::{Announcer, EntityMessage};
use crate::{keys, Invalidation, Result, StoreError};

/// How often an idle subscription checks that its server still answers.
const PING_EVERY: Duration = Duration::from_secs(5);
/// First wait after a failed reconnect; doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between reconnect attempts: long enough not to hammer a server that is
/// starting, short enough that listeners resume soon after it is back.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The running subscription. Dropping it (with the store) stops the task, which drops the
/// last announcer clone besides the store's, so every listener's stream ends.
pub(crate) struct Subscriber {
    announcer: Announcer,
    task: JoinHandle<()>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Subscriber {
    /// Connect and subscribe to one of `nodes` (tried in order), then hand the connection to a
    /// background task. Fails when no node can be subscribed to now, so that the first
    /// listener learns Redis is down instead of silently waiting.
    pub(crate) async fn start(nodes: Vec<redis::Client>, timeout: Duration) -> Result<Subscriber> {
        let mut last = None;
        for (index, client) in nodes.iter().enumerate() {
            match subscribe(client, timeout).await {
                Ok(connection) => {
                    let announcer = Announcer::new();
                    let task = tokio::spawn(run(
                        Resubscribe {
                            nodes,
                            timeout,
                            current: index,
                        },
                        connection,
                        announcer.clone(),
                    ));
                    return Ok(Subscriber { announcer, task });
                }
                Err(error) => {
                    tracing::debug!(node = %addr(client), %error, "cannot subscribe for view invalidations");
                    last = Some(error);
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            StoreError::Config("no Redis node to subscribe to for view invalidations".into())
        }))
    }

    pub(crate) fn listen(&self) -> BoxStream<'static, Invalidation> {
        self.announcer.listen()
    }
}

/// Where the task subscribes again after losing its connection.
struct Resubscribe {
    nodes: Vec<redis::Client>,
    timeout: Duration,
    /// Index into `nodes` of the node currently (or last) subscribed to.
    current: usize,
}

impl Resubscribe {
    /// Subscribe again, moving on to the next node at every attempt, until one answers.
    async fn reconnect(&mut self) -> (PubSubSink, PubSubStream) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            self.current = (self.current + 1) % self.nodes.len();
            let client = &self.nodes[self.current];
            match subscribe(client, self.timeout).await {
                Ok(connection) => {
                    tracing::info!(node = %addr(client), "view invalidation subscription restored");
                    return connection;
                }
                Err(error) => {
                    tracing::debug!(node = %addr(client), %error, ?backoff, "view invalidation resubscribe failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Open a pub/sub connection (AUTH, TLS and database come from the client's URL) and
/// subscribe to the invalidation channel.
async fn subscribe(
    client: &redis::Client,
    timeout: Duration,
) -> Result<(PubSubSink, PubSubStream)> {
    let attempt = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub
            .subscribe(&[keys::INVALIDATE_CHANNEL, keys::ENTITY_INVALIDATE_CHANNEL])
            .await?;
        Ok::<_, redis::RedisError>(pubsub.split())
    };
    // `get_async_pubsub` has no connect timeout of its own; a blackholed address would hang.
    match tokio::time::timeout(timeout, attempt).await {
        Ok(connection) => Ok(connection?),
        Err(_) => Err(StoreError::Unavailable(format!(
            "subscribing to {} timed out after {timeout:?}",
            keys::INVALIDATE_CHANNEL
        ))),
    }
}

async fn run(
    mut resubscribe: Resubscribe,
    mut connection: (PubSubSink, PubSubStream),
    announcer: Announcer,
) {
    loop {
        let reason = forward(&mut connection, &announcer, resubscribe.timeout).await;
        let node = addr(&resubscribe.nodes[resubscribe.current]);
        tracing::warn!(%node, reason, "view invalidation subscription lost; resubscribing");
        metrics::counter!(crate::metered::INVALIDATION_RECONNECTS).increment(1);
        announcer.announce(Invalidation::Lost);
        connection = resubscribe.reconnect().await;
        announcer.announce(Invalidation::All);
    }
}

/// Forward messages until the connection is lost; returns why.
async fn forward(
    (sink, stream): &mut (PubSubSink, PubSubStream),
    announcer: &Announcer,
    timeout: Duration,
) -> &'static str {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate, and the connection was just proven by SUBSCRIBE.
    ping.tick().await;
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else {
                    return "connection closed";
                };
                if message.get_channel_name() == keys::ENTITY_INVALIDATE_CHANNEL {
                    match EntityMessage::decode(message.get_payload_bytes()) {
                        Some(invalidation) => announcer.announce(invalidation),
                        // Not Larder's message: someone else published on our channel.
                        None => tracing::warn!("ignoring a malformed message on the entity invalidation channel"),
                    }
                    continue;
                }
                match std::str::from_utf8(message.get_payload_bytes()) {
                    Ok(category) => announcer.announce(Invalidation::Category(category.to_owned())),
                    // Larder only publishes category names, which are UTF-8; someone else
                    // published on our channel. Nothing can be cached under such a name.
                    Err(_) => tracing::warn!(
                        bytes = message.get_payload_bytes().len(),
                        "ignoring a non-UTF-8 message on the invalidation channel"
                    ),
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(timeout, sink.ping::<Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => return "ping failed",
                    Err(_) => return "ping timed out",
                }
            }
        }
    }
}

fn addr(client: &redis::Client) -> String {
    client.get_connection_info().addr().to_string()
}
