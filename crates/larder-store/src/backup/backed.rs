//! [`Backed`]: the store wrapper that writes every entity change and schema to the backup
//! before Redis, and queues what Redis did not take (the write path is in `mod.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::stream::BoxStream;

use super::db::{Db, Written};
use super::replay::Replay;
use crate::metered::{BACKUP_WRITES, BACKUP_WRITE_SECONDS};
use crate::redis_backend::slots::slot_for_key;
use crate::{
    keys, EntityState, EntityWrite, Invalidation, NamespaceSchema, Result, Row, Store, StoreError,
};

/// How the dual write and the replay behave.
#[derive(Debug, Clone)]
pub struct BackedOptions {
    /// How long a write waits for Redis before it is queued for replay instead. Keep it well
    /// under the lookup timeout: a write never takes much longer than this plus the backup.
    pub write_timeout: Duration,
    /// After a primary failed over, writes to its slots from this long before Larder first
    /// failed to reach it are re-applied (they may have been acknowledged by the old primary
    /// and never reached its replica: Redis replicates asynchronously).
    pub failover_window: Duration,
    /// Keys replayed per round.
    pub replay_batch: usize,
}

impl Default for BackedOptions {
    fn default() -> Self {
        BackedOptions {
            write_timeout: Duration::from_millis(300),
            failover_window: Duration::from_secs(10),
            replay_batch: 500,
        }
    }
}

/// A write slower than this is logged with where its time went.
const SLOW_WRITE: Duration = Duration::from_millis(500);

pub struct Backed {
    inner: Arc<dyn Store>,
    db: Db,
    options: BackedOptions,
    replay: Replay,
}

impl Backed {
    /// Wrap `inner` (a Redis store) with the backup at `url`, and start replaying whatever
    /// the backup already has queued (a restarted server picks up where it stopped).
    pub async fn connect(
        inner: Arc<dyn Store>,
        url: &crate::DbUrl,
        options: BackedOptions,
    ) -> Result<Self> {
        let db = Db::connect(url).await?;
        let replay = Replay::start(inner.clone(), db.clone(), options.clone());
        tracing::info!(backup = db.kind(), "dual-writing to the backup");
        Ok(Backed {
            inner,
            db,
            options,
            replay,
        })
    }

    /// `postgres` | `sqlite`.
    pub fn backup_kind(&self) -> &'static str {
        self.db.kind()
    }

    /// Apply to Redis within the write timeout; `false` when it did not answer in time or
    /// failed (the write is then queued for replay).
    async fn apply(
        &self,
        op: &'static str,
        write: impl std::future::Future<Output = Result<()>>,
    ) -> bool {
        match tokio::time::timeout(self.options.write_timeout, write).await {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                tracing::debug!(op, %error, "redis did not take a write; queued for replay");
                false
            }
            Err(_) => {
                tracing::debug!(op, timeout = ?self.options.write_timeout, "redis write timed out; queued for replay");
                false
            }
        }
    }

    fn count(&self, op: &'static str, outcome: &'static str, n: usize) {
        metrics::counter!(BACKUP_WRITES, "op" => op, "outcome" => outcome).increment(n as u64);
    }
}

/// One entry per key, in first-seen order; later fields of a repeated key win, as they would
/// have one after the other in Redis.
fn merge_repeats(entities: Vec<EntityWrite>) -> Vec<EntityWrite> {
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut out: Vec<EntityWrite> = Vec::with_capacity(entities.len());
    for entity in entities {
        match index.get(&entity.key) {
            Some(&i) => {
                for (name, value) in entity.fields {
                    match out[i].fields.iter_mut().find(|(n, _)| *n == name) {
                        Some(slot) => slot.1 = value,
                        None => out[i].fields.push((name, value)),
                    }
                }
            }
            None => {
                index.insert(entity.key.clone(), out.len());
                out.push(entity);
            }
        }
    }
    out
}

fn slot_of(ns: &str, key: &str) -> i32 {
    i32::from(slot_for_key(&keys::entity(ns, key)))
}

#[async_trait]
impl Store for Backed {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }

    async fn put_schema(&self, ns: &str, schema: &NamespaceSchema) -> Result<()> {
        let json = serde_json::to_string(schema)
            .map_err(|e| StoreError::Unavailable(format!("cannot encode schema: {e}")))?;
        let written = self.db.put_schema(ns, &json, super::now_ms()).await?;
        if !written.pending
            && self
                .apply("put_schema", self.inner.put_schema(ns, schema))
                .await
        {
            self.count("put_schema", "applied", 1);
            return Ok(());
        }
        self.db.mark_schema_pending(ns).await?;
        self.count("put_schema", "queued", 1);
        self.replay.wake();
        Ok(())
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
        let start = Instant::now();
        let entities = merge_repeats(entities);
        let now = super::now_ms();
        let expires_at_ms =
            ttl_seconds.map(|t| now.saturating_add((t as i64).saturating_mul(1000)));
        let slots: Vec<i32> = entities.iter().map(|e| slot_of(ns, &e.key)).collect();
        let written = self
            .db
            .upsert(ns, expires_at_ms, &entities, &slots, now)
            .await?;
        let backup_took = start.elapsed();
        metrics::histogram!(BACKUP_WRITE_SECONDS, "op" => "upsert")
            .record(backup_took.as_secs_f64());
        // Keys with an earlier write still queued wait behind it.
        let mut queued: Vec<&str> = Vec::new();
        let mut direct: Vec<EntityWrite> = Vec::with_capacity(entities.len());
        let mut versions: Vec<(&str, i64)> = Vec::with_capacity(entities.len());
        for (entity, w) in entities.iter().zip(&written) {
            if w.pending {
                queued.push(&entity.key);
            } else {
                versions.push((&entity.key, w.version));
                direct.push(entity.clone());
            }
        }
        let n_direct = direct.len();
        let applied = !direct.is_empty()
            && self
                .apply("upsert", self.inner.upsert(ns, ttl_seconds, direct))
                .await;
        if !applied {
            queued.extend(versions.drain(..).map(|(k, _)| k));
        }
        let redis_took = start.elapsed() - backup_took;
        let overtaken = self.db.overtaken(ns, &versions).await?;
        let n_queued = queued.len();
        let marked: Vec<&str> = queued
            .into_iter()
            .chain(overtaken.iter().map(String::as_str))
            .collect();
        if !marked.is_empty() {
            self.db.mark_pending(ns, &marked).await?;
            self.replay.wake();
        }
        self.count("upsert", "applied", if applied { n_direct } else { 0 });
        self.count("upsert", "queued", n_queued);
        let took = start.elapsed();
        if took > SLOW_WRITE {
            tracing::warn!(
                entities = entities.len(),
                took_ms = took.as_millis() as u64,
                backup_ms = backup_took.as_millis() as u64,
                redis_ms = redis_took.as_millis() as u64,
                "slow write"
            );
        }
        Ok(())
    }

    async fn get_entity(&self, ns: &str, key: &str) -> Result<Option<Vec<(String, Vec<u8>)>>> {
        self.inner.get_entity(ns, key).await
    }

    async fn delete_entity(&self, ns: &str, key: &str) -> Result<()> {
        let Written { version, pending } = self
            .db
            .delete(ns, key, slot_of(ns, key), super::now_ms())
            .await?;
        let applied = !pending
            && self
                .apply("delete", self.inner.delete_entity(ns, key))
                .await;
        let overtaken = if applied {
            self.db.overtaken(ns, &[(key, version)]).await?
        } else {
            vec![key.to_owned()]
        };
        if !overtaken.is_empty() {
            self.db.mark_pending(ns, &[key]).await?;
            self.replay.wake();
        }
        self.count("delete", if applied { "applied" } else { "queued" }, 1);
        Ok(())
    }

    async fn lookup(&self, ns: &str, keys: &[String], fields: &[String]) -> Result<Vec<Row>> {
        self.inner.lookup(ns, keys, fields).await
    }

    async fn lookup_expiring(
        &self,
        ns: &str,
        keys: &[String],
        fields: &[String],
    ) -> Result<Vec<(Row, Option<std::time::Duration>)>> {
        self.inner.lookup_expiring(ns, keys, fields).await
    }

    async fn drop_field(&self, ns: &str, field: &str) -> Result<u64> {
        self.db.drop_field(ns, field).await?;
        self.inner.drop_field(ns, field).await
    }

    /// The backup forgets the namespace first: a restore must not bring it back.
    async fn delete_namespace(&self, ns: &str) -> Result<u64> {
        self.db.delete_namespace(ns).await?;
        self.inner.delete_namespace(ns).await
    }
    async fn stats(&self, ns: &str) -> Result<crate::stats::NamespaceStats> {
        self.inner.stats(ns).await
    }
    async fn count_entities(&self, ns: &str) -> Result<u64> {
        self.inner.count_entities(ns).await
    }

    async fn put_states(&self, ns: &str, states: Vec<EntityState>) -> Result<()> {
        self.inner.put_states(ns, states).await
    }

    fn failovers(
        &self,
    ) -> Option<tokio::sync::broadcast::Receiver<crate::redis_backend::Failover>> {
        self.inner.failovers()
    }

    async fn backup_status(&self) -> Option<crate::BackupStatus> {
        let up = tokio::time::timeout(self.options.write_timeout, self.db.ping())
            .await
            .is_ok_and(|r| r.is_ok());
        Some(crate::BackupStatus {
            kind: self.db.kind(),
            up,
            replay_backlog: self.replay.backlog(),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn write(key: &str, fields: &[(&str, u8)]) -> EntityWrite {
        EntityWrite {
            key: key.into(),
            fields: fields
                .iter()
                .map(|(n, v)| ((*n).into(), vec![*v]))
                .collect(),
        }
    }

    #[test]
    fn repeated_keys_merge_with_later_fields_winning() {
        let merged = merge_repeats(vec![
            write("a", &[("x", 1), ("y", 1)]),
            write("b", &[("x", 2)]),
            write("a", &[("y", 3), ("z", 3)]),
        ]);
        assert_eq!(
            merged,
            vec![
                write("a", &[("x", 1), ("y", 3), ("z", 3)]),
                write("b", &[("x", 2)])
            ]
        );
    }
}
