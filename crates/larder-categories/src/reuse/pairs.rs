//! The labelled category pairs the reuse threshold is chosen on, and the measurement: precision
//! and recall of "borrow when cosine ≥ threshold" over them.
//!
//! The shipped set (`data/category_pairs.jsonl`, one JSON object per line) holds pairs of
//! category texts, as Larder embeds them (the description, or the name when there is none),
//! labelled `same` when one category's items would serve the other's users. `kind` says what
//! the pair tests: `paraphrase`, `cross_lingual` (same intent), `near_miss` (most words
//! shared, another intent: "enable 2FA" / "disable 2FA") or `unrelated`.

use serde::{Deserialize, Serialize};

/// The pairs shipped with Larder (62: 28 same intent, 22 near misses, 12 unrelated).
pub const SHIPPED: &str = include_str!("../../data/category_pairs.jsonl");

/// The precision a default threshold must reach on the labelled set: a false borrow (serving
/// another intent's items) is worse than a miss (the user waits for the category's own).
pub const TARGET_PRECISION: f64 = 0.95;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pair {
    pub a: String,
    pub b: String,
    /// Would one category's items serve the other's users?
    pub same: bool,
    pub kind: String,
    pub lang: String,
}

/// Parse JSON lines of [`Pair`]s (blank lines skipped); the error names the line.
pub fn parse(text: &str) -> Result<Vec<Pair>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line).map_err(|e| format!("pairs line {}: {e}", n + 1))
        })
        .collect()
}

/// What "borrow when cosine ≥ `threshold`" does on a labelled set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Outcome {
    pub threshold: f32,
    /// Same-intent pairs borrowed.
    pub true_borrows: usize,
    /// Different-intent pairs borrowed.
    pub false_borrows: usize,
    /// Same-intent pairs not borrowed.
    pub misses: usize,
    /// Borrows that were right; 1 when nothing is borrowed (no borrow is wrong).
    pub precision: f64,
    /// Same-intent pairs borrowed, of all same-intent pairs.
    pub recall: f64,
}

/// The outcome of `threshold` on pairs scored `(cosine, same)`.
pub fn outcome(scored: &[(f32, bool)], threshold: f32) -> Outcome {
    let borrowed = |same: bool| {
        scored
            .iter()
            .filter(|(score, s)| *s == same && *score >= threshold)
            .count()
    };
    let (true_borrows, false_borrows) = (borrowed(true), borrowed(false));
    let positives = scored.iter().filter(|(_, same)| *same).count();
    let ratio = |n: usize, d: usize| if d == 0 { 1.0 } else { n as f64 / d as f64 };
    Outcome {
        threshold,
        true_borrows,
        false_borrows,
        misses: positives - true_borrows,
        precision: ratio(true_borrows, true_borrows + false_borrows),
        recall: if positives == 0 {
            0.0
        } else {
            true_borrows as f64 / positives as f64
        },
    }
}

/// Every distinct threshold that changes the outcome (each pair's score), highest first.
pub fn sweep(scored: &[(f32, bool)]) -> Vec<Outcome> {
    let mut thresholds: Vec<f32> = scored.iter().map(|(score, _)| *score).collect();
    thresholds.sort_by(|a, b| b.total_cmp(a));
    thresholds.dedup();
    thresholds.iter().map(|t| outcome(scored, *t)).collect()
}

/// The threshold to default to, and what it does on the set: of the thresholds halfway
/// between two neighbouring scores (or between the top score and 1), the one with the most
/// recall among those whose precision reaches `target`; among equals, the lowest. Borrowing
/// nothing counts as precise, so when no threshold that borrows reaches `target` the choice
/// is the one just above every different-intent pair: recall then is what that leaves,
/// possibly 0, and [`Choice::reached`] says so.
pub fn choose(scored: &[(f32, bool)], target: f64) -> Choice {
    let mut scores: Vec<f32> = scored.iter().map(|(score, _)| *score).collect();
    scores.push(1.0);
    scores.sort_by(|a, b| b.total_cmp(a));
    scores.dedup();
    let outcome = scores
        .windows(2)
        .map(|w| outcome(scored, (w[0] + w[1]) / 2.0))
        .chain(scores.last().map(|lowest| outcome(scored, lowest - 0.01)))
        .filter(|o| o.precision >= target)
        .fold(None::<Outcome>, |best, o| match best {
            Some(b) if b.recall > o.recall => Some(b),
            Some(b) if b.recall == o.recall && b.threshold < o.threshold => Some(b),
            _ => Some(o),
        })
        // Unreachable: the threshold above every score borrows nothing, so it is precise.
        .unwrap_or_else(|| outcome(scored, 1.0));
    Choice {
        reached: outcome.true_borrows > 0,
        outcome,
    }
}

/// What [`choose`] picked.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Choice {
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Whether the choice borrows anything at the target precision (else it only avoids
    /// every false borrow).
    pub reached: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_set_parses_and_is_balanced() {
        let pairs = parse(SHIPPED).expect("shipped pairs parse");
        assert!(pairs.len() >= 40);
        let count = |f: &dyn Fn(&Pair) -> bool| pairs.iter().filter(|p| f(p)).count();
        assert_eq!(count(&|p| p.same), 28);
        assert_eq!(count(&|p| p.kind == "near_miss"), 22);
        assert!(count(&|p| p.lang == "ko") >= 20);
        assert!(count(&|p| p.lang == "en") >= 20);
        for pair in &pairs {
            let same_kind = matches!(pair.kind.as_str(), "paraphrase" | "cross_lingual");
            assert_eq!(pair.same, same_kind, "{pair:?}");
        }
        assert!(parse("{\"a\":1}").is_err());
    }

    #[test]
    fn outcomes_count_borrows_and_misses() {
        let scored = [(0.9, true), (0.8, false), (0.7, true), (0.2, false)];
        let o = outcome(&scored, 0.75);
        assert_eq!((o.true_borrows, o.false_borrows, o.misses), (1, 1, 1));
        assert_eq!((o.precision, o.recall), (0.5, 0.5));
        let none = outcome(&scored, 0.95);
        assert_eq!((none.precision, none.recall), (1.0, 0.0));
        assert_eq!(sweep(&scored).len(), 4);
        // Most recall at precision 1: borrow only the 0.9 pair, threshold between 0.9 and 0.8.
        let chosen = choose(&scored, 0.95);
        assert!((chosen.outcome.threshold - 0.85).abs() < 1e-6);
        assert_eq!(
            (chosen.outcome.true_borrows, chosen.outcome.false_borrows),
            (1, 0)
        );
        assert!(chosen.reached);
        // At precision 0.6, 0.45 borrows both same pairs and one false: 2/3.
        let looser = choose(&scored, 0.6);
        assert_eq!(
            (looser.outcome.true_borrows, looser.outcome.false_borrows),
            (2, 1)
        );
        assert!((looser.outcome.threshold - 0.45).abs() < 1e-6);
        // A different-intent pair on top: nothing can be borrowed precisely, so the choice
        // sits just above it and borrows nothing.
        let unreachable = choose(&[(0.9, false), (0.8, true)], 0.95);
        assert!(!unreachable.reached);
        assert!((unreachable.outcome.threshold - 0.95).abs() < 1e-6);
        assert_eq!(unreachable.outcome.recall, 0.0);
    }
}
