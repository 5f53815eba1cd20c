//! Planner tests of configured gates: single scenarios through the simulated world, each
//! gate measuring every minute from the start of a step.

use super::*;

fn event(
    stage: &'static str,
    step: i32,
    from: i64,
    len: Option<i64>,
    verdict: GateVerdict,
) -> GateEvent {
    GateEvent {
        stage,
        step,
        from,
        len,
        verdict,
    }
}

fn one_gate(
    inconclusive_limit: i32,
    policy: InconclusivePolicy,
    events: Vec<GateEvent>,
) -> Vec<SimGate> {
    vec![sim_gate("smoke", 1, 0, inconclusive_limit, policy, events)]
}

fn run(gates: &[SimGate]) -> Run {
    let spec = gated_spec("shop/api:2.0.0", gates);
    let run = drive_gated(&spec, World::new(), &[], |_, _| {}, gates);
    if let Err(why) = check_gated_run(&run, gates, None) {
        panic!("{why}");
    }
    run
}

fn events<'a>(run: &'a Run, why: &str) -> Vec<&'a PlannedEvent> {
    run.plans
        .iter()
        .flat_map(|p| &p.events)
        .filter(|e| e.reason == why)
        .collect()
}

fn gate_of<'a>(
    status: &'a ReleaseStatus,
    stage: &str,
    gate: &str,
) -> Option<&'a stagecoach_api::release::GateStatus> {
    status
        .stages
        .iter()
        .find(|s| s.name == stage)?
        .gates
        .iter()
        .find(|g| g.name == gate)
}

/// When the step of a stage completed, from the timeline.
fn completed_at(status: &ReleaseStatus, stage: &str, position: &str) -> Option<DateTime<Utc>> {
    status
        .timeline
        .iter()
        .find(|t| {
            t.reason == reason::STEP_COMPLETED
                && t.stage.as_deref() == Some(stage)
                && t.message.contains(position)
        })
        .map(|t| t.at)
}

#[test]
fn a_failing_configured_gate_rolls_the_stage_back_within_the_step() {
    // Two passes needed; the first measurement passes, the second fails.
    let gates = vec![sim_gate(
        "smoke",
        2,
        0,
        3,
        InconclusivePolicy::Pause,
        vec![event("qa", 0, 2, Some(1), GateVerdict::Failing)],
    )];
    let run = run(&gates);
    let status = run.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(ReleasePhase::RolledBack));
    assert_eq!(stage_phase(status, "dev"), StagePhase::Succeeded);
    assert_eq!(stage_phase(status, "qa"), StagePhase::RolledBack);
    assert_eq!(run.world.stages["qa"].stable, template("shop/api:1.0.0"));
    let record = status.rollbacks.last().unwrap();
    assert_eq!(record.reason, reason::GATE_FAILED);
    assert!(
        record.message.contains("smoke: Failing, value 2"),
        "{}",
        record.message
    );
    // The plan that got the failing measurement rolled back, status first.
    let rollback = run
        .plans
        .iter()
        .find(|p| p.rollback_reason.is_some())
        .unwrap();
    assert!(rollback.status_first);
    // The failing result, its value and time are in status and the closing record.
    let result = gate_of(status, "qa", "smoke").unwrap();
    assert_eq!(result.verdict, GateVerdict::Failing);
    assert_eq!(result.value.as_deref(), Some("2"));
    assert_eq!((result.successes, result.failures), (1, 1));
    let closing = status.closing_record.as_ref().unwrap();
    let qa = closing.stages.iter().find(|s| s.name == "qa").unwrap();
    assert!(qa.gates.iter().any(|g| g == result));
    let degraded = condition(status, "Degraded").unwrap();
    assert_eq!(
        (degraded.0.as_str(), degraded.1.as_str()),
        ("True", reason::GATE_FAILED)
    );
}

#[test]
fn a_failure_within_the_failure_limit_is_tolerated() {
    let mut gates = one_gate(
        3,
        InconclusivePolicy::Pause,
        vec![event("qa", 0, 1, Some(1), GateVerdict::Failing)],
    );
    gates[0].gate.failure_limit = Some(1);
    let run = run(&gates);
    let status = run.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(ReleasePhase::Succeeded));
    let qa = gate_of(status, "qa", "smoke").unwrap();
    assert_eq!(
        (qa.verdict, qa.failures, qa.successes),
        (GateVerdict::Passing, 1, 1)
    );
}

#[test]
fn inconclusive_past_the_limit_holds_the_release_and_asks_a_person() {
    let gates = one_gate(
        2,
        InconclusivePolicy::Pause,
        vec![event("qa", 0, 1, None, GateVerdict::Inconclusive)],
    );
    let run = run(&gates);
    let status = run.status.clone().unwrap();
    assert_eq!(
        status.phase,
        Some(ReleasePhase::Paused),
        "{:?}",
        status.message
    );
    assert_eq!(stage_phase(&status, "qa"), StagePhase::Progressing);
    assert_eq!(at_step(&status, "qa"), Some(0), "the step never completed");
    let result = gate_of(&status, "qa", "smoke").unwrap();
    assert!(
        result.inconclusive > 2 && result.successes == 0,
        "{result:?}"
    );
    // Which gate, how many in a row, the last message, and what a person can do.
    let message = status.message.clone().unwrap();
    for part in [
        "gate smoke",
        &format!("{} inconclusive results in a row", result.inconclusive),
        "inconclusiveLimit 2",
        &result.message,
        "continues by itself",
        "spec.abort",
    ] {
        assert!(message.contains(part), "{part:?} not in {message}");
    }
    let stalled = condition(&status, super::super::plan::STALLED).unwrap();
    assert_eq!(
        (stalled.0.as_str(), stalled.1.as_str()),
        ("True", reason::GATE_INCONCLUSIVE)
    );
    assert_eq!(stalled.2, message);
    let ready = condition(&status, "Ready").unwrap();
    assert_eq!(
        (ready.0.as_str(), ready.1.as_str()),
        ("False", reason::GATE_INCONCLUSIVE)
    );
    let progressing = condition(&status, "Progressing").unwrap();
    assert_eq!(
        (progressing.0.as_str(), progressing.1.as_str()),
        ("False", reason::GATE_INCONCLUSIVE)
    );
    let degraded = condition(&status, "Degraded").unwrap();
    assert_eq!(degraded.0, "False");
    assert!(condition(&status, super::super::plan::RECONCILING).is_none());
    // One Warning Event and timeline entry, when the hold started.
    let warnings = events(&run, reason::GATE_INCONCLUSIVE);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].warning);
    assert_eq!(
        status
            .timeline
            .iter()
            .filter(|t| t.reason == reason::GATE_INCONCLUSIVE)
            .count(),
        1
    );
    // A promote annotation does not end a hold; abort does.
    let spec = gated_spec("shop/api:2.0.0", &gates);
    let mut aborted = spec.clone();
    aborted.abort = true;
    let plan = plan_once(
        &aborted,
        Some(&status),
        &run.world,
        run.now,
        &[],
        &BTreeMap::new(),
    );
    assert_eq!(plan.status.phase, Some(ReleasePhase::RolledBack));
    assert_eq!(
        plan.status.rollbacks.last().unwrap().reason,
        reason::ABORTED
    );
    assert!(plan.status_first);
}

#[test]
fn a_held_release_continues_by_itself_on_a_conclusive_result() {
    // Inconclusive for measurements 1 to 4, limit 1: held from the second one on.
    let gates = one_gate(
        1,
        InconclusivePolicy::Pause,
        vec![event("prod", 2, 1, Some(4), GateVerdict::Inconclusive)],
    );
    let run = run(&gates);
    let status = run.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(ReleasePhase::Succeeded));
    let held: Vec<usize> = run
        .plans
        .iter()
        .enumerate()
        .filter(|(_, p)| p.status.phase == Some(ReleasePhase::Paused))
        .map(|(i, _)| i)
        .collect();
    assert!(held.len() >= 3, "held at measurements 2, 3 and 4: {held:?}");
    let resumed = &run.plans[held.last().unwrap() + 1].status;
    assert_eq!(resumed.phase, Some(ReleasePhase::Progressing));
    assert!(condition(resumed, super::super::plan::STALLED).is_none());
    let prod = resumed.stages.iter().find(|s| s.name == "prod").unwrap();
    assert_eq!(prod.message, None, "the hold's note is gone");
    assert_eq!(events(&run, reason::GATE_INCONCLUSIVE).len(), 1);
    // The 50 % step completed with the fifth measurement, the first passing one (the
    // step's clock starts when its canary is applied, a reconcile after the last step).
    let started = completed_at(status, "prod", "step 2/4").unwrap();
    let done = completed_at(status, "prod", "step 3/4").unwrap();
    let took = (done - started).num_seconds();
    assert!((5 * INTERVAL..5 * INTERVAL + 5).contains(&took), "{took}s");
}

#[test]
fn inconclusive_past_the_limit_rolls_back_with_policy_fail() {
    let gates = one_gate(
        1,
        InconclusivePolicy::Fail,
        vec![event("qa", 0, 1, None, GateVerdict::Inconclusive)],
    );
    let run = run(&gates);
    let status = run.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(ReleasePhase::RolledBack));
    assert_eq!(status.rollbacks.last().unwrap().reason, reason::GATE_FAILED);
    assert_eq!(gate_of(status, "qa", "smoke").unwrap().inconclusive, 2);
    assert!(events(&run, reason::GATE_INCONCLUSIVE).is_empty());
}

#[test]
fn an_inconclusive_gate_is_never_taken_as_passing_even_past_the_progress_deadline() {
    // Eight minutes of inconclusive results (the progress deadline is 5m), under the
    // limit: the step waits, neither fails nor completes, and passes on the ninth.
    let gates = one_gate(
        10,
        InconclusivePolicy::Pause,
        vec![event("qa", 0, 1, Some(8), GateVerdict::Inconclusive)],
    );
    let run = run(&gates);
    let status = run.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(ReleasePhase::Succeeded));
    let entered = status
        .timeline
        .iter()
        .find(|t| t.reason == reason::STAGE_STARTED && t.stage.as_deref() == Some("qa"))
        .unwrap()
        .at;
    let done = completed_at(status, "qa", "step 1/1").unwrap();
    assert!(
        (done - entered).num_seconds() >= 9 * INTERVAL,
        "qa completed {}s after it started",
        (done - entered).num_seconds()
    );
}

#[test]
fn a_timed_pause_ends_only_once_the_gates_pass() {
    // The 10m pause is step 1 of prod: measurements 9 to 12 are inconclusive.
    let gates = one_gate(
        5,
        InconclusivePolicy::Pause,
        vec![event("prod", 1, 9, Some(4), GateVerdict::Inconclusive)],
    );
    let run = run(&gates);
    let status = run.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(ReleasePhase::Succeeded));
    let started = completed_at(status, "prod", "step 1/4").unwrap();
    let done = completed_at(status, "prod", "step 2/4").unwrap();
    assert_eq!((done - started).num_seconds(), 13 * INTERVAL);
    assert!(
        run.plans.iter().any(|p| p
            .status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("pause over, waiting for gates: smoke"))),
        "the wait is explained"
    );
}

#[test]
fn a_failing_gate_during_early_life_support_rolls_prod_back() {
    let gates = one_gate(
        3,
        InconclusivePolicy::Pause,
        vec![event("prod", 4, 3, Some(1), GateVerdict::Failing)],
    );
    let run = run(&gates);
    let status = run.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(ReleasePhase::RolledBack));
    assert_eq!(
        status.rollbacks.last().unwrap().reason,
        reason::EARLY_LIFE_SUPPORT_FAILED
    );
    assert_eq!(run.world.stages["prod"].stable, template("shop/api:1.0.0"));
    assert!(runs_release_images(
        &run.world.stages["demo"].stable,
        &gated_spec("shop/api:2.0.0", &gates).workloads[0]
    ));
    let result = gate_of(status, "prod", "smoke").unwrap();
    assert_eq!(
        (result.verdict, result.value.as_deref()),
        (GateVerdict::Failing, Some("3"))
    );
}

#[test]
fn a_gate_holds_early_life_support_which_ends_only_on_a_passing_result() {
    // Early life support lasts 1h (60 measurements). Held at measurements 3 to 5;
    // inconclusive again at 59 to 62 (limit 5, no hold) when the hour is over.
    let gates = one_gate(
        5,
        InconclusivePolicy::Pause,
        vec![
            event("prod", 4, 1, Some(8), GateVerdict::Inconclusive),
            event("prod", 4, 59, Some(4), GateVerdict::Inconclusive),
        ],
    );
    let run = run(&gates);
    let status = run.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(ReleasePhase::Succeeded));
    let held: Vec<&Plan> = run
        .plans
        .iter()
        .filter(|p| p.status.phase == Some(ReleasePhase::Paused))
        .collect();
    assert!(!held.is_empty(), "held during early life support");
    for plan in &held {
        let prod = plan
            .status
            .stages
            .iter()
            .find(|s| s.name == "prod")
            .unwrap();
        assert_eq!(prod.phase, StagePhase::EarlyLifeSupport);
    }
    let began = status
        .timeline
        .iter()
        .find(|t| t.reason == reason::EARLY_LIFE_SUPPORT)
        .unwrap()
        .at;
    let ended = status.completed_at.unwrap();
    assert_eq!(
        (ended - began).num_seconds(),
        63 * INTERVAL,
        "ended on measurement 63"
    );
    assert!(
        run.plans.iter().any(|p| p
            .status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("is over once the gates pass"))),
        "the wait is explained"
    );
}

#[test]
fn measurements_from_before_the_step_started_do_not_count() {
    let gates = one_gate(3, InconclusivePolicy::Pause, vec![]);
    let spec = gated_spec("shop/api:2.0.0", &gates);
    // Run until qa's only step has started and its canary... (qa goes straight to 100 %).
    let mut world = World::new();
    let mut status: Option<ReleaseStatus> = None;
    let mut now = t0();
    for _ in 0..50 {
        world.now = now;
        let plan = plan_once(&spec, status.as_ref(), &world, now, &[], &BTreeMap::new());
        world.apply(&plan.actions, plan.actions.len());
        status = Some(plan.status);
        now += chrono::Duration::seconds(1);
        let s = status.as_ref().unwrap();
        if s.current_stage.as_deref() == Some("qa")
            && stage_phase(s, "qa") == StagePhase::Progressing
        {
            break;
        }
    }
    let status = status.unwrap();
    let started = status
        .stages
        .iter()
        .find(|s| s.name == "qa")
        .unwrap()
        .step_started_at
        .unwrap();
    let stale = Measurement {
        verdict: GateVerdict::Passing,
        message: "from the step before".into(),
        value: None,
        at: started,
    };
    let given = BTreeMap::from([("smoke".to_owned(), stale)]);
    let plan = plan_measured(
        &spec,
        Some(&status),
        &world,
        now + chrono::Duration::minutes(2),
        &[],
        &BTreeMap::new(),
        &given,
    );
    let result = gate_of(&plan.status, "qa", "smoke").unwrap();
    assert_eq!(result.message, super::super::gate::NOT_MEASURED);
    assert_eq!(result.successes, 0);
    assert_eq!(
        at_step(&plan.status, "qa"),
        Some(0),
        "not completed on a stale result"
    );
    assert!(
        plan.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("smoke: Inconclusive (not measured yet)")),
        "{:?}",
        plan.status.message
    );
}

#[test]
fn gate_results_stay_in_status_and_the_closing_record() {
    let gates = vec![
        sim_gate("smoke", 2, 0, 3, InconclusivePolicy::Pause, vec![]),
        sim_gate("errors", 1, 0, 3, InconclusivePolicy::Fail, vec![]),
    ];
    let run = run(&gates);
    let status = run.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(ReleasePhase::Succeeded));
    let record = status.closing_record.as_ref().unwrap();
    for stage in ["qa", "prod"] {
        let gates: Vec<(&str, GateVerdict, i32)> = record
            .stages
            .iter()
            .find(|s| s.name == stage)
            .unwrap()
            .gates
            .iter()
            .map(|g| (g.name.as_str(), g.verdict, g.successes))
            .collect();
        assert_eq!(gates[0].0, super::super::gate::WORKLOAD_HEALTH, "{stage}");
        assert_eq!(gates[1].0, "smoke");
        assert_eq!(gates[2].0, "errors");
        assert!(gates[1..].iter().all(|g| g.1 == GateVerdict::Passing));
        assert!(gates[1].2 >= 2, "{stage}: smoke counted {}", gates[1].2);
    }
}
