//! The planner: entering a stage (record stable revisions, start).

#![allow(clippy::wildcard_imports)] // a part of the planner: it shares the planner's imports

use super::*;

impl Planner<'_> {
    // ----- a stage not yet entered -------------------------------------------------------

    #[allow(clippy::too_many_lines)] // the preconditions of entering a stage, in order
    pub(super) fn enter_stage(&mut self, index: usize) {
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
        let admission = match self.policy_verdict(index) {
            policy::Verdict::Admit(admission) => admission,
            policy::Verdict::Wait | policy::Verdict::Rejected => return,
        };
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
        self.admitted(index, admission);
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
}
