//! Redis Streams with consumer groups, on standalone Redis or Redis Cluster.
//!
//! The queue into stage `S` is the stream `larder:q:S`, read by the consumer group `larder`;
//! each message is one entry with a single field `p` (the payload). A message delivered
//! `max_deliveries` times without an ack moves to `larder:dlq:S` as an entry with the fields
//! `p` (payload), `id` (its id in the queue) and `d` (how often it was delivered).
//!
//! Each stream is one key, so in a cluster it lives on one node; different stages spread over
//! the primaries.

mod broadcast;
mod conn;
mod reply;
mod subscription;

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use larder_store::keys;
use redis::{Cmd, RedisError, Value};

use crate::metrics::{self, ACKED, DEAD_LETTERED, PUBLISHED};
use crate::{Broker, BrokerError, BrokerOptions, Delivery, Subscription};
use conn::{Connector, Shared};
use reply::Entry;
use subscription::RedisSubscription;

/// The one stream field that holds a message's payload.
const PAYLOAD: &[u8] = b"p";
/// Dead-letter fields: the message's id in its queue, and how often it was delivered.
const ORIGINAL_ID: &[u8] = b"id";
const DELIVERIES: &[u8] = b"d";
/// When Redis cannot report the group's lag, `backlog` counts undelivered entries itself, in
/// pages of this many, up to `LAG_SCAN_PAGES` pages (a lower bound beyond that).
const LAG_SCAN_PAGE: usize = 1000;
const LAG_SCAN_PAGES: usize = 100;

pub(crate) struct RedisBroker {
    inner: Arc<Inner>,
}

/// What the broker and its subscriptions share.
pub(crate) struct Inner {
    shared: Shared,
    connector: Connector,
    options: BrokerOptions,
}

impl RedisBroker {
    pub(crate) async fn connect(
        url: &larder_store::RedisUrl,
        options: BrokerOptions,
    ) -> Result<Self, BrokerError> {
        if options.max_deliveries == 0 {
            return Err(BrokerError::Config(
                "max_deliveries must be at least 1".to_owned(),
            ));
        }
        let (shared, connector) = conn::connect(url).await?;
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                shared,
                connector,
                options,
            }),
        })
    }
}

impl Inner {
    async fn query(&self, cmd: &Cmd) -> Result<Value, BrokerError> {
        Ok(self.shared.query(cmd).await?)
    }

    /// `XADD key [MAXLEN ~ n] * field value …`
    async fn xadd(&self, key: &str, fields: &[(&[u8], &[u8])]) -> Result<(), BrokerError> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(key);
        if let Some(max_len) = self.options.max_len {
            cmd.arg("MAXLEN").arg("~").arg(max_len);
        }
        cmd.arg("*");
        for (field, value) in fields {
            cmd.arg(*field).arg(*value);
        }
        self.query(&cmd).await.map(drop)
    }

    /// `XACK key larder id`: whether the message was still pending.
    async fn xack(&self, key: &str, id: &str) -> Result<bool, BrokerError> {
        let mut cmd = redis::cmd("XACK");
        cmd.arg(key).arg(keys::STAGE_GROUP).arg(id);
        Ok(matches!(self.query(&cmd).await?, Value::Int(n) if n > 0))
    }

    /// Create the group reading `key` from its first entry (id `0`, not `$`), so messages
    /// published before the first subscriber are delivered too. An existing group is fine.
    async fn ensure_group(&self, key: &str) -> Result<(), BrokerError> {
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(key)
            .arg(keys::STAGE_GROUP)
            .arg("0")
            .arg("MKSTREAM");
        match self.shared.query(&cmd).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Move `entry` of `stage` to the dead-letter stream, then settle it in the queue. In that
    /// order: a crash in between leaves a duplicate dead letter, never a lost message.
    async fn dead_letter(
        &self,
        stage: &str,
        key: &str,
        entry: &Entry,
        delivered: u64,
    ) -> Result<(), BrokerError> {
        let payload = entry.field(PAYLOAD).unwrap_or_default();
        let delivered = delivered.to_string();
        self.xadd(
            &keys::dead_letter_stream(stage),
            &[
                (PAYLOAD, payload),
                (ORIGINAL_ID, entry.id.as_bytes()),
                (DELIVERIES, delivered.as_bytes()),
            ],
        )
        .await?;
        self.xack(key, &entry.id).await?;
        metrics::count(DEAD_LETTERED, stage);
        tracing::warn!(
            stage,
            id = %entry.id,
            deliveries = %delivered,
            "message dead-lettered after too many deliveries"
        );
        Ok(())
    }

    /// Entries of `key` after `last_delivered`, counted page by page.
    async fn count_after(&self, key: &str, last_delivered: &str) -> Result<u64, BrokerError> {
        let mut from = format!("({last_delivered}");
        let mut total = 0;
        for _ in 0..LAG_SCAN_PAGES {
            let mut cmd = redis::cmd("XRANGE");
            cmd.arg(key)
                .arg(&from)
                .arg("+")
                .arg("COUNT")
                .arg(LAG_SCAN_PAGE);
            let page = reply::xrange(self.query(&cmd).await?)?;
            total += page.len() as u64;
            match page.last() {
                Some(last) if page.len() == LAG_SCAN_PAGE => from = format!("({}", last.id),
                _ => break,
            }
        }
        Ok(total)
    }
}

/// Stream ids are `<ms>-<seq>`; anything else is not one of ours (and Redis would reject it
/// with an error that looks like an outage).
fn is_stream_id(id: &str) -> bool {
    match id.split_once('-') {
        Some((ms, seq)) => {
            !ms.is_empty()
                && !seq.is_empty()
                && ms.bytes().all(|b| b.is_ascii_digit())
                && seq.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

fn no_such_key(e: &RedisError) -> bool {
    e.to_string().contains("no such key")
}

#[async_trait]
impl Broker for RedisBroker {
    fn kind(&self) -> &'static str {
        "redis-streams"
    }

    async fn publish(&self, stage: &str, payload: &[u8]) -> Result<(), BrokerError> {
        self.inner
            .xadd(&keys::stage_stream(stage), &[(PAYLOAD, payload)])
            .await?;
        metrics::count(PUBLISHED, stage);
        Ok(())
    }

    async fn subscribe(
        &self,
        stage: &str,
        consumer: &str,
    ) -> Result<Arc<dyn Subscription>, BrokerError> {
        let key = keys::stage_stream(stage);
        self.inner.ensure_group(&key).await?;
        // Open the blocking connection now, so an unreachable server fails the subscribe.
        let blocking = self.inner.connector.open(&key).await?;
        tracing::debug!(stage, consumer, "redis streams subscription");
        Ok(Arc::new(RedisSubscription::new(
            self.inner.clone(),
            stage,
            consumer,
            blocking,
        )))
    }

    async fn backlog(&self, stage: &str) -> Result<u64, BrokerError> {
        let key = keys::stage_stream(stage);
        let mut cmd = redis::cmd("XINFO");
        cmd.arg("GROUPS").arg(&key);
        let groups = match self.inner.shared.query(&cmd).await {
            Ok(v) => v,
            Err(e) if no_such_key(&e) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        match reply::xinfo_group(groups, keys::STAGE_GROUP)? {
            Some(group) => {
                let undelivered = match group.lag {
                    Some(lag) => lag,
                    None => self.inner.count_after(&key, &group.last_delivered).await?,
                };
                Ok(group.pending + undelivered)
            }
            // Nobody subscribed yet: every entry is still to be delivered.
            None => {
                let mut xlen = redis::cmd("XLEN");
                xlen.arg(&key);
                let n = reply::int(self.inner.query(&xlen).await?).ok_or_else(|| {
                    BrokerError::Protocol {
                        command: "XLEN",
                        reason: "not a number".to_owned(),
                    }
                })?;
                Ok(u64::try_from(n).unwrap_or(0))
            }
        }
    }

    async fn broadcast(&self, topic: &str, payload: &[u8]) -> Result<(), BrokerError> {
        broadcast::broadcast(&self.inner, topic, payload).await
    }

    async fn listen(&self, topic: &str) -> Result<BoxStream<'static, Vec<u8>>, BrokerError> {
        broadcast::listen(self.inner.clone(), topic).await
    }

    async fn dead_letters(&self, stage: &str, limit: usize) -> Result<Vec<Delivery>, BrokerError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(keys::dead_letter_stream(stage))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(limit);
        let entries = reply::xrange(self.inner.query(&cmd).await?)?;
        Ok(entries
            .into_iter()
            .map(|e| Delivery {
                id: e
                    .field(ORIGINAL_ID)
                    .map(|id| String::from_utf8_lossy(id).into_owned())
                    .unwrap_or_else(|| e.id.clone()),
                payload: e.field(PAYLOAD).unwrap_or_default().to_vec(),
                deliveries: e
                    .field(DELIVERIES)
                    .and_then(|d| std::str::from_utf8(d).ok())
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(0),
            })
            .collect())
    }
}

/// `XACK` on behalf of a subscription (see [`RedisSubscription::ack`]).
async fn ack(inner: &Inner, stage: &str, key: &str, id: &str) -> Result<(), BrokerError> {
    if !is_stream_id(id) {
        return Err(BrokerError::InvalidId(id.to_owned()));
    }
    if inner.xack(key, id).await? {
        metrics::count(ACKED, stage);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids() {
        assert!(is_stream_id("1700000000000-0"));
        assert!(is_stream_id("0-1"));
        for bad in ["", "-", "1-", "-1", "1", "a-1", "1-0-0", "12"] {
            assert!(!is_stream_id(bad), "{bad:?}");
        }
    }
}
