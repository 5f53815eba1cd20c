//! What a Release status write tells the outside beyond the status itself: gate verdicts
//! for `stagecoach_gate_verdicts_total`, and Sentry release markers for the stages the
//! release entered. Called once per status write, with the status before and the plan.

use stagecoach_api::Release;
use stagecoach_api::release::{GateStatus, GateVerdict, ReleaseStatus, StagePhase, StageStatus};
use stagecoach_engine::release::Plan;

use crate::metrics::Metrics;
use crate::reporting;

/// Name of the built-in gate, present in every stage in progress.
const WORKLOAD_HEALTH: &str = "workload-health";

/// Counts the gate verdicts the write records and sends the release markers.
pub fn release_recorded(
    metrics: &Metrics,
    release: &Release,
    before: Option<&ReleaseStatus>,
    plan: &Plan,
) {
    let counter = &metrics.releases().gate_verdicts;
    for verdict in gate_verdicts(release, before, &plan.status, plan.step_seconds.is_some()) {
        counter
            .with_label_values(&[
                &verdict.stage,
                &verdict.gate,
                verdict_label(verdict.verdict),
            ])
            .inc();
    }
    for (stage, phase) in &plan.stage_transitions {
        if *phase == StagePhase::Progressing {
            reporting::stage_entered(release, stage);
        }
    }
}

/// The `verdict` label: the verdict as status writes it.
pub fn verdict_label(verdict: GateVerdict) -> &'static str {
    match verdict {
        GateVerdict::Passing => "Passing",
        GateVerdict::Failing => "Failing",
        GateVerdict::Inconclusive => "Inconclusive",
    }
}

/// One gate verdict recorded by a status write.
#[derive(Debug, PartialEq, Eq)]
pub struct RecordedVerdict {
    pub stage: String,
    pub gate: String,
    pub verdict: GateVerdict,
}

/// The gate verdicts a status write records, comparing the status before with the one
/// written:
///
/// - A gate evaluation the planner recorded (new in this step, or a new verdict, message
///   or evaluation time: the built-in gate records changes only, a counting gate every
///   new measurement) counts its verdict.
/// - The planner clears a stage's gates when a step completes, in the same write, so the
///   verdicts that completed it are not in the status written. A `setWeight` step
///   completes only when every gate passes, so each gate whose verdict before was not
///   Passing counts Passing. A pause step ends on its timer whatever the (non-failing)
///   verdicts, which are then unknown: nothing is counted for it.
///
/// `step_completed` says whether the plan completed a step (`Plan::step_seconds`).
pub fn gate_verdicts(
    release: &Release,
    before: Option<&ReleaseStatus>,
    after: &ReleaseStatus,
    step_completed: bool,
) -> Vec<RecordedVerdict> {
    let mut out = Vec::new();
    for stage in &after.stages {
        let old = before.and_then(|b| b.stages.iter().find(|s| s.name == stage.name));
        let old_gates = old.map(|s| s.gates.as_slice()).unwrap_or_default();
        for gate in &stage.gates {
            let previous = old_gates.iter().find(|g| g.name == gate.name);
            if previous.is_none_or(|p| is_new_evaluation(p, gate)) {
                out.push(RecordedVerdict {
                    stage: stage.name.clone(),
                    gate: gate.name.clone(),
                    verdict: gate.verdict,
                });
            }
        }
        if let Some(old) = old
            && step_completed
            && completed_weight_step(release, old, stage)
        {
            for gate in gates_of(release, &stage.name, old_gates) {
                let was_passing = old_gates
                    .iter()
                    .any(|g| g.name == gate && g.verdict == GateVerdict::Passing);
                if !was_passing {
                    out.push(RecordedVerdict {
                        stage: stage.name.clone(),
                        gate,
                        verdict: GateVerdict::Passing,
                    });
                }
            }
        }
    }
    out
}

fn is_new_evaluation(previous: &GateStatus, current: &GateStatus) -> bool {
    previous.verdict != current.verdict
        || previous.message != current.message
        || previous.last_evaluated_at != current.last_evaluated_at
}

/// Whether the stage went from a `setWeight` step to the next one in this write, its
/// gates cleared.
fn completed_weight_step(release: &Release, old: &StageStatus, new: &StageStatus) -> bool {
    let (Some(from), Some(to)) = (old.step, new.step) else {
        return false;
    };
    let advanced = old.phase == StagePhase::Progressing
        && new.phase == StagePhase::Progressing
        && to == from + 1
        && new.gates.is_empty();
    advanced
        && release
            .spec
            .resolved_stages()
            .into_iter()
            .find(|s| s.name == new.name)
            .and_then(|s| s.steps.get(usize::try_from(from).ok()?).cloned())
            .is_some_and(|step| step.set_weight.is_some())
}

/// The gates a stage evaluates: the built-in one, those configured for it, and any the
/// status before names.
fn gates_of(release: &Release, stage: &str, old: &[GateStatus]) -> Vec<String> {
    let mut names = vec![WORKLOAD_HEALTH.to_owned()];
    let configured = release
        .spec
        .stages
        .iter()
        .flatten()
        .filter(|s| s.name == stage)
        .flat_map(|s| s.gates.iter().map(|g| g.name.clone()));
    for name in configured.chain(old.iter().map(|g| g.name.clone())) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use serde_json::json;

    use super::*;

    fn release() -> Release {
        serde_json::from_value(json!({
            "apiVersion": "stagecoach.dev/v1alpha1",
            "kind": "Release",
            "metadata": {"name": "shop-1.4.0", "namespace": "shop"},
            "spec": {
                "application": "shop",
                "version": "1.4.0",
                "workloads": [{"deployment": "api", "containers": [{"name": "app", "image": "shop:1.4.0"}]}],
                "stages": [
                    {"name": "dev", "namespace": "shop-dev"},
                    {"name": "prod", "namespace": "shop-prod", "steps": [
                        {"setWeight": 25}, {"pause": {"duration": "1m"}}, {"setWeight": 100}
                    ]}
                ]
            }
        }))
        .unwrap()
    }

    fn at(seconds: i64) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0)
    }

    fn gate(verdict: GateVerdict, message: &str, seconds: i64) -> GateStatus {
        GateStatus {
            name: WORKLOAD_HEALTH.into(),
            verdict,
            message: message.into(),
            successes: i32::from(verdict == GateVerdict::Passing),
            failures: i32::from(verdict == GateVerdict::Failing),
            inconclusive: 0,
            value: None,
            last_evaluated_at: at(seconds),
        }
    }

    fn status(step: i32, gates: &[GateStatus]) -> ReleaseStatus {
        serde_json::from_value(json!({
            "stages": [{
                "name": "prod", "namespace": "shop-prod", "phase": "Progressing",
                "step": step, "gates": gates
            }]
        }))
        .unwrap()
    }

    fn verdicts(list: &[RecordedVerdict]) -> Vec<(&str, &str, GateVerdict)> {
        list.iter()
            .map(|v| (v.stage.as_str(), v.gate.as_str(), v.verdict))
            .collect()
    }

    #[test]
    fn a_new_verdict_counts_once() {
        let release = release();
        let waiting = status(0, &[gate(GateVerdict::Inconclusive, "0/1 ready", 0)]);
        let first = gate_verdicts(&release, None, &waiting, false);
        assert_eq!(
            verdicts(&first),
            [("prod", WORKLOAD_HEALTH, GateVerdict::Inconclusive)]
        );
        // The same status written again (another field changed): nothing new.
        assert!(gate_verdicts(&release, Some(&waiting), &waiting, false).is_empty());
        let failing = status(0, &[gate(GateVerdict::Failing, "crash loop", 5)]);
        assert_eq!(
            verdicts(&gate_verdicts(&release, Some(&waiting), &failing, false)),
            [("prod", WORKLOAD_HEALTH, GateVerdict::Failing)]
        );
    }

    #[test]
    fn a_weight_step_completed_in_the_write_counts_the_passing_verdict_it_cleared() {
        let release = release();
        let waiting = status(0, &[gate(GateVerdict::Inconclusive, "0/1 ready", 0)]);
        let next_step = status(1, &[]);
        assert_eq!(
            verdicts(&gate_verdicts(&release, Some(&waiting), &next_step, true)),
            [("prod", WORKLOAD_HEALTH, GateVerdict::Passing)]
        );
        // Already Passing before: no new verdict.
        let passing = status(0, &[gate(GateVerdict::Passing, "1/1 ready", 0)]);
        assert!(gate_verdicts(&release, Some(&passing), &next_step, true).is_empty());
    }

    #[test]
    fn a_pause_that_ends_counts_nothing() {
        let release = release();
        let pausing = status(1, &[gate(GateVerdict::Inconclusive, "1/2 ready", 0)]);
        let next_step = status(2, &[]);
        assert!(gate_verdicts(&release, Some(&pausing), &next_step, true).is_empty());
    }

    #[test]
    fn verdict_labels_are_the_status_names() {
        for verdict in [
            GateVerdict::Passing,
            GateVerdict::Failing,
            GateVerdict::Inconclusive,
        ] {
            assert_eq!(
                serde_json::to_value(verdict).unwrap(),
                json!(verdict_label(verdict))
            );
        }
    }
}
