//! `larder bench …`: load generators.

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {}

pub async fn run(command: BenchCommand) -> i32 {
    match command {}
}
