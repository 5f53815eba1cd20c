//! A per-client request rate limit (`--ofrep-rate-limit`): a token bucket per client,
//! where a client is its bearer token if it sends one, else its peer address. Off (0)
//! by default: behind an ingress or a proxy every client has the proxy's address.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// At most this many clients are tracked; past it, buckets that are full again (idle
/// clients) are dropped, and if none is, all are (a burst of new clients is let through
/// rather than memory grown without bound).
const MAX_CLIENTS: usize = 10_000;

/// The rate limit, shared by clones.
#[derive(Clone)]
pub struct RateLimit {
    inner: Option<Arc<Limiter>>,
}

struct Limiter {
    /// Requests per second, refilled continuously.
    rate: f64,
    /// The bucket's size: requests a client may send at once.
    burst: f64,
    hasher: RandomState,
    buckets: Mutex<HashMap<u64, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    /// `per_second` requests per second and client, in bursts of up to twice that
    /// (at least 1); 0 turns the limit off.
    pub fn new(per_second: u32) -> Self {
        let inner = (per_second > 0).then(|| {
            Arc::new(Limiter {
                rate: f64::from(per_second),
                burst: f64::from(per_second.saturating_mul(2)).max(1.0),
                hasher: RandomState::new(),
                buckets: Mutex::default(),
            })
        });
        Self { inner }
    }

    /// Takes one request of the client (`token`, else `peer`) at `now`: `Err(wait)`
    /// when its bucket is empty, with how long until it has a request again.
    pub(super) fn take(
        &self,
        token: Option<&[u8]>,
        peer: Option<SocketAddr>,
        now: Instant,
    ) -> Result<(), Duration> {
        let Some(limiter) = &self.inner else {
            return Ok(());
        };
        let key = match token {
            Some(token) => limiter.hasher.hash_one((0u8, token)),
            None => limiter.hasher.hash_one((1u8, peer.map(|peer| peer.ip()))),
        };
        let mut buckets = limiter
            .buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(&key) {
            buckets.retain(|_, bucket| limiter.refilled(*bucket, now) < limiter.burst);
            if buckets.len() >= MAX_CLIENTS {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: limiter.burst,
            at: now,
        });
        let tokens = limiter.refilled(*bucket, now);
        if tokens >= 1.0 {
            *bucket = Bucket {
                tokens: tokens - 1.0,
                at: now,
            };
            Ok(())
        } else {
            *bucket = Bucket { tokens, at: now };
            Err(Duration::from_secs_f64((1.0 - tokens) / limiter.rate))
        }
    }
}

impl Limiter {
    fn refilled(&self, bucket: Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.tokens + elapsed * self.rate).min(self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_per_client() {
        let limit = RateLimit::new(2); // bursts of 4
        let start = Instant::now();
        let peer: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        for _ in 0..4 {
            assert_eq!(limit.take(None, Some(peer), start), Ok(()));
        }
        let wait = limit.take(None, Some(peer), start).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        // Another port of the same address is the same client; a token is another.
        assert!(
            limit
                .take(None, Some("10.0.0.1:5000".parse().unwrap()), start)
                .is_err()
        );
        assert_eq!(limit.take(Some(b"t"), Some(peer), start), Ok(()));
        assert_eq!(
            limit.take(None, Some("10.0.0.2:4000".parse().unwrap()), start),
            Ok(())
        );
        // Half a second later one request is back.
        let later = start + Duration::from_millis(500);
        assert_eq!(limit.take(None, Some(peer), later), Ok(()));
        assert!(limit.take(None, Some(peer), later).is_err());
        assert_eq!(RateLimit::new(0).take(None, None, start), Ok(()));
    }
}
