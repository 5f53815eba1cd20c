//! The release planner: (Release, what was observed in each stage, the other releases of
//! the application, now) -> the actions to take and the new status.
//!
//! Read it top to bottom: [`plan_release`] syncs the stage list, checks the spec, then
//! looks at the first stage that is not done and asks what that stage needs:
//! [`Planner::enter_stage`] (record stable revisions, start), [`Planner::progress_stage`]
//! (run the current step behind the gates), [`Planner::watch_early_life`] (keep watching
//! after the last stage). Anything failing goes to [`Planner::roll_back`].
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
    ClosingRecord, ReleasePhase, ReleaseSpec, ReleaseStatus, RollbackRecord, StableRevision, Stage,
    StagePhase, StageRecord, StageStatus, TimelineEntry, Workload,
};
use stagecoach_api::{names::DEFAULT_STAGES, parse_duration};

use super::gate::{
    GateDecision, GateModel, HealthTarget, Measurement, WORKLOAD_HEALTH, tally, workload_health,
};
use super::observed::{OtherRelease, StageObservation, WorkloadObservation};
use super::rollout::{
    canary_replicas, canary_template, has_rollout_label, released_template, revision_name,
    runs_release_images, template_hash, with_release_images,
};
use crate::acceptance::{ACCEPTED, accepted_condition};
use crate::admission::check_release;

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
    status: ReleaseStatus,
    plan: Plan,
    degraded: Option<(&'static str, String)>,
    /// Why the promote annotation does nothing, for the Progressing condition.
    promote_ignored: Option<String>,
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
        Self {
            input,
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
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.input.now
    }

    fn spec(&self) -> &ReleaseSpec {
        self.input.spec
    }

    /// The stage's spec, if the release lists stages.
    fn stage_spec(&self, name: &str) -> Option<&Stage> {
        self.spec().stages.as_ref()?.iter().find(|s| s.name == name)
    }

    fn run(&mut self) {
        self.status.observed_generation = self.input.generation;
        self.sync_stage_entries();
        let verdict = check_release(self.spec());
        let accepted = accepted_condition(&verdict, self.input.generation, self.now());
        condition::upsert(&mut self.status.conditions, accepted);
        if verdict.is_err() {
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
        let Some(note) = super::promote::ignored(value, self.spec(), Some(&self.status)) else {
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
            super::promote::classify(value, self.spec(), Some(&self.status)),
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
        let resolved = self.spec().resolved_stages();
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

    // ----- a stage not yet entered -------------------------------------------------------

    #[allow(clippy::too_many_lines)] // the preconditions of entering a stage, in order
    fn enter_stage(&mut self, index: usize) {
        let name = self.status.stages[index].name.clone();
        let namespace = self.status.stages[index].namespace.clone();
        if self.spec().abort {
            self.skip_from(index);
            self.status.rollbacks.push(RollbackRecord {
                at: self.now(),
                stage: name.clone(),
                reason: reason::ABORTED.into(),
                message: "aborted before the stage started; nothing to roll back".into(),
            });
            self.finish_release(ReleasePhase::Failed, format!("aborted before stage {name}"));
            return;
        }
        if let Some(newer) = self.newer_live_release().map(|o| o.name.clone()) {
            self.skip_from(index);
            self.record(
                Some(&name),
                reason::SUPERSEDED,
                format!("{newer} supersedes this release from stage {name} on"),
                false,
            );
            self.finish_release(
                ReleasePhase::Superseded,
                format!("superseded by {newer} before stage {name}"),
            );
            return;
        }
        if self.spec().paused {
            self.status.phase = Some(ReleasePhase::Paused);
            self.status.message = Some(format!("paused before stage {name}"));
            return;
        }
        let busy =
            self.input.others.iter().find(|o| {
                o.is_live() && matches!(o.stage_phase(&name), Some(StagePhase::Progressing))
            });
        if let Some(other) = busy {
            self.status.phase = Some(ReleasePhase::Progressing);
            self.status.message =
                Some(format!("waiting for {} to finish stage {name}", other.name));
            self.status.stages[index].message = Some(format!("waiting for {}", other.name));
            self.requeue(Duration::from_secs(10));
            return;
        }
        let missing: Vec<String> = self
            .workloads()
            .iter()
            .filter(|w| self.observed(&name, &w.deployment).stable.is_none())
            .map(|w| w.deployment.clone())
            .collect();
        if !missing.is_empty() {
            let message = format!(
                "Deployment {} not found in namespace {namespace}",
                missing.join(", ")
            );
            self.status.phase = Some(ReleasePhase::Progressing);
            self.status.message = Some(format!("stage {name}: {message}"));
            self.status.stages[index].message = Some(message.clone());
            self.degraded = Some((reason::DEPLOYMENT_MISSING, message));
            self.requeue(Duration::from_secs(15));
            return;
        }
        let mut revisions = Vec::new();
        for workload in self.workloads().to_vec() {
            let observed = self.observed(&name, &workload.deployment);
            let revision = match (&observed.recorded, &observed.stable) {
                (Some(recorded), _) => StableRevision {
                    deployment: workload.deployment.clone(),
                    controller_revision: recorded.name.clone(),
                    template_hash: recorded.hash.clone(),
                },
                (None, Some(stable)) => {
                    let revision = revision_name(self.input.name, &workload.deployment);
                    let hash = template_hash(&stable.template);
                    self.plan.actions.push(Action::RecordStableRevision {
                        namespace: namespace.clone(),
                        deployment: workload.deployment.clone(),
                        revision: revision.clone(),
                        template: stable.template.clone(),
                        hash: hash.clone(),
                    });
                    StableRevision {
                        deployment: workload.deployment.clone(),
                        controller_revision: revision,
                        template_hash: hash,
                    }
                }
                (None, None) => continue,
            };
            revisions.push(revision);
        }
        let now = self.now();
        let stage = &mut self.status.stages[index];
        stage.stable_revisions = revisions;
        stage.phase = StagePhase::Progressing;
        stage.step = Some(0);
        stage.weight = Some(0);
        stage.started_at = Some(now);
        stage.step_started_at = Some(now);
        stage.gates.clear();
        stage.message = Some("stable revision recorded".into());
        self.status.phase = Some(ReleasePhase::Progressing);
        self.status.message = Some(format!("stage {name} started"));
        self.plan
            .stage_transitions
            .push((name.clone(), StagePhase::Progressing));
        self.record(
            Some(&name),
            reason::STAGE_STARTED,
            format!("stage {name} started in namespace {namespace}"),
            false,
        );
        self.requeue(Duration::ZERO);
    }

    // ----- a stage in progress ------------------------------------------------------------

    fn steps_of(&self, stage: &str) -> Vec<stagecoach_api::release::Step> {
        self.spec()
            .resolved_stages()
            .into_iter()
            .find(|s| s.name == stage)
            .map(|s| s.steps)
            .unwrap_or_default()
    }

    /// Evaluates workload-health and the stage's configured gates; returns the combined
    /// decision and the reason to use if it is a failure.
    fn evaluate_gates(
        &mut self,
        index: usize,
        target: HealthTarget,
        deadline_passed: bool,
    ) -> (GateDecision, &'static str) {
        let name = self.status.stages[index].name.clone();
        let pairs: Vec<(Workload, WorkloadObservation)> = self
            .workloads()
            .iter()
            .map(|w| (w.clone(), self.observed(&name, &w.deployment)))
            .collect();
        let refs: Vec<(&Workload, &WorkloadObservation)> =
            pairs.iter().map(|(w, o)| (w, o)).collect();
        let health = workload_health(&refs, target, deadline_passed, self.now());
        let health_failed_by_deadline =
            deadline_passed && health.message.starts_with("progress deadline passed");
        let mut decisions = Vec::new();
        let mut gates = Vec::new();
        let previous = self.status.stages[index].gates.clone();
        let find = |gate: &str| previous.iter().find(|g| g.name == gate);
        let (status, decision) = tally(
            WORKLOAD_HEALTH,
            find(WORKLOAD_HEALTH),
            &health,
            GateModel::IMMEDIATE,
        );
        gates.push(status);
        decisions.push(decision);
        let configured = self
            .stage_spec(&name)
            .map(|s| s.gates.clone())
            .unwrap_or_default();
        for gate in configured {
            let measurement = self
                .input
                .gate_measurements
                .get(&gate.name)
                .cloned()
                .unwrap_or(Measurement {
                    verdict: stagecoach_api::release::GateVerdict::Inconclusive,
                    message: "not measured yet".into(),
                    at: self.status.stages[index]
                        .step_started_at
                        .unwrap_or(self.now()),
                });
            let model = GateModel {
                count: gate.count.unwrap_or(1),
                failure_limit: gate.failure_limit.unwrap_or(0),
            };
            let (status, decision) = tally(&gate.name, find(&gate.name), &measurement, model);
            gates.push(status);
            decisions.push(decision);
        }
        self.status.stages[index].gates = gates;
        let decision = if decisions.contains(&GateDecision::Fail) {
            GateDecision::Fail
        } else if decisions.iter().all(|d| *d == GateDecision::Pass) {
            GateDecision::Pass
        } else if deadline_passed && target != HealthTarget::Steady {
            // Something is still inconclusive when time is up: never taken as passing.
            GateDecision::Fail
        } else {
            GateDecision::Wait
        };
        let why = if health_failed_by_deadline
            || (deadline_passed
                && decision == GateDecision::Fail
                && !decisions.contains(&GateDecision::Fail))
        {
            reason::PROGRESS_DEADLINE_EXCEEDED
        } else {
            reason::GATE_FAILED
        };
        (decision, why)
    }

    fn gate_summary(&self, index: usize) -> String {
        self.status.stages[index]
            .gates
            .iter()
            .map(|g| format!("{}: {:?} ({})", g.name, g.verdict, g.message))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The progress deadline counts from when the step's change was last made: while this
    /// plan still has to change the workloads (first time, or after the operator was down,
    /// or after someone else edited them) the clock restarts, so downtime of the operator
    /// never fails a step by itself.
    fn restart_deadline_if_changing(&mut self, index: usize, deadline_passed: bool) -> bool {
        if self.plan.actions.is_empty() {
            return deadline_passed;
        }
        self.status.stages[index].step_started_at = Some(self.now());
        false
    }

    #[allow(clippy::too_many_lines)] // one match over the step kinds reads best in one place
    fn progress_stage(&mut self, index: usize) {
        let name = self.status.stages[index].name.clone();
        let namespace = self.status.stages[index].namespace.clone();
        if self.spec().abort {
            self.roll_back(index, reason::ABORTED, "aborted by spec.abort".into());
            return;
        }
        if self.fail_if_deployment_deleted(index) || self.hold_on_outside_edit(index) {
            return;
        }
        let steps = self.steps_of(&name);
        let step_index = usize::try_from(self.status.stages[index].step.unwrap_or(0)).unwrap_or(0);
        let Some(step) = steps.get(step_index).cloned() else {
            self.complete_stage(index);
            return;
        };
        let now = self.now();
        let step_started = self.status.stages[index].step_started_at.unwrap_or(now);
        let deadline = duration_or(
            self.stage_spec(&name)
                .and_then(|s| s.progress_deadline.as_deref()),
            DEFAULT_PROGRESS_DEADLINE,
        );
        let deadline_at = after(step_started, deadline);
        let deadline_passed = now >= deadline_at;
        let current_weight = self.status.stages[index].weight.unwrap_or(0);
        let position = format!("step {}/{}", step_index + 1, steps.len());
        self.status.phase = Some(ReleasePhase::Progressing);

        let step_done = if let Some(weight) = step.set_weight {
            if weight < 100 {
                for workload in self.workloads().to_vec() {
                    let observed = self.observed(&name, &workload.deployment);
                    let (Some(stable), base) = (
                        &observed.stable,
                        observed.recorded.as_ref().map(|r| &r.template),
                    ) else {
                        continue;
                    };
                    let template = canary_template(base.unwrap_or(&stable.template), &workload);
                    let hash = template_hash(&template);
                    let replicas = canary_replicas(weight, stable.replicas);
                    let current = observed.canary.as_ref();
                    if current.is_none_or(|c| {
                        c.replicas != replicas || c.applied_hash.as_deref() != Some(hash.as_str())
                    }) {
                        self.plan.actions.push(Action::ApplyCanary {
                            namespace: namespace.clone(),
                            deployment: workload.deployment.clone(),
                            replicas,
                            template,
                            hash,
                        });
                    }
                }
                self.status.stages[index].weight = Some(weight);
                let deadline_passed = self.restart_deadline_if_changing(index, deadline_passed);
                let (decision, why) =
                    self.evaluate_gates(index, HealthTarget::Canary { weight }, deadline_passed);
                if decision == GateDecision::Fail {
                    let summary = self.gate_summary(index);
                    self.roll_back(index, why, format!("at {weight}%: {summary}"));
                    return;
                }
                self.status.message = Some(format!(
                    "stage {name}: {weight}% ({position}), {}",
                    self.gate_summary(index)
                ));
                if decision == GateDecision::Wait {
                    self.requeue(
                        remaining(now, deadline_at).clamp(Duration::from_secs(1), WAIT_POLL),
                    );
                }
                decision == GateDecision::Pass && self.plan.actions.is_empty()
            } else {
                for workload in self.workloads().to_vec() {
                    let observed = self.observed(&name, &workload.deployment);
                    if let Some(stable) = &observed.stable
                        && (!runs_release_images(&stable.template, &workload)
                            || !has_rollout_label(&stable.template))
                    {
                        self.plan.actions.push(Action::UpdateStable {
                            namespace: namespace.clone(),
                            deployment: workload.deployment.clone(),
                            images: workload
                                .containers
                                .iter()
                                .map(|c| (c.name.clone(), c.image.clone()))
                                .collect(),
                        });
                    }
                }
                self.status.stages[index].weight = Some(100);
                let deadline_passed = self.restart_deadline_if_changing(index, deadline_passed);
                let (decision, why) =
                    self.evaluate_gates(index, HealthTarget::Stable, deadline_passed);
                if decision == GateDecision::Fail {
                    let summary = self.gate_summary(index);
                    self.roll_back(index, why, format!("at 100%: {summary}"));
                    return;
                }
                self.status.message = Some(format!(
                    "stage {name}: 100% ({position}), {}",
                    self.gate_summary(index)
                ));
                if decision == GateDecision::Wait {
                    self.requeue(
                        remaining(now, deadline_at).clamp(Duration::from_secs(1), WAIT_POLL),
                    );
                }
                let done = decision == GateDecision::Pass && self.plan.actions.is_empty();
                if done {
                    for workload in self.workloads().to_vec() {
                        if self.observed(&name, &workload.deployment).canary.is_some() {
                            self.plan.actions.push(Action::DeleteCanary {
                                namespace: namespace.clone(),
                                deployment: workload.deployment.clone(),
                            });
                        }
                    }
                }
                done
            }
        } else {
            let target = match current_weight {
                0 => HealthTarget::Steady,
                100 => HealthTarget::Stable,
                w => HealthTarget::Canary { weight: w },
            };
            let (decision, why) = self.evaluate_gates(index, target, false);
            if decision == GateDecision::Fail {
                let summary = self.gate_summary(index);
                self.roll_back(
                    index,
                    why,
                    format!("during a pause at {current_weight}%: {summary}"),
                );
                return;
            }
            if let Some(text) = step.pause.as_ref().and_then(|p| p.duration.as_deref()) {
                let until = after(step_started, duration_or(Some(text), Duration::ZERO));
                let done = now >= until;
                if !done {
                    self.requeue(remaining(now, until));
                    self.status.message = Some(format!(
                        "stage {name}: {current_weight}% ({position}), pausing {text}"
                    ));
                }
                done
            } else {
                {
                    let key = format!("{name}/{step_index}");
                    let promoted = self.input.annotations.get(PROMOTE_ANNOTATION) == Some(&key);
                    if !promoted {
                        self.status.phase = Some(ReleasePhase::Paused);
                        self.status.message = Some(format!(
                            "stage {name}: {current_weight}% ({position}), waiting for promotion: kubectl stagecoach promote (annotation {PROMOTE_ANNOTATION}={key})"
                        ));
                        self.status.stages[index].message =
                            Some(reason::WAITING_FOR_PROMOTION.into());
                    }
                    promoted
                }
            }
        };

        if !step_done {
            return;
        }
        if self.spec().paused {
            self.status.phase = Some(ReleasePhase::Paused);
            self.status.message = Some(format!("paused in stage {name} after {position}"));
            return;
        }
        self.plan.step_seconds = (now - step_started).to_std().ok().map(|d| d.as_secs_f64());
        let stage = &mut self.status.stages[index];
        stage.step = Some(i32::try_from(step_index + 1).unwrap_or(i32::MAX));
        stage.step_started_at = Some(now);
        stage.gates.clear();
        stage.message = None;
        self.record(
            Some(&name),
            reason::STEP_COMPLETED,
            format!("stage {name}: {position} completed"),
            false,
        );
        self.requeue(Duration::ZERO);
    }

    fn complete_stage(&mut self, index: usize) {
        let name = self.status.stages[index].name.clone();
        let now = self.now();
        let last = index + 1 == self.status.stages.len();
        if last {
            let stage = &mut self.status.stages[index];
            stage.phase = StagePhase::EarlyLifeSupport;
            stage.step_started_at = Some(now);
            stage.weight = Some(100);
            stage.gates.clear();
            let duration = self.early_life_duration(&name);
            self.status.phase = Some(ReleasePhase::EarlyLifeSupport);
            self.status.message = Some(format!(
                "stage {name} at 100%: early life support until {}",
                after(now, duration).to_rfc3339()
            ));
            self.plan.lead_time_seconds = Some((now - self.input.created).num_seconds());
            self.plan
                .stage_transitions
                .push((name.clone(), StagePhase::EarlyLifeSupport));
            self.record(
                Some(&name),
                reason::EARLY_LIFE_SUPPORT,
                format!(
                    "stage {name} reached 100%; early life support for {}",
                    humantime(duration)
                ),
                false,
            );
            self.requeue(duration.min(Duration::from_secs(300)));
        } else {
            let stage = &mut self.status.stages[index];
            stage.phase = StagePhase::Succeeded;
            stage.finished_at = Some(now);
            stage.weight = Some(100);
            stage.message = None;
            self.plan
                .stage_transitions
                .push((name.clone(), StagePhase::Succeeded));
            self.record(
                Some(&name),
                reason::STAGE_SUCCEEDED,
                format!("stage {name} succeeded"),
                false,
            );
            self.requeue(Duration::ZERO);
        }
    }

    fn early_life_duration(&self, stage: &str) -> Duration {
        duration_or(
            self.stage_spec(stage)
                .and_then(|s| s.early_life_support.as_ref())
                .and_then(|e| e.duration.as_deref()),
            DEFAULT_EARLY_LIFE_SUPPORT,
        )
    }

    // ----- early life support ---------------------------------------------------------------

    fn watch_early_life(&mut self, index: usize) {
        let name = self.status.stages[index].name.clone();
        if self.spec().abort {
            self.roll_back(
                index,
                reason::ABORTED,
                "aborted by spec.abort during early life support".into(),
            );
            return;
        }
        if self.fail_if_deployment_deleted(index) {
            return;
        }
        let newer_here = self.input.others.iter().find(|o| {
            o.is_live()
                && self.is_newer(o)
                && matches!(
                    o.stage_phase(&name),
                    Some(
                        StagePhase::Progressing
                            | StagePhase::EarlyLifeSupport
                            | StagePhase::Succeeded
                    )
                )
        });
        if let Some(newer) = newer_here.map(|o| o.name.clone()) {
            self.status.stages[index].phase = StagePhase::Succeeded;
            self.status.stages[index].finished_at = Some(self.now());
            self.record(
                Some(&name),
                reason::SUPERSEDED,
                format!("early life support ended: {newer} entered stage {name}"),
                false,
            );
            self.finish_release(
                ReleasePhase::Succeeded,
                format!("succeeded; early life support ended when {newer} entered {name}"),
            );
            return;
        }
        let (decision, _) = self.evaluate_gates(index, HealthTarget::Steady, false);
        if decision == GateDecision::Fail {
            let summary = self.gate_summary(index);
            self.roll_back(
                index,
                reason::EARLY_LIFE_SUPPORT_FAILED,
                format!("during early life support: {summary}"),
            );
            return;
        }
        let start = self.status.stages[index]
            .step_started_at
            .unwrap_or(self.now());
        let until = after(start, self.early_life_duration(&name));
        self.status.phase = Some(ReleasePhase::EarlyLifeSupport);
        if self.now() >= until {
            let now = self.now();
            self.status.stages[index].phase = StagePhase::Succeeded;
            self.status.stages[index].finished_at = Some(now);
            self.plan
                .stage_transitions
                .push((name.clone(), StagePhase::Succeeded));
            self.record(
                Some(&name),
                reason::STAGE_SUCCEEDED,
                format!("early life support in {name} ended without incident"),
                false,
            );
            self.finish_release(
                ReleasePhase::Succeeded,
                "released; early life support ended without incident".into(),
            );
        } else {
            self.status.message = Some(format!(
                "early life support in {name} until {}",
                until.to_rfc3339()
            ));
            self.requeue(remaining(self.now(), until).min(Duration::from_secs(300)));
        }
    }

    // ----- the world changed under the release ------------------------------------------------

    /// A Deployment of the stage in progress is gone: nothing can be restored for it, so
    /// the stage fails at once (phase `Failed`, reason `DeploymentDeleted`, never
    /// `RolledBack`), its canaries are removed and the stage's other Deployments go back
    /// to their recorded revisions.
    fn fail_if_deployment_deleted(&mut self, index: usize) -> bool {
        let name = self.status.stages[index].name.clone();
        let namespace = self.status.stages[index].namespace.clone();
        let missing: Vec<String> = self
            .workloads()
            .iter()
            .filter(|w| self.observed(&name, &w.deployment).stable.is_none())
            .map(|w| w.deployment.clone())
            .collect();
        if missing.is_empty() {
            return false;
        }
        let kept = self.restore_actions(index);
        let canaries = self
            .plan
            .actions
            .iter()
            .filter(|a| matches!(a, Action::DeleteCanary { .. }))
            .count();
        let mut message = format!(
            "Deployment {} was deleted from namespace {namespace} during the rollout; \
             there is nothing to restore",
            missing.join(", ")
        );
        if canaries > 0 {
            message.push_str("; the canary is removed");
        }
        if !kept.is_empty() {
            let _ = write!(
                message,
                "; {} changed outside Stagecoach and left as it is",
                kept.join(", ")
            );
        }
        let now = self.end_stage(index, StagePhase::Failed, &message);
        self.status.timeline.push(TimelineEntry {
            at: now,
            stage: Some(name.clone()),
            reason: reason::DEPLOYMENT_DELETED.into(),
            message: message.clone(),
        });
        self.finish_release(ReleasePhase::Failed, format!("stage {name}: {message}"));
        true
    }

    /// A Deployment of the stage in progress whose pod template someone else changed
    /// (a hotfix with `kubectl set image`, say) is never overwritten: the release holds
    /// (phase `Paused`, `Degraded` reason `OutsideEdit`) until the change is reverted, or
    /// until `spec.abort`, which removes the canary and leaves the edited Deployment as
    /// it is. Replica changes are not template changes and are always allowed.
    fn hold_on_outside_edit(&mut self, index: usize) -> bool {
        let name = self.status.stages[index].name.clone();
        let namespace = self.status.stages[index].namespace.clone();
        let edits: Vec<String> = self
            .workloads()
            .to_vec()
            .iter()
            .filter_map(|w| {
                let observed = self.observed(&name, &w.deployment);
                let change = outside_edit(&observed, w)?;
                let by = observed
                    .stable
                    .as_ref()
                    .and_then(|s| s.last_editor.clone())
                    .map_or_else(String::new, |m| format!(" by field manager {m}"));
                Some(format!("Deployment {} ({change}{by})", w.deployment))
            })
            .collect();
        if edits.is_empty() {
            return false;
        }
        let message = format!(
            "stage {name}: {} in namespace {namespace} changed outside Stagecoach; the release \
             holds and will not overwrite it. Revert the change to continue, or abort \
             (spec.abort: true) to end the release: the canary is removed and the edited \
             Deployment is kept as it is",
            edits.join(", ")
        );
        let already_held = condition::find(&self.status.conditions, "Degraded")
            .is_some_and(|c| c.status == ConditionStatus::True && c.reason == reason::OUTSIDE_EDIT);
        if !already_held {
            self.record(Some(&name), reason::OUTSIDE_EDIT, message.clone(), true);
        }
        self.status.phase = Some(ReleasePhase::Paused);
        self.status.message = Some(message.clone());
        self.status.stages[index].message = Some(reason::OUTSIDE_EDIT.into());
        self.degraded = Some((reason::OUTSIDE_EDIT, message));
        self.requeue(Duration::from_secs(30));
        true
    }

    /// A deleted Release lets go of its stages: the stage in progress is rolled back (as
    /// `abort` does), early life support ends (the release is live; deleting its object,
    /// say by pruning it from Git, must not undo production), stages not entered are
    /// skipped.
    fn end_for_deletion(&mut self) {
        let Some(index) = self
            .status
            .stages
            .iter()
            .position(|s| !matches!(s.phase, StagePhase::Succeeded | StagePhase::Skipped))
        else {
            self.finish_release(ReleasePhase::Succeeded, "every stage succeeded".into());
            return;
        };
        let name = self.status.stages[index].name.clone();
        match self.status.stages[index].phase {
            StagePhase::Progressing => self.roll_back(
                index,
                reason::RELEASE_DELETED,
                "the Release was deleted during the rollout".into(),
            ),
            StagePhase::EarlyLifeSupport => {
                self.status.stages[index].phase = StagePhase::Succeeded;
                self.status.stages[index].finished_at = Some(self.now());
                self.finish_release(
                    ReleasePhase::Succeeded,
                    format!(
                        "released; early life support in {name} ended when the Release was deleted"
                    ),
                );
            }
            StagePhase::Pending => {
                self.skip_from(index);
                self.status.rollbacks.push(RollbackRecord {
                    at: self.now(),
                    stage: name.clone(),
                    reason: reason::RELEASE_DELETED.into(),
                    message: "deleted before the stage started; nothing to roll back".into(),
                });
                self.finish_release(ReleasePhase::Failed, format!("deleted before stage {name}"));
            }
            StagePhase::RolledBack => {
                self.finish_release(ReleasePhase::RolledBack, "a stage was rolled back".into());
            }
            StagePhase::Failed => {
                self.finish_release(ReleasePhase::Failed, "a stage failed".into());
            }
            StagePhase::Succeeded | StagePhase::Skipped => {}
        }
    }

    /// Why the release ended badly, for conditions and Events: a failed stage (its
    /// Deployment deleted) or the last rollback.
    fn failure(&self) -> (&'static str, String) {
        if let Some(stage) = self
            .status
            .stages
            .iter()
            .find(|s| s.phase == StagePhase::Failed)
        {
            return (
                reason::DEPLOYMENT_DELETED,
                format!(
                    "stage {}: {}",
                    stage.name,
                    stage.message.clone().unwrap_or_default()
                ),
            );
        }
        match self.status.rollbacks.last() {
            Some(record) => (
                static_reason(&record.reason),
                format!("stage {} rolled back: {}", record.stage, record.message),
            ),
            None => (reason::ROLLED_BACK, String::new()),
        }
    }

    // ----- endings ----------------------------------------------------------------------------

    /// Restores every workload of the stage to its recorded template, deletes canaries,
    /// and ends the release as RolledBack.
    #[allow(clippy::needless_pass_by_value)] // callers build the message for this call
    fn roll_back(&mut self, index: usize, why: &'static str, message: String) {
        let name = self.status.stages[index].name.clone();
        let kept = self.restore_actions(index);
        let message = if kept.is_empty() {
            message
        } else {
            format!(
                "{message}; not restored, because they were changed outside Stagecoach \
                 after the stable revision was recorded: {}",
                kept.join(", ")
            )
        };
        let now = self.end_stage(index, StagePhase::RolledBack, &message);
        self.status.rollbacks.push(RollbackRecord {
            at: now,
            stage: name.clone(),
            reason: why.to_owned(),
            message: message.clone(),
        });
        self.plan.rollback_reason = Some(why);
        self.record(
            Some(&name),
            reason::ROLLED_BACK,
            format!("stage {name} rolled back to its stable revision ({why}): {message}"),
            true,
        );
        self.degraded = Some((why, format!("stage {name} rolled back: {message}")));
        self.finish_release(
            ReleasePhase::RolledBack,
            format!("stage {name} rolled back ({why})"),
        );
    }

    /// Ends the stage at `index` badly (`RolledBack` or `Failed`) and skips the stages
    /// after it; the decision is written before any action. Returns the time it ended.
    fn end_stage(&mut self, index: usize, phase: StagePhase, message: &str) -> DateTime<Utc> {
        let now = self.now();
        let stage = &mut self.status.stages[index];
        stage.phase = phase;
        stage.finished_at = Some(now);
        stage.weight = Some(0);
        stage.message = Some(message.to_owned());
        let name = stage.name.clone();
        self.skip_from(index + 1);
        self.plan.status_first = true;
        self.plan.stage_transitions.push((name, phase));
        now
    }

    /// The actions that put a stage back on its recorded revision; none when it already is.
    /// A Deployment someone else changed (see [`outside_edit`]) is never overwritten:
    /// returns the names of those left as they are.
    fn restore_actions(&mut self, index: usize) -> Vec<String> {
        let name = self.status.stages[index].name.clone();
        let namespace = self.status.stages[index].namespace.clone();
        let mut kept = Vec::new();
        for workload in self.workloads().to_vec() {
            let observed = self.observed(&name, &workload.deployment);
            if outside_edit(&observed, &workload).is_some() {
                kept.push(workload.deployment.clone());
            } else if let (Some(stable), Some(recorded)) = (&observed.stable, &observed.recorded)
                && stable.template != recorded.template
            {
                self.plan.actions.push(Action::RestoreStable {
                    namespace: namespace.clone(),
                    deployment: workload.deployment.clone(),
                    template: recorded.template.clone(),
                });
            }
            if observed.canary.is_some() {
                self.plan.actions.push(Action::DeleteCanary {
                    namespace: namespace.clone(),
                    deployment: workload.deployment.clone(),
                });
            }
        }
        kept
    }

    /// After the release ended, keep rolled-back stages restored and no canary behind,
    /// unless a newer release has since taken the stage over.
    fn converge_terminal(&mut self) {
        for index in 0..self.status.stages.len() {
            let name = self.status.stages[index].name.clone();
            let taken_over = self.input.others.iter().any(|o| {
                self.is_newer(o)
                    && o.stage_phase(&name)
                        .is_some_and(|p| !matches!(p, StagePhase::Pending | StagePhase::Skipped))
            });
            if taken_over {
                continue;
            }
            match self.status.stages[index].phase {
                StagePhase::RolledBack | StagePhase::Failed => {
                    self.restore_actions(index);
                }
                StagePhase::Succeeded => {
                    let namespace = self.status.stages[index].namespace.clone();
                    for workload in self.workloads().to_vec() {
                        if self.observed(&name, &workload.deployment).canary.is_some() {
                            self.plan.actions.push(Action::DeleteCanary {
                                namespace: namespace.clone(),
                                deployment: workload.deployment.clone(),
                            });
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn skip_from(&mut self, index: usize) {
        for stage in self.status.stages.iter_mut().skip(index) {
            if stage.phase == StagePhase::Pending {
                stage.phase = StagePhase::Skipped;
            }
        }
    }

    fn finish_release(&mut self, phase: ReleasePhase, message: String) {
        let now = self.now();
        self.status.phase = Some(phase);
        self.status.message = Some(message.clone());
        self.status.completed_at = Some(now);
        match phase {
            ReleasePhase::Succeeded => self.record(None, reason::SUCCEEDED, message, false),
            ReleasePhase::Superseded => self.plan.events.push(PlannedEvent {
                warning: false,
                reason: reason::SUPERSEDED,
                message,
            }),
            ReleasePhase::Failed => {
                let (why, _) = self.failure();
                self.plan.events.push(PlannedEvent {
                    warning: true,
                    reason: why,
                    message,
                });
            }
            _ => {}
        }
        let lead_time = self
            .status
            .stages
            .last()
            .filter(|s| {
                matches!(
                    s.phase,
                    StagePhase::Succeeded | StagePhase::EarlyLifeSupport
                )
            })
            .and_then(|s| s.started_at.map(|_| s))
            .and_then(|s| {
                self.status
                    .timeline
                    .iter()
                    .rev()
                    .find(|t| {
                        t.reason == reason::EARLY_LIFE_SUPPORT
                            && t.stage.as_deref() == Some(s.name.as_str())
                    })
                    .map(|t| (t.at - self.input.created).num_seconds())
            });
        self.status.closing_record = Some(ClosingRecord {
            outcome: phase,
            completed_at: now,
            lead_time_seconds: lead_time,
            changes: self.spec().changes.clone(),
            stages: self
                .status
                .stages
                .iter()
                .map(|s| StageRecord {
                    name: s.name.clone(),
                    phase: s.phase,
                    duration_seconds: match (s.started_at, s.finished_at) {
                        (Some(a), Some(b)) => Some((b - a).num_seconds()),
                        _ => None,
                    },
                    gates: s.gates.clone(),
                })
                .collect(),
        });
    }

    // ----- conditions ---------------------------------------------------------------------

    fn set_conditions(&mut self) {
        let generation = self.input.generation;
        let now = self.now();
        let accepted = condition::find(&self.status.conditions, ACCEPTED)
            .is_some_and(|c| c.status == ConditionStatus::True);
        let phase = self.status.phase;
        let (ready, ready_reason) = match phase {
            Some(ReleasePhase::Succeeded) => (ConditionStatus::True, reason::SUCCEEDED),
            Some(ReleasePhase::EarlyLifeSupport) => {
                (ConditionStatus::True, reason::EARLY_LIFE_SUPPORT)
            }
            Some(ReleasePhase::RolledBack) => (ConditionStatus::False, reason::ROLLED_BACK),
            Some(ReleasePhase::Superseded) => (ConditionStatus::False, reason::SUPERSEDED),
            Some(ReleasePhase::Failed) => (ConditionStatus::False, self.failure().0),
            _ if !accepted => (ConditionStatus::False, reason::INVALID_SPEC),
            _ => (ConditionStatus::False, reason::STEP_IN_PROGRESS),
        };
        let message = self.status.message.clone().unwrap_or_default();
        condition::upsert(
            &mut self.status.conditions,
            Condition::new(
                "Ready",
                ready,
                ready_reason,
                message.clone(),
                generation,
                now,
            ),
        );
        let (progressing, progressing_reason) = match phase {
            Some(ReleasePhase::Progressing) => (ConditionStatus::True, reason::STEP_IN_PROGRESS),
            Some(ReleasePhase::Paused) => (ConditionStatus::False, reason::PAUSED),
            Some(ReleasePhase::EarlyLifeSupport) => {
                (ConditionStatus::True, reason::EARLY_LIFE_SUPPORT)
            }
            _ => (ConditionStatus::False, ready_reason),
        };
        let (progressing_reason, progressing_message) = match &self.promote_ignored {
            Some(note) if message.is_empty() => (reason::PROMOTE_IGNORED, note.clone()),
            Some(note) => (reason::PROMOTE_IGNORED, format!("{message}. {note}")),
            None => (progressing_reason, message),
        };
        condition::upsert(
            &mut self.status.conditions,
            Condition::new(
                "Progressing",
                progressing,
                progressing_reason,
                progressing_message,
                generation,
                now,
            ),
        );
        let (degraded, degraded_reason, degraded_message) = match (&self.degraded, phase) {
            (Some((why, msg)), _) => (ConditionStatus::True, *why, msg.clone()),
            (None, Some(ReleasePhase::RolledBack | ReleasePhase::Failed)) => {
                let (why, message) = self.failure();
                (ConditionStatus::True, why, message)
            }
            _ => (ConditionStatus::False, reason::AS_EXPECTED, String::new()),
        };
        condition::upsert(
            &mut self.status.conditions,
            Condition::new(
                "Degraded",
                degraded,
                degraded_reason,
                degraded_message,
                generation,
                now,
            ),
        );
        let (reconciling, stalled) = self.kstatus(accepted);
        for (kind, value) in [(RECONCILING, reconciling), (STALLED, stalled)] {
            set_abnormal(&mut self.status.conditions, kind, value, generation, now);
        }
        let current = self.status.current_stage.clone();
        self.status.current_weight = current
            .and_then(|c| self.status.stages.iter().find(|s| s.name == c))
            .and_then(|s| s.weight);
    }

    /// The kstatus conditions, as (reason, message) while true: `Reconciling` while the
    /// operator moves the release on by itself (phase Progressing: a step, a timed pause,
    /// waiting for another release or for a Deployment to appear); `Stalled` while it
    /// cannot without a person (the spec is not accepted, an outside edit holds the
    /// release, it was rolled back or failed). Neither while it waits on purpose (paused,
    /// a pause without duration: `Ready=False`), in early life support (deployed and
    /// watched: `Ready=True`), or when it ended well.
    fn kstatus(&self, accepted: bool) -> (Abnormal, Abnormal) {
        let message = self.status.message.clone().unwrap_or_default();
        if !accepted {
            let (why, text) = condition::find(&self.status.conditions, ACCEPTED).map_or_else(
                || (reason::INVALID_SPEC.to_owned(), message.clone()),
                |c| (c.reason.clone(), c.message.clone()),
            );
            return (None, Some((why, text)));
        }
        match (self.status.phase, &self.degraded) {
            (Some(ReleasePhase::Progressing), degraded) => {
                let why = degraded.as_ref().map_or(reason::STEP_IN_PROGRESS, |d| d.0);
                (Some((why.to_owned(), message)), None)
            }
            (Some(ReleasePhase::Paused), Some((why, text))) if *why == reason::OUTSIDE_EDIT => {
                (None, Some(((*why).to_owned(), text.clone())))
            }
            (Some(ReleasePhase::RolledBack | ReleasePhase::Failed), _) => {
                let (why, text) = self.failure();
                let text = if text.is_empty() { message } else { text };
                (None, Some((why.to_owned(), text)))
            }
            _ => (None, None),
        }
    }
}

/// kstatus condition: the operator is working toward the desired state.
pub const RECONCILING: &str = "Reconciling";
/// kstatus condition: the operator cannot reach the desired state without a person.
pub const STALLED: &str = "Stalled";

/// An "abnormal-true" condition's (reason, message) while it is true.
type Abnormal = Option<(String, String)>;

/// Sets an "abnormal-true" condition (kstatus): present with status True while `value` is
/// `Some((reason, message))`, absent otherwise.
fn set_abnormal(
    conditions: &mut Vec<Condition>,
    kind: &str,
    value: Abnormal,
    generation: Option<i64>,
    now: DateTime<Utc>,
) {
    match value {
        Some((why, message)) => condition::upsert(
            conditions,
            Condition::new(kind, ConditionStatus::True, &why, message, generation, now),
        ),
        None => conditions.retain(|c| c.r#type != kind),
    }
}

fn static_reason(text: &str) -> &'static str {
    [
        reason::GATE_FAILED,
        reason::PROGRESS_DEADLINE_EXCEEDED,
        reason::EARLY_LIFE_SUPPORT_FAILED,
        reason::ABORTED,
        reason::RELEASE_DELETED,
    ]
    .into_iter()
    .find(|r| *r == text)
    .unwrap_or(reason::ROLLED_BACK)
}

/// How the stable Deployment's pod template differs from every template the release
/// could have left on it (the recorded stable revision, or that revision with the
/// release's images): `None` when it is one of them, or when there is nothing to compare
/// (no Deployment, or no recorded revision yet).
pub fn outside_edit(observed: &WorkloadObservation, workload: &Workload) -> Option<String> {
    let stable = observed.stable.as_ref()?;
    let recorded = observed.recorded.as_ref()?;
    let released = released_template(&recorded.template, workload);
    // Also the release's images without the rollout label: what an operator before
    // that label left at 100 %.
    let known = [
        &recorded.template,
        &released,
        &with_release_images(&recorded.template, workload),
    ];
    if known.contains(&&stable.template) {
        return None;
    }
    let expected = if runs_release_images(&stable.template, workload) {
        &released
    } else {
        &recorded.template
    };
    Some(match first_difference(expected, &stable.template) {
        Some((path, Value::String(now))) => format!("{path} is now {now}"),
        Some((path, Value::Null)) => format!("{path} was removed"),
        Some((path, _)) => format!("{path} changed"),
        None => "pod template changed".into(),
    })
}

/// The JSON pointer of the first place where `after` differs from `before`, and the value
/// there in `after` (`Null` when it was removed).
fn first_difference(before: &Value, after: &Value) -> Option<(String, Value)> {
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter().find_map(|key| {
                let (x, y) = (
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                );
                first_difference(x, y).map(|(path, v)| (format!("/{key}{path}"), v))
            })
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            a.iter().zip(b).enumerate().find_map(|(i, (x, y))| {
                first_difference(x, y).map(|(path, v)| (format!("/{i}{path}"), v))
            })
        }
        _ if before == after => None,
        _ => Some((String::new(), after.clone())),
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
