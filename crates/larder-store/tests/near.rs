//! The near cache on a real redis-server: two stores on one Redis stand for two Larder
//! processes. Coherence after writes, expiry, single flight and Redis restarts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder_store::codec::{self, Dtype};
use larder_store::near::{NearCache, NearCacheOptions};
use larder_store::{EntityWrite, FieldSpec, NamespaceSchema, Row, Store, StoreOptions};
use larder_testkit::{command_calls, RedisServer};

/// A store with a near cache, as `larder_store::open` builds it for a `near_cache` config,
/// once its invalidation subscription is up (it bypasses the cache until then).
async fn open(server: &RedisServer, ttl: Duration) -> Arc<dyn Store> {
    let raw = larder_store::open_raw(
        &server.url().parse().expect("URL"),
        &StoreOptions::default(),
    )
    .await
    .expect("open");
    let near = Arc::new(NearCache::new(
        raw,
        NearCacheOptions {
            max_bytes: 64 * 1024 * 1024,
            ttl,
        },
    ));
    let started = Instant::now();
    while !near.is_live() {
        assert!(started.elapsed() < Duration::from_secs(5), "subscribed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    near
}

fn schema(ttl_seconds: Option<u64>) -> NamespaceSchema {
    NamespaceSchema {
        fields: BTreeMap::from([(
            "v".to_owned(),
            FieldSpec {
                dim: 4,
                dtype: Dtype::F32,
            },
        )]),
        ttl_seconds,
        ..NamespaceSchema::default()
    }
}

fn write(key: &str, value: f32) -> EntityWrite {
    EntityWrite {
        key: key.to_owned(),
        fields: vec![(
            "v".to_owned(),
            codec::encode(Dtype::F32, 4, &[value; 4]).expect("finite"),
        )],
    }
}

/// The first value of the row, `None` when the entity is absent.
fn first(row: &Row) -> Option<f32> {
    let bytes = row.as_ref()?.first()?.as_ref()?;
    Some(codec::decode(Dtype::F32, 4, bytes).expect("f32")[0])
}

/// Read until the read is a cache hit: a writer's own announcement comes back to it over
/// pub/sub shortly after the write and drops what was cached meanwhile.
async fn cached_value(store: &Arc<dyn Store>, key: &str) -> Option<f32> {
    let started = Instant::now();
    loop {
        let (seen, cached) = value(store, key).await;
        if cached == 1 {
            return seen;
        }
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{key} was not cached within 500 ms"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn value(store: &Arc<dyn Store>, key: &str) -> (Option<f32>, usize) {
    let looked = store
        .lookup_counted("v", &[key.to_owned()], &["v".to_owned()])
        .await
        .expect("lookup");
    (first(&looked.rows[0]), looked.cached)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_process_reaches_the_other_within_100_ms() {
    let server = RedisServer::start();
    let a = open(&server, Duration::from_secs(60)).await;
    let b = open(&server, Duration::from_secs(60)).await;
    a.put_schema("v", &schema(None)).await.expect("schema");
    a.upsert("v", None, vec![write("k", 0.0)])
        .await
        .expect("put");
    assert_eq!(value(&b, "k").await, (Some(0.0), 0), "first read misses");
    assert_eq!(cached_value(&b, "k").await, Some(0.0), "later reads hit");

    let mut slowest = Duration::ZERO;
    for round in 1..=20 {
        let v = round as f32;
        a.upsert("v", None, vec![write("k", v)]).await.expect("put");
        // The writer reads its own write at once.
        assert_eq!(value(&a, "k").await.0, Some(v), "round {round}: writer");
        let acked = Instant::now();
        loop {
            let (seen, _) = value(&b, "k").await;
            if seen == Some(v) {
                break;
            }
            assert!(
                acked.elapsed() < Duration::from_millis(100),
                "round {round}: the other process still serves {seen:?} 100 ms after the write"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        slowest = slowest.max(acked.elapsed());
        // ...and caches the new value again.
        assert_eq!(cached_value(&b, "k").await, Some(v), "round {round}");
    }
    eprintln!("slowest propagation over 20 writes: {slowest:?}");

    a.delete_entity("v", "k").await.expect("delete");
    let acked = Instant::now();
    while value(&b, "k").await.0.is_some() {
        assert!(acked.elapsed() < Duration::from_millis(100), "delete seen");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_never_outlive_the_entity_ttl() {
    let server = RedisServer::start();
    let store = open(&server, Duration::from_secs(60)).await;
    store
        .put_schema("v", &schema(Some(2)))
        .await
        .expect("schema");
    store
        .upsert("v", Some(2), vec![write("short", 1.0)])
        .await
        .expect("put");
    let written = Instant::now();
    assert_eq!(cached_value(&store, "short").await, Some(1.0));
    tokio::time::sleep(
        (written + Duration::from_millis(2050)).saturating_duration_since(Instant::now()),
    )
    .await;
    assert_eq!(
        value(&store, "short").await.0,
        None,
        "Redis expired it; the cache must not serve it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_fetch_each_key_once() {
    let server = RedisServer::start();
    let writer = open(&server, Duration::from_secs(60)).await;
    let reader = open(&server, Duration::from_secs(60)).await;
    writer.put_schema("v", &schema(None)).await.expect("schema");
    let keys: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
    writer
        .upsert("v", None, keys.iter().map(|k| write(k, 2.0)).collect())
        .await
        .expect("put");
    let before = command_calls(server.port(), "hmget");
    let lookups: Vec<_> = (0..8)
        .map(|_| {
            let reader = reader.clone();
            let keys = keys.clone();
            tokio::spawn(async move {
                reader
                    .lookup_counted("v", &keys, &["v".to_owned()])
                    .await
                    .expect("lookup")
            })
        })
        .collect();
    for lookup in lookups {
        let looked = lookup.await.expect("task");
        assert!(looked.rows.iter().all(|row| first(row) == Some(2.0)));
    }
    assert_eq!(
        command_calls(server.port(), "hmget") - before,
        1000,
        "8 concurrent lookups of the same 1000 cold keys fetch each key once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_never_leaves_a_stale_value_served() {
    let mut server = RedisServer::start();
    let store = open(&server, Duration::from_secs(60)).await;
    store.put_schema("v", &schema(None)).await.expect("schema");
    store
        .upsert("v", None, vec![write("k", 7.0)])
        .await
        .expect("put");
    assert_eq!(cached_value(&store, "k").await, Some(7.0));

    // The test server keeps nothing on disk: after the restart the entity is gone, so any
    // answer of 7.0 afterwards came from a stale cache.
    tokio::task::block_in_place(|| server.restart());
    let restarted = Instant::now();
    let mut answered = false;
    while restarted.elapsed() < Duration::from_secs(5) {
        if let Ok(looked) = store
            .lookup_counted("v", &["k".to_owned()], &["v".to_owned()])
            .await
        {
            assert_eq!(
                first(&looked.rows[0]),
                None,
                "served the value Redis lost in the restart"
            );
            answered = true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(answered, "the store answered again after the restart");
    // And it caches again once the subscription is back.
    store.put_schema("v", &schema(None)).await.expect("schema");
    store
        .upsert("v", None, vec![write("k", 8.0)])
        .await
        .expect("put");
    assert_eq!(cached_value(&store, "k").await, Some(8.0));
}
