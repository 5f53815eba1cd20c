//! Notification tests: which records a status change makes, how outcomes fold in, the
//! bound, `announcedAt`, and the bodies receivers get.

#![allow(clippy::unwrap_used, clippy::too_many_lines)] // test fixtures

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::json;
use stagecoach_api::condition::{Condition, ConditionStatus};
use stagecoach_api::pipeline::{PipelineSpec, WebhookFormat};
use stagecoach_api::release::{
    ReleasePhase, ReleaseSpec, ReleaseStatus, RollbackRecord, StagePhase, StageStatus,
    TimelineEntry,
};

use super::*;
use crate::release::plan::TIMELINE_LIMIT;

const UID: &str = "0b7f6c1e-9f4e-4d7e-8a51-5f1f3c2a9e10";

fn t(seconds: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 9, 0, 0).unwrap() + chrono::Duration::seconds(seconds)
}

fn spec(release_type: &str) -> ReleaseSpec {
    serde_json::from_value(json!({
        "application": "billing",
        "version": "3.0.0",
        "type": release_type,
        "changes": [{"id": "PR-1", "title": "new invoice format", "url": "https://example.com/pr/1"}],
        "notes": "Invoices change shape.",
        "workloads": [{"deployment": "api", "containers": [{"name": "api", "image": "api:3.0.0"}]}]
    }))
    .unwrap()
}

/// Three receivers: clients hear Announced, StageSucceeded, RolledBack and Closed of
/// major releases; the channel hears everything; ops hears only RolledBack.
fn pipeline() -> PipelineSpec {
    serde_json::from_value(json!({
        "stages": [
            {"name": "dev"},
            {"name": "prod", "approval": {"required": 2}}
        ],
        "releaseTypes": {"major": {"notice": "72h"}},
        "notifications": [
            {"name": "clients", "webhook": {"url": "https://hooks.example.com/clients",
                                            "secretRef": {"name": "clients", "key": "token"}},
             "events": ["Announced", "StageSucceeded", "RolledBack", "Closed"],
             "releaseTypes": ["major"]},
            {"name": "channel", "webhook": {"url": "https://hooks.example.com/channel", "format": "slack"}},
            {"name": "ops", "webhook": {"url": "http://ops.example.com/"}, "events": ["RolledBack"]}
        ]
    }))
    .unwrap()
}

fn receivers() -> Vec<Receiver> {
    pipeline().notifications
}

fn entry(at: i64, stage: Option<&str>, reason: &str) -> TimelineEntry {
    TimelineEntry {
        at: t(at),
        stage: stage.map(str::to_owned),
        reason: reason.to_owned(),
        message: format!("{reason} at {at}"),
    }
}

fn accepted(status: ReleaseStatus) -> ReleaseStatus {
    ReleaseStatus {
        conditions: vec![Condition::new(
            ACCEPTED,
            ConditionStatus::True,
            "Valid",
            "",
            Some(1),
            t(0),
        )],
        phase: status.phase.or(Some(ReleasePhase::Progressing)),
        ..status
    }
}

fn with_timeline(entries: Vec<TimelineEntry>) -> ReleaseStatus {
    accepted(ReleaseStatus {
        timeline: entries,
        ..ReleaseStatus::default()
    })
}

fn keys(status: &ReleaseStatus) -> Vec<(NotificationEvent, String, Option<String>)> {
    status
        .notifications
        .iter()
        .map(|r| (r.event, r.receiver.clone(), r.stage.clone()))
        .collect()
}

fn outcome(record: &NotificationRecord, at: i64, error: Option<&str>) -> Outcome {
    Outcome {
        id: record.id.clone(),
        receiver: record.receiver.clone(),
        attempt: record.attempts + 1,
        at: t(at),
        error: error.map(str::to_owned),
    }
}

fn deliveries(outcomes: &[Outcome]) -> Deliveries<'_> {
    Deliveries {
        uid: UID,
        outcomes,
        max_backoff: DEFAULT_MAX_BACKOFF,
    }
}

#[test]
fn ids_are_deterministic_and_tell_occurrences_apart() {
    let status = with_timeline(vec![
        entry(1, Some("dev"), reason::STAGE_STARTED),
        entry(5, Some("dev"), reason::STEP_COMPLETED),
        entry(6, Some("dev"), reason::STAGE_SUCCEEDED),
        entry(7, Some("prod"), reason::STAGE_STARTED),
    ]);
    let first = occurrences(UID, &status);
    assert_eq!(first, occurrences(UID, &status.clone()));
    let events: Vec<NotificationEvent> = first.iter().map(|o| o.event).collect();
    assert_eq!(
        events,
        [
            NotificationEvent::StageStarted,
            NotificationEvent::StageSucceeded,
            NotificationEvent::StageStarted
        ]
    );
    let ids: BTreeSet<&str> = first.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(ids.len(), 3, "distinct occurrences, distinct ids");
    assert!(first.iter().all(|o| o.id.len() == 32));
    // Another release (uid) has other ids for the same history.
    let other = occurrences("another-uid", &status);
    assert!(other.iter().all(|o| !ids.contains(o.id.as_str())));
    // Two equal entries in the same second are two occurrences.
    let twice = with_timeline(vec![
        entry(1, Some("dev"), reason::STAGE_STARTED),
        entry(1, Some("dev"), reason::STAGE_STARTED),
    ]);
    let found = occurrences(UID, &twice);
    assert_ne!(found[0].id, found[1].id);
}

#[test]
fn every_event_maps_to_its_reason_and_back() {
    for event in EVENTS {
        if let Some(reason) = reason_of_event(event) {
            assert_eq!(event_of_reason(reason), Some(event));
        }
        assert_eq!(
            serde_json::to_value(event).unwrap(),
            json!(event_name(event))
        );
    }
    assert_eq!(event_of_reason(reason::STEP_COMPLETED), None);
}

#[test]
fn each_new_event_gets_one_record_per_receiver_that_wants_it() {
    let before = with_timeline(vec![entry(1, Some("dev"), reason::STAGE_STARTED)]);
    let mut after = before.clone();
    after.announced_at = Some(t(0)); // announced: only the timeline counts here
    after
        .timeline
        .push(entry(9, Some("dev"), reason::STAGE_SUCCEEDED));
    after
        .timeline
        .push(entry(9, Some("prod"), reason::AWAITING_APPROVAL));
    record_new(
        Some(&before),
        &mut after,
        UID,
        &receivers(),
        ReleaseType::Major,
        t(9),
    );
    let dev = Some("dev".to_owned());
    let prod = Some("prod".to_owned());
    assert_eq!(
        keys(&after),
        [
            (
                NotificationEvent::StageSucceeded,
                "clients".into(),
                dev.clone()
            ),
            (NotificationEvent::StageSucceeded, "channel".into(), dev),
            (NotificationEvent::ApprovalRequired, "channel".into(), prod),
        ]
    );
    // The two receivers of one event share its id; each record starts untried.
    assert_eq!(after.notifications[0].id, after.notifications[1].id);
    assert!(
        after
            .notifications
            .iter()
            .all(|r| r.attempts == 0 && r.delivered_at.is_none() && r.at == t(9))
    );
    // Replaying the same change adds nothing.
    let again = after.clone();
    record_new(
        Some(&before),
        &mut after,
        UID,
        &receivers(),
        ReleaseType::Major,
        t(10),
    );
    assert_eq!(after, again);
    // A minor release: the clients' receiver hears nothing of it.
    let mut minor = before.clone();
    minor.announced_at = Some(t(0));
    minor
        .timeline
        .push(entry(9, Some("dev"), reason::STAGE_SUCCEEDED));
    record_new(
        Some(&before),
        &mut minor,
        UID,
        &receivers(),
        ReleaseType::Minor,
        t(9),
    );
    assert_eq!(keys(&minor).len(), 1);
    assert_eq!(minor.notifications[0].receiver, "channel");
}

#[test]
fn history_is_never_replayed() {
    // A status that already has a long history, first seen by this code (an upgrade, or
    // a Pipeline that just gained receivers): nothing from before is sent.
    let mut status = with_timeline(vec![
        entry(1, Some("dev"), reason::STAGE_STARTED),
        entry(2, Some("dev"), reason::STAGE_SUCCEEDED),
        entry(3, Some("prod"), reason::STAGE_STARTED),
        entry(4, Some("prod"), reason::ROLLED_BACK),
    ]);
    status.phase = Some(ReleasePhase::RolledBack);
    status.completed_at = Some(t(4));
    let before = status.clone();
    record_new(
        Some(&before),
        &mut status,
        UID,
        &receivers(),
        ReleaseType::Major,
        t(100),
    );
    assert!(status.notifications.is_empty(), "{:?}", keys(&status));
}

#[test]
fn closed_once_when_the_release_ends() {
    let before = with_timeline(vec![entry(1, Some("prod"), reason::STAGE_STARTED)]);
    let mut after = before.clone();
    after.announced_at = Some(t(0));
    after
        .timeline
        .push(entry(8, Some("prod"), reason::ROLLED_BACK));
    after.phase = Some(ReleasePhase::RolledBack);
    after.completed_at = Some(t(8));
    record_new(
        Some(&before),
        &mut after,
        UID,
        &receivers(),
        ReleaseType::Major,
        t(8),
    );
    let events: Vec<(NotificationEvent, String)> = after
        .notifications
        .iter()
        .map(|r| (r.event, r.receiver.clone()))
        .collect();
    assert_eq!(
        events,
        [
            (NotificationEvent::RolledBack, "clients".into()),
            (NotificationEvent::RolledBack, "channel".into()),
            (NotificationEvent::RolledBack, "ops".into()),
            (NotificationEvent::Closed, "clients".into()),
            (NotificationEvent::Closed, "channel".into()),
        ]
    );
    // Planning the ended release again: no second Closed.
    let ended = after.clone();
    record_new(
        Some(&ended),
        &mut after,
        UID,
        &receivers(),
        ReleaseType::Major,
        t(60),
    );
    assert_eq!(after, ended);
}

#[test]
fn announced_once_while_accepted_live_and_not_announced() {
    // Not accepted: nobody is told anything.
    let mut refused = ReleaseStatus::default();
    record_new(
        None,
        &mut refused,
        UID,
        &receivers(),
        ReleaseType::Major,
        t(0),
    );
    assert!(refused.notifications.is_empty());

    let mut status = with_timeline(Vec::new());
    record_new(
        None,
        &mut status,
        UID,
        &receivers(),
        ReleaseType::Major,
        t(0),
    );
    assert_eq!(
        keys(&status),
        [
            (NotificationEvent::Announced, "clients".into(), None),
            (NotificationEvent::Announced, "channel".into(), None),
        ]
    );
    // Later plans keep the records as they are (same id, same time).
    let first = status.clone();
    record_new(
        Some(&first),
        &mut status,
        UID,
        &receivers(),
        ReleaseType::Major,
        t(30),
    );
    assert_eq!(status, first);
    // Once one arrived, the release is announced; a receiver added later is not told.
    let delivered = outcome(&status.notifications[1], 40, None);
    settle(&mut status, &deliveries(&[delivered]));
    assert_eq!(status.announced_at, Some(t(40)));
    let mut more = receivers();
    let mut late = more[0].clone();
    late.name = "late".into();
    more.push(late);
    let before = status.clone();
    record_new(
        Some(&before),
        &mut status,
        UID,
        &more,
        ReleaseType::Major,
        t(50),
    );
    assert_eq!(status, before);
}

#[test]
fn outcomes_fold_in_once_with_backoff_and_announced_at_only_from_a_delivered_announced() {
    let mut status = with_timeline(vec![entry(1, Some("dev"), reason::STAGE_STARTED)]);
    record_new(
        None,
        &mut status,
        UID,
        &receivers(),
        ReleaseType::Major,
        t(1),
    );
    // Announced (clients, channel) and StageStarted (channel).
    assert_eq!(status.notifications.len(), 3);
    let announced = status.notifications[0].clone();
    let started = status.notifications[2].clone();
    assert_eq!(started.event, NotificationEvent::StageStarted);
    assert_eq!(due(&status, t(1)).len(), 3, "all untried: all due");

    // A failure: attempts 1, the error, the next attempt one second later.
    let failed = outcome(&announced, 2, Some("HTTP 500"));
    settle(&mut status, &deliveries(std::slice::from_ref(&failed)));
    let record = &status.notifications[0];
    assert_eq!(record.attempts, 1);
    assert_eq!(record.last_error.as_deref(), Some("HTTP 500"));
    assert_eq!(record.next_attempt_at, Some(t(3)));
    assert_eq!(
        status.announced_at, None,
        "a failed Announced announces nothing"
    );
    assert_eq!(next_attempt(&status), Some(t(3)));
    assert_eq!(due(&status, t(2)).len(), 2, "not due before its time");
    // The same outcome again changes nothing.
    let once = status.clone();
    settle(&mut status, &deliveries(std::slice::from_ref(&failed)));
    assert_eq!(status, once);

    // A delivered StageStarted does not announce the release either.
    let delivered = outcome(&started, 3, None);
    settle(&mut status, &deliveries(&[delivered]));
    assert_eq!(status.notifications[2].delivered_at, Some(t(3)));
    assert_eq!(status.announced_at, None);

    // Second failure: two seconds; then success.
    let second = outcome(&status.notifications[0], 3, Some("connection refused"));
    settle(&mut status, &deliveries(&[second]));
    assert_eq!(status.notifications[0].next_attempt_at, Some(t(5)));
    let third = outcome(&status.notifications[0], 5, None);
    settle(&mut status, &deliveries(&[third]));
    let record = &status.notifications[0];
    assert_eq!(record.attempts, 3);
    assert_eq!(record.delivered_at, Some(t(5)));
    assert_eq!(record.last_error, None);
    assert_eq!(record.next_attempt_at, None);
    assert_eq!(status.announced_at, Some(t(5)));
    // A late outcome of an old attempt, or of an unknown event, changes nothing.
    let late = status.clone();
    settle(
        &mut status,
        &deliveries(&[
            Outcome {
                attempt: 2,
                ..failed.clone()
            },
            Outcome {
                id: "unknown".into(),
                ..failed
            },
        ]),
    );
    assert_eq!(status, late);
}

#[test]
fn backoff_doubles_to_its_cap() {
    let max = Duration::from_secs(300);
    let waits: Vec<u64> = (1..=12).map(|a| backoff(a, max).as_secs()).collect();
    assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    assert_eq!(backoff(i32::MAX, max), max);
    assert_eq!(backoff(3, Duration::from_secs(3)).as_secs(), 3);
    assert_eq!(backoff(1, Duration::ZERO), FIRST_BACKOFF);
}

#[test]
fn a_delivery_is_given_up_after_a_day_except_a_live_releases_announced() {
    let mut status = with_timeline(vec![entry(1, Some("dev"), reason::STAGE_STARTED)]);
    record_new(
        None,
        &mut status,
        UID,
        &receivers(),
        ReleaseType::Major,
        t(1),
    );
    let day = 24 * 3600;
    let outcomes: Vec<Outcome> = status
        .notifications
        .iter()
        .map(|r| outcome(r, day + 10, Some("HTTP 503")))
        .collect();
    settle(&mut status, &deliveries(&outcomes));
    for record in &status.notifications {
        let retried = record.next_attempt_at.is_some();
        assert_eq!(
            retried,
            record.event == NotificationEvent::Announced,
            "{record:?}"
        );
        assert_eq!(is_pending(record), retried);
    }
    assert_eq!(due(&status, t(10 * day)).len(), 2);
}

#[test]
fn the_bound_drops_finished_records_before_pending_ones() {
    let record = |n: usize, delivered: bool, event: NotificationEvent| NotificationRecord {
        id: format!("{n:032}"),
        event,
        receiver: "channel".into(),
        stage: None,
        at: t(i64::try_from(n).unwrap()),
        attempts: i32::from(delivered),
        delivered_at: delivered.then(|| t(0)),
        last_error: None,
        next_attempt_at: None,
    };
    let mut records: Vec<NotificationRecord> = (0..150)
        .map(|n| {
            let event = if n == 0 {
                NotificationEvent::Announced
            } else {
                NotificationEvent::StageStarted
            };
            record(n, n % 3 == 0 && n > 0, event)
        })
        .collect();
    bound(&mut records);
    assert_eq!(records.len(), RECORD_LIMIT);
    // The 49 delivered ones went, then the oldest pending one (1) but not the Announced.
    assert_eq!(
        records.iter().filter(|r| r.delivered_at.is_some()).count(),
        0
    );
    assert_eq!(records[0].event, NotificationEvent::Announced);
    assert_eq!(records[1].id, format!("{:032}", 2));
    // Under the bound nothing moves.
    let kept = records.clone();
    bound(&mut records);
    assert_eq!(records, kept);
}

fn subject<'a>(
    spec: &'a ReleaseSpec,
    status: &'a ReleaseStatus,
    pipeline: &'a PipelineSpec,
) -> Subject<'a> {
    Subject {
        namespace: "billing",
        name: "billing-3-0-0",
        uid: UID,
        spec,
        status,
        pipeline: Some(pipeline),
        now: t(0),
    }
}

#[test]
fn an_announcement_is_a_cloudevent_with_changes_notes_and_the_earliest_prod_start() {
    let spec = spec("major");
    let pipeline = pipeline();
    let mut status = with_timeline(Vec::new());
    status.digest = Some("sha256:abc".into());
    record_new(
        None,
        &mut status,
        UID,
        &receivers(),
        ReleaseType::Major,
        t(0),
    );
    let record = status.notifications[0].clone();
    let event = cloudevent(&subject(&spec, &status, &pipeline), &record);
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["id"], json!(record.id));
    assert_eq!(event["type"], "dev.stagecoach.release.Announced");
    assert_eq!(
        event["source"],
        "/apis/stagecoach.dev/v1alpha1/namespaces/billing/releases/billing-3-0-0"
    );
    assert_eq!(event["time"], "2026-11-26T09:00:00Z");
    assert_eq!(event["datacontenttype"], "application/json");
    assert!(event.get("subject").is_none(), "no stage, no subject");
    let data = &event["data"];
    assert_eq!(data["event"], "Announced");
    assert_eq!(data["application"], "billing");
    assert_eq!(data["version"], "3.0.0");
    assert_eq!(data["type"], "major");
    assert_eq!(data["digest"], "sha256:abc");
    assert_eq!(data["release"]["uid"], UID);
    assert_eq!(data["changes"][0]["id"], "PR-1");
    assert_eq!(data["notes"], "Invoices change shape.");
    assert_eq!(data["lastStage"], "prod");
    assert_eq!(data["notice"], "72h");
    // Announced now: prod no earlier than 72 hours from now.
    assert_eq!(data["earliestLastStageStart"], "2026-11-29T09:00:00Z");
    // The same record renders the same body.
    assert_eq!(
        cloudevent(&subject(&spec, &status, &pipeline), &record),
        event
    );
}

#[test]
fn a_rollback_event_carries_the_rollback_and_the_gate_verdicts() {
    let spec = spec("major");
    let pipeline = pipeline();
    let before = with_timeline(vec![entry(1, Some("prod"), reason::STAGE_STARTED)]);
    let mut status = before.clone();
    status.announced_at = Some(t(0));
    status
        .timeline
        .push(entry(8, Some("prod"), reason::ROLLED_BACK));
    status.rollbacks.push(RollbackRecord {
        at: t(8),
        stage: "prod".into(),
        reason: "GateFailed".into(),
        message: "error rate 7% > 1%".into(),
    });
    status.stages.push(StageStatus {
        name: "prod".into(),
        namespace: "billing-prod".into(),
        phase: StagePhase::RolledBack,
        step: Some(0),
        weight: Some(0),
        started_at: Some(t(1)),
        step_started_at: Some(t(1)),
        finished_at: Some(t(8)),
        stable_revisions: Vec::new(),
        gates: vec![
            serde_json::from_value(json!({
                "name": "error-rate", "verdict": "Failing", "message": "7% > 1%", "failures": 2
            }))
            .unwrap(),
        ],
        message: None,
    });
    record_new(
        Some(&before),
        &mut status,
        UID,
        &receivers(),
        ReleaseType::Major,
        t(8),
    );
    let ops = status
        .notifications
        .iter()
        .find(|r| r.receiver == "ops")
        .unwrap()
        .clone();
    let event = cloudevent(&subject(&spec, &status, &pipeline), &ops);
    assert_eq!(event["type"], "dev.stagecoach.release.RolledBack");
    assert_eq!(event["subject"], "prod");
    assert_eq!(event["time"], "2026-11-26T09:00:08Z");
    let data = &event["data"];
    assert_eq!(data["message"], "RolledBack at 8");
    assert_eq!(data["rollback"]["reason"], "GateFailed");
    assert_eq!(data["gates"][0]["name"], "error-rate");
    assert_eq!(data["gates"][0]["verdict"], "Failing");

    // The Slack rendering says the same for people.
    let rendered = render(
        &subject(&spec, &status, &pipeline),
        &ops,
        Some(WebhookFormat::Slack),
    );
    assert_eq!(rendered.content_type, "application/json");
    let slack: serde_json::Value = serde_json::from_str(&rendered.body).unwrap();
    let text = slack["text"].as_str().unwrap();
    assert!(text.contains("rolled back in prod"), "{text}");
    let details = slack["blocks"][1]["text"]["text"].as_str().unwrap();
    assert!(details.contains("GateFailed"), "{details}");
    assert!(details.contains("gate error-rate: Failing"), "{details}");
    let cloud = render(&subject(&spec, &status, &pipeline), &ops, None);
    assert_eq!(
        cloud.content_type,
        "application/cloudevents+json; charset=utf-8"
    );
}

#[test]
fn a_closing_event_has_the_outcome_notes_and_changes() {
    let spec = spec("major");
    let pipeline = pipeline();
    let before = with_timeline(vec![entry(1, Some("prod"), reason::STAGE_STARTED)]);
    let mut status = before.clone();
    status.announced_at = Some(t(0));
    status.phase = Some(ReleasePhase::Succeeded);
    status.completed_at = Some(t(20));
    record_new(
        Some(&before),
        &mut status,
        UID,
        &receivers(),
        ReleaseType::Major,
        t(20),
    );
    let closed = status.notifications[0].clone();
    assert_eq!(closed.event, NotificationEvent::Closed);
    let event = cloudevent(&subject(&spec, &status, &pipeline), &closed);
    assert_eq!(event["type"], "dev.stagecoach.release.Closed");
    assert_eq!(event["data"]["outcome"], "Succeeded");
    assert_eq!(event["data"]["completedAt"], "2026-11-26T09:00:20Z");
    assert_eq!(event["data"]["notes"], "Invoices change shape.");
    assert_eq!(event["data"]["changes"][0]["title"], "new invoice format");
    let slack = slack(&subject(&spec, &status, &pipeline), &closed);
    let details = slack["blocks"][1]["text"]["text"].as_str().unwrap();
    assert!(
        details.contains("<https://example.com/pr/1|PR-1> new invoice format"),
        "{details}"
    );
}

/// The wrapper around the planner: a release accepted under a Pipeline with receivers
/// gets its Announced records in the same plan; replaying the plan changes nothing; an
/// outcome folds in before planning and sets `announcedAt`; a retry asks for a requeue.
#[test]
fn the_plan_records_announcements_and_folds_outcomes_in() {
    let spec = spec("major");
    let pipeline = pipeline();
    let annotations = BTreeMap::new();
    let observed = BTreeMap::new();
    let measurements = BTreeMap::new();
    let input = |status: Option<&'_ ReleaseStatus>, now: DateTime<Utc>| -> Plan {
        plan(
            &PlanInput {
                name: "billing-3-0-0",
                generation: Some(1),
                created: t(0),
                annotations: &annotations,
                spec: &spec,
                status,
                observed: &observed,
                gate_measurements: &measurements,
                others: &[],
                deleting: false,
                governing: Governing::Pipeline("billing", &pipeline),
                approvals: &[],
                now,
            },
            &deliveries(&[]),
        )
    };
    let first = input(None, t(0));
    assert_eq!(
        keys(&first.status),
        [
            (NotificationEvent::Announced, "clients".into(), None),
            (NotificationEvent::Announced, "channel".into(), None),
        ]
    );
    let again = input(Some(&first.status), t(0));
    assert_eq!(again.status, first.status, "a replay changes nothing");

    let announced = first.status.notifications[0].clone();
    let failed = outcome(&announced, 1, Some("HTTP 502"));
    let annotations2 = BTreeMap::new();
    let retry = plan(
        &PlanInput {
            name: "billing-3-0-0",
            generation: Some(1),
            created: t(0),
            annotations: &annotations2,
            spec: &spec,
            status: Some(&first.status),
            observed: &observed,
            gate_measurements: &measurements,
            others: &[],
            deleting: false,
            governing: Governing::Pipeline("billing", &pipeline),
            approvals: &[],
            now: t(1),
        },
        &deliveries(std::slice::from_ref(&failed)),
    );
    assert_eq!(retry.status.notifications[0].attempts, 1);
    assert!(
        retry
            .requeue_after
            .is_some_and(|r| r <= Duration::from_secs(1)),
        "{:?}",
        retry.requeue_after
    );
    let delivered = outcome(&retry.status.notifications[0], 2, None);
    let done = plan(
        &PlanInput {
            name: "billing-3-0-0",
            generation: Some(1),
            created: t(0),
            annotations: &annotations2,
            spec: &spec,
            status: Some(&retry.status),
            observed: &observed,
            gate_measurements: &measurements,
            others: &[],
            deleting: false,
            governing: Governing::Pipeline("billing", &pipeline),
            approvals: &[],
            now: t(2),
        },
        &deliveries(&[delivered]),
    );
    assert_eq!(done.status.announced_at, Some(t(2)));
    // Without a Pipeline nobody is told anything.
    let alone = plan(
        &PlanInput {
            name: "billing-3-0-0",
            generation: Some(1),
            created: t(0),
            annotations: &annotations2,
            spec: &spec,
            status: None,
            observed: &observed,
            gate_measurements: &measurements,
            others: &[],
            deleting: false,
            governing: Governing::None,
            approvals: &[],
            now: t(0),
        },
        &deliveries(&[]),
    );
    assert!(alone.status.notifications.is_empty());
}

// ----- properties -------------------------------------------------------------------------------

/// One step of a simulated release: timeline entries the planner adds (reason index,
/// stage index), maybe an end, and outcomes of some due deliveries.
#[derive(Clone, Debug)]
struct Step {
    entries: Vec<(usize, usize)>,
    ends: bool,
    /// For each due record (by position, modulo): deliver or fail.
    outcomes: Vec<(usize, bool)>,
}

const REASONS: [&str; 9] = [
    reason::STAGE_STARTED,
    reason::STEP_COMPLETED,
    reason::STAGE_SUCCEEDED,
    reason::AWAITING_APPROVAL,
    reason::APPROVED,
    reason::REJECTED,
    reason::ROLLED_BACK,
    reason::EARLY_LIFE_SUPPORT,
    reason::WAITING_FOR_WINDOW,
];

fn step() -> impl Strategy<Value = Step> {
    (
        prop::collection::vec((0..REASONS.len(), 0..2usize), 0..4),
        prop::bool::weighted(0.05),
        prop::collection::vec((0..8usize, any::<bool>()), 0..4),
    )
        .prop_map(|(entries, ends, outcomes)| Step {
            entries,
            ends,
            outcomes,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Over any history: records are unique per (id, receiver), at most one per timeline
    /// occurrence and receiver, never more than the bound; `announcedAt` is exactly the
    /// first delivery of an Announced; and recomputing from the same statuses gives the
    /// same records (ids included).
    #[test]
    fn records_follow_the_history(steps in prop::collection::vec(step(), 1..60)) {
        let receivers = receivers();
        let run = || -> Result<Vec<ReleaseStatus>, TestCaseError> {
            let mut status = with_timeline(Vec::new());
            let mut clock = 0i64;
            // Every (id, receiver) ever recorded, and those the bound has dropped since.
            let mut ever: BTreeSet<(String, String)> = BTreeSet::new();
            let mut first_announced: Option<DateTime<Utc>> = None;
            let mut history = Vec::new();
            for step in &steps {
                clock += 1;
                // Deliveries that ended since the last plan.
                let due: Vec<NotificationRecord> =
                    due(&status, t(clock)).into_iter().cloned().collect();
                let mut outcomes: Vec<Outcome> = Vec::new();
                for (pick, ok) in &step.outcomes {
                    if due.is_empty() {
                        break;
                    }
                    let record = &due[pick % due.len()];
                    if outcomes
                        .iter()
                        .any(|o| o.id == record.id && o.receiver == record.receiver)
                    {
                        continue;
                    }
                    if *ok
                        && record.event == NotificationEvent::Announced
                        && first_announced.is_none()
                    {
                        first_announced = Some(t(clock));
                    }
                    outcomes.push(outcome(record, clock, (!ok).then_some("HTTP 500")));
                }
                settle(&mut status, &deliveries(&outcomes));
                let before = status.clone();
                if !status.phase.is_some_and(ReleasePhase::is_terminal) {
                    for (reason, stage) in &step.entries {
                        status.timeline.push(entry(
                            clock,
                            Some(["dev", "prod"][*stage]),
                            REASONS[*reason],
                        ));
                    }
                    if step.ends {
                        status.phase = Some(ReleasePhase::Succeeded);
                        status.completed_at = Some(t(clock));
                    }
                }
                if status.timeline.len() > TIMELINE_LIMIT {
                    let excess = status.timeline.len() - TIMELINE_LIMIT;
                    status.timeline.drain(..excess);
                }
                let known: BTreeSet<(String, String)> = before
                    .notifications
                    .iter()
                    .map(|r| (r.id.clone(), r.receiver.clone()))
                    .collect();
                record_new(
                    Some(&before),
                    &mut status,
                    UID,
                    &receivers,
                    ReleaseType::Major,
                    t(clock),
                );
                prop_assert!(status.notifications.len() <= RECORD_LIMIT);
                let mut seen = BTreeSet::new();
                for record in &status.notifications {
                    let key = (record.id.clone(), record.receiver.clone());
                    prop_assert!(seen.insert(key.clone()), "duplicate {:?}", record);
                    // A record is made once: never again after the bound dropped it.
                    prop_assert!(
                        known.contains(&key) || ever.insert(key),
                        "made twice: {:?}",
                        record
                    );
                    prop_assert!(receivers.iter().any(|r| r.name == record.receiver
                        && r.wants(record.event, ReleaseType::Major)));
                }
                prop_assert_eq!(status.announced_at, first_announced);
                history.push(status.clone());
            }
            Ok(history)
        };
        let first: Vec<ReleaseStatus> = run()?;
        let second: Vec<ReleaseStatus> = run()?;
        prop_assert_eq!(first, second);
    }
}
