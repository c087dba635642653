//! `larder bench lookup`: creates a namespace with one `dim`-d f32 field, upserts
//! `--entities` random vectors (with a progress bar), then runs batch lookups of `--keys`
//! random keys and prints req/s, values/s and p50/p99/p999.

use super::BenchError;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use serde_json::json;

use super::load::drive;
use larder_server::grpc::pb::embeddings_client::EmbeddingsClient;
use larder_server::grpc::pb::LookupRequest;

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum Protocol {
    Http,
    Grpc,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum Format {
    Safetensors,
    Json,
}

#[derive(Args)]
pub struct LookupArgs {
    /// Base URL of a running `larder serve`.
    #[arg(long, default_value = "http://127.0.0.1:7878")]
    url: String,
    /// Namespace to create and load (its field is named `v`).
    #[arg(long, default_value = "bench")]
    namespace: String,
    /// Keys per lookup request (1 = one lookup per key).
    #[arg(long, default_value_t = 100)]
    keys: usize,
    /// Vector dimension.
    #[arg(long, default_value_t = 768)]
    dim: usize,
    /// Entities to load before measuring.
    #[arg(long, default_value_t = 10_000)]
    entities: usize,
    /// Skip loading (reuse what an earlier run loaded).
    #[arg(long)]
    no_load: bool,
    #[arg(long, value_enum, default_value_t = Format::Safetensors)]
    format: Format,
    /// Concurrent requests in flight.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Seconds to measure.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Bearer token, when the server requires one.
    #[arg(long, env = "LARDER_TOKEN")]
    token: Option<String>,
    /// Draw keys from a Zipf(S) distribution over the loaded keys (`k0` the most frequent),
    /// as real traffic is skewed; without it, keys are drawn uniformly.
    #[arg(long, value_name = "S")]
    zipf: Option<f64>,
    /// Look up over HTTP (`--format` applies) or over gRPC (`larder.v1.Embeddings/Lookup`,
    /// raw bytes per field, at `--grpc-url`). Loading always goes over HTTP.
    #[arg(long, value_enum, default_value_t = Protocol::Http)]
    protocol: Protocol,
    /// The gRPC address of the same server.
    #[arg(long, default_value = "http://127.0.0.1:7879")]
    grpc_url: String,
}

/// HTTP/2 connections the gRPC load is spread over: one connection multiplexes every
/// in-flight call through one socket and one server task, which would cap the load.
const GRPC_CHANNELS: usize = 8;

/// How request keys are drawn from `k0..k{entities}`.
#[derive(Clone, Copy)]
enum Keys {
    Uniform(usize),
    Zipf(rand_distr::Zipf<f64>),
}

impl Keys {
    fn new(entities: usize, zipf: Option<f64>) -> Result<Keys, BenchError> {
        Ok(match zipf {
            None => Keys::Uniform(entities),
            Some(s) => Keys::Zipf(
                rand_distr::Zipf::new(entities as f64, s)
                    .map_err(|e| BenchError::Failed(format!("--zipf {s}: {e}")))?,
            ),
        })
    }

    fn draw(&self, rng: &mut impl Rng) -> usize {
        match self {
            Keys::Uniform(n) => rng.random_range(0..*n),
            // Zipf draws ranks 1..=n.
            Keys::Zipf(zipf) => (rng.sample(zipf) as usize).saturating_sub(1),
        }
    }

    fn describe(&self, zipf: Option<f64>) -> String {
        match zipf {
            Some(s) => format!("zipf({s})"),
            None => "uniform".into(),
        }
    }
}

fn request(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &Option<String>,
) -> reqwest::RequestBuilder {
    let req = client.request(method, url);
    match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    }
}

async fn load(args: &LookupArgs, client: &reqwest::Client) -> Result<(), BenchError> {
    let ns_url = format!("{}/v1/namespaces/{}", args.url, args.namespace);
    let resp = request(
        client,
        reqwest::Method::PUT,
        format!("{ns_url}?force=true"),
        &args.token,
    )
    .json(&json!({"fields": {"v": {"dim": args.dim, "dtype": "f32"}}}))
    .send()
    .await
    .map_err(|e| BenchError::Failed(format!("cannot reach {}: {e}", args.url)))?;
    if !resp.status().is_success() {
        return Err(format!(
            "create namespace: {}",
            resp.text().await.unwrap_or_default()
        )
        .into());
    }
    let bar = ProgressBar::new(args.entities as u64).with_style(ProgressStyle::with_template(
        "loading {bar:40} {pos}/{len} entities ({per_sec}, eta {eta})",
    )?);
    let mut rng = rand::rng();
    let chunk = (4_000_000 / (args.dim * 12).max(1)).clamp(1, 1000);
    let mut start = 0;
    while start < args.entities {
        let end = (start + chunk).min(args.entities);
        let entities: Vec<_> = (start..end)
            .map(|i| {
                let v: Vec<f32> = (0..args.dim)
                    .map(|_| rng.random_range(-1.0f32..1.0))
                    .collect();
                json!({"key": format!("k{i}"), "fields": {"v": v}})
            })
            .collect();
        let resp = request(
            client,
            reqwest::Method::POST,
            format!("{ns_url}/entities"),
            &args.token,
        )
        .json(&json!({ "entities": entities }))
        .send()
        .await?;
        if !resp.status().is_success() {
            return Err(format!("upsert: {}", resp.text().await.unwrap_or_default()).into());
        }
        bar.inc((end - start) as u64);
        start = end;
    }
    bar.finish();
    Ok(())
}

pub async fn run(args: LookupArgs) -> Result<(), BenchError> {
    if args.keys == 0 || args.concurrency == 0 || args.dim == 0 || args.entities == 0 {
        return Err("--keys, --concurrency, --dim and --entities must be at least 1".into());
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    if !args.no_load {
        load(&args, &client).await?;
    }
    let url = Arc::new(format!(
        "{}/v1/namespaces/{}/lookup",
        args.url, args.namespace
    ));
    let accept = match args.format {
        Format::Safetensors => "application/octet-stream",
        Format::Json => "application/json",
    };
    let draw = Keys::new(args.entities, args.zipf)?;
    let (keys, token) = (args.keys, Arc::new(args.token.clone()));
    let report = match args.protocol {
        Protocol::Http => {
            drive(
                args.concurrency,
                Duration::from_secs(args.duration),
                move |_, _| {
                    let (client, url, token) = (client.clone(), url.clone(), token.clone());
                    async move {
                        let body = {
                            let mut rng = rand::rng();
                            let keys: Vec<String> = (0..keys)
                                .map(|_| format!("k{}", draw.draw(&mut rng)))
                                .collect();
                            json!({ "keys": keys })
                        };
                        let resp = request(&client, reqwest::Method::POST, url.to_string(), &token)
                            .header("accept", accept)
                            .json(&body)
                            .send()
                            .await?;
                        let status = resp.status();
                        let degraded = resp.headers().contains_key("x-larder-degraded");
                        if !status.is_success() || degraded {
                            let text = resp.text().await.unwrap_or_default();
                            return Err(format!(
                                "{status} degraded={degraded} {}",
                                &text[..text.len().min(200)]
                            )
                            .into());
                        }
                        // Read the body chunk by chunk without gathering it into one buffer: the client
                        // should cost as little CPU as possible on a machine it shares with the server.
                        let mut resp = resp;
                        let mut received = 0usize;
                        while let Some(chunk) = resp.chunk().await? {
                            received += chunk.len();
                        }
                        if received == 0 {
                            return Err("empty body".into());
                        }
                        Ok(())
                    }
                },
            )
            .await
        }
        Protocol::Grpc => {
            let mut channels = Vec::with_capacity(GRPC_CHANNELS);
            for _ in 0..GRPC_CHANNELS {
                // Windows as large as a few answers, as grpcio's adaptive windows reach.
                let channel = tonic::transport::Endpoint::from_shared(args.grpc_url.clone())
                    .map_err(|e| BenchError::Failed(format!("--grpc-url: {e}")))?
                    .initial_stream_window_size(Some(4 << 20))
                    .initial_connection_window_size(Some(16 << 20))
                    .connect()
                    .await
                    .map_err(|e| {
                        BenchError::Failed(format!("cannot reach {}: {e}", args.grpc_url))
                    })?;
                channels.push(EmbeddingsClient::new(channel).max_decoding_message_size(usize::MAX));
            }
            let (namespace, token) = (args.namespace.clone(), args.token.clone());
            drive(
                args.concurrency,
                Duration::from_secs(args.duration),
                move |worker, _| {
                    let mut client = channels[worker % channels.len()].clone();
                    let (namespace, token) = (namespace.clone(), token.clone());
                    async move {
                        let keys: Vec<String> = {
                            let mut rng = rand::rng();
                            (0..keys)
                                .map(|_| format!("k{}", draw.draw(&mut rng)))
                                .collect()
                        };
                        let mut request = tonic::Request::new(LookupRequest {
                            namespace,
                            keys,
                            fields: Vec::new(),
                            dtype: String::new(),
                        });
                        if let Some(token) = token {
                            let value = format!("Bearer {token}")
                                .parse()
                                .map_err(|_| BenchError::Failed("bad token".into()))?;
                            request.metadata_mut().insert("authorization", value);
                        }
                        let answer = client
                            .lookup(request)
                            .await
                            .map_err(|status| BenchError::Failed(status.to_string()))?
                            .into_inner();
                        if answer.degraded || answer.tensors.is_empty() {
                            return Err("degraded or empty answer".into());
                        }
                        Ok(())
                    }
                },
            )
            .await
        }
    };
    let values = report.requests * args.keys as u64;
    println!(
        "lookup format={} keys={} dim={} concurrency={} draw={}: {} requests, {} errors in {:.1}s",
        match (args.protocol, args.format) {
            (Protocol::Grpc, _) => "grpc",
            (Protocol::Http, Format::Safetensors) => "safetensors",
            (Protocol::Http, Format::Json) => "json",
        },
        args.keys,
        args.dim,
        args.concurrency,
        draw.describe(args.zipf),
        report.requests,
        report.errors,
        report.elapsed.as_secs_f64()
    );
    println!(
        "req/s={:.0} values/s={:.0} p50={:.2}ms p99={:.2}ms p999={:.2}ms",
        report.per_second(report.requests),
        report.per_second(values),
        report.ms(0.5),
        report.ms(0.99),
        report.ms(0.999)
    );
    if report.requests == 0 {
        return Err("no request succeeded".into());
    }
    Ok(())
}
