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

    /// Evaluates workload-health and the stage's configured gates, folding fresh
    /// measurements into `status.stages[index].gates`.
    ///
    /// The progress deadline governs the built-in gate only: new pods not ready when it
    /// passes fail the step. A configured gate is governed by its own count and limits. A
    /// configured gate's measurement counts only when it was taken after the step started
    /// (whole seconds, as status keeps them): a result of the previous step, or of the
    /// workloads before this step changed them, says nothing about this step.
    pub(super) fn evaluate_gates(
        &mut self,
        index: usize,
        target: HealthTarget,
        deadline_passed: bool,
    ) -> Verdicts {
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
            deadline_exceeded,
        } = workload_health(&refs, target, deadline_passed, self.now());
        let mut gates = Vec::new();
        let previous = self.status.stages[index].gates.clone();
        let find = |gate: &str| previous.iter().find(|g| g.name == gate);
        let (status, mut health_decision) = tally(
            WORKLOAD_HEALTH,
            find(WORKLOAD_HEALTH),
            &health,
            GateModel::IMMEDIATE,
        );
        gates.push(status);
        // Still not passing when time is up (a Deployment not found, say): never taken
        // as passing.
        let by_deadline = deadline_exceeded
            || (deadline_passed
                && target != HealthTarget::Steady
                && health_decision != GateDecision::Pass);
        if by_deadline {
            health_decision = GateDecision::Fail;
        }
        let since = self.status.stages[index].step_started_at.map(whole_second);
        let mut configured = Vec::new();
        for gate in self.configured_gates(&name) {
            let model = GateModel::of(&gate);
            let fresh = self
                .input
                .gate_measurements
                .get(&gate.name)
                .filter(|m| since.is_none_or(|s| whole_second(m.at) > s));
            let (status, decision) = if let Some(measurement) = fresh {
                tally(&gate.name, find(&gate.name), measurement, model)
            } else {
                let status = find(&gate.name)
                    .cloned()
                    .unwrap_or_else(|| unmeasured(&gate.name));
                let decision = decide(&status, model);
                (status, decision)
            };
            gates.push(status);
            configured.push(decision);
        }
        self.status.stages[index].gates = gates;
        let configured = combine(&configured);
        let why = if configured == GateDecision::Fail
            || (health_decision == GateDecision::Fail && !by_deadline)
        {
            reason::GATE_FAILED
        } else {
            reason::PROGRESS_DEADLINE_EXCEEDED
        };
        Verdicts {
            health: health_decision,
            configured,
            why,
        }
    }

    /// The gates a stage configures (its own and its Pipeline's).
    pub(super) fn configured_gates(&self, stage: &str) -> Vec<Gate> {
        self.stage_spec(stage)
            .map(|s| s.gates.clone())
            .unwrap_or_default()
    }

    /// Every gate of the stage, its verdict, value and message, for messages.
    pub(super) fn gate_summary(&self, index: usize) -> String {
        self.status.stages[index]
            .gates
            .iter()
            .map(|g| {
                let value = g
                    .value
                    .as_ref()
                    .map_or_else(String::new, |v| format!(", value {v}"));
                format!("{}: {:?}{value} ({})", g.name, g.verdict, g.message)
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The configured gates that do not pass yet, for messages.
    fn waiting_gates(&self, index: usize) -> String {
        let name = self.status.stages[index].name.clone();
        self.configured_gates(&name)
            .iter()
            .filter_map(|gate| {
                let status = self.status.stages[index]
                    .gates
                    .iter()
                    .find(|g| g.name == gate.name)?;
                let model = GateModel::of(gate);
                (decide(status, model) != GateDecision::Pass).then(|| {
                    format!(
                        "{} ({}/{} passing, {:?}: {})",
                        gate.name,
                        status.successes.min(model.count),
                        model.count,
                        status.verdict,
                        status.message
                    )
                })
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// A configured gate stayed inconclusive past its limit with policy Pause: the
    /// release holds (phase `Paused`, the stage does not move on) and asks a person to
    /// look, on the conditions (reason `GateInconclusive`, `Stalled=True`) and with one
    /// Warning Event when the hold starts. It continues by itself with the gate's next
    /// conclusive measurement; `spec.abort` ends it.
    pub(super) fn hold_on_inconclusive(&mut self, index: usize, at: &str) {
        let name = self.status.stages[index].name.clone();
        let held: Vec<String> = self
            .configured_gates(&name)
            .iter()
            .filter_map(|gate| {
                let status = self.status.stages[index]
                    .gates
                    .iter()
                    .find(|g| g.name == gate.name)?;
                let model = GateModel::of(gate);
                (decide(status, model) == GateDecision::Hold).then(|| {
                    format!(
                        "gate {} gave {} inconclusive results in a row (inconclusiveLimit {}), the last: {}",
                        gate.name,
                        status.inconclusive,
                        model.inconclusive_limit.unwrap_or_default(),
                        status.message
                    )
                })
            })
            .collect();
        let message = format!(
            "stage {name} {at} holds: {}. A person should check what the gate measures; the \
             release continues by itself as soon as the gate gives a conclusive result, or \
             abort it (spec.abort: true) to roll the stage back",
            held.join("; ")
        );
        let said = self
            .input
            .status
            .and_then(|s| condition::find(&s.conditions, STALLED))
            .is_some_and(|c| c.reason == reason::GATE_INCONCLUSIVE);
        if !said {
            self.record(
                Some(&name),
                reason::GATE_INCONCLUSIVE,
                message.clone(),
                true,
            );
        }
        self.status.phase = Some(ReleasePhase::Paused);
        self.status.message = Some(message.clone());
        self.status.stages[index].message = Some(reason::GATE_INCONCLUSIVE.into());
        self.held = Some(message);
        self.requeue(WAIT_POLL);
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
            let verdicts = self.evaluate_gates(index, target, deadline_passed);
            if verdicts.failed() {
                let summary = self.gate_summary(index);
                self.roll_back(index, verdicts.why, format!("at {weight}%: {summary}"));
                return;
            }
            if verdicts.held() {
                self.hold_on_inconclusive(index, &format!("at {weight}% ({position})"));
                return;
            }
            self.status.message = Some(format!(
                "stage {name}: {weight}% ({position}), {}",
                self.gate_summary(index)
            ));
            if verdicts.health != GateDecision::Pass {
                self.requeue(remaining(now, deadline_at).clamp(Duration::from_secs(1), WAIT_POLL));
            } else if verdicts.configured != GateDecision::Pass {
                // The pods are ready; the configured gates' next measurements move on.
                self.requeue(WAIT_POLL);
            }
            let done = verdicts.all_pass() && self.plan.actions.is_empty();
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
            // A pause holds the weight of the step before it, not the canary's size: when
            // the stable Deployment's replicas change meanwhile (an autoscaler), the
            // canary follows, as in a setWeight step, so that it stays `w` % of the pods.
            if let HealthTarget::Canary { weight } = target {
                self.plan_canary(index, weight);
            }
            // During a pause the built-in gate only watches for failures (its deadline
            // was the setWeight step's); the configured gates must pass before the pause
            // may end.
            let verdicts = self.evaluate_gates(index, target, false);
            if verdicts.failed() {
                let summary = self.gate_summary(index);
                self.roll_back(
                    index,
                    verdicts.why,
                    format!("during a pause at {current_weight}%: {summary}"),
                );
                return;
            }
            if verdicts.held() {
                self.hold_on_inconclusive(
                    index,
                    &format!("during a pause at {current_weight}% ({position})"),
                );
                return;
            }
            let gates_pass = verdicts.configured == GateDecision::Pass;
            let over = if let Some(text) = step.pause.as_ref().and_then(|p| p.duration.as_deref()) {
                let until = after(step_started, duration_or(Some(text), Duration::ZERO));
                let over = now >= until;
                if !over {
                    self.requeue(remaining(now, until));
                    self.status.message = Some(format!(
                        "stage {name}: {current_weight}% ({position}), pausing {text}"
                    ));
                }
                over
            } else {
                let key = format!("{name}/{step_index}");
                let promoted = self.input.annotations.get(PROMOTE_ANNOTATION) == Some(&key);
                if !promoted {
                    self.status.phase = Some(ReleasePhase::Paused);
                    self.status.message = Some(format!(
                        "stage {name}: {current_weight}% ({position}), waiting for promotion: kubectl stagecoach promote (annotation {PROMOTE_ANNOTATION}={key})"
                    ));
                    self.status.stages[index].message = Some(reason::WAITING_FOR_PROMOTION.into());
                }
                promoted
            };
            if over && !gates_pass {
                self.status.message = Some(format!(
                    "stage {name}: {current_weight}% ({position}), pause over, waiting for gates: {}",
                    self.waiting_gates(index)
                ));
                self.requeue(WAIT_POLL);
            }
            over && gates_pass
        };
        if self.status.stages[index].message.as_deref() == Some(reason::GATE_INCONCLUSIVE) {
            // The hold ended with a conclusive measurement.
            self.status.stages[index].message = None;
        }

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
        if step_index + 1 < steps.len() {
            // A new step is judged on its own measurements. After the last step the
            // results stay: they are the stage's, in status and the closing record.
            stage.gates.clear();
        }
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
            // Watch at once: the gates are evaluated from the start of early life support.
            self.requeue(Duration::ZERO);
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
        let verdicts = self.evaluate_gates(index, HealthTarget::Steady, false);
        if verdicts.failed() {
            let summary = self.gate_summary(index);
            self.roll_back(
                index,
                reason::EARLY_LIFE_SUPPORT_FAILED,
                format!("during early life support: {summary}"),
            );
            return;
        }
        if verdicts.held() {
            self.hold_on_inconclusive(index, "in early life support");
            return;
        }
        if self.status.stages[index].message.as_deref() == Some(reason::GATE_INCONCLUSIVE) {
            self.status.stages[index].message = None;
        }
        let start = self.status.stages[index]
            .step_started_at
            .unwrap_or(self.now());
        let until = after(start, self.early_life_duration(&name));
        self.status.phase = Some(ReleasePhase::EarlyLifeSupport);
        if self.now() >= until && verdicts.configured != GateDecision::Pass {
            // Time is up, but a configured gate does not pass right now: early life
            // support ends on a passing result, never on an inconclusive one.
            self.status.message = Some(format!(
                "early life support in {name} is over once the gates pass: {}",
                self.waiting_gates(index)
            ));
            self.requeue(WAIT_POLL);
        } else if self.now() >= until {
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
