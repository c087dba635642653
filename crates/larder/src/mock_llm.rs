//! `larder mock-llm`: the mock provider server (OpenAI chat and embeddings, both CLOVA Studio
//! chat wire formats) with latency and fault injection, for tests, benches and the offline demo.

use std::net::SocketAddr;

use clap::Args;
use larder_providers::mock::MockConfig;

#[derive(Args)]
pub struct MockLlmArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8089")]
    listen: SocketAddr,
    /// Mean answer latency in milliseconds (6300 behaves like the measured live model).
    #[arg(long, value_name = "N", default_value_t = 0)]
    latency_ms: u64,
    /// Log-normal spread of the latency (0 = fixed).
    #[arg(long, value_name = "SIGMA", default_value_t = 0.0)]
    latency_jitter: f64,
    /// Seed of the generated content and of the fault draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Probability that a request gets a fault, spread evenly over every fault kind below
    /// (a kind's own flag wins).
    #[arg(long, value_name = "P", value_parser = probability, default_value_t = 0.0)]
    fault_rate: f64,
    /// 429 Too Many Requests (with Retry-After).
    #[arg(long, value_name = "P", value_parser = probability)]
    rate_429: Option<f64>,
    /// 500/503 answers.
    #[arg(long, value_name = "P", value_parser = probability)]
    rate_5xx: Option<f64>,
    /// Answers that are not JSON.
    #[arg(long, value_name = "P", value_parser = probability)]
    rate_garbage: Option<f64>,
    /// Items longer than asked.
    #[arg(long, value_name = "P", value_parser = probability)]
    rate_overlong: Option<f64>,
    /// Items carrying prompt-injection text.
    #[arg(long, value_name = "P", value_parser = probability)]
    rate_injection: Option<f64>,
    /// Items in another language than asked.
    #[arg(long, value_name = "P", value_parser = probability)]
    rate_wrong_language: Option<f64>,
    /// Empty answers.
    #[arg(long, value_name = "P", value_parser = probability)]
    rate_empty: Option<f64>,
    /// Answers repeating one item.
    #[arg(long, value_name = "P", value_parser = probability)]
    rate_duplicates: Option<f64>,
    /// Retry-After seconds sent with 429 and 503.
    #[arg(long, value_name = "SECS", default_value_t = 1)]
    retry_after_secs: u64,
}

fn probability(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!(
            "expected a probability between 0 and 1, got {value:?}"
        )),
    }
}

impl MockLlmArgs {
    fn config(&self) -> MockConfig {
        let share = self.fault_rate / 8.0;
        MockConfig {
            latency_ms: self.latency_ms,
            latency_jitter: self.latency_jitter,
            seed: self.seed,
            rate_429: self.rate_429.unwrap_or(share),
            retry_after_secs: self.retry_after_secs,
            rate_5xx: self.rate_5xx.unwrap_or(share),
            rate_garbage: self.rate_garbage.unwrap_or(share),
            rate_overlong: self.rate_overlong.unwrap_or(share),
            rate_injection: self.rate_injection.unwrap_or(share),
            rate_wrong_language: self.rate_wrong_language.unwrap_or(share),
            rate_empty: self.rate_empty.unwrap_or(share),
            rate_duplicates: self.rate_duplicates.unwrap_or(share),
        }
    }
}

pub async fn run(args: MockLlmArgs) -> i32 {
    let config = args.config();
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("error: --listen: cannot bind {}: {error}", args.listen);
            return 2;
        }
    };
    if let Ok(addr) = listener.local_addr() {
        // Scripts read this line to find the port when --listen asked for port 0.
        println!("larder mock-llm listening on http://{addr}");
    }
    match larder_providers::mock::run(listener, config, crate::signal::shutdown()).await {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("error: {error}");
            1
        }
    }
}
