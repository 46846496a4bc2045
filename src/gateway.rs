//! The wiring: builds every part from the settings, once, and stops them in order.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::channel::{builtin, PatternError, Router};
use crate::cluster::{migrate, ClusterError, Redis};
use crate::config::{AuthMode, RedisMode, Settings};
use crate::limits::Limits;
use crate::presence::{Counts, Presence, PresenceStats, Tracker};
use crate::pubsub::{LocalPubSub, PhoenixStats, PubSub, RedisPubSub, RedisStats};
use crate::socket::{AuthSetupError, Connector, ParamsConnector, SocketEnv, TokenConnector};
use crate::transport::longpoll::Sessions;
use crate::transport::relay::Relay;
use crate::transport::{self, Drain};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A route's topic pattern is invalid.
    #[error(transparent)]
    Pattern(#[from] PatternError),
    /// The auth settings cannot be used (e.g. an unreadable key file).
    #[error("auth: {0}")]
    Auth(#[from] AuthSetupError),
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
    /// Phoenix PubSub bridge counters (`redis.phoenix_pubsub` set).
    pub phoenix_stats: Option<Arc<PhoenixStats>>,
}

/// A running gateway's parts. Built by [`Builder::start`]; the HTTP server
/// ([`crate::server`]) serves its transports, the admin listener its health.
pub struct Gateway {
    /// Effective settings.
    pub settings: Settings,
    /// Broadcast delivery (local or cluster).
    pub pubsub: Arc<dyn PubSub>,
    /// Presence tracker (local or cluster).
    pub presence: Arc<dyn Presence>,
    /// Set when running as a cluster node.
    pub cluster: Option<Cluster>,
    transport: Arc<transport::Env>,
    channel_tasks: TaskTracker,
    drain: Arc<Drain>,
    background: CancellationToken,
    background_tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Builds a [`Gateway`]: the configured routes and connect policy unless replaced.
pub struct Builder {
    settings: Settings,
    router: Option<Router>,
    connector: Option<Arc<dyn Connector>>,
}

impl Builder {
    /// Routes topics to these channels instead of the configured routes (Rust channels; see
    /// `examples/`).
    pub fn router(mut self, router: Router) -> Self {
        self.router = Some(router);
        self
    }

    /// Decides connects with this policy instead of the configured one.
    pub fn connector(mut self, connector: Arc<dyn Connector>) -> Self {
        self.connector = Some(connector);
        self
    }

    /// Builds the gateway: a cluster node when a Redis topology is configured (checking the
    /// key layout and starting the Redis tasks on the current runtime), else a single node.
    pub async fn start(self) -> Result<Gateway, StartError> {
        let settings = self.settings;
        let router = match self.router {
            Some(router) => router,
            None => builtin::router(&settings.routes, webhooks(&settings))?,
        };
        let connector: Arc<dyn Connector> = match self.connector {
            Some(c) => c,
            None => match settings.auth.mode {
                AuthMode::None => Arc::new(ParamsConnector::new(settings.socket.id.clone())),
                _ => Arc::new(TokenConnector::new(&settings.auth, &settings.socket.id)?),
            },
        };
        let background = CancellationToken::new();
        let batch = Duration::from_millis(settings.presence.diff_batch_ms);
        let (pubsub, presence, cluster, mut tasks): (Arc<dyn PubSub>, Arc<dyn Presence>, _, _) =
            match settings.redis.mode() {
                RedisMode::Embedded => {
                    let pubsub: Arc<dyn PubSub> = Arc::new(LocalPubSub::new());
                    let presence = Arc::new(Tracker::in_memory(pubsub.clone(), batch));
                    (pubsub, presence, None, Vec::new())
                }
                mode => {
                    if settings.redis.pool_size.is_some() {
                        tracing::warn!("redis.pool_size is no longer used (one multiplexed connection carries every command): remove it");
                    }
                    let redis = Redis::connect(&settings.redis).await?;
                    migrate::ensure(&redis, settings.redis.auto_migrate).await?;
                    let (pubsub, mut tasks) = RedisPubSub::start(redis.clone(), background.clone());
                    let pubsub_stats = pubsub.stats().clone();
                    let phoenix_stats = pubsub.phoenix_stats().cloned();
                    let pubsub: Arc<dyn PubSub> = pubsub;
                    let (presence, presence_stats, heartbeat) = crate::presence::redis::start(
                        redis.clone(),
                        pubsub.clone(),
                        pubsub_stats.clone(),
                        batch,
                        background.clone(),
                    );
                    tasks.push(heartbeat);
                    tracing::info!(node = %redis.node, ?mode, phoenix_pubsub = ?redis.settings.phoenix_pubsub, "cluster node started (redis pub/sub and presence)");
                    let cluster = Cluster {
                        redis,
                        pubsub_stats,
                        presence_stats,
                        phoenix_stats,
                    };
                    (pubsub, presence, Some(cluster), tasks)
                }
            };
        let limits = Limits::new(&settings.limits);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            tasks.push(runtime.spawn(tidy_limits(limits.clone(), background.clone())));
        }
        let channel_tasks = TaskTracker::new();
        let counts = Counts::new(pubsub.clone(), presence.clone());
        let socket = Arc::new(SocketEnv {
            settings: settings.socket.clone(),
            router,
            pubsub: pubsub.clone(),
            presence: presence.clone(),
            counts: counts.clone(),
            limits: limits.clone(),
            channel_tasks: channel_tasks.clone(),
        });
        let node_id: Arc<str> = match &cluster {
            Some(c) => c.redis.node.clone(),
            None => Arc::from("local"),
        };
        let sessions = Arc::new(Sessions::default());
        let relay = match &cluster {
            Some(_) => {
                Some(Relay::start(pubsub.clone(), node_id.to_string(), sessions.clone()).await)
            }
            None => None,
        };
        let drain = Arc::new(Drain::default());
        let transport = Arc::new(transport::Env {
            socket,
            connector,
            limits,
            drain: drain.clone(),
            longpoll: settings.longpoll.clone(),
            node_id,
            sessions,
            relay,
        });
        Ok(Gateway {
            settings,
            pubsub,
            presence,
            cluster,
            transport,
            channel_tasks,
            drain,
            background,
            background_tasks: Mutex::new(tasks),
        })
    }
}

/// The webhook client, when a route calls a backend.
/// How often per-IP rate-limiter state is tidied.
const TIDY_EVERY: Duration = Duration::from_secs(60);

/// Forgets idle per-IP limiter state every minute until `stop`.
async fn tidy_limits(limits: Arc<Limits>, stop: CancellationToken) {
    let mut every = tokio::time::interval(TIDY_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => limits.tidy(),
        }
    }
}

fn webhooks(settings: &Settings) -> Option<Arc<crate::channel::webhook::Webhooks>> {
    let needed = settings
        .routes
        .iter()
        .any(|r| r.join_webhook.is_some() || r.event_webhook.is_some());
    if !needed {
        return None;
    }
    match crate::channel::webhook::Webhooks::new(&settings.webhook) {
        Ok(w) => Some(Arc::new(w)),
        Err(e) => {
            tracing::error!(error = %e, "webhook client unavailable");
            None
        }
    }
}

impl Gateway {
    /// A gateway built from `settings`; see [`Builder`] to replace routes or the connect
    /// policy.
    pub fn builder(settings: Settings) -> Builder {
        Builder {
            settings,
            router: None,
            connector: None,
        }
    }

    /// A gateway as configured.
    pub async fn start(settings: Settings) -> Result<Self, StartError> {
        Self::builder(settings).start().await
    }

    /// What the transports serve (registered by the HTTP server).
    pub(crate) fn transport(&self) -> &Arc<transport::Env> {
        &self.transport
    }

    /// The history kept for `topic` by its route (see `Channel::history`).
    pub fn history_of(&self, topic: &str) -> Option<crate::pubsub::Retention> {
        self.transport.socket.router.history(topic)
    }

    /// The topic under which `topic`'s presences are tracked (its counting companion on a
    /// `presence = "counts"` route).
    pub fn presence_topic(&self, topic: &str) -> String {
        self.transport.socket.router.presence_topic(topic)
    }

    /// The size of a topic's presence, cluster-wide.
    pub async fn presence_count(&self, topic: &str) -> crate::presence::Count {
        self.presence.count(&self.presence_topic(topic)).await
    }

    /// This node's id: the Redis node id in a cluster, `local` otherwise.
    pub fn node_id(&self) -> &str {
        &self.transport.node_id
    }

    /// Open long-poll sessions on this node.
    pub fn longpoll_sessions(&self) -> usize {
        self.transport.sessions.len()
    }

    /// Running channel actors.
    pub fn channel_tasks(&self) -> usize {
        self.channel_tasks.len()
    }

    /// Whether the node is draining (stopping).
    pub fn is_draining(&self) -> bool {
        self.drain.is_draining()
    }

    /// Whether the node should receive traffic: not draining, and Redis reachable (or
    /// unreachable for less than `redis.ready_grace_ms`).
    pub fn ready(&self) -> bool {
        if self.is_draining() {
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

    /// Starts draining without waiting: readiness goes false, new sockets are refused, and
    /// open sockets close (1012) at random moments over `period`. [`Gateway::stop`] does
    /// this first.
    pub fn start_drain(&self, period: Duration) {
        self.drain.start(period);
        tracing::info!(drain_ms = period.as_millis() as u64, "draining");
    }

    /// Stops cleanly. At once: readiness goes false, new sockets are refused and this node's
    /// presences are removed (other nodes' clients see the leaves). Open sockets are closed
    /// with 1012 at random moments over `drain`, so their reconnections spread out. Then,
    /// once the channels are done (bounded), the Redis tasks flush and stop.
    pub async fn stop(&self, drain: Duration) {
        self.start_drain(drain);
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
