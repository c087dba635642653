//! # larder-db
//!
//! Larder's main database: the categories of pre-generated content, their items, the
//! evaluations of those items and the feedback events that rank them. A SQLite file by default,
//! PostgreSQL by URL, behind one code path: sqlx's `AnyPool`, portable SQL with `$1, $2, …`
//! placeholders, times as BIGINT unix milliseconds, floats as DOUBLE PRECISION.
//!
//! ```no_run
//! # async fn demo() -> larder_db::Result<()> {
//! let db = larder_db::Db::connect(&"sqlite://larder-data/larder.db".parse()?).await?;
//! let created = db.register_category("이사 준비", Some("moving checklist"), Some("ko"), 0).await?;
//! # let _ = created;
//! # Ok(())
//! # }
//! ```
//!
//! ## Layout
//!
//! - `connect.rs`: [`Db`] on a [`DbUrl`] (parsed in `larder-url`), the pool, SQLite pragmas
//!   (WAL, `synchronous=FULL`, 5 s busy timeout) and the schema with its version check.
//! - `categories.rs`: registering and listing categories, the generation cooldown claim.
//! - `items.rs`: items and evaluations, the dedup pool and the ranking inputs.
//! - `feedback.rs`: feedback events, validated whole and committed before returning.
//! - `budget.rs`: each provider's daily spend, so a budget caps every process on this DB.
//! - `model.rs`: the row types; `sql.rs`: placeholder building and row decoding;
//!   `error.rs`: [`DbError`] and how sqlx errors map onto it.
//!
//! ## Concurrency
//!
//! Several processes may share one SQLite file: WAL lets readers run beside the one writer,
//! write transactions start with `BEGIN IMMEDIATE` so they queue on the busy timeout instead of
//! failing half way, and the claim/insert operations are single statements whose `WHERE`/
//! `ON CONFLICT` decide races. `sqlite::memory:` uses a single-connection pool, since every
//! connection to `:memory:` would otherwise see its own empty database.

mod budget;
mod categories;
mod connect;
mod error;
mod feedback;
mod items;
mod model;
mod sql;

pub use budget::Spend;
pub use connect::Db;
pub use error::{DbError, Result};
pub use larder_url::DbUrl;
pub use model::{
    Category, CategorySummary, Evaluation, FeedbackEvent, FeedbackKind, Item, ItemDetail,
    ItemStatus, NewItem, RankInput,
};
