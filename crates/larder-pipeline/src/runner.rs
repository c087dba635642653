//! The topology: builds providers and stages from config and runs each stage as a consumer of
//! its broker queue, with bounded concurrency.
//!
//! In `larder serve` the stages run on their own tokio runtime ([`PipelineHost`]), on a thread
//! apart from the serving runtime: a burst of pipeline work then queues behind itself, never in
//! front of an HTTP request. `larder worker` runs one stage on its process's runtime.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder_broker::{Broker, Delivery, Subscription};
use larder_providers::budget::Ledger;
use larder_providers::{Provider, ProviderConfig};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::config::PipelineConfig;
use crate::events::{self, Event};
use crate::job::{Job, StageKind};
use crate::names;
use crate::stage::{Deps, Stage, StageError};

/// Build every configured provider (wire client wrapped in its limits), keyed by name, their
/// daily budgets counted in `ledger`.
pub fn build_providers(
    configs: &[ProviderConfig],
    ledger: &Arc<dyn Ledger>,
) -> Result<HashMap<String, Arc<dyn Provider>>, StageError> {
    let mut providers = HashMap::new();
    for config in configs {
        let provider = larder_providers::build_with(config, ledger).map_err(|e| {
            StageError::Config(format!("pipeline.providers {:?}: {e}", config.name))
        })?;
        if providers.insert(config.name.clone(), provider).is_some() {
            return Err(StageError::Config(format!(
                "pipeline.providers: the name {:?} is used twice",
                config.name
            )));
        }
    }
    Ok(providers)
}

/// Build the given stages from config.
pub fn build_stages(
    config: &PipelineConfig,
    deps: &Deps,
    kinds: &[StageKind],
) -> Result<Vec<Arc<dyn Stage>>, StageError> {
    deps.text.check()?;
    kinds
        .iter()
        .map(|kind| -> Result<Arc<dyn Stage>, StageError> {
            Ok(match kind {
                StageKind::Generate => Arc::new(config.generate.build(deps)?),
                StageKind::Filter => Arc::new(config.filter.build(deps)?),
                StageKind::Evaluate => Arc::new(config.evaluate.build(deps)?),
                StageKind::Rank => {
                    Arc::new(config.rank.build(deps)?.embedding(config.embed.is_on()))
                }
                StageKind::Embed => Arc::new(config.embed.build(deps)?),
            })
        })
        .collect()
}

/// Consume `stage`'s queue until `shutdown` turns true, then finish the jobs in flight.
/// While a job runs, the broker is told every `heartbeat` that it is still being worked on
/// (use a fraction of the broker's `claim_idle`).
pub async fn run_stage(
    stage: Arc<dyn Stage>,
    broker: Arc<dyn Broker>,
    consumer: String,
    heartbeat: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = stage.kind().as_str();
    let subscription = loop {
        match broker.subscribe(name, &consumer).await {
            Ok(subscription) => break subscription,
            Err(error) => {
                tracing::warn!(stage = name, error = %error, "cannot subscribe; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    };
    let permits = Arc::new(Semaphore::new(stage.concurrency()));
    let mut tasks = JoinSet::new();
    tracing::info!(stage = name, consumer = %consumer, concurrency = stage.concurrency(), "stage running");
    while !*shutdown.borrow() {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        let delivery = tokio::select! {
            next = subscription.next(Duration::from_millis(500)) => next,
            _ = shutdown.changed() => break,
        };
        match delivery {
            Ok(Some(delivery)) => {
                tasks.spawn(handle(
                    stage.clone(),
                    broker.clone(),
                    subscription.clone(),
                    delivery,
                    heartbeat,
                    permit,
                ));
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(stage = name, error = %error, "broker read failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    tracing::info!(stage = name, consumer = %consumer, "stage stopped");
}

/// Process one delivery: publish what the stage made, then acknowledge. Anything that fails
/// leaves the message unacknowledged, so the broker hands it out again (Redis Streams: after
/// `claim_idle`, up to `max_deliveries`, then the dead-letter stream).
async fn handle(
    stage: Arc<dyn Stage>,
    broker: Arc<dyn Broker>,
    subscription: Arc<dyn Subscription>,
    delivery: Delivery,
    heartbeat: Duration,
    _permit: OwnedSemaphorePermit,
) {
    let name = stage.kind().as_str();
    let job = match Job::decode(&delivery.payload) {
        Ok(job) => job,
        Err(error) => {
            // Retrying cannot fix a message that does not parse: count it and let it go.
            tracing::error!(stage = name, id = %delivery.id, error = %error, "undecodable job dropped");
            metrics::counter!(names::STAGE_JOBS, "stage" => name, "outcome" => "undecodable")
                .increment(1);
            let _ = subscription.ack(&delivery.id).await;
            return;
        }
    };
    let category = job.category().to_string();
    events::publish(Event::stage(name, &category, "started"));
    let started = Instant::now();
    let in_flight = InFlight::new(name);
    // Keep the message ours while we work on it: a killed process stops this, and then the
    // broker hands the message to another consumer. It runs in this task, so nothing outlives
    // the job, even when the job panics.
    let heartbeat_loop = async {
        let mut tick = tokio::time::interval(heartbeat.max(Duration::from_millis(10)));
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(error) = subscription.touch(&delivery.id).await {
                tracing::debug!(%error, "heartbeat failed");
            }
        }
    };
    let result = tokio::select! {
        result = stage.process(job) => result,
        never = heartbeat_loop => never,
    };
    drop(in_flight);
    metrics::histogram!(names::STAGE_SECONDS, "stage" => name)
        .record(started.elapsed().as_secs_f64());
    let outputs = match result {
        Ok(outputs) => outputs,
        Err(error) => {
            // Back off before the next attempt: 1 s, 2 s, 4 s, … at most a minute.
            let retry_in = Duration::from_secs(1 << delivery.deliveries.saturating_sub(1).min(6));
            tracing::warn!(stage = name, category = %category, deliveries = delivery.deliveries, ?retry_in, error = %error, "job failed; it will be delivered again");
            events::publish(Event::Stage {
                stage: name,
                category: category.clone(),
                state: "failed",
                error: Some(error.to_string()),
                at_ms: crate::stage::now_ms(),
            });
            metrics::counter!(names::STAGE_JOBS, "stage" => name, "outcome" => "error")
                .increment(1);
            if let Err(error) = subscription.release(&delivery.id, retry_in).await {
                tracing::warn!(stage = name, %error, "cannot release the failed job");
            }
            return;
        }
    };
    for output in outputs {
        if let Err(error) = broker
            .publish(output.stage().as_str(), &output.encode())
            .await
        {
            tracing::warn!(stage = name, category = %category, error = %error, "publish failed; the job will be delivered again");
            metrics::counter!(names::STAGE_JOBS, "stage" => name, "outcome" => "error")
                .increment(1);
            let _ = subscription
                .release(&delivery.id, Duration::from_secs(1))
                .await;
            return;
        }
    }
    if let Err(error) = subscription.ack(&delivery.id).await {
        tracing::warn!(stage = name, error = %error, "ack failed; the job may run again (handlers are idempotent)");
    }
    metrics::counter!(names::STAGE_JOBS, "stage" => name, "outcome" => "ok").increment(1);
    events::publish(Event::stage(name, &category, "finished"));
}

/// The in-flight gauge of a stage, decremented when the job ends however it ends.
struct InFlight(metrics::Gauge);

impl InFlight {
    fn new(stage: &'static str) -> InFlight {
        let gauge = metrics::gauge!(names::STAGE_IN_FLIGHT, "stage" => stage);
        gauge.increment(1.0);
        InFlight(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// How long stopping waits for jobs in flight.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Stages running on their own runtime thread, apart from serving.
pub struct PipelineHost {
    shutdown: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PipelineHost {
    /// Start a `larder-pipeline` thread with its own single-threaded runtime, build the stages
    /// there with `build` (so that the connections they open belong to that runtime and
    /// thread, not to serving's), and run them. Returns once they are built.
    ///
    /// With `idle_priority`, the thread runs in the kernel's idle class (Linux `SCHED_IDLE`),
    /// and so do the threads it starts (SQLite connection threads of a pool it opens), so
    /// pipeline work only gets CPU time serving leaves free. The runtime's blocking pool is
    /// put back to normal priority: serving shares the embedded store, whose writes run there
    /// holding the store's write lock, and a starved lock holder would stall serving writes.
    pub async fn spawn<F, Fut>(
        build: F,
        broker: Arc<dyn Broker>,
        heartbeat: Duration,
        idle_priority: bool,
    ) -> Result<PipelineHost, StageError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Vec<Arc<dyn Stage>>, StageError>>,
    {
        let (shutdown, watcher) = watch::channel(false);
        let (built_tx, built_rx) = tokio::sync::oneshot::channel();
        let prefix = consumer_prefix();
        let thread = std::thread::Builder::new()
            .name("larder-pipeline".into())
            .spawn(move || {
                if idle_priority {
                    set_priority(Priority::Idle);
                }
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .thread_name("larder-pipeline-blocking")
                    .on_thread_start(move || {
                        if idle_priority {
                            set_priority(Priority::Normal);
                        }
                    })
                    .enable_all()
                    .build();
                let runtime = match runtime {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = built_tx.send(Err(StageError::Config(format!(
                            "cannot start the pipeline runtime: {error}"
                        ))));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let stages = match build().await {
                        Ok(stages) => {
                            let _ = built_tx.send(Ok(()));
                            stages
                        }
                        Err(error) => {
                            let _ = built_tx.send(Err(error));
                            return;
                        }
                    };
                    let mut running = JoinSet::new();
                    for (index, stage) in stages.into_iter().enumerate() {
                        let consumer = format!("{prefix}-{}-{index}", stage.kind().as_str());
                        running.spawn(run_stage(
                            stage,
                            broker.clone(),
                            consumer,
                            heartbeat,
                            watcher.clone(),
                        ));
                    }
                    let mut stopped = watcher.clone();
                    let _ = stopped.wait_for(|stop| *stop).await;
                    // Jobs in flight get a grace period; after it, dropping the runtime cancels
                    // them (a redelivering broker hands them out again, the memory broker's are
                    // re-queued by refill and pending requests).
                    let finished = async { while running.join_next().await.is_some() {} };
                    if tokio::time::timeout(STOP_GRACE, finished).await.is_err() {
                        tracing::warn!(grace = ?STOP_GRACE, "pipeline jobs still running at shutdown were cancelled");
                    }
                });
            })
            .map_err(|e| StageError::Config(format!("cannot start the pipeline thread: {e}")))?;
        let host = PipelineHost {
            shutdown,
            thread: Some(thread),
        };
        match built_rx.await {
            Ok(Ok(())) => Ok(host),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(StageError::Config(
                "the pipeline thread stopped while starting".into(),
            )),
        }
    }

    /// Stop taking jobs, finish those in flight, and wait for the runtime to end.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for PipelineHost {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

#[derive(Clone, Copy)]
enum Priority {
    Idle,
    Normal,
}

/// thread-priority maps its cross-platform 0..=99 scale onto nice 19..=-20 for the normal
/// policies; 48 is nice 0, the default (checked in a test). Both classes keep nice 0, because
/// an unprivileged thread may leave `SCHED_IDLE` only when its nice value needs no raising.
const NICE_ZERO: u8 = 48;

fn nice_zero() -> thread_priority::ThreadPriority {
    thread_priority::ThreadPriority::Crossplatform(
        NICE_ZERO.try_into().expect("48 is within 0..=99"),
    )
}

/// Move the calling thread to the kernel's idle scheduling class (Linux `SCHED_IDLE`: it runs
/// only on CPU time nothing else wants), or back to the normal one. Where that is refused
/// (other systems, or leaving the idle class without privileges) the thread stays as it is;
/// that is logged, not fatal.
fn set_priority(priority: Priority) {
    use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
    let policy = match priority {
        Priority::Idle => NormalThreadSchedulePolicy::Idle,
        Priority::Normal => NormalThreadSchedulePolicy::Other,
    };
    if let Err(error) = thread_priority::set_thread_priority_and_policy(
        thread_priority::thread_native_id(),
        nice_zero(),
        ThreadSchedulePolicy::Normal(policy),
    ) {
        tracing::debug!(
            ?error,
            "cannot change the pipeline thread's scheduling class"
        );
    }
}

/// A consumer name unique to this process: `host-pid`.
pub fn consumer_prefix() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "larder".into());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};

    #[test]
    fn nice_zero_is_nice_zero() {
        let other = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other);
        assert_eq!(nice_zero().to_posix(other).expect("maps"), 0);
    }

    #[test]
    fn a_thread_goes_idle_and_back() {
        std::thread::spawn(|| {
            set_priority(Priority::Idle);
            let idle = thread_priority::thread_schedule_policy().expect("policy");
            set_priority(Priority::Normal);
            let normal = thread_priority::thread_schedule_policy().expect("policy");
            (idle, normal)
        })
        .join()
        .map(|(idle, normal)| {
            assert_eq!(
                idle,
                ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle)
            );
            // Leaving the idle class needs privileges (or a raised RLIMIT_NICE).
            let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
                s.lines()
                    .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
            });
            if root {
                assert_eq!(
                    normal,
                    ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other)
                );
            }
        })
        .expect("thread runs");
    }
}
