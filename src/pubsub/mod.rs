//! Publish/subscribe: delivering broadcasts to the sockets subscribed to a topic.
//!
//! [`PubSub`] is the seam between channels and the cluster. [`LocalPubSub`] delivers within
//! one node (the embedded default); a Redis adapter adds cross-node delivery on top of the
//! same [`Registry`], which holds this node's subscribers and does the fastlane delivery
//! (encode once per serializer, same bytes to every subscriber).

pub mod envelope;
mod gate;
pub mod history;
mod local;
mod numbering;
mod phoenix;
mod phoenix_forward;
pub mod phoenix_frame;
pub mod redis;
mod redis_history;
mod registry;
mod subscriber;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::outbox::Outbox;
use crate::protocol::{Frame, Payload};

pub use self::redis::{RedisPubSub, RedisStats};
pub use gate::Gate;
pub use history::{Position, Replay, Retention, Since};
pub use local::LocalPubSub;
pub use phoenix::PhoenixStats;
pub(crate) use registry::encode_broadcast;
pub use registry::{DispatchStats, Registry};

/// Identifies one subscriber (one channel incarnation, or a socket's id subscription).
pub type SubscriberId = u64;

/// Returns a process-unique subscriber id.
pub fn next_subscriber_id() -> SubscriberId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Where a presence message stands in its topic's sequence of presence changes.
///
/// Every committed change set of a topic's presences gets a number that only grows; a
/// snapshot numbered `n` holds every change numbered `n` or less. A subscriber that was
/// given snapshot `n` must not receive a change numbered `n` or less afterwards: it already
/// has it (see [`Gate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seq {
    /// A `presence_state` holding every change up to this number.
    State(u64),
    /// A `presence_diff` with this number.
    Change(u64),
}

/// A message for every subscriber of a topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Broadcast {
    /// Topic it is published on.
    pub topic: String,
    /// Event name.
    pub event: String,
    /// Payload (a JSON object, or binary).
    pub payload: Payload,
    /// Its place in the topic's presence sequence (presence messages only).
    pub seq: Option<Seq>,
    /// Its place in the topic's history (routes with history), carried in the frame's ref.
    pub position: Option<Position>,
    /// Keep it in the topic's history, within these bounds (set by the route on publish).
    pub retention: Option<Retention>,
}

impl Broadcast {
    /// A broadcast of `event` with `payload` on `topic`.
    pub fn new(topic: impl Into<String>, event: impl Into<String>, payload: Payload) -> Self {
        Self {
            topic: topic.into(),
            event: event.into(),
            payload,
            seq: None,
            position: None,
            retention: None,
        }
    }
}

/// Routes intercepted broadcasts to a subscriber's actor instead of its socket.
#[derive(Clone)]
pub struct Intercept {
    /// Events to intercept.
    pub events: Arc<[String]>,
    /// The actor's inbox for intercepted broadcasts.
    pub tx: mpsc::Sender<Arc<Broadcast>>,
}

impl Intercept {
    /// Whether this subscriber intercepts `event`.
    pub fn matches(&self, event: &str) -> bool {
        self.events.iter().any(|e| e == event)
    }
}

/// Where a subscriber's broadcasts go.
#[derive(Clone)]
pub enum Target {
    /// A channel's socket: the fastlane writes encoded frames to its outbox.
    Socket {
        /// The socket's outbound queue.
        outbox: Outbox,
        /// Events handed to the channel actor (`handle_out`) instead of the fastlane.
        intercept: Option<Intercept>,
        /// Holds fastlane frames until the channel's first snapshot is queued, and keeps
        /// presence changes it already has from reaching it.
        gate: Option<Arc<Gate>>,
    },
    /// A task of the gateway's own (a socket id's `disconnect`, the long-poll relay): every
    /// broadcast as it is, dropped if the inbox is full.
    Inbox(mpsc::Sender<Arc<Broadcast>>),
}

/// A local subscriber of a topic.
#[derive(Clone)]
pub struct Subscriber {
    /// Unique id, used by `broadcast_from` to skip the sender and by `unsubscribe`.
    pub id: SubscriberId,
    /// Where its broadcasts go.
    pub target: Target,
}

impl Subscriber {
    /// A channel's subscription: broadcasts are written to `outbox`.
    pub fn socket(id: SubscriberId, outbox: Outbox) -> Self {
        Self {
            id,
            target: Target::Socket {
                outbox,
                intercept: None,
                gate: None,
            },
        }
    }

    /// A subscription of one of the gateway's tasks.
    pub fn inbox(id: SubscriberId, tx: mpsc::Sender<Arc<Broadcast>>) -> Self {
        Self {
            id,
            target: Target::Inbox(tx),
        }
    }
}

/// Why a subscription could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PubSubError {
    /// The cluster backend is unavailable.
    #[error("pub/sub backend unavailable: {0}")]
    Unavailable(String),
}

/// Topic subscriptions and broadcasts, local or across a cluster.
#[async_trait]
pub trait PubSub: Send + Sync + 'static {
    /// Subscribes `sub` to `topic`. When it returns, every later broadcast on the topic
    /// reaches `sub`. `first` (e.g. a join reply) is queued to the subscriber's socket
    /// atomically with the insert, so it precedes every broadcast the subscriber receives.
    async fn subscribe(
        &self,
        topic: &str,
        sub: Subscriber,
        first: Option<Frame>,
    ) -> Result<(), PubSubError>;

    /// Removes a subscriber. Never blocks.
    fn unsubscribe(&self, topic: &str, id: SubscriberId);

    /// Delivers to every subscriber of the topic on every node, except `from` (the sender of
    /// a `broadcast_from`). Never blocks on the network.
    fn broadcast(&self, msg: Arc<Broadcast>, from: Option<SubscriberId>);

    /// Delivers to this node's subscribers only (e.g. presence diffs, computed per node).
    fn local_broadcast(&self, msg: Arc<Broadcast>, from: Option<SubscriberId>);

    /// Number of this node's subscribers of a topic.
    fn local_subscribers(&self, topic: &str) -> usize;

    /// Reads a topic's history kept with `retention` (see [`Replay`]). Read after
    /// subscribing, so that every message is in the history read or arrives live (or both:
    /// the gate drops what the read already holds).
    async fn history(
        &self,
        topic: &str,
        retention: Retention,
        since: &Since,
    ) -> Result<Replay, PubSubError>;
}
