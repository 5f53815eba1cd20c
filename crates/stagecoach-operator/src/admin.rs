//! The admin HTTP server: `/livez`, `/readyz` and `/metrics`.
//!
//! Liveness and readiness are different answers: `/livez` is 200 for as long as the
//! process serves HTTP; `/readyz` is 503 until the reflector caches of both controllers
//! have their first complete list, then 200: the replica then serves OFREP from its own
//! cache, leader or follower (every replica runs the same watches). The body says which
//! one it is; `/metrics` has it as the `stagecoach_leader` gauge.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// Whether the operator's caches are synced: one flag per watched kind, each set when
/// that kind's reflector has its first complete list. Cheap to clone; clones share state.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<Mutex<BTreeMap<&'static str, bool>>>);

/// The readiness flag of one cache.
///
/// [`CacheSync::wait`] is what code waits on for a cache's first list, never kube's
/// `Store::wait_until_ready`: that one keeps a single waker, so of several tasks waiting
/// on one store (the controller's runner, the toggle fan-out, reconciles) all but the last
/// to poll may never be woken. Seen as toggles and releases never reconciled after a
/// restart, and a shutdown stuck on the reconcile that waited.
#[derive(Clone, Debug)]
pub struct CacheSync {
    kind: &'static str,
    /// `None` for a cache that does not count toward `/readyz` (a stage namespace's).
    readiness: Option<Readiness>,
    flag: Arc<SyncFlag>,
}

/// Set once, awaited by any number of tasks.
#[derive(Debug, Default)]
struct SyncFlag {
    set: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Readiness {
    /// Adds a cache that must sync before the operator is ready.
    pub fn cache(&self, kind: &'static str) -> CacheSync {
        self.lock().insert(kind, false);
        CacheSync {
            kind,
            readiness: Some(self.clone()),
            flag: Arc::default(),
        }
    }

    /// Ready once at least one cache is registered and all have synced.
    pub fn is_ready(&self) -> bool {
        let caches = self.lock();
        !caches.is_empty() && caches.values().all(|synced| *synced)
    }

    /// Kinds whose cache has not synced yet.
    pub fn pending(&self) -> Vec<&'static str> {
        let caches = self.lock();
        caches
            .iter()
            .filter(|(_, synced)| !**synced)
            .map(|(kind, _)| *kind)
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<&'static str, bool>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl CacheSync {
    /// The flag of a cache that `/readyz` does not wait for (a stage namespace's, started
    /// on first use).
    pub fn unlisted() -> Self {
        Self {
            kind: "stage namespace",
            readiness: None,
            flag: Arc::default(),
        }
    }

    /// Whether this cache has synced.
    pub fn is_synced(&self) -> bool {
        self.flag.set.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Marks the cache synced; it stays so (later relists keep it consistent).
    pub fn synced(&self) {
        let newly = !self
            .flag
            .set
            .swap(true, std::sync::atomic::Ordering::AcqRel);
        if newly {
            self.flag.notify.notify_waiters();
        }
        let Some(readiness) = &self.readiness else {
            return;
        };
        let newly = readiness.lock().insert(self.kind, true) == Some(false);
        if newly {
            info!(kind = self.kind, "cache synced");
            if readiness.is_ready() {
                info!("all caches synced; ready");
            }
        }
    }

    /// Waits until the cache has synced; any number of tasks may wait at once.
    pub async fn wait(&self) {
        loop {
            let notified = self.flag.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a `synced` in between is not missed.
            notified.as_mut().enable();
            if self.is_synced() {
                return;
            }
            notified.await;
        }
    }
}

#[derive(Clone)]
struct AdminState {
    readiness: Readiness,
    metrics: Metrics,
}

/// The admin routes.
pub fn router(readiness: Readiness, metrics: Metrics) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AdminState { readiness, metrics })
}

/// Serves the admin routes on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    readiness: Readiness,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(readiness, metrics))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if state.readiness.is_ready() {
        let role = if state.metrics.is_leader() {
            "leader"
        } else {
            "follower"
        };
        (StatusCode::OK, format!("ok: serving OFREP ({role})\n")).into_response()
    } else {
        let pending = state.readiness.pending().join(", ");
        let body = format!("not ready: waiting for the caches of {pending} to sync\n");
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

async fn metrics_text(State(state): State<AdminState>) -> Response {
    match state.metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, Metrics::content_type())], text).into_response(),
        Err(error) => {
            warn!(%error, "cannot render metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot render metrics\n").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;

    use super::*;

    /// Every waiter wakes when the cache syncs, however many wait at once and in whatever
    /// order they were polled (kube's `Store::wait_until_ready` wakes only the last).
    #[tokio::test]
    async fn every_waiter_wakes_when_the_cache_syncs() {
        let readiness = Readiness::default();
        let releases = readiness.cache("Release");
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let releases = releases.clone();
                tokio::spawn(async move { releases.wait().await })
            })
            .collect();
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(waiters.iter().all(|w| !w.is_finished()));
        releases.synced();
        for waiter in waiters {
            tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
                .await
                .expect("a waiter was never woken")
                .unwrap();
        }
        // After the sync, waiting returns at once.
        tokio::time::timeout(std::time::Duration::from_secs(1), releases.wait())
            .await
            .unwrap();
        assert!(readiness.is_ready());
    }

    /// One HTTP/1.0 GET; returns the status code and the body.
    async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response[9..12].parse().unwrap();
        let body = response
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        (status, body)
    }

    #[test]
    fn no_caches_is_not_ready() {
        assert!(!Readiness::default().is_ready());
    }

    #[tokio::test]
    async fn endpoints_answer_and_server_stops_on_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let readiness = Readiness::default();
        let releases = readiness.cache("Release");
        let toggles = readiness.cache("FeatureToggle");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            readiness.clone(),
            Metrics::new().unwrap(),
            async move {
                let _ = stopped.await;
            },
        ));

        assert_eq!(get(addr, "/livez").await.0, 200);
        assert_eq!(get(addr, "/readyz").await.0, 503);
        releases.synced();
        let (status, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503);
        assert!(
            body.contains("FeatureToggle") && !body.contains("Release,"),
            "{body}"
        );
        toggles.synced();
        let (status, body) = get(addr, "/readyz").await;
        assert_eq!(status, 200);
        assert_eq!(body, "ok: serving OFREP (follower)\n");
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("stagecoach_status_writes_total"), "{body}");
        assert_eq!(get(addr, "/nothing").await.0, 404);

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
