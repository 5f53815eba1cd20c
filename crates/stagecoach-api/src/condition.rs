//! Conditions in the standard `metav1.Condition` shape, with helpers that keep
//! `lastTransitionTime` honest (it moves only when `status` changes).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Status of a condition: True, False or Unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// One aspect of the object's state, as in metav1.Condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Kind of condition, in CamelCase: Accepted, Ready, Progressing, Degraded.
    #[schemars(length(max = 64))]
    pub r#type: String,
    /// True, False or Unknown.
    pub status: ConditionStatus,
    /// Machine-readable reason for the last transition, in CamelCase.
    #[schemars(length(max = 128))]
    pub reason: String,
    /// Human-readable explanation.
    #[serde(default)]
    #[schemars(length(max = 4096))]
    pub message: String,
    /// The metadata.generation the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When status last changed.
    pub last_transition_time: DateTime<Utc>,
}

impl Condition {
    /// A new condition that transitions now.
    pub fn new(
        r#type: &str,
        status: ConditionStatus,
        reason: &str,
        message: impl Into<String>,
        observed_generation: Option<i64>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            r#type: r#type.to_owned(),
            status,
            reason: reason.to_owned(),
            message: message.into(),
            observed_generation,
            last_transition_time: now,
        }
    }
}

/// Puts `desired` into `conditions`, replacing the one of the same type. The previous
/// `lastTransitionTime` is kept when the status did not change, so re-computing the same
/// condition never produces a different object (and so never a write).
pub fn upsert(conditions: &mut Vec<Condition>, mut desired: Condition) {
    if let Some(existing) = conditions.iter_mut().find(|c| c.r#type == desired.r#type) {
        if existing.status == desired.status {
            desired.last_transition_time = existing.last_transition_time;
        }
        *existing = desired;
    } else {
        conditions.push(desired);
    }
}

/// The condition of the given type, if present.
pub fn find<'a>(conditions: &'a [Condition], r#type: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.r#type == r#type)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn upsert_keeps_transition_time_when_status_unchanged() {
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let t1 = Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).unwrap();
        let mut conditions = vec![];
        upsert(
            &mut conditions,
            Condition::new("Accepted", ConditionStatus::True, "Valid", "", Some(1), t0),
        );
        upsert(
            &mut conditions,
            Condition::new("Accepted", ConditionStatus::True, "Valid", "", Some(2), t1),
        );
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, t0);
        assert_eq!(conditions[0].observed_generation, Some(2));
        upsert(
            &mut conditions,
            Condition::new("Accepted", ConditionStatus::False, "Bad", "", Some(3), t1),
        );
        assert_eq!(conditions[0].last_transition_time, t1);
    }
}
