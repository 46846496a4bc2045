//! The presence tracker: this node's table and batches (`table.rs`, `batch.rs`) over a store
//! that commits the batches and answers snapshots (in memory for one node, or Redis).

use std::sync::Arc;

use async_trait::async_trait;

use super::batch::{Batcher, Commit};
use super::state::Meta;
use super::table::SharedTable;
use super::{Presence, PresenceError, Snapshot};
use crate::pubsub::SubscriberId;

/// Where committed presences live: it numbers batches ([`Commit`]) and reads snapshots.
#[async_trait]
pub(crate) trait Store: Commit {
    /// The topic's snapshot and its number.
    async fn snapshot(&self, topic: &str) -> Snapshot;

    /// The size of what [`Store::snapshot`] would hold.
    async fn count(&self, topic: &str) -> super::Count {
        super::counts::count_state(&self.snapshot(topic).await.state)
    }

    /// Whether this node's presences are removed (with their leaves) when it stops: other
    /// nodes' clients must see them go; a single node's clients go with it.
    fn leaves_on_shutdown(&self) -> bool;

    /// Cleans up the store when the node stops, after the last batch was published.
    async fn shutdown(&self) {}
}

/// Presence tracking over a [`Store`]: the one [`Presence`] implementation.
pub struct Tracker {
    batcher: Arc<Batcher>,
    store: Arc<dyn Store>,
}

impl Tracker {
    /// A tracker whose batches are committed to `store` and broadcast through `pubsub`,
    /// coalesced per `window`.
    pub(crate) fn new<S: Store>(
        table: SharedTable,
        store: Arc<S>,
        pubsub: Arc<dyn crate::pubsub::PubSub>,
        window: std::time::Duration,
    ) -> Self {
        Self {
            batcher: Batcher::new(table, pubsub, store.clone(), window),
            store,
        }
    }
}

#[async_trait]
impl Presence for Tracker {
    async fn track(
        &self,
        topic: &str,
        key: &str,
        owner: SubscriberId,
        meta: Meta,
    ) -> Result<String, PresenceError> {
        self.batcher.track(topic, key, owner, meta)
    }

    async fn update(
        &self,
        topic: &str,
        key: &str,
        owner: SubscriberId,
        meta: Meta,
    ) -> Result<String, PresenceError> {
        self.batcher.update(topic, key, owner, meta)
    }

    async fn untrack(
        &self,
        topic: &str,
        key: &str,
        owner: SubscriberId,
    ) -> Result<(), PresenceError> {
        self.batcher.untrack(topic, key, owner)
    }

    async fn untrack_owner(&self, topic: &str, owner: SubscriberId) {
        self.batcher.untrack_owner(topic, owner);
    }

    async fn snapshot(&self, topic: &str) -> Snapshot {
        self.store.snapshot(topic).await
    }

    async fn count(&self, topic: &str) -> super::Count {
        self.store.count(topic).await
    }

    async fn flushed(&self, topic: &str) {
        self.batcher.flushed(topic).await;
    }

    async fn shutdown(&self) {
        if self.store.leaves_on_shutdown() {
            // Published all at once below, not a window later.
            let _ = self.batcher.table().untrack_all();
        }
        self.batcher.flush_all().await;
        self.store.shutdown().await;
    }
}
