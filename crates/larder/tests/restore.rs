//! `larder restore` on a real 3x2 cluster with the backup on PostgreSQL: after a FLUSHALL of
//! every primary, and after losing a primary together with its replica (and re-creating their
//! slots on another primary), every entity comes back byte-equal.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;

use larder_store::codec::{self, Dtype};
use larder_store::{EntityWrite, FieldSpec, NamespaceSchema, Store, StoreOptions};
use larder_testkit::{PostgresDb, RedisCluster};
use rand::{Rng, SeedableRng};

type Snapshot = Vec<Option<Vec<(String, Vec<u8>)>>>;

async fn snapshot(store: &dyn Store, keys: &[String]) -> Snapshot {
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let mut fields = store.get_entity("emb", key).await.expect("get");
        if let Some(f) = fields.as_mut() {
            f.sort();
        }
        out.push(fields);
    }
    out
}

fn restore(cluster: &RedisCluster, backup: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(["restore", "--store", &cluster.url(), "--backup", backup])
        .env_remove("LARDER_STORE")
        .env_remove("LARDER_BACKUP")
        .output()
        .expect("run larder restore");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "restore failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .trim_end()
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_after_flushall_and_after_losing_a_whole_shard() {
    let pg = PostgresDb::start();
    let mut cluster = RedisCluster::start();
    let options = StoreOptions {
        backup: Some(pg.url().parse().expect("backup URL")),
        ..StoreOptions::default()
    };
    let store: Arc<dyn Store> =
        larder_store::open(&cluster.url().parse().expect("store URL"), &options)
            .await
            .expect("open");
    let schema = NamespaceSchema {
        fields: BTreeMap::from([
            (
                "clip".to_owned(),
                FieldSpec {
                    dim: 64,
                    dtype: Dtype::F16,
                },
            ),
            (
                "q".to_owned(),
                FieldSpec {
                    dim: 32,
                    dtype: Dtype::I8,
                },
            ),
        ]),
        ttl_seconds: None,
        fallback: BTreeMap::new(),
        max_entity_bytes: None,
        max_fields: None,
        alias: None,
        deleting: false,
    };
    store.put_schema("emb", &schema).await.expect("schema");
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let keys: Vec<String> = (0..3000).map(|i| format!("k:{i}")).collect();
    for chunk in keys.chunks(1000) {
        let writes = chunk
            .iter()
            .map(|key| {
                let clip: Vec<f32> = (0..64).map(|_| rng.random_range(-1.0..1.0)).collect();
                let q: Vec<f32> = (0..32).map(|_| rng.random_range(-5.0..5.0)).collect();
                EntityWrite {
                    key: key.clone(),
                    fields: vec![
                        (
                            "clip".into(),
                            codec::encode(Dtype::F16, 64, &clip).expect("enc"),
                        ),
                        ("q".into(), codec::encode(Dtype::I8, 32, &q).expect("enc")),
                    ],
                }
            })
            .collect();
        store.upsert("emb", None, writes).await.expect("upsert");
    }
    let before = snapshot(store.as_ref(), &keys).await;
    assert!(before.iter().all(Option::is_some));

    for port in cluster.primaries() {
        cluster.cli(port, &["FLUSHALL"]);
    }
    assert!(
        store.get_schema("emb").await.expect("schema").is_none(),
        "flushed"
    );
    let line = restore(&cluster, &pg.url());
    assert!(
        line.starts_with("restored 3000 entities in ") && line.ends_with(" entities/s)"),
        "{line}"
    );
    assert_eq!(
        snapshot(store.as_ref(), &keys).await,
        before,
        "byte-equal after FLUSHALL"
    );
    assert_eq!(store.get_schema("emb").await.expect("schema"), Some(schema));

    // A store with a backup heals a lost primary by itself: it re-applies the writes of the
    // last `failover_window` to the failed slots (how many of ours fall in that window depends
    // on the machine's speed). This part is about `larder restore`, so close it first.
    drop(store);

    // A primary and its replica die together: their slots go to another primary, empty.
    let lost = cluster.lose_shard(cluster.primaries()[0]);
    assert!(!lost.is_empty());
    let reopened: Arc<dyn Store> = larder_store::open_raw(
        &cluster.url().parse().expect("store URL"),
        &StoreOptions::default(),
    )
    .await
    .expect("reopen");
    let missing = snapshot(reopened.as_ref(), &keys)
        .await
        .iter()
        .filter(|e| e.is_none())
        .count();
    assert!(
        missing > 500,
        "a third of the keys went with the shard: {missing}"
    );
    let line = restore(&cluster, &pg.url());
    assert!(line.starts_with("restored 3000 entities"), "{line}");
    assert_eq!(
        snapshot(reopened.as_ref(), &keys).await,
        before,
        "byte-equal after losing a shard"
    );
}
