//! Standalone Redis and Redis Cluster. Both speak the layout in [`crate::keys`] and send every
//! operation through one [`Batcher`]. View invalidations arrive over pub/sub through a
//! per-store [`subscriber`], started by the first `invalidations()` call.

mod batcher;
pub mod cluster;
pub mod slots;
mod subscriber;

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Value};

pub use batcher::{Batcher, ClusterBatch, Keyed, Pool, Topology, Trips};
pub use cluster::{Cluster, Failover, NodeConnector};

use subscriber::Subscriber;

use crate::invalidation::EntityMessage;
use crate::{
    keys, ClusterUrl, EntityState, EntityWrite, Invalidation, NamespaceSchema, Result, Row, Store,
    StoreError, StoreOptions,
};

/// HDEL/SCAN work is sent in chunks of this many commands.
const CHUNK: usize = 1000;

pub struct RedisStore {
    batcher: Batcher,
    /// Nodes the invalidation subscription may use: the server, or the cluster's seeds.
    pubsub_nodes: Vec<redis::Client>,
    connect_timeout: Duration,
    /// Started lazily: stores that only write views (pipeline workers) never hold a pub/sub
    /// connection.
    subscriber: tokio::sync::OnceCell<Subscriber>,
}

impl RedisStore {
    /// Standalone Redis from a `redis://` or `rediss://` URL (AUTH from the URL's userinfo).
    /// The connection manager reconnects by itself after the server restarts.
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Config(format!("bad redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(2);
        let mut conns = Vec::with_capacity(options.connections);
        for _ in 0..options.connections.max(1) {
            conns.push(ConnectionManager::new_with_config(client.clone(), config.clone()).await?);
        }
        Ok(RedisStore {
            batcher: Batcher::new(
                Topology::Single(Pool::new(conns)),
                Trips::default(),
                options.response_timeout,
            ),
            pubsub_nodes: vec![client],
            connect_timeout: options.connect_timeout,
            subscriber: tokio::sync::OnceCell::new(),
        })
    }

    /// Redis Cluster from `redis-cluster://[user:pass@]host:port,host:port,…` (or
    /// `rediss-cluster://` for TLS): every listed node is a seed.
    pub async fn connect_cluster(url: &ClusterUrl, options: &StoreOptions) -> Result<Self> {
        let pubsub_nodes = url
            .seeds()
            .iter()
            .map(|seed| redis::Client::open(seed.as_str()))
            .collect::<redis::RedisResult<Vec<_>>>()
            .map_err(|e| StoreError::Config(format!("bad redis-cluster URL: {e}")))?;
        let trips = Trips::default();
        let cluster = Cluster::open_counted(url, options, trips.clone()).await?;
        Ok(RedisStore {
            batcher: Batcher::new(
                Topology::Cluster(Box::new(cluster)),
                trips,
                options.response_timeout,
            ),
            pubsub_nodes,
            connect_timeout: options.connect_timeout,
            subscriber: tokio::sync::OnceCell::new(),
        })
    }
}

impl RedisStore {
    /// Round trips this store has sent to Redis.
    pub fn round_trips(&self) -> u64 {
        self.batcher.round_trips()
    }

    /// The cluster client, on a cluster store.
    pub fn cluster(&self) -> Option<&Cluster> {
        match &self.batcher.topology {
            Topology::Cluster(cluster) => Some(cluster),
            Topology::Single(_) => None,
        }
    }
}

impl Cluster {
    /// A cluster client for `redis-cluster://…` (or `rediss-cluster://…`), with `options`'
    /// timeouts, connections per node and batch strategy: the store's, and the broker's.
    pub async fn open(url: &ClusterUrl, options: &StoreOptions) -> Result<Cluster> {
        Cluster::open_counted(url, options, Trips::default()).await
    }

    async fn open_counted(
        url: &ClusterUrl,
        options: &StoreOptions,
        trips: Trips,
    ) -> Result<Cluster> {
        let nodes = NodeConnector {
            url: url.clone(),
            config: redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(options.connect_timeout))
                .set_response_timeout(Some(options.response_timeout)),
        };
        let seeds = url.seeds();
        let mut seed_addrs = Vec::with_capacity(seeds.len());
        for seed in &seeds {
            let client = redis::Client::open(seed.as_str())
                .map_err(|e| StoreError::Config(format!("bad redis-cluster URL: {e}")))?;
            if let redis::ConnectionAddr::Tcp(host, port)
            | redis::ConnectionAddr::TcpTls { host, port, .. } =
                client.get_connection_info().addr()
            {
                seed_addrs.push(slots::NodeAddr {
                    host: host.clone(),
                    port: *port,
                });
            }
        }
        Cluster::connect(
            seed_addrs,
            nodes,
            options.connections,
            options.cluster_batch,
            options.response_timeout,
            trips,
        )
        .await
    }
}

impl RedisStore {
    /// Run entity writes, then announce them to near caches (PUBLISH on
    /// [`keys::ENTITY_INVALIDATE_CHANNEL`]) once they are applied: a cache that drops an entry
    /// and reads it again must read the new value. On standalone Redis one pipeline does both
    /// in order; on a cluster the writes' owners and the node taking the PUBLISH differ, so
    /// the writes are acknowledged first. A failed announcement fails the call, so that the
    /// caller (or the backup's replay) writes, and announces, again.
    async fn write_and_announce(&self, mut cmds: Vec<Keyed>, message: Vec<u8>) -> Result<()> {
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(keys::ENTITY_INVALIDATE_CHANNEL).arg(message);
        let channel = keys::ENTITY_INVALIDATE_CHANNEL.as_bytes();
        match &self.batcher.topology {
            Topology::Single(_) => {
                cmds.push(keyed(channel.to_vec(), publish));
                self.batcher.run(cmds).await.map(drop)
            }
            Topology::Cluster(_) => {
                self.batcher.run(cmds).await?;
                self.batcher.one(channel, publish).await.map(drop)
            }
        }
    }
}

fn keyed(key: Vec<u8>, cmd: Cmd) -> Keyed {
    Keyed { key, cmd }
}

/// A reply value as bytes, without copying it.
fn into_bytes(value: Value) -> Option<bytes::Bytes> {
    match value {
        Value::BulkString(bytes) => Some(bytes.into()),
        Value::SimpleString(s) => Some(s.into_bytes().into()),
        _ => None,
    }
}

fn corrupt(key: &str, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

#[async_trait]
impl Store for RedisStore {
    fn backend(&self) -> &'static str {
        match self.batcher.topology {
            Topology::Single(_) => "redis",
            Topology::Cluster(_) => "redis-cluster",
        }
    }

    async fn ping(&self) -> Result<()> {
        self.batcher.ping().await
    }

    async fn put_schema(&self, ns: &str, schema: &NamespaceSchema) -> Result<()> {
        let json = serde_json::to_string(schema)
            .map_err(|e| StoreError::Unavailable(format!("cannot encode schema: {e}")))?;
        let key = keys::schema(ns);
        let mut set = redis::cmd("SET");
        set.arg(&key).arg(json);
        let mut sadd = redis::cmd("SADD");
        sadd.arg(keys::NAMESPACE_INDEX).arg(ns);
        // Announced like a namespace-wide write: other servers drop their cached schema (an
        // alias flip is seen at once) and their near cache of the namespace.
        self.write_and_announce(
            vec![
                keyed(key.into_bytes(), set),
                keyed(keys::NAMESPACE_INDEX.as_bytes().to_vec(), sadd),
            ],
            EntityMessage::encode(ns, None::<std::iter::Empty<&str>>),
        )
        .await
    }

    async fn get_schema(&self, ns: &str) -> Result<Option<NamespaceSchema>> {
        let key = keys::schema(ns);
        let mut get = redis::cmd("GET");
        get.arg(&key);
        match into_bytes(self.batcher.one(key.as_bytes(), get).await?) {
            Some(json) => serde_json::from_slice(&json)
                .map(Some)
                .map_err(|e| corrupt(&key, e.to_string())),
            None => Ok(None),
        }
    }

    async fn list_namespaces(&self) -> Result<Vec<String>> {
        let mut smembers = redis::cmd("SMEMBERS");
        smembers.arg(keys::NAMESPACE_INDEX);
        let mut names: Vec<String> = redis::from_redis_value(
            self.batcher
                .one(keys::NAMESPACE_INDEX.as_bytes(), smembers)
                .await?,
        )?;
        names.sort();
        Ok(names)
    }

    async fn upsert(
        &self,
        ns: &str,
        ttl_seconds: Option<u64>,
        entities: Vec<EntityWrite>,
    ) -> Result<()> {
        let mut cmds = Vec::with_capacity(entities.len() * 2);
        for entity in &entities {
            let key = keys::entity(ns, &entity.key);
            let mut hset = redis::cmd("HSET");
            hset.arg(&key);
            for (name, value) in &entity.fields {
                hset.arg(name).arg(value.as_slice());
            }
            let expiry = match ttl_seconds {
                Some(ttl) => {
                    let mut c = redis::cmd("EXPIRE");
                    c.arg(&key).arg(ttl);
                    c
                }
                None => {
                    let mut c = redis::cmd("PERSIST");
                    c.arg(&key);
                    c
                }
            };
            cmds.push(keyed(key.clone(), hset));
            cmds.push(keyed(key, expiry));
        }
        let message = EntityMessage::encode(ns, Some(entities.iter().map(|e| e.key.as_str())));
        self.write_and_announce(cmds, message).await
    }

    async fn get_entity(&self, ns: &str, key: &str) -> Result<Option<Vec<(String, Vec<u8>)>>> {
        let redis_key = keys::entity(ns, key);
        let mut hgetall = redis::cmd("HGETALL");
        hgetall.arg(redis_key.as_slice());
        let pairs: Vec<(String, Vec<u8>)> = match self.batcher.one(&redis_key, hgetall).await? {
            Value::Map(pairs) => pairs
                .into_iter()
                .map(|(k, v)| Ok((redis::from_redis_value(k)?, redis::from_redis_value(v)?)))
                .collect::<Result<_>>()?,
            Value::Array(flat) => {
                let mut out = Vec::with_capacity(flat.len() / 2);
                let mut it = flat.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    out.push((redis::from_redis_value(k)?, redis::from_redis_value(v)?));
                }
                out
            }
            other => return Err(corrupt(key, format!("HGETALL answered {other:?}"))),
        };
        Ok((!pairs.is_empty()).then_some(pairs))
    }

    async fn delete_entity(&self, ns: &str, key: &str) -> Result<()> {
        let redis_key = keys::entity(ns, key);
        let mut del = redis::cmd("DEL");
        del.arg(redis_key.as_slice());
        let message = EntityMessage::encode(ns, Some(std::iter::once(key)));
        self.write_and_announce(vec![keyed(redis_key, del)], message)
            .await
    }

    async fn lookup(&self, ns: &str, keys: &[String], fields: &[String]) -> Result<Vec<Row>> {
        let redis_keys: Vec<Vec<u8>> = keys.iter().map(|k| keys::entity(ns, k)).collect();
        let cmds = redis_keys
            .iter()
            .map(|key| {
                let mut hmget = redis::cmd("HMGET");
                hmget.arg(key.as_slice()).arg(fields);
                keyed(key.clone(), hmget)
            })
            .collect();
        let replies = self.batcher.run(cmds).await?;
        let mut rows: Vec<Vec<Option<bytes::Bytes>>> = Vec::with_capacity(keys.len());
        for (reply, key) in replies.into_iter().zip(keys) {
            match reply {
                Value::Array(values) => rows.push(values.into_iter().map(into_bytes).collect()),
                other => return Err(corrupt(key, format!("HMGET answered {other:?}"))),
            }
        }
        // HMGET cannot tell "no such entity" from "entity without these fields". Only the
        // all-empty rows need asking, in one more batch, so the common case stays one trip.
        let unknown: Vec<usize> = (0..rows.len())
            .filter(|&i| rows[i].iter().all(Option::is_none))
            .collect();
        let mut exists = vec![true; rows.len()];
        if !unknown.is_empty() {
            let cmds = unknown
                .iter()
                .map(|&i| {
                    let mut c = redis::cmd("EXISTS");
                    c.arg(redis_keys[i].as_slice());
                    keyed(redis_keys[i].clone(), c)
                })
                .collect();
            for (&i, reply) in unknown.iter().zip(self.batcher.run(cmds).await?) {
                exists[i] = matches!(reply, Value::Int(n) if n > 0);
            }
        }
        Ok(rows
            .into_iter()
            .zip(exists)
            .map(|(row, exists)| exists.then_some(row))
            .collect())
    }

    /// HMGET and PTTL of every key in one batch: PTTL tells both whether the entity exists
    /// (-2: no) and how long it lives, so this needs no EXISTS trip.
    async fn lookup_expiring(
        &self,
        ns: &str,
        keys: &[String],
        fields: &[String],
    ) -> Result<Vec<(Row, Option<Duration>)>> {
        let mut cmds = Vec::with_capacity(keys.len() * 2);
        for key in keys {
            let redis_key = keys::entity(ns, key);
            let mut hmget = redis::cmd("HMGET");
            hmget.arg(redis_key.as_slice()).arg(fields);
            let mut pttl = redis::cmd("PTTL");
            pttl.arg(redis_key.as_slice());
            cmds.push(keyed(redis_key.clone(), hmget));
            cmds.push(keyed(redis_key, pttl));
        }
        let mut replies = self.batcher.run(cmds).await?.into_iter();
        let mut rows = Vec::with_capacity(keys.len());
        for key in keys {
            let (Some(values), Some(ttl)) = (replies.next(), replies.next()) else {
                return Err(corrupt(key, "a reply is missing"));
            };
            let values = match values {
                Value::Array(values) => values,
                other => return Err(corrupt(key, format!("HMGET answered {other:?}"))),
            };
            rows.push(match ttl {
                Value::Int(-2) => (None, None),
                Value::Int(ms) if ms >= 0 => (
                    Some(values.into_iter().map(into_bytes).collect()),
                    Some(Duration::from_millis(ms as u64)),
                ),
                Value::Int(_) => (Some(values.into_iter().map(into_bytes).collect()), None),
                other => return Err(corrupt(key, format!("PTTL answered {other:?}"))),
            });
        }
        Ok(rows)
    }

    async fn drop_field(&self, ns: &str, field: &str) -> Result<u64> {
        let found = self.batcher.scan(&keys::entity_pattern(ns)).await?;
        let mut dropped = 0;
        for chunk in found.chunks(CHUNK) {
            let cmds = chunk
                .iter()
                .map(|key| {
                    let mut hdel = redis::cmd("HDEL");
                    hdel.arg(key.as_slice()).arg(field);
                    keyed(key.clone(), hdel)
                })
                .collect();
            for reply in self.batcher.run(cmds).await? {
                if matches!(reply, Value::Int(n) if n > 0) {
                    dropped += 1;
                }
            }
        }
        self.write_and_announce(
            Vec::new(),
            EntityMessage::encode(ns, None::<std::iter::Empty<&str>>),
        )
        .await?;
        Ok(dropped)
    }

    async fn delete_namespace(&self, ns: &str) -> Result<u64> {
        // UNLINK frees the values in a background thread of Redis; chunks keep every
        // pipeline short, so other clients are served in between.
        let found = self.batcher.scan(&keys::entity_pattern(ns)).await?;
        let mut removed = 0;
        for chunk in found.chunks(CHUNK) {
            let cmds = chunk
                .iter()
                .map(|key| {
                    let mut unlink = redis::cmd("UNLINK");
                    unlink.arg(key.as_slice());
                    keyed(key.clone(), unlink)
                })
                .collect();
            for reply in self.batcher.run(cmds).await? {
                if let Value::Int(n) = reply {
                    removed += n as u64;
                }
            }
        }
        let schema = keys::schema(ns);
        let mut del = redis::cmd("DEL");
        del.arg(&schema);
        let mut srem = redis::cmd("SREM");
        srem.arg(keys::NAMESPACE_INDEX).arg(ns);
        self.batcher
            .run(vec![
                keyed(schema.into_bytes(), del),
                keyed(keys::NAMESPACE_INDEX.as_bytes().to_vec(), srem),
            ])
            .await?;
        self.write_and_announce(
            Vec::new(),
            EntityMessage::encode(ns, None::<std::iter::Empty<&str>>),
        )
        .await?;
        Ok(removed)
    }

    /// SCAN per primary (counts and spread), then `MEMORY USAGE` of a sample of at most
    /// [`crate::stats::SAMPLE`] keys spread over the key space, in one batch.
    async fn stats(&self, ns: &str) -> Result<crate::stats::NamespaceStats> {
        let by_node = self.batcher.scan_by_node(&keys::entity_pattern(ns)).await?;
        let all: Vec<&Vec<u8>> = by_node.iter().flat_map(|(_, keys)| keys).collect();
        let sample: Vec<&Vec<u8>> = crate::stats::sample_indices(all.len())
            .map(|i| all[i])
            .collect();
        let cmds = sample
            .iter()
            .map(|key| {
                let mut usage = redis::cmd("MEMORY");
                usage.arg("USAGE").arg(key.as_slice());
                keyed((*key).clone(), usage)
            })
            .collect();
        let prefix = keys::entity(ns, "").len();
        let sizes = sample
            .iter()
            .zip(self.batcher.run(cmds).await?)
            .filter_map(|(key, reply)| match reply {
                // Nil: the key expired or was deleted since the SCAN.
                Value::Int(bytes) => Some((
                    String::from_utf8_lossy(&key[prefix.min(key.len())..]).into_owned(),
                    bytes.max(0) as u64,
                )),
                _ => None,
            })
            .collect();
        let primaries = by_node
            .iter()
            .map(|(node, keys)| crate::stats::NodeShare {
                node: node.clone(),
                entities: keys.len() as u64,
            })
            .collect();
        Ok(crate::stats::summarize(primaries, sizes))
    }

    async fn count_entities(&self, ns: &str) -> Result<u64> {
        Ok(self.batcher.scan(&keys::entity_pattern(ns)).await?.len() as u64)
    }

    async fn put_states(&self, ns: &str, states: Vec<EntityState>) -> Result<()> {
        let mut cmds = Vec::with_capacity(states.len() * 2);
        for state in &states {
            let key = keys::entity(ns, &state.key);
            if state.deleted || state.fields.is_empty() {
                let mut del = redis::cmd("DEL");
                del.arg(key.as_slice());
                cmds.push(keyed(key, del));
                continue;
            }
            let mut hset = redis::cmd("HSET");
            hset.arg(key.as_slice());
            for (name, value) in &state.fields {
                hset.arg(name).arg(value.as_slice());
            }
            // An expiry in the past removes the key, as PEXPIREAT does.
            let expiry = match state.expires_at_ms {
                Some(at) => {
                    let mut c = redis::cmd("PEXPIREAT");
                    c.arg(key.as_slice()).arg(at);
                    c
                }
                None => {
                    let mut c = redis::cmd("PERSIST");
                    c.arg(key.as_slice());
                    c
                }
            };
            cmds.push(keyed(key.clone(), hset));
            cmds.push(keyed(key, expiry));
        }
        let message = EntityMessage::encode(ns, Some(states.iter().map(|s| s.key.as_str())));
        self.write_and_announce(cmds, message).await
    }

    fn failovers(&self) -> Option<tokio::sync::broadcast::Receiver<Failover>> {
        self.cluster().map(Cluster::failovers)
    }

    async fn put_view(&self, category: &str, view: &[u8]) -> Result<()> {
        let key = keys::view(category);
        let mut set = redis::cmd("SET");
        set.arg(key.as_slice()).arg(view);
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(keys::INVALIDATE_CHANNEL).arg(category);
        match &self.batcher.topology {
            // One pipeline: Redis runs it in order, so a listener never hears of a view it
            // cannot read yet.
            Topology::Single(_) => self
                .batcher
                .run(vec![
                    keyed(key, set),
                    keyed(keys::INVALIDATE_CHANNEL.as_bytes().to_vec(), publish),
                ])
                .await
                .map(drop),
            // The key's owner and the node that takes the PUBLISH (any node: the cluster bus
            // relays it everywhere) may differ, so the SET must be acknowledged first.
            Topology::Cluster(_) => {
                self.batcher.one(&key, set).await?;
                self.batcher
                    .one(keys::INVALIDATE_CHANNEL.as_bytes(), publish)
                    .await
                    .map(drop)
            }
        }
    }

    async fn get_view(&self, category: &str) -> Result<Option<Vec<u8>>> {
        let key = keys::view(category);
        let mut get = redis::cmd("GET");
        get.arg(key.as_slice());
        match self.batcher.one(&key, get).await? {
            Value::Nil => Ok(None),
            Value::BulkString(bytes) => Ok(Some(bytes)),
            other => Err(corrupt(
                &String::from_utf8_lossy(&key),
                format!("GET answered {other:?}"),
            )),
        }
    }

    async fn invalidations(&self) -> Result<BoxStream<'static, Invalidation>> {
        let subscriber = self
            .subscriber
            .get_or_try_init(|| Subscriber::start(self.pubsub_nodes.clone(), self.connect_timeout))
            .await?;
        Ok(subscriber.listen())
    }
}
