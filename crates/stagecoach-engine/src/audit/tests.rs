//! Audit tests: which decisions a status write makes, each once.

#![allow(clippy::unwrap_used)] // test fixtures

use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;
use stagecoach_api::release::ReleaseStatus;

use super::*;

fn t(seconds: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 9, 0, 0).unwrap() + chrono::Duration::seconds(seconds)
}

fn ts(seconds: i64) -> String {
    t(seconds).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn status(value: serde_json::Value) -> ReleaseStatus {
    serde_json::from_value(value).unwrap()
}

fn shape(entries: &[Entry]) -> Vec<(&str, &str, &str, &str, &str)> {
    entries
        .iter()
        .map(|e| {
            (
                e.actor.as_str(),
                e.action.as_str(),
                e.stage.as_str(),
                e.outcome.as_str(),
                e.reason.as_str(),
            )
        })
        .collect()
}

#[test]
fn a_stage_start_is_one_decision() {
    let before = status(
        json!({"phase": "Pending", "stages": [{"name": "dev", "namespace": "d", "phase": "Pending"}]}),
    );
    let after = status(json!({
        "phase": "Progressing",
        "stages": [{"name": "dev", "namespace": "d", "phase": "Progressing"}],
        "timeline": [{"at": ts(1), "stage": "dev", "reason": "StageStarted", "message": "stage dev started"}]
    }));
    let entries = decisions(Some(&before), &after, t(1));
    assert_eq!(
        shape(&entries),
        [("stagecoach", "StageStarted", "dev", "Progressing", "")]
    );
    assert_eq!(entries[0].message, "stage dev started");
    // Written again unchanged: nothing new.
    assert!(decisions(Some(&after), &after, t(2)).is_empty());
}

#[test]
fn approvals_name_their_approver_and_a_rollback_its_reason() {
    let before = status(json!({
        "phase": "AwaitingApproval",
        "stages": [{"name": "prod", "namespace": "p", "phase": "Pending"}],
        "timeline": [{"at": ts(0), "stage": "prod", "reason": "AwaitingApproval", "message": "waiting"}]
    }));
    let entered = status(json!({
        "phase": "Progressing",
        "stages": [{"name": "prod", "namespace": "p", "phase": "Progressing"}],
        "approvals": [{"stage": "prod", "decision": "Approve", "approver": "alice", "digest": "sha256:d",
                       "at": ts(5), "approval": "a1", "override": true, "comment": "go"}],
        "timeline": [
            {"at": ts(0), "stage": "prod", "reason": "AwaitingApproval", "message": "waiting"},
            {"at": ts(6), "stage": "prod", "reason": "Approved", "message": "approved by alice"},
            {"at": ts(6), "stage": "prod", "reason": "StageStarted", "message": "stage prod started"}
        ]
    }));
    let entries = decisions(Some(&before), &entered, t(6));
    assert_eq!(
        shape(&entries),
        [
            ("alice", "ApprovalCounted", "prod", "Approve", "Override"),
            ("stagecoach", "Approved", "prod", "Progressing", ""),
            ("stagecoach", "StageStarted", "prod", "Progressing", ""),
        ]
    );
    assert!(
        entries[0].message.contains("sha256:d"),
        "{}",
        entries[0].message
    );

    let mut rolled = entered.clone();
    rolled.phase = Some(stagecoach_api::release::ReleasePhase::RolledBack);
    rolled.completed_at = Some(t(20));
    rolled.stages[0].phase = stagecoach_api::release::StagePhase::RolledBack;
    rolled.timeline.push(
        serde_json::from_value(json!({"at": ts(20), "stage": "prod", "reason": "RolledBack", "message": "rolled back"}))
            .unwrap(),
    );
    rolled.rollbacks.push(
        serde_json::from_value(
            json!({"at": ts(20), "stage": "prod", "reason": "GateFailed", "message": "m"}),
        )
        .unwrap(),
    );
    assert_eq!(
        shape(&decisions(Some(&entered), &rolled, t(20))),
        [
            (
                "stagecoach",
                "RolledBack",
                "prod",
                "RolledBack",
                "GateFailed"
            ),
            ("stagecoach", "ReleaseEnded", "", "RolledBack", ""),
        ]
    );
}

#[test]
fn an_end_the_timeline_does_not_record_is_one_decision() {
    let before = status(json!({"phase": "Pending"}));
    let after =
        status(json!({"phase": "Superseded", "completedAt": ts(3), "message": "superseded by b"}));
    let entries = decisions(Some(&before), &after, t(3));
    assert_eq!(
        shape(&entries),
        [("stagecoach", "ReleaseEnded", "", "Superseded", "")]
    );
    assert_eq!(entries[0].at, t(3));
    assert!(decisions(Some(&after), &after, t(4)).is_empty());
}

#[test]
fn deliveries_are_decisions_once() {
    let pending = status(json!({
        "phase": "Succeeded",
        "notifications": [
            {"id": "e1", "event": "Closed", "receiver": "clients", "at": ts(0), "attempts": 0},
            {"id": "e1", "event": "Closed", "receiver": "ops", "at": ts(0), "attempts": 1,
             "lastError": "503", "nextAttemptAt": ts(2)}
        ]
    }));
    let mut settled = pending.clone();
    settled.notifications[0].attempts = 1;
    settled.notifications[0].delivered_at = Some(t(1));
    settled.notifications[1].attempts = 2;
    settled.notifications[1].next_attempt_at = None;
    let entries = decisions(Some(&pending), &settled, t(3));
    assert_eq!(
        shape(&entries),
        [
            (
                "stagecoach",
                "NotificationDelivered",
                "",
                "Delivered",
                "clients/Closed"
            ),
            (
                "stagecoach",
                "NotificationGivenUp",
                "",
                "GivenUp",
                "ops/Closed"
            ),
        ]
    );
    assert!(
        entries[1].message.ends_with(": 503"),
        "{}",
        entries[1].message
    );
    assert!(decisions(Some(&settled), &settled, t(4)).is_empty());
}

#[test]
fn a_bounded_timeline_that_dropped_old_entries_reports_only_the_new_ones() {
    let entry = |at: i64| json!({"at": ts(at), "stage": "dev", "reason": "StepCompleted", "message": "step"});
    let before =
        status(json!({"phase": "Progressing", "timeline": [entry(1), entry(2), entry(3)]}));
    let after = status(json!({"phase": "Progressing", "timeline": [entry(2), entry(3), entry(4)]}));
    let entries = decisions(Some(&before), &after, t(4));
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].at, t(4));
    // Two equal entries where there was one: one is new.
    let twice = status(json!({"phase": "Progressing", "timeline": [entry(2), entry(3), entry(3)]}));
    assert_eq!(decisions(Some(&before), &twice, t(4)).len(), 1);
}
