//! A socket's bounded outbound queue of encoded frames.
//!
//! Channel actors and broadcasts never wait for a client: they put frames here with
//! `try_send`. The socket's transport drains the queue. A queue that is full means the client
//! does not read fast enough: the socket is closed (slow consumer) instead of growing memory.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

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
    /// A frame larger than `socket.max_frame_bytes`.
    FrameTooLarge,
    /// A message sent in fragments whose total passes `socket.max_frame_bytes`.
    MessageTooLarge,
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
            CloseReason::FrameTooLarge | CloseReason::MessageTooLarge => 1009,
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
            CloseReason::MessageTooLarge => "message_too_large",
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
            CloseReason::MessageTooLarge => "message too large",
            CloseReason::Shutdown => "server shutting down",
        }
    }
}

/// The close request: lock-free, because the connection task checks it on every wake-up. One
/// task waits on it (the socket's transport).
struct Closer {
    waiter: AtomicWaker,
    reason: OnceLock<CloseReason>,
}

impl Bounds {
    /// A frame that the byte bound does not count while it is the only big one queued.
    fn is_big(&self, frame: &Frame) -> bool {
        frame.len() > self.bytes / 2
    }
}

/// How much one socket may have queued.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Most frames queued.
    pub frames: usize,
    /// Most bytes queued, not counting one big frame (more than half this bound): a big frame
    /// (the `presence_state` of a huge room) is let through whatever is queued before it, and
    /// the bound then measures the backlog beside it, so a room's size cannot close a socket
    /// that keeps up. A second big frame queued with the first means the client is not
    /// reading.
    pub bytes: usize,
}

struct Queue {
    frames: VecDeque<Frame>,
    /// Bytes of the queued frames that are not big.
    bytes: usize,
    /// Big frames queued (more than half the byte bound; at most one uncounted).
    oversized: usize,
    /// The receiving side is gone: nothing will be read again.
    receiver_gone: bool,
}

/// The queue shared by both sides. A plain mutex-guarded deque: pushes never contend with
/// more than the one reader, and an empty queue holds no allocation (most sockets are idle).
struct Shared {
    queue: Mutex<Queue>,
    reader: AtomicWaker,
    bounds: Bounds,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock cannot leave the deque inconsistent.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sending side of a socket's outbound queue. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
    serializer: Serializer,
    closer: Arc<Closer>,
}

/// The receiving side, owned by the socket's transport.
pub struct OutboxReceiver {
    /// Frames in the order they were queued.
    pub rx: Frames,
    closer: Arc<Closer>,
}

/// The reading end of the queue.
pub struct Frames {
    shared: Arc<Shared>,
}

/// Creates an outbound queue holding at most `capacity` frames (and 1 MiB).
pub fn outbox(serializer: Serializer, capacity: usize) -> (Outbox, OutboxReceiver) {
    outbox_bounded(
        serializer,
        Bounds {
            frames: capacity,
            bytes: 1024 * 1024,
        },
    )
}

/// Creates an outbound queue with the given bounds.
pub fn outbox_bounded(serializer: Serializer, bounds: Bounds) -> (Outbox, OutboxReceiver) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            frames: VecDeque::new(),
            bytes: 0,
            oversized: 0,
            receiver_gone: false,
        }),
        reader: AtomicWaker::new(),
        bounds: Bounds {
            frames: bounds.frames.max(1),
            bytes: bounds.bytes.max(1),
        },
    });
    let closer = Arc::new(Closer {
        waiter: AtomicWaker::new(),
        reason: OnceLock::new(),
    });
    (
        Outbox {
            shared: shared.clone(),
            serializer,
            closer: closer.clone(),
        },
        OutboxReceiver {
            rx: Frames { shared },
            closer,
        },
    )
}

/// Why [`Frames::try_recv`] returned nothing.
#[derive(Debug, PartialEq, Eq)]
pub struct Empty;

impl Frames {
    /// The next frame, if one is queued.
    pub fn try_recv(&mut self) -> Result<Frame, Empty> {
        let mut q = self.shared.lock();
        let frame = q.frames.pop_front().ok_or(Empty)?;
        q.taken(&frame, self.shared.bounds);
        Ok(frame)
    }

    /// Waits for the next frame. Never ends by itself: a socket's queue lives as long as the
    /// socket (callers select on the socket's close signal).
    pub async fn recv(&mut self) -> Option<Frame> {
        std::future::poll_fn(|cx| {
            let mut first = None;
            match self.poll_drain(cx, 1, |f| first = Some(f)) {
                Poll::Ready(()) => Poll::Ready(first),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Hands queued frames to `take`, oldest first, until `max_bytes` of frames were taken or
    /// the queue is empty: one lock for a whole backlog. Pending (and the task is woken on the
    /// next push) when nothing is queued.
    pub fn poll_drain(
        &mut self,
        cx: &mut Context<'_>,
        max_bytes: usize,
        mut take: impl FnMut(Frame),
    ) -> Poll<()> {
        let mut q = self.shared.lock();
        if q.frames.is_empty() {
            // Registered under the lock: a push after this sees the queue empty and wakes us.
            self.shared.reader.register(cx.waker());
            return Poll::Pending;
        }
        let mut taken = 0;
        while taken < max_bytes {
            let Some(frame) = q.frames.pop_front() else {
                break;
            };
            q.taken(&frame, self.shared.bounds);
            taken += frame.len().max(1);
            take(frame);
        }
        // Give back the memory of a drained backlog.
        if q.frames.is_empty() && q.frames.capacity() > 64 {
            q.frames = VecDeque::new();
        }
        Poll::Ready(())
    }
}

impl Drop for Frames {
    fn drop(&mut self) {
        let mut q = self.shared.lock();
        q.receiver_gone = true;
        q.frames.clear();
        q.bytes = 0;
        q.oversized = 0;
    }
}

impl Queue {
    /// Accounts for a frame leaving the queue.
    fn taken(&mut self, frame: &Frame, bounds: Bounds) {
        if bounds.is_big(frame) {
            self.oversized -= 1;
        } else {
            self.bytes -= frame.len();
        }
    }
}

impl Outbox {
    /// The serializer of the socket this queue belongs to.
    pub fn serializer(&self) -> Serializer {
        self.serializer
    }

    /// How much this queue may hold.
    pub fn bounds(&self) -> Bounds {
        self.shared.bounds
    }

    /// Queues a frame without waiting. Returns false if the frame was not queued; when the
    /// queue is over its bounds the socket is closed as a slow consumer.
    pub fn push(&self, frame: Frame) -> bool {
        let was_empty = {
            let mut q = self.shared.lock();
            if q.receiver_gone {
                return false;
            }
            let bounds = self.shared.bounds;
            let oversized = bounds.is_big(&frame);
            let over = q.frames.len() >= bounds.frames
                || if oversized {
                    q.oversized > 0
                } else {
                    q.bytes + frame.len() > bounds.bytes
                };
            if over {
                let (frames, bytes) = (q.frames.len(), q.bytes);
                drop(q);
                if self.closer.reason.get().is_none() {
                    tracing::warn!(
                        queued_frames = frames,
                        queued_bytes = bytes,
                        "outbound queue full: closing slow consumer"
                    );
                    ::metrics::counter!(crate::metrics::SLOW_CONSUMERS).increment(1);
                }
                self.close(CloseReason::SlowConsumer);
                return false;
            }
            if oversized {
                q.oversized += 1;
            } else {
                q.bytes += frame.len();
            }
            q.frames.push_back(frame);
            q.frames.len() == 1
        };
        // Only the push that makes the queue non-empty wakes the reader: a reader with a
        // backlog is already running or will drain everything at its next poll.
        if was_empty {
            self.shared.reader.wake();
        }
        true
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
        self.closer.waiter.wake();
    }

    /// Whether the socket is closed or closing.
    pub fn is_closed(&self) -> bool {
        self.closer.reason.get().is_some() || self.shared.lock().receiver_gone
    }
}

/// Resolves when someone asked to close the socket.
#[derive(Clone)]
pub struct CloseSignal(Arc<Closer>);

impl CloseSignal {
    /// Waits for a close request and returns its reason.
    pub async fn requested(&self) -> CloseReason {
        std::future::poll_fn(|cx| {
            if let Some(reason) = self.0.reason.get() {
                return Poll::Ready(*reason);
            }
            self.0.waiter.register(cx.waker());
            // Checked again: a close between the first check and the registration woke nobody.
            match self.0.reason.get() {
                Some(reason) => Poll::Ready(*reason),
                None => Poll::Pending,
            }
        })
        .await
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

    /// Room for 100 frames but only 10 bytes: the byte bound decides.
    const TEN_BYTES: Bounds = Bounds {
        frames: 100,
        bytes: 10,
    };

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

    #[tokio::test]
    async fn byte_bound_counts_the_backlog_but_admits_one_large_frame() {
        let (tx, mut rx) = outbox_bounded(Serializer::V2, TEN_BYTES);
        assert!(
            tx.push(Frame::Text("x".repeat(50).into())),
            "empty queue admits"
        );
        assert_eq!(rx.rx.recv().await, Some(Frame::Text("x".repeat(50).into())));
        assert!(tx.push(Frame::Text("12345".into())));
        assert!(tx.push(Frame::Text("12345".into())), "exactly at the bound");
        assert!(!tx.push(Frame::Text("1".into())), "over the bound");
        assert_eq!(rx.close_requested().await, CloseReason::SlowConsumer);
    }

    #[tokio::test]
    async fn one_big_frame_passes_a_backlog_but_a_second_one_closes() {
        let (tx, mut rx) = outbox_bounded(Serializer::V2, TEN_BYTES);
        let big = || Frame::Text("x".repeat(50).into());
        // A join reply still queued, then the room's big presence_state, then diffs.
        assert!(tx.push(Frame::Text("reply".into())));
        assert!(tx.push(big()), "one big frame is let through a backlog");
        assert!(tx.push(Frame::Text("diff1".into())), "it does not count");
        assert!(!tx.is_closed());
        // The client reads: the big frame leaves, and another may come.
        for _ in 0..3 {
            rx.rx.try_recv().expect("queued");
        }
        assert!(tx.push(big()));
        assert!(tx.push(Frame::Text("12345".into())));
        assert!(tx.push(Frame::Text("12345".into())), "at the bound");
        // A second big frame behind the first: the client is not reading.
        assert!(!tx.push(big()));
        assert_eq!(rx.close_requested().await, CloseReason::SlowConsumer);
    }

    #[tokio::test]
    async fn a_frame_just_under_the_bound_leaves_room_for_the_diffs_behind_it() {
        let (tx, rx) = outbox_bounded(Serializer::V2, TEN_BYTES);
        // A presence_state of nearly the whole bound, then the room's next diffs.
        assert!(tx.push(Frame::Text("x".repeat(9).into())));
        assert!(tx.push(Frame::Text("d1".into())));
        assert!(tx.push(Frame::Text("d2".into())));
        assert!(!tx.is_closed(), "a reader that keeps up is not closed");
        drop(rx);
    }

    #[tokio::test]
    async fn drain_takes_the_backlog_in_order_and_wakes_on_push() {
        let (tx, mut rx) = outbox(Serializer::V2, 8);
        for t in ["a", "b", "c"] {
            assert!(tx.push(Frame::Text(t.into())));
        }
        let mut got = Vec::new();
        std::future::poll_fn(|cx| rx.rx.poll_drain(cx, usize::MAX, |f| got.push(f))).await;
        assert_eq!(got.len(), 3);
        assert_eq!(got[2], Frame::Text("c".into()));
        let tx2 = tx.clone();
        let pusher = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx2.push(Frame::Text("d".into()))
        });
        assert_eq!(rx.rx.recv().await, Some(Frame::Text("d".into())));
        assert!(pusher.await.expect("pusher"));
        drop(rx);
        assert!(!tx.push(Frame::Text("e".into())), "receiver gone");
        assert!(tx.is_closed());
    }
}
