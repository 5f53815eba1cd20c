//! FeatureToggle conditions as kstatus reads them: `Stalled` is present (True) only while a
//! problem needs a person to edit a spec, and absent while the toggle is served or waits
//! for another object to appear.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};
use stagecoach_api::condition::{ConditionStatus, find};
use stagecoach_api::{FeatureToggle, FeatureToggleStatus, Release};
use stagecoach_engine::toggle::application::reason;
use stagecoach_engine::toggle::{ApplicationInput, Problem, desired_status, plan_application};

fn at(second: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + second, 0).unwrap()
}

fn toggle(name: &str, age: i64, spec: Value) -> FeatureToggle {
    let mut toggle = FeatureToggle::new(name, serde_json::from_value(spec).unwrap());
    toggle.metadata = serde_json::from_value(json!({
        "name": name, "namespace": "team", "uid": format!("uid-{name}"), "generation": 3,
        "creationTimestamp": at(-age).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }))
    .unwrap();
    toggle
}

fn shop(name: &str, age: i64, extra: Value) -> FeatureToggle {
    let mut spec = json!({
        "application": "shop", "variants": {"on": true, "off": false}, "defaultVariant": "off"
    });
    if let (Some(spec), Value::Object(extra)) = (spec.as_object_mut(), extra) {
        spec.extend(extra);
    }
    toggle(name, age, spec)
}

fn release() -> Arc<Release> {
    let mut release = Release::new(
        "shop-1",
        serde_json::from_value(json!({
            "application": "shop", "version": "1.0.0",
            "workloads": [{"deployment": "api", "containers": [{"name": "api", "image": "x"}]}],
            "stages": [{"name": "dev", "namespace": "shop-dev"}, {"name": "prod", "namespace": "shop-prod"}]
        }))
        .unwrap(),
    );
    release.metadata = serde_json::from_value(json!({
        "name": "shop-1", "namespace": "team",
        "creationTimestamp": at(-50).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }))
    .unwrap();
    Arc::new(release)
}

/// (Ready status, Ready reason, Stalled reason if present).
fn summary(status: &FeatureToggleStatus) -> (ConditionStatus, String, Option<String>) {
    let ready = find(&status.conditions, "Ready").unwrap();
    let stalled = find(&status.conditions, "Stalled").map(|c| {
        assert_eq!(c.status, ConditionStatus::True, "present only while True");
        assert_eq!(c.observed_generation, Some(3));
        assert_eq!(c.message, ready.message, "says what Ready says");
        c.reason.clone()
    });
    assert_eq!(status.observed_generation, Some(3));
    assert!(
        find(&status.conditions, "Reconciling").is_none(),
        "a toggle is decided in one reconcile"
    );
    (ready.status, ready.reason.clone(), stalled)
}

#[test]
fn stalled_only_while_a_person_must_edit_a_spec() {
    let toggles = [
        shop(
            "served",
            30,
            json!({"stages": {"dev": {"defaultVariant": "on"}}}),
        ),
        shop("unknown-stage", 20, json!({"stages": {"staging": {}}})),
        shop("duplicate", 10, json!({"key": "served"})),
        shop(
            "waits-for-release",
            5,
            json!({"stages": {"prod": {"rules": [
                {"clients": ["acme"], "variant": "on", "when": {"release": "shop-9", "reached": "prod"}}
            ]}}}),
        ),
    ];
    let releases = [release()];
    let input = ApplicationInput::new("team", "shop", toggles.iter(), &releases);
    let (plan, _) = plan_application(&input);
    let status =
        |i: usize, problems: &[Problem]| desired_status(&toggles[i], &plan, problems, at(0));
    let s = |x: &str| x.to_owned();
    let table = [
        (
            "served",
            status(0, &[]),
            (ConditionStatus::True, s(reason::SERVED), None),
        ),
        (
            "a stage no Release has yet: waits for one",
            status(1, &[]),
            (ConditionStatus::False, s(reason::UNKNOWN_STAGE), None),
        ),
        (
            "a duplicated key: a person must rename or delete",
            status(2, &[]),
            (
                ConditionStatus::False,
                s(reason::DUPLICATE_KEY),
                Some(s(reason::DUPLICATE_KEY)),
            ),
        ),
        (
            "a missing Release: waits for it",
            status(3, &[]),
            (ConditionStatus::False, s(reason::UNKNOWN_RELEASE), None),
        ),
        (
            "a flag set not written: retried",
            status(
                0,
                &[Problem {
                    reason: reason::FLAG_SET_NOT_WRITTEN,
                    message: "namespaces \"shop-dev\" not found".into(),
                }],
            ),
            (
                ConditionStatus::False,
                s(reason::FLAG_SET_NOT_WRITTEN),
                None,
            ),
        ),
        (
            "a stage namespace taken by another application",
            status(
                0,
                &[Problem {
                    reason: reason::FLAG_SET_CONFLICT,
                    message: "taken".into(),
                }],
            ),
            (
                ConditionStatus::False,
                s(reason::FLAG_SET_CONFLICT),
                Some(s(reason::FLAG_SET_CONFLICT)),
            ),
        ),
    ];
    for (case, status, expected) in table {
        assert_eq!(
            summary(&status),
            expected,
            "{case}: {:?}",
            status.conditions
        );
    }
}

#[test]
fn stalled_goes_away_when_the_problem_does() {
    let releases = [release()];
    let served = shop("served", 30, json!({}));
    let input = ApplicationInput::new("team", "shop", [&served], &releases);
    let (plan, _) = plan_application(&input);
    let conflict = Problem {
        reason: reason::FLAG_SET_CONFLICT,
        message: "taken".into(),
    };
    let mut written = served.clone();
    written.status = Some(desired_status(&served, &plan, &[conflict], at(0)));
    assert!(summary(written.status.as_ref().unwrap()).2.is_some());
    let healed = desired_status(&written, &plan, &[], at(60));
    assert_eq!(
        summary(&healed),
        (ConditionStatus::True, "Served".to_owned(), None)
    );
    // And the healed status is stable: computing it again changes nothing.
    let mut again = written;
    again.status = Some(healed.clone());
    assert_eq!(desired_status(&again, &plan, &[], at(120)), healed);
}
