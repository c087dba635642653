//! Times every store call (`larder_store_call_seconds{backend,op}`) and counts failures, so
//! `/metrics` shows store latency the same way for every backend.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::{EntityState, EntityWrite, Invalidation, NamespaceSchema, Result, Row, Store};

/// Metric names of this crate, defined in one place.
pub const CALL_SECONDS: &str = "larder_store_call_seconds";
pub const CALL_ERRORS: &str = "larder_store_call_errors_total";
pub const ROUND_TRIPS: &str = "larder_store_round_trips_total";
/// Times the view-invalidation subscription had to reconnect (each one invalidates every
/// cached view on every listener).
pub const INVALIDATION_RECONNECTS: &str = "larder_store_invalidation_reconnects_total";
/// Writes the backup took, by `op` and `outcome` (`applied` to Redis at once, or `queued`).
pub const BACKUP_WRITES: &str = "larder_backup_writes_total";
/// Time spent writing a batch to the backup, by `op`.
pub const BACKUP_WRITE_SECONDS: &str = "larder_backup_write_seconds";
/// Keys and schemas in the backup waiting to be replayed into Redis.
pub const BACKUP_BACKLOG: &str = "larder_backup_replay_backlog";
/// Keys replayed from the backup into Redis.
pub const BACKUP_REPLAYED: &str = "larder_backup_replayed_total";
/// Keys queued again because their primary failed over.
pub const BACKUP_FAILOVER_REQUEUED: &str = "larder_backup_failover_requeued_total";

pub struct Metered {
    inner: Arc<dyn Store>,
}

impl Metered {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Metered { inner }
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let start = Instant::now();
        let out = call.await;
        let backend = self.inner.backend();
        metrics::histogram!(CALL_SECONDS, "backend" => backend, "op" => op)
            .record(start.elapsed().as_secs_f64());
        if out.is_err() {
            metrics::counter!(CALL_ERRORS, "backend" => backend, "op" => op).increment(1);
        }
        out
    }
}

#[async_trait]
impl Store for Metered {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn ping(&self) -> Result<()> {
        self.timed("ping", self.inner.ping()).await
    }
    async fn put_schema(&self, ns: &str, schema: &NamespaceSchema) -> Result<()> {
        self.timed("put_schema", self.inner.put_schema(ns, schema))
            .await
    }
    async fn get_schema(&self, ns: &str) -> Result<Option<NamespaceSchema>> {
        self.timed("get_schema", self.inner.get_schema(ns)).await
    }
    async fn list_namespaces(&self) -> Result<Vec<String>> {
        self.timed("list_namespaces", self.inner.list_namespaces())
            .await
    }
    async fn upsert(
        &self,
        ns: &str,
        ttl_seconds: Option<u64>,
        entities: Vec<EntityWrite>,
    ) -> Result<()> {
        self.timed("upsert", self.inner.upsert(ns, ttl_seconds, entities))
            .await
    }
    async fn get_entity(&self, ns: &str, key: &str) -> Result<Option<Vec<(String, Vec<u8>)>>> {
        self.timed("get_entity", self.inner.get_entity(ns, key))
            .await
    }
    async fn delete_entity(&self, ns: &str, key: &str) -> Result<()> {
        self.timed("delete_entity", self.inner.delete_entity(ns, key))
            .await
    }
    async fn lookup(&self, ns: &str, keys: &[String], fields: &[String]) -> Result<Vec<Row>> {
        self.timed("lookup", self.inner.lookup(ns, keys, fields))
            .await
    }
    async fn lookup_expiring(
        &self,
        ns: &str,
        keys: &[String],
        fields: &[String],
    ) -> Result<Vec<(Row, Option<std::time::Duration>)>> {
        self.timed("lookup", self.inner.lookup_expiring(ns, keys, fields))
            .await
    }
    async fn drop_field(&self, ns: &str, field: &str) -> Result<u64> {
        self.timed("drop_field", self.inner.drop_field(ns, field))
            .await
    }
    async fn delete_namespace(&self, ns: &str) -> Result<u64> {
        self.timed("delete_namespace", self.inner.delete_namespace(ns))
            .await
    }
    async fn stats(&self, ns: &str) -> Result<crate::stats::NamespaceStats> {
        self.timed("stats", self.inner.stats(ns)).await
    }
    async fn count_entities(&self, ns: &str) -> Result<u64> {
        self.timed("count_entities", self.inner.count_entities(ns))
            .await
    }
    async fn put_states(&self, ns: &str, states: Vec<EntityState>) -> Result<()> {
        self.timed("put_states", self.inner.put_states(ns, states))
            .await
    }
    fn failovers(
        &self,
    ) -> Option<tokio::sync::broadcast::Receiver<crate::redis_backend::Failover>> {
        self.inner.failovers()
    }
    async fn backup_status(&self) -> Option<crate::BackupStatus> {
        self.inner.backup_status().await
    }
    async fn put_view(&self, category: &str, view: &[u8]) -> Result<()> {
        self.timed("put_view", self.inner.put_view(category, view))
            .await
    }
    async fn get_view(&self, category: &str) -> Result<Option<Vec<u8>>> {
        self.timed("get_view", self.inner.get_view(category)).await
    }
    // Not timed: it is called once per listener, and its cost is the subscription's first
    // connect, not a store round trip.
    async fn invalidations(&self) -> Result<BoxStream<'static, Invalidation>> {
        self.inner.invalidations().await
    }
}
