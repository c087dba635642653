//! One behaviour, three backends: the same checks run against the embedded store (file and
//! memory), a real standalone redis-server and a real 3-primary/3-replica Redis Cluster.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use larder_store::codec::{self, Dtype};
use larder_store::{
    Bytes, EntityWrite, FieldSpec, Invalidation, NamespaceSchema, Store, StoreOptions,
};
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
        max_entity_bytes: None,
        max_fields: None,
        alias: None,
        deleting: false,
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
    assert_eq!(rows[0], Some(vec![None, Some(Bytes::from(text.clone()))]));
    assert_eq!(rows[1], None, "no such entity");
    assert_eq!(
        rows[2],
        Some(vec![
            Some(Bytes::from(clip.clone())),
            Some(Bytes::from(text.clone()))
        ])
    );
    assert_eq!(rows[3], Some(vec![None, Some(Bytes::from(text.clone()))]));
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
    assert_eq!(
        rows,
        vec![Some(vec![None, Some(Bytes::from(text.clone()))]), None]
    );
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
    assert_eq!(
        rows,
        vec![None, Some(vec![Some(Bytes::from(text.clone()))])]
    );
}

/// The category the view checks use: Korean with a space, as real category names are.
const CATEGORY: &str = "이사 준비";
/// The view `views` leaves behind under [`CATEGORY`], readable text for the redis-cli checks.
const VIEW_JSON: &str = r#"{"items":[{"id":"a1","text":"짐 싸기 체크리스트","score":0.83}]}"#;

/// The next announcement, failing the test if none comes within `secs`.
async fn heard_within(stream: &mut BoxStream<'static, Invalidation>, secs: u64) -> Invalidation {
    tokio::time::timeout(Duration::from_secs(secs), stream.next())
        .await
        .unwrap_or_else(|_| panic!("no invalidation within {secs} s"))
        .expect("the invalidation stream ended while the store is alive")
}

fn category(name: &str) -> Invalidation {
    Invalidation::Category(name.to_owned())
}

/// Serving views. `listener` is a second handle on the same data (a second `open()` of the same
/// Redis URL; the same instance for the embedded store): it must read what `writer` puts and
/// hear of it within 2 s.
async fn views(writer: &dyn Store, listener: &dyn Store) {
    assert_eq!(writer.get_view(CATEGORY).await.expect("get"), None);
    let mut heard = listener.invalidations().await.expect("subscribe");

    // A few hundred KB of every byte value (NUL and invalid UTF-8 included) round-trips.
    let big: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    writer.put_view(CATEGORY, &big).await.expect("put big view");
    assert_eq!(heard_within(&mut heard, 2).await, category(CATEGORY));
    assert_eq!(listener.get_view(CATEGORY).await.expect("get"), Some(big));

    // An empty view is a view, not an absence; a prefix of a name is another category.
    writer
        .put_view("빈 목록", &[])
        .await
        .expect("put empty view");
    assert_eq!(heard_within(&mut heard, 2).await, category("빈 목록"));
    assert_eq!(
        listener.get_view("빈 목록").await.expect("get"),
        Some(Vec::new())
    );
    assert_eq!(listener.get_view("이사").await.expect("get"), None);

    // A new view replaces the old one whole, and every write is announced again.
    writer
        .put_view(CATEGORY, VIEW_JSON.as_bytes())
        .await
        .expect("replace view");
    assert_eq!(heard_within(&mut heard, 2).await, category(CATEGORY));
    assert_eq!(
        listener.get_view(CATEGORY).await.expect("get"),
        Some(VIEW_JSON.as_bytes().to_vec())
    );
    // Listeners that join later hear later writes too.
    let mut late = listener.invalidations().await.expect("second subscription");
    writer.put_view("청소", b"[]").await.expect("put");
    assert_eq!(heard_within(&mut heard, 2).await, category("청소"));
    assert_eq!(heard_within(&mut late, 2).await, category("청소"));
}

async fn open(url: &str, options: &StoreOptions) -> Arc<dyn Store> {
    larder_store::open(&url.parse().expect("store URL"), options)
        .await
        .expect("open store")
}

#[tokio::test]
async fn embedded_in_memory() {
    let options = StoreOptions {
        ephemeral: true,
        ..StoreOptions::default()
    };
    let store = open("embedded", &options).await;
    conformance(store.clone()).await;
    views(&*store, &*store).await;
}

#[tokio::test]
async fn embedded_file_persists_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = StoreOptions {
        data_dir: dir.path().to_owned(),
        ..StoreOptions::default()
    };
    let first = open("embedded", &options).await;
    conformance(first.clone()).await;
    views(&*first, &*first).await;
    drop(first);
    // Reopen the same directory: everything is still there.
    let store = open("embedded", &options).await;
    assert_eq!(
        store.get_view(CATEGORY).await.expect("get view"),
        Some(VIEW_JSON.as_bytes().to_vec())
    );
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
    let store = open(&server.url(), &StoreOptions::default()).await;
    conformance(store.clone()).await;
    views(
        &*store,
        &*open(&server.url(), &StoreOptions::default()).await,
    )
    .await;
    assert_eq!(server.cli(&["GET", "larder:c:이사 준비"]), VIEW_JSON);
    assert_eq!(
        server.cli(&["TTL", "larder:c:이사 준비"]),
        "-1",
        "views have no TTL"
    );
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
    let store = open(&server.tls_url(), &StoreOptions::default()).await;
    conformance(store.clone()).await;
    // The subscription connects over TLS too (the URL names only the TLS port).
    views(
        &*store,
        &*open(&server.tls_url(), &StoreOptions::default()).await,
    )
    .await;
    assert_eq!(server.cli(&["GET", "larder:c:이사 준비"]), VIEW_JSON);
}

#[tokio::test]
async fn redis_with_auth() {
    let server = RedisServer::start_with_password("s3cret");
    let store = open(&server.url(), &StoreOptions::default()).await;
    store.ping().await.expect("authenticated ping");
    // The subscription authenticates with the URL's password as well.
    views(
        &*store,
        &*open(&server.url(), &StoreOptions::default()).await,
    )
    .await;
    let wrong = format!("redis://:wrong@127.0.0.1:{}", server.port());
    assert!(
        larder_store::open(&wrong.parse().expect("store URL"), &StoreOptions::default())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster() {
    let cluster = RedisCluster::start();
    let store = open(&cluster.url(), &StoreOptions::default()).await;
    conformance(store.clone()).await;
    views(
        &*store,
        &*open(&cluster.url(), &StoreOptions::default()).await,
    )
    .await;
    let port = cluster.ports()[0];
    assert_eq!(
        cluster.cli(port, &["-c", "GET", "larder:c:이사 준비"]),
        VIEW_JSON
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_resume_after_a_redis_restart() {
    let mut server = RedisServer::start();
    let writer = open(&server.url(), &StoreOptions::default()).await;
    let listener = open(&server.url(), &StoreOptions::default()).await;
    let mut heard = listener.invalidations().await.expect("subscribe");
    writer.put_view("before", b"1").await.expect("put");
    assert_eq!(heard_within(&mut heard, 2).await, category("before"));

    // restart() blocks while it waits for the port and PONG; keep the runtime's other worker
    // free for the subscription task meanwhile.
    tokio::task::block_in_place(|| server.restart());
    assert_eq!(
        heard_within(&mut heard, 10).await,
        Invalidation::Lost,
        "losing the subscription is announced at once, so near caches stop serving"
    );
    assert_eq!(
        heard_within(&mut heard, 10).await,
        Invalidation::All,
        "messages published while the server was away are lost, so everything is invalidated"
    );

    // The writer's connections reconnect by themselves; allow them a few tries.
    let mut written = false;
    for _ in 0..50 {
        if writer.put_view("after", b"2").await.is_ok() {
            written = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(written, "views can be written again after the restart");
    assert_eq!(heard_within(&mut heard, 2).await, category("after"));
    writer.put_view("again", b"3").await.expect("put");
    assert_eq!(heard_within(&mut heard, 2).await, category("again"));
    assert_eq!(
        server.cli(&["PUBSUB", "NUMSUB", "larder:invalidate"]),
        "larder:invalidate\n1",
        "one subscription per store, the old one gone"
    );
}

#[tokio::test]
async fn invalidation_streams_end_when_the_store_is_dropped() {
    let options = StoreOptions {
        ephemeral: true,
        ..StoreOptions::default()
    };
    let server = RedisServer::start();
    for store in [
        open("embedded", &options).await,
        open(&server.url(), &StoreOptions::default()).await,
    ] {
        let backend = store.backend();
        let mut heard = store.invalidations().await.expect("subscribe");
        store.put_view("x", b"1").await.expect("put");
        assert_eq!(heard_within(&mut heard, 2).await, category("x"));
        drop(store);
        let end = tokio::time::timeout(Duration::from_secs(2), heard.next())
            .await
            .unwrap_or_else(|_| panic!("{backend}: the stream outlived its store"));
        assert_eq!(end, None, "{backend}");
    }
    // The dropped Redis store closed its pub/sub connection.
    let mut subscribers = String::new();
    for _ in 0..50 {
        subscribers = server.cli(&["PUBSUB", "NUMSUB", "larder:invalidate"]);
        if subscribers.ends_with("\n0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(subscribers, "larder:invalidate\n0");
}

#[tokio::test]
async fn invalidations_fail_when_redis_is_down() {
    let mut server = RedisServer::start();
    let store = open(&server.url(), &StoreOptions::default()).await;
    server.stop();
    assert!(
        store.invalidations().await.is_err(),
        "the first listener learns that nothing can be subscribed to"
    );
    // Kept alive to the end of the test: dropping it kills the server.
    let _server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .expect("restart");
    // A later call tries again rather than remembering the failure.
    let mut heard = None;
    for _ in 0..50 {
        if let Ok(stream) = store.invalidations().await {
            heard = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut heard = heard.expect("subscribes once the server is back");
    let mut written = false;
    for _ in 0..50 {
        if store.put_view("x", b"1").await.is_ok() {
            written = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(written);
    assert_eq!(heard_within(&mut heard, 2).await, category("x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_resubscribe_when_the_server_stops_answering() {
    let server = RedisServer::start();
    let writer = open(&server.url(), &StoreOptions::default()).await;
    let listener = open(&server.url(), &StoreOptions::default()).await;
    let mut heard = listener.invalidations().await.expect("subscribe");
    // A server that keeps the socket open but answers nothing, like a lost network path: only
    // the subscription's periodic PING (every 5 s, 2 s timeout) can tell.
    assert_eq!(server.cli(&["CLIENT", "PAUSE", "9000", "ALL"]), "OK");
    assert_eq!(
        heard_within(&mut heard, 20).await,
        Invalidation::Lost,
        "the silent connection was noticed"
    );
    assert_eq!(
        heard_within(&mut heard, 20).await,
        Invalidation::All,
        "the silent connection was replaced"
    );
    writer.put_view("깨어남", b"1").await.expect("put");
    assert_eq!(heard_within(&mut heard, 2).await, category("깨어남"));
}
