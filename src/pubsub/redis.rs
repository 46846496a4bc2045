//! Cross-node pub/sub through Redis.
//!
//! Local delivery is the same [`Registry`] as single-node mode. On top of it:
//! - one Redis channel per topic (`<prefix>:b:{topic}`), subscribed by a node while it has
//!   local subscribers of that topic, over one dedicated connection; SUBSCRIBE/UNSUBSCRIBE
//!   are batched and an unsubscribe waits `unsubscribe_delay_ms` so that a leave/rejoin
//!   flap costs nothing;
//! - a broadcast is dispatched locally at once and its envelope (encoded once) is queued for
//!   a publisher task that PUBLISHes in pipelined batches over the command pool, so the
//!   caller never waits for Redis; one publisher keeps a node's publish order;
//! - the reader task decodes envelopes and dispatches them without ever blocking (the
//!   fastlane only `try_send`s), so Redis never sees a slow pub/sub client;
//! - losing Redis: local traffic goes on, the subscriber reconnects with capped backoff and
//!   resubscribes every topic it needs; publishes that fail are counted and logged.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{envelope, Broadcast, PubSub, PubSubError, Registry, Subscriber, SubscriberId};
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
    /// Subscriber connections established after the first.
    pub reconnects: AtomicU64,
    /// Whether the subscriber connection is up.
    pub connected: AtomicBool,
    /// Redis channels currently subscribed.
    pub subscribed: AtomicU64,
    /// When the subscriber connection went down (unix ms); 0 while up.
    pub down_since_ms: AtomicU64,
}

enum SubCmd {
    Want {
        topic: String,
        ack: oneshot::Sender<()>,
    },
    Unwant {
        topic: String,
    },
}

/// Pub/sub across nodes through Redis.
pub struct RedisPubSub {
    registry: Arc<Registry>,
    redis: Redis,
    publish: mpsc::Sender<(String, Vec<u8>)>,
    subs: mpsc::UnboundedSender<SubCmd>,
    stats: Arc<RedisStats>,
    subscribe_wait: Duration,
}

/// Longest backoff between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Most commands in one publish pipeline.
const PUBLISH_BATCH: usize = 256;

fn now_ms() -> u64 {
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
        let manager = Manager {
            redis: redis.clone(),
            registry: registry.clone(),
            stats: stats.clone(),
            rx: subs_rx,
            refs: HashMap::new(),
            active: HashSet::new(),
            pending_unsub: HashMap::new(),
            waiting: HashMap::new(),
            shutdown: shutdown.clone(),
        };
        let publisher = Publisher {
            redis: redis.clone(),
            stats: stats.clone(),
            rx: publish_rx,
            last_warn: None,
        };
        let tasks = vec![
            tokio::spawn(manager.run()),
            tokio::spawn(publisher.run(shutdown)),
        ];
        let subscribe_wait = Duration::from_millis(redis.settings.command_timeout_ms);
        (
            Arc::new(Self {
                registry,
                redis,
                publish,
                subs,
                stats,
                subscribe_wait,
            }),
            tasks,
        )
    }

    /// The adapter's counters.
    pub fn stats(&self) -> &Arc<RedisStats> {
        &self.stats
    }

    fn publish(&self, msg: &Broadcast, from: Option<SubscriberId>) {
        let bytes = envelope::encode(&self.redis.node, from, now_ms(), msg);
        if self
            .publish
            .try_send((self.redis.keys.channel(&msg.topic), bytes))
            .is_err()
        {
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
        self.registry.dispatch(&msg, from);
        self.publish(&msg, from);
    }

    fn local_broadcast(&self, msg: Arc<Broadcast>, from: Option<SubscriberId>) {
        self.registry.dispatch(&msg, from);
    }

    fn local_subscribers(&self, topic: &str) -> usize {
        self.registry.subscriber_count(topic)
    }
}

/// Owns the dedicated subscriber connection and the set of subscribed topics.
struct Manager {
    redis: Redis,
    registry: Arc<Registry>,
    stats: Arc<RedisStats>,
    rx: mpsc::UnboundedReceiver<SubCmd>,
    /// Local interest per topic (one per local subscriber).
    refs: HashMap<String, usize>,
    /// Topics subscribed on the current connection.
    active: HashSet<String>,
    /// Topics with no local interest, unsubscribed at the deadline unless wanted again.
    pending_unsub: HashMap<String, Instant>,
    /// Acks to send once a topic's SUBSCRIBE is confirmed.
    waiting: HashMap<String, Vec<oneshot::Sender<()>>>,
    shutdown: CancellationToken,
}

enum Lost {
    Shutdown,
    Connection(SubscriberError),
}

/// Why the subscriber connection was given up.
#[derive(Debug, thiserror::Error)]
enum SubscriberError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("the message stream ended")]
    StreamEnded,
}

impl Manager {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        let mut ever_connected = false;
        let mut failures = 0u64;
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let connect = tokio::time::timeout(
                Duration::from_millis(self.redis.settings.command_timeout_ms),
                self.redis.client.get_async_pubsub(),
            );
            match connect.await {
                Ok(Ok(conn)) => {
                    if ever_connected {
                        self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        ::metrics::counter!(crate::metrics::REDIS_RECONNECTS).increment(1);
                        tracing::info!("redis subscriber reconnected");
                    }
                    ever_connected = true;
                    failures = 0;
                    backoff = Duration::from_millis(100);
                    self.stats.connected.store(true, Ordering::Relaxed);
                    self.stats.down_since_ms.store(0, Ordering::Relaxed);
                    ::metrics::gauge!(crate::metrics::REDIS_UP).set(1.0);
                    let lost = self.connected(conn).await;
                    self.stats.connected.store(false, Ordering::Relaxed);
                    self.stats.down_since_ms.store(now_ms(), Ordering::Relaxed);
                    ::metrics::gauge!(crate::metrics::REDIS_UP).set(0.0);
                    self.stats.subscribed.store(0, Ordering::Relaxed);
                    self.active.clear();
                    match lost {
                        Lost::Shutdown => return,
                        Lost::Connection(why) => {
                            tracing::warn!(error = %why, "redis subscriber connection lost")
                        }
                    }
                }
                Ok(Err(e)) => {
                    failures += 1;
                    if failures.is_power_of_two() {
                        tracing::warn!(error = %e, attempts = failures, "redis subscriber cannot connect; retrying");
                    }
                }
                Err(_) => {
                    failures += 1;
                    if failures.is_power_of_two() {
                        tracing::warn!(
                            attempts = failures,
                            "redis subscriber connect timed out; retrying"
                        );
                    }
                }
            }
            let deadline = Instant::now() + backoff;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            if !self.offline_until(deadline).await {
                return;
            }
        }
    }

    /// While disconnected: keep the bookkeeping and answer subscribers at once (local
    /// delivery works; the topic is subscribed when Redis is back). False on shutdown.
    async fn offline_until(&mut self, deadline: Instant) -> bool {
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return false,
                _ = tokio::time::sleep_until(deadline) => return true,
                cmd = self.rx.recv() => match cmd {
                    None => return false,
                    Some(cmd) => {
                        let mut to_sub = Vec::new();
                        self.apply(cmd, &mut to_sub);
                        for topic in to_sub {
                            for ack in self.waiting.remove(&topic).unwrap_or_default() {
                                let _ = ack.send(());
                            }
                        }
                    }
                },
            }
        }
    }

    /// Updates interest for one command; topics that need a SUBSCRIBE go to `to_sub`.
    fn apply(&mut self, cmd: SubCmd, to_sub: &mut Vec<String>) {
        match cmd {
            SubCmd::Want { topic, ack } => {
                *self.refs.entry(topic.clone()).or_default() += 1;
                self.pending_unsub.remove(&topic);
                if self.active.contains(&topic) {
                    let _ = ack.send(());
                } else {
                    if !self.waiting.contains_key(&topic) {
                        to_sub.push(topic.clone());
                    }
                    self.waiting.entry(topic).or_default().push(ack);
                }
            }
            SubCmd::Unwant { topic } => {
                if let Some(n) = self.refs.get_mut(&topic) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.refs.remove(&topic);
                        let delay = Duration::from_millis(self.redis.settings.unsubscribe_delay_ms);
                        self.pending_unsub.insert(topic, Instant::now() + delay);
                    }
                }
            }
        }
    }

    async fn connected(&mut self, conn: redis::aio::PubSub) -> Lost {
        let (mut sink, stream) = conn.split();
        // Resubscribe everything still wanted; what was waiting to be dropped is dropped.
        self.pending_unsub.clear();
        let wanted: Vec<String> = self.refs.keys().cloned().collect();
        if let Err(e) = self.subscribe(&mut sink, wanted).await {
            return Lost::Connection(e);
        }
        let reader = tokio::spawn(read(
            stream,
            self.registry.clone(),
            self.redis.clone(),
            self.stats.clone(),
        ));
        let abort = reader.abort_handle();
        tokio::pin!(reader);
        let mut ping =
            tokio::time::interval(Duration::from_millis(self.redis.settings.heartbeat_ms));
        ping.tick().await;
        let lost = loop {
            let next_unsub = self.pending_unsub.values().min().copied();
            tokio::select! {
                _ = self.shutdown.cancelled() => break Lost::Shutdown,
                _ = &mut reader => break Lost::Connection(SubscriberError::StreamEnded),
                cmd = self.rx.recv() => {
                    let Some(cmd) = cmd else { break Lost::Shutdown };
                    let mut to_sub = Vec::new();
                    self.apply(cmd, &mut to_sub);
                    while let Ok(cmd) = self.rx.try_recv() {
                        self.apply(cmd, &mut to_sub);
                    }
                    if let Err(e) = self.subscribe(&mut sink, to_sub).await {
                        break Lost::Connection(e);
                    }
                }
                _ = sleep_until_opt(next_unsub) => {
                    let now = Instant::now();
                    let due: Vec<String> = self.pending_unsub.iter().filter(|(_, d)| **d <= now).map(|(t, _)| t.clone()).collect();
                    for t in &due {
                        self.pending_unsub.remove(t);
                    }
                    if let Err(e) = self.unsubscribe(&mut sink, due).await {
                        break Lost::Connection(e);
                    }
                }
                _ = ping.tick() => {
                    // Detects a Redis that stopped answering without closing the socket.
                    let timeout = Duration::from_millis(self.redis.settings.command_timeout_ms);
                    match tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => break Lost::Connection(e.into()),
                        Err(_) => break Lost::Connection(SubscriberError::Timeout("PING")),
                    }
                }
            }
        };
        abort.abort();
        lost
    }

    async fn subscribe(
        &mut self,
        sink: &mut redis::aio::PubSubSink,
        topics: Vec<String>,
    ) -> Result<(), SubscriberError> {
        for chunk in topics.chunks(512) {
            let channels: Vec<String> = chunk.iter().map(|t| self.redis.keys.channel(t)).collect();
            let timeout = Duration::from_millis(self.redis.settings.command_timeout_ms);
            match tokio::time::timeout(timeout, sink.subscribe(&channels)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(SubscriberError::Timeout("SUBSCRIBE")),
            }
            for topic in chunk {
                self.active.insert(topic.clone());
                for ack in self.waiting.remove(topic).unwrap_or_default() {
                    let _ = ack.send(());
                }
            }
        }
        self.stats
            .subscribed
            .store(self.active.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn unsubscribe(
        &mut self,
        sink: &mut redis::aio::PubSubSink,
        topics: Vec<String>,
    ) -> Result<(), SubscriberError> {
        let topics: Vec<String> = topics
            .into_iter()
            .filter(|t| self.active.contains(t) && !self.refs.contains_key(t))
            .collect();
        for chunk in topics.chunks(512) {
            let channels: Vec<String> = chunk.iter().map(|t| self.redis.keys.channel(t)).collect();
            let timeout = Duration::from_millis(self.redis.settings.command_timeout_ms);
            match tokio::time::timeout(timeout, sink.unsubscribe(&channels)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(SubscriberError::Timeout("UNSUBSCRIBE")),
            }
            for topic in chunk {
                self.active.remove(topic);
            }
        }
        self.stats
            .subscribed
            .store(self.active.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Reads messages from the subscriber connection and dispatches them locally.
async fn read(
    mut stream: redis::aio::PubSubStream,
    registry: Arc<Registry>,
    redis: Redis,
    stats: Arc<RedisStats>,
) {
    while let Some(msg) = stream.next().await {
        stats.received.fetch_add(1, Ordering::Relaxed);
        let env = match envelope::decode(msg.get_payload_bytes()) {
            Ok(env) => env,
            Err(e) => {
                let n = stats.invalid.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(error = %e, channel = msg.get_channel_name(), "invalid message from redis ignored");
                }
                continue;
            }
        };
        if env.node == *redis.node {
            continue; // The origin already delivered it locally.
        }
        if env.ts > 0 {
            let lag_ms = now_ms().saturating_sub(env.ts);
            ::metrics::histogram!(crate::metrics::LAG_SECONDS).record(lag_ms as f64 / 1000.0);
        }
        if redis.keys.channel(&env.broadcast.topic) != msg.get_channel_name() {
            stats.invalid.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                channel = msg.get_channel_name(),
                "envelope topic does not match its channel: ignored"
            );
            continue;
        }
        registry.dispatch(&Arc::new(env.broadcast), None);
    }
}

/// Publishes queued envelopes in pipelined batches, in order.
struct Publisher {
    redis: Redis,
    stats: Arc<RedisStats>,
    rx: mpsc::Receiver<(String, Vec<u8>)>,
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

    async fn send(&mut self, batch: &mut Vec<(String, Vec<u8>)>) {
        let mut pipe = redis::pipe();
        for (channel, bytes) in batch.iter() {
            pipe.cmd("PUBLISH")
                .arg(channel)
                .arg(bytes.as_slice())
                .ignore();
        }
        let n = batch.len() as u64;
        match self.redis.pipe::<()>(&pipe).await {
            Ok(()) => {
                self.stats.published.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                ::metrics::counter!(crate::metrics::REDIS_PUBLISH_DROPPED).increment(n);
                let total = self.stats.publish_dropped.fetch_add(n, Ordering::Relaxed) + n;
                let quiet = self
                    .last_warn
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(5));
                if !quiet {
                    self.last_warn = Some(Instant::now());
                    tracing::warn!(error = %e, dropped_total = total, "redis unavailable: broadcasts not sent to other nodes");
                }
            }
        }
        batch.clear();
    }
}
