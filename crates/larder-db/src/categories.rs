//! Categories: registration, listing with counts, and the generation cooldown claim.

use sqlx::Row;
use tracing::debug;

use crate::connect::Db;
use crate::error::Result;
use crate::model::{Category, CategorySummary};
use crate::sql::count;

impl Db {
    /// Insert or update (description/locale only overwritten when Some). Returns true when newly
    /// created.
    pub async fn register_category(
        &self,
        name: &str,
        description: Option<&str>,
        locale: Option<&str>,
        now_ms: i64,
    ) -> Result<bool> {
        // Two statements rather than one upsert: "was it new?" has no portable RETURNING form
        // (PostgreSQL's `xmax = 0` trick does not exist on SQLite). The INSERT alone decides
        // creation atomically, so two registrations racing still yield exactly one `true`.
        let created = sqlx::query(
            "INSERT INTO categories (name, description, locale, created_at_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(description)
        .bind(locale)
        .bind(now_ms)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1;
        if !created && (description.is_some() || locale.is_some()) {
            sqlx::query(
                "UPDATE categories SET description = COALESCE($1, description), \
                 locale = COALESCE($2, locale) WHERE name = $3",
            )
            .bind(description)
            .bind(locale)
            .bind(name)
            .execute(&self.pool)
            .await?;
        }
        debug!(category = name, created, "category registered");
        Ok(created)
    }

    pub async fn category(&self, name: &str) -> Result<Option<Category>> {
        let row = sqlx::query(
            "SELECT name, description, locale, created_at_ms, last_generation_ms \
             FROM categories WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(Category {
                name: row.try_get(0)?,
                description: row.try_get(1)?,
                locale: row.try_get(2)?,
                created_at_ms: row.try_get(3)?,
                last_generation_ms: row.try_get(4)?,
            })
        })
        .transpose()
    }

    /// How many categories there are (the `categories.max` guard).
    pub async fn category_count(&self) -> Result<u64> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM categories")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(count(n))
    }

    /// All categories, ordered by name, with counts (one query, not N+1).
    pub async fn categories(&self) -> Result<Vec<CategorySummary>> {
        // COUNT(CASE …) rather than SUM: PostgreSQL's SUM over BIGINT is NUMERIC, which the Any
        // driver cannot decode; COUNT is BIGINT on both backends.
        let rows = sqlx::query(
            "SELECT c.name, c.description, c.locale, \
                COUNT(CASE WHEN i.status = 'active' THEN 1 END), \
                COUNT(CASE WHEN EXISTS (SELECT 1 FROM evaluations e WHERE e.item_id = i.id) \
                      THEN 1 END) \
             FROM categories c LEFT JOIN items i ON i.category = c.name \
             GROUP BY c.name, c.description, c.locale",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows
            .iter()
            .map(|row| {
                Ok(CategorySummary {
                    name: row.try_get(0)?,
                    description: row.try_get(1)?,
                    locale: row.try_get(2)?,
                    pool_size: count(row.try_get(3)?),
                    evaluated: count(row.try_get(4)?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // Sorted here, not by ORDER BY: PostgreSQL orders text by the database's collation and
        // SQLite by bytes; Rust's str order (code points) is the same everywhere.
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Atomically claim the right to queue generation: true (and last_generation_ms := now) iff
    /// last_generation_ms is NULL or ≤ now - cooldown_ms. Unknown category → false.
    pub async fn claim_generation(
        &self,
        name: &str,
        now_ms: i64,
        cooldown_ms: i64,
    ) -> Result<bool> {
        // One UPDATE whose WHERE re-checks the cooldown: SQLite serialises writers, and
        // PostgreSQL re-evaluates the WHERE on the locked row, so concurrent claims (from any
        // number of processes) see exactly one winner.
        let claimed = sqlx::query(
            "UPDATE categories SET last_generation_ms = $1 \
             WHERE name = $2 AND (last_generation_ms IS NULL OR last_generation_ms <= $3)",
        )
        .bind(now_ms)
        .bind(name)
        .bind(now_ms.saturating_sub(cooldown_ms))
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1;
        debug!(category = name, claimed, "generation claim");
        Ok(claimed)
    }

    /// Undo a claim made at `claimed_ms` whose generation could not be queued, so the next
    /// request may claim again at once. A newer claim (another process) is left alone.
    pub async fn release_generation(&self, name: &str, claimed_ms: i64) -> Result<bool> {
        let released = sqlx::query(
            "UPDATE categories SET last_generation_ms = NULL \
             WHERE name = $1 AND last_generation_ms = $2",
        )
        .bind(name)
        .bind(claimed_ms)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1;
        debug!(category = name, released, "generation claim released");
        Ok(released)
    }
}
