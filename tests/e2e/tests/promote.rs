//! Promoting a pause without duration, end to end: the real plugin binary
//! (`target/debug/kubectl-stagecoach`, built by `cargo xtask test`) against the real
//! control plane and operator. An early promote (pressed before the release reaches the
//! pause) ends the pause when the release gets there; an annotation that names a step
//! that is not a pause without duration is reported (Warning Event, Progressing
//! condition), and the plugin refuses such a step and says why.

#![allow(clippy::unwrap_used)]

mod release_support;

use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use stagecoach_api::condition::ConditionStatus;
use stagecoach_api::release::{ReleasePhase, StagePhase};
use stagecoach_e2e::{Pipeline, release_manifest, repo_root};

use release_support::*;

const PROMOTE: &str = "stagecoach.dev/promote";

/// The pipeline with `dev_steps` in dev (the stage a release is in right after it is
/// created), one step everywhere else and short early life support.
fn stages_with_dev(pipeline: &Pipeline, dev_steps: &Value) -> Vec<Value> {
    let mut stages = stages_spec(pipeline, &json!([{"setWeight": 100}]), "5s");
    stages[0]["steps"] = dev_steps.clone();
    stages
}

/// Runs `kubectl stagecoach <args> -n <namespace>` (KUBECONFIG comes from the test's
/// environment).
async fn plugin(f: &Fixture, args: &[&str]) -> Result<Output> {
    let binary = std::env::var_os("KUBECTL_STAGECOACH_BIN").map_or_else(
        || repo_root().join("target/debug/kubectl-stagecoach"),
        std::path::PathBuf::from,
    );
    tokio::process::Command::new(&binary)
        .args(args)
        .args(["-n", &f.pipeline.home.name])
        .output()
        .await
        .with_context(|| {
            format!(
                "running {} (cargo build -p kubectl-stagecoach)",
                binary.display()
            )
        })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn annotation(release: &stagecoach_api::Release) -> Option<String> {
    release.metadata.annotations.as_ref()?.get(PROMOTE).cloned()
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn an_early_promote_ends_the_pause_when_the_release_reaches_it() -> Result<()> {
    let f = Fixture::start("promote-early").await?;
    let name = "shop-1-1-0";
    // dev: 50 %, a timed pause (the window to press promote in), 100 %, a pause without
    // duration.
    let dev = json!([
        {"setWeight": 50}, {"pause": {"duration": "15s"}}, {"setWeight": 100}, {"pause": {}}
    ]);
    f.create_release(&release_manifest(
        name,
        APP,
        "1.1.0",
        NEW_IMAGE,
        &stages_with_dev(&f.pipeline, &dev),
    ))
    .await?;
    f.wait_release(name, "the timed pause dev/1", ROLLOUT_TIMEOUT, |r| {
        stage_step(r, "dev") == Some(1)
    })
    .await?;

    // Pressed early: the plugin skips the timed pause (it ends by itself) and names dev/3.
    let out = plugin(&f, &["promote", name]).await?;
    let stdout = text(&out.stdout);
    ensure!(
        out.status.success(),
        "promote failed: {}{}",
        stdout,
        text(&out.stderr)
    );
    ensure!(
        stdout.contains("promote dev/3 requested")
            && stdout.contains("it ends that pause when the release gets there")
            && stdout.contains("the release is at dev/1 (pause 15s"),
        "{stdout}"
    );
    ensure!(
        annotation(&f.release(name).await?).as_deref() == Some("dev/3"),
        "the annotation names the pause ahead"
    );

    // No other promote: the release passes dev/3 and goes all the way.
    let done = f.wait_phase(name, ReleasePhase::Succeeded).await?;
    ensure!(
        stage_phase(&done, "prod") == Some(StagePhase::Succeeded),
        "{:?}",
        done.status
    );
    let ignored: Vec<_> = f
        .events(name)
        .await?
        .into_iter()
        .filter(|(_, reason, _)| reason == "PromoteIgnored")
        .collect();
    ensure!(ignored.is_empty(), "nothing to report: {ignored:?}");

    // The release has ended: every command that would change it refuses and says why.
    for command in ["promote", "pause", "resume", "abort"] {
        let out = plugin(&f, &[command, name]).await?;
        let stderr = text(&out.stderr);
        ensure!(
            !out.status.success() && stderr.contains("has finished (Succeeded)"),
            "{command}: {:?} {stderr}",
            out.status
        );
    }
    let out = plugin(&f, &["history", "no-such-release"]).await?;
    ensure!(
        !out.status.success()
            && text(&out.stderr).contains("release no-such-release not found in namespace"),
        "{}",
        text(&out.stderr)
    );
    f.finish().await
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_promote_naming_a_step_that_is_not_a_pause_is_reported_and_refused() -> Result<()> {
    let f = Fixture::start("promote-invalid").await?;
    let name = "shop-1-1-0";
    let dev = json!([{"setWeight": 100}, {"pause": {}}]);
    f.create_release(&release_manifest(
        name,
        APP,
        "1.1.0",
        NEW_IMAGE,
        &stages_with_dev(&f.pipeline, &dev),
    ))
    .await?;
    f.wait_release(name, "the pause dev/1", ROLLOUT_TIMEOUT, |r| {
        stage_step(r, "dev") == Some(1) && status(r).phase == Some(ReleasePhase::Paused)
    })
    .await?;

    // The plugin refuses a step that is not a pause without duration, and a resume of a
    // release that waits for promotion, saying why.
    let out = plugin(&f, &["promote", name, "--stage", "dev", "--step", "0"]).await?;
    let stderr = text(&out.stderr);
    ensure!(
        !out.status.success()
            && stderr.contains("cannot promote dev/0: it is a setWeight 100 step")
            && stderr.contains("it waits for promotion (stagecoach.dev/promote=dev/1)"),
        "{:?} {stderr}",
        out.status
    );
    let out = plugin(&f, &["resume", name]).await?;
    ensure!(
        !out.status.success() && text(&out.stderr).contains("kubectl stagecoach promote"),
        "{}",
        text(&out.stderr)
    );

    // What the old plugin wrote (and what a GitOps repository may hold): dev/0.
    f.releases
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {PROMOTE: "dev/0"}}})),
        )
        .await?;
    let note = f.wait_event(name, "Warning", "PromoteIgnored").await?;
    ensure!(
        note.contains("stagecoach.dev/promote=dev/0 is ignored: dev/0 is a setWeight 100 step"),
        "{note}"
    );
    let held = f
        .wait_release(
            name,
            "the Progressing condition says so",
            Duration::from_secs(20),
            |r| {
                condition(r, "Progressing")
                    == Some((ConditionStatus::False, "PromoteIgnored".into()))
            },
        )
        .await?;
    let message = status(&held)
        .conditions
        .iter()
        .find(|c| c.r#type == "Progressing")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    ensure!(
        message.contains("dev/0 is a setWeight 100 step")
            && message.contains("the release is at dev/1"),
        "{message}"
    );
    ensure!(
        stage_step(&held, "dev") == Some(1),
        "dev/0 ends nothing: the release still waits at dev/1"
    );
    let out = plugin(&f, &["status", name]).await?;
    ensure!(
        out.status.success()
            && text(&out.stdout)
                .contains("promote:  annotation stagecoach.dev/promote=dev/0 is ignored"),
        "{}",
        text(&out.stdout)
    );

    // One Event, not one per reconcile.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let warnings = f
        .events(name)
        .await?
        .into_iter()
        .filter(|(t, reason, _)| t == "Warning" && reason == "PromoteIgnored")
        .count();
    ensure!(warnings == 1, "{warnings} PromoteIgnored Events");

    // The plugin's promote names the pause the release waits at, and it continues.
    let out = plugin(&f, &["promote", name]).await?;
    ensure!(
        out.status.success()
            && text(&out.stdout).contains("promote dev/1 requested")
            && text(&out.stdout).contains("the release waits there now"),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let done = f.wait_phase(name, ReleasePhase::Succeeded).await?;
    ensure!(
        condition(&done, "Progressing").is_some_and(|(_, reason)| reason != "PromoteIgnored"),
        "{:?}",
        condition(&done, "Progressing")
    );
    f.finish().await
}
