//! `larder bench …`: load generators that print req/s, values/s and latency percentiles.

mod load;
mod lookup;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Batch lookups against a running server (loads its own data first).
    Lookup(lookup::LookupArgs),
}

pub async fn run(command: BenchCommand) -> i32 {
    let out = match command {
        BenchCommand::Lookup(args) => lookup::run(args).await,
    };
    match out {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("error: {error}");
            1
        }
    }
}
