//! The planner: the world changed under the release (a Deployment deleted or edited by
//! someone else, the Release itself deleted).

#![allow(clippy::wildcard_imports)] // a part of the planner: it shares the planner's imports

use super::conditions::static_reason;
use super::*;

impl Planner<'_> {
    // ----- the world changed under the release ------------------------------------------------

    /// A Deployment of the stage in progress is gone: nothing can be restored for it, so
    /// the stage fails at once (phase `Failed`, reason `DeploymentDeleted`, never
    /// `RolledBack`), its canaries are removed and the stage's other Deployments go back
    /// to their recorded revisions.
    pub(super) fn fail_if_deployment_deleted(&mut self, index: usize) -> bool {
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
    pub(super) fn hold_on_outside_edit(&mut self, index: usize) -> bool {
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
    pub(super) fn end_for_deletion(&mut self) {
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
            StagePhase::Rejected => {
                self.finish_release(ReleasePhase::Rejected, "rejected by an approver".into());
            }
            StagePhase::Succeeded | StagePhase::Skipped => {}
        }
    }

    /// Why the release ended badly, for conditions and Events: a failed stage (its
    /// Deployment deleted) or the last rollback.
    pub(super) fn failure(&self) -> (&'static str, String) {
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
pub(super) fn first_difference(before: &Value, after: &Value) -> Option<(String, Value)> {
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
