//! The replay task: applies writes the backup holds for Redis, in batches, until none is
//! left; and after a failover, queues the failed primary's recent writes again.
//!
//! It runs whenever a write was queued, on a failover, and every [`POLL`] (another server, or
//! this one before a restart, may have queued writes). While Redis does not answer, rounds
//! back off from 100 ms to [`MAX_BACKOFF`]. The backlog it last counted is a gauge
//! (`larder_backup_replay_backlog`) and what `/readyz` reports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, Notify};

use super::backed::BackedOptions;
use super::db::{Db, Versioned};
use crate::metered::{BACKUP_BACKLOG, BACKUP_FAILOVER_REQUEUED, BACKUP_REPLAYED};
use crate::redis_backend::Failover;
use crate::{NamespaceSchema, Result, Store, StoreError};

const POLL: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often a replay that keeps failing is mentioned in the log.
const WARN_EVERY: Duration = Duration::from_secs(30);

pub(crate) struct Replay {
    wake: Arc<Notify>,
    backlog: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Replay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Worker {
    store: Arc<dyn Store>,
    db: Db,
    options: BackedOptions,
    wake: Arc<Notify>,
    backlog: Arc<AtomicU64>,
}

impl Replay {
    pub(crate) fn start(store: Arc<dyn Store>, db: Db, options: BackedOptions) -> Replay {
        let wake = Arc::new(Notify::new());
        let backlog = Arc::new(AtomicU64::new(0));
        let failovers = store.failovers();
        let worker = Worker {
            store,
            db,
            options,
            wake: wake.clone(),
            backlog: backlog.clone(),
        };
        let task = tokio::spawn(worker.run(failovers));
        Replay {
            wake,
            backlog,
            task,
        }
    }

    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn backlog(&self) -> u64 {
        self.backlog.load(Ordering::Relaxed)
    }
}

impl Worker {
    async fn run(self, mut failovers: Option<broadcast::Receiver<Failover>>) {
        let mut backoff = FIRST_BACKOFF;
        let mut last_warned: Option<Instant> = None;
        loop {
            let wait = match self.round().await {
                Ok(true) => Duration::ZERO,
                Ok(false) => {
                    if last_warned.take().is_some() {
                        tracing::info!("backup replay caught up");
                    }
                    backoff = FIRST_BACKOFF;
                    POLL
                }
                Err(error) => {
                    if last_warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                        tracing::warn!(%error, backlog = self.backlog.load(Ordering::Relaxed), "backup replay waiting for the store (repeats are logged every {}s)", WARN_EVERY.as_secs());
                        last_warned = Some(Instant::now());
                    }
                    let wait = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    wait
                }
            };
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                failover = recv(&mut failovers) => {
                    if let Some(failover) = failover {
                        self.requeue(&failover).await;
                    }
                }
            }
        }
    }

    /// Queue again what the failed primary may not have replicated.
    async fn requeue(&self, failover: &Failover) {
        let window = self.options.failover_window.as_millis() as i64;
        let since = (failover.since_ms as i64).saturating_sub(window);
        match self.db.mark_recent_pending(since, &failover.slots).await {
            Ok(n) => {
                metrics::counter!(BACKUP_FAILOVER_REQUEUED).increment(n);
                tracing::info!(node = %failover.node, requeued = n, "re-applying the failed primary's recent writes from the backup");
            }
            // The backup is down too; nothing else can recover those writes now. Say so.
            Err(error) => {
                tracing::error!(node = %failover.node, %error, "cannot queue the failed primary's recent writes for replay")
            }
        }
    }

    /// One round: pending schemas, then up to one batch of pending keys. `Ok(true)` when a
    /// full batch was replayed (more may wait).
    async fn round(&self) -> Result<bool> {
        let result = self.replay().await;
        if let Ok(n) = self.db.backlog().await {
            self.backlog.store(n, Ordering::Relaxed);
            metrics::gauge!(BACKUP_BACKLOG).set(n as f64);
        }
        result
    }

    async fn replay(&self) -> Result<bool> {
        for (ns, json, version) in self.db.pending_schemas().await? {
            let schema: NamespaceSchema =
                serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
                    key: format!("backup schema {ns}"),
                    reason: e.to_string(),
                })?;
            self.store.put_schema(&ns, &schema).await?;
            self.db.clear_schema_pending(&ns, version).await?;
        }
        let limit = self.options.replay_batch.max(1);
        let batch = self.db.pending(limit as i64).await?;
        if batch.is_empty() {
            return Ok(false);
        }
        let full = batch.len() >= limit;
        let mut by_ns: Vec<(String, Vec<super::PendingEntity>)> = Vec::new();
        for entity in batch {
            match by_ns.last_mut() {
                Some((ns, list)) if *ns == entity.ns => list.push(entity),
                _ => by_ns.push((entity.ns.clone(), vec![entity])),
            }
        }
        for (ns, entities) in by_ns {
            let done: Vec<Versioned> = entities
                .iter()
                .map(|e| Versioned {
                    ns: ns.clone(),
                    key: e.state.key.clone(),
                    version: e.version,
                })
                .collect();
            let states = entities.into_iter().map(|e| e.state).collect();
            self.store.put_states(&ns, states).await?;
            self.db.clear_pending(&done).await?;
            metrics::counter!(BACKUP_REPLAYED).increment(done.len() as u64);
        }
        Ok(full)
    }
}

/// The next failover, or never when there is no such stream (standalone Redis).
async fn recv(failovers: &mut Option<broadcast::Receiver<Failover>>) -> Option<Failover> {
    match failovers {
        Some(rx) => match rx.recv().await {
            Ok(failover) => Some(failover),
            Err(broadcast::error::RecvError::Lagged(_)) => None,
            Err(broadcast::error::RecvError::Closed) => {
                *failovers = None;
                None
            }
        },
        None => std::future::pending().await,
    }
}
