//! The simulated world: a pool of items with a hidden true appeal, an evaluator whose scores
//! agree with that appeal to a chosen Spearman ρ, and users who click by a click model.

use std::f64::consts::PI;

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;

/// Appeal is logit-normal, as click-through rates are: `sigmoid(APPEAL_MEAN + APPEAL_SPREAD·x)`
/// with `x ~ N(0, 1)` gives a median of 0.18 and most items between 0.05 and 0.45.
const APPEAL_MEAN: f64 = -1.5;
const APPEAL_SPREAD: f64 = 1.0;
/// Evaluator scores are `10·sigmoid(SCORE_SPREAD·y)`, rounded to one decimal, as an
/// evaluator's 0..=10 marks (mean over evaluators) are.
const SCORE_SPREAD: f64 = 1.6;

/// One category's pool.
#[derive(Debug, Clone)]
pub struct World {
    /// True appeal `p_i`: the chance a user who looks at item `i` selects it.
    pub appeal: Vec<f64>,
    /// The evaluators' mean score of item `i`, 0..=10.
    pub scores: Vec<f64>,
    /// The Spearman ρ between `appeal` and `scores` this pool actually has.
    pub spearman: f64,
}

impl World {
    /// `n` items whose scores have Spearman ρ `rho` with their appeal (in expectation).
    ///
    /// A Gaussian copula: latent `x ~ N(0,1)` gives the appeal, `y = r·x + √(1−r²)·ε` the
    /// score, with Pearson `r = 2·sin(πρ/6)`, the Pearson correlation whose Spearman
    /// correlation is ρ for a bivariate normal. Spearman's ρ ignores the monotone maps from
    /// `x` to appeal and from `y` to score, so no CDF is needed.
    pub fn generate(n: usize, rho: f64, rng: &mut impl Rng) -> World {
        let r = 2.0 * (PI * rho.clamp(-1.0, 1.0) / 6.0).sin();
        let noise = (1.0 - r * r).max(0.0).sqrt();
        let mut appeal = Vec::with_capacity(n);
        let mut scores = Vec::with_capacity(n);
        for _ in 0..n {
            let x: f64 = StandardNormal.sample(rng);
            let e: f64 = StandardNormal.sample(rng);
            let y = r * x + noise * e;
            appeal.push(sigmoid(APPEAL_MEAN + APPEAL_SPREAD * x));
            scores.push((100.0 * sigmoid(SCORE_SPREAD * y)).round() / 10.0);
        }
        let spearman = spearman(&appeal, &scores);
        World {
            appeal,
            scores,
            spearman,
        }
    }

    pub fn len(&self) -> usize {
        self.appeal.len()
    }

    pub fn is_empty(&self) -> bool {
        self.appeal.is_empty()
    }

    /// The best list of `k`: items by appeal, best first (optimal under both click models,
    /// whose examination never rises with position).
    pub fn oracle(&self, k: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.sort_by(|a, b| self.appeal[*b].total_cmp(&self.appeal[*a]).then(a.cmp(b)));
        order.truncate(k);
        order
    }
}

/// How users click on a shown list.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "model", rename_all = "lowercase")]
pub enum ClickModel {
    /// Position-based model: position `j` (0-based) is looked at with probability
    /// `1/(j+1)^eta`, independently of the items; a looked-at item is selected with its
    /// appeal. `eta = 1` is the power law fitted to search logs (Joachims et al., WSDM 2017).
    Pbm { eta: f64 },
    /// Cascade model: the user reads from the top, selects the first item that appeals
    /// (with its appeal) and stops.
    Cascade,
}

impl ClickModel {
    /// The chance position `j` is looked at, for the position-based model.
    pub fn examination(&self, position: usize) -> f64 {
        match self {
            ClickModel::Pbm { eta } => 1.0 / ((position + 1) as f64).powf(*eta),
            ClickModel::Cascade => 1.0,
        }
    }

    /// One user's selections on `list`.
    pub fn clicks(&self, list: &[usize], appeal: &[f64], rng: &mut impl Rng) -> Vec<bool> {
        let mut out = vec![false; list.len()];
        match self {
            ClickModel::Pbm { .. } => {
                for (position, item) in list.iter().enumerate() {
                    out[position] =
                        rng.random::<f64>() < self.examination(position) * appeal[*item];
                }
            }
            ClickModel::Cascade => {
                if let Some(position) = list.iter().position(|i| rng.random::<f64>() < appeal[*i]) {
                    out[position] = true;
                }
            }
        }
        out
    }

    /// Expected selections of one user on `list`.
    pub fn expected(&self, list: &[usize], appeal: &[f64]) -> f64 {
        match self {
            ClickModel::Pbm { .. } => list
                .iter()
                .enumerate()
                .map(|(position, item)| self.examination(position) * appeal[*item])
                .sum(),
            ClickModel::Cascade => 1.0 - list.iter().map(|i| 1.0 - appeal[*i]).product::<f64>(),
        }
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Spearman's rank correlation (ties get their average rank).
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mean = (n + 1.0) / 2.0;
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        cov += (x - mean) * (y - mean);
        va += (x - mean) * (x - mean);
        vb += (y - mean) * (y - mean);
    }
    if va == 0.0 || vb == 0.0 {
        0.0
    } else {
        cov / (va * vb).sqrt()
    }
}

fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|a, b| values[*a].total_cmp(&values[*b]));
    let mut out = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        // 1-based ranks start+1..=end share their mean.
        let rank = (start + 1 + end) as f64 / 2.0;
        for i in &order[start..end] {
            out[*i] = rank;
        }
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn spearman_of_the_generated_pool_follows_rho() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for rho in [0.0, 0.3, 0.6, 0.9] {
            let world = World::generate(5000, rho, &mut rng);
            assert!(
                (world.spearman - rho).abs() < 0.05,
                "{rho}: {}",
                world.spearman
            );
        }
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert_eq!(ranks(&[5.0, 1.0, 5.0]), [2.5, 1.0, 2.5]);
    }

    #[test]
    fn click_models_expect_what_they_draw() {
        let appeal = [0.5, 0.2, 0.1];
        let list = [0, 1, 2];
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        for model in [ClickModel::Pbm { eta: 1.0 }, ClickModel::Cascade] {
            let users = 200_000;
            let drawn: usize = (0..users)
                .map(|_| {
                    model
                        .clicks(&list, &appeal, &mut rng)
                        .iter()
                        .filter(|c| **c)
                        .count()
                })
                .sum();
            let expected = model.expected(&list, &appeal);
            assert!(
                (drawn as f64 / users as f64 - expected).abs() < 0.01,
                "{model:?}: {drawn} vs {expected}"
            );
        }
        // PBM: 0.5 + 0.2/2 + 0.1/3.
        assert!((ClickModel::Pbm { eta: 1.0 }.expected(&list, &appeal) - 0.6333).abs() < 1e-3);
    }

    #[test]
    fn the_oracle_lists_the_most_appealing_first() {
        let world = World {
            appeal: vec![0.1, 0.4, 0.3],
            scores: vec![1.0, 2.0, 3.0],
            spearman: 0.5,
        };
        assert_eq!(world.oracle(2), [1, 2]);
    }
}
