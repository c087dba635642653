//! `larder bench …`: load generators that print req/s, values/s and latency percentiles.

mod failover;
mod harness;
mod items;
mod load;
mod lookup;
mod pipeline;
mod upsert;

use clap::Subcommand;

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
}

pub async fn run(command: BenchCommand) -> i32 {
    let out = match command {
        BenchCommand::Lookup(args) => lookup::run(args).await,
        BenchCommand::Items(args) => items::run(args).await,
        BenchCommand::Pipeline(args) => pipeline::run(args).await,
        BenchCommand::Upsert(args) => upsert::run(args).await,
        BenchCommand::Failover(args) => failover::run(args).await,
    };
    match out {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("error: {error}");
            1
        }
    }
}
