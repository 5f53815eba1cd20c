//! The OpenFeature Remote Evaluation Protocol (OFREP v0.3.0) server: any OpenFeature SDK
//! with an OFREP provider evaluates Stagecoach toggles without new code.
//!
//! # Base URL: one per application and stage
//!
//! ```text
//! http://<operator>:8081/apps/{namespace}/{application}/stages/{stage}
//! ```
//!
//! `{namespace}` is the namespace of the application's FeatureToggles and Releases (not
//! the stage namespace), `{application}` is `spec.application`, `{stage}` a stage name
//! of its Releases. An OFREP provider is given that URL as its base URL, for example
//! `http://stagecoach.stagecoach-system:8081/apps/billing/billing/stages/demo`, and
//! appends the protocol's paths to it:
//!
//! - `POST {base}/ofrep/v1/evaluate/flags/{key}`: one flag. 200
//!   `{key, value, reason, variant, metadata}`; 400 `{key, errorCode, errorDetails}` with
//!   PARSE_ERROR (the body is not JSON), INVALID_CONTEXT or TARGETING_KEY_MISSING (a split
//!   needs the client's bucketBy attribute or a targetingKey); 404 FLAG_NOT_FOUND (also
//!   for an application or stage that serves no toggles, or a toggle that is not served
//!   because its spec is invalid or its key taken; errorDetails says which).
//! - `POST {base}/ofrep/v1/evaluate/flags`: every flag of the stage, `{flags: [...],
//!   metadata}` sorted by key, where a flag that cannot be evaluated for this context is
//!   an entry `{key, errorCode, errorDetails}`. The response carries an `ETag` (the flag
//!   set's version and the evaluation context); a request whose `If-None-Match` names it
//!   gets 304 Not Modified. 400 `{errorCode, errorDetails}` for a body that is not JSON or
//!   an invalid context; 404 for an application or stage that serves no toggles.
//!
//! Other answers: 405 for another method than POST, 413 for a body over 2 MB, 414 for a
//! URI over 8 KiB. A key, application, namespace or stage from the request is echoed in
//! an error body at most once and cut after 256 characters. Every answer is counted in
//! `stagecoach_ofrep_requests_total{endpoint, code}` (endpoint `single`, `bulk` or
//! `other` for a path that is neither).
//!
//! An application with a token Secret (see [`Tokens`]) requires
//! `Authorization: Bearer <token>`: 401 without one, 403 with a token not its own, 503
//! until the Secret cache has synced. These are checked before routing.
//!
//! CORS ([`Cors`], `--ofrep-cors-origin`): for an allowed `Origin`, a preflight (`OPTIONS`
//! with `Access-Control-Request-Method`) is answered 204 before the token check (browsers
//! send no `Authorization` on a preflight), and every answer echoes the origin in
//! `Access-Control-Allow-Origin` and exposes `ETag`; a preflight from another origin is
//! answered 403.
//!
//! Rate limit ([`RateLimit`], `--ofrep-rate-limit`, off by default): a token bucket per
//! client (its bearer token, else its peer address); a request over it is answered 429
//! with `Retry-After`, before anything else is looked at.
//!
//! `metadata` carries `flagSetVersion`, the same content version as the stage's ConfigMap.
//! Answers come from [`FlagIndex`], which the toggle controller keeps current: no API call
//! per request. The evaluation is [`stagecoach_engine::toggle::evaluate()`], so OFREP, the
//! flagd flag set and the engine agree on every variant.

pub(crate) mod auth;
mod cors;
mod index;
mod limit;
mod server;

pub use auth::Tokens;
pub use cors::Cors;
pub use index::{AppFlags, FlagIndex};
pub use limit::RateLimit;
pub use server::serve;
