//! What the stages of this process are doing, for people watching (`GET /v1/events`, the
//! operator page): a stage started, finished or failed a job, an answer was filtered (kept
//! and rejected by reason), a serving view was published, item vectors were stored.
//!
//! One process-wide broadcast channel: stages publish without knowing who listens (a send
//! with no subscriber costs an event's construction and nothing else), and each subscriber
//! gets every event from when it subscribed. A subscriber that falls more than
//! [`CAPACITY`] events behind skips the oldest (the page shows live progress, not a log).
//!
//! Between processes (stages in `larder worker` processes, any number of `serve`s), events
//! travel on the broker's fan-out topic [`TOPIC`]: every process hands its own stages' events
//! to the broker ([`relay_out`]) and `serve` publishes the other processes' events into its own
//! bus ([`relay_in`]), so `GET /v1/events` on any `serve` streams the whole pipeline. Each
//! message names its process, so a process skips its own. With the in-memory broker there is
//! only one process, and no relay.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use larder_broker::Broker;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

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
    /// An event of another process, relayed in ([`relay_in`]): streamed as it was sent.
    Relayed(Relayed),
}

/// Another process's event: its name (one of this build's) and its fields, unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct Relayed {
    name: &'static str,
    data: serde_json::Map<String, serde_json::Value>,
}

impl Serialize for Relayed {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.data.serialize(serializer)
    }
}

/// The names of the events this build knows; a relayed event must have one (it becomes the
/// SSE `event:` line, which must not hold a line break).
const NAMES: [&str; 4] = ["stage", "filtered", "view", "embedded"];

impl Event {
    /// The SSE `event:` name.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Stage { .. } => "stage",
            Event::Filtered { .. } => "filtered",
            Event::View { .. } => "view",
            Event::Embedded { .. } => "embedded",
            Event::Relayed(relayed) => relayed.name,
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

/// The broker topic events travel on between processes.
pub const TOPIC: &str = "events";
/// Relayed events that could not be handed to the broker (it was unreachable).
const RELAY_FAILED: &str = "larder_events_relay_failed_total";

/// One event between processes: who sent it, its name and its fields.
#[derive(Serialize)]
struct Outgoing<'a> {
    origin: &'a str,
    event: &'static str,
    data: &'a Event,
}

#[derive(Deserialize)]
struct Incoming {
    origin: String,
    event: String,
    data: serde_json::Map<String, serde_json::Value>,
}

/// This process, as named in the events it relays: unique per process start.
fn origin() -> &'static str {
    static ORIGIN: OnceLock<String> = OnceLock::new();
    ORIGIN.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!("{}-{nanos:09}", std::process::id())
    })
}

fn encode(event: &Event) -> Option<Vec<u8>> {
    serde_json::to_vec(&Outgoing {
        origin: origin(),
        event: event.name(),
        data: event,
    })
    .ok()
}

/// Another process's event from a broker message; `None` for this process's own, and for
/// what is not an event of this build (another version, or not Larder's).
fn decode(payload: &[u8]) -> Option<Event> {
    let incoming: Incoming = serde_json::from_slice(payload).ok()?;
    if incoming.origin == origin() {
        return None;
    }
    let name = NAMES.into_iter().find(|n| *n == incoming.event)?;
    Some(Event::Relayed(Relayed {
        name,
        data: incoming.data,
    }))
}

/// Hand every event this process's stages publish from now on to `broker`, until the task is
/// aborted. Stages never wait for it: a broker that is down costs the events published
/// meanwhile (counted in `larder_events_relay_failed_total`), never a stage's time.
pub fn relay_out(broker: Arc<dyn Broker>) -> JoinHandle<()> {
    let mut events = subscribe();
    tokio::spawn(async move {
        loop {
            let event = match events.recv().await {
                // Another process's: it was broadcast by its own process.
                Ok(Event::Relayed(_)) => continue,
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    metrics::counter!(RELAY_FAILED).increment(missed);
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let Some(payload) = encode(&event) else {
                continue;
            };
            if let Err(error) = broker.broadcast(TOPIC, &payload).await {
                metrics::counter!(RELAY_FAILED).increment(1);
                tracing::debug!(%error, "cannot relay a pipeline event");
            }
        }
    })
}

/// Publish, into this process's bus, every event other processes relay out from now on, until
/// the task is aborted. Rides out broker outages (the listen is retried with backoff).
pub fn relay_in(broker: Arc<dyn Broker>) -> JoinHandle<()> {
    const FIRST_BACKOFF: Duration = Duration::from_millis(100);
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    tokio::spawn(async move {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match broker.listen(TOPIC).await {
                Ok(mut messages) => {
                    backoff = FIRST_BACKOFF;
                    while let Some(payload) = messages.next().await {
                        if let Some(event) = decode(&payload) {
                            publish(event);
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, ?backoff, "cannot follow other processes' pipeline events; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_of_other_processes_decode_and_this_processs_own_are_skipped() {
        let view = Event::View {
            category: "이사".into(),
            items: 3,
            at_ms: 1,
        };
        let ours = encode(&view).expect("encode");
        assert_eq!(decode(&ours), None, "a process skips its own events");

        let mut theirs: serde_json::Value = serde_json::from_slice(&ours).expect("json");
        theirs["origin"] = "4242-000000001".into();
        let relayed = decode(&serde_json::to_vec(&theirs).expect("json")).expect("decoded");
        assert_eq!(relayed.name(), "view");
        assert_eq!(
            serde_json::to_value(&relayed).expect("json"),
            serde_json::to_value(&view).expect("json"),
            "streamed as it was sent"
        );

        theirs["event"] = "view\nevent: forged".into();
        assert_eq!(decode(&serde_json::to_vec(&theirs).expect("json")), None);
        assert_eq!(decode(b"not json"), None);
    }

    #[tokio::test]
    async fn relays_carry_events_between_processes_and_never_echo() {
        // One in-memory broker stands for Redis; messages with another origin stand for
        // another process.
        let broker = larder_broker::memory(larder_broker::BrokerOptions::default());
        let mut wire = broker.listen(TOPIC).await.expect("listen");
        let mut local = subscribe();
        let (out, inward) = (relay_out(broker.clone()), relay_in(broker.clone()));
        let theirs = serde_json::to_vec(&serde_json::json!({
            "origin": "4242-000000001",
            "event": "view",
            "data": {"category": "from a worker", "items": 7, "at_ms": 5},
        }))
        .expect("json");
        // relay_in subscribes in its own task: send until it has.
        let relayed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                broker.broadcast(TOPIC, &theirs).await.expect("broadcast");
                let deadline = tokio::time::sleep(Duration::from_millis(50));
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        event = local.recv() => match event {
                            Ok(event @ Event::Relayed(_)) => return event,
                            _ => continue,
                        },
                        _ = &mut deadline => break,
                    }
                }
            }
        })
        .await
        .expect("relayed in within 5 s");
        assert_eq!(relayed.name(), "view");
        assert_eq!(
            serde_json::to_value(&relayed).expect("json"),
            serde_json::json!({"category": "from a worker", "items": 7, "at_ms": 5})
        );

        // This process's own event goes out, named as ours; what came in is not sent again.
        publish(Event::stage("generate", "relay test", "started"));
        let ours = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(payload) = wire.next().await {
                let sent: serde_json::Value = serde_json::from_slice(&payload).expect("json");
                if sent["data"]["category"] == "from a worker" {
                    assert_ne!(
                        sent["origin"],
                        origin(),
                        "a relayed-in event went out again"
                    );
                }
                if sent["data"]["category"] == "relay test" {
                    return sent;
                }
            }
            panic!("the wire ended");
        })
        .await
        .expect("relayed out within 5 s");
        assert_eq!(ours["event"], "stage", "{ours}");
        assert_eq!(ours["origin"], origin(), "{ours}");
        out.abort();
        inward.abort();
    }

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
