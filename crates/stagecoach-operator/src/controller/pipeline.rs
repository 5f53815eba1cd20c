//! The Pipeline controller: keeps each Pipeline's status (its stages, and `Ready`: in
//! force, or why its releases cannot proceed) and, on every change of a Pipeline,
//! re-plans the releases of its application (they follow it) and the other Pipelines
//! claiming the same application (one of two claimants appearing or going changes the
//! other's `Ready`).

use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use stagecoach_api::condition::{self, ConditionStatus};
use stagecoach_api::{Pipeline, Release};
use stagecoach_engine::pipeline::{SecretCheck, notifications_condition, pipeline_status};
use tokio::sync::mpsc;
use tracing::{info, instrument};

use super::{RESYNC_INTERVAL, apply_status, object_key, record_outcome, status_now};
use crate::context::Context;
use crate::error::ReconcileError;

/// The `kind` label and log field of this controller.
pub const KIND: &str = "Pipeline";

/// What the Pipeline controller needs beyond the shared context.
pub struct PipelineContext {
    pub base: Arc<Context>,
    pub pipelines: Store<Pipeline>,
    pub releases: Store<Release>,
    /// Releases to re-plan (the release controller's `reconcile_on`).
    pub release_triggers: mpsc::UnboundedSender<ObjectRef<Release>>,
    /// Pipelines to look at again (this controller's own `reconcile_on`).
    pub pipeline_triggers: mpsc::UnboundedSender<ObjectRef<Pipeline>>,
}

/// A channel of object references as a stream for `Controller::reconcile_on`.
pub fn trigger_channel<K>() -> (
    mpsc::UnboundedSender<ObjectRef<K>>,
    impl Stream<Item = ObjectRef<K>> + Send + 'static,
)
where
    K: kube::Resource + Send + 'static,
    K::DynamicType: Send,
{
    let (sender, receiver) = mpsc::unbounded_channel::<ObjectRef<K>>();
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|r| (r, receiver))
    });
    (sender, stream)
}

/// Reconciles one Pipeline: its status, then the releases that follow it.
#[instrument(skip_all, fields(
    kind = KIND,
    namespace = %pipeline.namespace().unwrap_or_default(),
    name = %pipeline.name_any(),
))]
pub async fn reconcile(
    pipeline: Arc<Pipeline>,
    ctx: Arc<PipelineContext>,
) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let (key, result) = match object_key(KIND, pipeline.as_ref()) {
        Ok(key) => {
            let result = reconcile_pipeline(&pipeline, &key, &ctx).await;
            (Some(key), result)
        }
        Err(error) => (None, Err(error)),
    };
    record_outcome(&ctx.base, KIND, key.as_ref(), started, &result);
    result
}

async fn reconcile_pipeline(
    pipeline: &Pipeline,
    key: &crate::retry::ObjectKey,
    ctx: &PipelineContext,
) -> Result<Action, ReconcileError> {
    let namespace = pipeline.namespace();
    let application = pipeline.application().to_owned();
    // Every Pipeline of the namespace claiming the same application (this one included).
    let mut claimants: Vec<String> = ctx
        .pipelines
        .state()
        .iter()
        .filter(|p| {
            p.namespace() == namespace
                && p.metadata.deletion_timestamp.is_none()
                && p.application() == application
        })
        .map(|p| p.name_any())
        .collect();
    if !claimants.contains(&pipeline.name_any()) {
        claimants.push(pipeline.name_any());
    }
    claimants.sort();

    let current = pipeline.status.as_ref();
    let now = status_now();
    let mut desired = pipeline_status(
        &pipeline.name_any(),
        &pipeline.spec,
        &claimants,
        current,
        pipeline.metadata.generation,
        now,
    );
    // The receivers' Secrets: a missing one is named in a condition (a Secret change does
    // not trigger this reconcile, so a problem is looked at again every 15 s).
    let checks = receiver_secrets(ctx, namespace.as_deref().unwrap_or_default(), pipeline).await;
    let notifications =
        notifications_condition(&pipeline.spec, &checks, pipeline.metadata.generation, now);
    let receivers_broken = notifications.status == ConditionStatus::False;
    condition::upsert(&mut desired.conditions, notifications);
    if current != Some(&desired) {
        apply_status::<Pipeline>(&ctx.base, key, &desired).await?;
        let ready = desired.conditions.iter().find(|c| c.r#type == "Ready");
        if let Some(ready) = ready {
            info!(reason = %ready.reason, message = %ready.message, "pipeline status");
        }
    }

    // The releases of the application follow the Pipeline: plan them again.
    for release in ctx
        .releases
        .state()
        .iter()
        .filter(|r| r.namespace() == namespace && r.spec.application == application)
    {
        let _ = ctx
            .release_triggers
            .send(ObjectRef::from_obj(release.as_ref()));
    }
    // Another claimant's Ready depends on this one existing.
    for other in claimants.iter().filter(|c| **c != pipeline.name_any()) {
        let mut reference = ObjectRef::<Pipeline>::new(other);
        if let Some(ns) = &namespace {
            reference = reference.within(ns);
        }
        let stale = ctx
            .pipelines
            .get(&reference)
            .and_then(|p| p.status.clone())
            .is_none_or(|s| {
                !s.conditions
                    .iter()
                    .any(|c| c.r#type == "Ready" && c.message.contains(&pipeline.name_any()))
            });
        if stale {
            let _ = ctx.pipeline_triggers.send(reference);
        }
    }
    Ok(Action::requeue(if receivers_broken {
        RECEIVER_RECHECK
    } else {
        RESYNC_INTERVAL
    }))
}

/// How soon a Pipeline with a missing receiver Secret is looked at again.
const RECEIVER_RECHECK: std::time::Duration = std::time::Duration::from_secs(15);

/// Reads each receiver's Secret (only those that name one).
async fn receiver_secrets(
    ctx: &PipelineContext,
    namespace: &str,
    pipeline: &Pipeline,
) -> Vec<(String, SecretCheck)> {
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(ctx.base.client.clone(), namespace);
    let mut checks = Vec::new();
    for receiver in &pipeline.spec.notifications {
        let Some(reference) = &receiver.webhook.secret_ref else {
            continue;
        };
        let check = match api.get_opt(&reference.name).await {
            Ok(None) => SecretCheck::MissingSecret,
            Ok(Some(secret)) => {
                let has_key = secret
                    .data
                    .as_ref()
                    .is_some_and(|d| d.contains_key(&reference.key))
                    || secret
                        .string_data
                        .as_ref()
                        .is_some_and(|d| d.contains_key(&reference.key));
                if has_key {
                    SecretCheck::Found
                } else {
                    SecretCheck::MissingKey
                }
            }
            Err(error) => SecretCheck::Unreadable(error.to_string()),
        };
        checks.push((receiver.name.clone(), check));
    }
    checks
}

/// Retries with backoff, as the other controllers do.
#[allow(clippy::needless_pass_by_value)] // the signature kube's Controller::run calls
pub fn error_policy(
    pipeline: Arc<Pipeline>,
    error: &ReconcileError,
    ctx: Arc<PipelineContext>,
) -> Action {
    super::error_policy(KIND, pipeline.as_ref(), error, &ctx.base)
}
