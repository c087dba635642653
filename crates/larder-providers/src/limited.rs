//! The limits layer every built provider goes through: a concurrency semaphore, an evenly
//! spaced requests-per-minute limiter, a per-attempt timeout, retries with exponential backoff
//! and full jitter that honour `Retry-After`, and the provider metrics.

use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use tokio::sync::Semaphore;

use crate::budget::{Budget, Ledger, Spent, Taken};
use crate::config::Limits;
use crate::metrics as names;
use crate::{ChatRequest, ChatResponse, EmbedResponse, Provider, ProviderError, Usage};

/// A `Retry-After` longer than this is not slept through: the error goes back to the caller
/// (the pipeline re-queues the work) instead of pinning a task for many minutes.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

pub(crate) struct Limited<P> {
    inner: P,
    limits: Limits,
    permits: Semaphore,
    rate: Option<DefaultDirectRateLimiter>,
    /// Where today's spend is counted, when `tokens_per_day` or `requests_per_day` is set.
    ledger: Option<Arc<dyn Ledger>>,
}

/// An answer whose tokens the layer counts and charges to the budget.
trait Metered {
    fn usage(&self) -> Usage;
}

impl Metered for ChatResponse {
    fn usage(&self) -> Usage {
        self.usage
    }
}

impl Metered for EmbedResponse {
    fn usage(&self) -> Usage {
        self.usage
    }
}

/// Today's number: days since the Unix epoch, UTC.
fn utc_day() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400)
}

impl<P: Provider> Limited<P> {
    /// With the budget counted in this provider's own memory.
    #[cfg(test)]
    pub(crate) fn new(inner: P, limits: Limits) -> Limited<P> {
        Limited::with_ledger(inner, limits, crate::budget::MemoryLedger::shared())
    }

    /// With the budget counted in `ledger` (shared by every provider built on it).
    pub(crate) fn with_ledger(inner: P, limits: Limits, ledger: Arc<dyn Ledger>) -> Limited<P> {
        let rate = NonZeroU32::new(limits.requests_per_minute).map(|rpm| {
            // One cell per period and a burst of 1: requests are spaced evenly, so "120 per
            // minute" never becomes 120 at once followed by a minute of 429s.
            let period = Duration::from_secs(60) / rpm.get();
            let quota = Quota::with_period(period)
                .unwrap_or_else(|| Quota::per_minute(rpm))
                .allow_burst(NonZeroU32::MIN);
            RateLimiter::direct(quota)
        });
        let budgeted = limits.tokens_per_day > 0 || limits.requests_per_day > 0;
        let limited = Limited {
            permits: Semaphore::new(limits.concurrency.max(1)),
            ledger: budgeted.then_some(ledger),
            inner,
            limits,
            rate,
        };
        if limited.ledger.is_some() {
            // Until the first call reads the shared count: the whole budget.
            limited.show_budget(Spent::default());
        }
        limited
    }

    fn budget(&self) -> Budget {
        Budget {
            tokens_per_day: self.limits.tokens_per_day,
            requests_per_day: self.limits.requests_per_day,
        }
    }

    /// Take one request from today's budget, or fail without calling when it is spent.
    async fn spend_request(&self) -> Result<(), ProviderError> {
        let Some(ledger) = &self.ledger else {
            return Ok(());
        };
        let taken = ledger
            .take_request(self.inner.name(), utc_day(), self.budget())
            .await
            .map_err(|e| ProviderError::Transport(format!("budget ledger: {e}")))?;
        let spent = match taken {
            Taken::Yes(spent) => {
                self.show_budget(spent);
                return Ok(());
            }
            Taken::Spent(spent) => spent,
        };
        self.show_budget(spent);
        let l = &self.limits;
        if l.tokens_per_day > 0 && spent.tokens >= l.tokens_per_day {
            return Err(ProviderError::BudgetSpent(format!(
                "{} of limits.tokens_per_day = {} tokens used today (UTC)",
                spent.tokens, l.tokens_per_day
            )));
        }
        if l.requests_per_day > 0 && spent.requests >= l.requests_per_day {
            return Err(ProviderError::BudgetSpent(format!(
                "{} of limits.requests_per_day = {} requests made today (UTC)",
                spent.requests, l.requests_per_day
            )));
        }
        // The ledger refused although neither limit is reached: it counted another limit.
        Err(ProviderError::BudgetSpent(format!(
            "{} tokens and {} requests used today (UTC)",
            spent.tokens, spent.requests
        )))
    }

    /// Charge an answered call's tokens to today's budget. The answer is already paid for, so
    /// a ledger that cannot take them is logged, not an error.
    async fn spend_tokens(&self, tokens: u64) {
        let Some(ledger) = &self.ledger else {
            return;
        };
        match ledger
            .add_tokens(self.inner.name(), utc_day(), tokens)
            .await
        {
            Ok(spent) => self.show_budget(spent),
            Err(error) => {
                tracing::warn!(provider = self.name(), tokens, %error, "cannot charge tokens to the budget ledger")
            }
        }
    }

    /// The remaining budget as gauges, for `/metrics` and the operator page.
    fn show_budget(&self, spent: Spent) {
        let l = &self.limits;
        for (resource, limit, used) in [
            ("tokens", l.tokens_per_day, spent.tokens),
            ("requests", l.requests_per_day, spent.requests),
        ] {
            if limit > 0 {
                metrics::gauge!(names::BUDGET_REMAINING, "provider" => self.inner.name().to_owned(),
                    "model" => self.inner.model().to_owned(), "resource" => resource)
                .set(limit.saturating_sub(used) as f64);
            }
        }
    }

    /// One HTTP attempt under a permit, the rate limiter and the timeout.
    async fn attempt<T, Fut>(&self, call: Fut) -> Result<T, ProviderError>
    where
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        // The permit is taken before the rate-limit wait: waiting for a rate cell first and
        // a permit later would let cells pile up and then fire together.
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| ProviderError::Config("provider limiter closed".into()))?;
        if let Some(rate) = &self.rate {
            rate.until_ready().await;
        }
        self.spend_request().await?;
        if self.limits.timeout_ms == 0 {
            return call.await;
        }
        let timeout = Duration::from_millis(self.limits.timeout_ms);
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or(Err(ProviderError::Timeout(timeout)))
    }

    /// A whole call: attempts (each made by `what`) until one succeeds, the error is not
    /// retryable, `max_retries` is reached or `Retry-After` exceeds [`MAX_RETRY_AFTER`], with
    /// backoff between them; counts every attempt in the metrics and the budget.
    async fn call<T, F, Fut>(&self, what: F) -> Result<T, ProviderError>
    where
        T: Metered,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let mut attempt = 0u32;
        loop {
            let started = Instant::now();
            // `what()` only builds the future; nothing runs before the permit is held.
            let result = self.attempt(what()).await;
            metrics::histogram!(names::REQUEST_SECONDS, "provider" => self.name().to_owned(),
                "model" => self.model().to_owned())
            .record(started.elapsed().as_secs_f64());
            let error = match result {
                Ok(response) => {
                    let usage = response.usage();
                    self.count(names::REQUESTS, "outcome", "ok", 1);
                    self.spend_tokens(usage.prompt_tokens.saturating_add(usage.completion_tokens))
                        .await;
                    self.count(names::TOKENS, "direction", "prompt", usage.prompt_tokens);
                    self.count(
                        names::TOKENS,
                        "direction",
                        "completion",
                        usage.completion_tokens,
                    );
                    return Ok(response);
                }
                Err(error) => error,
            };
            self.count(names::ERRORS, "kind", error.kind(), 1);
            let retry_after = error.retry_after();
            let give_up = !error.retryable()
                || attempt >= self.limits.max_retries
                || retry_after.is_some_and(|d| d > MAX_RETRY_AFTER);
            if give_up {
                self.count(names::REQUESTS, "outcome", "error", 1);
                tracing::warn!(provider = self.name(), model = self.model(), attempts = attempt + 1,
                    error = %error, "provider call failed");
                return Err(error);
            }
            self.count(names::REQUESTS, "outcome", "retry", 1);
            let delay = self.backoff(attempt, retry_after);
            tracing::debug!(provider = self.name(), attempt = attempt + 1, delay_ms = delay.as_millis() as u64,
                error = %error, "retrying provider call");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// Full jitter (uniform in 0..=min(max, base·2^attempt)), but never shorter than the
    /// server's `Retry-After`. A little jitter on top of `Retry-After` keeps many waiting
    /// callers from retrying in the same millisecond.
    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let cap = self
            .limits
            .backoff_base_ms
            .saturating_mul(1u64.checked_shl(attempt.min(32)).unwrap_or(u64::MAX))
            .min(self.limits.backoff_max_ms);
        let mut rng = rand::rng();
        match retry_after {
            Some(after) => {
                after + Duration::from_millis(rng.random_range(0..=self.limits.backoff_base_ms))
            }
            None => Duration::from_millis(rng.random_range(0..=cap)),
        }
    }

    fn count(&self, metric: &'static str, label: &'static str, value: &'static str, n: u64) {
        metrics::counter!(metric, "provider" => self.inner.name().to_owned(),
            "model" => self.inner.model().to_owned(), label => value)
        .increment(n);
    }
}

#[async_trait::async_trait]
impl<P: Provider> Provider for Limited<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn model(&self) -> &str {
        self.inner.model()
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        self.call(|| self.inner.chat(request)).await
    }

    /// Through the same permit, rate limiter, budget, timeout, retries and metrics as
    /// `chat`. No texts is no call: the inner provider answers at once, nothing is spent.
    async fn embed(&self, texts: &[String]) -> Result<EmbedResponse, ProviderError> {
        if texts.is_empty() {
            return self.inner.embed(texts).await;
        }
        self.call(|| self.inner.embed(texts)).await
    }

    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limited")
            .field("inner", &DescribeWith(&self.inner))
            .field("limits", &self.limits)
            .finish()
    }
}

/// Formats a provider through `Provider::describe`.
struct DescribeWith<'a, P>(&'a P);

impl<P: Provider> fmt::Debug for DescribeWith<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.describe(f)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    use metrics::{
        Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
        SharedString, Unit,
    };

    use super::*;
    use crate::simulated::Simulated;
    use crate::{ChatMessage, Latency, ResponseFormat, Role, Usage};

    /// Records every counter increment and histogram sample as "name{label=value,…}" → sum.
    #[derive(Default, Clone)]
    struct Capture(Arc<Mutex<BTreeMap<String, f64>>>);

    struct Handle(String, Capture);

    /// The captured value of metric `name` for the `Flaky` provider, with `label` if given.
    fn flaky_sample(seen: &BTreeMap<String, f64>, name: &str, label: Option<(&str, &str)>) -> f64 {
        let mut labels = vec!["model=m".to_owned(), "provider=flaky".to_owned()];
        labels.extend(label.map(|(k, v)| format!("{k}={v}")));
        labels.sort();
        seen.get(&format!("{name}{{{}}}", labels.join(",")))
            .copied()
            .unwrap_or(0.0)
    }

    impl CounterFn for Handle {
        fn increment(&self, value: u64) {
            *self
                .1
                 .0
                .lock()
                .expect("not poisoned")
                .entry(self.0.clone())
                .or_default() += value as f64;
        }
        fn absolute(&self, _value: u64) {}
    }

    impl HistogramFn for Handle {
        fn record(&self, _value: f64) {
            *self
                .1
                 .0
                .lock()
                .expect("not poisoned")
                .entry(self.0.clone())
                .or_default() += 1.0;
        }
    }

    fn key_text(key: &Key) -> String {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        format!("{}{{{}}}", key.name(), labels.join(","))
    }

    impl Recorder for Capture {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(Arc::new(Handle(key_text(key), self.clone())))
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::from_arc(Arc::new(Handle(key_text(key), self.clone())))
        }
    }

    /// Fails `failures` times with a 429, then answers.
    struct Flaky {
        failures: u32,
        calls: AtomicU32,
    }

    #[async_trait::async_trait]
    impl Provider for Flaky {
        fn name(&self) -> &str {
            "flaky"
        }
        fn kind(&self) -> &'static str {
            "simulated"
        }
        fn model(&self) -> &str {
            "m"
        }
        async fn chat(&self, _: &ChatRequest) -> Result<ChatResponse, ProviderError> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
                return Err(ProviderError::RateLimited { retry_after: None });
            }
            Ok(ChatResponse {
                content: "{}".into(),
                usage: Usage {
                    prompt_tokens: 10,
                    completion_tokens: 3,
                },
            })
        }
        /// Shares the failure count with `chat`; 7 prompt tokens a call.
        async fn embed(&self, texts: &[String]) -> Result<EmbedResponse, ProviderError> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
                return Err(ProviderError::Http {
                    status: 503,
                    retry_after: None,
                    message: "busy".into(),
                });
            }
            Ok(EmbedResponse {
                vectors: texts.iter().map(|_| vec![1.0, 0.0]).collect(),
                usage: Usage {
                    prompt_tokens: 7,
                    completion_tokens: 0,
                },
            })
        }
    }

    fn texts() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn embed_goes_through_the_same_retries_budget_and_metrics() {
        let capture = Capture::default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let limits = Limits {
            max_retries: 2,
            backoff_base_ms: 1,
            backoff_max_ms: 2,
            ..Limits::default()
        };
        let flaky = |failures, limits: &Limits| {
            Limited::new(
                Flaky {
                    failures,
                    calls: AtomicU32::new(0),
                },
                limits.clone(),
            )
        };
        metrics::with_local_recorder(&capture, || {
            runtime.block_on(async {
                // Two 503s, then an answer: within max_retries = 2.
                let healed = flaky(2, &limits);
                let answer = healed.embed(&texts()).await.expect("third attempt answers");
                assert_eq!(answer.vectors.len(), 2);
                assert_eq!(healed.inner.calls.load(Ordering::SeqCst), 3);

                // Always 503: 1 + max_retries attempts, then the error.
                let broken = flaky(100, &limits);
                let error = broken.embed(&texts()).await.expect_err("gives up");
                assert!(matches!(error, ProviderError::Http { status: 503, .. }));
                assert_eq!(broken.inner.calls.load(Ordering::SeqCst), 3);

                // No texts: straight to the inner provider, no attempt counted.
                let empty = healed.embed(&[]).await.expect("nothing to embed");
                assert!(empty.vectors.is_empty());

                // Retries count against requests_per_day: a 503 and its retry spend both.
                let budgeted = flaky(
                    1,
                    &Limits {
                        requests_per_day: 2,
                        ..limits.clone()
                    },
                );
                budgeted.embed(&texts()).await.expect("retry answers");
                let spent = budgeted.embed(&texts()).await;
                assert!(
                    matches!(&spent, Err(ProviderError::BudgetSpent(m)) if m.contains("2 of limits.requests_per_day = 2")),
                    "{spent:?}"
                );
                assert_eq!(budgeted.inner.calls.load(Ordering::SeqCst), 2);

                // Embedding tokens count against tokens_per_day, shared with chat.
                let by_tokens = flaky(
                    0,
                    &Limits {
                        tokens_per_day: 20,
                        ..limits.clone()
                    },
                );
                by_tokens.chat(&request()).await.expect("13 tokens");
                by_tokens.embed(&texts()).await.expect("7 more: 20");
                let spent = by_tokens.embed(&texts()).await;
                assert!(
                    matches!(&spent, Err(ProviderError::BudgetSpent(m)) if m.contains("20 of limits.tokens_per_day = 20")),
                    "{spent:?}"
                );
                assert_eq!(by_tokens.inner.calls.load(Ordering::SeqCst), 2);
            })
        });
        let seen = capture.0.lock().expect("not poisoned").clone();
        let get = |name: &str, label: Option<(&str, &str)>| flaky_sample(&seen, name, label);
        // ok: healed, budgeted, chat + embed of by_tokens; retries: 2 + 2 + 1.
        assert_eq!(
            get(names::REQUESTS, Some(("outcome", "ok"))),
            4.0,
            "{seen:?}"
        );
        assert_eq!(get(names::REQUESTS, Some(("outcome", "retry"))), 5.0);
        // broken's last 503 and the two spent budgets.
        assert_eq!(get(names::REQUESTS, Some(("outcome", "error"))), 3.0);
        assert_eq!(get(names::ERRORS, Some(("kind", "http_5xx"))), 6.0);
        assert_eq!(get(names::ERRORS, Some(("kind", "budget"))), 2.0);
        assert_eq!(
            get(names::TOKENS, Some(("direction", "prompt"))),
            7.0 * 3.0 + 10.0
        );
        assert_eq!(get(names::TOKENS, Some(("direction", "completion"))), 3.0);
        // One duration per attempt, including the ones the budget refused: 3 per provider.
        assert_eq!(get(names::REQUEST_SECONDS, None), 4.0 * 3.0);
        // The label sets are the chat ones: nothing says "embed".
        assert!(seen.keys().all(|k| !k.contains("embed")), "{seen:?}");
    }

    fn request() -> ChatRequest {
        ChatRequest {
            messages: vec![ChatMessage {
                role: Role::User,
                content: "hi".into(),
            }],
            response: ResponseFormat::Text,
            temperature: None,
            max_tokens: None,
        }
    }

    #[tokio::test]
    async fn a_spent_daily_budget_fails_calls_without_calling() {
        let flaky = |limits: Limits| {
            Limited::new(
                Flaky {
                    failures: 0,
                    calls: AtomicU32::new(0),
                },
                limits,
            )
        };
        // 13 tokens a call: the second call starts under 20 and may pass it; the third may not.
        let by_tokens = flaky(Limits {
            tokens_per_day: 20,
            ..Limits::default()
        });
        assert!(by_tokens.chat(&request()).await.is_ok());
        assert!(by_tokens.chat(&request()).await.is_ok());
        let spent = by_tokens.chat(&request()).await;
        assert!(
            matches!(&spent, Err(ProviderError::BudgetSpent(m)) if m.contains("26 of limits.tokens_per_day = 20")),
            "{spent:?}"
        );
        assert_eq!(by_tokens.inner.calls.load(Ordering::SeqCst), 2);

        let by_requests = flaky(Limits {
            requests_per_day: 1,
            ..Limits::default()
        });
        assert!(by_requests.chat(&request()).await.is_ok());
        assert!(matches!(
            by_requests.chat(&request()).await,
            Err(ProviderError::BudgetSpent(_))
        ));
        // Not retried: a spent budget is not a transient failure.
        assert_eq!(by_requests.inner.calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn metrics_count_attempts_outcomes_and_tokens() {
        let capture = Capture::default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let limits = Limits {
            max_retries: 3,
            backoff_base_ms: 1,
            backoff_max_ms: 2,
            ..Limits::default()
        };
        let (ok, failed) = metrics::with_local_recorder(&capture, || {
            runtime.block_on(async {
                let ok = Limited::new(
                    Flaky {
                        failures: 2,
                        calls: AtomicU32::new(0),
                    },
                    limits.clone(),
                );
                let failed = Limited::new(
                    Flaky {
                        failures: 100,
                        calls: AtomicU32::new(0),
                    },
                    limits.clone(),
                );
                (ok.chat(&request()).await, failed.chat(&request()).await)
            })
        });
        assert!(ok.is_ok());
        assert!(matches!(failed, Err(ProviderError::RateLimited { .. })));
        let seen = capture.0.lock().expect("not poisoned").clone();
        let get = |name: &str, label: Option<(&str, &str)>| flaky_sample(&seen, name, label);
        assert_eq!(
            get(names::REQUESTS, Some(("outcome", "ok"))),
            1.0,
            "{seen:?}"
        );
        // 2 retries for the call that healed, 3 for the one that gave up.
        assert_eq!(get(names::REQUESTS, Some(("outcome", "retry"))), 5.0);
        assert_eq!(get(names::REQUESTS, Some(("outcome", "error"))), 1.0);
        assert_eq!(get(names::ERRORS, Some(("kind", "rate_limited"))), 6.0);
        assert_eq!(get(names::TOKENS, Some(("direction", "prompt"))), 10.0);
        assert_eq!(get(names::TOKENS, Some(("direction", "completion"))), 3.0);
        // One duration per attempt: 3 + 4.
        assert_eq!(get(names::REQUEST_SECONDS, None), 7.0);
    }

    fn limited(limits: Limits) -> Limited<Simulated> {
        Limited::new(Simulated::new("sim", 1, None, Latency::default()), limits)
    }

    #[test]
    fn backoff_is_capped_and_honours_retry_after() {
        let l = limited(Limits {
            backoff_base_ms: 100,
            backoff_max_ms: 1_000,
            ..Limits::default()
        });
        for attempt in 0..40 {
            let d = l.backoff(attempt, None);
            let cap = (100u64 << attempt.min(20)).min(1_000);
            assert!(d <= Duration::from_millis(cap), "attempt {attempt}: {d:?}");
        }
        for _ in 0..50 {
            let d = l.backoff(0, Some(Duration::from_secs(2)));
            assert!(
                d >= Duration::from_secs(2) && d <= Duration::from_millis(2_100),
                "{d:?}"
            );
        }
    }
}
