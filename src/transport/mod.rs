//! Transports: how frames get between clients and [`crate::socket::Socket`].

pub(crate) mod accept;
pub mod longpoll;
pub(crate) mod relay;
pub(crate) mod websocket;
mod ws_reader;
mod ws_writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::config::{LongPollSettings, SocketSettings};
use crate::limits::Limits;
use crate::outbox::Bounds;
use crate::socket::{Connector, SocketEnv};

/// The node's drain: started once at shutdown; sockets then close at random moments over
/// its period, so that their reconnections spread over the other nodes.
#[derive(Default)]
pub struct Drain {
    started: CancellationToken,
    period_ms: AtomicU64,
}

impl Drain {
    /// Starts draining over `period` (new sockets are refused from now on).
    pub fn start(&self, period: Duration) {
        self.period_ms
            .store(period.as_millis() as u64, Ordering::Relaxed);
        self.started.cancel();
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.started.is_cancelled()
    }

    /// Resolves once draining starts.
    pub async fn started(&self) {
        self.started.cancelled().await;
    }

    /// The drain period in effect.
    pub fn period(&self) -> Duration {
        Duration::from_millis(self.period_ms.load(Ordering::Relaxed))
    }
}

/// What the transports need: the sockets' environment, the connect policy and limits, the
/// drain, and the long-poll sessions of this node (with the relay to other nodes' ones).
pub struct Env {
    /// Handed to every socket.
    pub socket: Arc<SocketEnv>,
    /// Connect policy.
    pub connector: Arc<dyn Connector>,
    /// Admission limits.
    pub limits: Arc<Limits>,
    /// The node's drain.
    pub drain: Arc<Drain>,
    /// Long-poll settings.
    pub longpoll: LongPollSettings,
    /// This node's id (long-poll tokens name their owner).
    pub node_id: Arc<str>,
    /// Long-poll sessions owned by this node.
    pub sessions: Arc<longpoll::Sessions>,
    /// Relays long-poll requests for other nodes' sessions (cluster mode).
    pub relay: Option<Arc<relay::Relay>>,
}

/// The bounds of each socket's outbound queue.
fn queue_bounds(s: &SocketSettings) -> Bounds {
    Bounds {
        frames: s.outbound_queue,
        bytes: s.outbound_queue_bytes,
    }
}

/// Parses a query string into connect params, Plug-style: for a repeated key the last value wins.
pub fn parse_params(query: &str) -> Map<String, Value> {
    url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_last_wins_and_decode() {
        let p = parse_params("token=a&user%5Bid%5D=1&vsn=2.0.0&&token=b");
        assert_eq!(p["token"], "b");
        assert_eq!(p["user[id]"], "1");
        assert_eq!(p["vsn"], "2.0.0");
        assert_eq!(p.len(), 3);
    }
}
