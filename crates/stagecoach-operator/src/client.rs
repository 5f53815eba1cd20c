//! The Kubernetes client: kube's, with a connection pool that lets idle connections go.
//!
//! kube's `ClientBuilder::try_from(Config)` builds hyper's pooled client with hyper's pool
//! defaults: an idle connection is kept for 90 s, and there is no limit on how many are
//! kept. Each holds its TLS session and buffers, tens of KiB. After the scale benchmark's
//! cold start (10,000 toggle statuses written, up to 64 at a time, and the Events of
//! 100 rollouts) heaptrack found about 110 connections still open a minute after the
//! work had ended. Here the pool keeps at most [`IDLE_PER_HOST`] idle connections, each
//! for at most [`IDLE_TIMEOUT`]; the watches' connections are never idle and are not
//! affected. Everything else is what kube's builder sets up from the same `Config`: TLS
//! from the kubeconfig, the connect, read and write timeouts, authentication (token
//! files re-read), extra headers, and retries of 429, 503 and 504. With a proxy or an
//! exec credential plugin in the kubeconfig, kube's builder is used as it is.
//!
//! Every client, either way, lets at most [`REQUESTS_IN_FLIGHT`] requests other than
//! watches be in flight at once ([`InFlightLimit`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::retry::RetryPolicy;
use kube::client::{Body, ClientBuilder, ConfigExt};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
use tower::retry::RetryLayer;
use tower::util::BoxService;
use tower::{BoxError, ServiceBuilder};

/// Idle connections kept to the API server. A steady operator needs few (its watches
/// hold their own); a burst's extra connections are closed once they are idle.
pub const IDLE_PER_HOST: usize = 16;

/// How long an idle connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// The most a connection's read buffer grows to. hyper's default (~400 KB) is reached
/// by the first lists of large caches, and a watch then keeps its connection, and the
/// buffer, for as long as it runs: in the scale benchmark about 3 MB of the settled
/// operator's heap were such buffers and body chunks cut from them. Responses are read
/// in pieces of at most this size; a list of 10,000 toggles is a few hundred reads.
pub const READ_BUFFER_MAX: usize = 32 * 1024;

/// The service stack under the client, boxed.
pub type Stack = BoxService<Request<Body>, Response<hyper::body::Incoming>, BoxError>;

/// kube's client builder for `config`, with the bounded pool; `None` when `config` names
/// a proxy or an exec credential plugin (then kube's own builder serves it).
pub fn pooled(config: &kube::Config) -> Result<Option<ClientBuilder<Stack>>, kube::Error> {
    // kube's builder also handles proxies, and dates a client whose certificate an exec
    // plugin issued; both are left to it.
    if config.proxy_url.is_some() || config.auth_info.exec.is_some() {
        return Ok(None);
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let mut connector = TimeoutConnector::new(config.rustls_https_connector_with_connector(http)?);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let pool: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Builder::new(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(IDLE_PER_HOST)
            .http1_max_buf_size(READ_BUFFER_MAX)
            .build(connector);
    let stack = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .default_retry
                .then(|| RetryLayer::new(RetryPolicy::server_retry())),
        )
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(pool);
    Ok(Some(ClientBuilder::new(
        BoxService::new(stack),
        config.default_namespace.clone(),
    )))
}

/// Requests other than watches in flight at once. Watches are long-lived and do not keep
/// a slot (every watch would hold one for good).
pub const REQUESTS_IN_FLIGHT: usize = 32;

/// Holds requests other than watches until fewer than [`REQUESTS_IN_FLIGHT`] are in
/// flight. A cold start reconciles every Release and toggle at once: unbounded, that was
/// over a thousand requests in flight, each on a connection of its own (HTTP/1.1) with
/// its TLS session, 34 MB of the start's 166 MB peak heap (heaptrack), and as many TLS
/// handshakes for an API server on the same two cores. client-go's default is a rate
/// limit; a bound on what is in flight holds memory without slowing a quiet operator.
/// A request holds its slot until its response's headers arrive. Like tower's
/// `ConcurrencyLimit`, a slot is taken when the service is made ready; a watch gives its
/// slot back at once.
#[derive(Clone)]
pub struct InFlightLimit {
    slots: Arc<Semaphore>,
}

impl InFlightLimit {
    /// A limit of `slots` requests.
    pub fn new(slots: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(slots)),
        }
    }
}

impl<S> tower::Layer<S> for InFlightLimit {
    type Service = InFlightLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InFlightLimited {
            inner,
            slots: self.slots.clone(),
            slot: None,
            waiting: None,
        }
    }
}

type Waiting = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// The future of a response, boxed: what this crate's client layers return.
pub type ResponseFuture<B, E> = Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send>>;

/// The service [`InFlightLimit`] wraps.
pub struct InFlightLimited<S> {
    inner: S,
    slots: Arc<Semaphore>,
    /// The slot taken for the next request.
    slot: Option<OwnedSemaphorePermit>,
    /// Waiting for a slot.
    waiting: Option<Waiting>,
}

/// Whether `request` is a watch (`watch=true` or `watch=1` in its query).
fn is_watch<B>(request: &Request<B>) -> bool {
    request.uri().query().is_some_and(|query| {
        query
            .split('&')
            .any(|pair| pair == "watch=true" || pair == "watch=1")
    })
}

impl<S, B> tower::Service<Request<Body>> for InFlightLimited<S>
where
    S: tower::Service<Request<Body>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = ResponseFuture<B, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.slot.is_none() {
            let slots = self.slots.clone();
            let waiting = self
                .waiting
                .get_or_insert_with(|| Box::pin(slots.acquire_owned()));
            match waiting.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(slot) => {
                    self.waiting = None;
                    // The semaphore is never closed.
                    self.slot = slot.ok();
                }
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let slot = self.slot.take();
        if is_watch(&request) {
            drop(slot);
            return Box::pin(self.inner.call(request));
        }
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(slot);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// An HTTP/1.1 server that answers every request with `{}` after 50 ms, keeps
    /// connections alive, and counts those open; also the most requests it has had in
    /// hand at once.
    async fn server() -> (String, Arc<AtomicUsize>) {
        let (url, open, _) = server_with_peak().await;
        (url, open)
    }

    async fn server_with_peak() -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let open = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let in_hand = Arc::new(AtomicUsize::new(0));
        let (counter, most) = (open.clone(), peak.clone());
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let open = counter.clone();
                let (most, in_hand) = (most.clone(), in_hand.clone());
                open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 8192];
                    let mut request = Vec::new();
                    loop {
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => request.extend_from_slice(&buffer[..n]),
                        }
                        while let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                            request.drain(..end + 4);
                            let now = in_hand.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            in_hand.fetch_sub(1, Ordering::SeqCst);
                            let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                            if socket.write_all(answer.as_bytes()).await.is_err() {
                                break;
                            }
                        }
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (url, open, peak)
    }

    /// Connections still open after 40 concurrent requests ended.
    async fn open_after_a_burst(client: kube::Client, open: &AtomicUsize) -> usize {
        let requests = (0..40).map(|_| {
            let client = client.clone();
            async move {
                let request = Request::get("/version").body(Vec::new()).unwrap();
                client.request_text(request).await.unwrap()
            }
        });
        let answers = futures::future::join_all(requests).await;
        assert!(answers.iter().all(|a| a == "{}"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        open.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn a_burst_leaves_at_most_the_idle_limit_open() {
        let (url, open) = server().await;
        let config = kube::Config::new(url.parse().unwrap());
        let client = pooled(&config).unwrap().unwrap().build();
        let left = open_after_a_burst(client, &open).await;
        assert!(
            left <= IDLE_PER_HOST,
            "{left} connections left open, at most {IDLE_PER_HOST} expected"
        );

        // kube's own builder keeps every one of them (for 90 s): what this module is for.
        let (url, open) = server().await;
        let config = kube::Config::new(url.parse().unwrap());
        let kube_client = ClientBuilder::try_from(config).unwrap().build();
        assert!(open_after_a_burst(kube_client, &open).await > IDLE_PER_HOST);
    }

    #[tokio::test]
    async fn requests_wait_for_a_slot_and_watches_do_not_keep_one() {
        let (url, open, peak) = server_with_peak().await;
        let config = kube::Config::new(url.parse().unwrap());
        let limited = pooled(&config)
            .unwrap()
            .unwrap()
            .with_layer(&InFlightLimit::new(4))
            .build();
        open_after_a_burst(limited.clone(), &open).await;
        let most = peak.load(Ordering::SeqCst);
        assert!((1..=4).contains(&most), "{most} requests in flight at once");

        // Watches give their slot back: with one slot, a watch and then a request both
        // go through while the watch's response is still open.
        let one = pooled(&config)
            .unwrap()
            .unwrap()
            .with_layer(&InFlightLimit::new(1))
            .build();
        let watch = Request::get("/api/v1/pods?watch=true&resourceVersion=1")
            .body(Vec::new())
            .unwrap();
        assert_eq!(one.request_text(watch).await.unwrap(), "{}");
        let request = Request::get("/version").body(Vec::new()).unwrap();
        assert_eq!(one.request_text(request).await.unwrap(), "{}");
        assert!(is_watch(&Request::get("/x?a=b&watch=1").body(()).unwrap()));
        assert!(!is_watch(
            &Request::get("/x?watchful=true").body(()).unwrap()
        ));
    }

    #[test]
    fn a_proxy_or_an_exec_plugin_is_left_to_kube() {
        let mut config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
        assert!(pooled(&config).unwrap().is_some());
        config.proxy_url = Some("http://proxy:3128".parse().unwrap());
        assert!(pooled(&config).unwrap().is_none());
    }
}
