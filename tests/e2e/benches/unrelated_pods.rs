//! The operator's memory must grow with the releases it rolls out, not with the cluster:
//! it watches only pods carrying its rollout label. This creates 10,000 pods it has
//! nothing to do with (never scheduled: a scheduler name nobody serves) and reports the
//! operator's resident memory before and after. Target: less than 5 MiB more.
//! `cargo xtask bench` runs it; it prints numbers and asserts nothing.

use std::time::{Duration, Instant};

use anyhow::Result;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use stagecoach_e2e::{Operator, TestNamespace, client, install_crds};

const PODS: usize = 10_000;

fn pod(name: &str) -> Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "unrelated", "team": "elsewhere"}},
        "spec": {
            "schedulerName": "nobody",
            "containers": [{"name": "app", "image": "example/unrelated:1.0.0",
                "env": [{"name": "PURPOSE", "value": "a pod the operator must not cache"}]}]
        }
    }))?)
}

/// Resident memory after a quiet moment (allocator caches settle).
async fn settled_kib(operator: &Operator) -> Result<u64> {
    tokio::time::sleep(Duration::from_secs(10)).await;
    operator.resident_kib()
}

#[tokio::main]
async fn main() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let home = TestNamespace::create(&client, "bench-home").await?;
    let crowd = TestNamespace::create(&client, "bench-pods").await?;
    let operator = Operator::start_ready("bench-pods", &home.name).await?;
    let before = settled_kib(&operator).await?;

    let api: Api<Pod> = Api::namespaced(client.clone(), &crowd.name);
    let started = Instant::now();
    futures::stream::iter(0..PODS)
        .map(|i| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &pod(&format!("unrelated-{i}"))?)
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<()>()
        .await?;
    println!(
        "created {PODS} unrelated pods in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    let after = settled_kib(&operator).await?;
    #[allow(clippy::cast_precision_loss)] // KiB counts far below 2^52
    let mib = |kib: u64| kib as f64 / 1024.0;
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_wrap)]
    let delta = (after as i64 - before as i64) as f64 / 1024.0;
    println!(
        "operator resident: {:.1} MiB before, {:.1} MiB with {PODS} unrelated pods: {delta:+.1} MiB (target < +5 MiB)",
        mib(before),
        mib(after)
    );
    operator.stop().await?;
    crowd.delete().await?;
    home.delete().await?;
    Ok(())
}
