//! Where the daily spend of a provider (`limits.tokens_per_day`, `limits.requests_per_day`) is
//! counted. One count per provider name and UTC day, shared by everything that calls that
//! provider through the same [`Ledger`]: in one process the [`MemoryLedger`]; across `serve`
//! and `larder worker` processes a ledger on the main DB they share (`larder-app` adapts
//! `larder_db::Db` to this trait), so a budget caps the whole deployment, not each process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Tokens and HTTP attempts of one provider on one UTC day.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Spent {
    pub tokens: u64,
    pub requests: u64,
}

/// A provider's daily limits; 0 is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub tokens_per_day: u64,
    pub requests_per_day: u64,
}

impl Budget {
    /// Whether `spent` leaves room for one more request.
    pub fn allows(&self, spent: Spent) -> bool {
        (self.tokens_per_day == 0 || spent.tokens < self.tokens_per_day)
            && (self.requests_per_day == 0 || spent.requests < self.requests_per_day)
    }
}

/// What taking a request from the budget did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Counted; the spend after it.
    Yes(Spent),
    /// The budget is spent; nothing was counted.
    Spent(Spent),
}

/// The daily spend counts. Errors are the ledger's own (its DB is down) and fail the attempt
/// as a transport error, which is retried: a budget that cannot be checked is not spent past.
#[async_trait::async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// Count one request of `provider` on `day` (days since the Unix epoch, UTC) unless
    /// `budget` is already spent, atomically.
    async fn take_request(&self, provider: &str, day: u64, budget: Budget)
        -> Result<Taken, String>;
    /// Add an answered call's tokens; the spend after it.
    async fn add_tokens(&self, provider: &str, day: u64, tokens: u64) -> Result<Spent, String>;
}

/// Counts in this process's memory: a restart starts the day again.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    counts: Mutex<HashMap<String, (u64, Spent)>>,
}

impl MemoryLedger {
    pub fn shared() -> Arc<dyn Ledger> {
        Arc::new(MemoryLedger::default())
    }

    /// `provider`'s count of `day` (a new day starts from zero), changed by `change`.
    fn with<T>(&self, provider: &str, day: u64, change: impl FnOnce(&mut Spent) -> T) -> T {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let entry = counts
            .entry(provider.to_owned())
            .or_insert((day, Spent::default()));
        if entry.0 != day {
            *entry = (day, Spent::default());
        }
        change(&mut entry.1)
    }
}

#[async_trait::async_trait]
impl Ledger for MemoryLedger {
    async fn take_request(
        &self,
        provider: &str,
        day: u64,
        budget: Budget,
    ) -> Result<Taken, String> {
        Ok(self.with(provider, day, |spent| {
            if budget.allows(*spent) {
                spent.requests += 1;
                Taken::Yes(*spent)
            } else {
                Taken::Spent(*spent)
            }
        }))
    }

    async fn add_tokens(&self, provider: &str, day: u64, tokens: u64) -> Result<Spent, String> {
        Ok(self.with(provider, day, |spent| {
            spent.tokens = spent.tokens.saturating_add(tokens);
            *spent
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_ledger_counts_per_provider_and_day_and_stops_at_the_budget() {
        let ledger = MemoryLedger::default();
        let budget = Budget {
            tokens_per_day: 0,
            requests_per_day: 2,
        };
        for n in 1..=2 {
            assert_eq!(
                ledger.take_request("a", 10, budget).await,
                Ok(Taken::Yes(Spent {
                    tokens: 0,
                    requests: n
                }))
            );
        }
        let spent = Spent {
            tokens: 0,
            requests: 2,
        };
        assert_eq!(
            ledger.take_request("a", 10, budget).await,
            Ok(Taken::Spent(spent))
        );
        assert!(matches!(
            ledger.take_request("b", 10, budget).await,
            Ok(Taken::Yes(_))
        ));
        assert!(matches!(
            ledger.take_request("a", 11, budget).await,
            Ok(Taken::Yes(_))
        ));
        let tokens = Budget {
            tokens_per_day: 5,
            requests_per_day: 0,
        };
        assert_eq!(ledger.add_tokens("c", 10, 5).await.map(|s| s.tokens), Ok(5));
        assert!(matches!(
            ledger.take_request("c", 10, tokens).await,
            Ok(Taken::Spent(_))
        ));
    }
}
