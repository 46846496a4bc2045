//! What backends publish straight into the gateway's channels (the Redis emitter of
//! docs/redis.md) forwarded to the Phoenix PubSub, by exactly one gateway node.
//!
//! A gateway node forwards its own broadcasts (`phoenix.rs`); an envelope published by a
//! backend has no origin node, and reaches only the nodes subscribed to its topic, maybe none.
//! So one node, the holder of a lease in Redis (renewed every heartbeat, lasting three), also
//! PSUBSCRIBEs every topic's channel and writes each external envelope to the Phoenix channel
//! once. When it dies, another node takes the lease within three heartbeats; what was
//! published in between is not forwarded (at most once, like Redis pub/sub itself).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use super::envelope;
use super::phoenix::{pubsub_connection, Bridge, Lost};
use crate::cluster::{ClusterError, Redis};

/// Takes or renews the lease: 1 if this node holds it now.
const ACQUIRE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0";

/// Gives the lease up if this node holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// Most frames published in one pipeline.
const BATCH: usize = 256;

/// Competes for the lease every heartbeat and forwards while holding it, until `shutdown`.
pub(super) async fn run(bridge: Arc<Bridge>, redis: Redis, shutdown: CancellationToken) {
    let heartbeat = Duration::from_millis(redis.settings.heartbeat_ms);
    let mut tick = tokio::time::interval(heartbeat);
    let mut failures = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match lease(&redis, ACQUIRE).await {
            Ok(true) => {
                failures = 0;
                tracing::info!("forwarding external publishes to the phoenix pubsub (this node holds the lease)");
                let why = lead(&bridge, &redis, &shutdown).await;
                if shutdown.is_cancelled() {
                    let _ = lease(&redis, RELEASE).await;
                    return;
                }
                tracing::warn!(error = %why, "stopped forwarding external publishes to the phoenix pubsub");
            }
            Ok(false) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures.is_power_of_two() {
                    tracing::warn!(error = %e, "phoenix forwarder lease not reachable");
                }
            }
        }
    }
}

async fn lease(redis: &Redis, script: &str) -> Result<bool, ClusterError> {
    let lease_ms = redis.settings.heartbeat_ms.saturating_mul(3);
    let script = redis::Script::new(script);
    let mut inv = script.prepare_invoke();
    inv.key(redis.keys.phoenix_forwarder())
        .arg(redis.node.as_ref())
        .arg(lease_ms);
    redis.script::<i64>(&inv).await.map(|n| n == 1)
}

/// Forwards external envelopes while the lease is renewed.
async fn lead(bridge: &Bridge, redis: &Redis, shutdown: &CancellationToken) -> Lost {
    let (mut sink, mut stream) = match pubsub_connection(redis).await {
        Ok(conn) => conn,
        Err(e) => return e,
    };
    if let Err(e) = sink.psubscribe(redis.keys.all_channels()).await {
        return e.into();
    }
    let mut renew = tokio::time::interval(Duration::from_millis(redis.settings.heartbeat_ms));
    renew.tick().await;
    let mut frames = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Lost::Shutdown,
            _ = renew.tick() => match lease(redis, ACQUIRE).await {
                Ok(true) => {}
                Ok(false) => return Lost::LeaseTaken,
                Err(e) => return e.into(),
            },
            msg = stream.next() => {
                let Some(msg) = msg else { return Lost::Ended };
                frames.extend(external_frame(bridge, msg.get_payload_bytes()));
                // Whatever else is already here goes in the same pipeline.
                while frames.len() < BATCH {
                    match stream.next().now_or_never() {
                        Some(Some(msg)) => frames.extend(external_frame(bridge, msg.get_payload_bytes())),
                        Some(None) => return Lost::Ended,
                        None => break,
                    }
                }
                if !frames.is_empty() {
                    let n = frames.len() as u64;
                    let mut pipe = redis::pipe();
                    for frame in frames.drain(..) {
                        pipe.cmd("PUBLISH").arg(bridge.channel()).arg(frame).ignore();
                    }
                    match redis.pipe::<()>(&pipe).await {
                        Ok(()) => bridge.forwarded(n),
                        Err(e) => {
                            bridge.dropped_many(n);
                            tracing::warn!(error = %e, "external publishes not forwarded to the phoenix pubsub");
                        }
                    }
                }
            }
        }
    }
}

/// The Phoenix frame of an envelope a backend published (no origin node); None for the
/// gateway nodes' own envelopes, which their origin forwards.
fn external_frame(bridge: &Bridge, bytes: &[u8]) -> Option<Vec<u8>> {
    if !envelope::is_external(bytes) {
        return None;
    }
    let env = envelope::decode(bytes).ok()?;
    bridge.frame_for(&env.broadcast)
}
