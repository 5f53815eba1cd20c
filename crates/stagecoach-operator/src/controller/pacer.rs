//! Paces the start of new releases by how fast the API server answers the operator.
//!
//! A release's start is its busiest moment for the control plane: the operator writes the
//! finalizer, the recorded revision, the status and the canary, and the canary makes
//! kube-controller-manager, the scheduler and the kubelets write a dozen more objects.
//! Hundreds of releases applied at once (a GitOps sync, a platform-wide rebuild) would
//! otherwise all start in the same second, and every release already rolling out would
//! wait behind that queue in the API server: a canary step or a rollback seconds late.
//!
//! So starts take a token from a bucket whose rate follows the API server: the operator
//! times its own writes, and in every quarter second whose writes took longer than
//! [`SLOW_WRITE`] on average the rate halves (down to [`MIN_RATE`]); otherwise it grows
//! again (up to [`MAX_RATE`]). Steps, rollbacks and deletions never wait for a token.
//! One release, or a few, start at once as before: the bucket holds [`MAX_RATE`] tokens
//! when the API server is quick. Releases waiting for a token queue in the order they
//! first asked, and each is told to come back when its turn is due (at most
//! [`LONGEST_WAIT`] later, so a release deleted while waiting leaves the queue soon).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Starts per second when the API server keeps up.
pub const MAX_RATE: f64 = 50.0;
/// Starts per second however slow the API server is: starting never stops.
pub const MIN_RATE: f64 = 4.0;
/// A write taking longer than this on average means the API server is queueing.
pub const SLOW_WRITE: Duration = Duration::from_millis(100);
/// How often the rate is reconsidered.
pub const WINDOW: Duration = Duration::from_millis(250);
/// The longest a waiting release is told to wait before asking again.
pub const LONGEST_WAIT: Duration = Duration::from_secs(5);
/// A waiting release that has not asked again this long after its turn was due has left
/// the queue (deleted, superseded, or started without a token), so it holds up no one.
const GRACE: Duration = Duration::from_secs(1);
/// A write that failed counts as this slow: errors and timeouts are the clearest sign of
/// an API server that cannot keep up.
pub const FAILED_WRITE: Duration = Duration::from_secs(1);

/// The pacer shared by the release controller's reconciles.
#[derive(Debug)]
pub struct StartPacer {
    state: Mutex<Pacer>,
}

impl StartPacer {
    pub fn new(now: Instant) -> Self {
        Self {
            state: Mutex::new(Pacer::new(now)),
        }
    }

    /// Takes a start token for `release` (namespace/name); `Err(wait)` when its turn has
    /// not come, with how long until it asks again.
    pub fn admit(&self, release: &str) -> Result<(), Duration> {
        self.lock().admit(release, Instant::now())
    }

    /// `release` no longer waits to start (deleted, or started without a token).
    pub fn forget(&self, release: &str) {
        self.lock().forget(release);
    }

    /// `release` was admitted but its first write failed: it is first in line again.
    pub fn readmit_first(&self, release: &str) {
        self.lock().readmit_first(release, Instant::now());
    }

    /// Counts a write of the operator that took `took` (a failed one as [`FAILED_WRITE`]
    /// at least).
    pub fn observe<T, E>(&self, took: Duration, result: &Result<T, E>) {
        let took = if result.is_err() {
            took.max(FAILED_WRITE)
        } else {
            took
        };
        self.lock().observe(took, Instant::now());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pacer> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The token bucket and its rate, driven by explicit instants (pure: see the tests).
#[derive(Debug, Clone)]
pub struct Pacer {
    /// Starts per second.
    pub rate: f64,
    tokens: f64,
    refilled: Instant,
    window_started: Instant,
    window_total: Duration,
    window_writes: u32,
    /// Releases waiting for a token, first come first, with when each counts as gone if it
    /// has not asked again (its turn plus [`GRACE`]).
    queue: VecDeque<(String, Instant)>,
}

impl Pacer {
    pub fn new(now: Instant) -> Self {
        Self {
            rate: MAX_RATE,
            tokens: MAX_RATE,
            refilled: now,
            window_started: now,
            window_total: Duration::ZERO,
            window_writes: 0,
            queue: VecDeque::new(),
        }
    }

    pub fn admit(&mut self, release: &str, now: Instant) -> Result<(), Duration> {
        self.roll_window(now);
        self.refill(now);
        self.queue.retain(|(r, gone)| r == release || now < *gone);
        let position = if let Some(p) = self.queue.iter().position(|(r, _)| r == release) {
            p
        } else {
            self.queue.push_back((release.to_owned(), now));
            self.queue.len() - 1
        };
        #[allow(clippy::cast_precision_loss)] // a queue of releases
        let ahead = position as f64;
        if self.tokens >= 1.0 && ahead < self.tokens {
            self.tokens -= 1.0;
            self.queue.remove(position);
            Ok(())
        } else {
            let missing = ahead + 1.0 - self.tokens;
            let wait = Duration::from_secs_f64(missing / self.rate)
                .clamp(Duration::from_millis(10), LONGEST_WAIT);
            self.queue[position].1 = now + wait + GRACE;
            Err(wait)
        }
    }

    pub fn forget(&mut self, release: &str) {
        self.queue.retain(|(r, _)| r != release);
    }

    pub fn readmit_first(&mut self, release: &str, now: Instant) {
        self.forget(release);
        self.queue
            .push_front((release.to_owned(), now + LONGEST_WAIT + GRACE));
    }

    /// Releases waiting for a token.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    pub fn observe(&mut self, took: Duration, now: Instant) {
        self.roll_window(now);
        self.window_total += took;
        self.window_writes += 1;
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        // The bucket holds one second of the current rate, at least one token.
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate.max(1.0));
    }

    /// Ends the windows that have passed: a slow one halves the rate, a quick or empty one
    /// raises it by a fifth of the maximum.
    fn roll_window(&mut self, now: Instant) {
        while now.saturating_duration_since(self.window_started) >= WINDOW {
            self.refill(now.min(self.window_started + WINDOW));
            let slow =
                self.window_writes > 0 && self.window_total / self.window_writes > SLOW_WRITE;
            self.rate = if slow {
                (self.rate / 2.0).max(MIN_RATE)
            } else {
                (self.rate + MAX_RATE / 5.0).min(MAX_RATE)
            };
            self.tokens = self.tokens.min(self.rate.max(1.0));
            self.window_started += WINDOW;
            self.window_total = Duration::ZERO;
            self.window_writes = 0;
            // A long quiet spell: skip the empty windows at once.
            if now.saturating_duration_since(self.window_started) >= WINDOW * 8 {
                self.rate = MAX_RATE;
                self.window_started = now;
            }
        }
    }
}

/// How often a release's status is written when the change only reports progress
/// (`stagecoach_engine::release::progress_only`): a decision is written at once.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

/// When each release's status was last written, so that progress-only changes are
/// written at most every [`PROGRESS_INTERVAL`].
#[derive(Debug, Default)]
pub struct ProgressWrites {
    last: Mutex<std::collections::HashMap<String, Instant>>,
}

impl ProgressWrites {
    /// Notes a status write of `release` (namespace/name).
    pub fn wrote(&self, release: &str) {
        let now = Instant::now();
        let mut last = self.lock();
        if last.len() >= 4096 {
            last.retain(|_, at| now.saturating_duration_since(*at) < PROGRESS_INTERVAL);
        }
        last.insert(release.to_owned(), now);
    }

    /// How long a progress-only write of `release` should wait; `None`: write now.
    pub fn wait(&self, release: &str) -> Option<Duration> {
        let since = self.lock().get(release)?.elapsed();
        PROGRESS_INTERVAL
            .checked_sub(since)
            .filter(|d| !d.is_zero())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Instant>> {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A pacer at its slowest rate with no token left.
    fn drained_at_the_floor(now: Instant) -> Pacer {
        let mut p = Pacer::new(now);
        p.rate = MIN_RATE;
        p.tokens = 0.0;
        p
    }

    #[test]
    fn a_quick_api_server_lets_a_burst_start_at_once() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        for i in 0..50 {
            assert!(p.admit(&format!("r{i}"), t0).is_ok());
        }
        let wait = p.admit("late", t0).unwrap_err();
        assert!(wait <= ms(25), "{wait:?}");
        assert!(p.admit("late", t0 + ms(25)).is_ok());
        assert_eq!(p.waiting(), 0);
    }

    #[test]
    fn slow_writes_halve_the_rate_down_to_the_floor_and_quick_ones_restore_it() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        let mut now = t0;
        for _ in 0..10 {
            p.observe(ms(900), now);
            now += WINDOW;
            p.observe(ms(900), now);
        }
        // A failed write counts as slow.
        let pacer = StartPacer::new(t0);
        pacer.observe::<(), ()>(ms(1), &Err(()));
        assert_eq!(pacer.lock().window_total, FAILED_WRITE);
        assert!((p.rate - MIN_RATE).abs() < f64::EPSILON, "{}", p.rate);
        // At the floor a start is still admitted every quarter second (plus the bucket's
        // one second of tokens), while writes stay slow.
        let mut waiting: Vec<String> = (0..20).map(|i| format!("r{i}")).collect();
        let mut admitted = 0;
        for i in 0..40 {
            let at = now + ms(25 * i);
            p.observe(ms(900), at);
            waiting.retain(|r| {
                let ok = p.admit(r, at).is_ok();
                admitted += usize::from(ok);
                !ok
            });
        }
        assert!((6..=9).contains(&admitted), "{admitted}");
        now += Duration::from_secs(1);
        // Quick writes bring the rate back within a few windows.
        for _ in 0..6 {
            now += WINDOW;
            p.observe(ms(20), now);
        }
        assert!((p.rate - MAX_RATE).abs() < f64::EPSILON, "{}", p.rate);
    }

    #[test]
    fn a_window_without_writes_is_quick_and_a_long_pause_restores_the_full_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        p.observe(ms(1000), t0);
        p.observe(ms(1000), t0 + WINDOW);
        assert!(p.rate < MAX_RATE);
        assert!(p.admit("r", t0 + Duration::from_secs(60)).is_ok());
        assert!((p.rate - MAX_RATE).abs() < f64::EPSILON, "{}", p.rate);
    }

    #[test]
    fn the_wait_says_when_the_next_token_is_due() {
        let t0 = Instant::now();
        let mut p = drained_at_the_floor(t0);
        let wait = p.admit("first", t0).unwrap_err();
        assert!(wait >= ms(240) && wait <= ms(260), "{wait:?}");
        // The second in the queue is told to come back after the first.
        let second = p.admit("second", t0).unwrap_err();
        assert!(second >= ms(490) && second <= ms(510), "{second:?}");
        // The second asking early does not overtake the first.
        assert!(p.admit("second", t0 + wait).is_err());
        assert!(p.admit("first", t0 + wait).is_ok());
        assert_eq!(p.waiting(), 1);
    }

    #[test]
    fn a_release_that_stops_asking_leaves_the_queue() {
        let t0 = Instant::now();
        let mut p = drained_at_the_floor(t0);
        let first = p.admit("deleted", t0).unwrap_err();
        let second = p.admit("next", t0).unwrap_err();
        assert!(second > first);
        // "deleted" never asks again: once its turn plus the grace has passed, "next"
        // is first in line.
        let later = t0 + first + GRACE + ms(1);
        p.observe(ms(900), later);
        assert!(p.admit("next", later).is_ok(), "{:?}", p.queue);
        assert_eq!(p.waiting(), 0);
        // Forgotten at once when the release says so.
        p.tokens = 0.0;
        let _ = p.admit("a", later);
        let _ = p.admit("b", later);
        p.forget("a");
        assert_eq!(p.queue.front().map(|(r, _)| r.as_str()), Some("b"));
        // A start whose first write failed is first in line again.
        p.readmit_first("a", later);
        assert_eq!(p.queue.front().map(|(r, _)| r.as_str()), Some("a"));
        // Long waits are capped: the release asks again within LONGEST_WAIT.
        let mut q = drained_at_the_floor(t0);
        for i in 0..100 {
            let _ = q.admit(&format!("r{i}"), t0);
        }
        assert_eq!(q.admit("r99", t0).unwrap_err(), LONGEST_WAIT);
    }

    #[test]
    fn progress_waits_for_the_interval_after_the_last_write() {
        let writes = ProgressWrites::default();
        assert_eq!(writes.wait("ns/a"), None, "never written");
        writes.wrote("ns/a");
        let wait = writes.wait("ns/a").unwrap();
        assert!(wait + ms(100) > PROGRESS_INTERVAL && wait <= PROGRESS_INTERVAL);
        assert_eq!(writes.wait("ns/b"), None);
    }
}
