//! `/v1/categories`: register, list, top items, item detail, feedback, refresh. Thin handlers:
//! validate, call the [`crate::catalog::Catalog`], answer.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use larder_db::{FeedbackEvent, FeedbackKind, ItemStatus};
use larder_pipeline::view::{position_weight, posterior, prior, served_score};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, ApiQuery, JsonBody, OptionalJsonBody};
use crate::state::AppState;

/// Seconds a client is told to wait for a pending category: about one generation.
const RETRY_AFTER_SECS: &str = "7";
const MAX_WAIT_MS: u64 = 30_000;
const MAX_FEEDBACK_EVENTS: usize = 1000;

/// Category names are any UTF-8 of 1..=100 characters.
fn check_name(category: &str) -> ApiResult<()> {
    let chars = category.chars().count();
    if chars == 0 || chars > 100 {
        return Err(ApiError::BadRequest(format!(
            "category names are 1 to 100 characters; got {chars}"
        )));
    }
    Ok(())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    description: Option<String>,
    locale: Option<String>,
}

pub async fn register(
    State(state): State<AppState>,
    ApiPath(category): ApiPath<String>,
    OptionalJsonBody(body): OptionalJsonBody<RegisterBody>,
) -> ApiResult<Response> {
    check_name(&category)?;
    if let Some(locale) = &body.locale {
        let ok = !locale.is_empty()
            && locale.len() <= 16
            && locale
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return Err(ApiError::BadRequest(format!(
                "locale must be a language tag like \"ko\" or \"en-US\", got {locale:?}"
            )));
        }
    }
    if body
        .description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 1000)
    {
        return Err(ApiError::BadRequest(
            "description is limited to 1000 characters".into(),
        ));
    }
    let catalog = state.catalog()?;
    let created = catalog
        .db
        .register_category(
            &category,
            body.description.as_deref(),
            body.locale.as_deref(),
            larder_pipeline::stage::now_ms(),
        )
        .await?;
    let queued = catalog
        .queue
        .generation(&category, "registered", created.then_some(0))
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({"category": category, "created": created, "queued": queued})),
    )
        .into_response())
}

pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let catalog = state.catalog()?;
    let categories: Vec<Value> = catalog
        .db
        .categories()
        .await?
        .into_iter()
        .map(|c| {
            json!({
                "name": c.name,
                "status": if c.pool_size > 0 { "ready" } else { "pending" },
                "pool_size": c.pool_size,
                "evaluated": c.evaluated,
                "description": c.description,
                "locale": c.locale,
            })
        })
        .collect();
    Ok(Json(json!({ "categories": categories })))
}

/// Unknown query parameters (a client's cache-buster) are ignored.
#[derive(Deserialize)]
pub struct ItemsQuery {
    limit: Option<usize>,
    explore: Option<bool>,
    wait_ms: Option<u64>,
}

pub async fn items(
    State(state): State<AppState>,
    ApiPath(category): ApiPath<String>,
    ApiQuery(query): ApiQuery<ItemsQuery>,
) -> ApiResult<Response> {
    check_name(&category)?;
    let limit = query.limit.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1..=100, got {limit}"
        )));
    }
    let wait_ms = query.wait_ms.unwrap_or(0);
    if wait_ms > MAX_WAIT_MS {
        return Err(ApiError::BadRequest(format!(
            "wait_ms must be at most {MAX_WAIT_MS}, got {wait_ms}"
        )));
    }
    let explore = query.explore.unwrap_or(true);
    let catalog = state.catalog()?;
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    loop {
        let changes = catalog.announcements();
        let lookup = catalog.view(&category).await?;
        if let Some(served) = lookup.view.filter(|s| !s.view.items.is_empty()) {
            let body = if explore {
                let mut rng = rand::rng();
                served.render(served.view.sample_indices(limit, &mut rng).into_iter())
            } else {
                served.render(0..limit.min(served.view.items.len()))
            };
            return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
        }
        if lookup.loaded {
            // Just found absent in the store: make sure the category exists and generation is
            // on its way (at most once per cooldown, so pending requests cannot storm it).
            let created = catalog.db.category(&category).await?.is_none()
                && catalog
                    .db
                    .register_category(&category, None, None, larder_pipeline::stage::now_ms())
                    .await?;
            catalog
                .queue
                .generation(&category, "requested", created.then_some(0))
                .await?;
        }
        if Instant::now() >= deadline {
            break;
        }
        catalog.wait_for_announcement(changes, deadline).await;
    }
    Ok((
        StatusCode::ACCEPTED,
        [(header::RETRY_AFTER, RETRY_AFTER_SECS)],
        Json(json!({"category": category, "status": "pending", "items": []})),
    )
        .into_response())
}

pub async fn item(
    State(state): State<AppState>,
    ApiPath((category, id)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    check_name(&category)?;
    let catalog = state.catalog()?;
    let detail =
        catalog.db.item(&category, &id).await?.ok_or_else(|| {
            ApiError::NotFound(format!("no item {id:?} in category {category:?}"))
        })?;
    // An item exists for clients once it is evaluated (active) or rejected; before that it is
    // pipeline state, not a served item.
    if detail.item.status == ItemStatus::Pending {
        return Err(ApiError::NotFound(format!(
            "item {id:?} of category {category:?} is still being evaluated"
        )));
    }
    let evaluations = &detail.evaluations;
    let eval_mean = (!evaluations.is_empty())
        .then(|| evaluations.iter().map(|e| e.score).sum::<f64>() / evaluations.len() as f64);
    let item = &detail.item;
    let (alpha, beta) = posterior(
        prior(eval_mean, catalog.prior_strength),
        item.selections,
        item.weighted_impressions,
    );
    Ok(Json(json!({
        "id": item.id,
        "category": item.category,
        "text": item.text,
        "status": match item.status {
            ItemStatus::Rejected => "rejected",
            ItemStatus::Active | ItemStatus::Pending => "active",
        },
        "reason": item.reason,
        "score": served_score(alpha / (alpha + beta)),
        "generator": {"provider": item.provider, "model": item.model},
        "created_at": rfc3339(item.created_at_ms),
        "evaluations": detail.evaluations.iter().map(|e| json!({
            "evaluator": e.evaluator,
            "model": e.model,
            "score": e.score,
            "reason": e.reason,
            "created_at": rfc3339(e.created_at_ms),
        })).collect::<Vec<_>>(),
        "impressions": item.impressions,
        "selections": item.selections,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackBody {
    events: Vec<EventBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    item_id: String,
    event: FeedbackKind,
    #[serde(default)]
    position: u32,
}

pub async fn feedback(
    State(state): State<AppState>,
    ApiPath(category): ApiPath<String>,
    JsonBody(body): JsonBody<FeedbackBody>,
) -> ApiResult<Response> {
    check_name(&category)?;
    ApiError::check_limit(body.events.len(), MAX_FEEDBACK_EVENTS, "feedback events")?;
    if body.events.is_empty() {
        return Err(ApiError::BadRequest("events must not be empty".into()));
    }
    let catalog = state.catalog()?;
    if catalog.db.category(&category).await?.is_none() {
        // Every item id is unknown in a category that does not exist.
        return Err(ApiError::BadRequest(format!(
            "category {category:?} does not exist, so it has no item {:?}",
            body.events[0].item_id
        )));
    }
    let at = larder_pipeline::stage::now_ms();
    let events: Vec<FeedbackEvent> = body
        .events
        .into_iter()
        .map(|e| FeedbackEvent {
            weight: position_weight(e.position),
            item_id: e.item_id,
            kind: e.event,
            position: e.position,
            at_ms: at,
        })
        .collect();
    // Durable before we answer: the DB commit is the acknowledgement.
    let accepted = catalog.db.record_feedback(&category, &events).await?;
    catalog.feedback_arrived(&category);
    Ok((StatusCode::ACCEPTED, Json(json!({ "accepted": accepted }))).into_response())
}

pub async fn refresh(
    State(state): State<AppState>,
    ApiPath(category): ApiPath<String>,
) -> ApiResult<Response> {
    check_name(&category)?;
    let catalog = state.catalog()?;
    // Like a request for its items, a refresh of an unknown category registers it.
    if catalog.db.category(&category).await?.is_none() {
        catalog
            .db
            .register_category(&category, None, None, larder_pipeline::stage::now_ms())
            .await?;
    }
    // An explicit refresh may come sooner than the refill cooldown, but not more than once a
    // second, so a client loop cannot flood the providers.
    let queued = catalog
        .queue
        .generation(&category, "refresh", Some(1_000))
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"category": category, "queued": queued})),
    )
        .into_response())
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` from Unix milliseconds. Hand-rolled (Howard Hinnant's
/// civil-from-days) because this one format is all Larder needs from a date crate.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_392_000_123), "2026-11-23T00:00:00.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn category_names_are_bounded() {
        assert!(check_name("이사 준비").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(&"가".repeat(101)).is_err());
        assert!(check_name(&"가".repeat(100)).is_ok());
    }
}
