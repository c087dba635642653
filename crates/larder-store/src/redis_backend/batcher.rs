//! One mechanism for sending a batch of single-key commands, whatever the topology.
//!
//! - Standalone: one pipeline, one round trip, on one of a few multiplexed connections.
//! - Cluster: one pipeline per owning primary, in parallel ([`super::cluster`]).
//!
//! Every call is bounded by the store's response timeout as a whole, whatever it does inside
//! (reconnects, redirects, waiting for a failover), so that no caller waits on Redis longer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Cmd, Value};

use super::cluster::Cluster;
use crate::{Result, StoreError};

/// A command and the key it routes by.
pub struct Keyed {
    pub key: Vec<u8>,
    pub cmd: Cmd,
}

/// Round trips (pipelines or single commands sent) by one store: for `/metrics` and the
/// one-trip-per-primary test.
#[derive(Clone, Default)]
pub struct Trips(Arc<AtomicU64>);

impl Trips {
    pub(crate) fn count(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::metered::ROUND_TRIPS).increment(1);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

pub struct Batcher {
    pub topology: Topology,
    trips: Trips,
    /// Standalone: the budget of one call (cluster calls carry their own).
    timeout: Duration,
}

pub enum Topology {
    Single(Pool),
    Cluster(Box<Cluster>),
}

/// A few multiplexed connections used round-robin. One multiplexed connection funnels every
/// concurrent request through one socket and one Redis client buffer; measured with
/// `larder bench lookup` (100 keys x 768-d, 50 clients), 8 connections moved 1.4x the values/s
/// of one (220k vs 154k).
pub struct Pool {
    conns: Vec<ConnectionManager>,
    next: AtomicU64,
}

impl Pool {
    pub fn new(conns: Vec<ConnectionManager>) -> Self {
        Pool {
            conns,
            next: AtomicU64::new(0),
        }
    }

    fn get(&self) -> ConnectionManager {
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize % self.conns.len();
        self.conns[i].clone()
    }
}

/// How a cluster batch is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterBatch {
    /// One pipeline per owning primary, all in parallel (the default; faster, see
    /// `docs/ARCHITECTURE.md`).
    #[default]
    Grouped,
    /// Every command sent on its own, concurrently, on the owning node's multiplexed
    /// connection (which pipelines what is queued by itself).
    PerCommand,
}

impl Batcher {
    pub fn new(topology: Topology, trips: Trips, timeout: Duration) -> Self {
        Batcher {
            topology,
            trips,
            timeout,
        }
    }

    /// Round trips this store has sent.
    pub fn round_trips(&self) -> u64 {
        self.trips.get()
    }

    /// Send every command; answers in the order given.
    pub async fn run(&self, cmds: Vec<Keyed>) -> Result<Vec<Value>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        match &self.topology {
            Topology::Single(conn) => {
                let mut pipe = redis::pipe();
                for c in cmds {
                    pipe.add_command(c.cmd);
                }
                self.trips.count();
                self.bounded(pipe.query_async(&mut conn.get())).await
            }
            Topology::Cluster(cluster) => cluster.run(&cmds).await,
        }
    }

    /// One command routed by `key`.
    pub async fn one(&self, key: &[u8], cmd: Cmd) -> Result<Value> {
        match &self.topology {
            Topology::Single(conn) => {
                self.trips.count();
                self.bounded(cmd.query_async(&mut conn.get())).await
            }
            Topology::Cluster(cluster) => {
                let mut values = cluster
                    .run(&[Keyed {
                        key: key.to_vec(),
                        cmd,
                    }])
                    .await?;
                values
                    .pop()
                    .ok_or_else(|| StoreError::Unavailable("no answer".into()))
            }
        }
    }

    /// Whether the store answers: the server, or every primary with the whole slot map.
    pub async fn ping(&self) -> Result<()> {
        match &self.topology {
            Topology::Single(_) => self.one(b"", redis::cmd("PING")).await.map(drop),
            Topology::Cluster(cluster) => cluster.ping().await,
        }
    }

    /// Every key matching `pattern`, from every primary.
    pub async fn scan(&self, pattern: &str) -> Result<Vec<Vec<u8>>> {
        Ok(self
            .scan_by_node(pattern)
            .await?
            .into_iter()
            .flat_map(|(_, keys)| keys)
            .collect())
    }

    /// Every key matching `pattern`, per primary (`host:port`; `standalone` on a single
    /// server).
    pub async fn scan_by_node(&self, pattern: &str) -> Result<Vec<(String, Vec<Vec<u8>>)>> {
        let conn = match &self.topology {
            Topology::Single(conn) => conn,
            Topology::Cluster(cluster) => return cluster.scan_by_node(pattern).await,
        };
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000);
            self.trips.count();
            let (next, batch): (u64, Vec<Vec<u8>>) =
                self.bounded(cmd.query_async(&mut conn.get())).await?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        Ok(vec![("standalone".to_owned(), keys)])
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(out) => Ok(out?),
            Err(_) => Err(StoreError::Unavailable(format!(
                "redis did not answer within {:?}",
                self.timeout
            ))),
        }
    }
}
