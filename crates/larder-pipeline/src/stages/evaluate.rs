//! **evaluate**: evaluator models score the items that passed the filter, in chunks, with a
//! rubric: a 0–10 score per item, or pick the best `k` of each chunk with reasons (the picked
//! items score 10, the rest 0, so the mean over evaluators is the share of evaluators that
//! picked the item). Every evaluation is stored with its evaluator and reason; answers that
//! cannot be used are counted (`larder_evaluate_invalid_total`) and leave those items without
//! that evaluator's score.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::join_all;
use larder_db::{Evaluation, ItemStatus};
use larder_providers::protocol::{evaluation_request, PickAnswer, Rubric, ScoreAnswer};
use larder_providers::Provider;
use serde::{Deserialize, Serialize};

use crate::job::{EvaluateJob, Job, RankJob, StageKind};
use crate::names;
use crate::stage::{category_locale, now_ms, Deps, Stage, StageError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RubricKind {
    Score,
    PickBest,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvaluateConfig {
    /// Provider names that evaluate.
    pub evaluators: Vec<String>,
    pub rubric: RubricKind,
    /// Items picked per chunk with `rubric = "pick-best"`.
    pub pick: usize,
    /// Items shown to an evaluator per call.
    pub chunk: usize,
    pub concurrency: usize,
}

impl Default for EvaluateConfig {
    fn default() -> Self {
        EvaluateConfig {
            evaluators: vec!["sim-judge".into()],
            rubric: RubricKind::Score,
            pick: 3,
            chunk: 10,
            concurrency: 16,
        }
    }
}

impl EvaluateConfig {
    pub fn build(&self, deps: &Deps) -> Result<EvaluateStage, StageError> {
        if self.chunk == 0
            || self.concurrency == 0
            || (self.rubric == RubricKind::PickBest && self.pick == 0)
        {
            return Err(StageError::Config(
                "pipeline.evaluate: chunk, pick and concurrency must be at least 1".into(),
            ));
        }
        Ok(EvaluateStage {
            evaluators: deps.providers(&self.evaluators, StageKind::Evaluate)?,
            config: self.clone(),
            deps: deps.clone(),
        })
    }
}

pub struct EvaluateStage {
    config: EvaluateConfig,
    evaluators: Vec<Arc<dyn Provider>>,
    deps: Deps,
}

/// Scores (0..=10) and reasons for the ids of one chunk from one evaluator's answer; `None`
/// when the answer is unusable (not JSON, wrong shape, unknown ids, scores out of range).
pub fn parse_scores(
    content: &str,
    rubric: &Rubric,
    chunk: &[(String, String)],
) -> Option<Vec<(String, f64, Option<String>)>> {
    let known: HashSet<&str> = chunk.iter().map(|(id, _)| id.as_str()).collect();
    let body = crate::text::strip_fence(content);
    match rubric {
        Rubric::Score => {
            let answer: ScoreAnswer = serde_json::from_str(body).ok()?;
            let mut seen = HashSet::new();
            let mut out = Vec::new();
            for scored in answer.scores {
                if !known.contains(scored.id.as_str())
                    || !(0.0..=10.0).contains(&scored.score)
                    || !seen.insert(scored.id.clone())
                {
                    return None;
                }
                out.push((scored.id, scored.score, scored.reason));
            }
            (!out.is_empty()).then_some(out)
        }
        Rubric::PickBest { k } => {
            let answer: PickAnswer = serde_json::from_str(body).ok()?;
            let picked: Vec<_> = answer
                .best
                .into_iter()
                .filter(|p| known.contains(p.id.as_str()))
                .collect();
            if picked.is_empty() || picked.len() > *k {
                return None;
            }
            Some(
                chunk
                    .iter()
                    .map(|(id, _)| match picked.iter().find(|p| &p.id == id) {
                        Some(p) => (id.clone(), 10.0, p.reason.clone()),
                        None => (id.clone(), 0.0, None),
                    })
                    .collect(),
            )
        }
    }
}

impl EvaluateStage {
    fn rubric(&self, chunk_len: usize) -> Rubric {
        match self.config.rubric {
            RubricKind::Score => Rubric::Score,
            RubricKind::PickBest => Rubric::PickBest {
                k: self.config.pick.min(chunk_len),
            },
        }
    }

    async fn evaluate(&self, job: EvaluateJob) -> Result<Vec<Job>, StageError> {
        let Some(category) = self.deps.db.category(&job.category).await? else {
            return Ok(Vec::new());
        };
        let locale = category_locale(&category.name, category.locale.as_deref());
        // Only items still waiting: a redelivered job skips what was already ranked.
        let items: Vec<(String, String)> = self
            .deps
            .db
            .items(&job.item_ids)
            .await?
            .into_iter()
            .filter(|item| item.category == category.name && item.status == ItemStatus::Pending)
            .map(|item| (item.id, item.text))
            .collect();
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let (name, locale) = (category.name.as_str(), locale.as_str());
        let calls = items.chunks(self.config.chunk).flat_map(|chunk| {
            self.evaluators.iter().map(move |evaluator| {
                let rubric = self.rubric(chunk.len());
                let request = evaluation_request(name, locale, chunk, &rubric);
                async move {
                    let answer = evaluator.chat(&request).await;
                    (evaluator, chunk, rubric, answer)
                }
            })
        });
        let mut evaluations = Vec::new();
        let mut failures = Vec::new();
        // Chunks at least one evaluator answered (by the chunk's first item id).
        let mut answered = HashSet::new();
        for (evaluator, chunk, rubric, answer) in join_all(calls).await {
            let answer = match answer {
                Ok(answer) => answer,
                Err(error) => {
                    tracing::warn!(category = %category.name, evaluator = evaluator.name(), error = %error, "evaluator failed");
                    failures.push(format!("{}: {error}", evaluator.name()));
                    continue;
                }
            };
            answered.insert(chunk[0].0.as_str());
            let Some(scores) = parse_scores(&answer.content, &rubric, chunk) else {
                metrics::counter!(names::EVALUATE_INVALID, "evaluator" => evaluator.name().to_string())
                    .increment(1);
                tracing::info!(category = %category.name, evaluator = evaluator.name(), "unusable evaluation dropped");
                continue;
            };
            metrics::counter!(names::EVALUATIONS, "evaluator" => evaluator.name().to_string())
                .increment(scores.len() as u64);
            let at = now_ms();
            evaluations.extend(
                scores
                    .into_iter()
                    .map(|(item_id, score, reason)| Evaluation {
                        item_id,
                        evaluator: evaluator.name().to_string(),
                        model: evaluator.model().to_string(),
                        score,
                        reason,
                        created_at_ms: at,
                    }),
            );
        }
        // A chunk no evaluator could answer (providers down, rate-limited past the retries)
        // must not go live unevaluated: store what was answered, and fail the job so it is
        // delivered again later; the retry evaluates what is still pending.
        self.deps.db.put_evaluations(&evaluations).await?;
        if answered.len() < items.chunks(self.config.chunk).len() {
            return Err(StageError::Providers(failures.join("; ")));
        }
        Ok(vec![Job::Rank(RankJob {
            category: category.name,
            activate: items.into_iter().map(|(id, _)| id).collect(),
        })])
    }
}

#[async_trait]
impl Stage for EvaluateStage {
    fn kind(&self) -> StageKind {
        StageKind::Evaluate
    }

    fn concurrency(&self) -> usize {
        self.config.concurrency
    }

    async fn process(&self, job: Job) -> Result<Vec<Job>, StageError> {
        match job {
            Job::Evaluate(job) => self.evaluate(job).await,
            other => Ok(vec![other]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{deps, insert_pending};

    fn chunk() -> Vec<(String, String)> {
        vec![("a".into(), "one".into()), ("b".into(), "two".into())]
    }

    #[test]
    fn score_answers_must_name_known_ids_in_range() {
        let ok = r#"{"scores":[{"id":"a","score":7,"reason":"useful"},{"id":"b","score":2}]}"#;
        let scores = parse_scores(ok, &Rubric::Score, &chunk()).expect("parses");
        assert_eq!(scores[0], ("a".into(), 7.0, Some("useful".into())));
        for bad in [
            r#"{"scores":[{"id":"zzz","score":7}]}"#,
            r#"{"scores":[{"id":"a","score":11}]}"#,
            r#"{"scores":[{"id":"a","score":1},{"id":"a","score":2}]}"#,
            r#"{"scores":[]}"#,
            "not json",
        ] {
            assert!(
                parse_scores(bad, &Rubric::Score, &chunk()).is_none(),
                "{bad}"
            );
        }
    }

    #[test]
    fn pick_best_scores_picked_items_ten_and_the_rest_zero() {
        let answer = r#"{"best":[{"id":"b","reason":"clear"}]}"#;
        let scores = parse_scores(answer, &Rubric::PickBest { k: 1 }, &chunk()).expect("parses");
        assert_eq!(
            scores,
            vec![
                ("a".into(), 0.0, None),
                ("b".into(), 10.0, Some("clear".into()))
            ]
        );
        let too_many = r#"{"best":[{"id":"a"},{"id":"b"}]}"#;
        assert!(parse_scores(too_many, &Rubric::PickBest { k: 1 }, &chunk()).is_none());
    }

    /// An evaluator whose endpoint refuses every connection (real HTTP, nothing listening).
    fn unreachable(deps: &mut Deps) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let config = larder_providers::ProviderConfig {
            name: "down".into(),
            kind: larder_providers::ProviderKind::Openai {
                base_url: format!("http://127.0.0.1:{port}/v1"),
                model: "m".into(),
                api_key_env: None,
                json_mode: Default::default(),
            },
            limits: larder_providers::Limits {
                max_retries: 0,
                timeout_ms: 1_000,
                ..Default::default()
            },
        };
        let provider = larder_providers::build(&config).expect("builds");
        deps.providers.insert("down".into(), provider);
    }

    #[tokio::test]
    async fn a_chunk_no_evaluator_answers_fails_the_job_and_activates_nothing() {
        let mut deps = deps().await;
        unreachable(&mut deps);
        let ids = insert_pending(&deps, "c", &["Book the movers", "Label every box"]).await;
        let job = || {
            Job::Evaluate(EvaluateJob {
                category: "c".into(),
                item_ids: ids.clone(),
            })
        };
        // Only the unreachable evaluator: the job fails, to be delivered again later.
        let down = EvaluateConfig {
            evaluators: vec!["down".into()],
            ..Default::default()
        }
        .build(&deps)
        .expect("builds");
        assert!(matches!(
            down.process(job()).await,
            Err(StageError::Providers(_))
        ));
        // One evaluator down, another up: the chunk is answered, so it goes to rank.
        let mixed = EvaluateConfig {
            evaluators: vec!["down".into(), "sim-judge".into()],
            ..Default::default()
        }
        .build(&deps)
        .expect("builds");
        let out = mixed.process(job()).await.expect("evaluates");
        assert!(matches!(out.as_slice(), [Job::Rank(r)] if r.activate.len() == 2));
    }

    #[tokio::test]
    async fn pending_items_get_stored_evaluations_and_go_to_rank() {
        let deps = deps().await;
        let ids = insert_pending(
            &deps,
            "moving house",
            &["Book the movers", "Label every box", "Cancel utilities"],
        )
        .await;
        for rubric in [RubricKind::Score, RubricKind::PickBest] {
            let stage = EvaluateConfig {
                rubric,
                pick: 1,
                chunk: 2,
                ..Default::default()
            }
            .build(&deps)
            .expect("builds");
            let out = stage
                .process(Job::Evaluate(EvaluateJob {
                    category: "moving house".into(),
                    item_ids: ids.clone(),
                }))
                .await
                .expect("evaluates");
            let [Job::Rank(rank)] = out.as_slice() else {
                panic!("expected one rank job, got {out:?}")
            };
            assert_eq!(rank.activate.len(), 3);
        }
        for id in &ids {
            let detail = deps
                .db
                .item("moving house", id)
                .await
                .expect("reads")
                .expect("exists");
            assert_eq!(
                detail.evaluations.len(),
                1,
                "one evaluator, re-evaluation replaces"
            );
            assert_eq!(detail.evaluations[0].evaluator, "sim-judge");
        }
    }
}
