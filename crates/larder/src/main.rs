//! The `larder` binary: `serve` runs the HTTP server (and, by default, the whole pipeline
//! in-process), `worker` runs one pipeline stage, `mock-llm` the mock provider server,
//! `rebuild` restores serving views from the main DB, `restore` rebuilds entities from the
//! backup, `load` re-injects embeddings from files, `bench` drives load.
//! `main` only parses arguments and hands off; every command lives in its own module and
//! builds what it needs through `larder-app` (only `serve` uses the HTTP crate).

mod bench;
mod inspect;
mod load;
mod mock_llm;
mod rebuild;
mod restore;
mod serve;
mod signal;
mod worker;

use clap::{Parser, Subcommand};

// The serving path allocates and frees many short-lived buffers per request (one per vector
// read from Redis, response bodies): glibc malloc was ~20% of the server's `bench lookup`
// profile, mimalloc ~10%. End-to-end throughput moved within noise (docs/ARCHITECTURE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "larder",
    version,
    about = "Pre-computed AI data, served in milliseconds"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the HTTP server (and the pipeline stages configured to run in-process).
    Serve(serve::ServeArgs),
    /// Run one pipeline stage as its own process, on Redis Streams.
    Worker(worker::WorkerArgs),
    /// Run the mock LLM provider server (OpenAI and CLOVA Studio wire formats).
    #[command(name = "mock-llm")]
    MockLlm(mock_llm::MockLlmArgs),
    /// Recompute every category's serving view from the main DB.
    Rebuild(rebuild::RebuildArgs),
    /// Rebuild the store's entities and schemas from the backup.
    Restore(restore::RestoreArgs),
    /// Entity count, sizes and spread over primaries of a namespace, sampled, as JSON.
    Inspect(inspect::InspectArgs),
    /// Load embeddings from a .parquet, .npy, .jsonl or .safetensors file into a namespace.
    Load(load::LoadArgs),
    /// Load generators that print req/s, values/s and latency percentiles.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// The config a command runs with (file, then `LARDER_*`, then `overrides`), or exit status 2
/// after one clear line on stderr naming the flag or key.
pub(crate) fn load_config(
    file: Option<&std::path::Path>,
    overrides: larder_app::Overrides,
) -> Result<larder_app::Config, i32> {
    larder_app::Config::load(file, overrides).map_err(|error| {
        eprintln!("error: {error}");
        2
    })
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            use clap::error::ErrorKind;
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                error.exit();
            }
            // One clear line naming the flag and what was expected, as scripts rely on.
            let rendered = error.render().to_string();
            let line = rendered.lines().next().unwrap_or("error: bad arguments");
            eprintln!("{line}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // sqlx's slow-statement warning fires on every long streaming read (a restore's
                // is as long as the restore); slow backup writes are logged by the store itself.
                .unwrap_or_else(|_| "info,larder=info,sqlx::query=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Worker(args) => worker::run(args).await,
            Command::MockLlm(args) => mock_llm::run(args).await,
            Command::Rebuild(args) => rebuild::run(args).await,
            Command::Restore(args) => restore::run(args).await,
            Command::Load(args) => load::run(args).await,
            Command::Inspect(args) => inspect::run(args).await,
            Command::Bench(cmd) => bench::run(cmd).await,
        }
    });
    std::process::exit(code);
}
