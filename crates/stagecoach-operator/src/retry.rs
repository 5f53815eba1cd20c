//! Bounded exponential backoff per object for transient reconcile failures.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// First retry delay.
pub const BASE_RETRY_DELAY: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);
/// Most objects whose failures are remembered at once. Past it the memory is cleared,
/// which only shortens a few delays; it keeps objects deleted while failing from piling up.
const MAX_TRACKED: usize = 10_000;

/// Delay before retrying an object after its `attempt`-th consecutive failure (1-based):
/// 1s, 2s, 4s ... capped at [`MAX_RETRY_DELAY`].
pub fn retry_delay(attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(16);
    (BASE_RETRY_DELAY * 2u32.pow(exponent)).min(MAX_RETRY_DELAY)
}

/// Identifies one object across both controllers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

/// Consecutive failures per object.
#[derive(Debug, Default)]
pub struct Retries {
    attempts: Mutex<HashMap<ObjectKey, u32>>,
}

impl Retries {
    /// Records a failure and returns the delay before the next try.
    pub fn failed(&self, key: ObjectKey) -> Duration {
        let mut attempts = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        if attempts.len() >= MAX_TRACKED && !attempts.contains_key(&key) {
            attempts.clear();
        }
        let attempt = attempts.entry(key).or_insert(0);
        *attempt = attempt.saturating_add(1);
        retry_delay(*attempt)
    }

    /// Forgets the failures of an object that reconciled successfully.
    pub fn succeeded(&self, key: &ObjectKey) {
        self.attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            kind: "Release",
            namespace: "billing".into(),
            name: name.into(),
        }
    }

    #[test]
    fn retry_delay_doubles_and_is_bounded() {
        assert_eq!(retry_delay(0), Duration::from_secs(1));
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(2), Duration::from_secs(2));
        assert_eq!(retry_delay(5), Duration::from_secs(16));
        assert_eq!(retry_delay(9), Duration::from_secs(256));
        assert_eq!(retry_delay(10), MAX_RETRY_DELAY);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY_DELAY);
    }

    #[test]
    fn failures_back_off_per_object_and_reset_on_success() {
        let retries = Retries::default();
        assert_eq!(retries.failed(key("a")), Duration::from_secs(1));
        assert_eq!(retries.failed(key("a")), Duration::from_secs(2));
        assert_eq!(retries.failed(key("b")), Duration::from_secs(1));
        assert_eq!(retries.failed(key("a")), Duration::from_secs(4));
        retries.succeeded(&key("a"));
        assert_eq!(retries.failed(key("a")), Duration::from_secs(1));
    }
}
