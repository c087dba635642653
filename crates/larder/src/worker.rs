//! `larder worker --stage S`: one pipeline stage as its own process, consuming its Redis
//! Streams queue with the other workers of that stage (competing consumers). Any number can
//! run side by side; a killed worker's unacknowledged jobs go to another after
//! `pipeline.claim_idle_ms`.
//!
//! It serves `/healthz`, `/readyz` and `/metrics` on `--listen` (an ephemeral port by default,
//! printed on start, so several workers can share a host).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use larder_app::{App, AppError, Config, Overrides};
use larder_ops::Unready;
use larder_pipeline::{StageError, StageKind};

#[derive(Args)]
pub struct WorkerArgs {
    /// generate | filter | evaluate | rank | embed (with pipeline.embed on)
    #[arg(long, value_parser = parse_stage)]
    stage: StageKind,
    /// The same TOML config file `larder serve` reads ([pipeline] and providers).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The store holding serving views; its Redis also carries the job streams unless
    /// pipeline.broker names another [env: LARDER_STORE]
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Main DB: sqlite://FILE | postgres://… [env: LARDER_DB]
    #[arg(long, value_name = "URL")]
    db: Option<String>,
    /// Address of this worker's /healthz, /readyz and /metrics [default: 127.0.0.1:0]
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Jobs worked on at once (default: the stage's configured concurrency).
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,
}

fn parse_stage(value: &str) -> Result<StageKind, String> {
    StageKind::parse(value)
        .ok_or_else(|| "expected generate, filter, evaluate, rank or embed".to_string())
}

pub async fn run(args: WorkerArgs) -> i32 {
    let overrides = Overrides {
        store: args.store,
        db: args.db,
        ..Overrides::default()
    };
    let mut config = match crate::load_config(args.config.as_deref(), overrides) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if config.db.is_none() {
        // The default (a SQLite file in the local data dir) is the server's only on the same
        // host and directory; a worker that silently used another DB would drop every job.
        eprintln!("error: --db: a worker needs the main DB the server uses (sqlite://FILE or postgres://…); set --db, LARDER_DB or db in the config file");
        return 2;
    }
    if let Some(n) = args.concurrency {
        if n == 0 {
            eprintln!("error: --concurrency: expected at least 1");
            return 2;
        }
        let p = &mut config.pipeline;
        match args.stage {
            StageKind::Generate => p.generate.concurrency = n,
            StageKind::Filter => p.filter.concurrency = n,
            StageKind::Evaluate => p.evaluate.concurrency = n,
            StageKind::Rank => p.rank.concurrency = n,
            StageKind::Embed => p.embed.concurrency = n,
        }
    }
    let listen = args
        .listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    match work(args.stage, config, listen).await {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("error: {error}");
            1
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum WorkerError {
    #[error(transparent)]
    App(#[from] AppError),
    #[error("a worker needs a shared broker: run it with --store redis://… (or redis-cluster://…), or set pipeline.broker to a Redis URL")]
    MemoryBroker,
    #[error("--listen: cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("ops server: {0}")]
    Io(#[from] std::io::Error),
}

async fn work(stage: StageKind, config: Config, listen: SocketAddr) -> Result<(), WorkerError> {
    larder_ops::recorder();
    let app = App::open(config).await?;
    if app.broker.kind() == "memory" {
        return Err(WorkerError::MemoryBroker);
    }
    let stage_impl = app
        .stages(&[stage])?
        .pop()
        .ok_or(WorkerError::App(AppError::Pipeline(StageError::Config(
            "no stage built".into(),
        ))))?;
    let (store, db, broker) = (app.store.clone(), app.db.clone(), app.broker.clone());
    let config = app.config;

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| WorkerError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr()?;
    // Scripts and tests read this line to find the ops port.
    println!(
        "larder worker {} listening on http://{addr}",
        stage.as_str()
    );
    let ops = ops_router(store.clone(), db.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(async move {
        let mut stop = stop_rx.clone();
        let _ = axum::serve(listener, ops)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
    });
    let consumer = format!(
        "{}-{}",
        larder_pipeline::runner::consumer_prefix(),
        stage.as_str()
    );
    tracing::info!(
        stage = stage.as_str(),
        broker = broker.kind(),
        db = db.kind(),
        store = store.backend(),
        "worker started"
    );
    // This stage's events, for the operator page of every `serve` (`GET /v1/events`).
    let relay = larder_pipeline::events::relay_out(broker.clone());
    let running = tokio::spawn(larder_pipeline::runner::run_stage(
        stage_impl,
        broker,
        consumer,
        config.pipeline.heartbeat(),
        stop_tx.subscribe(),
    ));
    crate::signal::shutdown().await;
    tracing::info!("worker stopping: finishing jobs in flight");
    let _ = stop_tx.send(true);
    // Unfinished jobs stay unacknowledged and go to another worker after claim_idle_ms.
    if tokio::time::timeout(std::time::Duration::from_secs(10), running)
        .await
        .is_err()
    {
        tracing::warn!("jobs still running after 10 s were abandoned to redelivery");
    }
    relay.abort();
    let _ = server.await;
    Ok(())
}

fn ops_router(store: Arc<dyn larder_store::Store>, db: larder_db::Db) -> axum::Router {
    larder_ops::router(move || readyz(store.clone(), db.clone()))
}

/// Ready when both the store and the main DB answer within 2 s.
async fn readyz(
    store: Arc<dyn larder_store::Store>,
    db: larder_db::Db,
) -> Result<serde_json::Value, Unready> {
    let timeout = std::time::Duration::from_secs(2);
    let checks = async { (store.ping().await, db.ping().await) };
    match tokio::time::timeout(timeout, checks).await {
        Ok((Ok(()), Ok(()))) => Ok(serde_json::json!({"status": "ready"})),
        Ok((Err(error), _)) => Err(Unready(format!("store: {error}"))),
        Ok((_, Err(error))) => Err(Unready(format!("main DB: {error}"))),
        Err(_) => Err(Unready(format!(
            "store and main DB did not answer within {timeout:?}"
        ))),
    }
}
