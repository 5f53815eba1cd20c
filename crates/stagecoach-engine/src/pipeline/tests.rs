use proptest::prelude::*;
use serde_json::json;
use stagecoach_api::approval::{Approval, ApprovalSpec, Decision};
use stagecoach_api::pipeline::{ApprovalPolicy, PipelineSpec, PipelineStage};
use stagecoach_api::release::{EarlyLifeSupport, Gate, JobGate, Stage, Step};
use stagecoach_api::{ReleaseSpec, parse_duration};

use super::*;

fn release() -> ReleaseSpec {
    serde_json::from_value(json!({
        "application": "billing",
        "version": "2.4.0",
        "changes": [{"id": "PR-1", "title": "export", "authors": ["carol"]}],
        "workloads": [{"deployment": "api", "containers": [{"name": "api", "image": "api:2.4.0"}]}]
    }))
    .unwrap()
}

fn pipeline() -> PipelineSpec {
    serde_json::from_value(json!({
        "stages": [
            {"name": "dev"},
            {"name": "qa", "namespace": "billing-test"},
            {"name": "prod",
             "steps": [{"setWeight": 10}, {"setWeight": 100}],
             "progressDeadline": "5m",
             "earlyLifeSupport": {"duration": "48h"},
             "gates": [{"name": "e2e", "job": {"image": "e2e:1"}}],
             "approval": {"required": 2, "types": ["minor", "major"]}}
        ]
    }))
    .unwrap()
}

fn stage(name: &str) -> Stage {
    Stage {
        name: name.into(),
        namespace: None,
        steps: None,
        gates: Vec::new(),
        progress_deadline: None,
        early_life_support: None,
    }
}

fn weights(steps: &[Step]) -> Vec<Option<i32>> {
    steps.iter().map(|s| s.set_weight).collect()
}

#[test]
fn without_a_pipeline_the_release_decides() {
    let spec = release();
    let stages = resolve_stages(&spec, Governing::None).unwrap();
    assert_eq!(stages, spec.resolved_stages());
}

#[test]
fn the_pipeline_gives_stages_namespaces_steps_gates_and_approvals() {
    let spec = release();
    let pipeline = pipeline();
    let stages = resolve_stages(&spec, Governing::Pipeline("billing", &pipeline)).unwrap();
    let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["dev", "qa", "prod"]);
    assert_eq!(stages[0].namespace.as_deref(), Some("billing-dev"));
    assert_eq!(stages[1].namespace.as_deref(), Some("billing-test"));
    assert_eq!(weights(&stages[2].steps), [Some(10), Some(100)]);
    assert_eq!(stages[2].gates.len(), 1);
    assert_eq!(stages[2].approval.as_ref().map(|a| a.required), Some(2));
}

#[test]
fn a_release_sets_steps_only_where_the_pipeline_leaves_them_open() {
    let mut spec = release();
    let mut dev = stage("dev");
    dev.steps = Some(vec![
        Step {
            set_weight: Some(50),
            pause: None,
        },
        Step {
            set_weight: Some(100),
            pause: None,
        },
    ]);
    spec.stages = Some(vec![dev]);
    let pipeline = pipeline();
    let stages = resolve_stages(&spec, Governing::Pipeline("billing", &pipeline)).unwrap();
    assert_eq!(weights(&stages[0].steps), [Some(50), Some(100)]);

    let mut prod = stage("prod");
    prod.steps = Some(vec![Step {
        set_weight: Some(100),
        pause: None,
    }]);
    spec.stages = Some(vec![prod]);
    let refused = resolve_stages(&spec, Governing::Pipeline("billing", &pipeline)).unwrap_err();
    assert_eq!(refused.reason, reason::CONTRADICTS_PIPELINE);
    assert!(
        refused
            .message
            .contains("steps of stage prod are set by the pipeline"),
        "{}",
        refused.message
    );
}

#[test]
fn every_loosening_is_refused_and_named() {
    let mut spec = release();
    let mut prod = stage("prod");
    prod.progress_deadline = Some("30m".into());
    prod.early_life_support = Some(EarlyLifeSupport {
        duration: Some("1h".into()),
    });
    prod.gates = vec![Gate {
        name: "e2e".into(),
        interval: None,
        count: None,
        failure_limit: None,
        inconclusive_limit: None,
        on_inconclusive: None,
        prometheus: None,
        http: None,
        job: Some(JobGate {
            image: "e2e:skip".into(),
            command: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            timeout: None,
        }),
    }];
    let mut qa = stage("qa");
    qa.namespace = Some("billing-qa".into());
    spec.stages = Some(vec![stage("staging"), qa, prod]);
    let pipeline = pipeline();
    let refused = resolve_stages(&spec, Governing::Pipeline("billing", &pipeline)).unwrap_err();
    for expected in [
        "stage staging is not in the pipeline",
        "stage qa runs in namespace billing-test, not billing-qa",
        "gate e2e of stage prod is set by the pipeline",
        "progressDeadline of stage prod may be at most the pipeline's 5m",
        "earlyLifeSupport of stage prod must be at least the pipeline's 48h",
    ] {
        assert!(refused.message.contains(expected), "{}", refused.message);
    }
}

#[test]
fn tightening_is_allowed() {
    let mut spec = release();
    let mut prod = stage("prod");
    prod.progress_deadline = Some("2m".into());
    prod.early_life_support = Some(EarlyLifeSupport {
        duration: Some("72h".into()),
    });
    spec.stages = Some(vec![prod]);
    let pipeline = pipeline();
    let stages = resolve_stages(&spec, Governing::Pipeline("billing", &pipeline)).unwrap();
    assert_eq!(stages[2].progress_deadline.as_deref(), Some("2m"));
    assert_eq!(
        stages[2]
            .early_life_support
            .as_ref()
            .and_then(|e| e.duration.as_deref()),
        Some("72h")
    );
}

#[test]
fn two_pipelines_for_one_application_stop_everything() {
    let names = vec!["a".to_owned(), "b".to_owned()];
    let refused = resolve_stages(&release(), Governing::Conflict(&names)).unwrap_err();
    assert_eq!(refused.reason, reason::AMBIGUOUS_PIPELINE);
}

#[test]
fn a_notice_nobody_receives_is_refused() {
    let mut spec = release();
    spec.release_type = ReleaseType::Major;
    let mut pipeline = pipeline();
    pipeline.release_types =
        Some(serde_json::from_value(json!({"major": {"notice": "72h"}})).unwrap());
    let refused = resolve_stages(&spec, Governing::Pipeline("billing", &pipeline)).unwrap_err();
    assert_eq!(refused.reason, reason::NOTICE_WITHOUT_RECEIVER);
    pipeline.notifications = serde_json::from_value(json!([
        {"name": "clients", "webhook": {"url": "https://hooks.example.com/x"}, "events": ["Announced"], "releaseTypes": ["major"]}
    ]))
    .unwrap();
    assert!(resolve_stages(&spec, Governing::Pipeline("billing", &pipeline)).is_ok());
    // A minor release is not subject to the major notice.
    pipeline.notifications.clear();
    spec.release_type = ReleaseType::Minor;
    assert!(resolve_stages(&spec, Governing::Pipeline("billing", &pipeline)).is_ok());
}

#[test]
fn the_digest_ignores_pause_and_abort_but_not_images() {
    let spec = release();
    let base = digest(&spec);
    assert!(base.starts_with("sha256:") && base.len() == 71, "{base}");
    let mut paused = spec.clone();
    paused.paused = true;
    paused.abort = true;
    assert_eq!(digest(&paused), base);
    let mut other = spec;
    other.workloads[0].containers[0].image = "api:2.4.1".into();
    assert_ne!(digest(&other), base);
}

fn approval(name: &str, approver: &str, decision: Decision, digest: &str, at: i64) -> Approval {
    let mut a = Approval::new(
        name,
        ApprovalSpec {
            release: "billing-2.4.0".into(),
            stage: "prod".into(),
            decision,
            approver: approver.into(),
            release_digest: digest.into(),
            comment: None,
            r#override: false,
        },
    );
    a.metadata.creation_timestamp = Some(k8s_time(at));
    a
}

fn k8s_time(at: i64) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    serde_json::from_value(json!(DateTime::from_timestamp(at, 0).unwrap().to_rfc3339())).unwrap()
}

const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

#[test]
fn approvals_count_distinct_approvers_of_the_current_digest_who_are_not_authors() {
    let list = [
        approval("a1", "alice", Decision::Approve, D1, 1),
        approval("a2", "alice", Decision::Approve, D1, 2),
        approval("a3", "bob", Decision::Approve, D2, 3),
        approval("a4", "carol", Decision::Approve, D1, 4),
        approval("a5", "dave", Decision::Approve, D1, 5),
    ];
    let refs: Vec<&Approval> = list.iter().collect();
    let t = tally(&refs, "billing-2.4.0", "prod", D1, &["carol"]);
    let who: Vec<&str> = t.approvals.iter().map(|a| a.approver.as_str()).collect();
    assert_eq!(who, ["alice", "dave"]);
    assert!(t.rejection.is_none());
    assert!(
        t.not_counted
            .iter()
            .any(|n| n.contains("bob approved an earlier version"))
    );
    assert!(
        t.not_counted
            .iter()
            .any(|n| n.contains("carol is an author"))
    );
    // Other stages and releases are not counted.
    let t = tally(&refs, "billing-2.4.0", "qa", D1, &[]);
    assert_eq!(t.given(), 0);
    let t = tally(&refs, "billing-2.5.0", "prod", D1, &[]);
    assert_eq!(t.given(), 0);
}

#[test]
fn one_reject_of_the_current_digest_wins_and_an_override_is_recorded() {
    let mut override_approval = approval("o", "erin", Decision::Approve, D1, 1);
    override_approval.spec.r#override = true;
    let list = [
        override_approval,
        approval("r-old", "frank", Decision::Reject, D2, 2),
        approval("r", "gina", Decision::Reject, D1, 3),
    ];
    let refs: Vec<&Approval> = list.iter().collect();
    let t = tally(&refs, "billing-2.4.0", "prod", D1, &[]);
    assert_eq!(
        t.rejection.as_ref().map(|r| r.approver.as_str()),
        Some("gina")
    );
    assert_eq!(
        t.override_by.as_ref().map(|r| r.approver.as_str()),
        Some("erin")
    );
    assert_eq!(t.given(), 1);
}

// ----- property: the merge never loosens a control ----------------------------------------

fn arb_duration() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        (1u32..120).prop_map(|m| Some(format!("{m}m"))),
        (1u32..96).prop_map(|h| Some(format!("{h}h"))),
    ]
}

fn arb_steps() -> impl Strategy<Value = Option<Vec<Step>>> {
    prop_oneof![
        Just(None),
        prop::collection::btree_set(1i32..100, 0..3).prop_map(|set| {
            let mut steps: Vec<Step> = set
                .into_iter()
                .map(|w| Step {
                    set_weight: Some(w),
                    pause: None,
                })
                .collect();
            steps.push(Step {
                set_weight: Some(100),
                pause: None,
            });
            Some(steps)
        }),
    ]
}

fn arb_gates() -> impl Strategy<Value = Vec<Gate>> {
    prop::collection::btree_set(0u8..4, 0..3).prop_map(|set| {
        set.into_iter()
            .map(|n| Gate {
                name: format!("g{n}"),
                interval: None,
                count: None,
                failure_limit: None,
                inconclusive_limit: None,
                on_inconclusive: None,
                prometheus: None,
                http: None,
                job: Some(JobGate {
                    image: format!("img:{n}"),
                    command: Vec::new(),
                    args: Vec::new(),
                    env: Vec::new(),
                    timeout: None,
                }),
            })
            .collect()
    })
}

const NAMES: [&str; 4] = ["dev", "qa", "demo", "prod"];

prop_compose! {
    fn arb_pipeline_stage(index: usize)(
        steps in arb_steps(),
        gates in arb_gates(),
        deadline in arb_duration(),
        els in arb_duration(),
        required in prop::option::of(1i32..4),
    ) -> PipelineStage {
        PipelineStage {
            name: NAMES[index].into(),
            namespace: None,
            steps,
            gates,
            progress_deadline: deadline,
            early_life_support: els.map(|d| EarlyLifeSupport { duration: Some(d) }),
            approval: required.map(|required| ApprovalPolicy { required, types: Vec::new() }),
        }
    }
}

prop_compose! {
    fn arb_release_stage()(
        index in 0usize..5,
        namespace in prop::option::of(prop_oneof![Just("billing-dev".to_owned()), Just("elsewhere".to_owned())]),
        steps in arb_steps(),
        gates in arb_gates(),
        deadline in arb_duration(),
        els in arb_duration(),
    ) -> Stage {
        Stage {
            name: NAMES.get(index).map_or("extra", |n| *n).into(),
            namespace,
            steps,
            gates,
            progress_deadline: deadline,
            early_life_support: els.map(|d| EarlyLifeSupport { duration: Some(d) }),
        }
    }
}

fn arb_pipeline() -> impl Strategy<Value = PipelineSpec> {
    (
        arb_pipeline_stage(0),
        arb_pipeline_stage(1),
        arb_pipeline_stage(2),
        arb_pipeline_stage(3),
    )
        .prop_map(|(a, b, c, d)| PipelineSpec {
            application: None,
            stages: vec![a, b, c, d],
            release_types: None,
            freezes: Vec::new(),
            notifications: Vec::new(),
            retention: None,
        })
}

fn secs(text: Option<&str>) -> Option<std::time::Duration> {
    text.and_then(|t| parse_duration(t).ok())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_merge_never_loosens_a_control(
        pipeline in arb_pipeline(),
        own in prop::collection::vec(arb_release_stage(), 0..4),
    ) {
        let mut spec = release();
        let mut seen = std::collections::BTreeSet::new();
        let own: Vec<Stage> = own.into_iter().filter(|s| seen.insert(s.name.clone())).collect();
        spec.stages = (!own.is_empty()).then_some(own);
        let Ok(stages) = resolve_stages(&spec, Governing::Pipeline("p", &pipeline)) else {
            return Ok(());
        };
        prop_assert_eq!(stages.len(), pipeline.stages.len());
        for (merged, policy) in stages.iter().zip(&pipeline.stages) {
            prop_assert_eq!(&merged.name, &policy.name);
            let namespace = format!("billing-{}", policy.name);
            prop_assert_eq!(merged.namespace.as_deref(), Some(namespace.as_str()));
            prop_assert_eq!(&merged.approval, &policy.approval);
            if let Some(fixed) = &policy.steps {
                prop_assert_eq!(&merged.steps, fixed);
            }
            for gate in &policy.gates {
                prop_assert!(merged.gates.contains(gate), "pipeline gate {} dropped", gate.name);
            }
            if let Some(limit) = secs(policy.progress_deadline.as_deref()) {
                let own = secs(merged.progress_deadline.as_deref());
                prop_assert!(own.is_some_and(|d| d <= limit));
            }
            let floor = secs(policy.early_life_support.as_ref().and_then(|e| e.duration.as_deref()));
            if let Some(floor) = floor {
                let own = secs(merged.early_life_support.as_ref().and_then(|e| e.duration.as_deref()));
                prop_assert!(own.is_some_and(|d| d >= floor));
            }
        }
    }
}

#[test]
fn a_pipeline_is_in_force_unless_shared_or_unusable() {
    let spec = pipeline();
    let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let mut no_gates = spec.clone();
    no_gates.stages[2].gates.clear();
    let status = pipeline_status(
        "billing",
        &no_gates,
        &["billing".into()],
        None,
        Some(3),
        now,
    );
    assert_eq!(status.stages.as_deref(), Some("dev, qa, prod"));
    assert_eq!(status.observed_generation, Some(3));
    assert_eq!(status.conditions[0].reason, IN_FORCE);

    let shared = pipeline_status(
        "billing",
        &no_gates,
        &["billing".into(), "billing-2".into()],
        Some(&status),
        Some(3),
        now,
    );
    assert_eq!(shared.conditions[0].reason, reason::AMBIGUOUS_PIPELINE);

    let mut same_namespace = no_gates.clone();
    same_namespace.stages[1].namespace = Some("billing-dev".into());
    let refused = check_pipeline("billing", &same_namespace, &[]).unwrap_err();
    assert_eq!(
        refused.reason,
        crate::admission::reason::DUPLICATE_NAMESPACE
    );

    // Gates set by the Pipeline (a Job gate in prod) are evaluated: it is in force.
    assert_eq!(check_pipeline("billing", &spec, &[]), Ok(()));
    let status = pipeline_status("billing", &spec, &["billing".into()], None, Some(3), now);
    assert_eq!(status.conditions[0].reason, IN_FORCE);
}

#[test]
fn a_receiver_without_its_secret_is_named_in_a_condition() {
    let mut spec = pipeline();
    spec.notifications = serde_json::from_value(json!([
        {"name": "clients", "webhook": {"url": "https://hooks.example.com/a", "secretRef": {"name": "hook", "key": "token"}}},
        {"name": "ops", "webhook": {"url": "https://hooks.example.com/b", "secretRef": {"name": "ops-hook", "key": "token"}}},
        {"name": "open", "webhook": {"url": "https://hooks.example.com/c"}}
    ]))
    .unwrap();
    let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let ok = notifications_condition(
        &spec,
        &[
            ("clients".into(), SecretCheck::Found),
            ("ops".into(), SecretCheck::Found),
        ],
        Some(1),
        now,
    );
    assert_eq!(ok.status, stagecoach_api::ConditionStatus::True);
    let broken = notifications_condition(
        &spec,
        &[
            ("clients".into(), SecretCheck::MissingSecret),
            ("ops".into(), SecretCheck::MissingKey),
        ],
        Some(1),
        now,
    );
    assert_eq!(broken.status, stagecoach_api::ConditionStatus::False);
    assert!(
        broken
            .message
            .contains("receiver clients: Secret hook not found"),
        "{}",
        broken.message
    );
    assert!(
        broken
            .message
            .contains("receiver ops: Secret ops-hook has no key token"),
        "{}",
        broken.message
    );
    assert!(!broken.message.contains("open"), "{}", broken.message);
}
