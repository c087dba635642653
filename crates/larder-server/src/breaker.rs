//! A small circuit breaker in front of the lookup path. After `failure_threshold` consecutive
//! failures it opens for `open_ms`, during which lookups answer degraded at once instead of
//! waiting on a dead store; then one trial call is let through (half-open).
//!
//! Hand-rolled: the breaker crates on crates.io (`failsafe`, `recloser`) are unmaintained or
//! wrap futures in ways that fight per-call timeouts; this is 60 lines with a std Mutex held
//! for a few instructions, never across an await.
//!
//! A call is let through as a [`Permit`], which records its outcome. A permit dropped without
//! an outcome (the client went away, the request was cancelled) gives the half-open trial back:
//! before, such a trial stayed "in flight" forever and every later lookup answered degraded.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::BreakerConfig;
use crate::metrics::names;

pub struct Breaker {
    threshold: u32,
    open_for: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    failures: u32,
    open_until: Option<Instant>,
    trial_in_flight: bool,
}

impl Breaker {
    pub fn new(config: &BreakerConfig) -> Self {
        Breaker {
            threshold: config.failure_threshold.max(1),
            open_for: Duration::from_millis(config.open_ms),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May a call go to the store now? `None` while the breaker is open.
    pub fn allow(&self) -> Option<Permit<'_>> {
        let mut s = self.state();
        let trial = match s.open_until {
            None => false,
            Some(until) if Instant::now() < until => return None,
            Some(_) if s.trial_in_flight => return None,
            Some(_) => {
                s.trial_in_flight = true;
                true
            }
        };
        Some(Permit {
            breaker: self,
            trial,
            recorded: false,
        })
    }

    fn record(&self, ok: bool) {
        let mut s = self.state();
        s.trial_in_flight = false;
        let was_open = s.open_until.is_some();
        if ok {
            s.failures = 0;
            s.open_until = None;
            if was_open {
                tracing::info!("store answers again: circuit breaker closed");
            }
        } else {
            s.failures += 1;
            if s.failures >= self.threshold {
                s.open_until = Some(Instant::now() + self.open_for);
                if !was_open {
                    tracing::warn!(
                        failures = s.failures,
                        "store failing: circuit breaker open, lookups answer degraded"
                    );
                }
            }
        }
        metrics::gauge!(names::BREAKER_OPEN).set(if s.open_until.is_some() { 1.0 } else { 0.0 });
    }
}

/// One call let through by [`Breaker::allow`].
pub struct Permit<'a> {
    breaker: &'a Breaker,
    trial: bool,
    recorded: bool,
}

impl Permit<'_> {
    /// The call's outcome.
    pub fn record(mut self, ok: bool) {
        self.recorded = true;
        self.breaker.record(ok);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.recorded && self.trial {
            self.breaker.state().trial_in_flight = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_lets_one_trial_through() {
        let b = Breaker::new(&BreakerConfig {
            failure_threshold: 2,
            open_ms: 30,
        });
        b.allow().expect("closed").record(false);
        b.allow()
            .expect("one failure is below the threshold")
            .record(false);
        assert!(b.allow().is_none(), "open after two failures");
        std::thread::sleep(Duration::from_millis(40));
        let trial = b.allow().expect("half-open: one trial");
        assert!(b.allow().is_none(), "only one trial at a time");
        trial.record(true);
        assert!(b.allow().is_some(), "closed again after a success");
    }

    #[test]
    fn a_trial_dropped_without_an_outcome_is_given_back() {
        let b = Breaker::new(&BreakerConfig {
            failure_threshold: 1,
            open_ms: 10,
        });
        b.allow().expect("closed").record(false);
        std::thread::sleep(Duration::from_millis(20));
        let trial = b.allow().expect("half-open");
        assert!(b.allow().is_none(), "the trial is in flight");
        // The request was cancelled (say, its client hung up) before the store answered.
        drop(trial);
        let next = b.allow().expect("another trial may go");
        next.record(true);
        assert!(b.allow().is_some(), "closed");
    }
}
