//! The gateway's shared parts, handed to every socket, and their lifecycle.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::channel::{builtin, PatternError, Router};
use crate::cluster::{migrate, ClusterError, Redis};
use crate::config::Settings;
use crate::presence::{MemoryPresence, Presence, PresenceStats, RedisPresence};
use crate::pubsub::{LocalPubSub, PubSub, RedisPubSub, RedisStats};
use crate::socket::{Connector, ParamsConnector};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A route's topic pattern is invalid.
    #[error(transparent)]
    Pattern(#[from] PatternError),
    /// The auth settings cannot be used (e.g. an unreadable key file).
    #[error("auth: {0}")]
    Auth(String),
    /// Redis is unreachable or its key layout is not usable.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// The Redis side of a clustered gateway.
pub struct Cluster {
    /// Connections, key names and this node's id.
    pub redis: Redis,
    /// Pub/sub adapter counters.
    pub pubsub_stats: Arc<RedisStats>,
    /// Presence tracker counters.
    pub presence_stats: Arc<PresenceStats>,
}

/// Everything a socket needs from the gateway: settings, routes, pub/sub, presence and the
/// connect policy. Built once at start-up and shared.
pub struct Gateway {
    /// Effective settings.
    pub settings: Settings,
    /// Topic routes.
    pub router: Router,
    /// Broadcast delivery (local or cluster).
    pub pubsub: Arc<dyn PubSub>,
    /// Presence tracker (local or cluster).
    pub presence: Arc<dyn Presence>,
    /// Connect policy.
    pub connector: Arc<dyn Connector>,
    /// Cancelled when the gateway shuts down: sockets close with 1012.
    pub shutdown: CancellationToken,
    /// Set when running as a cluster node.
    pub cluster: Option<Cluster>,
    /// Channel actors, so shutdown can wait for their clean-up.
    pub(crate) channel_tasks: TaskTracker,
    background: CancellationToken,
    background_tasks: Mutex<Vec<JoinHandle<()>>>,
    drain_ms: AtomicU64,
    /// Long-poll sessions owned by this node.
    pub longpoll: Arc<crate::transport::longpoll::Sessions>,
    /// Relays long-poll requests for other nodes' sessions (cluster mode).
    pub longpoll_relay: Option<Arc<crate::transport::relay::Relay>>,
    /// Admission limits.
    pub limits: Arc<crate::limits::Limits>,
}

impl Gateway {
    /// A single-node gateway (in-memory pub/sub and presence) with the configured routes.
    pub fn new(settings: Settings) -> Result<Self, StartError> {
        let needs_webhooks = settings
            .routes
            .iter()
            .any(|r| r.join_webhook.is_some() || r.event_webhook.is_some());
        let webhooks = if needs_webhooks {
            match crate::channel::webhook::Webhooks::new(&settings.webhook) {
                Ok(w) => Some(Arc::new(w)),
                Err(e) => {
                    tracing::error!(error = %e, "webhook client unavailable");
                    None
                }
            }
        } else {
            None
        };
        let router = builtin::router(&settings.routes, webhooks)?;
        let pubsub: Arc<dyn PubSub> = Arc::new(LocalPubSub::new());
        let batch = Duration::from_millis(settings.presence.diff_batch_ms);
        let presence: Arc<dyn Presence> = Arc::new(MemoryPresence::new(pubsub.clone(), batch));
        let connector: Arc<dyn Connector> = match settings.auth.mode {
            crate::config::AuthMode::None => {
                Arc::new(ParamsConnector::new(settings.socket.id.clone()))
            }
            _ => Arc::new(
                crate::socket::TokenConnector::new(&settings.auth, &settings.socket.id)
                    .map_err(StartError::Auth)?,
            ),
        };
        let limits = crate::limits::Limits::new(&settings.limits);
        Ok(Self {
            settings,
            router,
            pubsub,
            presence,
            connector,
            shutdown: CancellationToken::new(),
            cluster: None,
            channel_tasks: TaskTracker::new(),
            background: CancellationToken::new(),
            background_tasks: Mutex::new(Vec::new()),
            drain_ms: AtomicU64::new(0),
            longpoll: Arc::default(),
            longpoll_relay: None,
            limits,
        })
    }

    /// A gateway as configured: a cluster node when `redis.url` is set (checking the key
    /// layout and starting the Redis tasks on the current runtime), else a single node.
    pub async fn start(settings: Settings) -> Result<Self, StartError> {
        let mut gateway = Self::new(settings)?;
        if gateway.settings.redis.url.is_none() {
            return Ok(gateway);
        }
        let redis = Redis::connect(&gateway.settings.redis).await?;
        migrate::ensure(&redis, gateway.settings.redis.auto_migrate).await?;
        let (pubsub, mut tasks) = RedisPubSub::start(redis.clone(), gateway.background.clone());
        let pubsub_stats = pubsub.stats().clone();
        let pubsub: Arc<dyn PubSub> = pubsub;
        let (presence, heartbeat) = RedisPresence::start(
            redis.clone(),
            pubsub.clone(),
            pubsub_stats.clone(),
            Duration::from_millis(gateway.settings.presence.diff_batch_ms),
            gateway.background.clone(),
        );
        tasks.push(heartbeat);
        tracing::info!(node = %redis.node, "cluster node started (redis pub/sub and presence)");
        let relay = crate::transport::relay::Relay::start(
            pubsub.clone(),
            redis.node.to_string(),
            gateway.longpoll.clone(),
        )
        .await;
        gateway.longpoll_relay = Some(relay);
        gateway.cluster = Some(Cluster {
            redis,
            pubsub_stats,
            presence_stats: presence.stats().clone(),
        });
        gateway.pubsub = pubsub;
        gateway.presence = presence;
        gateway.background_tasks = Mutex::new(tasks);
        Ok(gateway)
    }

    /// Replaces the routes (for Rust channels; see `examples/`).
    pub fn with_router(mut self, router: Router) -> Self {
        self.router = router;
        self
    }

    /// Replaces the connect policy.
    pub fn with_connector(mut self, connector: Arc<dyn Connector>) -> Self {
        self.connector = connector;
        self
    }

    /// This node's id: the Redis node id in a cluster, `local` otherwise.
    pub fn node_id(&self) -> String {
        self.cluster
            .as_ref()
            .map_or_else(|| "local".to_owned(), |c| c.redis.node.to_string())
    }

    /// Whether the node should receive traffic: not draining, and Redis reachable (or
    /// unreachable for less than `redis.ready_grace_ms`).
    pub fn ready(&self) -> bool {
        if self.shutdown.is_cancelled() {
            return false;
        }
        let Some(cluster) = &self.cluster else {
            return true;
        };
        let stats = &cluster.pubsub_stats;
        if stats.connected.load(Ordering::Relaxed) {
            return true;
        }
        let down_since = stats.down_since_ms.load(Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        down_since == 0 || now.saturating_sub(down_since) < self.settings.redis.ready_grace_ms
    }

    /// The drain period in effect (set by [`Gateway::stop`]).
    pub fn drain(&self) -> Duration {
        Duration::from_millis(self.drain_ms.load(Ordering::Relaxed))
    }

    /// Stops cleanly. At once: readiness goes false, new sockets are refused and this node's
    /// presences are removed (other nodes' clients see the leaves). Open sockets are closed
    /// with 1012 at random moments over `drain`, so their reconnections spread out. Then,
    /// once the channels are done (bounded), the Redis tasks flush and stop.
    pub async fn stop(&self, drain: Duration) {
        self.drain_ms
            .store(drain.as_millis() as u64, Ordering::Relaxed);
        self.shutdown.cancel();
        tracing::info!(drain_ms = drain.as_millis() as u64, "draining");
        self.presence.shutdown().await;
        self.channel_tasks.close();
        let budget = drain + Duration::from_secs(5);
        if tokio::time::timeout(budget, self.channel_tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("channels still running after the drain period; stopping anyway");
        }
        self.presence.shutdown().await;
        self.background.cancel();
        let tasks: Vec<_> = self
            .background_tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for task in tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(3), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }

    /// Stops the Redis tasks at once, as a crash would (tests).
    pub fn abort(&self) {
        self.background.cancel();
        for task in self
            .background_tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}
