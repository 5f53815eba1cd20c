//! One POST to one receiver: the token from its Secret, the signature, the answer.

use std::fmt::Write as _;

use hmac::{Hmac, Mac};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use sha2::Sha256;

use super::{Job, TIMEOUT};

/// Header carrying `sha256=<hex HMAC-SHA256 of the body, keyed with the token>`.
pub const SIGNATURE_HEADER: &str = "X-Stagecoach-Signature";

/// The HTTP client for receivers: rustls with the ring provider (as the Kubernetes
/// client uses) and the system's CA certificates, no redirects (a POST is not replayed
/// elsewhere), the receiver's timeout.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    // reqwest takes the process default provider; kube's client does not need one. An
    // error means one is installed already, which is just as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder()
        .tls_backend_rustls()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .build()?)
}

/// `sha256=<hex>`: HMAC-SHA256 of `body` keyed with `token`.
pub fn signature(token: &str, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
    mac.update(body);
    let mut hex = String::from("sha256=");
    for byte in mac.finalize().into_bytes() {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// The token a receiver's Secret holds (surrounding whitespace, such as the newline
/// `echo` leaves, removed).
async fn token(
    client: &Client,
    namespace: &str,
    secret: &stagecoach_api::pipeline::SecretKeyRef,
) -> Result<String, String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let found = api
        .get_opt(&secret.name)
        .await
        .map_err(|error| match error {
            kube::Error::Api(status) if status.code == 403 => format!(
                "cannot read Secret {namespace}/{}: the operator may not get Secrets here ({})",
                secret.name, status.message
            ),
            other => format!("cannot read Secret {namespace}/{}: {other}", secret.name),
        })?;
    let Some(found) = found else {
        return Err(format!("Secret {namespace}/{} not found", secret.name));
    };
    let bytes = found
        .data
        .as_ref()
        .and_then(|d| d.get(&secret.key))
        .map(|b| b.0.clone())
        .or_else(|| {
            found
                .string_data
                .as_ref()
                .and_then(|d| d.get(&secret.key))
                .map(|s| s.clone().into_bytes())
        })
        .ok_or_else(|| {
            format!(
                "Secret {namespace}/{} has no key {}",
                secret.name, secret.key
            )
        })?;
    let text = String::from_utf8(bytes).map_err(|_| {
        format!(
            "key {} of Secret {namespace}/{} is not text",
            secret.key, secret.name
        )
    })?;
    Ok(text.trim().to_owned())
}

/// Sends one job; `Err` says why it did not arrive, for `lastError`.
pub async fn send(client: &Client, http: &reqwest::Client, job: &Job) -> Result<(), String> {
    let mut request = http
        .post(&job.url)
        .header(CONTENT_TYPE, job.content_type)
        .header(
            USER_AGENT,
            concat!("stagecoach/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(secret) = &job.secret {
        let token = token(client, &job.key.0, secret).await?;
        request = request
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .header(SIGNATURE_HEADER, signature(&token, job.body.as_bytes()));
    }
    let response = request
        .body(job.body.clone())
        .send()
        .await
        .map_err(|error| describe(&error))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let text = response.text().await.unwrap_or_default();
    let text: String = text.trim().chars().take(120).collect();
    Err(if text.is_empty() {
        format!("HTTP {}", status.as_u16())
    } else {
        format!("HTTP {}: {text}", status.as_u16())
    })
}

/// A transport error in a few words: what failed and the innermost cause.
fn describe(error: &reqwest::Error) -> String {
    let what = if error.is_timeout() {
        format!("no answer within {}s", TIMEOUT.as_secs())
    } else if error.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut cause: &dyn std::error::Error = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    format!("{what}: {cause}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231, test case 2.
    #[test]
    fn signature_is_hmac_sha256_in_hex() {
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
