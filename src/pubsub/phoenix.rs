//! Joining a Phoenix app's broadcasts through Phoenix.PubSub.Redis (`redis.phoenix_pubsub`).
//!
//! Gateway nodes speak on the Phoenix channel as one node named `redis.phoenix_node_name`:
//! - out: a broadcast that starts on a gateway node (its own, not one received from Redis)
//!   is published there once, as `{3, :except, <that name>, topic, %Broadcast{}, ...}`, next to
//!   its envelope. Phoenix nodes deliver it (their names differ); gateway nodes skip it, as
//!   they get the envelope;
//! - in: every gateway node reads the channel on its own connection and delivers a Phoenix
//!   node's channel broadcasts to its local subscribers only, like any Phoenix node: it is
//!   never published again, so nobody gets a message twice.
//!
//! Presence is not shared (Phoenix.Tracker replicates between BEAM nodes): presence diffs and
//! the gateway's internal topics never cross, and the tracker's frames are ignored.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::phoenix_frame::{self, Mode, Refused};
use super::redis::MAX_BACKOFF;
use super::{Broadcast, Registry};
use crate::cluster::{Redis, Subscriptions};
use crate::etf;
use crate::protocol::INTERNAL_PREFIX;

/// Counters of the bridge (also exported as metrics).
#[derive(Debug, Default)]
pub struct PhoenixStats {
    /// Frames read from the Phoenix channel.
    pub received: AtomicU64,
    /// Channel broadcasts delivered to local subscribers.
    pub delivered: AtomicU64,
    /// Frames read and not delivered (see the metric's `result` label for why).
    pub ignored: AtomicU64,
    /// Frames queued for the Phoenix channel.
    pub published: AtomicU64,
    /// Broadcasts that could not be written as a frame or queued.
    pub publish_dropped: AtomicU64,
    /// External publishes (the Redis emitter) forwarded by this node while it held the
    /// forwarder lease (`phoenix_forward.rs`).
    pub forwarded: AtomicU64,
}

/// The gateway's side of a Phoenix PubSub on Redis.
pub(super) struct Bridge {
    /// The Phoenix channel (`phx:Elixir.<PubSub>.Adapter`).
    channel: String,
    /// The name every gateway node publishes under.
    tier: String,
    /// Names a direct (`:only`) frame may address this node by.
    names: Vec<String>,
    stats: Arc<PhoenixStats>,
}

impl Bridge {
    /// The bridge of `pubsub` for the node `redis` belongs to.
    pub(super) fn new(redis: &Redis, pubsub: &str) -> Self {
        let s = &redis.settings;
        let mut names = vec![s.phoenix_node_name.clone(), redis.node.to_string()];
        if !s.node_name.is_empty() {
            names.push(s.node_name.clone());
        }
        Self {
            channel: phoenix_frame::channel(pubsub),
            tier: s.phoenix_node_name.clone(),
            names,
            stats: Arc::default(),
        }
    }

    /// The bridge's counters.
    pub(super) fn stats(&self) -> &Arc<PhoenixStats> {
        &self.stats
    }

    /// The Phoenix channel.
    pub(super) fn channel(&self) -> &str {
        &self.channel
    }

    /// The frame for a broadcast that started on this node, if it crosses to Phoenix.
    pub(super) fn frame_for(&self, msg: &Broadcast) -> Option<Vec<u8>> {
        // Presence is per kind of node, and internal topics are the gateway's own.
        if msg.seq.is_some() || msg.topic.starts_with(INTERNAL_PREFIX) {
            return None;
        }
        match phoenix_frame::encode(&self.tier, msg) {
            Ok(frame) => Some(frame),
            Err(e) => {
                self.dropped();
                tracing::warn!(topic = %msg.topic, error = %e, "broadcast not sent to phoenix nodes");
                None
            }
        }
    }

    /// Counts a frame that was not published.
    pub(super) fn dropped(&self) {
        self.dropped_many(1);
    }

    /// Counts frames that were not published.
    pub(super) fn dropped_many(&self, n: u64) {
        self.stats.publish_dropped.fetch_add(n, Ordering::Relaxed);
        ::metrics::counter!(crate::metrics::PHOENIX_PUBLISHED, "result" => "dropped").increment(n);
    }

    /// Counts external publishes written to the Phoenix channel.
    pub(super) fn forwarded(&self, n: u64) {
        self.stats.forwarded.fetch_add(n, Ordering::Relaxed);
        ::metrics::counter!(crate::metrics::PHOENIX_PUBLISHED, "result" => "forwarded")
            .increment(n);
    }

    /// Counts a frame handed to the publisher.
    pub(super) fn queued(&self) {
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        ::metrics::counter!(crate::metrics::PHOENIX_PUBLISHED, "result" => "ok").increment(1);
    }

    /// Reads one frame from the Phoenix channel and delivers what is for local subscribers.
    pub(super) fn receive(&self, bytes: &[u8], registry: &Registry) {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let result = self.deliver(bytes, registry);
        ::metrics::counter!(crate::metrics::PHOENIX_FRAMES, "result" => result).increment(1);
        if result == "delivered" {
            self.stats.delivered.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.ignored.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn deliver(&self, bytes: &[u8], registry: &Registry) -> &'static str {
        let refused = |why: Refused| {
            // Tracker traffic is normal; broken or unmappable frames deserve a look, at most
            // a few times.
            if !matches!(why, Refused::NotBroadcast) {
                let n = self.stats.ignored.load(Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(error = %why, ignored = n + 1, "frame from the phoenix pubsub ignored");
                }
            }
            why.label()
        };
        let plain = match etf::plain(bytes, &phoenix_frame::LIMITS) {
            Ok(plain) => plain,
            Err(e) => return refused(Refused::Malformed(e)),
        };
        let frame = match phoenix_frame::read(&plain) {
            Ok(frame) => frame,
            Err(why) => return refused(why),
        };
        match frame.mode {
            // Published by a gateway node: its envelope brought it here already.
            Mode::Except if frame.node == self.tier => return "own",
            Mode::Only if !self.names.iter().any(|n| *n == frame.node) => return "other_node",
            _ => {}
        }
        if let Err(why) = frame.may_be_broadcast() {
            return refused(why);
        }
        if registry.subscriber_count(&frame.topic) == 0 {
            return "no_subscribers";
        }
        match frame.broadcast() {
            Ok(msg) => {
                registry.dispatch(&Arc::new(msg), None);
                "delivered"
            }
            Err(why) => refused(why),
        }
    }

    /// Reads the Phoenix channel until `shutdown`, reconnecting with capped backoff (and to a
    /// new primary after a Sentinel failover).
    pub(super) async fn run(
        self: Arc<Self>,
        redis: Redis,
        registry: Arc<Registry>,
        shutdown: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut subscribed = false;
            let why = tokio::select! {
                _ = shutdown.cancelled() => return,
                why = self.listen(&redis, &registry, &mut subscribed) => why,
            };
            if subscribed {
                backoff = Duration::from_millis(100);
            }
            tracing::warn!(error = %why, channel = %self.channel, "phoenix pubsub connection lost; reconnecting");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One subscriber connection: subscribe, then read until it fails.
    async fn listen(&self, redis: &Redis, registry: &Registry, subscribed: &mut bool) -> Lost {
        let timeout = Duration::from_millis(redis.settings.command_timeout_ms);
        let generation = redis.generation();
        let (mut sink, mut stream) =
            match tokio::time::timeout(timeout, pubsub_connection(redis)).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => return e,
                Err(_) => return Lost::Timeout("connect"),
            };
        match tokio::time::timeout(timeout, sink.subscribe(&self.channel)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return e.into(),
            Err(_) => return Lost::Timeout("SUBSCRIBE"),
        }
        *subscribed = true;
        tracing::info!(channel = %self.channel, "listening to the phoenix pubsub");
        let mut ping = tokio::time::interval(Duration::from_millis(redis.settings.heartbeat_ms));
        ping.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => self.receive(msg.get_payload_bytes(), registry),
                    None => return Lost::Ended,
                },
                _ = ping.tick() => {
                    if generation != redis.generation() {
                        return Lost::PrimaryChanged;
                    }
                    match tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return e.into(),
                        Err(_) => return Lost::Timeout("PING"),
                    }
                }
            }
        }
    }
}

/// A classic pub/sub connection to the primary (a Phoenix PubSub lives on one endpoint).
pub(super) async fn pubsub_connection(
    redis: &Redis,
) -> Result<(redis::aio::PubSubSink, redis::aio::PubSubStream), Lost> {
    match redis.subscriptions().await? {
        Subscriptions::Classic(client) => Ok(client.get_async_pubsub().await?.split()),
        Subscriptions::Sharded(_) => Err(Lost::Sharded),
    }
}

/// Why a connection to the Phoenix channel (or the forwarder's) was given up.
#[derive(Debug, thiserror::Error)]
pub(super) enum Lost {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("the message stream ended")]
    Ended,
    #[error("the redis primary changed")]
    PrimaryChanged,
    #[error("phoenix pubsub needs one redis endpoint, not a cluster")]
    Sharded,
    #[error("the forwarder lease went to another node")]
    LeaseTaken,
    #[error("shutting down")]
    Shutdown,
}
