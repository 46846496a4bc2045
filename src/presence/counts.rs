//! Count-only presence (`presence = "counts"`): members of a huge room learn how many are
//! there, `presence_count` `{"users": U, "connections": C}`, instead of who.
//!
//! A counting room's presences are tracked under a companion topic
//! (`phx_internal:count:<topic>`), so their diffs never reach the members: on each node one
//! task per counting room subscribes to the companion, and when a diff (from any node) says
//! the room changed, counts the room in its store (`Presence::count`: in place, no snapshot
//! built) and pushes the count to the node's members, at most once per interval and only
//! when it changed. Users are distinct presence keys, connections are presences, over every
//! node: the store is the cluster's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::Presence;
use crate::protocol::{events, Payload, INTERNAL_PREFIX};
use crate::pubsub::{next_subscriber_id, Broadcast, PubSub, Subscriber, SubscriberId};

/// How long a joiner waits for a room's first count before it gets none.
const FIRST_COUNT_WAIT: Duration = Duration::from_secs(5);
/// A room without change notices is counted again after this long.
const RECOUNT_QUIET_ROOMS: Duration = Duration::from_secs(10);
/// Change notices queued for a room's task; more are not needed (one means "changed").
const NOTICES: usize = 1024;

/// The topic under which a counting room's presences are tracked.
pub fn companion(topic: &str) -> String {
    format!("{INTERNAL_PREFIX}count:{topic}")
}

/// Whether `topic` is a counting room's companion.
pub fn is_companion(topic: &str) -> bool {
    topic
        .strip_prefix(INTERNAL_PREFIX)
        .is_some_and(|t| t.starts_with("count:"))
}

/// A room's size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Count {
    /// Distinct presence keys.
    pub users: u64,
    /// Presences (one per joined channel that tracks).
    pub connections: u64,
}

/// Counts a `presence_state` payload (`{"key": {"metas": [...]}}`) without keeping it.
pub fn count_state(state: &str) -> Count {
    #[derive(Deserialize)]
    struct Entry {
        metas: Vec<IgnoredAny>,
    }
    match serde_json::from_str::<HashMap<&str, Entry>>(state) {
        Ok(map) => Count {
            users: map.len() as u64,
            connections: map.values().map(|e| e.metas.len() as u64).sum(),
        },
        Err(e) => {
            tracing::warn!(error = %e, "presence snapshot not countable");
            Count::default()
        }
    }
}

type Notices = mpsc::Sender<Arc<Broadcast>>;

/// One counting room on this node.
struct Room {
    /// The room's topic, shared with its watches.
    name: Arc<str>,
    watchers: usize,
    latest: watch::Receiver<Option<Count>>,
    stop: CancellationToken,
}

/// This node's counting rooms.
pub struct Counts {
    pubsub: Arc<dyn PubSub>,
    presence: Arc<dyn Presence>,
    rooms: Mutex<HashMap<String, Room>>,
}

impl Counts {
    /// Counting over `presence`, pushing counts through `pubsub`.
    pub fn new(pubsub: Arc<dyn PubSub>, presence: Arc<dyn Presence>) -> Arc<Self> {
        Arc::new(Self {
            pubsub,
            presence,
            rooms: Mutex::default(),
        })
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<String, Room>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The room's count now, read from its snapshot (`topic` is the room, not the companion).
    pub async fn count(&self, topic: &str) -> Count {
        self.presence.count(&companion(topic)).await
    }

    /// Watches `topic` while the returned guard lives: this node then pushes the room's count
    /// to its local members whenever it changes, at most once per `interval`.
    pub fn watch(self: &Arc<Self>, topic: &str, interval: Duration) -> Watch {
        let mut rooms = self.rooms();
        let (name, latest) = match rooms.get_mut(topic) {
            Some(room) => {
                room.watchers += 1;
                (room.name.clone(), room.latest.clone())
            }
            None => {
                let (tx, rx) = watch::channel(None);
                let (notices, notices_rx) = mpsc::channel(NOTICES);
                let stop = CancellationToken::new();
                tokio::spawn(self.clone().run(
                    topic.to_owned(),
                    interval,
                    (next_subscriber_id(), notices, notices_rx),
                    tx,
                    stop.clone(),
                ));
                let name: Arc<str> = Arc::from(topic);
                rooms.insert(
                    topic.to_owned(),
                    Room {
                        name: name.clone(),
                        watchers: 1,
                        latest: rx.clone(),
                        stop,
                    },
                );
                (name, rx)
            }
        };
        Watch {
            counts: self.clone(),
            topic: name,
            latest,
        }
    }

    fn unwatch(&self, topic: &str) {
        let mut rooms = self.rooms();
        let Some(room) = rooms.get_mut(topic) else {
            return;
        };
        room.watchers -= 1;
        if room.watchers == 0 {
            if let Some(room) = rooms.remove(topic) {
                room.stop.cancel();
            }
        }
    }

    /// A room's task: count after every change, at most once per interval, and push the
    /// count to the local members when it differs from the last one pushed.
    async fn run(
        self: Arc<Self>,
        topic: String,
        interval: Duration,
        (id, tx, notices): (SubscriberId, Notices, mpsc::Receiver<Arc<Broadcast>>),
        latest: watch::Sender<Option<Count>>,
        stop: CancellationToken,
    ) {
        // Subscribed before the first count, so that a change after it is noticed; never
        // interrupted, so that the subscription is always undone below.
        let room = companion(&topic);
        if let Err(e) = self
            .pubsub
            .subscribe(&room, Subscriber::inbox(id, tx), None)
            .await
        {
            tracing::warn!(error = %e, topic, "presence counts not subscribed");
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = self.push_counts(&topic, interval, notices, latest) => {}
        }
        self.pubsub.unsubscribe(&room, id);
    }

    async fn push_counts(
        &self,
        topic: &str,
        interval: Duration,
        mut notices: mpsc::Receiver<Arc<Broadcast>>,
        latest: watch::Sender<Option<Count>>,
    ) {
        let mut pushed: Option<Count> = None;
        loop {
            let count = self.count(topic).await;
            latest.send_replace(Some(count));
            if pushed != Some(count) {
                pushed = Some(count);
                let msg = Broadcast::new(
                    topic.to_owned(),
                    events::PRESENCE_COUNT,
                    Payload::Json(json!(count)),
                );
                ::metrics::counter!(crate::metrics::PRESENCE_COUNTS).increment(1);
                self.pubsub.local_broadcast(Arc::new(msg), None);
            }
            tokio::time::sleep(interval).await;
            // Wait for a change, then take every notice queued with it. A quiet room is
            // counted again now and then too: a notice lost with a Redis connection must not
            // leave a wrong count standing.
            if let Ok(None) = tokio::time::timeout(RECOUNT_QUIET_ROOMS, notices.recv()).await {
                return;
            }
            while notices.try_recv().is_ok() {}
        }
    }
}

/// A member's interest in a counting room (see [`Counts::watch`]).
pub struct Watch {
    counts: Arc<Counts>,
    topic: Arc<str>,
    latest: watch::Receiver<Option<Count>>,
}

impl Watch {
    /// The room's latest count, waiting (bounded) for the first one.
    pub async fn current(&self) -> Option<Count> {
        let mut latest = self.latest.clone();
        let found = tokio::time::timeout(FIRST_COUNT_WAIT, latest.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|c| *c);
        found
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.counts.unwatch(&self.topic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn companions_are_recognised() {
        assert!(is_companion(&companion("room:big")));
        assert!(!is_companion("room:big"));
        assert!(!is_companion("phx_internal:lp:node"));
    }

    #[test]
    fn users_are_keys_and_connections_are_metas() {
        let state = r#"{"a":{"metas":[{"phx_ref":"1"},{"phx_ref":"2"}]},"b":{"metas":[{}]}}"#;
        assert_eq!(
            count_state(state),
            Count {
                users: 2,
                connections: 3
            }
        );
        assert_eq!(count_state("{}"), Count::default());
        assert_eq!(count_state("not json"), Count::default());
    }
}
