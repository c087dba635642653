//! `larder bench ranking`: simulated users against Larder's real feedback and rank path, and
//! the regret of its ranking against the reference formula, evaluator-only, random and an
//! oracle (the simulator is `larder-sim`). Prints a table, writes the SVG plot and, with
//! `--json`, every curve.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use larder_sim::{ClickModel, Config, Policy, Ranking};

use super::BenchError;

#[derive(Clone, Copy, ValueEnum)]
enum Clicks {
    /// Position-based: position j is looked at with probability 1/(j+1)^eta.
    Pbm,
    /// Cascade: users read from the top and stop at the first item they select.
    Cascade,
}

#[derive(Args)]
pub struct RankingArgs {
    /// Items in the category's pool.
    #[arg(long, default_value_t = 50)]
    items: usize,
    /// Items shown to each user.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Evaluator quality: Spearman rho between scores and true appeal (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [0.0, 0.3, 0.6, 0.9])]
    rho: Vec<f64>,
    /// Users (lists shown) per run.
    #[arg(long, default_value_t = 100_000)]
    horizon: u64,
    /// Users between re-ranks.
    #[arg(long, default_value_t = 10)]
    batch: usize,
    /// Independent pools per rho (the table averages them).
    #[arg(long, default_value_t = Config::default().pools)]
    pools: usize,
    #[arg(long, value_enum, default_value = "pbm")]
    clicks: Clicks,
    /// The position-based model's decay exponent.
    #[arg(long, default_value_t = 1.0)]
    eta: f64,
    #[arg(long, default_value_t = Config::default().seed)]
    seed: u64,
    /// Where to write the plot (SVG).
    #[arg(long, default_value = "ranking.svg")]
    plot: PathBuf,
    /// Also write every curve as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Larder's prior strength before feedback (`pipeline.rank.prior_strength`).
    #[arg(long, default_value_t = Ranking::default().prior_strength)]
    prior_strength: f64,
    /// Larder's prior is not calibrated on feedback (`pipeline.rank.adaptive_prior = false`).
    #[arg(long)]
    fixed_prior: bool,
}

pub async fn run(args: RankingArgs) -> Result<(), BenchError> {
    if !(args.prior_strength.is_finite() && args.prior_strength >= 0.0) {
        return Err(BenchError::Failed(
            "--prior-strength must be a number >= 0".into(),
        ));
    }
    let ranking = Ranking {
        prior_strength: args.prior_strength,
        adaptive_prior: !args.fixed_prior,
    };
    let policies = Policy::all()
        .into_iter()
        .map(|policy| match policy {
            Policy::Larder { explore, .. } => Policy::Larder { explore, ranking },
            other => other,
        })
        .collect();
    let config = Config {
        items: args.items,
        k: args.k,
        rhos: args.rho,
        horizon: args.horizon,
        batch: args.batch,
        pools: args.pools,
        click_model: match args.clicks {
            Clicks::Pbm => ClickModel::Pbm { eta: args.eta },
            Clicks::Cascade => ClickModel::Cascade,
        },
        seed: args.seed,
        policies,
    };
    let total = config.rhos.len() as u64
        * config.pools as u64
        * config.policies.len() as u64
        * config.horizon;
    let bar = ProgressBar::new(total).with_style(ProgressStyle::with_template(
        "simulating {bar:40} {human_pos}/{human_len} users ({per_sec}, eta {eta})",
    )?);
    let ticker = bar.clone();
    let report = larder_sim::run(&config, Arc::new(move |n| ticker.inc(n))).await?;
    bar.finish_and_clear();
    print!("{}", report.table());
    report.plot(&args.plot)?;
    println!("\nplot written to {}", args.plot.display());
    if let Some(path) = args.json {
        let json = serde_json::to_vec_pretty(&report)
            .map_err(|e| BenchError::Failed(format!("report JSON: {e}")))?;
        std::fs::write(&path, json)?;
        println!("curves written to {}", path.display());
    }
    Ok(())
}
