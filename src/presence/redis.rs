//! Presence stored in Redis, shared by every node (documented in docs/redis.md).
//!
//! Each topic's presences live in one hash, `<prefix>:p:{topic}`, with one field per
//! presence: `<node>|<phx_ref>` -> `{"key":..,"meta":{..}}`, and the topic's presence
//! sequence in `<prefix>:ps:{topic}` (same slot). A node's changes are batched per topic
//! (`batch.rs`); each batch is written by one script that also numbers it, then broadcast
//! as a `presence_diff` carrying that number. A snapshot is read together with the number
//! of the last batch it holds, so a joiner gets exactly the diffs numbered after it (see
//! `pubsub::Gate`), whichever node they come from.
//!
//! Liveness: every `heartbeat_ms` a node refreshes `<prefix>:n:{node}:hb` (expiring after
//! `down_ms`) and the TTLs of its topics' keys: O(1) commands per topic, whatever the number
//! of presences (a room of 15,000 costs what a room of one does). A node writes all of its
//! presences of a topic again (a repair, one script) only when they may be missing: the
//! topic's hash was gone (Redis restarted empty, or evicted it), its previous heartbeat was
//! gone (Redis lost its state, or this node was reaped), its heartbeats failed long enough
//! for its keys to expire (see `beat`), or a write of that topic failed.
//! It then looks for nodes whose heartbeat expired; the first survivor to take the reap lock
//! removes their presences atomically (Lua, one topic hash at a time), broadcasts the
//! leaves and sets the lock again. A node that was only paused may come back while it is
//! being reaped: it sees its reap lock on a heartbeat and writes its presences back.
//!
//! A repair is numbered like a batch and broadcasts exactly what it changed. After Redis was
//! lost (unreachable, restarted, or this node was reaped) the node also announces its other
//! presences as joins (their broadcasts may have been dropped) and, one heartbeat later,
//! pushes a fresh `presence_state` to its local watchers so clients converge to the true
//! set; a topic whose number moved while that state was on its way is resynced again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::batch::Commit;
use super::state::{Diff, Meta};
use super::table::{lock, SharedTable};
use super::tracker::{Store, Tracker};
use super::Snapshot;
use crate::cluster::{keys, ClusterError, Redis};
use crate::protocol::{events, Payload};
use crate::pubsub::{Broadcast, PubSub, Seq};

/// Prepends `next_number(seq_key, ttl)` to a script: numbers a change of a topic and returns
/// the number as text. The number only grows, even when the key expired or Redis restarted
/// empty: it is at least the server's clock in microseconds.
macro_rules! numbered {
    ($body:literal) => {
        concat!(
            r"
local function next_number(seq_key, ttl)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local seq = math.max(tonumber(redis.call('GET', seq_key) or '0') + 1, now)
  local text = string.format('%.0f', seq)
  redis.call('SET', seq_key, text, 'PX', ttl)
  return text
end
",
            $body
        )
    };
}

/// Applies one batch of a node's changes to a topic's hash and numbers it. KEYS: hash,
/// sequence. ARGV: ttl_ms, number of fields to set, then field/value pairs, then fields to
/// delete. Long lists go in slices: Redis's Lua unpacks at most about 8,000 values at once,
/// and a join storm's batch can hold more.
const COMMIT_SCRIPT: &str = numbered!(
    r"
local function each_slice(cmd, key, list, from, to)
  for i = from, to, 1000 do
    redis.call(cmd, key, unpack(list, i, math.min(i + 999, to)))
  end
end
local ttl = ARGV[1]
local n = tonumber(ARGV[2])
if n > 0 then
  each_slice('HSET', KEYS[1], ARGV, 3, 2 + 2 * n)
end
if 3 + 2 * n <= #ARGV then
  each_slice('HDEL', KEYS[1], ARGV, 3 + 2 * n, #ARGV)
end
redis.call('PEXPIRE', KEYS[1], ttl)
return next_number(KEYS[2], ttl)
"
);

/// Writes this node's presences of a topic again, exactly: its fields not given are removed,
/// the given ones set. What that changed is numbered like a batch, so the diff broadcast
/// for it fits snapshots as batches do. KEYS: hash, sequence. ARGV: ttl_ms, this node's
/// field prefix, then field/value pairs. Returns the number ('0': nothing changed), how
/// many values were added, the added values, then the removed values. Runs only to repair
/// (see `beat`), so the O(room) scan of field names is rare.
const REPAIR_SCRIPT: &str = numbered!(
    r"
local ttl = ARGV[1]
local prefix = ARGV[2]
local keep = {}
for i = 3, #ARGV, 2 do
  keep[ARGV[i]] = true
end
local out = {'0', 0}
for i = 3, #ARGV, 2 do
  if redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    out[#out + 1] = ARGV[i + 1]
  end
end
out[2] = tostring(#out - 2)
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, #prefix) == prefix and not keep[f] then
    out[#out + 1] = redis.call('HGET', KEYS[1], f)
    redis.call('HDEL', KEYS[1], f)
  end
end
redis.call('PEXPIRE', KEYS[1], ttl)
if #out > 2 then
  out[1] = next_number(KEYS[2], ttl)
end
return out
"
);

/// A topic's snapshot and the number of the last batch it holds. KEYS: hash, sequence.
const SNAPSHOT_SCRIPT: &str = r"
return {redis.call('GET', KEYS[2]) or '0', redis.call('HGETALL', KEYS[1])}
";

/// Removes a dead node's presences from a topic's hash and numbers that change. KEYS: hash,
/// sequence. ARGV: the dead node's field prefix, ttl_ms. Returns the number, then the
/// removed values.
const REAP_SCRIPT: &str = numbered!(
    r"
local prefix = ARGV[1]
local all = redis.call('HGETALL', KEYS[1])
local gone = {}
for i = 1, #all, 2 do
  if string.sub(all[i], 1, #prefix) == prefix then
    redis.call('HDEL', KEYS[1], all[i])
    table.insert(gone, all[i + 1])
  end
end
table.insert(gone, 1, next_number(KEYS[2], ARGV[2]))
return gone
"
);

/// How many heartbeats in a row a topic is resynced again while its number keeps moving.
const RESYNC_ROUNDS: u32 = 3;

/// When this node's watchers get a fresh `presence_state` (see `RedisStore::resync`).
#[derive(Default)]
struct Resyncs {
    /// Every watched topic is resynced at the first heartbeat from this instant.
    at: Option<Instant>,
    /// Topics whose number moved while their resync was on its way.
    unsettled: HashSet<String>,
    /// How many heartbeats in a row `unsettled` was resynced again.
    rounds: u32,
}

impl Resyncs {
    /// Runs the resync that is due, if any: all topics once `at` has come, else the
    /// unsettled ones, for at most `RESYNC_ROUNDS` heartbeats in a row.
    async fn run_due(&mut self, store: &RedisStore) {
        if self.at.is_some_and(|t| Instant::now() >= t) {
            self.at = None;
            self.unsettled = store.resync(None).await;
            self.rounds = 0;
        } else if !self.unsettled.is_empty() {
            self.rounds += 1;
            self.unsettled = if self.rounds <= RESYNC_ROUNDS {
                store
                    .resync(Some(std::mem::take(&mut self.unsettled)))
                    .await
            } else {
                // A room that changes on every heartbeat: its watchers have every change
                // since the first resync, only not necessarily one older change their
                // dropped snapshot carried.
                tracing::debug!(
                    topics = self.unsettled.len(),
                    "presence resync gave up on busy topics"
                );
                HashSet::new()
            };
        }
    }
}

/// What a heartbeat found and did.
struct Beat {
    /// The previous heartbeat was still there and nobody reaped this node.
    had_heartbeat: bool,
    /// Topics whose presences were written again (each change broadcast, numbered).
    repaired: HashSet<String>,
}

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
    waiting: Vec<tokio::sync::oneshot::Sender<Snapshot>>,
    in_flight: bool,
}

/// Where a cluster's presences live: writes each batch of this node's changes, reads
/// snapshots, keeps the node's heartbeat and reaps dead nodes.
struct RedisStore {
    redis: Redis,
    pubsub: Arc<dyn PubSub>,
    /// This node's presences (shared with the tracker's batcher).
    table: SharedTable,
    /// Snapshot readers waiting per topic (see `snapshot`).
    reads: Mutex<HashMap<String, Reads>>,
    /// A weak handle on ourselves, for the read tasks.
    me: std::sync::Weak<RedisStore>,
    watched: Mutex<HashSet<String>>,
    /// Topics whose last write failed: repaired at the next heartbeat.
    damaged: Mutex<HashSet<String>>,
    /// Topics repaired by the last heartbeat, repaired once more by the next: a leave
    /// committed while a repair was on its way is then removed again.
    repaired: Mutex<HashSet<String>>,
    stats: Arc<PresenceStats>,
}

fn field(node: &str, phx_ref: &str) -> String {
    format!("{node}|{phx_ref}")
}

fn value(key: &str, meta: &Meta) -> String {
    json!({"key": key, "meta": meta}).to_string()
}

/// [`value`] of a meta kept as JSON text.
fn value_text(key: &str, meta: &str) -> String {
    format!(
        "{{\"key\":{},\"meta\":{meta}}}",
        Value::String(key.to_owned())
    )
}

fn phx_ref(meta: &Meta) -> &str {
    meta.get("phx_ref")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// A stored presence value, borrowed: the meta stays JSON text.
#[derive(serde::Deserialize)]
struct StoredRef<'a> {
    #[serde(borrow)]
    key: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    meta: &'a serde_json::value::RawValue,
}

/// `REPAIR_SCRIPT`'s reply: its number (none when nothing changed), the values it added
/// and the values it removed.
fn parse_repair(reply: &[String]) -> Option<(Option<u64>, &[String], &[String])> {
    let [seq, added, changed @ ..] = reply else {
        return None;
    };
    let seq: u64 = seq.parse().ok()?;
    let added: usize = added.parse().ok()?;
    let (joins, leaves) = changed.split_at_checked(added)?;
    Some(((seq > 0).then_some(seq), joins, leaves))
}

fn parse_value(v: &str) -> Option<(String, Meta)> {
    let mut v: Value = serde_json::from_str(v).ok()?;
    let key = v.get("key")?.as_str()?.to_owned();
    let Value::Object(meta) = v.get_mut("meta")?.take() else {
        return None;
    };
    Some((key, meta))
}

impl RedisStore {
    /// Writes a batch of this node's changes (see `COMMIT_SCRIPT`).
    async fn write(&self, topic: &str, diff: &Diff, emptied: bool) -> Result<u64, ClusterError> {
        let k = &self.redis.keys;
        let node = &*self.redis.node;
        let script = redis::Script::new(COMMIT_SCRIPT);
        let mut inv = script.prepare_invoke();
        inv.key(k.presence(topic))
            .key(k.presence_seq(topic))
            .arg(self.ttl_ms())
            .arg(diff.joins.len());
        for (key, meta) in &diff.joins {
            inv.arg(field(node, phx_ref(meta))).arg(value(key, meta));
        }
        for (_, meta) in &diff.leaves {
            inv.arg(field(node, phx_ref(meta)));
        }
        let seq: String = self.redis.script(&inv).await?;
        // The reaper finds a dead node's topics in this index.
        let topics_key = k.node_topics(node);
        if emptied {
            self.redis
                .query::<()>(redis::cmd("SREM").arg(&topics_key).arg(keys::escape(topic)))
                .await?;
        } else if !diff.joins.is_empty() {
            let mut pipe = redis::pipe();
            pipe.cmd("SADD")
                .arg(&topics_key)
                .arg(keys::escape(topic))
                .ignore();
            pipe.cmd("PEXPIRE")
                .arg(&topics_key)
                .arg(self.ttl_ms())
                .ignore();
            self.redis.pipe::<()>(&pipe).await?;
        }
        seq.parse()
            .map_err(|_| ClusterError::Layout(format!("presence sequence is not a number: {seq}")))
    }
}

#[async_trait]
impl Commit for RedisStore {
    async fn commit(&self, topic: &str, diff: &Diff, _: u64, emptied: bool) -> Option<u64> {
        match self.write(topic, diff, emptied).await {
            Ok(seq) => Some(seq),
            Err(e) => {
                self.stats.write_failures.fetch_add(1, Ordering::Relaxed);
                self.damaged
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(topic.to_owned());
                tracing::warn!(error = %e, topic, "presence write failed; repaired at the next heartbeat");
                None
            }
        }
    }
}

/// Starts a cluster node's tracker: presences written to `redis`, diffs broadcast through
/// `pubsub`, coalesced per `window`; its heartbeat task runs until `shutdown`.
/// `pubsub_stats` are the pub/sub adapter's counters: diffs published while it reconnected,
/// dropped publishes and other nodes' messages that never arrived may be lost diffs, so each
/// triggers a resync.
pub fn start(
    redis: Redis,
    pubsub: Arc<dyn PubSub>,
    pubsub_stats: Arc<crate::pubsub::RedisStats>,
    window: std::time::Duration,
    shutdown: CancellationToken,
) -> (Arc<Tracker>, Arc<PresenceStats>, JoinHandle<()>) {
    let stats = Arc::new(PresenceStats::default());
    let table = SharedTable::default();
    let store = Arc::new_cyclic(|me| RedisStore {
        reads: Mutex::new(HashMap::new()),
        me: me.clone(),
        redis,
        pubsub: pubsub.clone(),
        table: table.clone(),
        watched: Mutex::new(HashSet::new()),
        damaged: Mutex::new(HashSet::new()),
        repaired: Mutex::new(HashSet::new()),
        stats: stats.clone(),
    });
    let task = tokio::spawn(store.clone().heartbeat_loop(pubsub_stats, shutdown));
    let tracker = Arc::new(Tracker::new(table, store, pubsub, window));
    (tracker, stats, task)
}

impl RedisStore {
    fn ttl_ms(&self) -> u64 {
        self.redis.settings.down_ms * 3
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
        // When the last acknowledged heartbeat was sent (see `beat`'s `unsure`).
        let mut last_ok = Instant::now();
        let unsure_after = Duration::from_millis(self.redis.settings.down_ms / 2);
        let mut resyncs = Resyncs::default();
        // Pub/sub counters whose movement means presence diffs may have been lost: diffs
        // published while it reconnected, dropped publishes, and other nodes' messages that
        // never arrived (a gap in their numbering: published while this node was not
        // subscribed, say). Each triggers a resync.
        let signals = [
            (&pubsub.reconnects, "pub/sub reconnected"),
            (&pubsub.publish_dropped, "broadcasts were dropped"),
            (&pubsub.lost, "messages from other nodes were lost"),
        ];
        let mut seen = signals.map(|(counter, _)| counter.load(Ordering::Relaxed));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let sent = Instant::now();
            match self
                .beat(failing && last_ok.elapsed() >= unsure_after)
                .await
            {
                Ok(beat) => {
                    self.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                    ::metrics::counter!(crate::metrics::PRESENCE_HEARTBEATS, "result" => "ok")
                        .increment(1);
                    if failing || (!first && !beat.had_heartbeat) {
                        tracing::info!("redis presence state was lost or unreachable: re-announcing and resyncing");
                        self.announce_own(&beat.repaired).await;
                        resyncs.at = Some(Instant::now() + period);
                    }
                    for ((counter, what), seen) in signals.iter().zip(seen.iter_mut()) {
                        let now = counter.load(Ordering::Relaxed);
                        if now != *seen {
                            *seen = now;
                            tracing::info!("{what}: diffs may have been lost, resyncing presence");
                            resyncs.at.get_or_insert(Instant::now() + period);
                        }
                    }
                    failing = false;
                    last_ok = sent;
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
                    resyncs.run_due(&self).await;
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

    /// Writes the heartbeat and refreshes the TTLs of this node's topics (O(1) commands per
    /// topic), then repairs the topics whose presences may be missing (see the module doc).
    /// Says whether this node's presences may have been lost (its previous heartbeat key was
    /// gone, or another node is reaping or has just reaped it) and which topics it repaired.
    ///
    /// The node's own keys share its hash tag (one pipeline); the node set and each topic's
    /// keys are in other slots, so in a Redis Cluster they go as one pipeline per slot,
    /// spread over the shards that own them.
    ///
    /// `unsure`: heartbeats failed for long enough that this node's keys may have expired.
    /// Its previous heartbeat key then proves nothing: a heartbeat that timed out may still
    /// have been carried out once Redis answered again (a frozen Redis runs the commands
    /// waiting in its sockets when it wakes), and a topic's hash may have been written again
    /// by another node without this node's fields. So every topic is repaired.
    async fn beat(&self, unsure: bool) -> Result<Beat, ClusterError> {
        let k = &self.redis.keys;
        let node = &*self.redis.node;
        let ttl = self.ttl_ms();
        let mut own = redis::pipe();
        own.cmd("SET")
            .arg(k.heartbeat(node))
            .arg("1")
            .arg("PX")
            .arg(self.redis.settings.down_ms)
            .arg("GET");
        let mut spread: Vec<(String, redis::Cmd)> = Vec::new();
        let mut nodes = redis::cmd("SADD");
        nodes.arg(k.nodes()).arg(node);
        let mut nodes_ttl = redis::cmd("PEXPIRE");
        nodes_ttl.arg(k.nodes()).arg(ttl);
        spread.push((k.nodes(), nodes));
        spread.push((k.nodes(), nodes_ttl));
        // The topics where this node has committed presences, each with the position of its
        // hash's PEXPIRE in `spread` (0 in the reply: the hash is gone).
        let mut topics: Vec<(String, usize)> = Vec::new();
        {
            let table = lock(&self.table);
            let topics_key = k.node_topics(node);
            let mut sadd = redis::cmd("SADD");
            sadd.arg(&topics_key);
            for (topic, t) in table.topics() {
                // Uncommitted joins are written by their batch, which numbers them.
                if !t.entries.iter().any(|e| e.committed) {
                    continue;
                }
                let pkey = k.presence(topic);
                let mut expire = redis::cmd("PEXPIRE");
                expire.arg(&pkey).arg(ttl);
                let mut expire_seq = redis::cmd("PEXPIRE");
                expire_seq.arg(k.presence_seq(topic)).arg(ttl);
                topics.push((topic.clone(), spread.len()));
                spread.push((pkey.clone(), expire));
                spread.push((pkey, expire_seq));
                sadd.arg(keys::escape(topic));
            }
            if !topics.is_empty() {
                own.add_command(sadd).ignore();
                own.cmd("PEXPIRE").arg(&topics_key).arg(ttl).ignore();
            }
        }
        // A survivor reaping this node holds this lock, and sets it again once its removals
        // are done: seen, every presence of this node is written again (below) and announced
        // (the caller), whatever the order in which the reap and this node's return ran.
        own.cmd("EXISTS").arg(k.reap_lock(node));
        let (previous, reaped): (Option<String>, bool) = self.redis.pipe(&own).await?;
        let replies = self.redis.pipe_by_slot(spread).await?;
        if reaped {
            tracing::info!(
                "another node is reaping or reaped this node's presences: writing them again"
            );
        }
        let lost_all = previous.is_none() || reaped || unsure;
        let mut repair: HashSet<String> =
            std::mem::take(&mut *self.damaged.lock().unwrap_or_else(|e| e.into_inner()));
        let again = std::mem::take(&mut *self.repaired.lock().unwrap_or_else(|e| e.into_inner()));
        for (topic, at) in topics {
            let gone = replies
                .get(at)
                .is_some_and(|v| redis::from_redis_value::<i64>(v.clone()).is_ok_and(|n| n == 0));
            if lost_all || gone {
                repair.insert(topic);
            }
        }
        let next: HashSet<String> = repair.difference(&again).cloned().collect();
        repair.extend(again);
        self.repair(&repair).await;
        *self.repaired.lock().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(Beat {
            had_heartbeat: !lost_all,
            repaired: repair,
        })
    }

    /// Writes this node's committed presences of `topics` again, exactly (`REPAIR_SCRIPT`),
    /// and broadcasts what that changed as a numbered diff: watchers on every node see the
    /// presences come back (or go) in order with the topic's other changes, and a snapshot
    /// read before the repair cannot take them back (`pubsub::Gate`). A topic that fails
    /// stays damaged for the next heartbeat.
    async fn repair(&self, topics: &HashSet<String>) {
        let k = &self.redis.keys;
        let node = &*self.redis.node;
        let script = redis::Script::new(REPAIR_SCRIPT);
        for topic in topics {
            let fields: Vec<(String, String)> = {
                let table = lock(&self.table);
                let Some(t) = table.topic(topic) else {
                    continue;
                };
                t.entries
                    .iter()
                    .filter(|e| e.committed)
                    .map(|e| (field(node, e.phx_ref()), value_text(&e.key, e.meta_text())))
                    .collect()
            };
            let mut inv = script.prepare_invoke();
            inv.key(k.presence(topic))
                .key(k.presence_seq(topic))
                .arg(self.ttl_ms())
                .arg(format!("{node}|"));
            for (f, v) in &fields {
                inv.arg(f).arg(v);
            }
            match self.redis.script::<Vec<String>>(&inv).await {
                Ok(reply) => {
                    ::metrics::counter!(crate::metrics::PRESENCE_REPAIRS).increment(1);
                    let Some((seq, joins, leaves)) = parse_repair(&reply) else {
                        tracing::warn!(topic, "presence repair answered in an unknown shape");
                        continue;
                    };
                    tracing::debug!(
                        topic,
                        presences = fields.len(),
                        joins = joins.len(),
                        leaves = leaves.len(),
                        "presences written again"
                    );
                    let Some(seq) = seq else { continue };
                    let diff = Diff {
                        joins: joins.iter().filter_map(|v| parse_value(v)).collect(),
                        leaves: leaves.iter().filter_map(|v| parse_value(v)).collect(),
                    };
                    let mut msg = Broadcast::new(
                        topic.clone(),
                        events::PRESENCE_DIFF,
                        Payload::Json(diff.to_payload()),
                    );
                    msg.seq = Some(Seq::Change(seq));
                    self.pubsub.broadcast(Arc::new(msg), None);
                }
                Err(e) => {
                    tracing::warn!(error = %e, topic, "presence repair failed; retried at the next heartbeat");
                    self.damaged
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(topic.clone());
                }
            }
        }
    }

    /// Broadcasts this node's presences of the topics not `repaired` as joins, after Redis was
    /// unreachable (their broadcasts may have been dropped meanwhile). Repaired topics had
    /// their changes broadcast, numbered, by the repair. Not numbered: these presences were in
    /// Redis all along, so no snapshot lacks them.
    async fn announce_own(&self, repaired: &HashSet<String>) {
        let diffs: Vec<(String, Diff)> = lock(&self.table)
            .topics()
            .filter(|(topic, _)| !repaired.contains(*topic))
            .map(|(topic, t)| {
                let joins = t
                    .entries
                    .iter()
                    .map(|e| (e.key.clone(), e.meta()))
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
            let msg = Broadcast::new(
                topic,
                events::PRESENCE_DIFF,
                Payload::Json(diff.to_payload()),
            );
            self.pubsub.broadcast(Arc::new(msg), None);
        }
    }

    /// Pushes a fresh `presence_state` to this node's watchers of every presence topic (of
    /// `only`, if given). A change numbered after a snapshot can reach a watcher before it;
    /// the watcher then drops the snapshot (`pubsub::Gate`), which may have carried a change
    /// it missed. So the topic's number is read again once the snapshot is on its way, and the
    /// topics where it moved are returned, to be resynced at the next heartbeat.
    async fn resync(&self, only: Option<HashSet<String>>) -> HashSet<String> {
        let topics: Vec<String> = {
            let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
            watched.retain(|t| self.pubsub.local_subscribers(t) > 0);
            watched
                .iter()
                .filter(|t| only.as_ref().is_none_or(|o| o.contains(*t)))
                .cloned()
                .collect()
        };
        let mut moved = HashSet::new();
        for topic in topics {
            let snapshot = self.snapshot(&topic).await;
            let mut msg = Broadcast::new(
                topic.clone(),
                events::PRESENCE_STATE,
                Payload::Encoded(snapshot.state),
            );
            msg.seq = snapshot.seq.map(Seq::State);
            self.pubsub.local_broadcast(Arc::new(msg), None);
            let now = self
                .redis
                .query::<Option<String>>(
                    redis::cmd("GET").arg(self.redis.keys.presence_seq(&topic)),
                )
                .await
                .ok()
                .flatten()
                .and_then(|n| n.parse::<u64>().ok());
            // Unnumbered (Redis failed the read) or moved since: read again.
            if snapshot.seq.is_none() || now.is_some_and(|n| Some(n) > snapshot.seq) {
                moved.insert(topic);
            }
        }
        moved
    }

    /// Removes the presences of nodes whose heartbeat expired, broadcasting their leaves.
    async fn reap(&self) -> Result<(), ClusterError> {
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
        // Heartbeat keys live in their nodes' slots.
        let exists: Vec<(String, redis::Cmd)> = others
            .iter()
            .map(|n| {
                let key = k.heartbeat(n);
                let mut cmd = redis::cmd("EXISTS");
                cmd.arg(&key);
                (key, cmd)
            })
            .collect();
        let alive = self.redis.pipe_by_slot(exists).await?;
        for (node, alive) in others.iter().zip(alive) {
            if redis::from_redis_value::<bool>(alive).unwrap_or(true) {
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
                inv.key(k.presence(&topic))
                    .key(k.presence_seq(&topic))
                    .arg(format!("{node}|"))
                    .arg(self.ttl_ms());
                let reply: Vec<String> = self.redis.script(&inv).await?;
                let Some((seq, gone)) = reply.split_first() else {
                    continue;
                };
                let leaves: Vec<(String, Meta)> =
                    gone.iter().filter_map(|v| parse_value(v)).collect();
                if leaves.is_empty() {
                    continue;
                }
                removed += leaves.len() as u64;
                let diff = Diff {
                    joins: vec![],
                    leaves,
                };
                let mut msg = Broadcast::new(
                    topic,
                    events::PRESENCE_DIFF,
                    Payload::Json(diff.to_payload()),
                );
                msg.seq = seq.parse().ok().map(Seq::Change);
                self.pubsub.broadcast(Arc::new(msg), None);
            }
            let mut del = redis::cmd("DEL");
            del.arg(k.node_topics(node));
            let mut srem = redis::cmd("SREM");
            srem.arg(k.nodes()).arg(node);
            // The lock again, now that every removal ran: a node that was only paused and
            // came back meanwhile sees it on its next heartbeat and writes its presences back.
            let mut relock = redis::cmd("SET");
            relock
                .arg(k.reap_lock(node))
                .arg(&*self.redis.node)
                .arg("PX")
                .arg(self.redis.settings.down_ms);
            self.redis
                .pipe_by_slot(vec![
                    (k.node_topics(node), del),
                    (k.reap_lock(node), relock),
                    (k.nodes(), srem),
                ])
                .await?;
            self.stats.reaped_nodes.fetch_add(1, Ordering::Relaxed);
            ::metrics::counter!(crate::metrics::REAPED_NODES).increment(1);
            self.stats
                .reaped_presences
                .fetch_add(removed, Ordering::Relaxed);
            tracing::info!(dead = %node, presences = removed, "reaped a dead node");
        }
        Ok(())
    }

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
            let snapshot = self.read(topic).await;
            for tx in waiting {
                let _ = tx.send(snapshot.clone());
            }
        }
    }

    /// One snapshot of a topic's presences from Redis with its number (this node's own
    /// presences, unnumbered, if Redis fails), as `presence_state` JSON text. Built straight
    /// from the stored text: a join storm reads large snapshots often, and building values
    /// for them dominated its cost.
    async fn read(&self, topic: &str) -> Snapshot {
        let k = &self.redis.keys;
        let script = redis::Script::new(SNAPSHOT_SCRIPT);
        let mut inv = script.prepare_invoke();
        inv.key(k.presence(topic)).key(k.presence_seq(topic));
        match self.redis.script::<(String, Vec<String>)>(&inv).await {
            Ok((seq, flat)) => {
                // By field name, as the hash was read before: a stable order of metas.
                let mut stored: BTreeMap<&str, StoredRef<'_>> = BTreeMap::new();
                for pair in flat.chunks_exact(2) {
                    if let Ok(s) = serde_json::from_str::<StoredRef<'_>>(&pair[1]) {
                        if s.meta.get().starts_with('{') {
                            stored.insert(&pair[0], s);
                        }
                    }
                }
                Snapshot {
                    seq: seq.parse().ok(),
                    state: Arc::from(super::state::encode_grouped(
                        stored.values().map(|s| (s.key.as_ref(), s.meta.get())),
                    )),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "presence list from redis failed: answering with this node's presences");
                let (_, state) = lock(&self.table).snapshot(topic);
                Snapshot {
                    seq: None,
                    state: Arc::from(state),
                }
            }
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn snapshot(&self, topic: &str) -> Snapshot {
        self.watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.to_owned());
        // Concurrent reads of one topic share one read, but only one that starts after
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
            Ok(snapshot) => snapshot,
            Err(_) => self.read(topic).await,
        }
    }

    /// Counted from the stored pairs as they come (no `presence_state` text is built): a
    /// counting room of 15,000 is counted about once per interval on every node.
    async fn count(&self, topic: &str) -> super::Count {
        let k = &self.redis.keys;
        let mut cmd = redis::cmd("HVALS");
        cmd.arg(k.presence(topic));
        match self.redis.query::<Vec<String>>(&cmd).await {
            Ok(values) => {
                let mut keys = HashSet::new();
                let mut connections = 0u64;
                for v in &values {
                    if let Ok(s) = serde_json::from_str::<StoredRef<'_>>(v) {
                        connections += 1;
                        keys.insert(s.key);
                    }
                }
                super::Count {
                    users: keys.len() as u64,
                    connections,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, topic, "presence count from redis failed: counting this node's presences");
                lock(&self.table).count(topic)
            }
        }
    }

    fn leaves_on_shutdown(&self) -> bool {
        true
    }

    async fn shutdown(&self) {
        let k = &self.redis.keys;
        let node = &*self.redis.node;
        let mut del = redis::cmd("DEL");
        del.arg(k.heartbeat(node)).arg(k.node_topics(node));
        let mut srem = redis::cmd("SREM");
        srem.arg(k.nodes()).arg(node);
        let cmds = vec![(k.heartbeat(node), del), (k.nodes(), srem)];
        if let Err(e) = self.redis.pipe_by_slot(cmds).await {
            self.stats.write_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "presence shutdown write failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_from_meta_text_reads_back_as_from_the_map() {
        let meta: Meta =
            serde_json::from_value(json!({"online_at": "1", "phx_ref": "r\"1"})).expect("meta");
        let text = Value::Object(meta.clone()).to_string();
        for key in ["alice", "quo\"te", "ü\\n"] {
            let (a, b) = (value(key, &meta), value_text(key, &text));
            assert_eq!(parse_value(&a), parse_value(&b), "{a} vs {b}");
            assert_eq!(parse_value(&b).map(|(k, _)| k), Some(key.to_owned()));
        }
    }
}
