//! Per-topic history: positions, what a joiner asks for, and the in-memory ring of a node
//! without Redis (docs/history.md).
//!
//! A route with history gives every broadcast on its topics a position: an epoch (which
//! changes whenever the topic's history was lost, so an old position never "recovers"
//! against a new history) and an offset that grows within the epoch. With Redis the offset
//! is the id of the message in the topic's stream (`<ms>-<seq>`); in memory it is a counter.
//! On the wire a position is the string `<epoch>:<ms>-<seq>`, carried in the broadcast
//! frame's `ref`.

use std::cmp::Ordering;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::Broadcast;

/// Where a message stands in its topic's history.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    /// Identifies one life of the topic's history.
    pub epoch: Arc<str>,
    /// The offset within the epoch: (milliseconds, sequence), as a Redis stream id.
    pub offset: (u64, u64),
}

impl Position {
    /// Compares offsets; None across epochs (they do not compare).
    pub fn cmp_in_epoch(&self, other: &Position) -> Option<Ordering> {
        (self.epoch == other.epoch).then(|| self.offset.cmp(&other.offset))
    }

    /// Parses `<epoch>:<ms>-<seq>`.
    pub fn parse(s: &str) -> Option<Self> {
        let (epoch, id) = s.rsplit_once(':')?;
        if epoch.is_empty() || epoch.len() > 64 {
            return None;
        }
        Some(Self {
            epoch: epoch.into(),
            offset: parse_id(id)?,
        })
    }
}

/// Parses a Redis stream id `<ms>-<seq>`.
pub fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}-{}", self.epoch, self.offset.0, self.offset.1)
    }
}

/// How much history a route keeps per topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Messages kept per topic.
    pub size: usize,
    /// How long a topic's history outlives its last message.
    pub ttl: Duration,
}

/// What a joiner asks for (the join payload's `history`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// The last N messages (backfill).
    Last(usize),
    /// Everything after this position (recovery).
    After(Position),
}

/// Why the join payload's `history` was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SinceError {
    /// Not `{"last": N}` or `{"since": "<position>"}`.
    #[error("history must be {{\"last\": N}} or {{\"since\": \"<position>\"}}")]
    Shape,
    /// The position is not one this gateway gives out.
    #[error("history.since is not a position")]
    Position,
}

impl Since {
    /// Reads the join payload's `history`: None when absent (or null).
    pub fn from_join(payload: &Value) -> Result<Option<Self>, SinceError> {
        let Some(h) = payload.get("history") else {
            return Ok(None);
        };
        if h.is_null() {
            return Ok(None);
        }
        let obj = h.as_object().ok_or(SinceError::Shape)?;
        match (obj.get("last"), obj.get("since")) {
            (Some(n), None) => {
                let n = n.as_u64().ok_or(SinceError::Shape)?;
                Ok(Some(Since::Last(usize::try_from(n).unwrap_or(usize::MAX))))
            }
            (None, Some(Value::String(p))) => Position::parse(p)
                .map(|p| Some(Since::After(p)))
                .ok_or(SinceError::Position),
            (None, Some(Value::Null)) => Ok(None),
            _ => Err(SinceError::Shape),
        }
    }
}

/// What a history read found.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    /// For `Since::After`: whether every message after the position is kept (and the epoch
    /// is current). Always true for `Since::Last`.
    pub recovered: bool,
    /// The topic's current position (its last message's), if it has any history.
    pub position: Option<Position>,
    /// The messages to push, in order, each with its position.
    pub messages: Vec<Arc<Broadcast>>,
}

/// Decides a recovery from what the history holds: the epoch, the newest offset and the
/// newest offset that was trimmed away.
pub(crate) fn recoverable(
    since: &Position,
    epoch: &str,
    last: (u64, u64),
    trimmed: (u64, u64),
) -> bool {
    *since.epoch == *epoch && since.offset >= trimmed && since.offset <= last
}

/// One topic's ring.
struct Ring {
    entries: VecDeque<Arc<Broadcast>>,
    ttl: Duration,
    /// Offset of the newest message.
    last: u64,
    /// Offset of the newest message dropped for room (0: none).
    trimmed: u64,
    touched: Instant,
}

/// The in-memory history of a node without Redis: a bounded ring per topic, dropped
/// `ttl` after its last message. Its epoch is per process start.
pub struct MemoryHistory {
    epoch: Arc<str>,
    rings: Mutex<HashMap<String, Ring>>,
    appends: std::sync::atomic::AtomicU64,
}

/// Every this many appends, rings past their TTL are dropped (memory stays bounded by the
/// topics active within a TTL).
const SWEEP_EVERY: u64 = 1024;

impl Default for MemoryHistory {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryHistory {
    /// An empty history with a fresh epoch.
    pub fn new() -> Self {
        Self {
            epoch: new_epoch().into(),
            rings: Mutex::new(HashMap::new()),
            appends: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn rings(&self) -> std::sync::MutexGuard<'_, HashMap<String, Ring>> {
        self.rings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a broadcast and hands it, with its position, to `deliver` before another
    /// append can take the next position: subscribers get a topic's messages in position
    /// order.
    pub fn append(
        &self,
        msg: &Broadcast,
        retention: Retention,
        deliver: impl FnOnce(&Arc<Broadcast>),
    ) -> Arc<Broadcast> {
        let mut rings = self.rings();
        let now = Instant::now();
        let n = self
            .appends
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % SWEEP_EVERY == SWEEP_EVERY - 1 {
            rings.retain(|_, r| now.duration_since(r.touched) <= r.ttl);
        }
        let fresh = || Ring {
            entries: VecDeque::new(),
            ttl: retention.ttl,
            last: 0,
            trimmed: 0,
            touched: now,
        };
        let ring = rings.entry(msg.topic.clone()).or_insert_with(fresh);
        if now.duration_since(ring.touched) > retention.ttl {
            // Expired: a new life, as when Redis loses a stream.
            *ring = fresh();
        }
        ring.ttl = retention.ttl;
        ring.last += 1;
        ring.touched = now;
        let mut stored = msg.clone();
        stored.position = Some(Position {
            epoch: self.epoch.clone(),
            offset: (ring.last, 0),
        });
        let stored = Arc::new(stored);
        ring.entries.push_back(stored.clone());
        while ring.entries.len() > retention.size.max(1) {
            if let Some(old) = ring.entries.pop_front() {
                ring.trimmed = old.position.as_ref().map_or(0, |p| p.offset.0);
            }
        }
        deliver(&stored);
        stored
    }

    /// Reads a topic's history (see [`Replay`]).
    pub fn read(&self, topic: &str, retention: Retention, since: &Since) -> Replay {
        let mut rings = self.rings();
        let expired = rings
            .get(topic)
            .is_some_and(|r| r.touched.elapsed() > retention.ttl);
        if expired {
            rings.remove(topic);
        }
        let Some(ring) = rings.get(topic) else {
            return Replay {
                recovered: matches!(since, Since::Last(_)),
                ..Replay::default()
            };
        };
        let position = Some(Position {
            epoch: self.epoch.clone(),
            offset: (ring.last, 0),
        });
        match since {
            Since::Last(n) => Replay {
                recovered: true,
                position,
                messages: ring
                    .entries
                    .iter()
                    .skip(ring.entries.len().saturating_sub(*n))
                    .cloned()
                    .collect(),
            },
            Since::After(p) => {
                if !recoverable(p, &self.epoch, (ring.last, 0), (ring.trimmed, 0)) {
                    return Replay {
                        recovered: false,
                        position,
                        messages: Vec::new(),
                    };
                }
                Replay {
                    recovered: true,
                    position,
                    messages: ring
                        .entries
                        .iter()
                        .filter(|m| m.position.as_ref().is_some_and(|q| q.offset > p.offset))
                        .cloned()
                        .collect(),
                }
            }
        }
    }
}

/// A fresh random epoch (16 hex digits).
pub fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Payload;
    use serde_json::json;

    fn msg(n: u64) -> Broadcast {
        Broadcast::new("room:h", "new_msg", Payload::Json(json!({"n": n})))
    }

    const KEEP3: Retention = Retention {
        size: 3,
        ttl: Duration::from_secs(60),
    };

    #[test]
    fn positions_round_trip_and_are_never_plain_integers() {
        let p = Position {
            epoch: "00ab".into(),
            offset: (1700000000000, 3),
        };
        assert_eq!(p.to_string(), "00ab:1700000000000-3");
        assert_eq!(Position::parse(&p.to_string()), Some(p));
        for bad in ["", "12", "ab:12", "ab:x-1", ":1-2", "ab:1-2-3"] {
            assert_eq!(Position::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn join_params() {
        assert_eq!(Since::from_join(&json!({})), Ok(None));
        assert_eq!(
            Since::from_join(&json!({"history": {"last": 5}})),
            Ok(Some(Since::Last(5)))
        );
        assert!(matches!(
            Since::from_join(&json!({"history": {"since": "e:1-0"}})),
            Ok(Some(Since::After(_)))
        ));
        for bad in [
            json!({"history": 3}),
            json!({"history": {"last": -1}}),
            json!({"history": {"last": 1, "since": "e:1-0"}}),
            json!({"history": {"since": 7}}),
        ] {
            assert_eq!(Since::from_join(&bad), Err(SinceError::Shape), "{bad}");
        }
        assert_eq!(
            Since::from_join(&json!({"history": {"since": "nope"}})),
            Err(SinceError::Position)
        );
    }

    #[test]
    fn ring_recovers_what_it_keeps_and_refuses_what_it_dropped() {
        let h = MemoryHistory::new();
        let stored: Vec<_> = (1..=5).map(|n| h.append(&msg(n), KEEP3, |_| {})).collect();
        let pos = |i: usize| stored[i].position.clone().expect("position");
        let r = h.read("room:h", KEEP3, &Since::After(pos(2)));
        assert!(r.recovered);
        assert_eq!(r.messages.len(), 2, "after the 3rd: the 4th and 5th");
        assert_eq!(r.position, Some(pos(4)));
        // The 1st was trimmed: after it, the 2nd is gone too.
        assert!(!h.read("room:h", KEEP3, &Since::After(pos(0))).recovered);
        // After the newest trimmed one, everything is kept.
        assert!(h.read("room:h", KEEP3, &Since::After(pos(1))).recovered);
        let other = Position {
            epoch: "other".into(),
            offset: pos(3).offset,
        };
        assert!(!h.read("room:h", KEEP3, &Since::After(other)).recovered);
        let last = h.read("room:h", KEEP3, &Since::Last(2));
        assert_eq!(last.messages.len(), 2);
        assert_eq!(last.messages[1].position, Some(pos(4)));
        assert_eq!(h.read("room:h", KEEP3, &Since::Last(50)).messages.len(), 3);
    }
}
