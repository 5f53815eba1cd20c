//! DORA tests: the facts of a release from its status, the figures of a scripted history
//! of releases, and properties of the report over random histories.

#![allow(clippy::unwrap_used, clippy::float_cmp)] // test fixtures; figures computed exactly

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::json;
use stagecoach_api::release::{ReleaseSpec, ReleaseStatus};

use super::*;

const HOUR: i64 = 3600;
const DAY: i64 = 24 * HOUR;

fn t(seconds: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap() + chrono::Duration::seconds(seconds)
}

fn ts(seconds: i64) -> String {
    t(seconds).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[allow(clippy::needless_pass_by_value)] // called with json! literals
fn spec(changes: serde_json::Value) -> ReleaseSpec {
    serde_json::from_value(json!({
        "application": "billing",
        "version": "1.0.0",
        "changes": changes,
        "workloads": [{"deployment": "api", "containers": [{"name": "api", "image": "api:1"}]}]
    }))
    .unwrap()
}

/// How a scripted release ends.
#[derive(Clone, Copy, Debug)]
enum End {
    /// dev, then prod to 100 % at `at + 2h`, early life support, Succeeded.
    Deployed,
    /// Rolled back in prod at 25 %: the gate failed at `at + 2h + 60 s`, rolled back
    /// 5 s later.
    FailedInProd,
    /// Reached 100 % in prod, then early life support failed 1 h later (the gate
    /// failing 30 s before the rollback).
    FailedInEarlyLife,
    /// Rolled back in dev: never reached prod.
    FailedInDev,
}

/// The status of a release created at `at` (seconds) that ends as `end`.
fn history(at: i64, end: End) -> ReleaseStatus {
    let prod_start = at + 2 * HOUR - 120;
    let full = at + 2 * HOUR;
    let mut timeline =
        vec![json!({"at": ts(at), "stage": "dev", "reason": "StageStarted", "message": "dev"})];
    let (dev, prod, rollbacks, completed) = match end {
        End::FailedInDev => {
            timeline.push(json!({"at": ts(at + 60), "stage": "dev", "reason": "RolledBack", "message": "dev"}));
            (
                json!({"name": "dev", "namespace": "d", "phase": "RolledBack", "startedAt": ts(at), "finishedAt": ts(at + 60),
                       "gates": [{"name": "workload-health", "verdict": "Failing", "lastEvaluatedAt": ts(at + 50)}]}),
                json!({"name": "prod", "namespace": "p", "phase": "Skipped"}),
                json!([{"at": ts(at + 60), "stage": "dev", "reason": "GateFailed"}]),
                at + 60,
            )
        }
        End::FailedInProd => (
            json!({"name": "dev", "namespace": "d", "phase": "Succeeded", "startedAt": ts(at), "finishedAt": ts(at + 60)}),
            json!({"name": "prod", "namespace": "p", "phase": "RolledBack", "startedAt": ts(prod_start), "finishedAt": ts(full + 65),
            "gates": [
                {"name": "workload-health", "verdict": "Passing", "lastEvaluatedAt": ts(full)},
                {"name": "errors", "verdict": "Failing", "lastEvaluatedAt": ts(full + 60)}
            ]}),
            json!([{"at": ts(full + 65), "stage": "prod", "reason": "GateFailed"}]),
            full + 65,
        ),
        End::FailedInEarlyLife => {
            timeline.push(json!({"at": ts(full), "stage": "prod", "reason": "EarlyLifeSupport", "message": "prod"}));
            (
                json!({"name": "dev", "namespace": "d", "phase": "Succeeded", "startedAt": ts(at), "finishedAt": ts(at + 60)}),
                json!({"name": "prod", "namespace": "p", "phase": "RolledBack", "startedAt": ts(prod_start), "stepStartedAt": ts(full),
                       "finishedAt": ts(full + HOUR),
                       "gates": [{"name": "errors", "verdict": "Failing", "lastEvaluatedAt": ts(full + HOUR - 30)}]}),
                json!([{"at": ts(full + HOUR), "stage": "prod", "reason": "EarlyLifeSupportFailed"}]),
                full + HOUR,
            )
        }
        End::Deployed => {
            timeline.push(json!({"at": ts(full), "stage": "prod", "reason": "EarlyLifeSupport", "message": "prod"}));
            (
                json!({"name": "dev", "namespace": "d", "phase": "Succeeded", "startedAt": ts(at), "finishedAt": ts(at + 60)}),
                json!({"name": "prod", "namespace": "p", "phase": "Succeeded", "startedAt": ts(prod_start), "stepStartedAt": ts(full),
                       "finishedAt": ts(full + 48 * HOUR)}),
                json!([]),
                full + 48 * HOUR,
            )
        }
    };
    serde_json::from_value(json!({
        "phase": if rollbacks.as_array().unwrap().is_empty() { "Succeeded" } else { "RolledBack" },
        "completedAt": ts(completed),
        "stages": [dev, prod],
        "timeline": timeline,
        "rollbacks": rollbacks,
    }))
    .unwrap()
}

fn facts(at: i64, end: End) -> Facts {
    Facts::of(t(at), &spec(json!([])), &history(at, end))
}

#[test]
fn facts_of_a_deployed_release() {
    let f = facts(0, End::Deployed);
    assert_eq!(f.last_stage.as_deref(), Some("prod"));
    assert_eq!(f.entered_last_stage_at, Some(t(2 * HOUR - 120)));
    assert_eq!(f.deployed_at, Some(t(2 * HOUR)));
    assert_eq!(f.lead_times_seconds, [2 * HOUR]);
    assert!(!f.failed);
    assert_eq!(f.restored_at, None);
}

#[test]
fn lead_time_counts_from_each_changes_merge_when_given() {
    let spec = spec(json!([
        {"id": "a", "title": "a", "mergedAt": ts(-DAY)},
        {"id": "b", "title": "b"}
    ]));
    let f = Facts::of(t(0), &spec, &history(0, End::Deployed));
    assert_eq!(f.lead_times_seconds, [DAY + 2 * HOUR, 2 * HOUR]);
}

#[test]
fn facts_of_failures() {
    let prod = facts(0, End::FailedInProd);
    assert!(prod.failed);
    assert_eq!(prod.deployed_at, None, "never reached 100 %");
    assert!(prod.lead_times_seconds.is_empty());
    assert_eq!(prod.failure_detected_at, Some(t(2 * HOUR + 60)));
    assert_eq!(prod.restored_at, Some(t(2 * HOUR + 65)));

    let early = facts(0, End::FailedInEarlyLife);
    assert!(early.failed);
    assert_eq!(
        early.deployed_at,
        Some(t(2 * HOUR)),
        "deployed, then failed"
    );
    assert_eq!(early.failure_detected_at, Some(t(3 * HOUR - 30)));

    let dev = facts(0, End::FailedInDev);
    assert!(
        !dev.failed,
        "a rollback in dev is not a change failure in prod"
    );
    assert_eq!(dev.entered_last_stage_at, None);
}

#[test]
fn deployed_at_survives_a_timeline_that_dropped_the_entry() {
    let mut status = history(0, End::Deployed);
    status.timeline.clear();
    let f = Facts::of(t(0), &spec(json!([])), &status);
    assert_eq!(f.deployed_at, Some(t(2 * HOUR)));
}

/// Thirty days of releases: one a day. Days 0-19 deploy, days 20-23 fail in prod,
/// 24-25 fail during early life support, 26-29 fail in dev; plus two releases before the
/// window.
#[test]
fn the_figures_of_a_scripted_month() {
    let mut all = Vec::new();
    for day in 0..30 {
        let end = match day {
            0..=19 => End::Deployed,
            20..=23 => End::FailedInProd,
            24..=25 => End::FailedInEarlyLife,
            _ => End::FailedInDev,
        };
        all.push(facts(day * DAY, end));
    }
    all.push(facts(-10 * DAY, End::Deployed));
    all.push(facts(-9 * DAY, End::FailedInProd));
    let report = report(&all, t(0), t(30 * DAY));
    // Deployments: 20 succeeded + 2 deployed then rolled back in early life support.
    assert_eq!(report.deployments, 22);
    assert_eq!(report.days_with_deployments, 22);
    assert!((report.deployments_per_day - 22.0 / 30.0).abs() < 1e-9);
    // Every lead time is 2 h.
    let lead = report.lead_time.unwrap();
    assert_eq!(lead.count, 22);
    assert_eq!(lead.median_seconds, 7200.0);
    // 26 releases entered prod in the window (all but the 4 failing in dev), 6 failed.
    assert_eq!(report.releases_entering_last_stage, 26);
    assert_eq!(report.failures, 6);
    assert!((report.change_failure_rate.unwrap() - 6.0 / 26.0).abs() < 1e-9);
    // Restores: four of 5 s (prod), two of 30 s (early life support): median 5 s.
    let restore = report.time_to_restore.unwrap();
    assert_eq!(restore.count, 6);
    assert_eq!(restore.median_seconds, 5.0);
    assert!((restore.mean_seconds - (4.0 * 5.0 + 2.0 * 30.0) / 6.0).abs() < 1e-9);
}

#[test]
fn an_empty_window_has_no_rates() {
    let report = report(&[], t(0), t(DAY));
    assert_eq!(report.deployments, 0);
    assert_eq!(report.deployments_per_day, 0.0);
    assert_eq!(report.change_failure_rate, None);
    assert_eq!(report.lead_time, None);
    assert_eq!(report.time_to_restore, None);
}

#[test]
fn summaries() {
    assert_eq!(Summary::of(&[]), None);
    let s = Summary::of(&[3, 1, 2]).unwrap();
    assert_eq!((s.count, s.median_seconds, s.mean_seconds), (3, 2.0, 2.0));
    let s = Summary::of(&[1, 2, 3, 10]).unwrap();
    assert_eq!(s.median_seconds, 2.5);
}

#[test]
fn facts_read_back_from_a_document() {
    let f = facts(0, End::FailedInEarlyLife);
    let doc = json!({"dora": f});
    assert_eq!(facts_of_document(&doc), Some(f));
    assert_eq!(facts_of_document(&json!({})), None);
}

fn arb_end() -> impl Strategy<Value = End> {
    prop_oneof![
        Just(End::Deployed),
        Just(End::FailedInProd),
        Just(End::FailedInEarlyLife),
        Just(End::FailedInDev),
    ]
}

fn arb_history() -> impl Strategy<Value = Vec<Facts>> {
    proptest::collection::vec((-20 * DAY..40 * DAY, arb_end()), 0..40)
        .prop_map(|h| h.into_iter().map(|(at, end)| facts(at, end)).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The figures are counts and shares of the window's records: bounded, and blind to
    /// the order of the records.
    #[test]
    fn report_invariants(history in arb_history(), since in 0i64..10 * DAY, days in 1i64..30) {
        let (since, until) = (t(since), t(since + days * DAY));
        let r = report(&history, since, until);
        prop_assert!(r.failures <= r.releases_entering_last_stage);
        if let Some(rate) = r.change_failure_rate {
            prop_assert!((0.0..=1.0).contains(&rate));
        } else {
            prop_assert_eq!(r.releases_entering_last_stage, 0);
        }
        prop_assert!(r.days_with_deployments <= r.deployments);
        let in_window = |at: Option<DateTime<Utc>>| at.is_some_and(|a| a >= since && a <= until);
        prop_assert_eq!(r.deployments, history.iter().filter(|f| in_window(f.deployed_at)).count());
        if let Some(lead) = &r.lead_time {
            let samples: Vec<i64> = history.iter().filter(|f| in_window(f.deployed_at))
                .flat_map(|f| f.lead_times_seconds.clone()).collect();
            let (min, max) = (*samples.iter().min().unwrap(), *samples.iter().max().unwrap());
            #[allow(clippy::cast_precision_loss)]
            let bounds = (min as f64, max as f64);
            prop_assert!(lead.median_seconds >= bounds.0 && lead.median_seconds <= bounds.1);
        }
        let mut reversed = history.clone();
        reversed.reverse();
        prop_assert_eq!(report(&reversed, since, until), r.clone());
        // A release entirely outside the window changes nothing.
        let mut more = history.clone();
        more.push(facts(since.timestamp() - 30 * DAY - t(0).timestamp(), End::FailedInProd));
        prop_assert_eq!(report(&more, since, until), r);
    }
}
