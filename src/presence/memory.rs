//! In-memory presence for one node.

use std::sync::Arc;

use async_trait::async_trait;

use super::batch::{Batcher, InMemory};
use super::state::Meta;
use super::{Presence, PresenceError, Snapshot};
use crate::pubsub::{PubSub, SubscriberId};

/// Presences of one node, held in memory. Diffs are broadcast to local subscribers.
pub struct MemoryPresence {
    batcher: Arc<Batcher>,
}

impl MemoryPresence {
    /// A tracker that publishes its diffs through `pubsub`, coalesced per `batch` window.
    pub fn new(pubsub: Arc<dyn PubSub>, batch: std::time::Duration) -> Self {
        Self {
            batcher: Batcher::new(pubsub, Arc::new(InMemory), batch),
        }
    }
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn track(
        &self,
        topic: &str,
        key: &str,
        owner: SubscriberId,
        meta: Meta,
    ) -> Result<String, PresenceError> {
        let (phx_ref, start) = self.batcher.table().track(topic, key, owner, meta)?;
        self.batcher.changed(topic, start);
        Ok(phx_ref)
    }

    async fn update(
        &self,
        topic: &str,
        key: &str,
        owner: SubscriberId,
        meta: Meta,
    ) -> Result<String, PresenceError> {
        let (phx_ref, start) = self.batcher.table().update(topic, key, owner, meta)?;
        self.batcher.changed(topic, start);
        Ok(phx_ref)
    }

    async fn untrack(
        &self,
        topic: &str,
        key: &str,
        owner: SubscriberId,
    ) -> Result<(), PresenceError> {
        let start = self.batcher.table().untrack(topic, key, owner)?;
        self.batcher.changed(topic, start);
        Ok(())
    }

    async fn untrack_owner(&self, topic: &str, owner: SubscriberId) {
        let start = self.batcher.table().untrack_owner(topic, owner);
        self.batcher.changed(topic, start);
    }

    async fn snapshot(&self, topic: &str) -> Snapshot {
        let (seq, state) = self.batcher.table().snapshot(topic);
        Snapshot {
            seq: Some(seq),
            state: Arc::from(state.to_string()),
        }
    }

    async fn flushed(&self, topic: &str) {
        self.batcher.flushed(topic).await;
    }

    async fn shutdown(&self) {
        self.batcher.flush_all().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Frame, Serializer};
    use crate::pubsub::{LocalPubSub, Subscriber};
    use crate::socket::outbox;
    use serde_json::{json, Value};

    fn meta(v: Value) -> Meta {
        v.as_object().cloned().expect("object")
    }

    fn text(f: Frame) -> Value {
        let Frame::Text(s) = f else { panic!("text") };
        serde_json::from_str(&s).expect("json")
    }

    #[tokio::test]
    async fn track_update_untrack_emit_phoenix_diffs() {
        let pubsub = Arc::new(LocalPubSub::new());
        let presence = MemoryPresence::new(pubsub.clone(), std::time::Duration::ZERO);
        let (ob, mut rx) = outbox(Serializer::V2, 16);
        pubsub
            .subscribe(
                "room:1",
                Subscriber {
                    id: 99,
                    outbox: ob,
                    intercept: None,
                    gate: None,
                },
                None,
            )
            .await
            .unwrap();

        let r1 = presence
            .track("room:1", "alice", 1, meta(json!({"online_at": "1"})))
            .await
            .unwrap();
        presence.flushed("room:1").await;
        let r2 = presence
            .track("room:1", "alice", 2, meta(json!({"online_at": "2"})))
            .await
            .unwrap();
        assert_eq!(
            presence.track("room:1", "alice", 1, Meta::new()).await,
            Err(PresenceError::AlreadyTracked)
        );
        presence.flushed("room:1").await;
        let d1 = text(rx.rx.try_recv().unwrap());
        assert_eq!(
            d1,
            json!([null, null, "room:1", "presence_diff", {"joins": {"alice": {"metas": [{"online_at": "1", "phx_ref": r1}]}}, "leaves": {}}])
        );
        rx.rx.try_recv().unwrap();

        let state = presence.list("room:1").await;
        assert_eq!(state["alice"]["metas"].as_array().map(Vec::len), Some(2));

        let r3 = presence
            .update(
                "room:1",
                "alice",
                2,
                meta(json!({"online_at": "2", "status": "away"})),
            )
            .await
            .unwrap();
        presence.flushed("room:1").await;
        let d = text(rx.rx.try_recv().unwrap());
        assert_eq!(
            d[4]["joins"]["alice"]["metas"][0]["phx_ref_prev"],
            json!(r2)
        );
        assert_eq!(d[4]["joins"]["alice"]["metas"][0]["phx_ref"], json!(r3));
        assert_eq!(d[4]["leaves"]["alice"]["metas"][0]["phx_ref"], json!(r2));
        assert_eq!(
            presence.update("room:1", "bob", 2, Meta::new()).await,
            Err(PresenceError::NoPresence)
        );

        presence.untrack_owner("room:1", 1).await;
        presence.flushed("room:1").await;
        let d = text(rx.rx.try_recv().unwrap());
        assert_eq!(
            d[4],
            json!({"joins": {}, "leaves": {"alice": {"metas": [{"online_at": "1", "phx_ref": r1}]}}})
        );
        presence.untrack("room:1", "alice", 2).await.unwrap();
        presence.flushed("room:1").await;
        rx.rx.try_recv().unwrap();
        assert_eq!(presence.list("room:1").await, json!({}));
        assert!(rx.rx.try_recv().is_err());
    }
}
