//! Announcements that a category's serving view changed, fanned out in-process.
//!
//! Every backend funnels announcements (its own writes on the embedded store, pub/sub messages
//! on Redis) into one [`Announcer`], a `tokio::sync::broadcast` channel; every
//! [`crate::Store::invalidations`] call gets its own receiver. A broadcast channel rather than
//! one mpsc per listener because a slow listener must not hold up the others: it lags, and a
//! lagged listener is told to drop everything ([`Invalidation::All`]) instead of the missed names.

use futures::stream::{BoxStream, StreamExt};
use tokio::sync::broadcast;

/// What a serving node must drop from its view cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// A new view of this category was written.
    Category(String),
    /// Announcements may have been missed (the subscription reconnected, or this listener fell
    /// behind): every cached view is suspect.
    All,
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
}
