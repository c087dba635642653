//! **generate**: ask every configured generator for `count` items of a category, in parallel,
//! and pass each raw answer to the filter with its provenance (provider, model).

use std::sync::Arc;

use async_trait::async_trait;
use futures::future::join_all;
use larder_providers::protocol::{generation_request, GenerationSpec};
use larder_providers::Provider;
use serde::{Deserialize, Serialize};

use crate::job::{FilterJob, GenerateJob, Job, StageKind};
use crate::names;
use crate::stage::{category_locale, now_ms, Deps, Stage, StageError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerateConfig {
    /// Provider names (from `[[pipeline.providers]]`) that generate; all of them compete.
    pub generators: Vec<String>,
    /// Items asked for per call.
    pub count: usize,
    /// The longest item asked for (the filter enforces `filter.max_chars`).
    pub max_chars: usize,
    /// User-prompt template; placeholders `{category}` `{description}` `{locale}` `{count}`
    /// `{max_chars}`. Empty: the built-in template.
    pub template: String,
    /// Per-category templates, overriding `template`.
    pub templates: std::collections::BTreeMap<String, String>,
    /// Generate jobs one process works on at once.
    pub concurrency: usize,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            generators: vec!["sim-writer-a".into(), "sim-writer-b".into()],
            count: 10,
            max_chars: 30,
            template: String::new(),
            templates: Default::default(),
            concurrency: 64,
        }
    }
}

impl GenerateConfig {
    pub fn build(&self, deps: &Deps) -> Result<GenerateStage, StageError> {
        if self.count == 0 || self.concurrency == 0 {
            return Err(StageError::Config(
                "pipeline.generate: count and concurrency must be at least 1".into(),
            ));
        }
        Ok(GenerateStage {
            generators: deps.providers(&self.generators, StageKind::Generate)?,
            config: self.clone(),
            deps: deps.clone(),
        })
    }
}

pub struct GenerateStage {
    config: GenerateConfig,
    generators: Vec<Arc<dyn Provider>>,
    deps: Deps,
}

impl GenerateStage {
    async fn generate(&self, job: GenerateJob) -> Result<Vec<Job>, StageError> {
        let Some(category) = self.deps.db.category(&job.category).await? else {
            tracing::warn!(category = %job.category, "generate: unknown category, dropped");
            return Ok(Vec::new());
        };
        let locale = category_locale(&category.name, category.locale.as_deref());
        let spec = GenerationSpec {
            category: category.name.clone(),
            description: category.description.clone(),
            locale: locale.clone(),
            count: self.config.count,
            max_chars: self.config.max_chars,
        };
        let template = self
            .config
            .templates
            .get(&category.name)
            .or(Some(&self.config.template))
            .filter(|t| !t.is_empty());
        let request = generation_request(&spec, template.map(String::as_str));
        let calls = self.generators.iter().map(|provider| {
            let request = &request;
            async move { (provider, provider.chat(request).await) }
        });
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for (provider, answer) in join_all(calls).await {
            match answer {
                Ok(answer) => {
                    metrics::counter!(names::GENERATIONS, "provider" => provider.name().to_string())
                        .increment(1);
                    out.push(Job::Filter(FilterJob {
                        category: category.name.clone(),
                        locale: locale.clone(),
                        provider: provider.name().to_string(),
                        model: provider.model().to_string(),
                        content: answer.content,
                        generated_at_ms: now_ms(),
                    }));
                }
                Err(error) => {
                    tracing::warn!(category = %category.name, provider = provider.name(), error = %error, "generator failed");
                    errors.push(format!("{}: {error}", provider.name()));
                }
            }
        }
        if out.is_empty() && !errors.is_empty() {
            return Err(StageError::Providers(errors.join("; ")));
        }
        tracing::debug!(category = %category.name, reason = %job.reason, answers = out.len(), "generated");
        Ok(out)
    }
}

#[async_trait]
impl Stage for GenerateStage {
    fn kind(&self) -> StageKind {
        StageKind::Generate
    }

    fn concurrency(&self) -> usize {
        self.config.concurrency
    }

    async fn process(&self, job: Job) -> Result<Vec<Job>, StageError> {
        match job {
            Job::Generate(job) => self.generate(job).await,
            other => Ok(vec![other]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::deps;

    #[tokio::test]
    async fn every_generator_answers_with_provenance() {
        let deps = deps().await;
        deps.db
            .register_category("이사 준비", None, None, 0)
            .await
            .expect("registers");
        let stage = GenerateConfig::default().build(&deps).expect("builds");
        let out = stage
            .process(Job::Generate(GenerateJob {
                category: "이사 준비".into(),
                reason: "test".into(),
            }))
            .await
            .expect("generates");
        assert_eq!(out.len(), 2, "one answer per generator");
        let mut providers = Vec::new();
        for job in out {
            let Job::Filter(job) = job else {
                panic!("expected filter jobs")
            };
            assert_eq!(job.locale, "ko");
            assert!(job.content.contains("items"), "{}", job.content);
            providers.push(job.provider);
        }
        providers.sort();
        assert_eq!(providers, ["sim-writer-a", "sim-writer-b"]);
    }

    #[tokio::test]
    async fn unknown_categories_and_providers() {
        let deps = deps().await;
        let stage = GenerateConfig::default().build(&deps).expect("builds");
        let out = stage
            .process(Job::Generate(GenerateJob {
                category: "never registered".into(),
                reason: "test".into(),
            }))
            .await
            .expect("drops");
        assert!(out.is_empty());
        let config = GenerateConfig {
            generators: vec!["nope".into()],
            ..Default::default()
        };
        let Err(StageError::Config(message)) = config.build(&deps) else {
            panic!("unknown provider must be a config error")
        };
        assert!(message.contains("nope"), "{message}");
    }
}
