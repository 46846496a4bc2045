//! Redis connectivity shared by the cluster adapters, for every topology (one endpoint, a
//! Sentinel-watched primary, a Redis Cluster): the command connection, where subscriptions
//! go, key names, the node identity and migrations.

pub mod keys;
pub mod migrate;
mod shards;
mod single;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::FromRedisValue;
use secrecy::ExposeSecret;

use crate::config::{RedisMode, RedisSettings};
pub use keys::Keys;
use shards::{Seeds, Shards};
use single::Single;

/// Why a Redis operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Redis answered with an error, or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The CA file for `rediss://` cannot be read.
    #[error("cannot read redis.tls_ca_file {path}: {source}")]
    TlsCa {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The command did not complete in time.
    #[error("redis command timed out")]
    Timeout,
    /// The key layout in Redis is not the one this gateway understands.
    #[error("{0}")]
    Layout(String),
}

/// A handle on the cluster's Redis, whichever topology carries it. Cheap to clone.
///
/// Commands go over one multiplexed connection (one per shard in a Redis Cluster) that
/// reconnects by itself: Redis pipelines what concurrent callers send on it, so a command
/// costs one round trip, and no pool checkout adds another.
#[derive(Clone)]
pub struct Redis {
    backend: Backend,
    /// Key and channel names.
    pub keys: Keys,
    /// This node's id: unique per process start, so a restarted node is a new node.
    pub node: Arc<str>,
    /// The settings it was built from.
    pub settings: RedisSettings,
    timeout: Duration,
}

#[derive(Clone)]
enum Backend {
    /// One primary (`redis.url` or Sentinel).
    Single(Arc<Single>),
    /// A Redis Cluster: the crate's client routes by slot, follows MOVED/ASK and refreshes
    /// the topology; rebuilt when a primary died (see `shards.rs`).
    Cluster(Arc<Shards>),
}

/// Where pub/sub subscriptions are made.
pub enum Subscriptions {
    /// Classic SUBSCRIBE on a dedicated connection to the primary (this client's).
    Classic(redis::Client),
    /// Sharded SSUBSCRIBE through the cluster client (the seeds and TLS roots to build it).
    Sharded(ShardedSource),
}

/// What a sharded subscriber needs to build its own cluster connection.
pub struct ShardedSource {
    seeds: Seeds,
}

impl ShardedSource {
    /// A RESP3 cluster connection whose pushes (messages, `sunsubscribe`, disconnections)
    /// go to `pushes`. The crate re-subscribes what it tracks when a node reconnects or the
    /// slot map changes; a new connection reads the slot map afresh.
    pub async fn connect(
        &self,
        pushes: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
    ) -> Result<ClusterConnection, ClusterError> {
        let builder = self
            .seeds
            .builder()
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(pushes);
        self.seeds.connect(builder).await
    }
}

/// A client for one endpoint URL, trusting `certs` (PEM) for `rediss://` when given.
fn client(url: &str, certs: Option<&[u8]>) -> Result<redis::Client, ClusterError> {
    Ok(match certs {
        Some(pem) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            },
        )?,
        None => redis::Client::open(url)?,
    })
}

/// This node's id: `<name>-<random hex>`, restricted to characters safe in key names.
fn node_id(configured: &str) -> String {
    let base = if configured.is_empty() {
        std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "node".into())
    } else {
        configured.to_owned()
    };
    let base: String = base
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .take(64)
        .collect();
    format!(
        "{}-{:08x}",
        if base.is_empty() { "node" } else { &base },
        rand::random::<u32>()
    )
}

/// One single-slot pipeline's replies, with the input positions of its commands.
pub type SlotReplies = (Vec<usize>, Result<Vec<redis::Value>, ClusterError>);

/// Most per-slot pipelines in flight at once (`pipe_by_slot`).
const SLOT_PIPELINES: usize = 32;

impl Redis {
    /// Connects to the configured topology and checks that Redis answers, within the
    /// command timeout: an unreachable Redis is an error at start-up, not a hang. No URL
    /// is ever logged.
    pub async fn connect(settings: &RedisSettings) -> Result<Self, ClusterError> {
        // rustls needs exactly one process-wide crypto provider for rediss://.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs: Option<Arc<[u8]>> = match &settings.tls_ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|source| ClusterError::TlsCa {
                        path: path.clone(),
                        source,
                    })?
                    .into(),
            ),
            None => None,
        };
        let timeout = Duration::from_millis(settings.command_timeout_ms);
        let backend = match settings.mode() {
            RedisMode::Embedded => {
                return Err(ClusterError::Layout("no Redis is configured".into()))
            }
            RedisMode::Single | RedisMode::Sentinel => Backend::Single(Arc::new(
                Single::connect(settings, certs.as_deref(), timeout).await?,
            )),
            RedisMode::Cluster => {
                let urls: Vec<String> = settings
                    .cluster_urls
                    .iter()
                    .map(|u| u.expose_secret().trim().to_owned())
                    .collect();
                let seeds = Seeds {
                    urls: Arc::new(urls),
                    certs,
                    timeout,
                };
                Backend::Cluster(Arc::new(Shards::connect(seeds).await?))
            }
        };
        let redis = Self {
            backend,
            keys: Keys::new(&settings.key_prefix),
            node: node_id(&settings.node_name).into(),
            settings: settings.clone(),
            timeout,
        };
        let pong: String = redis.query(&redis::cmd("PING")).await?;
        tracing::debug!(reply = %pong, mode = ?settings.mode(), "redis reachable");
        Ok(redis)
    }

    /// Whether this is a Redis Cluster (sharded pub/sub, slot-bound pipelines).
    pub fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster(_))
    }

    /// Where pub/sub subscriptions go; in Sentinel mode the primary is looked up again.
    pub async fn subscriptions(&self) -> Result<Subscriptions, ClusterError> {
        match &self.backend {
            Backend::Single(single) => Ok(Subscriptions::Classic(single.fresh_client().await?)),
            Backend::Cluster(shards) => Ok(Subscriptions::Sharded(ShardedSource {
                seeds: shards.seeds.clone(),
            })),
        }
    }

    /// Bumped each time the primary's connection is replaced (one-endpoint modes): a
    /// subscriber on an older one reconnects.
    pub fn generation(&self) -> u64 {
        match &self.backend {
            Backend::Single(single) => single.endpoint().generation,
            Backend::Cluster(_) => 0,
        }
    }

    /// Runs `op` on the command connection within the command timeout, counted.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, ClusterError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let started = std::time::Instant::now();
        let (conn, generation) = match &self.backend {
            Backend::Single(single) => {
                let e = single.endpoint();
                (Conn::Single(e.conn.clone()), e.generation)
            }
            Backend::Cluster(shards) => {
                let (conn, generation) = shards.conn();
                (Conn::Cluster(conn), generation)
            }
        };
        let result = tokio::time::timeout(self.timeout, op(conn))
            .await
            .map_err(|_| ClusterError::Timeout)
            .and_then(|r| r.map_err(ClusterError::from));
        ::metrics::histogram!(crate::metrics::REDIS_COMMAND_SECONDS)
            .record(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            ::metrics::counter!(crate::metrics::REDIS_ERRORS).increment(1);
            // Renewed in the background: the caller has its answer already.
            match &self.backend {
                Backend::Single(single) if single.wants_new_endpoint(e) => {
                    let single = single.clone();
                    tokio::spawn(async move {
                        if let Err(e) = single.renew(generation).await {
                            tracing::warn!(error = %e, "looking up the redis primary failed");
                        }
                    });
                }
                Backend::Cluster(shards) if shards::stale_topology(e) => {
                    let shards = shards.clone();
                    tokio::spawn(async move {
                        if let Err(e) = shards.renew(generation).await {
                            tracing::warn!(error = %e, "reading the redis cluster's slot map failed");
                        }
                    });
                }
                _ => {}
            }
        }
        result
    }

    /// Runs one command, bounded by the command timeout.
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, ClusterError> {
        self.run(|mut conn| async move { cmd.query_async(&mut conn).await })
            .await
    }

    /// Runs a pipeline, bounded by the command timeout. In a Redis Cluster every command of
    /// it must use one slot (see `pipe_by_slot`).
    pub async fn pipe<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, ClusterError> {
        self.run(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await
    }

    /// Runs commands that may touch different slots, each given with the key that routes
    /// it, and returns their replies in order. One pipeline with one Redis; one pipeline per
    /// slot with a Redis Cluster (a pipeline may not cross slots there), at most
    /// `SLOT_PIPELINES` at once. Fails if any part fails.
    pub async fn pipe_by_slot(
        &self,
        cmds: Vec<(String, redis::Cmd)>,
    ) -> Result<Vec<redis::Value>, ClusterError> {
        let mut replies = vec![redis::Value::Nil; cmds.len()];
        for (idx, result) in self.each_slot(cmds).await {
            for (i, v) in idx.into_iter().zip(result?) {
                replies[i] = v;
            }
        }
        Ok(replies)
    }

    /// Groups `cmds` into single-slot pipelines (one pipeline with one Redis) and runs them;
    /// each result comes with the input positions of its commands.
    pub async fn each_slot(&self, cmds: Vec<(String, redis::Cmd)>) -> Vec<SlotReplies> {
        if cmds.is_empty() {
            return Vec::new();
        }
        if !self.is_cluster() {
            let idx = (0..cmds.len()).collect();
            let mut pipe = redis::pipe();
            for (_, cmd) in cmds {
                pipe.add_command(cmd);
            }
            return vec![(idx, self.pipe(&pipe).await)];
        }
        let mut groups: HashMap<Slot, (Vec<usize>, redis::Pipeline)> = HashMap::new();
        for (i, (key, cmd)) in cmds.into_iter().enumerate() {
            let (idx, pipe) = groups
                .entry(Slot::for_key(key.as_bytes()))
                .or_insert_with(|| (Vec::new(), redis::pipe()));
            idx.push(i);
            pipe.add_command(cmd);
        }
        futures_util::stream::iter(groups.into_values().map(|(idx, pipe)| async move {
            let result = self.pipe::<Vec<redis::Value>>(&pipe).await;
            (idx, result)
        }))
        .buffer_unordered(SLOT_PIPELINES)
        .collect()
        .await
    }

    /// Runs a Lua script, bounded by the command timeout. Its keys must share a slot.
    pub async fn script<T: FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, ClusterError> {
        self.run(|mut conn| async move { inv.invoke_async(&mut conn).await })
            .await
    }
}

/// The command connection of either topology.
enum Conn {
    Single(redis::aio::ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_unique_and_safe() {
        let a = node_id("gw{1}*");
        let b = node_id("gw{1}*");
        assert_ne!(a, b);
        assert!(a.starts_with("gw1-"), "{a}");
        assert!(node_id("").len() > 9);
    }
}
