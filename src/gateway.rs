//! The gateway's shared parts, handed to every socket.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::channel::{builtin, PatternError, Router};
use crate::config::Settings;
use crate::presence::{MemoryPresence, Presence};
use crate::pubsub::{LocalPubSub, PubSub};
use crate::socket::{Connector, ParamsConnector};

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
}

impl Gateway {
    /// A single-node gateway (in-memory pub/sub and presence) with the configured routes.
    pub fn new(settings: Settings) -> Result<Self, PatternError> {
        let router = builtin::router(&settings.routes)?;
        let pubsub: Arc<dyn PubSub> = Arc::new(LocalPubSub::new());
        let presence: Arc<dyn Presence> = Arc::new(MemoryPresence::new(pubsub.clone()));
        let connector: Arc<dyn Connector> =
            Arc::new(ParamsConnector::new(settings.socket.id.clone()));
        Ok(Self {
            settings,
            router,
            pubsub,
            presence,
            connector,
            shutdown: CancellationToken::new(),
        })
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
}
