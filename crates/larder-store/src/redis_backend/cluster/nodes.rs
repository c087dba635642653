//! Larder's own connections to cluster nodes, by address.
//!
//! - A node's connections are made on first use, several multiplexed sockets per node (see
//!   [`super::super::Pool`] for why more than one), all at once.
//! - A connection that failed is dropped with its siblings, so the next use connects afresh:
//!   a multiplexed connection whose socket died answers every later command with an error.
//! - A node that cannot be reached is left alone for a backoff (100 ms doubling to 1 s): calls
//!   for it fail at once with the last error instead of each paying a connect timeout, which
//!   is what lets a request re-route within its deadline while a replica is being promoted.
//! - Only one connect per node runs at a time; concurrent callers wait for it (bounded by
//!   their own deadline).
//! - Warnings about an unreachable node are rate-limited: the first failure of a streak, then
//!   one line every [`WARN_EVERY`] with the number of failures since, then one line when the
//!   node answers again. A node that left the topology gets no traffic and so no more lines.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use redis::aio::MultiplexedConnection;

use super::super::slots::NodeAddr;
use crate::{ClusterUrl, Result, StoreError};

/// How often a still-unreachable node is mentioned in the log.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Connects to cluster nodes with the seeds' scheme, credentials and options.
#[derive(Debug, Clone)]
pub struct NodeConnector {
    pub url: ClusterUrl,
    pub config: redis::AsyncConnectionConfig,
}

impl NodeConnector {
    /// The URL of the node at `addr`, with the seeds' scheme, credentials and options.
    pub fn url(&self, addr: &NodeAddr) -> String {
        self.url.node(&format!("{}:{}", addr.host, addr.port))
    }

    /// A new connection to `addr`, bounded by `deadline`.
    pub(crate) async fn connect(
        &self,
        addr: &NodeAddr,
        deadline: Instant,
    ) -> Result<MultiplexedConnection> {
        let client = redis::Client::open(self.url(addr))?;
        let connect = client.get_multiplexed_async_connection_with_config(&self.config);
        match tokio::time::timeout_at(deadline.into(), connect).await {
            Ok(conn) => Ok(conn?),
            Err(_) => Err(StoreError::Unavailable(format!(
                "connecting to {addr} timed out"
            ))),
        }
    }
}

/// One node's connections and health.
struct Node {
    /// The live connections (empty until the first successful connect, and after a failure).
    /// A std Mutex: it is held for a clone or a swap, never across an await.
    conns: Mutex<Option<Arc<Vec<MultiplexedConnection>>>>,
    /// Held while connecting, so that one connect runs per node.
    connecting: tokio::sync::Mutex<()>,
    next: AtomicU64,
    /// Mirrors `health.failing_since.is_some()`, so that the success path (every command)
    /// costs one atomic load, not a lock.
    failing: std::sync::atomic::AtomicBool,
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    /// When the current streak of failures began (wall clock, unix ms), if one runs.
    failing_since: Option<(Instant, u64)>,
    /// No connect is tried before this instant.
    retry_at: Option<Instant>,
    backoff: Duration,
    last_error: String,
    last_warned: Option<Instant>,
    failures_since_warned: u64,
}

/// Connections to every node used so far.
pub(crate) struct Nodes {
    connector: NodeConnector,
    per_node: usize,
    nodes: Mutex<HashMap<NodeAddr, Arc<Node>>>,
}

impl Nodes {
    pub(crate) fn new(connector: NodeConnector, per_node: usize) -> Nodes {
        Nodes {
            connector,
            per_node: per_node.max(1),
            nodes: Mutex::new(HashMap::new()),
        }
    }

    fn node(&self, addr: &NodeAddr) -> Arc<Node> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes
            .entry(addr.clone())
            .or_insert_with(|| {
                Arc::new(Node {
                    conns: Mutex::new(None),
                    connecting: tokio::sync::Mutex::new(()),
                    next: AtomicU64::new(0),
                    failing: std::sync::atomic::AtomicBool::new(false),
                    health: Mutex::new(Health::default()),
                })
            })
            .clone()
    }

    /// A connection to `addr`, connecting first if needed; fails at once while the node is in
    /// its backoff after a failure.
    pub(crate) async fn get(
        &self,
        addr: &NodeAddr,
        deadline: Instant,
    ) -> Result<MultiplexedConnection> {
        let node = self.node(addr);
        if let Some(conn) = node.pick() {
            return Ok(conn);
        }
        node.check_backoff(addr)?;
        let _connecting = tokio::time::timeout_at(deadline.into(), node.connecting.lock())
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!("waiting for a connection to {addr} timed out"))
            })?;
        // Someone else may have connected (or failed) while this call waited.
        if let Some(conn) = node.pick() {
            return Ok(conn);
        }
        node.check_backoff(addr)?;
        let connects = (0..self.per_node).map(|_| self.connector.connect(addr, deadline));
        match try_join_all(connects).await {
            Ok(conns) => {
                *node.conns.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(conns));
                node.succeeded(addr);
                node.pick().ok_or_else(|| {
                    StoreError::Unavailable(format!("no connection to {addr} after connecting"))
                })
            }
            Err(error) => {
                node.failed(addr, &error);
                Err(error)
            }
        }
    }

    /// A command on a connection to `addr` failed with `error` (not a server error reply):
    /// drop the node's connections and start its backoff.
    pub(crate) fn failed(&self, addr: &NodeAddr, error: &StoreError) {
        let node = self.node(addr);
        node.conns.lock().unwrap_or_else(|p| p.into_inner()).take();
        node.failed(addr, error);
    }

    /// A command on `addr` succeeded: end its failure streak, if one was running.
    pub(crate) fn answered(&self, addr: &NodeAddr) {
        let node = self.node(addr);
        if node.failing.load(Ordering::Relaxed) {
            node.succeeded(addr);
        }
    }

    /// Whether calls to `addr` are failing now.
    pub(crate) fn is_down(&self, addr: &NodeAddr) -> bool {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes
            .get(addr)
            .is_some_and(|n| n.health().failing_since.is_some())
    }

    /// When (unix ms) the current failure streak of `addr` began, if one runs.
    pub(crate) fn failing_since_ms(&self, addr: &NodeAddr) -> Option<u64> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes
            .get(addr)
            .and_then(|n| n.health().failing_since.map(|(_, ms)| ms))
    }

    /// Forget nodes that are no longer part of the cluster (their connections close).
    pub(crate) fn retain(&self, keep: impl Fn(&NodeAddr) -> bool) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes.retain(|addr, _| keep(addr));
    }

    /// A brand-new connection to `addr`, not shared with anyone (for blocking commands).
    pub(crate) async fn dedicated(
        &self,
        addr: &NodeAddr,
        config: &redis::AsyncConnectionConfig,
        deadline: Instant,
    ) -> Result<MultiplexedConnection> {
        let connector = NodeConnector {
            config: config.clone(),
            ..self.connector.clone()
        };
        connector.connect(addr, deadline).await
    }
}

impl Node {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pick(&self) -> Option<MultiplexedConnection> {
        let conns = self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize % conns.len();
        Some(conns[i].clone())
    }

    fn check_backoff(&self, addr: &NodeAddr) -> Result<()> {
        let health = self.health();
        match health.retry_at {
            Some(at) if Instant::now() < at => Err(StoreError::Unavailable(format!(
                "redis node {addr} is unreachable: {}",
                health.last_error
            ))),
            _ => Ok(()),
        }
    }

    fn failed(&self, addr: &NodeAddr, error: &StoreError) {
        let mut h = self.health();
        let now = Instant::now();
        h.backoff = if h.failing_since.is_none() {
            FIRST_BACKOFF
        } else {
            (h.backoff * 2).min(MAX_BACKOFF)
        };
        h.retry_at = Some(now + h.backoff);
        h.last_error = error.to_string();
        h.failures_since_warned += 1;
        match h.failing_since {
            None => {
                h.failing_since = Some((now, crate::unix_ms()));
                self.failing.store(true, Ordering::Relaxed);
                h.last_warned = Some(now);
                h.failures_since_warned = 0;
                tracing::warn!(node = %addr, %error, "redis node unreachable (repeats are logged every {}s)", WARN_EVERY.as_secs());
            }
            Some((since, _)) => {
                if h.last_warned
                    .is_none_or(|t| now.duration_since(t) >= WARN_EVERY)
                {
                    tracing::warn!(
                        node = %addr,
                        %error,
                        down_for_s = now.duration_since(since).as_secs(),
                        failures = h.failures_since_warned,
                        "redis node still unreachable"
                    );
                    h.last_warned = Some(now);
                    h.failures_since_warned = 0;
                }
            }
        }
    }

    fn succeeded(&self, addr: &NodeAddr) {
        let mut h = self.health();
        self.failing.store(false, Ordering::Relaxed);
        if let Some((since, _)) = h.failing_since.take() {
            tracing::info!(node = %addr, down_for_ms = since.elapsed().as_millis() as u64, "redis node reachable again");
        }
        h.retry_at = None;
        h.backoff = Duration::ZERO;
        h.failures_since_warned = 0;
    }
}
