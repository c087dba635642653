//! Larder's own policy, run through the code the server runs:
//! - items and their evaluations go into a real (in-memory SQLite) main DB, and the real rank
//!   stage activates them and writes the category's serving view to a real (embedded) store;
//! - each batch of users is served from that view as `GET …/items` serves it
//!   ([`View::sample_indices`] with `explore=true`, the view's order without);
//! - their impressions and selections go through [`Categories::record_feedback`], the
//!   handler's one call, and the rank stage re-ranks from the DB, as after real feedback.
//!
//! The only difference from a server is timing: the server coalesces feedback into one
//! re-rank per 100 ms; here a re-rank follows every batch of `batch` users, so runs repeat.

use std::collections::HashMap;
use std::sync::Arc;

use larder_categories::model::{FeedbackIn, FeedbackRequest};
use larder_categories::{Admission, Categories, Generations, Ranking, View};
use larder_db::{Db, Evaluation, FeedbackKind, ItemStatus, NewItem};
use larder_pipeline::job::{Job, RankJob};
use larder_pipeline::queue::Queue;
use larder_pipeline::stage::{Deps, Stage};
use larder_pipeline::stages::rank::{RankConfig, RankStage};
use larder_pipeline::text;
use larder_store::{Store, StoreOptions, StoreUrl};
use rand::Rng;

use crate::world::World;
use crate::SimError;

const CATEGORY: &str = "simulated";

pub(crate) struct LarderEngine {
    categories: Arc<Categories>,
    rank: RankStage,
    store: Arc<dyn Store>,
    /// Item ids by index in the world, and back.
    ids: Vec<String>,
    index: HashMap<String, usize>,
    explore: bool,
    k: usize,
}

impl LarderEngine {
    pub(crate) async fn new(
        world: &World,
        ranking: Ranking,
        explore: bool,
        k: usize,
        rng: &mut impl Rng,
    ) -> Result<LarderEngine, SimError> {
        let db = Db::connect(&larder_url::DbUrl::SqliteMemory).await?;
        let store = larder_store::open(
            &StoreUrl::Embedded,
            &StoreOptions {
                ephemeral: true,
                ..Default::default()
            },
        )
        .await?;
        let broker = larder_broker::memory(Default::default());
        let generations = Generations::new(db.clone(), Arc::new(Queue::new(broker)), 60_000);
        let deps = Deps {
            db: db.clone(),
            store: store.clone(),
            providers: HashMap::new(),
            text: Default::default(),
            generations: generations.clone(),
        };
        let rank = RankConfig {
            prior_strength: ranking.prior_strength,
            adaptive_prior: ranking.adaptive_prior,
            // The pool is fixed: no refills (there is no generator here).
            pool_target: 0,
            ..RankConfig::default()
        }
        .build(&deps)
        .map_err(|e| SimError::Rank(e.to_string()))?;
        let categories = Categories::new(
            db.clone(),
            store.clone(),
            generations,
            ranking,
            Admission::open(),
            None,
        );

        db.register_category(CATEGORY, None, None, 0).await?;
        let texts: Vec<String> = (0..world.len()).map(|_| item_text(rng)).collect();
        let items: Vec<NewItem> = texts
            .iter()
            .map(|t| NewItem {
                id: text::item_id(CATEGORY, t),
                category: CATEGORY.into(),
                text: t.clone(),
                norm: text::normalize(t),
                provider: "sim".into(),
                model: "sim".into(),
                created_at_ms: 0,
                status: ItemStatus::Pending,
                reason: None,
            })
            .collect();
        db.insert_items(&items).await?;
        let evaluations: Vec<Evaluation> = items
            .iter()
            .zip(&world.scores)
            .map(|(item, score)| Evaluation {
                item_id: item.id.clone(),
                evaluator: "sim".into(),
                model: "sim".into(),
                score: *score,
                reason: None,
                created_at_ms: 0,
            })
            .collect();
        db.put_evaluations(&evaluations).await?;
        let ids: Vec<String> = items.into_iter().map(|i| i.id).collect();
        let engine = LarderEngine {
            categories,
            rank,
            store,
            index: ids.iter().cloned().zip(0..).collect(),
            ids: ids.clone(),
            explore,
            k,
        };
        engine.rerank(ids).await?;
        Ok(engine)
    }

    /// Lists for `users` users, from the view as it is now (one view read per batch, as a
    /// server's cached view).
    pub(crate) async fn lists(
        &self,
        users: usize,
        rng: &mut impl Rng,
    ) -> Result<Vec<Vec<usize>>, SimError> {
        let bytes = self
            .store
            .get_view(CATEGORY)
            .await?
            .ok_or(SimError::Rank("the rank stage wrote no view".into()))?;
        let view = View::decode(&bytes).map_err(|e| SimError::Rank(e.to_string()))?;
        let world_index = |position: usize| self.index.get(&view.items[position].id).copied();
        Ok((0..users)
            .map(|_| {
                let positions: Vec<usize> = if self.explore {
                    view.sample_indices(self.k, rng)
                } else {
                    (0..self.k.min(view.items.len())).collect()
                };
                positions.into_iter().filter_map(world_index).collect()
            })
            .collect())
    }

    /// Record what the users saw and selected, then re-rank.
    pub(crate) async fn feedback(&self, shown: &[(Vec<usize>, Vec<bool>)]) -> Result<(), SimError> {
        let mut events = Vec::new();
        for (list, clicks) in shown {
            for (position, (item, clicked)) in list.iter().zip(clicks).enumerate() {
                let event = |event| FeedbackIn {
                    item_id: self.ids[*item].clone(),
                    event,
                    position: position as u32,
                };
                events.push(event(FeedbackKind::Impression));
                if *clicked {
                    events.push(event(FeedbackKind::Select));
                }
            }
        }
        for chunk in events.chunks(larder_categories::service::MAX_FEEDBACK_EVENTS) {
            self.categories
                .record_feedback(
                    CATEGORY,
                    FeedbackRequest {
                        events: chunk.to_vec(),
                    },
                )
                .await
                .map_err(|e| SimError::Rank(e.to_string()))?;
        }
        self.rerank(Vec::new()).await
    }

    async fn rerank(&self, activate: Vec<String>) -> Result<(), SimError> {
        self.rank
            .process(Job::Rank(RankJob {
                category: CATEGORY.into(),
                activate,
            }))
            .await
            .map_err(|e| SimError::Rank(e.to_string()))?;
        Ok(())
    }
}

/// Four random words: distinct texts that the rank stage's near-duplicate rule keeps apart.
fn item_text(rng: &mut impl Rng) -> String {
    (0..4)
        .map(|_| {
            (0..7)
                .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join(" ")
}
