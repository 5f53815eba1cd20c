//! The real `stagecoach` binary against the real API server: it becomes ready once its
//! caches have synced, sets Accepted on new objects within seconds, explains semantic
//! errors in a condition, writes nothing when nothing changed, and stops on SIGTERM.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::semicolon_if_nothing_returned
)] // test tables

use std::time::Duration;

use anyhow::{Context, Result};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use stagecoach_e2e::{Operator, TestNamespace, apply, client, eventually, install_crds};

fn api(client: &kube::Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("stagecoach.dev", "v1alpha1", kind));
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn condition(obj: &DynamicObject, type_: &str) -> Option<Value> {
    obj.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn operator_accepts_releases_and_toggles_and_is_quiet_when_nothing_changes() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "operator").await?;
    let operator = Operator::start("accept", &ns.name)?;

    // /livez answers at once; /readyz only once the caches have synced.
    eventually(Duration::from_secs(30), || async {
        Ok(operator
            .get("/livez")
            .await
            .ok()
            .filter(|(s, _)| *s == 200)
            .map(|_| ()))
    })
    .await?;
    eventually(Duration::from_secs(30), || async {
        Ok(operator
            .get("/readyz")
            .await
            .ok()
            .filter(|(s, _)| *s == 200)
            .map(|_| ()))
    })
    .await
    .with_context(|| format!("operator never became ready; log:\n{}", operator.log_text()))?;

    let releases = api(&client, &ns.name, "Release");
    apply(
        &releases,
        json!({
            "apiVersion": "stagecoach.dev/v1alpha1", "kind": "Release",
            "metadata": {"name": "billing-2.4.0"},
            "spec": {
                "application": "billing", "version": "2.4.0",
                "workloads": [{"deployment": "billing-api", "containers": [{"name": "api", "image": "example/billing:2.4.0"}]}]
            }
        }),
    )
    .await?;
    let started = tokio::time::Instant::now();
    let accepted = eventually(Duration::from_secs(10), || async {
        let r = releases.get("billing-2.4.0").await?;
        Ok(condition(&r, "Accepted")
            .filter(|c| c["status"] == "True")
            .map(|c| (c, r)))
    })
    .await
    .with_context(|| format!("Accepted never set; operator log:\n{}", operator.log_text()))?;
    println!("Accepted=True after {:?}", started.elapsed());
    assert_eq!(accepted.0["reason"], "Valid");
    assert_eq!(accepted.1.data["status"]["observedGeneration"], json!(1));

    // Semantic errors the schema cannot express become Accepted=False with a reason.
    apply(
        &releases,
        json!({
            "apiVersion": "stagecoach.dev/v1alpha1", "kind": "Release",
            "metadata": {"name": "billing-2.5.0"},
            "spec": {
                "application": "billing", "version": "2.5.0",
                "workloads": [{"deployment": "billing-api", "containers": [{"name": "api", "image": "example/billing:2.5.0"}]}],
                "stages": [{"name": "dev", "namespace": "shared"}, {"name": "qa", "namespace": "shared"}]
            }
        }),
    )
    .await?;
    let rejected = eventually(Duration::from_secs(10), || async {
        let r = releases.get("billing-2.5.0").await?;
        Ok(condition(&r, "Accepted").filter(|c| c["status"] == "False"))
    })
    .await?;
    assert_eq!(rejected["reason"], "DuplicateNamespace", "{rejected}");
    assert!(
        rejected["message"]
            .as_str()
            .unwrap_or_default()
            .contains("shared"),
        "{rejected}"
    );

    let toggles = api(&client, &ns.name, "FeatureToggle");
    apply(
        &toggles,
        json!({
            "apiVersion": "stagecoach.dev/v1alpha1", "kind": "FeatureToggle",
            "metadata": {"name": "new-invoice-ui"},
            "spec": {"application": "billing", "variants": {"on": true, "off": false}, "defaultVariant": "off"}
        }),
    )
    .await?;
    eventually(Duration::from_secs(10), || async {
        let t = toggles.get("new-invoice-ui").await?;
        Ok(condition(&t, "Accepted")
            .filter(|c| c["status"] == "True")
            .map(|_| ()))
    })
    .await?;

    // Once everything is accepted, the operator writes nothing more: not on its own,
    // and not after an unrelated change (a label) that does not change the spec.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes_before = operator
        .metric("stagecoach_status_writes_total", "")
        .await?;
    assert!(
        writes_before >= 3.0,
        "expected at least three status writes so far, saw {writes_before}"
    );
    releases
        .patch(
            "billing-2.4.0",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let reconciles = operator.metric("stagecoach_reconciles_total", "").await?;
    let writes_after = operator
        .metric("stagecoach_status_writes_total", "")
        .await?;
    assert!(
        reconciles >= 4.0,
        "the operator reconciled ({reconciles} reconciles)"
    );
    assert!(
        (writes_before - writes_after).abs() < 0.5,
        "no status write when nothing changed: {writes_before} before, {writes_after} after"
    );

    operator.stop().await?;
    ns.delete().await
}
