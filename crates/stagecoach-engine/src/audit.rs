//! The audit trail: every decision recorded in a release's status, as entries with fixed
//! fields that the operator writes as one structured log line each.
//!
//! A decision is what a status write adds: a timeline entry (a stage started, a step
//! completed, a rollback, an approval let the release in...), an end the timeline does
//! not carry (Superseded, Failed), an approval or rejection counted (its actor is the
//! approver), a notification delivered to a receiver or given up. [`decisions`] compares
//! the status before a write with the status written, so each decision is logged once,
//! by the write that made it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use stagecoach_api::approval::Decision;
use stagecoach_api::release::{ReleaseStatus, TimelineEntry};

use crate::notify::event_name;
use crate::release::plan::reason;

/// The actor of the decisions the operator takes itself.
pub const OPERATOR: &str = "stagecoach";

/// Actions besides the timeline's reasons.
pub mod action {
    /// An Approval with decision Approve was counted for a stage.
    pub const APPROVAL_COUNTED: &str = "ApprovalCounted";
    /// An Approval with decision Reject was counted for a stage.
    pub const REJECTION_COUNTED: &str = "RejectionCounted";
    /// The release reached a final phase (its outcome): one per release.
    pub const RELEASE_ENDED: &str = "ReleaseEnded";
    /// A receiver accepted a notification.
    pub const NOTIFICATION_DELIVERED: &str = "NotificationDelivered";
    /// A notification will not be tried again.
    pub const NOTIFICATION_GIVEN_UP: &str = "NotificationGivenUp";
    /// The release's audit record was written.
    pub const RECORD_WRITTEN: &str = "RecordWritten";
    /// An audit record was deleted by the Pipeline's retention.
    pub const RECORD_PRUNED: &str = "RecordPruned";
}

/// One decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// When it was taken.
    pub at: DateTime<Utc>,
    /// Who took it: [`OPERATOR`], or the approver of an approval.
    pub actor: String,
    /// What was decided, in CamelCase: a timeline reason (StageStarted, RolledBack, ...)
    /// or one of [`action`].
    pub action: String,
    /// The stage it is about; empty for the release as a whole.
    pub stage: String,
    /// What came of it: the stage's phase after it (the release's phase for the release
    /// as a whole), the decision of an approval, Delivered or GivenUp.
    pub outcome: String,
    /// Why, when the action has a reason of its own: a rollback's reason
    /// (GateFailed, ...), the receiver and event of a notification.
    pub reason: String,
    /// Details for people.
    pub message: String,
}

/// What makes two timeline entries the same: time, stage, reason, message.
type EntryKey<'a> = (DateTime<Utc>, Option<&'a str>, &'a str, &'a str);

/// Timeline entries of `after` that `before` does not have (as a multiset: entries with
/// the same time, stage, reason and message are counted).
fn new_entries<'a>(before: &[TimelineEntry], after: &'a [TimelineEntry]) -> Vec<&'a TimelineEntry> {
    let mut seen: BTreeMap<EntryKey<'_>, usize> = BTreeMap::new();
    for t in before {
        let key = (
            t.at,
            t.stage.as_deref(),
            t.reason.as_str(),
            t.message.as_str(),
        );
        *seen.entry(key).or_default() += 1;
    }
    after
        .iter()
        .filter(|t| {
            let key = (
                t.at,
                t.stage.as_deref(),
                t.reason.as_str(),
                t.message.as_str(),
            );
            match seen.get_mut(&key) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    false
                }
                _ => true,
            }
        })
        .collect()
}

/// The decisions a status write makes: what `after` (the status written) records that
/// `before` (the status it replaced) did not. Oldest first.
pub fn decisions(
    before: Option<&ReleaseStatus>,
    after: &ReleaseStatus,
    now: DateTime<Utc>,
) -> Vec<Entry> {
    let empty = ReleaseStatus::default();
    let before = before.unwrap_or(&empty);
    // Approvals first: they are what let the release in (or stopped it).
    let mut entries = approvals(before, after, now);
    entries.extend(timeline(before, after));
    // The end of the release, once, whatever ended it.
    if let Some(end) = after.phase.filter(|p| p.is_terminal())
        && before.phase != Some(end)
    {
        entries.push(Entry {
            at: after.completed_at.unwrap_or(now),
            actor: OPERATOR.to_owned(),
            action: action::RELEASE_ENDED.to_owned(),
            stage: String::new(),
            outcome: end.as_str().to_owned(),
            reason: String::new(),
            message: after.message.clone().unwrap_or_default(),
        });
    }
    entries.extend(deliveries(before, after, now));
    entries.sort_by_key(|e| e.at);
    entries
}

/// Approvals and rejections counted for the first time.
fn approvals(before: &ReleaseStatus, after: &ReleaseStatus, now: DateTime<Utc>) -> Vec<Entry> {
    after
        .approvals
        .iter()
        .filter(|a| !before.approvals.contains(a))
        .map(|approval| {
            let (action, outcome) = match approval.decision {
                Decision::Approve => (action::APPROVAL_COUNTED, "Approve"),
                Decision::Reject => (action::REJECTION_COUNTED, "Reject"),
            };
            Entry {
                at: approval.at.unwrap_or(now),
                actor: approval.approver.clone(),
                action: action.to_owned(),
                stage: approval.stage.clone(),
                outcome: outcome.to_owned(),
                reason: if approval.r#override {
                    "Override".to_owned()
                } else {
                    String::new()
                },
                message: format!(
                    "approval {} of digest {}{}",
                    approval.approval,
                    approval.digest,
                    approval
                        .comment
                        .as_deref()
                        .map(|c| format!(": {c}"))
                        .unwrap_or_default()
                ),
            }
        })
        .collect()
}

/// New timeline entries; a rollback's carries the rollback's reason.
fn timeline(before: &ReleaseStatus, after: &ReleaseStatus) -> Vec<Entry> {
    let phase = |stage: Option<&str>| -> String {
        match stage {
            Some(name) => after
                .stages
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.phase.as_str().to_owned()),
            None => after.phase.map(|p| p.as_str().to_owned()),
        }
        .unwrap_or_default()
    };
    new_entries(&before.timeline, &after.timeline)
        .into_iter()
        .map(|t| {
            let why = if t.reason == reason::ROLLED_BACK {
                after
                    .rollbacks
                    .iter()
                    .filter(|r| !before.rollbacks.contains(r))
                    .find(|r| Some(r.stage.as_str()) == t.stage.as_deref())
                    .map(|r| r.reason.clone())
                    .unwrap_or_default()
            } else {
                String::new()
            };
            Entry {
                at: t.at,
                actor: OPERATOR.to_owned(),
                action: t.reason.clone(),
                stage: t.stage.clone().unwrap_or_default(),
                outcome: phase(t.stage.as_deref()),
                reason: why,
                message: t.message.clone(),
            }
        })
        .collect()
}

/// Notifications delivered, or given up, since `before`.
fn deliveries(before: &ReleaseStatus, after: &ReleaseStatus, now: DateTime<Utc>) -> Vec<Entry> {
    let mut entries = Vec::new();
    for record in &after.notifications {
        let was = before
            .notifications
            .iter()
            .find(|r| r.id == record.id && r.receiver == record.receiver);
        let delivered_now =
            record.delivered_at.is_some() && was.is_none_or(|w| w.delivered_at.is_none());
        let given_up = record.delivered_at.is_none()
            && record.attempts > 0
            && record.next_attempt_at.is_none()
            && was.is_some_and(|w| w.next_attempt_at.is_some() || w.attempts < record.attempts);
        let (action, outcome, at) = if delivered_now {
            (
                action::NOTIFICATION_DELIVERED,
                "Delivered",
                record.delivered_at.unwrap_or(now),
            )
        } else if given_up {
            (action::NOTIFICATION_GIVEN_UP, "GivenUp", now)
        } else {
            continue;
        };
        entries.push(Entry {
            at,
            actor: OPERATOR.to_owned(),
            action: action.to_owned(),
            stage: record.stage.clone().unwrap_or_default(),
            outcome: outcome.to_owned(),
            reason: format!("{}/{}", record.receiver, event_name(record.event)),
            message: format!(
                "event {} ({}) to receiver {} after {} attempt(s){}",
                event_name(record.event),
                record.id,
                record.receiver,
                record.attempts,
                record
                    .last_error
                    .as_deref()
                    .filter(|_| !delivered_now)
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
        });
    }
    entries
}

#[cfg(test)]
mod tests;
