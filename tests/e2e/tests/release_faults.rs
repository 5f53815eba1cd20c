//! The world changing under a release, end to end on the real control plane: someone
//! edits or deletes the Deployment the release is rolling out, scales it, or deletes the
//! Release itself (also with the operator killed in the middle of that cleanup). Each
//! test asserts what a user would see: templates, canaries, recorded revisions, the
//! Release's status and Events.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod release_support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use stagecoach_api::FIELD_MANAGER;
use stagecoach_api::condition::ConditionStatus;
use stagecoach_api::release::{ReleasePhase, StagePhase};
use stagecoach_e2e::{Operator, PIPELINE_DEPLOYMENT, eventually, release_manifest};

use release_support::*;

/// prod: 25 %, a pause long enough to act in, then 100 %.
fn slow_canary(pause: &str) -> serde_json::Value {
    json!([{"setWeight": 25}, {"pause": {"duration": pause}}, {"setWeight": 100}])
}

async fn start_release(f: &Fixture, name: &str, pause: &str) -> Result<()> {
    f.create_release(&release_manifest(
        name,
        APP,
        "1.1.0",
        NEW_IMAGE,
        &stages_spec(&f.pipeline, &slow_canary(pause), "5s"),
    ))
    .await?;
    f.wait_release(name, "prod at 25 %", ROLLOUT_TIMEOUT, |r| {
        stage_step(r, "prod").is_some_and(|s| s >= 1)
    })
    .await?;
    ensure!(f.canary("prod").await?.is_some(), "a canary runs in prod");
    Ok(())
}

/// `kubectl set image deployment/api app=<image>` as kubectl does it: a strategic merge
/// patch under the field manager `kubectl-set`.
async fn set_image(f: &Fixture, stage: &str, image: &str) -> Result<()> {
    let params = PatchParams {
        field_manager: Some("kubectl-set".into()),
        ..PatchParams::default()
    };
    f.deployments(stage)
        .patch(
            PIPELINE_DEPLOYMENT,
            &params,
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "app", "image": image}
            ]}}}})),
        )
        .await?;
    Ok(())
}

async fn revisions_of(f: &Fixture, release: &str) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for ns in f.pipeline.namespaces() {
        let api: Api<ControllerRevision> = Api::namespaced(f.client.clone(), ns);
        let name = format!("stagecoach-{release}-{PIPELINE_DEPLOYMENT}");
        if api.get_opt(&name).await?.is_some() {
            found.push(format!("{ns}/{name}"));
        }
    }
    Ok(found)
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_hotfix_on_the_stable_deployment_holds_the_release_and_survives_abort() -> Result<()> {
    const HOTFIX: &str = "example/shop-api:1.0.1-hotfix";
    let f = Fixture::start("rel-edit").await?;
    let name = "shop-1.1.0";
    start_release(&f, name, "4s").await?;
    set_image(&f, "prod", HOTFIX).await?;

    let release = f
        .wait_release(name, "held for the outside edit", ROLLOUT_TIMEOUT, |r| {
            condition(r, "Degraded") == Some((ConditionStatus::True, "OutsideEdit".into()))
        })
        .await?;
    assert_eq!(status(&release).phase, Some(ReleasePhase::Paused));
    let message = status(&release).message.unwrap_or_default();
    assert!(
        message.contains(HOTFIX) && message.contains("kubectl-set"),
        "the message says what changed and who changed it: {message}"
    );
    let note = f.wait_event(name, "Warning", "OutsideEdit").await?;
    assert!(note.contains(HOTFIX), "{note}");

    // Well past the pause, the release has not overwritten the hotfix.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let release = f.release(name).await?;
    assert_eq!(status(&release).phase, Some(ReleasePhase::Paused));
    assert_eq!(stage_phase(&release, "prod"), Some(StagePhase::Progressing));
    assert_eq!(
        f.template("prod").await?,
        with_image(f.before("prod"), HOTFIX),
        "the hotfix is still what prod runs"
    );

    // The explicit decision: abort. The canary goes, the hotfix stays.
    f.patch_spec(name, json!({"abort": true})).await?;
    let release = f.wait_phase(name, ReleasePhase::RolledBack).await?;
    f.wait_no_canary("prod").await?;
    assert_eq!(
        f.template("prod").await?,
        with_image(f.before("prod"), HOTFIX)
    );
    let rollback = status(&release).rollbacks.last().cloned().unwrap();
    assert!(
        rollback.message.contains("not restored"),
        "the record says the Deployment was left as edited: {}",
        rollback.message
    );
    // An ended release keeps its hands off it too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        f.template("prod").await?,
        with_image(f.before("prod"), HOTFIX)
    );
    f.finish().await
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn scaling_the_stable_deployment_mid_rollout_is_allowed_and_kept() -> Result<()> {
    let f = Fixture::start("rel-scale").await?;
    let name = "shop-1.1.0";
    start_release(&f, name, "3s").await?;
    // `kubectl scale` (the scale subresource), as an HPA would.
    f.deployments("prod")
        .patch_scale(
            PIPELINE_DEPLOYMENT,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": PROD_REPLICAS + 1}})),
        )
        .await?;
    let release = f.wait_phase(name, ReleasePhase::Succeeded).await?;
    assert!(status(&release).rollbacks.is_empty());
    let prod: Deployment = f.deployments("prod").get(PIPELINE_DEPLOYMENT).await?;
    assert_eq!(
        prod.spec.unwrap().replicas,
        Some(PROD_REPLICAS + 1),
        "the replica change is never overwritten"
    );
    assert_eq!(
        f.template("prod").await?,
        released(f.before("prod"), NEW_IMAGE)
    );
    f.finish().await
}

/// A real HorizontalPodAutoscaler (autoscaling/v2) on prod's stable Deployment, created
/// mid-rollout with `minReplicas` above its replicas. There is no metrics API on the test
/// control plane, but the kube-controller-manager's HPA controller raises a target below
/// `minReplicas` to it before it asks for metrics (its Event says "Current number of
/// replicas below Spec.MinReplicas"), then stays there (ScalingActive False: no metrics).
/// The release goes on and succeeds; the canary is sized from the HPA's replicas (25 % of
/// 7 stable pods: 2 canary pods instead of 1), so it follows the autoscaler rather than
/// fighting it; and the operator never writes `spec.replicas` of the stable Deployment:
/// the HPA's number stays from the moment it is set to the end, and the field's owner in
/// `managedFields` is the HPA controller, never the `stagecoach` field manager.
#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn an_hpa_scaling_the_stable_deployment_mid_rollout_is_followed_and_never_overwritten()
-> Result<()> {
    const HPA_MIN: i32 = PROD_REPLICAS + 3;
    let f = Fixture::start("rel-hpa").await?;
    let name = "shop-1.1.0";
    // Long enough for the HPA controller's first pass (its sync period is 15 s) and the
    // canary's resize to happen within the pause.
    start_release(&f, name, "45s").await?;
    let canary = f.canary("prod").await?.unwrap();
    assert_eq!(
        canary.spec.unwrap().replicas,
        Some(expected_canary(25, PROD_REPLICAS)),
        "the canary before the HPA"
    );

    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(f.client.clone(), f.ns("prod"));
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": PIPELINE_DEPLOYMENT},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": PIPELINE_DEPLOYMENT},
            "minReplicas": HPA_MIN,
            "maxReplicas": HPA_MIN + 3,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}
            }}],
        }
    }))?;
    hpas.create(&PostParams::default(), &hpa).await?;
    let created = Instant::now();
    eventually(Duration::from_secs(60), || async {
        let d = f.deployments("prod").get(PIPELINE_DEPLOYMENT).await?;
        Ok((d.spec.unwrap().replicas == Some(HPA_MIN)).then_some(()))
    })
    .await
    .context("the HPA never scaled prod to its minReplicas")?;
    println!(
        "the HPA scaled prod to {HPA_MIN} {:.1}s after it was created",
        created.elapsed().as_secs_f64()
    );
    let events: Api<Event> = Api::namespaced(f.client.clone(), f.ns("prod"));
    let rescale = eventually(Duration::from_secs(20), || async {
        Ok(events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .find_map(|e| {
                let about_hpa = e
                    .regarding
                    .as_ref()
                    .is_some_and(|r| r.kind.as_deref() == Some("HorizontalPodAutoscaler"));
                (about_hpa && e.reason.as_deref() == Some("SuccessfulRescale"))
                    .then(|| e.note.unwrap_or_default())
            }))
    })
    .await
    .context("no SuccessfulRescale Event of the HPA")?;
    assert!(
        rescale.contains(&format!("New size: {HPA_MIN}"))
            && rescale.contains("below Spec.MinReplicas"),
        "{rescale}"
    );

    // Still in the pause, the canary follows: 25 % next to the HPA's 7.
    let resized = eventually(Duration::from_secs(30), || async {
        let c = f.canary("prod").await?.context("the canary is gone")?;
        Ok((c.spec.unwrap().replicas == Some(expected_canary(25, HPA_MIN))).then_some(()))
    })
    .await;
    let release = f.release(name).await?;
    resized.with_context(|| {
        format!(
            "the canary was not resized to {} for {HPA_MIN} stable pods; prod's step: {:?}",
            expected_canary(25, HPA_MIN),
            stage_step(&release, "prod")
        )
    })?;
    assert_eq!(
        stage_step(&release, "prod"),
        Some(1),
        "the canary was resized during the pause"
    );

    // Until the release ends, and after, prod keeps the HPA's replicas.
    let release = eventually(ROLLOUT_TIMEOUT, || async {
        let d = f.deployments("prod").get(PIPELINE_DEPLOYMENT).await?;
        let replicas = d.spec.unwrap().replicas;
        ensure!(
            replicas == Some(HPA_MIN),
            "prod's replicas became {replicas:?} (the HPA set {HPA_MIN})"
        );
        let r = f.release(name).await?;
        let phase = status(&r).phase;
        if is_terminal(phase) {
            ensure!(
                phase == Some(ReleasePhase::Succeeded),
                "the release ended {phase:?}"
            );
            return Ok(Some(r));
        }
        Ok(None)
    })
    .await
    .with_context(|| "prod's replicas changed or the release did not succeed")?;
    assert!(status(&release).rollbacks.is_empty());
    assert_eq!(
        condition(&release, "Degraded").map(|c| c.0),
        Some(ConditionStatus::False),
        "scaling is no outside edit"
    );
    assert!(repeated_steps(&release).is_empty());
    f.wait_no_canary("prod").await?;
    assert_eq!(
        f.template("prod").await?,
        released(f.before("prod"), NEW_IMAGE)
    );

    // All of the HPA's pods run the new version.
    eventually(Duration::from_secs(60), || async {
        let d = f.deployments("prod").get(PIPELINE_DEPLOYMENT).await?;
        let s = d.status.unwrap_or_default();
        Ok((s.updated_replicas == Some(HPA_MIN)
            && s.available_replicas == Some(HPA_MIN)
            && s.replicas == Some(HPA_MIN))
        .then_some(()))
    })
    .await
    .with_context(|| format!("prod never ran {HPA_MIN} updated, available pods"))?;

    let prod: Deployment = f.deployments("prod").get(PIPELINE_DEPLOYMENT).await?;
    let owns_replicas = |entry: &ManagedFieldsEntry| {
        entry
            .fields_v1
            .as_ref()
            .is_some_and(|f| f.0["f:spec"].get("f:replicas").is_some())
    };
    let managed = prod.metadata.managed_fields.clone().unwrap_or_default();
    let owners: Vec<_> = managed
        .iter()
        .filter(|e| owns_replicas(e))
        .map(|e| (e.manager.clone(), e.subresource.clone()))
        .collect();
    assert_eq!(
        owners,
        [(
            Some("kube-controller-manager".to_owned()),
            Some("scale".to_owned())
        )],
        "spec.replicas belongs to the HPA's scale writes alone"
    );
    let stagecoach: Vec<_> = managed
        .iter()
        .filter(|e| e.manager.as_deref() == Some(FIELD_MANAGER))
        .collect();
    assert!(
        !stagecoach.is_empty() && stagecoach.iter().all(|e| !owns_replicas(e)),
        "the operator manages the template, never the replicas: {stagecoach:?}"
    );

    // The HPA saw nothing fight it: it still wants its minimum, which runs.
    let hpa = hpas.get(PIPELINE_DEPLOYMENT).await?;
    let hpa_status = hpa.status.unwrap_or_default();
    assert_eq!(hpa_status.desired_replicas, HPA_MIN);
    println!(
        "HPA conditions at the end: {:?}",
        hpa_status
            .conditions
            .unwrap_or_default()
            .iter()
            .map(|c| format!(
                "{}={} ({})",
                c.type_,
                c.status,
                c.reason.clone().unwrap_or_default()
            ))
            .collect::<Vec<_>>()
    );
    f.finish().await
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_deleted_deployment_fails_the_stage_at_once_and_its_canary_goes() -> Result<()> {
    let f = Fixture::start("rel-gone").await?;
    let name = "shop-1.1.0";
    start_release(&f, name, "60s").await?;
    let deleted = Instant::now();
    f.deployments("prod")
        .delete(PIPELINE_DEPLOYMENT, &DeleteParams::background())
        .await?;
    let release = f.wait_phase(name, ReleasePhase::Failed).await?;
    let took = deleted.elapsed();
    ensure!(
        took < Duration::from_secs(20),
        "reported after {took:?}, not at once"
    );
    assert_eq!(stage_phase(&release, "prod"), Some(StagePhase::Failed));
    assert!(
        status(&release).rollbacks.is_empty(),
        "no rollback is claimed: {:?}",
        status(&release).rollbacks
    );
    assert_eq!(
        condition(&release, "Degraded"),
        Some((ConditionStatus::True, "DeploymentDeleted".into()))
    );
    let message = status(&release).message.unwrap_or_default();
    assert!(
        !message.contains("rolled back") && message.contains("nothing to restore"),
        "{message}"
    );
    f.wait_event(name, "Warning", "DeploymentDeleted").await?;
    f.wait_no_canary("prod").await?;
    ensure!(
        f.deployments("prod")
            .get_opt(PIPELINE_DEPLOYMENT)
            .await?
            .is_none(),
        "nothing was recreated"
    );
    f.finish().await
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn deleting_a_release_mid_rollout_rolls_back_and_cleans_up_even_if_the_operator_dies()
-> Result<()> {
    let mut f = Fixture::start("rel-delete").await?;
    let name = "shop-1.1.0";
    start_release(&f, name, "120s").await?;
    ensure!(
        revisions_of(&f, name).await?.len() == STAGES.len(),
        "every stage recorded its stable revision"
    );

    // Delete it while no operator runs: the finalizer keeps the object (and so the
    // record of how to restore prod) until an operator has cleaned up.
    f.operator.take().unwrap().kill().await?;
    f.releases.delete(name, &DeleteParams::default()).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = f.release(name).await?;
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(f.canary("prod").await?.is_some());

    // An operator that dies as soon as it has decided the rollback.
    let operator = Operator::start("rel-delete-1", &f.pipeline.home.name)?;
    let decided = eventually(Duration::from_secs(60), || async {
        let r = f.releases.get_opt(name).await?;
        Ok(match r {
            None => Some(false),
            Some(r) if status(&r).phase == Some(ReleasePhase::RolledBack) => Some(true),
            Some(_) => None,
        })
    })
    .await
    .with_context(|| format!("no rollback decided; log:\n{}", operator.log_tail(30)))?;
    operator.kill().await?;
    println!("operator killed after the rollback was decided: {decided}");

    f.operator = Some(Operator::start_ready("rel-delete-2", &f.pipeline.home.name).await?);
    eventually(Duration::from_secs(60), || async {
        Ok(f.releases.get_opt(name).await?.is_none().then_some(()))
    })
    .await
    .with_context(|| {
        format!(
            "the Release was never let go; log:\n{}",
            f.operator().log_tail(30)
        )
    })?;
    f.wait_template("prod", f.before("prod")).await?;
    f.wait_no_canary("prod").await?;
    for stage in ["dev", "qa", "demo"] {
        assert_eq!(
            f.template(stage).await?,
            released(f.before(stage), NEW_IMAGE),
            "{stage} had succeeded and keeps the new version"
        );
    }
    let left = revisions_of(&f, name).await?;
    assert!(left.is_empty(), "recorded revisions left behind: {left:?}");
    f.finish().await
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn deleting_a_release_that_ended_lets_it_go_at_once() -> Result<()> {
    let f = Fixture::start("rel-delete-done").await?;
    let name = "shop-1.1.0";
    f.create_release(&release_manifest(
        name,
        APP,
        "1.1.0",
        NEW_IMAGE,
        &stages_spec(&f.pipeline, &json!([{"setWeight": 100}]), "1s"),
    ))
    .await?;
    f.wait_phase(name, ReleasePhase::Succeeded).await?;
    let started = Instant::now();
    f.releases.delete(name, &DeleteParams::default()).await?;
    eventually(Duration::from_secs(30), || async {
        Ok(f.releases.get_opt(name).await?.is_none().then_some(()))
    })
    .await?;
    println!("let go in {:?}", started.elapsed());
    for (stage, _) in STAGES {
        assert_eq!(
            f.template(stage).await?,
            released(f.before(stage), NEW_IMAGE),
            "{stage} keeps what shipped"
        );
    }
    assert!(revisions_of(&f, name).await?.is_empty());
    f.finish().await
}
