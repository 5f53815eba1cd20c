use std::collections::BTreeMap;

use proptest::prelude::*;
use stagecoach_api::release::{
    Comparison, ContainerImage, EarlyLifeSupport, Gate, HttpGate, JobGate, Pause, ReleaseType,
    Stage, Step, Workload,
};
use stagecoach_api::toggle::{ClientId, ToggleRule, ToggleStage, ToggleState};

use super::*;

fn release() -> ReleaseSpec {
    ReleaseSpec {
        application: "billing".into(),
        version: "2.4.0".into(),
        release_type: ReleaseType::Minor,
        changes: vec![],
        notes: None,
        workloads: vec![Workload {
            deployment: "billing-api".into(),
            containers: vec![ContainerImage {
                name: "api".into(),
                image: "registry.example.com/billing-api:2.4.0".into(),
            }],
        }],
        stages: None,
        paused: false,
        abort: false,
    }
}

fn stage(name: &str) -> Stage {
    Stage {
        name: name.into(),
        namespace: None,
        steps: None,
        gates: vec![],
        progress_deadline: None,
        early_life_support: None,
    }
}

fn gate(name: &str) -> Gate {
    Gate {
        name: name.into(),
        interval: None,
        count: None,
        failure_limit: None,
        inconclusive_limit: None,
        on_inconclusive: None,
        prometheus: None,
        http: Some(HttpGate {
            url: "http://billing-api/healthz".into(),
            method: None,
            headers: vec![],
            body: None,
            expected_status: None,
            json_pointer: None,
            comparison: None,
            value: None,
            timeout: None,
        }),
        job: None,
    }
}

fn pause(duration: &str) -> Step {
    Step {
        set_weight: None,
        pause: Some(Pause {
            duration: Some(duration.into()),
        }),
    }
}

fn weight(percent: i32) -> Step {
    Step {
        set_weight: Some(percent),
        pause: None,
    }
}

fn toggle() -> FeatureToggleSpec {
    FeatureToggleSpec {
        application: "billing".into(),
        key: None,
        description: None,
        variants: BTreeMap::from([
            ("on".to_owned(), serde_json::json!(true)),
            ("off".to_owned(), serde_json::json!(false)),
        ])
        .into(),
        default_variant: "off".into(),
        bucket_by: None,
        stages: BTreeMap::new().into(),
    }
}

fn toggle_stage(rules: Vec<ToggleRule>) -> ToggleStage {
    ToggleStage {
        state: ToggleState::Enabled,
        default_variant: None,
        rules,
    }
}

fn clients_rule(variant: &str) -> ToggleRule {
    ToggleRule {
        clients: Some(vec![ClientId("acme".into())]),
        variant: Some(variant.into()),
        split: None,
        when: None,
    }
}

fn split_rule(split: &[(&str, i32)]) -> ToggleRule {
    ToggleRule {
        clients: None,
        variant: None,
        split: Some(split.iter().map(|(v, p)| ((*v).to_owned(), *p)).collect()),
        when: None,
    }
}

fn rejected_reason(result: Result<(), Rejection>) -> &'static str {
    result.expect_err("the spec should be rejected").reason
}

#[test]
fn default_stages_are_accepted() {
    assert_eq!(check_release(&release()), Ok(()));
}

#[test]
fn explicit_stages_with_all_durations_are_accepted() {
    let mut prod = stage("prod");
    prod.namespace = Some("billing-production".into());
    prod.steps = Some(vec![
        weight(10),
        pause("10m"),
        weight(50),
        pause("1h30m"),
        weight(100),
    ]);
    prod.progress_deadline = Some("10m".into());
    prod.early_life_support = Some(EarlyLifeSupport {
        duration: Some("48h".into()),
    });
    let spec = ReleaseSpec {
        stages: Some(vec![stage("dev"), prod]),
        ..release()
    };
    assert_eq!(check_release(&spec), Ok(()));
}

#[test]
fn configured_gates_are_accepted() {
    let mut prod = stage("prod");
    let mut health = gate("smoke");
    health.interval = Some("30s".into());
    prod.gates = vec![health];
    let spec = ReleaseSpec {
        stages: Some(vec![stage("dev"), prod]),
        ..release()
    };
    assert_eq!(check_release(&spec), Ok(()));
}

#[test]
fn gates_the_providers_cannot_evaluate_are_refused_with_what_to_fix() {
    let http = |comparison, value: &str| {
        let mut g = gate("sentry");
        let h = g.http.as_mut().unwrap();
        h.json_pointer = Some("/count".into());
        h.comparison = Some(comparison);
        h.value = Some(value.into());
        g
    };
    let cases = [
        (
            Gate {
                http: None,
                ..gate("none")
            },
            "exactly one of prometheus, http or job",
        ),
        (
            Gate {
                job: Some(JobGate {
                    image: "e2e:1".into(),
                    command: vec![],
                    args: vec![],
                    env: vec![],
                    timeout: None,
                }),
                ..gate("two")
            },
            "exactly one of prometheus, http or job",
        ),
        (gate("workload-health"), "built-in"),
        (http(Comparison::LessThan, "few"), "needs a number"),
        (
            {
                let mut g = gate("pointer");
                g.http.as_mut().unwrap().json_pointer = Some("count".into());
                g
            },
            "must start with '/'",
        ),
    ];
    for (bad, why) in cases {
        let mut prod = stage("prod");
        prod.gates = vec![bad.clone()];
        let spec = ReleaseSpec {
            stages: Some(vec![prod]),
            ..release()
        };
        let rejection = check_release(&spec).expect_err(why);
        assert_eq!(rejection.reason, reason::INVALID_GATE, "{why}");
        assert!(
            rejection.message.contains(why) && rejection.message.contains(&bad.name),
            "{}",
            rejection.message
        );
    }
    // Numbers compare with any comparison, text with Equal and NotEqual.
    for ok in [
        http(Comparison::LessThan, "5"),
        http(Comparison::Equal, "ok"),
        http(Comparison::NotEqual, "error"),
    ] {
        let mut prod = stage("prod");
        prod.gates = vec![ok];
        let spec = ReleaseSpec {
            stages: Some(vec![prod]),
            ..release()
        };
        assert_eq!(check_release(&spec), Ok(()));
    }
}

#[test]
fn pre_release_and_build_metadata_versions_are_accepted() {
    for version in ["3.0.0-rc.1", "1.2.3+build.5", "0.0.1"] {
        let spec = ReleaseSpec {
            version: version.into(),
            ..release()
        };
        assert_eq!(check_release(&spec), Ok(()), "{version}");
    }
}

#[test]
fn invalid_version_is_rejected() {
    for version in ["", "2.4", "v2.4.0", "02.4.0", "2.4.0.1", "latest"] {
        let spec = ReleaseSpec {
            version: version.into(),
            ..release()
        };
        assert_eq!(
            rejected_reason(check_release(&spec)),
            reason::INVALID_VERSION,
            "{version}"
        );
    }
}

#[test]
fn stage_without_namespace_is_rejected() {
    // '.' is allowed in application names but not in namespace names.
    let spec = ReleaseSpec {
        application: "billing.eu".into(),
        ..release()
    };
    let rejection = check_release(&spec).expect_err("no namespace");
    assert_eq!(rejection.reason, reason::NO_NAMESPACE);
    assert!(
        rejection.message.contains("\"dev\""),
        "{}",
        rejection.message
    );

    let mut prod = stage("prod");
    prod.namespace = Some("billing-prod".into());
    let spec = ReleaseSpec {
        application: "billing.eu".into(),
        stages: Some(vec![prod, stage("qa")]),
        ..release()
    };
    let rejection = check_release(&spec).expect_err("qa has no namespace");
    assert_eq!(rejection.reason, reason::NO_NAMESPACE);
    assert!(
        rejection.message.contains("\"qa\""),
        "{}",
        rejection.message
    );
}

#[test]
fn two_stages_in_one_namespace_are_rejected() {
    let mut qa = stage("qa");
    qa.namespace = Some("billing-shared".into());
    let mut demo = stage("demo");
    demo.namespace = Some("billing-shared".into());
    let spec = ReleaseSpec {
        stages: Some(vec![stage("dev"), qa, demo]),
        ..release()
    };
    let rejection = check_release(&spec).expect_err("duplicate namespace");
    assert_eq!(rejection.reason, reason::DUPLICATE_NAMESPACE);
    assert!(
        rejection.message.contains("\"qa\" and \"demo\""),
        "{}",
        rejection.message
    );
}

#[test]
fn explicit_namespace_colliding_with_a_default_one_is_rejected() {
    let mut prod = stage("prod");
    prod.namespace = Some("billing-dev".into());
    let spec = ReleaseSpec {
        stages: Some(vec![stage("dev"), prod]),
        ..release()
    };
    assert_eq!(
        rejected_reason(check_release(&spec)),
        reason::DUPLICATE_NAMESPACE
    );
}

#[test]
fn invalid_durations_are_rejected_with_the_field_named() {
    let cases: Vec<(Stage, &str)> = vec![
        (
            Stage {
                progress_deadline: Some("10 minutes".into()),
                ..stage("prod")
            },
            "spec.stages[0].progressDeadline",
        ),
        (
            Stage {
                steps: Some(vec![weight(10), pause("0s"), weight(100)]),
                ..stage("prod")
            },
            "spec.stages[0].steps[1].pause.duration",
        ),
        (
            Stage {
                early_life_support: Some(EarlyLifeSupport {
                    duration: Some("2d".into()),
                }),
                ..stage("prod")
            },
            "spec.stages[0].earlyLifeSupport.duration",
        ),
        (
            Stage {
                gates: vec![Gate {
                    interval: Some(String::new()),
                    ..gate("smoke")
                }],
                ..stage("prod")
            },
            "spec.stages[0].gates[0].interval",
        ),
        (
            Stage {
                gates: vec![Gate {
                    http: None,
                    job: Some(JobGate {
                        image: "busybox".into(),
                        command: vec![],
                        args: vec![],
                        env: vec![],
                        timeout: Some("-5m".into()),
                    }),
                    ..gate("suite")
                }],
                ..stage("prod")
            },
            "spec.stages[0].gates[0].job.timeout",
        ),
        (
            Stage {
                gates: vec![{
                    let mut g = gate("api");
                    g.http.as_mut().unwrap().timeout = Some("soon".into());
                    g
                }],
                ..stage("prod")
            },
            "spec.stages[0].gates[0].http.timeout",
        ),
    ];
    for (bad_stage, field) in cases {
        let spec = ReleaseSpec {
            stages: Some(vec![bad_stage]),
            ..release()
        };
        let rejection = check_release(&spec).expect_err(field);
        assert_eq!(rejection.reason, reason::INVALID_DURATION, "{field}");
        assert!(
            rejection.message.starts_with(field),
            "{}",
            rejection.message
        );
    }
}

#[test]
fn toggles_with_and_without_stages_are_accepted() {
    assert_eq!(check_feature_toggle(&toggle()), Ok(()));
    let mut spec = toggle();
    spec.stages.insert(
        "dev".into(),
        ToggleStage {
            default_variant: Some("on".into()),
            ..toggle_stage(vec![])
        },
    );
    spec.stages.insert(
        "demo".into(),
        toggle_stage(vec![
            clients_rule("on"),
            split_rule(&[("on", 20), ("off", 80)]),
        ]),
    );
    assert_eq!(check_feature_toggle(&spec), Ok(()));
}

#[test]
fn unknown_variants_are_rejected() {
    let bad_default = FeatureToggleSpec {
        default_variant: "maybe".into(),
        ..toggle()
    };
    let mut bad_stage_default = toggle();
    bad_stage_default.stages.insert(
        "dev".into(),
        ToggleStage {
            default_variant: Some("maybe".into()),
            ..toggle_stage(vec![])
        },
    );
    let mut bad_rule = toggle();
    bad_rule
        .stages
        .insert("prod".into(), toggle_stage(vec![clients_rule("maybe")]));
    let mut bad_split = toggle();
    bad_split.stages.insert(
        "demo".into(),
        toggle_stage(vec![
            clients_rule("on"),
            split_rule(&[("on", 50), ("maybe", 50)]),
        ]),
    );
    for (spec, field) in [
        (bad_default, "spec.defaultVariant"),
        (bad_stage_default, "spec.stages.dev.defaultVariant"),
        (bad_rule, "spec.stages.prod.rules[0].variant"),
        (bad_split, "spec.stages.demo.rules[1].split"),
    ] {
        let rejection = check_feature_toggle(&spec).expect_err(field);
        assert_eq!(rejection.reason, reason::UNKNOWN_VARIANT, "{field}");
        assert!(
            rejection.message.starts_with(field),
            "{}",
            rejection.message
        );
        assert!(
            rejection.message.contains("\"maybe\""),
            "{}",
            rejection.message
        );
    }
}

/// Short strings mixing the characters that matter to names, versions and durations.
fn fragment() -> impl Strategy<Value = String> {
    "[a-z0-9.\\-+ hmsu]{0,12}"
}

/// Mostly valid durations, so that accepted specs are generated too.
fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![3 => Just("10m".to_owned()), 1 => fragment()]
}

fn arb_step() -> impl Strategy<Value = Step> {
    (
        proptest::option::of(-10i32..120),
        proptest::option::of(proptest::option::of(duration_text())),
    )
        .prop_map(|(set_weight, pause)| Step {
            set_weight,
            pause: pause.map(|duration| Pause { duration }),
        })
}

fn arb_gate() -> impl Strategy<Value = Gate> {
    (
        fragment(),
        proptest::option::of(duration_text()),
        proptest::option::of(duration_text()),
    )
        .prop_map(|(name, interval, timeout)| Gate {
            interval,
            http: None,
            job: timeout.map(|timeout| JobGate {
                image: "busybox".into(),
                command: vec![],
                args: vec![],
                env: vec![],
                timeout: Some(timeout),
            }),
            ..gate(&name)
        })
}

fn arb_stage() -> impl Strategy<Value = Stage> {
    (
        fragment(),
        proptest::option::of(fragment()),
        proptest::option::of(proptest::collection::vec(arb_step(), 0..4)),
        proptest::collection::vec(arb_gate(), 0..2),
        proptest::option::of(duration_text()),
        proptest::option::of(proptest::option::of(duration_text())),
    )
        .prop_map(
            |(name, namespace, steps, gates, progress_deadline, els)| Stage {
                name,
                namespace,
                steps,
                gates,
                progress_deadline,
                early_life_support: els.map(|duration| EarlyLifeSupport { duration }),
            },
        )
}

fn arb_release() -> impl Strategy<Value = ReleaseSpec> {
    (
        "[a-z0-9.\\-]{0,70}",
        prop_oneof![Just("2.4.0".to_owned()), fragment()],
        proptest::option::of(proptest::collection::vec(arb_stage(), 0..5)),
    )
        .prop_map(|(application, version, stages)| ReleaseSpec {
            application,
            version,
            stages,
            ..release()
        })
}

proptest! {
    #[test]
    fn check_release_never_panics(spec in arb_release()) {
        let _ = check_release(&spec);
    }

    #[test]
    fn accepted_releases_have_distinct_namespaces(spec in arb_release()) {
        if check_release(&spec).is_ok() {
            let stages = spec.resolved_stages();
            let mut namespaces: Vec<_> = stages.iter().map(|s| s.namespace.clone()).collect();
            prop_assert!(namespaces.iter().all(Option::is_some));
            namespaces.sort();
            namespaces.dedup();
            prop_assert_eq!(namespaces.len(), stages.len());
        }
    }
}
