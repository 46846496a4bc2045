//! Giving back the memory of tables that emptied. A hash map keeps the capacity of its
//! biggest moment: a node that carried a peak (thousands of topics, a room of 15,000) would
//! keep those arrays for life, long after the sockets are gone. The same goes for the
//! allocator's per-thread caches of freed blocks: a thread that goes idle keeps its cache.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash};
use std::sync::OnceLock;
use std::time::Duration;

use indexmap::IndexMap;

/// Tables smaller than this are left alone: shrinking them saves nothing worth a rehash.
pub const SMALL: usize = 64;

/// A table whose capacity can shrink.
pub trait Table {
    /// Entries held.
    fn len(&self) -> usize;
    /// Whether it holds nothing.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Entries it has room for.
    fn capacity(&self) -> usize;
    /// Shrinks its capacity to at least `min`.
    fn shrink_to(&mut self, min: usize);
}

/// Shrinks `table` to twice its length once it uses less than a quarter of its capacity.
/// Call after removals: the rehash it costs is paid for by the removals before it (at least
/// half the capacity), so it stays O(1) per removal, and a table that refills a little does
/// not grow straight back.
pub fn when_sparse<T: Table>(table: &mut T) {
    let capacity = table.capacity();
    if capacity > SMALL && table.len() < capacity / 4 {
        let len = table.len();
        table.shrink_to(len * 2);
    }
}

impl<K: Eq + Hash, V, S: BuildHasher> Table for HashMap<K, V, S> {
    fn len(&self) -> usize {
        HashMap::len(self)
    }
    fn capacity(&self) -> usize {
        HashMap::capacity(self)
    }
    fn shrink_to(&mut self, min: usize) {
        HashMap::shrink_to(self, min);
    }
}

impl<K: Eq + Hash, S: BuildHasher> Table for HashSet<K, S> {
    fn len(&self) -> usize {
        HashSet::len(self)
    }
    fn capacity(&self) -> usize {
        HashSet::capacity(self)
    }
    fn shrink_to(&mut self, min: usize) {
        HashSet::shrink_to(self, min);
    }
}

impl<K: Eq + Hash, V, S: BuildHasher> Table for IndexMap<K, V, S> {
    fn len(&self) -> usize {
        IndexMap::len(self)
    }
    fn capacity(&self) -> usize {
        IndexMap::capacity(self)
    }
    fn shrink_to(&mut self, min: usize) {
        IndexMap::shrink_to(self, min);
    }
}

static THREAD_CACHE_RELEASE: OnceLock<fn()> = OnceLock::new();

/// Registers how the allocator hands a thread's cache of freed blocks back (the binary's
/// jemalloc build; the function rate-limits itself). Only the first registration counts.
pub fn register_thread_cache_release(release: fn()) {
    let _ = THREAD_CACHE_RELEASE.set(release);
}

/// Hands the calling thread's cache of freed blocks back to the allocator, if one was
/// registered: call from threads that may go idle for long.
pub fn release_thread_cache() {
    if let Some(release) = THREAD_CACHE_RELEASE.get() {
        release();
    }
}

/// How often a thread-per-core runtime (actix's workers) releases its thread's cache: a
/// worker whose load went away gives its cache back within this.
pub const THREAD_CACHE_RELEASE_EVERY: Duration = Duration::from_secs(5);

/// Releases the current thread's cache every `period` (at once, then after each period), for
/// as long as the current-thread runtime it is spawned on runs.
pub async fn release_thread_cache_every(period: Duration) {
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        release_thread_cache();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_that_emptied_gives_its_room_back_and_a_busy_one_keeps_it() {
        let mut m: HashMap<u32, u32> = (0..10_000).map(|i| (i, i)).collect();
        let peak = m.capacity();
        for i in 0..9_000 {
            m.remove(&i);
            when_sparse(&mut m);
        }
        assert!(m.capacity() <= peak / 4, "{} of {peak}", m.capacity());
        assert_eq!(m.len(), 1_000);
        let mut busy: HashMap<u32, u32> = (0..100).map(|i| (i, i)).collect();
        let room = busy.capacity();
        busy.remove(&1);
        when_sparse(&mut busy);
        // (A removal may give a hash map one slot more or less of room: no rehash happened.)
        assert!(busy.capacity() + 1 >= room, "{} of {room}", busy.capacity());
        let mut small: IndexMap<u32, u32> = IndexMap::with_capacity(SMALL);
        small.insert(1, 1);
        when_sparse(&mut small);
        assert!(small.capacity() >= SMALL);
    }

    static RELEASED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    fn count_release() {
        RELEASED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    #[tokio::test]
    async fn an_idle_thread_releases_its_cache_every_period() {
        register_thread_cache_release(count_release);
        let task = tokio::spawn(release_thread_cache_every(Duration::from_millis(10)));
        // Nothing else happens on the runtime: the releases come from the timer alone.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while RELEASED.load(std::sync::atomic::Ordering::Relaxed) < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the cache was not released 3 times in 10 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        task.abort();
    }
}
