//! Record tests: the document's fields, when it is due, its name and labels, cutting a
//! record too large for a ConfigMap, and retention.

#![allow(clippy::unwrap_used)] // test fixtures

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::json;
use stagecoach_api::release::{ReleaseSpec, ReleaseStatus};

use super::*;

const UID: &str = "5f0c2d7e-1b2a-4c3d-9e8f-0a1b2c3d4e5f";

fn t(seconds: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 9, 0, 0).unwrap() + chrono::Duration::seconds(seconds)
}

fn ts(seconds: i64) -> String {
    t(seconds).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn spec() -> ReleaseSpec {
    serde_json::from_value(json!({
        "application": "billing",
        "version": "2.4.0",
        "type": "minor",
        "changes": [
            {"id": "PR-1234", "title": "Faster invoice export", "url": "https://git.example.com/billing/pull/1234",
             "mergedAt": ts(-3600)},
            {"id": "PR-1240", "title": "Fix rounding"}
        ],
        "notes": "Invoices export twice as fast.",
        "workloads": [{"deployment": "api", "containers": [{"name": "api", "image": "billing-api:2.4.0"}]}]
    }))
    .unwrap()
}

/// A release that went through dev, was approved into prod by two people, reached 25 %
/// there and was rolled back by a failing gate; its RolledBack and Closed events were
/// delivered to one receiver.
fn rolled_back() -> ReleaseStatus {
    serde_json::from_value(json!({
        "phase": "RolledBack",
        "message": "stage prod rolled back (GateFailed)",
        "digest": "sha256:abc",
        "startedAt": ts(0),
        "completedAt": ts(400),
        "stages": [
            {"name": "dev", "namespace": "billing-dev", "phase": "Succeeded",
             "startedAt": ts(0), "finishedAt": ts(60), "weight": 100},
            {"name": "prod", "namespace": "billing-prod", "phase": "RolledBack",
             "startedAt": ts(300), "finishedAt": ts(400), "weight": 0,
             "message": "at 25%: error-rate Failing",
             "gates": [
                {"name": "workload-health", "verdict": "Passing", "message": "1/1 ready", "lastEvaluatedAt": ts(330)},
                {"name": "error-rate", "verdict": "Failing", "message": "0.12 > 0.05", "value": "0.12",
                 "failures": 2, "lastEvaluatedAt": ts(390)}
             ]}
        ],
        "timeline": [
            {"at": ts(0), "stage": "dev", "reason": "StageStarted", "message": "stage dev started"},
            {"at": ts(50), "stage": "dev", "reason": "StepCompleted", "message": "step 1/1"},
            {"at": ts(60), "stage": "dev", "reason": "StageSucceeded", "message": "stage dev succeeded"},
            {"at": ts(300), "stage": "prod", "reason": "Approved", "message": "approved by alice, bob"},
            {"at": ts(300), "stage": "prod", "reason": "StageStarted", "message": "stage prod started"},
            {"at": ts(400), "stage": "prod", "reason": "RolledBack", "message": "stage prod rolled back (GateFailed)"}
        ],
        "rollbacks": [
            {"at": ts(400), "stage": "prod", "reason": "GateFailed", "message": "at 25%: error-rate Failing"}
        ],
        "approvals": [
            {"stage": "prod", "decision": "Approve", "approver": "alice", "digest": "sha256:abc", "at": ts(250), "approval": "a1"},
            {"stage": "prod", "decision": "Approve", "approver": "bob", "digest": "sha256:abc", "at": ts(290), "approval": "a2", "override": true, "comment": "hotfix"}
        ],
        "notifications": [
            {"id": "e1", "event": "RolledBack", "receiver": "ops", "stage": "prod", "at": ts(400), "attempts": 1, "deliveredAt": ts(401)},
            {"id": "e2", "event": "Closed", "receiver": "ops", "at": ts(400), "attempts": 1, "deliveredAt": ts(402)}
        ],
        "closingRecord": {"outcome": "RolledBack", "completedAt": ts(400)}
    }))
    .unwrap()
}

fn input<'a>(spec: &'a ReleaseSpec, status: &'a ReleaseStatus) -> RecordInput<'a> {
    RecordInput {
        name: "billing-2.4.0",
        namespace: "billing",
        uid: UID,
        created: t(-60),
        spec,
        status,
        pipeline: Some("billing"),
        archived_at: t(405),
    }
}

#[test]
fn the_document_holds_what_the_policy_asks_for() {
    let (spec, status) = (spec(), rolled_back());
    let doc = document(&input(&spec, &status));
    assert_eq!(doc["schema"], SCHEMA);
    assert_eq!(
        doc["release"],
        json!({"name": "billing-2.4.0", "namespace": "billing", "uid": UID, "createdAt": ts(-60)})
    );
    assert_eq!(doc["application"], "billing");
    assert_eq!(doc["pipeline"], "billing");
    assert_eq!(doc["version"], "2.4.0");
    assert_eq!(doc["type"], "minor");
    assert_eq!(doc["digest"], "sha256:abc");
    assert_eq!(doc["outcome"], "RolledBack");
    assert_eq!(doc["completedAt"], ts(400));
    assert_eq!(doc["archivedAt"], ts(405));
    assert_eq!(doc["durationSeconds"], 460);
    // Changes with their links and merge times, the notes.
    assert_eq!(
        doc["changes"][0]["url"],
        "https://git.example.com/billing/pull/1234"
    );
    assert_eq!(doc["changes"][0]["mergedAt"], ts(-3600));
    assert_eq!(doc["notes"], "Invoices export twice as fast.");
    // Approvals: approver, decision, digest, time, override.
    assert_eq!(doc["approvals"][1]["approver"], "bob");
    assert_eq!(doc["approvals"][1]["decision"], "Approve");
    assert_eq!(doc["approvals"][1]["digest"], "sha256:abc");
    assert_eq!(doc["approvals"][1]["at"], ts(290));
    assert_eq!(doc["approvals"][1]["override"], true);
    // Who was told.
    assert_eq!(doc["notifications"][1]["event"], "Closed");
    assert_eq!(doc["notifications"][1]["deliveredAt"], ts(402));
    // Per stage: phase, times, duration, gate results.
    assert_eq!(doc["stages"][0]["name"], "dev");
    assert_eq!(doc["stages"][0]["durationSeconds"], 60);
    assert_eq!(doc["stages"][0]["stepsCompleted"], 1);
    assert_eq!(doc["stages"][1]["phase"], "RolledBack");
    assert_eq!(doc["stages"][1]["gates"][1]["verdict"], "Failing");
    // Rollbacks with their reason and the verdicts that caused them.
    assert_eq!(doc["rollbacks"][0]["reason"], "GateFailed");
    assert_eq!(doc["rollbacks"][0]["failingSince"], ts(390));
    assert_eq!(doc["rollbacks"][0]["gates"][1]["name"], "error-rate");
    assert_eq!(doc["rollbacks"][0]["gates"][1]["value"], "0.12");
    assert_eq!(doc["timeline"].as_array().unwrap().len(), 6);
    // DORA facts: entered prod, never deployed there, failed; restored 10 s after the
    // failing verdict.
    assert_eq!(doc["dora"]["lastStage"], "prod");
    assert_eq!(doc["dora"]["enteredLastStageAt"], ts(300));
    assert_eq!(doc["dora"]["failed"], true);
    assert_eq!(doc["dora"]["failureDetectedAt"], ts(390));
    assert_eq!(doc["dora"]["restoredAt"], ts(400));
    assert!(doc["dora"].get("deployedAt").is_none());
    // Nothing empty or null is written.
    let text = doc.to_string();
    assert!(!text.contains("null"), "{text}");
    assert!(!text.contains("[]"), "{text}");
}

#[test]
fn field_names_are_stable() {
    // A log pipeline or an auditor's script reads these names: renaming one is a
    // breaking change of the record's schema (bump SCHEMA).
    let (spec, status) = (spec(), rolled_back());
    let doc = document(&input(&spec, &status));
    let keys: Vec<&str> = doc
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "application",
            "approvals",
            "archivedAt",
            "changes",
            "completedAt",
            "digest",
            "dora",
            "durationSeconds",
            "message",
            "notes",
            "notifications",
            "outcome",
            "pipeline",
            "release",
            "rollbacks",
            "schema",
            "stages",
            "startedAt",
            "timeline",
            "type",
            "version",
            "workloads",
        ]
    );
}

#[test]
fn the_record_waits_for_pending_notifications_but_not_for_long() {
    let mut status = rolled_back();
    assert_eq!(due(&status, false, t(401)), Due::Now, "nothing pending");
    status.notifications[1].delivered_at = None;
    status.notifications[1].attempts = 1;
    status.notifications[1].next_attempt_at = Some(t(410));
    assert_eq!(
        due(&status, false, t(401)),
        Due::At(t(1000)),
        "grace of 10 min"
    );
    assert_eq!(due(&status, false, t(1000)), Due::Now, "grace over");
    assert_eq!(
        due(&status, true, t(401)),
        Due::Now,
        "a Release being deleted"
    );
    // Given up: not pending.
    status.notifications[1].next_attempt_at = None;
    assert_eq!(due(&status, false, t(401)), Due::Now);
    // Not ended: no record.
    status.phase = Some(ReleasePhase::EarlyLifeSupport);
    assert_eq!(due(&status, true, t(401)), Due::NotEnded);
}

#[test]
fn names_are_stable_valid_and_short_enough() {
    assert_eq!(
        record_name("billing-2.4.0", UID),
        "stagecoach-record-billing-2.4.0-5f0c2d7e"
    );
    assert_eq!(
        record_name("billing-2.4.0", UID),
        record_name("billing-2.4.0", UID)
    );
    let long = format!("{}.{}", "a".repeat(200), "b".repeat(52));
    let name = record_name(&long, UID);
    assert!(name.len() <= 253, "{}", name.len());
    assert!(name.ends_with("-5f0c2d7e"));
    // A cut that would end in '.' or '-' is trimmed: every label of the name stays valid.
    let dotted = format!("{}.x", "a".repeat(226));
    let name = record_name(&dotted, UID);
    assert!(!name.contains(".-"), "{name}");
}

#[test]
fn labels_say_what_the_record_is_and_long_names_go_to_annotations() {
    let (spec, status) = (spec(), rolled_back());
    let set = labels(&input(&spec, &status));
    assert_eq!(set["app.kubernetes.io/managed-by"], "stagecoach");
    assert_eq!(set[RECORD_LABEL], "true");
    assert_eq!(set[APPLICATION_LABEL], "billing");
    assert_eq!(set[RELEASE_LABEL], "billing-2.4.0");
    assert_eq!(set[RELEASE_UID_LABEL], UID);
    let long = "r".repeat(80);
    let mut long_input = input(&spec, &status);
    long_input.name = &long;
    assert!(!labels(&long_input).contains_key(RELEASE_LABEL));
    assert_eq!(annotations(&long_input)[RELEASE_ANNOTATION], long);
    let notes = annotations(&input(&spec, &status));
    assert_eq!(notes[OUTCOME_ANNOTATION], "RolledBack");
    assert_eq!(notes[COMPLETED_ANNOTATION], ts(400));
    assert_eq!(notes[VERSION_ANNOTATION], "2.4.0");
}

#[test]
fn a_small_record_is_written_whole_and_pretty() {
    let (spec, status) = (spec(), rolled_back());
    let doc = document(&input(&spec, &status));
    let (text, cut) = render(&doc, SIZE_LIMIT);
    assert!(!cut);
    assert!(text.contains("\n  \"application\": \"billing\""), "{text}");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), doc);
}

#[test]
fn a_huge_changelog_is_cut_with_a_marker_never_silently() {
    let mut spec = spec();
    spec.notes = Some("n".repeat(60_000));
    spec.changes = (0..200)
        .map(|i| {
            serde_json::from_value(json!({
                "id": format!("PR-{i}"),
                "title": "t".repeat(500),
                "url": format!("https://git.example.com/pull/{i}/{}", "u".repeat(1900)),
            }))
            .unwrap()
        })
        .collect();
    let status = rolled_back();
    let doc = document(&input(&spec, &status));
    assert!(doc.to_string().len() > 300_000);
    let limit = 100_000;
    let (text, cut) = render(&doc, limit);
    assert!(cut);
    assert!(text.len() <= limit, "{}", text.len());
    let kept: Value = serde_json::from_str(&text).unwrap();
    let truncated = kept["truncated"].as_array().unwrap();
    let changes = truncated.iter().find(|m| m["field"] == "changes").unwrap();
    assert_eq!(changes["total"], 200);
    assert_eq!(
        changes["kept"].as_u64().unwrap(),
        kept["changes"].as_array().unwrap().len() as u64
    );
    assert!(kept["notes"].as_str().unwrap().ends_with("[truncated]"));
    // The facts are all there.
    assert_eq!(kept["rollbacks"], doc["rollbacks"]);
    assert_eq!(kept["approvals"], doc["approvals"]);
    assert_eq!(kept["dora"], doc["dora"]);
    assert_eq!(kept["stages"], doc["stages"]);
    assert_eq!(
        kept["changes"][0], doc["changes"][0],
        "the first changes are kept"
    );
}

#[test]
fn a_record_that_cannot_fit_keeps_its_facts() {
    let (spec, status) = (spec(), rolled_back());
    let doc = document(&input(&spec, &status));
    let kept = fit(doc.clone(), 2000);
    assert_eq!(kept["outcome"], "RolledBack");
    assert_eq!(kept["dora"], doc["dora"]);
    assert!(
        kept["truncated"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["field"] == "*")
    );
}

fn archived(name: &str, at: i64) -> Archived {
    Archived {
        name: name.to_owned(),
        completed_at: t(at),
    }
}

#[test]
fn retention_prunes_the_oldest_beyond_count_or_age() {
    let records = [
        archived("r1", 0),
        archived("r3", 200),
        archived("r2", 100),
        archived("r4", 300),
    ];
    let count = |n| Retention {
        count: Some(n),
        age: None,
    };
    assert_eq!(to_prune(&records, &count(2), t(400)), ["r1", "r2"]);
    assert_eq!(to_prune(&records, &count(10), t(400)), Vec::<String>::new());
    let age = Retention {
        count: None,
        age: Some("150s".into()),
    };
    assert_eq!(to_prune(&records, &age, t(400)), ["r1", "r2", "r3"]);
    let both = Retention {
        count: Some(3),
        age: Some("1h".into()),
    };
    assert_eq!(to_prune(&records, &both, t(400)), ["r1"]);
}

proptest! {
    /// Whatever the history: what is kept is the newest, at most `count` of them, and
    /// nothing is pruned twice or made up.
    #[test]
    fn retention_keeps_the_newest(
        ends in proptest::collection::vec(0i64..10_000, 0..40),
        count in 1i32..20,
    ) {
        let records: Vec<Archived> = ends
            .iter()
            .enumerate()
            .map(|(i, at)| archived(&format!("r{i:02}"), *at))
            .collect();
        let retention = Retention { count: Some(count), age: None };
        let pruned = to_prune(&records, &retention, t(20_000));
        let kept: Vec<&Archived> = records.iter().filter(|r| !pruned.contains(&r.name)).collect();
        prop_assert_eq!(kept.len(), records.len().min(usize::try_from(count).unwrap()));
        let newest_pruned = records.iter().filter(|r| pruned.contains(&r.name)).map(|r| r.completed_at).max();
        let oldest_kept = kept.iter().map(|r| r.completed_at).min();
        if let (Some(p), Some(k)) = (newest_pruned, oldest_kept) {
            prop_assert!(p <= k);
        }
        let mut unique = pruned.clone();
        unique.sort();
        unique.dedup();
        prop_assert_eq!(unique.len(), pruned.len());
    }

    /// A record of any size is stored within the limit.
    #[test]
    fn every_record_fits(changes in 0usize..200, notes in 0usize..70_000, title in 0usize..500) {
        let mut spec = spec();
        spec.notes = Some("n".repeat(notes));
        spec.changes = (0..changes)
            .map(|i| serde_json::from_value(json!({"id": format!("PR-{i}"), "title": "t".repeat(title)})).unwrap())
            .collect();
        let status = rolled_back();
        let doc = document(&input(&spec, &status));
        let (text, cut) = render(&doc, 60_000);
        prop_assert!(text.len() <= 60_000);
        let kept: Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(cut, kept.get("truncated").is_some());
        prop_assert_eq!(&kept["dora"], &doc["dora"]);
    }
}
