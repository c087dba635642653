//! Who may make a new category, and how many: every new category costs LLM generations, so
//! registering one is the spend the API must guard.
//!
//! - `max`: the most categories the main DB holds; a new one beyond it is `413 too_large`.
//! - `new_per_minute`: new categories one client may register per minute (a keyed token
//!   bucket, governor's); beyond it `429 rate_limited`. Re-registering an existing category
//!   costs nothing and is not counted.
//! - `auto_register`: whether a read (`GET …/items`) of an unknown category registers it. Off,
//!   such a read answers `404 not_found`; a `PUT` or a refresh (writes) still registers.

use std::num::NonZeroU32;
use std::time::Duration;

use crate::config::CategoriesConfig;
use crate::error::{CategoriesError, Result};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Distinct clients the rate limiter remembers before it drops the idle ones.
const REMEMBERED_CLIENTS: usize = 10_000;

/// Whether a request creates a category by writing (`PUT`, refresh) or by reading (`GET
/// …/items` of an unknown name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Write,
    Read,
}

pub struct Admission {
    max: u64,
    auto_register: bool,
    per_client: Option<DefaultKeyedRateLimiter<String>>,
    /// A refused client is told to come back after one cell of its quota.
    retry_after: Duration,
}

impl Admission {
    /// `auth_on`: whether the server checks tokens (it decides `auto_register`'s default).
    pub fn new(config: &CategoriesConfig, auth_on: bool) -> Admission {
        let rate = NonZeroU32::new(config.new_per_minute);
        Admission {
            max: config.max,
            auto_register: config.auto_register.unwrap_or(!auth_on),
            per_client: rate.map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            retry_after: rate.map_or(Duration::ZERO, |n| {
                Duration::from_secs(60).div_f64(f64::from(n.get()))
            }),
        }
    }

    /// No limits, reads register: the simulator's and the tests' admission.
    pub fn open() -> Admission {
        Admission {
            max: u64::MAX,
            auto_register: true,
            per_client: None,
            retry_after: Duration::ZERO,
        }
    }

    /// Whether a read of an unknown category registers it.
    pub(crate) fn reads_register(&self) -> bool {
        self.auto_register
    }

    /// May `client` create a new category now, `existing` categories being there already?
    pub(crate) fn admit(&self, client: &str, via: Via, existing: u64, name: &str) -> Result<()> {
        if via == Via::Read && !self.auto_register {
            return Err(CategoriesError::NotFound(format!(
                "no category {name:?}; register it with PUT /v1/categories/{{category}} (reads do not create categories on this server)"
            )));
        }
        if existing >= self.max {
            return Err(CategoriesError::TooLarge(format!(
                "this server holds {existing} categories; the limit is categories.max = {}",
                self.max
            )));
        }
        if let Some(limiter) = &self.per_client {
            if limiter.len() > REMEMBERED_CLIENTS {
                limiter.retain_recent();
            }
            if limiter.check_key(&client.to_owned()).is_err() {
                return Err(CategoriesError::RateLimited {
                    message: "too many new categories from this client; try again later".into(),
                    retry_after: self.retry_after,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max: u64, auto_register: Option<bool>, per_minute: u32, auth: bool) -> Admission {
        let config = CategoriesConfig {
            max,
            auto_register,
            new_per_minute: per_minute,
            ..CategoriesConfig::default()
        };
        Admission::new(&config, auth)
    }

    #[test]
    fn reads_register_only_without_auth_unless_told() {
        let open = admission(10, None, 0, false);
        assert!(open.admit("a", Via::Read, 0, "x").is_ok());
        let closed = admission(10, None, 0, true);
        assert!(matches!(
            closed.admit("a", Via::Read, 0, "x"),
            Err(CategoriesError::NotFound(_))
        ));
        assert!(closed.admit("a", Via::Write, 0, "x").is_ok());
        let told = admission(10, Some(true), 0, true);
        assert!(told.admit("a", Via::Read, 0, "x").is_ok());
    }

    #[test]
    fn the_cap_and_the_per_client_rate_refuse() {
        let a = admission(3, None, 2, false);
        assert!(matches!(
            a.admit("a", Via::Write, 3, "x"),
            Err(CategoriesError::TooLarge(_))
        ));
        assert!(a.admit("a", Via::Write, 0, "x").is_ok());
        assert!(a.admit("a", Via::Write, 0, "y").is_ok());
        match a.admit("a", Via::Write, 0, "z") {
            Err(CategoriesError::RateLimited { retry_after, .. }) => {
                assert_eq!(retry_after, Duration::from_secs(30))
            }
            other => panic!("expected rate_limited, got {other:?}"),
        }
        // Another client has its own bucket.
        assert!(a.admit("b", Via::Write, 0, "z").is_ok());
    }
}
