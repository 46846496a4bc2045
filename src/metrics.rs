//! Prometheus metrics: names, the global recorder, and process metrics.
//!
//! Code records through the `metrics` facade with the names below; `/metrics` on the admin
//! port renders them. Labels have bounded cardinality: never a topic or a user id.

use std::sync::{LazyLock, OnceLock};

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_process::Collector;

/// Connected sockets, by `transport`.
pub const SOCKETS: &str = "phx_gateway_sockets";
/// Joined channels.
pub const CHANNELS: &str = "phx_gateway_channels";
/// Channel actor tasks still running (set when metrics are rendered): equals the channels
/// gauge unless a task outlives its channel.
pub const CHANNEL_TASKS: &str = "phx_gateway_channel_tasks";
/// Connection attempts, by `result` (ok, refused, error).
pub const CONNECTS: &str = "phx_gateway_connects_total";
/// Joins, by `result` (ok, refused, error).
pub const JOINS: &str = "phx_gateway_joins_total";
/// Client messages, by `kind` (heartbeat, join, leave, event, malformed).
pub const MESSAGES_IN: &str = "phx_gateway_messages_in_total";
/// Messages queued to clients, by `kind` (reply, push, broadcast).
pub const MESSAGES_OUT: &str = "phx_gateway_messages_out_total";
/// Bytes received from clients.
pub const BYTES_IN: &str = "phx_gateway_bytes_in_total";
/// Bytes written to clients.
pub const BYTES_OUT: &str = "phx_gateway_bytes_out_total";
/// Time to deliver one broadcast to this node's subscribers.
pub const FANOUT_SECONDS: &str = "phx_gateway_broadcast_fanout_seconds";
/// Publish-to-deliver lag of broadcasts from other nodes (from the envelope timestamp).
pub const LAG_SECONDS: &str = "phx_gateway_broadcast_lag_seconds";
/// Presences tracked by this node.
pub const PRESENCE_ENTRIES: &str = "phx_gateway_presence_entries";
/// `presence_count` events pushed by counting rooms.
pub const PRESENCE_COUNTS: &str = "phx_gateway_presence_counts_total";
/// Topics whose presences a node wrote again (its heartbeat found them missing).
pub const PRESENCE_REPAIRS: &str = "phx_gateway_presence_repairs_total";
/// Presence snapshots not delivered to a subscriber that already had a later change.
pub const STALE_SNAPSHOTS: &str = "phx_gateway_presence_stale_snapshots_total";
/// Presence heartbeats, by `result` (ok, error).
pub const PRESENCE_HEARTBEATS: &str = "phx_gateway_presence_heartbeats_total";
/// Reaper runs, by `result` (ok, error).
pub const REAPER_RUNS: &str = "phx_gateway_presence_reaper_runs_total";
/// Dead nodes reaped by this node.
pub const REAPED_NODES: &str = "phx_gateway_presence_reaped_nodes_total";
/// Redis command latency.
pub const REDIS_COMMAND_SECONDS: &str = "phx_gateway_redis_command_duration_seconds";
/// Redis command errors (including timeouts).
pub const REDIS_ERRORS: &str = "phx_gateway_redis_errors_total";
/// 1 while the pub/sub connection to Redis is up.
pub const REDIS_UP: &str = "phx_gateway_redis_up";
/// Pub/sub reconnections.
pub const REDIS_RECONNECTS: &str = "phx_gateway_redis_reconnects_total";
/// Broadcasts from other nodes that never arrived (gaps in their per-topic numbering).
pub const REDIS_LOST: &str = "phx_gateway_redis_lost_total";
/// Frames read from the Phoenix PubSub channel (`result`: delivered, own, other_node,
/// no_subscribers, not_broadcast, unsupported, malformed, version).
pub const PHOENIX_FRAMES: &str = "phx_gateway_phoenix_frames_total";
/// Broadcasts written to the Phoenix PubSub channel (`result`: ok, dropped).
pub const PHOENIX_PUBLISHED: &str = "phx_gateway_phoenix_published_total";
/// History appends (`result`: ok, error).
pub const HISTORY_APPENDS: &str = "phx_gateway_history_appends_total";
/// Joins that asked to recover from a position (`result`: recovered, failed, error).
pub const HISTORY_RECOVERIES: &str = "phx_gateway_history_recoveries_total";
/// Messages pushed from history to joiners (recovery and backfill).
pub const HISTORY_REPLAYED: &str = "phx_gateway_history_replayed_total";
/// Channels subscribed again after Redis dropped them (shard lost, slot moved).
pub const REDIS_RESUBSCRIBES: &str = "phx_gateway_redis_resubscribes_total";
/// Broadcasts not published to Redis (queue full or Redis unavailable).
pub const REDIS_PUBLISH_DROPPED: &str = "phx_gateway_redis_publish_dropped_total";
/// Sockets closed because their outbound queue overflowed.
pub const SLOW_CONSUMERS: &str = "phx_gateway_slow_consumer_disconnects_total";
/// Webhook call latency, by `kind` (join, event).
pub const WEBHOOK_SECONDS: &str = "phx_gateway_webhook_duration_seconds";
/// Webhook failures, by `kind`.
pub const WEBHOOK_ERRORS: &str = "phx_gateway_webhook_errors_total";
/// Connections and messages refused by the admission limits, by `limit`.
pub const LIMITED: &str = "phx_gateway_limited_total";
/// Socket closes, by `reason`.
pub const SOCKET_CLOSES: &str = "phx_gateway_socket_closes_total";
/// Client messages for a topic the socket has not joined (answered `unmatched topic`).
pub const UNMATCHED: &str = "phx_gateway_unmatched_total";

/// Bytes the program holds in the heap, by the allocator's own count (builds whose allocator
/// reports it: jemalloc). Against `process_resident_memory_bytes`: a leak grows both, an
/// allocator keeping freed memory only the second.
pub const HEAP_ALLOCATED: &str = "phx_gateway_heap_allocated_bytes";
/// Bytes of physical memory the allocator holds (its live heap, metadata and freed pages not
/// yet returned to the OS).
pub const HEAP_RESIDENT: &str = "phx_gateway_heap_resident_bytes";
/// Bytes the allocator uses for its own bookkeeping. It follows the largest heap the process
/// has had, and stays: what a node keeps after a peak beyond its idle size is mostly this.
pub const HEAP_METADATA: &str = "phx_gateway_heap_metadata_bytes";

/// What an allocator says about its heap.
#[derive(Debug, Clone, Copy)]
pub struct HeapStats {
    /// Bytes allocated and not freed.
    pub allocated: u64,
    /// Bytes of physical memory it holds.
    pub resident: u64,
    /// Bytes of its own bookkeeping.
    pub metadata: u64,
}

/// Reads the allocator's counts, installed by the binary that chose the allocator.
static HEAP: OnceLock<fn() -> Option<HeapStats>> = OnceLock::new();

/// Lets the binary report its allocator's heap (read at each render).
pub fn report_heap(read: fn() -> Option<HeapStats>) {
    let _ = HEAP.set(read);
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The `process_*` metrics (CPU, memory, file descriptors, threads), read when rendered.
static PROCESS: LazyLock<Collector> = LazyLock::new(Collector::default);

/// Installs the global recorder (once per process) and returns its handle.
pub fn init() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
        .inspect(|handle| start_upkeep(handle))
}

/// Histogram samples are kept raw until upkeep folds them into their buckets. Rendering
/// does that, but a node nobody scrapes would keep every sample: fold them every few
/// seconds whatever happens.
fn start_upkeep(handle: &'static PrometheusHandle) {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_EVERY);
                handle.run_upkeep();
                crate::shrink::release_thread_cache();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the metrics upkeep thread");
        }
    });
}

const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

fn describe() {
    describe_gauge!(SOCKETS, "Connected sockets, by transport.");
    describe_gauge!(CHANNELS, "Joined channels.");
    describe_gauge!(CHANNEL_TASKS, "Channel actor tasks still running.");
    describe_counter!(CONNECTS, "Connection attempts, by result.");
    describe_counter!(JOINS, "Channel joins, by result.");
    describe_counter!(MESSAGES_IN, "Client messages, by kind.");
    describe_counter!(MESSAGES_OUT, "Messages queued to clients, by kind.");
    describe_counter!(BYTES_IN, Unit::Bytes, "Bytes received from clients.");
    describe_counter!(BYTES_OUT, Unit::Bytes, "Bytes written to clients.");
    describe_histogram!(
        FANOUT_SECONDS,
        Unit::Seconds,
        "Time to deliver one broadcast to this node's subscribers."
    );
    describe_histogram!(
        LAG_SECONDS,
        Unit::Seconds,
        "Publish-to-deliver lag of broadcasts from other nodes."
    );
    describe_gauge!(PRESENCE_ENTRIES, "Presences tracked by this node.");
    describe_counter!(PRESENCE_HEARTBEATS, "Presence heartbeats, by result.");
    describe_counter!(
        STALE_SNAPSHOTS,
        "Presence snapshots (resyncs) not delivered to a subscriber that already had a later change."
    );
    describe_counter!(
        PRESENCE_REPAIRS,
        "Topics whose presences this node wrote again (gone from Redis, or a failed write)."
    );
    describe_counter!(
        PRESENCE_COUNTS,
        "presence_count events pushed by this node's counting rooms (one per room and change)."
    );
    describe_counter!(REAPER_RUNS, "Dead-node reaper runs, by result.");
    describe_counter!(REAPED_NODES, "Dead nodes reaped by this node.");
    describe_histogram!(
        REDIS_COMMAND_SECONDS,
        Unit::Seconds,
        "Redis command latency."
    );
    describe_counter!(REDIS_ERRORS, "Redis command errors and timeouts.");
    describe_gauge!(REDIS_UP, "1 while the Redis pub/sub connection is up.");
    describe_counter!(
        REDIS_RECONNECTS,
        "Redis reconnections (subscriber connection, or a new primary's connection)."
    );
    describe_counter!(
        PHOENIX_FRAMES,
        "Frames read from the Phoenix PubSub channel, by result (delivered, own, other_node, no_subscribers, not_broadcast, unsupported, malformed, version)."
    );
    describe_counter!(
        PHOENIX_PUBLISHED,
        "Gateway broadcasts written to the Phoenix PubSub channel (result: ok, dropped)."
    );
    describe_counter!(
        REDIS_LOST,
        "Broadcasts from other nodes that never arrived (gaps in their per-topic numbering)."
    );
    describe_counter!(
        HISTORY_APPENDS,
        "Broadcasts appended to a topic's history (result: ok, error)."
    );
    describe_counter!(
        HISTORY_RECOVERIES,
        "Joins that asked to recover from a position (result: recovered, failed, error)."
    );
    describe_counter!(
        HISTORY_REPLAYED,
        "Messages pushed from history to joiners (recovery and backfill)."
    );
    describe_counter!(
        REDIS_RESUBSCRIBES,
        "Channels subscribed again after Redis dropped them (shard lost, slot moved)."
    );
    describe_counter!(REDIS_PUBLISH_DROPPED, "Broadcasts not published to Redis.");
    describe_counter!(
        SLOW_CONSUMERS,
        "Sockets closed because their outbound queue overflowed."
    );
    describe_counter!(SOCKET_CLOSES, "Socket closes, by reason.");
    describe_counter!(
        LIMITED,
        "Connections and messages refused by the admission limits, by limit."
    );
    describe_histogram!(
        WEBHOOK_SECONDS,
        Unit::Seconds,
        "Webhook call latency, by kind."
    );
    describe_counter!(
        UNMATCHED,
        "Client messages for a topic the socket has not joined."
    );
    describe_counter!(WEBHOOK_ERRORS, "Webhook failures, by kind.");
    describe_gauge!(
        HEAP_ALLOCATED,
        Unit::Bytes,
        "Bytes held in the heap, by the allocator's count (jemalloc builds)."
    );
    describe_gauge!(
        HEAP_RESIDENT,
        Unit::Bytes,
        "Physical memory the allocator holds: live heap, metadata, freed pages not yet returned (jemalloc builds)."
    );
    describe_gauge!(
        HEAP_METADATA,
        Unit::Bytes,
        "The allocator's own bookkeeping; follows the largest heap so far (jemalloc builds)."
    );
    PROCESS.describe();
}

/// Renders every metric in the Prometheus text format, process metrics included.
pub fn render() -> String {
    let Some(handle) = init() else {
        return String::new();
    };
    handle.run_upkeep();
    PROCESS.collect();
    if let Some(stats) = HEAP.get().and_then(|read| read()) {
        ::metrics::gauge!(HEAP_ALLOCATED).set(stats.allocated as f64);
        ::metrics::gauge!(HEAP_RESIDENT).set(stats.resident as f64);
        ::metrics::gauge!(HEAP_METADATA).set(stats.metadata as f64);
    }
    handle.render()
}
