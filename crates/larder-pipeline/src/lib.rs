//! # larder-pipeline
//!
//! Larder's pre-generation pipeline, pipe and filter:
//! providers → **generate** → **filter** → **evaluate** → **rank** → serving view in the store.
//!
//! # Layout
//! - [`job`]: the messages between stages (JSON on the broker) and [`job::StageKind`].
//! - [`stage`]: the [`stage::Stage`] trait every stage implements, and its [`stage::Deps`].
//! - [`stages`]: one file per stage, each `XConfig` + `build()` + `process` + tests.
//! - [`text`]: the text rules stages share (normalization, script, near duplicates and their
//!   threshold [`text::TextRules`], injection, code fences).
//! - [`runner`]: builds stages from config and runs them on a broker, in-process
//!   ([`runner::PipelineHost`], its own runtime) or one per worker process.
//! - [`queue`]: the broker side of [`larder_categories::Jobs`]: how the category domain
//!   queues generation and re-ranking.
//! - [`events`]: what the stages are doing, broadcast for `GET /v1/events`.
//! - [`config`]: `[pipeline]` of the config file.
//! - [`names`]: metric names.

pub mod config;
pub mod events;
pub mod job;
pub mod names;
pub mod queue;
pub mod runner;
pub mod stage;
pub mod stages;
pub mod text;

#[cfg(test)]
mod testing;

use std::sync::Arc;
use std::time::Duration;

use larder_store::StoreUrl;
use larder_url::BrokerUrl;

pub use config::PipelineConfig;
pub use job::{Job, StageKind};
pub use larder_categories::SeedCategory;
pub use queue::Queue;
pub use stage::{Deps, Stage, StageError};

/// Open the broker `config.broker` names for a store at `store_url`.
pub async fn open_broker(
    config: &PipelineConfig,
    store_url: &StoreUrl,
) -> Result<Arc<dyn larder_broker::Broker>, larder_broker::BrokerError> {
    let options = larder_broker::BrokerOptions {
        claim_idle: Duration::from_millis(config.claim_idle_ms),
        max_deliveries: config.max_deliveries,
        ..Default::default()
    };
    match (&config.broker, store_url) {
        (BrokerUrl::Memory, _) | (BrokerUrl::Auto, StoreUrl::Embedded) => {
            Ok(larder_broker::memory(options))
        }
        (BrokerUrl::Auto | BrokerUrl::StoreRedis, StoreUrl::Redis(url)) => {
            larder_broker::redis(url, options).await
        }
        (BrokerUrl::StoreRedis, StoreUrl::Embedded) => Err(larder_broker::BrokerError::Config(
            "pipeline.broker = \"redis\" needs a Redis --store (or give the broker a redis:// URL)"
                .into(),
        )),
        (BrokerUrl::Redis(url), _) => larder_broker::redis(url, options).await,
    }
}
