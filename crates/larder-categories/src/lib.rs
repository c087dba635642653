//! # larder-categories
//!
//! The category domain of Larder's pre-generated content: what a category is, how its items
//! are ranked, and every operation the API offers on it. The HTTP crate's handlers only parse,
//! call one method of [`Categories`] and map the answer; the pipeline's rank stage builds its
//! views with [`ranking`] and queues refills through [`Generations`].
//!
//! # Layout
//! - [`ranking`]: the serving [`ranking::View`] and all ranking math (Beta posteriors with an
//!   evaluator prior, position-weighted impressions, Thompson sampling).
//! - [`admission`]: who may create a category and how many (the spend guard).
//! - [`reuse`]: similar-category reuse (a cold category borrows its nearest ready pool) and
//!   the labelled pairs its threshold is chosen on.
//! - [`generations`]: generation claims: claim, queue, and give back on every path.
//! - [`service`]: the [`Categories`] service (register, list, items, item detail, feedback,
//!   refresh, seeding) and the feedback-to-re-rank coalescing.
//! - `views`: the in-memory cache of serving views, kept fresh by the store's announcements.
//! - [`model`]: request and answer types, as the API's JSON bodies.
//! - [`error`]: [`CategoriesError`], what every operation can fail with.

pub mod admission;
pub mod config;
pub mod error;
pub mod generations;
pub mod model;
pub mod ranking;
pub mod reuse;
pub mod service;
mod views;

pub use admission::Admission;
pub use config::CategoriesConfig;
pub use error::CategoriesError;
pub use generations::{Generations, Jobs};
pub use ranking::{Calibration, Evidence, Ranking, View, ViewItem};
pub use reuse::Reuse;
pub use service::{Categories, SeedCategory};

/// Metric names of this crate.
pub mod names {
    /// Category serving-view cache lookups, by `result` (`hit` | `miss`).
    pub const VIEW_CACHE: &str = "larder_view_cache_total";
    /// Similar-category reuse decisions for cold categories, by `result` (`borrowed` | `none`
    /// | `error`); one per cold category per decision period, not per request.
    pub const REUSE: &str = "larder_category_reuse_total";
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
