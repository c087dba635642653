//! The providers' daily budgets counted on the main DB: every process of a deployment
//! (`serve` and each `larder worker`) opens the same main DB, so one `limits.tokens_per_day`
//! caps them all together instead of each process on its own.

use std::sync::Arc;

use larder_db::{Db, Spend};
use larder_providers::budget::{Budget, Ledger, Spent, Taken};

/// [`Ledger`] on the main DB's `provider_spend` table.
pub struct DbLedger(Db);

impl DbLedger {
    pub fn shared(db: &Db) -> Arc<dyn Ledger> {
        Arc::new(DbLedger(db.clone()))
    }
}

fn spent(spend: Spend) -> Spent {
    Spent {
        tokens: u64::try_from(spend.tokens).unwrap_or(0),
        requests: u64::try_from(spend.requests).unwrap_or(0),
    }
}

/// Counts and limits are far below `i64::MAX`; a larger limit means "no limit" in practice.
fn i64_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait::async_trait]
impl Ledger for DbLedger {
    async fn take_request(
        &self,
        provider: &str,
        day: u64,
        budget: Budget,
    ) -> Result<Taken, String> {
        let (counted, spend) = self
            .0
            .take_provider_request(
                provider,
                i64_of(day),
                i64_of(budget.tokens_per_day),
                i64_of(budget.requests_per_day),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(if counted {
            Taken::Yes(spent(spend))
        } else {
            Taken::Spent(spent(spend))
        })
    }

    async fn add_tokens(&self, provider: &str, day: u64, tokens: u64) -> Result<Spent, String> {
        self.0
            .add_provider_tokens(provider, i64_of(day), i64_of(tokens))
            .await
            .map(spent)
            .map_err(|e| e.to_string())
    }
}
