//! The FeatureToggle controller: serves each application's toggles per stage, as one
//! flagd flag set per stage namespace (ConfigMap `stagecoach-flags`) and over OFREP (the
//! in-memory [`FlagIndex`]), and reports in each toggle's status what is served where.
//!
//! Every decision is in [`stagecoach_engine::toggle::application`]; this module caches,
//! schedules and applies. The controller reconciles applications, not toggles (see
//! [`unit`]). Reconcile of one application: observe (caches: the application's toggles,
//! the namespace's Releases, the flag-set ConfigMaps) -> plan ([`plan_application`], once
//! per change of the application's inputs; then each toggle's status and couplings) ->
//! apply (ConfigMaps that differ, the OFREP index, each status that changed, Events for
//! coupling changes, decided by [`coupling_changes`] from the couplings its status
//! showed and the new ones). See [`triggers`] for what re-reconciles an application
//! besides its toggles' changes, and [`flagsets`] for how ConfigMaps are owned and
//! cleaned up.
//!
//! Leader election: every replica observes and plans (so each one's OFREP index is
//! current); only the leader applies. A follower's reconcile ends after the plan.
//!
//! Scale: every toggle of an application shares one plan, so a change to one toggle (or
//! to a coupled Release) re-reconciles the application. To keep that cheap, a reconcile
//! that finds nothing new to plan only computes each toggle's status from the plan it
//! has and compares it with the cached status digest (the plan is
//! keyed by an [`Epoch`] the watches advance); a burst of changes is planned once after
//! it settles (300 ms quiet, at most 2 s late); one application is planned at a time; the
//! cache keeps a digest of each toggle's status rather than all of it
//! ([`cache::compact_for_cache`]), and each toggle as compact text, decoded when read
//! ([`ToggleCache`]); and OFREP decodes the spec it evaluates from that cache instead of
//! holding a copy.

mod cache;
mod flagsets;
mod store;
mod triggers;
mod unit;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use stagecoach_api::condition::{self, ConditionStatus};
use stagecoach_api::{FeatureToggle, Pipeline, Release};
use stagecoach_engine::acceptance::is_transition;
use stagecoach_engine::toggle::application::{Problem, READY};
use stagecoach_engine::toggle::{
    ApplicationInput, ApplicationPlan, ToggleCouplings, canonical_json, coupling_changes,
    desired_status, plan_application,
};
use tracing::{debug, info, instrument, warn};

use self::cache::status_unchanged;
pub use self::flagsets::FlagSetCache;
use self::flagsets::{
    AppKey, AppState, Applications, Epoch, Planning, WRITE_GRACE, sync_flag_sets,
};
pub use self::store::ToggleCache;
pub use self::triggers::Epochs;
pub use self::triggers::{
    changes, fan_out, watch_flag_sets, watch_pipelines, watch_releases, watch_toggles,
};
pub use self::unit::ToggleApplication;
use super::fence::{Cached, WriteFence};
use super::{
    RESYNC_INTERVAL, announce_acceptance, apply_status, object_key, record_outcome, status_now,
};
use crate::admin::CacheSync;
use crate::context::Context;
use crate::error::ReconcileError;
use crate::ofrep::FlagIndex;

/// The `kind` label and log field of this controller.
pub const KIND: &str = "FeatureToggle";

/// Most status writes of one application's toggles in flight at once (and at most
/// `TOGGLE_CONCURRENCY` applications reconcile at once, see operator.rs).
const STATUS_WRITES_PER_APPLICATION: usize = 4;

/// What planning an application reads: its toggles, the Releases of its namespace and
/// its Pipeline, if it has one.
type Observed = (Vec<FeatureToggle>, Vec<Arc<Release>>, Option<Arc<Pipeline>>);

/// The first-list flags of the caches toggle planning reads.
#[derive(Clone, Debug)]
pub struct Synced {
    pub toggles: CacheSync,
    pub releases: CacheSync,
    pub flag_sets: CacheSync,
}

/// What the toggle controller needs beyond the shared context.
pub struct ToggleContext {
    pub base: Arc<Context>,
    pub toggles: ToggleCache,
    pub releases: Store<Release>,
    /// An application's Pipeline names its stages (before any Release exists).
    pub pipelines: Store<Pipeline>,
    pub flag_sets: FlagSetCache,
    /// What OFREP serves; replaced per application when its flag sets change.
    pub index: FlagIndex,
    /// When the caches planning reads have their first list (see [`CacheSync::wait`]).
    pub synced: Synced,
    epochs: Arc<Epochs>,
    applications: Applications,
    /// The resource versions of the status writes the toggle cache does not show yet.
    fence: WriteFence,
    /// One application is planned at a time: planning is CPU work, and a large flag set
    /// is a few MiB while it is rendered, so planning them all at once after a start
    /// would only raise the memory high-water mark.
    planning: tokio::sync::Semaphore,
}

impl ToggleContext {
    #[allow(clippy::too_many_arguments)] // the caches and channels it is wired to, once
    pub fn new(
        base: Arc<Context>,
        toggles: ToggleCache,
        releases: Store<Release>,
        pipelines: Store<Pipeline>,
        flag_sets: FlagSetCache,
        index: FlagIndex,
        epochs: Arc<Epochs>,
        synced: Synced,
    ) -> Self {
        Self {
            base,
            toggles,
            releases,
            pipelines,
            flag_sets,
            index,
            synced,
            epochs,
            applications: Applications::default(),
            fence: WriteFence::default(),
            planning: tokio::sync::Semaphore::new(1),
        }
    }

    /// The toggles of `application` in `namespace` as the cache has them now.
    fn observe_toggles(&self, namespace: &str, application: &str) -> Vec<FeatureToggle> {
        self.toggles.of_application(namespace, application)
    }

    /// The toggles and Releases of `namespace` as the caches have them now.
    fn observe(&self, namespace: &str, application: &str) -> Observed {
        let toggles = self.observe_toggles(namespace, application);
        let releases = self
            .releases
            .state_filter(|r| r.metadata.namespace.as_deref() == Some(namespace));
        // With two Pipelines for one application its releases stop (AmbiguousPipeline);
        // toggles keep being served, in the stages of the first by name.
        let mut pipelines = self.pipelines.state_filter(|p| {
            p.metadata.namespace.as_deref() == Some(namespace)
                && p.metadata.deletion_timestamp.is_none()
                && p.application() == application
        });
        pipelines.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        (toggles, releases, pipelines.into_iter().next())
    }
}

/// Reconciles one application's toggles: observe -> plan -> apply.
#[instrument(skip_all, fields(
    kind = KIND,
    namespace = %app.namespace().unwrap_or_default(),
    application = %app.name_any(),
))]
pub async fn reconcile(
    app: Arc<ToggleApplication>,
    ctx: Arc<ToggleContext>,
) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let (key, result) = match object_key(KIND, app.as_ref()) {
        Ok(key) => (Some(key), reconcile_application(&app.key(), &ctx).await),
        Err(error) => (None, Err(error)),
    };
    record_outcome(&ctx.base, KIND, key.as_ref(), started, &result);
    result
}

async fn reconcile_application(
    app: &AppKey,
    ctx: &ToggleContext,
) -> Result<Action, ReconcileError> {
    // Observe (no client required): caches only. The flag sets and Releases must be known
    // first, or every ConfigMap would look missing and every stage unknown.
    ctx.synced.releases.wait().await;
    ctx.synced.flag_sets.wait().await;
    let (namespace, application) = (app.namespace.as_str(), app.application.as_str());
    // Read before the caches: a plan made from them is at least this new.
    let epoch = ctx.epochs.of(app);
    // An application without toggles is retired by `fan_out` (no OFREP entry, no
    // ConfigMaps); planning it would serve it again.
    if !ctx.toggles.has_application(namespace, application) {
        debug!("no toggle left");
        return Ok(Action::await_change());
    }

    // Plan (no client required): once per change of the application's inputs, from the
    // application's toggles and the namespace's Releases.
    let state = ctx.applications.state(app);
    let mut state = state.lock().await;
    let (plan, documents) = match current_plan(ctx, app, epoch, &mut state).await {
        Ok(planned) => planned,
        Err(wait) => {
            debug!(wait_ms = wait.as_millis(), "inputs still changing");
            return Ok(Action::requeue(wait));
        }
    };
    // A follower (not holding the leader Lease) stops here: the new plan is in its OFREP
    // index, and the leader writes ConfigMaps, status and Events. On becoming the leader
    // every application is reconciled again (see operator.rs), this time through to the
    // writes.
    if !ctx.base.leadership.is_leader() {
        drop(state);
        debug!("follower: plan published to OFREP, nothing written");
        return Ok(Action::requeue(RESYNC_INTERVAL));
    }
    let render = |stage: &str| {
        let (toggles, releases, pipeline) = ctx.observe(namespace, application);
        let input = ApplicationInput::new(namespace, application, &toggles, &releases)
            .with_pipeline(pipeline.as_ref().map(|p| &p.spec));
        let rendered = input.render(stage);
        (canonical_json(&rendered.document), rendered.version)
    };

    // Apply (client required): the ConfigMaps that differ from the plan.
    let (waiting, write_failed) = sync_flag_sets(
        &ctx.base.client,
        &ctx.flag_sets,
        ctx.base.metrics.toggles(),
        app,
        &mut state,
        &plan,
        documents,
        &render,
    )
    .await;
    let flag_set_problems = state.problems.clone();
    let planned = state.planned_toggles.clone();
    drop(state);

    // Then every toggle's status and Events, a few toggles at a time. The toggles are
    // read again; one created or changed since the plan is left to the next plan (the
    // change advanced the epoch and asked for another reconcile): this plan would claim
    // it served as it was, or not at all.
    let toggles = ctx
        .observe_toggles(namespace, application)
        .into_iter()
        .filter(|toggle| planned.contains(&planned_as(toggle)));
    let mut served = futures::stream::iter(toggles)
        .map(|toggle| serve_toggle(ctx, toggle, &plan, &flag_set_problems))
        .buffer_unordered(STATUS_WRITES_PER_APPLICATION);
    let mut failed = None;
    while let Some(result) = served.next().await {
        if let Err(error) = result {
            // Retried with backoff; the other toggles are served meanwhile.
            failed.get_or_insert(error);
        }
    }
    // A failed ConfigMap write is in the statuses (Ready=False) and retried with backoff.
    if let Some(error) = write_failed.or(failed) {
        return Err(error);
    }
    Ok(Action::requeue(if waiting {
        WRITE_GRACE + Duration::from_millis(100)
    } else {
        RESYNC_INTERVAL
    }))
}

/// What identifies the toggle a plan was made from: its name, uid and generation.
fn planned_as(toggle: &FeatureToggle) -> u64 {
    cache::digest(&(
        &toggle.metadata.name,
        &toggle.metadata.uid,
        toggle.metadata.generation,
    ))
}

/// Plan (no client required): one toggle's status and the couplings it shows; then apply
/// (client required): the status if it changed, and Events for what changed.
///
/// A toggle whose status the cache does not show yet as last written is left alone: its
/// Events are out, and the write's echo asks for another reconcile of the application.
/// An error that waits for a change (not retried) concerns this toggle alone: logged,
/// and the application is served on.
#[instrument(skip_all, fields(name = %toggle.name_any()))]
async fn serve_toggle(
    ctx: &ToggleContext,
    toggle: FeatureToggle,
    plan: &ApplicationPlan,
    flag_set_problems: &[Problem],
) -> Result<(), ReconcileError> {
    match serve_toggle_status(ctx, &toggle, plan, flag_set_problems).await {
        Err(error) if !error.is_transient() => {
            warn!(category = error.category(), %error,
                "cannot serve this toggle's status; waiting for it to change");
            Ok(())
        }
        result => result,
    }
}

async fn serve_toggle_status(
    ctx: &ToggleContext,
    toggle: &FeatureToggle,
    plan: &ApplicationPlan,
    flag_set_problems: &[Problem],
) -> Result<(), ReconcileError> {
    let key = object_key(KIND, toggle)?;
    let fence_key = (KIND, key.namespace.clone(), key.name.clone());
    if ctx.fence.is_stale(
        &fence_key,
        Cached::At(toggle.metadata.resource_version.as_deref()),
    ) {
        debug!("cache behind the last status write; its echo reconciles again");
        return Ok(());
    }
    let current = toggle.status.as_ref();
    let desired = desired_status(toggle, plan, flag_set_problems, status_now());
    if status_unchanged(toggle, &desired) {
        return Ok(());
    }
    let couplings = plan.toggle_couplings(toggle);
    match apply_status::<FeatureToggle>(&ctx.base, &key, &desired).await {
        // Deleted since the cache saw it (its application is reconciled again).
        Err(ReconcileError::PatchStatus(kube::Error::Api(error))) if error.code == 404 => {
            debug!("toggle is gone");
            return Ok(());
        }
        result => {
            ctx.fence.wrote(fence_key, result?.as_deref());
        }
    }
    let reference = toggle.object_ref(&());
    let before = current.map(|s| s.conditions.as_slice()).unwrap_or_default();
    announce_acceptance(&ctx.base, &reference, before, &desired.conditions).await?;
    announce_readiness(ctx, &reference, current, &desired).await;
    // What the status showed (the cache keeps each coupled toggle's stages and
    // couplings), so transitions while no operator ran are announced too.
    let before = current.map(ToggleCouplings::from_status);
    for change in coupling_changes(&toggle.spec, before.as_ref(), &couplings) {
        info!(release = %change.release, reached = %change.reached, stage = %change.stage,
            active = change.active, "coupling changed");
        ctx.base
            .metrics
            .toggles()
            .coupling_transitions
            .with_label_values(&[if change.active {
                "activated"
            } else {
                "deactivated"
            }])
            .inc();
        publish(
            ctx,
            &reference,
            EventType::Normal,
            change.reason(),
            change.message(),
        )
        .await;
    }
    Ok(())
}

/// The application's plan at `epoch`, with the flag sets' JSON when it is new; or how
/// long to wait for its inputs to settle. A new plan goes to OFREP at once.
async fn current_plan(
    ctx: &ToggleContext,
    app: &AppKey,
    epoch: Epoch,
    state: &mut AppState,
) -> Result<(Arc<ApplicationPlan>, Option<Vec<String>>), Duration> {
    let planning = state.planning(epoch, Instant::now());
    if let (Planning::Reuse, Some(plan)) = (planning, &state.plan) {
        return Ok((plan.clone(), None));
    }
    if let Planning::Wait(wait) = planning {
        return Err(wait);
    }
    let _turn = ctx.planning.acquire().await;
    let (toggles, releases, pipeline) = ctx.observe(&app.namespace, &app.application);
    let input = ApplicationInput::new(&app.namespace, &app.application, &toggles, &releases)
        .with_pipeline(pipeline.as_ref().map(|p| &p.spec));
    state.planned_toggles = toggles.iter().map(planned_as).collect();
    // Something changed, but maybe nothing this application's plan depends on.
    if let Some(plan) = state.plan.clone()
        && plan.fingerprint == input.fingerprint()
    {
        state.planned(plan.clone(), epoch);
        return Ok((plan, None));
    }
    let (plan, documents) = plan_application(&input);
    debug!(application = %app, stages = plan.stages.len(), "application planned");
    let plan = Arc::new(plan);
    ctx.index
        .publish(&app.namespace, &app.application, plan.index.clone());
    state.planned(plan.clone(), epoch);
    Ok((plan, Some(documents)))
}

/// An Event when Ready turns False (or changes reason while False), and when it turns
/// True again; not for the first Ready=True of a new toggle.
async fn announce_readiness(
    ctx: &ToggleContext,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    current: Option<&stagecoach_api::FeatureToggleStatus>,
    desired: &stagecoach_api::FeatureToggleStatus,
) {
    let Some(ready) = condition::find(&desired.conditions, READY) else {
        return;
    };
    let before = current.and_then(|s| condition::find(&s.conditions, READY));
    if !is_transition(before, ready) {
        return;
    }
    match (ready.status, before) {
        (ConditionStatus::True, None) => {}
        (ConditionStatus::True, Some(_)) => {
            publish(
                ctx,
                reference,
                EventType::Normal,
                &ready.reason,
                ready.message.clone(),
            )
            .await;
        }
        (ConditionStatus::False | ConditionStatus::Unknown, _) => {
            warn!(reason = %ready.reason, detail = %ready.message, "toggle not fully served");
            publish(
                ctx,
                reference,
                EventType::Warning,
                &ready.reason,
                ready.message.clone(),
            )
            .await;
        }
    }
}

/// Publishes an Event; best effort (status is the durable record).
async fn publish(
    ctx: &ToggleContext,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note.chars().take(1000).collect()),
        action: "Serve".into(),
        secondary: None,
    };
    if let Err(error) = ctx.base.recorder.publish(&event, reference).await {
        warn!(%error, "cannot publish event");
    }
}

/// What happens after a failed reconcile; see [`super::error_policy`].
#[allow(clippy::needless_pass_by_value)] // the signature kube_runtime::Controller::run expects
pub fn error_policy(
    app: Arc<ToggleApplication>,
    error: &ReconcileError,
    ctx: Arc<ToggleContext>,
) -> Action {
    super::error_policy(KIND, app.as_ref(), error, &ctx.base)
}
