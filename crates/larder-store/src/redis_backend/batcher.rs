//! One mechanism for sending a batch of single-key commands, whatever the topology.
//!
//! - Standalone: one pipeline, one round trip.
//! - Cluster: commands are grouped by the primary that owns their key's slot, and each group
//!   goes out as one pipeline to its node; all nodes run in parallel and the answers are put
//!   back in request order. redis-rs's cluster pipelines refuse cross-slot batches, and
//!   issuing many concurrent single commands on its multiplexed connection costs more
//!   (measured in `docs/ARCHITECTURE.md`), hence the grouping.
//! - When a node's pipeline fails (MOVED/ASK while resharding, a node restarting), the slot
//!   map is refreshed and that group's commands are re-sent one by one through redis-rs's
//!   cluster routing, which follows redirects and reconnects.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use futures::future::join_all;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Value};

use super::slots::{slot_for_key, NodeAddr, SlotTable};
use crate::{Result, StoreError};

/// A command and the key it routes by.
pub struct Keyed {
    pub key: Vec<u8>,
    pub cmd: Cmd,
}

pub struct Batcher {
    pub topology: Topology,
    /// Round trips (pipelines or single commands sent) by this store: for `/metrics` and the
    /// one-trip-per-primary test.
    trips: AtomicU64,
}

pub enum Topology {
    Single(Pool),
    Cluster(ClusterBatcher),
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
    /// Every command sent concurrently on redis-rs's multiplexed cluster connection, which
    /// pipelines what is queued per node by itself.
    PerCommand,
}

pub struct ClusterBatcher {
    conn: ClusterConnection,
    strategy: ClusterBatch,
    table: RwLock<Arc<SlotTable>>,
    refreshing: tokio::sync::Mutex<()>,
}

impl Batcher {
    pub fn new(topology: Topology) -> Self {
        Batcher {
            topology,
            trips: AtomicU64::new(0),
        }
    }

    /// Round trips this store has sent.
    pub fn round_trips(&self) -> u64 {
        self.trips.load(Ordering::Relaxed)
    }

    fn count_round_trip(&self) {
        self.trips.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::metered::ROUND_TRIPS).increment(1);
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
                self.count_round_trip();
                Ok(pipe.query_async(&mut conn.get()).await?)
            }
            Topology::Cluster(cluster) => cluster.run(cmds, self).await,
        }
    }

    /// One command (on a cluster, routed by its key by redis-rs).
    pub async fn one(&self, cmd: Cmd) -> Result<Value> {
        self.count_round_trip();
        Ok(match &self.topology {
            Topology::Single(conn) => cmd.query_async(&mut conn.get()).await?,
            Topology::Cluster(cluster) => cmd.query_async(&mut cluster.conn.clone()).await?,
        })
    }

    /// Every key matching `pattern`, from every primary.
    pub async fn scan(&self, pattern: &str) -> Result<Vec<Vec<u8>>> {
        let nodes: Vec<Option<NodeAddr>> = match &self.topology {
            Topology::Single(_) => vec![None],
            Topology::Cluster(cluster) => {
                cluster.refresh(self).await?;
                cluster.table().nodes.iter().cloned().map(Some).collect()
            }
        };
        let mut keys = Vec::new();
        for node in nodes {
            let mut cursor: u64 = 0;
            loop {
                let mut cmd = redis::cmd("SCAN");
                cmd.arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1000);
                self.count_round_trip();
                let (next, batch): (u64, Vec<Vec<u8>>) = match (&self.topology, &node) {
                    (Topology::Single(conn), _) => cmd.query_async(&mut conn.get()).await?,
                    (Topology::Cluster(cluster), Some(addr)) => {
                        let value = cluster
                            .conn
                            .clone()
                            .route_command(cmd, RoutingInfo::SingleNode(by_address(addr)))
                            .await?;
                        redis::from_redis_value(value)?
                    }
                    (Topology::Cluster(_), None) => unreachable!("cluster nodes are always named"),
                };
                keys.extend(batch);
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(keys)
    }
}

fn by_address(addr: &NodeAddr) -> SingleNodeRoutingInfo {
    SingleNodeRoutingInfo::ByAddress {
        host: addr.host.clone(),
        port: addr.port,
    }
}

impl ClusterBatcher {
    /// A batcher for `conn`, with the slot map loaded.
    pub async fn connect(conn: ClusterConnection, strategy: ClusterBatch) -> Result<Batcher> {
        let cluster = ClusterBatcher {
            conn,
            strategy,
            table: RwLock::new(Arc::new(SlotTable::from_cluster_slots(&Value::Array(
                vec![],
            ))?)),
            refreshing: tokio::sync::Mutex::new(()),
        };
        let batcher = Batcher::new(Topology::Cluster(cluster));
        if let Topology::Cluster(cluster) = &batcher.topology {
            cluster.refresh(&batcher).await?;
        }
        Ok(batcher)
    }

    fn table(&self) -> Arc<SlotTable> {
        // A poisoned lock only means a panic elsewhere mid-swap of an Arc; the Arc is intact.
        self.table
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Reload the slot map. Concurrent callers share one refresh.
    async fn refresh(&self, counter: &Batcher) -> Result<()> {
        let Ok(_guard) = self.refreshing.try_lock() else {
            // Someone else is refreshing; wait for them and use their result.
            let _ = self.refreshing.lock().await;
            return Ok(());
        };
        counter.count_round_trip();
        let reply: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut self.conn.clone())
            .await?;
        let table = SlotTable::from_cluster_slots(&reply)?;
        *self
            .table
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(table);
        Ok(())
    }

    async fn run(&self, cmds: Vec<Keyed>, counter: &Batcher) -> Result<Vec<Value>> {
        let table = self.table();
        // Group command indices by owning node; unknown owners go straight to the fallback.
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); table.nodes.len()];
        let mut orphans = Vec::new();
        if self.strategy == ClusterBatch::PerCommand {
            return self
                .per_command((0..cmds.len()).collect(), &cmds, counter)
                .await;
        }
        for (i, c) in cmds.iter().enumerate() {
            match table.owner(slot_for_key(&c.key)) {
                Some(node) => groups[node].push(i),
                None => orphans.push(i),
            }
        }
        let sends = groups
            .iter()
            .enumerate()
            .filter(|(_, idx)| !idx.is_empty())
            .map(|(node, idx)| {
                let mut pipe = redis::pipe();
                for &i in idx {
                    pipe.add_command(cmds[i].cmd.clone());
                }
                let mut conn = self.conn.clone();
                let route = by_address(&table.nodes[node]);
                async move {
                    counter.count_round_trip();
                    let out = conn.route_pipeline(pipe, 0, idx.len(), route).await;
                    (idx, out)
                }
            });
        let mut answers: Vec<Option<Value>> = vec![None; cmds.len()];
        let mut retry = orphans;
        for (idx, out) in join_all(sends).await {
            match out {
                Ok(values) if values.len() == idx.len() => {
                    for (i, v) in idx.iter().zip(values) {
                        answers[*i] = Some(v);
                    }
                }
                Ok(_) => retry.extend(idx),
                Err(error) => {
                    tracing::debug!(%error, "cluster pipeline failed; retrying by key");
                    retry.extend(idx);
                }
            }
        }
        if !retry.is_empty() {
            // Topology may have changed. A failed refresh is fine: routing by key still works.
            if let Err(error) = self.refresh(counter).await {
                tracing::warn!(%error, "cluster slot map refresh failed");
            }
            let values = self.per_command(retry.clone(), &cmds, counter).await?;
            for (i, v) in retry.into_iter().zip(values) {
                answers[i] = Some(v);
            }
        }
        answers
            .into_iter()
            .map(|a| {
                a.ok_or_else(|| StoreError::Unavailable("cluster batch lost an answer".into()))
            })
            .collect()
    }

    /// Send `which` commands one by one, concurrently, through redis-rs's cluster routing
    /// (which follows MOVED/ASK and reconnects); answers in the order of `which`.
    async fn per_command(
        &self,
        which: Vec<usize>,
        cmds: &[Keyed],
        counter: &Batcher,
    ) -> Result<Vec<Value>> {
        let sends = which.into_iter().map(|i| {
            let mut conn = self.conn.clone();
            let cmd = &cmds[i].cmd;
            async move {
                counter.count_round_trip();
                cmd.query_async::<Value>(&mut conn).await
            }
        });
        join_all(sends)
            .await
            .into_iter()
            .map(|out| out.map_err(StoreError::from))
            .collect()
    }
}
