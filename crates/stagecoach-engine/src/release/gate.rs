//! The gate model: every gate, built in or provided, yields measurements with a verdict
//! (Passing, Failing, Inconclusive); the model turns a run of measurements into a
//! decision for the step (pass, fail, keep waiting, or hold for a person) using the gate's
//! count, failure limit and inconclusive limit. Providers (Prometheus, HTTP, Job) only
//! produce [`Measurement`]s (see [`super::providers`]); the planner never needs to know
//! which kind a gate is.

use chrono::{DateTime, Utc};
use stagecoach_api::release::{Gate, GateStatus, GateVerdict, InconclusivePolicy, Workload};

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
    /// Inconclusive measurements in a row tolerated; one more applies `on_inconclusive`.
    /// `None`: no limit (the built-in gate, which the progress deadline governs instead).
    pub inconclusive_limit: Option<i32>,
    /// What happens past `inconclusive_limit`: hold the release for a person, or fail.
    pub on_inconclusive: InconclusivePolicy,
}

/// Default `inconclusiveLimit` of a configured gate.
pub const DEFAULT_INCONCLUSIVE_LIMIT: i32 = 3;

impl GateModel {
    /// The built-in gate decides on its first measurement either way, and never holds:
    /// while it is inconclusive the progress deadline runs.
    pub const IMMEDIATE: Self = Self {
        count: 1,
        failure_limit: 0,
        inconclusive_limit: None,
        on_inconclusive: InconclusivePolicy::Pause,
    };

    /// The model of a configured gate, with the API's defaults: count 1, failureLimit 0,
    /// inconclusiveLimit 3, onInconclusive Pause.
    pub fn of(gate: &Gate) -> Self {
        Self {
            count: gate.count.unwrap_or(1).max(1),
            failure_limit: gate.failure_limit.unwrap_or(0).max(0),
            inconclusive_limit: Some(
                gate.inconclusive_limit
                    .unwrap_or(DEFAULT_INCONCLUSIVE_LIMIT)
                    .max(0),
            ),
            on_inconclusive: gate.on_inconclusive.unwrap_or(InconclusivePolicy::Pause),
        }
    }
}

/// What the gate says about the current step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateDecision {
    /// Enough passing measurements, and the latest one passes.
    Pass,
    /// More failing measurements than the failure limit (or inconclusive ones past the
    /// limit, with policy Fail): the stage rolls back.
    Fail,
    /// Not decided yet: keep measuring.
    Wait,
    /// Inconclusive past the limit with policy Pause: the release waits for a person, or
    /// for the next conclusive measurement.
    Hold,
}

/// The status of a gate that has not been measured in the current step.
pub fn unmeasured(name: &str) -> GateStatus {
    GateStatus {
        name: name.to_owned(),
        verdict: GateVerdict::Inconclusive,
        message: NOT_MEASURED.to_owned(),
        successes: 0,
        failures: 0,
        inconclusive: 0,
        value: None,
        last_evaluated_at: None,
    }
}

/// The message of a gate with no measurement in the current step yet.
pub const NOT_MEASURED: &str = "not measured yet";

/// Folds a measurement into the gate's tally (kept in status). A measurement not newer
/// than the last one counted is not counted again, so replaying the planner never
/// inflates counts. The status changes only when the verdict, message or tally changes.
///
/// A configured gate's Inconclusive measurements are counted in a row (`inconclusive`); a
/// Passing or Failing one resets that run. An Inconclusive measurement never counts as
/// passing.
pub fn tally(
    name: &str,
    previous: Option<&GateStatus>,
    measurement: &Measurement,
    model: GateModel,
) -> (GateStatus, GateDecision) {
    let mut status = previous.cloned().unwrap_or_else(|| unmeasured(name));
    let changed = status.verdict != measurement.verdict
        || status.message != measurement.message
        || status.value != measurement.value;
    // A gate that decides on one measurement records every change and nothing else, so
    // re-measuring the same state every reconcile writes nothing, and a change within the
    // same second as the last one (status times are whole seconds) still counts. A gate
    // that counts records each measurement newer than the last one it counted, compared
    // in whole seconds (what status keeps), so a measurement is never counted twice.
    let at = if model == GateModel::IMMEDIATE {
        measurement.at
    } else {
        whole_second(measurement.at)
    };
    let record = if model == GateModel::IMMEDIATE {
        changed
    } else {
        status.last_evaluated_at.is_none_or(|t| at > t)
    };
    if record {
        match measurement.verdict {
            GateVerdict::Passing => {
                status.successes += 1;
                status.inconclusive = 0;
            }
            GateVerdict::Failing => {
                status.failures += 1;
                status.inconclusive = 0;
            }
            // The built-in gate has no limit (its deadline governs it), and records changes
            // rather than evaluations: its runs are not counted.
            GateVerdict::Inconclusive if model.inconclusive_limit.is_some() => {
                status.inconclusive += 1;
            }
            GateVerdict::Inconclusive => {}
        }
        status.verdict = measurement.verdict;
        status.message.clone_from(&measurement.message);
        status.value.clone_from(&measurement.value);
        status.last_evaluated_at = Some(at);
    }
    let decision = decide(&status, model);
    (status, decision)
}

/// What a gate's tally means for the step: Fail past the failure limit; past the
/// inconclusive limit Fail or Hold (the gate's policy); Pass when the latest measurement
/// passes and enough have; else Wait.
pub fn decide(status: &GateStatus, model: GateModel) -> GateDecision {
    if status.failures > model.failure_limit {
        GateDecision::Fail
    } else if model
        .inconclusive_limit
        .is_some_and(|limit| status.inconclusive > limit)
    {
        match model.on_inconclusive {
            InconclusivePolicy::Fail => GateDecision::Fail,
            InconclusivePolicy::Pause => GateDecision::Hold,
        }
    } else if status.verdict == GateVerdict::Passing && status.successes >= model.count {
        GateDecision::Pass
    } else {
        GateDecision::Wait
    }
}

/// Several gates' decisions as one: any Fail fails, else any Hold holds, else all must
/// Pass (no gate at all passes), else Wait.
pub fn combine(decisions: &[GateDecision]) -> GateDecision {
    if decisions.contains(&GateDecision::Fail) {
        GateDecision::Fail
    } else if decisions.contains(&GateDecision::Hold) {
        GateDecision::Hold
    } else if decisions.iter().all(|d| *d == GateDecision::Pass) {
        GateDecision::Pass
    } else {
        GateDecision::Wait
    }
}

/// `at` without its fraction of a second.
pub fn whole_second(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(at.timestamp(), 0).unwrap_or(at)
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
            inconclusive_limit: Some(3),
            on_inconclusive: InconclusivePolicy::Pause,
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

    fn counting(inconclusive_limit: i32, on_inconclusive: InconclusivePolicy) -> GateModel {
        GateModel {
            count: 2,
            failure_limit: 0,
            inconclusive_limit: Some(inconclusive_limit),
            on_inconclusive,
        }
    }

    /// Folds the verdicts, one a second, and returns the status and every decision.
    fn fold(verdicts: &[GateVerdict], model: GateModel) -> (GateStatus, Vec<GateDecision>) {
        let mut status = None;
        let mut decisions = Vec::new();
        for (i, verdict) in verdicts.iter().enumerate() {
            let (next, decision) = tally(
                "g",
                status.as_ref(),
                &m(*verdict, i64::try_from(i).unwrap() + 1),
                model,
            );
            status = Some(next);
            decisions.push(decision);
        }
        (status.unwrap(), decisions)
    }

    #[test]
    fn inconclusive_results_in_a_row_past_the_limit_hold_or_fail() {
        use GateDecision::{Fail, Hold, Wait};
        use GateVerdict::Inconclusive as I;
        let (status, decisions) = fold(&[I, I, I], counting(2, InconclusivePolicy::Pause));
        assert_eq!(decisions, [Wait, Wait, Hold]);
        assert_eq!(status.inconclusive, 3);
        assert_eq!(status.successes, 0);
        let (_, decisions) = fold(&[I, I, I], counting(2, InconclusivePolicy::Fail));
        assert_eq!(decisions, [Wait, Wait, Fail]);
        // A limit of 0 tolerates none.
        let (_, decisions) = fold(&[I], counting(0, InconclusivePolicy::Pause));
        assert_eq!(decisions, [Hold]);
    }

    #[test]
    fn a_conclusive_result_ends_a_hold_and_resets_the_run() {
        use GateDecision::{Fail, Hold, Pass, Wait};
        use GateVerdict::{Failing as F, Inconclusive as I, Passing as P};
        let model = counting(1, InconclusivePolicy::Pause);
        // Held, then a pass counts (1 of 2), and a second one passes the gate.
        let (status, decisions) = fold(&[I, I, P, P], model);
        assert_eq!(decisions, [Wait, Hold, Wait, Pass]);
        assert_eq!((status.inconclusive, status.successes), (0, 2));
        // Inconclusive results not in a row never add up to the limit.
        let (_, decisions) = fold(&[I, P, I, P], model);
        assert_eq!(decisions, [Wait, Wait, Wait, Pass]);
        // Held, then a failure counts toward the failure limit.
        let (status, decisions) = fold(&[I, I, F], model);
        assert_eq!(decisions, [Wait, Hold, Fail]);
        assert_eq!((status.inconclusive, status.failures), (0, 1));
    }

    #[test]
    fn a_gate_passes_only_on_a_passing_latest_result() {
        use GateDecision::{Pass, Wait};
        use GateVerdict::{Inconclusive as I, Passing as P};
        let model = counting(5, InconclusivePolicy::Pause);
        // Two passes were counted, but the latest result is inconclusive: not passing.
        let (status, decisions) = fold(&[P, P, I], model);
        assert_eq!(decisions, [Wait, Pass, Wait]);
        assert_eq!(status.verdict, GateVerdict::Inconclusive);
        assert_eq!(decide(&status, model), Wait);
    }

    #[test]
    fn the_measured_value_is_kept_and_times_compare_in_whole_seconds() {
        let model = counting(3, InconclusivePolicy::Pause);
        let first = Measurement {
            value: Some("0.02".into()),
            at: at(1) + chrono::Duration::milliseconds(700),
            ..m(GateVerdict::Passing, 1)
        };
        let (s1, _) = tally("g", None, &first, model);
        assert_eq!(s1.value.as_deref(), Some("0.02"));
        assert_eq!(s1.last_evaluated_at, Some(at(1)));
        // The same measurement again (its time read back from status loses the
        // fraction) is not counted twice.
        let (s2, _) = tally("g", Some(&s1), &first, model);
        assert_eq!(s2, s1);
    }

    #[test]
    fn decisions_combine_fail_first_then_hold_then_all_pass() {
        use GateDecision::{Fail, Hold, Pass, Wait};
        assert_eq!(combine(&[]), Pass);
        assert_eq!(combine(&[Pass, Pass]), Pass);
        assert_eq!(combine(&[Pass, Wait]), Wait);
        assert_eq!(combine(&[Wait, Hold, Pass]), Hold);
        assert_eq!(combine(&[Hold, Fail]), Fail);
    }

    #[test]
    fn the_built_in_gate_never_holds() {
        let changes: Vec<Measurement> = (1..=5)
            .map(|i| Measurement {
                message: format!("{i}/10 ready"),
                ..m(GateVerdict::Inconclusive, i)
            })
            .collect();
        let mut status = None;
        for change in &changes {
            let (next, decision) = tally("g", status.as_ref(), change, GateModel::IMMEDIATE);
            assert_eq!(decision, GateDecision::Wait);
            status = Some(next);
        }
        let status = status.unwrap();
        assert_eq!((status.successes, status.inconclusive), (0, 0));
        assert_eq!(status.message, "5/10 ready");
    }

    #[test]
    fn the_model_of_a_configured_gate_has_the_api_defaults() {
        let gate: Gate = serde_json::from_value(serde_json::json!({
            "name": "smoke", "job": {"image": "smoke:1"}
        }))
        .unwrap();
        assert_eq!(
            GateModel::of(&gate),
            GateModel {
                count: 1,
                failure_limit: 0,
                inconclusive_limit: Some(3),
                on_inconclusive: InconclusivePolicy::Pause,
            }
        );
    }

    proptest::proptest! {
        /// Whatever the verdicts: an Inconclusive latest result never passes; the gate
        /// fails exactly when failures pass the limit (or, with policy Fail, inconclusive
        /// results in a row do); it holds only with policy Pause; replaying a measurement
        /// changes nothing.
        #[test]
        fn decisions_follow_the_tally(
            verdicts in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just(GateVerdict::Passing),
                    proptest::strategy::Just(GateVerdict::Failing),
                    proptest::strategy::Just(GateVerdict::Inconclusive),
                ],
                1..20,
            ),
            count in 1i32..4,
            failure_limit in 0i32..3,
            inconclusive_limit in 0i32..4,
            fail_policy in proptest::bool::ANY,
        ) {
            let policy = if fail_policy { InconclusivePolicy::Fail } else { InconclusivePolicy::Pause };
            let model = GateModel { count, failure_limit, inconclusive_limit: Some(inconclusive_limit), on_inconclusive: policy };
            let mut status: Option<GateStatus> = None;
            let mut run = 0;
            for (i, verdict) in verdicts.iter().enumerate() {
                let measurement = m(*verdict, i64::try_from(i).unwrap() + 1);
                let (next, decision) = tally("g", status.as_ref(), &measurement, model);
                run = if *verdict == GateVerdict::Inconclusive { run + 1 } else { 0 };
                proptest::prop_assert_eq!(next.inconclusive, run);
                if decision == GateDecision::Pass {
                    proptest::prop_assert_eq!(*verdict, GateVerdict::Passing);
                }
                let failed = next.failures > failure_limit || (fail_policy && run > inconclusive_limit);
                proptest::prop_assert_eq!(decision == GateDecision::Fail, failed);
                proptest::prop_assert_eq!(decision == GateDecision::Hold, !failed && !fail_policy && run > inconclusive_limit);
                let (again, same) = tally("g", Some(&next), &measurement, model);
                proptest::prop_assert_eq!(&again, &next);
                proptest::prop_assert_eq!(same, decision);
                status = Some(next);
            }
        }
    }
}
