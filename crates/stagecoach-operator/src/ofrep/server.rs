//! The OFREP HTTP routes: request parsing, evaluation from the [`FlagIndex`], and the
//! protocol's response bodies. See the [module documentation](super) for the contract.

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use prometheus::{Histogram, IntCounter, IntCounterVec};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use stagecoach_engine::toggle::{
    ErrorCode, Evaluation, EvaluationContext, EvaluationError, evaluate, flag_set_version,
};
use tokio::net::TcpListener;
use tracing::warn;

use super::auth::{Access, Tokens, bearer};
use super::{AppFlags, FlagIndex};
use super::{Cors, RateLimit};
use crate::metrics::ToggleMetrics;

/// The longest request URI (path and query) served; a longer one is answered 414. The
/// longest valid OFREP URI (names of at most 253 characters) is well under 1 KiB.
const MAX_URI_BYTES: usize = 8 * 1024;

/// At most this many characters of a request's key, application, namespace or stage are
/// echoed in an error body.
const MAX_ECHO_CHARS: usize = 256;

/// Which OFREP endpoint a request path is for: the `endpoint` label.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Endpoint {
    Single,
    Bulk,
    /// A path that is neither (answered 404 by the router).
    Other,
}

impl Endpoint {
    fn of(path: &str) -> Self {
        const FLAGS: &str = "/ofrep/v1/evaluate/flags";
        if path.ends_with(FLAGS) {
            Self::Bulk
        } else if path.contains(&format!("{FLAGS}/")) {
            Self::Single
        } else {
            Self::Other
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Bulk => "bulk",
            Self::Other => "other",
        }
    }
}

/// Every answer, by endpoint and status code (both bounded: three endpoints, three-digit
/// codes), and how long it took, by endpoint. The common ones are resolved once, so such
/// a request only bumps atomics.
#[derive(Clone)]
struct Counters {
    requests: IntCounterVec,
    /// `[single, bulk]` x `[200, 304, 400, 404]`.
    common: [[IntCounter; 4]; 2],
    /// `[single, bulk, other]`.
    durations: [Histogram; 3],
}

impl Counters {
    const COMMON: [StatusCode; 4] = [
        StatusCode::OK,
        StatusCode::NOT_MODIFIED,
        StatusCode::BAD_REQUEST,
        StatusCode::NOT_FOUND,
    ];

    fn new(metrics: &ToggleMetrics) -> Self {
        let requests = metrics.ofrep_requests.clone();
        let row = |endpoint: Endpoint| {
            Self::COMMON.map(|code| requests.with_label_values(&[endpoint.label(), code.as_str()]))
        };
        let duration = |endpoint: Endpoint| {
            metrics
                .ofrep_duration
                .with_label_values(&[endpoint.label()])
        };
        Self {
            common: [row(Endpoint::Single), row(Endpoint::Bulk)],
            requests,
            durations: [
                duration(Endpoint::Single),
                duration(Endpoint::Bulk),
                duration(Endpoint::Other),
            ],
        }
    }

    fn observe(&self, endpoint: Endpoint, took: Duration) {
        let at = match endpoint {
            Endpoint::Single => 0,
            Endpoint::Bulk => 1,
            Endpoint::Other => 2,
        };
        self.durations[at].observe(took.as_secs_f64());
    }

    fn count(&self, endpoint: Endpoint, status: StatusCode) {
        let row = match endpoint {
            Endpoint::Single => Some(&self.common[0]),
            Endpoint::Bulk => Some(&self.common[1]),
            Endpoint::Other => None,
        };
        match row.zip(Self::COMMON.iter().position(|code| *code == status)) {
            Some((row, at)) => row[at].inc(),
            None => self
                .requests
                .with_label_values(&[endpoint.label(), status.as_str()])
                .inc(),
        }
    }
}

#[derive(Clone)]
struct OfrepState {
    index: FlagIndex,
}

/// The OFREP routes under the per-application, per-stage base path. Every answer the
/// router gives is counted in `stagecoach_ofrep_requests_total`, rejections included
/// (405 wrong method, 413 body too large, 414 URI too long, 404 unknown path). Not
/// counted: what hyper answers itself to a request it cannot parse, before any routing
/// (malformed HTTP, a request line over 64 KiB, a head over about 400 KB).
pub fn router(
    index: FlagIndex,
    tokens: Tokens,
    cors: Cors,
    limit: RateLimit,
    metrics: &ToggleMetrics,
) -> Router {
    const BASE: &str = "/apps/{namespace}/{application}/stages/{stage}/ofrep/v1/evaluate/flags";
    Router::new()
        .route(&format!("{BASE}/{{key}}"), post(evaluate_one))
        .route(BASE, post(evaluate_all))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .with_state(OfrepState { index })
        .layer(middleware::from_fn_with_state(
            Arc::new(Guard {
                counters: Counters::new(metrics),
                tokens,
                cors,
                limit,
            }),
            count_and_limit,
        ))
}

/// What every request passes first.
struct Guard {
    counters: Counters,
    tokens: Tokens,
    cors: Cors,
    limit: RateLimit,
}

/// `(namespace, application)` of a path under `/apps/{namespace}/{application}/`.
fn application_of(path: &str) -> Option<(&str, &str)> {
    let mut segments = path.strip_prefix("/apps/")?.split('/');
    let namespace = segments.next().filter(|s| !s.is_empty())?;
    let application = segments.next().filter(|s| !s.is_empty())?;
    segments.next()?;
    Some((namespace, application))
}

/// The answer to a request `access` refuses, if it does.
fn refusal(access: Access, namespace: &str, application: &str) -> Option<Response> {
    let (status, details) = match access {
        Access::Open | Access::Granted => return None,
        Access::Missing => (
            StatusCode::UNAUTHORIZED,
            format!(
                "application {} in namespace {} requires an Authorization: Bearer token",
                shorten(application),
                shorten(namespace)
            ),
        ),
        Access::Denied => (
            StatusCode::FORBIDDEN,
            format!(
                "the bearer token is not a token of application {} in namespace {}",
                shorten(application),
                shorten(namespace)
            ),
        ),
        Access::NotSynced => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the OFREP token cache has not synced yet; retry shortly".to_owned(),
        ),
    };
    let mut response = json_response(
        status,
        &Failure {
            key: None,
            error_code: ErrorCode::General.as_str(),
            error_details: details,
        },
    );
    let headers = response.headers_mut();
    match access {
        Access::Missing => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        Access::Denied => {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        _ => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
    }
    Some(response)
}

/// 429 with `Retry-After` (whole seconds, at least 1).
fn too_many_requests(wait: Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    let mut response = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        &Failure {
            key: None,
            error_code: ErrorCode::General.as_str(),
            error_details: format!("too many requests from this client; retry in {seconds}s"),
        },
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// Answers 414 for a URI longer than [`MAX_URI_BYTES`], 401/403 for a request an
/// application's token Secret refuses, and counts every answer.
async fn count_and_limit(
    State(guard): State<Arc<Guard>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let counters = &guard.counters;
    let uri_len = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    let endpoint = Endpoint::of(request.uri().path());
    let origin = guard.cors.allowed(request.headers());
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    let limited = guard
        .limit
        .take(authorization.and_then(bearer), peer, Instant::now())
        .err();
    let preflight = guard.cors.preflight(request.method(), request.headers());
    let mut response = if let Some(wait) = limited {
        too_many_requests(wait)
    } else if let Some(preflight) = preflight {
        preflight
    } else if uri_len > MAX_URI_BYTES {
        json_response(
            StatusCode::URI_TOO_LONG,
            &Failure {
                key: None,
                error_code: ErrorCode::General.as_str(),
                error_details: format!(
                    "the request URI is {uri_len} bytes long; at most {MAX_URI_BYTES} are served"
                ),
            },
        )
    } else {
        let refused = application_of(request.uri().path()).and_then(|(namespace, application)| {
            let authorization = request
                .headers()
                .get(header::AUTHORIZATION)
                .map(HeaderValue::as_bytes);
            let access = guard.tokens.check(namespace, application, authorization);
            refusal(access, namespace, application)
        });
        match refused {
            Some(response) => response,
            None => next.run(request).await,
        }
    };
    guard.cors.decorate(origin, &mut response);
    counters.count(endpoint, response.status());
    counters.observe(endpoint, started.elapsed());
    response
}

/// `text`, or its first [`MAX_ECHO_CHARS`] characters and a marker when it is longer.
fn shorten(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(MAX_ECHO_CHARS) {
        None => Cow::Borrowed(text),
        Some((end, _)) => Cow::Owned(format!(
            "{}...({} characters)",
            &text[..end],
            text.chars().count()
        )),
    }
}

/// Serves OFREP on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    index: FlagIndex,
    tokens: Tokens,
    cors: Cors,
    limit: RateLimit,
    metrics: &ToggleMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(index, tokens, cors, limit, metrics);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// The request body of both endpoints; other fields are ignored.
#[derive(Deserialize)]
struct EvaluationRequest {
    #[serde(default)]
    context: Value,
}

/// A request that cannot be evaluated at all.
struct BadRequest {
    code: ErrorCode,
    details: String,
}

fn parse_context(body: &[u8]) -> Result<(EvaluationContext, Value), BadRequest> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((EvaluationContext::default(), Value::Null));
    }
    let request: EvaluationRequest = serde_json::from_slice(body).map_err(|error| BadRequest {
        code: ErrorCode::ParseError,
        details: format!("the request body is not a JSON evaluation request: {error}"),
    })?;
    let context =
        EvaluationContext::from_json(request.context.clone()).map_err(|error| BadRequest {
            code: error.code(),
            details: error.to_string(),
        })?;
    Ok((context, request.context))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Metadata<'a> {
    flag_set_version: &'a str,
}

#[derive(Serialize)]
struct Success<'a> {
    key: &'a str,
    value: Value,
    reason: &'static str,
    variant: String,
    metadata: Metadata<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Failure<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    error_code: &'static str,
    error_details: String,
}

#[derive(Serialize)]
#[serde(untagged)]
enum BulkEntry<'a> {
    Success(Success<'a>),
    Failure(Failure<'a>),
}

#[derive(Serialize)]
struct BulkSuccess<'a> {
    flags: Vec<BulkEntry<'a>>,
    metadata: Metadata<'a>,
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut response = Response::new(Body::from(bytes));
            *response.status_mut() = status;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(error) => {
            warn!(%error, "cannot serialize an OFREP response");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn success<'a>(key: &'a str, evaluation: Evaluation, version: &'a str) -> Success<'a> {
    Success {
        key,
        value: evaluation.value,
        reason: evaluation.reason.as_str(),
        variant: evaluation.variant,
        metadata: Metadata {
            flag_set_version: version,
        },
    }
}

/// What `application` serves in `stage`: its flags and the stage's flag-set version.
fn served(
    index: &FlagIndex,
    namespace: &str,
    application: &str,
    stage: &str,
) -> Result<(Arc<AppFlags>, String), String> {
    let app = index
        .application(namespace, application)
        .ok_or_else(|| missing_stage(index, namespace, application, stage))?;
    let version = app
        .stages
        .get(stage)
        .cloned()
        .ok_or_else(|| missing_stage(index, namespace, application, stage))?;
    Ok((app, version))
}

/// Why `application` serves nothing in `stage`, for errorDetails.
fn missing_stage(index: &FlagIndex, namespace: &str, application: &str, stage: &str) -> String {
    let app = index.application(namespace, application);
    let (namespace, application, stage) =
        (shorten(namespace), shorten(application), shorten(stage));
    match app {
        None => format!(
            "application {application} in namespace {namespace} has no FeatureToggle served \
             by this operator"
        ),
        Some(app) => {
            let mut stages: Vec<&str> = app.stages.keys().map(String::as_str).collect();
            stages.sort_unstable();
            format!(
                "application {application} in namespace {namespace} has no stage {stage} \
                 (its stages: {})",
                stages.join(", ")
            )
        }
    }
}

/// `POST {base}/ofrep/v1/evaluate/flags/{key}`
async fn evaluate_one(
    State(server): State<OfrepState>,
    Path((namespace, application, stage, key)): Path<(String, String, String, String)>,
    body: Bytes,
) -> Response {
    let echoed_key = shorten(&key);
    let failure = |status: StatusCode, code: ErrorCode, details: String| {
        json_response(
            status,
            &Failure {
                key: Some(echoed_key.as_ref()),
                error_code: code.as_str(),
                error_details: details,
            },
        )
    };
    let context = match parse_context(&body) {
        Ok((context, _)) => context,
        Err(bad) => return failure(StatusCode::BAD_REQUEST, bad.code, bad.details),
    };
    let (app, version) = match served(&server.index, &namespace, &application, &stage) {
        Ok(found) => found,
        Err(details) => return failure(StatusCode::NOT_FOUND, ErrorCode::FlagNotFound, details),
    };
    let toggle = app
        .flags
        .get(&key)
        .and_then(|name| server.index.spec(&namespace, name));
    let Some(spec) = toggle else {
        // The key is in the body's `key` already: not echoed twice.
        let details = app.not_served.get(&key).cloned().unwrap_or_else(|| {
            format!(
                "this key is not a FeatureToggle key of application {}",
                shorten(&application)
            )
        });
        return failure(StatusCode::NOT_FOUND, ErrorCode::FlagNotFound, details);
    };
    match evaluate(&key, &spec, &stage, &context, &app.couplings) {
        Ok(evaluation) => json_response(StatusCode::OK, &success(&key, evaluation, &version)),
        Err(error) => {
            let status = match error.code() {
                ErrorCode::FlagNotFound => StatusCode::NOT_FOUND,
                _ => StatusCode::BAD_REQUEST,
            };
            failure(status, error.code(), error.to_string())
        }
    }
}

/// The bulk response's entity tag: the flag set's version and the evaluation context,
/// since both decide the answers.
fn entity_tag(version: &str, context: &Value) -> String {
    let digest = flag_set_version(&json!({"flagSet": version, "context": context}));
    let hex = digest.strip_prefix("sha256:").unwrap_or(&digest);
    format!("\"{}\"", &hex[..hex.len().min(32)])
}

/// Whether an `If-None-Match` header names `etag` (or is `*`); weak tags compare by value.
fn matches_etag(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == "*" || tag == etag)
}

/// `POST {base}/ofrep/v1/evaluate/flags`
async fn evaluate_all(
    State(server): State<OfrepState>,
    Path((namespace, application, stage)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let failure = |status: StatusCode, code: ErrorCode, details: String| {
        json_response(
            status,
            &Failure {
                key: None,
                error_code: code.as_str(),
                error_details: details,
            },
        )
    };
    let (context, raw_context) = match parse_context(&body) {
        Ok(parsed) => parsed,
        Err(bad) => return failure(StatusCode::BAD_REQUEST, bad.code, bad.details),
    };
    let (app, version) = match served(&server.index, &namespace, &application, &stage) {
        Ok(found) => found,
        Err(details) => return failure(StatusCode::NOT_FOUND, ErrorCode::General, details),
    };
    let etag = entity_tag(&version, &raw_context);
    let etag_header = HeaderValue::from_str(&etag).ok();
    if matches_etag(&headers, &etag) {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        if let Some(value) = etag_header {
            response.headers_mut().insert(header::ETAG, value);
        }
        return response;
    }
    let entries = app
        .flags
        .iter()
        .filter_map(|(key, name)| Some((key, server.index.spec(&namespace, name)?)))
        .map(
            |(key, spec)| match evaluate(key, &spec, &stage, &context, &app.couplings) {
                Ok(evaluation) => BulkEntry::Success(success(key, evaluation, &version)),
                Err(error) => BulkEntry::Failure(bulk_failure(key, &error)),
            },
        )
        .collect();
    let body = BulkSuccess {
        flags: entries,
        metadata: Metadata {
            flag_set_version: &version,
        },
    };
    let mut response = json_response(StatusCode::OK, &body);
    if let Some(value) = etag_header {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

fn bulk_failure<'a>(key: &'a str, error: &EvaluationError) -> Failure<'a> {
    Failure {
        key: Some(key),
        error_code: error.code().as_str(),
        error_details: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use axum::http::Request;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    use kube::runtime::{reflector, watcher};
    use stagecoach_api::FeatureToggle;
    use stagecoach_engine::toggle::ActiveCouplings;
    use tower::ServiceExt;

    use super::*;
    use crate::controller::toggle::ToggleCache;
    use crate::metrics::Metrics;
    use crate::ofrep::AppFlags;

    const BASE: &str = "/apps/team/shop/stages/demo/ofrep/v1/evaluate/flags";

    fn toggle(name: &str, spec: Value) -> FeatureToggle {
        let mut toggle = FeatureToggle::new(name, serde_json::from_value(spec).unwrap());
        toggle.metadata.namespace = Some("team".into());
        toggle
    }

    fn toggles() -> [FeatureToggle; 2] {
        [
            toggle(
                "new-ui",
                json!({
                    "application": "shop",
                    "variants": {"on": true, "off": false},
                    "defaultVariant": "off",
                    "stages": {"demo": {"rules": [
                        {"clients": ["acme"], "variant": "on"},
                        {"split": {"on": 50, "off": 50}}
                    ]}}
                }),
            ),
            toggle(
                "colour-toggle",
                json!({
                    "application": "shop",
                    "key": "color",
                    "variants": {"red": "#f00", "blue": "#00f"},
                    "defaultVariant": "red",
                    "stages": {"demo": {"state": "Disabled"}}
                }),
            ),
        ]
    }

    fn index() -> FlagIndex {
        let cache = ToggleCache::new();
        for toggle in toggles() {
            cache.apply(&watcher::Event::Apply(toggle));
        }
        let index = FlagIndex::new(cache);
        index.publish(
            "team",
            "shop",
            Arc::new(AppFlags {
                stages: HashMap::from([("demo".to_owned(), "sha256:abc".to_owned())]),
                couplings: ActiveCouplings::none(),
                flags: BTreeMap::from([
                    ("new-ui".to_owned(), "new-ui".to_owned()),
                    ("color".to_owned(), "colour-toggle".to_owned()),
                ]),
                not_served: BTreeMap::from([(
                    "broken".to_owned(),
                    "flag \"broken\" is not served: bad".to_owned(),
                )]),
            }),
        );
        index
    }

    async fn call(
        router: &Router,
        method: &str,
        path: &str,
        body: &str,
        if_none_match: Option<&str>,
    ) -> (StatusCode, HeaderMap, Value) {
        let (status, headers, bytes) = call_raw(router, method, path, body, if_none_match).await;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, headers, value)
    }

    async fn call_raw(
        router: &Router,
        method: &str,
        path: &str,
        body: &str,
        if_none_match: Option<&str>,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(tag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        send(router, request, body).await
    }

    /// Sends one request through the router: (status, headers, body bytes).
    async fn send(
        router: &Router,
        request: axum::http::request::Builder,
        body: &str,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let response = router
            .clone()
            .oneshot(request.body(Body::from(body.to_owned())).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, headers, bytes)
    }

    fn router() -> Router {
        super::router(
            index(),
            open(),
            Cors::default(),
            RateLimit::new(0),
            Metrics::new().unwrap().toggles(),
        )
    }

    /// No token Secrets: every application is open.
    fn open() -> Tokens {
        Tokens::new(reflector::store().0, true)
    }

    fn token_secret(namespace: &str, name: &str, application: &str, token: &str) -> Secret {
        let mut secret = Secret::default();
        secret.metadata.namespace = Some(namespace.into());
        secret.metadata.name = Some(name.into());
        secret.metadata.labels = Some(BTreeMap::from([(
            crate::ofrep::auth::APPLICATION_LABEL.to_owned(),
            application.to_owned(),
        )]));
        secret.data = Some(BTreeMap::from([(
            crate::ofrep::auth::TOKEN_KEY.to_owned(),
            ByteString(token.as_bytes().to_vec()),
        )]));
        secret
    }

    async fn call_with_token(
        router: &Router,
        path: &str,
        authorization: Option<&str>,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut request = Request::builder().method("POST").uri(path);
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let (status, headers, bytes) = send(router, request, "{}").await;
        (
            status,
            headers,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// An application with a token Secret answers 401 without its token, 403 with
    /// another's (or a wrong one), and 200 with its own; one without stays open.
    #[tokio::test]
    async fn token_secrets_guard_their_application() {
        let (store, mut writer) = reflector::store();
        for secret in [
            token_secret("team", "shop-ofrep", "shop", "shop-secret\n"),
            token_secret("team", "cart-ofrep", "cart", "cart-secret"),
            // Same application name in another namespace: not shop's token.
            token_secret("elsewhere", "shop-ofrep", "shop", "foreign"),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(secret));
        }
        let metrics = Metrics::new().unwrap();
        let router = super::router(
            index(),
            Tokens::new(store.clone(), true),
            Cors::default(),
            RateLimit::new(0),
            metrics.toggles(),
        );
        let count = |code: &str| {
            metrics
                .toggles()
                .ofrep_requests
                .with_label_values(&["bulk", code])
                .get()
        };
        let single = format!("{BASE}/color");

        for authorization in [
            None,
            Some("Basic c2hvcA=="),
            Some("Bearer"),
            Some("shop-secret"),
        ] {
            let (status, headers, body) = call_with_token(&router, BASE, authorization).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{authorization:?}");
            assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
            assert_eq!(body["errorCode"], "GENERAL");
            assert!(
                body["errorDetails"]
                    .as_str()
                    .unwrap()
                    .contains("application shop"),
                "{body}"
            );
        }
        assert_eq!(count("401"), 4);
        for token in ["cart-secret", "foreign", "shop-secret-not", "wrong"] {
            let authorization = format!("Bearer {token}");
            let (status, headers, body) =
                call_with_token(&router, BASE, Some(&authorization)).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{token}");
            assert!(headers.contains_key(header::WWW_AUTHENTICATE));
            assert_eq!(body["errorCode"], "GENERAL");
            let (status, _, _) = call_with_token(&router, &single, Some(&authorization)).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{token}");
        }
        assert_eq!(count("403"), 4);
        let ok_before = count("200");
        let (status, _, body) = call_with_token(&router, BASE, Some("Bearer shop-secret")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["flags"].as_array().unwrap().len(), 2);
        assert_eq!(count("200"), ok_before + 1);
        let (status, _, body) = call_with_token(&router, &single, Some("bearer shop-secret")).await;
        assert_eq!((status, &body["value"]), (StatusCode::OK, &json!("#f00")));
        // The token is checked before anything else: an unknown stage is not revealed.
        let (status, _, _) = call_with_token(
            &router,
            "/apps/team/shop/stages/prod/ofrep/v1/evaluate/flags",
            None,
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        // An application without a token Secret is open, with or without a token.
        let other = "/apps/team/other/stages/demo/ofrep/v1/evaluate/flags";
        for authorization in [None, Some("Bearer shop-secret")] {
            let (status, _, _) = call_with_token(&router, other, authorization).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{authorization:?}");
        }
        // Removing the Secret opens the application again.
        writer.apply_watcher_event(&watcher::Event::Delete(token_secret(
            "team",
            "shop-ofrep",
            "shop",
            "",
        )));
        let (status, _, _) = call_with_token(&router, BASE, None).await;
        assert_eq!(status, StatusCode::OK);

        // Before the Secret cache has synced, nothing is served: 503, not open.
        let unsynced = super::router(
            index(),
            Tokens::new(store, false),
            Cors::default(),
            RateLimit::new(0),
            metrics.toggles(),
        );
        let (status, headers, _) = call_with_token(&unsynced, BASE, None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(headers.contains_key(header::RETRY_AFTER));
    }

    #[tokio::test]
    async fn single_evaluations_answer_as_the_engine() {
        let router = router();
        let url = format!("{BASE}/new-ui");
        let (status, headers, body) = call(
            &router,
            "POST",
            &url,
            r#"{"context":{"clientId":"acme"}}"#,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            body,
            json!({"key": "new-ui", "value": true, "reason": "TARGETING_MATCH", "variant": "on",
                   "metadata": {"flagSetVersion": "sha256:abc"}})
        );

        let spec = toggles()[0].spec.clone();
        for client in ["globex", "initech", "umbrella", "hooli"] {
            let (status, _, body) = call(
                &router,
                "POST",
                &url,
                &json!({"context": {"targetingKey": client}}).to_string(),
                None,
            )
            .await;
            assert_eq!(status, StatusCode::OK);
            let expected = evaluate(
                "new-ui",
                &spec,
                "demo",
                &EvaluationContext::with_targeting_key(client),
                &ActiveCouplings::none(),
            )
            .unwrap();
            assert_eq!(body["reason"], "SPLIT");
            assert_eq!(body["variant"], expected.variant.as_str());
            assert_eq!(body["value"], expected.value);
        }

        let (_, _, body) = call(&router, "POST", &format!("{BASE}/color"), "{}", None).await;
        assert_eq!(body["reason"], "DISABLED");
        assert_eq!(body["value"], "#f00");
        // An empty body is an empty context.
        let (status, _, body) = call(&router, "POST", &format!("{BASE}/color"), "", None).await;
        assert_eq!((status, &body["variant"]), (StatusCode::OK, &json!("red")));
    }

    #[tokio::test]
    async fn single_errors_follow_the_protocol() {
        let router = router();
        let url = format!("{BASE}/new-ui");
        let cases = [
            (
                url.as_str(),
                "{not json",
                StatusCode::BAD_REQUEST,
                "PARSE_ERROR",
            ),
            (
                url.as_str(),
                r#"{"context": [1]}"#,
                StatusCode::BAD_REQUEST,
                "INVALID_CONTEXT",
            ),
            (
                url.as_str(),
                r#"{"context": {"targetingKey": 7}}"#,
                StatusCode::BAD_REQUEST,
                "INVALID_CONTEXT",
            ),
            (
                url.as_str(),
                r#"{"context": {}}"#,
                StatusCode::BAD_REQUEST,
                "TARGETING_KEY_MISSING",
            ),
        ];
        for (path, body, expected_status, code) in cases {
            let (status, _, answer) = call(&router, "POST", path, body, None).await;
            assert_eq!(status, expected_status, "{body}: {answer}");
            assert_eq!(answer["errorCode"], code, "{body}: {answer}");
            assert_eq!(answer["key"], "new-ui");
            assert!(
                answer["errorDetails"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty())
            );
        }
        let (status, _, answer) = call(&router, "POST", &format!("{BASE}/nope"), "{}", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(answer["errorCode"], "FLAG_NOT_FOUND");
        assert_eq!(answer["key"], "nope");
        let (status, _, answer) =
            call(&router, "POST", &format!("{BASE}/broken"), "{}", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(
            answer["errorDetails"]
                .as_str()
                .unwrap()
                .contains("not served")
        );
        let (status, _, answer) = call(
            &router,
            "POST",
            "/apps/team/shop/stages/prod/ofrep/v1/evaluate/flags/new-ui",
            "{}",
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(
            answer["errorDetails"]
                .as_str()
                .unwrap()
                .contains("its stages: demo"),
            "{answer}"
        );
        let (status, _, _) = call(&router, "GET", &url, "", None).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn bulk_evaluates_every_flag_with_etags() {
        let router = router();
        let context = r#"{"context": {"clientId": "acme"}}"#;
        let (status, headers, body) = call(&router, "POST", BASE, context, None).await;
        assert_eq!(status, StatusCode::OK);
        let keys: Vec<&str> = body["flags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["key"].as_str().unwrap())
            .collect();
        assert_eq!(keys, ["color", "new-ui"]);
        assert_eq!(body["flags"][1]["variant"], "on");
        assert_eq!(body["metadata"]["flagSetVersion"], "sha256:abc");
        let etag = headers[header::ETAG].to_str().unwrap().to_owned();
        assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");

        let (status, headers, _) = call(&router, "POST", BASE, context, Some(&etag)).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        assert_eq!(headers[header::ETAG], etag.as_str());
        let (status, _, _) = call(
            &router,
            "POST",
            BASE,
            context,
            Some(&format!("\"x\", W/{etag}")),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        // Another context gets other answers, so another tag.
        let (status, headers, body) =
            call(&router, "POST", BASE, r#"{"context": {}}"#, Some(&etag)).await;
        assert_eq!(status, StatusCode::OK);
        assert_ne!(headers[header::ETAG], etag.as_str());
        assert_eq!(
            body["flags"][1],
            json!({"key": "new-ui", "errorCode": "TARGETING_KEY_MISSING",
                   "errorDetails": body["flags"][1]["errorDetails"]})
        );

        let (status, _, body) = call(&router, "POST", BASE, "[", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["errorCode"], "PARSE_ERROR");
        assert!(body.get("key").is_none());
        let (status, _, _) = call(
            &router,
            "POST",
            "/apps/team/other/stages/demo/ofrep/v1/evaluate/flags",
            "{}",
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    /// Every answer is counted, the router's own rejections included.
    #[tokio::test]
    async fn every_answer_is_counted_rejections_included() {
        let metrics = Metrics::new().unwrap();
        let router = super::router(
            index(),
            open(),
            Cors::default(),
            RateLimit::new(0),
            metrics.toggles(),
        );
        let count = |endpoint: &str, code: &str| {
            metrics
                .toggles()
                .ofrep_requests
                .with_label_values(&[endpoint, code])
                .get()
        };
        let single = format!("{BASE}/new-ui");
        let long_key = format!("{BASE}/{}", "k".repeat(MAX_URI_BYTES));
        let too_large = " ".repeat(2 * 1024 * 1024 + 1);
        let cases = [
            (
                "POST",
                single.as_str(),
                "{}",
                StatusCode::BAD_REQUEST,
                "single",
            ),
            (
                "GET",
                single.as_str(),
                "",
                StatusCode::METHOD_NOT_ALLOWED,
                "single",
            ),
            ("PUT", BASE, "", StatusCode::METHOD_NOT_ALLOWED, "bulk"),
            (
                "POST",
                single.as_str(),
                too_large.as_str(),
                StatusCode::PAYLOAD_TOO_LARGE,
                "single",
            ),
            (
                "POST",
                BASE,
                too_large.as_str(),
                StatusCode::PAYLOAD_TOO_LARGE,
                "bulk",
            ),
            (
                "POST",
                long_key.as_str(),
                "{}",
                StatusCode::URI_TOO_LONG,
                "single",
            ),
            (
                "POST",
                "/apps/team/shop/nothing-here",
                "{}",
                StatusCode::NOT_FOUND,
                "other",
            ),
        ];
        for (method, path, body, expected, endpoint) in cases {
            let before = count(endpoint, expected.as_str());
            let (status, _, _) = call(&router, method, path, body, None).await;
            assert_eq!(status, expected, "{method} {}", &path[..path.len().min(80)]);
            assert_eq!(
                count(endpoint, expected.as_str()),
                before + 1,
                "{method} {}: {endpoint} {expected} not counted",
                &path[..path.len().min(80)]
            );
        }
        let (status, _, body) = call(&router, "POST", &long_key, "{}", None).await;
        assert_eq!(status, StatusCode::URI_TOO_LONG);
        assert_eq!(body["errorCode"], "GENERAL", "{body}");
        let text = metrics.render().unwrap();
        assert!(
            text.contains("stagecoach_ofrep_requests_total{code=\"405\",endpoint=\"single\"} 1"),
            "{text}"
        );
        // Each answer is timed too, in the endpoint's latency histogram.
        for (endpoint, answers) in [("single", 5), ("bulk", 2), ("other", 1)] {
            assert!(
                text.contains(&format!(
                    "stagecoach_ofrep_request_duration_seconds_count{{endpoint=\"{endpoint}\"}} {answers}"
                )),
                "{endpoint}: {text}"
            );
        }
    }

    async fn call_cors(
        router: &Router,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap) {
        let mut request = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let (status, headers, _) = send(router, request, "{}").await;
        (status, headers)
    }

    /// Allowed origins get preflights answered (before the token check) and their
    /// origin echoed; other origins get no CORS headers; without origins, nothing changes.
    #[tokio::test]
    async fn cors_answers_allowed_origins_only() {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Apply(token_secret(
            "team",
            "shop-ofrep",
            "shop",
            "t",
        )));
        let metrics = Metrics::new().unwrap();
        let cors = Cors::new(["https://shop.example/".to_owned()]);
        let guarded = super::router(
            index(),
            Tokens::new(store, true),
            cors,
            RateLimit::new(0),
            metrics.toggles(),
        );
        let router = &guarded;
        let allowed = ("origin", "https://shop.example");
        let preflight = [allowed, ("access-control-request-method", "POST")];
        let (status, headers) = call_cors(router, "OPTIONS", BASE, &preflight).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(
            headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://shop.example"
        );
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_METHODS], "POST");
        assert!(
            headers[header::ACCESS_CONTROL_ALLOW_HEADERS]
                .to_str()
                .unwrap()
                .contains("authorization")
        );
        assert_eq!(headers[header::VARY], "origin");

        let evil = [
            ("origin", "https://evil.example"),
            ("access-control-request-method", "POST"),
        ];
        let (status, headers) = call_cors(router, "OPTIONS", BASE, &evil).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(!headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));

        let (status, headers) = call_cors(
            router,
            "POST",
            BASE,
            &[allowed, ("authorization", "Bearer t")],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://shop.example"
        );
        assert_eq!(headers[header::ACCESS_CONTROL_EXPOSE_HEADERS], "etag");
        // A refusal carries the headers too, so the browser can read its body.
        let (status, headers) = call_cors(router, "POST", BASE, &[allowed]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        let (status, headers) = call_cors(
            router,
            "POST",
            BASE,
            &[evil[0], ("authorization", "Bearer t")],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(!headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));

        // No origins configured: no CORS headers, a preflight is just a wrong method.
        let plain = self::router();
        let router = &plain;
        let (status, headers) = call_cors(router, "OPTIONS", BASE, &preflight).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(!headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        let (_, headers) = call_cors(router, "POST", BASE, &[allowed]).await;
        assert!(!headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        assert!(!headers.contains_key(header::VARY));
        // `*` allows any origin.
        let any = super::router(
            index(),
            open(),
            Cors::new(["*".to_owned()]),
            RateLimit::new(0),
            metrics.toggles(),
        );
        let (status, headers) = call_cors(&any, "OPTIONS", BASE, &evil).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(
            headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://evil.example"
        );
    }

    /// Past its bucket a client gets 429 with Retry-After (counted); another client, here
    /// another bearer token, still gets answers.
    #[tokio::test]
    async fn a_client_over_the_rate_limit_gets_429() {
        let metrics = Metrics::new().unwrap();
        let router = super::router(
            index(),
            open(),
            Cors::default(),
            RateLimit::new(1), // bursts of 2
            metrics.toggles(),
        );
        for _ in 0..2 {
            let (status, _, _) = call_with_token(&router, BASE, None).await;
            assert_eq!(status, StatusCode::OK);
        }
        let (status, headers, body) = call_with_token(&router, BASE, None).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(headers[header::RETRY_AFTER], "1");
        assert_eq!(body["errorCode"], "GENERAL");
        let (status, _, _) = call_with_token(&router, BASE, Some("Bearer other")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            metrics
                .toggles()
                .ofrep_requests
                .with_label_values(&["bulk", "429"])
                .get(),
            1
        );
    }

    /// A 5,000-character unknown key is echoed once, truncated: the body stays small.
    #[tokio::test]
    async fn an_unknown_long_key_is_echoed_once_and_truncated() {
        let router = router();
        let key = "x".repeat(5000);
        let (status, _, bytes) =
            call_raw(&router, "POST", &format!("{BASE}/{key}"), "{}", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(bytes.len() < 1024, "{} bytes", bytes.len());
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["errorCode"], "FLAG_NOT_FOUND");
        let echoed = body["key"].as_str().unwrap();
        assert!(echoed.starts_with(&key[..MAX_ECHO_CHARS]), "{echoed}");
        assert!(echoed.ends_with("...(5000 characters)"), "{echoed}");
        let details = body["errorDetails"].as_str().unwrap();
        assert!(!details.contains("xxxx"), "{details}");
        assert!(details.contains("application shop"), "{details}");
        // A key of a usual length is echoed whole.
        let (_, _, body) = call(&router, "POST", &format!("{BASE}/nope"), "{}", None).await;
        assert_eq!(body["key"], "nope");
        assert_eq!(
            shorten(&"y".repeat(MAX_ECHO_CHARS)),
            "y".repeat(MAX_ECHO_CHARS)
        );
    }
}
