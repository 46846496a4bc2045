//! One node's presences, in memory: the table is the truth, and its numbers are the
//! presence sequence.

use std::sync::Arc;

use async_trait::async_trait;

use super::batch::Commit;
use super::state::Diff;
use super::table::{lock, SharedTable};
use super::tracker::{Store, Tracker};
use super::Snapshot;
use crate::pubsub::PubSub;

/// Commits nothing (a batch is visible once taken from the table) and snapshots the table.
struct MemoryStore {
    table: SharedTable,
}

#[async_trait]
impl Commit for MemoryStore {
    async fn commit(&self, _: &str, _: &Diff, local_seq: u64, _: bool) -> Option<u64> {
        Some(local_seq)
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn snapshot(&self, topic: &str) -> Snapshot {
        let (seq, state) = lock(&self.table).snapshot_text(topic);
        Snapshot {
            seq: Some(seq),
            state,
        }
    }

    async fn count(&self, topic: &str) -> super::Count {
        lock(&self.table).count(topic)
    }

    fn leaves_on_shutdown(&self) -> bool {
        false
    }
}

impl Tracker {
    /// One node's tracker: diffs go to local subscribers through `pubsub`, coalesced per
    /// `window`.
    pub fn in_memory(pubsub: Arc<dyn PubSub>, window: std::time::Duration) -> Self {
        let table = SharedTable::default();
        let store = Arc::new(MemoryStore {
            table: table.clone(),
        });
        Tracker::new(table, store, pubsub, window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::outbox;
    use crate::presence::{Meta, Presence, PresenceError};
    use crate::protocol::{Frame, Serializer};
    use crate::pubsub::{LocalPubSub, Subscriber};
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
        let presence = Tracker::in_memory(pubsub.clone(), std::time::Duration::ZERO);
        let (ob, mut rx) = outbox(Serializer::V2, 16);
        pubsub
            .subscribe("room:1", Subscriber::socket(99, ob), None)
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
