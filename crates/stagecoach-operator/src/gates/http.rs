//! The `http` gate: one request (method, headers, some from Secrets, a body with
//! placeholders) whose status and, optionally, a JSON field decide.

use chrono::{DateTime, Utc};
use kube::Client;
use reqwest::header::{HeaderName, HeaderValue};
use stagecoach_api::release::{HttpGate, HttpMethod};
use stagecoach_engine::release::gate::Measurement;

use super::providers::{self, GateContext};
use super::{body_text, describe, failing, inconclusive, secret};

/// The largest answer read.
const BODY_LIMIT: usize = 4 * 1024 * 1024;

/// One evaluation: the request with its placeholders filled in.
pub async fn evaluate(
    client: &Client,
    http: &reqwest::Client,
    namespace: &str,
    gate: &HttpGate,
    ctx: &GateContext<'_>,
    timeout: std::time::Duration,
    at: DateTime<Utc>,
) -> Measurement {
    let url = providers::render(&gate.url, ctx);
    let parsed = match reqwest::Url::parse(&url) {
        Ok(parsed) => parsed,
        Err(error) => return failing(format!("url {url} is not a URL: {error}"), at),
    };
    // For messages: without the query, which may carry a token.
    let what = format!(
        "{}://{}{}",
        parsed.scheme(),
        parsed.host_str().unwrap_or_default(),
        parsed.path()
    );
    let method = match gate.method.unwrap_or(HttpMethod::Get) {
        HttpMethod::Get => reqwest::Method::GET,
        HttpMethod::Post => reqwest::Method::POST,
        HttpMethod::Put => reqwest::Method::PUT,
        HttpMethod::Head => reqwest::Method::HEAD,
    };
    let mut request = http.request(method, parsed).timeout(timeout);
    for header in &gate.headers {
        let value = match (&header.value, &header.secret_ref) {
            (Some(value), _) => value.clone(),
            (None, Some(reference)) => {
                match secret::read_text(client, namespace, reference).await {
                    Ok(value) => value,
                    Err(message) => {
                        return inconclusive(format!("header {}: {message}", header.name), at);
                    }
                }
            }
            (None, None) => String::new(),
        };
        let Ok(name) = HeaderName::from_bytes(header.name.as_bytes()) else {
            return failing(format!("{:?} is not a valid header name", header.name), at);
        };
        let Ok(value) = HeaderValue::from_str(&value) else {
            // Never the value itself: it may be a secret.
            return failing(
                format!(
                    "the value of header {} is not a valid header value",
                    header.name
                ),
                at,
            );
        };
        request = request.header(name, value);
    }
    if let Some(body) = &gate.body {
        request = request.body(providers::render(body, ctx));
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => {
            return providers::unreachable_measurement(&what, &describe(&error, timeout), at);
        }
    };
    let status = response.status().as_u16();
    match body_text(response, BODY_LIMIT).await {
        Ok(body) => providers::http_measurement(status, &body, gate, at),
        Err(error) => providers::unreachable_measurement(&what, &error, at),
    }
}
