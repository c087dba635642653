//! `larder bench pipeline`: sustained generations per second through the generate stage with
//! the mock provider answering after `--provider-latency-ms` (6.3 s: the measured live call).
//! Starts `larder mock-llm` and `larder serve` as children, registers `--categories`
//! categories (each queues one generation), and counts completed generator answers over the
//! measurement window, after a warm-up of one provider latency.

use super::BenchError;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::harness::{bench_config, metric_sum, mock_llm, serve};

#[derive(Args)]
pub struct PipelineArgs {
    #[arg(long, default_value_t = 6_300)]
    provider_latency_ms: u64,
    /// Provider concurrency limit and generate-stage concurrency.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds measured after the warm-up.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Categories registered (the queue must not run dry during the run).
    #[arg(long, default_value_t = 2_000)]
    categories: usize,
}

pub async fn run(args: PipelineArgs) -> Result<(), BenchError> {
    let mock = mock_llm(args.provider_latency_ms)?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        bench_config(&mock.url, &["mock-gpt"], args.concurrency, args.concurrency),
    )?;
    let server = serve(&config, &[("BENCH_CLOVA_KEY", "bench-key")]).await?;
    let client = reqwest::Client::new();
    let bar = ProgressBar::new(args.categories as u64).with_style(
        ProgressStyle::with_template("registering {bar:40} {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    for i in 0..args.categories {
        let resp = client
            .put(format!("{}/v1/categories/bench-{i}", server.url))
            .json(&serde_json::json!({"locale": "en"}))
            .send()
            .await?;
        if !resp.status().is_success() {
            return Err(format!("registering a category answered {}", resp.status()).into());
        }
        bar.inc(1);
    }
    bar.finish();
    let warmup = Duration::from_millis(args.provider_latency_ms + 1_000);
    println!(
        "warming up for {:.1} s (one provider latency)",
        warmup.as_secs_f64()
    );
    tokio::time::sleep(warmup).await;
    // With a fixed latency, answers arrive in waves one latency apart; a window of a whole
    // number of latencies holds a whole number of waves, so the rate is not skewed by where
    // the window's edges fall.
    let period = args.provider_latency_ms.max(1);
    let window_ms = (args.duration * 1000 / period).max(1) * period;
    let name = "larder_pipeline_generations_total";
    let before = metric_sum(&client, &server.url, name).await?;
    let started = Instant::now();
    let bar = ProgressBar::new(window_ms / 1000).with_style(
        ProgressStyle::with_template("measuring {bar:40} {pos}/{len} s")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let deadline = started + Duration::from_millis(window_ms);
    while Instant::now() + Duration::from_secs(1) <= deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        bar.inc(1);
    }
    tokio::time::sleep_until(deadline.into()).await;
    bar.finish();
    let after = metric_sum(&client, &server.url, name).await?;
    let rate = (after - before) / started.elapsed().as_secs_f64();
    let ceiling = args.concurrency as f64 / (args.provider_latency_ms as f64 / 1000.0);
    println!(
        "generations: {:.2}/s sustained over {:.1} s at {} ms provider latency, concurrency {} (ceiling {:.2}/s, {:.0}% of it)",
        rate,
        window_ms as f64 / 1000.0,
        args.provider_latency_ms,
        args.concurrency,
        ceiling,
        100.0 * rate / ceiling
    );
    drop(server);
    drop(mock);
    Ok(())
}
