//! An operator started against objects that already exist picks every one of them up,
//! every time, and stops promptly on SIGTERM. Regression test: several tasks used to wait
//! on one reflector store with kube's `Store::wait_until_ready`, which wakes only the
//! last task to poll it; the others (a toggle reconcile, the toggle fan-out) then waited
//! forever, so a toggle went unserved after a restart and SIGTERM waited out its grace
//! period on the stuck reconcile. It happened in about half of the restarts. Also: a
//! release held by its Pipeline stays held across restarts (no release is planned before
//! the Pipeline and Approval caches have their first list).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use anyhow::{Result, ensure};
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::{Value, json};
use stagecoach_api::FeatureToggle;
use stagecoach_api::release::{ReleasePhase, StagePhase};
use stagecoach_e2e::{Operator, Pipeline, apply, client, eventually, install_crds};

const APP: &str = "shop";
const RESTARTS: usize = 6;

async fn ofrep_value(operator: &Operator, namespace: &str) -> Result<Option<Value>> {
    let url = format!(
        "{}/apps/{namespace}/{APP}/stages/dev/ofrep/v1/evaluate/flags/restart-toggle",
        operator.ofrep_url()
    );
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(json!({"context": {"targetingKey": "client-1"}}).to_string())
        .send()
        .await?;
    if !response.status().is_success() {
        return Ok(None);
    }
    let body: Value = serde_json::from_str(&response.text().await?)?;
    Ok(Some(body["value"].clone()))
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_restarted_operator_serves_what_exists_and_stops_promptly() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let pipeline = Pipeline::create(&client, "restart", &[("dev", 1)], "example/app:1").await?;
    let home = pipeline.home.name.clone();
    let toggles: Api<FeatureToggle> = Api::namespaced(client.clone(), &home);
    apply(
        &toggles,
        json!({
            "apiVersion": "stagecoach.dev/v1alpha1", "kind": "FeatureToggle",
            "metadata": {"name": "restart-toggle", "namespace": home},
            "spec": {"application": APP, "variants": {"yes": true, "no": false}, "defaultVariant": "yes",
                     "stages": {"dev": {}}}
        }),
    )
    .await?;
    // A Release naming the stage, so the toggle has a stage to be served in.
    let releases: Api<stagecoach_api::Release> = Api::namespaced(client.clone(), &home);
    apply(
        &releases,
        json!({
            "apiVersion": "stagecoach.dev/v1alpha1", "kind": "Release",
            "metadata": {"name": "shop-1-0-0", "namespace": home},
            "spec": {"application": APP, "version": "1.0.0",
                     "stages": [{"name": "dev", "namespace": pipeline.namespace("dev")}],
                     "workloads": [{"deployment": "api", "containers": [{"name": "app", "image": "example/app:1"}]}]}
        }),
    )
    .await?;
    // And a release its Pipeline holds for an approval: no restart may plan it without
    // its Pipeline (the Pipeline cache not listed yet) and let it in.
    let pipelines: Api<stagecoach_api::Pipeline> = Api::namespaced(client.clone(), &home);
    apply(
        &pipelines,
        json!({
            "apiVersion": "stagecoach.dev/v1alpha1", "kind": "Pipeline",
            "metadata": {"name": "held", "namespace": home},
            "spec": {"stages": [{"name": "dev", "namespace": pipeline.namespace("dev"),
                                 "approval": {"required": 1}}]}
        }),
    )
    .await?;
    apply(
        &releases,
        json!({
            "apiVersion": "stagecoach.dev/v1alpha1", "kind": "Release",
            "metadata": {"name": "held-1-0-0", "namespace": home},
            "spec": {"application": "held", "version": "1.0.0",
                     "workloads": [{"deployment": "api", "containers": [{"name": "app", "image": "example/app:2"}]}]}
        }),
    )
    .await?;
    let held = |r: &stagecoach_api::Release| {
        r.status.as_ref().is_some_and(|s| {
            s.phase == Some(ReleasePhase::AwaitingApproval)
                && s.stages.iter().all(|st| st.phase == StagePhase::Pending)
        })
    };
    for restart in 0..RESTARTS {
        let operator = Operator::start_ready("restart", &home).await?;
        let waiting = eventually(Duration::from_secs(20), || async {
            let r = releases.get("held-1-0-0").await?;
            Ok(held(&r).then_some(()))
        })
        .await;
        ensure!(
            waiting.is_ok(),
            "start {restart}: held-1-0-0 is not waiting for its approval: {:?}",
            releases.get("held-1-0-0").await?.status
        );
        let served = eventually(Duration::from_secs(20), || async {
            ofrep_value(&operator, &home).await
        })
        .await;
        ensure!(
            served.as_ref().is_ok_and(|v| *v == json!(true)),
            "start {restart}: the existing toggle is not served ({served:?}); log:\n{}",
            operator.log_tail(40)
        );
        // `stop` fails unless the process exits cleanly within 15 s of SIGTERM.
        operator.stop().await?;
        let after = releases.get("held-1-0-0").await?;
        ensure!(held(&after), "start {restart}: {:?}", after.status);
    }
    let operator = Operator::start_ready("restart", &home).await?;
    releases
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    eventually(Duration::from_secs(60), || async {
        Ok(releases
            .list(&ListParams::default())
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await?;
    operator.stop().await?;
    pipeline.delete().await
}
