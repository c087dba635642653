//! # larder-sim
//!
//! The ranking simulator behind `larder bench ranking`: simulated users against Larder's real
//! feedback and rank path, and the regret of that policy against the alternatives.
//!
//! - [`world`]: a pool of items with a hidden appeal, evaluator scores at a chosen Spearman ρ,
//!   and the click models (position-based, cascade).
//! - [`policy`]: the policies compared. Larder's runs through the server's own code
//!   (`larder`: main DB, rank stage, `Categories::record_feedback`, the serving view).
//! - [`report`]: the table and the SVG plot.
//!
//! Everything is seeded: the same [`Config`] gives the same numbers, run after run.

mod larder;
pub mod policy;
pub mod report;
pub mod world;

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::task::JoinSet;

pub use larder_categories::Ranking;
pub use policy::Policy;
pub use report::Report;
pub use world::{ClickModel, World};

/// The impression counts the table reports.
pub const CHECKPOINTS: [u64; 4] = [100, 1_000, 10_000, 100_000];

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("main DB: {0}")]
    Db(#[from] larder_db::DbError),
    #[error("store: {0}")]
    Store(#[from] larder_store::StoreError),
    #[error("ranking: {0}")]
    Rank(String),
    #[error("plot: {0}")]
    Plot(String),
    #[error("{0}")]
    Config(String),
    #[error("simulation task: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What to simulate. An *impression* is one list of `k` shown to one user.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Items in the category's pool.
    pub items: usize,
    /// Items shown to each user.
    pub k: usize,
    /// Evaluator quality: Spearman ρ between scores and true appeal, one run per value.
    pub rhos: Vec<f64>,
    /// Users simulated per run.
    pub horizon: u64,
    /// Users between re-ranks (a server re-ranks once per 100 ms of feedback).
    pub batch: usize,
    /// Independent pools per ρ; the report averages over them.
    pub pools: usize,
    pub click_model: ClickModel,
    pub seed: u64,
    #[serde(skip)]
    pub policies: Vec<Policy>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            items: 50,
            k: 10,
            rhos: vec![0.0, 0.3, 0.6, 0.9],
            horizon: 100_000,
            batch: 10,
            pools: 8,
            click_model: ClickModel::Pbm { eta: 1.0 },
            seed: 20_261_203,
            policies: Policy::all(),
        }
    }
}

impl Config {
    fn check(&self) -> Result<(), SimError> {
        if self.items == 0 || self.k == 0 || self.k > self.items {
            return Err(SimError::Config(format!(
                "need 1 <= k <= items, got k = {} and items = {}",
                self.k, self.items
            )));
        }
        if self.batch == 0 || self.pools == 0 || self.horizon == 0 {
            return Err(SimError::Config(
                "batch, pools and horizon must be at least 1".into(),
            ));
        }
        if self.rhos.iter().any(|r| !(-1.0..=1.0).contains(r)) {
            return Err(SimError::Config("rho must be within -1..=1".into()));
        }
        if let ClickModel::Pbm { eta } = self.click_model {
            if !(eta.is_finite() && eta >= 0.0) {
                return Err(SimError::Config("eta must be >= 0".into()));
            }
        }
        Ok(())
    }

    /// Where curves are sampled: 10, 20, 50, 100, … up to the horizon, and the horizon.
    pub fn points(&self) -> Vec<u64> {
        let mut out = Vec::new();
        let mut decade = 10;
        while decade <= self.horizon {
            for m in [1, 2, 5] {
                if decade * m <= self.horizon {
                    out.push(decade * m);
                }
            }
            decade *= 10;
        }
        if out.last() != Some(&self.horizon) {
            out.push(self.horizon);
        }
        out
    }
}

/// One curve: a policy on the pools of one ρ, averaged over the pools.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub rho: f64,
    /// The pools' measured Spearman ρ, averaged.
    pub spearman: f64,
    pub policy: &'static str,
    pub name: &'static str,
    pub points: Vec<Point>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Point {
    pub impressions: u64,
    /// Selections users made (drawn), cumulative.
    pub clicks: f64,
    /// Expected selections lost against the oracle, cumulative.
    pub regret: f64,
}

/// Run every policy on every ρ. `progress` is told of every batch of users simulated; the
/// total is `rhos × pools × policies × horizon`.
pub async fn run(
    config: &Config,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<Report, SimError> {
    config.check()?;
    let points = Arc::new(config.points());
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut tasks = JoinSet::new();
    let mut results: Vec<(usize, usize, usize, f64, Vec<Point>)> = Vec::new();
    for (r, rho) in config.rhos.iter().enumerate() {
        let rho = *rho;
        for pool in 0..config.pools {
            let world = Arc::new(World::generate(
                config.items,
                rho,
                &mut seeded(config.seed, &[rho.to_bits(), pool as u64, 0]),
            ));
            for (p, policy) in config.policies.iter().enumerate() {
                while tasks.len() >= parallel {
                    if let Some(done) = tasks.join_next().await {
                        results.push(done??);
                    }
                }
                let (world, points, progress) = (world.clone(), points.clone(), progress.clone());
                let (policy, config) = (*policy, config.clone());
                tasks.spawn(async move {
                    let curve =
                        simulate(&config, policy, &world, &points, (rho, pool), &*progress).await?;
                    Ok::<_, SimError>((r, p, pool, world.spearman, curve))
                });
            }
        }
    }
    while let Some(done) = tasks.join_next().await {
        results.push(done??);
    }

    let mut runs = Vec::new();
    for (r, rho) in config.rhos.iter().enumerate() {
        for (p, policy) in config.policies.iter().enumerate() {
            let mut mine: Vec<&(usize, usize, usize, f64, Vec<Point>)> =
                results.iter().filter(|x| x.0 == r && x.1 == p).collect();
            // Tasks finish in any order; summing the pools in pool order keeps the averages
            // bit-for-bit repeatable (floating-point sums depend on their order).
            mine.sort_by_key(|x| x.2);
            let n = mine.len() as f64;
            let spearman = mine.iter().map(|x| x.3).sum::<f64>() / n;
            let points = (0..points.len())
                .map(|i| Point {
                    impressions: points[i],
                    clicks: mine.iter().map(|x| x.4[i].clicks).sum::<f64>() / n,
                    regret: mine.iter().map(|x| x.4[i].regret).sum::<f64>() / n,
                })
                .collect();
            runs.push(Run {
                rho: *rho,
                spearman,
                policy: policy.key(),
                name: policy.name(),
                points,
            });
        }
    }
    Ok(Report {
        config: config.clone(),
        runs,
    })
}

/// One policy on one pool: users arrive in batches; each sees a list, selects by the click
/// model, and the batch's feedback goes back to the policy.
async fn simulate(
    config: &Config,
    policy: Policy,
    world: &World,
    points: &[u64],
    (rho, pool): (f64, usize),
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Vec<Point>, SimError> {
    // Seeds depend on ρ, the pool and the policy, never on what else runs, so a run of one ρ
    // or one policy gives the numbers of the full table. The users (their clicks) are the
    // same for every policy of a pool; each policy draws its own exploration.
    let mut users = seeded(config.seed, &[rho.to_bits(), pool as u64, 1]);
    let mut draws = seeded(config.seed, &[rho.to_bits(), pool as u64, 2 + policy.id()]);
    let mut engine = policy::Engine::new(policy, world, config.k, &mut draws).await?;
    let best = config
        .click_model
        .expected(&world.oracle(config.k), &world.appeal);
    let mut out = Vec::with_capacity(points.len());
    let mut next = points.iter().peekable();
    let (mut served, mut clicks, mut regret) = (0u64, 0.0, 0.0);
    while served < config.horizon {
        let n = (config.batch as u64).min(config.horizon - served) as usize;
        let lists = engine.lists(n, &mut draws).await?;
        let mut shown = Vec::with_capacity(n);
        for list in lists {
            let selected = config.click_model.clicks(&list, &world.appeal, &mut users);
            clicks += selected.iter().filter(|c| **c).count() as f64;
            regret += best - config.click_model.expected(&list, &world.appeal);
            served += 1;
            if next.peek() == Some(&&served) {
                next.next();
                out.push(Point {
                    impressions: served,
                    clicks,
                    regret,
                });
            }
            shown.push((list, selected));
        }
        engine.feedback(&shown).await?;
        progress(n as u64);
    }
    Ok(out)
}

/// A generator for one part of a run, from the run's seed and the part's coordinates.
fn seeded(seed: u64, parts: &[u64]) -> rand::rngs::StdRng {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for part in parts {
        rng = rand::rngs::StdRng::seed_from_u64(
            rng.random::<u64>() ^ part.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
    }
    rng
}
