//! What `GET /v1/namespaces/{ns}/stats` and `larder inspect` report about a namespace's place
//! in the store: how many entities, how big, and how they spread over the cluster's primaries,
//! found by sampling (SCAN, then `MEMORY USAGE` of a sample) without blocking Redis.

use serde::Serialize;

/// Entities sampled for their size, at most.
pub const SAMPLE: usize = 1000;
/// Largest entities listed.
pub const LARGEST: usize = 10;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NamespaceStats {
    pub entity_count: u64,
    /// Entities whose size was measured.
    pub sampled: usize,
    pub bytes_per_entity: Sizes,
    /// Entities per primary, in the order of the cluster's slot table (one entry on standalone
    /// Redis and on the embedded store).
    pub primaries: Vec<NodeShare>,
    /// The most entities on one primary over the mean per primary (1.0: perfectly even).
    pub max_over_mean: f64,
    /// The largest sampled entities, largest first.
    pub largest: Vec<KeyBytes>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Sizes {
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeShare {
    pub node: String,
    pub entities: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyBytes {
    pub key: String,
    pub bytes: u64,
}

/// Every `step`-th item of `len`, so that at most [`SAMPLE`] are measured, spread over the
/// whole key space.
pub(crate) fn sample_indices(len: usize) -> impl Iterator<Item = usize> {
    let step = len.div_ceil(SAMPLE).max(1);
    (0..len).step_by(step)
}

/// Put the measurements together: `sizes` are `(entity key, bytes)` of the sample.
pub(crate) fn summarize(
    primaries: Vec<NodeShare>,
    mut sizes: Vec<(String, u64)>,
) -> NamespaceStats {
    let entity_count: u64 = primaries.iter().map(|p| p.entities).sum();
    let max = primaries.iter().map(|p| p.entities).max().unwrap_or(0);
    let mean = entity_count as f64 / primaries.len().max(1) as f64;
    sizes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let at = |q: f64| -> u64 {
        if sizes.is_empty() {
            return 0;
        }
        // Sorted largest first: the q-quantile is counted from the end.
        let rank = ((sizes.len() - 1) as f64 * (1.0 - q)).round() as usize;
        sizes[rank].1
    };
    NamespaceStats {
        entity_count,
        sampled: sizes.len(),
        bytes_per_entity: Sizes {
            p50: at(0.5),
            p99: at(0.99),
            max: sizes.first().map_or(0, |s| s.1),
        },
        max_over_mean: if mean > 0.0 { max as f64 / mean } else { 0.0 },
        largest: sizes
            .iter()
            .take(LARGEST)
            .map(|(key, bytes)| KeyBytes {
                key: key.clone(),
                bytes: *bytes,
            })
            .collect(),
        primaries,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_spread_and_largest() {
        let primaries = vec![
            NodeShare {
                node: "a".into(),
                entities: 30,
            },
            NodeShare {
                node: "b".into(),
                entities: 10,
            },
        ];
        let sizes = (1..=100).map(|i| (format!("k{i}"), i as u64)).collect();
        let stats = summarize(primaries, sizes);
        assert_eq!(stats.entity_count, 40);
        assert_eq!(stats.max_over_mean, 1.5);
        assert_eq!(
            stats.bytes_per_entity,
            Sizes {
                p50: 50,
                p99: 99,
                max: 100
            }
        );
        assert_eq!(stats.largest.len(), LARGEST);
        assert_eq!(stats.largest[0].key, "k100");
        assert_eq!(sample_indices(10).count(), 10);
        assert_eq!(sample_indices(10_000).count(), 1000);
        assert_eq!(sample_indices(2_500).count(), 834);
    }
}
