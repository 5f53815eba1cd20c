//! `Approval`: one person's decision to let a release into a stage, or to stop it there.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An Approval is one person's decision about one release at one stage, bound to the
/// exact content of the release (its digest). It cannot be changed once created. The API
/// server admits it only when spec.approver is the user creating it and that user may
/// 'approve' (and, for an override, 'override') 'releases/<stage>' in this namespace:
/// who may approve which stage is plain RBAC. `kubectl stagecoach approve` and `reject`
/// fill it in.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stagecoach.dev",
    version = "v1alpha1",
    kind = "Approval",
    plural = "approvals",
    singular = "approval",
    shortname = "appr",
    category = "stagecoach",
    namespaced,
    printcolumn = r#"{"name":"Release","type":"string","jsonPath":".spec.release"}"#,
    printcolumn = r#"{"name":"Stage","type":"string","jsonPath":".spec.stage"}"#,
    printcolumn = r#"{"name":"Decision","type":"string","jsonPath":".spec.decision"}"#,
    printcolumn = r#"{"name":"Approver","type":"string","jsonPath":".spec.approver"}"#,
    printcolumn = r#"{"name":"Override","type":"boolean","priority":1,"jsonPath":".spec.override"}"#,
    printcolumn = r#"{"name":"Comment","type":"string","priority":1,"jsonPath":".spec.comment"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self == oldSelf",
    "message": "an Approval cannot be changed once made; create a new one (a Reject, or an approval of the new digest)"
}]))]
pub struct ApprovalSpec {
    /// Name of the Release (in this namespace).
    #[schemars(length(min = 1, max = 253))]
    pub release: String,
    /// Stage the decision is about.
    #[schemars(length(min = 1, max = 20))]
    pub stage: String,
    /// Approve lets the release into the stage (with the other approvals the Pipeline
    /// requires); Reject ends the release there.
    pub decision: Decision,
    /// Who decides: must be the user name of whoever creates the Approval (checked by the
    /// API server).
    #[schemars(length(min = 1, max = 512))]
    pub approver: String,
    /// The release content approved: the Release's status.digest when the approver
    /// looked at it. An approval of another digest does not count.
    #[schemars(length(min = 1, max = 128))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.matches('^sha256:[0-9a-f]{64}$')",
        "message": "releaseDigest must be the Release's status.digest, sha256:<64 hex digits>"
    }]))]
    pub release_digest: String,
    /// Why, for the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub comment: Option<String>,
    /// An emergency override: the stage may start outside its windows, during a freeze
    /// and before the notice of a major release has run out. Needs verb 'override' on
    /// 'releases/<stage>'; recorded as such.
    #[serde(default, skip_serializing_if = "is_false")]
    pub r#override: bool,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_false(value: &bool) -> bool {
    !*value
}

/// An approver's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Decision {
    Approve,
    Reject,
}

impl Decision {
    /// The decision as written in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "Approve",
            Self::Reject => "Reject",
        }
    }
}
