//! The release engine end to end, on the real control plane, with the real operator
//! binary. Every test builds its own pipeline (a namespace for the Release, one namespace
//! per stage running the Deployment `api`) and its own operator watching only that
//! Release namespace, and asserts what a user would see: the images and pod templates in
//! every stage namespace, canaries, recorded stable revisions, the Release's status and
//! its Events.
//!
//! (a) a release travels dev -> qa -> demo -> prod, canary steps in prod, capacity
//!     sampled throughout; (b) a `bad` image is rolled back at dev's first step;
//! (c) a release failing only in prod at a partial weight; (d) a release failing during
//! early life support; (e) the operator SIGKILLed again and again during one rollout;
//! (f) a newer release supersedes an older one; (g) pause and resume, and abort;
//! (h) no writes for 60 seconds once a release has succeeded.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod release_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use release_support::*;
use serde_json::json;
use stagecoach_api::condition::ConditionStatus;
use stagecoach_api::release::{ReleasePhase, StagePhase};
use stagecoach_e2e::{
    Operator, PIPELINE_DEPLOYMENT, pod_is_ready, random_below, release_manifest,
    wait_until_rolled_out,
};

// ----- sampling prod while it rolls out --------------------------------------------------------

/// What was seen in prod, sampled every 200 ms until the release ended.
#[derive(Debug, Default)]
struct CapacitySamples {
    samples: usize,
    /// Fewest Ready, non-terminating pods behind the Service selector `app=api`.
    min_ready_pods: i32,
    /// Fewest `readyReplicas` of the stable Deployment plus the canary's.
    min_ready_replicas: i32,
    /// Every canary size (spec.replicas) seen.
    canary_sizes: BTreeSet<i32>,
    /// Most Ready canary pods seen at once.
    max_ready_canary_pods: i32,
}

async fn sample_prod_capacity(f: &Fixture, name: &str) -> Result<CapacitySamples> {
    let mut seen = CapacitySamples {
        min_ready_pods: i32::MAX,
        min_ready_replicas: i32::MAX,
        ..CapacitySamples::default()
    };
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let deadline = Instant::now() + ROLLOUT_TIMEOUT;
    loop {
        tick.tick().await;
        ensure!(
            Instant::now() < deadline,
            "{}",
            f.explain(name, "an end").await
        );
        let pods = f
            .pods("prod")
            .list(&ListParams::default().labels(&format!("app={PIPELINE_DEPLOYMENT}")))
            .await?
            .items;
        let ready: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && pod_is_ready(p))
            .collect();
        let ready_canary = ready
            .iter()
            .filter(|p| p.labels().get("stagecoach.dev/role").map(String::as_str) == Some("canary"))
            .count();
        let stable = f.deployments("prod").get(PIPELINE_DEPLOYMENT).await?;
        let canary = f.canary("prod").await?;
        let ready_of = |d: &Deployment| {
            d.status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0)
        };
        seen.samples += 1;
        seen.min_ready_pods = seen.min_ready_pods.min(i32::try_from(ready.len())?);
        seen.min_ready_replicas = seen
            .min_ready_replicas
            .min(ready_of(&stable) + canary.as_ref().map_or(0, ready_of));
        seen.max_ready_canary_pods = seen.max_ready_canary_pods.max(i32::try_from(ready_canary)?);
        if let Some(size) = canary.and_then(|c| c.spec).and_then(|s| s.replicas) {
            seen.canary_sizes.insert(size);
        }
        if is_terminal(status(&f.release(name).await?).phase) {
            return Ok(seen);
        }
    }
}

// ----- (a) ---------------------------------------------------------------------------------------

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_release_travels_through_every_stage_with_canary_steps_in_prod() -> Result<()> {
    let _ = IGNORE;
    let f = Fixture::start("rel-travel").await?;
    let name = "shop-1.1.0";
    let steps = canary_steps("3s");
    f.create_release(&release_manifest(
        name,
        APP,
        "1.1.0",
        NEW_IMAGE,
        &stages_spec(&f.pipeline, &steps, "5s"),
    ))
    .await?;

    let seen = sample_prod_capacity(&f, name).await?;
    println!("prod samples: {seen:?}");
    let release = f.wait_phase(name, ReleasePhase::Succeeded).await?;

    // Capacity never dropped below the desired replicas while prod rolled out.
    assert!(seen.samples > 20, "sampled {} times", seen.samples);
    assert!(
        seen.min_ready_pods >= PROD_REPLICAS,
        "ready pods behind the Service selector fell to {} (desired {PROD_REPLICAS})",
        seen.min_ready_pods
    );
    assert!(
        seen.min_ready_replicas >= PROD_REPLICAS,
        "readyReplicas of stable + canary fell to {} (desired {PROD_REPLICAS})",
        seen.min_ready_replicas
    );
    // The canary ran at 25 % and 50 %, sized to be that share of the ready pods.
    let expected: BTreeSet<i32> = [25, 50]
        .into_iter()
        .map(|w| expected_canary(w, PROD_REPLICAS))
        .collect();
    assert_eq!(
        seen.canary_sizes, expected,
        "canary sizes at 25 % and 50 % of {PROD_REPLICAS}"
    );
    assert_eq!(
        seen.max_ready_canary_pods,
        expected_canary(50, PROD_REPLICAS)
    );

    f.assert_released_everywhere(name, NEW_IMAGE, &f.before)
        .await?;
    assert_succeeded_status(&release, 5);
    f.wait_event(name, "Normal", "Succeeded").await?;
    assert!(
        f.operator()
            .metric("stagecoach_rollbacks_total", "")
            .await?
            .abs()
            < 0.5
    );
    // Every stage's start is an Event of its own, as `kubectl describe release` shows.
    for (stage, _) in STAGES {
        let event = f.events(name).await?.into_iter().find(|(t, r, n)| {
            t == "Normal" && r == "StageStarted" && n.starts_with(&format!("stage {stage} started"))
        });
        assert!(event.is_some(), "a StageStarted Event for {stage}");
    }
    f.finish().await
}

// ----- (b) ---------------------------------------------------------------------------------------

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_bad_image_is_rolled_back_at_the_first_step_of_the_first_stage() -> Result<()> {
    let f = Fixture::start("rel-bad").await?;
    let name = "shop-1.1.1";
    f.create_release(&release_manifest(
        name,
        APP,
        "1.1.1",
        BAD_IMAGE,
        &stages_spec(&f.pipeline, &canary_steps("3s"), "5s"),
    ))
    .await?;
    let release = f.wait_phase(name, ReleasePhase::RolledBack).await?;
    let s = status(&release);

    // dev is back on exactly the template it ran before, on its old pods.
    f.wait_template("dev", f.before("dev")).await?;
    f.wait_no_canary("dev").await?;
    f.wait_pods_on("dev", OLD_IMAGE).await?;
    wait_until_rolled_out(
        &f.client,
        f.ns("dev"),
        PIPELINE_DEPLOYMENT,
        Duration::from_secs(60),
    )
    .await?;
    assert_eq!(
        f.recorded_template("dev", name).await?.as_ref(),
        Some(f.before("dev"))
    );
    // Later stages were never touched.
    for stage in ["qa", "demo", "prod"] {
        f.assert_untouched(stage, name).await?;
        assert_eq!(stage_phase(&release, stage), Some(StagePhase::Skipped));
    }

    assert_eq!(stage_phase(&release, "dev"), Some(StagePhase::RolledBack));
    assert_eq!(
        stage_step(&release, "dev"),
        Some(0),
        "failed at the first step"
    );
    assert_eq!(s.rollbacks.len(), 1, "{:?}", s.rollbacks);
    assert_eq!(s.rollbacks[0].stage, "dev");
    assert_eq!(s.rollbacks[0].reason, "GateFailed");
    assert!(
        s.rollbacks[0].message.contains("CrashLoopBackOff")
            || s.rollbacks[0].message.contains("restarted"),
        "{}",
        s.rollbacks[0].message
    );
    assert_eq!(
        condition(&release, "Ready"),
        Some((ConditionStatus::False, "RolledBack".into()))
    );
    assert_eq!(
        condition(&release, "Degraded"),
        Some((ConditionStatus::True, "GateFailed".into()))
    );
    assert_eq!(
        timeline_shape(&release),
        [
            ("dev".to_owned(), "StageStarted".to_owned()),
            ("dev".to_owned(), "RolledBack".to_owned())
        ]
    );
    let note = f.wait_event(name, "Warning", "RolledBack").await?;
    assert!(note.contains("dev"), "{note}");
    assert!(
        (f.operator()
            .metric("stagecoach_rollbacks_total", "reason=\"GateFailed\"")
            .await?
            - 1.0)
            .abs()
            < 0.5
    );
    f.finish().await
}

// ----- (c) ---------------------------------------------------------------------------------------

/// Marks every canary pod that appears in `namespace` unhealthy (kwok then turns it
/// NotReady with CrashLoopBackOff once it is Ready), until aborted.
fn make_canary_pods_unhealthy(client: &Client, namespace: &str) -> tokio::task::JoinHandle<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    tokio::spawn(async move {
        let config = watcher::Config::default().labels("stagecoach.dev/role=canary");
        let mut pods = watcher(api.clone(), config).applied_objects().boxed();
        while let Some(Ok(pod)) = pods.next().await {
            if pod.labels().contains_key(UNHEALTHY_LABEL) {
                continue;
            }
            let patch = json!({"metadata": {"labels": {UNHEALTHY_LABEL: "true"}}});
            let _ = api
                .patch(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await;
        }
    })
}

/// Marks the pods of `pods` unhealthy.
async fn mark_unhealthy(api: &Api<Pod>, pods: &[Pod]) -> Result<()> {
    let patch = json!({"metadata": {"labels": {UNHEALTHY_LABEL: "true"}}});
    for pod in pods {
        api.patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_release_failing_only_in_prod_at_a_partial_weight_rolls_back_prod_only() -> Result<()> {
    let f = Fixture::start("rel-prodfail").await?;
    let name = "shop-1.1.0";
    let saboteur = make_canary_pods_unhealthy(&f.client, f.ns("prod"));
    f.create_release(&release_manifest(
        name,
        APP,
        "1.1.0",
        NEW_IMAGE,
        &stages_spec(&f.pipeline, &canary_steps("3s"), "5s"),
    ))
    .await?;
    let release = f.wait_phase(name, ReleasePhase::RolledBack).await;
    saboteur.abort();
    let release = release?;
    let s = status(&release);

    assert_eq!(s.rollbacks.len(), 1, "{:?}", s.rollbacks);
    assert_eq!(s.rollbacks[0].stage, "prod");
    assert_eq!(s.rollbacks[0].reason, "GateFailed");
    assert!(
        s.rollbacks[0].message.contains("25%"),
        "rolled back at 25 %: {}",
        s.rollbacks[0].message
    );
    assert_eq!(stage_phase(&release, "prod"), Some(StagePhase::RolledBack));
    for stage in ["dev", "qa", "demo"] {
        assert_eq!(stage_phase(&release, stage), Some(StagePhase::Succeeded));
    }

    // prod: exactly the old template, no canary, old pods; the others keep the release.
    f.wait_template("prod", f.before("prod")).await?;
    f.wait_no_canary("prod").await?;
    f.wait_pods_on("prod", OLD_IMAGE).await?;
    for stage in ["dev", "qa", "demo"] {
        f.wait_template(stage, &released(f.before(stage), NEW_IMAGE))
            .await?;
        f.wait_pods_on(stage, NEW_IMAGE).await?;
    }
    f.wait_event(name, "Warning", "RolledBack").await?;
    f.finish().await
}

// ----- (d) ---------------------------------------------------------------------------------------

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_release_unhealthy_during_early_life_support_is_rolled_back() -> Result<()> {
    let f = Fixture::start("rel-els").await?;
    let name = "shop-1.1.0";
    f.create_release(&release_manifest(
        name,
        APP,
        "1.1.0",
        NEW_IMAGE,
        &stages_spec(&f.pipeline, &canary_steps("3s"), "60s"),
    ))
    .await?;
    f.wait_phase(name, ReleasePhase::EarlyLifeSupport).await?;
    let reached = Instant::now();
    f.wait_pods_on("prod", NEW_IMAGE).await?;

    let pods = f
        .pods("prod")
        .list(&ListParams::default().labels(&format!("app={PIPELINE_DEPLOYMENT}")))
        .await?
        .items;
    mark_unhealthy(&f.pods("prod"), &pods).await?;
    let release = f.wait_phase(name, ReleasePhase::RolledBack).await?;
    println!(
        "rolled back {:?} after early life support began",
        reached.elapsed()
    );
    assert!(
        reached.elapsed() < Duration::from_secs(55),
        "rolled back during early life support, not after it"
    );
    let s = status(&release);
    assert_eq!(s.rollbacks.len(), 1, "{:?}", s.rollbacks);
    assert_eq!(s.rollbacks[0].stage, "prod");
    assert_eq!(s.rollbacks[0].reason, "EarlyLifeSupportFailed");
    assert_eq!(stage_phase(&release, "prod"), Some(StagePhase::RolledBack));
    assert_eq!(
        condition(&release, "Degraded"),
        Some((ConditionStatus::True, "EarlyLifeSupportFailed".into()))
    );

    f.wait_template("prod", f.before("prod")).await?;
    f.wait_no_canary("prod").await?;
    f.wait_pods_on("prod", OLD_IMAGE).await?;
    for stage in ["dev", "qa", "demo"] {
        assert_eq!(stage_phase(&release, stage), Some(StagePhase::Succeeded));
        f.wait_template(stage, &released(f.before(stage), NEW_IMAGE))
            .await?;
    }
    f.wait_event(name, "Warning", "RolledBack").await?;
    assert!(
        (f.operator()
            .metric(
                "stagecoach_rollbacks_total",
                "reason=\"EarlyLifeSupportFailed\""
            )
            .await?
            - 1.0)
            .abs()
            < 0.5
    );
    f.finish().await
}

// ----- (e) ---------------------------------------------------------------------------------------

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn the_operator_killed_at_random_points_still_converges_without_repeating_a_step()
-> Result<()> {
    let mut f = Fixture::start("rel-kill").await?;
    let name = "shop-1.1.0";
    f.create_release(&release_manifest(
        name,
        APP,
        "1.1.0",
        NEW_IMAGE,
        &stages_spec(&f.pipeline, &canary_steps("5s"), "20s"),
    ))
    .await?;

    let mut kills = Vec::new();
    let started = Instant::now();
    loop {
        let delay = Duration::from_millis(2000 + random_below(3000));
        tokio::time::sleep(delay).await;
        let r = f.release(name).await?;
        if is_terminal(status(&r).phase) || started.elapsed() > ROLLOUT_TIMEOUT {
            break;
        }
        let where_ = format!(
            "{:?} {:?} step {:?}",
            status(&r).phase,
            status(&r).current_stage,
            status(&r).current_stage.and_then(|s| stage_step(&r, &s))
        );
        f.operator.take().unwrap().kill().await?;
        kills.push(format!("{:.1}s: {where_}", started.elapsed().as_secs_f64()));
        f.operator = Some(Operator::start(
            &format!("rel-kill-{}", kills.len()),
            &f.pipeline.home.name,
        )?);
    }
    println!("SIGKILLed {} times: {kills:#?}", kills.len());
    assert!(
        kills.len() >= 5,
        "only {} kills before the release ended",
        kills.len()
    );
    let release = f.wait_phase(name, ReleasePhase::Succeeded).await?;
    f.assert_released_everywhere(name, NEW_IMAGE, &f.before)
        .await?;
    assert_succeeded_status(&release, 5);
    f.finish().await
}

// ----- (f) ---------------------------------------------------------------------------------------

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_newer_release_supersedes_an_older_one_at_the_stages_it_has_not_entered() -> Result<()> {
    let f = Fixture::start("rel-super").await?;
    let (older, newer) = ("shop-1.1.0", "shop-1.2.0");
    // The older release takes a while in dev.
    let mut older_stages = stages_spec(&f.pipeline, &json!([{"setWeight": 100}]), "5s");
    older_stages[0]["steps"] = json!([
        {"setWeight": 50}, {"pause": {"duration": "4s"}}, {"setWeight": 100}
    ]);
    f.create_release(&release_manifest(
        older,
        APP,
        "1.1.0",
        NEW_IMAGE,
        &older_stages,
    ))
    .await?;
    f.wait_release(older, "dev Progressing", ROLLOUT_TIMEOUT, |r| {
        stage_phase(r, "dev") == Some(StagePhase::Progressing)
    })
    .await?;
    f.create_release(&release_manifest(
        newer,
        APP,
        "1.2.0",
        NEWER_IMAGE,
        &stages_spec(&f.pipeline, &json!([{"setWeight": 100}]), "5s"),
    ))
    .await?;

    // One release per stage: the newer one waits while the older one is in dev.
    let waiting = f
        .wait_release(
            newer,
            "waiting for the older release",
            Duration::from_secs(30),
            |r| {
                status(r).stages.iter().any(|s| {
                    s.name == "dev" && s.message.as_deref() == Some(&format!("waiting for {older}"))
                })
            },
        )
        .await?;
    assert_eq!(stage_phase(&waiting, "dev"), Some(StagePhase::Pending));

    let old = f.wait_phase(older, ReleasePhase::Superseded).await?;
    assert_eq!(stage_phase(&old, "dev"), Some(StagePhase::Succeeded));
    assert_eq!(
        f.recorded_template("dev", older).await?.as_ref(),
        Some(f.before("dev"))
    );
    for stage in ["qa", "demo", "prod"] {
        assert_eq!(
            stage_phase(&old, stage),
            Some(StagePhase::Skipped),
            "{stage}"
        );
        assert!(
            f.recorded_template(stage, older).await?.is_none(),
            "{older} never recorded a revision in {stage}"
        );
    }
    let superseded = status(&old)
        .timeline
        .into_iter()
        .find(|t| t.reason == "Superseded")
        .unwrap();
    assert_eq!(superseded.stage.as_deref(), Some("qa"));
    assert!(superseded.message.contains(newer), "{}", superseded.message);
    assert_eq!(
        condition(&old, "Ready"),
        Some((ConditionStatus::False, "Superseded".into()))
    );
    f.wait_event(older, "Normal", "Superseded").await?;

    let new = f.wait_phase(newer, ReleasePhase::Succeeded).await?;
    assert_succeeded_status(&new, 1);
    // dev ran the older release when the newer one started there; the rest ran the
    // pre-release template.
    let mut previous = f.before.clone();
    previous.insert("dev".into(), released(f.before("dev"), NEW_IMAGE));
    f.assert_released_everywhere(newer, NEWER_IMAGE, &previous)
        .await?;
    assert_eq!(
        status(&f.release(older).await?).phase,
        Some(ReleasePhase::Superseded),
        "the older release stays Superseded"
    );
    f.finish().await
}

// ----- (g) ---------------------------------------------------------------------------------------

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_release_can_be_paused_and_resumed() -> Result<()> {
    let f = Fixture::start("rel-pause").await?;
    let name = "shop-1.1.0";
    f.create_release(&release_manifest(
        name,
        APP,
        "1.1.0",
        NEW_IMAGE,
        &stages_spec(&f.pipeline, &canary_steps("3s"), "5s"),
    ))
    .await?;
    // Pause while prod runs its first canary.
    f.wait_release(name, "prod at 25 %", ROLLOUT_TIMEOUT, |r| {
        stage_step(r, "prod").is_some_and(|s| s >= 1)
    })
    .await?;
    f.patch_spec(name, json!({"paused": true})).await?;
    let paused = f.wait_phase(name, ReleasePhase::Paused).await?;
    let step = stage_step(&paused, "prod");
    let completed = status(&paused).timeline.len();
    let canary = f
        .canary("prod")
        .await?
        .and_then(|c| c.spec)
        .and_then(|s| s.replicas);
    assert_eq!(
        condition(&paused, "Progressing"),
        Some((ConditionStatus::False, "Paused".into()))
    );
    assert_eq!(
        status(&paused).observed_generation,
        paused.metadata.generation
    );
    println!("paused at prod step {step:?} with a canary of {canary:?}");

    // Nothing moves for longer than the pause step would have lasted.
    let held = Instant::now();
    while held.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = f.release(name).await?;
        assert_eq!(status(&r).phase, Some(ReleasePhase::Paused));
        assert_eq!(stage_step(&r, "prod"), step, "no new step while paused");
        assert_eq!(status(&r).timeline.len(), completed, "nothing happened");
        let now = f
            .canary("prod")
            .await?
            .and_then(|c| c.spec)
            .and_then(|s| s.replicas);
        assert_eq!(now, canary, "the canary stays as it is");
    }

    f.patch_spec(name, json!({"paused": false})).await?;
    let release = f.wait_phase(name, ReleasePhase::Succeeded).await?;
    assert_succeeded_status(&release, 5);
    f.assert_released_everywhere(name, NEW_IMAGE, &f.before)
        .await?;
    f.finish().await
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn aborting_a_release_mid_prod_rolls_prod_back() -> Result<()> {
    let f = Fixture::start("rel-abort").await?;
    let name = "shop-1.1.0";
    f.create_release(&release_manifest(
        name,
        APP,
        "1.1.0",
        NEW_IMAGE,
        &stages_spec(&f.pipeline, &canary_steps("3s"), "5s"),
    ))
    .await?;
    f.wait_release(name, "prod at 25 %", ROLLOUT_TIMEOUT, |r| {
        stage_step(r, "prod").is_some_and(|s| s >= 1)
    })
    .await?;
    assert!(f.canary("prod").await?.is_some(), "a canary runs in prod");
    f.patch_spec(name, json!({"abort": true})).await?;
    let release = f.wait_phase(name, ReleasePhase::RolledBack).await?;
    let s = status(&release);
    assert_eq!(s.rollbacks.len(), 1, "{:?}", s.rollbacks);
    assert_eq!(s.rollbacks[0].stage, "prod");
    assert_eq!(s.rollbacks[0].reason, "Aborted");
    assert_eq!(stage_phase(&release, "prod"), Some(StagePhase::RolledBack));

    f.wait_template("prod", f.before("prod")).await?;
    f.wait_no_canary("prod").await?;
    f.wait_pods_on("prod", OLD_IMAGE).await?;
    for stage in ["dev", "qa", "demo"] {
        assert_eq!(stage_phase(&release, stage), Some(StagePhase::Succeeded));
        f.wait_template(stage, &released(f.before(stage), NEW_IMAGE))
            .await?;
    }
    f.wait_event(name, "Warning", "RolledBack").await?;
    assert!(
        (f.operator()
            .metric("stagecoach_rollbacks_total", "reason=\"Aborted\"")
            .await?
            - 1.0)
            .abs()
            < 0.5
    );
    f.finish().await
}

// ----- (h) ---------------------------------------------------------------------------------------

/// resourceVersion of every Deployment in the pipeline's stage namespaces.
async fn deployment_versions(f: &Fixture) -> Result<BTreeMap<String, String>> {
    let mut versions = BTreeMap::new();
    for ns in f.pipeline.namespaces() {
        let api: Api<Deployment> = Api::namespaced(f.client.clone(), ns);
        for d in api.list(&ListParams::default()).await?.items {
            versions.insert(
                format!("{ns}/{}", d.name_any()),
                d.resource_version().unwrap_or_default(),
            );
        }
    }
    Ok(versions)
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn after_a_release_succeeded_the_operator_writes_nothing_for_a_minute() -> Result<()> {
    let f = Fixture::start("rel-quiet").await?;
    let name = "shop-1.1.0";
    f.create_release(&release_manifest(
        name,
        APP,
        "1.1.0",
        NEW_IMAGE,
        &stages_spec(&f.pipeline, &canary_steps("3s"), "5s"),
    ))
    .await?;
    f.wait_phase(name, ReleasePhase::Succeeded).await?;
    f.assert_released_everywhere(name, NEW_IMAGE, &f.before)
        .await?;

    // Wake the operator up with a change that is not a change (a label), then count.
    f.releases
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await?;
    let writes_before = f.release_metric("stagecoach_status_writes_total").await?;
    let reconciles_before = f.release_metric("stagecoach_reconciles_total").await?;
    let release_version = f.release(name).await?.resource_version();
    let versions = deployment_versions(&f).await?;
    let events = f.event_versions().await?;
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = f.release_metric("stagecoach_status_writes_total").await?;
        assert!(
            (now - writes_before).abs() < 0.5,
            "{now} status writes after {:?}, {writes_before} before; log:\n{}",
            window.elapsed(),
            f.operator().log_tail(20)
        );
    }
    let woken = f.release_metric("stagecoach_reconciles_total").await? - reconciles_before;
    println!(
        "60 s after success: {woken} reconciles, {} status writes (before: {writes_before})",
        f.release_metric("stagecoach_status_writes_total").await?
    );
    assert!(woken >= 1.0, "the label woke the operator up");
    assert_eq!(
        f.release(name).await?.resource_version(),
        release_version,
        "the Release was not written"
    );
    let after = deployment_versions(&f).await?;
    let changed: Vec<&String> = after
        .iter()
        .filter(|(k, v)| versions.get(*k) != Some(*v))
        .map(|(k, _)| k)
        .collect();
    assert!(changed.is_empty(), "Deployments changed: {changed:?}");
    assert_eq!(
        after.len(),
        versions.len(),
        "no Deployment created or deleted"
    );
    assert_eq!(
        f.event_versions().await?,
        events,
        "no Event created or updated"
    );
    f.finish().await
}
