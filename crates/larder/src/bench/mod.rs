//! `larder bench …`: load generators that print req/s, values/s and latency percentiles.

mod harness;
mod items;
mod load;
mod lookup;
mod pipeline;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Batch lookups against a running server (loads its own data first).
    Lookup(lookup::LookupArgs),
    /// Category top-10 req/s and p50/p99 with the pipeline idle, then flat out.
    Items(items::ItemsArgs),
    /// Sustained generations per second at a given provider latency and concurrency.
    Pipeline(pipeline::PipelineArgs),
}

pub async fn run(command: BenchCommand) -> i32 {
    let out = match command {
        BenchCommand::Lookup(args) => lookup::run(args).await,
        BenchCommand::Items(args) => items::run(args).await,
        BenchCommand::Pipeline(args) => pipeline::run(args).await,
    };
    match out {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("error: {error}");
            1
        }
    }
}
