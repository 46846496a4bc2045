//! Presence stored in Redis, shared by every node (documented in docs/redis.md).
//!
//! Each topic's presences live in one hash, `<prefix>:p:{topic}`, with one field per
//! presence: `<node>|<phx_ref>` -> `{"key":..,"meta":{..}}`. A node writes there first and
//! then broadcasts the `presence_diff` through the cluster pub/sub, so a client that read a
//! snapshot never misses a change it does not already contain (phoenix.js ignores a join it
//! already has and a leave it never saw).
//!
//! Liveness: every `heartbeat_ms` a node refreshes `<prefix>:n:{node}:hb` (expiring after
//! `down_ms`), re-asserts all of its presences (so a Redis restarted empty is refilled within
//! one heartbeat) and refreshes key TTLs (so nothing outlives the cluster). It then looks
//! for nodes whose heartbeat expired; the first survivor to take the reap lock removes their
//! presences atomically (Lua, one topic hash at a time) and broadcasts the leaves.
//!
//! After Redis was lost (unreachable, restarted, or this node was reaped) the node
//! re-announces its own presences as joins and, one heartbeat later, pushes a fresh
//! `presence_state` to its local watchers so clients converge to the true set.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::state::{encode_grouped, group, new_phx_ref, updated_meta, Diff, Meta};
use super::{Presence, PresenceError};
use crate::cluster::{keys, Redis};
use crate::protocol::{events, Payload};
use crate::pubsub::{Broadcast, PubSub, SubscriberId};

const REAP_SCRIPT: &str = r"
local prefix = ARGV[1]
local all = redis.call('HGETALL', KEYS[1])
local gone = {}
for i = 1, #all, 2 do
  if string.sub(all[i], 1, #prefix) == prefix then
    redis.call('HDEL', KEYS[1], all[i])
    table.insert(gone, all[i + 1])
  end
end
return gone
";

/// Counters of the Redis presence tracker (exported as metrics).
#[derive(Debug, Default)]
pub struct PresenceStats {
    /// Heartbeats written.
    pub heartbeats: AtomicU64,
    /// Heartbeats that failed (Redis unavailable).
    pub heartbeat_failures: AtomicU64,
    /// Dead nodes reaped by this node.
    pub reaped_nodes: AtomicU64,
    /// Presences removed from dead nodes by this node.
    pub reaped_presences: AtomicU64,
    /// Presence writes that failed (re-asserted at the next heartbeat).
    pub write_failures: AtomicU64,
}

/// Readers of one topic's snapshot.
#[derive(Default)]
struct Reads {
    waiting: Vec<tokio::sync::oneshot::Sender<Arc<str>>>,
    in_flight: bool,
}

struct Entry {
    key: String,
    owner: SubscriberId,
    meta: Meta,
}

impl Entry {
    fn phx_ref(&self) -> &str {
        self.meta
            .get("phx_ref")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// Presence shared through Redis.
pub struct RedisPresence {
    redis: Redis,
    pubsub: Arc<dyn PubSub>,
    diffs: Arc<super::batch::DiffBatcher>,
    /// Snapshot readers waiting per topic (see `list`).
    reads: Mutex<HashMap<String, Reads>>,
    /// A weak handle on ourselves, for the read tasks.
    me: std::sync::Weak<RedisPresence>,
    local: Mutex<HashMap<String, Vec<Entry>>>,
    watched: Mutex<HashSet<String>>,
    node_tag: u16,
    stats: Arc<PresenceStats>,
}

fn field(node: &str, phx_ref: &str) -> String {
    format!("{node}|{phx_ref}")
}

fn value(key: &str, meta: &Meta) -> String {
    json!({"key": key, "meta": meta}).to_string()
}

/// A stored presence value, borrowed: the meta stays JSON text.
#[derive(serde::Deserialize)]
struct StoredRef<'a> {
    #[serde(borrow)]
    key: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    meta: &'a serde_json::value::RawValue,
}

fn parse_value(v: &str) -> Option<(String, Meta)> {
    let mut v: Value = serde_json::from_str(v).ok()?;
    let key = v.get("key")?.as_str()?.to_owned();
    let Value::Object(meta) = v.get_mut("meta")?.take() else {
        return None;
    };
    Some((key, meta))
}

impl RedisPresence {
    /// A tracker writing to `redis` and broadcasting diffs through `pubsub`; its heartbeat
    /// task runs until `shutdown`.
    /// `pubsub_reconnects` counts the pub/sub adapter's reconnections: diffs published while
    /// it was reconnecting are lost, so each one triggers a resync.
    pub fn start(
        redis: Redis,
        pubsub: Arc<dyn PubSub>,
        pubsub_reconnects: Arc<crate::pubsub::RedisStats>,
        batch: std::time::Duration,
        shutdown: CancellationToken,
    ) -> (Arc<Self>, JoinHandle<()>) {
        let me = Arc::new_cyclic(|me| Self {
            reads: Mutex::new(HashMap::new()),
            me: me.clone(),
            redis,
            diffs: super::batch::DiffBatcher::new(pubsub.clone(), batch),
            pubsub,
            local: Mutex::new(HashMap::new()),
            watched: Mutex::new(HashSet::new()),
            node_tag: rand::random(),
            stats: Arc::new(PresenceStats::default()),
        });
        let task = tokio::spawn(me.clone().heartbeat_loop(pubsub_reconnects, shutdown));
        (me, task)
    }

    /// The tracker's counters.
    pub fn stats(&self) -> &Arc<PresenceStats> {
        &self.stats
    }

    fn local(&self) -> MutexGuard<'_, HashMap<String, Vec<Entry>>> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ttl_ms(&self) -> u64 {
        self.redis.settings.down_ms * 3
    }

    fn broadcast_diff(&self, topic: &str, diff: &Diff) {
        self.diffs.push(topic, diff.clone());
    }

    async fn write(&self, what: &str, pipe: &redis::Pipeline) {
        if let Err(e) = self.redis.pipe::<()>(pipe).await {
            self.stats.write_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, what, "presence write failed; re-asserted at the next heartbeat");
        }
    }

    async fn remove(&self, topic: &str, gone: Vec<Entry>, topic_empty: bool) {
        if gone.is_empty() {
            return;
        }
        ::metrics::gauge!(crate::metrics::PRESENCE_ENTRIES).decrement(gone.len() as f64);
        let pkey = self.redis.keys.presence(topic);
        let mut pipe = redis::pipe();
        for e in &gone {
            pipe.cmd("HDEL")
                .arg(&pkey)
                .arg(field(&self.redis.node, e.phx_ref()))
                .ignore();
        }
        if topic_empty {
            pipe.cmd("SREM")
                .arg(self.redis.keys.node_topics(&self.redis.node))
                .arg(keys::escape(topic))
                .ignore();
        }
        self.write("untrack", &pipe).await;
        let diff = Diff {
            joins: vec![],
            leaves: gone.into_iter().map(|e| (e.key, e.meta)).collect(),
        };
        self.broadcast_diff(topic, &diff);
    }

    async fn heartbeat_loop(
        self: Arc<Self>,
        pubsub: Arc<crate::pubsub::RedisStats>,
        shutdown: CancellationToken,
    ) {
        let period = Duration::from_millis(self.redis.settings.heartbeat_ms);
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut first = true;
        let mut failing = false;
        let mut resync_at: Option<Instant> = None;
        let mut reconnects = pubsub.reconnects.load(Ordering::Relaxed);
        let mut dropped = pubsub.publish_dropped.load(Ordering::Relaxed);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.beat().await {
                Ok(had_heartbeat) => {
                    self.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                    ::metrics::counter!(crate::metrics::PRESENCE_HEARTBEATS, "result" => "ok")
                        .increment(1);
                    if failing || (!first && !had_heartbeat) {
                        tracing::info!("redis presence state was lost or unreachable: re-announcing and resyncing");
                        self.announce_own().await;
                        resync_at = Some(Instant::now() + period);
                    }
                    let now_reconnects = pubsub.reconnects.load(Ordering::Relaxed);
                    if now_reconnects != reconnects {
                        reconnects = now_reconnects;
                        tracing::info!(
                            "pub/sub reconnected: diffs may have been lost, resyncing presence"
                        );
                        resync_at.get_or_insert(Instant::now() + period);
                    }
                    // Dropped publishes may have been presence diffs: resync too.
                    let now_dropped = pubsub.publish_dropped.load(Ordering::Relaxed);
                    if now_dropped != dropped {
                        dropped = now_dropped;
                        tracing::info!("broadcasts were dropped: resyncing presence");
                        resync_at.get_or_insert(Instant::now() + period);
                    }
                    failing = false;
                    first = false;
                    match self.reap().await {
                        Ok(()) => {
                            ::metrics::counter!(crate::metrics::REAPER_RUNS, "result" => "ok")
                                .increment(1)
                        }
                        Err(e) => {
                            ::metrics::counter!(crate::metrics::REAPER_RUNS, "result" => "error")
                                .increment(1);
                            tracing::warn!(error = %e, "reaper run failed");
                        }
                    }
                    if resync_at.is_some_and(|t| Instant::now() >= t) {
                        resync_at = None;
                        self.resync().await;
                    }
                }
                Err(e) => {
                    ::metrics::counter!(crate::metrics::PRESENCE_HEARTBEATS, "result" => "error")
                        .increment(1);
                    let n = self
                        .stats
                        .heartbeat_failures
                        .fetch_add(1, Ordering::Relaxed);
                    if !failing || n.is_power_of_two() {
                        tracing::warn!(error = %e, "presence heartbeat failed");
                    }
                    failing = true;
                }
            }
        }
    }

    /// Writes the heartbeat, re-asserts this node's presences and refreshes TTLs. Returns
    /// whether the previous heartbeat key was still there.
    async fn beat(&self) -> Result<bool, crate::cluster::ClusterError> {
        let k = &self.redis.keys;
        let node = &*self.redis.node;
        let ttl = self.ttl_ms();
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(k.heartbeat(node))
            .arg("1")
            .arg("PX")
            .arg(self.redis.settings.down_ms)
            .arg("GET");
        pipe.cmd("SADD").arg(k.nodes()).arg(node).ignore();
        pipe.cmd("PEXPIRE").arg(k.nodes()).arg(ttl).ignore();
        {
            let local = self.local();
            if !local.is_empty() {
                let topics_key = k.node_topics(node);
                let mut sadd = redis::cmd("SADD");
                sadd.arg(&topics_key);
                for (topic, entries) in local.iter() {
                    let pkey = k.presence(topic);
                    let mut hset = redis::cmd("HSET");
                    hset.arg(&pkey);
                    for e in entries {
                        hset.arg(field(node, e.phx_ref()))
                            .arg(value(&e.key, &e.meta));
                    }
                    pipe.add_command(hset).ignore();
                    pipe.cmd("PEXPIRE").arg(&pkey).arg(ttl).ignore();
                    sadd.arg(keys::escape(topic));
                }
                pipe.add_command(sadd).ignore();
                pipe.cmd("PEXPIRE").arg(&topics_key).arg(ttl).ignore();
            }
        }
        let (previous,): (Option<String>,) = self.redis.pipe(&pipe).await?;
        Ok(previous.is_some())
    }

    /// Broadcasts this node's presences as joins (after Redis lost them, or they were reaped).
    async fn announce_own(&self) {
        let diffs: Vec<(String, Diff)> = self
            .local()
            .iter()
            .map(|(topic, entries)| {
                let joins = entries
                    .iter()
                    .map(|e| (e.key.clone(), e.meta.clone()))
                    .collect();
                (
                    topic.clone(),
                    Diff {
                        joins,
                        leaves: vec![],
                    },
                )
            })
            .collect();
        for (topic, diff) in diffs {
            self.broadcast_diff(&topic, &diff);
        }
    }

    /// Pushes a fresh `presence_state` to this node's watchers of every presence topic.
    async fn resync(&self) {
        let topics: Vec<String> = {
            let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
            watched.retain(|t| self.pubsub.local_subscribers(t) > 0);
            watched.iter().cloned().collect()
        };
        for topic in topics {
            let state = self.list_encoded(&topic).await;
            let msg = Broadcast {
                topic: topic.clone(),
                event: events::PRESENCE_STATE.into(),
                payload: Payload::Encoded(state),
            };
            self.pubsub.local_broadcast(Arc::new(msg), None);
        }
    }

    /// Removes the presences of nodes whose heartbeat expired, broadcasting their leaves.
    async fn reap(&self) -> Result<(), crate::cluster::ClusterError> {
        let k = &self.redis.keys;
        let nodes: Vec<String> = self
            .redis
            .query(redis::cmd("SMEMBERS").arg(k.nodes()))
            .await?;
        let others: Vec<String> = nodes
            .into_iter()
            .filter(|n| **n != *self.redis.node)
            .collect();
        if others.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for n in &others {
            pipe.cmd("EXISTS").arg(k.heartbeat(n));
        }
        let alive: Vec<bool> = self.redis.pipe(&pipe).await?;
        for (node, alive) in others.iter().zip(alive) {
            if alive {
                continue;
            }
            let lock = redis::cmd("SET")
                .arg(k.reap_lock(node))
                .arg(&*self.redis.node)
                .arg("NX")
                .arg("PX")
                .arg(self.redis.settings.down_ms)
                .clone();
            let claimed: Option<String> = self.redis.query(&lock).await?;
            if claimed.is_none() {
                continue; // Another survivor is reaping it.
            }
            let topics: Vec<String> = self
                .redis
                .query(redis::cmd("SMEMBERS").arg(k.node_topics(node)))
                .await?;
            let script = redis::Script::new(REAP_SCRIPT);
            let mut removed = 0u64;
            for escaped in topics {
                let Some(topic) = keys::unescape(&escaped) else {
                    continue;
                };
                let mut inv = script.prepare_invoke();
                inv.key(k.presence(&topic)).arg(format!("{node}|"));
                let gone: Vec<String> = self.redis.script(&inv).await?;
                let leaves: Vec<(String, Meta)> =
                    gone.iter().filter_map(|v| parse_value(v)).collect();
                removed += leaves.len() as u64;
                self.broadcast_diff(
                    &topic,
                    &Diff {
                        joins: vec![],
                        leaves,
                    },
                );
            }
            let mut cleanup = redis::pipe();
            cleanup.cmd("DEL").arg(k.node_topics(node)).ignore();
            cleanup.cmd("SREM").arg(k.nodes()).arg(node).ignore();
            self.redis.pipe::<()>(&cleanup).await?;
            self.stats.reaped_nodes.fetch_add(1, Ordering::Relaxed);
            ::metrics::counter!(crate::metrics::REAPED_NODES).increment(1);
            self.stats
                .reaped_presences
                .fetch_add(removed, Ordering::Relaxed);
            tracing::info!(dead = %node, presences = removed, "reaped a dead node");
        }
        Ok(())
    }
}

impl RedisPresence {
    /// Serves the queued readers of `topic` with fresh snapshots until none is waiting.
    async fn read_loop(&self, topic: &str) {
        loop {
            let waiting = {
                let mut reads = self.reads.lock().unwrap_or_else(|e| e.into_inner());
                let Some(entry) = reads.get_mut(topic) else {
                    return;
                };
                if entry.waiting.is_empty() {
                    reads.remove(topic);
                    return;
                }
                std::mem::take(&mut entry.waiting)
            };
            let state = self.read(topic).await;
            for tx in waiting {
                let _ = tx.send(state.clone());
            }
        }
    }

    /// One snapshot of a topic's presences from Redis (this node's own if Redis fails), as
    /// `presence_state` JSON text. Built straight from the stored text: a join storm reads
    /// large snapshots often, and building values for them dominated its cost.
    async fn read(&self, topic: &str) -> Arc<str> {
        let pkey = self.redis.keys.presence(topic);
        match self
            .redis
            .query::<BTreeMap<String, String>>(redis::cmd("HGETALL").arg(&pkey))
            .await
        {
            Ok(all) => {
                let stored: Vec<StoredRef<'_>> = all
                    .values()
                    .filter_map(|v| serde_json::from_str::<StoredRef<'_>>(v).ok())
                    .filter(|s| s.meta.get().starts_with('{'))
                    .collect();
                Arc::from(encode_grouped(
                    stored.iter().map(|s| (s.key.as_ref(), s.meta.get())),
                ))
            }
            Err(e) => {
                tracing::warn!(error = %e, "presence list from redis failed: answering with this node's presences");
                let local = self.local();
                let state = match local.get(topic) {
                    Some(entries) => group(entries.iter().map(|e| (e.key.as_str(), &e.meta))),
                    None => json!({}),
                };
                Arc::from(state.to_string())
            }
        }
    }
}

#[async_trait]
impl Presence for RedisPresence {
    async fn track(
        &self,
        topic: &str,
        key: &str,
        owner: SubscriberId,
        mut meta: Meta,
    ) -> Result<String, PresenceError> {
        let phx_ref = new_phx_ref(self.node_tag);
        meta.remove("phx_ref_prev");
        meta.insert("phx_ref".into(), Value::String(phx_ref.clone()));
        {
            let mut local = self.local();
            let entries = local.entry(topic.to_owned()).or_default();
            if entries.iter().any(|e| e.owner == owner && e.key == key) {
                return Err(PresenceError::AlreadyTracked);
            }
            entries.push(Entry {
                key: key.to_owned(),
                owner,
                meta: meta.clone(),
            });
            ::metrics::gauge!(crate::metrics::PRESENCE_ENTRIES).increment(1.0);
        }
        let k = &self.redis.keys;
        let pkey = k.presence(topic);
        let topics_key = k.node_topics(&self.redis.node);
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(&pkey)
            .arg(field(&self.redis.node, &phx_ref))
            .arg(value(key, &meta))
            .ignore();
        pipe.cmd("PEXPIRE").arg(&pkey).arg(self.ttl_ms()).ignore();
        pipe.cmd("SADD")
            .arg(&topics_key)
            .arg(keys::escape(topic))
            .ignore();
        pipe.cmd("PEXPIRE")
            .arg(&topics_key)
            .arg(self.ttl_ms())
            .ignore();
        self.write("track", &pipe).await;
        self.broadcast_diff(
            topic,
            &Diff {
                joins: vec![(key.to_owned(), meta)],
                leaves: vec![],
            },
        );
        Ok(phx_ref)
    }

    async fn update(
        &self,
        topic: &str,
        key: &str,
        owner: SubscriberId,
        meta: Meta,
    ) -> Result<String, PresenceError> {
        let phx_ref = new_phx_ref(self.node_tag);
        let (old, new) = {
            let mut local = self.local();
            let entry = local
                .get_mut(topic)
                .and_then(|es| es.iter_mut().find(|e| e.owner == owner && e.key == key))
                .ok_or(PresenceError::NoPresence)?;
            let new = updated_meta(&entry.meta, meta, phx_ref.clone());
            (std::mem::replace(&mut entry.meta, new.clone()), new)
        };
        let pkey = self.redis.keys.presence(topic);
        let old_ref = old
            .get("phx_ref")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("HSET")
            .arg(&pkey)
            .arg(field(&self.redis.node, &phx_ref))
            .arg(value(key, &new))
            .ignore();
        pipe.cmd("HDEL")
            .arg(&pkey)
            .arg(field(&self.redis.node, old_ref))
            .ignore();
        self.write("update", &pipe).await;
        self.broadcast_diff(
            topic,
            &Diff {
                joins: vec![(key.to_owned(), new)],
                leaves: vec![(key.to_owned(), old)],
            },
        );
        Ok(phx_ref)
    }

    async fn untrack(
        &self,
        topic: &str,
        key: &str,
        owner: SubscriberId,
    ) -> Result<(), PresenceError> {
        let (gone, empty) = {
            let mut local = self.local();
            let entries = local.get_mut(topic).ok_or(PresenceError::NoPresence)?;
            let pos = entries
                .iter()
                .position(|e| e.owner == owner && e.key == key)
                .ok_or(PresenceError::NoPresence)?;
            let gone = entries.remove(pos);
            let empty = entries.is_empty();
            if empty {
                local.remove(topic);
            }
            (gone, empty)
        };
        self.remove(topic, vec![gone], empty).await;
        Ok(())
    }

    async fn untrack_owner(&self, topic: &str, owner: SubscriberId) {
        let (gone, empty) = {
            let mut local = self.local();
            let Some(entries) = local.get_mut(topic) else {
                return;
            };
            let (gone, kept): (Vec<Entry>, Vec<Entry>) = std::mem::take(entries)
                .into_iter()
                .partition(|e| e.owner == owner);
            *entries = kept;
            let empty = entries.is_empty();
            if empty {
                local.remove(topic);
            }
            (gone, empty)
        };
        self.remove(topic, gone, empty).await;
    }

    async fn list(&self, topic: &str) -> Value {
        let encoded = self.list_encoded(topic).await;
        serde_json::from_str(&encoded).unwrap_or_else(|_| json!({}))
    }

    async fn list_encoded(&self, topic: &str) -> Arc<str> {
        self.watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.to_owned());
        // Concurrent reads of one topic share one HGETALL, but only one that starts after
        // they asked (a snapshot must not predate the caller's subscription): a join storm
        // costs a few reads instead of one per joiner.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut reads = self.reads.lock().unwrap_or_else(|e| e.into_inner());
            let entry = reads.entry(topic.to_owned()).or_default();
            entry.waiting.push(tx);
            !std::mem::replace(&mut entry.in_flight, true)
        };
        if start {
            if let Some(me) = self.me.upgrade() {
                let topic = topic.to_owned();
                tokio::spawn(async move { me.read_loop(&topic).await });
            }
        }
        match rx.await {
            Ok(state) => state,
            Err(_) => self.read(topic).await,
        }
    }

    async fn shutdown(&self) {
        let topics: Vec<(String, Vec<Entry>)> = self.local().drain().collect();
        for (topic, entries) in topics {
            self.remove(&topic, entries, true).await;
        }
        let k = &self.redis.keys;
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(k.heartbeat(&self.redis.node)).ignore();
        pipe.cmd("DEL")
            .arg(k.node_topics(&self.redis.node))
            .ignore();
        pipe.cmd("SREM")
            .arg(k.nodes())
            .arg(&*self.redis.node)
            .ignore();
        self.write("shutdown", &pipe).await;
        self.diffs.flush_all();
    }
}
