//! The policies compared, and the baselines' own (in-memory) bookkeeping. Larder's policy is
//! run through the server's code instead (`crate::larder`).

use rand::seq::index;
use rand::Rng;
use serde::Serialize;

use larder_categories::Ranking;

use crate::larder::LarderEngine;
use crate::world::World;
use crate::SimError;

/// A way of choosing the top `k`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "policy", rename_all = "snake_case")]
pub enum Policy {
    /// Larder as served: the rank stage's posteriors, `explore=true` (Thompson sampling, the
    /// API's default) or `explore=false` (posterior mean).
    Larder {
        explore: bool,
        #[serde(skip)]
        ranking: Ranking,
    },
    /// The reference system: `round(selected/evaluated·100 + ln(evaluated))`, where
    /// `evaluated` is how often the item was shown (0 when never shown); ties by evaluator
    /// score.
    Reference,
    /// The evaluators' scores, never updated.
    EvaluatorOnly,
    /// `k` items drawn uniformly for each user.
    Random,
    /// The `k` most appealing items, knowing the hidden appeal.
    Oracle,
}

impl Policy {
    /// The six of the comparison, Larder with its default ranking.
    pub fn all() -> Vec<Policy> {
        vec![
            Policy::Larder {
                explore: true,
                ranking: Ranking::default(),
            },
            Policy::Larder {
                explore: false,
                ranking: Ranking::default(),
            },
            Policy::Reference,
            Policy::EvaluatorOnly,
            Policy::Random,
            Policy::Oracle,
        ]
    }

    /// What the table calls it.
    pub fn name(&self) -> &'static str {
        self.names().1
    }

    /// The short name used in JSON and on the plot.
    pub fn key(&self) -> &'static str {
        self.names().2
    }

    /// A stable number for seeding.
    pub(crate) fn id(&self) -> u64 {
        self.names().0
    }

    /// Seed number, table name and key, in one place.
    fn names(&self) -> (u64, &'static str, &'static str) {
        match self {
            Policy::Larder { explore: true, .. } => {
                (0, "larder explore=true (default)", "larder_explore")
            }
            Policy::Larder { explore: false, .. } => (1, "larder explore=false", "larder_exploit"),
            Policy::Reference => (2, "reference formula", "reference"),
            Policy::EvaluatorOnly => (3, "evaluator score only", "evaluator_only"),
            Policy::Random => (4, "uniform random", "random"),
            Policy::Oracle => (5, "oracle", "oracle"),
        }
    }
}

/// A policy at work on one pool.
pub(crate) enum Engine {
    Larder(Box<LarderEngine>),
    Counted(Counted),
}

impl Engine {
    pub(crate) async fn new(
        policy: Policy,
        world: &World,
        k: usize,
        rng: &mut impl Rng,
    ) -> Result<Engine, SimError> {
        Ok(match policy {
            Policy::Larder { explore, ranking } => Engine::Larder(Box::new(
                LarderEngine::new(world, ranking, explore, k, rng).await?,
            )),
            other => Engine::Counted(Counted::new(other, world, k)),
        })
    }

    pub(crate) async fn lists(
        &mut self,
        users: usize,
        rng: &mut impl Rng,
    ) -> Result<Vec<Vec<usize>>, SimError> {
        match self {
            Engine::Larder(engine) => engine.lists(users, rng).await,
            Engine::Counted(counted) => Ok((0..users).map(|_| counted.list(rng)).collect()),
        }
    }

    pub(crate) async fn feedback(
        &mut self,
        shown: &[(Vec<usize>, Vec<bool>)],
    ) -> Result<(), SimError> {
        match self {
            Engine::Larder(engine) => engine.feedback(shown).await,
            Engine::Counted(counted) => {
                counted.feedback(shown);
                Ok(())
            }
        }
    }
}

/// The baselines: counters of impressions and selections, and an order.
pub(crate) struct Counted {
    policy: Policy,
    k: usize,
    scores: Vec<f64>,
    shown: Vec<u64>,
    selected: Vec<u64>,
    order: Vec<usize>,
}

impl Counted {
    fn new(policy: Policy, world: &World, k: usize) -> Counted {
        let n = world.len();
        let mut counted = Counted {
            policy,
            k: k.min(n),
            scores: world.scores.clone(),
            shown: vec![0; n],
            selected: vec![0; n],
            order: (0..n).collect(),
        };
        match policy {
            Policy::Oracle => counted.order = world.oracle(n),
            _ => counted.reorder(),
        }
        counted
    }

    fn list(&self, rng: &mut impl Rng) -> Vec<usize> {
        match self.policy {
            Policy::Random => index::sample(rng, self.order.len(), self.k).into_vec(),
            _ => self.order[..self.k].to_vec(),
        }
    }

    fn feedback(&mut self, shown: &[(Vec<usize>, Vec<bool>)]) {
        for (list, clicks) in shown {
            for (item, clicked) in list.iter().zip(clicks) {
                self.shown[*item] += 1;
                self.selected[*item] += u64::from(*clicked);
            }
        }
        if self.policy == Policy::Reference {
            self.reorder();
        }
    }

    /// Order by the reference formula (or, before any feedback, by evaluator score alone).
    fn reorder(&mut self) {
        let score = |i: usize| -> f64 {
            if self.policy != Policy::Reference || self.shown[i] == 0 {
                return 0.0;
            }
            let shown = self.shown[i] as f64;
            (self.selected[i] as f64 / shown * 100.0 + shown.ln()).round()
        };
        let scores = &self.scores;
        self.order.sort_by(|a, b| {
            score(*b)
                .total_cmp(&score(*a))
                .then(scores[*b].total_cmp(&scores[*a]))
                .then(a.cmp(b))
        });
    }
}
