//! The release controller's view of stage namespaces (observe) and its hands in them
//! (apply): Deployments, their pods and the ControllerRevisions holding stable revisions.
//!
//! Observation reads only reflector caches. Actions are the engine's
//! [`Action`](stagecoach_engine::release::Action)s carried out one by one.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use stagecoach_api::FIELD_MANAGER;
use stagecoach_api::Release;
use stagecoach_api::release::{ReleaseSpec, ResolvedStage, Workload};
use stagecoach_engine::release::Action;
use stagecoach_engine::release::observed::{
    DeploymentState, PodHealth, RecordedRevision, StageObservation, WorkloadObservation,
};
use stagecoach_engine::release::rollout::{
    CANARY_LABEL, CANARY_ROLE, ROLLOUT_LABEL, ROLLOUT_VALUE, canary_name, revision_name,
};

use super::cached::{CachedDeployment, CachedPod, CachedRevision};
use super::fence::{Cached, WriteFence};
use super::scoped::Cache;
use crate::error::ReconcileError;

/// Label on every object the operator creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "stagecoach");
/// Label naming the Release a ControllerRevision belongs to.
pub const RELEASE_LABEL: &str = "stagecoach.dev/release";
/// Annotation with the hash of the template the operator applied to a canary.
pub const TEMPLATE_HASH_ANNOTATION: &str = "stagecoach.dev/template-hash";

/// The caches the release controller observes through: cluster-wide, or (with
/// `--namespace`) only the stage namespaces of the watched Releases (see [`Cache`]).
#[derive(Clone)]
pub struct WorkloadCaches {
    pub deployments: Cache<CachedDeployment>,
    pub pods: Cache<CachedPod>,
    pub revisions: Cache<CachedRevision>,
}

fn deployment_state(deployment: &CachedDeployment) -> DeploymentState {
    let (spec, status) = (&deployment.spec, &deployment.status);
    let deadline_exceeded = status.conditions.iter().any(|c| {
        c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    DeploymentState {
        generation: deployment.metadata.generation.unwrap_or(0),
        observed_generation: status.observed_generation.unwrap_or(0),
        replicas: spec.replicas.unwrap_or(1),
        current: status.replicas.unwrap_or(0),
        updated: status.updated_replicas.unwrap_or(0),
        ready: status.ready_replicas.unwrap_or(0),
        available: status.available_replicas.unwrap_or(0),
        template: deployment.template(),
        deadline_exceeded,
        applied_hash: deployment
            .annotations()
            .get(TEMPLATE_HASH_ANNOTATION)
            .cloned(),
        last_editor: last_editor(deployment),
    }
}

/// The field manager that most recently changed the Deployment's spec (not a
/// subresource such as `status` or `scale`), other than Stagecoach itself. The cache keeps
/// managedFields without their field sets for exactly this.
fn last_editor(deployment: &CachedDeployment) -> Option<String> {
    deployment
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.subresource.as_deref().unwrap_or_default().is_empty())
        .filter(|m| {
            m.manager
                .as_deref()
                .is_some_and(|name| name != FIELD_MANAGER)
        })
        .max_by_key(|m| m.time.as_ref().map(|t| t.0))
        .and_then(|m| m.manager.clone())
}

fn recorded(revision: &CachedRevision) -> Option<RecordedRevision> {
    let data = revision.data();
    Some(RecordedRevision {
        name: revision.name_any(),
        hash: data.get("hash")?.as_str()?.to_owned(),
        template: data.get("template")?.clone(),
    })
}

/// Health of the pods selected by `deployment` whose named containers run the release's
/// images.
fn new_pod_health(
    pods: &[std::sync::Arc<CachedPod>],
    selector: &BTreeMap<String, String>,
    workload: &Workload,
) -> PodHealth {
    let mut health = PodHealth::default();
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let labels = pod.labels();
        if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            continue;
        }
        let containers = &pod.spec.containers;
        let runs_release = workload.containers.iter().all(|wanted| {
            containers
                .iter()
                .any(|c| c.name == wanted.name && c.image.as_deref() == Some(wanted.image.as_str()))
        });
        if !runs_release {
            continue;
        }
        health.total += 1;
        if pod.ready() {
            health.ready += 1;
        }
        if pod.crash_looping() {
            health.crash_looping += 1;
        }
        health.max_restarts = health.max_restarts.max(pod.max_restarts());
    }
    health
}

impl WorkloadCaches {
    /// What the release's workloads look like in every stage namespace.
    pub fn observe(
        &self,
        release: &str,
        spec: &ReleaseSpec,
        stages: &[ResolvedStage],
    ) -> BTreeMap<String, StageObservation> {
        let pods_by_namespace: BTreeMap<String, Vec<std::sync::Arc<CachedPod>>> =
            Self::stage_namespaces(stages)
                .into_iter()
                .map(|ns| {
                    let pods = self.pods.state_in(&ns);
                    (ns, pods)
                })
                .collect();
        let mut observed = BTreeMap::new();
        for stage in stages.iter().cloned() {
            let Some(namespace) = stage.namespace else {
                continue;
            };
            let mut workloads = BTreeMap::new();
            for workload in &spec.workloads {
                let get = |name: &str| {
                    self.deployments
                        .get(&ObjectRef::new(name).within(&namespace))
                };
                let stable = get(&workload.deployment);
                let selector = stable
                    .as_ref()
                    .and_then(|d| d.spec.selector.match_labels.clone())
                    .unwrap_or_default();
                let pods = pods_by_namespace
                    .get(&namespace)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let observation = WorkloadObservation {
                    stable: stable.as_deref().map(deployment_state),
                    canary: get(&canary_name(&workload.deployment))
                        .as_deref()
                        .map(deployment_state),
                    recorded: self
                        .revisions
                        .get(
                            &ObjectRef::new(&revision_name(release, &workload.deployment))
                                .within(&namespace),
                        )
                        .as_deref()
                        .and_then(recorded),
                    new_pods: if stable.is_some() {
                        new_pod_health(pods, &selector, workload)
                    } else {
                        PodHealth::default()
                    },
                };
                workloads.insert(workload.deployment.clone(), observation);
            }
            observed.insert(stage.name.clone(), StageObservation { workloads });
        }
        observed
    }

    /// Watches the release's stage namespaces (when the caches are per namespace) and
    /// waits until every cache has its first complete list of them: before that, a
    /// Deployment missing from the cache may exist, and deciding from it would fail a
    /// stage for nothing.
    pub async fn ready(&self, stages: &[ResolvedStage]) {
        let namespaces = Self::stage_namespaces(stages);
        self.deployments.watch(&namespaces);
        self.pods.watch(&namespaces);
        self.revisions.watch(&namespaces);
        self.deployments.ready(&namespaces).await;
        self.pods.ready(&namespaces).await;
        self.revisions.ready(&namespaces).await;
    }

    /// The first object this release reads whose cached view is older than the operator's
    /// own last write of it (see [`WriteFence`]), as `kind namespace/name`.
    pub fn stale(
        &self,
        fence: &WriteFence,
        release: &str,
        spec: &ReleaseSpec,
        stages: &[ResolvedStage],
    ) -> Option<String> {
        for namespace in Self::stage_namespaces(stages) {
            for workload in &spec.workloads {
                for name in [
                    workload.deployment.clone(),
                    canary_name(&workload.deployment),
                ] {
                    let cached = self
                        .deployments
                        .get(&ObjectRef::new(&name).within(&namespace));
                    let view = cached.as_deref().map_or(Cached::Absent, |d| {
                        Cached::At(d.metadata.resource_version.as_deref())
                    });
                    if fence.is_stale(&(DEPLOYMENT, namespace.clone(), name.clone()), view) {
                        return Some(format!("{DEPLOYMENT} {namespace}/{name}"));
                    }
                }
                let name = revision_name(release, &workload.deployment);
                let cached = self
                    .revisions
                    .get(&ObjectRef::new(&name).within(&namespace));
                let view = cached.as_deref().map_or(Cached::Absent, |r| {
                    Cached::At(r.metadata.resource_version.as_deref())
                });
                if fence.is_stale(&(REVISION, namespace.clone(), name.clone()), view) {
                    return Some(format!("{REVISION} {namespace}/{name}"));
                }
            }
        }
        None
    }

    /// The namespaces of `stages`.
    pub fn stage_namespaces(stages: &[ResolvedStage]) -> Vec<String> {
        stages.iter().filter_map(|s| s.namespace.clone()).collect()
    }

    /// Whether the Deployments and pods of `namespace` matter to a release, for mapping
    /// watch events back to releases: a namespace its own spec names (explicitly or by
    /// default, `<application>-<stage>`) or one its status says it works in (with a
    /// Pipeline, the Pipeline's). The watch mappers ask this of every Release for every
    /// Deployment, pod and ControllerRevision event, in the controller's one event loop,
    /// so it allocates nothing: building the list of namespaces instead (resolving and
    /// cloning the stages) made each event cost O(releases) allocations, which held up
    /// the loop, and with it the caches and triggers, for seconds with 500 releases
    /// rolling out at once (tests/e2e/benches/concurrency.rs).
    pub fn release_in_namespace(release: &Release, namespace: &str) -> bool {
        let spec = &release.spec;
        let by_default = |stage: &str| {
            namespace
                .strip_prefix(spec.application.as_str())
                .and_then(|rest| rest.strip_prefix('-'))
                == Some(stage)
        };
        let in_spec = match &spec.stages {
            Some(stages) => stages.iter().any(|s| match &s.namespace {
                Some(ns) => ns == namespace,
                None => by_default(&s.name),
            }),
            None => stagecoach_api::names::DEFAULT_STAGES
                .iter()
                .any(|stage| by_default(stage)),
        };
        in_spec
            || release
                .status
                .iter()
                .flat_map(|s| &s.stages)
                .any(|s| !s.namespace.is_empty() && s.namespace == namespace)
    }

    /// The namespaces [`Self::release_in_namespace`] accepts, as a list (the reference
    /// its test compares with).
    #[cfg(test)]
    pub fn release_namespaces(release: &Release) -> Vec<String> {
        let mut namespaces = Self::stage_namespaces(&release.spec.resolved_stages());
        for stage in release.status.iter().flat_map(|s| &s.stages) {
            if !stage.namespace.is_empty() && !namespaces.contains(&stage.namespace) {
                namespaces.push(stage.namespace.clone());
            }
        }
        namespaces
    }
}

fn apply_error(
    action: &'static str,
    namespace: &str,
    name: &str,
) -> impl FnOnce(kube::Error) -> ReconcileError {
    let (namespace, name) = (namespace.to_owned(), name.to_owned());
    move |source| ReconcileError::ApplyWorkload {
        source: Box::new(source),
        action,
        namespace,
        name,
    }
}

fn is_status(error: &kube::Error, code: u16) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == code)
}

/// Fence kind of Deployments.
const DEPLOYMENT: &str = "Deployment";
/// Fence kind of ControllerRevisions.
const REVISION: &str = "ControllerRevision";

/// Carries out one planned action and remembers the resource version it wrote in `fence`.
pub async fn execute(
    client: &Client,
    caches: &WorkloadCaches,
    fence: &WriteFence,
    release: &str,
    action: &Action,
) -> Result<(), ReconcileError> {
    let written = apply(client, caches, release, action).await?;
    if let Some((kind, namespace, name, version)) = written {
        fence.wrote((kind, namespace, name), version.as_deref());
    }
    Ok(())
}

/// What a write left behind: kind, namespace, name and its new resource version.
type Written = Option<(&'static str, String, String, Option<String>)>;

async fn apply(
    client: &Client,
    caches: &WorkloadCaches,
    release: &str,
    action: &Action,
) -> Result<Written, ReconcileError> {
    match action {
        Action::RecordStableRevision {
            namespace,
            deployment,
            revision,
            template,
            hash,
        } => {
            record_revision(
                client, release, namespace, deployment, revision, template, hash,
            )
            .await
        }
        Action::ApplyCanary {
            namespace,
            deployment,
            replicas,
            template,
            hash,
        } => {
            apply_canary(
                client, caches, release, namespace, deployment, *replicas, template, hash,
            )
            .await
        }
        Action::UpdateStable {
            namespace,
            deployment,
            images,
        } => update_stable(client, namespace, deployment, images).await,
        Action::RestoreStable {
            namespace,
            deployment,
            template,
        } => restore_stable(client, namespace, deployment, template).await,
        Action::DeleteCanary {
            namespace,
            deployment,
        } => delete_canary(client, namespace, deployment)
            .await
            .map(|()| None),
    }
}

async fn record_revision(
    client: &Client,
    release: &str,
    namespace: &str,
    deployment: &str,
    revision: &str,
    template: &Value,
    hash: &str,
) -> Result<Written, ReconcileError> {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), namespace);
    let object: ControllerRevision = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": {
            "name": revision,
            "labels": {MANAGED_BY.0: MANAGED_BY.1, RELEASE_LABEL: release, "stagecoach.dev/deployment": deployment},
        },
        "revision": 1,
        "data": {"deployment": deployment, "hash": hash, "template": template},
    }))
    .map_err(ReconcileError::SerializeStatus)?;
    match api.create(&PostParams::default(), &object).await {
        // Never overwrite: the first record is the truth.
        Ok(created) => Ok(Some((
            REVISION,
            namespace.to_owned(),
            revision.to_owned(),
            created.resource_version(),
        ))),
        Err(e) if is_status(&e, 409) => Ok(None),
        Err(e) => Err(apply_error(
            "record the stable revision of",
            namespace,
            deployment,
        )(e)),
    }
}

#[allow(clippy::too_many_arguments)] // the fields of Action::ApplyCanary, plus where
async fn apply_canary(
    client: &Client,
    caches: &WorkloadCaches,
    release: &str,
    namespace: &str,
    deployment: &str,
    replicas: i32,
    template: &Value,
    hash: &str,
) -> Result<Written, ReconcileError> {
    let stable = caches
        .deployments
        .get(&ObjectRef::new(deployment).within(namespace));
    let mut selector = stable
        .as_ref()
        .and_then(|d| d.spec.selector.match_labels.clone())
        .unwrap_or_default();
    selector.insert(CANARY_LABEL.to_owned(), CANARY_ROLE.to_owned());
    let name = canary_name(deployment);
    let body = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {MANAGED_BY.0: MANAGED_BY.1, RELEASE_LABEL: release, CANARY_LABEL: CANARY_ROLE},
            "annotations": {TEMPLATE_HASH_ANNOTATION: hash},
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0}},
            "template": template,
        }
    });
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(apply_error("apply the canary", namespace, &name))?;
    Ok(Some((
        DEPLOYMENT,
        namespace.to_owned(),
        name,
        applied.resource_version(),
    )))
}

async fn update_stable(
    client: &Client,
    namespace: &str,
    deployment: &str,
    images: &[(String, String)],
) -> Result<Written, ReconcileError> {
    let containers: Vec<Value> = images
        .iter()
        .map(|(name, image)| json!({"name": name, "image": image}))
        .collect();
    let body = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": deployment, "namespace": namespace},
        "spec": {
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {ROLLOUT_LABEL: ROLLOUT_VALUE}},
                "spec": {"containers": containers},
            },
        }
    });
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let applied = api
        .patch(
            deployment,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(apply_error("update the images of", namespace, deployment))?;
    Ok(Some((
        DEPLOYMENT,
        namespace.to_owned(),
        deployment.to_owned(),
        applied.resource_version(),
    )))
}

/// Replaces the whole template (not a merge), read fresh, so what runs is exactly the
/// recorded template; a conflict fails the reconcile, which retries.
async fn restore_stable(
    client: &Client,
    namespace: &str,
    deployment: &str,
    template: &Value,
) -> Result<Written, ReconcileError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let mut current = api
        .get(deployment)
        .await
        .map_err(apply_error("read", namespace, deployment))?;
    let recorded =
        serde_json::from_value(template.clone()).map_err(ReconcileError::SerializeStatus)?;
    if let Some(spec) = current.spec.as_mut() {
        spec.template = recorded;
    }
    current.metadata.managed_fields = None;
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let replaced = api
        .replace(deployment, &params, &current)
        .await
        .map_err(apply_error(
            "restore the stable revision of",
            namespace,
            deployment,
        ))?;
    Ok(Some((
        DEPLOYMENT,
        namespace.to_owned(),
        deployment.to_owned(),
        replaced.resource_version(),
    )))
}

async fn delete_canary(
    client: &Client,
    namespace: &str,
    deployment: &str,
) -> Result<(), ReconcileError> {
    let name = canary_name(deployment);
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    match api.delete(&name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(apply_error("delete the canary", namespace, &name)(e)),
    }
}

/// Deletes the stable revisions this release recorded in every stage namespace (a
/// deleted Release's records are needed by nothing: each release records its own).
pub async fn delete_revisions(
    client: &Client,
    release: &str,
    spec: &ReleaseSpec,
    stages: &[ResolvedStage],
) -> Result<(), ReconcileError> {
    for namespace in WorkloadCaches::stage_namespaces(stages) {
        let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &namespace);
        for workload in &spec.workloads {
            let name = revision_name(release, &workload.deployment);
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(e) if is_status(&e, 404) => {}
                Err(e) => {
                    return Err(apply_error(
                        "delete the recorded revision",
                        &namespace,
                        &name,
                    )(e));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(doc: serde_json::Value) -> Release {
        serde_json::from_value(doc).expect("a valid Release")
    }

    #[test]
    fn a_release_is_in_exactly_the_namespaces_it_lists() {
        let explicit = release(json!({
            "apiVersion": "stagecoach.dev/v1alpha1", "kind": "Release",
            "metadata": {"name": "r", "namespace": "home"},
            "spec": {"application": "shop", "version": "1.0.0",
                "workloads": [{"deployment": "api", "containers": [{"name": "app", "image": "i"}]}],
                "stages": [{"name": "dev"}, {"name": "prod", "namespace": "shop-live"}]},
            "status": {"stages": [
                {"name": "qa", "namespace": "shop-qa-old", "phase": "Succeeded"},
                {"name": "x", "namespace": "", "phase": "Pending"}]}
        }));
        let defaulted = release(json!({
            "apiVersion": "stagecoach.dev/v1alpha1", "kind": "Release",
            "metadata": {"name": "r", "namespace": "home"},
            "spec": {"application": "shop", "version": "1.0.0",
                "workloads": [{"deployment": "api", "containers": [{"name": "app", "image": "i"}]}]}
        }));
        let candidates = [
            "shop-dev",
            "shop-live",
            "shop-prod",
            "shop-qa",
            "shop-qa-old",
            "shop-demo",
            "shop",
            "shop-",
            "shopdev",
            "other-dev",
            "",
            "home",
        ];
        for r in [&explicit, &defaulted] {
            let listed = WorkloadCaches::release_namespaces(r);
            for ns in candidates {
                assert_eq!(
                    WorkloadCaches::release_in_namespace(r, ns),
                    listed.iter().any(|l| l == ns),
                    "{ns} (listed: {listed:?})"
                );
            }
        }
        assert!(WorkloadCaches::release_in_namespace(&explicit, "shop-live"));
        assert!(!WorkloadCaches::release_in_namespace(
            &explicit,
            "shop-prod"
        ));
        assert!(WorkloadCaches::release_in_namespace(
            &defaulted,
            "shop-demo"
        ));
    }
}
