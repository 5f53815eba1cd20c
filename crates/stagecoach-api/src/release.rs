//! `Release`: one version of an application, carried through every stage of the
//! release policy (by default dev, qa, demo, prod).

use chrono::{DateTime, Utc};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Condition;
use crate::names::{DEFAULT_STAGES, default_stage_namespace};

/// A Release asks Stagecoach to roll one version of an application through every stage
/// (dev, qa, demo, prod by default), each stage incrementally and behind health gates,
/// and to revert a stage to the exact revision it ran before when anything goes wrong.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stagecoach.dev",
    version = "v1alpha1",
    kind = "Release",
    plural = "releases",
    singular = "release",
    shortname = "rel",
    category = "stagecoach",
    namespaced,
    status = "ReleaseStatus",
    printcolumn = r#"{"name":"Application","type":"string","jsonPath":".spec.application"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.version"}"#,
    printcolumn = r#"{"name":"Stage","type":"string","jsonPath":".status.currentStage"}"#,
    printcolumn = r#"{"name":"Weight","type":"integer","jsonPath":".status.currentWeight"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.stages) || self.stages.all(s, self.stages.exists_one(t, t.name == s.name))",
        "message": "stage names must be unique within a release",
        "fieldPath": ".stages"
    },
    {
        "rule": "!has(self.stages) || self.stages.all(s, has(s.namespace) || ((self.application + '-' + s.name).size() <= 63 && (self.application + '-' + s.name).matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')))",
        "message": "every stage needs a namespace: set stages[].namespace, or use an application name for which '<application>-<stage>' is a valid namespace name (lower-case letters, digits and '-', at most 63 characters)",
        "fieldPath": ".stages"
    },
    {
        "rule": "has(self.stages) || ((self.application + '-demo').size() <= 63 && self.application.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))",
        "message": "the default stages use namespaces '<application>-dev', '-qa', '-demo' and '-prod', which this application name cannot form; list spec.stages with a namespace for each",
        "fieldPath": ".application"
    }
]))]
pub struct ReleaseSpec {
    /// Name of the application this release belongs to. Releases of one application are
    /// ordered by creation time; a newer one supersedes older ones at the stages they have
    /// not entered yet. Stage namespaces default to '<application>-<stage>'.
    #[schemars(length(min = 1, max = 63))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')",
        "message": "application must be lower-case letters, digits, '-' or '.', starting and ending with a letter or digit"
    }]))]
    pub application: String,

    /// Version being released, as a semantic version such as 2.4.0 or 3.0.0-rc.1.
    #[schemars(length(max = 128))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.matches('^(0|[1-9][0-9]*)[.](0|[1-9][0-9]*)[.](0|[1-9][0-9]*)(-[0-9A-Za-z-]+([.][0-9A-Za-z-]+)*)?([+][0-9A-Za-z-]+([.][0-9A-Za-z-]+)*)?$')",
        "message": "version must be a semantic version such as 2.4.0 or 3.0.0-rc.1 (MAJOR.MINOR.PATCH, no leading 'v')"
    }]))]
    pub version: String,

    /// Kind of release: patch, minor or major. Major releases are coordinated with
    /// clients (approval, release window, advance notice).
    #[serde(rename = "type", default)]
    pub release_type: ReleaseType,

    /// The audited scope of the release: what is in it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 200))]
    pub changes: Vec<Change>,

    /// Release notes in Markdown, shared with client teams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub notes: Option<String>,

    /// Deployments this release changes. Each is expected under the same name in every
    /// stage namespace; only the containers listed here change.
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "size(self) > 0", "message": "workloads must list at least one Deployment"},
        {
            "rule": "self.all(w, self.exists_one(x, x.deployment == w.deployment))",
            "message": "each Deployment may appear only once in workloads"
        }
    ]))]
    pub workloads: Vec<Workload>,

    /// The stages this release goes through, in order. When omitted: dev, qa, demo, prod
    /// in namespaces '<application>-<stage>', each with a single step to 100%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub stages: Option<Vec<Stage>>,

    /// Hold the release where it is: no new step starts while paused (gates keep being
    /// evaluated, and a failure still rolls back). Set back to false to resume.
    #[serde(default, skip_serializing_if = "is_false")]
    pub paused: bool,

    /// Abort the release: the stage in progress is rolled back to its stable revision and
    /// no further stage is entered. Stages that already succeeded keep the new version.
    /// Declarative, so it can be set from a pull request; it cannot be undone (apply a new
    /// Release instead).
    #[serde(default, skip_serializing_if = "is_false")]
    pub abort: bool,
}

/// CEL rules of a stage's steps (shared by Release and Pipeline stages).
pub(crate) fn steps_rules() -> serde_json::Value {
    serde_json::json!([
        {
            "rule": "self.filter(s, has(s.setWeight)).map(s, s.setWeight).isSorted() && self.filter(s, has(s.setWeight)).all(a, self.filter(t, has(t.setWeight) && t.setWeight == a.setWeight).size() == 1)",
            "message": "setWeight values must strictly increase from one step to the next within a stage"
        },
        {
            "rule": "self.exists(s, has(s.setWeight) && s.setWeight == 100)",
            "message": "the last setWeight step of a stage must be 100, so that the stage ends on the new version"
        }
    ])
}

/// CEL rule of a stage name.
pub(crate) fn stage_name_rule() -> serde_json::Value {
    serde_json::json!({
        "rule": "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
        "message": "stage name must be 1-20 lower-case letters, digits and '-', starting and ending with a letter or digit"
    })
}

/// CEL rule of a stage namespace.
pub(crate) fn namespace_rule() -> serde_json::Value {
    serde_json::json!({
        "rule": "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
        "message": "namespace must be a valid namespace name (lower-case letters, digits and '-')"
    })
}

/// CEL rule: gate names are unique within a stage.
pub(crate) fn unique_gates_rule() -> serde_json::Value {
    serde_json::json!({
        "rule": "self.all(g, self.exists_one(h, h.name == g.name))",
        "message": "gate names must be unique within a stage"
    })
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_false(value: &bool) -> bool {
    !*value
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(value: &i32) -> bool {
    *value == 0
}

/// Kind of release.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseType {
    /// Bug fixes only.
    Patch,
    /// Backwards-compatible changes; the usual several-times-a-week release.
    #[default]
    Minor,
    /// Changes clients must prepare for.
    Major,
}

/// One change included in the release.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Change {
    /// Identifier in the change tracker, such as PR-1234.
    #[schemars(length(min = 1, max = 128))]
    pub id: String,
    /// One-line summary.
    #[schemars(length(max = 512))]
    pub title: String,
    /// Link to the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub url: Option<String>,
    /// Who wrote the change, as user names the API server knows (kubectl auth whoami).
    /// An author's approval does not count for this release (four eyes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub authors: Vec<String>,
    /// When the change was merged, such as 2026-11-20T14:03:00Z. The DORA lead time for
    /// changes counts from here (from the Release's creation when not given).
    #[serde(rename = "mergedAt", default, skip_serializing_if = "Option::is_none")]
    pub merged_at: Option<DateTime<Utc>>,
}

/// A Deployment the release changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Workload {
    /// Name of the Deployment, the same in every stage namespace.
    #[schemars(length(max = 253))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')",
        "message": "deployment must be a Deployment name: lower-case letters, digits, '-' or '.'"
    }]))]
    pub deployment: String,
    /// Containers whose image the release sets. Other containers are left as they are.
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "size(self) > 0", "message": "containers must list at least one container"},
        {
            "rule": "self.all(c, self.exists_one(d, d.name == c.name))",
            "message": "each container may appear only once per workload"
        }
    ]))]
    pub containers: Vec<ContainerImage>,
}

/// The image a container runs in this release.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerImage {
    /// Container name in the Deployment's pod template.
    #[schemars(length(max = 63))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
        "message": "container name must be lower-case letters, digits and '-'"
    }]))]
    pub name: String,
    /// Image reference, such as registry.example.com/billing-api:2.4.0.
    #[schemars(length(max = 1024))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "size(self) > 0 && !self.matches('\\\\s')",
        "message": "image must not be empty and must not contain whitespace"
    }]))]
    pub image: String,
}

/// One stage of the pipeline: a namespace and how the release rolls out there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Stage {
    /// Stage name, such as dev, qa, demo or prod (lower-case letters, digits and '-').
    #[schemars(length(max = 20))]
    #[schemars(extend("x-kubernetes-validations" = [stage_name_rule()]))]
    pub name: String,

    /// Namespace of this stage. Default: '<application>-<stage name>'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[schemars(extend("x-kubernetes-validations" = [namespace_rule()]))]
    pub namespace: Option<String>,

    /// Rollout steps, run in order. A setWeight step runs that percentage of pods on the
    /// new version (a canary next to the unchanged Deployment; 100 updates the Deployment
    /// itself); a pause step waits for its duration, or until promoted (kubectl stagecoach promote) when it has none.
    /// Weights must strictly increase and the last one must be 100. Default: one step,
    /// setWeight 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-validations" = steps_rules()))]
    pub steps: Option<Vec<Step>>,

    /// Checks evaluated at every step and during early life support, in addition to the
    /// built-in workload-health gate that is always on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-validations" = [unique_gates_rule()]))]
    pub gates: Vec<Gate>,

    /// New pods must be ready within this time after a step starts, else the step fails
    /// and the stage rolls back. Default 10m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-validations" = [crate::duration::cel_rule("progressDeadline")]))]
    pub progress_deadline: Option<String>,

    /// Monitoring after this stage reaches 100%: only used on the last stage, where the
    /// release stays in EarlyLifeSupport for the duration with its gates still evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_life_support: Option<EarlyLifeSupport>,
}

/// One rollout step: exactly one of setWeight or pause.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.setWeight) != has(self.pause)",
    "message": "a step is either setWeight or pause, not both and not neither"
}]))]
pub struct Step {
    /// Percentage of the stage's pods that run the new version, 1 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self >= 1 && self <= 100",
        "message": "setWeight must be between 1 and 100 (percent of pods on the new version)"
    }]))]
    pub set_weight: Option<i32>,
    /// Wait before the next step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<Pause>,
}

/// A pause between steps.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Pause {
    /// How long to wait, such as 10m. Without a duration the release waits until a person
    /// resumes it (kubectl stagecoach resume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-validations" = [crate::duration::cel_rule("pause duration")]))]
    pub duration: Option<String>,
}

/// Early life support: close monitoring after the release reaches production.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EarlyLifeSupport {
    /// How long the release is watched after reaching 100% in the last stage. Default 48h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-validations" = [crate::duration::cel_rule("earlyLifeSupport duration")]))]
    pub duration: Option<String>,
}

/// A health check evaluated at every step. Exactly one provider (prometheus, http or job)
/// is set. Each evaluation gives a verdict: Passing, Failing or Inconclusive; a gate that
/// cannot be measured never counts as passing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.prometheus), has(self.http), has(self.job)].filter(x, x).size() == 1",
    "message": "a gate sets exactly one of prometheus, http or job"
}]))]
pub struct Gate {
    /// Name of the gate, shown in status and events.
    #[schemars(length(max = 63))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && self != 'workload-health'",
        "message": "gate name must be lower-case letters, digits and '-', and not the built-in 'workload-health'"
    }]))]
    pub name: String,
    /// Time between evaluations. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-validations" = [crate::duration::cel_rule("interval")]))]
    pub interval: Option<String>,
    /// Passing evaluations needed before a step may complete. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub count: Option<i32>,
    /// Failing evaluations tolerated; one more rolls the stage back. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub failure_limit: Option<i32>,
    /// Inconclusive evaluations in a row (no answer, a timeout, an empty or NaN result)
    /// tolerated; one more applies onInconclusive. An inconclusive result never counts as
    /// passing. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub inconclusive_limit: Option<i32>,
    /// What happens past inconclusiveLimit: Pause (default: the release waits for a
    /// person, who can resume or abort it) or Fail (roll the stage back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_inconclusive: Option<InconclusivePolicy>,
    /// Query a Prometheus-compatible HTTP API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusGate>,
    /// Call an HTTP endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpGate>,
    /// Run a Kubernetes Job (a test suite, a load test) in the stage namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobGate>,
}

/// What happens when a gate stays inconclusive past its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum InconclusivePolicy {
    /// Hold the release (phase Paused, a condition asking a person to look).
    Pause,
    /// Roll the stage back.
    Fail,
}

/// A gate that evaluates a PromQL instant query (Prometheus, or any server with the same
/// HTTP API, such as Google Cloud Managed Service for Prometheus).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusGate {
    /// Base URL of the Prometheus HTTP API, such as http://prometheus.monitoring:9090.
    #[schemars(length(min = 1, max = 2048))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.matches('^https?://[^/?#\\\\s]+') && isURL(self)",
        "message": "address must be an http:// or https:// URL with a host"
    }]))]
    pub address: String,
    /// PromQL query returning exactly one number. '{{stage}}', '{{namespace}}',
    /// '{{release}}' and '{{version}}' are replaced before it runs, so one gate serves
    /// every stage. An empty result, NaN or more than one series is Inconclusive.
    #[schemars(length(min = 1, max = 8192))]
    pub query: String,
    /// The evaluation passes when the result compares true against threshold.
    pub comparison: Comparison,
    /// Number the result is compared with.
    pub threshold: f64,
    /// Secret key (in the stage namespace) holding a bearer token sent with the query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_secret_ref: Option<crate::pipeline::SecretKeyRef>,
    /// Secret key (in the stage namespace) holding a PEM CA bundle to trust for https.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<crate::pipeline::SecretKeyRef>,
    /// Longest wait for an answer; no answer in time is Inconclusive. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-validations" = [crate::duration::cel_rule("timeout")]))]
    pub timeout: Option<String>,
}

/// How a measured value is compared with the expected one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Comparison {
    LessThan,
    LessOrEqual,
    GreaterThan,
    GreaterOrEqual,
    Equal,
    NotEqual,
}

/// A gate that calls a URL: it passes when the response has the expected status and,
/// optionally, a JSON field of the body compares true with a value. This is how Sentry's
/// API (new issues for the release, say) or any other service is asked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpGate {
    /// URL to call; '{{stage}}', '{{namespace}}', '{{release}}' and '{{version}}' are
    /// replaced.
    // The host ends at '/', '?', '#' or the end: whitespace in it makes a URL the
    // operator cannot parse, and the gate would fail (and roll the stage back) at its
    // first evaluation. Not isURL(): placeholders may stand in the host.
    #[schemars(length(min = 1, max = 2048))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.matches('^https?://[^/?#\\\\s]+([/?#][\\\\s\\\\S]*)?$')",
        "message": "url must be an http:// or https:// URL with a host"
    }]))]
    pub url: String,
    /// HTTP method. Default GET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
    /// Request headers; a value may come from a Secret in the stage namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<HttpHeader>,
    /// Request body, with the same placeholders as url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub body: Option<String>,
    /// Status code that means healthy. Default 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 599))]
    pub expected_status: Option<i32>,
    /// A field of the JSON response to check, as a JSON pointer such as /count or
    /// /data/0/status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self == '' || self.startsWith('/')",
        "message": "jsonPointer must start with '/', such as /count"
    }]))]
    pub json_pointer: Option<String>,
    /// How the field compares with value. Default Equal. Numbers compare as numbers,
    /// anything else as text (Equal and NotEqual only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<Comparison>,
    /// The value the field is compared with, as text ("0", "ok", "true").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub value: Option<String>,
    /// Longest wait for an answer; no answer in time is Inconclusive. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-validations" = [crate::duration::cel_rule("timeout")]))]
    pub timeout: Option<String>,
}

/// An HTTP method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum HttpMethod {
    #[serde(rename = "GET")]
    Get,
    #[serde(rename = "POST")]
    Post,
    #[serde(rename = "PUT")]
    Put,
    #[serde(rename = "HEAD")]
    Head,
}

/// One request header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.value) != has(self.secretRef)",
    "message": "a header sets exactly one of value or secretRef"
}]))]
pub struct HttpHeader {
    /// Header name, such as Authorization: an HTTP token (RFC 9110), else the gate
    /// could never send it.
    #[schemars(length(min = 1, max = 256))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.matches(\"^[-!#$%&'*+.^_`|~0-9A-Za-z]+$\")",
        "message": "header name must be an HTTP token: letters, digits and !#$%&'*+-.^_`|~"
    }]))]
    pub name: String,
    /// The value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub value: Option<String>,
    /// The value, from a key of a Secret in the stage namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<crate::pipeline::SecretKeyRef>,
}

/// A gate that runs a Job and passes when it succeeds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobGate {
    /// Container image of the Job.
    #[schemars(length(min = 1, max = 1024))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "!self.matches('\\\\s')",
        "message": "image must not contain whitespace"
    }]))]
    pub image: String,
    /// Command to run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub command: Vec<String>,
    /// Arguments to the command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub args: Vec<String>,
    /// Environment of the Job's container, besides STAGECOACH_RELEASE,
    /// STAGECOACH_VERSION, STAGECOACH_STAGE and STAGECOACH_NAMESPACE, which are always set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub env: Vec<EnvVar>,
    /// Longest time the Job may run; past it the evaluation is Inconclusive. Default 10m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-validations" = [crate::duration::cel_rule("timeout")]))]
    pub timeout: Option<String>,
}

/// An environment variable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EnvVar {
    /// Name: printable ASCII other than '=', as Kubernetes requires of a container's
    /// environment (else the gate's Job could not be created).
    #[schemars(length(min = 1, max = 256))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.matches('^[ -<>-~]+$')",
        "message": "env name must be printable ASCII characters other than '='"
    }]))]
    pub name: String,
    /// Value.
    #[schemars(length(max = 8192))]
    pub value: String,
}

/// Where the release is and what happened on its way; written only by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseStatus {
    /// The metadata.generation this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Overall phase of the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ReleasePhase>,
    /// The stage the release is working on (or last worked on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_stage: Option<String>,
    /// Percentage of the current stage's pods on the new version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_weight: Option<i32>,
    /// One line for people: where the release is and what it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// One entry per stage, in pipeline order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageStatus>,
    /// Accepted, Ready, Progressing and Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// What happened, oldest first; bounded, older entries are dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<TimelineEntry>,
    /// Every rollback of this release, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollbacks: Vec<RollbackRecord>,
    /// When the operator first worked on the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When the release reached a final phase (Succeeded, RolledBack, Failed, Superseded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    /// The release closure record, written when the release ends: what shipped, how long
    /// each stage took, the gate results and rollbacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closing_record: Option<ClosingRecord>,
    /// Hash of the release's content (the spec without paused and abort), sha256:<hex>.
    /// Approvals name it: change the images and earlier approvals no longer count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// While waiting for a window, a freeze's end or a major release's notice: the
    /// earliest time the next stage may start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_window: Option<DateTime<Utc>>,
    /// When the release was announced to the pipeline's receivers (its Announced
    /// notification delivered); a major release's notice counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announced_at: Option<DateTime<Utc>>,
    /// The decisions that let the release into a stage or stopped it there, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<ApprovalRecord>,
    /// One entry per event and receiver of the Pipeline's notifications, oldest first:
    /// what was sent, to whom, how often it was tried and whether it arrived. Bounded;
    /// delivered entries are dropped before undelivered ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<NotificationRecord>,
}

/// One event for one receiver, and how its delivery went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationRecord {
    /// The CloudEvents id: the same for every attempt and every receiver of this event,
    /// so a receiver can drop duplicates.
    pub id: String,
    /// What happened.
    pub event: crate::pipeline::NotificationEvent,
    /// The Pipeline's receiver (spec.notifications[].name).
    pub receiver: String,
    /// The stage it happened in, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// When it happened (the event's time).
    pub at: DateTime<Utc>,
    /// Delivery attempts made so far.
    #[serde(default)]
    pub attempts: i32,
    /// When the receiver accepted it (a 2xx answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<DateTime<Utc>>,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When it is tried again after a failure; absent once delivered, or after giving up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// A decision that counted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRecord {
    /// Stage the decision was about.
    pub stage: String,
    /// Approve or Reject.
    pub decision: crate::approval::Decision,
    /// Who decided (as authenticated by the API server).
    pub approver: String,
    /// The release digest approved.
    pub digest: String,
    /// When the Approval was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
    /// The Approval object.
    pub approval: String,
    /// An override of windows, freezes and notice.
    #[serde(default, skip_serializing_if = "is_false")]
    pub r#override: bool,
    /// The approver's comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// One rollback.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackRecord {
    /// When the stable revision was restored.
    pub at: DateTime<Utc>,
    /// Stage that was rolled back.
    pub stage: String,
    /// Why, in CamelCase: GateFailed, ProgressDeadlineExceeded, EarlyLifeSupportFailed, Aborted.
    pub reason: String,
    /// Details for people.
    #[serde(default)]
    pub message: String,
}

/// The closing record of a release.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClosingRecord {
    /// Final phase.
    pub outcome: ReleasePhase,
    /// When the release ended.
    pub completed_at: DateTime<Utc>,
    /// Seconds from the Release's creation until its last stage reached 100%, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lead_time_seconds: Option<i64>,
    /// The changes that shipped (copied from spec.changes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Change>,
    /// How long each stage took, in pipeline order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageRecord>,
}

/// How one stage went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageRecord {
    /// Stage name.
    pub name: String,
    /// Final phase of the stage.
    pub phase: StagePhase,
    /// Seconds from start to finish, if it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<i64>,
    /// Last verdict of each gate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateStatus>,
}

/// Phase of a release as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ReleasePhase {
    Pending,
    Progressing,
    Paused,
    AwaitingApproval,
    WaitingForWindow,
    EarlyLifeSupport,
    Succeeded,
    RolledBack,
    Failed,
    Superseded,
    Rejected,
}

impl ReleasePhase {
    /// The phase's name as written in status, for metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Progressing => "Progressing",
            Self::Paused => "Paused",
            Self::AwaitingApproval => "AwaitingApproval",
            Self::WaitingForWindow => "WaitingForWindow",
            Self::EarlyLifeSupport => "EarlyLifeSupport",
            Self::Succeeded => "Succeeded",
            Self::RolledBack => "RolledBack",
            Self::Failed => "Failed",
            Self::Superseded => "Superseded",
            Self::Rejected => "Rejected",
        }
    }

    /// The release has ended: it will change no workload again except to keep a
    /// rolled-back stage on its recorded revision.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::RolledBack | Self::Failed | Self::Superseded | Self::Rejected
        )
    }
}

/// Phase of one stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StagePhase {
    Pending,
    Progressing,
    EarlyLifeSupport,
    Succeeded,
    RolledBack,
    Failed,
    Skipped,
    /// An approver rejected the release before the stage started: nothing rolled out.
    Rejected,
}

impl StagePhase {
    /// The phase's name as written in status, for metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Progressing => "Progressing",
            Self::EarlyLifeSupport => "EarlyLifeSupport",
            Self::Succeeded => "Succeeded",
            Self::RolledBack => "RolledBack",
            Self::Failed => "Failed",
            Self::Skipped => "Skipped",
            Self::Rejected => "Rejected",
        }
    }
}

/// Progress of the release in one stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    /// Stage name.
    pub name: String,
    /// Namespace the stage runs in.
    pub namespace: String,
    /// Phase of this stage.
    pub phase: StagePhase,
    /// Index of the current step (0-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<i32>,
    /// Percentage of pods currently on the new version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
    /// When the stage started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When the current step started; pause timers count from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<DateTime<Utc>>,
    /// When the stage finished (succeeded, rolled back or failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// What the stage ran before the release touched it; rollback restores exactly this.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stable_revisions: Vec<StableRevision>,
    /// Latest verdict of each gate, workload-health first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateStatus>,
    /// Why the stage is where it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Where the pre-release pod template of one Deployment is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StableRevision {
    /// Deployment the revision belongs to.
    pub deployment: String,
    /// ControllerRevision (in the stage namespace) holding the complete pod template.
    pub controller_revision: String,
    /// Hash of the recorded pod template, to check it was restored byte for byte.
    pub template_hash: String,
}

/// The latest result of one gate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateStatus {
    /// Gate name; the built-in gate is workload-health.
    pub name: String,
    /// Passing, Failing or Inconclusive.
    pub verdict: GateVerdict,
    /// What was measured.
    #[serde(default)]
    pub message: String,
    /// Passing evaluations counted in the current step.
    #[serde(default)]
    pub successes: i32,
    /// Failing evaluations counted in the current step.
    #[serde(default)]
    pub failures: i32,
    /// Inconclusive evaluations in a row.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inconclusive: i32,
    /// The measured value behind the verdict, when there is one (a query's result, a
    /// JSON field, a status code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// When the measurement behind this verdict was taken. The built-in gate records only
    /// changes, so for it this is when the verdict or message last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_evaluated_at: Option<DateTime<Utc>>,
}

/// Outcome of one gate evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum GateVerdict {
    Passing,
    Failing,
    Inconclusive,
}

/// One thing that happened to the release.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEntry {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// Stage it happened in, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// What happened, in CamelCase: StageStarted, StepStarted, GateFailed, RolledBack...
    pub reason: String,
    /// Details for people.
    #[serde(default)]
    pub message: String,
}

/// A stage with its defaults filled in: what a release does there. Without a Pipeline
/// it comes from the Release alone; with one, from the two merged (see the engine).
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedStage {
    pub name: String,
    /// `None` when neither the manifest nor the default gives a valid namespace.
    pub namespace: Option<String>,
    pub steps: Vec<Step>,
    pub gates: Vec<Gate>,
    pub progress_deadline: Option<String>,
    pub early_life_support: Option<EarlyLifeSupport>,
    /// Approvals needed to enter the stage (only a Pipeline sets them).
    pub approval: Option<crate::pipeline::ApprovalPolicy>,
}

/// The rollout of a stage when nobody sets steps: one step to 100%.
pub fn default_steps() -> Vec<Step> {
    vec![Step {
        set_weight: Some(100),
        pause: None,
    }]
}

impl ReleaseSpec {
    /// The stages in order, with namespaces and steps defaulted, as the Release alone
    /// says (no Pipeline).
    pub fn resolved_stages(&self) -> Vec<ResolvedStage> {
        match &self.stages {
            Some(stages) => stages
                .iter()
                .map(|s| ResolvedStage {
                    name: s.name.clone(),
                    namespace: s
                        .namespace
                        .clone()
                        .or_else(|| default_stage_namespace(&self.application, &s.name)),
                    steps: s.steps.clone().unwrap_or_else(default_steps),
                    gates: s.gates.clone(),
                    progress_deadline: s.progress_deadline.clone(),
                    early_life_support: s.early_life_support.clone(),
                    approval: None,
                })
                .collect(),
            None => DEFAULT_STAGES
                .iter()
                .map(|name| ResolvedStage {
                    name: (*name).to_owned(),
                    namespace: default_stage_namespace(&self.application, name),
                    steps: default_steps(),
                    gates: Vec::new(),
                    progress_deadline: None,
                    early_life_support: None,
                    approval: None,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod phase_name_tests {
    use super::{ReleasePhase, StagePhase};

    /// Metric labels and status must say the same.
    #[test]
    fn phase_names_are_their_serialized_form() {
        for phase in [
            ReleasePhase::Pending,
            ReleasePhase::Progressing,
            ReleasePhase::Paused,
            ReleasePhase::AwaitingApproval,
            ReleasePhase::WaitingForWindow,
            ReleasePhase::EarlyLifeSupport,
            ReleasePhase::Succeeded,
            ReleasePhase::RolledBack,
            ReleasePhase::Failed,
            ReleasePhase::Superseded,
            ReleasePhase::Rejected,
        ] {
            assert_eq!(
                serde_json::to_value(phase).ok(),
                Some(phase.as_str().into())
            );
        }
        for phase in [
            StagePhase::Pending,
            StagePhase::Progressing,
            StagePhase::EarlyLifeSupport,
            StagePhase::Succeeded,
            StagePhase::RolledBack,
            StagePhase::Failed,
            StagePhase::Skipped,
            StagePhase::Rejected,
        ] {
            assert_eq!(
                serde_json::to_value(phase).ok(),
                Some(phase.as_str().into())
            );
        }
    }
}
