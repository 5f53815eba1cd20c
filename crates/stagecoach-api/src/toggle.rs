//! `FeatureToggle`: a feature flag with per-stage state, client lists, sticky
//! percentage splits and coupling to a release reaching a stage.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Condition;
use crate::sorted_map::SortedMap;

/// A FeatureToggle is an OpenFeature flag of one application, evaluated per stage: it
/// can be on for chosen clients (tenants) before everyone else, phased in by sticky
/// percentage, and switched on when a release reaches a stage. Applications read it as a
/// flagd flag set (ConfigMap stagecoach-flags in each stage namespace) or over OFREP.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stagecoach.dev",
    version = "v1alpha1",
    kind = "FeatureToggle",
    plural = "featuretoggles",
    singular = "featuretoggle",
    shortname = "ft",
    category = "stagecoach",
    namespaced,
    status = "FeatureToggleStatus",
    printcolumn = r#"{"name":"Key","type":"string","jsonPath":".status.key"}"#,
    printcolumn = r#"{"name":"Application","type":"string","jsonPath":".spec.application"}"#,
    printcolumn = r#"{"name":"Default","type":"string","jsonPath":".spec.defaultVariant"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct FeatureToggleSpec {
    /// Application whose stages this toggle is served in; matches Release spec.application.
    #[schemars(length(min = 1, max = 63))]
    pub application: String,

    /// OpenFeature flag key applications ask for. Default: metadata.name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.matches('^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$')",
        "message": "key must be letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
    }]))]
    pub key: Option<String>,

    /// What the feature is, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub description: Option<String>,

    /// The values the flag can take, by variant name, such as {on: true, off: false}. All
    /// values have one type: boolean, string, number or object.
    #[schemars(schema_with = "variants_schema")]
    pub variants: SortedMap<serde_json::Value>,

    /// Variant served where no stage setting or rule decides otherwise.
    #[schemars(length(min = 1, max = 63))]
    pub default_variant: String,

    /// Context attribute that identifies a client, used by client lists and percentage
    /// splits. Default clientId; when the evaluation context lacks it, the OpenFeature
    /// targetingKey is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub bucket_by: Option<String>,

    /// Settings per stage name (dev, qa, demo, prod...). A stage not listed serves
    /// defaultVariant.
    #[serde(default, skip_serializing_if = "SortedMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 16,
        "x-kubernetes-validations" = [{
            "rule": "self.all(k, size(k) <= 20 && k.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))",
            "message": "stage keys must be stage names: 1-20 lower-case letters, digits and '-'"
        }]
    ))]
    pub stages: SortedMap<ToggleStage>,
}

/// The toggle's behaviour in one stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToggleStage {
    /// Enabled evaluates rules; Disabled serves the stage's (or toggle's) default variant
    /// with reason DISABLED.
    #[serde(default)]
    pub state: ToggleState,
    /// Variant served in this stage when no rule matches. Default: the toggle's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub default_variant: Option<String>,
    /// Rules tried in order; the first that matches decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub rules: Vec<ToggleRule>,
}

/// Whether a toggle is evaluated in a stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ToggleState {
    #[default]
    Enabled,
    Disabled,
}

/// One targeting rule: a client list with the variant it gets, or a percentage split.
/// With when set, the rule applies only once the named release has reached a stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.clients) != has(self.split)",
        "message": "a rule has either clients (with a variant) or a split, not both and not neither"
    },
    {
        "rule": "!has(self.clients) || has(self.variant)",
        "message": "a clients rule needs the variant those clients get"
    },
    {
        "rule": "!has(self.split) || !has(self.variant)",
        "message": "a split rule names its variants in split; remove variant"
    }
]))]
pub struct ToggleRule {
    /// Clients (values of the bucketBy attribute) this rule matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1000))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "size(self) > 0",
        "message": "clients must list at least one client"
    }]))]
    pub clients: Option<Vec<ClientId>>,
    /// Variant the listed clients get.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub variant: Option<String>,
    /// Sticky percentage split: variant name to percentage; the percentages sum to 100.
    /// The same client always lands in the same bucket (flagd's fractional bucketing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend(
        "maxProperties" = 16,
        "x-kubernetes-validations" = [{
            "rule": "self.all(v, self[v] >= 0 && self[v] <= 100) && self.map(v, self[v]).sum() == 100",
            "message": "split percentages must each be between 0 and 100 and sum to 100"
        }]
    ))]
    pub split: Option<SortedMap<i32>>,
    /// Apply this rule only once a release has reached a stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<ReleaseCoupling>,
}

/// A client identifier in a client list.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct ClientId(#[schemars(length(min = 1, max = 253))] pub String);

/// Couples a rule to a release: active once the release has succeeded at the stage (or
/// later, or is in early life support there); inactive again if it is rolled back there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReleaseCoupling {
    /// Name of a Release in the toggle's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub release: String,
    /// Stage name the release must have reached.
    #[schemars(length(max = 20))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
        "message": "reached must be a stage name: lower-case letters, digits and '-'"
    }]))]
    pub reached: String,
}

/// What the operator serves for this toggle; written only by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureToggleStatus {
    /// The metadata.generation this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The flag key in effect (spec.key or metadata.name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Accepted and Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// What is served in each stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<ToggleStageStatus>,
    /// Not part of the API (never serialized, not in the schema): the operator caches
    /// every toggle with a compact status and keeps here a digest of the full one, to
    /// tell whether a status it computes is already written.
    #[serde(skip)]
    #[schemars(skip)]
    pub cache_digest: Option<u64>,
}

/// What is served for the toggle in one stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToggleStageStatus {
    /// Stage name.
    pub name: String,
    /// Content hash of the flag set served in the stage, such as sha256:...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag_set_version: Option<String>,
    /// ConfigMap holding the flag set, as namespace/name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<String>,
    /// Descriptions of the rules currently in effect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active_rules: Vec<String>,
    /// Release couplings in effect in this stage: each release that has reached the
    /// stage a `when` names, so the rules waiting for it are served. The operator
    /// compares it with what it computes to announce CouplingActivated and
    /// CouplingDeactivated, also after a restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub couplings: Vec<StageCoupling>,
}

/// A release coupling in effect: `release` has reached stage `reached`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageCoupling {
    /// The Release named by `when.release`.
    pub release: String,
    /// The stage named by `when.reached`.
    pub reached: String,
}

/// Schema of `variants`: an object of arbitrary JSON values. The API server cannot give
/// CEL a type for "any JSON value", so the rules about variants (one type for all, known
/// names referenced) live in the ValidatingAdmissionPolicy of [`crate::policy`].
fn variants_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "minProperties": 1,
        "maxProperties": 32,
        "additionalProperties": {"x-kubernetes-preserve-unknown-fields": true},
        "description": "The values the flag can take, by variant name, such as {on: true, off: false}. All values have one type: boolean, string, number or object."
    })
}

impl FeatureToggle {
    /// The OpenFeature flag key: spec.key, or metadata.name.
    pub fn flag_key(&self) -> &str {
        self.spec
            .key
            .as_deref()
            .or(self.metadata.name.as_deref())
            .unwrap_or_default()
    }
}
