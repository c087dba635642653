//! `larder inspect --namespace N`: what `GET /v1/namespaces/{ns}/stats` reports about a
//! namespace's place in the store (entity count, bytes per entity, spread over the cluster's
//! primaries, largest entities), found by sampling without blocking Redis, as JSON on stdout.
//! Hot keys are counted by each serving process, so only the server's stats carry them.

use std::path::PathBuf;

use clap::Args;
use larder_app::{open, Overrides};
use larder_store::schema::valid_namespace;

#[derive(Args)]
pub struct InspectArgs {
    /// The namespace (or version, `name@v2`) to inspect.
    #[arg(long, value_name = "N")]
    namespace: String,
    /// The TOML config file `larder serve` reads.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The store [env: LARDER_STORE] [default: embedded]
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Data directory of the embedded store [env: LARDER_DATA_DIR]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

pub async fn run(args: InspectArgs) -> i32 {
    if !valid_namespace(&args.namespace) {
        eprintln!(
            "error: --namespace: {:?} must match ^[a-z0-9][a-z0-9_-]{{0,63}}$, optionally followed by @version",
            args.namespace
        );
        return 2;
    }
    let overrides = Overrides {
        store: args.store,
        data_dir: args.data_dir,
        ..Overrides::default()
    };
    let config = match crate::load_config(args.config.as_deref(), overrides) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let store = match open::raw_store(&config).await {
        Ok(store) => store,
        Err(error) => {
            eprintln!("error: {error}");
            return 1;
        }
    };
    match store.get_schema(&args.namespace).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            eprintln!("error: --namespace: {:?} does not exist", args.namespace);
            return 1;
        }
        Err(error) => {
            eprintln!("error: {error}");
            return 1;
        }
    }
    match store.stats(&args.namespace).await {
        Ok(stats) => match serde_json::to_string_pretty(&stats) {
            Ok(json) => {
                println!("{json}");
                0
            }
            Err(error) => {
                eprintln!("error: {error}");
                1
            }
        },
        Err(error) => {
            eprintln!("error: {error}");
            1
        }
    }
}
