//! The two kinds of connection the Redis broker needs.
//!
//! - [`Shared`]: one auto-reconnecting, multiplexed connection for the quick commands (XADD,
//!   XACK, XAUTOCLAIM, XPENDING, XINFO, XRANGE) of every stage and subscription.
//! - [`Blocking`]: one dedicated connection per subscription for `XREADGROUP … BLOCK`. A
//!   multiplexed connection answers in order, so a blocked read on the shared one would stall
//!   every command queued behind it for the whole block time.
//!
//! On a cluster both go through the store's own cluster client
//! ([`larder_store::redis_backend::Cluster`]): its slot map is refreshed from live nodes in the
//! background and every call is bounded, where redis-rs's cluster connection could wedge in
//! its recovery after a primary was killed under load (and logged every reconnect attempt to
//! the dead node). A blocking read gets a connection of its own to the stream's owner, and a
//! failed one is replaced by one to whoever owns the slot in the next slot map.

use larder_store::RedisUrl;
use std::time::Duration;

use std::sync::Arc;

use larder_store::redis_backend::Cluster;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, RedisError, RedisResult, Value};

use crate::BrokerError;

/// How long to wait for a TCP (and TLS) connection to a node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a quick command may take on one node.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the connection manager retries a lost standalone connection before the command
/// fails (the next command tries again).
const RECONNECT_RETRIES: usize = 2;

/// The connection shared by all quick commands; cloning is cheap (a handle to the same
/// connection).
#[derive(Clone)]
pub(crate) enum Shared {
    Single(ConnectionManager),
    Cluster(Arc<Cluster>),
}

impl Shared {
    pub(crate) async fn query(&self, cmd: &Cmd) -> RedisResult<Value> {
        match self {
            Shared::Single(c) => cmd.query_async(&mut c.clone()).await,
            Shared::Cluster(c) => c
                .query(&routing_key(cmd), cmd)
                .await
                .unwrap_or_else(|e| Err(unavailable(e))),
        }
    }
}

/// The cluster did not answer in time: as a redis-rs I/O error, like a lost connection.
fn unavailable(error: larder_store::StoreError) -> RedisError {
    RedisError::from((ErrorKind::Io, "cluster unavailable", error.to_string()))
}

/// The key a stream command routes by: the first argument, but the third of `XGROUP` and
/// `XINFO` (`XGROUP CREATE key …`), and the one after `STREAMS` of `XREADGROUP`.
fn routing_key(cmd: &Cmd) -> Vec<u8> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .map(|a| match a {
            redis::Arg::Simple(a) => a,
            _ => &b""[..],
        })
        .collect();
    let name = args
        .first()
        .map(|n| n.to_ascii_uppercase())
        .unwrap_or_default();
    let at = match name.as_slice() {
        b"XGROUP" | b"XINFO" => 2,
        b"XREADGROUP" => args
            .iter()
            .position(|a| a.eq_ignore_ascii_case(b"STREAMS"))
            .map_or(1, |i| i + 1),
        _ => 1,
    };
    args.get(at).map(|k| k.to_vec()).unwrap_or_default()
}

/// Opens [`Blocking`] connections.
// One per broker, never moved around: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Connector {
    Single(redis::Client),
    Cluster(Arc<Cluster>),
}

/// A subscription's own connection for the blocking read, without a response timeout: the
/// caller bounds every blocking read itself (block time + grace), because the block time
/// varies per call.
pub(crate) struct Blocking {
    conn: MultiplexedConnection,
    /// On a cluster: the cluster, told when the connection failed, so that the next one goes
    /// to the stream's owner in a fresh slot map.
    cluster: Option<Arc<Cluster>>,
}

impl Blocking {
    pub(crate) async fn query(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        let out = cmd.query_async(&mut self.conn).await;
        if let (Err(error), Some(cluster)) = (&out, &self.cluster) {
            // A MOVED (reshard) names the new owner; a lost connection (failover) does not.
            cluster.moved(error.redirect_node().map(|(addr, _)| addr));
        }
        out
    }
}

fn blocking_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(None)
}

impl Connector {
    /// A blocking connection for reading the stream `key`.
    pub(crate) async fn open(&self, key: &str) -> RedisResult<Blocking> {
        match self {
            Connector::Single(client) => Ok(Blocking {
                conn: client
                    .get_multiplexed_async_connection_with_config(&blocking_config())
                    .await?,
                cluster: None,
            }),
            Connector::Cluster(cluster) => {
                let (_, conn) = cluster
                    .dedicated(key.as_bytes(), &blocking_config())
                    .await
                    .map_err(unavailable)?;
                Ok(Blocking {
                    conn,
                    cluster: Some(cluster.clone()),
                })
            }
        }
    }
}

/// Connect the shared connection and prepare the connector for `url`.
pub(crate) async fn connect(url: &RedisUrl) -> Result<(Shared, Connector), BrokerError> {
    let url = match url {
        RedisUrl::Cluster(cluster) => {
            let options = larder_store::StoreOptions {
                connect_timeout: CONNECT_TIMEOUT,
                response_timeout: RESPONSE_TIMEOUT,
                connections: 1,
                ..larder_store::StoreOptions::default()
            };
            let cluster = Arc::new(Cluster::open(cluster, &options).await?);
            return Ok((
                Shared::Cluster(cluster.clone()),
                Connector::Cluster(cluster),
            ));
        }
        RedisUrl::Single(url) => url.as_str(),
    };
    let client =
        redis::Client::open(url).map_err(|e| BrokerError::Config(format!("bad redis URL: {e}")))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(RECONNECT_RETRIES);
    let conn = ConnectionManager::new_with_config(client.clone(), config).await?;
    Ok((Shared::Single(conn), Connector::Single(client)))
}
