//! What the stages of this process are doing, for people watching (`GET /v1/events`, the
//! operator page): a stage started, finished or failed a job, an answer was filtered (kept
//! and rejected by reason), a serving view was published, item vectors were stored.
//!
//! One process-wide broadcast channel: stages publish without knowing who listens (a send
//! with no subscriber costs an event's construction and nothing else), and each subscriber
//! gets every event from when it subscribed. A subscriber that falls more than
//! [`CAPACITY`] events behind skips the oldest (the page shows live progress, not a log).
//! Stages running in worker processes publish in their own process.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::stage::now_ms;

/// Events a slow subscriber may fall behind by before it skips.
pub const CAPACITY: usize = 1024;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Event {
    /// A stage `started`, `finished` or `failed` a job of `category`.
    Stage {
        stage: &'static str,
        category: String,
        state: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        at_ms: i64,
    },
    /// One generator answer went through the filter: `kept` new items, `rejected` by reason.
    Filtered {
        category: String,
        provider: String,
        kept: u64,
        rejected: BTreeMap<&'static str, u64>,
        at_ms: i64,
    },
    /// A serving view of `items` items was published for `category`.
    View {
        category: String,
        items: usize,
        at_ms: i64,
    },
    /// `items` new item vectors of `category` were stored in `namespace`.
    Embedded {
        category: String,
        namespace: String,
        items: usize,
        at_ms: i64,
    },
}

impl Event {
    /// The SSE `event:` name.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Stage { .. } => "stage",
            Event::Filtered { .. } => "filtered",
            Event::View { .. } => "view",
            Event::Embedded { .. } => "embedded",
        }
    }

    pub fn stage(stage: &'static str, category: &str, state: &'static str) -> Event {
        Event::Stage {
            stage,
            category: category.to_owned(),
            state,
            error: None,
            at_ms: now_ms(),
        }
    }
}

fn bus() -> &'static broadcast::Sender<Event> {
    static BUS: OnceLock<broadcast::Sender<Event>> = OnceLock::new();
    BUS.get_or_init(|| broadcast::channel(CAPACITY).0)
}

/// Tell whoever listens.
pub fn publish(event: Event) {
    // An error only means nobody listens right now.
    let _ = bus().send(event);
}

/// Every event published from now on.
pub fn subscribe() -> broadcast::Receiver<Event> {
    bus().subscribe()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_get_what_is_published_after_they_subscribe() {
        publish(Event::stage("rank", "before", "started"));
        let mut events = subscribe();
        let view = Event::View {
            category: "이사".into(),
            items: 3,
            at_ms: 1,
        };
        publish(view.clone());
        assert_eq!(events.recv().await.expect("event"), view);
        assert_eq!(view.name(), "view");
        assert_eq!(
            serde_json::to_value(&view).expect("json"),
            serde_json::json!({"category": "이사", "items": 3, "at_ms": 1})
        );
    }
}
