//! The serving view of a category and all of the ranking math behind it: the rank stage builds
//! views with it, and the [`crate::Categories`] service scores item details with it, so both
//! always agree.
//!
//! Each item's click-through belief is a Beta posterior:
//! - the **prior** comes from the evaluators: with mean score `m` on 0..=10 and pseudo-count
//!   `k`, `alpha0 = 1 + k·m/10` and `beta0 = 1 + k·(1 − m/10)`, so a strong evaluation is worth
//!   `k` observed impressions;
//! - **feedback** updates it: `alpha = alpha0 + selections` and
//!   `beta = beta0 + max(0, weighted_impressions − selections)`, where an impression at
//!   position `p` counts `1/log2(p + 2)` (users look at the top more often, so not picking an
//!   item shown at the bottom is weaker evidence against it; the DCG discount).
//!
//! The view holds the active items ordered by posterior mean. `explore=false` serves that
//! order; `explore=true` draws once from every item's posterior and serves the best draws
//! (Thompson sampling), so new items with wide posteriors get shown.

use rand::Rng;
use rand_distr::{Beta, Distribution};
use serde::{Deserialize, Serialize};

/// Weight of an impression at zero-based `position` (the DCG discount).
pub fn position_weight(position: u32) -> f64 {
    1.0 / (f64::from(position) + 2.0).log2()
}

/// Prior pseudo-counts from the mean evaluator score (0..=10); `None` (not evaluated) is
/// treated as a neutral 5.
pub fn prior(eval_mean: Option<f64>, strength: f64) -> (f64, f64) {
    let m = (eval_mean.unwrap_or(5.0) / 10.0).clamp(0.0, 1.0);
    (1.0 + strength * m, 1.0 + strength * (1.0 - m))
}

/// The posterior after feedback.
pub fn posterior(prior: (f64, f64), selections: u64, weighted_impressions: f64) -> (f64, f64) {
    let selections = selections as f64;
    (
        prior.0 + selections,
        prior.1 + (weighted_impressions - selections).max(0.0),
    )
}

/// The ranking model's settings: how much the evaluators' prior is worth. One value, handed
/// to the rank stage and to the service by the assembly point, so they never disagree.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranking {
    /// How many impressions a full-marks evaluation is worth (the prior's pseudo-count).
    pub prior_strength: f64,
}

impl Default for Ranking {
    fn default() -> Self {
        Ranking {
            prior_strength: 10.0,
        }
    }
}

impl Ranking {
    /// An item's posterior from its mean evaluator score and its feedback.
    pub fn posterior(
        &self,
        eval_mean: Option<f64>,
        selections: u64,
        weighted_impressions: f64,
    ) -> (f64, f64) {
        posterior(
            prior(eval_mean, self.prior_strength),
            selections,
            weighted_impressions,
        )
    }
}

/// A posterior mean as the API shows it: 4 decimals.
pub fn served_score(mean: f64) -> f64 {
    (mean * 10_000.0).round() / 10_000.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewItem {
    pub id: String,
    pub text: String,
    pub alpha: f64,
    pub beta: f64,
}

impl ViewItem {
    pub fn mean(&self) -> f64 {
        self.alpha / (self.alpha + self.beta)
    }

    fn draw(&self, rng: &mut impl Rng) -> f64 {
        match Beta::new(self.alpha, self.beta) {
            Ok(dist) => dist.sample(rng),
            // Only reachable with non-positive parameters, which `posterior` never builds.
            Err(_) => self.mean(),
        }
    }
}

/// A category's ranked active items, as stored under `larder:c:{category}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct View {
    pub category: String,
    pub built_at_ms: i64,
    /// Ordered by posterior mean, best first.
    pub items: Vec<ViewItem>,
}

impl View {
    /// Build from items in any order: sorts by posterior mean (ties by id, so the order is
    /// deterministic) and keeps the best `max_items`.
    pub fn new(
        category: String,
        built_at_ms: i64,
        mut items: Vec<ViewItem>,
        max_items: usize,
    ) -> View {
        items.sort_by(|a, b| b.mean().total_cmp(&a.mean()).then_with(|| a.id.cmp(&b.id)));
        items.truncate(max_items);
        View {
            category,
            built_at_ms,
            items,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("views serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<View, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The best `limit` items by posterior mean.
    pub fn top(&self, limit: usize) -> impl Iterator<Item = &ViewItem> {
        self.items.iter().take(limit)
    }

    /// `limit` items ordered by one Thompson draw from each item's posterior.
    pub fn sample(&self, limit: usize, rng: &mut impl Rng) -> Vec<&ViewItem> {
        self.sample_indices(limit, rng)
            .into_iter()
            .map(|i| &self.items[i])
            .collect()
    }

    /// [`Self::sample`] as positions in `items`.
    pub fn sample_indices(&self, limit: usize, rng: &mut impl Rng) -> Vec<usize> {
        let mut drawn: Vec<(f64, usize)> = self
            .items
            .iter()
            .enumerate()
            .map(|(index, item)| (item.draw(rng), index))
            .collect();
        let limit = limit.min(drawn.len());
        if limit < drawn.len() {
            drawn.select_nth_unstable_by(limit, |a, b| b.0.total_cmp(&a.0));
            drawn.truncate(limit);
        }
        drawn.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        drawn.into_iter().map(|(_, index)| index).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn item(id: &str, alpha: f64, beta: f64) -> ViewItem {
        ViewItem {
            id: id.into(),
            text: id.into(),
            alpha,
            beta,
        }
    }

    #[test]
    fn prior_follows_the_evaluators_and_feedback_moves_it() {
        let good = prior(Some(9.0), 10.0);
        let bad = prior(Some(2.0), 10.0);
        assert!(good.0 / (good.0 + good.1) > bad.0 / (bad.0 + bad.1));
        assert_eq!(prior(None, 10.0), (6.0, 6.0));
        // 20 selections out of 20 top-position impressions beat a strong prior.
        let chosen = posterior(bad, 20, 20.0 * position_weight(0));
        let ignored = posterior(good, 0, 20.0);
        assert!(chosen.0 / (chosen.0 + chosen.1) > ignored.0 / (ignored.0 + ignored.1));
        // More selections than weighted impressions never make beta shrink below the prior.
        assert_eq!(posterior((1.0, 2.0), 5, 1.0), (6.0, 2.0));
    }

    #[test]
    fn position_weights_discount_lower_positions() {
        assert!((position_weight(0) - 1.0).abs() < 1e-12);
        assert!(position_weight(1) < position_weight(0));
        assert!(position_weight(9) > 0.0 && position_weight(9) < position_weight(1));
    }

    #[test]
    fn view_orders_by_mean_and_thompson_explores() {
        let view = View::new(
            "c".into(),
            0,
            vec![
                item("low", 1.0, 9.0),
                item("new", 1.0, 1.0),
                item("high", 9.0, 1.0),
            ],
            10,
        );
        let ids: Vec<&str> = view.top(10).map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["high", "new", "low"]);
        assert_eq!(View::decode(&view.encode()).expect("decodes"), view);

        // The wide posterior of "new" wins some Thompson draws over "high"; "low" rarely does.
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut firsts = std::collections::HashMap::new();
        for _ in 0..2000 {
            let top = view.sample(1, &mut rng);
            *firsts.entry(top[0].id.clone()).or_insert(0) += 1;
        }
        assert!(firsts.get("new").copied().unwrap_or(0) > 100, "{firsts:?}");
        assert!(
            firsts.get("high").copied().unwrap_or(0) > 1000,
            "{firsts:?}"
        );
        assert_eq!(view.sample(5, &mut rng).len(), 3);
    }

    #[test]
    fn view_keeps_the_best_max_items() {
        let items = (0..10)
            .map(|i| item(&format!("i{i}"), 1.0 + i as f64, 5.0))
            .collect();
        let view = View::new("c".into(), 0, items, 3);
        let ids: Vec<&str> = view.top(10).map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["i9", "i8", "i7"]);
    }
}
