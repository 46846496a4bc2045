//! Transports: how frames get between clients and [`crate::socket::Socket`].

pub(crate) mod accept;
pub mod longpoll;
pub(crate) mod relay;
pub(crate) mod websocket;
mod ws_reader;
mod ws_writer;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::seq::SliceRandom;
use slab::Slab;
use tokio::time::Instant;

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::config::{LongPollSettings, SocketSettings};
use crate::limits::Limits;
use crate::outbox::{Bounds, CloseReason, Outbox};
use crate::socket::{Connector, SocketEnv};

/// The node's drain: started once at shutdown; sockets then close at random moments over
/// its period, so that their reconnections spread over the other nodes.
#[derive(Default)]
pub struct Drain {
    started: CancellationToken,
    /// Open WebSocket connections. The drain closes them itself, one by one over its period,
    /// rather than have every connection wait on the drain: a shared signal polled on every
    /// wake-up of every socket is a lock that all threads contend for.
    sockets: Mutex<Slab<Outbox>>,
}

/// A connection's place in the drain's table, left when dropped.
pub(crate) struct Draining {
    drain: Arc<Drain>,
    key: usize,
}

impl Drop for Draining {
    fn drop(&mut self) {
        let mut sockets = self.drain.lock();
        if sockets.contains(self.key) {
            sockets.remove(self.key);
        }
        // A slab keeps the length of its peak; once the last connection is gone, give the
        // memory back (keys in use would pin a partial shrink, so only an empty one).
        if sockets.is_empty() && sockets.capacity() > crate::shrink::SMALL {
            *sockets = Slab::new();
        }
    }
}

impl Drain {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slab<Outbox>> {
        // Inserts and removals cannot leave the slab inconsistent.
        self.sockets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Files a connection's outbox, to be closed (`Shutdown`) when the drain reaches it.
    pub(crate) fn register(self: &Arc<Self>, outbox: Outbox) -> Draining {
        let mut sockets = self.lock();
        // Checked under the lock: a drain that took the table before this insert has
        // already cancelled `started`, so a connection accepted just then is closed here.
        if self.is_draining() {
            outbox.close(CloseReason::Shutdown);
        }
        let key = sockets.insert(outbox);
        drop(sockets);
        Draining {
            drain: self.clone(),
            key,
        }
    }

    /// Starts draining over `period` (new sockets are refused from now on): the open
    /// WebSocket connections are closed in a random order, spread evenly over the period.
    pub fn start(&self, period: Duration) {
        // Cancelled before the table is taken: a connection registering after that sees it.
        self.started.cancel();
        let mut sockets: Vec<Outbox> = self.lock().drain().collect();
        sockets.shuffle(&mut rand::rng());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            sockets.iter().for_each(|s| s.close(CloseReason::Shutdown));
            return;
        };
        runtime.spawn(async move {
            let (begin, n) = (Instant::now(), sockets.len() as u32);
            for (i, socket) in (1..).zip(sockets) {
                tokio::time::sleep_until(begin + period * i / n.max(1)).await;
                socket.close(CloseReason::Shutdown);
            }
        });
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.started.is_cancelled()
    }

    /// Resolves once draining starts.
    pub async fn started(&self) {
        self.started.cancelled().await;
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

    #[test]
    fn the_drain_table_gives_its_room_back_once_every_connection_left() {
        let drain = Arc::new(Drain::default());
        let serializer = crate::protocol::Serializer::V2;
        let mut held: Vec<Draining> = (0..1_000)
            .map(|_| drain.register(crate::outbox::outbox(serializer, 1).0))
            .collect();
        assert!(drain.lock().capacity() >= 1_000);
        // A busy table keeps its room (keys are in use).
        held.truncate(10);
        assert!(drain.lock().capacity() >= 1_000);
        held.clear();
        assert!(drain.lock().is_empty());
        assert!(
            drain.lock().capacity() <= crate::shrink::SMALL,
            "{}",
            drain.lock().capacity()
        );
        // And fills again.
        let again = drain.register(crate::outbox::outbox(serializer, 1).0);
        assert_eq!(drain.lock().len(), 1);
        drop(again);
    }
}
