//! One behaviour suite, run against the in-memory broker, a real standalone Redis and a real
//! 3x2 Redis Cluster (larder-testkit), plus a cluster failover. Each case uses its own stage
//! names, so the cases of one target share its server without seeing each other's messages.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{BoxStream, StreamExt};
use larder_broker::{Broker, BrokerOptions, Delivery, Subscription};
use larder_store::keys;
use larder_store::redis_backend::slots::slot_for_key;
use larder_testkit::topology::parse_cluster_nodes;
use larder_testkit::{RedisCluster, RedisServer};

enum Target {
    Memory,
    Redis(String),
}

impl Target {
    async fn broker(&self, options: BrokerOptions) -> Arc<dyn Broker> {
        match self {
            Target::Memory => larder_broker::memory(options),
            Target::Redis(url) => larder_broker::redis(&url.parse().expect("redis URL"), options)
                .await
                .unwrap_or_else(|e| panic!("connect to {url}: {e}")),
        }
    }
}

/// Reclaim after 200 ms, dead-letter after 3 deliveries.
fn fast() -> BrokerOptions {
    BrokerOptions {
        claim_idle: Duration::from_millis(200),
        max_deliveries: 3,
        max_len: Some(10_000),
    }
}

async fn next(sub: &dyn Subscription, block: Duration) -> Option<Delivery> {
    sub.next(block).await.expect("next")
}

fn text(d: &Delivery) -> String {
    String::from_utf8(d.payload.clone()).expect("utf-8 payload")
}

/// Run every case that applies to `target`, one after the other.
async fn suite(target: &Target) {
    competing_consumers_get_each_message_once(target).await;
    messages_published_before_subscribing_are_delivered(target).await;
    backlog_counts_queued_and_unacked(target).await;
    blocking_next_does_not_delay_publish_or_ack(target).await;
    every_listener_gets_every_broadcast(target).await;
    match target {
        Target::Memory => {
            unacked_messages_are_not_redelivered_in_memory(target).await;
            released_messages_come_back_then_dead_letter(target).await;
        }
        Target::Redis(_) => {
            a_dead_consumers_messages_are_reclaimed(target).await;
            a_touched_message_is_not_reclaimed(target).await;
            poison_messages_end_in_dead_letters(target).await;
        }
    }
}

async fn competing_consumers_get_each_message_once(target: &Target) {
    const N: usize = 40;
    let broker = target.broker(fast()).await;
    let a = broker
        .subscribe("competing", "a")
        .await
        .expect("subscribe a");
    let b = broker
        .subscribe("competing", "b")
        .await
        .expect("subscribe b");
    for i in 0..N {
        broker
            .publish("competing", format!("m{i}").as_bytes())
            .await
            .expect("publish");
    }
    let consume = |sub: Arc<dyn Subscription>| {
        tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(d) = next(sub.as_ref(), Duration::from_millis(400)).await {
                assert_eq!(d.deliveries, 1, "{d:?}");
                got.push(text(&d));
                // A little work per message, so both consumers get a share.
                tokio::time::sleep(Duration::from_millis(2)).await;
                sub.ack(&d.id).await.expect("ack");
            }
            got
        })
    };
    let (got_a, got_b) = (consume(a), consume(b));
    let (got_a, got_b) = (got_a.await.expect("a"), got_b.await.expect("b"));
    assert!(
        !got_a.is_empty() && !got_b.is_empty(),
        "{got_a:?} / {got_b:?}"
    );
    let mut all: Vec<String> = got_a.iter().chain(&got_b).cloned().collect();
    all.sort();
    let mut want: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    want.sort();
    assert_eq!(all, want, "each message exactly once");
    assert_eq!(broker.backlog("competing").await.expect("backlog"), 0);
}

async fn messages_published_before_subscribing_are_delivered(target: &Target) {
    let broker = target.broker(fast()).await;
    for p in ["first", "second", "third"] {
        broker
            .publish("early", p.as_bytes())
            .await
            .expect("publish");
    }
    let sub = broker
        .subscribe("early", "late-joiner")
        .await
        .expect("subscribe");
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = next(sub.as_ref(), Duration::from_secs(2))
            .await
            .expect("an early message");
        assert_eq!(d.deliveries, 1);
        got.push(text(&d));
        sub.ack(&d.id).await.expect("ack");
    }
    assert_eq!(got, ["first", "second", "third"], "in publish order");
    assert!(next(sub.as_ref(), Duration::from_millis(100))
        .await
        .is_none());
}

async fn backlog_counts_queued_and_unacked(target: &Target) {
    let broker = target.broker(fast()).await;
    assert_eq!(broker.backlog("backlog").await.expect("backlog"), 0);
    for i in 0..5 {
        broker
            .publish("backlog", format!("b{i}").as_bytes())
            .await
            .expect("publish");
    }
    // Nobody has subscribed yet: all five wait.
    assert_eq!(broker.backlog("backlog").await.expect("backlog"), 5);
    let sub = broker
        .subscribe("backlog", "counter")
        .await
        .expect("subscribe");
    let d1 = next(sub.as_ref(), Duration::from_secs(1))
        .await
        .expect("d1");
    let d2 = next(sub.as_ref(), Duration::from_secs(1))
        .await
        .expect("d2");
    // Three undelivered + two in flight.
    assert_eq!(broker.backlog("backlog").await.expect("backlog"), 5);
    sub.ack(&d1.id).await.expect("ack");
    assert_eq!(broker.backlog("backlog").await.expect("backlog"), 4);
    sub.ack(&d1.id).await.expect("acking twice is harmless");
    assert_eq!(broker.backlog("backlog").await.expect("backlog"), 4);
    sub.ack(&d2.id).await.expect("ack");
    while let Some(d) = next(sub.as_ref(), Duration::from_millis(100)).await {
        sub.ack(&d.id).await.expect("ack");
    }
    assert_eq!(broker.backlog("backlog").await.expect("backlog"), 0);
    // Another stage's backlog is its own.
    assert_eq!(broker.backlog("backlog_other").await.expect("backlog"), 0);
}

async fn blocking_next_does_not_delay_publish_or_ack(target: &Target) {
    // Default options: the blocked read is one real 2 s `BLOCK` on Redis.
    let broker = target.broker(BrokerOptions::default()).await;
    let blocked = broker
        .subscribe("quiet", "sleeper")
        .await
        .expect("subscribe");
    let sleeper = tokio::spawn(async move {
        let t = Instant::now();
        let got = next(blocked.as_ref(), Duration::from_secs(2)).await;
        (got.is_none(), t.elapsed())
    });
    let worker = broker.subscribe("busy", "worker").await.expect("subscribe");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let t = Instant::now();
    broker.publish("busy", b"work").await.expect("publish");
    let publish = t.elapsed();
    let d = next(worker.as_ref(), Duration::from_secs(1))
        .await
        .expect("the published message");
    let t = Instant::now();
    worker.ack(&d.id).await.expect("ack");
    let ack = t.elapsed();
    assert!(
        !sleeper.is_finished(),
        "the other subscription is still blocked"
    );
    assert!(
        publish < Duration::from_millis(100),
        "publish took {publish:?}"
    );
    assert!(ack < Duration::from_millis(100), "ack took {ack:?}");

    let (timed_out, waited) = sleeper.await.expect("sleeper");
    assert!(timed_out, "nothing was published to `quiet`");
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(4),
        "blocked for {waited:?}"
    );

    // A message published while a consumer blocks wakes it at once.
    let waiter = broker.subscribe("wake", "waiter").await.expect("subscribe");
    let woken = tokio::spawn(async move {
        let t = Instant::now();
        let got = next(waiter.as_ref(), Duration::from_secs(2)).await;
        (got.map(|d| text(&d)), t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    broker.publish("wake", b"ping").await.expect("publish");
    let (got, after) = woken.await.expect("waiter");
    assert_eq!(got.as_deref(), Some("ping"));
    assert!(after < Duration::from_secs(1), "woken after {after:?}");

    // A `next` cancelled mid-block (a worker shutting down, a `select!`) leaves the
    // subscription usable at once, not stuck behind the abandoned 2 s read.
    let cancelled = broker.subscribe("cancel", "c").await.expect("subscribe");
    let abandoned = tokio::time::timeout(
        Duration::from_millis(100),
        cancelled.next(Duration::from_secs(2)),
    )
    .await;
    assert!(abandoned.is_err(), "the read was still blocked");
    // Give Redis a moment to see the abandoned read's connection close; a message published
    // before that may still go to the abandoned read, and is then reclaimed after `claim_idle`.
    tokio::time::sleep(Duration::from_millis(100)).await;
    broker.publish("cancel", b"later").await.expect("publish");
    let t = Instant::now();
    let d = next(cancelled.as_ref(), Duration::from_secs(2))
        .await
        .expect("the message after a cancelled read");
    assert_eq!((text(&d).as_str(), d.deliveries), ("later", 1));
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
}

async fn unacked_messages_are_not_redelivered_in_memory(target: &Target) {
    let broker = target.broker(fast()).await;
    broker.publish("crash", b"lost").await.expect("publish");
    let a = broker.subscribe("crash", "a").await.expect("subscribe");
    let d = next(a.as_ref(), Duration::from_secs(1))
        .await
        .expect("delivered");
    assert_eq!(d.deliveries, 1);
    drop(a);
    let b = broker.subscribe("crash", "b").await.expect("subscribe");
    assert!(next(b.as_ref(), Duration::from_millis(500)).await.is_none());
    // Still counted as in flight, never acked.
    assert_eq!(broker.backlog("crash").await.expect("backlog"), 1);
    assert!(broker
        .dead_letters("crash", 10)
        .await
        .expect("dead letters")
        .is_empty());
}

async fn a_dead_consumers_messages_are_reclaimed(target: &Target) {
    const N: usize = 10;
    let broker = target.broker(fast()).await;
    for i in 0..N {
        broker
            .publish("crash", format!("c{i}").as_bytes())
            .await
            .expect("publish");
    }
    // A takes three messages and dies without acking.
    let a = broker.subscribe("crash", "a").await.expect("subscribe");
    let mut taken = BTreeSet::new();
    for _ in 0..3 {
        let d = next(a.as_ref(), Duration::from_secs(1))
            .await
            .expect("a's share");
        assert_eq!(d.deliveries, 1);
        taken.insert(text(&d));
    }
    drop(a);
    // B processes everything: the rest as first deliveries, A's three as second ones.
    let b = broker.subscribe("crash", "b").await.expect("subscribe");
    let mut done = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while done.len() < N && Instant::now() < deadline {
        let Some(d) = next(b.as_ref(), Duration::from_millis(500)).await else {
            continue;
        };
        let payload = text(&d);
        let want = if taken.contains(&payload) { 2 } else { 1 };
        assert_eq!(d.deliveries, want, "{payload}: {d:?}");
        b.ack(&d.id).await.expect("ack");
        done.insert(payload);
    }
    let want: BTreeSet<String> = (0..N).map(|i| format!("c{i}")).collect();
    assert_eq!(done, want, "every message processed");
    assert_eq!(broker.backlog("crash").await.expect("backlog"), 0);
}

/// A slow consumer that keeps touching its message keeps it; once it stops (it died), the
/// message goes to another consumer.
async fn a_touched_message_is_not_reclaimed(target: &Target) {
    let broker = target.broker(fast()).await;
    broker.publish("slow", b"long job").await.expect("publish");
    let a = broker.subscribe("slow", "a").await.expect("subscribe");
    let b = broker.subscribe("slow", "b").await.expect("subscribe");
    let d = next(a.as_ref(), Duration::from_secs(1))
        .await
        .expect("a gets it");
    // Five claim_idle periods of work, touching every 50 ms: b never sees it.
    let until = Instant::now() + Duration::from_millis(1000);
    while Instant::now() < until {
        a.touch(&d.id).await.expect("touch");
        assert!(
            next(b.as_ref(), Duration::from_millis(50)).await.is_none(),
            "reclaimed while touched"
        );
    }
    // a stops touching: b gets it as a second delivery.
    let again = next(b.as_ref(), Duration::from_secs(2))
        .await
        .expect("reclaimed after a stopped");
    assert_eq!((again.id.as_str(), again.deliveries), (d.id.as_str(), 2));
    b.ack(&again.id).await.expect("ack");
    assert!(matches!(
        a.touch("not-an-id").await,
        Err(larder_broker::BrokerError::InvalidId(_))
    ));
}

/// In memory, a failed consumer releases its message: it comes back after the delay with its
/// delivery count, and after `max_deliveries` it is dead-lettered.
async fn released_messages_come_back_then_dead_letter(target: &Target) {
    let broker = target.broker(fast()).await;
    broker.publish("flaky", b"retry me").await.expect("publish");
    let sub = broker.subscribe("flaky", "c").await.expect("subscribe");
    for attempt in 1..=3 {
        let d = next(sub.as_ref(), Duration::from_secs(1))
            .await
            .expect("delivered again");
        assert_eq!((text(&d).as_str(), d.deliveries), ("retry me", attempt));
        sub.release(&d.id, Duration::from_millis(100))
            .await
            .expect("release");
        if attempt < 3 {
            assert!(
                next(sub.as_ref(), Duration::from_millis(50))
                    .await
                    .is_none(),
                "not before the delay"
            );
        }
    }
    assert!(
        next(sub.as_ref(), Duration::from_millis(300))
            .await
            .is_none(),
        "dead after 3"
    );
    let dead = broker
        .dead_letters("flaky", 10)
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].payload.as_slice(), dead[0].deliveries),
        (&b"retry me"[..], 3)
    );
    assert_eq!(broker.backlog("flaky").await.expect("backlog"), 0);
}

async fn poison_messages_end_in_dead_letters(target: &Target) {
    let broker = target.broker(fast()).await;
    broker.publish("poison", b"bad").await.expect("publish");
    let sub = broker
        .subscribe("poison", "victim")
        .await
        .expect("subscribe");
    let first = next(sub.as_ref(), Duration::from_secs(1))
        .await
        .expect("first");
    // Never acked: reclaimed (by the same consumer, after 200 ms idle) twice more.
    for want in [2, 3] {
        let d = next(sub.as_ref(), Duration::from_secs(2))
            .await
            .expect("redelivered");
        assert_eq!((d.id.as_str(), d.deliveries), (first.id.as_str(), want));
    }
    // A fourth delivery would exceed max_deliveries = 3: dead-lettered, not handed out.
    assert!(next(sub.as_ref(), Duration::from_secs(1)).await.is_none());
    let dead = broker
        .dead_letters("poison", 10)
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        (
            dead[0].id.as_str(),
            dead[0].payload.as_slice(),
            dead[0].deliveries
        ),
        (first.id.as_str(), &b"bad"[..], 3)
    );
    assert_eq!(broker.backlog("poison").await.expect("backlog"), 0);
    assert!(next(sub.as_ref(), Duration::from_millis(500))
        .await
        .is_none());
    assert!(broker
        .dead_letters("poison", 0)
        .await
        .expect("limit 0")
        .is_empty());
    // The queue keeps working after a dead letter.
    broker.publish("poison", b"good").await.expect("publish");
    let d = next(sub.as_ref(), Duration::from_secs(1))
        .await
        .expect("good");
    assert_eq!((text(&d).as_str(), d.deliveries), ("good", 1));
    sub.ack(&d.id).await.expect("ack");
}

/// The next broadcast payload of `listener`, as text, within 5 s.
async fn heard(listener: &mut BoxStream<'static, Vec<u8>>) -> String {
    let payload = tokio::time::timeout(Duration::from_secs(5), listener.next())
        .await
        .expect("a broadcast within 5 s")
        .expect("the listener stays open");
    String::from_utf8(payload).expect("utf-8 payload")
}

/// Fan-out, unlike the stage queues: two listeners (on two brokers, i.e. two processes, where
/// the target is shared) each get every broadcast, in order; a later listener starts from
/// then on.
async fn every_listener_gets_every_broadcast(target: &Target) {
    let (a, b) = (target.broker(fast()).await, target.broker(fast()).await);
    // In memory, a broker is one process: both listeners are on the one broker.
    let b = match target {
        Target::Memory => a.clone(),
        Target::Redis(_) => b,
    };
    let mut first = a.listen("t-fanout").await.expect("listen");
    let mut second = b.listen("t-fanout").await.expect("listen");
    for n in 0..3 {
        b.broadcast("t-fanout", format!("m{n}").as_bytes())
            .await
            .expect("broadcast");
    }
    for listener in [&mut first, &mut second] {
        for n in 0..3 {
            assert_eq!(heard(listener).await, format!("m{n}"));
        }
    }
    let mut later = a.listen("t-fanout").await.expect("listen");
    a.broadcast("t-fanout", b"m3").await.expect("broadcast");
    assert_eq!(
        heard(&mut later).await,
        "m3",
        "only what came after it listened"
    );
    assert_eq!(heard(&mut first).await, "m3");
    // Topics are apart.
    a.broadcast("t-other", b"x").await.expect("broadcast");
    a.broadcast("t-fanout", b"m4").await.expect("broadcast");
    assert_eq!(heard(&mut second).await, "m3");
    assert_eq!(heard(&mut second).await, "m4");
}

#[tokio::test]
async fn memory_suite() {
    let target = Target::Memory;
    assert_eq!(target.broker(fast()).await.kind(), "memory");
    suite(&target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_suite() {
    let mut redis = RedisServer::start();
    let target = Target::Redis(redis.url());
    let broker = target.broker(fast()).await;
    assert_eq!(broker.kind(), "redis-streams");
    suite(&target).await;
    // The layout other Redis clients rely on: one entry per message, payload in field `p`.
    broker.publish("layout", b"hello").await.expect("publish");
    let stream = keys::stage_stream("layout");
    assert_eq!(redis.cli(&["xlen", &stream]), "1");
    assert!(redis
        .cli(&["xrange", &stream, "-", "+"])
        .ends_with("p\nhello"));
    let sub = broker.subscribe("layout", "c").await.expect("subscribe");
    assert!(matches!(
        sub.ack("not-an-id").await,
        Err(larder_broker::BrokerError::InvalidId(_))
    ));

    // Broadcasts are bounded: the stream keeps about the last 1000.
    for n in 0..1500 {
        broker
            .broadcast("t-bounded", format!("{n}").as_bytes())
            .await
            .expect("broadcast");
    }
    let len: u64 = redis
        .cli(&["xlen", &keys::broadcast_stream("t-bounded")])
        .parse()
        .expect("xlen");
    assert!((1000..1500).contains(&len), "{len}");

    // A listener rides out a restart of Redis (which loses every stream: --save "").
    let mut listener = broker.listen("t-restart").await.expect("listen");
    broker
        .broadcast("t-restart", b"before")
        .await
        .expect("broadcast");
    assert_eq!(heard(&mut listener).await, "before");
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while broker.broadcast("t-restart", b"after").await.is_err() {
        assert!(Instant::now() < deadline, "the broker never reconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(heard(&mut listener).await, "after");
}

#[tokio::test]
async fn bad_urls_are_config_errors() {
    for url in ["http://localhost:1", "redis-cluster://", "redis://a:b:c:d"] {
        let connected = match url.parse::<larder_store::RedisUrl>() {
            Ok(parsed) => larder_broker::redis(&parsed, BrokerOptions::default()).await,
            Err(error) => Err(error.into()),
        };
        match connected {
            Err(larder_broker::BrokerError::Config(_)) => {}
            Err(other) => panic!("{url}: {other}"),
            Ok(_) => panic!("{url}: accepted"),
        }
    }
}

/// The primary that serves `key`'s slot, from a live node's `CLUSTER NODES`.
fn owner_of(cluster: &RedisCluster, key: &str) -> u16 {
    let slot = slot_for_key(key.as_bytes());
    let port = cluster.primaries()[0];
    parse_cluster_nodes(&cluster.cli(port, &["cluster", "nodes"]))
        .into_iter()
        .find(|n| n.is_live_primary() && n.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
        .map(|n| n.port)
        .unwrap_or_else(|| panic!("no live primary owns slot {slot} of {key}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_suite() {
    let cluster = RedisCluster::start();
    let target = Target::Redis(cluster.url());
    suite(&target).await;

    // The four pipeline stages are four keys spread over the primaries; each works on its own.
    let stages = ["generate", "filter", "evaluate", "rank"];
    let owners: BTreeSet<u16> = stages
        .iter()
        .map(|s| owner_of(&cluster, &keys::stage_stream(s)))
        .collect();
    assert!(owners.len() >= 2, "stage streams all on {owners:?}");
    let broker = target.broker(fast()).await;
    let mut subs = Vec::new();
    for stage in stages {
        subs.push(broker.subscribe(stage, "w").await.expect("subscribe"));
        broker
            .publish(stage, stage.as_bytes())
            .await
            .expect("publish");
    }
    for (stage, sub) in stages.iter().zip(&subs) {
        let d = next(sub.as_ref(), Duration::from_secs(2))
            .await
            .expect("own message");
        assert_eq!(text(&d), *stage);
        sub.ack(&d.id).await.expect("ack");
        assert_eq!(broker.backlog(stage).await.expect("backlog"), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_of_the_generate_stream() {
    let mut cluster = RedisCluster::start();
    let broker = Target::Redis(cluster.url()).broker(fast()).await;
    let sub = broker
        .subscribe("generate", "survivor")
        .await
        .expect("subscribe");
    broker
        .publish("generate", b"before")
        .await
        .expect("publish");
    let d = next(sub.as_ref(), Duration::from_secs(2))
        .await
        .expect("before");
    assert_eq!(text(&d), "before");
    sub.ack(&d.id).await.expect("ack");

    // A consumer stays blocked in `next` across the failover: its read is in flight on the
    // primary that dies.
    let reader = sub.clone();
    let consumer = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut errors = 0;
        loop {
            assert!(Instant::now() < deadline, "next never recovered");
            match reader.next(Duration::from_secs(1)).await {
                Ok(Some(d)) => return (d, errors),
                Ok(None) => {}
                Err(_) => errors += 1,
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let victim = owner_of(&cluster, &keys::stage_stream("generate"));
    cluster.kill_node(victim);
    assert!(
        cluster.wait_healthy(Duration::from_secs(20)),
        "no failover: {:?}",
        cluster.healthy()
    );
    assert_ne!(owner_of(&cluster, &keys::stage_stream("generate")), victim);

    // The same broker and subscription recover: publish and next work again within seconds.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut publish_errors = 0;
    while let Err(e) = broker.publish("generate", b"after").await {
        publish_errors += 1;
        assert!(Instant::now() < deadline, "publish never recovered: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (got, read_errors) = consumer.await.expect("consumer");
    eprintln!("recovered after {publish_errors} publish and {read_errors} read errors");
    assert_eq!(text(&got), "after");
    assert_eq!(got.deliveries, 1);
    sub.ack(&got.id).await.expect("ack");
    assert_eq!(broker.backlog("generate").await.expect("backlog"), 0);
}
