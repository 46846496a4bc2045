//! The command connection to a Redis Cluster, rebuilt when a shard's primary died.
//!
//! The crate's cluster client routes by slot, follows MOVED/ASK and refreshes its slot
//! map when a node answers with a redirect. A primary killed outright never answers: the
//! client keeps reconnecting to its address and never learns that a replica took the
//! slots over. So a command that fails with a broken connection, a timeout or a
//! CLUSTERDOWN/TRYAGAIN asks for a new client, which reads the slot map afresh from the
//! seeds (at most every `REFRESH_EVERY` while the failures go on, so it finds the new
//! primary as soon as the cluster has promoted it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::cluster_async::ClusterConnection;
use redis::{ErrorKind, RedisError, ServerErrorKind};
use tokio::time::Instant;

use super::ClusterError;

/// Least time between two rebuilds.
const REFRESH_EVERY: Duration = Duration::from_millis(500);

/// Seeds and TLS roots: what it takes to build a cluster client.
#[derive(Clone)]
pub(crate) struct Seeds {
    pub(crate) urls: Arc<Vec<String>>,
    pub(crate) certs: Option<Arc<[u8]>>,
    pub(crate) timeout: Duration,
}

impl Seeds {
    /// A client builder on the seeds, with our timeouts and TLS roots.
    pub(crate) fn builder(&self) -> redis::cluster::ClusterClientBuilder {
        let mut b = redis::cluster::ClusterClientBuilder::new(self.urls.iter().map(String::as_str))
            .connection_timeout(self.timeout)
            .response_timeout(self.timeout);
        if let Some(pem) = &self.certs {
            b = b.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            });
        }
        b
    }

    /// Connects a client built by `builder`, within the timeout.
    pub(crate) async fn connect(
        &self,
        builder: redis::cluster::ClusterClientBuilder,
    ) -> Result<ClusterConnection, ClusterError> {
        let client = builder.build()?;
        tokio::time::timeout(self.timeout, client.get_async_connection())
            .await
            .map_err(|_| ClusterError::Timeout)?
            .map_err(ClusterError::from)
    }
}

/// The command connection and how to rebuild it.
pub(crate) struct Shards {
    pub(crate) seeds: Seeds,
    current: ArcSwap<(ClusterConnection, u64)>,
    refresh: tokio::sync::Mutex<Instant>,
    generations: AtomicU64,
}

impl Shards {
    /// Connects to the cluster through the seeds.
    pub(crate) async fn connect(seeds: Seeds) -> Result<Self, ClusterError> {
        let conn = seeds.connect(seeds.builder()).await?;
        Ok(Self {
            seeds,
            current: ArcSwap::from_pointee((conn, 0)),
            refresh: tokio::sync::Mutex::new(Instant::now() - REFRESH_EVERY),
            generations: AtomicU64::new(0),
        })
    }

    /// The current connection and its generation.
    pub(crate) fn conn(&self) -> (ClusterConnection, u64) {
        let current = self.current.load();
        (current.0.clone(), current.1)
    }

    /// Rebuilds the connection of `generation` (unless done already, or less than
    /// `REFRESH_EVERY` ago).
    pub(crate) async fn renew(&self, generation: u64) -> Result<(), ClusterError> {
        let mut last = self.refresh.lock().await;
        if self.current.load().1 != generation || last.elapsed() < REFRESH_EVERY {
            return Ok(());
        }
        *last = Instant::now();
        let conn = self.seeds.connect(self.seeds.builder()).await?;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(
            generation,
            "redis cluster slot map read again: new connection"
        );
        ::metrics::counter!(crate::metrics::REDIS_RECONNECTS).increment(1);
        self.current.store(Arc::new((conn, generation)));
        Ok(())
    }
}

/// Whether a cluster command's failure means the client's view of the cluster may be
/// stale: a node unreachable or gone, or the cluster saying it is failing over.
pub(crate) fn stale_topology(e: &ClusterError) -> bool {
    match e {
        ClusterError::Timeout => true,
        ClusterError::Redis(e) => redis_stale(e),
        _ => false,
    }
}

fn redis_stale(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::ClusterDown
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
        )
}
