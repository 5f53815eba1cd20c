//! The flag-set ConfigMaps (`stagecoach-flags`, key `flags.json`): one per stage namespace
//! of an application, holding all of its toggles for that stage as one flagd flag set.
//!
//! Ownership and cleanup: the ConfigMap lives in the stage namespace, the toggles in the
//! application's namespace, and ownerReferences cannot cross namespaces. So each ConfigMap
//! is labelled with the application and the toggles' namespace, and the operator deletes it
//! itself once that application has no FeatureToggle left (also when the last toggle was
//! deleted while the operator was down: the labelled ConfigMaps are swept after start).
//! A stage that no Release lists any more keeps its last ConfigMap until then, so that
//! deleting old Releases never takes flags away from running workloads.
//!
//! Writes are server-side apply as `stagecoach`, only when the cached ConfigMap (metadata
//! only: labels and the flag-set version annotation) differs from the plan.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use stagecoach_api::FIELD_MANAGER;
use stagecoach_engine::toggle::application::{
    ApplicationPlan, FLAG_SET_CONFIG_MAP, FLAG_SET_KEY, Problem,
};
use tracing::{info, warn};

use crate::controller::workloads::MANAGED_BY;
use crate::error::ReconcileError;
use crate::metrics::ToggleMetrics;

/// Label: the application whose flags a ConfigMap holds.
pub const APPLICATION_LABEL: &str = "stagecoach.dev/application";
/// Label: the namespace of that application's FeatureToggles.
pub const TOGGLE_NAMESPACE_LABEL: &str = "stagecoach.dev/toggle-namespace";
/// Label: the stage whose flags a ConfigMap holds.
pub const STAGE_LABEL: &str = "stagecoach.dev/stage";
/// Annotation: the flag set's content version (`sha256:...`).
pub const VERSION_ANNOTATION: &str = "stagecoach.dev/flag-set-version";
/// How long a write is trusted before the cache shows it; past that it is written again.
pub const WRITE_GRACE: Duration = Duration::from_secs(5);
/// An application is planned again once its inputs have not changed for this long...
pub const SETTLE: Duration = Duration::from_millis(300);
/// ...or once a change has waited this long, even while more changes keep coming.
pub const MAX_SETTLE: Duration = Duration::from_secs(2);

/// The operator's flag-set ConfigMaps, metadata only.
pub type FlagSetCache = Store<PartialObjectMeta<ConfigMap>>;

/// One application: its name and the namespace of its toggles and Releases.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppKey {
    pub namespace: String,
    pub application: String,
}

impl AppKey {
    pub fn new(namespace: &str, application: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            application: application.to_owned(),
        }
    }

    /// The application a flag-set ConfigMap belongs to, from its labels.
    pub fn of_flag_set(config_map: &PartialObjectMeta<ConfigMap>) -> Option<Self> {
        let labels = config_map.labels();
        Some(Self::new(
            labels.get(TOGGLE_NAMESPACE_LABEL)?,
            labels.get(APPLICATION_LABEL)?,
        ))
    }
}

impl std::fmt::Display for AppKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.application)
    }
}

/// What the controller remembers about one application between reconciles: the plan
/// (recomputed only when its inputs change) and the ConfigMap writes not yet seen in the
/// cache. Lost on restart, which only costs one planning per application.
#[derive(Debug, Default)]
pub struct AppState {
    pub plan: Option<Arc<ApplicationPlan>>,
    /// Problems found while writing the ConfigMaps (conflicts, size), for every toggle.
    pub problems: Vec<Problem>,
    /// Stage namespace -> (version written, when).
    written: HashMap<String, (String, Instant)>,
    /// The [`Epoch`] the plan was made at.
    planned: Option<Epoch>,
    /// The toggles the plan was made from, as [`super::planned_as`] digests (name, uid,
    /// generation): a toggle the cache has in another form was created or changed since,
    /// and the plan says nothing true about it.
    pub planned_toggles: HashSet<u64>,
    /// Inputs that changed since the plan: (epoch, when it was first seen, when the first
    /// unplanned change was seen).
    settling: Option<(Epoch, Instant, Instant)>,
}

/// How far the inputs of an application have changed: a new value after every change of
/// its toggles' specs, of the Releases of its namespace, or a re-list (see
/// [`super::triggers::Epochs`]). Comparing epochs, rather than the inputs, keeps a
/// reconcile with nothing new to plan independent of the application's size.
pub type Epoch = (u64, u64, u64);

/// What to do with an application's plan, given the fingerprint of its inputs now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Planning {
    /// The plan is current.
    Reuse,
    /// Plan now.
    Plan,
    /// The inputs are still changing (toggles being applied one by one, say): come back
    /// after this long. Every change of an application's flag sets rewrites the ConfigMaps
    /// and the status of each of its toggles, so a burst of changes is planned once, not
    /// once per change; no change waits longer than [`MAX_SETTLE`].
    Wait(Duration),
}

impl AppState {
    /// Decides whether to plan at `epoch` (see [`Planning`]); the first plan is never
    /// delayed.
    pub fn planning(&mut self, epoch: Epoch, now: Instant) -> Planning {
        if self.plan.is_none() {
            return Planning::Plan;
        }
        if self.planned == Some(epoch) {
            self.settling = None;
            return Planning::Reuse;
        }
        let (changed_at, since) = match self.settling {
            Some((seen, changed_at, since)) if seen == epoch => (changed_at, since),
            Some((_, _, since)) => (now, since),
            None => (now, now),
        };
        let quiet = now.saturating_duration_since(changed_at);
        let waited = now.saturating_duration_since(since);
        if quiet >= SETTLE || waited >= MAX_SETTLE {
            self.settling = None;
            Planning::Plan
        } else {
            self.settling = Some((epoch, changed_at, since));
            let wait = SETTLE.saturating_sub(quiet);
            Planning::Wait(wait.min(MAX_SETTLE.saturating_sub(waited)))
        }
    }

    /// Records a plan made at `epoch`.
    pub fn planned(&mut self, plan: Arc<ApplicationPlan>, epoch: Epoch) {
        self.plan = Some(plan);
        self.planned = Some(epoch);
        self.settling = None;
    }
}

/// Every application's [`AppState`], each behind its own async lock: an application's
/// planning and ConfigMap step runs once at a time (kube's controller never runs two
/// reconciles of one application at once; the lock also keeps the followers' and a
/// re-list's overlapping requests in turn), different applications in parallel.
#[derive(Debug, Default)]
pub struct Applications {
    states: Mutex<HashMap<AppKey, Arc<tokio::sync::Mutex<AppState>>>>,
}

impl Applications {
    /// The state of `key`, created empty on first use.
    pub fn state(&self, key: &AppKey) -> Arc<tokio::sync::Mutex<AppState>> {
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        states.entry(key.clone()).or_default().clone()
    }

    /// Whether the current plan of `key` puts flag-set `version` in `namespace`: a
    /// ConfigMap event saying so is the echo of the operator's own write. False when the
    /// application is busy (its state locked) or unknown.
    pub fn serves(&self, key: &AppKey, namespace: &str, version: &str) -> bool {
        let state = {
            let states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
            states.get(key).cloned()
        };
        let Some(state) = state else { return false };
        let Ok(state) = state.try_lock() else {
            return false;
        };
        state.plan.as_ref().is_some_and(|plan| {
            plan.stages
                .iter()
                .any(|s| s.namespace == namespace && s.version == version)
        })
    }

    /// Forgets an application that has no toggle left.
    pub fn forget(&self, key: &AppKey) {
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        states.remove(key);
    }
}

/// Brings every stage's ConfigMap in line with `plan` and records the problems found in
/// `state.problems`. `documents` are the flag sets' JSON when the plan was just computed;
/// otherwise a stage that needs a write is rendered again from the caches by `render`
/// (JSON and version), and written only if that still gives the plan's version (else the
/// inputs changed and a new plan is on its way). Returns whether a write is still waiting
/// to show up in the cache (the caller checks again after [`WRITE_GRACE`]), and the first
/// write that failed. A failed write is also a problem in `state.problems`: the other
/// stages are still written, the toggles' status still says what is served, and the
/// caller reports the failure afterwards so that it is retried with backoff.
#[allow(clippy::too_many_arguments)] // the step's inputs, each used once
pub async fn sync_flag_sets(
    client: &Client,
    cache: &FlagSetCache,
    metrics: &ToggleMetrics,
    key: &AppKey,
    state: &mut AppState,
    plan: &ApplicationPlan,
    documents: Option<Vec<String>>,
    render: &(dyn Fn(&str) -> (String, String) + Sync),
) -> (bool, Option<ReconcileError>) {
    let mut problems = Vec::new();
    let mut waiting = false;
    let mut failed = None;
    for (position, stage) in plan.stages.iter().enumerate() {
        let cached = cache.get(&ObjectRef::new(FLAG_SET_CONFIG_MAP).within(&stage.namespace));
        if let Some(cached) = &cached {
            if AppKey::of_flag_set(cached).as_ref() != Some(key) {
                let owner = AppKey::of_flag_set(cached).map(|k| k.to_string());
                problems.push(stage.conflict(owner.as_deref()));
                continue;
            }
            let labels = cached.labels();
            if cached.annotations().get(VERSION_ANNOTATION) == Some(&stage.version)
                && labels.get(STAGE_LABEL) == Some(&stage.name)
            {
                state.written.remove(&stage.namespace);
                continue;
            }
        }
        if let Some((version, at)) = state.written.get(&stage.namespace)
            && *version == stage.version
            && at.elapsed() < WRITE_GRACE
        {
            waiting = true;
            continue;
        }
        let document = if let Some(document) = documents.as_ref().and_then(|d| d.get(position)) {
            document.clone()
        } else {
            let (document, version) = render(&stage.name);
            if version != stage.version {
                waiting = true;
                continue;
            }
            document
        };
        if let Some(problem) = stage.size_problem(document.len()) {
            problems.push(problem);
            continue;
        }
        if let Err(error) = apply_flag_set(
            client,
            key,
            &stage.name,
            &stage.namespace,
            &stage.version,
            document,
        )
        .await
        {
            problems.push(stage.not_written(&api_message(&error)));
            failed.get_or_insert(error);
            continue;
        }
        metrics.flag_set_writes.with_label_values(&["apply"]).inc();
        info!(stage = %stage.name, config_map = %stage.config_map(), version = %stage.version,
            "flag set written");
        state.written.insert(
            stage.namespace.clone(),
            (stage.version.clone(), Instant::now()),
        );
        waiting = true;
    }
    state.problems = problems;
    (waiting, failed)
}

/// The API server's own words for a failed write, without the Rust error chain.
fn api_message(error: &ReconcileError) -> String {
    match error {
        ReconcileError::WriteFlagSet {
            source: kube::Error::Api(status),
            ..
        } => status.message.clone(),
        other => other.to_string(),
    }
}

async fn apply_flag_set(
    client: &Client,
    key: &AppKey,
    stage: &str,
    namespace: &str,
    version: &str,
    document: String,
) -> Result<(), ReconcileError> {
    let body = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": FLAG_SET_CONFIG_MAP,
            "namespace": namespace,
            "labels": {
                MANAGED_BY.0: MANAGED_BY.1,
                APPLICATION_LABEL: key.application,
                TOGGLE_NAMESPACE_LABEL: key.namespace,
                STAGE_LABEL: stage,
            },
            "annotations": {VERSION_ANNOTATION: version},
        },
        "data": {FLAG_SET_KEY: document},
    });
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    api.patch(
        FLAG_SET_CONFIG_MAP,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|source| ReconcileError::WriteFlagSet {
        action: "apply",
        namespace: namespace.to_owned(),
        source,
    })?;
    Ok(())
}

/// Deletes the flag-set ConfigMaps of an application that has no toggle left. A
/// ConfigMap already gone counts as deleted.
pub async fn delete_flag_sets(
    client: &Client,
    cache: &FlagSetCache,
    metrics: &ToggleMetrics,
    key: &AppKey,
) -> Result<(), ReconcileError> {
    for config_map in cache.state() {
        if AppKey::of_flag_set(&config_map).as_ref() != Some(key) {
            continue;
        }
        let namespace = config_map.namespace().unwrap_or_default();
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
        let params = DeleteParams {
            preconditions: config_map.uid().map(|uid| kube::api::Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&config_map.name_any(), &params).await {
            Ok(_) => {
                metrics.flag_set_writes.with_label_values(&["delete"]).inc();
                info!(application = %key, %namespace, "flag set deleted: the application has no toggle left");
            }
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(source) => {
                warn!(application = %key, %namespace, error = %source, "cannot delete flag set");
                return Err(ReconcileError::WriteFlagSet {
                    action: "delete",
                    namespace,
                    source,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_of_changes_are_planned_once_and_never_wait_long() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let epoch = |n: u64| (0, n, 0);
        let mut state = AppState::default();
        assert_eq!(
            state.planning(epoch(1), at(0)),
            Planning::Plan,
            "the first plan is at once"
        );
        state.planned(Arc::new(ApplicationPlan::empty(1)), epoch(1));
        assert_eq!(state.planning(epoch(1), at(10)), Planning::Reuse);
        // A change waits until it has been quiet for SETTLE...
        assert_eq!(state.planning(epoch(2), at(100)), Planning::Wait(SETTLE));
        assert_eq!(
            state.planning(epoch(2), at(300)),
            Planning::Wait(Duration::from_millis(100))
        );
        assert_eq!(state.planning(epoch(2), at(400)), Planning::Plan);
        state.planned(Arc::new(ApplicationPlan::empty(2)), epoch(2));
        assert_eq!(state.planning(epoch(2), at(400)), Planning::Reuse);
        // ...but changes that keep coming are planned after MAX_SETTLE.
        let mut now = 1_000;
        let mut n = 3;
        loop {
            match state.planning(epoch(n), at(now)) {
                Planning::Wait(wait) => assert!(wait <= SETTLE),
                Planning::Plan => break,
                Planning::Reuse => panic!("the inputs changed"),
            }
            now += 200;
            n += 1;
        }
        assert_eq!(now - 1_000, 2_000, "planned once MAX_SETTLE had passed");
    }
}
