//! Tests for [`RedisCluster`] against real redis-server processes.

use std::thread;
use std::time::{Duration, Instant};

use larder_testkit::{command_calls, RedisCluster};

#[test]
fn cluster_starts_with_three_primaries_and_three_replicas() {
    let t = Instant::now();
    let cluster = RedisCluster::start();
    eprintln!("cluster started in {:?}", t.elapsed());
    let ports = cluster.ports();
    assert_eq!(ports.len(), 6);
    assert!(!ports.contains(&6379));
    let primaries = cluster.primaries();
    let replicas = cluster.replicas();
    assert_eq!(primaries.len(), 3, "{primaries:?}");
    assert_eq!(replicas.len(), 3, "{replicas:?}");
    let mut all: Vec<u16> = primaries.iter().chain(&replicas).copied().collect();
    all.sort_unstable();
    let mut sorted = ports.clone();
    sorted.sort_unstable();
    assert_eq!(all, sorted);
    let seeds = cluster.seeds();
    assert_eq!(seeds[0], format!("127.0.0.1:{}", ports[0]));
    assert_eq!(
        cluster.url(),
        format!("redis-cluster://{}", seeds.join(","))
    );
    for p in &ports {
        assert!(cluster
            .cli(*p, &["cluster", "info"])
            .contains("cluster_state:ok"));
    }
    assert!(cluster.wait_healthy(Duration::from_secs(1)));

    // A SET through any node (following MOVED) executes once, on the owning primary.
    let before: u64 = primaries.iter().map(|p| command_calls(*p, "set")).sum();
    assert_eq!(before, 0);
    assert_eq!(cluster.cli(replicas[0], &["-c", "set", "k", "v"]), "OK");
    let counts: Vec<u64> = primaries.iter().map(|p| command_calls(*p, "set")).collect();
    assert_eq!(counts.iter().sum::<u64>(), 1, "{counts:?}");
    let slot: u16 = cluster
        .cli(ports[0], &["cluster", "keyslot", "k"])
        .parse()
        .expect("keyslot is a number");
    let owner = primaries[counts
        .iter()
        .position(|c| *c == 1)
        .expect("one primary counted")];
    let owner_ranges = cluster.cli(owner, &["cluster", "nodes"]);
    let mine = owner_ranges
        .lines()
        .find(|l| l.contains("myself"))
        .expect("myself line");
    assert!(
        mine.split_whitespace()
            .skip(8)
            .any(|r| match r.split_once('-') {
                Some((a, b)) =>
                    (a.parse::<u16>().unwrap_or(0)..=b.parse().unwrap_or(0)).contains(&slot),
                None => r.parse::<u16>().ok() == Some(slot),
            }),
        "slot {slot} not owned by {owner}: {mine}"
    );
    assert_eq!(cluster.primary_command_calls("set"), 1);
    assert_eq!(cluster.cli(ports[5], &["-c", "get", "k"]), "v");
}

#[test]
fn failover_promotes_a_replica_and_the_old_primary_rejoins() {
    let mut cluster = RedisCluster::start();
    let victim = cluster.primaries()[0];
    cluster.kill_node(victim);
    assert!(!cluster.is_running(victim));
    let t = Instant::now();
    assert!(
        cluster.wait_healthy(Duration::from_secs(15)),
        "no failover within 15 s: {:?}",
        cluster.healthy()
    );
    eprintln!("failover took {:?}", t.elapsed());
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3, "{primaries:?}");
    assert!(!primaries.contains(&victim));
    let seed = primaries[0];
    assert_eq!(cluster.cli(seed, &["-c", "set", "after", "failover"]), "OK");

    let t = Instant::now();
    cluster.restart_node(victim);
    assert!(cluster.is_running(victim));
    assert!(
        cluster.wait_healthy(Duration::from_secs(20)),
        "old primary did not rejoin: {:?}",
        cluster.healthy()
    );
    eprintln!("rejoin took {:?}", t.elapsed());
    assert!(
        cluster.replicas().contains(&victim),
        "{:?}",
        cluster.replicas()
    );
    assert_eq!(cluster.primaries(), primaries);
    assert_eq!(cluster.cli(victim, &["-c", "get", "after"]), "failover");
}

#[test]
fn two_clusters_in_parallel_threads() {
    let handles: Vec<_> = (0..2)
        .map(|i| {
            thread::spawn(move || {
                let cluster = RedisCluster::start();
                let p = cluster.ports()[0];
                assert_eq!(
                    cluster.cli(p, &["-c", "set", "which", &i.to_string()]),
                    "OK"
                );
                assert_eq!(cluster.cli(p, &["-c", "get", "which"]), i.to_string());
                assert_eq!(cluster.primaries().len(), 3);
                cluster.ports()
            })
        })
        .collect();
    let a = handles
        .into_iter()
        .map(|h| h.join().expect("cluster thread"))
        .collect::<Vec<_>>();
    assert!(a[0].iter().all(|p| !a[1].contains(p)));
}

#[test]
fn drop_kills_all_nodes() {
    let cluster = RedisCluster::start();
    let ports = cluster.ports();
    drop(cluster);
    for p in ports {
        assert!(std::net::TcpStream::connect(("127.0.0.1", p)).is_err());
    }
}
