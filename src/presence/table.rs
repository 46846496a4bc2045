//! The presences this node tracks, and the changes not yet published.
//!
//! Both trackers (in memory, and Redis) keep one [`Table`]. A change is applied to the table
//! at once and added to its topic's pending changes; the topic's flush (see `batch.rs`)
//! takes the pending changes a window later, commits them (numbering them) and broadcasts
//! them as one `presence_diff`. Pending changes are net: a presence that joins and leaves
//! within one window never shows up. A snapshot of the table leaves the pending changes
//! out, so that the diff that publishes them follows it instead of repeating it.

use std::collections::{HashMap, HashSet};

use indexmap::IndexMap;
use serde_json::Value;
use smallvec::SmallVec;
use tokio::sync::oneshot;

use super::state::{encode_grouped, new_phx_ref, updated_meta, Diff, Meta};
use super::PresenceError;
use crate::pubsub::SubscriberId;

/// The table shared by a tracker's batcher and its store.
pub(crate) type SharedTable = std::sync::Arc<std::sync::Mutex<Table>>;

/// Locks a shared table. Every table operation leaves it consistent before it can panic, so
/// a poisoned lock is still safe to use.
pub(crate) fn lock(table: &SharedTable) -> std::sync::MutexGuard<'_, Table> {
    table.lock().unwrap_or_else(|e| e.into_inner())
}

/// One tracked presence.
pub(crate) struct Entry {
    pub key: String,
    pub owner: SubscriberId,
    /// The meta as JSON text, `phx_ref` included: kept as a map, a presence would hold a
    /// B-tree node of eleven slots (about 650 bytes for two fields); the text is what
    /// snapshots and Redis need anyway.
    meta: Box<str>,
    phx_ref: Box<str>,
    /// Its join was committed (written where snapshots are read).
    pub committed: bool,
}

fn phx_ref(meta: &Meta) -> &str {
    meta.get("phx_ref")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

impl Entry {
    fn new(key: String, owner: SubscriberId, meta: &Meta) -> Self {
        Self {
            key,
            owner,
            meta: Value::Object(meta.clone()).to_string().into_boxed_str(),
            phx_ref: phx_ref(meta).into(),
            committed: false,
        }
    }

    pub(super) fn phx_ref(&self) -> &str {
        &self.phx_ref
    }

    /// The meta as JSON text.
    pub(super) fn meta_text(&self) -> &str {
        &self.meta
    }

    /// The meta (parsed from its text: for diffs and updates, not per snapshot).
    pub(super) fn meta(&self) -> Meta {
        match serde_json::from_str(&self.meta) {
            Ok(Value::Object(m)) => m,
            _ => Meta::new(),
        }
    }
}

/// A topic's presences on this node, by owner: finding, adding and removing one is O(1) in
/// the room's size (a join or leave storm in a room of N is O(N), not O(N²)). An owner (a
/// channel) tracks one key in practice, kept inline.
#[derive(Default)]
pub(crate) struct Entries {
    by_owner: IndexMap<SubscriberId, SmallVec<[Entry; 1]>>,
    len: usize,
}

impl Entries {
    /// Every presence, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.by_owner.values().flatten()
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.by_owner.values_mut().flatten()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn contains(&self, owner: SubscriberId, key: &str) -> bool {
        self.by_owner
            .get(&owner)
            .is_some_and(|es| es.iter().any(|e| e.key == key))
    }

    fn push(&mut self, e: Entry) {
        self.by_owner.entry(e.owner).or_default().push(e);
        self.len += 1;
    }

    fn find_mut(&mut self, owner: SubscriberId, key: &str) -> Option<&mut Entry> {
        self.by_owner
            .get_mut(&owner)?
            .iter_mut()
            .find(|e| e.key == key)
    }

    fn remove(&mut self, owner: SubscriberId, key: &str) -> Option<Entry> {
        let es = self.by_owner.get_mut(&owner)?;
        let pos = es.iter().position(|e| e.key == key)?;
        let gone = es.remove(pos);
        if es.is_empty() {
            self.by_owner.swap_remove(&owner);
            crate::shrink::when_sparse(&mut self.by_owner);
        }
        self.len -= 1;
        Some(gone)
    }

    fn remove_owner(&mut self, owner: SubscriberId) -> SmallVec<[Entry; 1]> {
        let gone = self.by_owner.swap_remove(&owner).unwrap_or_default();
        crate::shrink::when_sparse(&mut self.by_owner);
        self.len -= gone.len();
        gone
    }

    fn take_all(&mut self) -> impl Iterator<Item = Entry> {
        self.len = 0;
        std::mem::take(&mut self.by_owner).into_values().flatten()
    }
}

#[derive(Default)]
struct Pending {
    diff: Diff,
    /// The phx_refs of `diff.joins`, to cancel a join by its leave cheaply.
    join_refs: HashSet<String>,
}

impl Pending {
    fn join(&mut self, key: String, meta: Meta) {
        self.join_refs.insert(phx_ref(&meta).to_owned());
        self.diff.joins.push((key, meta));
    }

    fn leave(&mut self, key: String, meta: Meta) {
        if self.join_refs.remove(phx_ref(&meta)) {
            // Never published: nobody needs to hear of it.
            let r = phx_ref(&meta);
            self.diff.joins.retain(|(_, m)| phx_ref(m) != r);
        } else {
            self.diff.leaves.push((key, meta));
        }
    }
}

/// One topic's presences on this node.
#[derive(Default)]
pub(crate) struct TopicTable {
    pub entries: Entries,
    pending: Pending,
    /// A flush task runs for this topic.
    flushing: bool,
    /// Told once the changes pending when they asked are published.
    waiters: Vec<oneshot::Sender<()>>,
    /// The `presence_state` text of what is published, with its number: built once per
    /// flush, however many joiners ask (a join storm would otherwise build it per joiner).
    published: Option<(u64, std::sync::Arc<str>)>,
}

impl TopicTable {
    fn is_idle(&self) -> bool {
        self.entries.is_empty() && self.pending.diff.is_empty() && !self.flushing
    }
}

/// What a flush took from a topic.
pub(crate) struct Taken {
    /// The net changes.
    pub diff: Diff,
    /// This node's number for them (the in-memory tracker's sequence).
    pub seq: u64,
    /// This node has no presence left on the topic.
    pub emptied: bool,
    /// To tell once they are published.
    pub waiters: Vec<oneshot::Sender<()>>,
}

/// The tracked presences of this node, by topic.
pub(crate) struct Table {
    topics: HashMap<String, TopicTable>,
    /// Numbers every flush of every topic, so a number never repeats even when a topic's
    /// state is dropped and created again.
    seq: u64,
    node_tag: u16,
}

/// Whether a change needs a flush task to be started for its topic.
#[must_use]
pub(crate) struct StartFlush(pub bool);

impl Default for Table {
    fn default() -> Self {
        Self::new()
    }
}

impl Table {
    pub(super) fn new() -> Self {
        Self {
            topics: HashMap::new(),
            seq: 0,
            node_tag: rand::random(),
        }
    }

    fn changed(&mut self, topic: &str) -> StartFlush {
        let t = self.topics.entry(topic.to_owned()).or_default();
        StartFlush(!std::mem::replace(&mut t.flushing, true))
    }

    /// Tracks `key` for `owner`; returns the new phx_ref.
    pub(super) fn track(
        &mut self,
        topic: &str,
        key: &str,
        owner: SubscriberId,
        mut meta: Meta,
    ) -> Result<(String, StartFlush), PresenceError> {
        let t = self.topics.entry(topic.to_owned()).or_default();
        if t.entries.contains(owner, key) {
            return Err(PresenceError::AlreadyTracked);
        }
        let r = new_phx_ref(self.node_tag);
        meta.remove("phx_ref_prev");
        meta.insert("phx_ref".into(), Value::String(r.clone()));
        t.entries.push(Entry::new(key.to_owned(), owner, &meta));
        t.pending.join(key.to_owned(), meta);
        ::metrics::gauge!(crate::metrics::PRESENCE_ENTRIES).increment(1.0);
        Ok((r, self.changed(topic)))
    }

    /// Replaces the meta of `owner`'s presence under `key` (a leave of the old meta and a
    /// join of the new one); returns the new phx_ref.
    pub(super) fn update(
        &mut self,
        topic: &str,
        key: &str,
        owner: SubscriberId,
        meta: Meta,
    ) -> Result<(String, StartFlush), PresenceError> {
        let r = new_phx_ref(self.node_tag);
        let t = self
            .topics
            .get_mut(topic)
            .ok_or(PresenceError::NoPresence)?;
        let entry = t
            .entries
            .find_mut(owner, key)
            .ok_or(PresenceError::NoPresence)?;
        let old = entry.meta();
        let new = updated_meta(&old, meta, r.clone());
        *entry = Entry::new(key.to_owned(), owner, &new);
        t.pending.leave(key.to_owned(), old);
        t.pending.join(key.to_owned(), new);
        Ok((r, self.changed(topic)))
    }

    /// Stops tracking `owner`'s presence under `key`.
    pub(super) fn untrack(
        &mut self,
        topic: &str,
        key: &str,
        owner: SubscriberId,
    ) -> Result<StartFlush, PresenceError> {
        let t = self
            .topics
            .get_mut(topic)
            .ok_or(PresenceError::NoPresence)?;
        let gone = t
            .entries
            .remove(owner, key)
            .ok_or(PresenceError::NoPresence)?;
        let meta = gone.meta();
        t.pending.leave(gone.key, meta);
        ::metrics::gauge!(crate::metrics::PRESENCE_ENTRIES).decrement(1.0);
        Ok(self.changed(topic))
    }

    /// Stops tracking everything `owner` tracks on `topic`.
    pub(super) fn untrack_owner(&mut self, topic: &str, owner: SubscriberId) -> StartFlush {
        let Some(t) = self.topics.get_mut(topic) else {
            return StartFlush(false);
        };
        let gone = t.entries.remove_owner(owner);
        if gone.is_empty() {
            return StartFlush(false);
        }
        ::metrics::gauge!(crate::metrics::PRESENCE_ENTRIES).decrement(gone.len() as f64);
        for e in gone {
            let meta = e.meta();
            t.pending.leave(e.key, meta);
        }
        self.changed(topic)
    }

    /// Untracks every presence of this node (it stops); returns the topics that changed.
    pub(super) fn untrack_all(&mut self) -> Vec<(String, StartFlush)> {
        let topics: Vec<String> = self.topics.keys().cloned().collect();
        let mut changed = Vec::new();
        for topic in topics {
            let Some(t) = self.topics.get_mut(&topic) else {
                continue;
            };
            if t.entries.is_empty() {
                continue;
            }
            ::metrics::gauge!(crate::metrics::PRESENCE_ENTRIES).decrement(t.entries.len() as f64);
            let gone: Vec<Entry> = t.entries.take_all().collect();
            for e in gone {
                let meta = e.meta();
                t.pending.leave(e.key, meta);
            }
            let start = self.changed(&topic);
            changed.push((topic, start));
        }
        changed
    }

    /// Takes a topic's pending changes for its flush, numbered. None when nothing is
    /// pending: the flush task ends (and whoever waited is told).
    pub(super) fn take(&mut self, topic: &str) -> Option<Taken> {
        let t = self.topics.get_mut(topic)?;
        if t.pending.diff.is_empty() {
            t.flushing = false;
            for w in t.waiters.drain(..) {
                let _ = w.send(());
            }
            if t.is_idle() {
                self.topics.remove(topic);
                crate::shrink::when_sparse(&mut self.topics);
            }
            return None;
        }
        let pending = std::mem::take(&mut t.pending);
        t.published = None;
        self.seq += 1;
        Some(Taken {
            diff: pending.diff,
            seq: self.seq,
            emptied: t.entries.is_empty(),
            waiters: std::mem::take(&mut t.waiters),
        })
    }

    /// Marks the joins of a committed diff as committed.
    pub(super) fn committed(&mut self, topic: &str, diff: &Diff) {
        let Some(t) = self.topics.get_mut(topic) else {
            return;
        };
        let refs: HashSet<&str> = diff.joins.iter().map(|(_, m)| phx_ref(m)).collect();
        for e in t.entries.iter_mut() {
            if refs.contains(e.phx_ref()) {
                e.committed = true;
            }
        }
    }

    /// A receiver told once the changes pending on `topic` now are published; None if
    /// nothing is pending or being published.
    pub(super) fn wait_flushed(&mut self, topic: &str) -> Option<oneshot::Receiver<()>> {
        let t = self.topics.get_mut(topic)?;
        if !t.flushing {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        t.waiters.push(tx);
        Some(rx)
    }

    /// The `presence_state` of what this node published on `topic` (pending changes left
    /// out), and the number of the last flush it holds.
    pub(super) fn snapshot(&self, topic: &str) -> (u64, String) {
        let Some(t) = self.topics.get(topic) else {
            return (self.seq, "{}".to_owned());
        };
        let joined = &t.pending.join_refs;
        let left: Vec<(&str, String)> = t
            .pending
            .diff
            .leaves
            .iter()
            .map(|(k, m)| (k.as_str(), Value::Object(m.clone()).to_string()))
            .collect();
        let published = t
            .entries
            .iter()
            .filter(|e| !joined.contains(e.phx_ref()))
            .map(|e| (e.key.as_str(), e.meta_text()));
        let state = encode_grouped(published.chain(left.iter().map(|(k, m)| (*k, m.as_str()))));
        (self.seq, state)
    }

    /// The size of [`Table::snapshot`], counted in place.
    pub(super) fn count(&self, topic: &str) -> super::Count {
        let Some(t) = self.topics.get(topic) else {
            return super::Count::default();
        };
        let joined = &t.pending.join_refs;
        let published = t
            .entries
            .iter()
            .filter(|e| !joined.contains(e.phx_ref()))
            .map(|e| e.key.as_str());
        let left = t.pending.diff.leaves.iter().map(|(k, _)| k.as_str());
        let mut keys = std::collections::HashSet::new();
        let mut connections = 0u64;
        for key in published.chain(left) {
            connections += 1;
            keys.insert(key);
        }
        super::Count {
            users: keys.len() as u64,
            connections,
        }
    }

    /// [`Table::snapshot`] as JSON text, built once between two flushes of the topic (what
    /// it holds changes only when a flush takes the pending changes).
    pub(super) fn snapshot_text(&mut self, topic: &str) -> (u64, std::sync::Arc<str>) {
        if let Some(cached) = self.topics.get(topic).and_then(|t| t.published.clone()) {
            return cached;
        }
        let (seq, state) = self.snapshot(topic);
        let text: std::sync::Arc<str> = std::sync::Arc::from(state);
        if let Some(t) = self.topics.get_mut(topic) {
            t.published = Some((seq, text.clone()));
        }
        (seq, text)
    }

    /// Every topic with presences or pending changes.
    pub(super) fn topic_names(&self) -> Vec<String> {
        self.topics.keys().cloned().collect()
    }

    /// One topic's entries, if it has any.
    pub(super) fn topic(&self, topic: &str) -> Option<&TopicTable> {
        self.topics.get(topic).filter(|t| !t.entries.is_empty())
    }

    /// Every topic's entries.
    pub(super) fn topics(&self) -> impl Iterator<Item = (&String, &TopicTable)> {
        self.topics.iter().filter(|(_, t)| !t.entries.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(v: Value) -> Meta {
        v.as_object().cloned().expect("object")
    }

    fn state(t: &Table) -> Value {
        serde_json::from_str(&t.snapshot("t").1).expect("JSON")
    }

    #[test]
    fn presences_are_found_and_removed_by_owner_and_key() {
        let mut t = Table::new();
        let _ = t.track("t", "alice", 1, Meta::new()).unwrap();
        let _ = t.track("t", "alice-phone", 1, Meta::new()).unwrap();
        let _ = t.track("t", "bob", 2, Meta::new()).unwrap();
        assert_eq!(
            t.track("t", "alice", 1, Meta::new()).err(),
            Some(PresenceError::AlreadyTracked)
        );
        let _ = t.track("t", "alice", 3, Meta::new()).unwrap();
        assert_eq!(t.topic("t").map(|t| t.entries.len()), Some(4));
        let _ = t.untrack("t", "alice-phone", 1).unwrap();
        assert_eq!(
            t.untrack("t", "alice-phone", 1).err(),
            Some(PresenceError::NoPresence)
        );
        let _ = t.untrack_owner("t", 2);
        let _ = t.untrack_owner("t", 2);
        let keys: Vec<(u64, &str)> = t
            .topic("t")
            .map(|t| {
                t.entries
                    .iter()
                    .map(|e| (e.owner, e.key.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&(1, "alice")) && keys.contains(&(3, "alice")));
        let count = |t: &Table| (t.count("t").users, t.count("t").connections);
        assert_eq!(count(&t), (0, 0), "nothing published yet");
        let _ = t.take("t");
        assert_eq!(count(&t), (1, 2), "one user, two connections");
        let _ = t.untrack_all();
        assert_eq!(t.topic("t").map(|t| t.entries.len()), None);
    }

    #[test]
    fn snapshots_leave_out_what_is_pending_and_a_join_left_within_a_window_vanishes() {
        let mut t = Table::new();
        let (r1, start) = t.track("t", "alice", 1, meta(json!({"a": 1}))).unwrap();
        assert!(start.0, "the first change starts a flush");
        let taken = t.take("t").expect("pending");
        assert_eq!(taken.diff.joins.len(), 1);
        assert_eq!(state(&t)["alice"]["metas"][0]["phx_ref"], json!(r1));

        let (_, start) = t.track("t", "bob", 2, meta(json!({}))).unwrap();
        assert!(!start.0, "a flush is already running");
        let (seq, _) = t.snapshot("t");
        assert_eq!(seq, taken.seq);
        assert!(
            state(&t).get("bob").is_none(),
            "bob's join is not published yet"
        );
        let _ = t.untrack_owner("t", 2);
        assert!(
            t.take("t").is_none(),
            "bob came and went: nothing to publish"
        );

        let _ = t.untrack("t", "alice", 1).unwrap();
        assert!(
            state(&t).get("alice").is_some(),
            "alice's leave is not published yet"
        );
        let taken = t.take("t").expect("the leave");
        assert_eq!(taken.diff.leaves[0].0, "alice");
        assert!(t.take("t").is_none());
        assert!(t.topics.is_empty(), "an idle topic is dropped");
        assert_eq!(t.snapshot("t").0, taken.seq, "numbers never go back");
    }
}
