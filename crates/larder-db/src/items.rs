//! Items and their evaluations: insert, dedup pool, lookups, status changes, ranking inputs.

use std::collections::{HashMap, HashSet};

use sqlx::Row;
use tracing::debug;

use crate::connect::Db;
use crate::error::Result;
use crate::model::{Evaluation, Item, ItemDetail, ItemStatus, NewItem, RankInput};
use crate::sql::{
    count, evaluation_from_row, finite, item_from_row, placeholders, value_rows, CHUNK,
    EVALUATION_COLUMNS, ITEM_COLUMNS,
};

impl Db {
    /// ON CONFLICT (id) DO NOTHING; returns the ids actually inserted (in input order). One
    /// transaction.
    pub async fn insert_items(&self, items: &[NewItem]) -> Result<Vec<String>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let mut inserted = HashSet::new();
        let mut tx = self.write_tx().await?;
        for chunk in items.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO items (id, category, text, norm, provider, model, created_at_ms, \
                 status, reason) VALUES {} ON CONFLICT (id) DO NOTHING RETURNING id",
                value_rows(1, chunk.len(), 9)
            );
            let mut query = sqlx::query(&sql);
            for item in chunk {
                query = query
                    .bind(item.id.as_str())
                    .bind(item.category.as_str())
                    .bind(item.text.as_str())
                    .bind(item.norm.as_str())
                    .bind(item.provider.as_str())
                    .bind(item.model.as_str())
                    .bind(item.created_at_ms)
                    .bind(item.status.as_str())
                    .bind(item.reason.as_deref());
            }
            for row in query.fetch_all(&mut *tx).await? {
                inserted.insert(row.try_get::<String, _>(0)?);
            }
        }
        tx.commit().await?;
        // RETURNING order is unspecified; report in input order, each id once.
        let ids: Vec<String> = items
            .iter()
            .filter(|item| inserted.remove(&item.id))
            .map(|item| item.id.clone())
            .collect();
        debug!(
            offered = items.len(),
            inserted = ids.len(),
            "items inserted"
        );
        Ok(ids)
    }

    /// (id, norm) of every non-rejected item of the category — the pool new items are
    /// deduplicated against.
    pub async fn pool_norms(&self, category: &str) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT id, norm FROM items WHERE category = $1 AND status <> 'rejected' \
             ORDER BY created_at_ms, id",
        )
        .bind(category)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    /// Items by id (any category), in no particular order; unknown ids are skipped.
    pub async fn items(&self, ids: &[String]) -> Result<Vec<Item>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "SELECT {ITEM_COLUMNS} FROM items WHERE id IN ({})",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id.as_str());
            }
            for row in query.fetch_all(&self.pool).await? {
                out.push(item_from_row(&row)?);
            }
        }
        Ok(out)
    }

    pub async fn item(&self, category: &str, id: &str) -> Result<Option<ItemDetail>> {
        let sql = format!("SELECT {ITEM_COLUMNS} FROM items WHERE category = $1 AND id = $2");
        let Some(row) = sqlx::query(&sql)
            .bind(category)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let item = item_from_row(&row)?;
        let sql = format!(
            "SELECT {EVALUATION_COLUMNS} FROM evaluations WHERE item_id = $1 \
             ORDER BY created_at_ms, evaluator"
        );
        let evaluations = sqlx::query(&sql)
            .bind(id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(evaluation_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(ItemDetail { item, evaluations }))
    }

    /// Set status (and reason) of these items; only rows of `category`.
    pub async fn set_status(
        &self,
        category: &str,
        ids: &[String],
        status: ItemStatus,
        reason: Option<&str>,
    ) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut changed = 0;
        let mut tx = self.write_tx().await?;
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "UPDATE items SET status = $1, reason = $2 WHERE category = $3 AND id IN ({})",
                placeholders(4, chunk.len())
            );
            let mut query = sqlx::query(&sql)
                .bind(status.as_str())
                .bind(reason)
                .bind(category);
            for id in chunk {
                query = query.bind(id.as_str());
            }
            changed += query.execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        debug!(
            category,
            status = status.as_str(),
            changed,
            "item status set"
        );
        Ok(changed)
    }

    /// Upsert on (item_id, evaluator): re-evaluating replaces the earlier score. One transaction.
    pub async fn put_evaluations(&self, evaluations: &[Evaluation]) -> Result<()> {
        for e in evaluations {
            finite("evaluation score", e.score)?;
        }
        // PostgreSQL refuses an upsert that touches one row twice, so keep only the last
        // evaluation per (item, evaluator) — the one a sequential upsert would have left.
        let mut last: HashMap<(&str, &str), usize> = HashMap::new();
        for (i, e) in evaluations.iter().enumerate() {
            last.insert((e.item_id.as_str(), e.evaluator.as_str()), i);
        }
        let mut keep: Vec<usize> = last.into_values().collect();
        keep.sort_unstable();
        if keep.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        for chunk in keep.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO evaluations (item_id, evaluator, model, score, reason, created_at_ms) \
                 VALUES {} ON CONFLICT (item_id, evaluator) DO UPDATE SET \
                 model = excluded.model, score = excluded.score, reason = excluded.reason, \
                 created_at_ms = excluded.created_at_ms",
                value_rows(1, chunk.len(), 6)
            );
            let mut query = sqlx::query(&sql);
            for &i in chunk {
                let e = &evaluations[i];
                query = query
                    .bind(e.item_id.as_str())
                    .bind(e.evaluator.as_str())
                    .bind(e.model.as_str())
                    .bind(e.score)
                    .bind(e.reason.as_deref())
                    .bind(e.created_at_ms);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        debug!(evaluations = keep.len(), "evaluations stored");
        Ok(())
    }

    /// Every pending or active item of the category with its evaluation mean and feedback
    /// counters (one query with a LEFT JOIN/GROUP BY).
    pub async fn rank_inputs(&self, category: &str) -> Result<Vec<RankInput>> {
        let rows = sqlx::query(
            "SELECT i.id, i.text, i.status, AVG(e.score), COUNT(e.item_id), \
                i.impressions, i.weighted_impressions, i.selections \
             FROM items i LEFT JOIN evaluations e ON e.item_id = i.id \
             WHERE i.category = $1 AND i.status IN ('pending', 'active') \
             GROUP BY i.id, i.text, i.status, i.impressions, i.weighted_impressions, \
                i.selections, i.created_at_ms \
             ORDER BY i.created_at_ms, i.id",
        )
        .bind(category)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(RankInput {
                    id: row.try_get(0)?,
                    text: row.try_get(1)?,
                    status: ItemStatus::parse(&row.try_get::<String, _>(2)?)?,
                    eval_mean: row.try_get(3)?,
                    eval_count: count(row.try_get(4)?),
                    impressions: count(row.try_get(5)?),
                    weighted_impressions: row.try_get(6)?,
                    selections: count(row.try_get(7)?),
                })
            })
            .collect()
    }
}
