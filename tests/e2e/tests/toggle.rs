//! FeatureToggles end to end: the real operator serves an application's toggles as one
//! flagd flag set per stage namespace (ConfigMap stagecoach-flags) and over OFREP, where a
//! real OpenFeature SDK (Python `openfeature-sdk` with `openfeature-provider-ofrep`, run
//! from the virtualenv `cargo xtask test` makes) gets the variants the engine computes;
//! bad input becomes conditions; a rule coupled to a Release turns on when the release
//! reaches demo and off again when it is rolled back there; the flag sets go away with the
//! application's last toggle.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::semicolon_if_nothing_returned,
    clippy::needless_pass_by_value,
    clippy::float_cmp
)] // test tables; json! arguments; counters compared exactly

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use stagecoach_api::release::StagePhase;
use stagecoach_api::{FeatureToggle, Release};
use stagecoach_e2e::{
    E2E_LABEL, Operator, TestNamespace, apply, client, eventually, install_crds, repo_root,
};
use stagecoach_engine::toggle::{
    ActiveCouplings, EvaluationContext, canonical_json, evaluate, render_flag_set,
};
use tokio::process::Command;

const APP: &str = "shop";
const RELEASE: &str = "shop-2.0.0";
const NEW_IMAGE: &str = "example/shop-api:2.0.0";
/// Pods of the test's Deployments become Ready in about a second (kwok's default is
/// 2-12 s): kwok reads these annotations as the stages' delays.
const FAST_PODS: [(&str, &str); 2] = [
    ("pod-create.stage.kwok.x-k8s.io/jitter-delay", "500ms"),
    ("pod-ready.stage.kwok.x-k8s.io/jitter-delay", "500ms"),
];

/// The Python interpreter with the OpenFeature SDK, from `cargo xtask test`.
fn python() -> Result<PathBuf> {
    let python = std::env::var_os("STAGECOACH_E2E_PYTHON")
        .map(PathBuf::from)
        .context(
            "STAGECOACH_E2E_PYTHON is not set: it names the Python interpreter of a virtualenv \
         with openfeature-sdk and openfeature-provider-ofrep; run the tests through \
         `cargo xtask test`, which makes target/e2e-venv and sets it",
        )?;
    if !python.exists() {
        bail!("STAGECOACH_E2E_PYTHON={} does not exist", python.display());
    }
    Ok(python)
}

/// Evaluates `cases` (see tests/e2e/ofrep_client.py) with the OpenFeature SDK against
/// the OFREP base URL; returns the SDK's details per case.
async fn sdk_evaluate(python: &PathBuf, base_url: &str, cases: &Value) -> Result<Vec<Value>> {
    let out = Command::new(python)
        .arg(repo_root().join("tests/e2e/ofrep_client.py"))
        .arg(base_url)
        .arg(cases.to_string())
        .output()
        .await
        .context("running tests/e2e/ofrep_client.py")?;
    if !out.status.success() {
        bail!(
            "the OpenFeature client failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let results: Vec<Value> = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("client output: {}", String::from_utf8_lossy(&out.stdout)))?;
    Ok(results)
}

/// The OFREP base URL of a stage of the test's application.
fn base_url(operator: &Operator, namespace: &str, stage: &str) -> String {
    format!(
        "{}/apps/{namespace}/{APP}/stages/{stage}",
        operator.ofrep_url()
    )
}

/// A stage namespace `<home>-<stage>` with the Deployment `api` (one container `api`,
/// one pod), labelled for cleanup.
async fn stage_namespace(client: &kube::Client, home: &str, stage: &str) -> Result<String> {
    let name = format!("{home}-{stage}");
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {E2E_LABEL: "true"}}
    }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), &name);
    eventually(Duration::from_secs(30), || {
        let accounts = accounts.clone();
        async move { Ok(accounts.get_opt("default").await?.map(|_| ())) }
    })
    .await?;
    let annotations: BTreeMap<&str, &str> = FAST_PODS.into_iter().collect();
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "api"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "api"}},
            "template": {
                "metadata": {"labels": {"app": "api"}, "annotations": annotations},
                "spec": {"containers": [{"name": "api", "image": "example/shop-api:1.0.0"}]}
            }
        }
    }))?;
    Api::<Deployment>::namespaced(client.clone(), &name)
        .create(&PostParams::default(), &deployment)
        .await?;
    Ok(name)
}

fn toggle(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "stagecoach.dev/v1alpha1", "kind": "FeatureToggle",
        "metadata": {"name": name}, "spec": spec
    })
}

fn ready_reason(toggle: &FeatureToggle) -> Option<(String, String)> {
    let status = toggle.status.as_ref()?;
    let ready = status.conditions.iter().find(|c| c.r#type == "Ready")?;
    Some((format!("{:?}", ready.status), ready.reason.clone()))
}

/// The flag sets the engine renders for every stage, from the toggles as the API server
/// has them (oldest first, as the operator orders them) and the given couplings.
async fn expected_flag_set(
    toggles: &Api<FeatureToggle>,
    stage: &str,
    couplings: &ActiveCouplings,
) -> Result<(String, String)> {
    let mut list = toggles.list(&ListParams::default()).await?.items;
    list.retain(|t| t.spec.application == APP);
    list.sort_by(|a, b| {
        let created = |t: &FeatureToggle| t.metadata.creation_timestamp.clone().map(|t| t.0);
        created(a)
            .cmp(&created(b))
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    let pairs: Vec<(&str, &stagecoach_api::FeatureToggleSpec)> =
        list.iter().map(|t| (t.flag_key(), &t.spec)).collect();
    let rendered = render_flag_set(&pairs, stage, couplings);
    Ok((canonical_json(&rendered.document), rendered.version))
}

/// Waits until the ConfigMap of `stage` holds exactly what the engine renders.
async fn wait_for_flag_set(
    client: &kube::Client,
    toggles: &Api<FeatureToggle>,
    home: &str,
    stage: &str,
    couplings: &ActiveCouplings,
    operator: &Operator,
) -> Result<String> {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &format!("{home}-{stage}"));
    let last = std::cell::RefCell::new(String::new());
    eventually(Duration::from_secs(60), || async {
        let (document, version) = expected_flag_set(toggles, stage, couplings).await?;
        let Some(cm) = config_maps.get_opt("stagecoach-flags").await? else {
            *last.borrow_mut() = "no ConfigMap".into();
            return Ok(None);
        };
        let data = cm.data.clone().unwrap_or_default();
        let labels = cm.metadata.labels.clone().unwrap_or_default();
        let annotations = cm.metadata.annotations.clone().unwrap_or_default();
        *last.borrow_mut() = data.get("flags.json").cloned().unwrap_or_default();
        let matches = data.get("flags.json") == Some(&document)
            && annotations.get("stagecoach.dev/flag-set-version") == Some(&version)
            && labels.get("stagecoach.dev/application").map(String::as_str) == Some(APP)
            && labels
                .get("stagecoach.dev/toggle-namespace")
                .map(String::as_str)
                == Some(home)
            && labels.get("stagecoach.dev/stage").map(String::as_str) == Some(stage)
            && labels
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str)
                == Some("stagecoach");
        Ok(matches.then_some(version))
    })
    .await
    .with_context(|| {
        format!(
            "the flag set of stage {stage} never matched the engine's; last seen: {}\n\
             operator log:\n{}",
            last.borrow(),
            operator.log_text()
        )
    })
}

/// The engine's answer for one flag in one stage, from the toggle as stored.
async fn engine_answer(
    toggles: &Api<FeatureToggle>,
    name: &str,
    stage: &str,
    client_id: &str,
    couplings: &ActiveCouplings,
) -> Result<(String, String)> {
    let toggle = toggles.get(name).await?;
    let context = EvaluationContext::default().attribute("clientId", client_id);
    let answer = evaluate(toggle.flag_key(), &toggle.spec, stage, &context, couplings)?;
    Ok((answer.variant, answer.reason.as_str().to_owned()))
}

async fn events_for(client: &kube::Client, namespace: &str, name: &str) -> Result<Vec<String>> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    Ok(events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| e.reason)
        .collect())
}

fn stage_phase(release: &Release, stage: &str) -> Option<StagePhase> {
    release
        .status
        .as_ref()?
        .stages
        .iter()
        .find(|s| s.name == stage)
        .map(|s| s.phase)
}

#[tokio::test]
#[ignore = "needs the test control plane: run cargo xtask test"]
async fn toggles_are_served_per_stage_and_follow_a_release() -> Result<()> {
    let python = python()?;
    let client = client().await?;
    install_crds(&client).await?;
    let home = TestNamespace::create(&client, "toggle").await?;
    let ns = home.name.clone();
    let mut stage_namespaces = Vec::new();
    for stage in ["dev", "qa", "demo"] {
        stage_namespaces.push(stage_namespace(&client, &ns, stage).await?);
    }
    let operator = Operator::start_ready("toggle", &ns).await?;
    let toggles: Api<FeatureToggle> = Api::namespaced(client.clone(), &ns);
    let releases: Api<Release> = Api::namespaced(client.clone(), &ns);

    // A Release gives the application its stages (dev, qa, demo: demo is its last stage,
    // so it stays there in early life support). Paused: it waits before dev until the
    // coupling part of the test.
    let stages: Vec<Value> = ["dev", "qa", "demo"]
        .iter()
        .map(|stage| {
            let mut s = json!({"name": stage, "namespace": format!("{ns}-{stage}"), "progressDeadline": "2m"});
            if *stage == "demo" {
                s["earlyLifeSupport"] = json!({"duration": "1h"});
            }
            s
        })
        .collect();
    apply(
        &releases,
        json!({
            "apiVersion": "stagecoach.dev/v1alpha1", "kind": "Release",
            "metadata": {"name": RELEASE},
            "spec": {
                "application": APP, "version": "2.0.0", "paused": true,
                "workloads": [{"deployment": "api", "containers": [{"name": "api", "image": NEW_IMAGE}]}],
                "stages": stages
            }
        }),
    )
    .await?;

    apply(
        &toggles,
        toggle(
            "new-checkout",
            json!({
                "application": APP,
                "description": "The new checkout flow",
                "variants": {"on": true, "off": false},
                "defaultVariant": "off",
                "stages": {
                    "dev": {"defaultVariant": "on"},
                    "qa": {"state": "Disabled"},
                    "demo": {"rules": [
                        {"clients": ["acme", "globex"], "variant": "on"},
                        {"split": {"on": 50, "off": 50}}
                    ]},
                    "prod": {}
                }
            }),
        ),
    )
    .await?;
    apply(
        &toggles,
        toggle(
            "banner-color",
            json!({
                "application": APP,
                "variants": {"red": "#d00000", "blue": "#0000d0"},
                "defaultVariant": "red",
                "stages": {"demo": {"rules": [
                    {"clients": ["acme"], "variant": "blue", "when": {"release": RELEASE, "reached": "demo"}}
                ]}}
            }),
        ),
    )
    .await?;
    apply(
        &toggles,
        toggle(
            "ghost",
            json!({
                "application": APP,
                "variants": {"on": true, "off": false},
                "defaultVariant": "off",
                "stages": {"demo": {"rules": [
                    {"clients": ["acme"], "variant": "on", "when": {"release": "shop-9.9.9", "reached": "demo"}}
                ]}}
            }),
        ),
    )
    .await?;
    // A second toggle with the key of the first, created later (creation times have
    // whole seconds): it is the one reported, the first keeps working.
    eventually(Duration::from_secs(30), || async {
        Ok(toggles.get("new-checkout").await?.status.map(|_| ()))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    apply(
        &toggles,
        toggle(
            "checkout-copy",
            json!({
                "application": APP, "key": "new-checkout",
                "variants": {"on": true, "off": false}, "defaultVariant": "on"
            }),
        ),
    )
    .await?;

    // Status: what is served where, and bad input as Ready=False with a reason.
    let expected = [
        ("new-checkout", "False", "UnknownStage"),
        ("banner-color", "True", "Served"),
        ("ghost", "False", "UnknownRelease"),
        ("checkout-copy", "False", "DuplicateKey"),
    ];
    for (name, status, reason) in expected {
        eventually(Duration::from_secs(30), || async {
            let t = toggles.get(name).await?;
            Ok((ready_reason(&t) == Some((status.to_owned(), reason.to_owned()))).then_some(()))
        })
        .await
        .with_context(|| {
            format!(
                "toggle {name} never got Ready={status} {reason}; log:\n{}",
                operator.log_text()
            )
        })?;
    }
    let copy = toggles.get("checkout-copy").await?;
    assert!(
        copy.status.as_ref().unwrap().stages.is_empty(),
        "a duplicate is served nowhere"
    );
    let message = &copy
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.r#type == "Ready")
        .unwrap()
        .message;
    assert!(message.contains("new-checkout"), "{message}");

    // One ConfigMap per stage namespace, holding exactly the engine's flag set.
    let none = ActiveCouplings::none();
    let mut versions = BTreeMap::new();
    for stage in ["dev", "qa", "demo"] {
        let version = wait_for_flag_set(&client, &toggles, &ns, stage, &none, &operator).await?;
        versions.insert(stage, version);
    }
    let checkout = toggles.get("new-checkout").await?;
    let status = checkout.status.clone().unwrap();
    assert_eq!(status.key.as_deref(), Some("new-checkout"));
    let served: Vec<(&str, &str, &str)> = status
        .stages
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.config_map.as_deref().unwrap_or_default(),
                s.flag_set_version.as_deref().unwrap_or_default(),
            )
        })
        .collect();
    let demo_cm = format!("{ns}-demo/stagecoach-flags");
    assert_eq!(
        served[2],
        ("demo", demo_cm.as_str(), versions["demo"].as_str())
    );
    assert_eq!(served.len(), 3, "{served:?}");
    assert_eq!(
        status.stages[2].active_rules,
        [
            "clients [acme, globex] -> on",
            "split off 50 / on 50",
            "otherwise -> off"
        ]
    );

    // Nothing changes, nothing is written.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = operator
        .metric("stagecoach_flag_set_writes_total", "apply")
        .await?;
    let status_writes = operator
        .metric("stagecoach_status_writes_total", "FeatureToggle")
        .await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        operator
            .metric("stagecoach_flag_set_writes_total", "apply")
            .await?,
        writes
    );
    assert_eq!(
        operator
            .metric("stagecoach_status_writes_total", "FeatureToggle")
            .await?,
        status_writes
    );

    // A real OpenFeature client through OFREP gets what the engine computes: clients in
    // the list, clients placed by the split (and one golden client: MurmurHash3 x86 32 of
    // "new-checkouthooli" is 2929540014, bucket (h * 100) >> 32 = 68, past off's 50 ->
    // on; "new-checkoutumbrella" hashes to 1123777220, bucket 26 -> off), the other
    // stages, and the errors.
    let clients = [
        "acme", "globex", "hooli", "umbrella", "initech", "stark", "wayne",
    ];
    let cases: Vec<Value> = clients
        .iter()
        .map(|c| json!({"flag": "new-checkout", "context": {"targetingKey": format!("user-of-{c}"), "clientId": c}}))
        .chain([
            json!({"flag": "new-checkout", "context": {}}),
            json!({"flag": "no-such-flag", "context": {"targetingKey": "x"}}),
            json!({"flag": "banner-color", "type": "string", "default": "?", "context": {"clientId": "acme"}}),
        ])
        .collect();
    let demo = sdk_evaluate(&python, &base_url(&operator, &ns, "demo"), &json!(cases)).await?;
    for (client_id, answer) in clients.iter().zip(&demo) {
        let (variant, reason) =
            engine_answer(&toggles, "new-checkout", "demo", client_id, &none).await?;
        assert_eq!(answer["variant"], variant.as_str(), "{client_id}: {answer}");
        assert_eq!(answer["reason"], reason.as_str(), "{client_id}: {answer}");
        assert_eq!(answer["value"], variant == "on", "{client_id}: {answer}");
        assert!(answer["errorCode"].is_null(), "{answer}");
    }
    assert_eq!(demo[0]["reason"], "TARGETING_MATCH");
    assert_eq!(demo[1]["reason"], "TARGETING_MATCH");
    assert_eq!(
        (&demo[2]["variant"], &demo[2]["reason"]),
        (&json!("on"), &json!("SPLIT"))
    );
    assert_eq!(
        (&demo[3]["variant"], &demo[3]["reason"]),
        (&json!("off"), &json!("SPLIT"))
    );
    assert_eq!(demo[7]["errorCode"], "TARGETING_KEY_MISSING", "{}", demo[7]);
    assert_eq!(
        demo[7]["value"], false,
        "the SDK falls back to the code default"
    );
    assert_eq!(demo[8]["errorCode"], "FLAG_NOT_FOUND", "{}", demo[8]);
    assert_eq!(
        (&demo[9]["value"], &demo[9]["variant"], &demo[9]["reason"]),
        (&json!("#d00000"), &json!("red"), &json!("STATIC")),
        "the coupled rule is not active yet: {}",
        demo[9]
    );
    let anyone = json!([{"flag": "new-checkout", "context": {"clientId": "hooli"}}]);
    let dev = sdk_evaluate(&python, &base_url(&operator, &ns, "dev"), &anyone).await?;
    assert_eq!(
        (&dev[0]["value"], &dev[0]["reason"]),
        (&json!(true), &json!("STATIC"))
    );
    let qa = sdk_evaluate(&python, &base_url(&operator, &ns, "qa"), &anyone).await?;
    assert_eq!(
        (&qa[0]["value"], &qa[0]["reason"]),
        (&json!(false), &json!("DISABLED"))
    );

    // Coupling: the release reaches demo (early life support there) -> the rule is on.
    releases
        .patch(
            RELEASE,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": false}})),
        )
        .await?;
    eventually(Duration::from_secs(180), || async {
        let r = releases.get(RELEASE).await?;
        Ok((stage_phase(&r, "demo") == Some(StagePhase::EarlyLifeSupport)).then_some(()))
    })
    .await
    .with_context(|| {
        format!(
            "the release never reached demo; log:\n{}",
            operator.log_text()
        )
    })?;
    let reached: ActiveCouplings = [(RELEASE, "dev"), (RELEASE, "qa"), (RELEASE, "demo")]
        .into_iter()
        .collect();
    wait_for_flag_set(&client, &toggles, &ns, "demo", &reached, &operator).await?;
    let banner = json!([
        {"flag": "banner-color", "type": "string", "default": "?", "context": {"clientId": "acme"}},
        {"flag": "banner-color", "type": "string", "default": "?", "context": {"clientId": "globex"}}
    ]);
    let on = sdk_evaluate(&python, &base_url(&operator, &ns, "demo"), &banner).await?;
    assert_eq!(
        (&on[0]["value"], &on[0]["reason"]),
        (&json!("#0000d0"), &json!("TARGETING_MATCH")),
        "{on:?}"
    );
    assert_eq!(on[1]["variant"], "red");
    eventually(Duration::from_secs(30), || async {
        let t = toggles.get("banner-color").await?;
        let rules = t
            .status
            .unwrap_or_default()
            .stages
            .into_iter()
            .find(|s| s.name == "demo")
            .map(|s| s.active_rules)
            .unwrap_or_default();
        Ok((rules.first().map(String::as_str)
            == Some("when shop-2.0.0 reached demo: clients [acme] -> blue"))
        .then_some(()))
    })
    .await?;
    eventually(Duration::from_secs(30), || async {
        Ok(events_for(&client, &ns, "banner-color")
            .await?
            .iter()
            .any(|r| r == "CouplingActivated")
            .then_some(()))
    })
    .await
    .context("no CouplingActivated event")?;

    // The release fails in early life support at demo (its new pods crash) and is rolled
    // back there -> the rule is off again.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &format!("{ns}-demo"));
    eventually(Duration::from_secs(60), || async {
        let mut marked = 0;
        for pod in pods
            .list(&ListParams::default().labels("app=api"))
            .await?
            .items
        {
            let runs_new = pod.spec.as_ref().is_some_and(|s| {
                s.containers
                    .iter()
                    .any(|c| c.image.as_deref() == Some(NEW_IMAGE))
            });
            if runs_new && pod.metadata.deletion_timestamp.is_none() {
                pods.patch(
                    pod.metadata.name.as_deref().unwrap_or_default(),
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({"metadata": {"labels": {"stagecoach.dev/test-unhealthy": "true"}}}),
                    ),
                )
                .await?;
                marked += 1;
            }
        }
        Ok((marked > 0).then_some(()))
    })
    .await?;
    eventually(Duration::from_secs(120), || async {
        let r = releases.get(RELEASE).await?;
        Ok((stage_phase(&r, "demo") == Some(StagePhase::RolledBack)).then_some(()))
    })
    .await
    .with_context(|| {
        format!(
            "the release was never rolled back at demo; log:\n{}",
            operator.log_text()
        )
    })?;
    let rolled_back: ActiveCouplings = [(RELEASE, "dev"), (RELEASE, "qa")].into_iter().collect();
    let version =
        wait_for_flag_set(&client, &toggles, &ns, "demo", &rolled_back, &operator).await?;
    assert_eq!(
        version, versions["demo"],
        "back to the flag set before the release reached demo"
    );
    let off = sdk_evaluate(&python, &base_url(&operator, &ns, "demo"), &banner).await?;
    assert_eq!(
        (&off[0]["value"], &off[0]["reason"]),
        (&json!("#d00000"), &json!("STATIC")),
        "{off:?}"
    );
    eventually(Duration::from_secs(30), || async {
        Ok(events_for(&client, &ns, "banner-color")
            .await?
            .iter()
            .any(|r| r == "CouplingDeactivated")
            .then_some(()))
    })
    .await
    .context("no CouplingDeactivated event")?;
    assert!(
        operator
            .metric("stagecoach_coupling_transitions_total", "activated")
            .await?
            >= 1.0
    );

    // The flag sets go with the application's last toggle.
    toggles
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    for stage_ns in &stage_namespaces {
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), stage_ns);
        eventually(Duration::from_secs(30), || async {
            Ok(config_maps
                .get_opt("stagecoach-flags")
                .await?
                .is_none()
                .then_some(()))
        })
        .await
        .with_context(|| {
            format!("the flag set in {stage_ns} was not deleted with the last toggle")
        })?;
    }

    operator.stop().await?;
    for name in stage_namespaces {
        Api::<Namespace>::all(client.clone())
            .delete(&name, &DeleteParams::background())
            .await?;
    }
    home.delete().await
}

/// A stage namespace that does not exist yet: the flag set cannot be written there, the
/// toggle is still Accepted and reports Ready=False FlagSetNotWritten (the other stage is
/// written), and once the namespace exists the retry writes it and Ready turns True.
#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_flag_set_that_cannot_be_written_is_a_condition_and_is_retried() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let home = TestNamespace::create(&client, "unwritten").await?;
    let ns = home.name.clone();
    let dev = stage_namespace(&client, &ns, "dev").await?;
    let later = format!("{ns}-later");
    let operator = Operator::start_ready("unwritten", &ns).await?;
    let releases: Api<Release> = Api::namespaced(client.clone(), &ns);
    let toggles: Api<FeatureToggle> = Api::namespaced(client.clone(), &ns);
    apply(
        &releases,
        json!({
            "apiVersion": "stagecoach.dev/v1alpha1", "kind": "Release",
            "metadata": {"name": "shop-1.0.0"},
            "spec": {
                "application": "shop", "version": "1.0.0", "paused": true,
                "workloads": [{"deployment": "api", "containers": [{"name": "api", "image": "example/api:1.0.0"}]}],
                "stages": [{"name": "dev", "namespace": dev}, {"name": "later", "namespace": later}]
            }
        }),
    )
    .await?;
    apply(
        &toggles,
        toggle(
            "fast-path",
            json!({"application": "shop", "variants": {"on": true, "off": false}, "defaultVariant": "off"}),
        ),
    )
    .await?;

    let failing = eventually(Duration::from_secs(30), || async {
        let t = toggles.get("fast-path").await?;
        Ok(ready_reason(&t)
            .filter(|(_, reason)| reason == "FlagSetNotWritten")
            .map(|_| t))
    })
    .await
    .with_context(|| format!("no FlagSetNotWritten; log:\n{}", operator.log_text()))?;
    let conditions = &failing.status.as_ref().context("status")?.conditions;
    let accepted = conditions.iter().find(|c| c.r#type == "Accepted");
    assert_eq!(
        accepted.map(|c| format!("{:?}", c.status)).as_deref(),
        Some("True"),
        "a failed write does not block Accepted: {conditions:?}"
    );
    let ready = conditions
        .iter()
        .find(|c| c.r#type == "Ready")
        .context("Ready")?;
    assert!(
        ready.message.contains(&format!("{later}/stagecoach-flags")),
        "the message names the ConfigMap: {}",
        ready.message
    );
    let dev_flags: Api<ConfigMap> = Api::namespaced(client.clone(), &dev);
    assert!(
        dev_flags.get_opt("stagecoach-flags").await?.is_some(),
        "the stage that can be written is written"
    );

    // The namespace appears: the retry writes the flag set and Ready turns True.
    let created = stage_namespace(&client, &ns, "later").await?;
    eventually(Duration::from_secs(60), || async {
        let t = toggles.get("fast-path").await?;
        Ok(ready_reason(&t)
            .filter(|(status, _)| status == "True")
            .map(|_| ()))
    })
    .await
    .with_context(|| {
        format!(
            "never Ready after the namespace appeared; log:\n{}",
            operator.log_text()
        )
    })?;
    let later_flags: Api<ConfigMap> = Api::namespaced(client.clone(), &created);
    assert!(later_flags.get_opt("stagecoach-flags").await?.is_some());

    operator.stop().await?;
    for name in [dev, created] {
        Api::<Namespace>::all(client.clone())
            .delete(&name, &DeleteParams::background())
            .await?;
    }
    home.delete().await
}

#[tokio::test]
#[ignore = "needs the test control plane: run cargo xtask test"]
async fn a_coupling_that_changed_while_no_operator_ran_is_announced_after_the_restart() -> Result<()>
{
    let client = client().await?;
    install_crds(&client).await?;
    let home = TestNamespace::create(&client, "coupled-restart").await?;
    let ns = home.name.clone();
    let dev = stage_namespace(&client, &ns, "dev").await?;
    let operator = Operator::start_ready("coupled-restart", &ns).await?;
    let releases: Api<Release> = Api::namespaced(client.clone(), &ns);
    let toggles: Api<FeatureToggle> = Api::namespaced(client.clone(), &ns);
    apply(
        &releases,
        json!({
            "apiVersion": "stagecoach.dev/v1alpha1", "kind": "Release",
            "metadata": {"name": RELEASE},
            "spec": {
                "application": APP, "version": "2.0.0",
                "workloads": [{"deployment": "api", "containers": [{"name": "api", "image": NEW_IMAGE}]}],
                "stages": [{"name": "dev", "namespace": dev, "earlyLifeSupport": {"duration": "1h"}}]
            }
        }),
    )
    .await?;
    apply(
        &toggles,
        toggle(
            "early-access",
            json!({
                "application": APP,
                "variants": {"on": true, "off": false}, "defaultVariant": "off",
                "stages": {"dev": {"rules": [
                    {"clients": ["acme"], "variant": "on", "when": {"release": RELEASE, "reached": "dev"}}
                ]}}
            }),
        ),
    )
    .await?;
    // The release is live in dev (early life support): the coupling is in effect, and
    // the status says so as data.
    let coupled = eventually(Duration::from_secs(90), || async {
        let t = toggles.get("early-access").await?;
        let couplings = t
            .status
            .unwrap_or_default()
            .stages
            .into_iter()
            .find(|s| s.name == "dev")
            .map(|s| s.couplings)
            .unwrap_or_default();
        Ok((!couplings.is_empty()).then_some(couplings))
    })
    .await
    .with_context(|| {
        format!(
            "the coupling never took effect; log:\n{}",
            operator.log_text()
        )
    })?;
    assert_eq!(
        (coupled[0].release.as_str(), coupled[0].reached.as_str()),
        (RELEASE, "dev")
    );

    // The operator dies right after the release was rolled back at dev, before the
    // toggle controller said anything: the Release's status is what it wrote.
    operator.kill().await?;
    let mut release = releases.get(RELEASE).await?;
    let status = release.status.as_mut().context("status")?;
    status.phase = Some(stagecoach_api::release::ReleasePhase::RolledBack);
    for stage in &mut status.stages {
        stage.phase = StagePhase::RolledBack;
    }
    releases
        .replace_status(RELEASE, &PostParams::default(), &release)
        .await?;

    let operator = Operator::start_ready("coupled-restart-2", &ns).await?;
    eventually(Duration::from_secs(60), || async {
        Ok(events_for(&client, &ns, "early-access")
            .await?
            .iter()
            .any(|r| r == "CouplingDeactivated")
            .then_some(()))
    })
    .await
    .with_context(|| {
        format!(
            "no CouplingDeactivated after the restart; log:\n{}",
            operator.log_text()
        )
    })?;
    let t = toggles.get("early-access").await?;
    assert!(
        t.status
            .unwrap_or_default()
            .stages
            .iter()
            .all(|s| s.couplings.is_empty()),
        "the status no longer shows the coupling"
    );
    releases.delete(RELEASE, &DeleteParams::default()).await?;
    eventually(Duration::from_secs(30), || async {
        Ok(releases.get_opt(RELEASE).await?.is_none().then_some(()))
    })
    .await?;
    operator.stop().await?;
    Api::<Namespace>::all(client.clone())
        .delete(&dev, &DeleteParams::background())
        .await?;
    home.delete().await
}

/// A labelled token Secret guards its application's OFREP endpoints: 401 without a
/// token, 403 with another application's, 200 with its own; deleting it opens them again.
#[tokio::test]
#[ignore = "needs the test control plane: run cargo xtask test"]
async fn an_ofrep_token_secret_guards_its_application() -> Result<()> {
    use k8s_openapi::api::core::v1::Secret;

    let client = client().await?;
    install_crds(&client).await?;
    let home = TestNamespace::create(&client, "ofrep-token").await?;
    let ns = home.name.clone();
    let dev = stage_namespace(&client, &ns, "dev").await?;
    let operator = Operator::start_ready("ofrep-token", &ns).await?;
    let releases: Api<Release> = Api::namespaced(client.clone(), &ns);
    let toggles: Api<FeatureToggle> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    apply(
        &releases,
        json!({
            "apiVersion": "stagecoach.dev/v1alpha1", "kind": "Release",
            "metadata": {"name": RELEASE},
            "spec": {
                "application": APP, "version": "2.0.0", "paused": true,
                "workloads": [{"deployment": "api", "containers": [{"name": "api", "image": NEW_IMAGE}]}],
                "stages": [{"name": "dev", "namespace": dev}]
            }
        }),
    )
    .await?;
    apply(
        &toggles,
        toggle(
            "new-checkout",
            json!({
                "application": APP,
                "variants": {"on": true, "off": false}, "defaultVariant": "on",
                "stages": {"dev": {}}
            }),
        ),
    )
    .await?;
    let url = format!(
        "{}/ofrep/v1/evaluate/flags/new-checkout",
        base_url(&operator, &ns, "dev")
    );
    let http = reqwest::Client::new();
    let status = |token: Option<&'static str>| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let mut request = http.post(&url).json(&json!({"context": {}}));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await?;
            let status = response.status().as_u16();
            let challenge = response
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap_or_default().to_owned());
            let body: Value = response.json().await.unwrap_or(Value::Null);
            anyhow::Ok((status, challenge, body))
        }
    };
    // Open: no token Secret yet.
    eventually(Duration::from_secs(60), || async {
        Ok((status(None).await?.0 == 200).then_some(()))
    })
    .await?;

    let token_secret = |name: &str, application: &str, token: &str| -> Result<Secret> {
        Ok(serde_json::from_value(json!({
            "metadata": {"name": name,
                         "labels": {"stagecoach.dev/ofrep-application": application}},
            "stringData": {"token": token}
        }))?)
    };
    secrets
        .create(
            &PostParams::default(),
            &token_secret("shop-ofrep", APP, "shop-token-1")?,
        )
        .await?;
    secrets
        .create(
            &PostParams::default(),
            &token_secret("billing-ofrep", "billing", "billing-token-1")?,
        )
        .await?;
    let (code, challenge, body) = eventually(Duration::from_secs(30), || async {
        let answer = status(None).await?;
        Ok((answer.0 == 401).then_some(answer))
    })
    .await?;
    assert_eq!(code, 401);
    assert_eq!(challenge.as_deref(), Some("Bearer"));
    assert_eq!(body["errorCode"], "GENERAL", "{body}");
    let (code, _, body) = status(Some("billing-token-1")).await?;
    assert_eq!(code, 403, "another application's token: {body}");
    let (code, _, _) = status(Some("wrong")).await?;
    assert_eq!(code, 403, "a wrong token");
    let (code, _, body) = status(Some("shop-token-1")).await?;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["value"], true, "{body}");

    // Deleting the Secret opens the application again.
    secrets
        .delete("shop-ofrep", &DeleteParams::default())
        .await?;
    eventually(Duration::from_secs(30), || async {
        Ok((status(None).await?.0 == 200).then_some(()))
    })
    .await?;
    let (_, text) = operator.get("/metrics").await?;
    assert!(
        text.contains("stagecoach_ofrep_requests_total{code=\"401\",endpoint=\"single\"}")
            && text.contains("stagecoach_ofrep_requests_total{code=\"403\",endpoint=\"single\"} 2"),
        "{text}"
    );

    releases.delete(RELEASE, &DeleteParams::default()).await?;
    eventually(Duration::from_secs(30), || async {
        Ok(releases.get_opt(RELEASE).await?.is_none().then_some(()))
    })
    .await?;
    operator.stop().await?;
    Api::<Namespace>::all(client.clone())
        .delete(&dev, &DeleteParams::background())
        .await?;
    home.delete().await
}

/// A toggle moved to another application (`spec.application` edited): the application it
/// left, with no toggle any more, stops being served (its flag set is deleted) and stays
/// so; the one it joined serves it.
#[tokio::test]
#[ignore = "needs the test control plane: run cargo xtask test"]
async fn a_toggle_moved_to_another_application_leaves_nothing_behind() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let home = TestNamespace::create(&client, "moved").await?;
    let ns = home.name.clone();
    let (shop_dev, mail_dev) = (
        stage_namespace(&client, &ns, "shop").await?,
        stage_namespace(&client, &ns, "mail").await?,
    );
    let operator = Operator::start_ready("moved", &ns).await?;
    let releases: Api<Release> = Api::namespaced(client.clone(), &ns);
    let toggles: Api<FeatureToggle> = Api::namespaced(client.clone(), &ns);
    // Each application's one stage, from a paused Release.
    for (app, stage_ns) in [("shop", &shop_dev), ("mail", &mail_dev)] {
        apply(
            &releases,
            json!({
                "apiVersion": "stagecoach.dev/v1alpha1", "kind": "Release",
                "metadata": {"name": format!("{app}-1.0.0")},
                "spec": {
                    "application": app, "version": "1.0.0", "paused": true,
                    "workloads": [{"deployment": "api", "containers": [{"name": "api", "image": "example/api:1.0.0"}]}],
                    "stages": [{"name": "dev", "namespace": stage_ns}]
                }
            }),
        )
        .await?;
    }
    let spec = |app: &str| {
        json!({"application": app, "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "stages": {"dev": {"defaultVariant": "on"}}})
    };
    apply(&toggles, toggle("fast-path", spec("shop"))).await?;
    let flag_set = |namespace: &str| {
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        async move { anyhow::Ok(config_maps.get_opt("stagecoach-flags").await?) }
    };
    eventually(Duration::from_secs(30), || async {
        Ok(flag_set(&shop_dev).await?.map(|_| ()))
    })
    .await
    .with_context(|| {
        format!(
            "shop's flag set never written; log:\n{}",
            operator.log_text()
        )
    })?;

    apply(&toggles, toggle("fast-path", spec("mail"))).await?;
    eventually(Duration::from_secs(30), || async {
        let served = toggles.get("fast-path").await?.status.is_some_and(|s| {
            s.stages.iter().any(|stage| {
                stage.config_map.as_deref() == Some(&format!("{mail_dev}/stagecoach-flags"))
            })
        });
        Ok((served && flag_set(&shop_dev).await?.is_none()).then_some(()))
    })
    .await
    .with_context(|| {
        format!(
            "the toggle is not served by mail, or shop's flag set is still there; log:\n{}",
            operator.log_text()
        )
    })?;
    assert!(flag_set(&mail_dev).await?.is_some());
    // And it stays gone: a reconcile of shop now (one queued before the move, a new
    // leader's, a retry) would find no toggle and leave it so (the operator's own
    // ConfigMap writes are checked again 5 s after them).
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        flag_set(&shop_dev).await?.is_none(),
        "shop's flag set came back; log:\n{}",
        operator.log_text()
    );

    operator.stop().await?;
    for name in [shop_dev, mail_dev] {
        Api::<Namespace>::all(client.clone())
            .delete(&name, &DeleteParams::background())
            .await?;
    }
    home.delete().await
}
