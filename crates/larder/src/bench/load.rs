//! The load drivers shared by every `larder bench` command: `concurrency` workers send
//! requests back to back (closed loop) or on a fixed schedule (open loop) until the deadline,
//! each recording latency into its own HDR histogram; the histograms are merged at the end.

use super::BenchError;
use std::future::Future;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

pub struct Report {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency_us: Histogram<u64>,
}

impl Report {
    pub fn per_second(&self, n: u64) -> f64 {
        n as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn ms(&self, quantile: f64) -> f64 {
        self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// Run `request(worker, i)` from `concurrency` workers for `duration`, back to back (closed
/// loop). A request returns `Ok(())` or an error text; errors are counted (and the first few
/// printed), not fatal.
pub async fn drive<F, Fut>(concurrency: usize, duration: Duration, request: F) -> Report
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BenchError>> + Send,
{
    run(concurrency, duration, None, request).await
}

/// Open-loop load: `concurrency` workers together send `rate` requests per second on a fixed
/// schedule for `duration`. Latency is measured from each request's *scheduled* send time, so a
/// stall that delays later requests counts against them (no coordinated omission). The
/// schedule runs on tokio's millisecond timer, so latencies include up to 1 ms of timer lag.
pub async fn drive_rate<F, Fut>(
    concurrency: usize,
    rate: f64,
    duration: Duration,
    request: F,
) -> Report
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BenchError>> + Send,
{
    let interval = Duration::from_secs_f64(concurrency as f64 / rate.max(1e-3));
    run(concurrency, duration, Some(interval), request).await
}

/// Both drivers: with `interval`, each worker sends on its own schedule (spread evenly over one
/// interval across workers) and latency counts from the scheduled time.
async fn run<F, Fut>(
    concurrency: usize,
    duration: Duration,
    interval: Option<Duration>,
    request: F,
) -> Report
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BenchError>> + Send,
{
    let start = Instant::now() + Duration::from_millis(if interval.is_some() { 20 } else { 0 });
    let deadline = start + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let request = request.clone();
            tokio::spawn(async move {
                let mut hist = histogram();
                let (mut ok, mut errors) = (0u64, 0u64);
                let mut due = match interval {
                    Some(interval) => start + interval.mul_f64(worker as f64 / concurrency as f64),
                    None => start,
                };
                let mut i = 0u64;
                while due < deadline && Instant::now() < deadline {
                    let sent = match interval {
                        Some(_) => {
                            tokio::time::sleep_until(due.into()).await;
                            due
                        }
                        None => Instant::now(),
                    };
                    match request(worker, i).await {
                        Ok(()) => {
                            ok += 1;
                            hist.saturating_record(sent.elapsed().as_micros() as u64);
                        }
                        Err(error) => {
                            if errors < 3 {
                                eprintln!("request failed: {error}");
                            }
                            errors += 1;
                        }
                    }
                    i += 1;
                    if let Some(interval) = interval {
                        due += interval;
                    }
                }
                (hist, ok, errors)
            })
        })
        .collect();
    let mut latency_us = histogram();
    let (mut requests, mut errors) = (0, 0);
    for worker in workers {
        if let Ok((hist, ok, err)) = worker.await {
            latency_us.add(&hist).ok();
            requests += ok;
            errors += err;
        }
    }
    Report {
        requests,
        errors,
        elapsed: start.elapsed(),
        latency_us,
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}
