//! Benchmarks of the release engine on the real control plane with the real operator.
//! Not tests: they print numbers and assert nothing about speed. Run them with
//! `cargo xtask bench` (a fresh control plane and a release build of the operator), or by
//! hand with KUBECONFIG and STAGECOACH_BIN set:
//!
//! ```text
//! cargo test -p stagecoach-e2e --bench release
//! ```
//!
//! STAGECOACH_BENCH_RUNS sets the number of repetitions (default 20).
//!
//! What is measured, both on the benchmark's own clock from watch events, so the numbers
//! are what a user watching the cluster would see:
//! - rollback latency: from the moment a pod of the release is seen in CrashLoopBackOff
//!   (a watch on pods) to the moment the Release is seen RolledBack (a watch on it);
//! - step overhead: from the moment the last canary pod of a step is seen Ready to the
//!   moment the Release is seen on its next step (StepCompleted), for every canary step.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use stagecoach_api::Release;
use stagecoach_api::release::ReleasePhase;
use stagecoach_e2e::{
    Operator, PIPELINE_DEPLOYMENT, Pipeline, client, eventually, install_crds, pod_image,
    pod_is_ready, pod_waiting_reason, release_manifest, wait_until_rolled_out,
};

const APP: &str = "bench";
const OLD_IMAGE: &str = "example/bench-api:1.0.0";
const DEV_REPLICAS: i32 = 2;
const PROD_REPLICAS: i32 = 4;
/// prod's canary steps in the step-overhead runs.
const CANARY_WEIGHTS: [i32; 2] = [20, 50];
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn runs() -> usize {
    std::env::var("STAGECOACH_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// Canary pods at weight `w` next to `desired` stable pods: round(w * d / (100 - w)),
/// at least one.
fn expected_canary(weight: i32, desired: i32) -> usize {
    let c = (weight * desired + (100 - weight) / 2) / (100 - weight);
    usize::try_from(c.max(1)).unwrap_or(1)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// (median, p99 by nearest rank, mean, max) of a sample, in its unit.
fn summary(values: &[f64]) -> (f64, f64, f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN, f64::NAN);
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        // Nearest rank: the smallest value with at least p of the sample at or below it.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let index = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[index]
    };
    #[allow(clippy::cast_precision_loss)]
    let mean = sorted.iter().sum::<f64>() / sorted.len() as f64;
    (rank(0.5), rank(0.99), mean, sorted[sorted.len() - 1])
}

fn print_table(rows: &[(&str, &[f64])]) {
    println!();
    println!(
        "| {:<52} | {:>4} | {:>10} | {:>8} | {:>8} | {:>8} |",
        "measure (ms)", "n", "median", "p99", "mean", "max"
    );
    println!(
        "|{:-<54}|{:-<6}|{:-<12}|{:-<10}|{:-<10}|{:-<10}|",
        "", "", "", "", "", ""
    );
    for (name, values) in rows {
        let (median, p99, mean, max) = summary(values);
        println!(
            "| {name:<52} | {:>4} | {median:>10.0} | {p99:>8.0} | {mean:>8.0} | {max:>8.0} |",
            values.len()
        );
    }
    println!();
}

/// Pod changes in a namespace, from now on (after the initial list).
fn pod_events(
    client: &Client,
    namespace: &str,
    labels: &str,
) -> impl Stream<Item = Result<Pod, watcher::Error>> + Send + use<> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    watcher(api, watcher::Config::default().labels(labels))
        .applied_objects()
        .boxed()
}

/// Changes of one Release.
fn release_events(
    api: &Api<Release>,
    name: &str,
) -> impl Stream<Item = Result<Release, watcher::Error>> + Send + use<> {
    watcher(
        api.clone(),
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .applied_objects()
    .boxed()
}

fn phase(release: &Release) -> Option<ReleasePhase> {
    release.status.as_ref().and_then(|s| s.phase)
}

fn step(release: &Release) -> Option<i32> {
    release
        .status
        .as_ref()
        .and_then(|s| s.stages.first())
        .and_then(|s| s.step)
}

struct Bench {
    client: Client,
    pipeline: Pipeline,
    operator: Operator,
    releases: Api<Release>,
}

impl Bench {
    async fn create(&self, doc: &Value) -> Result<()> {
        let release: Release = serde_json::from_value(doc.clone())?;
        self.releases
            .create(&PostParams::default(), &release)
            .await
            .context("creating a Release")?;
        Ok(())
    }

    /// Deletes a Release (its workloads stay as they are) and waits until it is gone, so
    /// that the next run's operator sees one release only.
    async fn forget(&self, name: &str) -> Result<()> {
        self.releases.delete(name, &DeleteParams::default()).await?;
        eventually(Duration::from_secs(30), || async {
            Ok(self.releases.get_opt(name).await?.is_none().then_some(()))
        })
        .await
    }

    /// Waits until `stage` runs its replicas on `image` only, all Ready.
    async fn settle(&self, stage: &str, image: &str) -> Result<()> {
        let ns = self.pipeline.namespace(stage);
        wait_until_rolled_out(&self.client, ns, PIPELINE_DEPLOYMENT, RUN_TIMEOUT).await?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        eventually(RUN_TIMEOUT, || async {
            let list = pods.list(&ListParams::default()).await?.items;
            let settled = list
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .all(|p| pod_image(p) == image && pod_is_ready(p));
            Ok(settled.then_some(()))
        })
        .await
        .with_context(|| format!("{stage} never settled on {image}"))
    }

    fn stage(&self, stage: &str, steps: &Value, early_life: &str) -> Value {
        json!({
            "name": stage,
            "namespace": self.pipeline.namespace(stage),
            "steps": steps,
            "progressDeadline": "60s",
            "earlyLifeSupport": {"duration": early_life},
        })
    }

    /// One release with a `bad` image in dev: milliseconds from the first
    /// CrashLoopBackOff seen to RolledBack seen.
    async fn rollback_latency(&self, run: usize) -> Result<f64> {
        let name = format!("bench-bad-{run}");
        let image = format!("example/bench-api:bad-{run}");
        let mut pods = pod_events(
            &self.client,
            self.pipeline.namespace("dev"),
            &format!("app={PIPELINE_DEPLOYMENT}"),
        );
        let mut release = release_events(&self.releases, &name);
        let stage = self.stage("dev", &json!([{"setWeight": 100}]), "1s");
        self.create(&release_manifest(
            &name,
            APP,
            &format!("1.0.{}", run + 1),
            &image,
            &[stage],
        ))
        .await?;
        let (mut crashed, mut rolled_back) = (None, None);
        let deadline = tokio::time::sleep(RUN_TIMEOUT);
        tokio::pin!(deadline);
        while crashed.is_none() || rolled_back.is_none() {
            tokio::select! {
                Some(pod) = pods.next() => {
                    let pod = pod?;
                    if crashed.is_none()
                        && pod_image(&pod) == image
                        && pod_waiting_reason(&pod).as_deref() == Some("CrashLoopBackOff")
                    {
                        crashed = Some(Instant::now());
                    }
                }
                Some(r) = release.next() => {
                    let r = r?;
                    if rolled_back.is_none() && phase(&r) == Some(ReleasePhase::RolledBack) {
                        rolled_back = Some(Instant::now());
                    }
                    if matches!(phase(&r), Some(ReleasePhase::Succeeded)) {
                        bail!("{name} succeeded: the bad image was not caught");
                    }
                }
                () = &mut deadline => bail!("run {run}: no rollback within {RUN_TIMEOUT:?}; operator log:\n{}", self.operator.log_tail(30)),
            }
        }
        let (crashed, rolled_back) = (crashed.unwrap(), rolled_back.unwrap());
        // Watch events may arrive in either order; a rollback seen first counts as 0 ms.
        let latency = millis(rolled_back.saturating_duration_since(crashed));
        self.settle("dev", OLD_IMAGE).await?;
        self.forget(&name).await?;
        Ok(latency)
    }

    /// One release through prod's canary steps: for each canary step, milliseconds from
    /// the last canary pod seen Ready to the next step seen in status.
    async fn step_overheads(&self, run: usize) -> Result<Vec<f64>> {
        let name = format!("bench-steps-{run}");
        let image = format!("example/bench-api:1.{}.0", run + 1);
        let mut canary_pods = pod_events(
            &self.client,
            self.pipeline.namespace("prod"),
            "stagecoach.dev/role=canary",
        );
        let mut release = release_events(&self.releases, &name);
        let mut steps: Vec<Value> = CANARY_WEIGHTS
            .iter()
            .map(|w| json!({"setWeight": w}))
            .collect();
        steps.push(json!({"setWeight": 100}));
        let stage = self.stage("prod", &Value::Array(steps), "1s");
        self.create(&release_manifest(
            &name,
            APP,
            &format!("1.{}.0", run + 1),
            &image,
            &[stage],
        ))
        .await?;

        let mut ready = std::collections::BTreeSet::new();
        let mut current_step = 0usize;
        let mut all_ready_at: Option<Instant> = None;
        let mut overheads = Vec::new();
        let deadline = tokio::time::sleep(RUN_TIMEOUT);
        tokio::pin!(deadline);
        while current_step < CANARY_WEIGHTS.len() {
            tokio::select! {
                Some(pod) = canary_pods.next() => {
                    let pod = pod?;
                    let live = pod.metadata.deletion_timestamp.is_none();
                    if live && pod_image(&pod) == image && pod_is_ready(&pod) {
                        ready.insert(pod.name_any());
                    } else {
                        ready.remove(&pod.name_any());
                    }
                }
                Some(r) = release.next() => {
                    let r = r?;
                    if let Some(p @ (ReleasePhase::RolledBack | ReleasePhase::Failed)) = phase(&r) {
                        bail!("{name} ended {p:?}; operator log:\n{}", self.operator.log_tail(30));
                    }
                    let seen = usize::try_from(step(&r).unwrap_or(0)).unwrap_or(0);
                    if seen > current_step {
                        if let Some(at) = all_ready_at {
                            overheads.push(millis(at.elapsed()));
                        }
                        current_step = seen;
                        all_ready_at = None;
                    }
                }
                () = &mut deadline => bail!("run {run}: stuck at step {current_step}; operator log:\n{}", self.operator.log_tail(30)),
            }
            if let Some(weight) = CANARY_WEIGHTS.get(current_step)
                && all_ready_at.is_none()
                && ready.len() >= expected_canary(*weight, PROD_REPLICAS)
            {
                all_ready_at = Some(Instant::now());
            }
        }
        eventually(RUN_TIMEOUT, || async {
            let r = self.releases.get(&name).await?;
            Ok(matches!(phase(&r), Some(ReleasePhase::Succeeded)).then_some(()))
        })
        .await
        .with_context(|| format!("{name} never succeeded"))?;
        self.settle("prod", &image).await?;
        self.forget(&name).await?;
        Ok(overheads)
    }
}

async fn bench_rollback_latency() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let pipeline = Pipeline::create(
        &client,
        "bench",
        &[("dev", DEV_REPLICAS), ("prod", PROD_REPLICAS)],
        OLD_IMAGE,
    )
    .await?;
    let operator = Operator::start_ready("bench", &pipeline.home.name).await?;
    let releases = Api::namespaced(client.clone(), &pipeline.home.name);
    let bench = Bench {
        client,
        pipeline,
        operator,
        releases,
    };
    let n = runs();
    println!(
        "{n} runs of each; operator {}",
        stagecoach_e2e::operator_binary().display()
    );

    let mut rollbacks = Vec::with_capacity(n);
    for run in 0..n {
        let ms = bench.rollback_latency(run).await?;
        println!("rollback run {run}: {ms:.0} ms");
        rollbacks.push(ms);
    }
    let mut overheads = Vec::with_capacity(n * CANARY_WEIGHTS.len());
    for run in 0..n {
        let ms = bench.step_overheads(run).await?;
        println!("step run {run}: {ms:.0?} ms");
        overheads.extend(ms);
    }

    print_table(&[
        ("CrashLoopBackOff seen -> RolledBack seen", &rollbacks),
        (
            "last canary pod Ready -> next step (StepCompleted)",
            &overheads,
        ),
    ]);
    println!(
        "targets (issue 3): p99 rollback latency < 1000 ms; step overhead < 1000 ms\n\
         measured with: cargo xtask bench (cargo test -p stagecoach-e2e --bench release)"
    );
    let Bench {
        pipeline, operator, ..
    } = bench;
    operator.stop().await?;
    pipeline.delete().await
}

/// A benchmark, not a test (`harness = false`): `cargo xtask bench` runs it.
fn main() -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench_rollback_latency())
}
