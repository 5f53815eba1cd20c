//! Per-application OFREP bearer tokens.
//!
//! A Secret in the application's namespace (the namespace of its FeatureToggles) labelled
//! [`APPLICATION_LABEL`]`: <application>` holds that application's token in its data key
//! `token` (surrounding whitespace ignored). An application with at least one such Secret
//! requires `Authorization: Bearer <token>` on its OFREP endpoints: 401 without (or with a
//! malformed header), 403 with a token that is not one of its own. An application without
//! one stays open. Tokens are read from an in-memory cache of the labelled Secrets only
//! (a watch; no API call per request) and compared in constant time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{Future, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::ResourceExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tracing::warn;

use crate::admin::CacheSync;
use crate::controller::WatchBackoff;

/// The label naming the application a token Secret belongs to.
pub(super) const APPLICATION_LABEL: &str = "stagecoach.dev/ofrep-application";

/// The data key of the token in a token Secret.
pub(super) const TOKEN_KEY: &str = "token";

/// The token Secrets, cheap to clone.
#[derive(Clone)]
pub struct Tokens {
    store: Store<Secret>,
    synced: Arc<AtomicBool>,
}

/// Whether a request may read an application's toggles.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Access {
    /// The application has no token Secret.
    Open,
    /// The request carries one of the application's tokens.
    Granted,
    /// No (well-formed) bearer token: 401.
    Missing,
    /// A bearer token that is not one of the application's: 403.
    Denied,
    /// The Secret cache has not synced yet: 503.
    NotSynced,
}

impl Tokens {
    /// Tokens from `store`, synced or not.
    pub fn new(store: Store<Secret>, synced: bool) -> Self {
        Self {
            store,
            synced: Arc::new(AtomicBool::new(synced)),
        }
    }

    /// Watches the labelled Secrets `api` sees. The returned future keeps the cache
    /// current and must be polled (spawned) for as long as the server runs.
    pub fn watch(
        api: Api<Secret>,
        readiness: CacheSync,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (reader, writer) = reflector::store();
        let tokens = Self::new(reader, false);
        let synced = tokens.synced.clone();
        let config = watcher::Config::default().labels(APPLICATION_LABEL);
        let events = watcher(api, config)
            .backoff(WatchBackoff::default())
            .modify(|secret: &mut Secret| secret.managed_fields_mut().clear())
            .reflect(writer)
            .for_each(move |event| {
                match event {
                    Ok(watcher::Event::InitDone) => {
                        synced.store(true, Ordering::Release);
                        readiness.synced();
                    }
                    Err(error) => warn!(%error, "OFREP token Secret watch failed; retrying"),
                    Ok(_) => {}
                }
                std::future::ready(())
            });
        (tokens, events)
    }

    /// Whether a request with `authorization` (the header's value, if any) may read the
    /// toggles of `application` in `namespace`.
    pub fn check(
        &self,
        namespace: &str,
        application: &str,
        authorization: Option<&[u8]>,
    ) -> Access {
        if !self.synced.load(Ordering::Acquire) {
            return Access::NotSynced;
        }
        let secrets: Vec<Arc<Secret>> = self
            .store
            .state()
            .into_iter()
            .filter(|secret| {
                secret.namespace().as_deref() == Some(namespace)
                    && secret.labels().get(APPLICATION_LABEL).map(String::as_str)
                        == Some(application)
            })
            .collect();
        if secrets.is_empty() {
            return Access::Open;
        }
        let Some(presented) = authorization.and_then(bearer) else {
            return Access::Missing;
        };
        // Every token is compared (no early exit), each in constant time.
        let mut granted = false;
        for secret in &secrets {
            let token = secret
                .data
                .as_ref()
                .and_then(|data| data.get(TOKEN_KEY))
                .map(|token| token.0.trim_ascii())
                .filter(|token| !token.is_empty());
            if let Some(token) = token {
                granted |= constant_time_eq(token, presented);
            }
        }
        if granted {
            Access::Granted
        } else {
            Access::Denied
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
pub(super) fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, token) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = token.strip_prefix(b" ")?.trim_ascii();
    (!token.is_empty() && !token.contains(&b' ')).then_some(token)
}

/// Whether `a == b`, in a time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_headers_parse_strictly() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearerabc"), None);
        assert_eq!(bearer(b"Bearer a b"), None);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
