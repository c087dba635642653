//! `[pipeline]` of Larder's config: providers, the four stages, which of them this process
//! runs, the broker, and the example categories seeded on an empty DB.

use larder_categories::SeedCategory;
use larder_providers::{Latency, ProviderConfig, ProviderKind};
use larder_url::BrokerUrl;
use serde::{Deserialize, Serialize};

use crate::job::StageKind;
use crate::stages::{
    embed::EmbedConfig, evaluate::EvaluateConfig, filter::FilterConfig, generate::GenerateConfig,
    rank::RankConfig,
};
use crate::text::TextRules;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Every provider stages may name. Default: simulated generators and a judge, 6.3 s mean
    /// latency like a live model, so the offline demo behaves like the real thing.
    pub providers: Vec<ProviderConfig>,
    pub generate: GenerateConfig,
    pub filter: FilterConfig,
    pub evaluate: EvaluateConfig,
    pub rank: RankConfig,
    /// The optional embed stage after rank (off unless `provider` is set).
    pub embed: EmbedConfig,
    /// Text rules the filter and rank stages share (near-duplicate threshold).
    pub text: TextRules,
    /// Stages `larder serve` runs in-process. Empty when `larder worker` processes run them.
    pub stages: Vec<StageKind>,
    /// `memory` (in-process channels), `redis` (Redis Streams on the `--store` Redis), a
    /// `redis://…`/`redis-cluster://…` URL, or `auto`: memory on the embedded store, Redis
    /// Streams on a Redis store.
    pub broker: BrokerUrl,
    /// A message not acknowledged for this long (a killed worker) is handed to another worker.
    pub claim_idle_ms: u64,
    /// After this many deliveries a message goes to the dead-letter stream.
    pub max_deliveries: u64,
    /// Minimum time between two generations queued for one category by registration,
    /// requests for a pending category, or refresh.
    pub generation_cooldown_ms: i64,
    /// Categories registered at startup when the DB has none (the offline demo).
    pub seed_categories: Vec<SeedCategory>,
    /// Run the stages `larder serve` hosts in the OS's idle scheduling class, so that
    /// pipeline work only uses CPU time serving leaves free.
    pub idle_priority: bool,
}

fn simulated(name: &str, model: &str, seed: u64) -> ProviderConfig {
    ProviderConfig {
        name: name.into(),
        kind: ProviderKind::Simulated {
            seed,
            model: Some(model.into()),
            latency: Latency {
                mean_ms: 6_300,
                jitter: 0.25,
            },
        },
        limits: larder_providers::Limits {
            concurrency: 64,
            ..Default::default()
        },
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        let seed = |name: &str, locale: &str, description: &str| SeedCategory {
            name: name.into(),
            description: Some(description.into()),
            locale: Some(locale.into()),
        };
        PipelineConfig {
            providers: vec![
                simulated("sim-writer-a", "sim-gpt", 1),
                simulated("sim-writer-b", "sim-hyperclova-x", 2),
                simulated("sim-judge", "sim-judge", 3),
            ],
            generate: GenerateConfig::default(),
            filter: FilterConfig::default(),
            evaluate: EvaluateConfig::default(),
            rank: RankConfig::default(),
            embed: EmbedConfig::default(),
            text: TextRules::default(),
            stages: StageKind::ALL.to_vec(),
            broker: BrokerUrl::Auto,
            idle_priority: true,
            claim_idle_ms: 30_000,
            max_deliveries: 5,
            generation_cooldown_ms: 30_000,
            seed_categories: vec![
                seed("이사 준비", "ko", "이사할 때 챙길 일 체크리스트"),
                seed("여행 준비", "ko", "여행 떠나기 전 준비물과 할 일"),
                seed("moving house", "en", "Checklist items for moving house"),
                seed("travel packing", "en", "What to pack and do before a trip"),
            ],
        }
    }
}

impl PipelineConfig {
    /// The stages that have work: all but `embed` unless `pipeline.embed` is on.
    pub fn working_stages(&self) -> Vec<StageKind> {
        StageKind::ALL
            .into_iter()
            .filter(|s| *s != StageKind::Embed || self.embed.is_on())
            .collect()
    }

    /// How often a consumer tells the broker it still works on a message: well inside
    /// `claim_idle_ms`, so only a dead consumer's messages are reclaimed.
    pub fn heartbeat(&self) -> std::time::Duration {
        std::time::Duration::from_millis((self.claim_idle_ms / 3).max(10))
    }

    /// The same pipeline with every simulated provider answering at once (tests, benches).
    pub fn without_latency(mut self) -> Self {
        for provider in &mut self.providers {
            if let ProviderKind::Simulated { latency, .. } = &mut provider.kind {
                latency.mean_ms = 0;
            }
        }
        self
    }
}
