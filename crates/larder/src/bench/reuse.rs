//! `larder bench reuse`: how well "borrow when cosine ≥ threshold" tells same-intent category
//! pairs from different ones, for one embedding provider, on the labelled pairs Larder ships
//! (or a file of yours). Prints every pair's cosine, the precision and recall of each
//! threshold, and the threshold to set as `categories.reuse_threshold` for that model.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use larder_categories::reuse::pairs::{self, Outcome, Pair};
use larder_providers::embedding::cosine;
use larder_providers::Provider;

use super::BenchError;

#[derive(Args)]
pub struct ReuseArgs {
    /// The config file whose `[[pipeline.providers]]` names the provider.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The provider that embeds (a `[[pipeline.providers]]` name). Default: the config's
    /// `categories.reuse_provider`, else the offline model (the simulated provider's hashed
    /// n-gram vectors).
    #[arg(long)]
    provider: Option<String>,
    /// Labelled pairs as JSON lines `{"a", "b", "same", "kind", "lang"}`. Default: the set
    /// shipped with Larder (62 pairs, Korean and English, with near misses).
    #[arg(long)]
    pairs: Option<PathBuf>,
    /// The precision the chosen threshold must reach.
    #[arg(long, default_value_t = pairs::TARGET_PRECISION)]
    target: f64,
    /// Also write every pair's score and the sweep as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(serde::Serialize)]
struct Report {
    provider: String,
    model: String,
    target_precision: f64,
    chosen: pairs::Choice,
    configured: Outcome,
    scored: Vec<ScoredPair>,
    sweep: Vec<Outcome>,
}

#[derive(serde::Serialize)]
struct ScoredPair {
    #[serde(flatten)]
    pair: Pair,
    cosine: f32,
}

pub async fn run(args: ReuseArgs) -> Result<(), BenchError> {
    let config = crate::load_config(args.config.as_deref(), Default::default())
        .map_err(|_| BenchError::Failed("the configuration did not load".into()))?;
    let provider = provider(&config, args.provider.as_deref())?;
    let text = match &args.pairs {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| BenchError::Failed(format!("--pairs {}: {e}", path.display())))?,
        None => pairs::SHIPPED.to_owned(),
    };
    let labelled = pairs::parse(&text)?;
    if !labelled.iter().any(|p| p.same) {
        return Err("the pairs need at least one same-intent pair (\"same\": true)".into());
    }

    let mut texts: Vec<String> = labelled
        .iter()
        .flat_map(|p| [p.a.clone(), p.b.clone()])
        .collect();
    texts.sort();
    texts.dedup();
    let mut vectors = std::collections::HashMap::with_capacity(texts.len());
    for chunk in texts.chunks(64) {
        let answer = provider
            .embed(chunk)
            .await
            .map_err(|e| BenchError::Failed(format!("{}: {e}", provider.name())))?;
        if answer.vectors.len() != chunk.len() {
            return Err(format!(
                "{}: {} vectors for {} texts",
                provider.name(),
                answer.vectors.len(),
                chunk.len()
            )
            .into());
        }
        vectors.extend(chunk.iter().cloned().zip(answer.vectors));
    }
    let score = |p: &Pair| match (vectors.get(&p.a), vectors.get(&p.b)) {
        (Some(a), Some(b)) => cosine(a, b),
        _ => 0.0,
    };
    let mut scored: Vec<ScoredPair> = labelled
        .into_iter()
        .map(|pair| ScoredPair {
            cosine: score(&pair),
            pair,
        })
        .collect();
    scored.sort_by(|a, b| b.cosine.total_cmp(&a.cosine));
    let flat: Vec<(f32, bool)> = scored.iter().map(|s| (s.cosine, s.pair.same)).collect();
    let chosen = pairs::choose(&flat, args.target);
    let configured = pairs::outcome(&flat, config.categories.reuse_threshold);

    println!(
        "{} pairs ({} same intent), provider {} (model {})\n",
        scored.len(),
        flat.iter().filter(|s| s.1).count(),
        provider.name(),
        provider.model()
    );
    println!("cosine  label  kind           lang   pair");
    for s in &scored {
        println!(
            "{:>6.3}  {:<5}  {:<13}  {:<5}  {} | {}",
            s.cosine,
            if s.pair.same { "same" } else { "diff" },
            s.pair.kind,
            s.pair.lang,
            s.pair.a,
            s.pair.b
        );
    }
    let sweep = pairs::sweep(&flat);
    println!("\nthreshold  borrows  false  precision  recall");
    for o in &sweep {
        println!(
            "{:>9.3}  {:>7}  {:>5}  {:>9.3}  {:>6.3}",
            o.threshold,
            o.true_borrows + o.false_borrows,
            o.false_borrows,
            o.precision,
            o.recall
        );
    }
    let line = |o: &Outcome| {
        format!(
            "threshold {:.3}: precision {:.3}, recall {:.3} ({} of {} same-intent pairs borrowed, {} false borrows)",
            o.threshold,
            o.precision,
            o.recall,
            o.true_borrows,
            o.true_borrows + o.misses,
            o.false_borrows
        )
    };
    println!(
        "\nconfigured (categories.reuse_threshold) {}",
        line(&configured)
    );
    if chosen.reached {
        println!(
            "chosen for precision >= {}: {}",
            args.target,
            line(&chosen.outcome)
        );
    } else {
        println!(
            "no threshold borrows a same-intent pair at precision >= {}: a different-intent pair scores highest. Above every different-intent pair: {}",
            args.target,
            line(&chosen.outcome)
        );
    }

    if let Some(path) = &args.json {
        let report = Report {
            provider: provider.name().to_owned(),
            model: provider.model().to_owned(),
            target_precision: args.target,
            chosen,
            configured,
            scored,
            sweep,
        };
        let json = serde_json::to_vec_pretty(&report)
            .map_err(|e| BenchError::Failed(format!("JSON: {e}")))?;
        std::fs::write(path, json)?;
    }
    Ok(())
}

/// The named provider, else the configured reuse provider, else the offline model.
fn provider(
    config: &larder_app::Config,
    name: Option<&str>,
) -> Result<Arc<dyn Provider>, BenchError> {
    let configured = &config.categories.reuse_provider;
    let name = name.or((!configured.is_empty()).then_some(configured.as_str()));
    let providers = match name {
        Some(_) => config.pipeline.providers.clone(),
        // The default pipeline's simulated providers answer the offline vectors; at once.
        None => {
            larder_pipeline::PipelineConfig::default()
                .without_latency()
                .providers
        }
    };
    let chosen = match name {
        Some(name) => providers.iter().find(|p| p.name == name).ok_or_else(|| {
            BenchError::Failed(format!(
                "--provider: no [[pipeline.providers]] is named {name:?}"
            ))
        })?,
        None => providers
            .first()
            .ok_or("the default pipeline has no providers")?,
    };
    larder_providers::build(chosen).map_err(|e| BenchError::Failed(format!("{}: {e}", chosen.name)))
}
