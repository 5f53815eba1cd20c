//! The planner: what the Pipeline's policy says before a stage starts (a reject, the
//! approvals it needs, its windows, freezes and notice).

#![allow(clippy::wildcard_imports)] // a part of the planner: it shares the planner's imports

use super::*;
use crate::pipeline::{Tally, short, tally};
use crate::schedule::{ScheduleDecision, ScheduleInput, WaitReason, decide};
use stagecoach_api::pipeline::NotificationEvent;
use stagecoach_api::release::ApprovalRecord;

/// What lets a release into a stage: recorded in status when the stage starts.
pub(super) struct Admission {
    approvals: Vec<ApprovalRecord>,
    override_by: Option<ApprovalRecord>,
}

/// Whether the policy lets the release start a stage now.
pub(super) enum Verdict {
    /// Start, recording what let it in.
    Admit(Admission),
    /// Not now; the status says why.
    Wait,
    /// Rejected; the release has ended.
    Rejected,
}

impl Planner<'_> {
    /// The approvals of the current digest for stage `name`.
    fn approvals_for(&self, name: &str) -> Tally {
        let digest = self.status.digest.clone().unwrap_or_default();
        let authors: Vec<&str> = self
            .spec()
            .changes
            .iter()
            .flat_map(|c| c.authors.iter().map(String::as_str))
            .collect();
        tally(
            self.input.approvals,
            self.input.name,
            name,
            &digest,
            &authors,
        )
    }

    /// Checks a reject, the approvals and the schedule of stage `index`, in that order.
    /// A release without a Pipeline is always admitted (nothing to check), except that a
    /// Reject still ends it: anyone RBAC lets approve a stage may stop a release there.
    pub(super) fn policy_verdict(&mut self, index: usize) -> Verdict {
        let name = self.status.stages[index].name.clone();
        let tally = self.approvals_for(&name);
        if let Some(rejection) = tally.rejection.clone() {
            self.reject(index, rejection);
            return Verdict::Rejected;
        }
        let release_type = self.spec().release_type;
        let needed = self
            .stage_spec(&name)
            .and_then(|s| s.approval.as_ref())
            .filter(|a| a.applies_to(release_type))
            .map(|a| usize::try_from(a.required).unwrap_or(1).max(1));
        if let Some(required) = needed
            && tally.given() < required
        {
            self.await_approval(index, required, &tally);
            return Verdict::Wait;
        }
        if tally.override_by.is_none()
            && let Some((until, message)) = self.schedule_wait(index)
        {
            self.wait_for_window(index, until, &message);
            return Verdict::Wait;
        }
        self.status.next_window = None;
        Verdict::Admit(Admission {
            approvals: if needed.is_some() {
                tally.approvals
            } else {
                Vec::new()
            },
            override_by: tally.override_by,
        })
    }

    /// When the stage may start, if not now: (earliest time, if known; why).
    fn schedule_wait(&self, index: usize) -> Option<(Option<DateTime<Utc>>, String)> {
        let pipeline = self.pipeline()?;
        let name = &self.status.stages[index].name;
        let policy = pipeline
            .release_types
            .as_ref()
            .and_then(|t| t.get(self.spec().release_type));
        let notice = policy
            .and_then(|p| p.notice.as_deref())
            .and_then(|n| parse_duration(n).ok());
        let windows = policy.map(|p| p.windows.as_slice()).unwrap_or_default();
        let decision = decide(&ScheduleInput {
            stage: name,
            is_last_stage: index + 1 == self.status.stages.len(),
            release_type: self.spec().release_type,
            windows,
            freezes: &pipeline.freezes,
            notice,
            announced_at: self.status.announced_at,
            now: self.now(),
        });
        match decision {
            ScheduleDecision::Open => None,
            ScheduleDecision::Wait {
                until,
                mut message,
                reason,
            } => {
                if reason == WaitReason::NotAnnounced
                    && let Some(failing) = self.failing_announcements()
                {
                    let _ = write!(message, "; {failing}");
                }
                Some((until, message))
            }
        }
    }

    /// Why the Announced notification has not been delivered yet, when a receiver is
    /// refusing it: the wait for a major release's notice says so, not only
    /// `status.notifications`.
    fn failing_announcements(&self) -> Option<String> {
        let failing: Vec<String> = self
            .status
            .notifications
            .iter()
            .filter(|n| n.event == NotificationEvent::Announced && n.delivered_at.is_none())
            .filter_map(|n| {
                n.last_error.as_ref().map(|error| {
                    format!(
                        "receiver {} has not taken the Announced notification ({} attempt{}, last: {error})",
                        n.receiver,
                        n.attempts,
                        if n.attempts == 1 { "" } else { "s" }
                    )
                })
            })
            .collect();
        (!failing.is_empty()).then(|| failing.join("; "))
    }

    fn await_approval(&mut self, index: usize, required: usize, tally: &Tally) {
        let name = self.status.stages[index].name.clone();
        let digest = self.status.digest.clone().unwrap_or_default();
        let given: Vec<&str> = tally
            .approvals
            .iter()
            .map(|a| a.approver.as_str())
            .collect();
        let mut message = format!(
            "stage {name} needs {required} approval{} of this release (digest {}); {} given",
            if required == 1 { "" } else { "s" },
            short(&digest),
            given.len()
        );
        if !given.is_empty() {
            let _ = write!(message, " ({})", given.join(", "));
        }
        if !tally.not_counted.is_empty() {
            let _ = write!(message, "; not counted: {}", tally.not_counted.join("; "));
        }
        let already = self.input.status.is_some_and(|s| {
            s.phase == Some(ReleasePhase::AwaitingApproval)
                && s.current_stage.as_deref() == Some(name.as_str())
        });
        self.status.phase = Some(ReleasePhase::AwaitingApproval);
        self.status.next_window = None;
        self.status.stages[index].message = Some(message.clone());
        self.status.message = Some(message.clone());
        if !already {
            self.record(Some(&name), reason::AWAITING_APPROVAL, message, false);
        }
    }

    fn wait_for_window(&mut self, index: usize, until: Option<DateTime<Utc>>, message: &str) {
        let name = self.status.stages[index].name.clone();
        let already = self.input.status.is_some_and(|s| {
            s.phase == Some(ReleasePhase::WaitingForWindow)
                && s.current_stage.as_deref() == Some(name.as_str())
        });
        let message = format!("stage {name} may not start yet: {message}");
        self.status.phase = Some(ReleasePhase::WaitingForWindow);
        self.status.next_window = until;
        self.status.stages[index].message = Some(message.clone());
        self.status.message = Some(message.clone());
        if !already {
            self.record(Some(&name), reason::WAITING_FOR_WINDOW, message, false);
        }
        match until {
            Some(at) => self.requeue(remaining(self.now(), at)),
            // Not computable (not announced yet): the watch of what changes it wakes us,
            // and a slow poll as a safety net.
            None => self.requeue(Duration::from_secs(60)),
        }
    }

    fn reject(&mut self, index: usize, rejection: ApprovalRecord) {
        let name = self.status.stages[index].name.clone();
        let now = self.now();
        let stage = &mut self.status.stages[index];
        stage.phase = StagePhase::Rejected;
        stage.finished_at = Some(now);
        let mut message = format!(
            "{} rejected the release at stage {name}",
            rejection.approver
        );
        if let Some(comment) = rejection.comment.as_deref().filter(|c| !c.is_empty()) {
            let _ = write!(message, ": {comment}");
        }
        stage.message = Some(message.clone());
        self.skip_from(index + 1);
        self.status.next_window = None;
        self.status.approvals.push(rejection);
        self.plan
            .stage_transitions
            .push((name.clone(), StagePhase::Rejected));
        self.record(Some(&name), reason::REJECTED, message.clone(), true);
        self.finish_release(ReleasePhase::Rejected, message);
    }

    /// The stage starts: what let it in goes into status and the timeline.
    pub(super) fn admitted(&mut self, index: usize, admission: Admission) {
        let name = self.status.stages[index].name.clone();
        if !admission.approvals.is_empty() {
            let who: Vec<&str> = admission
                .approvals
                .iter()
                .map(|a| a.approver.as_str())
                .collect();
            let message = format!("stage {name} approved by {}", who.join(", "));
            self.record(Some(&name), reason::APPROVED, message, false);
        }
        if let Some(by) = &admission.override_by {
            let message = format!(
                "{} overrode the schedule of stage {name}{}",
                by.approver,
                by.comment
                    .as_deref()
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default()
            );
            self.record(Some(&name), reason::OVERRIDDEN, message, true);
        }
        let mut records = admission.approvals;
        if let Some(by) = admission.override_by
            && records.iter().all(|r| r.approval != by.approval)
        {
            records.push(by);
        }
        for record in records {
            if self
                .status
                .approvals
                .iter()
                .all(|r| r.approval != record.approval)
            {
                self.status.approvals.push(record);
            }
        }
    }
}
