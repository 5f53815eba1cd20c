//! The planner: endings (rollback, failure, restore actions, the closing record).

#![allow(clippy::wildcard_imports)] // a part of the planner: it shares the planner's imports

use super::*;

impl Planner<'_> {
    // ----- endings ----------------------------------------------------------------------------

    /// Restores every workload of the stage to its recorded template, deletes canaries,
    /// and ends the release as RolledBack.
    #[allow(clippy::needless_pass_by_value)] // callers build the message for this call
    pub(super) fn roll_back(&mut self, index: usize, why: &'static str, message: String) {
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
    pub(super) fn end_stage(
        &mut self,
        index: usize,
        phase: StagePhase,
        message: &str,
    ) -> DateTime<Utc> {
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
    pub(super) fn restore_actions(&mut self, index: usize) -> Vec<String> {
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
    pub(super) fn converge_terminal(&mut self) {
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

    pub(super) fn skip_from(&mut self, index: usize) {
        for stage in self.status.stages.iter_mut().skip(index) {
            if stage.phase == StagePhase::Pending {
                stage.phase = StagePhase::Skipped;
            }
        }
    }

    pub(super) fn finish_release(&mut self, phase: ReleasePhase, message: String) {
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
}
