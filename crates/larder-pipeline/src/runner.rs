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
use larder_providers::{Provider, ProviderConfig};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::config::PipelineConfig;
use crate::job::{Job, StageKind};
use crate::names;
use crate::stage::{Deps, Stage, StageError};

/// Build every configured provider (wire client wrapped in its limits), keyed by name.
pub fn build_providers(
    configs: &[ProviderConfig],
) -> Result<HashMap<String, Arc<dyn Provider>>, StageError> {
    let mut providers = HashMap::new();
    for config in configs {
        let provider = larder_providers::build(config).map_err(|e| {
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
    kinds
        .iter()
        .map(|kind| -> Result<Arc<dyn Stage>, StageError> {
            Ok(match kind {
                StageKind::Generate => Arc::new(config.generate.build(deps)?),
                StageKind::Filter => Arc::new(config.filter.build(deps)?),
                StageKind::Evaluate => Arc::new(config.evaluate.build(deps)?),
                StageKind::Rank => Arc::new(
                    config
                        .rank
                        .build(deps)?
                        .with_near_duplicate(config.filter.near_duplicate),
                ),
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
    let started = Instant::now();
    let in_flight = metrics::gauge!(names::STAGE_IN_FLIGHT, "stage" => name);
    in_flight.increment(1.0);
    // Keep the message ours while we work on it; a killed process stops this, and then the
    // broker hands the message to another consumer.
    let toucher = {
        let (subscription, id) = (subscription.clone(), delivery.id.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(heartbeat.max(Duration::from_millis(10)));
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(error) = subscription.touch(&id).await {
                    tracing::debug!(%error, "heartbeat failed");
                }
            }
        })
    };
    let result = stage.process(job).await;
    toucher.abort();
    in_flight.decrement(1.0);
    metrics::histogram!(names::STAGE_SECONDS, "stage" => name)
        .record(started.elapsed().as_secs_f64());
    let outputs = match result {
        Ok(outputs) => outputs,
        Err(error) => {
            tracing::warn!(stage = name, category = %category, deliveries = delivery.deliveries, error = %error, "job failed; left for redelivery");
            metrics::counter!(names::STAGE_JOBS, "stage" => name, "outcome" => "error")
                .increment(1);
            return;
        }
    };
    for output in outputs {
        if let Err(error) = broker
            .publish(output.stage().as_str(), &output.encode())
            .await
        {
            tracing::warn!(stage = name, category = %category, error = %error, "publish failed; left for redelivery");
            metrics::counter!(names::STAGE_JOBS, "stage" => name, "outcome" => "error")
                .increment(1);
            return;
        }
    }
    if let Err(error) = subscription.ack(&delivery.id).await {
        tracing::warn!(stage = name, error = %error, "ack failed; the job may run again (handlers are idempotent)");
    }
    metrics::counter!(names::STAGE_JOBS, "stage" => name, "outcome" => "ok").increment(1);
}

/// How long stopping waits for jobs in flight.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Stages running on their own runtime thread, apart from serving.
pub struct PipelineHost {
    shutdown: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PipelineHost {
    /// Start `stages` on a new `larder-pipeline` runtime with `threads` worker threads.
    pub fn spawn(
        stages: Vec<Arc<dyn Stage>>,
        broker: Arc<dyn Broker>,
        threads: usize,
        heartbeat: Duration,
        idle_priority: bool,
    ) -> std::io::Result<PipelineHost> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("larder-pipeline")
            .on_thread_start(move || {
                if idle_priority {
                    lower_priority();
                }
            })
            .enable_all()
            .build()?;
        let (shutdown, watcher) = watch::channel(false);
        let prefix = consumer_prefix();
        let thread = std::thread::Builder::new()
            .name("larder-pipeline-host".into())
            .spawn(move || {
                runtime.block_on(async move {
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
            })?;
        Ok(PipelineHost {
            shutdown,
            thread: Some(thread),
        })
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

/// Put the calling thread in the kernel's idle scheduling class (Linux `SCHED_IDLE`): it
/// runs only on CPU time nothing else wants. Every thread of the in-process pipeline runtime
/// (workers and its blocking pool) gets this, so generation, filtering and ranking can never
/// take a core from a request. On other systems, or when the call is refused, it lowers the
/// thread's priority as far as allowed.
fn lower_priority() {
    use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy};
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    let result = thread_priority::set_thread_priority_and_policy(
        thread_priority::thread_native_id(),
        ThreadPriority::Min,
        idle,
    )
    .or_else(|_| thread_priority::set_current_thread_priority(ThreadPriority::Min));
    if let Err(error) = result {
        tracing::debug!(?error, "cannot lower the pipeline thread's priority");
    }
}

/// A consumer name unique to this process: `host-pid`.
pub fn consumer_prefix() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "larder".into());
    format!("{host}-{}", std::process::id())
}
