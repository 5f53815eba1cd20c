//! The planner: a stage in progress (steps behind the gates) and early life support.

#![allow(clippy::wildcard_imports)] // a part of the planner: it shares the planner's imports

use super::*;

impl Planner<'_> {
    // ----- a stage in progress ------------------------------------------------------------

    pub(super) fn steps_of(&self, stage: &str) -> Vec<stagecoach_api::release::Step> {
        self.stage_spec(stage)
            .map(|s| s.steps.clone())
            .unwrap_or_default()
    }

    /// Evaluates workload-health and the stage's configured gates; returns the combined
    /// decision and the reason to use if it is a failure.
    pub(super) fn evaluate_gates(
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
        let HealthMeasurement {
            measurement: health,
            deadline_exceeded: health_failed_by_deadline,
        } = workload_health(&refs, target, deadline_passed, self.now());
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
                    value: None,
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

    pub(super) fn gate_summary(&self, index: usize) -> String {
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
    pub(super) fn restart_deadline_if_changing(
        &mut self,
        index: usize,
        deadline_passed: bool,
    ) -> bool {
        if self.plan.actions.is_empty() {
            return deadline_passed;
        }
        self.status.stages[index].step_started_at = Some(self.now());
        false
    }

    /// The canary of every workload at `weight`: applied when its size or template
    /// differs from what the step needs.
    fn plan_canary(&mut self, index: usize, weight: i32) {
        let name = self.status.stages[index].name.clone();
        let namespace = self.status.stages[index].namespace.clone();
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
    }

    /// The release's images (and rollout label) on every stable Deployment that does not
    /// run them yet.
    fn plan_full_rollout(&mut self, index: usize) {
        let name = self.status.stages[index].name.clone();
        let namespace = self.status.stages[index].namespace.clone();
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
    }

    #[allow(clippy::too_many_lines)] // one match over the step kinds reads best in one place
    pub(super) fn progress_stage(&mut self, index: usize) {
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
            // The step's change: a canary below 100 %, the stable Deployment itself at 100 %.
            let target = if weight < 100 {
                self.plan_canary(index, weight);
                HealthTarget::Canary { weight }
            } else {
                self.plan_full_rollout(index);
                HealthTarget::Stable
            };
            self.status.stages[index].weight = Some(weight);
            let deadline_passed = self.restart_deadline_if_changing(index, deadline_passed);
            let (decision, why) = self.evaluate_gates(index, target, deadline_passed);
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
                self.requeue(remaining(now, deadline_at).clamp(Duration::from_secs(1), WAIT_POLL));
            }
            let done = decision == GateDecision::Pass && self.plan.actions.is_empty();
            if done && target == HealthTarget::Stable {
                // Fully rolled out: the canary has served its purpose.
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

    pub(super) fn complete_stage(&mut self, index: usize) {
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

    pub(super) fn early_life_duration(&self, stage: &str) -> Duration {
        duration_or(
            self.stage_spec(stage)
                .and_then(|s| s.early_life_support.as_ref())
                .and_then(|e| e.duration.as_deref()),
            DEFAULT_EARLY_LIFE_SUPPORT,
        )
    }

    // ----- early life support ---------------------------------------------------------------

    pub(super) fn watch_early_life(&mut self, index: usize) {
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
}
