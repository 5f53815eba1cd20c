//! Benchmark: gate rollback latency. Not a test: it prints numbers and asserts nothing
//! about speed. `cargo xtask bench` runs it (release build of the operator, a fresh
//! control plane, Debian's Prometheus); by hand, with KUBECONFIG and STAGECOACH_BIN set:
//!
//! ```text
//! cargo test -p stagecoach-e2e --bench gates
//! ```
//!
//! STAGECOACH_BENCH_RUNS sets the number of runs (default 20).
//!
//! Each run: a release holds at a pause in its stage with a Prometheus gate (interval 1 s)
//! passing; at a random moment the exporter the Prometheus server scrapes every second
//! serves a value past the threshold. Every run has an exporter and a Prometheus of its
//! own: Prometheus offsets a target's scrapes within the interval by a hash of the
//! target, so a new port gives each run another phase between scrapes and evaluations. Measured, on this machine's clock:
//! - from the first sample past the threshold (its timestamp in Prometheus, the scrape's
//!   start) to the watch event that brings the rollback (status.rollbacks) from the API
//!   server, that is the write accepted and sent out;
//! - the same from the exporter's change (adds up to one scrape interval).
//!
//! Target: p99 below the gate interval plus one second (2 s) from the sample.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use stagecoach_api::Release;
use stagecoach_api::release::{GateVerdict, ReleasePhase};
use stagecoach_e2e::prometheus::{Exporter, Prometheus};
use stagecoach_e2e::{Operator, Pipeline, client, eventually, install_crds, random_below};

const APP: &str = "bench-gates";
const OLD_IMAGE: &str = "example/bench-gates:1.0.0";
const SERIES: &str = "bench_error_ratio";
const THRESHOLD: f64 = 0.5;
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn runs() -> usize {
    std::env::var("STAGECOACH_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// Nearest-rank percentile of a sample (sorted here).
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

struct Run {
    /// Milliseconds from the first sample past the threshold to the rollback seen.
    from_sample: f64,
    /// Milliseconds from the exporter's change to the rollback seen.
    from_change: f64,
}

async fn one_run(client: &Client, pipeline: &Pipeline, run: usize) -> Result<Run> {
    let releases: Api<Release> = Api::namespaced(client.clone(), &pipeline.home.name);
    let exporter = Exporter::start().await?;
    exporter.set(SERIES, 0.0);
    let prometheus = Prometheus::start(&exporter).await?;
    eventually(Duration::from_secs(10), || async {
        Ok((prometheus.query(SERIES).await? == Some(0.0)).then_some(()))
    })
    .await
    .context("Prometheus never saw the good value")?;
    let name = format!("bench-{run}");
    let version = format!("1.0.{}", run + 1);
    let doc = json!({
        "apiVersion": "stagecoach.dev/v1alpha1",
        "kind": "Release",
        "metadata": {"name": name},
        "spec": {
            "application": APP,
            "version": version,
            "workloads": [{"deployment": "api", "containers": [{"name": "app", "image": format!("example/bench-gates:{version}")}]}],
            "stages": [{
                "name": "prod",
                "namespace": pipeline.namespace("prod"),
                "progressDeadline": "60s",
                // A pause without duration: the release waits there with its gate
                // evaluated every second, until the value goes bad.
                "steps": [{"setWeight": 50}, {"pause": {}}, {"setWeight": 100}],
                "gates": [{
                    "name": "error-ratio",
                    "interval": "1s",
                    "prometheus": {
                        "address": prometheus.address(),
                        "query": format!("max({SERIES})"),
                        "comparison": "LessThan",
                        "threshold": THRESHOLD,
                    }
                }],
            }],
        }
    });
    releases
        .create(&PostParams::default(), &serde_json::from_value(doc)?)
        .await?;
    // At the pause, with a passing measurement taken there.
    eventually(RUN_TIMEOUT, || async {
        let r = releases.get(&name).await?;
        let Some(stage) = r.status.as_ref().and_then(|s| s.stages.first()) else {
            return Ok(None);
        };
        let passing = stage.gates.iter().any(|g| {
            g.name == "error-ratio"
                && g.verdict == GateVerdict::Passing
                && g.last_evaluated_at > stage.step_started_at
        });
        Ok((stage.step == Some(1) && passing).then_some(()))
    })
    .await
    .with_context(|| format!("{name} never waited at its pause with the gate passing"))?;

    let mut events = watcher(
        releases.clone(),
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .applied_objects()
    .boxed();
    // The watch's first event is the current state: no rollback yet.
    let first = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await?
        .context("the watch ended")??;
    if first
        .status
        .as_ref()
        .is_some_and(|s| !s.rollbacks.is_empty())
    {
        bail!("{name} was rolled back before the value changed");
    }
    // A moment anywhere within the scrape interval and the gate's interval.
    tokio::time::sleep(Duration::from_millis(random_below(1000))).await;
    let (changed, changed_wall) = exporter.set(SERIES, 1.0);
    let seen = tokio::time::timeout(RUN_TIMEOUT, async {
        while let Some(event) = events.next().await {
            let release = event?;
            if release
                .status
                .as_ref()
                .is_some_and(|s| !s.rollbacks.is_empty())
            {
                return Ok::<_, anyhow::Error>((Instant::now(), SystemTime::now(), release));
            }
        }
        bail!("the watch ended")
    })
    .await
    .context("no rollback")??;
    let (seen_at, seen_wall, release) = seen;
    let status = release.status.unwrap_or_default();
    if status.rollbacks[0].reason != "GateFailed" {
        bail!(
            "rolled back for {}, not the gate",
            status.rollbacks[0].reason
        );
    }
    // The first sample past the threshold after the change.
    let samples = prometheus.samples(SERIES, 30).await?;
    let Some((past_threshold, _)) = samples
        .iter()
        .find(|(at, value)| *value >= THRESHOLD && *at >= unix_seconds(changed_wall) - 0.001)
    else {
        bail!("Prometheus has no sample past the threshold: {samples:?}");
    };
    let run = Run {
        from_sample: (unix_seconds(seen_wall) - past_threshold) * 1000.0,
        from_change: seen_at.duration_since(changed).as_secs_f64() * 1000.0,
    };
    eventually(RUN_TIMEOUT, || async {
        let r = releases.get(&name).await?;
        Ok((r.status.and_then(|s| s.phase) == Some(ReleasePhase::RolledBack)).then_some(()))
    })
    .await?;
    Ok(run)
}

async fn bench_gate_rollback_latency() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let pipeline = Pipeline::create(&client, "bench-gates", &[("prod", 2)], OLD_IMAGE).await?;
    let operator = Operator::start_ready("bench-gates", &pipeline.home.name).await?;
    let mut results = Vec::new();
    let total = runs();
    for run in 0..total {
        match one_run(&client, &pipeline, run).await {
            Ok(r) => {
                println!(
                    "run {run:>2}: {:>6.0} ms from the sample, {:>6.0} ms from the change",
                    r.from_sample, r.from_change
                );
                results.push(r);
            }
            Err(error) => {
                println!(
                    "run {run}: {error:#}\noperator log:\n{}",
                    operator.log_tail(30)
                );
                return Err(error);
            }
        }
    }
    let from_sample: Vec<f64> = results.iter().map(|r| r.from_sample).collect();
    let from_change: Vec<f64> = results.iter().map(|r| r.from_change).collect();
    println!();
    println!(
        "gate rollback latency, gate interval 1 s, Prometheus scrape interval 1 s, {total} runs"
    );
    println!("| measure (ms)                                   | median |    p99 |    max |");
    println!("|------------------------------------------------|--------|--------|--------|");
    for (what, values) in [
        (
            "sample past the threshold -> rollback written",
            &from_sample,
        ),
        ("exporter's change -> rollback written", &from_change),
    ] {
        println!(
            "| {what:<46} | {:>6.0} | {:>6.0} | {:>6.0} |",
            percentile(values, 0.5),
            percentile(values, 0.99),
            percentile(values, 1.0)
        );
    }
    println!("target: p99 from the sample below 2000 ms (interval + 1 s)");
    operator.stop().await?;
    pipeline.delete().await
}

fn main() -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench_gate_rollback_latency())
}
