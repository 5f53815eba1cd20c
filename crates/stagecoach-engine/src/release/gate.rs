//! The gate model: every gate, built in or provided, yields measurements with a verdict
//! (Passing, Failing, Inconclusive); the model turns a run of measurements into a
//! decision for the step (pass, fail, keep waiting) using the gate's count and failure
//! limit. Providers (Prometheus, HTTP, Job) only produce [`Measurement`]s; the planner
//! never needs to know which kind a gate is.

use chrono::{DateTime, Utc};
use stagecoach_api::release::{GateStatus, GateVerdict, Workload};

use super::observed::WorkloadObservation;
use super::rollout::runs_release_images;

/// Name of the built-in gate.
pub const WORKLOAD_HEALTH: &str = "workload-health";

/// Restarts of a new pod at which it counts as failing.
pub const RESTART_LIMIT: i32 = 3;

/// One evaluation of a gate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Measurement {
    pub verdict: GateVerdict,
    pub message: String,
    /// The value measured, when there is one (a query's result, a JSON field).
    pub value: Option<String>,
    /// When it was measured; a measurement is counted once.
    pub at: DateTime<Utc>,
}

/// How many measurements decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateModel {
    /// Passing measurements needed before a step may complete.
    pub count: i32,
    /// Failing measurements tolerated; one more fails the gate.
    pub failure_limit: i32,
}

impl GateModel {
    /// The built-in gate decides on its first measurement either way.
    pub const IMMEDIATE: Self = Self {
        count: 1,
        failure_limit: 0,
    };
}

/// What the gate says about the current step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateDecision {
    Pass,
    Fail,
    Wait,
}

/// Folds a measurement into the gate's tally (kept in status). A measurement not newer
/// than the last one counted is not counted again, so replaying the planner never
/// inflates counts. The status changes only when the verdict, message or tally changes.
pub fn tally(
    name: &str,
    previous: Option<&GateStatus>,
    measurement: &Measurement,
    model: GateModel,
) -> (GateStatus, GateDecision) {
    let mut status = previous.cloned().unwrap_or(GateStatus {
        name: name.to_owned(),
        verdict: GateVerdict::Inconclusive,
        message: String::new(),
        successes: 0,
        failures: 0,
        inconclusive: 0,
        value: None,
        last_evaluated_at: None,
    });
    let changed = status.verdict != measurement.verdict || status.message != measurement.message;
    // A gate that decides on one measurement records every change and nothing else, so
    // re-measuring the same state every reconcile writes nothing, and a change within the
    // same second as the last one (status times are whole seconds) still counts. A gate
    // that counts records each measurement newer than the last one it counted.
    let record = if model == GateModel::IMMEDIATE {
        changed
    } else {
        status.last_evaluated_at.is_none_or(|t| measurement.at > t)
    };
    if record {
        match measurement.verdict {
            GateVerdict::Passing => status.successes += 1,
            GateVerdict::Failing => status.failures += 1,
            GateVerdict::Inconclusive => {}
        }
        status.verdict = measurement.verdict;
        status.message.clone_from(&measurement.message);
        status.last_evaluated_at = Some(measurement.at);
    }
    let decision = if status.failures > model.failure_limit {
        GateDecision::Fail
    } else if status.verdict == GateVerdict::Passing && status.successes >= model.count {
        GateDecision::Pass
    } else {
        GateDecision::Wait
    };
    (status, decision)
}

/// Which part of a stage the built-in gate is judging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthTarget {
    /// A canary step at this weight: each canary must reach its size in ready pods.
    Canary { weight: i32 },
    /// The stable Deployment is being updated to the release.
    Stable,
    /// After rollout (early life support): new pods must stay healthy.
    Steady,
}

/// What the built-in gate measured, and why it fails when it does: the planner reports a
/// failure that is only the progress deadline passing as `ProgressDeadlineExceeded`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthMeasurement {
    pub measurement: Measurement,
    /// Failing because new pods were not ready when the progress deadline passed (not
    /// because something crashed or a Deployment gave up).
    pub deadline_exceeded: bool,
}

/// The built-in `workload-health` gate over every workload of a stage.
#[allow(clippy::too_many_lines)] // one match over the health targets reads best in one place
pub fn workload_health(
    workloads: &[(&Workload, &WorkloadObservation)],
    target: HealthTarget,
    deadline_passed: bool,
    now: DateTime<Utc>,
) -> HealthMeasurement {
    let measure = |verdict, message: String| HealthMeasurement {
        measurement: Measurement {
            verdict,
            message,
            value: None,
            at: now,
        },
        deadline_exceeded: false,
    };
    let mut waiting = Vec::new();
    let mut healthy = Vec::new();
    for (workload, observed) in workloads {
        let name = &workload.deployment;
        let pods = observed.new_pods;
        if pods.crash_looping > 0 {
            return measure(
                GateVerdict::Failing,
                format!(
                    "{name}: {} new pod(s) in CrashLoopBackOff",
                    pods.crash_looping
                ),
            );
        }
        if pods.max_restarts >= RESTART_LIMIT {
            return measure(
                GateVerdict::Failing,
                format!("{name}: a new pod restarted {} times", pods.max_restarts),
            );
        }
        let Some(stable) = &observed.stable else {
            return measure(
                GateVerdict::Inconclusive,
                format!("{name}: Deployment not found"),
            );
        };
        match target {
            HealthTarget::Canary { weight } => {
                let expected = super::rollout::canary_replicas(weight, stable.replicas);
                // Ready pods on the new images are the canary's: the stable Deployment
                // is untouched below 100 %. Pods are the first to know (the Deployment's
                // readyReplicas follows later).
                let ready = pods
                    .ready
                    .min(observed.canary.as_ref().map_or(0, |c| c.replicas));
                if observed
                    .canary
                    .as_ref()
                    .is_some_and(|c| c.deadline_exceeded)
                {
                    return measure(
                        GateVerdict::Failing,
                        format!("{name}: canary Deployment exceeded its progress deadline"),
                    );
                }
                if ready >= expected {
                    healthy.push(format!("{name}: {ready}/{expected} canary pods ready"));
                } else {
                    waiting.push(format!("{name}: {ready}/{expected} canary pods ready"));
                }
            }
            HealthTarget::Stable => {
                if stable.deadline_exceeded {
                    return measure(
                        GateVerdict::Failing,
                        format!("{name}: Deployment exceeded its progress deadline"),
                    );
                }
                let on_release = runs_release_images(&stable.template, workload);
                if on_release && stable.rolled_out() {
                    healthy.push(format!(
                        "{name}: {}/{} pods updated and available",
                        stable.available, stable.replicas
                    ));
                } else {
                    waiting.push(format!(
                        "{name}: {}/{} pods updated, {} available",
                        stable.updated, stable.replicas, stable.available
                    ));
                }
            }
            HealthTarget::Steady => {
                if pods.ready < pods.total {
                    waiting.push(format!(
                        "{name}: {}/{} new pods ready",
                        pods.ready, pods.total
                    ));
                } else {
                    healthy.push(format!(
                        "{name}: {}/{} new pods ready",
                        pods.ready, pods.total
                    ));
                }
            }
        }
    }
    if waiting.is_empty() {
        measure(GateVerdict::Passing, healthy.join("; "))
    } else if deadline_passed && target != HealthTarget::Steady {
        HealthMeasurement {
            deadline_exceeded: true,
            ..measure(
                GateVerdict::Failing,
                format!("progress deadline passed: {}", waiting.join("; ")),
            )
        }
    } else {
        measure(GateVerdict::Inconclusive, waiting.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    fn m(verdict: GateVerdict, s: i64) -> Measurement {
        Measurement {
            verdict,
            message: format!("{verdict:?} at {s}"),
            value: None,
            at: at(s),
        }
    }

    #[test]
    fn counts_each_measurement_once() {
        let model = GateModel {
            count: 2,
            failure_limit: 1,
        };
        let (s1, d1) = tally("g", None, &m(GateVerdict::Passing, 1), model);
        assert_eq!((s1.successes, d1), (1, GateDecision::Wait));
        // Replaying the same measurement changes nothing.
        let (s1b, _) = tally("g", Some(&s1), &m(GateVerdict::Passing, 1), model);
        assert_eq!(s1b, s1);
        let (s2, d2) = tally("g", Some(&s1), &m(GateVerdict::Passing, 2), model);
        assert_eq!((s2.successes, d2), (2, GateDecision::Pass));
        let (s3, d3) = tally("g", Some(&s2), &m(GateVerdict::Failing, 3), model);
        assert_eq!((s3.failures, d3), (1, GateDecision::Wait));
        let (s4, d4) = tally("g", Some(&s3), &m(GateVerdict::Failing, 4), model);
        assert_eq!((s4.failures, d4), (2, GateDecision::Fail));
    }

    #[test]
    fn the_built_in_gate_records_a_change_within_the_same_second() {
        let (s1, d1) = tally(
            "g",
            None,
            &m(GateVerdict::Inconclusive, 5),
            GateModel::IMMEDIATE,
        );
        assert_eq!(d1, GateDecision::Wait);
        let same_second = Measurement {
            verdict: GateVerdict::Passing,
            message: "ready".into(),
            value: None,
            at: at(5),
        };
        let (s2, d2) = tally("g", Some(&s1), &same_second, GateModel::IMMEDIATE);
        assert_eq!(d2, GateDecision::Pass);
        // And re-measuring the same state later changes nothing.
        let later = Measurement {
            at: at(9),
            ..same_second
        };
        let (s3, _) = tally("g", Some(&s2), &later, GateModel::IMMEDIATE);
        assert_eq!(s3, s2);
    }

    #[test]
    fn inconclusive_never_passes() {
        let (s, d) = tally(
            "g",
            None,
            &m(GateVerdict::Inconclusive, 1),
            GateModel::IMMEDIATE,
        );
        assert_eq!(d, GateDecision::Wait);
        assert_eq!(s.successes, 0);
    }
}
