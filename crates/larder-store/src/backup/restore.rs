//! Rebuilding a store from the backup: schemas first, then every live entity, streamed from
//! the backup in batches and written with several batches in flight (on a cluster each batch
//! is one pipeline per owning primary, all in parallel).

use futures::stream::{FuturesUnordered, StreamExt};

use super::Backup;
use crate::{EntityState, Result, Store};

/// Entities per batch read from the backup and written to the store.
const BATCH: usize = 2000;
/// Batches written at once.
const IN_FLIGHT: usize = 4;

/// Write every schema and live entity of the backup (or of `ns`) into `store`, calling
/// `progress` with the running count; returns how many entities were restored. Expired
/// entities are written with their past expiry, which removes them.
pub async fn restore(
    backup: &Backup,
    store: &dyn Store,
    ns: Option<&str>,
    mut progress: impl FnMut(u64),
) -> Result<u64> {
    for (name, schema) in backup.schemas(ns).await? {
        store.put_schema(&name, &schema).await?;
    }
    let mut batches = backup.entities(ns.map(str::to_owned), BATCH);
    let mut writing = FuturesUnordered::new();
    let mut restored = 0u64;
    while let Some(batch) = batches.recv().await {
        for (name, states) in by_namespace(batch?) {
            let n = states.len() as u64;
            writing.push(async move { store.put_states(&name, states).await.map(|()| n) });
            while writing.len() >= IN_FLIGHT {
                if let Some(done) = writing.next().await {
                    restored += done?;
                    progress(restored);
                }
            }
        }
    }
    while let Some(done) = writing.next().await {
        restored += done?;
        progress(restored);
    }
    Ok(restored)
}

/// Split a batch (ordered by namespace) into one run per namespace.
fn by_namespace(batch: Vec<(String, EntityState)>) -> Vec<(String, Vec<EntityState>)> {
    let mut out: Vec<(String, Vec<EntityState>)> = Vec::new();
    for (ns, state) in batch {
        match out.last_mut() {
            Some((last, states)) if *last == ns => states.push(state),
            _ => out.push((ns, vec![state])),
        }
    }
    out
}
