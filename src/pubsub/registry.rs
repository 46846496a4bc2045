//! This node's subscribers by topic, and fastlane delivery.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use indexmap::IndexMap;
use serde_json::Value;

use super::{Broadcast, Subscriber, SubscriberId, Target};
use crate::protocol::{Frame, Outbound, Payload, Serializer};

/// What one dispatch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DispatchStats {
    /// Frames queued straight to sockets (fastlane).
    pub delivered: usize,
    /// Broadcasts handed to channel actors (`handle_out`).
    pub intercepted: usize,
    /// Subscribers that could not take the message (full queue, or unencodable).
    pub dropped: usize,
}

/// A topic's subscribers by id: removal is O(1) (a swap), so a mass disconnect from a big
/// room is O(room), not O(room²), and iteration stays over one contiguous array.
type Subscribers = IndexMap<SubscriberId, Subscriber>;

/// Local subscriptions: topic -> subscribers.
#[derive(Default)]
pub struct Registry {
    topics: RwLock<HashMap<String, Subscribers>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, Subscribers>> {
        // A panic while holding the lock cannot leave the map half-updated (single pushes
        // and removals), so a poisoned lock is still safe to use.
        self.topics.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, Subscribers>> {
        self.topics.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a subscriber; queues `first` to its socket before any dispatch can reach it.
    /// Returns true when it is the topic's first local subscriber.
    pub fn subscribe(&self, topic: &str, sub: Subscriber, first: Option<Frame>) -> bool {
        let mut topics = self.write();
        if let (Some(frame), Target::Socket { outbox, .. }) = (first, &sub.target) {
            outbox.push(frame);
        }
        match topics.get_mut(topic) {
            Some(subs) => {
                subs.insert(sub.id, sub);
                false
            }
            None => {
                topics.insert(topic.to_owned(), IndexMap::from([(sub.id, sub)]));
                true
            }
        }
    }

    /// Removes a subscriber. Returns true when the topic has no local subscriber left.
    pub fn unsubscribe(&self, topic: &str, id: SubscriberId) -> bool {
        self.take_out(topic, id).is_some_and(|(_, emptied)| emptied)
    }

    /// Removes a subscriber; true if it was subscribed.
    pub fn remove(&self, topic: &str, id: SubscriberId) -> bool {
        self.take_out(topic, id).is_some_and(|(removed, _)| removed)
    }

    /// Removes a subscriber of a known topic: (it was there, the topic emptied). Tables
    /// that a peak left mostly empty give their room back.
    fn take_out(&self, topic: &str, id: SubscriberId) -> Option<(bool, bool)> {
        let mut topics = self.write();
        let subs = topics.get_mut(topic)?;
        let removed = subs.swap_remove(&id).is_some();
        let emptied = subs.is_empty();
        if emptied {
            topics.remove(topic);
            crate::shrink::when_sparse(&mut *topics);
        } else {
            crate::shrink::when_sparse(subs);
        }
        Some((removed, emptied))
    }

    /// Number of local subscribers of a topic.
    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.read().get(topic).map_or(0, IndexMap::len)
    }

    /// Number of topics with local subscribers.
    pub fn topic_count(&self) -> usize {
        self.read().len()
    }

    /// Delivers a broadcast to the topic's local subscribers except `from`. The frame is
    /// encoded at most once per serializer; intercepting subscribers get the message through
    /// their actor instead.
    pub fn dispatch(&self, msg: &Arc<Broadcast>, from: Option<SubscriberId>) -> DispatchStats {
        let started = std::time::Instant::now();
        let stats = self.deliver(msg, from);
        if stats.delivered + stats.intercepted + stats.dropped > 0 {
            ::metrics::histogram!(crate::metrics::FANOUT_SECONDS)
                .record(started.elapsed().as_secs_f64());
            ::metrics::counter!(crate::metrics::MESSAGES_OUT, "kind" => "broadcast")
                .increment(stats.delivered as u64);
        }
        stats
    }

    fn deliver(&self, msg: &Arc<Broadcast>, from: Option<SubscriberId>) -> DispatchStats {
        let mut stats = DispatchStats::default();
        let topics = self.read();
        let Some(subs) = topics.get(&msg.topic) else {
            return stats;
        };
        let mut frames: [Option<Option<Frame>>; Serializer::COUNT] = Default::default();
        for sub in subs.values() {
            if Some(sub.id) == from {
                continue;
            }
            let (outbox, intercept, gate) = match &sub.target {
                Target::Socket {
                    outbox,
                    intercept,
                    gate,
                } => (outbox, intercept, gate),
                Target::Inbox(tx) => {
                    if tx.try_send(msg.clone()).is_ok() {
                        stats.intercepted += 1;
                    } else {
                        stats.dropped += 1;
                        tracing::warn!(topic = %msg.topic, "internal inbox full: broadcast dropped");
                    }
                    continue;
                }
            };
            if let Some(icpt) = intercept.as_ref().filter(|i| i.matches(&msg.event)) {
                if icpt.tx.try_send(msg.clone()).is_ok() {
                    stats.intercepted += 1;
                } else {
                    stats.dropped += 1;
                    tracing::warn!(topic = %msg.topic, "channel inbox full: intercepted broadcast dropped");
                }
                continue;
            }
            let serializer = outbox.serializer();
            let frame =
                frames[serializer.index()].get_or_insert_with(|| encode_broadcast(serializer, msg));
            let Some(frame) = frame else {
                stats.dropped += 1;
                continue;
            };
            let queued = match gate {
                Some(gate) => gate.deliver(outbox, msg.seq, msg.position.as_ref(), frame.clone()),
                None => outbox.push(frame.clone()),
            };
            if queued {
                stats.delivered += 1;
            } else {
                stats.dropped += 1;
            }
        }
        stats
    }
}

/// Encodes a broadcast (`join_ref` and `ref` null), or None if this serializer cannot carry it.
pub(crate) fn encode_broadcast(serializer: Serializer, msg: &Broadcast) -> Option<Frame> {
    let null = Value::Null;
    // A history position travels in the ref (phoenix.js hands it to `on` callbacks). A V2
    // binary broadcast frame has no ref: a binary message goes out without its position.
    let position = match (&msg.position, &msg.payload) {
        (Some(p), Payload::Json(_) | Payload::Encoded(_)) => Value::String(p.to_string()),
        _ => Value::Null,
    };
    let out = Outbound::Event {
        join_ref: &null,
        msg_ref: &position,
        topic: &msg.topic,
        event: &msg.event,
        payload: &msg.payload,
    };
    match serializer.encode(&out) {
        Ok(frame) => Some(frame),
        Err(e) => {
            tracing::debug!(error = %e, topic = %msg.topic, "broadcast not encodable for a subscriber");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::outbox;
    use crate::protocol::Payload;
    use crate::pubsub::{next_subscriber_id, Intercept};
    use serde_json::json;
    use tokio::sync::mpsc;

    fn bc(event: &str) -> Arc<Broadcast> {
        Arc::new(Broadcast::new(
            "room:1",
            event,
            Payload::Json(json!({"a": 1})),
        ))
    }

    #[tokio::test]
    async fn fastlane_shares_one_encoding_per_serializer_and_skips_sender() {
        let reg = Registry::new();
        let (a, mut ra) = outbox(Serializer::V2, 8);
        let (b, mut rb) = outbox(Serializer::V2, 8);
        let (c, mut rc) = outbox(Serializer::V1, 8);
        let ids: Vec<_> = (0..3).map(|_| next_subscriber_id()).collect();
        assert!(reg.subscribe("room:1", Subscriber::socket(ids[0], a), None));
        assert!(!reg.subscribe("room:1", Subscriber::socket(ids[1], b), None));
        reg.subscribe("room:1", Subscriber::socket(ids[2], c), None);

        let stats = reg.dispatch(&bc("new_msg"), Some(ids[1]));
        assert_eq!(
            stats,
            DispatchStats {
                delivered: 2,
                intercepted: 0,
                dropped: 0
            }
        );
        let fa = ra.rx.try_recv().expect("a got it");
        assert_eq!(
            fa,
            Frame::Text(r#"[null,null,"room:1","new_msg",{"a":1}]"#.into())
        );
        assert!(rb.rx.try_recv().is_err(), "sender skipped");
        assert_eq!(
            rc.rx.try_recv().expect("c got it"),
            Frame::Text(
                r#"{"event":"new_msg","payload":{"a":1},"ref":null,"topic":"room:1"}"#.into()
            )
        );

        let (sa, sb) = (reg.dispatch(&bc("x"), None), reg.dispatch(&bc("y"), None));
        assert_eq!(sa.delivered + sb.delivered, 6);
        // Frames for the same serializer share one buffer.
        let (Frame::Text(x1), Frame::Text(x2)) =
            (ra.rx.try_recv().unwrap(), rb.rx.try_recv().unwrap())
        else {
            panic!()
        };
        assert_eq!(x1.as_bytes().as_ptr(), x2.as_bytes().as_ptr());

        assert!(!reg.unsubscribe("room:1", ids[0]));
        assert!(!reg.unsubscribe("room:1", ids[1]));
        assert!(reg.unsubscribe("room:1", ids[2]));
        assert_eq!(reg.topic_count(), 0);
    }

    #[tokio::test]
    async fn intercepted_events_go_to_the_actor() {
        let reg = Registry::new();
        let (a, mut ra) = outbox(Serializer::V2, 8);
        let (tx, mut rx) = mpsc::channel(4);
        let events: Arc<[String]> = Arc::from(vec!["user_joined".to_string()]);
        let intercept = Some(Intercept { events, tx });
        let sub = Subscriber {
            id: next_subscriber_id(),
            target: Target::Socket {
                outbox: a,
                intercept,
                gate: None,
            },
        };
        reg.subscribe("room:1", sub, None);
        assert_eq!(reg.dispatch(&bc("user_joined"), None).intercepted, 1);
        assert_eq!(rx.try_recv().expect("actor got it").event, "user_joined");
        assert!(ra.rx.try_recv().is_err());
        assert_eq!(reg.dispatch(&bc("other"), None).delivered, 1);
    }

    #[tokio::test]
    async fn first_frame_precedes_broadcasts() {
        let reg = Registry::new();
        let (a, mut ra) = outbox(Serializer::V2, 8);
        reg.subscribe(
            "room:1",
            Subscriber::socket(next_subscriber_id(), a),
            Some(Frame::Text("first".into())),
        );
        reg.dispatch(&bc("e"), None);
        assert_eq!(ra.rx.try_recv().unwrap(), Frame::Text("first".into()));
    }

    #[tokio::test]
    async fn removing_a_subscriber_keeps_the_others_and_is_idempotent() {
        let reg = Registry::new();
        let ids: Vec<_> = (0..3).map(|_| next_subscriber_id()).collect();
        let mut receivers = Vec::new();
        for id in &ids {
            let (tx, rx) = outbox(Serializer::V2, 8);
            reg.subscribe("room:1", Subscriber::socket(*id, tx), None);
            receivers.push(rx);
        }
        assert!(reg.remove("room:1", ids[1]));
        assert!(!reg.remove("room:1", ids[1]), "already gone");
        assert_eq!(reg.subscriber_count("room:1"), 2);
        assert_eq!(reg.dispatch(&bc("e"), None).delivered, 2);
        assert!(receivers[0].rx.try_recv().is_ok());
        assert!(receivers[1].rx.try_recv().is_err(), "removed");
        assert!(receivers[2].rx.try_recv().is_ok());
    }
}
