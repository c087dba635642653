//! # larder-server
//!
//! The HTTP server. [`run`] is the whole server: `main` only reads config and calls it, so
//! tests start a server on port 0.
//!
//! # Layout
//! - [`config`]: TOML file + `LARDER_*` env + CLI overrides.
//! - [`routes`]: one thin handler file per resource (`namespaces`, `entities`, `lookup`,
//!   `categories`, `ops`); each validates, calls the store or the catalog, and answers.
//! - [`catalog`]: the category engine: main DB, pipeline queue, cached serving views.
//! - [`error`]: the one error-to-HTTP mapping.
//! - [`extract`]: extractors whose rejections use that mapping.
//! - [`state`]: shared state and the namespace schema cache.
//! - [`breaker`]: the circuit breaker behind degraded lookups.
//! - [`auth`]: bearer tokens for `/v1`.
//! - [`metrics`]: the Prometheus recorder, metric names, per-route middleware.

pub mod auth;
pub mod breaker;
pub mod catalog;
pub mod config;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod routes;
pub mod state;

use std::future::{Future, IntoFuture};
use std::sync::Arc;

use larder_store::Store;
use tokio::net::TcpListener;

use catalog::Catalog;
pub use config::Config;
pub use state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot open store {store}: {source}")]
    Store {
        store: String,
        source: larder_store::StoreError,
    },
    #[error("cannot open the main DB {db}: {source}")]
    Db {
        db: String,
        source: larder_db::DbError,
    },
    #[error("cannot open the pipeline broker: {0}")]
    Broker(#[from] larder_broker::BrokerError),
    #[error("pipeline: {0}")]
    Pipeline(#[from] larder_pipeline::StageError),
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Open the configured store and serve until `shutdown` resolves, then drain in-flight
/// requests (bounded by `timeouts.shutdown_ms`).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let store = open_store(&config).await?;
    serve(listener, store, config, shutdown).await
}

/// The store `config.store` names (for the server, workers and `larder rebuild` alike).
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, ServerError> {
    larder_store::open(&config.store, &config.store_options())
        .await
        .map_err(|source| ServerError::Store {
            store: config.store.clone(),
            source,
        })
}

/// The main DB `config.db` names, or its default.
pub async fn open_db(config: &Config) -> Result<larder_db::Db, ServerError> {
    let db = config.db_url();
    larder_db::Db::connect(&db)
        .await
        .map_err(|source| ServerError::Db { db, source })
}

/// Serve an already opened store.
pub async fn serve(
    listener: TcpListener,
    store: Arc<dyn Store>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    metrics::handle();
    let drain = std::time::Duration::from_millis(config.timeouts.shutdown_ms);
    let backend = store.backend();
    let pipeline = Pipeline::start(&store, &config).await?;
    let app = routes::router(AppState::new(store, config, pipeline.catalog.clone()));
    tracing::info!(addr = %listener.local_addr()?, backend, "larder listening");
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: draining in-flight requests");
        let _ = stopped_tx.send(());
    });
    let mut server = std::pin::pin!(server.into_future());
    tokio::select! {
        out = &mut server => out?,
        _ = async {
            // Only start the drain clock once shutdown was asked for.
            let _ = stopped_rx.await;
            tokio::time::sleep(drain).await;
        } => tracing::warn!(?drain, "in-flight requests did not finish in time; stopping"),
    }
    pipeline.stop().await;
    Ok(())
}

/// The category side of a server: main DB, broker, catalog, background tasks, and the stages
/// this process runs in-process.
struct Pipeline {
    catalog: Arc<Catalog>,
    host: Option<larder_pipeline::runner::PipelineHost>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Pipeline {
    async fn start(store: &Arc<dyn Store>, config: &Config) -> Result<Pipeline, ServerError> {
        let db = open_db(config).await?;
        let pipeline = &config.pipeline;
        let broker = larder_pipeline::open_broker(pipeline, &config.store).await?;
        let queue = larder_pipeline::Queue::new(
            broker.clone(),
            db.clone(),
            pipeline.generation_cooldown_ms,
        );
        let catalog = Catalog::new(
            db.clone(),
            queue.clone(),
            store.clone(),
            pipeline.rank.prior_strength,
        );
        let all_stages = larder_pipeline::StageKind::ALL
            .iter()
            .all(|s| pipeline.stages.contains(s));
        if broker.kind() == "memory" && !all_stages {
            return Err(ServerError::Pipeline(larder_pipeline::StageError::Config(
                "pipeline.stages: with the in-memory broker every stage must run in this process (no worker can reach its queue); list all four, or use a Redis store or pipeline.broker".into(),
            )));
        }
        let host = if pipeline.stages.is_empty() {
            None
        } else {
            // The pipeline gets its own DB pool, opened on its own thread, so that serving's
            // connections never depend on the low-priority pipeline thread. An in-memory
            // SQLite DB exists only inside its one pool, so that one is shared.
            let url = config.db_url();
            let (shared_db, store, stages_config) = (db.clone(), store.clone(), pipeline.clone());
            let build = move || async move {
                let db = if url.starts_with("sqlite::memory:") {
                    shared_db
                } else {
                    larder_db::Db::connect(&url).await?
                };
                let deps = larder_pipeline::Deps {
                    db,
                    store,
                    providers: larder_pipeline::runner::build_providers(&stages_config.providers)?,
                };
                larder_pipeline::runner::build_stages(&stages_config, &deps, &stages_config.stages)
            };
            Some(
                larder_pipeline::runner::PipelineHost::spawn(
                    build,
                    broker.clone(),
                    pipeline.heartbeat(),
                    pipeline.idle_priority,
                )
                .await?,
            )
        };
        seed(&db, &queue, &pipeline.seed_categories).await;
        let tasks = vec![
            tokio::spawn(catalog.clone().follow_announcements()),
            tokio::spawn(catalog.clone().rank_dirty()),
        ];
        tracing::info!(db = db.kind(), broker = broker.kind(), stages = ?pipeline.stages, "pipeline ready");
        Ok(Pipeline {
            catalog,
            host,
            tasks,
        })
    }

    async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(host) = self.host {
            // Joining the pipeline thread blocks: do it off the async runtime.
            let _ = tokio::task::spawn_blocking(move || host.stop()).await;
        }
    }
}

/// Register the example categories on a DB that has none (the offline demo), and queue their
/// generation. Failures only log: the server serves regardless.
async fn seed(
    db: &larder_db::Db,
    queue: &larder_pipeline::Queue,
    seeds: &[larder_pipeline::SeedCategory],
) {
    if seeds.is_empty() {
        return;
    }
    match db.categories().await {
        Ok(existing) if existing.is_empty() => {}
        Ok(_) => return,
        Err(error) => {
            tracing::warn!(%error, "cannot read categories; not seeding");
            return;
        }
    }
    let now = larder_pipeline::stage::now_ms();
    for seed in seeds {
        let registered = db
            .register_category(
                &seed.name,
                seed.description.as_deref(),
                seed.locale.as_deref(),
                now,
            )
            .await;
        let queued = match registered {
            Ok(_) => queue
                .generation(&seed.name, "seed", Some(0))
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match queued {
            Ok(_) => tracing::info!(category = %seed.name, "seeded example category"),
            Err(error) => tracing::warn!(category = %seed.name, %error, "cannot seed category"),
        }
    }
}
