//! Fake LLM content, shared by the simulated provider and the mock server: checklist items
//! for a category and judgements of items, deterministic per seed.
//!
//! The task comes from the parameter block `protocol` appends to every user message, so the
//! answers fit whatever the pipeline asked for.

mod curated;
mod phrases;

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal};
use serde_json::json;

use crate::protocol::{self, GeneratedItems, RubricName, TaskItem, TaskParams};
use crate::{ChatMessage, Usage};

/// The two languages the brain writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lang {
    Ko,
    En,
}

impl Lang {
    /// Korean for "ko…", English for everything else.
    pub(crate) fn of_locale(locale: &str) -> Lang {
        if locale.trim().to_ascii_lowercase().starts_with("ko") {
            Lang::Ko
        } else {
            Lang::En
        }
    }

    pub(crate) fn other(self) -> Lang {
        match self {
            Lang::Ko => Lang::En,
            Lang::En => Lang::Ko,
        }
    }

    fn variants(self) -> &'static [&'static str] {
        match self {
            Lang::Ko => phrases::KO_VARIANTS,
            Lang::En => phrases::EN_VARIANTS,
        }
    }
}

/// The whole answer to a chat request: JSON for a task, a fixed sentence otherwise.
pub(crate) fn answer(messages: &[ChatMessage], json_wanted: bool, seed: u64, call: u64) -> String {
    match protocol::task_params(messages) {
        Some(TaskParams::Generate {
            category,
            locale,
            count,
            max_chars,
            ..
        }) => {
            let items = generate(
                &category,
                Lang::of_locale(&locale),
                count,
                max_chars,
                seed,
                call,
            );
            items_json(items)
        }
        Some(TaskParams::Evaluate {
            locale,
            rubric,
            k,
            items,
            ..
        }) => evaluate(&locale, rubric, k, &items, seed),
        None => {
            let text = "This is Larder's simulated model; it answers the requests that \
                        larder_providers::protocol builds.";
            if json_wanted {
                json!({ "message": text }).to_string()
            } else {
                text.to_owned()
            }
        }
    }
}

pub(crate) fn items_json(items: Vec<String>) -> String {
    serde_json::to_string(&GeneratedItems { items }).unwrap_or_default()
}

/// `count` items (fewer only when the category cannot yield that many distinct ones), each at
/// most `max_chars` characters, deterministic per (seed, category, call).
pub(crate) fn generate(
    category: &str,
    lang: Lang,
    count: usize,
    max_chars: usize,
    seed: u64,
    call: u64,
) -> Vec<String> {
    let mut rng = rng_for(&[seed, fnv(&normalize(category)), call]);
    let fits = |s: &String| s.chars().count() <= max_chars;
    let mut pool: Vec<String> = match curated_list(category, lang) {
        Some(list) => list.iter().map(|s| (*s).to_owned()).collect(),
        None => composed(category, lang, max_chars),
    };
    pool.retain(|s| fits(s));
    pool.shuffle(&mut rng);

    let mut out = Vec::with_capacity(count);
    let mut used = HashSet::new();
    for item in &pool {
        if out.len() == count {
            break;
        }
        // Real models repeat themselves in slightly different words now and then.
        let pick = if rng.random::<f64>() < 0.12 {
            let word = lang.variants()[rng.random_range(0..lang.variants().len())];
            variant(item, word, lang)
                .filter(|v| fits(v))
                .unwrap_or_else(|| item.clone())
        } else {
            item.clone()
        };
        if used.insert(pick.clone()) {
            out.push(pick);
        }
    }
    // More asked for than the pool holds: near-duplicates of what is there.
    'outer: for word in lang.variants() {
        for item in &pool {
            if out.len() >= count {
                break 'outer;
            }
            if let Some(v) = variant(item, word, lang).filter(|v| fits(v)) {
                if used.insert(v.clone()) {
                    out.push(v);
                }
            }
        }
    }
    out
}

/// Judges items: a score per item text (curated items carry a hidden quality), reasons in
/// the locale, answered as `ScoreAnswer` or `PickAnswer` JSON.
pub(crate) fn evaluate(
    locale: &str,
    rubric: RubricName,
    k: Option<usize>,
    items: &[TaskItem],
    seed: u64,
) -> String {
    let lang = Lang::of_locale(locale);
    let judged: Vec<(&str, f64, &str)> = items
        .iter()
        .map(|item| {
            let (score, reason) = judge(&item.text, locale, lang, seed);
            (item.id.as_str(), score, reason)
        })
        .collect();
    match rubric {
        RubricName::Score => {
            let scores: Vec<_> = judged
                .iter()
                .map(|(id, score, reason)| json!({"id": id, "score": score, "reason": reason}))
                .collect();
            json!({ "scores": scores }).to_string()
        }
        RubricName::PickBest => {
            let mut ranked = judged;
            // Stable sort: equal scores keep request order.
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
            let best: Vec<_> = ranked
                .iter()
                .take(k.unwrap_or(1))
                .map(|(id, _, reason)| json!({"id": id, "reason": reason}))
                .collect();
            json!({ "best": best }).to_string()
        }
    }
}

/// Roughly four characters per token, as tokenizers average on mixed text.
pub(crate) fn usage(messages: &[ChatMessage], content: &str) -> Usage {
    let tokens = |chars: usize| (chars as u64).div_ceil(4);
    let prompt: usize = messages.iter().map(|m| m.content.chars().count()).sum();
    Usage {
        prompt_tokens: tokens(prompt).max(1),
        completion_tokens: tokens(content.chars().count()),
    }
}

/// Log-normal latency with mean `mean_ms` and log-space sigma `jitter` (0 = fixed). The tail
/// is capped at 20× the mean so one unlucky draw cannot stall a test for minutes.
pub(crate) fn latency(mean_ms: u64, jitter: f64, rng: &mut impl Rng) -> Duration {
    if mean_ms == 0 {
        return Duration::ZERO;
    }
    let mean = mean_ms as f64;
    if !(jitter.is_finite() && jitter > 0.0) {
        return Duration::from_millis(mean_ms);
    }
    // E[X] = exp(mu + sigma²/2), so this mu makes the mean come out at `mean_ms`.
    let mu = mean.ln() - jitter * jitter / 2.0;
    let ms = LogNormal::new(mu, jitter).map_or(mean, |d| d.sample(rng));
    Duration::from_secs_f64(ms.clamp(0.0, mean * 20.0) / 1000.0)
}

/// An injection attempt in the given language (the mock's `rate_injection` fault).
pub(crate) fn injection_text(lang: Lang) -> &'static str {
    match lang {
        Lang::Ko => phrases::INJECTION_KO,
        Lang::En => phrases::INJECTION_EN,
    }
}

/// Padding that pushes an item over `max_chars` (the mock's `rate_overlong` fault).
pub(crate) fn filler(lang: Lang) -> &'static str {
    match lang {
        Lang::Ko => phrases::FILLER_KO,
        Lang::En => phrases::FILLER_EN,
    }
}

/// A seeded generator from several numbers (splitmix64 mixing, so nearby inputs diverge).
pub(crate) fn rng_for(parts: &[u64]) -> StdRng {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for part in parts {
        state = splitmix(state ^ part);
    }
    StdRng::seed_from_u64(state)
}

/// FNV-1a: a string hash that stays the same across Rust versions and processes.
pub(crate) fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A number in [0, 1) from a hash.
fn unit(hash: u64) -> f64 {
    (splitmix(hash) >> 11) as f64 / (1u64 << 53) as f64
}

fn normalize(category: &str) -> String {
    category
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn curated_list(category: &str, lang: Lang) -> Option<&'static [&'static str]> {
    let name = normalize(category);
    let topic = curated::TOPICS
        .iter()
        .find(|t| t.names.contains(&name.as_str()))?;
    match lang {
        Lang::Ko => topic.ko,
        Lang::En => topic.en,
    }
}

/// Items for a category without a curated list, from the language's phrase bank.
fn composed(category: &str, lang: Lang, max_chars: usize) -> Vec<String> {
    let bank = match lang {
        Lang::Ko => phrases::KO,
        Lang::En => phrases::EN,
    };
    let name = category.split_whitespace().collect::<Vec<_>>().join(" ");
    bank.iter()
        .map(|(with, without)| {
            let full = with.replace("{c}", &name);
            if full.chars().count() <= max_chars || name.is_empty() {
                full
            } else {
                (*without).to_owned()
            }
        })
        .collect()
}

/// "전입신고 하기" + "미리" → "전입신고 미리 하기"; "Book the movers" + "early" → "Book the movers early".
fn variant(item: &str, word: &str, lang: Lang) -> Option<String> {
    if item.contains(word) {
        return None;
    }
    Some(match lang {
        Lang::Ko => match item.rsplit_once(' ') {
            Some((head, verb)) => format!("{head} {word} {verb}"),
            None => format!("{word} {item}"),
        },
        Lang::En => format!("{item} {word}"),
    })
}

/// Hidden quality of curated items, from 9.6 (first) down to 4.0 (last).
fn curated_quality() -> &'static HashMap<&'static str, f64> {
    static QUALITY: OnceLock<HashMap<&'static str, f64>> = OnceLock::new();
    QUALITY.get_or_init(|| {
        let mut map = HashMap::new();
        for topic in curated::TOPICS {
            for list in [topic.ko, topic.en].into_iter().flatten() {
                let last = list.len().saturating_sub(1).max(1) as f64;
                for (i, item) in list.iter().enumerate() {
                    map.insert(*item, 9.6 - 5.6 * i as f64 / last);
                }
            }
        }
        map
    })
}

fn base_quality(text: &str) -> f64 {
    let quality = curated_quality();
    if let Some(q) = quality.get(text) {
        return *q;
    }
    // A near-duplicate of a curated item is almost as good as the original.
    for word in phrases::KO_VARIANTS.iter().chain(phrases::EN_VARIANTS) {
        let stripped = text.replacen(&format!(" {word}"), "", 1);
        if stripped != text {
            if let Some(q) = quality.get(stripped.as_str()) {
                return q - 0.3;
            }
        }
    }
    3.5 + 3.5 * unit(fnv(text))
}

fn is_injection(text: &str) -> bool {
    let lower = text.to_lowercase();
    [
        "ignore previous",
        "ignore all previous",
        "ignore the above",
        "disregard previous",
        "system prompt",
        "이전 지시",
        "지시를 무시",
    ]
    .iter()
    .any(|marker| lower.contains(marker))
}

fn has_hangul(text: &str) -> bool {
    text.chars()
        .any(|c| ('\u{AC00}'..='\u{D7A3}').contains(&c) || ('\u{1100}'..='\u{11FF}').contains(&c))
}

fn judge(text: &str, locale: &str, lang: Lang, seed: u64) -> (f64, &'static str) {
    let (reasons, injection, wrong_language) = match lang {
        Lang::Ko => (
            phrases::REASONS_KO,
            phrases::INJECTION_REASON_KO,
            phrases::LANGUAGE_REASON_KO,
        ),
        Lang::En => (
            phrases::REASONS_EN,
            phrases::INJECTION_REASON_EN,
            phrases::LANGUAGE_REASON_EN,
        ),
    };
    let text = text.trim();
    if text.is_empty() {
        return (0.0, reasons[3]);
    }
    if is_injection(text) {
        return (0.5, injection);
    }
    let primary = locale.trim().to_ascii_lowercase();
    let mismatch = (primary.starts_with("ko") && !has_hangul(text))
        || (primary.starts_with("en") && has_hangul(text));
    if mismatch {
        return (1.0, wrong_language);
    }
    let mut score = base_quality(text);
    if text.chars().count() > 80 {
        score -= 2.5;
    }
    // Different evaluators (seeds) disagree a little, as real ones do.
    score += (unit(fnv(text) ^ splitmix(seed)) - 0.5) * 0.8;
    let score = (score.clamp(0.0, 10.0) * 10.0).round() / 10.0;
    let band = if score >= 8.0 {
        0
    } else if score >= 6.0 {
        1
    } else if score >= 4.0 {
        2
    } else {
        3
    };
    (score, reasons[band])
}

#[cfg(test)]
mod tests;
