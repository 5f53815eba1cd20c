//! What the operator observed in the cluster, as plain data for the planner.
//!
//! The controller fills these from its caches; tests build them by hand. Nothing here
//! talks to Kubernetes.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use stagecoach_api::release::{ReleasePhase, StagePhase};

/// One Deployment as observed.
#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentState {
    /// metadata.generation.
    pub generation: i64,
    /// status.observedGeneration.
    pub observed_generation: i64,
    /// spec.replicas (1 when unset).
    pub replicas: i32,
    /// status.replicas: pods of every revision.
    pub current: i32,
    /// status.updatedReplicas.
    pub updated: i32,
    /// status.readyReplicas.
    pub ready: i32,
    /// status.availableReplicas.
    pub available: i32,
    /// spec.template, complete.
    pub template: Value,
    /// The Deployment's own Progressing condition says ProgressDeadlineExceeded.
    pub deadline_exceeded: bool,
    /// The `stagecoach.dev/template-hash` annotation: hash of the template the operator
    /// last applied (canaries only).
    pub applied_hash: Option<String>,
    /// The field manager that last changed the Deployment's spec, other than the
    /// operator itself (from managedFields), when known: named in messages about
    /// outside edits.
    pub last_editor: Option<String>,
}

impl DeploymentState {
    /// Every pod is on the current template, ready and available, and the controller has
    /// seen the latest spec.
    pub fn rolled_out(&self) -> bool {
        self.observed_generation >= self.generation
            && self.updated == self.replicas
            && self.current == self.replicas
            && self.available == self.replicas
    }
}

/// Health of the pods that run the release's images in one stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodHealth {
    /// Pods running the new images.
    pub total: i32,
    /// Of those, Ready.
    pub ready: i32,
    /// Of those, with a container waiting in CrashLoopBackOff.
    pub crash_looping: i32,
    /// Highest container restart count among them.
    pub max_restarts: i32,
}

/// The pre-release pod template recorded for one Deployment (a ControllerRevision).
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedRevision {
    /// Name of the ControllerRevision.
    pub name: String,
    /// The complete pod template as it was before the release touched the Deployment.
    pub template: Value,
    /// Hash of `template`.
    pub hash: String,
}

/// One workload of the release in one stage.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkloadObservation {
    /// The application's Deployment; `None` when it does not exist.
    pub stable: Option<DeploymentState>,
    /// `<deployment>-canary`, when it exists.
    pub canary: Option<DeploymentState>,
    /// The stable revision recorded for this release, when it exists.
    pub recorded: Option<RecordedRevision>,
    /// Pods running the release's images (canary and updated stable pods).
    pub new_pods: PodHealth,
}

/// One stage namespace as observed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StageObservation {
    /// By Deployment name.
    pub workloads: BTreeMap<String, WorkloadObservation>,
}

/// Another Release of the same application.
#[derive(Clone, Debug, PartialEq)]
pub struct OtherRelease {
    pub name: String,
    pub created: DateTime<Utc>,
    pub phase: Option<ReleasePhase>,
    /// (stage name, phase) as in its status.
    pub stages: Vec<(String, StagePhase)>,
    /// False when the operator refused its spec (Accepted=False): such a release can
    /// never ship, so it supersedes nothing and blocks nothing.
    pub accepted: bool,
}

impl OtherRelease {
    /// Still able to ship: not ended badly.
    pub fn is_live(&self) -> bool {
        self.accepted
            && !matches!(
                self.phase,
                Some(ReleasePhase::RolledBack | ReleasePhase::Failed | ReleasePhase::Superseded)
            )
    }

    /// Its phase at a stage.
    pub fn stage_phase(&self, stage: &str) -> Option<StagePhase> {
        self.stages
            .iter()
            .find(|(name, _)| name == stage)
            .map(|(_, phase)| *phase)
    }
}
