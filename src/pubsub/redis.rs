//! Cross-node pub/sub through Redis.
//!
//! Local delivery is the same [`Registry`] as single-node mode. On top of it:
//! - one Redis channel per topic (`<prefix>:b:{topic}`), subscribed by a node while it has
//!   local subscribers of that topic (`subscriber.rs`: classic pub/sub with one primary,
//!   sharded pub/sub on the owning shard in a Redis Cluster); an unsubscribe waits
//!   `unsubscribe_delay_ms` so that a leave/rejoin flap costs nothing;
//! - a broadcast is dispatched locally at once and its envelope (encoded once) is queued for
//!   a publisher task that PUBLISHes (SPUBLISHes in a cluster) in pipelined batches, so the
//!   caller never waits for Redis; one publisher keeps a node's publish order;
//! - the reader task decodes envelopes and dispatches them without ever blocking (the
//!   fastlane only `try_send`s), so Redis never sees a slow pub/sub client;
//! - losing Redis: local traffic goes on, the subscriber reconnects with capped backoff and
//!   resubscribes every topic it needs; publishes that fail are counted and logged.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::phoenix::{Bridge, PhoenixStats};
use super::phoenix_forward;
use super::subscriber::{Manager, SubCmd};
use super::{
    envelope, numbering, redis_history, Broadcast, PubSub, PubSubError, Registry, Replay,
    Retention, Since, Subscriber, SubscriberId,
};
use crate::cluster::Redis;
use crate::protocol::Frame;

/// Counters of the Redis adapter (exported as metrics).
#[derive(Debug, Default)]
pub struct RedisStats {
    /// Envelopes published.
    pub published: AtomicU64,
    /// Broadcasts that could not be published (queue full or Redis unavailable).
    pub publish_dropped: AtomicU64,
    /// Messages received from Redis.
    pub received: AtomicU64,
    /// Messages from Redis that were not valid envelopes.
    pub invalid: AtomicU64,
    /// Messages from other nodes that never arrived (gaps in their per-topic numbering).
    pub lost: AtomicU64,
    /// Subscriber connections established after the first.
    pub reconnects: AtomicU64,
    /// Whether the subscriber connection is up.
    pub connected: AtomicBool,
    /// Redis channels currently subscribed.
    pub subscribed: AtomicU64,
    /// When the subscriber connection went down (unix ms); 0 while up.
    pub down_since_ms: AtomicU64,
}

/// Pub/sub across nodes through Redis.
pub struct RedisPubSub {
    registry: Arc<Registry>,
    redis: Redis,
    publish: mpsc::Sender<Outgoing>,
    subs: mpsc::UnboundedSender<SubCmd>,
    stats: Arc<RedisStats>,
    subscribe_wait: Duration,
    /// The Phoenix PubSub this node joins (`redis.phoenix_pubsub`).
    phoenix: Option<Arc<Bridge>>,
}

/// A broadcast waiting for the publisher.
struct Outgoing {
    /// The topic's channel.
    channel: String,
    /// The envelope (or a Phoenix frame).
    bytes: Vec<u8>,
    /// Number it for its topic (envelopes; Phoenix frames are not numbered).
    numbered: bool,
    /// A broadcast for a route with history: appended to the topic's stream and delivered
    /// (here too) when it comes back with its position; delivered here without one if the
    /// append fails.
    history: Option<Kept>,
}

/// A broadcast to keep in its topic's history.
struct Kept {
    msg: Arc<Broadcast>,
    /// The sender of a `broadcast_from`.
    from: Option<SubscriberId>,
    retention: Retention,
}

/// Longest backoff between reconnection attempts.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Most commands in one publish pipeline.
const PUBLISH_BATCH: usize = 256;

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RedisPubSub {
    /// Starts the subscriber and publisher tasks; they stop when `shutdown` is cancelled
    /// (the publisher first drains what is queued).
    pub fn start(redis: Redis, shutdown: CancellationToken) -> (Arc<Self>, Vec<JoinHandle<()>>) {
        let registry = Arc::new(Registry::new());
        let stats = Arc::new(RedisStats::default());
        let (publish, publish_rx) = mpsc::channel(redis.settings.publish_queue);
        let (subs, subs_rx) = mpsc::unbounded_channel();
        let manager = Manager::new(
            redis.clone(),
            registry.clone(),
            stats.clone(),
            subs_rx,
            shutdown.clone(),
        );
        let publisher = Publisher {
            redis: redis.clone(),
            registry: registry.clone(),
            numbering: numbering::Outgoing::default(),
            stats: stats.clone(),
            rx: publish_rx,
            last_warn: None,
        };
        let phoenix = redis
            .settings
            .phoenix_pubsub
            .as_deref()
            .map(|name| Arc::new(Bridge::new(&redis, name)));
        let mut tasks = vec![
            tokio::spawn(manager.run()),
            tokio::spawn(publisher.run(shutdown.clone())),
        ];
        if let Some(bridge) = &phoenix {
            tasks.push(tokio::spawn(bridge.clone().run(
                redis.clone(),
                registry.clone(),
                shutdown.clone(),
            )));
            tasks.push(tokio::spawn(phoenix_forward::run(
                bridge.clone(),
                redis.clone(),
                shutdown,
            )));
        }
        let subscribe_wait = Duration::from_millis(redis.settings.command_timeout_ms);
        (
            Arc::new(Self {
                registry,
                redis,
                publish,
                subs,
                stats,
                subscribe_wait,
                phoenix,
            }),
            tasks,
        )
    }

    /// The adapter's counters.
    pub fn stats(&self) -> &Arc<RedisStats> {
        &self.stats
    }

    /// The Phoenix PubSub bridge's counters, when `redis.phoenix_pubsub` is set.
    pub fn phoenix_stats(&self) -> Option<&Arc<PhoenixStats>> {
        self.phoenix.as_ref().map(|b| b.stats())
    }

    fn publish(&self, msg: &Arc<Broadcast>, from: Option<SubscriberId>) {
        self.publish_envelope(msg, from);
        if let Some(bridge) = &self.phoenix {
            if let Some(frame) = bridge.frame_for(msg) {
                let out = Outgoing {
                    channel: bridge.channel().to_owned(),
                    bytes: frame,
                    numbered: false,
                    history: None,
                };
                match self.publish.try_send(out) {
                    Ok(()) => bridge.queued(),
                    Err(_) => bridge.dropped(),
                }
            }
        }
    }

    fn publish_envelope(&self, msg: &Arc<Broadcast>, from: Option<SubscriberId>) {
        let bytes = envelope::encode(&self.redis.node, from, now_ms(), msg);
        let out = Outgoing {
            channel: self.redis.keys.channel(&msg.topic),
            bytes,
            numbered: true,
            history: msg.retention.map(|retention| Kept {
                msg: msg.clone(),
                from,
                retention,
            }),
        };
        if let Err(refused) = self.publish.try_send(out) {
            if let Some(kept) = refused.into_inner().history {
                // Not even queued: the local subscribers still get it, without a position.
                self.registry.dispatch(&kept.msg, kept.from);
            }
            ::metrics::counter!(crate::metrics::REDIS_PUBLISH_DROPPED).increment(1);
            let n = self.stats.publish_dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n + 1,
                    "redis publish queue full: broadcast not sent to other nodes"
                );
            }
        }
    }
}

#[async_trait]
impl PubSub for RedisPubSub {
    async fn subscribe(
        &self,
        topic: &str,
        sub: Subscriber,
        first: Option<Frame>,
    ) -> Result<(), PubSubError> {
        let (ack, acked) = oneshot::channel();
        if self
            .subs
            .send(SubCmd::Want {
                topic: topic.to_owned(),
                ack,
            })
            .is_ok()
        {
            // Wait until Redis delivers the topic to this node, so that nothing published
            // after our join reply is missed. Redis being down must not block joins.
            if tokio::time::timeout(self.subscribe_wait, acked)
                .await
                .is_err()
            {
                tracing::warn!(
                    topic,
                    "redis subscription not confirmed in time: local delivery only for now"
                );
            }
        }
        self.registry.subscribe(topic, sub, first);
        Ok(())
    }

    fn unsubscribe(&self, topic: &str, id: SubscriberId) {
        if self.registry.remove(topic, id) {
            let _ = self.subs.send(SubCmd::Unwant {
                topic: topic.to_owned(),
            });
        }
    }

    fn broadcast(&self, msg: Arc<Broadcast>, from: Option<SubscriberId>) {
        // With history, local subscribers get it when it comes back from Redis with its
        // position, in the stream's order like every other node.
        if msg.retention.is_none() {
            self.registry.dispatch(&msg, from);
        }
        self.publish(&msg, from);
    }

    fn local_broadcast(&self, msg: Arc<Broadcast>, from: Option<SubscriberId>) {
        self.registry.dispatch(&msg, from);
    }

    fn local_subscribers(&self, topic: &str) -> usize {
        self.registry.subscriber_count(topic)
    }

    async fn history(
        &self,
        topic: &str,
        retention: Retention,
        since: &Since,
    ) -> Result<Replay, PubSubError> {
        redis_history::read(&self.redis, topic, retention, since)
            .await
            .map_err(|e| PubSubError::Unavailable(e.to_string()))
    }
}

/// Publishes queued envelopes in pipelined batches, in order.
struct Publisher {
    redis: Redis,
    registry: Arc<Registry>,
    /// Per-topic numbers stamped on envelopes, so receivers can count what they missed.
    numbering: numbering::Outgoing,
    stats: Arc<RedisStats>,
    rx: mpsc::Receiver<Outgoing>,
    last_warn: Option<Instant>,
}

impl Publisher {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut batch = Vec::with_capacity(PUBLISH_BATCH);
        loop {
            let first = tokio::select! {
                m = self.rx.recv() => m,
                _ = shutdown.cancelled() => {
                    // Flush what is queued, then stop.
                    self.rx.close();
                    self.rx.recv().await
                }
            };
            let Some(first) = first else { return };
            batch.push(first);
            while batch.len() < PUBLISH_BATCH {
                match self.rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            self.send(&mut batch).await;
        }
    }

    async fn send(&mut self, batch: &mut Vec<Outgoing>) {
        for o in batch.iter_mut().filter(|o| o.numbered) {
            let n = self.numbering.next(&o.channel);
            o.bytes = numbering::stamp(&o.bytes, n);
        }
        // Sharded pub/sub in a cluster: the message goes to the shard owning the channel's
        // slot only, and per-slot pipelines keep each topic's order.
        let verb = if self.redis.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let command = |o: &Outgoing| -> (String, redis::Cmd) {
            let cmd = match &o.history {
                Some(kept) => redis_history::append_cmd(
                    &self.redis,
                    &kept.msg.topic,
                    &o.bytes,
                    kept.retention,
                    verb,
                ),
                None => {
                    let mut cmd = redis::cmd(verb);
                    cmd.arg(&o.channel).arg(o.bytes.as_slice());
                    cmd
                }
            };
            (o.channel.clone(), cmd)
        };
        let mut results = self
            .redis
            .each_slot(batch.iter().map(command).collect())
            .await;
        let noscript = results.iter().any(|(_, r)| {
            matches!(r, Err(crate::cluster::ClusterError::Redis(e))
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
        });
        if noscript {
            // A new or failed-over primary without the append script: load it, and send the
            // batch's failed parts again (their commands did not run).
            if let Err(e) = redis_history::load(&self.redis).await {
                tracing::warn!(error = %e, "loading the history append script failed");
            }
            // Only the appends failed: a pipeline runs every command, so the plain PUBLISHes
            // beside them (envelopes, Phoenix frames) went out and must not go out twice.
            let failed: Vec<usize> = results
                .iter()
                .filter(|(_, r)| r.is_err())
                .flat_map(|(idx, _)| idx.iter().copied())
                .filter(|i| batch[*i].history.is_some())
                .collect();
            let retried = self
                .redis
                .each_slot(failed.iter().map(|i| command(&batch[*i])).collect())
                .await;
            results.retain(|(_, r)| r.is_ok());
            for (idx, r) in retried {
                results.push((idx.into_iter().map(|i| failed[i]).collect(), r));
            }
        }
        let n = batch.len() as u64;
        let mut lost = 0u64;
        let mut error = None;
        for (idx, result) in results {
            if result.is_ok() {
                let appended = idx.iter().filter(|i| batch[**i].history.is_some()).count();
                if appended > 0 {
                    ::metrics::counter!(crate::metrics::HISTORY_APPENDS, "result" => "ok")
                        .increment(appended as u64);
                }
            }
            if let Err(e) = result {
                lost += idx.len() as u64;
                for i in idx {
                    if let Some(kept) = &batch[i].history {
                        // The local subscribers still get it, without a position.
                        ::metrics::counter!(crate::metrics::HISTORY_APPENDS, "result" => "error")
                            .increment(1);
                        self.registry.dispatch(&kept.msg, kept.from);
                    }
                }
                error.get_or_insert(e);
            }
        }
        batch.clear();
        self.stats.published.fetch_add(n - lost, Ordering::Relaxed);
        if let (1.., Some(e)) = (lost, error) {
            ::metrics::counter!(crate::metrics::REDIS_PUBLISH_DROPPED).increment(lost);
            let total = self
                .stats
                .publish_dropped
                .fetch_add(lost, Ordering::Relaxed)
                + lost;
            let quiet = self
                .last_warn
                .is_some_and(|t| t.elapsed() < Duration::from_secs(5));
            if !quiet {
                self.last_warn = Some(Instant::now());
                tracing::warn!(error = %e, dropped_total = total, "redis unavailable: broadcasts not sent to other nodes");
            }
        }
    }
}
