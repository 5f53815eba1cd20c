//! CORS for browser OpenFeature SDKs: the origins allowed to call OFREP
//! (`--ofrep-cors-origin`). None by default: no CORS headers are sent and a preflight is
//! answered 405 like any other `OPTIONS`.

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// How long a browser may cache a preflight's answer, in seconds.
const MAX_AGE_SECONDS: &str = "600";

/// The allowed origins. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Cors {
    origins: Vec<String>,
    any: bool,
}

impl Cors {
    /// Allows `origins` (`*` allows any origin).
    pub fn new(origins: impl IntoIterator<Item = String>) -> Self {
        let mut cors = Self::default();
        for origin in origins {
            if origin == "*" {
                cors.any = true;
            } else {
                cors.origins
                    .push(origin.trim_end_matches('/').to_ascii_lowercase());
            }
        }
        cors
    }

    fn enabled(&self) -> bool {
        self.any || !self.origins.is_empty()
    }

    /// The request's `Origin` if it is allowed.
    pub(super) fn allowed(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        (self.any || self.origins.iter().any(|o| o.eq_ignore_ascii_case(text)))
            .then(|| origin.clone())
    }

    /// The answer to a CORS preflight, if the request is one and CORS is enabled: 204
    /// with the allowed method and headers for an allowed origin, else 403.
    pub(super) fn preflight(&self, method: &Method, headers: &HeaderMap) -> Option<Response> {
        if !self.enabled()
            || method != Method::OPTIONS
            || !headers.contains_key(header::ORIGIN)
            || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return None;
        }
        if self.allowed(headers).is_none() {
            return Some(StatusCode::FORBIDDEN.into_response());
        }
        let mut response = StatusCode::NO_CONTENT.into_response();
        let answer = response.headers_mut();
        answer.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST"),
        );
        answer.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, if-none-match"),
        );
        answer.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(MAX_AGE_SECONDS),
        );
        Some(response)
    }

    /// Adds the CORS headers for `origin` (the request's, if allowed) to `response`.
    pub(super) fn decorate(&self, origin: Option<HeaderValue>, response: &mut Response) {
        if !self.enabled() {
            return;
        }
        let headers = response.headers_mut();
        headers.append(header::VARY, HeaderValue::from_static("origin"));
        if let Some(origin) = origin {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("etag"),
            );
        }
    }
}
