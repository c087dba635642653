//! Announcements that something a serving node caches changed, fanned out in-process: a
//! category's serving view (the view cache) or entities (the near cache,
//! [`crate::near::NearCache`]).
//!
//! Every backend funnels announcements (its own writes on the embedded store, pub/sub messages
//! on Redis) into one [`Announcer`], a `tokio::sync::broadcast` channel; every
//! [`crate::Store::invalidations`] call gets its own receiver. A broadcast channel rather than
//! one mpsc per listener because a slow listener must not hold up the others: it lags, and a
//! lagged listener is told to drop everything ([`Invalidation::All`]) instead of the missed names.

use futures::stream::{BoxStream, StreamExt};
use tokio::sync::broadcast;

/// What a serving node must drop from its caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// A new view of this category was written.
    Category(String),
    /// These entities of namespace `ns` were written or deleted.
    Entities { ns: String, keys: Vec<String> },
    /// Any entity of namespace `ns` may have changed (a field was dropped, the namespace was
    /// deleted).
    Namespace(String),
    /// The subscription was lost: nothing will be announced until it is back, so nothing
    /// cached may be trusted or kept meanwhile. [`Invalidation::All`] follows once it is back.
    Lost,
    /// Announcements may have been missed (the subscription reconnected, or this listener fell
    /// behind): everything cached is suspect.
    All,
}

/// The message Larder publishes on [`crate::keys::ENTITY_INVALIDATE_CHANNEL`] after a write:
/// JSON, because entity keys are arbitrary UTF-8 (newlines included). `keys` absent means the
/// whole namespace.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct EntityMessage<'a> {
    #[serde(borrow)]
    pub ns: std::borrow::Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<std::borrow::Cow<'a, str>>>,
}

impl EntityMessage<'_> {
    /// The message for `keys` of `ns` (`None`: the whole namespace).
    pub(crate) fn encode<'k>(ns: &str, keys: Option<impl Iterator<Item = &'k str>>) -> Vec<u8> {
        let message = EntityMessage {
            ns: ns.into(),
            keys: keys.map(|keys| keys.map(Into::into).collect()),
        };
        // Serialising strings into a Vec cannot fail.
        serde_json::to_vec(&message).unwrap_or_default()
    }

    pub(crate) fn decode(payload: &[u8]) -> Option<Invalidation> {
        let message: EntityMessage = serde_json::from_slice(payload).ok()?;
        Some(match message.keys {
            Some(keys) => Invalidation::Entities {
                ns: message.ns.into_owned(),
                keys: keys.into_iter().map(|k| k.into_owned()).collect(),
            },
            None => Invalidation::Namespace(message.ns.into_owned()),
        })
    }
}

/// Announcements buffered per listener before it counts as lagging. A burst of this many view
/// writes between two polls of a listener is far beyond what the rank stage produces.
const CAPACITY: usize = 1024;

/// The sending side of the in-process fan-out; cloning shares the channel.
#[derive(Debug, Clone)]
pub(crate) struct Announcer {
    tx: broadcast::Sender<Invalidation>,
}

impl Announcer {
    pub(crate) fn new() -> Self {
        let (tx, _) = broadcast::channel(CAPACITY);
        Announcer { tx }
    }

    /// Tell every current listener. Having no listener is normal (nobody caches views).
    pub(crate) fn announce(&self, invalidation: Invalidation) {
        let _ = self.tx.send(invalidation);
    }

    /// A stream of every announcement from now on. It ends when every [`Announcer`] clone is
    /// gone, i.e. when the store that owns them is dropped.
    pub(crate) fn listen(&self) -> BoxStream<'static, Invalidation> {
        futures::stream::unfold(self.tx.subscribe(), |mut rx| async move {
            match rx.recv().await {
                Ok(invalidation) => Some((invalidation, rx)),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "view invalidation listener lagged; invalidating all"
                    );
                    Some((Invalidation::All, rx))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fans_out_and_ends_with_the_last_sender() {
        let announcer = Announcer::new();
        let mut a = announcer.listen();
        let mut b = announcer.listen();
        announcer.announce(Invalidation::Category("이사 준비".into()));
        for stream in [&mut a, &mut b] {
            assert_eq!(
                stream.next().await,
                Some(Invalidation::Category("이사 준비".into()))
            );
        }
        drop(announcer);
        assert_eq!(a.next().await, None);
        assert_eq!(b.next().await, None);
    }

    #[tokio::test]
    async fn a_lagging_listener_is_told_to_drop_everything() {
        let announcer = Announcer::new();
        let mut slow = announcer.listen();
        for i in 0..CAPACITY + 5 {
            announcer.announce(Invalidation::Category(format!("c{i}")));
        }
        assert_eq!(slow.next().await, Some(Invalidation::All));
        // It then carries on with what is still buffered.
        assert!(matches!(slow.next().await, Some(Invalidation::Category(_))));
    }

    #[test]
    fn entity_messages_round_trip_any_key() {
        let keys = ["user:42", "줄\n바꿈", "{tag}"];
        let payload = EntityMessage::encode("users", Some(keys.iter().copied()));
        assert_eq!(
            EntityMessage::decode(&payload),
            Some(Invalidation::Entities {
                ns: "users".into(),
                keys: keys.iter().map(|k| k.to_string()).collect()
            })
        );
        let payload = EntityMessage::encode("users", None::<std::iter::Empty<&str>>);
        assert_eq!(
            EntityMessage::decode(&payload),
            Some(Invalidation::Namespace("users".into()))
        );
        assert_eq!(EntityMessage::decode(b"not json"), None);
    }
}
