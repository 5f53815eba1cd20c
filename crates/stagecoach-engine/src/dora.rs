//! DORA metrics of an application, from the audit records of its releases.
//!
//! Each record carries the [`Facts`] of its release, computed once when the record is
//! written ([`Facts::of`]); [`report`] folds the facts of an application's records over a
//! window into the four figures. The operator exports them as gauges and
//! `kubectl stagecoach dora` prints them, both with this function.
//!
//! # Definitions
//!
//! The *last stage* is the last stage of the release (prod in the default pipeline).
//!
//! - **Deployment frequency**: releases whose last stage reached 100 % (the start of its
//!   early life support) in the window, per day of the window. A release rolled back
//!   during early life support was deployed, and counts.
//! - **Lead time for changes**: for each change of a deployed release, from its
//!   `mergedAt` (or, when not given, from the Release's creation) to the last stage
//!   reaching 100 %; the median over the changes deployed in the window.
//! - **Change failure rate**: of the releases that entered the last stage in the window,
//!   the share rolled back there (during the rollout or its early life support, for any
//!   reason: a failed gate, a progress deadline, an abort by a person).
//! - **Time to restore**: for each such rollback completed in the window, from the first
//!   failing verdict of the stage (the earliest `lastEvaluatedAt` of a gate that was
//!   Failing; for an abort, the rollback itself) to the rollback (the stable revision
//!   restored); the median.
//!
//! Records are written when a release ends, so a release still in early life support is
//! counted once it has ended.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use stagecoach_api::release::{GateVerdict, ReleaseSpec, ReleaseStatus, StagePhase, StageStatus};

use crate::release::plan::reason;

/// What one release contributes to the DORA metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Facts {
    /// The release's last stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_stage: Option<String>,
    /// When the release entered its last stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entered_last_stage_at: Option<DateTime<Utc>>,
    /// When the last stage reached 100 %: the deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_at: Option<DateTime<Utc>>,
    /// One lead time per change (or one from the Release's creation when it lists none),
    /// in seconds; empty unless deployed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lead_times_seconds: Vec<i64>,
    /// The last stage was rolled back.
    #[serde(default)]
    pub failed: bool,
    /// The first failing verdict that led to that rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_detected_at: Option<DateTime<Utc>>,
    /// When the rollback restored the stable revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_at: Option<DateTime<Utc>>,
}

/// The earliest evaluation time of a gate of the stage that was Failing when the stage
/// was rolled back at `rolled_back`; `None` when no gate was.
pub fn failing_since(stage: &StageStatus, rolled_back: DateTime<Utc>) -> Option<DateTime<Utc>> {
    stage
        .gates
        .iter()
        .filter(|g| g.verdict == GateVerdict::Failing)
        .filter_map(|g| g.last_evaluated_at)
        .filter(|at| *at <= rolled_back)
        .min()
}

impl Facts {
    /// The facts of a release from its spec and status (see the module documentation).
    pub fn of(created: DateTime<Utc>, spec: &ReleaseSpec, status: &ReleaseStatus) -> Self {
        let Some(last) = status.stages.last() else {
            return Self::default();
        };
        let rollback = status.rollbacks.iter().rev().find(|r| r.stage == last.name);
        let deployed_at = status
            .timeline
            .iter()
            .rev()
            .find(|t| {
                t.reason == reason::EARLY_LIFE_SUPPORT && t.stage.as_deref() == Some(&last.name)
            })
            .map(|t| t.at)
            .or_else(|| {
                // The timeline is bounded; early life support starts the last stage's
                // last "step", so its start is kept there too.
                let reached = matches!(
                    last.phase,
                    StagePhase::Succeeded | StagePhase::EarlyLifeSupport
                ) || rollback
                    .is_some_and(|r| r.reason == reason::EARLY_LIFE_SUPPORT_FAILED);
                reached.then_some(last.step_started_at).flatten()
            });
        let lead_times_seconds = deployed_at.map_or_else(Vec::new, |deployed| {
            if spec.changes.is_empty() {
                vec![(deployed - created).num_seconds().max(0)]
            } else {
                spec.changes
                    .iter()
                    .map(|c| {
                        (deployed - c.merged_at.unwrap_or(created))
                            .num_seconds()
                            .max(0)
                    })
                    .collect()
            }
        });
        Self {
            last_stage: Some(last.name.clone()),
            entered_last_stage_at: last.started_at,
            deployed_at,
            lead_times_seconds,
            failed: rollback.is_some(),
            failure_detected_at: rollback.map(|r| failing_since(last, r.at).unwrap_or(r.at)),
            restored_at: rollback.map(|r| r.at),
        }
    }
}

/// Count, median and mean of a set of durations, in seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub count: usize,
    pub median_seconds: f64,
    pub mean_seconds: f64,
}

impl Summary {
    /// The summary of `samples`; `None` when there are none.
    pub fn of(samples: &[i64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let n = sorted.len();
        #[allow(clippy::cast_precision_loss)] // seconds and counts far below 2^52
        let median = if n % 2 == 1 {
            sorted[n / 2] as f64
        } else {
            f64::midpoint(sorted[n / 2 - 1] as f64, sorted[n / 2] as f64)
        };
        #[allow(clippy::cast_precision_loss)]
        let mean = sorted.iter().map(|s| *s as f64).sum::<f64>() / n as f64;
        Some(Self {
            count: n,
            median_seconds: median,
            mean_seconds: mean,
        })
    }
}

/// The four figures over a window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// Releases deployed to the last stage in the window.
    pub deployments: usize,
    /// Deployments per day of the window.
    pub deployments_per_day: f64,
    /// Days (UTC) with at least one deployment.
    pub days_with_deployments: usize,
    /// Lead time for changes deployed in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lead_time: Option<Summary>,
    /// Releases that entered the last stage in the window.
    pub releases_entering_last_stage: usize,
    /// Of those, the ones rolled back there.
    pub failures: usize,
    /// failures / releasesEnteringLastStage; absent when none entered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_failure_rate: Option<f64>,
    /// Time to restore of the rollbacks in the last stage completed in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_restore: Option<Summary>,
}

fn within(at: Option<DateTime<Utc>>, since: DateTime<Utc>, until: DateTime<Utc>) -> bool {
    at.is_some_and(|t| t >= since && t <= until)
}

/// The DORA figures of one application's releases over `[since, until]`.
pub fn report(facts: &[Facts], since: DateTime<Utc>, until: DateTime<Utc>) -> Report {
    let deployed: Vec<&Facts> = facts
        .iter()
        .filter(|f| within(f.deployed_at, since, until))
        .collect();
    let mut days: Vec<chrono::NaiveDate> = deployed
        .iter()
        .filter_map(|f| f.deployed_at.map(|t| t.date_naive()))
        .collect();
    days.sort_unstable();
    days.dedup();
    let lead_times: Vec<i64> = deployed
        .iter()
        .flat_map(|f| f.lead_times_seconds.iter().copied())
        .collect();
    let entering: Vec<&Facts> = facts
        .iter()
        .filter(|f| within(f.entered_last_stage_at, since, until))
        .collect();
    let failures = entering.iter().filter(|f| f.failed).count();
    let restores: Vec<i64> = facts
        .iter()
        .filter(|f| f.failed && within(f.restored_at, since, until))
        .filter_map(|f| {
            Some(
                (f.restored_at? - f.failure_detected_at?)
                    .num_seconds()
                    .max(0),
            )
        })
        .collect();
    #[allow(clippy::cast_precision_loss)] // seconds and counts far below 2^52
    let per_day = deployed.len() as f64 / ((until - since).num_seconds().max(1) as f64 / 86_400.0);
    #[allow(clippy::cast_precision_loss)]
    let rate = (!entering.is_empty()).then(|| failures as f64 / entering.len() as f64);
    Report {
        since,
        until,
        deployments: deployed.len(),
        deployments_per_day: per_day,
        days_with_deployments: days.len(),
        lead_time: Summary::of(&lead_times),
        releases_entering_last_stage: entering.len(),
        failures,
        change_failure_rate: rate,
        time_to_restore: Summary::of(&restores),
    }
}

/// The facts a record document carries (its `dora` field); `None` for a document
/// without them.
pub fn facts_of_document(doc: &serde_json::Value) -> Option<Facts> {
    serde_json::from_value(doc.get("dora")?.clone()).ok()
}

#[cfg(test)]
mod tests;
