//! `larder bench upsert`: what the dual write costs. Times `Store::upsert` of one batch
//! (1,000 entities of 768-d by default) straight on the store, then through the backup, in one
//! run on the same store, and prints the median and p99 per batch of each and their ratio.

use super::BenchError;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Args;
use larder_store::{codec, Dtype, EntityWrite, FieldSpec, NamespaceSchema, StoreOptions};
use rand::Rng;

#[derive(Args)]
pub struct UpsertArgs {
    /// The store [default: a Redis on 127.0.0.1:6379]
    #[arg(long, value_name = "URL", default_value = "redis://127.0.0.1:6379")]
    store: larder_store::StoreUrl,
    /// The backup to compare against: postgres://… | sqlite://FILE
    #[arg(long, value_name = "URL")]
    backup: larder_store::DbUrl,
    #[arg(long, default_value_t = 1000)]
    entities: usize,
    #[arg(long, default_value_t = 768)]
    dim: usize,
    /// f32 | f16 | bf16 | i8
    #[arg(long, default_value = "f16")]
    dtype: String,
    /// Batches timed per mode (after 3 warm-up batches).
    #[arg(long, default_value_t = 30)]
    rounds: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

pub async fn run(args: UpsertArgs) -> Result<(), BenchError> {
    let dtype: Dtype = serde_json::from_value(serde_json::Value::String(args.dtype.clone()))
        .map_err(|_| {
            format!(
                "--dtype: expected f32, f16, bf16 or i8, got {:?}",
                args.dtype
            )
        })?;
    let schema = NamespaceSchema {
        fields: BTreeMap::from([(
            "v".to_owned(),
            FieldSpec {
                dim: args.dim,
                dtype,
            },
        )]),
        ttl_seconds: None,
        fallback: BTreeMap::new(),
        max_entity_bytes: None,
        max_fields: None,
        alias: None,
        deleting: false,
    };
    let mut rng = rand::rng();
    let batch: Vec<EntityWrite> = (0..args.entities)
        .map(|i| {
            let values: Vec<f32> = (0..args.dim).map(|_| rng.random_range(-1.0..1.0)).collect();
            let bytes = codec::encode(dtype, args.dim, &values)?;
            Ok(EntityWrite {
                key: format!("e:{i}"),
                fields: vec![("v".to_owned(), bytes)],
            })
        })
        .collect::<Result<_, BenchError>>()?;
    let mut medians = Vec::new();
    for backup in [None, Some(args.backup.clone())] {
        let label = match &backup {
            None => "store only".to_owned(),
            Some(url) => format!("store + {} backup", url.kind()),
        };
        let options = StoreOptions {
            backup,
            ..StoreOptions::default()
        };
        let store = larder_store::open(&args.store, &options).await?;
        store.put_schema("bench_upsert", &schema).await?;
        let mut times = Vec::with_capacity(args.rounds);
        for round in 0..args.rounds + 3 {
            let start = Instant::now();
            store.upsert("bench_upsert", None, batch.clone()).await?;
            if round >= 3 {
                times.push(start.elapsed());
            }
        }
        times.sort();
        let p50 = percentile(&times, 0.5);
        println!(
            "{label}: {} x {}-d {:?} per batch: p50 {:.1} ms, p99 {:.1} ms ({:.0} entities/s at p50)",
            args.entities,
            args.dim,
            dtype,
            p50.as_secs_f64() * 1e3,
            percentile(&times, 0.99).as_secs_f64() * 1e3,
            args.entities as f64 / p50.as_secs_f64().max(1e-9)
        );
        medians.push(p50);
    }
    if let [alone, backed] = medians[..] {
        println!(
            "dual write: {:.2}x the store-only time, +{:.1} ms per batch",
            backed.as_secs_f64() / alone.as_secs_f64().max(1e-9),
            (backed.as_secs_f64() - alone.as_secs_f64()) * 1e3
        );
    }
    Ok(())
}
