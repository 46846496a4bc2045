//! Presence: who is on a topic, kept in sync on clients with `presence_state` and
//! `presence_diff`.
//!
//! [`Presence`] is the seam. [`Tracker`] implements it once: this node's presences and their
//! batched diffs (`table.rs`, `batch.rs`) over a store, in memory for one node
//! ([`Tracker::in_memory`], the embedded default) or in Redis for a cluster
//! ([`redis::start`]).

mod batch;
pub mod counts;
mod memory;
pub mod redis;
pub mod state;
mod table;
mod tracker;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::pubsub::SubscriberId;

pub use self::counts::{Count, Counts};
pub use self::redis::PresenceStats;
pub use state::{Diff, Meta};
pub use tracker::Tracker;

/// A topic's presences at one point of its presence sequence.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The number of the last change it holds; None when unknown (the backend failed and
    /// the snapshot holds only this node's presences).
    pub seq: Option<u64>,
    /// The `presence_state` payload as JSON text, encoded once: a join storm sends one
    /// snapshot to many joiners, and each of them only copies it into its frame.
    pub state: Arc<str>,
}

/// Why a presence operation failed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PresenceError {
    /// The same owner already tracks this key on this topic.
    #[error("already tracked")]
    AlreadyTracked,
    /// Nothing is tracked for this owner and key on this topic.
    #[error("no presence")]
    NoPresence,
    /// The backend is unavailable.
    #[error("presence backend unavailable: {0}")]
    Unavailable(String),
}

/// A presence tracker. An owner is a channel incarnation; its presences end with it.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Tracks `key` on `topic` for `owner` with `meta`; returns the new `phx_ref`. Emits a
    /// `presence_diff` join.
    async fn track(
        &self,
        topic: &str,
        key: &str,
        owner: SubscriberId,
        meta: Meta,
    ) -> Result<String, PresenceError>;

    /// Replaces the meta of a tracked presence (new `phx_ref`, `phx_ref_prev` = old). Emits
    /// one `presence_diff` with the leave of the old meta and the join of the new one.
    async fn update(
        &self,
        topic: &str,
        key: &str,
        owner: SubscriberId,
        meta: Meta,
    ) -> Result<String, PresenceError>;

    /// Stops tracking `key` for `owner`. Emits a `presence_diff` leave.
    async fn untrack(
        &self,
        topic: &str,
        key: &str,
        owner: SubscriberId,
    ) -> Result<(), PresenceError>;

    /// Stops tracking everything `owner` tracks on `topic` (the channel ended).
    async fn untrack_owner(&self, topic: &str, owner: SubscriberId);

    /// The topic's `presence_state` and its place in the topic's presence sequence. A
    /// subscriber given this snapshot must then get exactly the diffs numbered after it.
    async fn snapshot(&self, topic: &str) -> Snapshot;

    /// The `presence_state` payload of a topic: `{"key": {"metas": [...]}}`.
    async fn list(&self, topic: &str) -> Value {
        let snapshot = self.snapshot(topic).await;
        serde_json::from_str(&snapshot.state).unwrap_or_else(|_| Value::Object(Default::default()))
    }

    /// The size of a topic's presence: distinct keys and presences, as its snapshot holds
    /// them (without building the snapshot where the store can count in place).
    async fn count(&self, topic: &str) -> Count {
        counts::count_state(&self.snapshot(topic).await.state)
    }

    /// Waits until this node's changes on `topic` made so far are published (so that a
    /// snapshot taken after holds them).
    async fn flushed(&self, topic: &str);

    /// Removes this node's presences (with their leaves) before the node stops.
    async fn shutdown(&self) {}
}
