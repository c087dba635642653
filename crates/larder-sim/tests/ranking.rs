//! The headline comparisons of `docs/RANKING.md`, pinned with the simulator's fixed seed: the
//! inequalities the ranking must keep, not exact numbers. Each runs only the policies and ρ it
//! needs; seeds depend on ρ, pool and policy alone, so these are the full table's numbers.

use std::sync::Arc;

use larder_categories::Ranking;
use larder_sim::{Config, Policy, Report};

fn larder() -> Policy {
    Policy::Larder {
        explore: true,
        ranking: Ranking::default(),
    }
}

async fn simulate(rho: f64, horizon: u64, policies: Vec<Policy>) -> Report {
    let config = Config {
        rhos: vec![rho],
        horizon,
        policies,
        ..Config::default()
    };
    let report = larder_sim::run(&config, Arc::new(|_| {}))
        .await
        .expect("simulates");
    println!("{}", report.table());
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_rho_0_6_larder_halves_the_reference_regret_and_beats_evaluator_only() {
    let report = simulate(
        0.6,
        10_000,
        vec![larder(), Policy::Reference, Policy::EvaluatorOnly],
    )
    .await;
    let regret = |key| report.regret(0.6, key, 10_000).expect("a 10k point");
    let (ours, reference, evaluator) = (
        regret("larder_explore"),
        regret("reference"),
        regret("evaluator_only"),
    );
    assert!(ours <= 0.5 * reference, "{ours} vs reference {reference}");
    assert!(
        ours <= 0.7 * evaluator,
        "{ours} vs evaluator only {evaluator}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_useless_evaluator_larder_still_converges() {
    // The table's first four pools (seeds depend on ρ, pool and policy only): the full eight
    // take twice as long, and the first four converge as clearly.
    let config = Config {
        rhos: vec![0.0],
        horizon: 100_000,
        pools: 4,
        policies: vec![larder()],
        ..Config::default()
    };
    let report = larder_sim::run(&config, Arc::new(|_| {}))
        .await
        .expect("simulates");
    println!("{}", report.table());
    let per_impression =
        |n: u64| report.regret(0.0, "larder_explore", n).expect("a point") / n as f64;
    let (early, late) = (per_impression(1_000), per_impression(100_000));
    assert!(late < early / 4.0, "{late} at 100k vs {early} at 1k");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_good_evaluator_larder_is_no_worse_than_it_at_first() {
    let report = simulate(0.9, 100, vec![larder(), Policy::EvaluatorOnly]).await;
    let regret = |key| report.regret(0.9, key, 100).expect("a 100 point");
    let (ours, evaluator) = (regret("larder_explore"), regret("evaluator_only"));
    assert!(ours <= evaluator, "{ours} vs evaluator only {evaluator}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_repeat_and_the_oracle_has_no_regret() {
    let policies = vec![larder(), Policy::Random, Policy::Oracle];
    let a = simulate(0.3, 1_000, policies.clone()).await;
    let b = simulate(0.3, 1_000, policies).await;
    assert_eq!(
        serde_json::to_string(&a.runs).expect("json"),
        serde_json::to_string(&b.runs).expect("json"),
        "same seed, same curves"
    );
    assert_eq!(a.regret(0.3, "oracle", 1_000), Some(0.0));
    let random = a.regret(0.3, "random", 1_000).expect("a point");
    let ours = a.regret(0.3, "larder_explore", 1_000).expect("a point");
    assert!(ours < random, "{ours} vs random {random}");
}
