//! The daily spend of each provider (`limits.tokens_per_day`, `limits.requests_per_day`),
//! counted here so that every process on this DB (`serve`, each `larder worker`) draws on one
//! budget. A row per provider name and UTC day.

use sqlx::Row;

use crate::connect::Db;
use crate::error::Result;

/// Tokens and requests of one provider on one day, after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spend {
    pub tokens: i64,
    pub requests: i64,
}

impl Db {
    /// Count one request of `provider` on `day` unless `max_tokens` or `max_requests` (0: no
    /// limit) is already reached; atomically, so processes racing for the last request never
    /// both get it. `(counted, the spend after)`.
    pub async fn take_provider_request(
        &self,
        provider: &str,
        day: i64,
        max_tokens: i64,
        max_requests: i64,
    ) -> Result<(bool, Spend)> {
        // On SQLite this is BEGIN IMMEDIATE: one writer at a time across processes.
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO provider_spend (provider, day, tokens, requests) VALUES ($1, $2, 0, 0) \
             ON CONFLICT (provider, day) DO NOTHING",
        )
        .bind(provider)
        .bind(day)
        .execute(&mut *tx)
        .await?;
        let taken = sqlx::query(
            "UPDATE provider_spend SET requests = requests + 1 \
             WHERE provider = $1 AND day = $2 AND ($3 = 0 OR tokens < $3) AND ($4 = 0 OR requests < $4) \
             RETURNING tokens, requests",
        )
        .bind(provider)
        .bind(day)
        .bind(max_tokens)
        .bind(max_requests)
        .fetch_optional(&mut *tx)
        .await?;
        let (counted, row) = match taken {
            Some(row) => (true, row),
            None => (
                false,
                sqlx::query(
                    "SELECT tokens, requests FROM provider_spend WHERE provider = $1 AND day = $2",
                )
                .bind(provider)
                .bind(day)
                .fetch_one(&mut *tx)
                .await?,
            ),
        };
        let spend = Spend {
            tokens: row.try_get(0)?,
            requests: row.try_get(1)?,
        };
        tx.commit().await?;
        Ok((counted, spend))
    }

    /// Add `tokens` to `provider`'s spend of `day`; the spend after.
    pub async fn add_provider_tokens(
        &self,
        provider: &str,
        day: i64,
        tokens: i64,
    ) -> Result<Spend> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(
            "INSERT INTO provider_spend (provider, day, tokens, requests) VALUES ($1, $2, $3, 0) \
             ON CONFLICT (provider, day) DO UPDATE SET tokens = provider_spend.tokens + excluded.tokens \
             RETURNING tokens, requests",
        )
        .bind(provider)
        .bind(day)
        .bind(tokens)
        .fetch_one(&mut *tx)
        .await?;
        let spend = Spend {
            tokens: row.try_get(0)?,
            requests: row.try_get(1)?,
        };
        tx.commit().await?;
        Ok(spend)
    }
}
