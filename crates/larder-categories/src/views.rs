//! The in-memory cache of serving views behind [`crate::Categories::items`].
//!
//! Serving a category's top items never touches the DB or the pipeline: it reads a cached
//! view ([`crate::ranking::View`]), which the rank stage writes to the store and
//! announces over pub/sub. A cached view is dropped when its announcement arrives, and re-read
//! after `VIEW_MAX_AGE` at the latest in case an announcement was lost (the stream yields
//! `All` after a reconnect, which clears the cache).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use larder_store::{Invalidation, Store, StoreError};
use tokio::sync::watch;

use crate::names;
use crate::ranking::{served_score, View};

/// A present view is re-read from the store after this long even without an announcement.
const VIEW_MAX_AGE: Duration = Duration::from_secs(5);
/// An absent view is re-checked after this long (and the category's registration with it).
const ABSENT_MAX_AGE: Duration = Duration::from_secs(1);

struct Cached {
    view: Option<Arc<Served>>,
    at: Instant,
}

/// A view ready to answer from: each item's JSON object is rendered once, when the view is
/// loaded, so an answer is a few copies instead of building and serializing JSON values per
/// request (that was most of the endpoint's CPU in `perf`).
pub struct Served {
    pub view: View,
    head: String,
    items: Vec<String>,
}

#[derive(serde::Serialize)]
struct ServedItem<'a> {
    id: &'a str,
    text: &'a str,
    score: f64,
}

impl Served {
    pub fn new(view: View) -> Served {
        let head = format!(
            "{{\"category\":{},\"status\":\"ready\",\"items\":[",
            serde_json::Value::from(view.category.as_str())
        );
        let items = view
            .items
            .iter()
            .map(|item| {
                serde_json::to_string(&ServedItem {
                    id: &item.id,
                    text: &item.text,
                    score: served_score(item.mean()),
                })
                .unwrap_or_default()
            })
            .collect();
        Served { view, head, items }
    }

    /// The `200` body listing the items at `positions`, in that order.
    pub fn render(&self, positions: impl Iterator<Item = usize>) -> Vec<u8> {
        self.render_with(&self.head, positions)
    }

    /// The `200` body of the cold category `category` answered with this view's items, flagged
    /// with the category they are borrowed from.
    pub fn render_borrowed(
        &self,
        category: &str,
        positions: impl Iterator<Item = usize>,
    ) -> Vec<u8> {
        let head = format!(
            "{{\"category\":{},\"status\":\"pending\",\"borrowed_from\":{},\"items\":[",
            serde_json::Value::from(category),
            serde_json::Value::from(self.view.category.as_str())
        );
        self.render_with(&head, positions)
    }

    fn render_with(&self, head: &str, positions: impl Iterator<Item = usize>) -> Vec<u8> {
        let mut out = Vec::with_capacity(head.len() + 64 * 16);
        out.extend_from_slice(head.as_bytes());
        for (n, position) in positions.enumerate() {
            if let Some(item) = self.items.get(position) {
                if n > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(item.as_bytes());
            }
        }
        out.extend_from_slice(b"]}");
        out
    }
}

pub(crate) struct Views {
    store: Arc<dyn Store>,
    cache: quick_cache::sync::Cache<String, Arc<Cached>>,
    /// Bumped on every announcement, so `wait_ms` requests wake up.
    announced: watch::Sender<u64>,
}

/// What `view` found, and whether it came from the store just now.
pub(crate) struct Lookup {
    pub view: Option<Arc<Served>>,
    pub loaded: bool,
}

impl Views {
    pub fn new(store: Arc<dyn Store>) -> Views {
        Views {
            store,
            cache: quick_cache::sync::Cache::new(100_000),
            announced: watch::channel(0).0,
        }
    }

    /// The category's view: from the cache while fresh, else from the store.
    pub async fn view(&self, category: &str) -> Result<Lookup, StoreError> {
        let cached = self.cache.get(category);
        if let Some(cached) = &cached {
            let max_age = if cached.view.is_some() {
                VIEW_MAX_AGE
            } else {
                ABSENT_MAX_AGE
            };
            if cached.at.elapsed() < max_age {
                metrics::counter!(names::VIEW_CACHE, "result" => "hit").increment(1);
                return Ok(Lookup {
                    view: cached.view.clone(),
                    loaded: false,
                });
            }
        }
        metrics::counter!(names::VIEW_CACHE, "result" => "miss").increment(1);
        // An announcement while we read may mean we read the older view: then answer with it,
        // but do not cache it.
        let generation = *self.announced.borrow();
        let view = match self.store.get_view(category).await {
            Ok(bytes) => bytes.and_then(|bytes| match View::decode(&bytes) {
                Ok(view) => Some(Arc::new(Served::new(view))),
                Err(error) => {
                    tracing::error!(category, %error, "undecodable serving view ignored");
                    None
                }
            }),
            // The store is down: keep serving the last view we had.
            Err(error) => match cached.and_then(|c| c.view.clone()) {
                Some(view) => {
                    tracing::debug!(category, %error, "store down; serving the cached view");
                    return Ok(Lookup {
                        view: Some(view),
                        loaded: false,
                    });
                }
                None => return Err(error),
            },
        };
        if *self.announced.borrow() == generation {
            self.cache.insert(
                category.to_string(),
                Arc::new(Cached {
                    view: view.clone(),
                    at: Instant::now(),
                }),
            );
        }
        Ok(Lookup { view, loaded: true })
    }

    /// How many announcements there were so far (any category).
    pub fn published(&self) -> u64 {
        *self.announced.borrow()
    }

    /// Announcements from now on; take this *before* looking at a view, so that one made
    /// in between still wakes [`Self::wait_for_announcement`].
    pub fn announcements(&self) -> watch::Receiver<u64> {
        let mut changes = self.announced.subscribe();
        changes.mark_unchanged();
        changes
    }

    /// Wait until a view is announced (any category) since `changes` was taken, or until
    /// `deadline`.
    pub async fn wait_for_announcement(
        &self,
        mut changes: watch::Receiver<u64>,
        deadline: Instant,
    ) {
        let _ = tokio::time::timeout_at(deadline.into(), changes.changed()).await;
    }

    fn announce(&self, invalidation: Invalidation) {
        match invalidation {
            Invalidation::Category(category) => {
                self.cache.remove(&category);
            }
            Invalidation::All | Invalidation::Lost => self.cache.clear(),
            // Entity writes are the near cache's business.
            Invalidation::Entities { .. } | Invalidation::Namespace(_) => return,
        }
        self.announced.send_modify(|n| *n += 1);
    }

    /// Follow the store's view announcements for as long as the server runs.
    pub async fn follow_announcements(self: Arc<Self>) {
        loop {
            match self.store.invalidations().await {
                Ok(mut stream) => {
                    while let Some(invalidation) = stream.next().await {
                        self.announce(invalidation);
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot follow view announcements; retrying"),
            }
            // The stream ended or could not start: anything may have changed meanwhile.
            self.announce(Invalidation::All);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
