//! One mechanism for sending a batch of single-key commands, whatever the topology.
//!
//! - Standalone: one pipeline, one round trip.
//! - Cluster: commands are grouped by the primary that owns their key's slot, and each group
//!   goes out as one pipeline on Larder's own connection to that node; all nodes run in
//!   parallel and the answers are put back in request order. redis-rs's cluster pipelines
//!   refuse cross-slot batches, and issuing many concurrent single commands on its multiplexed
//!   connection costs more (measured in `docs/ARCHITECTURE.md`), hence the grouping.
//! - Commands that fail inside a node's pipeline (MOVED/ASK while resharding), or a whole
//!   pipeline whose node is unreachable, trigger a slot-map refresh and are re-sent one by one
//!   through redis-rs's cluster connection, which follows redirects and reconnects. The
//!   pipelines deliberately avoid redis-rs's `route_pipeline`: on a MOVED it redirects the
//!   *whole* pipeline to the new owner, where the other keys are MOVED back, until it times out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use futures::future::join_all;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Value};

use std::collections::HashMap;
use std::time::Duration;

use redis::ServerErrorKind;

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
    Cluster(Box<ClusterBatcher>),
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
    /// How to reach a node by address (scheme, credentials, TLS options of the seeds).
    nodes: NodeConnector,
    /// Larder's own connection to each primary, made on first use.
    node_conns: tokio::sync::RwLock<std::collections::HashMap<NodeAddr, MultiplexedConnection>>,
}

/// Builds `redis://[auth@]host:port[suffix]` URLs for cluster nodes from the seed URL's parts.
#[derive(Debug, Clone)]
pub struct NodeConnector {
    pub scheme: String,
    pub auth: String,
    pub suffix: String,
    pub config: redis::AsyncConnectionConfig,
}

impl NodeConnector {
    async fn connect(&self, addr: &NodeAddr) -> Result<MultiplexedConnection> {
        let url = format!(
            "{}://{}{}:{}{}",
            self.scheme, self.auth, addr.host, addr.port, self.suffix
        );
        let client = redis::Client::open(url)?;
        Ok(client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?)
    }
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
    pub async fn connect(
        conn: ClusterConnection,
        strategy: ClusterBatch,
        nodes: NodeConnector,
    ) -> Result<Batcher> {
        let cluster = ClusterBatcher {
            conn,
            strategy,
            nodes,
            node_conns: tokio::sync::RwLock::new(std::collections::HashMap::new()),
            table: RwLock::new(Arc::new(SlotTable::from_cluster_slots(&Value::Array(
                vec![],
            ))?)),
            refreshing: tokio::sync::Mutex::new(()),
        };
        let batcher = Batcher::new(Topology::Cluster(Box::new(cluster)));
        if let Topology::Cluster(cluster) = &batcher.topology {
            cluster.refresh(&batcher).await?;
        }
        Ok(batcher)
    }

    /// Larder's connection to `addr`, connecting on first use.
    async fn node_conn(&self, addr: &NodeAddr) -> Result<MultiplexedConnection> {
        if let Some(conn) = self.node_conns.read().await.get(addr) {
            return Ok(conn.clone());
        }
        let conn = self.nodes.connect(addr).await?;
        self.node_conns
            .write()
            .await
            .insert(addr.clone(), conn.clone());
        Ok(conn)
    }

    fn table(&self) -> Arc<SlotTable> {
        // A poisoned lock only means a panic elsewhere mid-swap of an Arc; the Arc is intact.
        self.table
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Reload the slot map from any node. Concurrent callers share one refresh.
    async fn refresh(&self, counter: &Batcher) -> Result<()> {
        self.refresh_from(None, counter).await
    }

    /// Reload the slot map, asking `node` when given (else any node through redis-rs).
    async fn refresh_from(&self, node: Option<&NodeAddr>, counter: &Batcher) -> Result<()> {
        let Ok(_guard) = self.refreshing.try_lock() else {
            // Someone else is refreshing; wait for them and use their result.
            let _ = self.refreshing.lock().await;
            return Ok(());
        };
        counter.count_round_trip();
        let mut slots = redis::cmd("CLUSTER");
        slots.arg("SLOTS");
        let reply: Value = match node {
            Some(addr) => slots.query_async(&mut self.node_conn(addr).await?).await?,
            None => slots.query_async(&mut self.conn.clone()).await?,
        };
        let table = SlotTable::from_cluster_slots(&reply)?;
        *self
            .table
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(table);
        Ok(())
    }

    async fn run(&self, cmds: Vec<Keyed>, counter: &Batcher) -> Result<Vec<Value>> {
        if self.strategy == ClusterBatch::PerCommand {
            return self
                .per_command((0..cmds.len()).collect(), &cmds, counter)
                .await;
        }
        let mut answers: Vec<Option<Value>> = vec![None; cmds.len()];
        let mut pending: Vec<usize> = (0..cmds.len()).collect();
        for attempt in 0..REDIRECT_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(20 * attempt as u64)).await;
            }
            let table = self.table();
            let mut groups: Vec<Vec<usize>> = vec![Vec::new(); table.nodes.len()];
            let mut unowned = Vec::new();
            for &i in &pending {
                match table.owner(slot_for_key(&cmds[i].key)) {
                    Some(node) => groups[node].push(i),
                    None => unowned.push(i),
                }
            }
            let sends = groups
                .into_iter()
                .enumerate()
                .filter(|(_, idx)| !idx.is_empty())
                .map(|(node, idx)| {
                    let addr = table.nodes[node].clone();
                    let pipe = pipeline(idx.iter().map(|&i| (&cmds[i].cmd, false)));
                    async move { (self.send(&addr, pipe, counter).await, addr, idx) }
                });
            let mut next = unowned;
            let mut moved_to: Option<NodeAddr> = None;
            let mut asks: Vec<(usize, NodeAddr)> = Vec::new();
            for (out, addr, idx) in join_all(sends).await {
                let values = match out {
                    Ok(values) if values.len() == idx.len() => values,
                    Ok(_) | Err(_) => {
                        // The node is unreachable (failover, restart): ask the cluster again.
                        self.node_conns.write().await.remove(&addr);
                        next.extend(idx);
                        continue;
                    }
                };
                for (i, value) in idx.into_iter().zip(values) {
                    match value {
                        Ok(value) => answers[i] = Some(value),
                        Err(error) => match redirect(&error) {
                            Some((ServerErrorKind::Ask, to)) => asks.push((i, to)),
                            Some((_, to)) => {
                                moved_to = Some(to);
                                next.push(i);
                            }
                            None => return Err(error.into()),
                        },
                    }
                }
            }
            // ASK: the slot is migrating; the target answers this one command after ASKING.
            let mut ask_groups: HashMap<NodeAddr, Vec<usize>> = HashMap::new();
            for (i, to) in asks {
                ask_groups.entry(to).or_default().push(i);
            }
            for (to, idx) in ask_groups {
                let pipe = pipeline(idx.iter().map(|&i| (&cmds[i].cmd, true)));
                match self.send(&to, pipe, counter).await {
                    // Every other reply is the ASKING "OK".
                    Ok(values) if values.len() == 2 * idx.len() => {
                        for (i, value) in idx.iter().zip(values.into_iter().skip(1).step_by(2)) {
                            match value {
                                Ok(value) => answers[*i] = Some(value),
                                Err(_) => next.push(*i),
                            }
                        }
                    }
                    _ => next.extend(idx),
                }
            }
            if next.is_empty() {
                break;
            }
            // A MOVED names a node that owns the slot now: its view of the slots is current.
            if let Err(error) = self.refresh_from(moved_to.as_ref(), counter).await {
                tracing::warn!(%error, "cluster slot map refresh failed");
            }
            pending = next;
        }
        let left: Vec<usize> = (0..cmds.len()).filter(|&i| answers[i].is_none()).collect();
        if !left.is_empty() {
            // Last resort: redis-rs's own routing, one command at a time.
            tracing::debug!(
                commands = left.len(),
                "cluster batch falling back to per-key routing"
            );
            let values = self.per_command(left.clone(), &cmds, counter).await?;
            for (i, value) in left.into_iter().zip(values) {
                answers[i] = Some(value);
            }
        }
        answers
            .into_iter()
            .map(|a| {
                a.ok_or_else(|| StoreError::Unavailable("cluster batch lost an answer".into()))
            })
            .collect()
    }

    /// One pipeline to one node on Larder's own connection; each command's result separately.
    async fn send(
        &self,
        addr: &NodeAddr,
        pipe: redis::Pipeline,
        counter: &Batcher,
    ) -> Result<Vec<redis::RedisResult<Value>>> {
        let mut conn = self.node_conn(addr).await?;
        counter.count_round_trip();
        Ok(pipe.query_async(&mut conn).await?)
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

/// Rounds of re-grouping after MOVED/ASK or an unreachable node before falling back to
/// redis-rs's per-key routing.
const REDIRECT_ATTEMPTS: usize = 4;

/// A pipeline that reports each command's result separately; with `asking`, each command is
/// preceded by ASKING (for keys in a slot that is being imported).
fn pipeline<'a>(cmds: impl Iterator<Item = (&'a Cmd, bool)>) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for (cmd, asking) in cmds {
        if asking {
            pipe.add_command(redis::cmd("ASKING"));
        }
        pipe.add_command(cmd.clone());
    }
    pipe
}

/// `MOVED`/`ASK` and the node they name.
fn redirect(error: &redis::RedisError) -> Option<(ServerErrorKind, NodeAddr)> {
    let kind = match error.kind() {
        redis::ErrorKind::Server(kind @ (ServerErrorKind::Moved | ServerErrorKind::Ask)) => kind,
        _ => return None,
    };
    let (addr, _slot) = error.redirect_node()?;
    let (host, port) = addr.rsplit_once(':')?;
    Some((
        kind,
        NodeAddr {
            host: host.to_owned(),
            port: port.parse().ok()?,
        },
    ))
}
