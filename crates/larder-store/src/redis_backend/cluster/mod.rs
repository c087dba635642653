//! Redis Cluster, on Larder's own connections. Split by concern:
//!
//! - [`topology`]: the slot map, refreshed by a background task from live nodes;
//! - [`nodes`]: connections per node address, dropped on failure, with backoff and
//!   rate-limited warnings;
//! - this file: sending a batch of single-key commands, grouped by owning primary, following
//!   `MOVED`/`ASK` and re-routing after a failover, all within one deadline.
//!
//! A batch goes out as one pipeline per owning primary, all nodes in parallel, answers put back
//! in request order (`docs/ARCHITECTURE.md` has the measurements behind grouping). Each
//! command's result comes back separately (`ignore_errors`), so:
//!
//! - `MOVED` (a reshard): the named node is asked for the slot map first, and only the moved
//!   commands are re-sent, again grouped per node;
//! - `ASK` (a slot mid-migration): `ASKING` + the command go to the importing node;
//! - an unreachable node (failover, restart): its connections are dropped, a refresh is asked
//!   for, and its commands are re-sent to whoever owns their slots in the next snapshot;
//! - `TRYAGAIN`/`CLUSTERDOWN`/`LOADING`: re-sent after the next refresh.
//!
//! Everything a call does (connecting, sending, waiting for a refresh) is bounded by its
//! deadline; when it passes, the call fails as `Unavailable` with the last error seen.

mod nodes;
mod topology;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use redis::{Cmd, ServerErrorKind, Value};

pub use nodes::NodeConnector;
pub use topology::Failover;

use super::batcher::{ClusterBatch, Keyed, Trips};
use super::slots::{slot_for_key, NodeAddr};
use crate::{Result, StoreError};
use nodes::Nodes;
use topology::Topology;

/// Longest pause between rounds while waiting for the slot map to change (a refresh usually
/// answers within a millisecond; this bounds the wait when it does not).
const ROUND_WAIT: Duration = Duration::from_millis(200);

pub struct Cluster {
    topology: Topology,
    nodes: Arc<Nodes>,
    strategy: ClusterBatch,
    /// The budget of one call: connecting, redirects, failover re-routing and all.
    timeout: Duration,
    trips: Trips,
}

/// The results of one round of sends.
#[derive(Default)]
struct Round {
    /// Commands to send again.
    retry: Vec<usize>,
    /// `ASK` redirects: command and importing node.
    asks: Vec<(usize, NodeAddr)>,
    /// A node a `MOVED` named, to ask for the slot map first.
    moved_to: Option<NodeAddr>,
    last_error: Option<String>,
}

impl Cluster {
    /// Connect through `seeds` (the first that answers with a slot map).
    pub(crate) async fn connect(
        seeds: Vec<NodeAddr>,
        connector: NodeConnector,
        connections: usize,
        strategy: ClusterBatch,
        timeout: Duration,
        trips: Trips,
    ) -> Result<Cluster> {
        let nodes = Arc::new(Nodes::new(connector, connections));
        let topology = Topology::start(seeds, nodes.clone(), timeout).await?;
        Ok(Cluster {
            topology,
            nodes,
            strategy,
            timeout,
            trips,
        })
    }

    /// Failovers noticed from now on (see [`Failover`]).
    pub fn failovers(&self) -> tokio::sync::broadcast::Receiver<Failover> {
        self.topology.failovers()
    }

    /// Send every command; answers in the order given. An error reply (say `WRONGTYPE`)
    /// fails the call.
    pub(crate) async fn run(&self, cmds: &[Keyed]) -> Result<Vec<Value>> {
        self.run_raw(cmds)
            .await?
            .into_iter()
            .map(|reply| reply.map_err(StoreError::from))
            .collect()
    }

    /// One command routed by `key`: `Err` when the cluster did not answer within the call's
    /// deadline, else the reply, error replies included (for callers that act on their codes,
    /// like the broker's `BUSYGROUP` and `NOGROUP`).
    pub async fn query(&self, key: &[u8], cmd: &Cmd) -> Result<redis::RedisResult<Value>> {
        let mut replies = self
            .run_raw(&[Keyed {
                key: key.to_vec(),
                cmd: cmd.clone(),
            }])
            .await?;
        replies
            .pop()
            .ok_or_else(|| StoreError::Unavailable("no answer".into()))
    }

    /// Send every command; each command's reply (values or error replies) in the order given.
    async fn run_raw(&self, cmds: &[Keyed]) -> Result<Vec<redis::RedisResult<Value>>> {
        let deadline = Instant::now() + self.timeout;
        let mut answers: Vec<Option<redis::RedisResult<Value>>> =
            (0..cmds.len()).map(|_| None).collect();
        let mut pending: Vec<usize> = (0..cmds.len()).collect();
        loop {
            let snapshot = self.topology.current();
            let table = &snapshot.table;
            let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
            let mut round = Round::default();
            for &i in &pending {
                match table.owner(slot_for_key(&cmds[i].key)) {
                    Some(node) => groups.entry(node).or_default().push(i),
                    None => {
                        round.retry.push(i);
                        round.last_error = Some("a slot has no owner in the slot map".into());
                    }
                }
            }
            // Per-command: every command is its own pipeline of one, sent concurrently (the
            // multiplexed connection pipelines what is queued by itself).
            let sends: Vec<(NodeAddr, Vec<usize>)> = groups
                .into_iter()
                .flat_map(|(node, idx)| {
                    let addr = table.nodes[node].clone();
                    match self.strategy {
                        ClusterBatch::Grouped => vec![(addr, idx)],
                        ClusterBatch::PerCommand => {
                            idx.into_iter().map(|i| (addr.clone(), vec![i])).collect()
                        }
                    }
                })
                .collect();
            let results = join_all(sends.into_iter().map(|(addr, idx)| async move {
                let pipe = pipeline(idx.iter().map(|&i| (&cmds[i].cmd, false)));
                (self.send(&addr, pipe, idx.len(), deadline).await, addr, idx)
            }))
            .await;
            for (out, addr, idx) in results {
                match out {
                    Ok(values) => {
                        for (i, value) in idx.into_iter().zip(values) {
                            round.take(i, value, &mut answers);
                        }
                    }
                    Err(error) => {
                        round.last_error = Some(format!("{addr}: {error}"));
                        round.retry.extend(idx);
                    }
                }
            }
            self.follow_asks(cmds, &mut round, &mut answers, deadline)
                .await;
            if round.retry.is_empty() {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(StoreError::Unavailable(format!(
                    "the cluster did not answer {} of {} commands within {:?}: {}",
                    round.retry.len(),
                    cmds.len(),
                    self.timeout,
                    round.last_error.as_deref().unwrap_or("no answer")
                )));
            }
            self.topology.refresh_soon(round.moved_to.take());
            self.topology
                .wait_newer(snapshot.epoch, deadline.min(now + ROUND_WAIT))
                .await;
            pending = round.retry;
        }
        answers
            .into_iter()
            .map(|a| {
                a.ok_or_else(|| StoreError::Unavailable("cluster batch lost an answer".into()))
            })
            .collect()
    }

    /// `ASK`: the slot is migrating; the importing node answers each command after ASKING.
    async fn follow_asks(
        &self,
        cmds: &[Keyed],
        round: &mut Round,
        answers: &mut [Option<redis::RedisResult<Value>>],
        deadline: Instant,
    ) {
        let mut by_node: HashMap<NodeAddr, Vec<usize>> = HashMap::new();
        for (i, to) in std::mem::take(&mut round.asks) {
            by_node.entry(to).or_default().push(i);
        }
        for (to, idx) in by_node {
            let pipe = pipeline(idx.iter().map(|&i| (&cmds[i].cmd, true)));
            match self.send(&to, pipe, 2 * idx.len(), deadline).await {
                // Every other reply is the ASKING "OK".
                Ok(values) => {
                    for (&i, value) in idx.iter().zip(values.into_iter().skip(1).step_by(2)) {
                        round.take(i, value, answers);
                    }
                }
                Err(error) => {
                    round.last_error = Some(format!("{to}: {error}"));
                    round.retry.extend(idx);
                }
            }
        }
    }

    /// One pipeline to one node on Larder's own connection; each command's result separately.
    /// A connection-level failure drops the node's connections.
    async fn send(
        &self,
        addr: &NodeAddr,
        pipe: redis::Pipeline,
        expected: usize,
        deadline: Instant,
    ) -> Result<Vec<redis::RedisResult<Value>>> {
        let mut conn = self.nodes.get(addr, deadline).await?;
        self.trips.count();
        let query = pipe.query_async::<Vec<redis::RedisResult<Value>>>(&mut conn);
        match tokio::time::timeout_at(deadline.into(), query).await {
            Ok(Ok(values)) if values.len() == expected => {
                self.nodes.answered(addr);
                Ok(values)
            }
            Ok(Ok(values)) => Err(StoreError::Unavailable(format!(
                "{addr} answered {} replies to {expected} commands",
                values.len()
            ))),
            Ok(Err(error)) => {
                let lost = is_connection_error(&error);
                let error = StoreError::from(error);
                if lost {
                    self.nodes.failed(addr, &error);
                }
                Err(error)
            }
            Err(_) => Err(StoreError::Unavailable(format!(
                "{addr} did not answer before the deadline"
            ))),
        }
    }

    /// Send `cmd` to every primary; each node's answer.
    pub(crate) async fn on_primaries(&self, cmd: &Cmd) -> Vec<(NodeAddr, Result<Value>)> {
        let deadline = Instant::now() + self.timeout;
        let table = self.topology.current().table;
        if !table.is_complete() {
            self.topology.refresh_soon(None);
        }
        join_all(table.nodes.iter().map(|addr| async move {
            let out = self.one_on(addr, cmd, deadline).await;
            (addr.clone(), out)
        }))
        .await
    }

    /// Whether every slot has an owner that answers `PING`.
    pub(crate) async fn ping(&self) -> Result<()> {
        let table = self.topology.current().table;
        if !table.is_complete() {
            self.topology.refresh_soon(None);
            return Err(StoreError::Unavailable(
                "the cluster slot map does not cover every slot".into(),
            ));
        }
        for (addr, out) in self.on_primaries(&redis::cmd("PING")).await {
            out.map_err(|e| StoreError::Unavailable(format!("{addr}: {e}")))?;
        }
        Ok(())
    }

    /// One command on one node.
    pub(crate) async fn one_on(
        &self,
        addr: &NodeAddr,
        cmd: &Cmd,
        deadline: Instant,
    ) -> Result<Value> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors().add_command(cmd.clone());
        let mut values = self.send(addr, pipe, 1, deadline).await?;
        match values.pop() {
            Some(value) => Ok(value?),
            None => Err(StoreError::Unavailable(format!("{addr} answered nothing"))),
        }
    }

    /// Every key matching `pattern`, from every primary (SCAN, not bounded by the call
    /// timeout: each SCAN page is).
    /// Every key matching `pattern`, per primary (`host:port`), in slot-table order.
    pub(crate) async fn scan_by_node(&self, pattern: &str) -> Result<Vec<(String, Vec<Vec<u8>>)>> {
        let table = self.topology.current().table;
        let mut by_node = Vec::with_capacity(table.nodes.len());
        for addr in &table.nodes {
            let mut keys = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let mut cmd = redis::cmd("SCAN");
                cmd.arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1000);
                let page = self
                    .one_on(addr, &cmd, Instant::now() + self.timeout)
                    .await?;
                let (next, batch): (u64, Vec<Vec<u8>>) = redis::from_redis_value(page)?;
                keys.extend(batch);
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
            by_node.push((addr.to_string(), keys));
        }
        Ok(by_node)
    }

    /// A new connection of its own to the primary owning `key` (for blocking commands, which
    /// would stall a shared multiplexed connection), with `config`'s timeouts.
    pub async fn dedicated(
        &self,
        key: &[u8],
        config: &redis::AsyncConnectionConfig,
    ) -> Result<(String, redis::aio::MultiplexedConnection)> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let snapshot = self.topology.current();
            let owner = snapshot.table.owner_addr(slot_for_key(key)).cloned();
            let error = match owner {
                Some(addr) => match self.nodes.dedicated(&addr, config, deadline).await {
                    Ok(conn) => return Ok((addr.to_string(), conn)),
                    Err(error) => {
                        self.nodes.failed(&addr, &error);
                        error
                    }
                },
                None => StoreError::Unavailable("the key's slot has no owner".into()),
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(error);
            }
            self.topology.refresh_soon(None);
            self.topology
                .wait_newer(snapshot.epoch, deadline.min(now + ROUND_WAIT))
                .await;
        }
    }

    /// The node owning `key`'s slot changed its mind (a `MOVED` on a dedicated connection):
    /// re-read the slot map, asking `to` first.
    pub fn moved(&self, to: Option<&str>) {
        let hint = to.and_then(parse_addr);
        self.topology.refresh_soon(hint);
    }
}

impl Round {
    /// File one command's reply: an answer (error replies too), or a redirect or a
    /// "not now" to retry.
    fn take(
        &mut self,
        i: usize,
        value: redis::RedisResult<Value>,
        answers: &mut [Option<redis::RedisResult<Value>>],
    ) {
        let error = match value {
            Ok(value) => {
                answers[i] = Some(Ok(value));
                return;
            }
            Err(error) => error,
        };
        match redirect(&error) {
            Some((ServerErrorKind::Ask, to)) => self.asks.push((i, to)),
            Some((_, to)) => {
                self.moved_to = Some(to);
                self.retry.push(i);
            }
            None if retriable(&error) => {
                self.last_error = Some(error.to_string());
                self.retry.push(i);
            }
            // A real error reply (WRONGTYPE, BUSYGROUP, …): retrying cannot help.
            None => answers[i] = Some(Err(error)),
        }
    }
}

/// Errors that say "not now" rather than "never": the cluster is failing over or loading.
fn retriable(error: &redis::RedisError) -> bool {
    matches!(
        error.kind(),
        redis::ErrorKind::Server(
            ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
                | ServerErrorKind::BusyLoading
        )
    ) || is_connection_error(error)
}

/// Whether `error` means the connection is unusable, rather than an error reply (which may be
/// of a kind redis-rs does not know, like `BUSYGROUP`: `ErrorKind::Extension`).
pub(crate) fn is_connection_error(error: &redis::RedisError) -> bool {
    matches!(
        error.kind(),
        redis::ErrorKind::Io
            | redis::ErrorKind::Parse
            | redis::ErrorKind::ClusterConnectionNotFound
    ) || error.is_timeout()
        || error.is_connection_dropped()
}

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

/// `host:port` as a node address.
fn parse_addr(addr: &str) -> Option<NodeAddr> {
    let (host, port) = addr.rsplit_once(':')?;
    Some(NodeAddr {
        host: host.to_owned(),
        port: port.parse().ok()?,
    })
}

/// `MOVED`/`ASK` and the node they name.
fn redirect(error: &redis::RedisError) -> Option<(ServerErrorKind, NodeAddr)> {
    let kind = match error.kind() {
        redis::ErrorKind::Server(kind @ (ServerErrorKind::Moved | ServerErrorKind::Ask)) => kind,
        _ => return None,
    };
    let (addr, _slot) = error.redirect_node()?;
    Some((kind, parse_addr(addr)?))
}
