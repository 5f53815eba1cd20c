//! One key of a Secret in a stage namespace (a bearer token, a CA bundle, a header value).

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use stagecoach_api::pipeline::SecretKeyRef;

/// The bytes of `secret`'s key, read from the API server (Secrets are not cached: the
/// operator caches only the labelled OFREP token Secrets). `Err` says why, for the gate's
/// message.
pub async fn read(
    client: &Client,
    namespace: &str,
    secret: &SecretKeyRef,
) -> Result<Vec<u8>, String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let found = api
        .get_opt(&secret.name)
        .await
        .map_err(|error| match error {
            kube::Error::Api(status) if status.code == 403 => format!(
                "cannot read Secret {namespace}/{}: the operator may not get Secrets there ({})",
                secret.name, status.message
            ),
            other => format!("cannot read Secret {namespace}/{}: {other}", secret.name),
        })?
        .ok_or_else(|| format!("Secret {namespace}/{} not found", secret.name))?;
    found
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
        })
}

/// [`read`] as text without surrounding whitespace (the newline `echo` leaves), for
/// tokens and header values.
pub async fn read_text(
    client: &Client,
    namespace: &str,
    secret: &SecretKeyRef,
) -> Result<String, String> {
    let bytes = read(client, namespace, secret).await?;
    let text = String::from_utf8(bytes).map_err(|_| {
        format!(
            "key {} of Secret {namespace}/{} is not text",
            secret.key, secret.name
        )
    })?;
    Ok(text.trim().to_owned())
}
