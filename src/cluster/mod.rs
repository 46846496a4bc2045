//! Redis connectivity shared by the cluster adapters: the client (for the dedicated
//! subscriber connection), the command pool, key names, the node identity and migrations.

pub mod keys;
pub mod migrate;

use std::sync::Arc;
use std::time::Duration;

use redis::FromRedisValue;

use crate::config::RedisSettings;
pub use keys::Keys;

/// Why a Redis operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Redis answered with an error, or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No pooled connection could be had.
    #[error("redis pool: {0}")]
    Pool(String),
    /// The command did not complete in time.
    #[error("redis command timed out")]
    Timeout,
    /// The key layout in Redis is not the one this gateway understands.
    #[error("{0}")]
    Layout(String),
}

/// A handle on the cluster's Redis. Cheap to clone.
#[derive(Clone)]
pub struct Redis {
    /// For dedicated connections (pub/sub).
    pub client: redis::Client,
    pool: deadpool_redis::Pool,
    /// Key and channel names.
    pub keys: Keys,
    /// This node's id: unique per process start, so a restarted node is a new node.
    pub node: Arc<str>,
    /// The settings it was built from.
    pub settings: RedisSettings,
    timeout: Duration,
    /// A multiplexed connection checked out of the pool and shared by every command, so a
    /// command costs one round trip (a checkout costs another: the pool's UNWATCH + PING).
    /// Dropped after a connection error; the next command checks out a fresh one.
    shared: Arc<std::sync::Mutex<Option<redis::aio::MultiplexedConnection>>>,
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
    /// Builds the client and pool and checks that Redis answers. The URL is never logged.
    pub async fn connect(settings: &RedisSettings) -> Result<Self, ClusterError> {
        // rustls needs exactly one process-wide crypto provider for rediss://.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = settings
            .url
            .clone()
            .ok_or_else(|| ClusterError::Layout("redis.url is not set".into()))?;
        let client = match &settings.tls_ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    ClusterError::Pool(format!(
                        "cannot read redis.tls_ca_file {}: {e}",
                        path.display()
                    ))
                })?;
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                redis::Client::build_with_tls(url.as_str(), certs)?
            }
            None => redis::Client::open(url.as_str())?,
        };
        let timeout = Duration::from_millis(settings.command_timeout_ms);
        let mut pool_cfg = deadpool_redis::PoolConfig::new(settings.pool_size);
        pool_cfg.timeouts.wait = Some(timeout);
        pool_cfg.timeouts.create = Some(timeout);
        pool_cfg.timeouts.recycle = Some(timeout);
        // The pool's manager gets the client's connection info as is, TLS roots included.
        // redis-rs would time responses out after 500 ms on its own; ours is the bound.
        let conn_cfg = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout));
        let manager = deadpool_redis::Manager::new_with_config(
            client.get_connection_info().clone(),
            conn_cfg,
        )?;
        let pool = deadpool_redis::Pool::builder(manager)
            .config(pool_cfg)
            .runtime(deadpool_redis::Runtime::Tokio1)
            .build()
            .map_err(|e| ClusterError::Pool(e.to_string()))?;
        let redis = Self {
            client,
            pool,
            keys: Keys::new(&settings.key_prefix),
            node: node_id(&settings.node_name).into(),
            settings: settings.clone(),
            timeout,
            shared: Arc::default(),
        };
        let pong: String = redis.query(&redis::cmd("PING")).await?;
        tracing::debug!(reply = %pong, "redis reachable");
        Ok(redis)
    }

    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, ClusterError> {
        if let Some(conn) = self
            .shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Ok(conn);
        }
        let pooled = self
            .pool
            .get()
            .await
            .map_err(|e| ClusterError::Pool(e.to_string()))?;
        let conn = (*pooled).clone();
        *self.shared.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    /// Runs `op` on the shared connection within the command timeout; forgets the
    /// connection if it failed.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, ClusterError>
    where
        F: FnOnce(redis::aio::MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, async {
            let conn = self.connection().await?;
            op(conn).await.map_err(ClusterError::from)
        })
        .await
        .unwrap_or(Err(ClusterError::Timeout));
        ::metrics::histogram!(crate::metrics::REDIS_COMMAND_SECONDS)
            .record(started.elapsed().as_secs_f64());
        if result.is_err() {
            ::metrics::counter!(crate::metrics::REDIS_ERRORS).increment(1);
        }
        let broken = match &result {
            Err(ClusterError::Redis(e)) => {
                e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error()
            }
            Err(ClusterError::Timeout) => true,
            _ => false,
        };
        if broken {
            *self.shared.lock().unwrap_or_else(|e| e.into_inner()) = None;
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
