//! Redis connectivity shared by the cluster adapters: the client (for the dedicated
//! subscriber connection), the command connection, key names, the node identity and
//! migrations.

pub mod keys;
pub mod migrate;

use std::sync::Arc;
use std::time::Duration;

use redis::FromRedisValue;
use secrecy::ExposeSecret;

use crate::config::RedisSettings;
pub use keys::Keys;

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

/// A handle on the cluster's Redis. Cheap to clone.
///
/// Every command goes over one multiplexed connection that reconnects by itself
/// (`ConnectionManager`): Redis pipelines what concurrent callers send on it, so a command
/// costs one round trip, and no pool checkout adds another.
#[derive(Clone)]
pub struct Redis {
    /// For dedicated connections (pub/sub).
    pub client: redis::Client,
    conn: redis::aio::ConnectionManager,
    /// Key and channel names.
    pub keys: Keys,
    /// This node's id: unique per process start, so a restarted node is a new node.
    pub node: Arc<str>,
    /// The settings it was built from.
    pub settings: RedisSettings,
    timeout: Duration,
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

impl Redis {
    /// Builds the client and the command connection and checks that Redis answers. The URL
    /// is never logged.
    pub async fn connect(settings: &RedisSettings) -> Result<Self, ClusterError> {
        // rustls needs exactly one process-wide crypto provider for rediss://.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = settings
            .url
            .clone()
            .ok_or_else(|| ClusterError::Layout("redis.url is not set".into()))?;
        let client = match &settings.tls_ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| ClusterError::TlsCa {
                    path: path.clone(),
                    source,
                })?;
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                redis::Client::build_with_tls(url.expose_secret(), certs)?
            }
            None => redis::Client::open(url.expose_secret())?,
        };
        let timeout = Duration::from_millis(settings.command_timeout_ms);
        // redis-rs would time responses out after 500 ms on its own; ours is the bound. It
        // reconnects with a backoff capped like the subscriber's.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_max_delay(Duration::from_secs(5));
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        let redis = Self {
            client,
            conn,
            keys: Keys::new(&settings.key_prefix),
            node: node_id(&settings.node_name).into(),
            settings: settings.clone(),
            timeout,
        };
        let pong: String = redis.query(&redis::cmd("PING")).await?;
        tracing::debug!(reply = %pong, "redis reachable");
        Ok(redis)
    }

    /// Runs `op` on the command connection within the command timeout, counted.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, ClusterError>
    where
        F: FnOnce(redis::aio::ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, op(self.conn.clone()))
            .await
            .map_err(|_| ClusterError::Timeout)
            .and_then(|r| r.map_err(ClusterError::from));
        ::metrics::histogram!(crate::metrics::REDIS_COMMAND_SECONDS)
            .record(started.elapsed().as_secs_f64());
        if result.is_err() {
            ::metrics::counter!(crate::metrics::REDIS_ERRORS).increment(1);
        }
        result
    }

    /// Runs one command, bounded by the command timeout.
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, ClusterError> {
        self.run(|mut conn| async move { cmd.query_async(&mut conn).await })
            .await
    }

    /// Runs a pipeline, bounded by the command timeout.
    pub async fn pipe<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, ClusterError> {
        self.run(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await
    }

    /// Runs a Lua script, bounded by the command timeout.
    pub async fn script<T: FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, ClusterError> {
        self.run(|mut conn| async move { inv.invoke_async(&mut conn).await })
            .await
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
