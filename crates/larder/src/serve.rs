//! `larder serve`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use larder_app::Overrides;

#[derive(Args)]
pub struct ServeArgs {
    /// TOML config file. Keys: listen, grpc_listen, store, data_dir, ephemeral, allow_unauthenticated,
    /// [limits] max_body_bytes/max_lookup_keys/max_upsert_entities,
    /// [auth] write_tokens/read_tokens, [timeouts] connect_ms/response_ms/lookup_ms/shutdown_ms,
    /// [breaker] failure_threshold/open_ms, db, backup,
    /// [replay] write_timeout_ms/failover_window_ms/batch, [pipeline] (providers, stages; see
    /// README).
    /// Every key can be set as LARDER_<KEY>
    /// (nested: LARDER_LIMITS__MAX_LOOKUP_KEYS). Flags win over the environment, which wins
    /// over the file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [env: LARDER_LISTEN] [default: 127.0.0.1:7878]
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Address of the gRPC API, or `off` [env: LARDER_GRPC_LISTEN] [default: 127.0.0.1:7879]
    #[arg(long, value_name = "ADDR")]
    grpc_listen: Option<String>,
    /// embedded | redis://[user:pass@]host:port[/db] | rediss://… |
    /// redis-cluster://host:port,host:port,… | rediss-cluster://… [env: LARDER_STORE]
    /// [default: embedded]
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Data directory of the embedded store [env: LARDER_DATA_DIR] [default: ./larder-data]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Keep the embedded store in memory only [env: LARDER_EPHEMERAL]
    #[arg(long)]
    ephemeral: bool,
    /// Main DB of categories and items: sqlite://FILE | sqlite::memory: | postgres://…
    /// [env: LARDER_DB] [default: sqlite://<data-dir>/larder.db]
    #[arg(long, value_name = "URL")]
    db: Option<String>,
    /// Durable backup of every entity write, for replay and `larder restore`:
    /// postgres://… | sqlite://FILE [env: LARDER_BACKUP] [default: off]
    #[arg(long, value_name = "URL")]
    backup: Option<String>,
}

pub async fn run(args: ServeArgs) -> i32 {
    let overrides = Overrides {
        listen: args.listen,
        grpc_listen: args
            .grpc_listen
            .map(|a| if a == "off" { String::new() } else { a }),
        store: args.store,
        data_dir: args.data_dir,
        ephemeral: args.ephemeral,
        db: args.db,
        backup: args.backup,
    };
    let config = match crate::load_config(args.config.as_deref(), overrides) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(error) => {
            eprintln!("error: --listen: cannot bind {}: {error}", config.listen);
            return 2;
        }
    };
    match larder_server::run(listener, config, crate::signal::shutdown()).await {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("error: {error}");
            1
        }
    }
}
