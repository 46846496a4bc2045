//! Counting the broadcasts from other nodes that never arrived.
//!
//! Delivery across nodes is at most once: a message published while this node's
//! subscription was down or moving to a new primary is lost. To count those losses, each
//! node numbers its envelopes per topic (`"n"`, 1, 2, 3, ...), and a receiver that sees a
//! jump in an origin's numbering on a topic counts the missing numbers. A receiver forgets a
//! topic when it unsubscribes on purpose (what it then misses is not a loss); a publisher
//! forgets topics it has not published on for a while, and a numbering that restarts is not
//! counted as a loss.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A publisher's per-topic counters (owned by the publisher task: no lock).
#[derive(Default)]
pub(super) struct Outgoing {
    next: HashMap<String, (u64, Instant)>,
    since_sweep: u64,
}

/// A topic not published on for this long starts again at 1.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Publishes between two sweeps of idle topics.
const SWEEP_EVERY: u64 = 100_000;

impl Outgoing {
    /// The number of the next envelope on `topic`.
    pub(super) fn next(&mut self, topic: &str) -> u64 {
        let now = Instant::now();
        self.since_sweep += 1;
        if self.since_sweep >= SWEEP_EVERY {
            self.since_sweep = 0;
            self.next
                .retain(|_, (_, at)| now.duration_since(*at) < FORGET_AFTER);
            crate::shrink::when_sparse(&mut self.next);
        }
        let entry = self.next.entry(topic.to_owned()).or_insert((0, now));
        entry.0 += 1;
        entry.1 = now;
        entry.0
    }
}

/// Puts `"n":<n>` first in an encoded envelope (a JSON object).
pub(super) fn stamp(envelope: &[u8], n: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(envelope.len() + 24);
    out.extend_from_slice(format!("{{\"n\":{n},").as_bytes());
    out.extend_from_slice(envelope.get(1..).unwrap_or_default());
    out
}

/// A receiver's view of every origin's numbering per topic.
#[derive(Default)]
pub(super) struct Incoming {
    last: Mutex<HashMap<(String, String), u64>>,
}

impl Incoming {
    fn last(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), u64>> {
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records envelope `n` of `origin` on `topic`; returns how many before it were missed.
    pub(super) fn seen(&self, origin: &str, topic: &str, n: u64) -> u64 {
        let mut last = self.last();
        let key = (origin.to_owned(), topic.to_owned());
        match last.insert(key, n) {
            Some(prev) if n > prev => n - prev - 1,
            // A restarted numbering (the origin forgot the topic), or a duplicate.
            _ => 0,
        }
    }

    /// Forgets `topic`: this node unsubscribed on purpose.
    pub(super) fn forget(&self, topic: &str) {
        let mut last = self.last();
        last.retain(|(_, t), _| t != topic);
        crate::shrink::when_sparse(&mut *last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_counted_restarts_and_forgotten_topics_are_not() {
        let mut out = Outgoing::default();
        assert_eq!((out.next("a"), out.next("a"), out.next("b")), (1, 2, 1));
        assert_eq!(stamp(br#"{"v":1}"#, 7), br#"{"n":7,"v":1}"#.to_vec());
        let inc = Incoming::default();
        assert_eq!(inc.seen("x", "t", 1), 0);
        assert_eq!(inc.seen("x", "t", 2), 0);
        assert_eq!(inc.seen("x", "t", 5), 2, "3 and 4 never arrived");
        assert_eq!(inc.seen("y", "t", 9), 0, "first from another origin");
        assert_eq!(inc.seen("x", "t", 1), 0, "a restarted numbering");
        inc.forget("t");
        assert_eq!(
            inc.seen("x", "t", 40),
            0,
            "after an unsubscribe, no loss is claimed"
        );
    }
}
