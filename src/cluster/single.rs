//! One Redis primary reached directly (`redis.url`) or found through Sentinel
//! (`redis.sentinel_urls`), behind a connection that is replaced when the primary changes.
//!
//! `ConnectionManager` reconnects to the address it was built with, forever: after a
//! Sentinel failover that address is dead or a replica, and a managed endpoint whose DNS
//! moved answers `-READONLY` on the old connection for a while. So a failed command
//! (`-READONLY` in every mode; also a broken connection in Sentinel mode) asks for a new
//! endpoint: the primary is looked up again and a fresh connection replaces the old one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ErrorKind, IntoConnectionInfo, RedisError, ServerErrorKind};
use secrecy::ExposeSecret;
use tokio::time::Instant;

use super::ClusterError;
use crate::config::RedisSettings;

/// Least time between two look-ups of the primary (a burst of failed commands asks once).
const REFRESH_EVERY: Duration = Duration::from_millis(250);

/// The current primary: a client (for dedicated pub/sub connections) and the command
/// connection to it.
pub(crate) struct Endpoint {
    pub(crate) client: redis::Client,
    pub(crate) conn: redis::aio::ConnectionManager,
    /// Bumped each time the endpoint is replaced.
    pub(crate) generation: u64,
}

enum Source {
    Url(redis::Client),
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

/// The primary's connection, replaced when the primary changes.
pub(crate) struct Single {
    source: Source,
    current: ArcSwap<Endpoint>,
    config: redis::aio::ConnectionManagerConfig,
    refresh: tokio::sync::Mutex<Instant>,
    generations: AtomicU64,
}

impl Single {
    /// Connects to `redis.url`, or asks the Sentinels for the primary.
    pub(crate) async fn connect(
        settings: &RedisSettings,
        certs: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Self, ClusterError> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_max_delay(Duration::from_secs(5));
        let source = match &settings.url {
            Some(url) => Source::Url(super::client(url.expose_secret(), certs)?),
            None => Source::Sentinel(tokio::sync::Mutex::new(sentinel(settings, certs)?)),
        };
        let client = match &source {
            Source::Url(client) => client.clone(),
            Source::Sentinel(s) => tokio::time::timeout(timeout, s.lock().await.async_get_client())
                .await
                .map_err(|_| ClusterError::Timeout)??,
        };
        let conn =
            redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(Self {
            source,
            current: ArcSwap::from_pointee(Endpoint {
                client,
                conn,
                generation: 0,
            }),
            config,
            refresh: tokio::sync::Mutex::new(Instant::now() - REFRESH_EVERY),
            generations: AtomicU64::new(0),
        })
    }

    /// The current endpoint.
    pub(crate) fn endpoint(&self) -> Arc<Endpoint> {
        self.current.load_full()
    }

    /// Whether a failed command means the endpoint must be replaced.
    pub(crate) fn wants_new_endpoint(&self, e: &ClusterError) -> bool {
        match e {
            ClusterError::Redis(e) if is_readonly(e) => true,
            ClusterError::Redis(_) | ClusterError::Timeout => {
                matches!(self.source, Source::Sentinel(_))
            }
            _ => false,
        }
    }

    /// Looks the primary up again and replaces the endpoint of `generation` (unless it was
    /// replaced already, or was looked up less than `REFRESH_EVERY` ago). The client for
    /// a dedicated connection is returned either way.
    pub(crate) async fn renew(&self, generation: u64) -> Result<redis::Client, ClusterError> {
        let mut last = self.refresh.lock().await;
        let current = self.current.load_full();
        if current.generation != generation || last.elapsed() < REFRESH_EVERY {
            return Ok(current.client.clone());
        }
        *last = Instant::now();
        let client = match &self.source {
            Source::Url(client) => client.clone(),
            Source::Sentinel(s) => s.lock().await.async_get_client().await?,
        };
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(
            client.clone(),
            self.config.clone(),
        )?;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(generation, "redis primary looked up again: new connection");
        ::metrics::counter!(crate::metrics::REDIS_RECONNECTS).increment(1);
        self.current.store(Arc::new(Endpoint {
            client: client.clone(),
            conn,
            generation,
        }));
        Ok(client)
    }

    /// A client for a new dedicated connection: in Sentinel mode the primary is looked up
    /// first (the last one may have failed over).
    pub(crate) async fn fresh_client(&self) -> Result<redis::Client, ClusterError> {
        match &self.source {
            Source::Url(client) => Ok(client.clone()),
            Source::Sentinel(_) => {
                let generation = self.current.load().generation;
                self.renew(generation).await
            }
        }
    }
}

/// `-READONLY`: the connection reached a replica (a demoted primary).
pub(crate) fn is_readonly(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
}

/// The Sentinel client: Sentinels' credentials from their URLs, the data nodes' from
/// `redis.username`/`redis.password`; TLS to the data nodes when the Sentinels use it.
fn sentinel(
    settings: &RedisSettings,
    certs: Option<&[u8]>,
) -> Result<SentinelClient, ClusterError> {
    let master = settings
        .sentinel_master
        .as_deref()
        .ok_or_else(|| ClusterError::Layout("redis.sentinel_master is not set".into()))?;
    let mut addrs = Vec::new();
    let mut sentinel_user = None;
    let mut sentinel_password = None;
    let mut tls = false;
    for url in &settings.sentinel_urls {
        let info = url.expose_secret().trim().into_connection_info()?;
        let redis = info.redis_settings();
        if sentinel_user.is_none() {
            sentinel_user = redis.username().map(str::to_owned);
        }
        if sentinel_password.is_none() {
            sentinel_password = redis.password().map(str::to_owned);
        }
        tls |= matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
        addrs.push(info.addr().clone());
    }
    let mut b = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)?;
    if let Some(user) = sentinel_user {
        b = b.set_client_to_sentinel_username(user);
    }
    if let Some(pw) = sentinel_password {
        b = b.set_client_to_sentinel_password(pw);
    }
    if let Some(user) = &settings.username {
        b = b.set_client_to_redis_username(user);
    }
    if let Some(pw) = &settings.password {
        b = b.set_client_to_redis_password(pw.expose_secret());
    }
    if tls {
        b = b.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
    }
    if let Some(pem) = certs {
        let certs = || redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.to_vec()),
        };
        b = b
            .set_client_to_redis_certificates(certs())
            .set_client_to_sentinel_certificates(certs());
    }
    Ok(b.build()?)
}
