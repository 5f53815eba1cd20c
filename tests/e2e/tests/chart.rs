//! The Helm chart renders with a real helm and everything it renders, the optional parts
//! (ServiceMonitor, PodMonitor, NetworkPolicy, Grafana dashboard) included, is accepted by
//! the real API server (server-side dry-run); the operator's pod passes the Pod Security
//! "restricted" profile, enforced by the API server's admission; and the operator does
//! its work (a release rolled out, a toggle's flag set written, Events) with nothing but
//! the chart's ClusterRole.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::semicolon_if_nothing_returned
)] // test tables

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};
use serde_json::{Value, json};
use stagecoach_e2e::{
    E2E_LABEL, Operator, Pipeline, TestNamespace, apply, client, eventually, install_crds,
    read_manifests, release_manifest, repo_root,
};

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

/// The prometheus-operator CRDs (ServiceMonitor, PodMonitor) vendored in
/// `tests/e2e/fixtures/prometheus-operator/`, server-side applied (idempotent), waited for
/// until Established.
async fn install_monitoring_crds(client: &kube::Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let dir = repo_root().join("tests/e2e/fixtures/prometheus-operator");
    for file in [
        "monitoring.coreos.com_servicemonitors.yaml",
        "monitoring.coreos.com_podmonitors.yaml",
    ] {
        for doc in read_manifests(&dir.join(file))? {
            let name = doc["metadata"]["name"]
                .as_str()
                .context("CRD name")?
                .to_owned();
            apply(&api, doc).await?;
            eventually(Duration::from_secs(30), || async {
                let crd = api.get(&name).await?;
                Ok(crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(()))
            })
            .await
            .with_context(|| format!("CRD {name} never became Established"))?;
        }
    }
    Ok(())
}

/// Every optional part of the chart switched on, with the lists that have their own
/// template branches filled in.
const ALL_OPTIONAL_PARTS: [&str; 18] = [
    "--set",
    "serviceMonitor.enabled=true,podMonitor.enabled=true,networkPolicy.enabled=true,dashboard.enabled=true",
    "--set",
    "serviceMonitor.labels.release=prometheus,podMonitor.labels.release=prometheus,dashboard.annotations.grafana_folder=Stagecoach",
    "--set-json",
    r#"serviceMonitor.metricRelabelings=[{"sourceLabels":["__name__"],"regex":"go_.*","action":"drop"}]"#,
    "--set-json",
    r#"podMonitor.relabelings=[{"sourceLabels":["__meta_kubernetes_pod_node_name"],"targetLabel":"node"}]"#,
    "--set-json",
    r#"networkPolicy.extraEgress=[{"to":[{"ipBlock":{"cidr":"10.20.0.0/16"}}],"ports":[{"port":443,"protocol":"TCP"}]}]"#,
    "--set-json",
    r#"networkPolicy.extraIngress=[{"from":[{"podSelector":{"matchLabels":{"app":"debug"}}}],"ports":[{"port":8080,"protocol":"TCP"}]}]"#,
    "--set-json",
    r#"networkPolicy.metrics.podSelector={"matchLabels":{"app.kubernetes.io/name":"prometheus"}}"#,
    "--set-json",
    r#"ofrep.corsOrigins=["https://app.example.com"]"#,
    "--set",
    "ofrep.rateLimit=50",
];

/// The optional parts in a rendering: the monitors, the NetworkPolicy and the dashboard
/// ConfigMap (the one labelled for Grafana's sidecar).
fn optional_parts(docs: &[Value]) -> Vec<&str> {
    docs.iter()
        .filter_map(|d| match d["kind"].as_str()? {
            kind @ ("ServiceMonitor" | "PodMonitor" | "NetworkPolicy") => Some(kind),
            "ConfigMap" if d["metadata"]["labels"]["grafana_dashboard"].is_string() => {
                Some("dashboard ConfigMap")
            }
            _ => None,
        })
        .collect()
}

/// What the optional parts must say, beyond being accepted by the API server.
fn check_optional_parts(docs: &[Value]) -> Result<()> {
    let find = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .with_context(|| format!("no {kind} rendered"))
    };
    let pod_labels = &find("Deployment")?["spec"]["template"]["metadata"]["labels"];
    let selects_the_operator = |selector: &Value| {
        selector
            .as_object()
            .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| &pod_labels[k] == v))
    };
    // Both monitors scrape the operator's pods on the admin port.
    let service_monitor = find("ServiceMonitor")?;
    assert_eq!(service_monitor["spec"]["endpoints"][0]["port"], "admin");
    assert_eq!(
        service_monitor["metadata"]["labels"]["release"],
        "prometheus"
    );
    let pod_monitor = find("PodMonitor")?;
    assert!(
        selects_the_operator(&pod_monitor["spec"]["selector"]["matchLabels"]),
        "{pod_monitor}"
    );
    assert_eq!(
        pod_monitor["spec"]["podMetricsEndpoints"][0]["port"], "admin",
        "the PodMonitor scrapes the container port named admin"
    );

    // The NetworkPolicy: the operator's pods; OFREP only from labelled namespaces.
    let policy = find("NetworkPolicy")?;
    let spec = &policy["spec"];
    assert!(
        selects_the_operator(&spec["podSelector"]["matchLabels"]),
        "{policy}"
    );
    assert_eq!(spec["policyTypes"], json!(["Ingress", "Egress"]));
    let ingress = spec["ingress"].as_array().context("ingress")?;
    let ofrep = ingress
        .iter()
        .find(|r| r["ports"] == json!([{"port": 8081, "protocol": "TCP"}]))
        .context("no ingress rule for the OFREP port")?;
    assert_eq!(
        ofrep["from"],
        json!([{"namespaceSelector": {"matchLabels": {"stagecoach.dev/ofrep-client": "true"}}}]),
        "OFREP only from the labelled namespaces"
    );
    assert!(
        ingress
            .iter()
            .all(|r| r["ports"].as_array().is_some_and(|p| !p.is_empty())),
        "every ingress rule names its ports: {policy}"
    );
    let egress = spec["egress"].as_array().context("egress")?;
    let egress_ports = |rule: &Value| -> Vec<i64> {
        rule["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["port"].as_i64())
            .collect()
    };
    assert!(
        egress.iter().any(|r| egress_ports(r) == [53, 53]),
        "DNS allowed: {policy}"
    );
    assert!(
        egress.iter().any(|r| egress_ports(r) == [443, 6443]),
        "the API server allowed: {policy}"
    );
    assert!(
        egress
            .iter()
            .any(|r| r["to"][0]["ipBlock"]["cidr"] == "10.20.0.0/16"),
        "networkPolicy.extraEgress rendered: {policy}"
    );

    // The dashboard: the chart's JSON file, labelled for Grafana's sidecar.
    let config_map = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1")
        .context("no ConfigMap labelled grafana_dashboard: \"1\"")?;
    assert_eq!(config_map["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(
        config_map["metadata"]["annotations"]["grafana_folder"],
        "Stagecoach"
    );
    let shipped: Value = serde_json::from_str(
        config_map["data"]["stagecoach.json"]
            .as_str()
            .context("no stagecoach.json in the dashboard ConfigMap")?,
    )
    .context("the dashboard in the ConfigMap is not valid JSON")?;
    let file: Value = serde_json::from_str(&std::fs::read_to_string(
        repo_root().join("charts/stagecoach/dashboards/stagecoach.json"),
    )?)?;
    assert_eq!(
        shipped, file,
        "the ConfigMap carries the chart's dashboard file"
    );

    // OFREP's CORS origins and rate limit reach the operator's command line.
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .context("no Deployment")?;
    let args: Vec<&str> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let after = |flag: &str| {
        args.iter()
            .position(|a| *a == flag)
            .and_then(|i| args.get(i + 1).copied())
    };
    assert_eq!(
        after("--ofrep-cors-origin"),
        Some("https://app.example.com"),
        "{args:?}"
    );
    assert_eq!(after("--ofrep-rate-limit"), Some("50"), "{args:?}");
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test control plane and helm: run `cargo xtask test`"]
async fn chart_renders_and_the_api_server_accepts_it() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    install_monitoring_crds(&client).await?;
    let ns = TestNamespace::create(&client, "chart").await?;
    let watch_one = format!("watchNamespace={}", ns.name);
    // (values, whether they switch the optional parts on)
    for (values, optional) in [
        (vec![], false),
        (
            vec!["--set", watch_one.as_str(), "--set", "logFormat=text"],
            false,
        ),
        (ALL_OPTIONAL_PARTS.to_vec(), true),
    ] {
        let docs = render(&ns.name, &values)?;
        let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        let expected: &[&str] = if optional {
            &[
                "NetworkPolicy",
                "PodMonitor",
                "ServiceMonitor",
                "dashboard ConfigMap",
            ]
        } else {
            &[]
        };
        let mut parts = optional_parts(&docs);
        parts.sort_unstable();
        assert_eq!(
            parts, expected,
            "the optional parts are rendered when enabled and only then; values {values:?}"
        );
        if optional {
            check_optional_parts(&docs)?;
        }
        for expected in [
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "Deployment",
            "Service",
            "ValidatingAdmissionPolicy",
            // Leader election: its Lease Role, and a PDB for the two replicas.
            "Role",
            "RoleBinding",
            "PodDisruptionBudget",
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
                || rule["resources"] == serde_json::json!(["configmaps"])
                || rule["resources"] == serde_json::json!(["controllerrevisions"]),
            "delete only on Deployments (canaries), ConfigMaps (flag sets) and \
             ControllerRevisions (a deleted Release's records): {rule}"
        );
    }
    // The operator reads its resources and writes only their status, plus (patch on
    // Releases alone) its finalizer: server-side apply of metadata.finalizers.
    let writes = |resource: &str, verb: &str| {
        rules.iter().any(|r| {
            r["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|x| x == resource)
                && r["verbs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|v| v == verb)
        })
    };
    for verb in ["update", "create"] {
        assert!(!writes("releases", verb), "releases: {verb}");
    }
    for verb in ["update", "create", "patch"] {
        assert!(!writes("featuretoggles", verb), "featuretoggles: {verb}");
    }
    assert!(
        writes("releases", "patch"),
        "the Release finalizer needs patch on releases"
    );
    // Secrets: only the OFREP token watch (list + watch, label-selected), never a write
    // and no get.
    let secret_rules: Vec<&Value> = rules
        .iter()
        .filter(|r| {
            r["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|x| x == "secrets")
        })
        .collect();
    assert_eq!(
        secret_rules,
        [
            &serde_json::json!({"apiGroups": [""], "resources": ["secrets"],
                             "verbs": ["list", "watch"]})
        ],
        "secrets: list and watch only, in a rule of their own"
    );
    // Leases only in the release namespace (a Role, not the ClusterRole), and only what
    // leader election needs: read, create once, update with a resourceVersion.
    assert!(
        !rules.iter().any(|r| r["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|x| x == "leases")),
        "no Lease rule in the ClusterRole"
    );
    let lease_role = docs
        .iter()
        .find(|d| d["kind"] == "Role")
        .context("no leader-election Role")?;
    assert_eq!(lease_role["metadata"]["namespace"], "stagecoach-system");
    assert_eq!(
        lease_role["rules"],
        serde_json::json!([{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                            "verbs": ["get", "create", "update"]}])
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

/// A kubeconfig for `namespace/service_account`: the test cluster's server and CA, with a
/// token from the TokenRequest API.
async fn service_account_kubeconfig(
    client: &kube::Client,
    namespace: &str,
    service_account: &str,
) -> Result<PathBuf> {
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), namespace);
    let request: Value = accounts
        .create_subresource(
            "token",
            service_account,
            &PostParams::default(),
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                    "spec": {"expirationSeconds": 3600}}),
        )
        .await
        .context("requesting a ServiceAccount token")?;
    let token = request["status"]["token"]
        .as_str()
        .context("no token in the TokenRequest")?;
    let admin = std::env::var_os("KUBECONFIG").context("KUBECONFIG is not set")?;
    let mut config: Value = serde_yaml::from_str(&std::fs::read_to_string(&admin)?)?;
    for user in config["users"].as_array_mut().context("kubeconfig users")? {
        user["user"] = json!({"token": token});
    }
    let path = std::env::temp_dir().join(format!("stagecoach-e2e-{namespace}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&config)?)?;
    Ok(path)
}

#[tokio::test]
#[ignore = "needs the test control plane and helm: run `cargo xtask test`"]
async fn the_operator_works_with_only_the_charts_rbac() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let pipeline = Pipeline::create(&client, "rbac", &[("dev", 1)], "example/api:1.0.0").await?;
    let ns = pipeline.home.name.clone();
    let dev = pipeline.namespace("dev").to_owned();

    // The chart's ClusterRole, under a name of this test, bound to a ServiceAccount.
    let docs = render(&ns, &[])?;
    let mut role = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole")
        .cloned()
        .context("no ClusterRole")?;
    let role_name = format!("{ns}-operator");
    role["metadata"] = json!({"name": role_name, "labels": {E2E_LABEL: "true"}});
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(client.clone());
    roles
        .create(&PostParams::default(), &serde_json::from_value(role)?)
        .await?;
    let bindings: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(client.clone());
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": role_name, "labels": {E2E_LABEL: "true"}},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
                "subjects": [{"kind": "ServiceAccount", "name": "stagecoach", "namespace": ns}]
            }))?,
        )
        .await?;
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), &ns);
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "stagecoach"}}))?,
        )
        .await?;
    // The chart's leader-election Role (Leases in the operator's namespace, here `ns`,
    // where the operator's Lease is when it watches `ns`), bound to the same account.
    let mut lease_role = docs
        .iter()
        .find(|d| d["kind"] == "Role")
        .cloned()
        .context("no leader-election Role")?;
    lease_role["metadata"] =
        json!({"name": role_name, "namespace": ns, "labels": {E2E_LABEL: "true"}});
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &serde_json::from_value(lease_role)?)
        .await?;
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": role_name, "labels": {E2E_LABEL: "true"}},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role_name},
                "subjects": [{"kind": "ServiceAccount", "name": "stagecoach", "namespace": ns}]
            }))?,
        )
        .await?;
    let kubeconfig = service_account_kubeconfig(&client, &ns, "stagecoach").await?;
    let kubeconfig = kubeconfig.display().to_string();
    let operator = Operator::start_with_env("rbac", &ns, &[("KUBECONFIG", &kubeconfig)])?;
    operator.wait_ready().await?;
    // Alone with its own Lease (in `ns`): it leads at once.
    eventually(Duration::from_secs(10), || async {
        Ok((operator.metric("stagecoach_leader", "").await? > 0.5).then_some(()))
    })
    .await
    .with_context(|| format!("the operator never led; log:\n{}", operator.log_tail(30)))?;

    // A release rolled out to dev, and a toggle served there.
    let dynamic = |kind: &str| {
        Api::<DynamicObject>::namespaced_with(
            client.clone(),
            &ns,
            &kube::core::ApiResource::from_gvk(&GroupVersionKind::gvk(
                "stagecoach.dev",
                "v1alpha1",
                kind,
            )),
        )
    };
    let release = release_manifest(
        "api-1.1.0",
        "api",
        "1.1.0",
        "example/api:1.1.0",
        &[json!({"name": "dev", "namespace": dev})],
    );
    dynamic("Release")
        .create(&PostParams::default(), &serde_json::from_value(release)?)
        .await?;
    let toggle = json!({
        "apiVersion": "stagecoach.dev/v1alpha1", "kind": "FeatureToggle",
        "metadata": {"name": "fast-path"},
        "spec": {"application": "api", "variants": {"on": true, "off": false},
                 "defaultVariant": "off", "stages": {"dev": {"defaultVariant": "on"}}}
    });
    dynamic("FeatureToggle")
        .create(&PostParams::default(), &serde_json::from_value(toggle)?)
        .await?;
    let phase = eventually(Duration::from_secs(90), || async {
        let r = dynamic("Release").get("api-1.1.0").await?;
        let phase = r.data["status"]["phase"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Ok(["EarlyLifeSupport", "Succeeded", "RolledBack", "Failed"]
            .contains(&phase.as_str())
            .then_some(phase))
    })
    .await
    .with_context(|| {
        format!(
            "the release never finished; log:\n{}",
            operator.log_tail(40)
        )
    })?;
    assert_eq!(phase, "EarlyLifeSupport", "log:\n{}", operator.log_tail(40));
    let ready = eventually(Duration::from_secs(30), || async {
        let t = dynamic("FeatureToggle").get("fast-path").await?;
        Ok(t.data["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready" && c["status"] == "True")
            .cloned())
    })
    .await
    .with_context(|| {
        format!(
            "the toggle was never Ready; log:\n{}",
            operator.log_tail(40)
        )
    })?;
    assert_eq!(ready["reason"], "Served");
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), &dev);
    let flags = config_maps.get("stagecoach-flags").await?;
    assert!(
        flags
            .data
            .unwrap_or_default()
            .get("flags.json")
            .is_some_and(|f| f.contains("fast-path")),
        "the flag set in {dev} holds the toggle"
    );
    let log = operator.log_text();
    assert!(
        !log.contains("forbidden"),
        "the operator was refused something it needs; add it to the chart's ClusterRole:\n{log}"
    );

    operator.stop().await?;
    roles
        .delete(&role_name, &kube::api::DeleteParams::default())
        .await?;
    bindings
        .delete(&role_name, &kube::api::DeleteParams::default())
        .await?;
    pipeline.delete().await
}
