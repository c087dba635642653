//! [`Categories`]: every operation on categories the API offers, each one method.
//!
//! Handlers parse a request, call one method and map its answer or its
//! [`CategoriesError`] to HTTP; the rules (names, limits, what registers a category, when
//! generation is queued) live here.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use larder_db::{Db, FeedbackEvent, ItemStatus};
use larder_store::Store;
use tokio::sync::Notify;

use crate::admission::{Admission, Via};
use crate::error::{CategoriesError, Result};
use crate::generations::Generations;
use crate::model::{
    Accepted, CategoryEntry, CategoryList, CategoryStatus, Evaluated, FeedbackRequest, Generator,
    ItemAnswer, ItemsAnswer, ItemsRequest, Pending, Refreshed, RegisterRequest, Registered,
};
use crate::now_ms;
use crate::ranking::{position_weight, score_interval, served_score, Evidence, Ranking};
use crate::reuse::Reuse;
use crate::views::{Served, Views};

/// The longest a request may wait for a pending category's first items.
pub const MAX_WAIT_MS: u64 = 30_000;
/// Feedback events in one request.
pub const MAX_FEEDBACK_EVENTS: usize = 1000;
/// The most items one request may ask for.
pub const MAX_LIMIT: usize = 100;
/// Feedback on one category within this window becomes one re-rank.
const RANK_COALESCE: Duration = Duration::from_millis(100);
/// An explicit refresh may come sooner than the refill cooldown, but not more than once a
/// second, so a client loop cannot flood the providers.
const REFRESH_GAP_MS: i64 = 1_000;

/// A category seeded on an empty DB (the offline demo).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedCategory {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub locale: Option<String>,
}

pub struct Categories {
    db: Db,
    generations: Generations,
    ranking: Ranking,
    admission: Admission,
    /// Similar-category reuse, when `categories.reuse_provider` is set.
    reuse: Option<Reuse>,
    views: Arc<Views>,
    dirty: Mutex<HashSet<String>>,
    dirty_notify: Notify,
}

impl Categories {
    pub fn new(
        db: Db,
        store: Arc<dyn Store>,
        generations: Generations,
        ranking: Ranking,
        admission: Admission,
        reuse: Option<Reuse>,
    ) -> Arc<Categories> {
        Arc::new(Categories {
            db,
            generations,
            ranking,
            admission,
            reuse,
            views: Arc::new(Views::new(store)),
            dirty: Mutex::new(HashSet::new()),
            dirty_notify: Notify::new(),
        })
    }

    /// `PUT /v1/categories/{c}`: register (or update nothing of) a category and queue its
    /// generation at once when new, else at most once per cooldown. A new category must pass
    /// the [`Admission`] guards for `client` (a key naming the caller, never a secret).
    pub async fn register(
        &self,
        category: &str,
        request: RegisterRequest,
        client: &str,
    ) -> Result<Registered> {
        check_name(category)?;
        if let Some(locale) = &request.locale {
            let ok = !locale.is_empty()
                && locale.len() <= 16
                && locale
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !ok {
                return Err(CategoriesError::BadRequest(format!(
                    "locale must be a language tag like \"ko\" or \"en-US\", got {locale:?}"
                )));
            }
        }
        if let Some(description) = &request.description {
            check_text("description", description)?;
        }
        if request
            .description
            .as_ref()
            .is_some_and(|d| d.chars().count() > 1000)
        {
            return Err(CategoriesError::BadRequest(
                "description is limited to 1000 characters".into(),
            ));
        }
        if self.db.category(category).await?.is_none() {
            self.admit(client, Via::Write, category).await?;
        }
        let created = self
            .db
            .register_category(
                category,
                request.description.as_deref(),
                request.locale.as_deref(),
                now_ms(),
            )
            .await?;
        let queued = self
            .generations
            .queue(category, "registered", created.then_some(0))
            .await?;
        Ok(Registered {
            category: category.to_string(),
            created,
            queued,
        })
    }

    /// `GET /v1/categories`.
    pub async fn list(&self) -> Result<CategoryList> {
        let categories = self
            .db
            .categories()
            .await?
            .into_iter()
            .map(|c| CategoryEntry {
                status: if c.pool_size > 0 {
                    CategoryStatus::Ready
                } else {
                    CategoryStatus::Pending
                },
                name: c.name,
                pool_size: c.pool_size,
                evaluated: c.evaluated,
                description: c.description,
                locale: c.locale,
            })
            .collect();
        Ok(CategoryList { categories })
    }

    /// `GET /v1/categories/{c}/items`: the top items from the cached view, or pending. A
    /// category found without a view is registered if unknown and has generation queued (at
    /// most once per cooldown, so pending requests cannot storm the providers), when the
    /// [`Admission`] guards let `client` create it by reading.
    pub async fn items(
        &self,
        category: &str,
        request: ItemsRequest,
        client: &str,
    ) -> Result<ItemsAnswer> {
        check_name(category)?;
        let limit = request.limit.unwrap_or(10);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(CategoriesError::BadRequest(format!(
                "limit must be 1..={MAX_LIMIT}, got {limit}"
            )));
        }
        let wait_ms = request.wait_ms.unwrap_or(0);
        if wait_ms > MAX_WAIT_MS {
            return Err(CategoriesError::BadRequest(format!(
                "wait_ms must be at most {MAX_WAIT_MS}, got {wait_ms}"
            )));
        }
        let explore = request.explore.unwrap_or(true);
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        loop {
            let changes = self.views.announcements();
            let lookup = self.views.view(category).await?;
            if let Some(served) = lookup.view.filter(|s| !s.view.items.is_empty()) {
                let positions = shown(&served, limit, explore);
                return Ok(ItemsAnswer::Ready(served.render(positions.into_iter())));
            }
            if lookup.loaded {
                self.ensure_and_queue(category, "requested", None, (client, Via::Read))
                    .await?;
            } else if !self.admission.reads_register()
                && self.db.category(category).await?.is_none()
            {
                // The view cache remembers that there is no view, not whether the category
                // exists: without registering reads, every read of an unknown name is a 404.
                self.admission.admit(client, Via::Read, 0, category)?;
            }
            // Registered and cold: a similar category's pool serves at once, flagged, rather
            // than a wait for this one's.
            if let Some(borrowed) = self.borrowed(category).await {
                let positions = shown(&borrowed, limit, explore);
                return Ok(ItemsAnswer::Ready(
                    borrowed.render_borrowed(category, positions.into_iter()),
                ));
            }
            if Instant::now() >= deadline {
                break;
            }
            self.views.wait_for_announcement(changes, deadline).await;
        }
        Ok(ItemsAnswer::Pending(Pending::new(category)))
    }

    /// `GET /v1/categories/{c}/items/{id}`: an item with its provenance, feedback and score.
    /// An item exists for clients once it is evaluated (active) or rejected; before that it is
    /// pipeline state, not a served item.
    pub async fn item(&self, category: &str, id: &str) -> Result<ItemAnswer> {
        check_name(category)?;
        check_text("item ids", id)?;
        let detail = self.db.item(category, id).await?.ok_or_else(|| {
            CategoriesError::NotFound(format!("no item {id:?} in category {category:?}"))
        })?;
        if detail.item.status == ItemStatus::Pending {
            return Err(CategoriesError::NotFound(format!(
                "item {id:?} of category {category:?} is still being evaluated"
            )));
        }
        let evaluations = &detail.evaluations;
        let eval_mean = (!evaluations.is_empty())
            .then(|| evaluations.iter().map(|e| e.score).sum::<f64>() / evaluations.len() as f64);
        let item = detail.item;
        // The prior is fitted to the category's active items, as the rank stage fits it.
        let inputs = self.db.rank_inputs(category).await?;
        let (alpha, beta) = self.ranking.calibrate_active(&inputs).posterior(&Evidence {
            eval_mean,
            selections: item.selections,
            weighted_impressions: item.weighted_impressions,
        });
        Ok(ItemAnswer {
            status: match item.status {
                ItemStatus::Rejected => "rejected",
                ItemStatus::Active | ItemStatus::Pending => "active",
            },
            score: served_score(alpha / (alpha + beta)),
            interval: score_interval(alpha, beta),
            generator: Generator {
                provider: item.provider,
                model: item.model,
            },
            created_at: rfc3339(item.created_at_ms),
            evaluations: detail
                .evaluations
                .into_iter()
                .map(|e| Evaluated {
                    evaluator: e.evaluator,
                    model: e.model,
                    score: e.score,
                    reason: e.reason,
                    created_at: rfc3339(e.created_at_ms),
                })
                .collect(),
            impressions: item.impressions,
            selections: item.selections,
            id: item.id,
            category: item.category,
            text: item.text,
            reason: item.reason,
        })
    }

    /// `POST /v1/categories/{c}/feedback`: durable before it answers (the DB commit is the
    /// acknowledgement); the category is re-ranked soon after (coalesced).
    pub async fn record_feedback(
        &self,
        category: &str,
        request: FeedbackRequest,
    ) -> Result<Accepted> {
        check_name(category)?;
        if request.events.len() > MAX_FEEDBACK_EVENTS {
            return Err(CategoriesError::TooLarge(format!(
                "{} feedback events; the limit is {MAX_FEEDBACK_EVENTS}",
                request.events.len()
            )));
        }
        for event in &request.events {
            check_text("item_id", &event.item_id)?;
        }
        let Some(first) = request.events.first() else {
            return Err(CategoriesError::BadRequest(
                "events must not be empty".into(),
            ));
        };
        if self.db.category(category).await?.is_none() {
            // Every item id is unknown in a category that does not exist.
            return Err(CategoriesError::BadRequest(format!(
                "category {category:?} does not exist, so it has no item {:?}",
                first.item_id
            )));
        }
        let at = now_ms();
        let events: Vec<FeedbackEvent> = request
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
        let accepted = self.db.record_feedback(category, &events).await?;
        self.mark_dirty(category);
        Ok(Accepted { accepted })
    }

    /// `POST /v1/categories/{c}/refresh`: like a request for its items, a refresh of an
    /// unknown category registers it (as a write: the [`Admission`] cap and rate apply).
    pub async fn refresh(&self, category: &str, client: &str) -> Result<Refreshed> {
        check_name(category)?;
        let queued = self
            .ensure_and_queue(
                category,
                "refresh",
                Some(REFRESH_GAP_MS),
                (client, Via::Write),
            )
            .await?;
        Ok(Refreshed {
            category: category.to_string(),
            queued,
        })
    }

    /// Register the example categories on a DB that has none (the offline demo), and queue
    /// their generation. Failures only log: the server serves regardless.
    pub async fn seed(&self, seeds: &[SeedCategory]) {
        if seeds.is_empty() {
            return;
        }
        match self.db.categories().await {
            Ok(existing) if existing.is_empty() => {}
            Ok(_) => return,
            Err(error) => {
                tracing::warn!(%error, "cannot read categories; not seeding");
                return;
            }
        }
        for seed in seeds {
            let request = RegisterRequest {
                description: seed.description.clone(),
                locale: seed.locale.clone(),
            };
            match self.register(&seed.name, request, "seed").await {
                Ok(_) => tracing::info!(category = %seed.name, "seeded example category"),
                Err(error) => {
                    tracing::warn!(category = %seed.name, %error, "cannot seed category")
                }
            }
        }
    }

    /// The ready view of the category cold `category` may borrow from (similar-category
    /// reuse), if reuse is on and one is similar enough.
    async fn borrowed(&self, category: &str) -> Option<Arc<Served>> {
        let published = self.views.published();
        let source = self
            .reuse
            .as_ref()?
            .source(&self.db, category, published)
            .await?;
        match self.views.view(&source).await {
            Ok(lookup) => lookup.view.filter(|s| !s.view.items.is_empty()),
            Err(error) => {
                tracing::debug!(category, source, %error, "cannot read the view to borrow");
                None
            }
        }
    }

    /// The one "register the category if missing, then queue generation" (new categories at
    /// once, others after `min_gap_ms` or the cooldown). `client` asks, by reading or writing.
    async fn ensure_and_queue(
        &self,
        category: &str,
        reason: &str,
        min_gap_ms: Option<i64>,
        (client, via): (&str, Via),
    ) -> Result<bool> {
        let created = self.db.category(category).await?.is_none() && {
            self.admit(client, via, category).await?;
            self.db
                .register_category(category, None, None, now_ms())
                .await?
        };
        let gap = if created { Some(0) } else { min_gap_ms };
        self.generations.queue(category, reason, gap).await
    }

    /// The [`Admission`] guards for a new category. The count is read first and the insert
    /// follows, so concurrent registrations may pass `max` by the number in flight.
    async fn admit(&self, client: &str, via: Via, category: &str) -> Result<()> {
        let existing = self.db.category_count().await?;
        self.admission.admit(client, via, existing, category)
    }

    fn mark_dirty(&self, category: &str) {
        let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        if dirty.insert(category.to_string()) {
            self.dirty_notify.notify_one();
        }
    }

    /// Queue one re-rank per category that got feedback, at most every `RANK_COALESCE`:
    /// a burst of feedback costs one rank job, not one per event. The feedback itself is
    /// already durable in the DB; a re-rank lost to a crash is redone by the next one.
    pub async fn rank_dirty(self: Arc<Self>) {
        loop {
            self.dirty_notify.notified().await;
            tokio::time::sleep(RANK_COALESCE).await;
            let categories: Vec<String> = {
                let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
                dirty.drain().collect()
            };
            for category in categories {
                if let Err(error) = self.generations.jobs().rank(&category).await {
                    tracing::warn!(category = %category, %error, "cannot queue re-rank after feedback; will retry");
                    // Keep it dirty: the next round (or the next feedback) tries again.
                    self.mark_dirty(&category);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Follow the store's view announcements for as long as the server runs.
    pub async fn follow_announcements(self: Arc<Self>) {
        self.views.clone().follow_announcements().await
    }
}

/// The view positions one answer shows: a Thompson sample when exploring, else the top.
fn shown(served: &Served, limit: usize, explore: bool) -> Vec<usize> {
    if explore {
        served.view.sample_indices(limit, &mut rand::rng())
    } else {
        (0..limit.min(served.view.items.len())).collect()
    }
}

/// Category names are any UTF-8 of 1..=100 characters but control characters.
fn check_name(category: &str) -> Result<()> {
    let chars = category.chars().count();
    if chars == 0 || chars > 100 {
        return Err(CategoriesError::BadRequest(format!(
            "category names are 1 to 100 characters; got {chars}"
        )));
    }
    if category.chars().any(char::is_control) {
        return Err(CategoriesError::BadRequest(
            "category names must not contain control characters".into(),
        ));
    }
    Ok(())
}

/// Text the main DB stores must not hold NUL: PostgreSQL's text cannot, and SQLite would
/// keep what PostgreSQL refuses, so both refuse it here alike.
fn check_text(what: &str, text: &str) -> Result<()> {
    if text.contains('\0') {
        return Err(CategoriesError::BadRequest(format!(
            "{what} must not contain NUL (U+0000)"
        )));
    }
    Ok(())
}

/// RFC 3339 in UTC with milliseconds (`2026-11-23T00:00:00.123Z`) from Unix milliseconds.
fn rfc3339(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(at) => format!("{at:.3}"),
        // Outside jiff's range (years -9999..=9999): not a time Larder ever stores.
        Err(_) => String::new(),
    }
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
        assert!(check_name("a\u{0}b").is_err());
        assert!(check_name("line\nbreak").is_err());
        assert!(check_text("item_id", "a\u{0}").is_err());
        assert!(check_text("item_id", "ok").is_ok());
    }
}
