//! The planner: conditions (Ready, Progressing, Degraded and kstatus's Reconciling and
//! Stalled), computed from the status at the end of every plan.

#![allow(clippy::wildcard_imports)] // a part of the planner: it shares the planner's imports

use super::*;

impl Planner<'_> {
    // ----- conditions ---------------------------------------------------------------------

    pub(super) fn set_conditions(&mut self) {
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
            Some(ReleasePhase::Rejected) => (ConditionStatus::False, reason::REJECTED),
            Some(ReleasePhase::AwaitingApproval) if accepted => {
                (ConditionStatus::False, reason::AWAITING_APPROVAL)
            }
            Some(ReleasePhase::WaitingForWindow) if accepted => {
                (ConditionStatus::False, reason::WAITING_FOR_WINDOW)
            }
            _ if !accepted => (ConditionStatus::False, reason::INVALID_SPEC),
            Some(ReleasePhase::Paused) if self.held.is_some() => {
                (ConditionStatus::False, reason::GATE_INCONCLUSIVE)
            }
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
            Some(ReleasePhase::Paused) if self.held.is_some() => {
                (ConditionStatus::False, reason::GATE_INCONCLUSIVE)
            }
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
    /// release, a configured gate stays inconclusive past its limit, it was rolled back,
    /// failed or rejected). Neither while it waits on purpose
    /// (paused, a pause without duration, approvals, a release window: `Ready=False`), in
    /// early life support (deployed and
    /// watched: `Ready=True`), or when it ended well.
    pub(super) fn kstatus(&self, accepted: bool) -> (Abnormal, Abnormal) {
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
            (Some(ReleasePhase::Paused), None) if self.held.is_some() => (
                None,
                Some((
                    reason::GATE_INCONCLUSIVE.to_owned(),
                    self.held.clone().unwrap_or_default(),
                )),
            ),
            (Some(ReleasePhase::RolledBack | ReleasePhase::Failed), _) => {
                let (why, text) = self.failure();
                let text = if text.is_empty() { message } else { text };
                (None, Some((why.to_owned(), text)))
            }
            (Some(ReleasePhase::Rejected), _) => {
                (None, Some((reason::REJECTED.to_owned(), message)))
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
pub(super) fn set_abnormal(
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

pub(super) fn static_reason(text: &str) -> &'static str {
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
