//! The Helm chart renders with a real helm and everything it renders, the optional parts
//! (ServiceMonitor, PodMonitor, NetworkPolicy, Grafana dashboard) included, is accepted by
//! the real API server (server-side dry-run); the operator's pod passes the Pod Security
//! "restricted" profile, enforced by the API server's admission; the operator does its
//! work (a release rolled out, a toggle's flag set written, Events) with nothing but the
//! chart's ClusterRole; and the chart's roles for people (approver per stage, override,
//! release manager, release author, pipeline owner) grant exactly what the admission
//! policy for Approvals checks.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::semicolon_if_nothing_returned
)] // test tables

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
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
const ALL_OPTIONAL_PARTS: [&str; 20] = [
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
    "--set",
    "sentry.dsnSecret.name=stagecoach-sentry,sentry.releaseMarkers=true",
];

/// The operator container's environment variable `name`, as rendered.
fn container_env<'a>(docs: &'a [Value], name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == "Deployment")?["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

/// Sentry is configured only when a DSN or its Secret is given, and then completely.
fn check_sentry_env(docs: &[Value], values: &[&str]) -> Result<()> {
    let dsn = container_env(docs, "SENTRY_DSN");
    let markers = container_env(docs, "STAGECOACH_SENTRY_RELEASE_MARKERS");
    if values.iter().any(|v| v.contains("sentry.dsnSecret.name=")) {
        ensure!(
            dsn.is_some_and(|e| e["valueFrom"]["secretKeyRef"]
                == json!({"name": "stagecoach-sentry", "key": "dsn"})),
            "SENTRY_DSN from the Secret: {dsn:?}"
        );
        ensure!(markers.is_some_and(|e| e["value"] == "true"), "{markers:?}");
    } else if values.iter().any(|v| v.starts_with("sentry.dsn=")) {
        ensure!(
            dsn.is_some_and(|e| e["value"] == SENTRY_DSN),
            "SENTRY_DSN from the value: {dsn:?}"
        );
        ensure!(
            container_env(docs, "SENTRY_ENVIRONMENT").is_some_and(|e| e["value"] == "staging"),
            "SENTRY_ENVIRONMENT from sentry.environment"
        );
        ensure!(
            markers.is_some_and(|e| e["value"] == "false"),
            "{markers:?}"
        );
    } else {
        ensure!(
            dsn.is_none() && markers.is_none(),
            "no Sentry without a DSN"
        );
    }
    Ok(())
}

/// A DSN for the chart test (never called).
const SENTRY_DSN: &str = "https://key@sentry.example.com/7";

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

/// The operator's ClusterRole (the chart also renders ClusterRoles for people).
fn operator_role(docs: &[Value]) -> Result<&Value> {
    docs.iter()
        .find(|d| {
            d["kind"] == "ClusterRole"
                && d["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
        })
        .context("no ClusterRole for the operator")
}

/// The ClusterRoles for people, by name, sorted.
fn user_roles(docs: &[Value]) -> Vec<&str> {
    let mut names: Vec<&str> = docs
        .iter()
        .filter(|d| {
            d["kind"] == "ClusterRole"
                && d["metadata"]["labels"]["app.kubernetes.io/component"] == "user-rbac"
        })
        .filter_map(|d| d["metadata"]["name"].as_str())
        .collect();
    names.sort_unstable();
    names
}

/// The ClusterRoles for people with the default values, release `stagecoach`.
const DEFAULT_USER_ROLES: [&str; 8] = [
    "stagecoach-approve-demo",
    "stagecoach-approve-dev",
    "stagecoach-approve-prod",
    "stagecoach-approve-qa",
    "stagecoach-override-prod",
    "stagecoach-pipeline-owner",
    "stagecoach-release-author",
    "stagecoach-release-manager",
];

/// Other stages, overrides for two of them, aggregated into the release manager.
const OTHER_STAGES: [&str; 6] = [
    "--set-json",
    r#"approvals.stages=["staging","production","eu-west-1"]"#,
    "--set-json",
    r#"approvals.overrideStages=["staging","production"]"#,
    "--set",
    "approvals.releaseManagerOverrides=true",
];

/// What the people's roles must say with [`OTHER_STAGES`], beyond being accepted.
fn check_other_stages(docs: &[Value]) -> Result<()> {
    let role = |name: &str| {
        docs.iter()
            .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == name)
            .with_context(|| format!("no ClusterRole {name}"))
    };
    let approve = role("stagecoach-approve-eu-west-1")?;
    assert_eq!(
        approve["rules"][0],
        json!({"apiGroups": ["stagecoach.dev"], "resources": ["releases/eu-west-1"], "verbs": ["approve"]}),
        "{approve}"
    );
    let manager = role("stagecoach-release-manager")?;
    let selector = &manager["aggregationRule"]["clusterRoleSelectors"][0]["matchLabels"];
    assert!(
        manager.get("rules").is_none(),
        "the aggregation controller owns the rules: {manager}"
    );
    for name in [
        "stagecoach-approve-staging",
        "stagecoach-approve-production",
        "stagecoach-approve-eu-west-1",
        "stagecoach-override-staging",
        "stagecoach-override-production",
    ] {
        let labels = &role(name)?["metadata"]["labels"];
        let selected = selector
            .as_object()
            .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| &labels[k] == v));
        assert!(
            selected,
            "{name} aggregates into the release manager: {labels}"
        );
    }
    let overriding = role("stagecoach-override-production")?;
    assert_eq!(
        overriding["rules"][0],
        json!({"apiGroups": ["stagecoach.dev"], "resources": ["releases/production"], "verbs": ["override"]})
    );
    Ok(())
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
    let sentry_dsn = format!("sentry.dsn={SENTRY_DSN}");
    let other_roles = [
        "stagecoach-approve-eu-west-1",
        "stagecoach-approve-production",
        "stagecoach-approve-staging",
        "stagecoach-override-production",
        "stagecoach-override-staging",
        "stagecoach-pipeline-owner",
        "stagecoach-release-author",
        "stagecoach-release-manager",
    ];
    // (values, whether they switch the optional parts on, the ClusterRoles for people)
    for (values, optional, people) in [
        (vec![], false, DEFAULT_USER_ROLES.as_slice()),
        (
            vec!["--set", watch_one.as_str(), "--set", "logFormat=text"],
            false,
            DEFAULT_USER_ROLES.as_slice(),
        ),
        (
            ALL_OPTIONAL_PARTS.to_vec(),
            true,
            DEFAULT_USER_ROLES.as_slice(),
        ),
        (
            vec![
                "--set",
                sentry_dsn.as_str(),
                "--set",
                "sentry.environment=staging",
            ],
            false,
            DEFAULT_USER_ROLES.as_slice(),
        ),
        (OTHER_STAGES.to_vec(), false, other_roles.as_slice()),
        (vec!["--set", "rbac.userRoles=false"], false, &[]),
    ] {
        let docs = render(&ns.name, &values)?;
        assert_eq!(
            user_roles(&docs),
            people,
            "the ClusterRoles for people follow rbac.userRoles and approvals; values {values:?}"
        );
        if values == OTHER_STAGES {
            check_other_stages(&docs)?;
        }
        // The CRDs, the operator's role and the Approval policies are there whatever the
        // values.
        let mut crds: Vec<&str> = docs
            .iter()
            .filter(|d| d["kind"] == "CustomResourceDefinition")
            .filter_map(|d| d["metadata"]["name"].as_str())
            .collect();
        crds.sort_unstable();
        assert_eq!(
            crds,
            [
                "approvals.stagecoach.dev",
                "featuretoggles.stagecoach.dev",
                "pipelines.stagecoach.dev",
                "releases.stagecoach.dev"
            ]
        );
        operator_role(&docs)?;
        for kind in [
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ] {
            let names: Vec<&str> = docs
                .iter()
                .filter(|d| d["kind"] == kind)
                .filter_map(|d| d["metadata"]["name"].as_str())
                .collect();
            for policy in ["stagecoach-approval-identity", "stagecoach-approval-stage"] {
                assert!(names.contains(&policy), "no {kind} {policy}: {names:?}");
            }
        }
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
        check_sentry_env(&docs, &values)?;
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
    // A stage name that no Pipeline could have fails the rendering, naming it.
    let bad = render(
        &ns.name,
        &["--set-json", r#"approvals.stages=["prod","Prod EU"]"#],
    )
    .err()
    .context("a stage name with capitals and a space was rendered")?;
    assert!(
        format!("{bad:#}").contains("stage Prod EU is not a stage name"),
        "{bad:#}"
    );
    ns.delete().await
}

#[tokio::test]
#[ignore = "needs the test control plane and helm: run `cargo xtask test`"]
async fn chart_rbac_is_least_privilege() -> Result<()> {
    let docs = render("stagecoach-system", &[])?;
    let role = operator_role(&docs)?;
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
                || rule["resources"] == serde_json::json!(["controllerrevisions"])
                || rule["resources"] == serde_json::json!(["jobs"]),
            "delete only on Deployments (canaries), ConfigMaps (flag sets), \
             ControllerRevisions (a deleted Release's records) and Jobs (job gates): {rule}"
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
    // Pipelines and Approvals belong to people: read (caches), never written; the
    // Pipeline's status is the operator's.
    for resource in ["pipelines", "approvals"] {
        for verb in ["list", "watch"] {
            assert!(writes(resource, verb), "{resource}: {verb} for the cache");
        }
        for verb in ["create", "update", "patch", "delete"] {
            assert!(!writes(resource, verb), "{resource}: {verb}");
        }
    }
    assert!(
        writes("pipelines/status", "patch"),
        "the Pipeline's status needs patch on pipelines/status"
    );
    // No approval rights of its own: the operator counts Approvals, it never makes one.
    assert!(
        !rules.iter().any(|r| r["verbs"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|v| v == "approve" || v == "override")),
        "no approve or override verb for the operator"
    );
    // The roles for people: no wildcards, no status writes; an author cannot approve
    // or change a Pipeline.
    for role in docs.iter().filter(|d| {
        d["kind"] == "ClusterRole"
            && d["metadata"]["labels"]["app.kubernetes.io/component"] == "user-rbac"
    }) {
        for rule in role["rules"].as_array().into_iter().flatten() {
            for field in ["apiGroups", "resources", "verbs"] {
                assert!(
                    !rule[field]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|v| v == "*"),
                    "no wildcard in {field}: {role}"
                );
            }
            assert!(
                !rule["resources"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|r| r.as_str().is_some_and(|r| r.ends_with("/status"))),
                "status is the operator's: {role}"
            );
        }
    }
    let author = docs
        .iter()
        .find(|d| d["metadata"]["name"] == "stagecoach-release-author")
        .context("no release-author role")?;
    for rule in author["rules"].as_array().context("rules")? {
        let has = |field: &str, value: &str| {
            rule[field]
                .as_array()
                .into_iter()
                .flatten()
                .any(|v| v == value)
        };
        assert!(
            !has("verbs", "approve") && !has("verbs", "override"),
            "{rule}"
        );
        if has("resources", "pipelines") || has("resources", "approvals") {
            assert_eq!(rule["verbs"], json!(["get", "list", "watch"]), "{rule}");
        }
    }
    // Secrets: read only (the OFREP token watch; the one Secret a receiver or a gate
    // names), never a write.
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
                             "verbs": ["get", "list", "watch"]})
        ],
        "secrets: read only, in a rule of their own"
    );
    // Job gates: Jobs created, read and deleted (never changed), their pods' logs read.
    assert!(writes("jobs", "create") && writes("jobs", "delete") && writes("jobs", "get"));
    for verb in ["update", "patch"] {
        assert!(!writes("jobs", verb), "jobs: {verb}");
    }
    assert!(writes("pods/log", "get"), "job gates read their pod's log");
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
    let mut role = operator_role(&docs)?.clone();
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

    // A release rolled out to dev past two gates (a Job; an endpoint asked with a header
    // from a Secret in dev), and a toggle served there.
    let endpoint = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint_url = format!("http://{}/healthy", endpoint.local_addr()?);
    let endpoint = tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/healthy",
            axum::routing::get(|headers: axum::http::HeaderMap| async move {
                if headers.get("x-token").is_some_and(|v| v == "t0ken") {
                    axum::http::StatusCode::OK
                } else {
                    axum::http::StatusCode::UNAUTHORIZED
                }
            }),
        );
        let _ = axum::serve(endpoint, app).await;
    });
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &dev)
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "endpoint-token"}, "stringData": {"token": "t0ken"}}),
            )?,
        )
        .await?;
    let gates = json!([
        {"name": "smoke", "interval": "1s", "job": {"image": "example/api-smoke:1.1.0"}},
        {"name": "endpoint", "interval": "1s", "http": {"url": endpoint_url, "headers": [
            {"name": "X-Token", "secretRef": {"name": "endpoint-token", "key": "token"}}
        ]}},
    ]);
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
        &[json!({"name": "dev", "namespace": dev, "gates": gates})],
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

    // Deleting the Release removes its gate Jobs (list and delete).
    dynamic("Release")
        .delete("api-1.1.0", &kube::api::DeleteParams::default())
        .await?;
    eventually(Duration::from_secs(30), || async {
        let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), &dev);
        let left = jobs
            .list(
                &kube::api::ListParams::default().labels("app.kubernetes.io/managed-by=stagecoach"),
            )
            .await?
            .items
            .into_iter()
            .filter(|j| j.metadata.deletion_timestamp.is_none())
            .count();
        Ok((left == 0).then_some(()))
    })
    .await
    .with_context(|| format!("gate Jobs left in {dev}; log:\n{}", operator.log_tail(30)))?;
    endpoint.abort();
    operator.stop().await?;
    roles
        .delete(&role_name, &kube::api::DeleteParams::default())
        .await?;
    bindings
        .delete(&role_name, &kube::api::DeleteParams::default())
        .await?;
    pipeline.delete().await
}

/// Whether `user` (in `groups`) may `verb` `resource[/subresource]` in `namespace`, as the
/// API server's authorizer answers a SubjectAccessReview.
async fn may(
    client: &kube::Client,
    (user, groups): (&str, &[&str]),
    verb: &str,
    resource: &str,
    namespace: &str,
) -> Result<bool> {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    let review: SubjectAccessReview = serde_json::from_value(json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {
            "user": user,
            "groups": groups,
            "resourceAttributes": {
                "group": "stagecoach.dev", "resource": resource, "subresource": subresource,
                "verb": verb, "namespace": namespace, "name": "web-1.0.0"
            }
        }
    }))?;
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .context("SubjectAccessReview")?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// A client that acts as `user` in `groups` (impersonation by the test's admin identity).
async fn client_as(user: &str, groups: &[&str]) -> Result<kube::Client> {
    let mut config = kube::Config::infer().await?;
    config.auth_info.impersonate = Some(user.to_owned());
    let mut groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
    groups.push("system:authenticated".to_owned());
    config.auth_info.impersonate_groups = Some(groups);
    Ok(kube::Client::try_from(config)?)
}

#[tokio::test]
#[ignore = "needs the test control plane and helm: run `cargo xtask test`"]
async fn chart_user_roles_grant_what_the_admission_policy_checks() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "roles").await?;
    let elsewhere = TestNamespace::create(&client, "roles-other").await?;
    let app = ns.name.as_str();

    // The chart's roles for people, named after this test's namespace (ClusterRoles are
    // cluster-wide and tests run side by side), created for real.
    let docs = render(app, &["--set", &format!("fullnameOverride={app}")])?;
    let cluster_roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(client.clone());
    let mut created = Vec::new();
    for doc in docs.iter().filter(|d| {
        d["kind"] == "ClusterRole"
            && d["metadata"]["labels"]["app.kubernetes.io/component"] == "user-rbac"
    }) {
        let mut doc = doc.clone();
        doc["metadata"]["labels"][E2E_LABEL] = json!("true");
        let name = doc["metadata"]["name"].as_str().context("name")?.to_owned();
        cluster_roles
            .create(&PostParams::default(), &serde_json::from_value(doc)?)
            .await
            .with_context(|| format!("creating ClusterRole {name}"))?;
        created.push(name);
    }
    // Plain RBAC in the application's namespace: a group approves prod, one person may
    // also override it, one is release manager, one writes releases, one owns the Pipeline.
    let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> =
        Api::namespaced(client.clone(), app);
    for (binding, role, subject) in [
        (
            "prod-approvers",
            "approve-prod",
            json!({"kind": "Group", "name": "prod-approvers"}),
        ),
        (
            "prod-override",
            "override-prod",
            json!({"kind": "User", "name": "olga"}),
        ),
        (
            "prod-override-approve",
            "approve-prod",
            json!({"kind": "User", "name": "olga"}),
        ),
        (
            "release-managers",
            "release-manager",
            json!({"kind": "User", "name": "rita"}),
        ),
        (
            "authors",
            "release-author",
            json!({"kind": "User", "name": "aaron"}),
        ),
        (
            "pipeline-owners",
            "pipeline-owner",
            json!({"kind": "User", "name": "pia"}),
        ),
    ] {
        let mut subject = subject;
        subject["apiGroup"] = json!("rbac.authorization.k8s.io");
        bindings
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": binding},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                "name": format!("{app}-{role}")},
                    "subjects": [subject]
                }))?,
            )
            .await
            .with_context(|| format!("creating RoleBinding {binding}"))?;
    }

    // What the authorizer says, as the admission policy asks it (the release manager's
    // rules come from the aggregation controller, so this may take a moment).
    let paula: (&str, &[&str]) = ("paula", &["prod-approvers"]);
    let olga: (&str, &[&str]) = ("olga", &[]);
    let rita: (&str, &[&str]) = ("rita", &[]);
    let aaron: (&str, &[&str]) = ("aaron", &[]);
    let pia: (&str, &[&str]) = ("pia", &[]);
    let other = elsewhere.name.as_str();
    let cases = [
        (paula, "approve", "releases/prod", app, true),
        (paula, "create", "approvals", app, true),
        (paula, "get", "releases", app, true),
        (paula, "approve", "releases/dev", app, false),
        (paula, "override", "releases/prod", app, false),
        (paula, "approve", "releases/prod", other, false),
        (paula, "update", "pipelines", app, false),
        (olga, "override", "releases/prod", app, true),
        (olga, "approve", "releases/prod", app, true),
        (olga, "override", "releases/qa", app, false),
        (rita, "approve", "releases/dev", app, true),
        (rita, "approve", "releases/qa", app, true),
        (rita, "approve", "releases/demo", app, true),
        (rita, "approve", "releases/prod", app, true),
        (rita, "create", "approvals", app, true),
        (rita, "override", "releases/prod", app, false),
        (rita, "update", "pipelines", app, false),
        (aaron, "create", "releases", app, true),
        (aaron, "patch", "featuretoggles", app, true),
        (aaron, "get", "pipelines", app, true),
        (aaron, "update", "pipelines", app, false),
        (aaron, "create", "approvals", app, false),
        (aaron, "approve", "releases/prod", app, false),
        (aaron, "patch", "releases/status", app, false),
        (pia, "create", "pipelines", app, true),
        (pia, "update", "pipelines", app, true),
        (pia, "create", "releases", app, false),
        (pia, "approve", "releases/prod", app, false),
    ];
    eventually(Duration::from_secs(30), || async {
        let mut wrong = Vec::new();
        for ((user, groups), verb, resource, namespace, allowed) in cases {
            if may(&client, (user, groups), verb, resource, namespace).await? != allowed {
                wrong.push(format!(
                    "{user} {} {verb} {resource} in {namespace}",
                    if allowed { "should" } else { "should not" }
                ));
            }
        }
        if wrong.is_empty() {
            Ok(Some(()))
        } else {
            bail!("{}", wrong.join("; "))
        }
    })
    .await
    .context("the chart's roles grant what they say")?;

    // And the admission policy agrees: a release at prod's door (its status as the
    // operator would write it), an approver of prod admitted, the same person refused
    // for dev with the policy's message, a release author refused by RBAC.
    let releases = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        app,
        &kube::core::ApiResource::from_gvk(&GroupVersionKind::gvk(
            "stagecoach.dev",
            "v1alpha1",
            "Release",
        )),
    );
    let release = release_manifest(
        "web-1.0.0",
        "web",
        "1.0.0",
        "example/web:1.0.0",
        &[json!({"name": "dev"}), json!({"name": "prod"})],
    );
    releases
        .create(&PostParams::default(), &serde_json::from_value(release)?)
        .await?;
    let digest = format!("sha256:{}", "ab".repeat(32));
    releases
        .patch_status(
            "web-1.0.0",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "phase": "AwaitingApproval", "currentStage": "prod", "digest": digest,
                "stages": [
                    {"name": "dev", "namespace": "web-dev", "phase": "Pending"},
                    {"name": "prod", "namespace": "web-prod", "phase": "Pending"}
                ]
            }})),
        )
        .await?;
    let approval = |user: &str, stage: &str| -> Result<stagecoach_api::Approval> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "stagecoach.dev/v1alpha1", "kind": "Approval",
            "metadata": {"generateName": format!("web-1.0.0-{stage}-"), "namespace": app},
            "spec": {"release": "web-1.0.0", "stage": stage, "decision": "Approve",
                     "approver": user, "releaseDigest": digest}
        }))?)
    };
    let as_paula = client_as("paula", &["prod-approvers"]).await?;
    Api::<stagecoach_api::Approval>::namespaced(as_paula.clone(), app)
        .create(&PostParams::default(), &approval("paula", "prod")?)
        .await
        .context("an approver of prod (the chart's role, bound to her group) approves prod")?;
    match Api::<stagecoach_api::Approval>::namespaced(as_paula, app)
        .create(&PostParams::default(), &approval("paula", "dev")?)
        .await
    {
        Err(kube::Error::Api(e))
            if e.message
                .contains("paula may not approve or reject stage dev")
                && e.message.contains("releases/dev") => {}
        other => {
            bail!("an approver of prod approving dev should be refused by the policy: {other:?}")
        }
    }
    let as_aaron = client_as("aaron", &[]).await?;
    match Api::<stagecoach_api::Approval>::namespaced(as_aaron, app)
        .create(&PostParams::default(), &approval("aaron", "prod")?)
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        other => bail!("a release author should not be able to approve: {other:?}"),
    }

    for name in created {
        cluster_roles
            .delete(&name, &kube::api::DeleteParams::default())
            .await?;
    }
    elsewhere.delete().await?;
    ns.delete().await
}
