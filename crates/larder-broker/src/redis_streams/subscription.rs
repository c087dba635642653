//! One consumer of a stage's group: reclaim idle messages, dead-letter the ones delivered too
//! often, then read new ones.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use larder_store::keys;
use tokio::sync::Mutex;

use super::conn::Blocking;
use super::reply::{self, Entry};
use super::{Inner, PAYLOAD};
use crate::metrics::{self, DELIVERED, RECLAIMED};
use crate::{BrokerError, Delivery, Subscription};

/// A blocking read is given up (and its connection replaced) this long after its BLOCK time
/// should have ended: the server or the network is then not answering.
const BLOCK_GRACE: Duration = Duration::from_secs(3);
/// Reclaim sweeps run at most every `claim_idle / 4`, but never more often than this.
const MIN_CLAIM_INTERVAL: Duration = Duration::from_millis(10);
/// After a failure, the next call first waits `FIRST_BACKOFF · 2^(failures-1)`, at most
/// `MAX_BACKOFF`, so a worker that retries at once cannot hammer a dead server.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

pub(crate) struct RedisSubscription {
    inner: Arc<Inner>,
    stage: String,
    key: String,
    consumer: String,
    /// A tokio mutex: `next` holds it across the blocking read. Concurrent `next` calls on one
    /// subscription therefore take turns, which they would anyway on its one connection.
    state: Mutex<State>,
}

struct State {
    /// `None` after a failure: reopened (after the backoff) by the next call.
    conn: Option<Blocking>,
    /// XAUTOCLAIM's cursor, kept across calls so one sweep walks the whole pending list.
    cursor: String,
    last_claim: Option<Instant>,
    /// Sweep again without waiting: the last one claimed something or has not wrapped yet.
    sweep_more: bool,
    /// Consecutive failed calls.
    failures: u32,
}

enum Claimed {
    Delivery(Delivery),
    /// Dead-lettered (or vanished): look again.
    Skipped,
    Nothing,
}

impl RedisSubscription {
    pub(crate) fn new(
        inner: Arc<Inner>,
        stage: &str,
        consumer: &str,
        conn: Blocking,
    ) -> RedisSubscription {
        RedisSubscription {
            inner,
            stage: stage.to_owned(),
            key: keys::stage_stream(stage),
            consumer: consumer.to_owned(),
            state: Mutex::new(State {
                conn: Some(conn),
                cursor: "0-0".to_owned(),
                last_claim: None,
                sweep_more: false,
                failures: 0,
            }),
        }
    }

    fn claim_interval(&self) -> Duration {
        (self.inner.options.claim_idle / 4).max(MIN_CLAIM_INTERVAL)
    }

    fn claim_due(&self, st: &State) -> bool {
        st.sweep_more
            || st
                .last_claim
                .is_none_or(|t| t.elapsed() >= self.claim_interval())
    }

    async fn next_until(
        &self,
        st: &mut State,
        deadline: Instant,
    ) -> Result<Option<Delivery>, BrokerError> {
        loop {
            if self.claim_due(st) {
                match self.reclaim(st).await? {
                    Claimed::Delivery(d) => return Ok(Some(d)),
                    Claimed::Skipped => continue,
                    Claimed::Nothing => {}
                }
            }
            // Read in slices of at most one claim interval, so a message whose consumer died
            // is reclaimed while this one waits, instead of after the whole block time.
            let slice = deadline
                .saturating_duration_since(Instant::now())
                .min(self.claim_interval());
            if let Some(d) = self.read(st, slice).await? {
                return Ok(Some(d));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// One `XAUTOCLAIM … COUNT 1` step of the sweep over the pending list.
    async fn reclaim(&self, st: &mut State) -> Result<Claimed, BrokerError> {
        let options = &self.inner.options;
        let mut cmd = redis::cmd("XAUTOCLAIM");
        cmd.arg(&self.key)
            .arg(keys::STAGE_GROUP)
            .arg(&self.consumer)
            .arg(u64::try_from(options.claim_idle.as_millis()).unwrap_or(u64::MAX))
            .arg(&st.cursor)
            .arg("COUNT")
            .arg(1);
        let value = match self.inner.shared.query(&cmd).await {
            Ok(v) => v,
            // The stream or group vanished (deleted, or lost in a failover before it was
            // replicated): recreate it; nothing is pending in a new group.
            Err(e) if e.code() == Some("NOGROUP") => {
                self.inner.ensure_group(&self.key).await?;
                st.last_claim = Some(Instant::now());
                st.sweep_more = false;
                return Ok(Claimed::Nothing);
            }
            Err(e) => return Err(e.into()),
        };
        let (cursor, entry) = reply::xautoclaim(value)?;
        st.sweep_more = entry.is_some() || cursor != "0-0";
        st.cursor = cursor;
        st.last_claim = Some(Instant::now());
        let Some(entry) = entry else {
            return Ok(Claimed::Nothing);
        };
        // XAUTOCLAIM counted this delivery; XPENDING tells the total.
        let mut pending = redis::cmd("XPENDING");
        pending
            .arg(&self.key)
            .arg(keys::STAGE_GROUP)
            .arg(&entry.id)
            .arg(&entry.id)
            .arg(1);
        let Some(deliveries) = reply::xpending_deliveries(self.inner.query(&pending).await?)?
        else {
            // Acked by its first consumer in the meantime (it was slow, not dead).
            return Ok(Claimed::Skipped);
        };
        if deliveries > options.max_deliveries {
            // This claim is not handed out, so it was delivered one time fewer.
            self.inner
                .dead_letter(&self.stage, &self.key, &entry, deliveries - 1)
                .await?;
            return Ok(Claimed::Skipped);
        }
        metrics::count(RECLAIMED, &self.stage);
        tracing::info!(
            stage = %self.stage,
            consumer = %self.consumer,
            id = %entry.id,
            deliveries,
            "reclaimed a message from an idle consumer"
        );
        Ok(Claimed::Delivery(self.deliver(entry, deliveries)))
    }

    /// `XREADGROUP … COUNT 1 [BLOCK ms] STREAMS key >` on the dedicated connection.
    async fn read(&self, st: &mut State, block: Duration) -> Result<Option<Delivery>, BrokerError> {
        // Taken out while in use: if the caller drops this future mid-read, the connection
        // is dropped (closed) with it instead of coming back still blocked for the rest of
        // its BLOCK time. A message Redis handed to the cancelled read stays pending and is
        // reclaimed after `claim_idle`.
        let mut conn = match st.conn.take() {
            Some(conn) => conn,
            None => self.inner.connector.open(&self.key).await?,
        };
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(keys::STAGE_GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(1);
        // BLOCK 0 means "forever" to Redis: a zero (or sub-millisecond) wait is no BLOCK at all.
        let ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX);
        if ms > 0 {
            cmd.arg("BLOCK").arg(ms);
        }
        cmd.arg("STREAMS").arg(&self.key).arg(">");
        let value = match tokio::time::timeout(block + BLOCK_GRACE, conn.query(&cmd)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) if e.code() == Some("NOGROUP") => {
                st.conn = Some(conn);
                self.inner.ensure_group(&self.key).await?;
                return Ok(None);
            }
            // The connection is dropped here: the next call opens a fresh one.
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                return Err(BrokerError::Unavailable(format!(
                    "XREADGROUP on {} did not answer within {:?}",
                    self.key,
                    block + BLOCK_GRACE
                )))
            }
        };
        st.conn = Some(conn);
        Ok(reply::xreadgroup(value)?.map(|entry| self.deliver(entry, 1)))
    }

    fn deliver(&self, entry: Entry, deliveries: u64) -> Delivery {
        let payload = match entry.field(PAYLOAD) {
            Some(p) => p.to_vec(),
            None => {
                // Not written by Larder. Handed out empty: the stage rejects it, never acks
                // it, and it ends in the dead-letter stream like any poison message.
                tracing::warn!(stage = %self.stage, id = %entry.id, "stream entry has no payload field");
                Vec::new()
            }
        };
        metrics::count(DELIVERED, &self.stage);
        Delivery {
            id: entry.id,
            payload,
            deliveries,
        }
    }
}

fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

#[async_trait]
impl Subscription for RedisSubscription {
    async fn next(&self, block: Duration) -> Result<Option<Delivery>, BrokerError> {
        let mut st = self.state.lock().await;
        if st.failures > 0 {
            tokio::time::sleep(backoff(st.failures)).await;
        }
        let deadline = Instant::now() + block;
        match self.next_until(&mut st, deadline).await {
            Ok(delivery) => {
                if st.failures > 0 {
                    tracing::info!(stage = %self.stage, consumer = %self.consumer, "broker reachable again");
                }
                st.failures = 0;
                Ok(delivery)
            }
            Err(error) => {
                st.failures = st.failures.saturating_add(1);
                // Whatever failed, the blocking connection may be stale (e.g. to a primary
                // that has just been failed over): open a fresh one next time.
                st.conn = None;
                // The pipeline runner logs the failure it gets back; this is the detail.
                tracing::debug!(
                    stage = %self.stage,
                    consumer = %self.consumer,
                    failures = st.failures,
                    error = %error,
                    "broker read failed"
                );
                Err(error)
            }
        }
    }

    async fn ack(&self, id: &str) -> Result<(), BrokerError> {
        super::ack(&self.inner, &self.stage, &self.key, id).await
    }

    /// Nothing to do: the message stays pending and is reclaimed after `claim_idle` (which is
    /// also how its delivery count reaches the dead-letter limit).
    async fn release(&self, id: &str, _after: Duration) -> Result<(), BrokerError> {
        if !super::is_stream_id(id) {
            return Err(BrokerError::InvalidId(id.to_owned()));
        }
        Ok(())
    }

    /// `XCLAIM key larder me 0 id JUSTID`: claiming a message one already owns resets its idle
    /// time; JUSTID leaves its delivery count alone.
    async fn touch(&self, id: &str) -> Result<(), BrokerError> {
        if !super::is_stream_id(id) {
            return Err(BrokerError::InvalidId(id.to_owned()));
        }
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(&self.key)
            .arg(keys::STAGE_GROUP)
            .arg(&self.consumer)
            .arg(0)
            .arg(id)
            .arg("JUSTID");
        self.inner.query(&cmd).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(50));
        assert_eq!(backoff(2), Duration::from_millis(100));
        assert_eq!(backoff(4), Duration::from_millis(400));
        assert_eq!(backoff(10), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
