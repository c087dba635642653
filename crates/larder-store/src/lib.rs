//! # larder-store
//!
//! Where Larder keeps embeddings and categories' serving views, behind one [`Store`] trait with three backends that behave
//! the same (one conformance suite, `tests/conformance.rs`, runs against all of them).
//!
//! # Layout
//! - [`keys`]: the ONLY place Redis key names are built (the layout is public contract).
//! - [`codec`]: f32/f16/bf16/i8 vector bytes.
//! - [`schema`]: namespace schemas and naming rules.
//! - [`embedded`]: redb file (or memory) store, the default: no external service.
//! - [`redis_backend`]: standalone Redis and Redis Cluster. Both run batches through one
//!   [`redis_backend::Batcher`]: a single pipeline on standalone, one pipeline per owning
//!   node (in parallel) on a cluster.
//! - [`metered`]: a wrapper that times every store call for `/metrics`.
//! - [`near`]: the optional in-process near cache of entities in front of Redis, kept
//!   coherent by the entity announcements every Redis write publishes.
//! - `invalidation`: the in-process fan-out of "a category's serving view changed"
//!   announcements ([`Invalidation`]) that every backend feeds.
//! - [`open`]: builds a store from a typed [`StoreUrl`] (parsed in `larder-url`, re-exported here).

pub mod backup;
pub mod codec;
pub mod embedded;
mod error;
mod invalidation;
pub mod keys;
pub mod metered;
pub mod near;
pub mod redis_backend;
pub mod schema;
pub mod stats;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
pub use bytes::Bytes;
use futures::stream::BoxStream;

pub use backup::{Backed, BackedOptions, Backup};
pub use codec::Dtype;
pub use error::{Result, StoreError};
pub use invalidation::Invalidation;
pub use larder_url::{ClusterUrl, DbUrl, RedisUrl, StoreUrl, UrlError};
pub use schema::{FieldSpec, NamespaceSchema};

/// Fields of one entity to merge into the store: `(field name, stored bytes)`.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityWrite {
    pub key: String,
    pub fields: Vec<(String, Vec<u8>)>,
}

/// The whole stored state of one entity, as the backup keeps it: what a replay or a restore
/// writes back. Applying it sets these fields (others are left alone, as with an upsert) and
/// the expiry; a deleted entity is removed.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityState {
    pub key: String,
    pub fields: Vec<(String, Vec<u8>)>,
    /// Unix ms; `None` means no expiry.
    pub expires_at_ms: Option<u64>,
    pub deleted: bool,
}

/// One lookup answer row: `None` when the entity does not exist at all, otherwise one slot per
/// requested field (`None` where the entity lacks that field). Values are [`Bytes`]: taken
/// over from the Redis reply without a copy, and shared (not copied) by the near cache and
/// every answer it serves.
pub type Row = Option<Vec<Option<Bytes>>>;

/// A lookup's rows and how many of them came from the near cache.
#[derive(Debug, Clone, PartialEq)]
pub struct Looked {
    pub rows: Vec<Row>,
    pub cached: usize,
}

/// The storage operations Larder needs. They mirror Redis hash commands so that the Redis
/// backends are thin and the embedded backend is a faithful stand-in.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `embedded`, `redis` or `redis-cluster`.
    fn backend(&self) -> &'static str;
    /// Cheap liveness probe used by `/readyz`.
    async fn ping(&self) -> Result<()>;

    async fn put_schema(&self, ns: &str, schema: &NamespaceSchema) -> Result<()>;
    async fn get_schema(&self, ns: &str) -> Result<Option<NamespaceSchema>>;
    async fn list_namespaces(&self) -> Result<Vec<String>>;

    /// Merge every entity's fields (HSET semantics) and set the entity's TTL to `ttl_seconds`
    /// (or clear it when `None`).
    async fn upsert(
        &self,
        ns: &str,
        ttl_seconds: Option<u64>,
        entities: Vec<EntityWrite>,
    ) -> Result<()>;
    /// All fields of one entity (HGETALL), `None` when absent.
    async fn get_entity(&self, ns: &str, key: &str) -> Result<Option<Vec<(String, Vec<u8>)>>>;
    async fn delete_entity(&self, ns: &str, key: &str) -> Result<()>;
    /// The requested fields of every key, rows in request order (duplicates answered in place).
    async fn lookup(&self, ns: &str, keys: &[String], fields: &[String]) -> Result<Vec<Row>>;
    /// [`Store::lookup`], with how long a cache may keep each row: the entity's remaining TTL,
    /// `None` when it has none. Backends that cannot tell answer `None`; the near cache is
    /// only put in front of those that can (Redis).
    async fn lookup_expiring(
        &self,
        ns: &str,
        keys: &[String],
        fields: &[String],
    ) -> Result<Vec<(Row, Option<Duration>)>> {
        Ok(self
            .lookup(ns, keys, fields)
            .await?
            .into_iter()
            .map(|row| (row, None))
            .collect())
    }
    /// [`Store::lookup`], also saying how many rows a near cache answered (0 without one).
    async fn lookup_counted(&self, ns: &str, keys: &[String], fields: &[String]) -> Result<Looked> {
        Ok(Looked {
            rows: self.lookup(ns, keys, fields).await?,
            cached: 0,
        })
    }
    /// Remove one field from every entity of the namespace; returns how many entities had it.
    async fn drop_field(&self, ns: &str, field: &str) -> Result<u64>;
    /// Remove namespace `ns` whole: its entities, in batches that never block the store for
    /// long (SCAN and UNLINK on Redis), then its schema record. Returns how many entities were
    /// removed. Callers mark the schema `deleting` first (so the name stops resolving and
    /// cannot be created again meanwhile) and run this in the background.
    async fn delete_namespace(&self, ns: &str) -> Result<u64>;
    /// Entity count, sizes (from a sample) and the spread over primaries of namespace `ns`.
    async fn stats(&self, ns: &str) -> Result<stats::NamespaceStats>;
    /// Number of entities in the namespace (may be approximate on very large namespaces).
    async fn count_entities(&self, ns: &str) -> Result<u64>;
    /// Write entities' whole states (replay and restore): HSET of the fields and an absolute
    /// expiry (PEXPIREAT, or PERSIST), or DEL for deleted ones.
    async fn put_states(&self, ns: &str, states: Vec<EntityState>) -> Result<()>;

    /// Primary failovers this store noticed (Redis Cluster only).
    fn failovers(&self) -> Option<tokio::sync::broadcast::Receiver<redis_backend::Failover>> {
        None
    }
    /// The backup's state, when one is configured.
    async fn backup_status(&self) -> Option<BackupStatus> {
        None
    }

    /// Write category `category`'s serving view (SET larder:c:{category}) and then announce it
    /// (PUBLISH larder:invalidate category). Views have no TTL.
    async fn put_view(&self, category: &str, view: &[u8]) -> Result<()>;
    /// The stored view, None when absent.
    async fn get_view(&self, category: &str) -> Result<Option<Vec<u8>>>;
    /// Announcements of new views from any writer (this process or others), as category names.
    /// When the subscription had to reconnect (messages may have been missed) it yields
    /// `Invalidation::All`. The stream ends only when the store is dropped.
    async fn invalidations(&self) -> Result<BoxStream<'static, Invalidation>>;
}

/// Now as unix milliseconds (0 if the clock is before 1970).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What `/readyz` says about the backup.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BackupStatus {
    /// `postgres` | `sqlite`.
    pub kind: &'static str,
    /// Whether the backup answers (writes are refused while it does not).
    pub up: bool,
    /// Keys and schemas waiting to be replayed into the store, as last counted.
    pub replay_backlog: u64,
}

/// Options that come from configuration rather than the store URL.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Directory of the embedded store's file.
    pub data_dir: PathBuf,
    /// Keep the embedded store in memory only.
    pub ephemeral: bool,
    /// Connect timeout and per-command response timeout for Redis.
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// Multiplexed connections per Redis node.
    pub connections: usize,
    /// How a cluster batch is sent (see [`redis_backend::ClusterBatch`]).
    pub cluster_batch: redis_backend::ClusterBatch,
    /// The backup DB every write goes to as well (`postgres://…`, `sqlite://FILE`), if any.
    pub backup: Option<DbUrl>,
    /// How the dual write and its replay behave.
    pub backed: backup::BackedOptions,
    /// The near cache in front of Redis lookups, if any (ignored by the embedded store,
    /// which is in-process already).
    pub near_cache: Option<near::NearCacheOptions>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            data_dir: PathBuf::from("./larder-data"),
            ephemeral: false,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            connections: 8,
            cluster_batch: redis_backend::ClusterBatch::Grouped,
            backup: None,
            backed: backup::BackedOptions::default(),
            near_cache: None,
        }
    }
}

/// Open the store `url` names, dual-writing to `options.backup` when one is given. Every store
/// comes wrapped in [`metered::Metered`] (so store metrics count only what reaches Redis),
/// and a Redis store in [`near::NearCache`] when `options.near_cache` is set.
pub async fn open(url: &StoreUrl, options: &StoreOptions) -> Result<Arc<dyn Store>> {
    let raw = open_raw(url, options).await?;
    let backed: Arc<dyn Store> = match &options.backup {
        Some(backup) => {
            Arc::new(backup::Backed::connect(raw, backup, options.backed.clone()).await?)
        }
        None => raw,
    };
    let metered: Arc<dyn Store> = Arc::new(metered::Metered::new(backed));
    Ok(match (options.near_cache, url) {
        (Some(near), StoreUrl::Redis(_)) => Arc::new(near::NearCache::new(metered, near)),
        (Some(_), StoreUrl::Embedded) => {
            tracing::info!("near_cache is ignored on the embedded store, which is in-process");
            metered
        }
        (None, _) => metered,
    })
}

/// The store alone, without the backup and unmetered (`larder restore` writes through this).
pub async fn open_raw(url: &StoreUrl, options: &StoreOptions) -> Result<Arc<dyn Store>> {
    Ok(match url {
        StoreUrl::Embedded => Arc::new(if options.ephemeral {
            embedded::EmbeddedStore::in_memory()?
        } else {
            embedded::EmbeddedStore::open(&options.data_dir)?
        }),
        StoreUrl::Redis(RedisUrl::Cluster(cluster)) => {
            Arc::new(redis_backend::RedisStore::connect_cluster(cluster, options).await?)
        }
        StoreUrl::Redis(RedisUrl::Single(url)) => {
            Arc::new(redis_backend::RedisStore::connect(url, options).await?)
        }
    })
}
