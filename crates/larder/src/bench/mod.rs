//! `larder bench …`: load generators that print req/s, values/s and latency percentiles.

mod failover;
mod harness;
mod items;
mod load;
mod lookup;
mod pipeline;
mod ranking;
mod reuse;
mod upsert;

use clap::Subcommand;

/// What stops a bench: flags that cannot work together or an answer it cannot go on with
/// (`Failed`, said in a sentence), or an error of the part that failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Failed(String),
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Support(#[from] larder_testkit::support::SupportError),
    #[error(transparent)]
    Store(#[from] larder_store::StoreError),
    #[error(transparent)]
    Codec(#[from] larder_store::codec::CodecError),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("HTTP client: {0}")]
    Hyper(#[from] hyper::Error),
    #[error("HTTP request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error(transparent)]
    Sim(#[from] larder_sim::SimError),
    #[error("progress bar: {0}")]
    Progress(#[from] indicatif::style::TemplateError),
}

impl From<String> for BenchError {
    fn from(message: String) -> Self {
        BenchError::Failed(message)
    }
}

impl From<&str> for BenchError {
    fn from(message: &str) -> Self {
        BenchError::Failed(message.to_owned())
    }
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Batch lookups against a running server (loads its own data first).
    Lookup(lookup::LookupArgs),
    /// Category top-10 req/s and p50/p99 with the pipeline idle, then flat out.
    Items(items::ItemsArgs),
    /// Sustained generations per second at a given provider latency and concurrency.
    Pipeline(pipeline::PipelineArgs),
    /// A cluster primary SIGKILLed under reads and writes through a running server.
    Failover(failover::FailoverArgs),
    /// What the dual write to the backup costs a batch upsert.
    Upsert(upsert::UpsertArgs),
    /// Ranking quality: simulated users, regret against other policies (no server needed).
    Ranking(ranking::RankingArgs),
    /// Similar-category reuse: precision and recall of a reuse threshold for one embedding
    /// provider on labelled category pairs, and the threshold to set (no server needed).
    Reuse(reuse::ReuseArgs),
}

pub async fn run(command: BenchCommand) -> i32 {
    let out = match command {
        BenchCommand::Lookup(args) => lookup::run(args).await,
        BenchCommand::Items(args) => items::run(args).await,
        BenchCommand::Pipeline(args) => pipeline::run(args).await,
        BenchCommand::Upsert(args) => upsert::run(args).await,
        BenchCommand::Failover(args) => failover::run(args).await,
        BenchCommand::Ranking(args) => ranking::run(args).await,
        BenchCommand::Reuse(args) => reuse::run(args).await,
    };
    match out {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("error: {error}");
            1
        }
    }
}
