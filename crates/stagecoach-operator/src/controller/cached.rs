//! What the release controller caches of the stage-namespace objects it watches:
//! Deployments, their pods and the ControllerRevisions holding stable templates.
//!
//! Each is a view with only the fields the controller reads, deserialized straight from
//! the API server's JSON. k8s-openapi's full types are far larger than what is read:
//! a `Pod` is about 2.2 KiB before any of its content (every optional field of every
//! nested struct is inline), a `Container` about 2 KiB; heaptrack in the scale
//! benchmark (1,000 Deployments, 3,000 pods, 1,000 recorded revisions) put these three
//! caches at about 35 MB of an 82 MB live heap. Pod templates are kept as compact JSON
//! text and parsed when a reconcile reads them (a few hundred bytes, microseconds),
//! rather than as a tree of maps.
//!
//! Writes never go through these views: the controller patches with JSON bodies, and a
//! rollback reads the Deployment fresh with its full type.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// Annotations a cached object keeps: the operator's own (`stagecoach.dev/...`). Others
/// (`kubectl.kubernetes.io/last-applied-configuration`, a copy of the whole object, say)
/// are not read.
const KEPT_ANNOTATION_PREFIX: &str = "stagecoach.dev/";

/// Implements [`Resource`] for a view as the API type it is a view of.
macro_rules! view_of {
    ($view:ty, $api:ty) => {
        impl Resource for $view {
            type DynamicType = ();
            type Scope = NamespaceResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                <$api as Resource>::kind(&())
            }
            fn group(_: &()) -> Cow<'_, str> {
                <$api as Resource>::group(&())
            }
            fn version(_: &()) -> Cow<'_, str> {
                <$api as Resource>::version(&())
            }
            fn plural(_: &()) -> Cow<'_, str> {
                <$api as Resource>::plural(&())
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

/// A cached Deployment.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CachedDeployment {
    #[serde(deserialize_with = "slim_metadata")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "null_as_default")]
    pub spec: DeploymentSpecView,
    #[serde(default, deserialize_with = "null_as_default")]
    pub status: DeploymentStatusView,
}
view_of!(CachedDeployment, Deployment);

#[derive(Clone, Debug, Default, Deserialize)]
pub struct DeploymentSpecView {
    pub replicas: Option<i32>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub selector: SelectorView,
    /// The pod template (see [`CachedDeployment::template`]).
    #[serde(default, deserialize_with = "compact_json")]
    template: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SelectorView {
    pub match_labels: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStatusView {
    pub observed_generation: Option<i64>,
    pub replicas: Option<i32>,
    pub updated_replicas: Option<i32>,
    pub ready_replicas: Option<i32>,
    pub available_replicas: Option<i32>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub conditions: Vec<ConditionView>,
}

/// A condition's type, status and reason (not its message or times).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ConditionView {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: Option<String>,
}

impl CachedDeployment {
    /// The pod template, as the full type would serialize it (no null fields).
    pub fn template(&self) -> Value {
        parse_compact(&self.spec.template)
    }
}

/// A cached pod.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CachedPod {
    #[serde(deserialize_with = "slim_metadata")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "null_as_default")]
    pub spec: PodSpecView,
    #[serde(default, deserialize_with = "null_as_default")]
    pub status: PodStatusView,
}
view_of!(CachedPod, Pod);

#[derive(Clone, Debug, Default, Deserialize)]
pub struct PodSpecView {
    #[serde(default, deserialize_with = "null_as_default")]
    pub containers: Vec<ContainerView>,
}

/// A container's name and image.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ContainerView {
    pub name: String,
    pub image: Option<String>,
}

/// What the controller reads of a pod's status, summed up as it is deserialized: whether
/// the pod is Ready, the most restarts of any of its containers, and whether one of them
/// waits in `CrashLoopBackOff`. Its conditions and container statuses (a few hundred
/// bytes of small strings per pod, for 3,000 rolled-out pods in the scale benchmark) are
/// not kept.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(from = "PodStatusWire")]
pub struct PodStatusView {
    ready: bool,
    max_restarts: i32,
    crash_looping: bool,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodStatusWire {
    #[serde(default, deserialize_with = "null_as_default")]
    conditions: Vec<ConditionView>,
    #[serde(default, deserialize_with = "null_as_default")]
    container_statuses: Vec<ContainerStatusView>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerStatusView {
    #[serde(default)]
    restart_count: i32,
    #[serde(default, deserialize_with = "null_as_default")]
    state: ContainerStateView,
}

#[derive(Default, Deserialize)]
struct ContainerStateView {
    waiting: Option<WaitingView>,
}

#[derive(Default, Deserialize)]
struct WaitingView {
    reason: Option<String>,
}

impl From<PodStatusWire> for PodStatusView {
    fn from(status: PodStatusWire) -> Self {
        Self {
            ready: status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True"),
            max_restarts: status
                .container_statuses
                .iter()
                .map(|s| s.restart_count)
                .max()
                .unwrap_or(0),
            crash_looping: status.container_statuses.iter().any(|s| {
                s.state.waiting.as_ref().and_then(|w| w.reason.as_deref())
                    == Some("CrashLoopBackOff")
            }),
        }
    }
}

impl CachedPod {
    /// Whether the pod's Ready condition is True.
    pub fn ready(&self) -> bool {
        self.status.ready
    }

    /// Whether one of its containers waits in `CrashLoopBackOff`.
    pub fn crash_looping(&self) -> bool {
        self.status.crash_looping
    }

    /// The most restarts of any of its containers.
    pub fn max_restarts(&self) -> i32 {
        self.status.max_restarts
    }
}

/// A cached ControllerRevision (a stable template the operator recorded).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CachedRevision {
    #[serde(deserialize_with = "slim_metadata")]
    pub metadata: ObjectMeta,
    /// `data` as compact JSON: `{"deployment", "hash", "template"}`.
    #[serde(default, deserialize_with = "compact_json")]
    data: String,
}
view_of!(CachedRevision, ControllerRevision);

impl CachedRevision {
    /// `data`, parsed.
    pub fn data(&self) -> Value {
        parse_compact(&self.data)
    }
}

/// Metadata without what no reader of the caches needs: annotations other than the
/// operator's own, owner references, finalizers and `generateName`. (Managed fields are
/// thinned by the watch, see `ManagedFields`.)
fn slim_metadata<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    let mut metadata = ObjectMeta::deserialize(deserializer)?;
    if let Some(annotations) = metadata.annotations.as_mut() {
        annotations.retain(|key, _| key.starts_with(KEPT_ANNOTATION_PREFIX));
    }
    if metadata
        .annotations
        .as_ref()
        .is_some_and(BTreeMap::is_empty)
    {
        metadata.annotations = None;
    }
    metadata.owner_references = None;
    metadata.finalizers = None;
    metadata.generate_name = None;
    Ok(metadata)
}

/// A JSON value as compact text, without null fields: what serializing the full
/// k8s-openapi type would give (it leaves absent fields out, and the API server sends
/// some as null, such as a template's `metadata.creationTimestamp`). Empty when absent.
fn compact_json<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let mut value = Value::deserialize(deserializer)?;
    if value.is_null() {
        return Ok(String::new());
    }
    drop_nulls(&mut value);
    Ok(value.to_string())
}

fn drop_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// Text [`compact_json`] wrote, parsed again (null for none).
fn parse_compact(text: &str) -> Value {
    if text.is_empty() {
        return Value::Null;
    }
    // It was a JSON value when cached; it cannot fail to parse.
    serde_json::from_str(text).unwrap_or(Value::Null)
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::ResourceExt;
    use serde_json::json;

    /// A Deployment as the API server returns it, defaults filled in.
    fn deployment_json() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {
                "name": "api", "namespace": "shop-prod", "uid": "u-1", "resourceVersion": "42",
                "generation": 7,
                "labels": {"app": "api"},
                "annotations": {
                    "deployment.kubernetes.io/revision": "3",
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"a\": \"very long copy\"}",
                    "stagecoach.dev/template-hash": "abc123"
                },
                "managedFields": [{"manager": "kubectl", "operation": "Update", "time": "2026-11-29T04:00:00Z",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]
            },
            "spec": {
                "replicas": 4,
                "selector": {"matchLabels": {"app": "api"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}},
                "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600,
                "template": {
                    "metadata": {"creationTimestamp": null, "labels": {"app": "api", "stagecoach.dev/rollout": "true"}},
                    "spec": {
                        "containers": [{
                            "name": "app", "image": "shop/api:1.1.0",
                            "args": [],
                            "env": [{"name": "A", "value": "b"}],
                            "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"},
                                "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3, "timeoutSeconds": 1},
                            "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}},
                            "terminationMessagePath": "/dev/termination-log",
                            "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"
                        }],
                        "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
                        "dnsPolicy": "ClusterFirst", "securityContext": {}, "schedulerName": "default-scheduler"
                    }
                }
            },
            "status": {
                "observedGeneration": 7, "replicas": 5, "updatedReplicas": 4, "readyReplicas": 3,
                "availableReplicas": 3,
                "conditions": [
                    {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                        "message": "Deployment has minimum availability.",
                        "lastTransitionTime": "2026-11-29T04:00:00Z", "lastUpdateTime": "2026-11-29T04:00:00Z"},
                    {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                        "message": "ReplicaSet \"api-1\" has timed out progressing."}
                ]
            }
        })
    }

    /// The template the controller compares and records is exactly the one the full
    /// type gives (it used to be taken from it), so records written before still match.
    #[test]
    fn a_cached_deployment_reads_like_the_full_type() {
        let cached: CachedDeployment = serde_json::from_value(deployment_json()).unwrap();
        let full: Deployment = serde_json::from_value(deployment_json()).unwrap();
        let full_spec = full.spec.unwrap();
        assert_eq!(
            cached.template(),
            serde_json::to_value(&full_spec.template).unwrap()
        );
        assert!(
            cached.template()["metadata"]
                .get("creationTimestamp")
                .is_none()
        );
        assert_eq!(cached.spec.replicas, Some(4));
        assert_eq!(
            cached.spec.selector.match_labels,
            full_spec.selector.match_labels
        );
        assert_eq!(cached.metadata.generation, Some(7));
        assert_eq!(cached.resource_version().as_deref(), Some("42"));
        assert_eq!(
            cached.annotations().keys().collect::<Vec<_>>(),
            ["stagecoach.dev/template-hash"]
        );
        assert_eq!(cached.metadata.managed_fields.as_ref().unwrap().len(), 1);
        let status = &cached.status;
        assert_eq!(
            (
                status.observed_generation,
                status.replicas,
                status.updated_replicas,
                status.ready_replicas,
                status.available_replicas
            ),
            (Some(7), Some(5), Some(4), Some(3), Some(3))
        );
        assert_eq!(
            status.conditions[1].reason.as_deref(),
            Some("ProgressDeadlineExceeded")
        );
        // The Resource impl addresses the real kind.
        assert_eq!(
            CachedDeployment::url_path(&(), Some("ns")),
            Deployment::url_path(&(), Some("ns"))
        );
        assert_eq!(CachedDeployment::kind(&()), "Deployment");
    }

    #[test]
    fn a_deployment_without_spec_or_status_is_cached_empty() {
        let cached: CachedDeployment = serde_json::from_value(json!({
            "metadata": {"name": "api", "namespace": "ns"}, "status": null
        }))
        .unwrap();
        assert!(cached.template().is_null());
        assert!(cached.spec.selector.match_labels.is_none());
        assert!(cached.status.conditions.is_empty());
    }

    /// A crash-looping canary pod as kwok reports it: what the release controller reads.
    #[test]
    fn a_cached_pod_keeps_what_the_release_controller_reads() {
        let pod: CachedPod = serde_json::from_value(json!({
            "metadata": {
                "name": "api-canary-7d9f-abcde", "namespace": "shop-prod", "uid": "u-1",
                "resourceVersion": "42", "generateName": "api-canary-7d9f-",
                "deletionTimestamp": "2026-11-29T04:00:00Z",
                "labels": {"app": "api", "stagecoach.dev/role": "canary", "stagecoach.dev/rollout": "true"},
                "annotations": {"pod-create.stage.kwok.x-k8s.io/jitter-delay": "500ms"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-canary-7d9f", "uid": "rs"}]
            },
            "spec": {
                "nodeName": "kwok-node-0",
                "containers": [{"name": "app", "image": "shop/api:1.1.0",
                    "env": [{"name": "A", "value": "b"}], "terminationMessagePath": "/dev/termination-log"}],
                "volumes": [{"name": "token", "projected": {"sources": []}}]
            },
            "status": {
                "phase": "Running",
                "conditions": [
                    {"type": "Ready", "status": "False", "reason": "ContainersNotReady", "message": "containers with unready status"},
                    {"type": "Initialized", "status": "True"}
                ],
                "containerStatuses": [{"name": "app", "image": "shop/api:1.1.0", "imageID": "x", "ready": false,
                    "restartCount": 5, "started": false,
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting failed container"}}}]
            }
        }))
        .unwrap();
        assert_eq!(pod.name_any(), "api-canary-7d9f-abcde");
        assert_eq!(pod.namespace().as_deref(), Some("shop-prod"));
        assert_eq!(pod.resource_version().as_deref(), Some("42"));
        assert!(pod.metadata.deletion_timestamp.is_some());
        assert_eq!(pod.labels().len(), 3);
        assert!(pod.metadata.annotations.is_none() && pod.metadata.owner_references.is_none());
        assert_eq!(pod.spec.containers.len(), 1);
        assert_eq!(pod.spec.containers[0].name, "app");
        assert_eq!(
            pod.spec.containers[0].image.as_deref(),
            Some("shop/api:1.1.0")
        );
        assert!(!pod.ready());
        assert_eq!(pod.max_restarts(), 5);
        assert!(pod.crash_looping());

        let ready: CachedPod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": [{"name": "app", "image": "i"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0,
                    "state": {"running": {"startedAt": "2026-11-29T04:00:00Z"}}}]}
        }))
        .unwrap();
        assert!(ready.ready());
        assert!(!ready.crash_looping());
        // A pod just created: no status yet.
        let new: CachedPod =
            serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "ns"}})).unwrap();
        assert!(!new.ready() && new.max_restarts() == 0 && !new.crash_looping());
    }

    #[test]
    fn a_cached_revision_keeps_its_data() {
        let data = json!({"deployment": "api", "hash": "abc",
            "template": {"spec": {"containers": [{"name": "app", "image": "shop/api:1.0.0"}]}}});
        let revision: CachedRevision = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "ControllerRevision",
            "metadata": {"name": "r-api", "namespace": "ns", "resourceVersion": "9",
                "labels": {"app.kubernetes.io/managed-by": "stagecoach"}},
            "revision": 1,
            "data": data
        }))
        .unwrap();
        assert_eq!(revision.data(), data);
        assert_eq!(revision.resource_version().as_deref(), Some("9"));
        assert_eq!(CachedRevision::plural(&()), "controllerrevisions");
        let empty: CachedRevision =
            serde_json::from_value(json!({"metadata": {"name": "r"}, "revision": 1})).unwrap();
        assert!(empty.data().is_null());
    }
}
