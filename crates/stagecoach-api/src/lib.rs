//! The public API of Stagecoach: the `Release`, `FeatureToggle`, `Pipeline` and
//! `Approval` custom resources
//! (group `stagecoach.dev`, version `v1alpha1`).
//!
//! Everything here is data: serde and schemars derives, the validation rules that the
//! API server enforces at admission (CEL `x-kubernetes-validations`), and small pure
//! helpers over the types. No IO. The CRD YAML in `crds/` is generated from these
//! types by `cargo xtask gen`; never edit it by hand.
//!
//! Doc comments on fields are user documentation: they become the descriptions that
//! `kubectl explain release.spec.stages.steps` prints, so they are written for the
//! person applying a manifest, not for a Rust reader.

pub mod approval;
pub mod condition;
pub mod duration;
pub mod names;
pub mod pipeline;
pub mod policy;
pub mod release;
pub mod sorted_map;
pub mod toggle;
pub mod tz;

pub use approval::{Approval, ApprovalSpec, Decision};
pub use condition::{Condition, ConditionStatus};
pub use duration::{DurationError, parse_duration};
pub use pipeline::{Pipeline, PipelineSpec, PipelineStatus};
pub use release::{Release, ReleaseSpec, ReleaseStatus};
pub use toggle::{FeatureToggle, FeatureToggleSpec, FeatureToggleStatus};

/// API group of every Stagecoach resource.
pub const GROUP: &str = "stagecoach.dev";
/// API version served by this crate.
pub const VERSION: &str = "v1alpha1";
/// Field manager used for every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "stagecoach";

/// All custom resource definitions, in the order they are written to `crds/`.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![
        Release::crd(),
        FeatureToggle::crd(),
        Pipeline::crd(),
        Approval::crd(),
    ]
}
