//! Never decide from a cache older than the operator's own last write.
//!
//! Every write returns the object's new `resourceVersion`. The fence remembers it per
//! object; before planning, the release controller asks whether each cached object it
//! is about to read has reached that version. If not, the cache has not yet seen the
//! operator's own change (a watch that is behind, or stuck relisting after an API server
//! restart) and deciding from it would repeat a transition that already happened: the
//! reconcile waits for the cache instead.
//!
//! Resource versions are compared as numbers (what etcd-backed API servers hand out);
//! a version that is not a number is never taken as stale. An object the operator wrote
//! and the cache does not hold at all counts as stale for [`ABSENT_GRACE`] only, after
//! which it is taken as deleted by someone else.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a written object missing from the cache is waited for.
pub const ABSENT_GRACE: Duration = Duration::from_secs(10);

/// How many remembered writes make [`WriteFence::wrote`] forget those older than
/// [`FORGET_AFTER`].
const FORGET_ABOVE: usize = 16_384;
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// Which object: kind, namespace, name.
pub type FenceKey = (&'static str, String, String);

/// The resource versions of the operator's last writes, until the caches show them.
#[derive(Debug, Default)]
pub struct WriteFence {
    written: Mutex<HashMap<FenceKey, (u64, Instant)>>,
}

/// A cache's view of one object, for [`WriteFence::is_stale`].
#[derive(Clone, Copy, Debug)]
pub enum Cached<'a> {
    /// The cache holds the object at this resource version.
    At(Option<&'a str>),
    /// The cache does not hold the object.
    Absent,
}

impl WriteFence {
    /// Remembers the resource version a write returned.
    pub fn wrote(&self, key: FenceKey, resource_version: Option<&str>) {
        let Some(version) = resource_version.and_then(|v| v.parse::<u64>().ok()) else {
            return;
        };
        let mut written = self.lock();
        // An object deleted before its cache caught up is never asked about again: past
        // this many, such writes older than a minute are forgotten.
        if written.len() >= FORGET_ABOVE {
            written.retain(|_, (_, at)| at.elapsed() < FORGET_AFTER);
        }
        let entry = written.entry(key).or_insert((version, Instant::now()));
        if version >= entry.0 {
            *entry = (version, Instant::now());
        }
    }

    /// Whether the cache's view of `key` is older than the operator's last write of it.
    /// Forgets the write once the cache has caught up.
    pub fn is_stale(&self, key: &FenceKey, cached: Cached<'_>) -> bool {
        let mut written = self.lock();
        let Some(&(version, at)) = written.get(key) else {
            return false;
        };
        let stale = match cached {
            Cached::At(Some(seen)) => seen.parse::<u64>().is_ok_and(|seen| seen < version),
            Cached::At(None) => false,
            Cached::Absent => at.elapsed() < ABSENT_GRACE,
        };
        if !stale {
            written.remove(key);
            super::shrink_after_burst(&mut written);
        }
        stale
    }

    /// Objects written and not yet seen in a cache.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.lock().len()
    }

    /// The room the map has, for tests.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.lock().capacity()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FenceKey, (u64, Instant)>> {
        // A poisoned lock only means another reconcile panicked mid-update of a map of
        // numbers; the map itself is still consistent.
        self.written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> FenceKey {
        ("Release", "ns".into(), name.into())
    }

    #[test]
    fn a_cache_behind_the_last_write_is_stale_until_it_catches_up() {
        let fence = WriteFence::default();
        fence.wrote(key("a"), Some("120"));
        assert!(fence.is_stale(&key("a"), Cached::At(Some("119"))));
        assert!(fence.is_stale(&key("a"), Cached::At(Some("7"))));
        assert!(!fence.is_stale(&key("a"), Cached::At(Some("120"))));
        assert_eq!(fence.pending(), 0, "forgotten once seen");
        assert!(!fence.is_stale(&key("a"), Cached::At(Some("1"))));
    }

    #[test]
    fn only_the_newest_write_counts_and_unknown_objects_are_never_stale() {
        let fence = WriteFence::default();
        fence.wrote(key("a"), Some("200"));
        fence.wrote(key("a"), Some("150"));
        assert!(fence.is_stale(&key("a"), Cached::At(Some("180"))));
        assert!(!fence.is_stale(&key("b"), Cached::At(Some("1"))));
        assert!(!fence.is_stale(&key("b"), Cached::Absent));
    }

    #[test]
    fn versions_that_are_not_numbers_are_never_stale() {
        let fence = WriteFence::default();
        fence.wrote(key("a"), Some("opaque"));
        assert_eq!(fence.pending(), 0);
        fence.wrote(key("a"), Some("10"));
        assert!(!fence.is_stale(&key("a"), Cached::At(Some("opaque"))));
    }

    #[test]
    fn a_written_object_missing_from_the_cache_is_waited_for_briefly() {
        let fence = WriteFence::default();
        fence.wrote(key("a"), Some("10"));
        assert!(fence.is_stale(&key("a"), Cached::Absent));
    }

    #[test]
    fn the_map_gives_back_a_bursts_room_once_caught_up() {
        let fence = WriteFence::default();
        for i in 0..10_000 {
            fence.wrote(key(&i.to_string()), Some("5"));
        }
        assert!(fence.capacity() >= 10_000);
        for i in 0..9_990 {
            assert!(!fence.is_stale(&key(&i.to_string()), Cached::At(Some("5"))));
        }
        assert_eq!(fence.pending(), 10);
        assert!(fence.capacity() < 1_000, "capacity {}", fence.capacity());
        // What is still pending is kept.
        assert!(fence.is_stale(&key("9995"), Cached::At(Some("4"))));
    }
}
