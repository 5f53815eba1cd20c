//! The metrics behind the dashboard's rollout, gate and OFREP panels carry real values
//! from a real release: stages in progress per stage while it rolls out (and none after),
//! the built-in gate's verdicts per stage, and the OFREP latency histogram.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use stagecoach_api::Release;
use stagecoach_api::release::ReleasePhase;
use stagecoach_e2e::{Operator, Pipeline, client, eventually, install_crds, release_manifest};

const OLD_IMAGE: &str = "example/shop-api:1.0.0";
const NEW_IMAGE: &str = "example/shop-api:1.1.0";

/// The most a gauge series showed while sampled, per label text.
#[derive(Default, Debug)]
struct Peaks {
    dev: f64,
    prod: f64,
}

/// The built-in gate: prod's two weight steps passed, and so did dev's one.
async fn check_gate_verdicts(operator: &Operator) -> Result<()> {
    let verdicts = |stage: &str, verdict: &str| {
        let labels = format!("gate=\"workload-health\",stage=\"{stage}\",verdict=\"{verdict}\"");
        async move {
            operator
                .metric("stagecoach_gate_verdicts_total", &labels)
                .await
        }
    };
    let (dev_passing, prod_passing, prod_failing) = (
        verdicts("dev", "Passing").await?,
        verdicts("prod", "Passing").await?,
        verdicts("prod", "Failing").await?,
    );
    println!(
        "workload-health verdicts: dev Passing {dev_passing}, prod Passing {prod_passing}, \
         prod Inconclusive {}, prod Failing {prod_failing}",
        verdicts("prod", "Inconclusive").await?
    );
    ensure!(dev_passing >= 1.0, "dev's gate passed: {dev_passing}");
    ensure!(
        prod_passing >= 2.0,
        "prod's gate passed at 50 % and at 100 %: {prod_passing}"
    );
    ensure!(prod_failing < 0.5, "nothing failed: {prod_failing}");
    Ok(())
}

/// OFREP: every answer is timed, per endpoint (here 404: the application has no toggles).
async fn check_ofrep_latency(operator: &Operator, home: &str) -> Result<()> {
    let http = reqwest::Client::new();
    let single = format!(
        "{}/apps/{home}/shop/stages/dev/ofrep/v1/evaluate/flags/new-ui",
        operator.ofrep_url()
    );
    for _ in 0..3 {
        let answer = http
            .post(&single)
            .body(r#"{"context":{"targetingKey":"u1"}}"#)
            .send()
            .await?;
        ensure!(answer.status() == 404, "{}", answer.status());
    }
    let count = operator
        .metric(
            "stagecoach_ofrep_request_duration_seconds_count",
            "endpoint=\"single\"",
        )
        .await?;
    let sum = operator
        .metric(
            "stagecoach_ofrep_request_duration_seconds_sum",
            "endpoint=\"single\"",
        )
        .await?;
    let slowest_bucket = operator
        .metric(
            "stagecoach_ofrep_request_duration_seconds_bucket",
            "endpoint=\"single\",le=\"+Inf\"",
        )
        .await?;
    println!("OFREP single: {count} answers in {sum:.6}s");
    ensure!(
        (count - 3.0).abs() < 0.5 && (slowest_bucket - 3.0).abs() < 0.5,
        "three answers timed: count {count}, +Inf bucket {slowest_bucket}"
    );
    ensure!(sum > 0.0 && sum < 3.0, "their time adds up: {sum}");
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn rollout_gate_and_ofrep_metrics_have_real_values() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let pipeline =
        Pipeline::create(&client, "metrics", &[("dev", 1), ("prod", 2)], OLD_IMAGE).await?;
    let home = pipeline.home.name.clone();
    let operator = Operator::start_ready("metrics", &home).await?;
    let stages = [
        json!({"name": "dev", "namespace": pipeline.namespace("dev")}),
        json!({
            "name": "prod", "namespace": pipeline.namespace("prod"),
            "steps": [{"setWeight": 50}, {"pause": {"duration": "2s"}}, {"setWeight": 100}],
            "earlyLifeSupport": {"duration": "2s"}
        }),
    ];
    let name = "shop-1.1.0";
    let releases: Api<Release> = Api::namespaced(client.clone(), &home);
    let manifest = release_manifest(name, "shop", "1.1.0", NEW_IMAGE, &stages);
    releases
        .create(&PostParams::default(), &serde_json::from_value(manifest)?)
        .await?;

    // Sample the in-progress gauge until the release has succeeded.
    let in_progress = |stage: &'static str| {
        let operator = &operator;
        async move {
            operator
                .metric(
                    "stagecoach_stage_rollouts_in_progress",
                    &format!("stage=\"{stage}\""),
                )
                .await
        }
    };
    let mut peaks = Peaks::default();
    let started = tokio::time::Instant::now();
    loop {
        peaks.dev = peaks.dev.max(in_progress("dev").await?);
        peaks.prod = peaks.prod.max(in_progress("prod").await?);
        let phase = releases.get(name).await?.status.and_then(|s| s.phase);
        if phase == Some(ReleasePhase::Succeeded) {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(180),
            "the release did not succeed within 3 minutes (phase {phase:?}); log:\n{}",
            operator.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("stages in progress, most seen: {peaks:?}");
    ensure!(
        (peaks.dev - 1.0).abs() < 0.5 && (peaks.prod - 1.0).abs() < 0.5,
        "each stage was in progress once: {peaks:?}"
    );
    // Done: no stage is in progress any more (the gauge is set after each reconcile).
    eventually(Duration::from_secs(10), || async {
        Ok((in_progress("dev").await? + in_progress("prod").await? < 0.5).then_some(()))
    })
    .await
    .context("stages still counted in progress after the release succeeded")?;

    check_gate_verdicts(&operator).await?;
    check_ofrep_latency(&operator, &home).await?;

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
    .await
    .context("the Release was never let go")?;
    operator.stop().await?;
    pipeline.delete().await
}
