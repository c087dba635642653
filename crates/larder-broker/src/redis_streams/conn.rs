//! The two kinds of connection the Redis broker needs.
//!
//! - [`Shared`]: one auto-reconnecting, multiplexed connection for the quick commands (XADD,
//!   XACK, XAUTOCLAIM, XPENDING, XINFO, XRANGE) of every stage and subscription.
//! - [`Blocking`]: one dedicated connection per subscription for `XREADGROUP … BLOCK`. A
//!   multiplexed connection answers in order, so a blocked read on the shared one would stall
//!   every command queued behind it for the whole block time.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, RedisResult, Value};

use crate::BrokerError;

/// How long to wait for a TCP (and TLS) connection to a node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a quick command may take on one node.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a quick cluster command may take in all, retries after MOVED or a dead node
/// included: long enough to ride out the start of a failover, short enough that a worker
/// notices a dead cluster.
const CLUSTER_OVERALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the connection manager retries a lost standalone connection before the command
/// fails (the next command tries again).
const RECONNECT_RETRIES: usize = 2;

/// The connection shared by all quick commands; cloning is cheap (a handle to the same
/// connection).
#[derive(Clone)]
pub(crate) enum Shared {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Shared {
    pub(crate) async fn query(&self, cmd: &Cmd) -> RedisResult<Value> {
        match self {
            Shared::Single(c) => cmd.query_async(&mut c.clone()).await,
            Shared::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
    }
}

/// Opens [`Blocking`] connections.
// One per broker, never moved around: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Connector {
    Single(redis::Client),
    /// A client without a response timeout: the caller bounds every blocking read itself
    /// (block time + grace), because the block time varies per call.
    Cluster(ClusterClient),
}

/// A subscription's own connection for the blocking read.
pub(crate) enum Blocking {
    Single(MultiplexedConnection),
    /// A whole cluster connection per subscription, rather than a direct connection to the
    /// stream's slot owner: redis-rs then follows MOVED/ASK and re-reads the slot map after a
    /// failover by itself, which a hand-rolled owner lookup would have to duplicate. It costs
    /// one socket per primary per subscription, which is fine for the handful of workers a
    /// stage runs; the connections to the other primaries stay idle.
    Cluster(ClusterConnection),
}

impl Blocking {
    pub(crate) async fn query(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        match self {
            Blocking::Single(c) => cmd.query_async(c).await,
            Blocking::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

impl Connector {
    pub(crate) async fn open(&self) -> RedisResult<Blocking> {
        match self {
            Connector::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(None);
                Ok(Blocking::Single(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                ))
            }
            Connector::Cluster(client) => {
                Ok(Blocking::Cluster(client.get_async_connection().await?))
            }
        }
    }
}

/// Connect the shared connection and prepare the connector for `url`.
pub(crate) async fn connect(url: &str) -> Result<(Shared, Connector), BrokerError> {
    if url.starts_with("redis-cluster://") || url.starts_with("rediss-cluster://") {
        let (seeds, _) = larder_store::redis_backend::cluster_seeds(url)?;
        let shared = ClusterClientBuilder::new(seeds.clone())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .overall_response_timeout(Some(CLUSTER_OVERALL_TIMEOUT))
            .build()
            .map_err(|e| BrokerError::Config(format!("bad redis-cluster URL: {e}")))?;
        let blocking = ClusterClientBuilder::new(seeds)
            .connection_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| BrokerError::Config(format!("bad redis-cluster URL: {e}")))?;
        let conn = shared.get_async_connection().await?;
        return Ok((Shared::Cluster(conn), Connector::Cluster(blocking)));
    }
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(BrokerError::Config(format!(
            "{url:?}: expected redis://, rediss://, redis-cluster:// or rediss-cluster://"
        )));
    }
    let client =
        redis::Client::open(url).map_err(|e| BrokerError::Config(format!("bad redis URL: {e}")))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(RECONNECT_RETRIES);
    let conn = ConnectionManager::new_with_config(client.clone(), config).await?;
    Ok((Shared::Single(conn), Connector::Single(client)))
}
