//! Content faults: what a misbehaving model answers (garbage, empty, overlong, injected,
//! wrong-language or duplicated items). HTTP-level faults (429, 5xx) live in `routes`.

use rand::rngs::StdRng;
use rand::Rng;
use serde_json::json;

use super::MockConfig;
use crate::brain::{self, Lang};
use crate::protocol::{self, RubricName, TaskParams};
use crate::ChatMessage;

/// `p` as a probability; never panics on values outside 0..=1 or NaN (those never fire or
/// always fire, as the number says).
pub(crate) fn chance(rng: &mut StdRng, p: f64) -> bool {
    rng.random::<f64>() < p
}

/// The assistant content for request number `n`, with at most one content fault, reported
/// through `record`.
pub(crate) fn content(
    messages: &[ChatMessage],
    json_wanted: bool,
    config: &MockConfig,
    rng: &mut StdRng,
    n: u64,
    mut record: impl FnMut(&'static str),
) -> String {
    let task = protocol::task_params(messages);
    if chance(rng, config.rate_garbage) {
        record("garbage");
        return garbage(rng);
    }
    if chance(rng, config.rate_empty) {
        record("empty");
        if rng.random::<bool>() {
            return String::new();
        }
        return match &task {
            Some(TaskParams::Evaluate {
                rubric: RubricName::Score,
                ..
            }) => json!({"scores": []}),
            Some(TaskParams::Evaluate {
                rubric: RubricName::PickBest,
                ..
            }) => json!({"best": []}),
            _ => json!({"items": []}),
        }
        .to_string();
    }
    let Some(TaskParams::Generate {
        category,
        locale,
        count,
        max_chars,
        ..
    }) = task
    else {
        return brain::answer(messages, json_wanted, config.seed, n);
    };
    let lang = Lang::of_locale(&locale);
    let generate = |lang| brain::generate(&category, lang, count, max_chars, config.seed, n);
    if chance(rng, config.rate_wrong_language) {
        record("wrong_language");
        return brain::items_json(generate(lang.other()));
    }
    let mut items = generate(lang);
    if chance(rng, config.rate_overlong) {
        record("overlong");
        for item in items.iter_mut().step_by(2) {
            while item.chars().count() <= max_chars {
                item.push(' ');
                item.push_str(brain::filler(lang));
            }
        }
    } else if chance(rng, config.rate_injection) {
        record("injection");
        for item in items.iter_mut().step_by(3) {
            *item = brain::injection_text(lang).to_owned();
        }
    } else if chance(rng, config.rate_duplicates) {
        record("duplicates");
        if let Some(first) = items.first().cloned() {
            for item in items.iter_mut().skip(1).step_by(2) {
                item.clone_from(&first);
            }
        }
    }
    brain::items_json(items)
}

/// Things models answer instead of the JSON they were asked for.
fn garbage(rng: &mut StdRng) -> String {
    const GARBAGE: [&str; 4] = [
        "Sure! Here are some ideas you might find useful:\n- Make a plan\n- Ask a friend for help",
        "{\"items\": [\"Make a plan\", \"Ask a friend",
        "I'm sorry, but I can't help with that request.",
        "```\nitems: Make a plan; Ask a friend\n```",
    ];
    GARBAGE[rng.random_range(0..GARBAGE.len())].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{generation_request, GeneratedItems, GenerationSpec};

    fn messages(locale: &str) -> Vec<ChatMessage> {
        let spec = GenerationSpec {
            category: "이사 준비".into(),
            description: None,
            locale: locale.into(),
            count: 9,
            max_chars: 30,
        };
        generation_request(&spec, None).messages
    }

    fn run(config: MockConfig) -> (String, Vec<&'static str>) {
        let mut seen = Vec::new();
        let mut rng = brain::rng_for(&[config.seed]);
        let out = content(&messages("ko"), true, &config, &mut rng, 0, |k| {
            seen.push(k)
        });
        (out, seen)
    }

    fn items(text: &str) -> Vec<String> {
        serde_json::from_str::<GeneratedItems>(text)
            .expect("items json")
            .items
    }

    #[test]
    fn each_fault_changes_the_content_as_named() {
        let (clean, seen) = run(MockConfig::default());
        assert!(seen.is_empty());
        assert_eq!(items(&clean).len(), 9);

        let (out, seen) = run(MockConfig {
            rate_garbage: 1.0,
            ..MockConfig::default()
        });
        assert_eq!(seen, ["garbage"]);
        assert!(serde_json::from_str::<GeneratedItems>(&out).is_err());

        let (out, seen) = run(MockConfig {
            rate_empty: 1.0,
            ..MockConfig::default()
        });
        assert_eq!(seen, ["empty"]);
        assert!(out.is_empty() || items(&out).is_empty());

        let (out, _) = run(MockConfig {
            rate_overlong: 1.0,
            ..MockConfig::default()
        });
        assert!(items(&out).iter().any(|i| i.chars().count() > 30));

        let (out, _) = run(MockConfig {
            rate_injection: 1.0,
            ..MockConfig::default()
        });
        assert!(items(&out).iter().any(|i| i.contains("이전 지시를 무시")));

        let (out, _) = run(MockConfig {
            rate_wrong_language: 1.0,
            ..MockConfig::default()
        });
        assert!(items(&out).iter().all(|i| i.is_ascii()), "{out}");

        let (out, _) = run(MockConfig {
            rate_duplicates: 1.0,
            ..MockConfig::default()
        });
        let list = items(&out);
        assert_eq!(list.iter().filter(|i| **i == list[0]).count(), 5);
    }

    #[test]
    fn chance_tolerates_odd_probabilities() {
        let mut rng = brain::rng_for(&[1]);
        assert!(!chance(&mut rng, f64::NAN));
        assert!(!chance(&mut rng, -1.0));
        assert!(chance(&mut rng, 2.0));
    }
}
