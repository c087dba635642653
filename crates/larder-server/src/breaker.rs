//! A small circuit breaker in front of the lookup path. After `failure_threshold` consecutive
//! failures it opens for `open_ms`, during which lookups answer degraded at once instead of
//! waiting on a dead store; then one trial call is let through (half-open).
//!
//! Hand-rolled: the breaker crates on crates.io (`failsafe`, `recloser`) are unmaintained or
//! wrap futures in ways that fight per-call timeouts; this is 60 lines with a std Mutex held
//! for a few instructions, never across an await.

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

    /// May a call go to the store now?
    pub fn allow(&self) -> bool {
        let mut s = self.state();
        match s.open_until {
            None => true,
            Some(until) if Instant::now() < until => false,
            Some(_) if s.trial_in_flight => false,
            Some(_) => {
                s.trial_in_flight = true;
                true
            }
        }
    }

    pub fn record(&self, ok: bool) {
        let mut s = self.state();
        s.trial_in_flight = false;
        if ok {
            s.failures = 0;
            s.open_until = None;
        } else {
            s.failures += 1;
            if s.failures >= self.threshold {
                s.open_until = Some(Instant::now() + self.open_for);
            }
        }
        metrics::gauge!(names::BREAKER_OPEN).set(if s.open_until.is_some() { 1.0 } else { 0.0 });
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
        assert!(b.allow());
        b.record(false);
        assert!(b.allow(), "one failure is below the threshold");
        b.record(false);
        assert!(!b.allow(), "open after two failures");
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow(), "half-open: one trial");
        assert!(!b.allow(), "only one trial at a time");
        b.record(true);
        assert!(b.allow(), "closed again after a success");
    }
}
