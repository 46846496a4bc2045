//! In-memory presence for one node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use serde_json::Value;

use super::batch::DiffBatcher;
use super::state::{group, new_phx_ref, updated_meta, Diff, Meta};
use super::{Presence, PresenceError};
use crate::pubsub::{PubSub, SubscriberId};

struct Entry {
    key: String,
    owner: SubscriberId,
    meta: Meta,
}

/// Presences of one node, held in memory. Diffs are broadcast to local subscribers.
pub struct MemoryPresence {
    diffs: Arc<DiffBatcher>,
    topics: Mutex<HashMap<String, Vec<Entry>>>,
    node_tag: u16,
}

impl MemoryPresence {
    /// A tracker that publishes its diffs through `pubsub`, coalesced per `batch` window.
    pub fn new(pubsub: Arc<dyn PubSub>, batch: std::time::Duration) -> Self {
        Self {
            diffs: DiffBatcher::new(pubsub, batch),
            topics: Mutex::new(HashMap::new()),
            node_tag: rand::random(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<Entry>>> {
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a diff. Called with the lock held so that diffs leave in the order of the
    /// changes.
    fn emit(&self, topic: &str, diff: &Diff) {
        self.diffs.push(topic, diff.clone());
    }
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn track(
        &self,
        topic: &str,
        key: &str,
        owner: SubscriberId,
        mut meta: Meta,
    ) -> Result<String, PresenceError> {
        let mut topics = self.lock();
        let entries = topics.entry(topic.to_owned()).or_default();
        if entries.iter().any(|e| e.owner == owner && e.key == key) {
            return Err(PresenceError::AlreadyTracked);
        }
        let phx_ref = new_phx_ref(self.node_tag);
        meta.remove("phx_ref_prev");
        meta.insert("phx_ref".into(), Value::String(phx_ref.clone()));
        let diff = Diff {
            joins: vec![(key.to_owned(), meta.clone())],
            leaves: vec![],
        };
        entries.push(Entry {
            key: key.to_owned(),
            owner,
            meta,
        });
        ::metrics::gauge!(crate::metrics::PRESENCE_ENTRIES).increment(1.0);
        self.emit(topic, &diff);
        Ok(phx_ref)
    }

    async fn update(
        &self,
        topic: &str,
        key: &str,
        owner: SubscriberId,
        meta: Meta,
    ) -> Result<String, PresenceError> {
        let mut topics = self.lock();
        let entry = topics
            .get_mut(topic)
            .and_then(|es| es.iter_mut().find(|e| e.owner == owner && e.key == key))
            .ok_or(PresenceError::NoPresence)?;
        let phx_ref = new_phx_ref(self.node_tag);
        let new = updated_meta(&entry.meta, meta, phx_ref.clone());
        let old = std::mem::replace(&mut entry.meta, new.clone());
        let diff = Diff {
            joins: vec![(key.to_owned(), new)],
            leaves: vec![(key.to_owned(), old)],
        };
        self.emit(topic, &diff);
        Ok(phx_ref)
    }

    async fn untrack(
        &self,
        topic: &str,
        key: &str,
        owner: SubscriberId,
    ) -> Result<(), PresenceError> {
        let mut topics = self.lock();
        let entries = topics.get_mut(topic).ok_or(PresenceError::NoPresence)?;
        let pos = entries
            .iter()
            .position(|e| e.owner == owner && e.key == key)
            .ok_or(PresenceError::NoPresence)?;
        let gone = entries.remove(pos);
        ::metrics::gauge!(crate::metrics::PRESENCE_ENTRIES).decrement(1.0);
        if entries.is_empty() {
            topics.remove(topic);
        }
        self.emit(
            topic,
            &Diff {
                joins: vec![],
                leaves: vec![(gone.key, gone.meta)],
            },
        );
        Ok(())
    }

    async fn untrack_owner(&self, topic: &str, owner: SubscriberId) {
        let mut topics = self.lock();
        let Some(entries) = topics.get_mut(topic) else {
            return;
        };
        let mut leaves = Vec::new();
        entries.retain_mut(|e| {
            if e.owner == owner {
                leaves.push((std::mem::take(&mut e.key), std::mem::take(&mut e.meta)));
                false
            } else {
                true
            }
        });
        if entries.is_empty() {
            topics.remove(topic);
        }
        ::metrics::gauge!(crate::metrics::PRESENCE_ENTRIES).decrement(leaves.len() as f64);
        self.emit(
            topic,
            &Diff {
                joins: vec![],
                leaves,
            },
        );
    }

    async fn list(&self, topic: &str) -> Value {
        let topics = self.lock();
        match topics.get(topic) {
            Some(entries) => group(entries.iter().map(|e| (e.key.as_str(), &e.meta))),
            None => Value::Object(Default::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Frame, Serializer};
    use crate::pubsub::{LocalPubSub, Subscriber};
    use crate::socket::outbox;
    use serde_json::json;

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
                },
                None,
            )
            .await
            .unwrap();

        let r1 = presence
            .track("room:1", "alice", 1, meta(json!({"online_at": "1"})))
            .await
            .unwrap();
        let r2 = presence
            .track("room:1", "alice", 2, meta(json!({"online_at": "2"})))
            .await
            .unwrap();
        assert_eq!(
            presence.track("room:1", "alice", 1, Meta::new()).await,
            Err(PresenceError::AlreadyTracked)
        );
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
        let d = text(rx.rx.try_recv().unwrap());
        assert_eq!(
            d[4],
            json!({"joins": {}, "leaves": {"alice": {"metas": [{"online_at": "1", "phx_ref": r1}]}}})
        );
        presence.untrack("room:1", "alice", 2).await.unwrap();
        rx.rx.try_recv().unwrap();
        assert_eq!(presence.list("room:1").await, json!({}));
        assert!(rx.rx.try_recv().is_err());
    }
}
