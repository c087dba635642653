//! # larder-server
//!
//! The HTTP server. [`run`] is the whole server: `main` only reads config and calls it, so
//! tests start a server on port 0.
//!
//! # Layout
//! - [`config`]: TOML file + `LARDER_*` env + CLI overrides.
//! - [`routes`]: one thin handler file per resource (`namespaces`, `entities`, `lookup`,
//!   `ops`); each validates, calls the store, and answers.
//! - [`error`]: the one error-to-HTTP mapping.
//! - [`extract`]: extractors whose rejections use that mapping.
//! - [`state`]: shared state and the namespace schema cache.
//! - [`breaker`]: the circuit breaker behind degraded lookups.
//! - [`auth`]: bearer tokens for `/v1`.
//! - [`metrics`]: the Prometheus recorder, metric names, per-route middleware.

pub mod auth;
pub mod breaker;
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

pub use config::Config;
pub use state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot open store {store}: {source}")]
    Store {
        store: String,
        source: larder_store::StoreError,
    },
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
    let store = larder_store::open(&config.store, &config.store_options())
        .await
        .map_err(|source| ServerError::Store {
            store: config.store.clone(),
            source,
        })?;
    serve(listener, store, config, shutdown).await
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
    let app = routes::router(AppState::new(store, config));
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
    Ok(())
}
