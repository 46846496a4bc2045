//! The Redis subscriber: which topics this node receives from other nodes, over which
//! connection, and getting them back after Redis failed over.
//!
//! One task owns the subscriptions. With one primary it holds a dedicated SUBSCRIBE
//! connection (to the primary Sentinel names, looked up again on every reconnect). With a
//! Redis Cluster it subscribes each topic's channel with SSUBSCRIBE on the shard that owns
//! the channel's slot, through a RESP3 cluster connection: a shard carries only its slots'
//! traffic. The crate re-subscribes when a shard's connection comes back or the slot map is
//! refreshed; on top of that, a shard connection lost or a `sunsubscribe` from the server
//! (its slot moved) makes this task subscribe the affected channels again until the new
//! owner confirms, so subscriptions follow failovers and slot migrations by themselves.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::numbering::Incoming;
use super::redis::{now_ms, RedisStats, MAX_BACKOFF};
use super::{envelope, Registry};
use crate::cluster::{Redis, Subscriptions};

/// A change of local interest in a topic.
pub(super) enum SubCmd {
    /// A local subscriber needs the topic; `ack` once Redis delivers it to this node.
    Want {
        topic: String,
        ack: oneshot::Sender<()>,
    },
    /// A local subscriber left.
    Unwant { topic: String },
}

/// Channels in one SUBSCRIBE-like command (classic; a sharded one holds one slot's).
const CHUNK: usize = 512;
/// Sharded subscribe commands in flight at once.
const SHARDED_IN_FLIGHT: usize = 64;
/// Wait after a shard connection was lost before subscribing again (lets the crate see
/// the new topology), and between retries.
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(250);

/// Owns the subscriber connection and the set of subscribed topics.
pub(super) struct Manager {
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
    /// Acks to send once a topic's subscription is confirmed.
    waiting: HashMap<String, Vec<oneshot::Sender<()>>>,
    /// Other nodes' numbering per topic, to count what never arrived.
    incoming: Arc<Incoming>,
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
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("the message stream ended")]
    StreamEnded,
    #[error("the redis primary changed")]
    PrimaryChanged,
    #[error("{0} sharded subscriptions not confirmed")]
    NotConfirmed(usize),
}

/// The subscriber's connection.
enum Link {
    Classic {
        sink: redis::aio::PubSubSink,
        generation: u64,
    },
    Sharded(ClusterConnection),
}

/// A subscriber connection, its reader task and (sharded) the reader's reports.
struct Connected {
    link: Link,
    reader: tokio::task::JoinHandle<()>,
    events: Option<mpsc::UnboundedReceiver<Event>>,
}

/// What the reader tells the manager (sharded mode).
enum Event {
    /// The server dropped this channel's subscription (its slot moved).
    Dropped(String),
    /// A shard connection was lost: subscriptions on it must be made again.
    ShardLost,
}

impl Manager {
    /// A manager fed by `rx`; `run` it until `shutdown`.
    pub(super) fn new(
        redis: Redis,
        registry: Arc<Registry>,
        stats: Arc<RedisStats>,
        rx: mpsc::UnboundedReceiver<SubCmd>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            redis,
            registry,
            stats,
            rx,
            refs: HashMap::new(),
            active: HashSet::new(),
            pending_unsub: HashMap::new(),
            waiting: HashMap::new(),
            incoming: Arc::default(),
            shutdown,
        }
    }

    pub(super) async fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        let mut ever_connected = false;
        let mut failures = 0u64;
        let timeout = Duration::from_millis(self.redis.settings.command_timeout_ms);
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            match tokio::time::timeout(timeout, self.connect()).await {
                Ok(Ok(conn)) => {
                    let reconnected = std::mem::replace(&mut ever_connected, true);
                    failures = 0;
                    backoff = Duration::from_millis(100);
                    self.stats.connected.store(true, Ordering::Relaxed);
                    self.stats.down_since_ms.store(0, Ordering::Relaxed);
                    ::metrics::gauge!(crate::metrics::REDIS_UP).set(1.0);
                    let lost = self.connected(conn, reconnected).await;
                    self.stats.connected.store(false, Ordering::Relaxed);
                    self.stats.down_since_ms.store(now_ms(), Ordering::Relaxed);
                    ::metrics::gauge!(crate::metrics::REDIS_UP).set(0.0);
                    self.stats.subscribed.store(0, Ordering::Relaxed);
                    self.active.clear();
                    crate::shrink::when_sparse(&mut self.active);
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

    /// Opens the subscriber connection and starts its reader.
    async fn connect(&self) -> Result<Connected, SubscriberError> {
        match self.redis.subscriptions().await? {
            Subscriptions::Classic(client) => {
                let generation = self.redis.generation();
                let (sink, stream) = client.get_async_pubsub().await?.split();
                let reader = tokio::spawn(read_classic(
                    stream,
                    Receiver {
                        registry: self.registry.clone(),
                        redis: self.redis.clone(),
                        stats: self.stats.clone(),
                        incoming: self.incoming.clone(),
                    },
                ));
                Ok(Connected {
                    link: Link::Classic { sink, generation },
                    reader,
                    events: None,
                })
            }
            Subscriptions::Sharded(source) => {
                let (tx, rx) = mpsc::unbounded_channel();
                let conn = source.connect(tx).await?;
                let (events, events_rx) = mpsc::unbounded_channel();
                let reader = tokio::spawn(read_sharded(
                    rx,
                    events,
                    Receiver {
                        registry: self.registry.clone(),
                        redis: self.redis.clone(),
                        stats: self.stats.clone(),
                        incoming: self.incoming.clone(),
                    },
                ));
                Ok(Connected {
                    link: Link::Sharded(conn),
                    reader,
                    events: Some(events_rx),
                })
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
                        crate::shrink::when_sparse(&mut self.waiting);
                    }
                },
            }
        }
    }

    /// Updates interest for one command; topics that need subscribing go to `to_sub`.
    fn apply(&mut self, cmd: SubCmd, to_sub: &mut Vec<String>) {
        match cmd {
            SubCmd::Want { topic, ack } => {
                *self.refs.entry(topic.clone()).or_default() += 1;
                if self.pending_unsub.remove(&topic).is_some() {
                    crate::shrink::when_sparse(&mut self.pending_unsub);
                }
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
                        crate::shrink::when_sparse(&mut self.refs);
                        let delay = Duration::from_millis(self.redis.settings.unsubscribe_delay_ms);
                        self.pending_unsub.insert(topic, Instant::now() + delay);
                    }
                }
            }
        }
    }

    async fn connected(&mut self, conn: Connected, reconnected: bool) -> Lost {
        let Connected {
            mut link,
            reader,
            mut events,
        } = conn;
        // Resubscribe everything still wanted; what was waiting to be dropped is dropped.
        self.pending_unsub.clear();
        crate::shrink::when_sparse(&mut self.pending_unsub);
        let wanted: Vec<String> = self.refs.keys().cloned().collect();
        // Sharded subscriptions that failed, retried at `retry_at`.
        let mut retry: HashSet<String> = HashSet::new();
        let mut retry_at: Option<Instant> = None;
        if let Err(e) = self.subscribe(&mut link, wanted, &mut retry).await {
            reader.abort();
            return Lost::Connection(e);
        }
        if reconnected {
            // Counted once subscribed again: a presence resync it triggers then reads a
            // snapshot that every later change follows on this connection.
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            ::metrics::counter!(crate::metrics::REDIS_RECONNECTS).increment(1);
            tracing::info!("redis subscriber reconnected");
        }
        if !retry.is_empty() {
            retry_at = Some(Instant::now() + RESUBSCRIBE_AFTER);
        }
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
                    if let Err(e) = self.subscribe(&mut link, to_sub, &mut retry).await {
                        break Lost::Connection(e);
                    }
                    if !retry.is_empty() {
                        retry_at.get_or_insert(Instant::now() + RESUBSCRIBE_AFTER);
                    }
                }
                event = recv_opt(&mut events) => {
                    match event {
                        Some(Event::Dropped(topic)) => {
                            if self.refs.contains_key(&topic) {
                                tracing::info!(topic, "redis dropped a sharded subscription (slot moved): subscribing again");
                                self.active.remove(&topic);
                                retry.insert(topic);
                                // At once: the new owner serves the slot already.
                                retry_at = Some(Instant::now());
                            }
                        }
                        Some(Event::ShardLost) => {
                            tracing::info!("a redis shard connection was lost: subscribing its channels again");
                            retry.extend(self.active.iter().cloned());
                            retry_at.get_or_insert(Instant::now() + RESUBSCRIBE_AFTER);
                        }
                        None => break Lost::Connection(SubscriberError::StreamEnded),
                    }
                }
                _ = sleep_until_opt(retry_at) => {
                    retry_at = None;
                    let topics: Vec<String> = retry
                        .drain()
                        .filter(|t| self.refs.contains_key(t))
                        .collect();
                    for t in &topics {
                        self.active.remove(t);
                    }
                    ::metrics::counter!(crate::metrics::REDIS_RESUBSCRIBES).increment(topics.len() as u64);
                    if let Err(e) = self.subscribe(&mut link, topics, &mut retry).await {
                        break Lost::Connection(e);
                    }
                    if !retry.is_empty() {
                        retry_at = Some(Instant::now() + RESUBSCRIBE_AFTER);
                    }
                }
                _ = sleep_until_opt(next_unsub) => {
                    let now = Instant::now();
                    let due: Vec<String> = self.pending_unsub.iter().filter(|(_, d)| **d <= now).map(|(t, _)| t.clone()).collect();
                    for t in &due {
                        self.pending_unsub.remove(t);
                    }
                    crate::shrink::when_sparse(&mut self.pending_unsub);
                    if let Err(e) = self.unsubscribe(&mut link, due).await {
                        break Lost::Connection(e);
                    }
                }
                _ = ping.tick() => {
                    if let Err(e) = self.check(&mut link).await {
                        break Lost::Connection(e);
                    }
                }
            }
        };
        abort.abort();
        lost
    }

    /// Detects a Redis that stopped answering without closing the socket, and a primary
    /// that changed under a classic subscription.
    async fn check(&self, link: &mut Link) -> Result<(), SubscriberError> {
        let Link::Classic { sink, generation } = link else {
            return Ok(());
        };
        if *generation != self.redis.generation() {
            return Err(SubscriberError::PrimaryChanged);
        }
        let timeout = Duration::from_millis(self.redis.settings.command_timeout_ms);
        match tokio::time::timeout(timeout, sink.ping::<Value>()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(SubscriberError::Timeout("PING")),
        }
    }

    /// Subscribes `topics`. Classic: a failure loses the connection. Sharded: the topics
    /// whose shard did not confirm go to `retry`.
    async fn subscribe(
        &mut self,
        link: &mut Link,
        topics: Vec<String>,
        retry: &mut HashSet<String>,
    ) -> Result<(), SubscriberError> {
        let timeout = Duration::from_millis(self.redis.settings.command_timeout_ms);
        match link {
            Link::Classic { sink, .. } => {
                for chunk in topics.chunks(CHUNK) {
                    classic(sink, &self.redis, chunk, timeout, Op::Subscribe).await?;
                    for topic in chunk {
                        self.confirmed(topic);
                    }
                }
            }
            Link::Sharded(conn) => {
                let results = sharded(conn, &self.redis, topics, timeout, Op::Subscribe).await;
                let mut failed = 0usize;
                for (topic, ok) in results {
                    if ok {
                        self.confirmed(&topic);
                    } else {
                        failed += 1;
                        retry.insert(topic);
                    }
                }
                if failed > 0 {
                    // A shard that does not confirm is down or gone: the client's slot map
                    // may be stale (a dead primary never redirects), so a new connection
                    // reads it afresh and subscribes everything again.
                    return Err(SubscriberError::NotConfirmed(failed));
                }
            }
        }
        self.stats
            .subscribed
            .store(self.active.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn confirmed(&mut self, topic: &str) {
        self.active.insert(topic.to_owned());
        for ack in self.waiting.remove(topic).unwrap_or_default() {
            let _ = ack.send(());
        }
        crate::shrink::when_sparse(&mut self.waiting);
    }

    async fn unsubscribe(
        &mut self,
        link: &mut Link,
        topics: Vec<String>,
    ) -> Result<(), SubscriberError> {
        let topics: Vec<String> = topics
            .into_iter()
            .filter(|t| self.active.contains(t) && !self.refs.contains_key(t))
            .collect();
        for t in &topics {
            // What this node misses from now on is not a loss.
            self.incoming.forget(&self.redis.keys.channel(t));
        }
        let timeout = Duration::from_millis(self.redis.settings.command_timeout_ms);
        match link {
            Link::Classic { sink, .. } => {
                for chunk in topics.chunks(CHUNK) {
                    classic(sink, &self.redis, chunk, timeout, Op::Unsubscribe).await?;
                    for topic in chunk {
                        self.active.remove(topic);
                    }
                    crate::shrink::when_sparse(&mut self.active);
                }
            }
            Link::Sharded(conn) => {
                // A shard that does not answer keeps the subscription until it fails over,
                // when it is gone anyway; forgetting it here is what matters.
                for t in &topics {
                    self.active.remove(t);
                }
                crate::shrink::when_sparse(&mut self.active);
                sharded(conn, &self.redis, topics, timeout, Op::Unsubscribe).await;
            }
        }
        self.stats
            .subscribed
            .store(self.active.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Op {
    Subscribe,
    Unsubscribe,
}

/// SUBSCRIBE or UNSUBSCRIBE one chunk of `topics` on a classic connection, bounded by
/// `timeout`.
async fn classic(
    sink: &mut redis::aio::PubSubSink,
    redis: &Redis,
    topics: &[String],
    timeout: Duration,
    op: Op,
) -> Result<(), SubscriberError> {
    let channels: Vec<String> = topics.iter().map(|t| redis.keys.channel(t)).collect();
    let (call, name) = match op {
        Op::Subscribe => (
            tokio::time::timeout(timeout, sink.subscribe(&channels)).await,
            "SUBSCRIBE",
        ),
        Op::Unsubscribe => (
            tokio::time::timeout(timeout, sink.unsubscribe(&channels)).await,
            "UNSUBSCRIBE",
        ),
    };
    match call {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(SubscriberError::Timeout(name)),
    }
}

/// SSUBSCRIBE or SUNSUBSCRIBE `topics`, one command per slot (a sharded command may not
/// cross slots), some in flight at once. Returns whether each topic's shard confirmed.
async fn sharded(
    conn: &ClusterConnection,
    redis: &Redis,
    topics: Vec<String>,
    timeout: Duration,
    op: Op,
) -> Vec<(String, bool)> {
    let mut by_slot: HashMap<Slot, Vec<String>> = HashMap::new();
    for t in topics {
        let slot = Slot::for_key(redis.keys.channel(&t).as_bytes());
        by_slot.entry(slot).or_default().push(t);
    }
    let mut runs = futures_util::stream::iter(by_slot.into_values().map(|topics| {
        let mut conn = conn.clone();
        async move {
            let channels: Vec<String> = topics.iter().map(|t| redis.keys.channel(t)).collect();
            let call = async {
                match op {
                    Op::Subscribe => conn.ssubscribe(&channels).await,
                    // Never without arguments: that would drop every sharded subscription.
                    Op::Unsubscribe => conn.sunsubscribe(&channels).await,
                }
            };
            let ok = match tokio::time::timeout(timeout, call).await {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "sharded subscription command failed");
                    false
                }
                Err(_) => false,
            };
            topics.into_iter().map(move |t| (t, ok))
        }
    }))
    .buffer_unordered(SHARDED_IN_FLIGHT);
    let mut out = Vec::new();
    while let Some(done) = runs.next().await {
        out.extend(done);
    }
    out
}

async fn recv_opt<T>(rx: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// What a reader needs to deliver messages from Redis.
struct Receiver {
    registry: Arc<Registry>,
    redis: Redis,
    stats: Arc<RedisStats>,
    incoming: Arc<Incoming>,
}

/// Reads messages from a classic subscriber connection and dispatches them locally.
async fn read_classic(mut stream: redis::aio::PubSubStream, rx: Receiver) {
    while let Some(msg) = stream.next().await {
        deliver(msg.get_channel_name(), msg.get_payload_bytes(), &rx);
    }
}

/// Reads the pushes of the sharded cluster connection: messages are dispatched, lost
/// subscriptions reported to the manager.
async fn read_sharded(
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    events: mpsc::UnboundedSender<Event>,
    rx: Receiver,
) {
    while let Some(push) = pushes.recv().await {
        match push.kind {
            PushKind::SMessage => {
                if let [Value::BulkString(channel), Value::BulkString(payload)] = &push.data[..] {
                    let channel = String::from_utf8_lossy(channel);
                    deliver(&channel, payload, &rx);
                }
            }
            PushKind::SUnsubscribe => {
                let topic = match push.data.first() {
                    Some(Value::BulkString(ch)) => {
                        rx.redis.keys.topic_of_channel(&String::from_utf8_lossy(ch))
                    }
                    _ => None,
                };
                if let Some(topic) = topic {
                    let _ = events.send(Event::Dropped(topic));
                }
            }
            PushKind::Disconnection => {
                let _ = events.send(Event::ShardLost);
            }
            _ => {}
        }
    }
}

/// Decodes one message from Redis and dispatches it to local subscribers.
fn deliver(channel: &str, payload: &[u8], rx: &Receiver) {
    let Receiver {
        registry,
        redis,
        stats,
        incoming,
    } = rx;
    stats.received.fetch_add(1, Ordering::Relaxed);
    let env = match envelope::decode(payload) {
        Ok(env) => env,
        Err(e) => {
            let n = stats.invalid.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(error = %e, channel, "invalid message from redis ignored");
            }
            return;
        }
    };
    if env.node != *redis.node && !env.node.is_empty() {
        if let Some(n) = env.n {
            let lost = incoming.seen(&env.node, channel, n);
            if lost > 0 {
                stats.lost.fetch_add(lost, Ordering::Relaxed);
                ::metrics::counter!(crate::metrics::REDIS_LOST).increment(lost);
                tracing::debug!(channel, lost, origin = %env.node, "messages from another node never arrived");
            }
        }
    }
    // The origin delivered it locally already, unless it has a history position: then it
    // is delivered here too, in the stream's order (`from` is the origin's own sender).
    let from = if env.node == *redis.node {
        if env.broadcast.position.is_none() {
            return;
        }
        env.from
    } else {
        None
    };
    if env.ts > 0 {
        let lag_ms = now_ms().saturating_sub(env.ts);
        ::metrics::histogram!(crate::metrics::LAG_SECONDS).record(lag_ms as f64 / 1000.0);
    }
    if redis.keys.channel(&env.broadcast.topic) != channel {
        stats.invalid.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            channel,
            "envelope topic does not match its channel: ignored"
        );
        return;
    }
    registry.dispatch(&Arc::new(env.broadcast), from);
}
