//! The `job` gate: a Job in the stage namespace per evaluation (the E2E suite in QA, the
//! load test in demo), polled until it succeeds, fails or runs past its timeout; the
//! last lines of its pod's log go into the gate's message.
//!
//! Cleanup without cross-namespace owners: every gate Job carries the engine's labels
//! (managed-by, release, gate, stage) and `ttlSecondsAfterFinished`, and the annotation
//! [`RELEASE_ANNOTATION`] naming its Release exactly. A Job still running when its gate
//! stops (a new step, a changed gate) is deleted; when the release leaves the stage, ends
//! or is deleted, all its gate Jobs there are deleted.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::Value;
use stagecoach_api::release::{JobGate, ResolvedStage};
use stagecoach_engine::release::gate::Measurement;
use tracing::{debug, warn};

use super::providers::{self, GateContext, JobState};
use super::{failing, inconclusive};
use crate::controller::status_now;
use crate::controller::workloads::WorkloadCaches;
use crate::error::ReconcileError;

/// Annotation of a gate Job: `<namespace>/<name>` of its Release (labels are cut to 63
/// characters, so the clean-up selects on the labels and checks this).
pub const RELEASE_ANNOTATION: &str = "stagecoach.dev/owner-release";
/// How often a running Job is looked at.
const POLL: Duration = Duration::from_secs(1);
/// Lines of the pod's log read (the engine keeps the last few), and the most bytes.
const LOG_LINES: i64 = 20;
const LOG_BYTES: i64 = 8192;
/// How long reading the log may take (a kubelet that does not answer never holds a
/// verdict back for long).
const LOG_TIMEOUT: Duration = Duration::from_secs(5);

/// One evaluation of one job gate.
pub struct Evaluation<'a> {
    pub release_namespace: &'a str,
    pub gate_name: &'a str,
    pub gate: &'a JobGate,
    pub ctx: &'a GateContext<'a>,
    /// Unique per release, stage, step, gate and evaluation (see `evaluation_id`).
    pub id: &'a str,
    /// How long the Job may run (the gate's timeout).
    pub timeout: Duration,
}

/// The Job to create: the engine's manifest (labels, TTL, deadline) in the stage
/// namespace, with [`RELEASE_ANNOTATION`].
pub fn manifest(evaluation: &Evaluation<'_>) -> Value {
    let ctx = evaluation.ctx;
    let mut job =
        providers::job_manifest(evaluation.gate_name, evaluation.gate, ctx, evaluation.id);
    if let Some(metadata) = job["metadata"].as_object_mut() {
        metadata.insert("namespace".into(), ctx.namespace.into());
        let entry = metadata
            .entry("annotations")
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let Some(map) = entry.as_object_mut() {
            map.insert(
                RELEASE_ANNOTATION.into(),
                format!("{}/{}", evaluation.release_namespace, ctx.release).into(),
            );
        }
    }
    job
}

/// Runs one evaluation: creates the Job (or adopts the one a previous leader created
/// for the same evaluation), waits for it to finish or time out, and measures it.
pub async fn evaluate(client: &Client, evaluation: &Evaluation<'_>) -> Measurement {
    let namespace = evaluation.ctx.namespace;
    let timeout = evaluation.timeout;
    let manifest = manifest(evaluation);
    let job: Job = match serde_json::from_value(manifest) {
        Ok(job) => job,
        Err(error) => return failing(format!("cannot make the Job: {error}"), status_now()),
    };
    let name = job.name_any();
    let api: Api<Job> = Api::namespaced(client.clone(), namespace);
    let mut current = match api.create(&PostParams::default(), &job).await {
        Ok(created) => {
            debug!(%namespace, job = %name, "gate Job created");
            created
        }
        Err(kube::Error::Api(status)) if status.code == 409 => match api.get(&name).await {
            Ok(existing) => existing,
            Err(error) => {
                return inconclusive(
                    format!("cannot read Job {namespace}/{name}: {error}"),
                    status_now(),
                );
            }
        },
        // The API server refused what the gate describes (an image name it rejects, say):
        // bad input, in the server's words.
        Err(kube::Error::Api(status)) if matches!(status.code, 400 | 422) => {
            return failing(
                format!(
                    "the API server refused Job {namespace}/{name}: {}",
                    status.message
                ),
                status_now(),
            );
        }
        Err(error) => {
            return inconclusive(
                format!("cannot create Job {namespace}/{name}: {error}"),
                status_now(),
            );
        }
    };
    let started = created_at(&current).unwrap_or_else(status_now);
    loop {
        let state = state_of(&current);
        let now = status_now();
        let timed_out = (now - started).to_std().unwrap_or_default() >= timeout;
        if state != JobState::Running || timed_out {
            let tail = log_tail(client, namespace, &name).await;
            let at = finished_at(&current).unwrap_or(now);
            if let Some(measurement) =
                providers::job_measurement(state, started, timeout, &tail, at)
            {
                if state == JobState::Running {
                    // Past its timeout: stop it; the next evaluation starts a new one.
                    delete_job(&api, &name).await;
                }
                return measurement;
            }
        }
        tokio::time::sleep(POLL).await;
        match api.get_opt(&name).await {
            Ok(Some(job)) => current = job,
            Ok(None) => {
                return inconclusive(
                    format!("Job {namespace}/{name} was deleted before it finished"),
                    status_now(),
                );
            }
            // The API server may be away for a moment: look again (the timeout still
            // ends the evaluation).
            Err(error) => debug!(%namespace, job = %name, %error, "cannot read the gate Job"),
        }
    }
}

fn created_at(job: &Job) -> Option<DateTime<Utc>> {
    job.metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0))
}

/// What the Job controller says: Complete or Failed (conditions it sets once the Job
/// has finished; Failed at its activeDeadlineSeconds, the gate's timeout, is
/// DeadlineExceeded), else running.
fn state_of(job: &Job) -> JobState {
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let holding = |type_: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == "True")
    };
    if holding("Complete").is_some() {
        JobState::Succeeded
    } else if let Some(failed) = holding("Failed") {
        if failed.reason.as_deref() == Some("DeadlineExceeded") {
            JobState::DeadlineExceeded
        } else {
            JobState::Failed
        }
    } else {
        JobState::Running
    }
}

/// When the Job finished: its completion time, or when it was marked Failed. A Job
/// adopted after a restart is measured at that time, so the planner never counts its
/// verdict twice.
fn finished_at(job: &Job) -> Option<DateTime<Utc>> {
    let status = job.status.as_ref()?;
    let time = status.completion_time.as_ref().or_else(|| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Failed" && c.status == "True")
            .and_then(|c| c.last_transition_time.as_ref())
    })?;
    DateTime::from_timestamp(time.0.as_second(), 0)
}

/// The last lines of the log of the Job's newest pod, or why there are none.
async fn log_tail(client: &Client, namespace: &str, job: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let read = async {
        let listed = pods
            .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
            .await
            .map_err(|e| e.to_string())?;
        let Some(pod) = listed
            .items
            .iter()
            .max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0))
        else {
            return Err("no pod".to_owned());
        };
        let params = LogParams {
            tail_lines: Some(LOG_LINES),
            limit_bytes: Some(LOG_BYTES),
            ..LogParams::default()
        };
        pods.logs(&pod.name_any(), &params)
            .await
            .map_err(|e| match e {
                kube::Error::Api(status) => status.message,
                other => other.to_string(),
            })
    };
    match tokio::time::timeout(LOG_TIMEOUT, read).await {
        Ok(Ok(text)) => text.trim_end().to_owned(),
        Ok(Err(why)) => format!("(no log: {why})"),
        Err(_) => format!("(no log: no answer within {}s)", LOG_TIMEOUT.as_secs()),
    }
}

async fn delete_job(api: &Api<Job>, name: &str) {
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(error) => warn!(job = name, %error, "cannot delete the gate Job"),
    }
}

/// Deletes a release's gate Jobs in one stage namespace: those of one gate or all, only
/// those still running or finished ones too. Returns how many were deleted.
pub async fn delete_jobs(
    client: &Client,
    namespace: &str,
    release_namespace: &str,
    release: &str,
    gate: Option<&str>,
    only_running: bool,
) -> Result<usize, kube::Error> {
    let api: Api<Job> = Api::namespaced(client.clone(), namespace);
    let owner = format!("{release_namespace}/{release}");
    let jobs = api
        .list(&ListParams::default().labels(&format!("{}=stagecoach", providers::MANAGED_BY_LABEL)))
        .await?;
    let mut deleted = 0;
    for job in jobs
        .items
        .iter()
        .filter(|j| j.annotations().get(RELEASE_ANNOTATION) == Some(&owner))
        .filter(|j| {
            gate.is_none_or(|gate| {
                j.labels().get(providers::GATE_LABEL).map(String::as_str) == Some(gate)
            })
        })
        .filter(|j| !only_running || state_of(j) == JobState::Running)
        .filter(|j| j.metadata.deletion_timestamp.is_none())
    {
        match api
            .delete(&job.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => deleted += 1,
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error),
        }
    }
    if deleted > 0 {
        debug!(%namespace, %release, deleted, "gate Jobs deleted");
    }
    Ok(deleted)
}

/// Deletes every gate Job of a Release that is going away, in all its stage namespaces
/// (before its finalizer is removed). A namespace that is gone, or where the operator may
/// not list Jobs, holds nothing it could clean up, so it never blocks the deletion.
pub async fn delete_release_jobs(
    client: &Client,
    release_namespace: &str,
    release: &str,
    stages: &[ResolvedStage],
) -> Result<(), ReconcileError> {
    for namespace in WorkloadCaches::stage_namespaces(stages) {
        match delete_jobs(client, &namespace, release_namespace, release, None, false).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if matches!(status.code, 403 | 404) => {
                warn!(%namespace, %release, message = %status.message, "cannot clean up gate Jobs here");
            }
            Err(source) => {
                return Err(ReconcileError::ApplyWorkload {
                    action: "delete the gate Jobs of",
                    namespace,
                    name: release.to_owned(),
                    source: Box::new(source),
                });
            }
        }
    }
    Ok(())
}
