//! Child processes for self-contained benches: `larder mock-llm` and `larder serve` started
//! from this very binary, killed on drop. Separate processes keep the load generator, the
//! server and the mock provider from sharing one async runtime, as they would in production.

use super::BenchError;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use larder_testkit::support::{self, Proc};

/// A child process of this binary, killed on drop.
pub type ChildProcess = Proc;

fn larder() -> Result<Command, BenchError> {
    let exe = std::env::current_exe()
        .map_err(|e| BenchError::Failed(format!("cannot find the larder binary: {e}")))?;
    Ok(Command::new(exe))
}

/// `larder mock-llm` on a free port with `latency_ms`; its URL is read from its first line.
pub fn mock_llm(latency_ms: u64) -> Result<ChildProcess, BenchError> {
    let mut command = larder()?;
    command
        .args([
            "mock-llm",
            "--listen",
            "127.0.0.1:0",
            "--latency-ms",
            &latency_ms.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .stderr(Stdio::inherit());
    Proc::announcing(command, "larder mock-llm", None).map_err(BenchError::from)
}

/// `larder serve --config FILE --listen 127.0.0.1:PORT --grpc-listen off`, ready once `/readyz` answers 200.
pub async fn serve(config: &Path, envs: &[(&str, &str)]) -> Result<ChildProcess, BenchError> {
    let port = support::free_port()?;
    let mut command = larder()?;
    command
        .args(["serve", "--config"])
        .arg(config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        // The benches speak HTTP; a user's server may hold the default gRPC port.
        .args(["--grpc-listen", "off"])
        .envs(envs.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    Proc::ready(
        command,
        "larder serve",
        format!("http://127.0.0.1:{port}"),
        None,
        Duration::from_secs(30),
    )
    .await
    .map_err(BenchError::from)
}

/// Sum of every sample of metric `name` on the server's `/metrics` page (all label sets).
pub async fn metric_sum(
    client: &reqwest::Client,
    url: &str,
    name: &str,
) -> Result<f64, BenchError> {
    let text = support::metrics_text(client, url).await?;
    Ok(support::metric_sum(&text, name, ""))
}

/// The config of a bench server: embedded memory store, every provider on the mock server
/// (an OpenAI-compatible writer, a CLOVA Studio v3 writer, an OpenAI-compatible judge).
pub fn bench_config(
    mock_url: &str,
    generators: &[&str],
    provider_concurrency: usize,
    generate_concurrency: usize,
) -> String {
    let generators = generators
        .iter()
        .map(|g| format!("{g:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"store = "embedded"
ephemeral = true

[pipeline]
seed_categories = []
generation_cooldown_ms = 0

[pipeline.generate]
generators = [{generators}]
concurrency = {generate_concurrency}

[pipeline.evaluate]
evaluators = ["mock-judge"]

[[pipeline.providers]]
name = "mock-gpt"
kind = "openai"
base_url = "{mock_url}/v1"
model = "gpt-4o-mock"
limits = {{ concurrency = {provider_concurrency}, max_retries = 2 }}

[[pipeline.providers]]
name = "mock-clova"
kind = "clova-v3"
base_url = "{mock_url}"
model = "HCX-005"
api_key_env = "BENCH_CLOVA_KEY"
limits = {{ concurrency = {provider_concurrency}, max_retries = 2 }}

[[pipeline.providers]]
name = "mock-judge"
kind = "openai"
base_url = "{mock_url}/v1"
model = "judge-mock"
limits = {{ concurrency = {provider_concurrency}, max_retries = 2 }}
"#
    )
}

/// Keep-alive HTTP/1.1 connections for load, one per worker, on hyper's low-level client:
/// the load generator shares the machine's cores with the server, so every microsecond it
/// spends per request (reqwest's pool and redirect machinery cost several) is taken from the
/// server being measured.
pub struct Connections {
    senders: Vec<
        tokio::sync::Mutex<
            hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
        >,
    >,
    host: String,
}

impl Connections {
    pub async fn open(base_url: &str, n: usize) -> Result<Connections, BenchError> {
        let host = base_url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let mut senders = Vec::with_capacity(n);
        for _ in 0..n {
            let stream = tokio::net::TcpStream::connect(&host)
                .await
                .map_err(|e| BenchError::Failed(format!("cannot connect to {host}: {e}")))?;
            let _ = stream.set_nodelay(true);
            let (sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| BenchError::Failed(format!("HTTP handshake with {host}: {e}")))?;
            tokio::spawn(connection);
            senders.push(tokio::sync::Mutex::new(sender));
        }
        Ok(Connections { senders, host })
    }

    /// GET `path_and_query` on connection `worker`; the status and body length.
    pub async fn get(
        &self,
        worker: usize,
        path_and_query: &str,
    ) -> Result<(u16, usize), BenchError> {
        use http_body_util::BodyExt;
        let mut sender = self.senders[worker % self.senders.len()].lock().await;
        let request = hyper::Request::get(path_and_query)
            .header(hyper::header::HOST, self.host.as_str())
            .body(http_body_util::Empty::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body.len()))
    }
}

/// Cumulative bucket counts `(le, count)` of a Prometheus histogram's samples whose labels
/// contain `label` (e.g. the route), in bucket order.
pub async fn histogram(
    client: &reqwest::Client,
    url: &str,
    name: &str,
    label: &str,
) -> Result<Vec<(f64, f64)>, BenchError> {
    let text = support::metrics_text(client, url).await?;
    let prefix = format!("{name}_bucket{{");
    let mut buckets = Vec::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(label))
    {
        let le = line
            .split("le=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .map(|le| {
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::NAN)
                }
            });
        let count = line.rsplit(' ').next().and_then(|c| c.parse::<f64>().ok());
        if let (Some(le), Some(count)) = (le, count) {
            buckets.push((le, count));
        }
    }
    Ok(buckets)
}

/// What the server's own latency histogram saw between two readings: the share of requests
/// answered within 1 ms, and the smallest bucket bound holding 99% of them.
pub fn server_side(before: &[(f64, f64)], after: &[(f64, f64)]) -> Option<(f64, f64)> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, count)| {
            let was = before
                .iter()
                .find(|(b, _)| b == le)
                .map_or(0.0, |(_, c)| *c);
            (*le, count - was)
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let within_1ms = delta.iter().find(|(le, _)| *le >= 0.001)?.1 / total;
    let p99 = delta.iter().find(|(_, c)| *c >= 0.99 * total)?.0;
    Some((within_1ms, p99 * 1000.0))
}
