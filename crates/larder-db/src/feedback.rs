//! Feedback events: validated as a whole, stored and counted in one durable transaction.

use std::collections::{HashMap, HashSet};

use sqlx::Row;
use tracing::debug;

use crate::connect::Db;
use crate::error::{DbError, Result};
use crate::model::{FeedbackEvent, FeedbackKind};
use crate::sql::{count, finite, placeholders, value_rows, CHUNK};

/// What one request's events add to one item's counters.
#[derive(Default)]
struct Delta {
    impressions: i64,
    weighted_impressions: f64,
    selections: i64,
}

impl Db {
    /// One transaction: if any item_id is not an item of `category` → Err(UnknownItem) and
    /// NOTHING is written; else insert every event into `feedback` and bump the item counters.
    /// Committed (durable) before returning. Returns the number of events recorded.
    pub async fn record_feedback(&self, category: &str, events: &[FeedbackEvent]) -> Result<usize> {
        if events.is_empty() {
            return Ok(0);
        }
        // Sum per item first: one UPDATE per distinct item, in first-seen order.
        let mut order: Vec<&str> = Vec::new();
        let mut deltas: HashMap<&str, Delta> = HashMap::new();
        for event in events {
            let weight = finite("feedback weight", event.weight)?;
            let delta = deltas.entry(event.item_id.as_str()).or_insert_with(|| {
                order.push(event.item_id.as_str());
                Delta::default()
            });
            match event.kind {
                FeedbackKind::Impression => {
                    delta.impressions += 1;
                    delta.weighted_impressions += weight;
                }
                FeedbackKind::Select => delta.selections += 1,
            }
        }

        // On SQLite this is BEGIN IMMEDIATE, so validating (a read) and then writing cannot be
        // interleaved with another process's write.
        let mut tx = self.write_tx().await?;
        let mut known: HashSet<String> = HashSet::with_capacity(order.len());
        for chunk in order.chunks(CHUNK) {
            let sql = format!(
                "SELECT id FROM items WHERE category = $1 AND id IN ({})",
                placeholders(2, chunk.len())
            );
            let mut query = sqlx::query(&sql).bind(category);
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&mut *tx).await? {
                known.insert(row.try_get(0)?);
            }
        }
        if let Some(unknown) = order.iter().find(|id| !known.contains(**id)) {
            // Dropping `tx` rolls back; nothing was written yet anyway.
            return Err(DbError::UnknownItem(
                (*unknown).to_owned(),
                category.to_owned(),
            ));
        }

        for id in &order {
            let delta = &deltas[id];
            sqlx::query(
                "UPDATE items SET impressions = impressions + $1, \
                 weighted_impressions = weighted_impressions + $2, \
                 selections = selections + $3 WHERE id = $4",
            )
            .bind(delta.impressions)
            .bind(delta.weighted_impressions)
            .bind(delta.selections)
            .bind(*id)
            .execute(&mut *tx)
            .await?;
        }
        for chunk in events.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO feedback (category, item_id, kind, position, weight, at_ms) VALUES {}",
                value_rows(1, chunk.len(), 6)
            );
            let mut query = sqlx::query(&sql);
            for event in chunk {
                query = query
                    .bind(category)
                    .bind(event.item_id.as_str())
                    .bind(event.kind.as_str())
                    .bind(i64::from(event.position))
                    .bind(event.weight)
                    .bind(event.at_ms);
            }
            query.execute(&mut *tx).await?;
        }
        // SQLite: synchronous=FULL in WAL mode fsyncs the WAL here; PostgreSQL: synchronous_commit
        // (on by default) flushes its WAL. Either way the events survive a crash after this.
        tx.commit().await?;
        debug!(
            category,
            events = events.len(),
            items = order.len(),
            "feedback recorded"
        );
        Ok(events.len())
    }

    /// Number of feedback events stored for the category (for tests/ops).
    pub async fn feedback_count(&self, category: &str) -> Result<u64> {
        let row = sqlx::query("SELECT COUNT(*) FROM feedback WHERE category = $1")
            .bind(category)
            .fetch_one(&self.pool)
            .await?;
        Ok(count(row.try_get(0)?))
    }
}
