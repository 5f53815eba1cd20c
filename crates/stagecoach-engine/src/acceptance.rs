//! The `Accepted` condition: whether the operator can act on a spec at all.
//!
//! Status is computed, not accumulated: the planners here take the current status and
//! return the desired one, changing only `observedGeneration` and the `Accepted`
//! condition and keeping every other field as it was. Planning the same spec again, at
//! any later time, returns an equal status, so the controller can compare and skip the
//! write.
//!
//! Pure: the clock comes in as `now`.

use chrono::{DateTime, Utc};
use stagecoach_api::condition::{self, Condition, ConditionStatus};
use stagecoach_api::{FeatureToggleSpec, FeatureToggleStatus, ReleaseSpec, ReleaseStatus};

use crate::admission::{Rejection, check_feature_toggle, check_release};

/// Type of the condition.
pub const ACCEPTED: &str = "Accepted";
/// Reason of `Accepted=True`.
pub const VALID: &str = "Valid";

/// The `Accepted` condition for the outcome of an admission check.
pub fn accepted_condition(
    verdict: &Result<(), Rejection>,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Condition {
    match verdict {
        Ok(()) => Condition::new(
            ACCEPTED,
            ConditionStatus::True,
            VALID,
            "The spec is valid.",
            generation,
            now,
        ),
        Err(rejection) => Condition::new(
            ACCEPTED,
            ConditionStatus::False,
            rejection.reason,
            rejection.message.clone(),
            generation,
            now,
        ),
    }
}

/// The desired Release status: `current` with `observedGeneration` and `Accepted` updated.
pub fn plan_release_status(
    current: Option<&ReleaseStatus>,
    spec: &ReleaseSpec,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> ReleaseStatus {
    let mut status = current.cloned().unwrap_or_default();
    status.observed_generation = generation;
    let accepted = accepted_condition(&check_release(spec), generation, now);
    condition::upsert(&mut status.conditions, accepted);
    status
}

/// The desired FeatureToggle status: `current` with `observedGeneration` and `Accepted`
/// updated.
pub fn plan_toggle_status(
    current: Option<&FeatureToggleStatus>,
    spec: &FeatureToggleSpec,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> FeatureToggleStatus {
    let mut status = current.cloned().unwrap_or_default();
    status.observed_generation = generation;
    status.cache_digest = None;
    let accepted = accepted_condition(&check_feature_toggle(spec), generation, now);
    condition::upsert(&mut status.conditions, accepted);
    status
}

/// Whether going from `before` to `after` is a transition worth an Event: the condition
/// appears, or its status or reason changes. A new generation with the same outcome is not.
pub fn is_transition(before: Option<&Condition>, after: &Condition) -> bool {
    before.is_none_or(|b| b.status != after.status || b.reason != after.reason)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::TimeZone;
    use proptest::prelude::*;
    use stagecoach_api::release::{ReleasePhase, ReleaseType};

    use super::*;
    use crate::admission::reason;

    fn at(hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, hour, 0, 0).unwrap()
    }

    fn release(version: &str) -> ReleaseSpec {
        ReleaseSpec {
            application: "billing".into(),
            version: version.into(),
            release_type: ReleaseType::Minor,
            changes: vec![],
            notes: None,
            workloads: vec![],
            stages: None,
            paused: false,
            abort: false,
        }
    }

    fn toggle(default_variant: &str) -> FeatureToggleSpec {
        FeatureToggleSpec {
            application: "billing".into(),
            key: None,
            description: None,
            variants: BTreeMap::from([("on".to_owned(), serde_json::json!(true))]).into(),
            default_variant: default_variant.into(),
            bucket_by: None,
            stages: BTreeMap::new().into(),
        }
    }

    fn accepted(conditions: &[Condition]) -> &Condition {
        condition::find(conditions, ACCEPTED).unwrap()
    }

    #[test]
    fn valid_release_is_accepted() {
        let status = plan_release_status(None, &release("2.4.0"), Some(3), at(1));
        assert_eq!(status.observed_generation, Some(3));
        let condition = accepted(&status.conditions);
        assert_eq!(condition.status, ConditionStatus::True);
        assert_eq!(condition.reason, VALID);
        assert_eq!(condition.observed_generation, Some(3));
        assert_eq!(condition.last_transition_time, at(1));
    }

    #[test]
    fn invalid_release_is_not_accepted() {
        let status = plan_release_status(None, &release("2.4"), Some(1), at(1));
        let condition = accepted(&status.conditions);
        assert_eq!(condition.status, ConditionStatus::False);
        assert_eq!(condition.reason, reason::INVALID_VERSION);
        assert!(condition.message.contains("2.4"));
        assert_eq!(condition.observed_generation, Some(1));
    }

    #[test]
    fn replanning_later_changes_nothing() {
        let first = plan_release_status(None, &release("2.4.0"), Some(1), at(1));
        let again = plan_release_status(Some(&first), &release("2.4.0"), Some(1), at(5));
        assert_eq!(first, again);
        let first = plan_toggle_status(None, &toggle("off"), Some(1), at(1));
        let again = plan_toggle_status(Some(&first), &toggle("off"), Some(1), at(5));
        assert_eq!(first, again);
    }

    #[test]
    fn other_status_fields_are_kept() {
        let current = ReleaseStatus {
            phase: Some(ReleasePhase::Progressing),
            current_stage: Some("qa".into()),
            conditions: vec![Condition::new(
                "Progressing",
                ConditionStatus::True,
                "StepStarted",
                "",
                Some(1),
                at(0),
            )],
            ..ReleaseStatus::default()
        };
        let status = plan_release_status(Some(&current), &release("2.4.0"), Some(2), at(1));
        assert_eq!(status.phase, Some(ReleasePhase::Progressing));
        assert_eq!(status.current_stage.as_deref(), Some("qa"));
        assert_eq!(status.conditions.len(), 2);
        assert_eq!(status.conditions[0], current.conditions[0]);
    }

    #[test]
    fn new_generation_with_same_outcome_keeps_transition_time() {
        let first = plan_release_status(None, &release("2.4.0"), Some(1), at(1));
        let second = plan_release_status(Some(&first), &release("2.4.1"), Some(2), at(2));
        let condition = accepted(&second.conditions);
        assert_eq!(condition.last_transition_time, at(1));
        assert_eq!(condition.observed_generation, Some(2));
        assert_eq!(second.observed_generation, Some(2));
        assert!(!is_transition(Some(accepted(&first.conditions)), condition));
    }

    #[test]
    fn transitions() {
        let valid = plan_toggle_status(None, &toggle("on"), Some(1), at(1));
        let invalid = plan_toggle_status(Some(&valid), &toggle("off"), Some(2), at(2));
        let before = accepted(&valid.conditions);
        let after = accepted(&invalid.conditions);
        assert!(is_transition(None, before));
        assert!(is_transition(Some(before), after));
        assert_eq!(after.reason, reason::UNKNOWN_VARIANT);
        assert_eq!(after.last_transition_time, at(2));
        let mut other_reason = after.clone();
        other_reason.reason = reason::INVALID_DURATION.into();
        assert!(is_transition(Some(after), &other_reason));
    }

    proptest! {
        #[test]
        fn planning_is_idempotent(version in "[0-9.a-z-]{0,8}", g1 in 1i64..5, g2 in 5i64..9, h in 0u32..23) {
            let first = plan_release_status(None, &release(&version), Some(g1), at(h));
            let second = plan_release_status(Some(&first), &release(&version), Some(g2), at(h + 1));
            let third = plan_release_status(Some(&second), &release(&version), Some(g2), at(23));
            prop_assert_eq!(&second, &third);
            prop_assert_eq!(accepted(&second.conditions).last_transition_time, at(h));
        }
    }
}
