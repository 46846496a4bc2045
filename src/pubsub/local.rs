//! Single-node pub/sub: the embedded default when no Redis is configured.

use std::sync::Arc;

use async_trait::async_trait;

use super::history::MemoryHistory;
use super::{
    Broadcast, PubSub, PubSubError, Registry, Replay, Retention, Since, Subscriber, SubscriberId,
};
use crate::protocol::Frame;

/// In-memory pub/sub for one node.
#[derive(Default)]
pub struct LocalPubSub {
    registry: Registry,
    history: MemoryHistory,
}

impl LocalPubSub {
    /// A pub/sub with no subscribers.
    pub fn new() -> Self {
        Self::default()
    }

    /// The local subscriber registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

#[async_trait]
impl PubSub for LocalPubSub {
    async fn subscribe(
        &self,
        topic: &str,
        sub: Subscriber,
        first: Option<Frame>,
    ) -> Result<(), PubSubError> {
        self.registry.subscribe(topic, sub, first);
        Ok(())
    }

    fn unsubscribe(&self, topic: &str, id: SubscriberId) {
        self.registry.unsubscribe(topic, id);
    }

    fn broadcast(&self, msg: Arc<Broadcast>, from: Option<SubscriberId>) {
        match msg.retention {
            Some(retention) => {
                self.history.append(&msg, retention, |stored| {
                    self.registry.dispatch(stored, from);
                });
                ::metrics::counter!(crate::metrics::HISTORY_APPENDS, "result" => "ok").increment(1);
            }
            None => {
                self.registry.dispatch(&msg, from);
            }
        }
    }

    fn local_broadcast(&self, msg: Arc<Broadcast>, from: Option<SubscriberId>) {
        self.registry.dispatch(&msg, from);
    }

    fn local_subscribers(&self, topic: &str) -> usize {
        self.registry.subscriber_count(topic)
    }

    async fn history(
        &self,
        topic: &str,
        retention: Retention,
        since: &Since,
    ) -> Result<Replay, PubSubError> {
        Ok(self.history.read(topic, retention, since))
    }
}
