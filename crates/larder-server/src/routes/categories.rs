//! `/v1/categories`: register, list, top items, item detail, feedback, refresh. Each handler
//! parses the request, calls one method of [`larder_categories::Categories`], and answers;
//! the rules live in the category domain, errors map to HTTP in [`crate::error`].

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use larder_categories::model::{
    Accepted, CategoryList, FeedbackRequest, ItemAnswer, ItemsAnswer, ItemsRequest, Refreshed,
    RegisterRequest,
};

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::extract::{ApiPath, ApiQuery, JsonBody, OptionalJsonBody};
use crate::state::AppState;

/// Seconds a client is told to wait for a pending category: about one generation.
const RETRY_AFTER_SECS: &str = "7";

pub async fn register(
    State(state): State<AppState>,
    Extension(Caller(caller)): Extension<Caller>,
    ApiPath(category): ApiPath<String>,
    OptionalJsonBody(body): OptionalJsonBody<RegisterRequest>,
) -> ApiResult<Response> {
    let registered = state.categories.register(&category, body, &caller).await?;
    let status = if registered.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(registered)).into_response())
}

pub async fn list(State(state): State<AppState>) -> ApiResult<Json<CategoryList>> {
    Ok(Json(state.categories.list().await?))
}

pub async fn items(
    State(state): State<AppState>,
    Extension(Caller(caller)): Extension<Caller>,
    ApiPath(category): ApiPath<String>,
    ApiQuery(query): ApiQuery<ItemsRequest>,
) -> ApiResult<Response> {
    Ok(
        match state.categories.items(&category, query, &caller).await? {
            ItemsAnswer::Ready(body) => {
                ([(header::CONTENT_TYPE, "application/json")], body).into_response()
            }
            ItemsAnswer::Pending(pending) => (
                StatusCode::ACCEPTED,
                [(header::RETRY_AFTER, RETRY_AFTER_SECS)],
                Json(pending),
            )
                .into_response(),
        },
    )
}

pub async fn item(
    State(state): State<AppState>,
    ApiPath((category, id)): ApiPath<(String, String)>,
) -> ApiResult<Json<ItemAnswer>> {
    Ok(Json(state.categories.item(&category, &id).await?))
}

pub async fn feedback(
    State(state): State<AppState>,
    ApiPath(category): ApiPath<String>,
    JsonBody(body): JsonBody<FeedbackRequest>,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    let accepted = state.categories.record_feedback(&category, body).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

pub async fn refresh(
    State(state): State<AppState>,
    Extension(Caller(caller)): Extension<Caller>,
    ApiPath(category): ApiPath<String>,
) -> ApiResult<(StatusCode, Json<Refreshed>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(state.categories.refresh(&category, &caller).await?),
    ))
}
