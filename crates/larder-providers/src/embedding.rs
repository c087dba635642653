//! Deterministic text embeddings, shared by the simulated provider and the mock server's
//! `POST /v1/embeddings`, so cosine similarity means something offline.
//!
//! [`hashed_embedding`] is the "hashing trick" over character n-grams:
//!
//! 1. Normalize: lowercase (Unicode), every run of whitespace becomes one space, trimmed.
//! 2. Pad with one space on each side, so word starts and ends are grams of their own.
//! 3. Features: every character trigram of the padded text; when the normalized text has at
//!    most [`SHORT_TEXT_CHARS`] characters, also every non-space character (unigram), so
//!    one- and two-letter texts still have a few features.
//! 4. Each feature's UTF-8 bytes are hashed with FNV-1a 64 (offset basis
//!    `0xcbf29ce484222325`, prime `0x100000001b3`), then mixed with the SplitMix64
//!    finalizer (FNV's low bits depend only on the bytes' low bits). The mixed hash `h`
//!    picks bucket `h % dim` and sign `+1` if bit 63 of `h` is 0, else `-1`.
//! 5. Sum the signed features per bucket and L2-normalize. A vector that sums to all zeros
//!    (empty text, or features cancelling out) becomes `1.0` in bucket 0, so every result
//!    is a unit vector.
//!
//! The function is fixed: the same text and `dim` give the same vector in every process and
//! Rust version (no `RandomState`). Texts sharing many character trigrams (Korean syllable
//! runs, English word stems) get a high cosine; unrelated texts one near 0, up to bucket
//! collisions, which shrink as `dim` grows.

use crate::{EmbedResponse, Usage};

/// The vector length the simulated provider answers, and the mock's when a request gives no
/// `dimensions`.
pub const DEFAULT_EMBEDDING_DIM: usize = 64;

/// Texts of at most this many characters (after normalization) also get unigram features.
pub const SHORT_TEXT_CHARS: usize = 3;

/// The unit-length hashed n-gram embedding of `text`, `dim` long; see the [module
/// docs](self) for the exact recipe. `dim == 0` gives an empty vector.
pub fn hashed_embedding(text: &str, dim: usize) -> Vec<f32> {
    if dim == 0 {
        return Vec::new();
    }
    let normalized = normalize(text);
    let mut padded: Vec<char> = Vec::with_capacity(normalized.chars().count() + 2);
    padded.push(' ');
    padded.extend(normalized.chars());
    padded.push(' ');

    let mut sums = vec![0f64; dim];
    let mut add = |gram: &[char]| {
        let mut utf8 = [0u8; 4];
        let hash = gram.iter().fold(FNV_OFFSET, |h, c| {
            c.encode_utf8(&mut utf8)
                .bytes()
                .fold(h, |h, b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
        });
        let mixed = splitmix_finalize(hash);
        // usize → u64 is lossless on every platform Rust supports; the remainder is < dim.
        let bucket = (mixed % dim as u64) as usize;
        let sign = if mixed >> 63 == 0 { 1.0 } else { -1.0 };
        if let Some(slot) = sums.get_mut(bucket) {
            *slot += sign;
        }
    };
    for gram in padded.windows(3) {
        add(gram);
    }
    if padded.len() - 2 <= SHORT_TEXT_CHARS {
        for c in padded.iter().filter(|c| **c != ' ') {
            add(std::slice::from_ref(c));
        }
    }

    let norm = sums.iter().map(|v| v * v).sum::<f64>().sqrt();
    if norm == 0.0 {
        let mut unit = vec![0f32; dim];
        unit[0] = 1.0;
        return unit;
    }
    sums.iter().map(|v| (v / norm) as f32).collect()
}

/// Cosine similarity of two vectors: 0 when either is all zeros or their lengths differ.
/// For unit vectors (as [`hashed_embedding`] answers) it is their dot product.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut dot, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        return 0.0;
    }
    (dot / (aa.sqrt() * bb.sqrt())) as f32
}

/// What the simulated provider and the mock answer for `texts`: one [`hashed_embedding`]
/// each, and prompt tokens of about a token per 4 characters, at least 1 per text.
pub(crate) fn embed_all(texts: &[String], dim: usize) -> EmbedResponse {
    EmbedResponse {
        vectors: texts.iter().map(|t| hashed_embedding(t, dim)).collect(),
        usage: usage(texts),
    }
}

pub(crate) fn usage(texts: &[String]) -> Usage {
    let prompt_tokens = texts
        .iter()
        .map(|t| (t.chars().count() as u64).div_ceil(4).max(1))
        .fold(0u64, u64::saturating_add);
    Usage {
        prompt_tokens,
        completion_tokens: 0,
    }
}

/// FNV-1a 64 of the texts with a separator byte after each: one stable number for a batch.
pub(crate) fn batch_hash(texts: &[String]) -> u64 {
    texts.iter().fold(FNV_OFFSET, |h, t| {
        t.bytes()
            .chain(std::iter::once(0xff))
            .fold(h, |h, b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
    })
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

fn normalize(text: &str) -> String {
    text.to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// SplitMix64's output function (Steele, Lea & Flood 2014).
fn splitmix_finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim(a: &str, b: &str) -> f32 {
        cosine(
            &hashed_embedding(a, DEFAULT_EMBEDDING_DIM),
            &hashed_embedding(b, DEFAULT_EMBEDDING_DIM),
        )
    }

    fn norm(v: &[f32]) -> f64 {
        v.iter()
            .map(|x| f64::from(*x) * f64::from(*x))
            .sum::<f64>()
            .sqrt()
    }

    #[test]
    fn unit_length_and_deterministic() {
        for text in [
            "",
            " ",
            "a",
            "이",
            "이사 준비",
            "Enable 2FA",
            &"가나다".repeat(200),
        ] {
            for dim in [1, 2, 7, 64, 4096] {
                let v = hashed_embedding(text, dim);
                assert_eq!(v.len(), dim);
                assert!((norm(&v) - 1.0).abs() < 1e-5, "{text:?} {dim}: {v:?}");
                assert!(v.iter().all(|x| x.is_finite()));
                assert_eq!(v, hashed_embedding(text, dim));
            }
        }
        assert!(hashed_embedding("x", 0).is_empty());
        let empty = hashed_embedding("", 8);
        assert_eq!(empty[0], 1.0);
    }

    #[test]
    fn fixed_values_do_not_drift() {
        // The recipe is part of the contract (stored vectors must keep matching new ones):
        // a change to normalization, hashing or bucketing shows up here.
        let v = hashed_embedding("ab", 4);
        let mut expected = [0f64; 4];
        for gram in [" ab", "ab ", "a", "b"] {
            let h = splitmix_finalize(gram.bytes().fold(FNV_OFFSET, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
            }));
            expected[(h % 4) as usize] += if h >> 63 == 0 { 1.0 } else { -1.0 };
        }
        let n = expected.iter().map(|x| x * x).sum::<f64>().sqrt();
        let expected: Vec<f32> = expected.iter().map(|x| (x / n) as f32).collect();
        assert_eq!(v, expected);
        // FNV-1a 64 of "a" is the published test vector.
        assert_eq!(
            "a".bytes().fold(FNV_OFFSET, |h, b| (h ^ u64::from(b))
                .wrapping_mul(FNV_PRIME)),
            0xaf63_dc4c_8601_ec8c
        );
    }

    #[test]
    fn normalization_ignores_case_and_spacing() {
        assert_eq!(
            hashed_embedding("  Enable\t2FA \n", 64),
            hashed_embedding("enable 2fa", 64)
        );
        assert_eq!(
            hashed_embedding("이사   준비", 64),
            hashed_embedding("이사 준비", 64)
        );
    }

    #[test]
    fn similar_texts_score_higher_than_unrelated_ones() {
        let pairs = [
            (
                ("이사 준비 체크리스트", "이사 준비 목록"),
                ("이사 준비", "enable 2FA"),
            ),
            (
                ("이사 준비 체크리스트", "이사 준비 목록"),
                ("이사 준비 체크리스트", "강아지 산책 시키기"),
            ),
            (
                (
                    "enable two-factor authentication",
                    "enable 2FA authentication",
                ),
                ("enable two-factor authentication", "buy moving boxes"),
            ),
            (
                ("pack the kitchen", "pack kitchen boxes"),
                ("pack the kitchen", "렌터카 예약"),
            ),
        ];
        for ((a, b), (c, d)) in pairs {
            let (similar, unrelated) = (sim(a, b), sim(c, d));
            assert!(
                similar > unrelated + 0.2,
                "{a:?}~{b:?} = {similar}, {c:?}~{d:?} = {unrelated}"
            );
            assert!(similar > 0.4, "{a:?}~{b:?} = {similar}");
        }
        assert!((sim("이사 준비", "이사 준비") - 1.0).abs() < 1e-5);
    }

    #[test]
    fn cosine_edge_cases() {
        assert_eq!(cosine(&[1.0, 0.0], &[1.0]), 0.0);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        assert!((cosine(&[2.0, 0.0], &[3.0, 0.0]) - 1.0).abs() < 1e-6);
        assert!((cosine(&[1.0, 0.0], &[-1.0, 0.0]) + 1.0).abs() < 1e-6);
    }

    #[test]
    fn usage_counts_about_four_chars_a_token() {
        let texts = vec!["".to_owned(), "abcde".to_owned(), "이사 준비".to_owned()];
        assert_eq!(usage(&texts).prompt_tokens, 1 + 2 + 2);
        assert_eq!(usage(&[]).prompt_tokens, 0);
        assert_ne!(
            batch_hash(&["ab".to_owned(), "c".to_owned()]),
            batch_hash(&["a".to_owned(), "bc".to_owned()])
        );
    }
}
