//! Notifications: which events of a release the receivers of its Pipeline are told
//! about, what each delivery did, and when to try again.
//!
//! Everything that must survive the operator lives in `status.notifications`: one
//! [`NotificationRecord`] per (event, receiver), written in the same status write as the
//! transition that caused it. The IO shell sends what [`due`] lists and reports each
//! attempt as an [`Outcome`]; the next reconcile folds the outcomes into the records
//! ([`settle`]) before planning, so the planner sees `status.announcedAt` as soon as an
//! `Announced` event has arrived somewhere. A receiver that is down therefore costs status
//! writes, never a step of a rollout: nothing in the planner waits for a delivery except
//! the notice of a major release, which counts from `announcedAt`.
//!
//! # Which events
//!
//! - **Announced**: once per release, as soon as it is accepted, to every receiver that
//!   wants it for the release's type, until one delivery has arrived
//!   (`status.announcedAt`).
//! - **ApprovalRequired, Approved, Rejected, StageStarted, StageSucceeded, RolledBack,
//!   EarlyLifeSupportStarted**: one per timeline entry of the matching reason (see
//!   [`event_of_reason`]).
//! - **Closed**: once, when the release reaches a final phase.
//!
//! Only occurrences that are new in a plan (in its status, not in the status it started
//! from) get records, so a Pipeline that gains a receiver, or an operator upgraded under
//! releases that have long finished, never replays history, and a record dropped by the
//! bound is never made again.
//!
//! # Ids
//!
//! An event's id is a hash of the release's uid, the event, its stage and time (and an
//! ordinal among equal timeline entries): the same occurrence always has the same id,
//! for every receiver and every attempt, so a receiver drops duplicates by id.
//! `Announced` and `Closed` happen once per release; their ids hash the uid and the event
//! alone.

mod render;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};
use stagecoach_api::condition::{self, ConditionStatus};
use stagecoach_api::pipeline::{NotificationEvent, Receiver};
use stagecoach_api::release::{NotificationRecord, ReleasePhase, ReleaseStatus, ReleaseType};

use crate::acceptance::ACCEPTED;
use crate::pipeline::Governing;
use crate::release::plan::reason;
use crate::release::{Plan, PlanInput, plan_release};

pub use render::{Rendered, Subject, cloudevent, headline, render, slack, source};

/// Records kept in `status.notifications`.
pub const RECORD_LIMIT: usize = 100;
/// Wait after the first failed attempt; it doubles with every further failure.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between two attempts, unless the operator is told otherwise.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(300);
/// An event not delivered this long after it happened is given up (no further attempt),
/// except the `Announced` event of a live release, which its notice waits for.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Longest `lastError` kept, in characters.
pub const ERROR_LIMIT: usize = 300;

/// The name of an event as written in Pipelines and in the CloudEvents `type`.
pub fn event_name(event: NotificationEvent) -> &'static str {
    match event {
        NotificationEvent::Announced => "Announced",
        NotificationEvent::ApprovalRequired => "ApprovalRequired",
        NotificationEvent::Approved => "Approved",
        NotificationEvent::Rejected => "Rejected",
        NotificationEvent::StageStarted => "StageStarted",
        NotificationEvent::StageSucceeded => "StageSucceeded",
        NotificationEvent::RolledBack => "RolledBack",
        NotificationEvent::EarlyLifeSupportStarted => "EarlyLifeSupportStarted",
        NotificationEvent::Closed => "Closed",
    }
}

/// Every event, in the order of a release's life.
pub const EVENTS: [NotificationEvent; 9] = [
    NotificationEvent::Announced,
    NotificationEvent::ApprovalRequired,
    NotificationEvent::Approved,
    NotificationEvent::Rejected,
    NotificationEvent::StageStarted,
    NotificationEvent::StageSucceeded,
    NotificationEvent::RolledBack,
    NotificationEvent::EarlyLifeSupportStarted,
    NotificationEvent::Closed,
];

/// The event a timeline entry of this reason is, if it is one.
pub fn event_of_reason(timeline_reason: &str) -> Option<NotificationEvent> {
    Some(match timeline_reason {
        reason::AWAITING_APPROVAL => NotificationEvent::ApprovalRequired,
        reason::APPROVED => NotificationEvent::Approved,
        reason::REJECTED => NotificationEvent::Rejected,
        reason::STAGE_STARTED => NotificationEvent::StageStarted,
        reason::STAGE_SUCCEEDED => NotificationEvent::StageSucceeded,
        reason::ROLLED_BACK => NotificationEvent::RolledBack,
        reason::EARLY_LIFE_SUPPORT => NotificationEvent::EarlyLifeSupportStarted,
        _ => return None,
    })
}

/// The timeline reason of an event that comes from the timeline.
pub fn reason_of_event(event: NotificationEvent) -> Option<&'static str> {
    Some(match event {
        NotificationEvent::ApprovalRequired => reason::AWAITING_APPROVAL,
        NotificationEvent::Approved => reason::APPROVED,
        NotificationEvent::Rejected => reason::REJECTED,
        NotificationEvent::StageStarted => reason::STAGE_STARTED,
        NotificationEvent::StageSucceeded => reason::STAGE_SUCCEEDED,
        NotificationEvent::RolledBack => reason::ROLLED_BACK,
        NotificationEvent::EarlyLifeSupportStarted => reason::EARLY_LIFE_SUPPORT,
        NotificationEvent::Announced | NotificationEvent::Closed => return None,
    })
}

/// One thing that happened to a release that receivers may hear about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Occurrence {
    pub id: String,
    pub event: NotificationEvent,
    pub stage: Option<String>,
    pub at: DateTime<Utc>,
}

/// The deterministic id of an event: a hash of the release uid, the event, the stage,
/// the time (none for the once-per-release events) and an ordinal among equal entries.
pub fn event_id(
    uid: &str,
    event: NotificationEvent,
    stage: Option<&str>,
    at: Option<DateTime<Utc>>,
    ordinal: usize,
) -> String {
    let mut hasher = Sha256::new();
    for part in [
        uid,
        event_name(event),
        stage.unwrap_or_default(),
        &at.map(|t| t.timestamp().to_string()).unwrap_or_default(),
        &ordinal.to_string(),
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let mut id = String::with_capacity(32);
    for byte in &hasher.finalize()[..16] {
        let _ = write!(id, "{byte:02x}");
    }
    id
}

/// The events a status records, oldest first: one per timeline entry that is an event,
/// then `Closed` once the release has ended. (`Announced` depends on the receivers, not
/// on the status alone: see [`record_new`].)
pub fn occurrences(uid: &str, status: &ReleaseStatus) -> Vec<Occurrence> {
    let mut found = Vec::new();
    for (index, entry) in status.timeline.iter().enumerate() {
        let Some(event) = event_of_reason(&entry.reason) else {
            continue;
        };
        let ordinal = status.timeline[..index]
            .iter()
            .filter(|e| e.reason == entry.reason && e.stage == entry.stage && e.at == entry.at)
            .count();
        found.push(Occurrence {
            id: event_id(uid, event, entry.stage.as_deref(), Some(entry.at), ordinal),
            event,
            stage: entry.stage.clone(),
            at: entry.at,
        });
    }
    if let (Some(phase), Some(at)) = (status.phase, status.completed_at)
        && phase.is_terminal()
    {
        found.push(Occurrence {
            id: event_id(uid, NotificationEvent::Closed, None, None, 0),
            event: NotificationEvent::Closed,
            stage: None,
            at,
        });
    }
    found
}

/// The outcome of one delivery attempt, as the IO shell reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The event's id.
    pub id: String,
    pub receiver: String,
    /// Which attempt this was: the record's `attempts` plus one when it was sent.
    pub attempt: i32,
    /// When it ended (whole seconds, like every status time).
    pub at: DateTime<Utc>,
    /// Why it failed; `None` when the receiver accepted it.
    pub error: Option<String>,
}

/// What the notifications need besides the planner's input.
#[derive(Clone, Copy, Debug)]
pub struct Deliveries<'a> {
    /// The Release's `metadata.uid`, part of every event id.
    pub uid: &'a str,
    /// Attempts that ended since the status was last written (older ones are ignored).
    pub outcomes: &'a [Outcome],
    /// The longest wait between two attempts.
    pub max_backoff: Duration,
}

/// [`plan_release`] with the notifications: the outcomes are folded into the status
/// before planning (so the planner sees `announcedAt`), the events the plan produces get
/// their records after it, and the plan asks to be reconciled again when the next retry
/// is due.
pub fn plan(input: &PlanInput<'_>, deliveries: &Deliveries<'_>) -> Plan {
    let settled = input.status.map(|status| {
        let mut status = status.clone();
        settle(&mut status, deliveries);
        status
    });
    let mut plan = plan_release(&PlanInput {
        status: settled.as_ref(),
        ..input.clone()
    });
    let receivers = match input.governing {
        Governing::Pipeline(_, spec) => spec.notifications.as_slice(),
        Governing::None | Governing::Conflict(_) => &[],
    };
    record_new(
        settled.as_ref(),
        &mut plan.status,
        deliveries.uid,
        receivers,
        input.spec.release_type,
        input.now,
    );
    if let Some(next) = next_attempt(&plan.status) {
        let wait = (next - input.now).to_std().unwrap_or(Duration::ZERO);
        plan.requeue_after = Some(plan.requeue_after.map_or(wait, |r| r.min(wait)));
    }
    plan
}

/// Folds delivery outcomes into the records they are about: attempts, `deliveredAt` or
/// `lastError` with the time of the next attempt; then `announcedAt` from the first
/// delivered `Announced`. An outcome whose attempt the record already counts changes
/// nothing, so folding the same outcomes twice is folding them once.
pub fn settle(status: &mut ReleaseStatus, deliveries: &Deliveries<'_>) {
    let live = !status.phase.is_some_and(ReleasePhase::is_terminal);
    for outcome in deliveries.outcomes {
        let Some(record) = status
            .notifications
            .iter_mut()
            .find(|r| r.id == outcome.id && r.receiver == outcome.receiver)
        else {
            continue;
        };
        if outcome.attempt <= record.attempts || record.delivered_at.is_some() {
            continue;
        }
        record.attempts = outcome.attempt;
        match &outcome.error {
            None => {
                record.delivered_at = Some(outcome.at);
                record.last_error = None;
                record.next_attempt_at = None;
            }
            Some(error) => {
                record.last_error = Some(truncate(error, ERROR_LIMIT));
                let keeps_trying = live && record.event == NotificationEvent::Announced;
                let age = (outcome.at - record.at).to_std().unwrap_or(Duration::ZERO);
                record.next_attempt_at = (keeps_trying || age < GIVE_UP_AFTER).then(|| {
                    outcome.at
                        + chrono::Duration::from_std(backoff(
                            outcome.attempt,
                            deliveries.max_backoff,
                        ))
                        .unwrap_or(chrono::Duration::MAX)
                });
            }
        }
    }
    if status.announced_at.is_none() {
        status.announced_at = announced_at(&status.notifications);
    }
}

/// When the release was announced: the first delivery of an `Announced` event.
pub fn announced_at(records: &[NotificationRecord]) -> Option<DateTime<Utc>> {
    records
        .iter()
        .filter(|r| r.event == NotificationEvent::Announced)
        .filter_map(|r| r.delivered_at)
        .min()
}

/// How long to wait after failed attempt number `attempt` (1-based): one second,
/// doubling, at most `max` (and never less than a second).
pub fn backoff(attempt: i32, max: Duration) -> Duration {
    let doublings = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(0)
        .min(20);
    (FIRST_BACKOFF * 2u32.pow(doublings)).min(max.max(FIRST_BACKOFF))
}

/// Adds a record per (new event, receiver that wants it) to `after`, then bounds the
/// list. New means in `after` and not in `before` (the status the plan started from),
/// plus `Announced` for every receiver that wants it and has none yet, while the release
/// is accepted, live and not announced.
pub fn record_new(
    before: Option<&ReleaseStatus>,
    after: &mut ReleaseStatus,
    uid: &str,
    receivers: &[Receiver],
    release_type: ReleaseType,
    now: DateTime<Utc>,
) {
    let mut new: Vec<Occurrence> = Vec::new();
    let accepted = condition::find(&after.conditions, ACCEPTED)
        .is_some_and(|c| c.status == ConditionStatus::True);
    let live = !after.phase.is_some_and(ReleasePhase::is_terminal);
    if accepted && live && after.announced_at.is_none() {
        new.push(Occurrence {
            id: event_id(uid, NotificationEvent::Announced, None, None, 0),
            event: NotificationEvent::Announced,
            stage: None,
            at: now,
        });
    }
    let known: BTreeSet<String> = before
        .map(|b| occurrences(uid, b).into_iter().map(|o| o.id).collect())
        .unwrap_or_default();
    new.extend(
        occurrences(uid, after)
            .into_iter()
            .filter(|o| !known.contains(&o.id)),
    );
    for occurrence in new {
        for receiver in receivers
            .iter()
            .filter(|r| r.wants(occurrence.event, release_type))
        {
            let exists = after
                .notifications
                .iter()
                .any(|r| r.id == occurrence.id && r.receiver == receiver.name);
            if !exists {
                after.notifications.push(NotificationRecord {
                    id: occurrence.id.clone(),
                    event: occurrence.event,
                    receiver: receiver.name.clone(),
                    stage: occurrence.stage.clone(),
                    at: occurrence.at,
                    attempts: 0,
                    delivered_at: None,
                    last_error: None,
                    next_attempt_at: None,
                });
            }
        }
    }
    bound(&mut after.notifications);
}

/// Whether a record will be tried again (or for the first time).
pub fn is_pending(record: &NotificationRecord) -> bool {
    record.delivered_at.is_none() && (record.attempts == 0 || record.next_attempt_at.is_some())
}

/// Keeps at most [`RECORD_LIMIT`] records: the oldest finished ones (delivered, or given
/// up) go first, then the oldest pending ones; a pending `Announced` is kept last of all,
/// since a major release's notice waits for it.
pub fn bound(records: &mut Vec<NotificationRecord>) {
    let rank = |r: &NotificationRecord| match (is_pending(r), r.event) {
        (false, _) => 0,
        (true, NotificationEvent::Announced) => 2,
        (true, _) => 1,
    };
    for drop_rank in 0..=2 {
        while records.len() > RECORD_LIMIT {
            match records.iter().position(|r| rank(r) == drop_rank) {
                Some(index) => {
                    records.remove(index);
                }
                None => break,
            }
        }
    }
}

/// The records to send now: not delivered, not given up, and either never tried or due.
pub fn due(status: &ReleaseStatus, now: DateTime<Utc>) -> Vec<&NotificationRecord> {
    status
        .notifications
        .iter()
        .filter(|r| is_pending(r) && r.next_attempt_at.is_none_or(|t| t <= now))
        .collect()
}

/// The earliest time a failed delivery is to be tried again.
pub fn next_attempt(status: &ReleaseStatus) -> Option<DateTime<Utc>> {
    status
        .notifications
        .iter()
        .filter(|r| r.delivered_at.is_none())
        .filter_map(|r| r.next_attempt_at)
        .min()
}

fn truncate(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(limit.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests;
