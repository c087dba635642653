//! The one shape every stage has: a config type whose `build()` makes the runtime part, and a
//! [`Stage`] that turns one job into the jobs for the next stages. Stages know nothing about
//! brokers or processes; [`crate::runner`] moves their jobs.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use larder_categories::Generations;
use larder_db::Db;
use larder_providers::Provider;
use larder_store::Store;

use crate::job::{Job, StageKind};
use crate::text::TextRules;

/// What stages may use: the main DB, the serving store, the configured providers, the text
/// rules several stages share, and the generation claims (the rank stage's refill).
#[derive(Clone)]
pub struct Deps {
    pub db: Db,
    pub store: Arc<dyn Store>,
    pub providers: HashMap<String, Arc<dyn Provider>>,
    pub text: TextRules,
    pub generations: Generations,
}

impl Deps {
    /// The providers named in a stage's config, in order.
    pub fn providers(
        &self,
        names: &[String],
        stage: StageKind,
    ) -> Result<Vec<Arc<dyn Provider>>, StageError> {
        names
            .iter()
            .map(|name| {
                self.providers.get(name).cloned().ok_or_else(|| {
                    StageError::Config(format!(
                        "pipeline.{}: unknown provider {name:?} (configure it under [[pipeline.providers]])",
                        stage.as_str()
                    ))
                })
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Bad configuration, found at build time.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Db(#[from] larder_db::DbError),
    #[error(transparent)]
    Store(#[from] larder_store::StoreError),
    /// Claiming or queueing follow-up work failed (the broker is unreachable).
    #[error(transparent)]
    Categories(#[from] larder_categories::CategoriesError),
    /// Every provider call of the job failed; the job should be retried later.
    #[error("providers failed: {0}")]
    Providers(String),
}

#[async_trait]
pub trait Stage: Send + Sync + 'static {
    fn kind(&self) -> StageKind;
    /// How many jobs one process works on at once (pipeline work is bounded so that it never
    /// crowds out serving).
    fn concurrency(&self) -> usize;
    /// Handle one job. The returned jobs are published to their stages before the input is
    /// acknowledged; an error leaves the input unacknowledged, so the broker redelivers it.
    async fn process(&self, job: Job) -> Result<Vec<Job>, StageError>;
}

pub use larder_categories::now_ms;

/// One lock per category a stage is working on in this process, so that a stage's jobs of one
/// category run one after the other (jobs in other worker processes still overlap; the stages
/// that use this converge or dedupe on their own). The map only holds categories some job is
/// holding: a lock nobody holds is forgotten.
#[derive(Default)]
pub struct CategoryLocks(
    std::sync::Mutex<HashMap<String, std::sync::Weak<tokio::sync::Mutex<()>>>>,
);

impl CategoryLocks {
    /// Wait for `category`'s lock.
    pub async fn lock(&self, category: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.0.lock().unwrap_or_else(|p| p.into_inner());
            match locks.get(category).and_then(std::sync::Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    locks.retain(|_, lock| lock.strong_count() > 0);
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(category.to_string(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}

/// The locale to generate and check a category in: the configured one, else Korean when the
/// name has Hangul, else English.
pub fn category_locale(name: &str, configured: Option<&str>) -> String {
    match configured {
        Some(locale) if !locale.is_empty() => locale.to_string(),
        _ if name
            .chars()
            .any(|c| crate::text::script_of(c) == crate::text::Script::Hangul) =>
        {
            "ko".to_string()
        }
        _ => "en".to_string(),
    }
}
