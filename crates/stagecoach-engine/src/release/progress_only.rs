//! Whether a status change only reports progress.
//!
//! Some status changes decide something (a step taken, a gate counted, a phase, a
//! rollback, a record of how to restore); others only say how far a wait has come ("2/3
//! pods updated, 1 available"). Both are worth showing, but the second kind changes with
//! every pod the controller-manager updates, and each Release write costs the API server
//! several times what a small object costs. The operator writes a decision at once and
//! progress at most every few seconds (see the operator's release controller).

use stagecoach_api::ReleaseStatus;

/// True when `after` differs from `before` only in the texts that report progress (the
/// release's, its conditions', its stages' and its gates' messages) and in a gate's
/// latest measured value and time when its verdict and tallies stay the same. False when
/// there is no status yet or anything else differs.
pub fn progress_only(before: Option<&ReleaseStatus>, after: &ReleaseStatus) -> bool {
    let Some(before) = before else {
        return false;
    };
    before != after && without_progress(before) == without_progress(after)
}

/// The status with every progress-only field blanked.
fn without_progress(status: &ReleaseStatus) -> ReleaseStatus {
    let mut s = status.clone();
    s.message = None;
    for c in &mut s.conditions {
        c.message.clear();
    }
    for stage in &mut s.stages {
        stage.message = None;
        for gate in &mut stage.gates {
            gate.message.clear();
            gate.value = None;
            gate.last_evaluated_at = None;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use stagecoach_api::release::{GateStatus, GateVerdict, StagePhase, StageStatus};

    fn status() -> ReleaseStatus {
        ReleaseStatus {
            message: Some("stage prod: 50% (step 3/5), 0/2 canary pods ready".into()),
            stages: vec![StageStatus {
                name: "prod".into(),
                namespace: "billing-prod".into(),
                phase: StagePhase::Progressing,
                step: Some(2),
                weight: Some(50),
                gates: vec![GateStatus {
                    name: "workload-health".into(),
                    verdict: GateVerdict::Inconclusive,
                    message: "api: 0/2 canary pods ready".into(),
                    successes: 0,
                    failures: 0,
                    inconclusive: 0,
                    value: None,
                    last_evaluated_at: Some(Utc.timestamp_opt(1_800_000_000, 0).unwrap()),
                }],
                started_at: None,
                step_started_at: None,
                finished_at: None,
                stable_revisions: Vec::new(),
                message: None,
            }],
            ..ReleaseStatus::default()
        }
    }

    #[test]
    fn a_new_pod_count_is_progress() {
        let before = status();
        let mut after = before.clone();
        after.message = Some("stage prod: 50% (step 3/5), 1/2 canary pods ready".into());
        after.stages[0].gates[0].message = "api: 1/2 canary pods ready".into();
        after.stages[0].gates[0].last_evaluated_at =
            Some(Utc.timestamp_opt(1_800_000_003, 0).unwrap());
        assert!(progress_only(Some(&before), &after));
    }

    #[test]
    fn a_step_a_verdict_a_tally_or_a_first_status_is_a_decision() {
        let before = status();
        assert!(!progress_only(None, &before));
        assert!(!progress_only(Some(&before), &before), "no change at all");
        let mut step = before.clone();
        step.stages[0].step = Some(3);
        assert!(!progress_only(Some(&before), &step));
        let mut verdict = before.clone();
        verdict.stages[0].gates[0].verdict = GateVerdict::Passing;
        assert!(!progress_only(Some(&before), &verdict));
        let mut tally = before.clone();
        tally.stages[0].gates[0].successes = 1;
        assert!(!progress_only(Some(&before), &tally));
        let mut phase = before.clone();
        phase.stages[0].phase = StagePhase::Failed;
        phase.message = Some("rolled back".into());
        assert!(!progress_only(Some(&before), &phase));
    }

    /// What makes deferring progress safe for counting gates: whenever a configured
    /// gate's tally records a measurement, a tally changes, so that change is a decision
    /// and is written at once (a count is never held back and never counted twice).
    #[test]
    fn a_configured_gate_that_counts_a_measurement_is_never_progress_only() {
        use crate::release::gate::{GateModel, Measurement, tally};
        let model = GateModel {
            count: 3,
            failure_limit: 2,
            inconclusive_limit: Some(5),
            on_inconclusive: stagecoach_api::release::InconclusivePolicy::Pause,
        };
        let mut previous: Option<GateStatus> = None;
        for (i, verdict) in [
            GateVerdict::Inconclusive,
            GateVerdict::Inconclusive,
            GateVerdict::Passing,
            GateVerdict::Failing,
            GateVerdict::Passing,
        ]
        .into_iter()
        .enumerate()
        {
            let measurement = Measurement {
                verdict,
                message: format!("measured {i}"),
                value: Some(i.to_string()),
                at: Utc
                    .timestamp_opt(1_800_000_000 + i64::try_from(i).unwrap(), 0)
                    .unwrap(),
            };
            let (gate, _) = tally("latency", previous.as_ref(), &measurement, model);
            let mut before = status();
            before.stages[0].gates = previous.iter().cloned().collect();
            let mut after = before.clone();
            after.stages[0].gates = vec![gate.clone()];
            if previous.is_some() {
                assert!(!progress_only(Some(&before), &after), "measurement {i}");
            }
            previous = Some(gate);
        }
    }
}
