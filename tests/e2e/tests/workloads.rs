//! The control plane runs real Deployments: the Deployment controller, the scheduler and
//! kwok take pods to Ready; images containing `bad` crash-loop; a Ready pod marked
//! `stagecoach.dev/test-unhealthy` turns NotReady.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::semicolon_if_nothing_returned
)] // test tables

use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use stagecoach_e2e::{
    TestNamespace, client, deployment, eventually, pod_is_ready as is_ready,
    pod_waiting_reason as waiting_reason,
};

async fn create_deployment(
    api: &Api<Deployment>,
    name: &str,
    image: &str,
    replicas: i32,
) -> Result<()> {
    let d: Deployment = serde_json::from_value(deployment(name, image, replicas))?;
    api.create(&PostParams::default(), &d).await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_deployment_reaches_ready_pods() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "ready").await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    create_deployment(&deployments, "web", "example/web:1.0.0", 3).await?;
    eventually(Duration::from_secs(60), || async {
        let d = deployments.get("web").await?;
        let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
        Ok((ready == 3).then_some(()))
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let list = pods.list(&ListParams::default().labels("app=web")).await?;
    assert_eq!(list.items.len(), 3);
    assert!(list.items.iter().all(is_ready), "every pod is Ready");
    assert!(
        list.items.iter().all(|p| p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some_and(|n| n.starts_with("kwok-node-"))),
        "pods were scheduled onto the fake nodes by the real scheduler"
    );
    ns.delete().await
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_bad_image_gets_pods_that_stay_not_ready() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "bad").await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    create_deployment(&deployments, "web", "example/web:bad-1.0.1", 2).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let crashing = eventually(Duration::from_secs(60), || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await?;
        let crashing: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| waiting_reason(p).as_deref() == Some("CrashLoopBackOff"))
            .collect();
        Ok((crashing.len() == 2).then_some(crashing))
    })
    .await?;
    for pod in &crashing {
        assert!(!is_ready(pod));
        let restarts = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map_or(0, |cs| cs[0].restart_count);
        assert!(restarts > 0, "a crash-looping pod reports restarts");
    }
    // And they stay that way.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let list = pods.list(&ListParams::default().labels("app=web")).await?;
    assert!(
        list.items.iter().all(|p| !is_ready(p)),
        "bad pods never become Ready"
    );
    let d = deployments.get("web").await?;
    assert_eq!(d.status.and_then(|s| s.ready_replicas).unwrap_or(0), 0);
    ns.delete().await
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_ready_pod_marked_unhealthy_turns_not_ready() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "turn").await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    create_deployment(&deployments, "web", "example/web:1.0.0", 1).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pod = eventually(Duration::from_secs(60), || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await?;
        Ok(list.items.into_iter().find(is_ready))
    })
    .await?;
    let name = pod.metadata.name.clone().unwrap_or_default();
    pods.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(
            serde_json::json!({"metadata": {"labels": {"stagecoach.dev/test-unhealthy": "true"}}}),
        ),
    )
    .await?;
    eventually(Duration::from_secs(30), || async {
        let p = pods.get(&name).await?;
        Ok(
            (!is_ready(&p) && waiting_reason(&p).as_deref() == Some("CrashLoopBackOff"))
                .then_some(()),
        )
    })
    .await?;
    ns.delete().await
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_job_runs_to_completion() -> Result<()> {
    use k8s_openapi::api::batch::v1::Job;
    let client = client().await?;
    let ns = TestNamespace::create(&client, "job").await?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    let job: Job = serde_json::from_value(serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "smoke"},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "smoke", "image": "example/smoke-tests:1.0.0"}]
            }}
        }
    }))?;
    jobs.create(&PostParams::default(), &job).await?;
    // The real Job controller creates the pod, kwok runs it to completion, and the Job
    // controller marks the Job complete.
    eventually(Duration::from_secs(60), || async {
        let job = jobs.get("smoke").await?;
        let complete = job
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Complete" && c.status == "True");
        Ok(complete.then_some(()))
    })
    .await?;
    ns.delete().await
}
