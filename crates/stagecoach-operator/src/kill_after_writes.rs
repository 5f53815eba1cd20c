//! Test only: the process aborts right after its N-th successful write to the API server.
//!
//! Set `STAGECOACH_TEST_KILL_AFTER_WRITES=N` and the Kubernetes client gets one more tower
//! layer, which counts the responses to writes (POST, PUT, PATCH, DELETE answered 2xx) and
//! calls [`std::process::abort`] the moment the N-th one's headers arrive: the API server
//! has made the change, the operator has not seen that it did (no cleanup, no graceful
//! shutdown, no later write of the same reconcile). The end-to-end test
//! `kill_after_write.rs` starts operator after operator with N=1 and checks that the
//! release still goes through every step exactly once. Unset (always, outside that test),
//! the client is built exactly as without this module.
//!
//! Lease writes (coordination.k8s.io) are not counted: with leader election on, every
//! operator's first write is taking or renewing its Lease, and one that died right after
//! it would never write anything else. Events are counted: they are writes like any other,
//! and they come after the status write they describe, so a kill between the two is one of
//! the crashes the test is there to cover.

use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use anyhow::{Context as _, bail};
use http::{Method, Request, Response};
use kube::client::{Body, ClientBuilder};

/// The environment variable that turns the hook on.
pub const VARIABLE: &str = "STAGECOACH_TEST_KILL_AFTER_WRITES";

/// Successful writes counted so far in this process (across the clients built after a
/// lost Lease, so that a restart inside the process does not reset it).
static WRITES: AtomicU64 = AtomicU64::new(0);

/// The N of [`VARIABLE`]: `None` when it is unset or empty.
pub fn limit_from_env() -> anyhow::Result<Option<u64>> {
    let Some(value) = std::env::var_os(VARIABLE) else {
        return Ok(None);
    };
    let value = value
        .into_string()
        .map_err(|_| anyhow::anyhow!("{VARIABLE} is not UTF-8"))?;
    parse_limit(&value)
}

fn parse_limit(value: &str) -> anyhow::Result<Option<u64>> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    let limit: u64 = value
        .parse()
        .with_context(|| format!("{VARIABLE}={value:?} is not a number of writes"))?;
    if limit == 0 {
        bail!("{VARIABLE}=0: give the number of writes after which to abort (1 or more)");
    }
    Ok(Some(limit))
}

/// The operator's client (see [`crate::client`]), with the hook's layer when `limit`
/// (from [`limit_from_env`]) is set, else nothing more.
pub async fn client(limit: Option<u64>) -> anyhow::Result<kube::Client> {
    let config = kube::Config::infer().await?;
    if let Some(limit) = limit {
        tracing::warn!(
            limit,
            "{VARIABLE} is set: the process aborts after that many writes (tests only)"
        );
    }
    Ok(match crate::client::pooled(&config)? {
        Some(builder) => finish(builder, limit),
        None => finish(ClientBuilder::try_from(config)?, limit),
    })
}

fn finish<S, B>(builder: ClientBuilder<S>, limit: Option<u64>) -> kube::Client
where
    S: tower::Service<Request<Body>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<tower::BoxError>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<tower::BoxError>,
{
    let builder = builder.with_layer(&crate::client::InFlightLimit::new(
        crate::client::REQUESTS_IN_FLIGHT,
    ));
    match limit {
        None => builder.build(),
        Some(limit) => builder.with_layer(&AbortAfter { limit }).build(),
    }
}

/// Whether a request is a write that counts (see the module documentation).
fn counts(method: &Method, path: &str) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) && !path.starts_with("/apis/coordination.k8s.io/")
}

#[derive(Clone, Copy)]
struct AbortAfter {
    limit: u64,
}

impl<S> tower::Layer<S> for AbortAfter {
    type Service = AbortAfterService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AbortAfterService {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Clone)]
struct AbortAfterService<S> {
    inner: S,
    limit: u64,
}

impl<S, B> tower::Service<Request<Body>> for AbortAfterService<S>
where
    S: tower::Service<Request<Body>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = crate::client::ResponseFuture<B, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let write = counts(request.method(), request.uri().path())
            .then(|| format!("{} {}", request.method(), request.uri().path()));
        let limit = self.limit;
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            if let Some(write) = write
                && response.status().is_success()
            {
                let n = WRITES.fetch_add(1, Ordering::SeqCst) + 1;
                if n >= limit {
                    // One line for the test to read, then gone: no destructors, no flush
                    // of anything else, no shutdown.
                    eprintln!("{VARIABLE}: aborting after write {n}: {write}");
                    std::process::abort();
                }
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert_eq!(parse_limit("").unwrap(), None);
        assert_eq!(parse_limit(" 3 ").unwrap(), Some(3));
        assert!(parse_limit("0").is_err());
        assert!(parse_limit("many").is_err());
        assert!(parse_limit("-1").is_err());
    }

    #[test]
    fn writes_that_count() {
        let release = "/apis/stagecoach.dev/v1alpha1/namespaces/a/releases/r/status";
        assert!(counts(&Method::PATCH, release));
        assert!(counts(
            &Method::POST,
            "/apis/events.k8s.io/v1/namespaces/a/events"
        ));
        assert!(counts(
            &Method::DELETE,
            "/apis/apps/v1/namespaces/a/deployments/x"
        ));
        assert!(counts(&Method::PUT, release));
        assert!(!counts(&Method::GET, release));
        assert!(!counts(
            &Method::PUT,
            "/apis/coordination.k8s.io/v1/namespaces/a/leases/stagecoach-leader"
        ));
    }
}
