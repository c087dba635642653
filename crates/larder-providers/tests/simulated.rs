//! The simulated provider through `build()`: deterministic per seed, latency sampled, answers
//! the protocol requests with parseable JSON.

mod support;

use std::time::{Duration, Instant};

use larder_providers::protocol::{GeneratedItems, PickAnswer, ScoreAnswer};
use larder_providers::{build, Latency, Limits, ProviderConfig, ProviderKind};
use support::*;

fn simulated(
    seed: u64,
    latency: Latency,
    limits: Limits,
) -> std::sync::Arc<dyn larder_providers::Provider> {
    build(&ProviderConfig {
        name: "sim".into(),
        kind: ProviderKind::Simulated {
            seed,
            model: None,
            latency,
        },
        limits,
    })
    .expect("simulated provider")
}

fn instant() -> Latency {
    Latency {
        mean_ms: 0,
        jitter: 0.0,
    }
}

#[tokio::test]
async fn deterministic_per_seed() {
    let run = |seed| async move {
        let provider = simulated(seed, instant(), Limits::default());
        let mut out = Vec::new();
        for _ in 0..3 {
            out.push(
                provider
                    .chat(&korean_generation(10))
                    .await
                    .expect("chat")
                    .content,
            );
        }
        out
    };
    let a = run(42).await;
    assert_eq!(a, run(42).await, "same seed, same answers");
    assert_ne!(a, run(43).await, "another seed, other answers");
    assert_ne!(a[0], a[1], "successive calls differ");
}

#[tokio::test]
async fn answers_parse_and_korean_items_are_short_hangul() {
    let provider = simulated(1, instant(), Limits::default());
    assert_eq!(
        (provider.kind(), provider.model(), provider.name()),
        ("simulated", "larder-sim-1", "sim")
    );
    let response = provider
        .chat(&korean_generation(25))
        .await
        .expect("generate");
    let items: GeneratedItems = serde_json::from_str(&response.content).expect("items");
    assert_eq!(items.items.len(), 25);
    for item in &items.items {
        assert!(item.chars().count() <= 30, "{item}");
        assert!(
            item.chars().any(|c| ('\u{AC00}'..='\u{D7A3}').contains(&c)),
            "{item}"
        );
        assert!(!item.chars().any(|c| c.is_ascii_alphabetic()), "{item}");
    }
    assert!(response.usage.prompt_tokens > 50);

    let scores: ScoreAnswer = serde_json::from_str(
        &provider
            .chat(&score_request("ko", &items.items))
            .await
            .expect("score")
            .content,
    )
    .expect("scores");
    assert_eq!(scores.scores.len(), 25);
    let picked: PickAnswer = serde_json::from_str(
        &provider
            .chat(&pick_request("ko", &items.items, 5))
            .await
            .expect("pick")
            .content,
    )
    .expect("picks");
    assert_eq!(picked.best.len(), 5);

    for category in [
        "moving house",
        "travel packing",
        "new puppy",
        "knitting club",
    ] {
        let answer = provider
            .chat(&english_generation(category, 10))
            .await
            .expect("generate");
        let items: GeneratedItems = serde_json::from_str(&answer.content).expect("items");
        assert_eq!(items.items.len(), 10, "{category}");
        assert!(
            items.items.iter().all(|i| i.is_ascii() && i.len() <= 60),
            "{category}: {:?}",
            items.items
        );
    }
}

#[tokio::test]
async fn latency_is_sampled_and_concurrent() {
    let provider = simulated(
        3,
        Latency {
            mean_ms: 100,
            jitter: 0.25,
        },
        Limits::default(),
    );
    let started = Instant::now();
    let mut times = Vec::new();
    for _ in 0..8 {
        let t = Instant::now();
        provider.chat(&korean_generation(3)).await.expect("chat");
        times.push(t.elapsed());
    }
    let total = started.elapsed();
    assert!(
        total >= Duration::from_millis(400),
        "8 × ~100 ms took {total:?}"
    );
    let min = times.iter().min().copied().unwrap_or_default();
    let max = times.iter().max().copied().unwrap_or_default();
    assert!(
        max - min >= Duration::from_millis(5),
        "jitter varies latency: {times:?}"
    );

    // The limits layer applies to the simulated provider too: concurrency 1 serialises.
    let serial = simulated(
        3,
        Latency {
            mean_ms: 50,
            jitter: 0.0,
        },
        Limits {
            concurrency: 1,
            ..Limits::default()
        },
    );
    let started = Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let p = serial.clone();
            tokio::spawn(async move { p.chat(&korean_generation(2)).await })
        })
        .collect();
    for call in calls {
        call.await.expect("task").expect("chat");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
}
