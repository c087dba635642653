//! Test support for the stages' unit tests: an in-memory DB and store, the default simulated
//! providers without latency, and an in-memory broker for the jobs stages queue themselves
//! (the rank stage's refill). (Redis-backed runs are in `tests/`.)

use std::sync::Arc;

use larder_broker::Broker;
use larder_categories::Generations;
use larder_db::{Db, ItemStatus, NewItem};
use larder_store::StoreOptions;

use crate::config::PipelineConfig;
use crate::queue::Queue;
use crate::runner::build_providers;
use crate::stage::Deps;
use crate::text;

pub async fn deps() -> Deps {
    deps_on(larder_broker::memory(Default::default())).await
}

/// [`deps`] whose generation claims queue their jobs on `broker`.
pub async fn deps_on(broker: Arc<dyn Broker>) -> Deps {
    let db = Db::connect(&larder_url::DbUrl::SqliteMemory)
        .await
        .expect("memory DB");
    let store = larder_store::open(
        &larder_store::StoreUrl::Embedded,
        &StoreOptions {
            ephemeral: true,
            ..Default::default()
        },
    )
    .await
    .expect("memory store");
    let providers = build_providers(
        &PipelineConfig::default().without_latency().providers,
        &larder_providers::budget::MemoryLedger::shared(),
    )
    .expect("providers build");
    let cooldown = PipelineConfig::default().generation_cooldown_ms;
    Deps {
        generations: Generations::new(db.clone(), Arc::new(Queue::new(broker)), cooldown),
        db,
        store,
        providers,
        text: Default::default(),
    }
}

/// Register `category` and insert `texts` as pending items; returns their ids in order.
pub async fn insert_pending(deps: &Deps, category: &str, texts: &[&str]) -> Vec<String> {
    deps.db
        .register_category(category, None, None, 0)
        .await
        .expect("registers");
    let items: Vec<NewItem> = texts
        .iter()
        .map(|t| NewItem {
            id: text::item_id(category, t),
            category: category.into(),
            text: (*t).into(),
            norm: text::normalize(t),
            provider: "p".into(),
            model: "m".into(),
            created_at_ms: 0,
            status: ItemStatus::Pending,
            reason: None,
        })
        .collect();
    let ids: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
    deps.db.insert_items(&items).await.expect("inserts");
    ids
}
