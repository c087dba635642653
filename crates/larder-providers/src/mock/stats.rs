//! What the mock server counts, for tests ("no request storm", "never more than 2 in flight")
//! and for `GET /stats`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Counters since the server started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MockStats {
    /// Requests on all model routes: chat and embeddings (not `GET /` or `/stats`).
    pub requests: u64,
    /// Requests by route: "openai", "openai-embeddings", "clova-v1", "clova-v3".
    pub by_route: BTreeMap<String, u64>,
    pub responses_2xx: u64,
    /// 4xx other than 429 (bad bodies, missing keys).
    pub responses_4xx: u64,
    pub responses_429: u64,
    pub responses_5xx: u64,
    /// Every answered status code.
    pub by_status: BTreeMap<u16, u64>,
    /// Injected faults by kind: "rate_429", "5xx", "garbage", "overlong", "injection",
    /// "wrong_language", "empty", "duplicates".
    pub faults: BTreeMap<String, u64>,
    /// Model requests being handled now.
    pub in_flight: u64,
    pub max_in_flight: u64,
    /// The most model requests that arrived within one whole second since start.
    pub max_requests_per_second: u64,
    /// CLOVA requests that carried `X-NCP-CLOVASTUDIO-REQUEST-ID`.
    pub clova_request_ids: u64,
}

#[derive(Default)]
pub(crate) struct Recorder {
    stats: MockStats,
    window_second: u64,
    window_count: u64,
}

impl Recorder {
    pub(crate) fn enter(&mut self, route: &'static str, since_start: Duration) {
        let s = &mut self.stats;
        s.requests += 1;
        *s.by_route.entry(route.to_owned()).or_default() += 1;
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
        let second = since_start.as_secs();
        if second != self.window_second {
            self.window_second = second;
            self.window_count = 0;
        }
        self.window_count += 1;
        s.max_requests_per_second = s.max_requests_per_second.max(self.window_count);
    }

    pub(crate) fn leave(&mut self) {
        self.stats.in_flight = self.stats.in_flight.saturating_sub(1);
    }

    pub(crate) fn status(&mut self, status: u16) {
        let s = &mut self.stats;
        *s.by_status.entry(status).or_default() += 1;
        match status {
            200..=299 => s.responses_2xx += 1,
            429 => s.responses_429 += 1,
            400..=499 => s.responses_4xx += 1,
            500..=599 => s.responses_5xx += 1,
            _ => {}
        }
    }

    pub(crate) fn fault(&mut self, kind: &'static str) {
        *self.stats.faults.entry(kind.to_owned()).or_default() += 1;
    }

    pub(crate) fn request_id(&mut self) {
        self.stats.clova_request_ids += 1;
    }

    pub(crate) fn snapshot(&self) -> MockStats {
        self.stats.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_in_flight_and_per_second_peaks() {
        let mut r = Recorder::default();
        r.enter("openai", Duration::from_millis(100));
        r.enter("openai", Duration::from_millis(900));
        r.leave();
        r.enter("clova-v1", Duration::from_millis(1_100));
        r.status(200);
        r.status(429);
        r.status(401);
        r.status(503);
        r.fault("garbage");
        let s = r.snapshot();
        assert_eq!(s.requests, 3);
        assert_eq!(s.by_route["openai"], 2);
        assert_eq!(s.in_flight, 2);
        assert_eq!(s.max_in_flight, 2);
        assert_eq!(s.max_requests_per_second, 2);
        assert_eq!(
            (
                s.responses_2xx,
                s.responses_4xx,
                s.responses_429,
                s.responses_5xx
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(s.by_status[&401], 1);
        assert_eq!(s.faults["garbage"], 1);
    }
}
