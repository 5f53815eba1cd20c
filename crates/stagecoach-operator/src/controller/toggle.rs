//! The FeatureToggle controller. For now it decides and records whether a
//! FeatureToggle is accepted; flag set rendering plugs in at the plan step.

use std::sync::Arc;
use std::time::Instant;

use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use stagecoach_api::FeatureToggle;
use stagecoach_engine::acceptance::plan_toggle_status;
use tracing::{debug, instrument};

use super::{
    RESYNC_INTERVAL, announce_acceptance, apply_status, object_key, record_outcome, status_now,
};
use crate::context::Context;
use crate::error::ReconcileError;
use crate::retry::ObjectKey;

/// The `kind` label and log field of this controller.
pub const KIND: &str = "FeatureToggle";

/// Reconciles one FeatureToggle: observe -> plan -> apply.
#[instrument(skip_all, fields(
    kind = KIND,
    namespace = %toggle.namespace().unwrap_or_default(),
    name = %toggle.name_any(),
))]
pub async fn reconcile(
    toggle: Arc<FeatureToggle>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let (key, result) = match object_key(KIND, toggle.as_ref()) {
        Ok(key) => {
            let result = reconcile_toggle(&toggle, &key, &ctx).await;
            (Some(key), result)
        }
        Err(error) => (None, Err(error)),
    };
    record_outcome(&ctx, KIND, key.as_ref(), started, &result);
    result
}

async fn reconcile_toggle(
    toggle: &FeatureToggle,
    key: &ObjectKey,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    // Observe (no client required): the object as the reflector cache has it.
    let current = toggle.status.as_ref();
    let generation = toggle.metadata.generation;

    // Plan (no client required).
    let desired = plan_toggle_status(current, &toggle.spec, generation, status_now());
    if current == Some(&desired) {
        debug!("status up to date");
        return Ok(Action::requeue(RESYNC_INTERVAL));
    }

    // Apply (client required).
    apply_status::<FeatureToggle>(ctx, key, &desired).await?;
    let before = current.map(|s| s.conditions.as_slice()).unwrap_or_default();
    announce_acceptance(ctx, &toggle.object_ref(&()), before, &desired.conditions).await?;
    Ok(Action::requeue(RESYNC_INTERVAL))
}

/// What happens after a failed reconcile; see [`super::error_policy`].
#[allow(clippy::needless_pass_by_value)] // the signature kube_runtime::Controller::run expects
pub fn error_policy(
    toggle: Arc<FeatureToggle>,
    error: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    super::error_policy(KIND, toggle.as_ref(), error, &ctx)
}
