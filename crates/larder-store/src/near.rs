//! The near cache: an in-process, byte-weighted cache of stored vectors in front of Redis
//! (`near_cache = { max_bytes, ttl_ms }`, off by default).
//!
//! # Coherence
//! Every Redis write Larder makes (upsert, delete, replay, restore, `larder load`, dropping a
//! field) publishes the keys it wrote on `larder:invalidate:e` once the write is applied
//! ([`crate::redis_backend`]). Every near cache follows that channel through the store's one
//! invalidation subscription, the same one that keeps category views fresh, and drops what it
//! names. Pub/sub rather than RESP3 client-side tracking (`CLIENT TRACKING … BCAST`) because:
//! - it is the mechanism the view cache already uses, with its reconnect handling, and works
//!   unchanged on a cluster (classic pub/sub is relayed to every node), where tracking needs a
//!   RESP3 connection per primary that must follow the slot map through every failover;
//! - tracking would also announce expiries and evictions, but expiry is covered here by
//!   caching the entity's PTTL with it, and Larder's main store must not evict (`noeviction`).
//!
//! The rules that keep a stale value from being served:
//! - an entry lives at most `ttl_ms`, and never past the entity's own Redis TTL;
//! - a write through this process drops its keys locally once it is acknowledged (so a
//!   process reads its own writes at once), and the announcement drops them everywhere else;
//! - a miss is fetched under a per-key placeholder (single flight: concurrent requests for the
//!   key wait for one fetch). An announcement that arrives while the fetch is in flight
//!   removes the placeholder, so the fetched (possibly old) value is not kept. A request holds
//!   placeholders only while its own fetch is in flight, never while it waits for another's,
//!   so two requests cannot wait on each other;
//! - namespace-wide announcements, and losing the subscription, bump an epoch; a fetch that
//!   saw the epoch move keeps nothing;
//! - while the subscription is down (Redis restarting, a network cut) the cache is empty and
//!   bypassed, and it is cleared again when the subscription is back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use std::collections::HashMap;

use quick_cache::sync::{Cache, DefaultLifecycle, GuardResult, PlaceholderGuard};
use quick_cache::{DefaultHashBuilder, Weighter};

use crate::{
    keys, BackupStatus, EntityState, EntityWrite, Invalidation, Looked, NamespaceSchema, Result,
    Row, Store,
};

/// Rows served from the near cache.
pub const HITS: &str = "larder_near_cache_hits_total";
/// Rows the near cache had to fetch.
pub const MISSES: &str = "larder_near_cache_misses_total";
/// Entries dropped because a write was announced.
pub const INVALIDATED: &str = "larder_near_cache_invalidated_total";

/// Size and lifetime of the near cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NearCacheOptions {
    /// Bytes of cached keys and vectors, at most.
    pub max_bytes: u64,
    /// Longest an entry is served without asking Redis again.
    pub ttl: Duration,
}

enum Claim<'a> {
    Hit(Row),
    /// Fetch it; keep it under the placeholder when there is one.
    Fetch(Option<Guard<'a>>),
    /// Another request is fetching it.
    Wait,
}

/// One cached entity: the fields a lookup asked for, or the fact that it does not exist.
struct Entry {
    /// Do not serve after this instant.
    expires: Instant,
    /// The field names `row` holds values for, in order (shared by one fetch's entries).
    fields: Arc<[String]>,
    /// `None`: the entity does not exist.
    row: Row,
}

impl Entry {
    /// The row for `fields`, if this entry holds all of them and is still fresh.
    fn serve(&self, fields: &[String], now: Instant) -> Option<Row> {
        if now >= self.expires {
            return None;
        }
        let Some(values) = &self.row else {
            return Some(None);
        };
        fields
            .iter()
            .map(|name| {
                let at = self.fields.iter().position(|f| f == name)?;
                Some(values[at].clone())
            })
            .collect::<Option<Vec<_>>>()
            .map(Some)
    }
}

#[derive(Clone)]
struct ByBytes;

impl Weighter<Vec<u8>, Arc<Entry>> for ByBytes {
    fn weight(&self, key: &Vec<u8>, entry: &Arc<Entry>) -> u64 {
        let values: usize = entry
            .row
            .iter()
            .flatten()
            .map(|value| value.as_ref().map_or(0, bytes::Bytes::len))
            .sum();
        let names: usize = entry.fields.iter().map(String::len).sum();
        // Bookkeeping (the entry, its vectors and the cache's slot) is about 100 bytes.
        (key.len() + values + names + 100) as u64
    }
}

type EntryCache = Cache<Vec<u8>, Arc<Entry>, ByBytes>;
type Guard<'a> = PlaceholderGuard<
    'a,
    Vec<u8>,
    Arc<Entry>,
    ByBytes,
    DefaultHashBuilder,
    DefaultLifecycle<Vec<u8>, Arc<Entry>>,
>;

struct Shared {
    cache: EntryCache,
    /// Bumped whenever more than single keys are invalidated; see the module docs.
    epoch: AtomicU64,
    /// Whether the invalidation subscription is up; the cache is bypassed while it is not.
    live: AtomicBool,
    ttl: Duration,
}

impl Shared {
    fn apply(&self, invalidation: Invalidation) {
        match invalidation {
            Invalidation::Entities { ns, keys: names } => {
                self.forget(&ns, names.iter());
                metrics::counter!(INVALIDATED).increment(names.len() as u64);
            }
            Invalidation::Namespace(ns) => {
                self.epoch.fetch_add(1, Ordering::SeqCst);
                let prefix = keys::entity(&ns, "");
                self.cache.retain(|key, _| !key.starts_with(&prefix));
            }
            Invalidation::Lost => self.suspend(),
            Invalidation::All => {
                self.epoch.fetch_add(1, Ordering::SeqCst);
                self.cache.clear();
                self.live.store(true, Ordering::SeqCst);
            }
            Invalidation::Category(_) => {}
        }
    }

    /// Stop serving and keeping anything until the subscription is back.
    fn suspend(&self) {
        self.live.store(false, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.cache.clear();
    }

    fn forget(&self, ns: &str, names: impl Iterator<Item = impl AsRef<str>>) {
        for name in names {
            self.cache.remove(&keys::entity(ns, name.as_ref()));
        }
    }
}

/// A [`Store`] with a near cache in front of `inner`'s lookups. Everything else passes through;
/// writes drop what they wrote from the cache once they are acknowledged.
pub struct NearCache {
    inner: Arc<dyn Store>,
    shared: Arc<Shared>,
    follower: tokio::task::JoinHandle<()>,
}

impl Drop for NearCache {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl NearCache {
    /// Put a near cache in front of `inner` and start following its invalidations. Must be
    /// called inside a tokio runtime. Until the subscription is up, lookups go to `inner`.
    pub fn new(inner: Arc<dyn Store>, options: NearCacheOptions) -> NearCache {
        // quick_cache sizes its shards from an estimate of the item count; a 768-d f32
        // vector with its key is about 3 KiB.
        let estimated_items = (options.max_bytes / 3072).clamp(16, 10_000_000) as usize;
        let shared = Arc::new(Shared {
            cache: Cache::with_weighter(estimated_items, options.max_bytes.max(1), ByBytes),
            epoch: AtomicU64::new(0),
            live: AtomicBool::new(false),
            ttl: options.ttl,
        });
        let follower = tokio::spawn(follow(inner.clone(), shared.clone()));
        NearCache {
            inner,
            shared,
            follower,
        }
    }

    /// Whether lookups are being served from the cache now (the subscription is up).
    pub fn is_live(&self) -> bool {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// Serve `redis_key` from the cache, or claim it for fetching (single flight), or learn
    /// that another request is fetching it.
    fn claim(&self, redis_key: &Vec<u8>, fields: &[String], now: Instant) -> Claim<'_> {
        // Twice at most: a stale or narrower entry is removed, then the key is claimed.
        for _ in 0..2 {
            match self
                .shared
                .cache
                .get_value_or_guard(redis_key, Some(Duration::ZERO))
            {
                GuardResult::Value(entry) => match entry.serve(fields, now) {
                    Some(row) => return Claim::Hit(row),
                    None => {
                        self.shared.cache.remove(redis_key);
                    }
                },
                GuardResult::Guard(guard) => return Claim::Fetch(Some(guard)),
                GuardResult::Timeout => return Claim::Wait,
            }
        }
        // Refilled with something unusable in between: fetch, keep nothing.
        Claim::Fetch(None)
    }

    /// Fetch `wanted` (indices into `keys`, one per distinct key) from the store and keep
    /// them under their placeholders, unless an invalidation came in meanwhile.
    async fn fetch(
        &self,
        ns: &str,
        keys: &[String],
        fields: &[String],
        wanted: Vec<(usize, Option<Guard<'_>>)>,
        rows: &mut [Option<Row>],
    ) -> Result<()> {
        if wanted.is_empty() {
            return Ok(());
        }
        let epoch = self.shared.epoch.load(Ordering::SeqCst);
        let asked: Vec<String> = wanted.iter().map(|(i, _)| keys[*i].clone()).collect();
        let started = Instant::now();
        let fetched = self.inner.lookup_expiring(ns, &asked, fields).await?;
        let names: Arc<[String]> = fields.into();
        let keep = self.shared.live.load(Ordering::SeqCst)
            && self.shared.epoch.load(Ordering::SeqCst) == epoch;
        for ((i, guard), (row, ttl)) in wanted.into_iter().zip(fetched) {
            if let (true, Some(guard)) = (keep, guard) {
                let life = ttl.map_or(self.shared.ttl, |ttl| ttl.min(self.shared.ttl));
                // Err: the placeholder was removed by an invalidation; keep nothing.
                let _ = guard.insert(Arc::new(Entry {
                    expires: started + life,
                    fields: names.clone(),
                    row: row.clone(),
                }));
            }
            rows[i] = Some(row);
        }
        Ok(())
    }
}

/// Follow the store's invalidations for as long as the cache lives.
async fn follow(store: Arc<dyn Store>, shared: Arc<Shared>) {
    loop {
        match store.invalidations().await {
            Ok(mut stream) => {
                // Subscribed: what is announced from now on reaches us.
                shared.apply(Invalidation::All);
                while let Some(invalidation) = stream.next().await {
                    shared.apply(invalidation);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "near cache cannot follow invalidations; bypassing it")
            }
        }
        shared.suspend();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[async_trait]
impl Store for NearCache {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
    async fn put_schema(&self, ns: &str, schema: &NamespaceSchema) -> Result<()> {
        self.inner.put_schema(ns, schema).await
    }
    async fn get_schema(&self, ns: &str) -> Result<Option<NamespaceSchema>> {
        self.inner.get_schema(ns).await
    }
    async fn list_namespaces(&self) -> Result<Vec<String>> {
        self.inner.list_namespaces().await
    }
    async fn upsert(
        &self,
        ns: &str,
        ttl_seconds: Option<u64>,
        entities: Vec<EntityWrite>,
    ) -> Result<()> {
        let names: Vec<String> = entities.iter().map(|e| e.key.clone()).collect();
        let out = self.inner.upsert(ns, ttl_seconds, entities).await;
        // Also on failure: part of the batch may have been applied.
        self.shared.forget(ns, names.iter());
        out
    }
    async fn get_entity(&self, ns: &str, key: &str) -> Result<Option<Vec<(String, Vec<u8>)>>> {
        self.inner.get_entity(ns, key).await
    }
    async fn delete_entity(&self, ns: &str, key: &str) -> Result<()> {
        let out = self.inner.delete_entity(ns, key).await;
        self.shared.forget(ns, std::iter::once(key));
        out
    }
    async fn lookup(&self, ns: &str, keys: &[String], fields: &[String]) -> Result<Vec<Row>> {
        Ok(self.lookup_counted(ns, keys, fields).await?.rows)
    }
    async fn lookup_counted(&self, ns: &str, keys: &[String], fields: &[String]) -> Result<Looked> {
        if !self.shared.live.load(Ordering::SeqCst) {
            return Ok(Looked {
                rows: self.inner.lookup(ns, keys, fields).await?,
                cached: 0,
            });
        }
        let now = Instant::now();
        // Each distinct key is looked at once, at its first index; duplicates copy it.
        let mut first_of: HashMap<&str, usize> = HashMap::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            first_of.entry(key.as_str()).or_insert(i);
        }
        let mut rows: Vec<Option<Row>> = vec![None; keys.len()];
        let mut owned = Vec::new();
        let mut waiting = Vec::new();
        let mut cached = 0;
        for (i, key) in keys.iter().enumerate() {
            if first_of.get(key.as_str()) != Some(&i) {
                continue;
            }
            let redis_key = keys::entity(ns, key);
            match self.claim(&redis_key, fields, now) {
                Claim::Hit(row) => {
                    rows[i] = Some(row);
                    cached += 1;
                }
                Claim::Fetch(guard) => owned.push((i, guard)),
                Claim::Wait => waiting.push((i, redis_key)),
            }
        }
        metrics::counter!(HITS).increment(cached as u64);
        metrics::counter!(MISSES).increment((owned.len() + waiting.len()) as u64);
        self.fetch(ns, keys, fields, owned, &mut rows).await?;
        // Keys another request was fetching: wait for its fetch, then fetch what it did not
        // keep (it failed, or an invalidation came in) without keeping it. A placeholder
        // handed to us here is dropped at once: holding it while waiting for the next key
        // could deadlock with a request that waits the other way round.
        let mut again = Vec::new();
        for (i, redis_key) in waiting {
            match self.shared.cache.get_value_or_guard_async(&redis_key).await {
                Ok(entry) => match entry.serve(fields, Instant::now()) {
                    Some(row) => rows[i] = Some(row),
                    None => again.push((i, None)),
                },
                Err(_released) => again.push((i, None)),
            }
        }
        self.fetch(ns, keys, fields, again, &mut rows).await?;
        let mut out: Vec<Row> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| match first_of.get(key.as_str()) {
                Some(&first) if first != i => rows[first].clone().flatten(),
                _ => None,
            })
            .collect();
        for (i, row) in rows.into_iter().enumerate() {
            if let (Some(row), Some(slot)) = (row, out.get_mut(i)) {
                if first_of.get(keys[i].as_str()) == Some(&i) {
                    *slot = row;
                }
            }
        }
        let rows = out;
        Ok(Looked { rows, cached })
    }
    async fn drop_field(&self, ns: &str, field: &str) -> Result<u64> {
        let out = self.inner.drop_field(ns, field).await;
        self.shared.apply(Invalidation::Namespace(ns.to_owned()));
        out
    }
    async fn delete_namespace(&self, ns: &str) -> Result<u64> {
        let out = self.inner.delete_namespace(ns).await;
        self.shared.apply(Invalidation::Namespace(ns.to_owned()));
        out
    }
    async fn stats(&self, ns: &str) -> Result<crate::stats::NamespaceStats> {
        self.inner.stats(ns).await
    }
    async fn count_entities(&self, ns: &str) -> Result<u64> {
        self.inner.count_entities(ns).await
    }
    async fn put_states(&self, ns: &str, states: Vec<EntityState>) -> Result<()> {
        let names: Vec<String> = states.iter().map(|s| s.key.clone()).collect();
        let out = self.inner.put_states(ns, states).await;
        self.shared.forget(ns, names.iter());
        out
    }
    fn failovers(
        &self,
    ) -> Option<tokio::sync::broadcast::Receiver<crate::redis_backend::Failover>> {
        self.inner.failovers()
    }
    async fn backup_status(&self) -> Option<BackupStatus> {
        self.inner.backup_status().await
    }
    async fn put_view(&self, category: &str, view: &[u8]) -> Result<()> {
        self.inner.put_view(category, view).await
    }
    async fn get_view(&self, category: &str) -> Result<Option<Vec<u8>>> {
        self.inner.get_view(category).await
    }
    async fn invalidations(&self) -> Result<BoxStream<'static, Invalidation>> {
        self.inner.invalidations().await
    }
}
