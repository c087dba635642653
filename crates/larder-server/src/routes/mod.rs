//! The router: one thin handler file per resource.

pub mod categories;
pub mod entities;
pub mod lookup;
pub mod namespaces;
pub mod ops;
pub mod ui;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use axum::{middleware, Router};

use crate::error::ApiError;
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/namespaces", get(namespaces::list))
        .route(
            "/v1/namespaces/{ns}",
            put(namespaces::put)
                .get(namespaces::get)
                .delete(namespaces::delete),
        )
        .route(
            "/v1/aliases/{alias}",
            put(namespaces::put_alias).get(namespaces::get_alias),
        )
        .route("/v1/namespaces/{ns}/stats", get(namespaces::stats))
        .route("/v1/namespaces/{ns}/entities", post(entities::upsert))
        .route(
            "/v1/namespaces/{ns}/entities/{key}",
            get(entities::get).delete(entities::delete),
        )
        .route("/v1/namespaces/{ns}/lookup", post(lookup::lookup))
        .route("/v1/categories", get(categories::list))
        .route("/v1/categories/{category}", put(categories::register))
        .route("/v1/categories/{category}/items", get(categories::items))
        .route(
            "/v1/categories/{category}/items/{id}",
            get(categories::item),
        )
        .route(
            "/v1/categories/{category}/feedback",
            post(categories::feedback),
        )
        .route(
            "/v1/categories/{category}/refresh",
            post(categories::refresh),
        )
        .route("/v1/events", get(ui::events))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::require_token,
        ));
    Router::new()
        .merge(v1)
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .route("/ui", get(ui::page))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("method not allowed on this route".into())
        })
        .layer(DefaultBodyLimit::max(state.config.limits.max_body_bytes))
        .route_layer(middleware::from_fn(crate::metrics::track))
        .with_state(state)
}
