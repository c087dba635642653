//! `larder bench items`: the category top-10 endpoint's req/s and p50/p99/p999, first with
//! the pipeline idle, then while it runs flat out, printed side by side.
//!
//! It is self-contained: it starts `larder mock-llm` and `larder serve` (embedded memory store,
//! every stage in-process, all providers on the mock) as child processes, waits for a category
//! to be ready, and drives open-loop load at `--rate` (latency counted from each request's
//! scheduled time). For the second run it keeps `--flood` other categories regenerating
//! (a refresh of each every second), so generate → filter → evaluate → rank never rests, and
//! reports how many generations the pipeline completed meanwhile.

use super::BenchError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use super::harness::{
    bench_config, histogram, metric_sum, mock_llm, serve, server_side, Connections,
};
use super::load::{drive_rate, Report};

#[derive(Args)]
pub struct ItemsArgs {
    /// Requests per second offered (open loop).
    #[arg(long, default_value_t = 20_000.0)]
    rate: f64,
    /// Connections / workers sending them.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Items per request.
    #[arg(long, default_value_t = 10)]
    limit: usize,
    /// Thompson sampling (explore=true) instead of the posterior-mean order.
    #[arg(long)]
    explore: bool,
    /// Categories kept regenerating during the loaded run.
    #[arg(long, default_value_t = 200)]
    flood: usize,
    /// Mock provider latency during the bench, ms (low, so the pipeline is CPU-bound: flat out).
    #[arg(long, default_value_t = 20)]
    provider_latency_ms: u64,
    /// Provider and generate-stage concurrency.
    #[arg(long, default_value_t = 64)]
    pipeline_concurrency: usize,
}

const CATEGORY: &str = "moving house";

fn print(label: &str, report: &Report) {
    println!(
        "{label:<16} {:>9.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  p999 {:>7.3} ms  errors {}",
        report.per_second(report.requests),
        report.ms(0.50),
        report.ms(0.99),
        report.ms(0.999),
        report.errors
    );
}

pub async fn run(args: ItemsArgs) -> Result<(), BenchError> {
    let mock = mock_llm(args.provider_latency_ms)?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        bench_config(
            &mock.url,
            &["mock-gpt", "mock-clova"],
            args.pipeline_concurrency,
            args.pipeline_concurrency,
        ),
    )?;
    let server = serve(&config, &[("BENCH_CLOVA_KEY", "bench-key")]).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .build()?;

    // The served category, ready before anything is measured.
    let items_url = format!(
        "{}/v1/categories/{}/items?limit={}&explore={}",
        server.url,
        CATEGORY.replace(' ', "%20"),
        args.limit,
        args.explore
    );
    let ready_by = Instant::now() + Duration::from_secs(60);
    loop {
        let resp = client
            .get(format!("{items_url}&wait_ms=5000"))
            .send()
            .await
            .map_err(|e| BenchError::Failed(format!("cannot reach the server: {e}")))?;
        if resp.status() == reqwest::StatusCode::OK {
            break;
        }
        if Instant::now() > ready_by {
            return Err(format!("category {CATEGORY:?} was not ready within 60 s").into());
        }
    }
    // Let its refill finish, so "idle" means idle.
    wait_idle(&client, &server.url).await?;
    println!(
        "GET /v1/categories/{{c}}/items?limit={} explore={}: {} req/s offered by {} connections, {} s each",
        args.limit, args.explore, args.rate, args.concurrency, args.duration
    );

    let connections = Arc::new(Connections::open(&server.url, args.concurrency).await?);
    let path = Arc::new(
        items_url
            .trim_start_matches(server.url.as_str())
            .to_string(),
    );
    let load = |connections: Arc<Connections>, path: Arc<String>| {
        move |worker: usize, _i: u64| {
            let (connections, path) = (connections.clone(), path.clone());
            async move {
                match connections.get(worker, &path).await? {
                    (200, _) => Ok(()),
                    (status, _) => Err(format!("status {status}").into()),
                }
            }
        }
    };
    let duration = Duration::from_secs(args.duration);
    let seconds = "larder_http_request_seconds";
    let route = "route=\"/v1/categories/{category}/items\"";
    let idle_before = histogram(&client, &server.url, seconds, route).await?;
    let idle = drive_rate(
        args.concurrency,
        args.rate,
        duration,
        load(connections.clone(), path.clone()),
    )
    .await;
    let idle_after = histogram(&client, &server.url, seconds, route).await?;
    print("pipeline idle", &idle);
    print_server_side(&idle_before, &idle_after);

    // Flat out: keep `flood` categories regenerating for the whole second run.
    let flood: Vec<String> = (0..args.flood).map(|i| format!("flood-{i}")).collect();
    for name in &flood {
        client
            .put(format!("{}/v1/categories/{name}", server.url))
            .json(&serde_json::json!({"locale": "en"}))
            .send()
            .await?;
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let flooder = {
        let (client, base) = (client.clone(), server.url.clone());
        tokio::spawn(async move {
            while !*stop_rx.borrow() {
                for name in &flood {
                    let _ = client
                        .post(format!("{base}/v1/categories/{name}/refresh"))
                        .send()
                        .await;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let generations = "larder_pipeline_generations_total";
    let before = metric_sum(&client, &server.url, generations).await?;
    let jobs_before = metric_sum(&client, &server.url, "larder_pipeline_jobs_total").await?;
    let started = Instant::now();
    let busy_before = histogram(&client, &server.url, seconds, route).await?;
    let busy = drive_rate(
        args.concurrency,
        args.rate,
        duration,
        load(connections.clone(), path),
    )
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let busy_after = histogram(&client, &server.url, seconds, route).await?;
    let after = metric_sum(&client, &server.url, generations).await?;
    let jobs_after = metric_sum(&client, &server.url, "larder_pipeline_jobs_total").await?;
    let _ = stop_tx.send(true);
    let _ = flooder.await;
    print("pipeline busy", &busy);
    print_server_side(&busy_before, &busy_after);
    println!(
        "pipeline during the busy run: {:.0} generations/s, {:.0} stage jobs/s",
        (after - before) / elapsed,
        (jobs_after - jobs_before) / elapsed
    );
    let rise = busy.ms(0.99) / idle.ms(0.99).max(1e-9) - 1.0;
    println!("p99 rise under pipeline load: {:+.1}%", rise * 100.0);
    println!(
        "speedup of p99 over a 6.3 s live LLM call: {:.0}x",
        6300.0 / busy.ms(0.99).max(idle.ms(0.99)).max(1e-9)
    );
    drop(server);
    drop(mock);
    Ok(())
}

/// The server's own view (its request histogram): no client or scheduling delay in it.
fn print_server_side(before: &[(f64, f64)], after: &[(f64, f64)]) {
    if let Some((within, p99)) = server_side(before, after) {
        println!(
            "  server-side: {:.2}% answered within 1 ms, p99 <= {p99} ms (histogram bucket)",
            within * 100.0
        );
    }
}

/// Wait until no stage has a job in flight for a second.
async fn wait_idle(client: &reqwest::Client, url: &str) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet_since: Option<Instant> = None;
    while Instant::now() < deadline {
        let in_flight = metric_sum(client, url, "larder_pipeline_in_flight").await?;
        if in_flight == 0.0 {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(1) {
                return Ok(());
            }
        } else {
            quiet_since = None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("the pipeline did not settle within 60 s".into())
}
