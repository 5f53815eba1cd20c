//! The CRDs install on the real API server, every example is accepted, and every kind
//! of bad input is rejected at admission with a message a user understands.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::semicolon_if_nothing_returned
)] // test tables

use anyhow::{Context, Result, bail};
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use stagecoach_e2e::{HOW_TO_RUN, TestNamespace, client, install_crds, read_manifests, repo_root};

fn api_for(client: &Client, doc: &Value, namespace: &str) -> Result<(Api<DynamicObject>, bool)> {
    let api_version = doc["apiVersion"].as_str().context("apiVersion")?;
    let kind = doc["kind"].as_str().context("kind")?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    let cluster_scoped = matches!(kind, "Namespace" | "ClusterRole" | "ClusterRoleBinding");
    Ok(if cluster_scoped {
        (Api::all_with(client.clone(), &ar), true)
    } else {
        (Api::namespaced_with(client.clone(), namespace, &ar), false)
    })
}

fn release(ns: &str) -> Value {
    json!({
        "apiVersion": "stagecoach.dev/v1alpha1",
        "kind": "Release",
        "metadata": {"name": "r", "namespace": ns},
        "spec": {
            "application": "billing",
            "version": "2.4.0",
            "type": "minor",
            "workloads": [{"deployment": "billing-api", "containers": [{"name": "api", "image": "example/billing:2.4.0"}]}],
            "stages": [
                {"name": "dev"},
                {"name": "prod", "steps": [{"setWeight": 10}, {"pause": {"duration": "1m"}}, {"setWeight": 100}], "progressDeadline": "5m"}
            ]
        }
    })
}

fn toggle(ns: &str) -> Value {
    json!({
        "apiVersion": "stagecoach.dev/v1alpha1",
        "kind": "FeatureToggle",
        "metadata": {"name": "t", "namespace": ns},
        "spec": {
            "application": "billing",
            "variants": {"on": true, "off": false},
            "defaultVariant": "off",
            "stages": {"demo": {"rules": [{"clients": ["acme"], "variant": "on"}, {"split": {"on": 20, "off": 80}}]}}
        }
    })
}

async fn create(client: &Client, doc: &Value, ns: &str) -> Result<(), String> {
    let (api, _) = api_for(client, doc, ns).map_err(|e| e.to_string())?;
    let obj: DynamicObject = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    api.create(&params, &obj)
        .await
        .map(|_| ())
        .map_err(|e| match e {
            kube::Error::Api(status) => status.message,
            other => other.to_string(),
        })
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn crds_install_and_become_established() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    // Installing again changes nothing (server-side apply is idempotent).
    install_crds(&client).await
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn every_example_is_accepted() -> Result<()> {
    let _ = HOW_TO_RUN;
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "examples").await?;
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(repo_root().join("examples"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    entries.sort();
    for path in entries {
        for mut doc in read_manifests(&path)? {
            let (api, cluster_scoped) = api_for(&client, &doc, &ns.name)?;
            if !cluster_scoped {
                doc["metadata"]["namespace"] = json!(ns.name);
            }
            let name = doc["metadata"]["name"].as_str().context("name")?.to_owned();
            let obj: DynamicObject = serde_json::from_value(doc.clone())?;
            let params = PatchParams {
                dry_run: cluster_scoped,
                ..PatchParams::apply("stagecoach-e2e").force()
            };
            api.patch(&name, &params, &Patch::Apply(&obj))
                .await
                .with_context(|| format!("{} ({name}) was rejected", path.display()))?;
            checked += 1;
        }
    }
    assert!(
        checked >= 5,
        "expected the examples to hold several objects, found {checked}"
    );
    ns.delete().await
}

/// One bad input and a piece of the message the API server must answer with.
struct Case {
    what: &'static str,
    mutate: fn(&mut Value),
    expect: &'static str,
}

fn release_cases() -> Vec<Case> {
    vec![
        Case {
            what: "version not semver",
            mutate: |r| r["spec"]["version"] = json!("2.4"),
            expect: "version must be a semantic version",
        },
        Case {
            what: "version with leading v",
            mutate: |r| r["spec"]["version"] = json!("v2.4.0"),
            expect: "version must be a semantic version",
        },
        Case {
            what: "duplicate stage names",
            mutate: |r| r["spec"]["stages"][1]["name"] = json!("dev"),
            expect: "stage names must be unique",
        },
        Case {
            what: "stage without a derivable namespace",
            mutate: |r| r["spec"]["application"] = json!("billing.eu"),
            expect: "every stage needs a namespace",
        },
        Case {
            what: "default stages without a derivable namespace",
            mutate: |r| {
                r["spec"]["application"] = json!("billing.eu");
                r["spec"].as_object_mut().unwrap().remove("stages");
            },
            expect: "the default stages use namespaces",
        },
        Case {
            what: "setWeight 0",
            mutate: |r| r["spec"]["stages"][1]["steps"][0] = json!({"setWeight": 0}),
            expect: "setWeight must be between 1 and 100",
        },
        Case {
            what: "setWeight 101",
            mutate: |r| r["spec"]["stages"][1]["steps"][2] = json!({"setWeight": 101}),
            expect: "setWeight must be between 1 and 100",
        },
        Case {
            what: "weights not increasing",
            mutate: |r| {
                r["spec"]["stages"][1]["steps"] =
                    json!([{"setWeight": 50}, {"setWeight": 10}, {"setWeight": 100}])
            },
            expect: "setWeight values must strictly increase",
        },
        Case {
            what: "weights repeated",
            mutate: |r| {
                r["spec"]["stages"][1]["steps"] =
                    json!([{"setWeight": 50}, {"setWeight": 50}, {"setWeight": 100}])
            },
            expect: "setWeight values must strictly increase",
        },
        Case {
            what: "last weight below 100",
            mutate: |r| {
                r["spec"]["stages"][1]["steps"] = json!([{"setWeight": 10}, {"setWeight": 50}])
            },
            expect: "the last setWeight step of a stage must be 100",
        },
        Case {
            what: "step both weight and pause",
            mutate: |r| {
                r["spec"]["stages"][1]["steps"][0] =
                    json!({"setWeight": 10, "pause": {"duration": "1m"}})
            },
            expect: "a step is either setWeight or pause",
        },
        Case {
            what: "empty step",
            mutate: |r| r["spec"]["stages"][1]["steps"][0] = json!({}),
            expect: "a step is either setWeight or pause",
        },
        Case {
            what: "zero pause",
            mutate: |r| r["spec"]["stages"][1]["steps"][1] = json!({"pause": {"duration": "0s"}}),
            expect: "pause duration must be a positive duration",
        },
        Case {
            what: "negative pause",
            mutate: |r| r["spec"]["stages"][1]["steps"][1] = json!({"pause": {"duration": "-5m"}}),
            expect: "pause duration must be a positive duration",
        },
        Case {
            what: "unparseable progressDeadline",
            mutate: |r| r["spec"]["stages"][1]["progressDeadline"] = json!("ten minutes"),
            expect: "progressDeadline must be a positive duration",
        },
        Case {
            what: "unparseable early life support",
            mutate: |r| r["spec"]["stages"][1]["earlyLifeSupport"] = json!({"duration": "2d"}),
            expect: "earlyLifeSupport duration must be a positive duration",
        },
        Case {
            what: "empty workloads",
            mutate: |r| r["spec"]["workloads"] = json!([]),
            expect: "workloads must list at least one Deployment",
        },
        Case {
            what: "duplicate deployments",
            mutate: |r| {
                let w = r["spec"]["workloads"][0].clone();
                r["spec"]["workloads"].as_array_mut().unwrap().push(w);
            },
            expect: "each Deployment may appear only once",
        },
        Case {
            what: "duplicate containers",
            mutate: |r| {
                let c = r["spec"]["workloads"][0]["containers"][0].clone();
                r["spec"]["workloads"][0]["containers"]
                    .as_array_mut()
                    .unwrap()
                    .push(c);
            },
            expect: "each container may appear only once",
        },
        Case {
            what: "empty containers",
            mutate: |r| r["spec"]["workloads"][0]["containers"] = json!([]),
            expect: "containers must list at least one container",
        },
        Case {
            what: "empty image",
            mutate: |r| r["spec"]["workloads"][0]["containers"][0]["image"] = json!(""),
            expect: "image must not be empty",
        },
        Case {
            what: "unknown type",
            mutate: |r| r["spec"]["type"] = json!("hotfix"),
            expect: "supported values: \"patch\", \"minor\", \"major\"",
        },
        Case {
            what: "bad stage name",
            mutate: |r| r["spec"]["stages"][0]["name"] = json!("Dev"),
            expect: "stage name must be 1-20 lower-case letters",
        },
    ]
}

fn toggle_cases() -> Vec<Case> {
    vec![
        Case {
            what: "defaultVariant not a variant",
            mutate: |t| t["spec"]["defaultVariant"] = json!("maybe"),
            expect: "defaultVariant must be one of the keys of variants",
        },
        Case {
            what: "mixed variant types",
            mutate: |t| t["spec"]["variants"] = json!({"on": true, "off": "no"}),
            expect: "all variants must have the same type",
        },
        Case {
            what: "split not summing to 100",
            mutate: |t| {
                t["spec"]["stages"]["demo"]["rules"][1] = json!({"split": {"on": 20, "off": 70}})
            },
            expect: "split percentages must each be between 0 and 100 and sum to 100",
        },
        Case {
            what: "split naming an unknown variant",
            mutate: |t| {
                t["spec"]["stages"]["demo"]["rules"][1] = json!({"split": {"on": 20, "maybe": 80}})
            },
            expect: "every variant named in a split must be one of the keys of variants",
        },
        Case {
            what: "invalid stage key",
            mutate: |t| t["spec"]["stages"] = json!({"Demo Stage": {"state": "Enabled"}}),
            expect: "stage keys must be stage names",
        },
        Case {
            what: "rule with clients and split",
            mutate: |t| t["spec"]["stages"]["demo"]["rules"][0]["split"] = json!({"on": 100}),
            expect: "a rule has either clients (with a variant) or a split",
        },
        Case {
            what: "clients without a variant",
            mutate: |t| {
                t["spec"]["stages"]["demo"]["rules"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("variant");
            },
            expect: "a clients rule needs the variant",
        },
        Case {
            what: "unknown state",
            mutate: |t| t["spec"]["stages"]["demo"]["state"] = json!("On"),
            expect: "supported values: \"Enabled\", \"Disabled\"",
        },
    ]
}

async fn check_cases(client: &Client, ns: &str, base: &Value, cases: Vec<Case>) -> Result<()> {
    create(client, base, ns)
        .await
        .map_err(|m| anyhow::anyhow!("the valid base object was rejected: {m}"))?;
    let mut failures = Vec::new();
    for case in cases {
        let mut doc = base.clone();
        (case.mutate)(&mut doc);
        match create(client, &doc, ns).await {
            Ok(()) => failures.push(format!(
                "{}: accepted, expected rejection with {:?}",
                case.what, case.expect
            )),
            Err(message) if message.contains(case.expect) => {
                println!("rejected as expected: {}: {message}", case.what);
            }
            Err(message) => failures.push(format!(
                "{}: rejected with {message:?}, expected it to contain {:?}",
                case.what, case.expect
            )),
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} admission case(s) failed:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn bad_releases_are_rejected_with_clear_messages() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "bad-release").await?;
    check_cases(&client, &ns.name, &release(&ns.name), release_cases()).await?;
    ns.delete().await
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn bad_feature_toggles_are_rejected_with_clear_messages() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "bad-toggle").await?;
    check_cases(&client, &ns.name, &toggle(&ns.name), toggle_cases()).await?;
    // Variants of every single type are accepted, including numbers mixing int and float.
    for variants in [
        json!({"a": "x", "b": "y"}),
        json!({"a": 1, "b": 2.5}),
        json!({"a": {"color": "red"}, "b": {"color": "blue"}}),
    ] {
        let mut doc = toggle(&ns.name);
        doc["spec"]["variants"] = variants.clone();
        doc["spec"]["defaultVariant"] = json!("a");
        doc["spec"]["stages"] = json!({"demo": {"rules": [{"split": {"a": 50, "b": 50}}]}});
        create(&client, &doc, &ns.name)
            .await
            .map_err(|m| anyhow::anyhow!("variants {variants} were rejected: {m}"))?;
    }
    let _ = PostParams::default();
    ns.delete().await
}
