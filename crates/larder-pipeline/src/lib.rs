//! # larder-pipeline
//!
//! Larder's pre-generation pipeline, pipe and filter:
//! providers → **generate** → **filter** → **evaluate** → **rank** → serving view in the store.
//!
//! # Layout
//! - [`job`]: the messages between stages (JSON on the broker) and [`job::StageKind`].
//! - [`stage`]: the [`stage::Stage`] trait every stage implements, and its [`stage::Deps`].
//! - [`stages`]: one file per stage, each `XConfig` + `build()` + `process` + tests.
//! - [`text`]: text checks of the filter (normalization, script, near duplicates, injection).
//! - [`view`]: the serving view and the ranking math (Beta posteriors, Thompson sampling).
//! - [`runner`]: builds stages from config and runs them on a broker, in-process
//!   ([`runner::PipelineHost`], its own runtime) or one per worker process.
//! - [`queue`]: what the API uses to queue generation and re-ranking.
//! - [`config`]: `[pipeline]` of the config file.
//! - [`names`]: metric names.

pub mod config;
pub mod job;
pub mod names;
pub mod queue;
pub mod runner;
pub mod stage;
pub mod stages;
pub mod text;
pub mod view;

#[cfg(test)]
mod testing;

use std::sync::Arc;
use std::time::Duration;

pub use config::{PipelineConfig, SeedCategory};
pub use job::{Job, StageKind};
pub use queue::Queue;
pub use stage::{Deps, Stage, StageError};

/// Open the broker `config.broker` names for a store at `store_url`.
pub async fn open_broker(
    config: &PipelineConfig,
    store_url: &str,
) -> Result<Arc<dyn larder_broker::Broker>, larder_broker::BrokerError> {
    let options = larder_broker::BrokerOptions {
        claim_idle: Duration::from_millis(config.claim_idle_ms),
        max_deliveries: config.max_deliveries,
        ..Default::default()
    };
    let redis_store = store_url.starts_with("redis");
    match config.broker.as_str() {
        "memory" => Ok(larder_broker::memory(options)),
        "auto" if !redis_store => Ok(larder_broker::memory(options)),
        "auto" | "redis" if redis_store => larder_broker::redis(store_url, options).await,
        "redis" => Err(larder_broker::BrokerError::Config(
            "pipeline.broker = \"redis\" needs a Redis --store (or give the broker a redis:// URL)"
                .into(),
        )),
        url => larder_broker::redis(url, options).await,
    }
}
