//! The Helm chart renders with a real helm and everything it renders is accepted by the
//! real API server (server-side dry-run); the operator's pod passes the Pod Security
//! "restricted" profile, enforced by the API server's admission.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::semicolon_if_nothing_returned
)] // test tables

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};
use serde_json::{Value, json};
use stagecoach_e2e::{TestNamespace, client, install_crds, repo_root};

fn helm() -> Result<PathBuf> {
    let helm = std::env::var_os("HELM_BIN").map(PathBuf::from).context(
        "HELM_BIN is not set: run this test through `cargo xtask test`, which builds helm",
    )?;
    if !helm.exists() {
        bail!("HELM_BIN={} does not exist", helm.display());
    }
    Ok(helm)
}

fn render(namespace: &str, extra: &[&str]) -> Result<Vec<Value>> {
    let out = Command::new(helm()?)
        .args(["template", "stagecoach"])
        .arg(repo_root().join("charts/stagecoach"))
        .args(["--namespace", namespace, "--include-crds"])
        .args(extra)
        .output()
        .context("running helm template")?;
    if !out.status.success() {
        bail!(
            "helm template failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value: Value = serde::Deserialize::deserialize(doc)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

async fn dry_run_apply(client: &kube::Client, doc: &Value, namespace: &str) -> Result<()> {
    let kind = doc["kind"].as_str().context("kind")?;
    let (group, version) = doc["apiVersion"]
        .as_str()
        .context("apiVersion")?
        .split_once('/')
        .unwrap_or(("", doc["apiVersion"].as_str().unwrap_or_default()));
    let (ar, caps) = pinned_kind(client, &GroupVersionKind::gvk(group, version, kind))
        .await
        .with_context(|| format!("the API server does not serve {group}/{version} {kind}"))?;
    let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
        let namespace = doc["metadata"]["namespace"].as_str().unwrap_or(namespace);
        Api::namespaced_with(client.clone(), namespace, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    };
    let name = doc["metadata"]["name"].as_str().context("name")?;
    let obj: DynamicObject = serde_json::from_value(doc.clone())?;
    let params = PatchParams {
        dry_run: true,
        ..PatchParams::apply("stagecoach-e2e").force()
    };
    api.patch(name, &params, &Patch::Apply(&obj))
        .await
        .with_context(|| format!("the API server rejected {kind} {name}"))?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test control plane and helm: run `cargo xtask test`"]
async fn chart_renders_and_the_api_server_accepts_it() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "chart").await?;
    let watch_one = format!("watchNamespace={}", ns.name);
    for values in [
        vec![],
        vec!["--set", watch_one.as_str(), "--set", "logFormat=text"],
    ] {
        let docs = render(&ns.name, &values)?;
        let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        for expected in [
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "Deployment",
            "Service",
            "ValidatingAdmissionPolicy",
        ] {
            assert!(
                kinds.contains(&expected),
                "the chart renders a {expected}; it rendered {kinds:?}"
            );
        }
        for doc in &docs {
            dry_run_apply(&client, doc, &ns.name).await?;
        }
    }
    ns.delete().await
}

#[tokio::test]
#[ignore = "needs the test control plane and helm: run `cargo xtask test`"]
async fn chart_rbac_is_least_privilege() -> Result<()> {
    let docs = render("stagecoach-system", &[])?;
    let role = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole")
        .context("no ClusterRole")?;
    let rules = role["rules"].as_array().context("rules")?;
    for rule in rules {
        for field in ["apiGroups", "resources", "verbs"] {
            let values = rule[field].as_array().context("rule field")?;
            assert!(
                !values.iter().any(|v| v == "*"),
                "no wildcard in {field}: {rule}"
            );
        }
        let verbs: Vec<&str> = rule["verbs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            !verbs.contains(&"delete")
                || rule["resources"] == serde_json::json!(["deployments"])
                || rule["resources"] == serde_json::json!(["configmaps"]),
            "delete only on Deployments (canaries) and ConfigMaps (flag sets): {rule}"
        );
    }
    // The operator reads its resources and writes only their status.
    let writes_spec = rules.iter().any(|r| {
        r["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|x| x == "releases" || x == "featuretoggles")
            && r["verbs"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|v| v == "update" || v == "patch" || v == "create")
    });
    assert!(
        !writes_spec,
        "the operator never writes a Release's or FeatureToggle's spec"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test control plane and helm: run `cargo xtask test`"]
async fn operator_pod_meets_the_restricted_pod_security_profile() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "psa").await?;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})),
        )
        .await?;
    let docs = render(&ns.name, &[])?;
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .context("no Deployment")?;
    let pods: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns.name,
        &kube::core::ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "Pod")),
    );
    let template = &deployment["spec"]["template"];
    // The pod as the Deployment would create it; only the ServiceAccount is the
    // namespace's default one, since the probe does not install the chart's.
    let mut spec = template["spec"].clone();
    spec["serviceAccountName"] = json!("default");
    let pod: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "stagecoach-psa-probe", "labels": template["metadata"]["labels"]},
        "spec": spec
    }))?;
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    pods.create(&params, &pod)
        .await
        .context("the restricted profile rejected the operator's pod")?;

    // The check can fail: a privileged variant of the same pod is refused.
    let mut bad = spec.clone();
    bad["containers"][0]["securityContext"] = json!({"privileged": true});
    let bad_pod: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "stagecoach-psa-bad"}, "spec": bad
    }))?;
    match pods.create(&params, &bad_pod).await {
        Err(kube::Error::Api(e)) if e.message.contains("violates PodSecurity") => {}
        other => bail!("a privileged pod should violate the restricted profile, got {other:?}"),
    }
    ns.delete().await
}
