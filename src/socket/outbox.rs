//! A socket's bounded outbound queue of encoded frames.
//!
//! Channel actors and broadcasts never wait for a client: they put frames here with
//! `try_send`. The socket's transport drains the queue. A queue that is full means the client
//! does not read fast enough: the socket is closed (slow consumer) instead of growing memory.

use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::protocol::{Frame, Outbound, Serializer};

/// Why the gateway closes a socket, with the WebSocket close code it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The outbound queue overflowed: the client does not read fast enough.
    SlowConsumer,
    /// A `disconnect` broadcast on the socket id (Phoenix >= 1.8.8 closes with 1001).
    Disconnected,
    /// No frame received within the heartbeat timeout.
    HeartbeatTimeout,
    /// A frame that does not decode (Phoenix closes with 1011).
    MalformedFrame,
    /// A frame larger than the configured maximum.
    FrameTooLarge,
    /// The gateway is shutting down (Phoenix drains with 1012, "service restart").
    Shutdown,
}

impl CloseReason {
    /// The WebSocket close code. Never 1000: phoenix.js up to 1.8.15 does not reconnect after it.
    pub fn code(self) -> u16 {
        match self {
            CloseReason::SlowConsumer => 1013,
            CloseReason::Disconnected => 1001,
            CloseReason::HeartbeatTimeout => 1002,
            CloseReason::MalformedFrame => 1011,
            CloseReason::FrameTooLarge => 1009,
            CloseReason::Shutdown => 1012,
        }
    }

    /// The metric label of this reason.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Disconnected => "disconnected",
            CloseReason::HeartbeatTimeout => "heartbeat_timeout",
            CloseReason::MalformedFrame => "malformed_frame",
            CloseReason::FrameTooLarge => "frame_too_large",
            CloseReason::Shutdown => "shutdown",
        }
    }

    /// The close reason text sent to the client.
    pub fn text(self) -> &'static str {
        match self {
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::Disconnected => "disconnected",
            CloseReason::HeartbeatTimeout => "heartbeat timeout",
            CloseReason::MalformedFrame => "malformed frame",
            CloseReason::FrameTooLarge => "frame too large",
            CloseReason::Shutdown => "server shutting down",
        }
    }
}

struct Closer {
    token: CancellationToken,
    reason: OnceLock<CloseReason>,
}

/// The sending side of a socket's outbound queue. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Frame>,
    serializer: Serializer,
    closer: Arc<Closer>,
}

/// The receiving side, owned by the socket's transport.
pub struct OutboxReceiver {
    /// Frames in the order they were queued.
    pub rx: mpsc::Receiver<Frame>,
    closer: Arc<Closer>,
}

/// Creates an outbound queue holding at most `capacity` frames.
pub fn outbox(serializer: Serializer, capacity: usize) -> (Outbox, OutboxReceiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let closer = Arc::new(Closer {
        token: CancellationToken::new(),
        reason: OnceLock::new(),
    });
    (
        Outbox {
            tx,
            serializer,
            closer: closer.clone(),
        },
        OutboxReceiver { rx, closer },
    )
}

impl Outbox {
    /// The serializer of the socket this queue belongs to.
    pub fn serializer(&self) -> Serializer {
        self.serializer
    }

    /// Queues a frame without waiting. Returns false if the frame was not queued; when the
    /// queue is full the socket is closed as a slow consumer.
    pub fn push(&self, frame: Frame) -> bool {
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.closer.reason.get().is_none() {
                    tracing::warn!("outbound queue full: closing slow consumer");
                    ::metrics::counter!(crate::metrics::SLOW_CONSUMERS).increment(1);
                }
                self.close(CloseReason::SlowConsumer);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Encodes a message with this socket's serializer and queues it.
    pub fn send(&self, msg: &Outbound<'_>) -> bool {
        let kind = match msg {
            Outbound::Reply { .. } => "reply",
            Outbound::Event { join_ref, .. } if join_ref.is_null() => "broadcast",
            Outbound::Event { .. } => "push",
        };
        ::metrics::counter!(crate::metrics::MESSAGES_OUT, "kind" => kind).increment(1);
        match self.serializer.encode(msg) {
            Ok(frame) => self.push(frame),
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode message for this socket; dropped");
                false
            }
        }
    }

    /// Asks the socket's transport to close the connection. The first reason wins.
    pub fn close(&self, reason: CloseReason) {
        let _ = self.closer.reason.set(reason);
        self.closer.token.cancel();
    }

    /// Whether the socket is closed or closing.
    pub fn is_closed(&self) -> bool {
        self.closer.token.is_cancelled() || self.tx.is_closed()
    }
}

/// Resolves when someone asked to close the socket.
#[derive(Clone)]
pub struct CloseSignal(Arc<Closer>);

impl CloseSignal {
    /// Waits for a close request and returns its reason.
    pub async fn requested(&self) -> CloseReason {
        self.0.token.cancelled().await;
        self.0
            .reason
            .get()
            .copied()
            .unwrap_or(CloseReason::Shutdown)
    }
}

impl OutboxReceiver {
    /// A handle that resolves when someone asked to close the socket.
    pub fn close_signal(&self) -> CloseSignal {
        CloseSignal(self.closer.clone())
    }

    /// Waits for a close request and returns its reason.
    pub async fn close_requested(&self) -> CloseReason {
        self.close_signal().requested().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_queue_closes_as_slow_consumer() {
        let (tx, rx) = outbox(Serializer::V2, 2);
        let f = Frame::Text("x".into());
        assert!(tx.push(f.clone()));
        assert!(tx.push(f.clone()));
        assert!(!tx.push(f.clone()));
        assert!(tx.is_closed());
        assert_eq!(rx.close_requested().await, CloseReason::SlowConsumer);
        tx.close(CloseReason::Shutdown);
        assert_eq!(
            rx.close_requested().await,
            CloseReason::SlowConsumer,
            "first reason wins"
        );
    }
}
