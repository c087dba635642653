//! A real 3-primary / 3-replica Redis Cluster.

use std::collections::BTreeSet;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::ports::pick_ports;
use crate::process::{cli_bin, run, try_cli, LaunchError, Node, CLI_TIMEOUT, READY_TIMEOUT};
use crate::topology::{covers_all_slots, parse_cluster_nodes, parse_cluster_slots_json, NodeEntry};

const NODES: usize = 6;
const PRIMARIES: usize = 3;
const START_ATTEMPTS: usize = 10;
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
const RESTART_PATIENCE: Duration = Duration::from_secs(10);
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// A real Redis Cluster: 6 `redis-server` processes (3 primaries, 3 replicas) on free loopback
/// ports, created with `redis-cli --cluster create … --cluster-replicas 1 --cluster-yes`, using
/// `--cluster-node-timeout 2000` so failover happens within a few seconds.
///
/// Each node has its own directory (with `nodes.conf` and `redis.log`) under one temp dir.
/// Dropping the cluster SIGKILLs and reaps all processes, then removes the temp dir.
pub struct RedisCluster {
    // Field order matters: processes are dropped before their directories.
    nodes: Vec<Node>,
    root: TempDir,
}

impl RedisCluster {
    /// Start 6 nodes, create the cluster and wait until every node reports `cluster_state:ok`,
    /// every node's `CLUSTER SLOTS` is identical (all 16384 slots, 3 primaries with one replica
    /// each) and every node's `CLUSTER NODES` shows 3 primaries and 3 replicas. Takes ~3-4 s;
    /// panics after 30 s with the last observed state.
    pub fn start() -> RedisCluster {
        let root = tempfile::Builder::new()
            .prefix("larder-redis-cluster-")
            .tempdir()
            .expect("larder-testkit: create a temp dir for the redis cluster");
        let mut last = String::new();
        for attempt in 0..START_ATTEMPTS {
            let ports = pick_ports(NODES);
            let mut nodes = Vec::with_capacity(NODES);
            for port in ports {
                let dir = root.path().join(format!("try{attempt}-node-{port}"));
                std::fs::create_dir_all(&dir).expect("larder-testkit: create a cluster node dir");
                let extra = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    // Redis 7's CLUSTER SLOTS lists a replica only once its replication offset
                    // is non-zero. On an empty primary the offset first moves with the primary's
                    // replication PING (default every 10 s), and the full sync waits 5 s by
                    // default; without these two, start-up takes ~11 s instead of ~3 s.
                    "--repl-ping-replica-period",
                    "1",
                    "--repl-diskless-sync-delay",
                    "0",
                ];
                nodes.push(Node::new(port, &dir, &extra, None));
            }
            // Launch all, then wait for all: the nodes boot in parallel.
            let mut result = nodes.iter_mut().try_for_each(Node::launch);
            if result.is_ok() {
                result = nodes
                    .iter_mut()
                    .try_for_each(|n| n.wait_ready(READY_TIMEOUT));
            }
            match result {
                Ok(()) => {
                    let cluster = RedisCluster { nodes, root };
                    cluster.create();
                    cluster.wait_converged();
                    return cluster;
                }
                // `nodes` is dropped here, killing whatever did start.
                Err(LaunchError::PortInUse(msg)) => last = msg,
                Err(LaunchError::Failed(msg)) => panic!("larder-testkit: cluster node: {msg}"),
            }
        }
        panic!("larder-testkit: cluster hit port clashes {START_ATTEMPTS} times; last: {last}")
    }

    fn create(&self) {
        let mut args = vec!["--cluster".to_owned(), "create".to_owned()];
        args.extend(self.seeds());
        args.extend(["--cluster-replicas", "1", "--cluster-yes"].map(str::to_owned));
        let out = run(&cli_bin(), &args, CLI_TIMEOUT)
            .unwrap_or_else(|e| panic!("larder-testkit: redis-cli --cluster create: {e}"));
        if !out.status.success() || !out.stdout.contains("All 16384 slots covered") {
            panic!(
                "larder-testkit: `redis-cli {}` failed ({}):\n{}\n{}\n{}",
                args.join(" "),
                out.status,
                out.stdout,
                out.stderr,
                self.log_tails()
            );
        }
    }

    fn wait_converged(&self) {
        let deadline = Instant::now() + CONVERGE_TIMEOUT;
        loop {
            let reason = match self.converged() {
                Ok(()) => return,
                Err(reason) => reason,
            };
            if Instant::now() >= deadline {
                panic!(
                    "larder-testkit: cluster on ports {:?} did not converge within {:?}: {reason}\n{}",
                    self.ports(),
                    CONVERGE_TIMEOUT,
                    self.log_tails()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `Ok` when all nodes agree on a complete 3+3 topology; otherwise why not.
    fn converged(&self) -> Result<(), String> {
        let mut reference = None;
        for n in &self.nodes {
            let p = n.port;
            check_state_ok(p)?;
            let slots = query(p, &["--json", "cluster", "slots"])?;
            let slots = parse_cluster_slots_json(&slots)?;
            let ranges: Vec<_> = slots.iter().map(|r| (r.start, r.end)).collect();
            let primaries: BTreeSet<u16> = slots.iter().map(|r| r.primary).collect();
            if !covers_all_slots(&ranges) || primaries.len() != PRIMARIES {
                return Err(format!("node {p}: CLUSTER SLOTS incomplete: {slots:?}"));
            }
            if slots.iter().any(|r| r.replicas.len() != 1) {
                return Err(format!("node {p}: replicas not known yet: {slots:?}"));
            }
            match &reference {
                None => reference = Some(slots),
                Some(r) if *r != slots => {
                    return Err(format!("node {p} disagrees: {slots:?} vs {r:?}"));
                }
                Some(_) => {}
            }
            let view = cluster_nodes(p)?;
            let m = view.iter().filter(|e| e.is_live_primary()).count();
            let s = view.iter().filter(|e| e.is_live_replica()).count();
            if (m, s) != (PRIMARIES, NODES - PRIMARIES) {
                return Err(format!(
                    "node {p}: CLUSTER NODES shows {m} primaries, {s} replicas"
                ));
            }
        }
        Ok(())
    }

    /// All 6 client ports (in start order).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// `127.0.0.1:PORT` for all 6 nodes.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect()
    }

    /// `redis-cluster://127.0.0.1:P1,127.0.0.1:P2,…` listing all 6 nodes.
    pub fn url(&self) -> String {
        format!("redis-cluster://{}", self.seeds().join(","))
    }

    /// The temp dir holding one sub-directory per node.
    pub fn dir(&self) -> &Path {
        self.root.path()
    }

    /// Ports of the current primaries (flags `master`, not `fail`/`fail?`), as seen by the first
    /// running node that answers `CLUSTER NODES`. Sorted.
    pub fn primaries(&self) -> Vec<u16> {
        self.view_ports(NodeEntry::is_live_primary)
    }

    /// Ports of the current replicas (flags `slave`, not `fail`/`fail?`). Sorted.
    pub fn replicas(&self) -> Vec<u16> {
        self.view_ports(NodeEntry::is_live_replica)
    }

    fn view_ports(&self, keep: fn(&NodeEntry) -> bool) -> Vec<u16> {
        let mut errors = Vec::new();
        for n in self.nodes.iter().filter(|n| n.is_running()) {
            match cluster_nodes(n.port) {
                Ok(view) => {
                    let mut v: Vec<u16> = view.iter().filter(|e| keep(e)).map(|e| e.port).collect();
                    v.sort_unstable();
                    return v;
                }
                Err(e) => errors.push(e),
            }
        }
        panic!("larder-testkit: no running cluster node answered CLUSTER NODES: {errors:?}")
    }

    /// `redis-cli -p PORT ARGS…` (any port; pass `-c` first to follow redirects). Trimmed stdout;
    /// panics with stderr if redis-cli exits non-zero.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        try_cli(port, None, args, CLI_TIMEOUT).unwrap_or_else(|e| panic!("larder-testkit: {e}"))
    }

    /// Sum of `INFO commandstats` calls of `command` over the current primaries.
    pub fn primary_command_calls(&self, command: &str) -> u64 {
        self.primaries()
            .into_iter()
            .map(|p| crate::command_calls(p, command))
            .sum()
    }

    fn node_mut(&mut self, port: u16) -> &mut Node {
        let ports = self.ports();
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| {
                panic!("larder-testkit: port {port} is not in this cluster {ports:?}")
            })
    }

    /// Whether the node's process is running (false after [`RedisCluster::kill_node`]).
    pub fn is_running(&self, port: u16) -> bool {
        self.nodes.iter().any(|n| n.port == port && n.is_running())
    }

    /// SIGKILL that node's process and reap it (for failover tests). Panics on an unknown port.
    pub fn kill_node(&mut self, port: u16) {
        self.node_mut(port).kill();
    }

    /// Start a killed node again with the same port, dir and `nodes.conf`, so it rejoins (a
    /// former primary comes back as a replica of its promoted replica). Waits for PONG only;
    /// use [`RedisCluster::wait_healthy`] to wait for the rejoin. Restarts it if still running.
    pub fn restart_node(&mut self, port: u16) {
        let node = self.node_mut(port);
        node.kill();
        node.restart_same_port(RESTART_PATIENCE);
    }

    /// Poll until every running node reports `cluster_state:ok` and, in every running node's
    /// `CLUSTER NODES`, the non-failed primaries are exactly 3 *running* processes covering all
    /// slots and no running node is flagged `fail`/`fail?`. False on timeout.
    pub fn wait_healthy(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.healthy().is_ok() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `Ok` when healthy (see [`RedisCluster::wait_healthy`]); otherwise why not.
    pub fn healthy(&self) -> Result<(), String> {
        let live: BTreeSet<u16> = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.port)
            .collect();
        let mut reference: Option<BTreeSet<u16>> = None;
        for &p in &live {
            check_state_ok(p)?;
            let view = cluster_nodes(p)?;
            if let Some(e) = view.iter().find(|e| live.contains(&e.port) && e.failing()) {
                return Err(format!(
                    "node {p} still flags running node {} {:?}",
                    e.port, e.flags
                ));
            }
            let prim: Vec<&NodeEntry> = view.iter().filter(|e| e.is_live_primary()).collect();
            let ports: BTreeSet<u16> = prim.iter().map(|e| e.port).collect();
            if ports.len() != PRIMARIES || !ports.is_subset(&live) {
                return Err(format!(
                    "node {p} sees primaries {ports:?}; running: {live:?}"
                ));
            }
            let slots: Vec<(u16, u16)> = prim.iter().flat_map(|e| e.slots.clone()).collect();
            if !covers_all_slots(&slots) {
                return Err(format!(
                    "node {p}: primaries do not cover all slots: {slots:?}"
                ));
            }
            match &reference {
                None => reference = Some(ports),
                Some(r) if *r != ports => {
                    return Err(format!("node {p} sees primaries {ports:?}, another {r:?}"));
                }
                Some(_) => {}
            }
        }
        if live.is_empty() {
            return Err("no node is running".to_owned());
        }
        Ok(())
    }

    /// Lose a whole shard, as when a primary and its replica die together, then do what an
    /// operator does to serve again: SIGKILL `primary` and its replica, `CLUSTER FORGET` both
    /// on every remaining node, and give their slots to another primary (`CLUSTER
    /// ADDSLOTSRANGE`), which then holds none of their keys. Waits until every remaining node
    /// reports `cluster_state:ok` with the same complete slot map. Returns the moved ranges.
    pub fn lose_shard(&mut self, primary: u16) -> Vec<(u16, u16)> {
        let view = cluster_nodes(primary).unwrap_or_else(|e| panic!("larder-testkit: {e}"));
        let me = view
            .iter()
            .find(|e| e.port == primary && e.flags.iter().any(|f| f == "myself"))
            .unwrap_or_else(|| panic!("larder-testkit: {primary} is not in its own CLUSTER NODES"))
            .clone();
        assert!(
            me.is_live_primary(),
            "larder-testkit: {primary} is not a primary"
        );
        let replicas: Vec<&NodeEntry> = view
            .iter()
            .filter(|e| e.master_id.as_deref() == Some(me.id.as_str()))
            .collect();
        let heir = view
            .iter()
            .find(|e| e.is_live_primary() && e.id != me.id)
            .expect("larder-testkit: another primary")
            .port;
        let mut dead: Vec<(u16, String)> = vec![(primary, me.id.clone())];
        dead.extend(replicas.iter().map(|r| (r.port, r.id.clone())));
        for (port, _) in &dead {
            self.kill_node(*port);
        }
        let alive: Vec<u16> = self
            .ports()
            .into_iter()
            .filter(|p| self.is_running(*p))
            .collect();
        for port in &alive {
            for (_, id) in &dead {
                let out = self.cli(*port, &["CLUSTER", "FORGET", id]);
                assert_eq!(out, "OK", "larder-testkit: CLUSTER FORGET on {port}: {out}");
            }
        }
        for (start, end) in &me.slots {
            let out = self.cli(
                heir,
                &[
                    "CLUSTER",
                    "ADDSLOTSRANGE",
                    &start.to_string(),
                    &end.to_string(),
                ],
            );
            assert_eq!(out, "OK", "larder-testkit: ADDSLOTSRANGE on {heir}: {out}");
        }
        let deadline = Instant::now() + CONVERGE_TIMEOUT;
        loop {
            let agreed =
                alive
                    .iter()
                    .try_fold(None, |reference: Option<Vec<(u16, u16, u16)>>, p| {
                        check_state_ok(*p)?;
                        let slots =
                            parse_cluster_slots_json(&query(*p, &["--json", "cluster", "slots"])?)?;
                        let mut ranges: Vec<(u16, u16, u16)> =
                            slots.iter().map(|r| (r.start, r.end, r.primary)).collect();
                        ranges.sort_unstable();
                        let covered: Vec<(u16, u16)> = ranges.iter().map(|r| (r.0, r.1)).collect();
                        if !covers_all_slots(&covered) {
                            return Err(format!("node {p}: slots not covered"));
                        }
                        match reference {
                            Some(r) if r != ranges => Err(format!("node {p} disagrees")),
                            _ => Ok(Some(ranges)),
                        }
                    });
            match agreed {
                Ok(_) => return me.slots.clone(),
                Err(reason) if Instant::now() >= deadline => panic!(
                    "larder-testkit: the cluster did not recover from losing a shard: {reason}\n{}",
                    self.log_tails()
                ),
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The last `lines` log lines of one node since its latest (re)start.
    pub fn log_tail(&self, port: u16, lines: usize) -> String {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .map(|n| n.log_tail(lines))
            .unwrap_or_default()
    }

    fn log_tails(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "--- node {} ({}):\n{}",
                    n.port,
                    n.dir().display(),
                    n.log_tail(8)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl std::fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCluster")
            .field("ports", &self.ports())
            .field("dir", &self.dir())
            .finish()
    }
}

fn query(port: u16, args: &[&str]) -> Result<String, String> {
    try_cli(port, None, args, QUERY_TIMEOUT)
}

fn check_state_ok(port: u16) -> Result<(), String> {
    let info = query(port, &["cluster", "info"])?;
    if info.lines().any(|l| l.trim() == "cluster_state:ok") {
        Ok(())
    } else {
        Err(format!(
            "node {port}: {}",
            info.lines().next().unwrap_or("")
        ))
    }
}

fn cluster_nodes(port: u16) -> Result<Vec<NodeEntry>, String> {
    let view = parse_cluster_nodes(&query(port, &["cluster", "nodes"])?);
    if view.is_empty() {
        Err(format!("node {port}: empty CLUSTER NODES"))
    } else {
        Ok(view)
    }
}
