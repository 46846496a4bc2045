//! Coalescing of a topic's presence changes into one `presence_diff` per short window.
//!
//! Without it, N users joining one topic cost N diffs to each of up to N subscribers: O(N²)
//! frames. With it, a join storm costs one diff per window per subscriber. phoenix.js applies
//! a diff's joins before its leaves, so a join and a leave of the same presence within one
//! window still end with the presence gone, and an update (leave of the old ref, join of the
//! new one) stays correct.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Diff;
use crate::protocol::{events, Payload};
use crate::pubsub::{Broadcast, PubSub};

/// Collects diffs per topic and broadcasts them merged after `window`.
pub struct DiffBatcher {
    pubsub: Arc<dyn PubSub>,
    window: Duration,
    pending: Mutex<HashMap<String, Diff>>,
}

impl DiffBatcher {
    /// A batcher broadcasting through `pubsub`; a zero window broadcasts every diff at once.
    pub fn new(pubsub: Arc<dyn PubSub>, window: Duration) -> Arc<Self> {
        Arc::new(Self {
            pubsub,
            window,
            pending: Mutex::new(HashMap::new()),
        })
    }

    /// Queues a diff for `topic`. The first diff of a window schedules the flush.
    pub fn push(self: &Arc<Self>, topic: &str, diff: Diff) {
        if diff.is_empty() {
            return;
        }
        if self.window.is_zero() || tokio::runtime::Handle::try_current().is_err() {
            return self.send(topic, &diff);
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match pending.get_mut(topic) {
            Some(queued) => {
                queued.joins.extend(diff.joins);
                queued.leaves.extend(diff.leaves);
            }
            None => {
                pending.insert(topic.to_owned(), diff);
                let (me, topic) = (self.clone(), topic.to_owned());
                tokio::spawn(async move {
                    tokio::time::sleep(me.window).await;
                    me.flush(&topic);
                });
            }
        }
    }

    /// Broadcasts what is queued for `topic` now.
    pub fn flush(&self, topic: &str) {
        let diff = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(topic);
        if let Some(diff) = diff {
            self.send(topic, &diff);
        }
    }

    /// Broadcasts everything queued (before shutting down).
    pub fn flush_all(&self) {
        let all: Vec<(String, Diff)> = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (topic, diff) in all {
            self.send(&topic, &diff);
        }
    }

    fn send(&self, topic: &str, diff: &Diff) {
        let msg = Broadcast {
            topic: topic.to_owned(),
            event: events::PRESENCE_DIFF.to_owned(),
            payload: Payload::Json(diff.to_payload()),
        };
        self.pubsub.broadcast(Arc::new(msg), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Frame, Serializer};
    use crate::pubsub::{LocalPubSub, Subscriber};
    use crate::socket::outbox;
    use serde_json::{json, Value};

    #[tokio::test]
    async fn a_storm_of_changes_becomes_one_diff() {
        let pubsub = Arc::new(LocalPubSub::new());
        let (ob, mut rx) = outbox(Serializer::V2, 16);
        pubsub
            .subscribe(
                "t",
                Subscriber {
                    id: 1,
                    outbox: ob,
                    intercept: None,
                },
                None,
            )
            .await
            .unwrap();
        let batcher = DiffBatcher::new(pubsub, Duration::from_millis(20));
        let meta = |r: &str| json!({"phx_ref": r}).as_object().cloned().unwrap();
        for i in 0..50 {
            batcher.push(
                "t",
                Diff {
                    joins: vec![(format!("u{i}"), meta(&format!("r{i}")))],
                    leaves: vec![],
                },
            );
        }
        batcher.push(
            "t",
            Diff {
                joins: vec![],
                leaves: vec![("u0".into(), meta("r0"))],
            },
        );
        assert!(rx.rx.try_recv().is_err(), "nothing before the window ends");
        tokio::time::sleep(Duration::from_millis(60)).await;
        let Frame::Text(t) = rx.rx.try_recv().expect("one diff") else {
            panic!()
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(v[4]["joins"].as_object().map(|o| o.len()), Some(50));
        assert_eq!(v[4]["leaves"]["u0"]["metas"][0]["phx_ref"], "r0");
        assert!(rx.rx.try_recv().is_err(), "exactly one frame");
    }
}
