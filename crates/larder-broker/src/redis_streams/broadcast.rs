//! Fan-out on Redis: [`crate::Broker::broadcast`] appends to the bounded stream
//! `larder:bc:{topic}` and every listener reads all of it with plain `XREAD` (no consumer
//! group, so no listener takes a message from another).
//!
//! A stream rather than pub/sub because it reuses the broker's connections (cluster routing,
//! failover, TLS and AUTH included) and a listener that reconnects resumes after the last
//! entry it read instead of missing what was broadcast meanwhile (as long as the stream still
//! holds it: it keeps about [`MAX_LEN`] entries).

use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use larder_store::keys;
use redis::Value;
use tokio::sync::mpsc;

use super::{conn::Blocking, reply, Inner, PAYLOAD};
use crate::BrokerError;

/// Entries each broadcast stream keeps (XADD MAXLEN ~): what a listener that was away for a
/// moment can still catch up on; broadcasts are for watching, not for work.
pub(crate) const MAX_LEN: u64 = 1000;
/// How long one XREAD waits for news; the listener also notices it was dropped this often.
const BLOCK: Duration = Duration::from_secs(2);
/// How long past the block time an XREAD may take before the connection counts as lost.
const GRACE: Duration = Duration::from_secs(2);
/// Entries read per XREAD.
const COUNT: usize = 256;
/// First wait after a failed read; doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Payloads waiting for a slow listener before the reader waits for it.
const BUFFER: usize = 1024;

/// `XADD larder:bc:{topic} MAXLEN ~ MAX_LEN * p payload`.
pub(crate) async fn broadcast(
    inner: &Inner,
    topic: &str,
    payload: &[u8],
) -> Result<(), BrokerError> {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(keys::broadcast_stream(topic))
        .arg("MAXLEN")
        .arg("~")
        .arg(MAX_LEN)
        .arg("*")
        .arg(PAYLOAD)
        .arg(payload);
    inner.query(&cmd).await.map(drop)
}

/// Every payload broadcast on `topic` from now on. Fails when Redis cannot be asked where the
/// stream ends; after that, lost connections are reopened in the background and the reading
/// resumes after the last entry read. The stream ends when the caller drops it.
pub(crate) async fn listen(
    inner: Arc<Inner>,
    topic: &str,
) -> Result<BoxStream<'static, Vec<u8>>, BrokerError> {
    let key = keys::broadcast_stream(topic);
    let after = last_id(&inner, &key).await?;
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(read(inner, key, after, tx));
    Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|payload| (payload, rx))
    })))
}

/// The id of the newest entry of `key`, or `0-0` when it has none.
async fn last_id(inner: &Inner, key: &str) -> Result<String, BrokerError> {
    let mut cmd = redis::cmd("XREVRANGE");
    cmd.arg(key).arg("+").arg("-").arg("COUNT").arg(1);
    let newest = reply::xrange(inner.query(&cmd).await?)?;
    Ok(newest
        .into_iter()
        .next()
        .map_or_else(|| "0-0".to_owned(), |entry| entry.id))
}

async fn read(inner: Arc<Inner>, key: String, mut after: String, tx: mpsc::Sender<Vec<u8>>) {
    let mut conn: Option<Blocking> = None;
    let mut backoff = FIRST_BACKOFF;
    while !tx.is_closed() {
        match read_once(&inner, &key, &after, &mut conn).await {
            Ok(entries) => {
                backoff = FIRST_BACKOFF;
                for entry in entries {
                    after = entry.id.clone();
                    // Not written by Larder: nothing to hand on.
                    let Some(payload) = entry.field(PAYLOAD) else {
                        continue;
                    };
                    if tx.send(payload.to_vec()).await.is_err() {
                        return;
                    }
                }
            }
            Err(error) => {
                conn = None;
                tracing::debug!(%key, %error, ?backoff, "broadcast read failed; reconnecting");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// One `XREAD COUNT n BLOCK ms STREAMS key after` on the listener's own connection, opened
/// when there is none. A failed connection is dropped by the caller.
async fn read_once(
    inner: &Inner,
    key: &str,
    after: &str,
    conn: &mut Option<Blocking>,
) -> Result<Vec<reply::Entry>, BrokerError> {
    let mut open = match conn.take() {
        Some(open) => open,
        None => inner.connector.open(key).await?,
    };
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT")
        .arg(COUNT)
        .arg("BLOCK")
        .arg(BLOCK.as_millis() as u64)
        .arg("STREAMS")
        .arg(key)
        .arg(after);
    let value: Value = match tokio::time::timeout(BLOCK + GRACE, open.query(&cmd)).await {
        Ok(value) => value?,
        Err(_) => {
            return Err(BrokerError::Unavailable(format!(
                "XREAD on {key} did not answer within {:?}",
                BLOCK + GRACE
            )))
        }
    };
    *conn = Some(open);
    reply::xread(value)
}
