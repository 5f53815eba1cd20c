//! Shared helpers for the end-to-end tests.
//!
//! The tests run against the real control plane that `cargo xtask test` starts
//! (KUBECONFIG points at it). They are `#[ignore]`d so that a plain `cargo test` does not
//! pretend to run them; `cargo xtask test` runs them with `--ignored`. Every test works
//! in a fresh namespace labelled [`E2E_LABEL`], deleted at the end.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};

/// Label on every namespace a test creates.
pub const E2E_LABEL: &str = "stagecoach.dev/e2e";

/// Message used by `#[ignore]` on every end-to-end test.
pub const HOW_TO_RUN: &str = "needs the test control plane: run `cargo xtask test` (or `cargo xtask cluster up` and `cargo test -p stagecoach-e2e -- --ignored` with its KUBECONFIG)";

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A client for the cluster in KUBECONFIG; fails clearly when there is none.
pub async fn client() -> Result<Client> {
    if std::env::var_os("KUBECONFIG").is_none() {
        bail!("KUBECONFIG is not set; {HOW_TO_RUN}");
    }
    Client::try_default()
        .await
        .context("connecting to the cluster in KUBECONFIG")
}

/// Parses every YAML document in a file into JSON objects.
pub fn read_manifests(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// Installs everything in `crds/` (the CRDs and the admission policy; server-side apply,
/// idempotent), waits until the CRDs are Established and the policy is enforced.
pub async fn install_crds(client: &Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let dir = repo_root().join("crds");
    let mut names = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for path in files {
        for doc in read_manifests(&path)? {
            let name = doc["metadata"]["name"].as_str().context("name")?.to_owned();
            let kind = doc["kind"].as_str().context("kind")?.to_owned();
            let (group, version) = doc["apiVersion"]
                .as_str()
                .context("apiVersion")?
                .split_once('/')
                .context("apiVersion without group")?;
            let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &kind));
            let dynamic: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
            let obj: DynamicObject = serde_json::from_value(doc)?;
            dynamic
                .patch(
                    &name,
                    &PatchParams::apply("stagecoach-e2e").force(),
                    &Patch::Apply(&obj),
                )
                .await
                .with_context(|| format!("applying {kind} {name} from {}", path.display()))?;
            if kind == "CustomResourceDefinition" {
                names.push(name);
            }
        }
    }
    for name in names {
        eventually(Duration::from_secs(30), || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let crd = api.get(&name).await?;
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                Ok(established.then_some(()))
            }
        })
        .await
        .with_context(|| format!("CRD {name} never became Established"))?;
    }
    wait_for_admission_policy(client).await
}

/// Admission policies take effect a moment after they are created: wait until a toggle
/// that only the policy rejects is rejected.
async fn wait_for_admission_policy(client: &Client) -> Result<()> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "stagecoach.dev",
        "v1alpha1",
        "FeatureToggle",
    ));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let probe: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "stagecoach.dev/v1alpha1",
        "kind": "FeatureToggle",
        "metadata": {"name": "policy-probe"},
        "spec": {"application": "probe", "variants": {"a": true}, "defaultVariant": "b"}
    }))?;
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    eventually(Duration::from_secs(30), || {
        let api = api.clone();
        let probe = probe.clone();
        let params = params.clone();
        async move {
            match api.create(&params, &probe).await {
                Err(kube::Error::Api(e)) if e.message.contains("defaultVariant must be one of") => {
                    Ok(Some(()))
                }
                _ => Ok(None),
            }
        }
    })
    .await
    .context("the FeatureToggle admission policy never took effect")
}

/// A namespace that exists for one test.
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    /// Creates `e2e-<prefix>-<random>` labelled [`E2E_LABEL`].
    pub async fn create(client: &Client, prefix: &str) -> Result<Self> {
        let suffix = format!("{:x}", rand_suffix());
        let name = format!("e2e-{prefix}-{suffix}");
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {E2E_LABEL: "true"}}
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        // Pods need the default ServiceAccount, which the real controller-manager makes.
        let sa_api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), &name);
        eventually(Duration::from_secs(30), || {
            let sa_api = sa_api.clone();
            async move { Ok(sa_api.get_opt("default").await?.map(|_| ())) }
        })
        .await
        .context("the default ServiceAccount never appeared")?;
        Ok(Self {
            name,
            client: client.clone(),
        })
    }

    /// Deletes the namespace (its contents go with it).
    pub async fn delete(self) -> Result<()> {
        Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::background())
            .await?;
        Ok(())
    }
}

/// Deletes every namespace a test left behind.
pub async fn delete_test_namespaces(client: &Client) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let selector = format!("{E2E_LABEL}=true");
    api.delete_collection(
        &DeleteParams::background(),
        &ListParams::default().labels(&selector),
    )
    .await?;
    Ok(())
}

fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    // Truncation is the point: a short random suffix.
    #[allow(clippy::cast_possible_truncation)]
    let short = h.finish() as u32;
    short
}

/// Polls `check` until it returns `Some`, or fails after `timeout` with the last error.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(match last_error {
                Some(e) => e.context(format!("condition not met within {timeout:?}")),
                None => anyhow::anyhow!("condition not met within {timeout:?}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A Deployment manifest with `replicas` pods of one container `app` running `image`,
/// labelled `app: <name>`.
pub fn deployment(name: &str, image: &str, replicas: i32) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image}]}
            }
        }
    })
}
