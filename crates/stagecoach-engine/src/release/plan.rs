//! The release planner: (Release, what was observed in each stage, the other releases of
//! the application, now) -> the actions to take and the new status.
//!
//! Read it top to bottom: [`plan_release`] syncs the stage list, checks the spec, then
//! looks at the first stage that is not done and asks what that stage needs:
//! [`Planner::enter_stage`] (record stable revisions, start), [`Planner::progress_stage`]
//! (run the current step behind the gates), [`Planner::watch_early_life`] (keep watching
//! after the last stage). Anything failing goes to [`Planner::roll_back`].
//!
//! The parts, one file each under `plan/`: `enter` (a stage not yet entered),
//! `progress` (steps behind the gates, early life support), `world` (a Deployment deleted
//! or edited by someone else, the Release deleted), `endings` (rollback, failure, the
//! closing record), `conditions` (Ready, Progressing, Degraded, kstatus). The phases and
//! the transitions between them are one table in [`super::phases`].
//!
//! Every progress marker lives in status, and one reconcile makes at most one transition.
//! The controller applies the actions, then writes the status (for a rollback the status
//! first, so a crash in between cannot undo the decision); replaying the planner on its
//! own output with the same observations changes nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use stagecoach_api::condition::{self, Condition, ConditionStatus};
use stagecoach_api::release::{
    ClosingRecord, Gate, ReleasePhase, ReleaseSpec, ReleaseStatus, RollbackRecord, StableRevision,
    StagePhase, StageRecord, StageStatus, TimelineEntry, Workload,
};
use stagecoach_api::{names::DEFAULT_STAGES, parse_duration};

use super::gate::{
    GateDecision, GateModel, HealthMeasurement, HealthTarget, Measurement, WORKLOAD_HEALTH,
    combine, decide, tally, unmeasured, whole_second, workload_health,
};
use super::observed::{OtherRelease, StageObservation, WorkloadObservation};
use super::rollout::{
    canary_replicas, canary_template, has_rollout_label, released_template, revision_name,
    runs_release_images, template_hash, with_release_images,
};
use crate::acceptance::{ACCEPTED, accepted_condition};
use crate::admission::{Rejection, check_release_in};
use crate::pipeline::{Governing, resolve_stages};
use stagecoach_api::approval::Approval;
use stagecoach_api::pipeline::PipelineSpec;
use stagecoach_api::release::ResolvedStage;

mod conditions;
mod endings;
mod enter;
mod policy;
mod progress;
mod world;

pub use conditions::{RECONCILING, STALLED};
pub use world::outside_edit;

/// Entries kept in `status.timeline`.
pub const TIMELINE_LIMIT: usize = 50;
/// Default `progressDeadline`.
pub const DEFAULT_PROGRESS_DEADLINE: Duration = Duration::from_secs(600);
/// Default early life support.
pub const DEFAULT_EARLY_LIFE_SUPPORT: Duration = Duration::from_secs(48 * 3600);
/// Longest wait between two looks at a step that waits for pods: watch events normally
/// come first, this is the safety net.
pub const WAIT_POLL: Duration = Duration::from_secs(5);
/// Annotation that ends a pause without duration: `<stage>/<step index>`.
pub const PROMOTE_ANNOTATION: &str = "stagecoach.dev/promote";

/// Reasons, in CamelCase, used in conditions, events, the timeline and metrics.
pub mod reason {
    pub const STAGE_STARTED: &str = "StageStarted";
    pub const STEP_COMPLETED: &str = "StepCompleted";
    pub const STAGE_SUCCEEDED: &str = "StageSucceeded";
    pub const EARLY_LIFE_SUPPORT: &str = "EarlyLifeSupport";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const SUPERSEDED: &str = "Superseded";
    pub const PAUSED: &str = "Paused";
    pub const WAITING_FOR_PROMOTION: &str = "WaitingForPromotion";
    pub const WAITING_FOR_STAGE: &str = "WaitingForStage";
    pub const DEPLOYMENT_MISSING: &str = "DeploymentMissing";
    pub const GATE_FAILED: &str = "GateFailed";
    /// A configured gate gave more inconclusive results in a row than its limit (policy
    /// Pause): the release holds until a conclusive result, and asks a person to look.
    pub const GATE_INCONCLUSIVE: &str = "GateInconclusive";
    pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
    pub const EARLY_LIFE_SUPPORT_FAILED: &str = "EarlyLifeSupportFailed";
    pub const ABORTED: &str = "Aborted";
    pub const ROLLED_BACK: &str = "RolledBack";
    pub const STEP_IN_PROGRESS: &str = "StepInProgress";
    pub const AS_EXPECTED: &str = "AsExpected";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Someone changed a Deployment's pod template while the release was rolling it out.
    pub const OUTSIDE_EDIT: &str = "OutsideEdit";
    /// A Deployment the release was rolling out was deleted: there is nothing to restore.
    pub const DEPLOYMENT_DELETED: &str = "DeploymentDeleted";
    /// The Release object itself was deleted.
    pub const RELEASE_DELETED: &str = "ReleaseDeleted";
    /// The promote annotation names nothing this release will end (see [`super::promote`]).
    pub const PROMOTE_IGNORED: &str = "PromoteIgnored";
    /// The next stage needs approvals it does not have yet.
    pub const AWAITING_APPROVAL: &str = "AwaitingApproval";
    /// Approvals let the release into a stage.
    pub const APPROVED: &str = "Approved";
    /// An approver rejected the release at a stage.
    pub const REJECTED: &str = "Rejected";
    /// The next stage may not start yet: outside the windows, a freeze, the notice.
    pub const WAITING_FOR_WINDOW: &str = "WaitingForWindow";
    /// An override let the stage start outside its schedule.
    pub const OVERRIDDEN: &str = "ScheduleOverridden";
}

/// What the planner sees.
#[derive(Clone, Debug)]
pub struct PlanInput<'a> {
    pub name: &'a str,
    pub generation: Option<i64>,
    pub created: DateTime<Utc>,
    pub annotations: &'a BTreeMap<String, String>,
    pub spec: &'a ReleaseSpec,
    pub status: Option<&'a ReleaseStatus>,
    /// By stage name.
    pub observed: &'a BTreeMap<String, StageObservation>,
    /// Measurements of the current stage's configured gates, by gate name.
    pub gate_measurements: &'a BTreeMap<String, Measurement>,
    /// The other releases of the same application.
    pub others: &'a [OtherRelease],
    /// The Release is being deleted (its deletion timestamp is set): the stage in
    /// progress is rolled back, early life support ends, nothing new starts.
    pub deleting: bool,
    /// The Pipeline the release follows, if its application has one.
    pub governing: Governing<'a>,
    /// The Approvals in the release's namespace that name this release.
    pub approvals: &'a [&'a Approval],
    pub now: DateTime<Utc>,
}

/// A change to make in a stage namespace.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create the ControllerRevision holding the Deployment's pre-release template (never
    /// overwrite an existing one).
    RecordStableRevision {
        namespace: String,
        deployment: String,
        revision: String,
        template: Value,
        hash: String,
    },
    /// Create or update `<deployment>-canary` with this template and size.
    ApplyCanary {
        namespace: String,
        deployment: String,
        replicas: i32,
        template: Value,
        hash: String,
    },
    /// Set the release's images on the stable Deployment (rolling, maxUnavailable 0).
    UpdateStable {
        namespace: String,
        deployment: String,
        images: Vec<(String, String)>,
    },
    /// Put the recorded template back on the stable Deployment, exactly.
    RestoreStable {
        namespace: String,
        deployment: String,
        template: Value,
    },
    /// Delete `<deployment>-canary`.
    DeleteCanary {
        namespace: String,
        deployment: String,
    },
}

/// An Event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// The planner's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub status: ReleaseStatus,
    pub events: Vec<PlannedEvent>,
    /// Reconcile again after this long at the latest.
    pub requeue_after: Option<Duration>,
    /// Write the status before the actions (rollbacks).
    pub status_first: bool,
    /// Set when this plan rolls a stage back (for metrics).
    pub rollback_reason: Option<&'static str>,
    /// Seconds from creation to the last stage at 100%, when that happens in this plan.
    pub lead_time_seconds: Option<i64>,
    /// (stage, phase it entered), for metrics.
    pub stage_transitions: Vec<(String, StagePhase)>,
    /// Seconds the step that completed in this plan took.
    pub step_seconds: Option<f64>,
}

/// Plans one reconcile of a Release.
pub fn plan_release(input: &PlanInput<'_>) -> Plan {
    let mut planner = Planner::new(input);
    planner.run();
    planner.finish()
}

struct Planner<'a> {
    input: &'a PlanInput<'a>,
    /// The stages the release goes through (its own, or merged into its Pipeline).
    stages: Vec<ResolvedStage>,
    /// Why the Pipeline refuses the release, if it does.
    refusal: Option<Rejection>,
    status: ReleaseStatus,
    plan: Plan,
    degraded: Option<(&'static str, String)>,
    /// Why the promote annotation does nothing, for the Progressing condition.
    promote_ignored: Option<String>,
    /// Why a configured gate holds the release (inconclusive past its limit).
    held: Option<String>,
}

/// What the gates say about the current step.
#[derive(Clone, Copy, Debug)]
struct Verdicts {
    /// The built-in workload-health gate; Fail includes its progress deadline passing.
    health: GateDecision,
    /// The configured gates together (see [`combine`]).
    configured: GateDecision,
    /// The rollback reason if they fail: `GateFailed`, or `ProgressDeadlineExceeded`
    /// when only the built-in gate's deadline did.
    why: &'static str,
}

impl Verdicts {
    fn failed(&self) -> bool {
        self.health == GateDecision::Fail || self.configured == GateDecision::Fail
    }

    /// A configured gate holds, and nothing fails.
    fn held(&self) -> bool {
        !self.failed() && self.configured == GateDecision::Hold
    }

    fn all_pass(&self) -> bool {
        self.health == GateDecision::Pass && self.configured == GateDecision::Pass
    }
}

fn is_terminal(phase: Option<ReleasePhase>) -> bool {
    phase.is_some_and(ReleasePhase::is_terminal)
}

fn duration_or(text: Option<&str>, default: Duration) -> Duration {
    text.and_then(|t| parse_duration(t).ok()).unwrap_or(default)
}

fn after(start: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    start + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn remaining(now: DateTime<Utc>, until: DateTime<Utc>) -> Duration {
    (until - now).to_std().unwrap_or(Duration::ZERO)
}

impl<'a> Planner<'a> {
    fn new(input: &'a PlanInput<'a>) -> Self {
        let (stages, refusal) = match resolve_stages(input.spec, input.governing) {
            Ok(stages) => (stages, None),
            Err(refusal) => (Vec::new(), Some(refusal)),
        };
        Self {
            input,
            stages,
            refusal,
            status: input.status.cloned().unwrap_or_default(),
            plan: Plan {
                actions: Vec::new(),
                status: ReleaseStatus::default(),
                events: Vec::new(),
                requeue_after: None,
                status_first: false,
                rollback_reason: None,
                lead_time_seconds: None,
                stage_transitions: Vec::new(),
                step_seconds: None,
            },
            degraded: None,
            promote_ignored: None,
            held: None,
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.input.now
    }

    fn spec(&self) -> &ReleaseSpec {
        self.input.spec
    }

    /// What the release does in stage `name`.
    fn stage_spec(&self, name: &str) -> Option<&ResolvedStage> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The stages and the paused switch, for the promote annotation's checks.
    fn route(&self) -> super::promote::Route {
        super::promote::Route {
            stages: self.stages.clone(),
            paused: self.spec().paused,
        }
    }

    /// The Pipeline the release follows, if any.
    fn pipeline(&self) -> Option<&'a PipelineSpec> {
        match self.input.governing {
            Governing::Pipeline(_, spec) => Some(spec),
            Governing::None | Governing::Conflict(_) => None,
        }
    }

    fn run(&mut self) {
        self.status.observed_generation = self.input.generation;
        self.status.digest = Some(crate::pipeline::digest(self.spec()));
        let verdict = if let Some(refusal) = &self.refusal {
            Err(refusal.clone())
        } else {
            self.sync_stage_entries();
            check_release_in(self.spec(), &self.stages)
        };
        let accepted = accepted_condition(&verdict, self.input.generation, self.now());
        condition::upsert(&mut self.status.conditions, accepted);
        // A deleted Release is let go whatever its spec: an invalid one must not keep
        // its finalizer forever.
        if verdict.is_err() && !self.input.deleting {
            self.status.message = Some("the spec is not valid; see the Accepted condition".into());
            self.set_conditions();
            return;
        }
        if is_terminal(self.status.phase) {
            self.converge_terminal();
            self.set_conditions();
            return;
        }
        if self.input.deleting {
            self.end_for_deletion();
            self.set_conditions();
            return;
        }
        if self.status.started_at.is_none() {
            self.status.started_at = Some(self.now());
        }
        match self
            .status
            .stages
            .iter()
            .position(|s| !matches!(s.phase, StagePhase::Succeeded | StagePhase::Skipped))
        {
            None => self.finish_release(ReleasePhase::Succeeded, "every stage succeeded".into()),
            Some(index) => {
                self.status.current_stage = Some(self.status.stages[index].name.clone());
                match self.status.stages[index].phase {
                    StagePhase::Pending => self.enter_stage(index),
                    StagePhase::Progressing => self.progress_stage(index),
                    StagePhase::EarlyLifeSupport => self.watch_early_life(index),
                    StagePhase::RolledBack => {
                        self.finish_release(
                            ReleasePhase::RolledBack,
                            "a stage was rolled back".into(),
                        );
                    }
                    StagePhase::Failed => {
                        self.finish_release(ReleasePhase::Failed, "a stage failed".into());
                    }
                    StagePhase::Rejected => {
                        self.finish_release(
                            ReleasePhase::Rejected,
                            "rejected by an approver".into(),
                        );
                    }
                    StagePhase::Succeeded | StagePhase::Skipped => {}
                }
            }
        }
        self.check_promote_annotation();
        self.set_conditions();
    }

    /// An annotation that names a step the release has passed, or one that is not a pause
    /// without duration, is not silently ignored: the Progressing condition says so (reason
    /// `PromoteIgnored`), and a Warning Event is recorded once, when it starts being ignored
    /// (the condition in the input status tells whether that was already said).
    fn check_promote_annotation(&mut self) {
        let Some(value) = self.input.annotations.get(PROMOTE_ANNOTATION) else {
            return;
        };
        if is_terminal(self.status.phase) {
            return;
        }
        let Some(note) = super::promote::ignored(value, &self.route(), Some(&self.status)) else {
            return;
        };
        let said = self
            .input
            .status
            .and_then(|s| condition::find(&s.conditions, "Progressing"))
            .is_some_and(|c| {
                c.reason == reason::PROMOTE_IGNORED
                    && c.message
                        .contains(&format!("{PROMOTE_ANNOTATION}={value} is ignored"))
            });
        // A pause already passed is most likely the promote that ended it, left in the
        // manifest: the condition says where the release waits now, without a Warning.
        let passed = matches!(
            super::promote::classify(value, &self.route(), Some(&self.status)),
            super::promote::Meaning::Passed(_)
        );
        if !said && !passed {
            let stage = self.status.current_stage.clone();
            self.record(
                stage.as_deref(),
                reason::PROMOTE_IGNORED,
                note.clone(),
                true,
            );
        }
        self.promote_ignored = Some(note);
    }

    fn finish(mut self) -> Plan {
        if self.status.timeline.len() > TIMELINE_LIMIT {
            let excess = self.status.timeline.len() - TIMELINE_LIMIT;
            self.status.timeline.drain(..excess);
        }
        debug_assert!(
            self.status.phase.is_none_or(|to| super::phases::allowed(
                self.input.status.and_then(|s| s.phase),
                to
            )),
            "transition {:?} -> {:?} is not in the release state machine",
            self.input.status.and_then(|s| s.phase),
            self.status.phase
        );
        self.plan.status = self.status;
        self.plan
    }

    /// One status entry per resolved stage, in pipeline order; entries of stages that no
    /// longer exist are dropped, progress of those that do is kept.
    fn sync_stage_entries(&mut self) {
        let resolved = self.stages.clone();
        let mut entries = Vec::with_capacity(resolved.len());
        for stage in resolved {
            let existing = self
                .status
                .stages
                .iter()
                .find(|s| s.name == stage.name)
                .cloned();
            entries.push(existing.unwrap_or_else(|| StageStatus {
                name: stage.name.clone(),
                namespace: stage.namespace.clone().unwrap_or_default(),
                phase: StagePhase::Pending,
                step: None,
                weight: None,
                started_at: None,
                step_started_at: None,
                finished_at: None,
                stable_revisions: Vec::new(),
                gates: Vec::new(),
                message: None,
            }));
        }
        self.status.stages = entries;
    }

    fn record(
        &mut self,
        stage: Option<&str>,
        reason: &'static str,
        message: String,
        warning: bool,
    ) {
        self.status.timeline.push(TimelineEntry {
            at: self.now(),
            stage: stage.map(str::to_owned),
            reason: reason.to_owned(),
            message: message.clone(),
        });
        self.plan.events.push(PlannedEvent {
            warning,
            reason,
            message,
        });
    }

    fn requeue(&mut self, after: Duration) {
        self.plan.requeue_after = Some(self.plan.requeue_after.map_or(after, |r| r.min(after)));
    }

    fn workloads(&self) -> &[Workload] {
        &self.spec().workloads
    }

    fn observed(&self, stage: &str, deployment: &str) -> WorkloadObservation {
        self.input
            .observed
            .get(stage)
            .and_then(|o| o.workloads.get(deployment))
            .cloned()
            .unwrap_or_default()
    }

    /// Whether `other` was created after this release (name breaks a tie): the one
    /// ordering of releases of an application, used by every supersession rule.
    fn is_newer(&self, other: &OtherRelease) -> bool {
        (other.created, other.name.as_str()) > (self.input.created, self.input.name)
    }

    fn newer_live_release(&self) -> Option<&OtherRelease> {
        self.input
            .others
            .iter()
            .find(|o| o.is_live() && self.is_newer(o))
    }
}

fn humantime(d: Duration) -> String {
    let secs = d.as_secs();
    if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

#[allow(dead_code)]
fn default_stage_names() -> [&'static str; 4] {
    DEFAULT_STAGES
}
