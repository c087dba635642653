//! **embed** (optional, after rank): where the two halves of Larder meet. Every active item of
//! a category gets a vector from an embedding provider (OpenAI-compatible `/v1/embeddings`,
//! through the same limits layer as the chat providers), stored in the namespace
//! `items-{model}` keyed by item id, field `embedding`, so the batch lookup serves them.
//!
//! Only items without a vector are embedded: the stage looks the category's active ids up in
//! the namespace first, so a re-rank (every feedback burst queues one) costs one lookup and no
//! provider call once the pool is embedded. A redelivered job finds its vectors and does
//! nothing. The namespace is created on first use with the provider's dimension; a namespace
//! of another dimension is a configuration error, never overwritten.

use std::sync::Arc;

use async_trait::async_trait;
use larder_db::ItemStatus;
use larder_providers::Provider;
use larder_store::codec::{self, Dtype};
use larder_store::schema::valid_name;
use larder_store::{EntityWrite, FieldSpec, NamespaceSchema};
use serde::{Deserialize, Serialize};

use crate::events::{self, Event};
use crate::job::{EmbedJob, Job, StageKind};
use crate::names;
use crate::stage::{now_ms, CategoryLocks, Deps, Stage, StageError};

/// The field item vectors are stored under.
pub const FIELD: &str = "embedding";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbedConfig {
    /// The provider that embeds (`[[pipeline.providers]]` of kind `openai` or `simulated`).
    /// Empty: the stage is off and rank queues no embed jobs.
    pub provider: String,
    /// The namespace vectors go to; empty: `items-{model}` (the model name lowercased, other
    /// characters than `a-z0-9_-` as `-`).
    pub namespace: String,
    /// How vectors are stored: `f32`, `f16`, `bf16` or `i8`.
    pub dtype: Dtype,
    /// Texts per provider call.
    pub batch: usize,
    pub concurrency: usize,
}

impl Default for EmbedConfig {
    fn default() -> Self {
        EmbedConfig {
            provider: String::new(),
            namespace: String::new(),
            dtype: Dtype::F32,
            batch: 64,
            concurrency: 4,
        }
    }
}

impl EmbedConfig {
    pub fn is_on(&self) -> bool {
        !self.provider.is_empty()
    }

    /// The namespace for `model`'s vectors.
    pub fn namespace_for(&self, model: &str) -> String {
        if !self.namespace.is_empty() {
            return self.namespace.clone();
        }
        let slug: String = model
            .chars()
            .map(|c| match c.to_ascii_lowercase() {
                c @ ('a'..='z' | '0'..='9' | '_' | '-') => c,
                _ => '-',
            })
            .take(64 - "items-".len())
            .collect();
        format!("items-{slug}")
    }

    pub fn build(&self, deps: &Deps) -> Result<EmbedStage, StageError> {
        if self.batch == 0 || self.concurrency == 0 {
            return Err(StageError::Config(
                "pipeline.embed: batch and concurrency must be at least 1".into(),
            ));
        }
        let provider = if self.is_on() {
            let provider = deps
                .providers(std::slice::from_ref(&self.provider), StageKind::Embed)?
                .remove(0);
            let namespace = self.namespace_for(provider.model());
            if !valid_name(&namespace) {
                return Err(StageError::Config(format!(
                    "pipeline.embed.namespace: {namespace:?} is not a namespace name (a-z, 0-9, _ and -, at most 64)"
                )));
            }
            Some((provider, namespace))
        } else {
            None
        };
        Ok(EmbedStage {
            config: self.clone(),
            provider,
            deps: deps.clone(),
            running: CategoryLocks::default(),
        })
    }
}

pub struct EmbedStage {
    config: EmbedConfig,
    /// The provider and its namespace; `None` when the stage is off.
    provider: Option<(Arc<dyn Provider>, String)>,
    deps: Deps,
    running: CategoryLocks,
}

impl EmbedStage {
    async fn embed(&self, job: EmbedJob) -> Result<Vec<Job>, StageError> {
        let Some((provider, namespace)) = &self.provider else {
            // Off: a job queued before a restart without the stage is dropped.
            return Ok(Vec::new());
        };
        // Two jobs of one category at once would both see the same items missing and embed
        // them twice: this process runs them one after the other. (Workers in other processes
        // may still overlap; the second write of a vector is the same vector.)
        let _one_at_a_time = self.running.lock(&job.category).await;
        let active: Vec<(String, String)> = self
            .deps
            .db
            .rank_inputs(&job.category)
            .await?
            .into_iter()
            .filter(|i| i.status == ItemStatus::Active)
            .map(|i| (i.id, i.text))
            .collect();
        if active.is_empty() {
            return Ok(Vec::new());
        }
        let schema = self.deps.store.get_schema(namespace).await?;
        let missing: Vec<&(String, String)> = match &schema {
            Some(_) => {
                let ids: Vec<String> = active.iter().map(|(id, _)| id.clone()).collect();
                let rows = self
                    .deps
                    .store
                    .lookup(namespace, &ids, &[FIELD.to_owned()])
                    .await?;
                active
                    .iter()
                    .zip(rows)
                    .filter(|(_, row)| !row.as_ref().is_some_and(|r| r.iter().all(Option::is_some)))
                    .map(|(item, _)| item)
                    .collect()
            }
            None => active.iter().collect(),
        };
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        let mut spec = schema.as_ref().and_then(|s| s.fields.get(FIELD).copied());
        let mut embedded = 0usize;
        for chunk in missing.chunks(self.config.batch) {
            let texts: Vec<String> = chunk.iter().map(|(_, text)| text.clone()).collect();
            let answer = provider
                .embed(&texts)
                .await
                .map_err(|e| StageError::Providers(format!("{}: {e}", provider.name())))?;
            let dim = answer.vectors.first().map_or(0, Vec::len);
            let field = match spec {
                Some(field) => field,
                None => {
                    let field = FieldSpec {
                        dim,
                        dtype: self.config.dtype,
                    };
                    self.create_namespace(namespace, schema.clone(), field)
                        .await?;
                    spec = Some(field);
                    field
                }
            };
            if field.dim != dim {
                return Err(StageError::Config(format!(
                    "pipeline.embed: {} answers {dim}-d vectors but namespace {namespace:?} holds {}-d ones; use another pipeline.embed.namespace",
                    provider.model(),
                    field.dim
                )));
            }
            let mut writes = Vec::with_capacity(chunk.len());
            for ((id, _), vector) in chunk.iter().zip(&answer.vectors) {
                let value = codec::encode(field.dtype, field.dim, vector).map_err(|e| {
                    StageError::Providers(format!("{}: unusable vector: {e}", provider.name()))
                })?;
                writes.push(EntityWrite {
                    key: id.clone(),
                    fields: vec![(FIELD.to_owned(), value)],
                });
            }
            embedded += writes.len();
            self.deps.store.upsert(namespace, None, writes).await?;
        }
        metrics::counter!(names::ITEMS_EMBEDDED).increment(embedded as u64);
        events::publish(Event::Embedded {
            category: job.category,
            namespace: namespace.clone(),
            items: embedded,
            at_ms: now_ms(),
        });
        Ok(Vec::new())
    }

    /// Create `namespace` with the `embedding` field, keeping what an existing record has.
    async fn create_namespace(
        &self,
        namespace: &str,
        existing: Option<NamespaceSchema>,
        field: FieldSpec,
    ) -> Result<(), StageError> {
        if field.dim == 0 {
            return Err(StageError::Providers(
                "the embedding provider answered an empty vector".into(),
            ));
        }
        let mut schema = existing.unwrap_or_default();
        schema.fields.insert(FIELD.to_owned(), field);
        self.deps.store.put_schema(namespace, &schema).await?;
        tracing::info!(
            namespace,
            dim = field.dim,
            "created the namespace of item embeddings"
        );
        Ok(())
    }
}

#[async_trait]
impl Stage for EmbedStage {
    fn kind(&self) -> StageKind {
        StageKind::Embed
    }

    fn concurrency(&self) -> usize {
        self.config.concurrency
    }

    async fn process(&self, job: Job) -> Result<Vec<Job>, StageError> {
        match job {
            Job::Embed(job) => self.embed(job).await,
            other => Err(StageError::Config(format!(
                "embed stage got a {} job",
                other.stage().as_str()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_named_after_the_model() {
        let config = EmbedConfig::default();
        assert_eq!(
            config.namespace_for("text-embedding-3-small"),
            "items-text-embedding-3-small"
        );
        assert_eq!(config.namespace_for("BGE M3/ko"), "items-bge-m3-ko");
        let long = config.namespace_for(&"x".repeat(200));
        assert!(valid_name(&long), "{long}");
        let named = EmbedConfig {
            namespace: "vectors".into(),
            ..EmbedConfig::default()
        };
        assert_eq!(named.namespace_for("m"), "vectors");
    }
}
