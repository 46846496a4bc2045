//! A subscriber's gate: what makes a snapshot and the live stream after it fit together.
//!
//! A channel subscribes first and reads its presence snapshot after, so that no change is
//! missed. Changes published meanwhile reach it through the fastlane and may already be in
//! the snapshot. The gate solves both halves of that race:
//! - until it opens, fastlane frames are held (in order, bounded like the outbox), so the
//!   snapshot is the first thing after the join reply;
//! - it opens with the snapshot and its number `n`: held presence changes numbered `n` or
//!   less are dropped, and so are later ones (still in flight from other nodes), so the
//!   client receives exactly the changes after its snapshot.
//!
//! A later snapshot (a resync) raises the floor the same way, unless the subscriber already
//! has a change numbered after it: such a snapshot was read before that change and delivered
//! after it, and would take the change back, so it is dropped (the resync that sent it reads
//! again when the topic's number moved meanwhile: `presence/redis.rs`).
//!
//! History works the same way: a joiner that replays a topic's history opens its gate with
//! the position of the last message replayed, and live messages at or before it (which the
//! replay held) are dropped: each message exactly once, in position order.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::{Position, Seq};
use crate::outbox::{CloseReason, Outbox};
use crate::protocol::Frame;

/// One subscriber's gate. Shared by the registry (delivery) and the channel (opening).
#[derive(Default)]
pub struct Gate {
    /// Fast path once open: no lock per delivery.
    open: AtomicBool,
    /// Presence changes numbered this or less are not delivered.
    floor: AtomicU64,
    /// The highest presence change delivered: a snapshot numbered below it is stale.
    last_change: AtomicU64,
    /// History messages at or before this position (same epoch) are not delivered.
    replayed: Mutex<Option<Position>>,
    /// Whether `replayed` is set: subscribers that replayed nothing skip its lock.
    has_replayed: AtomicBool,
    held: Mutex<Held>,
}

/// A held frame and what decides whether it is still wanted.
type HeldFrame = (Option<Seq>, Option<Position>, Frame);

#[derive(Default)]
struct Held {
    open: bool,
    frames: Vec<HeldFrame>,
    bytes: usize,
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Self {
        Self::default()
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        // Pushes and drains cannot leave the buffer inconsistent when interrupted.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wanted(&self, seq: Option<Seq>, position: Option<&Position>) -> bool {
        if let Some(p) = position.filter(|_| self.has_replayed.load(Ordering::Acquire)) {
            let replayed = self.replayed.lock().unwrap_or_else(|e| e.into_inner());
            if replayed
                .as_ref()
                .and_then(|r| p.cmp_in_epoch(r))
                .is_some_and(|o| o.is_le())
            {
                return false;
            }
        }
        match seq {
            Some(Seq::Change(n)) => {
                let wanted = n > self.floor.load(Ordering::Acquire);
                if wanted {
                    self.last_change.fetch_max(n, Ordering::AcqRel);
                }
                wanted
            }
            Some(Seq::State(n)) => {
                // 0: the topic had lost its number (its keys expired, Redis restarted
                // empty), so the snapshot cannot be ordered against earlier changes.
                if n > 0 && n < self.last_change.load(Ordering::Acquire) {
                    ::metrics::counter!(crate::metrics::STALE_SNAPSHOTS).increment(1);
                    return false;
                }
                self.floor.fetch_max(n, Ordering::AcqRel);
                true
            }
            None => true,
        }
    }

    /// Delivers a fastlane frame: held while closed, dropped if the subscriber already has
    /// it, else queued. False if it was not queued (dropped, or the outbox refused it).
    pub fn deliver(
        &self,
        outbox: &Outbox,
        seq: Option<Seq>,
        position: Option<&Position>,
        frame: Frame,
    ) -> bool {
        if !self.open.load(Ordering::Acquire) {
            let mut held = self.held();
            if !held.open {
                let bounds = outbox.bounds();
                if held.frames.len() >= bounds.frames
                    || (!held.frames.is_empty() && held.bytes + frame.len() > bounds.bytes)
                {
                    drop(held);
                    tracing::warn!("frames held for a joining channel over the socket's bounds: closing slow consumer");
                    ::metrics::counter!(crate::metrics::SLOW_CONSUMERS).increment(1);
                    outbox.close(CloseReason::SlowConsumer);
                    return false;
                }
                held.bytes += frame.len();
                held.frames.push((seq, position.cloned(), frame));
                return true;
            }
        }
        self.wanted(seq, position) && outbox.push(frame)
    }

    /// Marks history as replayed up to `position`: live messages at or before it are not
    /// delivered (they were replayed, or held while the replay was read).
    pub fn replayed_up_to(&self, position: Position) {
        *self.replayed.lock().unwrap_or_else(|e| e.into_inner()) = Some(position);
        self.has_replayed.store(true, Ordering::Release);
    }

    /// Opens the gate: queues `first` (the snapshot, numbered `seq`), then the frames held
    /// meanwhile that the snapshot does not already hold. Opening an open gate queues
    /// `first` and raises the floor (a later snapshot, e.g. a resync).
    pub fn open(&self, outbox: &Outbox, first: Option<Frame>, seq: Option<u64>) {
        let mut held = self.held();
        if let Some(n) = seq {
            self.floor.fetch_max(n, Ordering::AcqRel);
        }
        if let Some(frame) = first {
            outbox.push(frame);
        }
        for (seq, position, frame) in std::mem::take(&mut held.frames) {
            if self.wanted(seq, position.as_ref()) {
                outbox.push(frame);
            }
        }
        held.bytes = 0;
        held.open = true;
        self.open.store(true, Ordering::Release);
    }

    /// Whether the gate is open.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::outbox;
    use crate::protocol::Serializer;

    fn f(s: &str) -> Frame {
        Frame::Text(s.into())
    }

    #[tokio::test]
    async fn holds_until_open_then_skips_what_the_snapshot_has() {
        let (ob, mut rx) = outbox(Serializer::V2, 16);
        let gate = Gate::new();
        assert!(gate.deliver(&ob, Some(Seq::Change(3)), None, f("d3")));
        assert!(gate.deliver(&ob, None, None, f("msg")));
        assert!(gate.deliver(&ob, Some(Seq::Change(5)), None, f("d5")));
        assert!(rx.rx.try_recv().is_err(), "held while closed");
        gate.open(&ob, Some(f("state4")), Some(4));
        let got: Vec<Frame> = std::iter::from_fn(|| rx.rx.try_recv().ok()).collect();
        assert_eq!(got, vec![f("state4"), f("msg"), f("d5")]);
        assert!(!gate.deliver(&ob, Some(Seq::Change(4)), None, f("late d4")));
        assert!(gate.deliver(&ob, Some(Seq::Change(6)), None, f("d6")));
        assert_eq!(rx.rx.try_recv(), Ok(f("d6")));
        // A later snapshot raises the floor.
        assert!(gate.deliver(&ob, Some(Seq::State(9)), None, f("state9")));
        assert!(!gate.deliver(&ob, Some(Seq::Change(8)), None, f("d8")));
    }

    #[tokio::test]
    async fn a_snapshot_older_than_a_delivered_change_is_dropped() {
        let (ob, mut rx) = outbox(Serializer::V2, 16);
        let gate = Gate::new();
        gate.open(&ob, Some(f("state4")), Some(4));
        assert!(gate.deliver(&ob, Some(Seq::Change(7)), None, f("d7")));
        // Read at 6, delivered after change 7: it would take change 7 back.
        assert!(!gate.deliver(&ob, Some(Seq::State(6)), None, f("state6")));
        assert!(gate.deliver(&ob, Some(Seq::State(7)), None, f("state7")));
        assert!(!gate.deliver(&ob, Some(Seq::Change(7)), None, f("d7 again")));
        // Unnumbered (the topic lost its number): nothing to order it against.
        assert!(gate.deliver(&ob, Some(Seq::State(0)), None, f("state0")));
        let got: Vec<Frame> = std::iter::from_fn(|| rx.rx.try_recv().ok()).collect();
        assert_eq!(got, ["state4", "d7", "state7", "state0"].map(f).to_vec());
    }

    #[tokio::test]
    async fn a_replay_and_the_live_stream_meet_exactly_once() {
        let (ob, mut rx) = outbox(Serializer::V2, 16);
        let gate = Gate::new();
        let at = |n| Position {
            epoch: "e".into(),
            offset: (n, 0),
        };
        // Live messages 3 and 4 arrive while the replay (1..=3) is being read.
        assert!(gate.deliver(&ob, None, Some(&at(3)), f("live3")));
        assert!(gate.deliver(&ob, None, Some(&at(4)), f("live4")));
        for n in 1..=3 {
            ob.push(f(&format!("replay{n}")));
        }
        gate.replayed_up_to(at(3));
        gate.open(&ob, None, None);
        assert!(!gate.deliver(&ob, None, Some(&at(2)), f("late2")));
        assert!(gate.deliver(&ob, None, Some(&at(5)), f("live5")));
        let other = Position {
            epoch: "new".into(),
            offset: (1, 0),
        };
        assert!(gate.deliver(&ob, None, Some(&other), f("new epoch")));
        let got: Vec<Frame> = std::iter::from_fn(|| rx.rx.try_recv().ok()).collect();
        assert_eq!(
            got,
            [
                "replay1",
                "replay2",
                "replay3",
                "live4",
                "live5",
                "new epoch"
            ]
            .map(f)
            .to_vec()
        );
    }

    #[tokio::test]
    async fn holding_is_bounded_like_the_outbox() {
        let (ob, rx) = outbox(Serializer::V2, 2);
        let gate = Gate::new();
        assert!(gate.deliver(&ob, None, None, f("a")));
        assert!(gate.deliver(&ob, None, None, f("b")));
        assert!(!gate.deliver(&ob, None, None, f("c")));
        assert_eq!(rx.close_requested().await, CloseReason::SlowConsumer);
    }
}
