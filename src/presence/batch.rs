//! Publishing a topic's presence changes: one `presence_diff` per short window.
//!
//! Without batching, N users joining one topic cost N diffs to each of up to N subscribers:
//! O(N²) frames. A topic's first change starts its flush task, which every `window` takes
//! what is pending in the [`Table`], commits it (the tracker numbers it and, in a cluster,
//! writes it to Redis) and broadcasts it as one diff carrying its number; it ends when a
//! window passes without changes. One task per topic keeps the topic's diffs in order.
//! phoenix.js applies a diff's joins before its leaves, and pending changes are net, so an
//! update (leave of the old ref, join of the new one) stays correct.

use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::state::{Diff, Meta};
use super::table::{lock, SharedTable, StartFlush, Table, Taken};
use super::PresenceError;
use crate::protocol::{events, Payload};
use crate::pubsub::SubscriberId;
use crate::pubsub::{Broadcast, PubSub, Seq};

/// Makes a topic's taken changes visible to snapshots, and numbers them.
#[async_trait]
pub(crate) trait Commit: Send + Sync + 'static {
    /// Commits `diff` (numbered `local_seq` by this node's table; `emptied` when this node
    /// has no presence left on the topic); returns the number the diff is published with,
    /// or None if it could not be committed.
    async fn commit(&self, topic: &str, diff: &Diff, local_seq: u64, emptied: bool) -> Option<u64>;
}

/// A tracker's table and the flush tasks of its topics.
pub(crate) struct Batcher {
    table: SharedTable,
    pubsub: Arc<dyn PubSub>,
    commit: Arc<dyn Commit>,
    window: Duration,
}

impl Batcher {
    /// A batcher broadcasting through `pubsub` after `commit`; a zero window publishes each
    /// change as soon as its flush task runs.
    pub(super) fn new(
        table: SharedTable,
        pubsub: Arc<dyn PubSub>,
        commit: Arc<dyn Commit>,
        window: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            table,
            pubsub,
            commit,
            window,
        })
    }

    /// The table (changes made through it must be passed to [`Batcher::changed`]).
    pub(super) fn table(&self) -> MutexGuard<'_, Table> {
        lock(&self.table)
    }

    /// Tracks `key` for `owner` (see [`super::Presence::track`]).
    pub(super) fn track(
        self: &Arc<Self>,
        topic: &str,
        key: &str,
        owner: SubscriberId,
        meta: Meta,
    ) -> Result<String, PresenceError> {
        let (phx_ref, start) = self.table().track(topic, key, owner, meta)?;
        self.changed(topic, start);
        Ok(phx_ref)
    }

    /// Replaces the meta of `owner`'s presence (see [`super::Presence::update`]).
    pub(super) fn update(
        self: &Arc<Self>,
        topic: &str,
        key: &str,
        owner: SubscriberId,
        meta: Meta,
    ) -> Result<String, PresenceError> {
        let (phx_ref, start) = self.table().update(topic, key, owner, meta)?;
        self.changed(topic, start);
        Ok(phx_ref)
    }

    /// Stops tracking `owner`'s presence under `key`.
    pub(super) fn untrack(
        self: &Arc<Self>,
        topic: &str,
        key: &str,
        owner: SubscriberId,
    ) -> Result<(), PresenceError> {
        let start = self.table().untrack(topic, key, owner)?;
        self.changed(topic, start);
        Ok(())
    }

    /// Stops tracking everything `owner` tracks on `topic`.
    pub(super) fn untrack_owner(self: &Arc<Self>, topic: &str, owner: SubscriberId) {
        let start = self.table().untrack_owner(topic, owner);
        self.changed(topic, start);
    }

    /// Starts the topic's flush task if the change asked for it.
    fn changed(self: &Arc<Self>, topic: &str, start: StartFlush) {
        if start.0 {
            tokio::spawn(self.clone().run(topic.to_owned()));
        }
    }

    async fn run(self: Arc<Self>, topic: String) {
        let mut window = self.window;
        loop {
            if !window.is_zero() {
                tokio::time::sleep(window).await;
            }
            let Some(taken) = self.table().take(&topic) else {
                return;
            };
            window = next_window(
                self.window,
                taken.diff.joins.len() + taken.diff.leaves.len(),
            );
            self.publish(&topic, taken).await;
        }
    }

    async fn publish(&self, topic: &str, taken: Taken) {
        let seq = self
            .commit
            .commit(topic, &taken.diff, taken.seq, taken.emptied)
            .await;
        self.table().committed(topic, &taken.diff);
        // A counting room's diff only tells its counters that it changed (they count the
        // store): the joins and leaves of a storm are not built and sent for nobody.
        let payload = if super::counts::is_companion(topic) {
            Payload::empty()
        } else {
            Payload::Json(taken.diff.to_payload())
        };
        let mut msg = Broadcast::new(topic, events::PRESENCE_DIFF, payload);
        msg.seq = seq.map(Seq::Change);
        self.pubsub.broadcast(Arc::new(msg), None);
        for waiter in taken.waiters {
            let _ = waiter.send(());
        }
    }

    /// Waits until the changes pending on `topic` now are published.
    pub(super) async fn flushed(&self, topic: &str) {
        let rx = self.table().wait_flushed(topic);
        if let Some(rx) = rx {
            let _ = rx.await;
        }
    }

    /// Publishes every topic's pending changes now (the node stops).
    pub(super) async fn flush_all(&self) {
        let topics = self.table().topic_names();
        for topic in topics {
            let taken = self.table().take(&topic);
            if let Some(taken) = taken {
                self.publish(&topic, taken).await;
            }
        }
    }
}

/// Changes per window below which the window stays at its base.
const CALM_CHANGES: usize = 64;

/// How much longer than its base a window may grow in a storm.
const MAX_STRETCH: u32 = 8;

/// The window after a batch of `changes`: the base while a room is calm, longer in a storm
/// (up to 8× the base, 200 ms by default), so that a join storm of N members costs each
/// member a bounded number of diff frames, not one per base window; back to the base once
/// the storm passes.
fn next_window(base: Duration, changes: usize) -> Duration {
    let stretch = (changes / CALM_CHANGES).clamp(1, MAX_STRETCH as usize) as u32;
    base * stretch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::outbox;
    use crate::protocol::{Frame, Serializer};
    use crate::pubsub::{LocalPubSub, Subscriber};
    use serde_json::{json, Value};

    struct Numbered;

    #[async_trait]
    impl Commit for Numbered {
        async fn commit(&self, _: &str, _: &Diff, local_seq: u64, _: bool) -> Option<u64> {
            Some(local_seq)
        }
    }

    #[tokio::test]
    async fn a_storm_of_changes_becomes_one_numbered_diff() {
        let pubsub = Arc::new(LocalPubSub::new());
        let (ob, mut rx) = outbox(Serializer::V2, 16);
        let sub = Subscriber::socket(1, ob);
        pubsub.subscribe("t", sub, None).await.unwrap();
        let batcher = Batcher::new(
            SharedTable::default(),
            pubsub,
            Arc::new(Numbered),
            Duration::from_millis(20),
        );
        let meta = |v: Value| v.as_object().cloned().unwrap();
        for i in 0..50 {
            batcher
                .track("t", &format!("u{i}"), i, meta(json!({})))
                .unwrap();
        }
        batcher.untrack("t", "u0", 0).unwrap();
        assert!(rx.rx.try_recv().is_err(), "nothing before the window ends");
        batcher.flushed("t").await;
        let Frame::Text(t) = rx.rx.try_recv().expect("one diff") else {
            panic!()
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(v[4]["joins"].as_object().map(|o| o.len()), Some(49));
        assert_eq!(
            v[4]["leaves"],
            json!({}),
            "u0 came and went within the window"
        );
        assert!(rx.rx.try_recv().is_err(), "exactly one frame");
    }

    #[test]
    fn windows_stretch_with_the_storm_and_come_back() {
        let base = Duration::from_millis(25);
        assert_eq!(next_window(base, 0), base);
        assert_eq!(
            next_window(base, 63),
            base,
            "a calm room keeps the base window"
        );
        assert_eq!(next_window(base, 128), base * 2);
        assert_eq!(next_window(base, 15_000), base * 8, "bounded");
        assert_eq!(
            next_window(Duration::ZERO, 15_000),
            Duration::ZERO,
            "zero stays zero"
        );
    }
}
