//! A small map whose entries expire, shared by the token and authorization caches; and the
//! clock they read, which tests can drive by hand.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Where the caches read the time: tokio's clock (which `tokio::time::pause` controls where
/// tokio's `test-util` is on), or a hand-driven one in unit tests.
#[derive(Debug, Clone, Default)]
pub(crate) struct Clock(Option<Arc<Mutex<Instant>>>);

impl Clock {
    /// Now.
    pub(crate) fn now(&self) -> Instant {
        match &self.0 {
            None => Instant::now(),
            Some(manual) => *manual.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// A clock that stands still until [`Clock::advance`].
    #[cfg(test)]
    pub(crate) fn manual() -> Self {
        Self(Some(Arc::new(Mutex::new(Instant::now()))))
    }

    /// Moves a manual clock forward; no effect on the real one.
    #[cfg(test)]
    pub(crate) fn advance(&self, by: Duration) {
        if let Some(manual) = &self.0 {
            let mut now = manual.lock().unwrap_or_else(PoisonError::into_inner);
            *now += by;
        }
    }
}

/// A map of values that expire, bounded to `capacity` entries. When full, expired entries are
/// dropped; if none had expired, everything is (the callers' entries are cheap to recompute,
/// and a flood of distinct keys, such as random bearer tokens, must not grow memory).
#[derive(Debug)]
pub(crate) struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
    capacity: usize,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    /// An empty cache of at most `capacity` entries.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The value for `key` unless it has expired at `now`.
    pub(crate) fn get(&self, key: &K, now: Instant) -> Option<V> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match entries.get(key) {
            Some((value, expires)) if now < *expires => Some(value.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `value` for `ttl` from `now`; a zero `ttl` keeps nothing.
    pub(crate) fn insert(&self, key: K, value: V, ttl: Duration, now: Instant) {
        if ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, (_, expires)| now < *expires);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(key, (value, now + ttl));
    }

    /// How many entries are held, expired ones included.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_their_ttl() {
        let clock = Clock::manual();
        let cache = TtlCache::new(8);
        cache.insert("a", 1, Duration::from_secs(10), clock.now());
        cache.insert("b", 2, Duration::ZERO, clock.now());
        assert_eq!(cache.get(&"a", clock.now()), Some(1));
        assert_eq!(cache.get(&"b", clock.now()), None);
        clock.advance(Duration::from_millis(9_999));
        assert_eq!(cache.get(&"a", clock.now()), Some(1));
        clock.advance(Duration::from_millis(1));
        assert_eq!(cache.get(&"a", clock.now()), None);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_full_cache_drops_expired_entries_first_then_everything() {
        let clock = Clock::manual();
        let cache = TtlCache::new(2);
        cache.insert(1, (), Duration::from_secs(1), clock.now());
        cache.insert(2, (), Duration::from_secs(60), clock.now());
        clock.advance(Duration::from_secs(2));
        cache.insert(3, (), Duration::from_secs(60), clock.now());
        assert_eq!(cache.get(&2, clock.now()), Some(()));
        assert_eq!(cache.get(&3, clock.now()), Some(()));
        // Overwriting a present key never evicts.
        cache.insert(3, (), Duration::from_secs(60), clock.now());
        assert_eq!(cache.len(), 2);
        cache.insert(4, (), Duration::from_secs(60), clock.now());
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(&4, clock.now()), Some(()));
    }
}
