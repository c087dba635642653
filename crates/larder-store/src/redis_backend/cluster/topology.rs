//! The cluster's slot map, kept current by a background task that asks live nodes.
//!
//! No request ever refreshes the slot map itself. A request that meets a dead node or a
//! `MOVED` asks for a refresh ([`Topology::refresh_soon`]) and waits, within its own
//! deadline, for the task to publish a newer snapshot ([`Topology::wait_newer`]). So a
//! refresh never belongs to one request (a request that gives up at its deadline cannot
//! strand the others), and never depends on one node:
//!
//! - every known node is asked at once: the node a `MOVED` named first, then the primaries,
//!   replicas and seeds, skipping nodes that are failing right now (unless nothing else is
//!   left), each bounded by the refresh timeout;
//! - the first complete answer that names no failing primary wins; until the cluster has
//!   promoted a replica, every answer still names the dead primary, and the best of those is
//!   kept (requests for its slots keep failing fast, then re-route once the map changes);
//! - besides requests, the task refreshes every [`PERIODIC`], which notices failovers and
//!   reshards no request stumbled on.
//!
//! Each published snapshot has a new epoch, also when the map did not change, so waiting
//! requests wake and retry. When a refresh shows that a primary's slots went to another node
//! and the old primary is no longer a primary at all (a failover, not a reshard), a
//! [`Failover`] is broadcast: writes that the old primary acknowledged but had not yet
//! replicated are lost from Redis, and the backup replays recent writes of those slots.
//!
//! Why not redis-rs's cluster connection: under concurrent load, after a primary was killed,
//! its slot refresh waited forever for the write half of its connection-map lock (seen with an
//! instrumented copy of redis-rs 1.8.1: `refresh_slots` logged "waiting for conn_lock.write()"
//! and never got it), while every command queued behind its recovery state and timed out.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use redis::Value;
use tokio::sync::{broadcast, watch, Notify};

use super::nodes::Nodes;
use crate::redis_backend::slots::{NodeAddr, SlotTable};
use crate::{Result, StoreError};

/// How often the slot map is re-read when nothing asked for it.
pub(crate) const PERIODIC: Duration = Duration::from_secs(5);
/// The shortest gap between two refreshes: requests that all fail at once share one.
const MIN_INTERVAL: Duration = Duration::from_millis(50);

/// A published slot map.
#[derive(Clone)]
pub(crate) struct Snapshot {
    pub(crate) table: Arc<SlotTable>,
    /// Incremented by every refresh attempt, successful or not.
    pub(crate) epoch: u64,
}

/// A primary that failed: its slots are served by another node now, and writes it had
/// acknowledged since `since_ms` (unix ms) may not have reached its replica.
#[derive(Debug, Clone, PartialEq)]
pub struct Failover {
    pub node: String,
    /// Inclusive slot ranges that moved.
    pub slots: Vec<(u16, u16)>,
    /// When Larder first failed to reach the old primary, or else when its ownership was last
    /// confirmed by a refresh.
    pub since_ms: u64,
}

struct Inner {
    state: watch::Sender<Snapshot>,
    wake: Notify,
    /// A node to ask first at the next refresh (the one a `MOVED` named).
    hint: Mutex<Option<NodeAddr>>,
    seeds: Vec<NodeAddr>,
    nodes: Arc<Nodes>,
    timeout: Duration,
    failovers: broadcast::Sender<Failover>,
    /// When the current map's ownership was last confirmed (unix ms).
    confirmed_ms: Mutex<u64>,
}

pub(crate) struct Topology {
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Topology {
    /// Read the slot map from the seeds (failing when none answers with one), then keep it
    /// current in the background.
    pub(crate) async fn start(
        seeds: Vec<NodeAddr>,
        nodes: Arc<Nodes>,
        timeout: Duration,
    ) -> Result<Topology> {
        let (state, _) = watch::channel(Snapshot {
            table: Arc::new(SlotTable::empty()),
            epoch: 0,
        });
        let inner = Arc::new(Inner {
            state,
            wake: Notify::new(),
            hint: Mutex::new(None),
            seeds,
            nodes,
            timeout,
            failovers: broadcast::channel(64).0,
            confirmed_ms: Mutex::new(0),
        });
        inner.refresh().await?;
        let task = tokio::spawn(run(inner.clone()));
        Ok(Topology { inner, task })
    }

    pub(crate) fn current(&self) -> Snapshot {
        self.inner.state.borrow().clone()
    }

    /// Ask the background task for a refresh, asking `hint` first when given.
    pub(crate) fn refresh_soon(&self, hint: Option<NodeAddr>) {
        if let Some(hint) = hint {
            *self.inner.hint.lock().unwrap_or_else(|p| p.into_inner()) = Some(hint);
        }
        self.inner.wake.notify_one();
    }

    /// Wait until a snapshot newer than `epoch` is published, or `until`.
    pub(crate) async fn wait_newer(&self, epoch: u64, until: Instant) {
        let mut rx = self.inner.state.subscribe();
        let _ = tokio::time::timeout_at(until.into(), rx.wait_for(|s| s.epoch > epoch)).await;
    }

    pub(crate) fn failovers(&self) -> broadcast::Receiver<Failover> {
        self.inner.failovers.subscribe()
    }
}

async fn run(inner: Arc<Inner>) {
    let mut last = Instant::now();
    loop {
        tokio::select! {
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep(PERIODIC) => {}
        }
        let gap = last.elapsed();
        if gap < MIN_INTERVAL {
            tokio::time::sleep(MIN_INTERVAL - gap).await;
        }
        last = Instant::now();
        if let Err(error) = inner.refresh().await {
            tracing::debug!(%error, "cluster slot map refresh failed");
        }
    }
}

impl Inner {
    /// One refresh: ask the candidates, publish what was learned (a new epoch in any case).
    async fn refresh(&self) -> Result<()> {
        let old = self.state.borrow().clone();
        let outcome = self.ask(&old.table).await;
        let epoch = old.epoch + 1;
        let table = match outcome {
            Ok(table) => table,
            Err(error) => {
                self.state.send_replace(Snapshot {
                    table: old.table,
                    epoch,
                });
                return Err(error);
            }
        };
        let previous_confirmed = {
            let mut confirmed = self.confirmed_ms.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *confirmed, crate::unix_ms())
        };
        for (node, slots) in old.table.failed_over(&table) {
            let since_ms = self
                .nodes
                .failing_since_ms(&node)
                .map_or(previous_confirmed, |failing| {
                    failing.min(previous_confirmed)
                });
            let failover = Failover {
                node: node.to_string(),
                slots,
                since_ms,
            };
            tracing::warn!(node = %node, ranges = failover.slots.len(), "redis primary failed over to a replica");
            let _ = self.failovers.send(failover);
        }
        if *old.table != table {
            let known: HashSet<&NodeAddr> = table
                .nodes
                .iter()
                .chain(&table.replicas)
                .chain(&self.seeds)
                .collect();
            self.nodes.retain(|addr| known.contains(addr));
            tracing::info!(
                primaries = table.nodes.len(),
                replicas = table.replicas.len(),
                "cluster slot map changed"
            );
        }
        self.state.send_replace(Snapshot {
            table: Arc::new(table),
            epoch,
        });
        Ok(())
    }

    /// Ask every candidate at once; the first complete map that names no failing primary, else
    /// the first complete one, else the first one.
    async fn ask(&self, current: &SlotTable) -> Result<SlotTable> {
        let hint = self.hint.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut candidates: Vec<&NodeAddr> = Vec::new();
        for addr in hint
            .iter()
            .chain(&current.nodes)
            .chain(&current.replicas)
            .chain(&self.seeds)
        {
            if !candidates.contains(&addr) {
                candidates.push(addr);
            }
        }
        let live: Vec<&NodeAddr> = candidates
            .iter()
            .copied()
            .filter(|a| !self.nodes.is_down(a))
            .collect();
        let asked = if live.is_empty() { candidates } else { live };
        let deadline = Instant::now() + self.timeout;
        let mut answers: FuturesUnordered<_> = asked
            .into_iter()
            .map(|addr| async move { (addr, self.cluster_slots(addr, deadline).await) })
            .collect();
        let (mut complete, mut partial, mut last_error) = (None, None, None);
        while let Some((addr, answer)) = answers.next().await {
            match answer {
                Ok(table)
                    if table.is_complete()
                        && !table.nodes.iter().any(|n| self.nodes.is_down(n)) =>
                {
                    return Ok(table);
                }
                Ok(table) if table.is_complete() => {
                    complete.get_or_insert(table);
                }
                Ok(table) => {
                    partial.get_or_insert(table);
                }
                Err(error) => {
                    tracing::debug!(node = %addr, %error, "CLUSTER SLOTS failed");
                    last_error = Some(error);
                }
            }
        }
        complete.or(partial).ok_or_else(|| {
            last_error.unwrap_or_else(|| {
                StoreError::Unavailable("no cluster node to ask for the slot map".into())
            })
        })
    }

    async fn cluster_slots(&self, addr: &NodeAddr, deadline: Instant) -> Result<SlotTable> {
        let mut conn = self.nodes.get(addr, deadline).await?;
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SLOTS");
        match tokio::time::timeout_at(deadline.into(), cmd.query_async::<Value>(&mut conn)).await {
            Ok(Ok(reply)) => {
                self.nodes.answered(addr);
                SlotTable::from_cluster_slots(&reply, &addr.host)
            }
            Ok(Err(error)) => {
                let lost = super::is_connection_error(&error);
                let error = StoreError::from(error);
                if lost {
                    self.nodes.failed(addr, &error);
                }
                Err(error)
            }
            Err(_) => {
                let error = StoreError::Unavailable(format!("CLUSTER SLOTS on {addr} timed out"));
                self.nodes.failed(addr, &error);
                Err(error)
            }
        }
    }
}
