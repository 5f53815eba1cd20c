//! `Pipeline`: the release policy of one application, owned by the platform team or the
//! release managers. A Release of the application follows it and cannot loosen it.

use chrono::{DateTime, Utc};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Condition;
use crate::release::{EarlyLifeSupport, Gate, ReleaseType, Step};

/// A Pipeline is the release policy of one application: its stages and how each rolls
/// out, who must approve entry into which stage, when each kind of release may start a
/// stage (windows, freezes, notice for major releases) and who is told. A Release of the
/// application follows it: the Release may choose its own rollout steps only where the
/// Pipeline leaves them open, and can never loosen approvals, windows, freezes, notice or
/// gates. Write access to Pipelines belongs to the people who own the policy, not to the
/// authors of releases.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stagecoach.dev",
    version = "v1alpha1",
    kind = "Pipeline",
    plural = "pipelines",
    singular = "pipeline",
    shortname = "pl",
    category = "stagecoach",
    namespaced,
    status = "PipelineStatus",
    printcolumn = r#"{"name":"Application","type":"string","jsonPath":".status.application"}"#,
    printcolumn = r#"{"name":"Stages","type":"string","jsonPath":".status.stages"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = stage_reference_rules()))]
pub struct PipelineSpec {
    /// Application this pipeline governs; matches Release spec.application. Default:
    /// metadata.name. One Pipeline per application and namespace: when two claim the same
    /// application, its releases wait (Accepted=False) until one is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')",
        "message": "application must be lower-case letters, digits, '-' or '.', starting and ending with a letter or digit"
    }]))]
    pub application: Option<String>,

    /// The stages every release of the application goes through, in order.
    #[schemars(length(min = 1, max = 16))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.all(s, self.exists_one(t, t.name == s.name))",
        "message": "stage names must be unique within a pipeline"
    }]))]
    pub stages: Vec<PipelineStage>,

    /// Windows and notice per kind of release (patch, minor, major).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_types: Option<ReleaseTypePolicies>,

    /// Periods in which no stage starts (year-end, a client's busy season). A stage already
    /// started finishes; a rollback is never blocked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub freezes: Vec<Freeze>,

    /// Who is told about the application's releases (CloudEvents over HTTP).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.all(r, self.exists_one(s, s.name == r.name))",
        "message": "receiver names must be unique within a pipeline"
    }]))]
    pub notifications: Vec<Receiver>,

    /// How long the audit records of the application's releases are kept (the immutable
    /// ConfigMaps written when a release ends). Default: forever. Records beyond count, or
    /// older than age, are deleted, oldest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
}

/// Which audit records of an application are kept. Set count, age or both: a record goes
/// when either says so.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.count) || has(self.age)",
    "message": "retention sets count, age or both"
}]))]
pub struct Retention {
    /// Keep at most this many records, the newest (by the time the release ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100_000))]
    pub count: Option<i32>,
    /// Keep records of releases that ended at most this long ago, such as 2160h (90 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-validations" = [crate::duration::cel_rule("retention age")]))]
    pub age: Option<String>,
}

/// One stage of the pipeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineStage {
    /// Stage name, such as dev, qa, demo or prod (lower-case letters, digits and '-').
    #[schemars(length(max = 20))]
    #[schemars(extend("x-kubernetes-validations" = [crate::release::stage_name_rule()]))]
    pub name: String,

    /// Namespace of this stage. Default: '<application>-<stage name>'. A release cannot
    /// move a stage to another namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[schemars(extend("x-kubernetes-validations" = [crate::release::namespace_rule()]))]
    pub namespace: Option<String>,

    /// Rollout steps of this stage for every release. When set, releases cannot change
    /// them; when omitted, a release may set its own (default: one step, setWeight 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-validations" = crate::release::steps_rules()))]
    pub steps: Option<Vec<Step>>,

    /// Checks every release must pass at every step of this stage and during early life
    /// support. A release may add gates of its own, never remove these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-validations" = [crate::release::unique_gates_rule()]))]
    pub gates: Vec<Gate>,

    /// New pods must be ready within this time after a step starts. A release may set a
    /// shorter deadline, never a longer one. Default 10m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-validations" = [crate::duration::cel_rule("progressDeadline")]))]
    pub progress_deadline: Option<String>,

    /// Monitoring after the last stage reaches 100%. A release may watch longer, never
    /// shorter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_life_support: Option<EarlyLifeSupport>,

    /// Approvals needed before a release may enter this stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalPolicy>,
}

/// Who must let a release into a stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalPolicy {
    /// Distinct approvers needed (someone listed as the author of one of the release's
    /// changes does not count). Who may approve is RBAC: verb 'approve' on
    /// 'releases/<stage>' in the release's namespace.
    #[schemars(range(min = 1, max = 10))]
    pub required: i32,
    /// Kinds of release that need the approval. Default: every kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    pub types: Vec<ReleaseType>,
}

impl ApprovalPolicy {
    /// Whether a release of this type needs the approval.
    pub fn applies_to(&self, release_type: ReleaseType) -> bool {
        self.types.is_empty() || self.types.contains(&release_type)
    }
}

/// Windows and notice for each kind of release.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReleaseTypePolicies {
    /// Bug-fix releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<ReleaseTypePolicy>,
    /// The usual several-times-a-week release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor: Option<ReleaseTypePolicy>,
    /// Releases clients must prepare for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<ReleaseTypePolicy>,
}

impl ReleaseTypePolicies {
    /// The policy of one kind of release, if the pipeline sets one.
    pub fn get(&self, release_type: ReleaseType) -> Option<&ReleaseTypePolicy> {
        match release_type {
            ReleaseType::Patch => self.patch.as_ref(),
            ReleaseType::Minor => self.minor.as_ref(),
            ReleaseType::Major => self.major.as_ref(),
        }
    }
}

/// When one kind of release may start a stage, and how long before production clients
/// must have been told.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReleaseTypePolicy {
    /// A stage starts only inside one of these windows. None: any time (outside freezes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub windows: Vec<Window>,
    /// The last stage is not entered before this long after the release was announced to
    /// the pipeline's receivers (an Announced notification delivered), such as 72h. Needs
    /// a receiver for Announced events of this kind of release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-validations" = [crate::duration::cel_rule("notice")]))]
    pub notice: Option<String>,
}

/// A weekly window in local time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.end > self.start",
    "message": "a window's end must be after its start (windows cannot cross midnight: use two)"
}]))]
pub struct Window {
    /// Days of the week on which the window opens.
    #[schemars(length(min = 1, max = 7))]
    pub days: Vec<Weekday>,
    /// Local time the window opens, HH:MM (24-hour clock).
    #[schemars(length(max = 5))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.matches('^([01][0-9]|2[0-3]):[0-5][0-9]$')",
        "message": "start must be a time of day HH:MM, such as 06:00"
    }]))]
    pub start: String,
    /// Local time the window closes, HH:MM (24-hour clock), later than start; 24:00 is the
    /// end of the day.
    #[schemars(length(max = 5))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.matches('^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$')",
        "message": "end must be a time of day HH:MM, such as 16:00, or 24:00"
    }]))]
    pub end: String,
    /// IANA time zone the times are in, such as Europe/Stockholm. Daylight-saving changes
    /// follow the zone: a time that does not exist on the night clocks jump forward is
    /// read as the first instant after the gap.
    #[schemars(length(min = 1, max = 64))]
    #[schemars(extend("x-kubernetes-validations" = [crate::tz::cel_rule()]))]
    pub time_zone: String,
    /// Stages the window applies to. Default: every stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub stages: Vec<String>,
}

/// A day of the week.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    /// The same day in chrono.
    pub fn to_chrono(self) -> chrono::Weekday {
        match self {
            Self::Mon => chrono::Weekday::Mon,
            Self::Tue => chrono::Weekday::Tue,
            Self::Wed => chrono::Weekday::Wed,
            Self::Thu => chrono::Weekday::Thu,
            Self::Fri => chrono::Weekday::Fri,
            Self::Sat => chrono::Weekday::Sat,
            Self::Sun => chrono::Weekday::Sun,
        }
    }
}

/// A period in which no stage starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.to > self.from",
    "message": "a freeze must end (to) after it starts (from)"
}]))]
pub struct Freeze {
    /// Start of the freeze, such as 2026-12-20T00:00:00Z.
    pub from: DateTime<Utc>,
    /// End of the freeze.
    pub to: DateTime<Utc>,
    /// Why, shown while a release waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub reason: Option<String>,
    /// Stages the freeze applies to. Default: every stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub stages: Vec<String>,
}

/// Someone told about releases.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Receiver {
    /// Name of the receiver, shown in status.
    #[schemars(length(max = 63))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
        "message": "receiver name must be lower-case letters, digits and '-'"
    }]))]
    pub name: String,
    /// Where events are POSTed.
    pub webhook: Webhook,
    /// Events sent to this receiver. Default: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub events: Vec<NotificationEvent>,
    /// Kinds of release this receiver hears about. Default: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    pub release_types: Vec<ReleaseType>,
}

impl Receiver {
    /// Whether this receiver hears `event` for a release of this type.
    pub fn wants(&self, event: NotificationEvent, release_type: ReleaseType) -> bool {
        (self.events.is_empty() || self.events.contains(&event))
            && (self.release_types.is_empty() || self.release_types.contains(&release_type))
    }
}

/// An HTTP endpoint receiving CloudEvents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    /// URL events are POSTed to (http or https).
    #[schemars(length(min = 1, max = 2048))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.matches('^https?://[^/?#\\\\s]+') && isURL(self)",
        "message": "url must be an http:// or https:// URL with a host"
    }]))]
    pub url: String,
    /// Secret key (in the Pipeline's namespace) holding the token: sent as a Bearer token
    /// and used as the HMAC-SHA256 key of the signature header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// Body format: CloudEvents JSON (default) or a Slack-compatible message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<WebhookFormat>,
}

/// A key in a Secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SecretKeyRef {
    /// Secret name (a DNS subdomain name, as every Secret's).
    #[schemars(length(min = 1, max = 253))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",
        "message": "secretRef name must be a Secret name: lower-case letters, digits, '-' and '.'"
    }]))]
    pub name: String,
    /// Key within the Secret (letters, digits, '-', '_' and '.', as a Secret's keys).
    #[schemars(length(min = 1, max = 253))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.matches('^[-._a-zA-Z0-9]+$')",
        "message": "secretRef key must be a Secret key: letters, digits, '-', '_' and '.'"
    }]))]
    pub key: String,
}

/// Body format of a webhook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// CloudEvents 1.0, structured JSON.
    Cloudevents,
    /// A Slack incoming-webhook message.
    Slack,
}

/// What a release tells receivers about.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum NotificationEvent {
    Announced,
    ApprovalRequired,
    Approved,
    Rejected,
    StageStarted,
    StageSucceeded,
    RolledBack,
    EarlyLifeSupportStarted,
    Closed,
}

/// What the operator found when it read the pipeline.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineStatus {
    /// The metadata.generation this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The application governed (spec.application, or metadata.name when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
    /// The stages in order, for people: "dev, qa, demo, prod".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<String>,
    /// Ready: the pipeline is in force for the application's releases.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl PipelineSpec {
    /// The application governed, given the Pipeline's name.
    pub fn application_or<'a>(&'a self, name: &'a str) -> &'a str {
        self.application.as_deref().unwrap_or(name)
    }
}

impl Pipeline {
    /// The application this pipeline governs.
    pub fn application(&self) -> &str {
        self.spec
            .application_or(self.metadata.name.as_deref().unwrap_or_default())
    }
}

/// CEL rules: the stages a window or freeze names exist in the pipeline.
fn stage_reference_rules() -> serde_json::Value {
    let mut rules: Vec<serde_json::Value> = ["patch", "minor", "major"]
        .iter()
        .map(|kind| {
            serde_json::json!({
                "rule": format!("!has(self.releaseTypes) || !has(self.releaseTypes.{kind}) || !has(self.releaseTypes.{kind}.windows) || self.releaseTypes.{kind}.windows.all(w, !has(w.stages) || w.stages.all(s, self.stages.exists(p, p.name == s)))"),
                "message": format!("releaseTypes.{kind}.windows[].stages must name stages listed in spec.stages"),
                "fieldPath": ".releaseTypes",
            })
        })
        .collect();
    rules.push(serde_json::json!({
        "rule": "!has(self.freezes) || self.freezes.all(f, !has(f.stages) || f.stages.all(s, self.stages.exists(p, p.name == s)))",
        "message": "freezes[].stages must name stages listed in spec.stages",
        "fieldPath": ".freezes",
    }));
    serde_json::Value::Array(rules)
}
