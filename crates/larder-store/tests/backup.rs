//! The dual-write backup on real servers: a private `redis-server` and the backup on
//! PostgreSQL (a fresh database, or a private server where one must be stopped) and on a
//! SQLite file. Nothing is mocked.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder_store::backup::{restore, Backup};
use larder_store::codec::{self, Dtype};
use larder_store::{
    BackedOptions, EntityWrite, FieldSpec, NamespaceSchema, Store, StoreError, StoreOptions,
};
use larder_testkit::{PostgresDb, RedisServer};
use rand::{Rng, SeedableRng};

/// Where a test's backup lives; keeps its database or directory alive.
enum BackupDb {
    Postgres(PostgresDb),
    Sqlite(tempfile::TempDir),
}

impl BackupDb {
    fn url(&self) -> String {
        match self {
            BackupDb::Postgres(db) => db.url(),
            BackupDb::Sqlite(dir) => format!("sqlite://{}", dir.path().join("backup.db").display()),
        }
    }
}

fn backups() -> Vec<BackupDb> {
    vec![
        BackupDb::Postgres(PostgresDb::start()),
        BackupDb::Sqlite(tempfile::tempdir().expect("tempdir")),
    ]
}

fn options(backup: &str) -> StoreOptions {
    StoreOptions {
        backup: Some(backup.parse().expect("backup URL")),
        backed: BackedOptions {
            write_timeout: Duration::from_millis(300),
            ..BackedOptions::default()
        },
        response_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        ..StoreOptions::default()
    }
}

fn schema(ttl_seconds: Option<u64>) -> NamespaceSchema {
    NamespaceSchema {
        fields: BTreeMap::from([
            (
                "clip".to_owned(),
                FieldSpec {
                    dim: 16,
                    dtype: Dtype::F16,
                },
            ),
            (
                "text".to_owned(),
                FieldSpec {
                    dim: 8,
                    dtype: Dtype::F32,
                },
            ),
        ]),
        ttl_seconds,
        fallback: BTreeMap::new(),
        max_entity_bytes: None,
        max_fields: None,
        alias: None,
        deleting: false,
    }
}

fn vector(rng: &mut impl Rng, dtype: Dtype, dim: usize) -> Vec<u8> {
    let values: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
    codec::encode(dtype, dim, &values).expect("encode")
}

fn entity(key: &str, fields: &[(&str, Vec<u8>)]) -> EntityWrite {
    EntityWrite {
        key: key.to_owned(),
        fields: fields
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.clone()))
            .collect(),
    }
}

/// Every field of every key, straight from the store.
async fn snapshot(
    store: &dyn Store,
    ns: &str,
    keys: &[String],
) -> Vec<Option<Vec<(String, Vec<u8>)>>> {
    let mut out = Vec::new();
    for key in keys {
        let mut fields = store.get_entity(ns, key).await.expect("get");
        if let Some(f) = fields.as_mut() {
            f.sort();
        }
        out.push(fields);
    }
    out
}

/// Wait until the backup has nothing left to replay (counted in the DB itself, not the
/// replay task's last count).
async fn drained(url: &str) {
    let backup = Backup::connect(&url.parse().expect("backup URL"))
        .await
        .expect("backup");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let backlog = backup.backlog().await.expect("backlog");
        if backlog == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replay backlog did not drain: {backlog} left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_then_restore_brings_every_entity_back_byte_equal() {
    for backup in backups() {
        let redis = RedisServer::start();
        let store = larder_store::open(
            &redis.url().parse().expect("store URL"),
            &options(&backup.url()),
        )
        .await
        .expect("open");
        store
            .put_schema("users", &schema(None))
            .await
            .expect("schema");
        store
            .put_schema("sessions", &schema(Some(3600)))
            .await
            .expect("schema");
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let keys: Vec<String> = (0..1500).map(|i| format!("user:{i}")).collect();
        for chunk in keys.chunks(500) {
            let writes = chunk
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    let clip = vector(&mut rng, Dtype::F16, 16);
                    if i % 3 == 0 {
                        entity(k, &[("clip", clip)])
                    } else {
                        entity(
                            k,
                            &[("clip", clip), ("text", vector(&mut rng, Dtype::F32, 8))],
                        )
                    }
                })
                .collect();
            store.upsert("users", None, writes).await.expect("upsert");
        }
        // A merge into existing entities, deletes, and a namespace with a TTL.
        let merge = (0..100)
            .map(|i| entity(&keys[i * 3], &[("text", vector(&mut rng, Dtype::F32, 8))]))
            .collect();
        store.upsert("users", None, merge).await.expect("merge");
        for key in &keys[1000..1010] {
            store.delete_entity("users", key).await.expect("delete");
        }
        // Keys that are not valid Rust identifiers or even printable: any UTF-8, NUL included.
        let odd = vec!["이사:준비".to_owned(), "nul\0key".to_owned()];
        let writes = odd
            .iter()
            .map(|k| entity(k, &[("clip", vector(&mut rng, Dtype::F16, 16))]))
            .collect();
        store
            .upsert("sessions", Some(3600), writes)
            .await
            .expect("upsert with ttl");
        let before = snapshot(store.as_ref(), "users", &keys).await;
        let before_odd = snapshot(store.as_ref(), "sessions", &odd).await;
        assert!(before[1000].is_none(), "deleted");

        redis.cli(&["FLUSHALL"]);
        assert!(store
            .get_entity("users", &keys[0])
            .await
            .expect("get")
            .is_none());

        let raw = larder_store::open_raw(
            &redis.url().parse().expect("store URL"),
            &StoreOptions::default(),
        )
        .await
        .expect("open raw");
        let backup_db = Backup::connect(&backup.url().parse().expect("backup URL"))
            .await
            .expect("backup");
        let mut seen = 0;
        let restored = restore(&backup_db, raw.as_ref(), None, |n| seen = n)
            .await
            .expect("restore");
        assert_eq!(restored, 1500 - 10 + 2);
        assert_eq!(seen, restored, "progress reached the total");
        assert_eq!(snapshot(raw.as_ref(), "users", &keys).await, before);
        assert_eq!(snapshot(raw.as_ref(), "sessions", &odd).await, before_odd);
        assert_eq!(
            raw.get_schema("sessions").await.expect("schema"),
            Some(schema(Some(3600)))
        );
        let mut names = raw.list_namespaces().await.expect("list");
        names.sort();
        assert_eq!(names, vec!["sessions", "users"]);
        // The TTL came back as the same absolute expiry (within the test's runtime).
        let ttl: i64 = redis
            .cli(&["TTL", "larder:e:sessions:이사:준비"])
            .parse()
            .expect("ttl");
        assert!((3500..=3600).contains(&ttl), "ttl {ttl}");
        assert_eq!(redis.cli(&["TTL", "larder:e:users:user:1"]), "-1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_redis_cannot_take_are_queued_and_replayed_in_order() {
    for backup in backups() {
        let redis = RedisServer::start();
        let store = larder_store::open(
            &redis.url().parse().expect("store URL"),
            &options(&backup.url()),
        )
        .await
        .expect("open");
        store
            .put_schema("users", &schema(None))
            .await
            .expect("schema");
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let (c1, t1, t2) = (
            vector(&mut rng, Dtype::F16, 16),
            vector(&mut rng, Dtype::F32, 8),
            vector(&mut rng, Dtype::F32, 8),
        );
        store
            .upsert("users", None, vec![entity("gone", &[("text", t1.clone())])])
            .await
            .expect("upsert");

        // Redis stops answering (its data stays): every write below is refused by nothing.
        redis.cli(&["CLIENT", "PAUSE", "2500", "ALL"]);
        let paused = Instant::now();
        store
            .upsert(
                "users",
                None,
                vec![entity("a", &[("clip", c1.clone()), ("text", t1.clone())])],
            )
            .await
            .expect("first write, queued");
        store
            .upsert("users", None, vec![entity("a", &[("text", t2.clone())])])
            .await
            .expect("second write, queued behind the first");
        store
            .delete_entity("users", "gone")
            .await
            .expect("delete, queued");
        let mut wider = schema(None);
        wider.fields.insert(
            "image".into(),
            FieldSpec {
                dim: 4,
                dtype: Dtype::I8,
            },
        );
        store
            .put_schema("users", &wider)
            .await
            .expect("schema change, queued");
        let status = store.backup_status().await.expect("backup");
        assert!(status.up);
        assert!(
            paused.elapsed() < Duration::from_millis(2500),
            "the writes did not wait for Redis"
        );
        let queued = Backup::connect(&backup.url().parse().expect("backup URL"))
            .await
            .expect("backup")
            .backlog()
            .await
            .expect("backlog");
        assert_eq!(
            queued, 3,
            "key a, the deleted key and the schema wait for Redis"
        );

        drained(&backup.url()).await;
        let mut a = store
            .get_entity("users", "a")
            .await
            .expect("get")
            .expect("a exists");
        a.sort();
        assert_eq!(
            a,
            vec![
                ("clip".to_owned(), c1.clone()),
                ("text".to_owned(), t2.clone())
            ]
        );
        assert!(store
            .get_entity("users", "gone")
            .await
            .expect("get")
            .is_none());
        assert_eq!(
            store.get_schema("users").await.expect("schema"),
            Some(wider)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_queue_survives_a_restart() {
    for backup in backups() {
        let redis = RedisServer::start();
        let url = backup.url();
        let first = larder_store::open(&redis.url().parse().expect("store URL"), &options(&url))
            .await
            .expect("open");
        first
            .put_schema("users", &schema(None))
            .await
            .expect("schema");
        let value = vector(&mut rand::rng(), Dtype::F32, 8);
        redis.cli(&["CLIENT", "PAUSE", "1500", "ALL"]);
        first
            .upsert("users", None, vec![entity("k", &[("text", value.clone())])])
            .await
            .expect("queued");
        // The server stops before Redis answers again: its replay task goes with it.
        drop(first);
        tokio::time::sleep(Duration::from_millis(1700)).await;
        let raw = larder_store::open_raw(
            &redis.url().parse().expect("store URL"),
            &StoreOptions::default(),
        )
        .await
        .expect("raw");
        assert!(
            raw.get_entity("users", "k").await.expect("get").is_none(),
            "not applied yet"
        );

        let _second = larder_store::open(&redis.url().parse().expect("store URL"), &options(&url))
            .await
            .expect("reopen");
        drained(&url).await;
        assert_eq!(
            raw.get_entity("users", "k").await.expect("get"),
            Some(vec![("text".to_owned(), value)])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_refused_while_the_backup_is_down_and_reads_carry_on() {
    let pg = PostgresDb::start_private();
    let redis = RedisServer::start();
    let store = larder_store::open(
        &redis.url().parse().expect("store URL"),
        &options(&pg.url()),
    )
    .await
    .expect("open");
    store
        .put_schema("users", &schema(None))
        .await
        .expect("schema");
    let v1 = vector(&mut rand::rng(), Dtype::F32, 8);
    let v2 = vector(&mut rand::rng(), Dtype::F32, 8);
    store
        .upsert("users", None, vec![entity("k", &[("text", v1.clone())])])
        .await
        .expect("upsert");

    pg.stop_server();
    let started = Instant::now();
    let refused = store
        .upsert("users", None, vec![entity("k", &[("text", v2.clone())])])
        .await
        .expect_err("no backup, no write");
    assert!(
        matches!(refused, StoreError::BackupUnavailable(_)),
        "{refused:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "refused within the pool's acquire timeout"
    );
    assert!(
        refused.to_string().contains("writes are refused"),
        "{refused}"
    );
    assert!(!store.backup_status().await.expect("status").up);
    // Nothing of the refused write reached Redis, and reads go on.
    let rows = store
        .lookup("users", &["k".to_owned()], &["text".to_owned()])
        .await
        .expect("lookup");
    assert_eq!(rows, vec![Some(vec![Some(v1.into())])]);

    pg.start_server();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store
        .upsert("users", None, vec![entity("k", &[("text", v2.clone())])])
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "writes resume when the backup is back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        store.get_entity("users", "k").await.expect("get"),
        Some(vec![("text".to_owned(), v2)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_of_one_key_leave_the_last_committed_write_in_redis() {
    for backup in backups() {
        let redis = RedisServer::start();
        // Two servers sharing one Redis and one backup.
        let a = larder_store::open(
            &redis.url().parse().expect("store URL"),
            &options(&backup.url()),
        )
        .await
        .expect("a");
        let b = larder_store::open(
            &redis.url().parse().expect("store URL"),
            &options(&backup.url()),
        )
        .await
        .expect("b");
        a.put_schema("users", &schema(None)).await.expect("schema");
        let write = |store: Arc<dyn Store>, seed: u64| async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            for _ in 0..150 {
                let v = vector(&mut rng, Dtype::F32, 8);
                store
                    .upsert("users", None, vec![entity("hot", &[("text", v)])])
                    .await
                    .expect("upsert");
            }
        };
        tokio::join!(write(a.clone(), 1), write(b.clone(), 2));
        drained(&backup.url()).await;
        let backup_db = Backup::connect(&backup.url().parse().expect("backup URL"))
            .await
            .expect("backup");
        let mut batches = backup_db.entities(Some("users".into()), 10);
        let batch = batches.recv().await.expect("one batch").expect("read");
        let (_, last) = batch
            .into_iter()
            .find(|(_, s)| s.key == "hot")
            .expect("hot");
        assert_eq!(
            a.get_entity("users", "hot").await.expect("get"),
            Some(last.fields),
            "Redis holds the write the backup committed last"
        );
    }
}
