//! # larder-server
//!
//! The HTTP server. [`run`] is the whole server: `main` only reads config and calls it, so
//! tests start a server on port 0.
//!
//! # Layout
//! - [`config`]: re-exported from the assembly point, [`larder_app`].
//! - [`routes`]: one thin handler file per resource (`namespaces`, `entities`, `lookup`,
//!   `categories`, `ops`); each validates, calls the store or the category domain
//!   ([`larder_categories::Categories`]), and answers.
//! - `answer`: the lookup answer's JSON and safetensors encodings.
//! - [`error`]: the one error-to-HTTP mapping.
//! - [`extract`]: extractors whose rejections use that mapping.
//! - [`state`]: shared state and the namespace schema cache.
//! - [`breaker`]: the circuit breaker behind degraded lookups.
//! - [`auth`]: bearer tokens for `/v1`.
//! - [`metrics`]: metric names and the per-route middleware (the recorder is
//!   [`larder_ops::recorder`], shared with workers).

mod answer;
pub mod auth;
pub mod breaker;
pub mod error;
pub mod extract;
pub mod grpc;
pub mod hot;
pub mod metrics;
pub mod routes;
pub mod state;

/// The configuration is the assembly point's ([`larder_app::config`]); re-exported so that
/// embedders and tests build a server from one crate.
pub use larder_app::config;

use std::future::{Future, IntoFuture};

use larder_app::{App, AppError};
use tokio::net::TcpListener;

pub use larder_app::Config;
pub use state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    App(#[from] AppError),
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Bind(String),
}

/// Assemble the app `config` describes and serve until `shutdown` resolves, then drain
/// in-flight requests (bounded by `timeouts.shutdown_ms`).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let app = App::open(config).await?;
    serve(listener, app, shutdown).await
}

/// Serve an assembled app, with the pipeline stages it is configured to run in-process.
pub async fn serve(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    metrics::handle();
    let drain = std::time::Duration::from_millis(app.config.timeouts.shutdown_ms);
    let backend = app.store.backend();
    let pipeline = app.start_pipeline().await?;
    // Both servers, and the event streams, stop when `shutdown` resolves.
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
    let state = AppState::new(
        app.store.clone(),
        app.config.clone(),
        app.categories.clone(),
        stopping_rx.clone(),
    );
    let decay = tokio::spawn(hot::decay_every(state.hot.clone(), hot::DECAY));
    let schemas = tokio::spawn(state.schemas.clone().follow(state.store.clone()));
    let grpc = match app.config.grpc_listen {
        Some(addr) => {
            let grpc_listener = TcpListener::bind(addr).await.map_err(|error| {
                ServerError::Bind(format!("--grpc-listen: cannot bind {addr}: {error}"))
            })?;
            tracing::info!(addr = %grpc_listener.local_addr()?, "larder gRPC listening");
            let mut stopping = stopping_rx.clone();
            let state = state.clone();
            Some(tokio::spawn(async move {
                let stop = async move {
                    let _ = stopping.wait_for(|stop| *stop).await;
                };
                if let Err(error) = grpc::serve(grpc_listener, state, stop).await {
                    tracing::error!(%error, "the gRPC server stopped");
                }
            }))
        }
        None => None,
    };
    let router = routes::router(state);
    tracing::info!(addr = %listener.local_addr()?, backend, "larder listening");
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    // The peer address names an anonymous client for the per-client category rate.
    let router = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: draining in-flight requests");
        let _ = stopping_tx.send(true);
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
    decay.abort();
    schemas.abort();
    if let Some(grpc) = grpc {
        // Drained by now, or cut off at the same deadline as HTTP.
        let _ = tokio::time::timeout(drain, grpc).await;
    }
    pipeline.stop().await;
    Ok(())
}
