//! The `prometheus` gate: an instant query against the Prometheus HTTP API (also Google
//! Cloud Managed Service for Prometheus and anything else that serves
//! `/api/v1/query`), with an optional bearer token and CA bundle from Secrets.

use chrono::{DateTime, Utc};
use kube::Client;
use reqwest::header::AUTHORIZATION;
use stagecoach_api::release::PrometheusGate;
use stagecoach_engine::release::gate::Measurement;

use super::providers::{self, GateContext};
use super::{body_text, describe, failing, http_client, inconclusive, secret};

/// The largest answer read: an instant query for one number is a few hundred bytes.
const BODY_LIMIT: usize = 1024 * 1024;

/// The client for the last CA bundle a gate used, so a custom CA costs one TLS set-up
/// per change of the Secret, not one per evaluation.
#[derive(Default)]
pub struct TlsClients {
    last: Option<(Vec<u8>, reqwest::Client)>,
}

impl TlsClients {
    fn client(&mut self, pem: Vec<u8>) -> Result<reqwest::Client, String> {
        if let Some((known, client)) = &self.last
            && *known == pem
        {
            return Ok(client.clone());
        }
        let client = http_client(Some(&pem)).map_err(|e| format!("{e:#}"))?;
        self.last = Some((pem, client.clone()));
        Ok(client)
    }
}

/// One instant query of one gate.
pub struct Query<'a> {
    /// The stage namespace (its Secrets hold the token and the CA bundle).
    pub namespace: &'a str,
    pub gate: &'a PrometheusGate,
    pub ctx: &'a GateContext<'a>,
    pub timeout: std::time::Duration,
}

/// `{address}/api/v1/query?query=<query>`.
pub fn query_url(address: &str, query: &str) -> Result<reqwest::Url, String> {
    let mut url = reqwest::Url::parse(&providers::query_url(address))
        .map_err(|e| format!("address {address} is not a URL: {e}"))?;
    url.query_pairs_mut().append_pair("query", query);
    Ok(url)
}

/// One evaluation: the query with its placeholders filled in, asked at `address`.
pub async fn evaluate(
    client: &Client,
    http: &reqwest::Client,
    tls: &mut TlsClients,
    query: &Query<'_>,
    at: DateTime<Utc>,
) -> Measurement {
    let Query {
        namespace,
        gate,
        ctx,
        timeout,
    } = *query;
    let query = providers::render(&gate.query, ctx);
    let url = match query_url(&gate.address, &query) {
        Ok(url) => url,
        Err(message) => return failing(message, at),
    };
    let http = match &gate.ca_secret_ref {
        None => http.clone(),
        Some(reference) => {
            let pem = match secret::read(client, namespace, reference).await {
                Ok(pem) => pem,
                Err(message) => return inconclusive(format!("CA bundle: {message}"), at),
            };
            match tls.client(pem) {
                Ok(client) => client,
                Err(error) => {
                    return failing(
                        format!(
                            "CA bundle in Secret {namespace}/{} key {}: {error}",
                            reference.name, reference.key
                        ),
                        at,
                    );
                }
            }
        }
    };
    let mut request = http.get(url).timeout(timeout);
    if let Some(reference) = &gate.bearer_token_secret_ref {
        match secret::read_text(client, namespace, reference).await {
            Ok(token) => request = request.header(AUTHORIZATION, format!("Bearer {token}")),
            Err(message) => return inconclusive(format!("bearer token: {message}"), at),
        }
    }
    let what = format!("Prometheus at {}", gate.address);
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => {
            return providers::unreachable_measurement(&what, &describe(&error, timeout), at);
        }
    };
    let status = response.status().as_u16();
    match body_text(response, BODY_LIMIT).await {
        Ok(body) => providers::prometheus_measurement(status, &body, gate, at),
        Err(error) => providers::unreachable_measurement(&what, &error, at),
    }
}
