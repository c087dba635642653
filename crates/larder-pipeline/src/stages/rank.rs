//! **rank**: recompute a category from the main DB and publish its serving view.
//!
//! - Items whose evaluation is done join the active pool.
//! - Every active item gets a Beta posterior (prior from the evaluators, updated by feedback;
//!   see [`crate::view`]).
//! - Items that keep losing (many impressions, posterior mean below `retire_below`) are retired.
//! - Near duplicates among active items are retired too, keeping the better one. The filter
//!   already drops near duplicates of the pool, but two filter jobs of one category running
//!   at once (several workers) cannot see each other's items; ranking sees the whole pool, so
//!   the served view never holds both.
//! - The view (best `view_size` by posterior mean) is written to the store, which announces it
//!   to serving nodes over pub/sub.
//! - **Refill**: when fewer than `pool_target` items are active, generation is queued, at most
//!   once per `refill_cooldown_ms` per category, through the category domain's
//!   [`larder_categories::Generations`]: one claim mechanism for every path, which gives the
//!   claim back when the job cannot be queued.
//!
//! Recomputing from the DB makes the stage idempotent: a redelivered job writes the same view.

use std::collections::HashSet;

use async_trait::async_trait;
use larder_db::{ItemStatus, RankInput};
use serde::{Deserialize, Serialize};

use larder_categories::{Evidence, View, ViewItem};

use crate::events::{self, Event};
use crate::job::{EmbedJob, Job, RankJob, StageKind};
use crate::names;
use crate::stage::{now_ms, CategoryLocks, Deps, Stage, StageError};
use crate::text::{self, DedupIndex};

/// Reasons recorded on retired items.
const LOST: &str = "retired: lost to feedback";
const DUPLICATE: &str = "retired: near duplicate of a better item";

/// Bound on view rewrites per job when concurrent jobs keep changing the category.
const MAX_REWRITES: usize = 4;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RankConfig {
    /// How many impressions a full-marks evaluation is worth (the prior's pseudo-count). The
    /// assembly point hands it to the rank stage and the API alike, as
    /// [`larder_categories::Ranking`].
    pub prior_strength: f64,
    /// Fit the prior to the category's feedback: how scores map to selection rates and how
    /// much to trust them ([`larder_categories::Calibration`]). `false`: the fixed prior.
    pub adaptive_prior: bool,
    /// Active items kept per category; fewer queues generation.
    pub pool_target: usize,
    /// Items in the serving view.
    pub view_size: usize,
    pub refill_cooldown_ms: i64,
    /// Retire an item once it has this many impressions and its posterior mean is below
    /// `retire_below`.
    pub retire_min_impressions: u64,
    pub retire_below: f64,
    pub concurrency: usize,
}

impl Default for RankConfig {
    fn default() -> Self {
        let ranking = larder_categories::Ranking::default();
        RankConfig {
            prior_strength: ranking.prior_strength,
            adaptive_prior: ranking.adaptive_prior,
            pool_target: 30,
            view_size: 100,
            refill_cooldown_ms: 60_000,
            retire_min_impressions: 200,
            retire_below: 0.01,
            concurrency: 4,
        }
    }
}

impl RankConfig {
    /// The ranking model these settings describe.
    pub fn ranking(&self) -> larder_categories::Ranking {
        larder_categories::Ranking {
            prior_strength: self.prior_strength,
            adaptive_prior: self.adaptive_prior,
        }
    }

    pub fn build(&self, deps: &Deps) -> Result<RankStage, StageError> {
        if self.prior_strength < 0.0 || self.view_size == 0 || self.concurrency == 0 {
            return Err(StageError::Config(
                "pipeline.rank: prior_strength must be >= 0, view_size and concurrency >= 1".into(),
            ));
        }
        Ok(RankStage {
            config: self.clone(),
            ranking: self.ranking(),
            deps: deps.clone(),
            running: CategoryLocks::default(),
            embed: false,
        })
    }
}

pub struct RankStage {
    config: RankConfig,
    ranking: larder_categories::Ranking,
    deps: Deps,
    /// One lock per category being ranked in this process: its rank jobs run one after the
    /// other, so they never serve an item that another is about to retire. (Jobs in other
    /// worker processes still overlap; the rewrite loop below makes them converge.)
    running: CategoryLocks,
    /// Whether the embed stage runs: new items then get an embed job.
    embed: bool,
}

impl RankStage {
    /// Active items as view items, and the ids to retire with why: lost too often, or a near
    /// duplicate of a better item.
    /// Of two near duplicates, one in the view being served stays (`served`: served items do
    /// not churn), else the better one. The rule depends only on the view and the DB, never on
    /// which job activated an item, so concurrent rank jobs of a category (several workers)
    /// retire the same one; a rule that preferred "not activated by this job" made two jobs
    /// that each activated one of a pair retire each other's.
    fn score(
        &self,
        inputs: Vec<RankInput>,
        served: &HashSet<String>,
    ) -> (Vec<ViewItem>, Vec<(String, &'static str)>) {
        let mut candidates = Vec::new();
        let mut retire = Vec::new();
        let calibration = self.ranking.calibrate_active(&inputs);
        for input in inputs
            .into_iter()
            .filter(|i| i.status == ItemStatus::Active)
        {
            let (alpha, beta) = calibration.posterior(&Evidence::from(&input));
            let item = ViewItem {
                id: input.id,
                text: input.text,
                alpha,
                beta,
            };
            if input.impressions >= self.config.retire_min_impressions
                && item.mean() < self.config.retire_below
            {
                retire.push((item.id, LOST));
            } else {
                candidates.push(item);
            }
        }
        candidates.sort_by(|a, b| {
            served
                .contains(&b.id)
                .cmp(&served.contains(&a.id))
                .then_with(|| b.mean().total_cmp(&a.mean()))
                .then_with(|| a.id.cmp(&b.id))
        });
        let mut seen = DedupIndex::new(self.deps.text.near_duplicate);
        let mut items = Vec::with_capacity(candidates.len());
        for item in candidates {
            let norm = text::normalize(&item.text);
            if seen.find(&norm).is_some() {
                retire.push((item.id, DUPLICATE));
            } else {
                seen.insert(&item.id, &norm);
                items.push(item);
            }
        }
        (items, retire)
    }

    /// The ids in the category's view as it is served now.
    async fn served(&self, category: &str) -> Result<HashSet<String>, StageError> {
        let view = self.deps.store.get_view(category).await?;
        Ok(view
            .and_then(|bytes| View::decode(&bytes).ok())
            .map(|view| view.items.into_iter().map(|i| i.id).collect())
            .unwrap_or_default())
    }

    /// The lock of `category`'s rank jobs in this process.
    async fn rank(&self, job: RankJob) -> Result<Vec<Job>, StageError> {
        let _one_at_a_time = self.running.lock(&job.category).await;
        let db = &self.deps.db;
        let mut inputs = db.rank_inputs(&job.category).await?;
        let activate: Vec<String> = inputs
            .iter()
            .filter(|i| i.status == ItemStatus::Pending && job.activate.contains(&i.id))
            .map(|i| i.id.clone())
            .collect();
        if !activate.is_empty() {
            db.set_status(&job.category, &activate, ItemStatus::Active, None)
                .await?;
            for input in inputs.iter_mut().filter(|i| activate.contains(&i.id)) {
                input.status = ItemStatus::Active;
            }
        }
        // Rank jobs of one category may run at once (several workers, or concurrency > 1), and
        // one that read the DB earlier may write its view later, hiding newer feedback. So each
        // job re-reads after writing and writes again until the view it wrote still matches
        // the DB: whichever job writes last, the view ends at the latest state.
        let mut retired = 0;
        let mut active = 0;
        for _ in 0..MAX_REWRITES {
            let served = self.served(&job.category).await?;
            let (items, retire) = self.score(inputs, &served);
            for reason in [LOST, DUPLICATE] {
                let ids: Vec<String> = retire
                    .iter()
                    .filter(|(_, r)| *r == reason)
                    .map(|(id, _)| id.clone())
                    .collect();
                if ids.is_empty() {
                    continue;
                }
                db.set_status(&job.category, &ids, ItemStatus::Rejected, Some(reason))
                    .await?;
                metrics::counter!(names::RETIRED, "reason" => reason).increment(ids.len() as u64);
                retired += ids.len();
            }
            active = items.len();
            let view = View::new(job.category.clone(), now_ms(), items, self.config.view_size);
            self.deps
                .store
                .put_view(&job.category, &view.encode())
                .await?;
            metrics::counter!(names::VIEWS_WRITTEN).increment(1);
            events::publish(Event::View {
                category: job.category.clone(),
                items: view.items.len(),
                at_ms: view.built_at_ms,
            });
            inputs = db.rank_inputs(&job.category).await?;
            let served = view.items.iter().map(|i| i.id.clone()).collect();
            let (now_items, now_retire) = self.score(inputs.clone(), &served);
            let current = View::new(
                job.category.clone(),
                view.built_at_ms,
                now_items,
                self.config.view_size,
            );
            if now_retire.is_empty() && current.items == view.items {
                break;
            }
        }
        tracing::debug!(category = %job.category, active, retired, "view written");
        if active < self.config.pool_target
            && self
                .deps
                .generations
                .queue(
                    &job.category,
                    "refill",
                    Some(self.config.refill_cooldown_ms),
                )
                .await?
        {
            metrics::counter!(names::REFILLS, "reason" => if retired == 0 { "low_pool" } else { "losing" })
                .increment(1);
        }
        // New items joined the pool: the embed stage gives them (and any item an earlier
        // embed job missed) vectors. Feedback re-ranks activate nothing and queue nothing.
        if self.embed && !activate.is_empty() {
            return Ok(vec![Job::Embed(EmbedJob {
                category: job.category,
            })]);
        }
        Ok(Vec::new())
    }

    /// Queue an embed job whenever items join the pool (`pipeline.embed` is on).
    pub fn embedding(mut self, on: bool) -> RankStage {
        self.embed = on;
        self
    }
}

#[async_trait]
impl Stage for RankStage {
    fn kind(&self) -> StageKind {
        StageKind::Rank
    }

    fn concurrency(&self) -> usize {
        self.config.concurrency
    }

    async fn process(&self, job: Job) -> Result<Vec<Job>, StageError> {
        match job {
            Job::Rank(job) => self.rank(job).await,
            other => Ok(vec![other]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{deps, deps_on, insert_pending};
    use larder_categories::ranking::position_weight;
    use larder_db::{Evaluation, FeedbackEvent, FeedbackKind};

    async fn view(deps: &Deps, category: &str) -> View {
        let bytes = deps
            .store
            .get_view(category)
            .await
            .expect("reads")
            .expect("view exists");
        View::decode(&bytes).expect("decodes")
    }

    #[tokio::test]
    async fn evaluated_items_are_served_best_first_and_feedback_reorders() {
        let broker = larder_broker::memory(Default::default());
        let deps = deps_on(broker.clone()).await;
        let ids = insert_pending(
            &deps,
            "moving house",
            &["Book the movers", "Label boxes", "Buy tape"],
        )
        .await;
        let evaluations: Vec<Evaluation> = ids
            .iter()
            .zip([9.0, 5.0, 2.0])
            .map(|(id, score)| Evaluation {
                item_id: id.clone(),
                evaluator: "judge".into(),
                model: "m".into(),
                score,
                reason: None,
                created_at_ms: 0,
            })
            .collect();
        deps.db.put_evaluations(&evaluations).await.expect("stores");
        let stage = RankConfig::default().build(&deps).expect("builds");
        let out = stage
            .process(Job::Rank(RankJob {
                category: "moving house".into(),
                activate: ids.clone(),
            }))
            .await
            .expect("ranks");
        // 3 active < pool_target: generation is queued once, then not again within the cooldown.
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(broker.backlog("generate").await.expect("backlog"), 1);
        let first = view(&deps, "moving house").await;
        let order: Vec<&str> = first.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(order, [ids[0].as_str(), ids[1].as_str(), ids[2].as_str()]);

        // All three are shown 300 times and users keep picking the worst one: it moves first.
        // (The default prior trusts a 9 over a 2 for a while: 30 times is not enough.)
        let impression = |id: &String, position: u32| FeedbackEvent {
            item_id: id.clone(),
            kind: FeedbackKind::Impression,
            position,
            weight: position_weight(position),
            at_ms: 0,
        };
        let events: Vec<FeedbackEvent> = (0..300)
            .flat_map(|_| {
                [
                    impression(&ids[0], 0),
                    impression(&ids[1], 1),
                    impression(&ids[2], 2),
                    FeedbackEvent {
                        kind: FeedbackKind::Select,
                        ..impression(&ids[2], 2)
                    },
                ]
            })
            .collect();
        deps.db
            .record_feedback("moving house", &events)
            .await
            .expect("records");
        let out = stage
            .process(Job::Rank(RankJob {
                category: "moving house".into(),
                activate: vec![],
            }))
            .await
            .expect("ranks");
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(
            broker.backlog("generate").await.expect("backlog"),
            1,
            "refill is on cooldown"
        );
        let second = view(&deps, "moving house").await;
        assert_eq!(second.items[0].id, ids[2]);
    }

    /// The refill claims a generation like every other path, so when the broker cannot take the
    /// job the claim is given back (the category refills on the next rank job, not after the
    /// cooldown) and the job fails, to be redelivered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refill_that_cannot_be_queued_gives_its_claim_back() {
        let mut redis = larder_testkit::RedisServer::start();
        let broker =
            larder_broker::redis(&redis.url().parse().expect("redis URL"), Default::default())
                .await
                .expect("broker");
        let deps = deps_on(broker).await;
        let ids = insert_pending(&deps, "c", &["Book the movers"]).await;
        let stage = RankConfig::default().build(&deps).expect("builds");
        redis.stop();
        let result = stage
            .process(Job::Rank(RankJob {
                category: "c".into(),
                activate: ids,
            }))
            .await;
        assert!(result.is_err(), "{result:?}");
        let c = deps.db.category("c").await.expect("reads").expect("exists");
        assert_eq!(
            c.last_generation_ms, None,
            "the refill claim was given back"
        );
        // The view was written before the refill: serving already has the item.
        assert_eq!(view(&deps, "c").await.items.len(), 1);
    }

    #[tokio::test]
    async fn near_duplicates_that_slipped_past_concurrent_filters_are_not_both_served() {
        let deps = deps().await;
        // What two filter jobs running at once can insert: each saw the pool without the other.
        let ids = insert_pending(
            &deps,
            "이사 준비",
            &[
                "이웃에게 이사 소음 양해 구하기",
                "이웃에게 이사 소음 양해 미리 구하기",
                "전입신고 하기",
            ],
        )
        .await;
        let stage = RankConfig::default().build(&deps).expect("builds");
        stage
            .process(Job::Rank(RankJob {
                category: "이사 준비".into(),
                activate: ids.clone(),
            }))
            .await
            .expect("ranks");
        let served = view(&deps, "이사 준비").await;
        assert_eq!(served.items.len(), 2, "{served:?}");
        let rejected: Vec<_> = [&ids[0], &ids[1]]
            .into_iter()
            .filter(|id| !served.items.iter().any(|i| &&i.id == id))
            .collect();
        assert_eq!(rejected.len(), 1);
        let detail = deps
            .db
            .item("이사 준비", rejected[0])
            .await
            .expect("reads")
            .expect("exists");
        assert_eq!(detail.item.status, ItemStatus::Rejected);
        assert_eq!(detail.item.reason.as_deref(), Some(DUPLICATE));
    }

    #[tokio::test]
    async fn items_that_keep_losing_are_retired() {
        let deps = deps().await;
        let ids = insert_pending(&deps, "c", &["Loser item", "Fine item"]).await;
        let stage = RankConfig {
            retire_min_impressions: 50,
            retire_below: 0.05,
            ..Default::default()
        }
        .build(&deps)
        .expect("builds");
        stage
            .process(Job::Rank(RankJob {
                category: "c".into(),
                activate: ids.clone(),
            }))
            .await
            .expect("ranks");
        let events: Vec<FeedbackEvent> = (0..300)
            .map(|_| FeedbackEvent {
                item_id: ids[0].clone(),
                kind: FeedbackKind::Impression,
                position: 0,
                weight: 1.0,
                at_ms: 0,
            })
            .collect();
        deps.db
            .record_feedback("c", &events)
            .await
            .expect("records");
        stage
            .process(Job::Rank(RankJob {
                category: "c".into(),
                activate: vec![],
            }))
            .await
            .expect("ranks");
        let served = view(&deps, "c").await;
        assert_eq!(served.items.len(), 1);
        assert_eq!(served.items[0].id, ids[1]);
        let detail = deps
            .db
            .item("c", &ids[0])
            .await
            .expect("reads")
            .expect("exists");
        assert_eq!(detail.item.status, ItemStatus::Rejected);
    }
}
