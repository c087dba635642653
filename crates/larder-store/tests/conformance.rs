//! One behaviour, three backends: the same checks run against the embedded store (file and
//! memory), a real standalone redis-server and a real 3-primary/3-replica Redis Cluster.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use larder_store::codec::{self, Dtype};
use larder_store::{EntityWrite, FieldSpec, NamespaceSchema, Store, StoreOptions};
use larder_testkit::{RedisCluster, RedisServer};

fn schema(ttl: Option<u64>) -> NamespaceSchema {
    NamespaceSchema {
        fields: BTreeMap::from([
            (
                "clip".to_owned(),
                FieldSpec {
                    dim: 4,
                    dtype: Dtype::F16,
                },
            ),
            (
                "text".to_owned(),
                FieldSpec {
                    dim: 3,
                    dtype: Dtype::F32,
                },
            ),
        ]),
        ttl_seconds: ttl,
        fallback: BTreeMap::new(),
    }
}

fn write(key: &str, fields: &[(&str, Vec<u8>)]) -> EntityWrite {
    EntityWrite {
        key: key.to_owned(),
        fields: fields
            .iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect(),
    }
}

fn f32s(values: &[f32]) -> Vec<u8> {
    codec::encode(Dtype::F32, values.len(), values).expect("finite")
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Every behaviour the API relies on.
async fn conformance(store: Arc<dyn Store>) {
    store.ping().await.expect("ping");

    // Schemas.
    assert_eq!(store.get_schema("users").await.expect("get"), None);
    store.put_schema("users", &schema(None)).await.expect("put");
    store
        .put_schema("users2", &schema(Some(60)))
        .await
        .expect("put");
    assert_eq!(
        store.get_schema("users").await.expect("get"),
        Some(schema(None))
    );
    let mut names = store.list_namespaces().await.expect("list");
    names.sort();
    assert_eq!(names, vec!["users", "users2"]);

    // Upserts merge fields; odd keys (colons, hash-tag braces, Korean, spaces) are fine.
    let keys = ["user:42", "user:{7}", "이사 준비", "a b"];
    let text = f32s(&[1.0, 2.0, 3.0]);
    let clip = codec::encode(Dtype::F16, 4, &[0.5, -0.25, 0.125, 1.0]).expect("encode");
    store
        .upsert(
            "users",
            None,
            keys.iter()
                .map(|k| write(k, &[("text", text.clone())]))
                .collect(),
        )
        .await
        .expect("upsert text");
    store
        .upsert(
            "users",
            None,
            vec![write("user:42", &[("clip", clip.clone())])],
        )
        .await
        .expect("upsert clip");
    let got = store
        .get_entity("users", "user:42")
        .await
        .expect("get")
        .expect("exists");
    let got: BTreeMap<_, _> = got.into_iter().collect();
    assert_eq!(got.get("text"), Some(&text), "merge kept the earlier field");
    assert_eq!(got.get("clip"), Some(&clip));

    // Lookup: request order, duplicates in place, missing entities, absent fields.
    let rows = store
        .lookup(
            "users",
            &strings(&["이사 준비", "nobody", "user:42", "user:{7}", "user:42"]),
            &strings(&["clip", "text"]),
        )
        .await
        .expect("lookup");
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[0], Some(vec![None, Some(text.clone())]));
    assert_eq!(rows[1], None, "no such entity");
    assert_eq!(rows[2], Some(vec![Some(clip.clone()), Some(text.clone())]));
    assert_eq!(rows[3], Some(vec![None, Some(text.clone())]));
    assert_eq!(rows[4], rows[2], "duplicate answered in place");
    // An existing entity that lacks every requested field is not "missing".
    let rows = store
        .lookup("users", &strings(&["a b", "ghost"]), &strings(&["clip"]))
        .await
        .expect("lookup");
    assert_eq!(rows, vec![Some(vec![None]), None]);
    assert_eq!(
        store
            .lookup("users", &[], &strings(&["clip"]))
            .await
            .expect("empty"),
        vec![]
    );

    // Namespaces do not leak into each other ("users" is a prefix of "users2").
    store
        .upsert(
            "users2",
            Some(60),
            vec![write("user:42", &[("text", f32s(&[9.0, 9.0, 9.0]))])],
        )
        .await
        .expect("upsert users2");
    assert_eq!(store.count_entities("users").await.expect("count"), 4);
    assert_eq!(store.count_entities("users2").await.expect("count"), 1);

    // Delete (also of an absent key).
    store.delete_entity("users", "a b").await.expect("delete");
    store
        .delete_entity("users", "a b")
        .await
        .expect("delete absent");
    assert_eq!(store.get_entity("users", "a b").await.expect("get"), None);
    assert_eq!(store.count_entities("users").await.expect("count"), 3);

    // Dropping a field removes it everywhere; an entity left with no fields is gone.
    store
        .upsert(
            "users",
            None,
            vec![write("only-clip", &[("clip", clip.clone())])],
        )
        .await
        .expect("upsert");
    assert_eq!(store.drop_field("users", "clip").await.expect("drop"), 2);
    let rows = store
        .lookup(
            "users",
            &strings(&["user:42", "only-clip"]),
            &strings(&["clip", "text"]),
        )
        .await
        .expect("lookup");
    assert_eq!(rows, vec![Some(vec![None, Some(text.clone())]), None]);
    assert_eq!(
        store
            .get_entity("users2", "user:42")
            .await
            .expect("get")
            .map(|f| f.len()),
        Some(1),
        "other namespaces untouched"
    );

    // TTL: an entity written with a TTL expires; a rewrite without one clears it.
    store
        .upsert(
            "users",
            Some(1),
            vec![
                write("short", &[("text", text.clone())]),
                write("kept", &[("text", text.clone())]),
            ],
        )
        .await
        .expect("upsert ttl");
    store
        .upsert(
            "users",
            None,
            vec![write("kept", &[("text", text.clone())])],
        )
        .await
        .expect("persist");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let rows = store
        .lookup("users", &strings(&["short", "kept"]), &strings(&["text"]))
        .await
        .expect("lookup");
    assert_eq!(rows, vec![None, Some(vec![Some(text.clone())])]);
}

async fn open(url: &str, options: &StoreOptions) -> Arc<dyn Store> {
    larder_store::open(url, options).await.expect("open store")
}

#[tokio::test]
async fn embedded_in_memory() {
    let options = StoreOptions {
        ephemeral: true,
        ..StoreOptions::default()
    };
    conformance(open("embedded", &options).await).await;
}

#[tokio::test]
async fn embedded_file_persists_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = StoreOptions {
        data_dir: dir.path().to_owned(),
        ..StoreOptions::default()
    };
    conformance(open("embedded", &options).await).await;
    // Reopen the same directory: everything is still there.
    let store = open("embedded", &options).await;
    assert_eq!(
        store.get_schema("users").await.expect("get"),
        Some(schema(None))
    );
    // user:42, user:{7}, 이사 준비 and kept ("short" expired).
    assert_eq!(store.count_entities("users").await.expect("count"), 4);
}

#[tokio::test]
async fn redis_standalone() {
    let server = RedisServer::start();
    conformance(open(&server.url(), &StoreOptions::default()).await).await;
    // The layout is readable by any Redis client.
    assert_eq!(server.cli(&["TYPE", "larder:e:users:user:42"]), "hash");
    assert_eq!(server.cli(&["HKEYS", "larder:e:users:user:42"]), "text");
    assert_eq!(
        server.cli(&["HSTRLEN", "larder:e:users:user:42", "text"]),
        "12"
    );
    assert!(server
        .cli(&["GET", "larder:ns:users"])
        .contains("\"dim\":4"));
    let ttl: i64 = server
        .cli(&["TTL", "larder:e:users2:user:42"])
        .parse()
        .expect("ttl");
    assert!(
        ttl > 0 && ttl <= 60,
        "namespace TTL is the hash's TTL, got {ttl}"
    );
    assert_eq!(
        server.cli(&["TTL", "larder:e:users:user:42"]),
        "-1",
        "no TTL when null"
    );
}

#[tokio::test]
async fn redis_over_tls() {
    let server = RedisServer::start_tls();
    conformance(open(&server.tls_url(), &StoreOptions::default()).await).await;
}

#[tokio::test]
async fn redis_with_auth() {
    let server = RedisServer::start_with_password("s3cret");
    let store = open(&server.url(), &StoreOptions::default()).await;
    store.ping().await.expect("authenticated ping");
    let wrong = format!("redis://:wrong@127.0.0.1:{}", server.port());
    assert!(larder_store::open(&wrong, &StoreOptions::default())
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster() {
    let cluster = RedisCluster::start();
    conformance(open(&cluster.url(), &StoreOptions::default()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_redis_restart() {
    let mut server = RedisServer::start();
    let store = open(&server.url(), &StoreOptions::default()).await;
    store.put_schema("users", &schema(None)).await.expect("put");
    server.stop();
    assert!(store.ping().await.is_err(), "the server is down");
    server.restart();
    // The connection manager reconnects by itself; allow it a few tries.
    let mut ok = false;
    for _ in 0..50 {
        if store.ping().await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "store answers again after the restart");
    // Data was lost with --save "", but writes work again.
    store
        .put_schema("users", &schema(None))
        .await
        .expect("put after restart");
}
