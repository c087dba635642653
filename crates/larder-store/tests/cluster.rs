//! Redis Cluster specifics on a real 3-primary/3-replica cluster: key spread, one pipelined
//! round trip per primary for a batch lookup, failover, and the view-invalidation subscription
//! moving to another node.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use larder_store::codec::{self, Dtype};
use larder_store::redis_backend::RedisStore;
use larder_store::{EntityWrite, FieldSpec, Invalidation, NamespaceSchema, Store, StoreOptions};
use larder_testkit::{command_calls, RedisCluster};

async fn loaded(cluster: &RedisCluster, n: usize) -> (RedisStore, Vec<String>) {
    let store = RedisStore::connect_cluster(
        &cluster.url().parse().expect("cluster URL"),
        &StoreOptions::default(),
    )
    .await
    .expect("open cluster store");
    let schema = NamespaceSchema {
        fields: BTreeMap::from([(
            "v".to_owned(),
            FieldSpec {
                dim: 8,
                dtype: Dtype::F32,
            },
        )]),
        ttl_seconds: None,
        fallback: BTreeMap::new(),
        max_entity_bytes: None,
        max_fields: None,
        alias: None,
        deleting: false,
    };
    store.put_schema("items", &schema).await.expect("schema");
    let keys: Vec<String> = (0..n).map(|i| format!("item:{i}")).collect();
    for chunk in keys.chunks(1000) {
        let writes = chunk
            .iter()
            .map(|k| EntityWrite {
                key: k.clone(),
                fields: vec![(
                    "v".into(),
                    codec::encode(Dtype::F32, 8, &[1.0; 8]).expect("enc"),
                )],
            })
            .collect();
        store.upsert("items", None, writes).await.expect("upsert");
    }
    (store, keys)
}

fn dbsize(cluster: &RedisCluster, port: u16) -> i64 {
    cluster.cli(port, &["DBSIZE"]).parse().expect("dbsize")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_spread_and_a_batch_costs_one_round_trip_per_primary() {
    let cluster = RedisCluster::start();
    let (store, keys) = loaded(&cluster, 10_000).await;

    // 10k entities spread across the 3 primaries within ±15% of the mean.
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3);
    let sizes: Vec<i64> = primaries.iter().map(|p| dbsize(&cluster, *p)).collect();
    let total: i64 = sizes.iter().sum();
    assert!(total >= 10_000, "all entities stored: {sizes:?}");
    let mean = total as f64 / 3.0;
    for size in &sizes {
        assert!(
            (*size as f64 - mean).abs() <= 0.15 * mean,
            "uneven spread {sizes:?}"
        );
    }

    // A 1,000-key lookup: one pipeline per primary, each HMGET served by its owner only.
    let before_calls: Vec<u64> = primaries
        .iter()
        .map(|p| command_calls(*p, "hmget"))
        .collect();
    let before_trips = store.round_trips();
    let batch = &keys[..1000];
    let rows = store
        .lookup("items", batch, &["v".to_owned()])
        .await
        .expect("lookup");
    let trips = store.round_trips() - before_trips;
    assert!(rows.iter().all(|r| r.is_some()), "every key found");
    let calls: Vec<u64> = primaries
        .iter()
        .zip(&before_calls)
        .map(|(p, before)| command_calls(*p, "hmget") - before)
        .collect();
    assert_eq!(
        calls.iter().sum::<u64>(),
        1000,
        "one HMGET per key, no retries: {calls:?}"
    );
    assert!(
        calls.iter().all(|c| *c > 250),
        "every primary served its share: {calls:?}"
    );
    for replica in cluster.replicas() {
        assert_eq!(command_calls(replica, "hmget"), 0, "replicas are not read");
    }
    assert_eq!(trips, 3, "one round trip per primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_recover_after_a_primary_fails_over() {
    let mut cluster = RedisCluster::start();
    let (store, keys) = loaded(&cluster, 300).await;
    let victim = cluster.primaries()[0];
    cluster.kill_node(victim);
    assert!(
        cluster.wait_healthy(Duration::from_secs(30)),
        "replica promoted"
    );
    // Data written before the kill was replicated (asynchronously); wait until the promoted
    // replica answers for every key, as a client would retry.
    let mut found = 0;
    for _ in 0..100 {
        match store.lookup("items", &keys, &["v".to_owned()]).await {
            Ok(rows) => {
                found = rows.iter().filter(|r| r.is_some()).count();
                if found == keys.len() {
                    break;
                }
            }
            Err(error) => eprintln!("lookup during failover: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(found, keys.len(), "every key answered after failover");
    // The old primary comes back (as a replica); the same store keeps answering.
    cluster.restart_node(victim);
    assert!(
        cluster.wait_healthy(Duration::from_secs(30)),
        "node rejoined"
    );
    let rows = store
        .lookup("items", &keys, &["v".to_owned()])
        .await
        .expect("lookup after the node rejoined");
    assert!(rows.iter().all(|r| r.is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_follow_moved_slots_while_resharding() {
    let cluster = RedisCluster::start();
    let (store, keys) = loaded(&cluster, 1000).await;
    // Move 2,000 slots from one primary to another behind the store's back: its slot map is
    // now stale, so its pipelines meet MOVED and must be re-routed.
    let primaries = cluster.primaries();
    let from = cluster.cli(primaries[0], &["CLUSTER", "MYID"]);
    let to = cluster.cli(primaries[1], &["CLUSTER", "MYID"]);
    let output = std::process::Command::new("redis-cli")
        .args([
            "--cluster",
            "reshard",
            &format!("127.0.0.1:{}", primaries[0]),
        ])
        .args(["--cluster-from", &from, "--cluster-to", &to])
        .args(["--cluster-slots", "2000", "--cluster-yes"])
        .output()
        .expect("run redis-cli --cluster reshard");
    assert!(
        output.status.success(),
        "reshard: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let before = store.round_trips();
    let rows = store
        .lookup("items", &keys, &["v".to_owned()])
        .await
        .expect("lookup");
    assert!(
        rows.iter().all(|r| r.is_some()),
        "every key found after resharding"
    );
    let trips = store.round_trips() - before;
    assert!(
        trips <= 12,
        "MOVED keys are re-sent as batches to their new owner, not key by key: {trips} trips"
    );
    // Once every node agrees on the new owners (gossip), the store's slot map converges and a
    // batch is one trip per primary again.
    assert!(cluster.wait_healthy(Duration::from_secs(30)), "nodes agree");
    let mut trips = u64::MAX;
    for _ in 0..10 {
        let before = store.round_trips();
        let rows = store
            .lookup("items", &keys, &["v".to_owned()])
            .await
            .expect("lookup");
        assert!(rows.iter().all(|r| r.is_some()));
        trips = store.round_trips() - before;
        if trips == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(trips, 3, "back to one trip per primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_follow_ask_during_a_slot_migration() {
    let cluster = RedisCluster::start();
    let (store, keys) = loaded(&cluster, 200).await;
    // Put one key's slot half-way through a migration, as `redis-cli --cluster reshard` does:
    // the source MIGRATING, the target IMPORTING, and the key already moved.
    let redis_key = "larder:e:items:item:0";
    let primaries = cluster.primaries();
    let slot = cluster.cli(primaries[0], &["CLUSTER", "KEYSLOT", redis_key]);
    let source = *primaries
        .iter()
        .find(|p| cluster.cli(**p, &["CLUSTER", "COUNTKEYSINSLOT", &slot]) != "0")
        .expect("some primary holds the key");
    let target = *primaries
        .iter()
        .find(|p| **p != source)
        .expect("another primary");
    let source_id = cluster.cli(source, &["CLUSTER", "MYID"]);
    let target_id = cluster.cli(target, &["CLUSTER", "MYID"]);
    cluster.cli(
        target,
        &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &source_id],
    );
    cluster.cli(
        source,
        &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target_id],
    );
    let moved = cluster.cli(
        source,
        &[
            "MIGRATE",
            "127.0.0.1",
            &target.to_string(),
            "",
            "0",
            "5000",
            "KEYS",
            redis_key,
        ],
    );
    assert_eq!(moved, "OK");

    let before = store.round_trips();
    let rows = store
        .lookup("items", &keys, &["v".to_owned()])
        .await
        .expect("lookup during the migration");
    assert!(
        rows.iter().all(|r| r.is_some()),
        "the migrated key answers via ASK"
    );
    assert!(
        store.round_trips() - before <= 5,
        "ASK is followed for the one key only"
    );
    assert_eq!(
        command_calls(target, "asking"),
        1,
        "one ASKING, on the importing node"
    );
}

/// Nodes holding a subscription to the invalidation channel (classic pub/sub counts are local
/// to each node).
fn subscribed_nodes(cluster: &RedisCluster) -> Vec<u16> {
    cluster
        .ports()
        .into_iter()
        .filter(|p| cluster.is_running(*p))
        .filter(|p| {
            cluster.cli(*p, &["PUBSUB", "NUMSUB", "larder:invalidate"]) != "larder:invalidate\n0"
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_move_to_another_node_when_theirs_dies() {
    let mut cluster = RedisCluster::start();
    let options = StoreOptions::default();
    let writer =
        RedisStore::connect_cluster(&cluster.url().parse().expect("cluster URL"), &options)
            .await
            .expect("writer");
    let listener =
        RedisStore::connect_cluster(&cluster.url().parse().expect("cluster URL"), &options)
            .await
            .expect("listener");
    let mut heard = listener.invalidations().await.expect("subscribe");

    writer.put_view("이전", b"1").await.expect("put");
    let first = tokio::time::timeout(Duration::from_secs(2), heard.next())
        .await
        .expect("announced within 2 s");
    assert_eq!(first, Some(Invalidation::Category("이전".into())));

    let subscribed = subscribed_nodes(&cluster);
    assert_eq!(subscribed.len(), 1, "one subscription per store");
    cluster.kill_node(subscribed[0]);
    let after_kill = tokio::time::timeout(Duration::from_secs(10), heard.next())
        .await
        .expect("noticed the dead node within 10 s");
    assert_eq!(after_kill, Some(Invalidation::Lost));
    let resubscribed = tokio::time::timeout(Duration::from_secs(10), heard.next())
        .await
        .expect("resubscribed within 10 s");
    assert_eq!(resubscribed, Some(Invalidation::All));
    let now = subscribed_nodes(&cluster);
    assert_eq!(now.len(), 1, "resubscribed on one live node");
    assert_ne!(now[0], subscribed[0]);

    // If the dead node was a primary, writes to its slots wait for its replica's promotion.
    let mut written = false;
    for _ in 0..150 {
        if writer.put_view("이후", b"2").await.is_ok() {
            written = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(written, "views can be written after the failover");
    let next = tokio::time::timeout(Duration::from_secs(2), heard.next())
        .await
        .expect("announced within 2 s");
    assert_eq!(next, Some(Invalidation::Category("이후".into())));
}
