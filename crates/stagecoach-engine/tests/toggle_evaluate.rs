//! Evaluation table tests: every reason and error code, bucketBy and its fallback to the
//! targeting key, release couplings on and off, every variant type.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use serde_json::{Value, json};
use stagecoach_api::FeatureToggleSpec;
use stagecoach_engine::toggle::{
    ActiveCouplings, ErrorCode, EvaluationContext, Reason, ValueType, evaluate, validate_toggle,
};

const KEY: &str = "new-invoice-ui";

/// The design's example toggle, with a few more stages to reach every branch.
fn invoice_toggle() -> FeatureToggleSpec {
    serde_json::from_value(json!({
        "application": "billing",
        "key": KEY,
        "variants": {"on": true, "off": false},
        "defaultVariant": "off",
        "bucketBy": "clientId",
        "stages": {
            "dev": {"state": "Enabled", "defaultVariant": "on"},
            "qa": {"state": "Disabled", "defaultVariant": "on"},
            "uat": {"state": "Disabled"},
            "demo": {
                "state": "Enabled",
                "rules": [
                    {"clients": ["acme", "globex"], "variant": "on"},
                    {"split": {"on": 20, "off": 80}}
                ]
            },
            "prod": {
                "state": "Enabled",
                "rules": [{
                    "clients": ["acme"], "variant": "on",
                    "when": {"release": "billing-2.4.0", "reached": "prod"}
                }]
            },
            "canary": {
                "rules": [
                    {"clients": ["initech"], "variant": "on",
                     "when": {"release": "billing-2.4.0", "reached": "demo"}},
                    {"split": {"on": 20, "off": 80},
                     "when": {"release": "billing-2.4.0", "reached": "prod"}}
                ]
            }
        }
    }))
    .unwrap()
}

fn client(id: &str) -> EvaluationContext {
    EvaluationContext::default().attribute("clientId", id)
}

fn user(targeting_key: &str) -> EvaluationContext {
    EvaluationContext::with_targeting_key(targeting_key)
}

fn reached(pairs: &[(&str, &str)]) -> ActiveCouplings {
    pairs.iter().copied().collect()
}

/// (stage, context, couplings, expected variant, expected reason). Split placements are the
/// golden ones of tests/toggle_hash.rs (Python mmh3): with {off: 80, on: 20} on
/// "new-invoice-ui", initech -> bucket 36 (off), hooli -> 84 (on), umbrella -> 37 (off).
#[test]
#[allow(clippy::too_many_lines)] // one table of cases reads best in one place
fn reasons_table() {
    let none = ActiveCouplings::none();
    let live_in_prod = reached(&[("billing-2.4.0", "demo"), ("billing-2.4.0", "prod")]);
    let live_in_demo = reached(&[("billing-2.4.0", "demo")]);
    let cases: Vec<(&str, EvaluationContext, &ActiveCouplings, &str, Reason)> = vec![
        // stage not listed: the toggle's default, STATIC
        ("staging", client("acme"), &none, "off", Reason::Static),
        (
            "staging",
            EvaluationContext::default(),
            &none,
            "off",
            Reason::Static,
        ),
        // enabled without rules: the stage's default, STATIC
        ("dev", client("acme"), &none, "on", Reason::Static),
        // disabled: the stage's default, else the toggle's, DISABLED
        ("qa", client("acme"), &none, "on", Reason::Disabled),
        ("uat", client("acme"), &none, "off", Reason::Disabled),
        // client list, by clientId or (absent clientId) by targetingKey
        ("demo", client("acme"), &none, "on", Reason::TargetingMatch),
        ("demo", user("globex"), &none, "on", Reason::TargetingMatch),
        // clientId wins over targetingKey
        (
            "demo",
            client("acme").with_key("initech"),
            &none,
            "on",
            Reason::TargetingMatch,
        ),
        (
            "demo",
            client("initech").with_key("acme"),
            &none,
            "off",
            Reason::Split,
        ),
        // an empty clientId is absent (JsonLogic falsy): the targeting key decides
        (
            "demo",
            client("").with_key("acme"),
            &none,
            "on",
            Reason::TargetingMatch,
        ),
        // split
        ("demo", client("initech"), &none, "off", Reason::Split),
        ("demo", client("hooli"), &none, "on", Reason::Split),
        ("demo", user("hooli"), &none, "on", Reason::Split),
        // coupled rule: inactive -> no active rules -> STATIC; active -> evaluated
        ("prod", client("acme"), &none, "off", Reason::Static),
        ("prod", client("acme"), &live_in_demo, "off", Reason::Static),
        (
            "prod",
            client("acme"),
            &live_in_prod,
            "on",
            Reason::TargetingMatch,
        ),
        (
            "prod",
            client("globex"),
            &live_in_prod,
            "off",
            Reason::Default,
        ),
        // only the active ones of several coupled rules
        ("canary", client("initech"), &none, "off", Reason::Static),
        (
            "canary",
            client("initech"),
            &live_in_demo,
            "on",
            Reason::TargetingMatch,
        ),
        (
            "canary",
            client("hooli"),
            &live_in_demo,
            "off",
            Reason::Default,
        ),
        (
            "canary",
            client("hooli"),
            &live_in_prod,
            "on",
            Reason::Split,
        ),
        (
            "canary",
            client("umbrella"),
            &live_in_prod,
            "off",
            Reason::Split,
        ),
        // no bucketing value but no split either: DEFAULT
        (
            "prod",
            EvaluationContext::default(),
            &live_in_prod,
            "off",
            Reason::Default,
        ),
    ];
    let toggle = invoice_toggle();
    for (stage, context, couplings, variant, reason) in cases {
        let evaluation = evaluate(KEY, &toggle, stage, &context, couplings)
            .unwrap_or_else(|e| panic!("{stage} {context:?}: {e}"));
        assert_eq!(
            (evaluation.variant.as_str(), evaluation.reason),
            (variant, reason),
            "{stage} {context:?} {couplings:?}"
        );
        assert_eq!(evaluation.value, json!(variant == "on"));
    }
}

trait WithKey {
    fn with_key(self, key: &str) -> Self;
}

impl WithKey for EvaluationContext {
    fn with_key(mut self, key: &str) -> Self {
        self.targeting_key = Some(key.to_owned());
        self
    }
}

#[test]
fn split_without_any_bucketing_value_is_targeting_key_missing() {
    let toggle = invoice_toggle();
    let none = ActiveCouplings::none();
    for context in [
        EvaluationContext::default(),
        EvaluationContext::with_targeting_key(""),
        EvaluationContext::default().attribute("clientId", Value::Null),
        EvaluationContext::default().attribute("tenant", "acme"),
    ] {
        let error = evaluate(KEY, &toggle, "demo", &context, &none).unwrap_err();
        assert_eq!(error.code(), ErrorCode::TargetingKeyMissing, "{context:?}");
        assert_eq!(error.code().as_str(), "TARGETING_KEY_MISSING");
        assert!(error.to_string().contains("clientId"), "{error}");
    }
}

#[test]
fn non_string_client_ids_are_invalid_context() {
    let toggle = invoice_toggle();
    let context = EvaluationContext::default().attribute("clientId", 42);
    let error = evaluate(KEY, &toggle, "demo", &context, &ActiveCouplings::none()).unwrap_err();
    assert_eq!(error.code().as_str(), "INVALID_CONTEXT");
    // Stages that do not look at the client do not care.
    let evaluation = evaluate(KEY, &toggle, "dev", &context, &ActiveCouplings::none()).unwrap();
    assert_eq!(evaluation.reason, Reason::Static);
}

#[test]
fn invalid_specs_are_parse_errors() {
    let mut toggle = invoice_toggle();
    toggle.variants.insert("maybe".into(), json!("perhaps"));
    let error = evaluate(
        KEY,
        &toggle,
        "dev",
        &client("acme"),
        &ActiveCouplings::none(),
    )
    .unwrap_err();
    assert_eq!(error.code(), ErrorCode::ParseError);
    assert!(error.to_string().contains("differ in type"), "{error}");
}

#[test]
fn bucket_by_a_custom_attribute_path_falls_back_to_the_targeting_key() {
    let mut toggle = invoice_toggle();
    toggle.bucket_by = Some("tenant.id".into());
    let none = ActiveCouplings::none();
    let tenant = |id: &str| EvaluationContext::default().attribute("tenant", json!({"id": id}));
    let cases = [
        (tenant("acme"), "on", Reason::TargetingMatch),
        (tenant("hooli"), "on", Reason::Split),
        // clientId is no longer the bucketing attribute
        (client("acme").with_key("initech"), "off", Reason::Split),
        (user("globex"), "on", Reason::TargetingMatch),
        (tenant("initech").with_key("acme"), "off", Reason::Split),
    ];
    for (context, variant, reason) in cases {
        let evaluation = evaluate(KEY, &toggle, "demo", &context, &none).unwrap();
        assert_eq!(
            (evaluation.variant.as_str(), evaluation.reason),
            (variant, reason),
            "{context:?}"
        );
    }
}

#[test]
fn bucket_by_targeting_key_ignores_client_id() {
    let mut toggle = invoice_toggle();
    toggle.bucket_by = Some("targetingKey".into());
    let context = client("acme").with_key("initech");
    let evaluation = evaluate(KEY, &toggle, "demo", &context, &ActiveCouplings::none()).unwrap();
    assert_eq!(
        (evaluation.variant.as_str(), evaluation.reason),
        ("off", Reason::Split)
    );
}

/// Every variant type, through a client list, a split and the default.
#[test]
fn every_variant_type() {
    let cases = [
        (
            json!({"blue": "#00f", "red": "#f00"}),
            "red",
            "blue",
            ValueType::String,
        ),
        (
            json!({"large": 100, "small": 10}),
            "small",
            "large",
            ValueType::Integer,
        ),
        (
            json!({"high": 0.75, "low": 0.25}),
            "low",
            "high",
            ValueType::Float,
        ),
        (
            json!({"classic": {"layout": "classic"}, "grid": {"layout": "grid", "columns": 3}}),
            "classic",
            "grid",
            ValueType::Object,
        ),
        (
            json!({"off": false, "on": true}),
            "off",
            "on",
            ValueType::Boolean,
        ),
    ];
    for (variants, default, other, value_type) in cases {
        let toggle: FeatureToggleSpec = serde_json::from_value(json!({
            "application": "billing",
            "variants": variants,
            "defaultVariant": default,
            "stages": {"demo": {"rules": [
                {"clients": ["acme"], "variant": other},
                // all of the weight on `other`: every identified client gets it
                {"split": {(other): 1, (default): 0}, "when": {"release": "r", "reached": "demo"}}
            ]}}
        }))
        .unwrap();
        assert_eq!(validate_toggle(&toggle), Ok(value_type));
        let eval = |context: &EvaluationContext, couplings: &ActiveCouplings| {
            evaluate("typed", &toggle, "demo", context, couplings).unwrap()
        };
        let none = ActiveCouplings::none();
        let matched = eval(&client("acme"), &none);
        assert_eq!(
            (matched.variant.as_str(), matched.reason),
            (other, Reason::TargetingMatch)
        );
        assert_eq!(matched.value, variants[other]);
        let fallback = eval(&client("globex"), &none);
        assert_eq!(
            (fallback.variant.as_str(), fallback.reason),
            (default, Reason::Default)
        );
        assert_eq!(fallback.value, variants[default]);
        let split = eval(&client("globex"), &reached(&[("r", "demo")]));
        assert_eq!(
            (split.variant.as_str(), split.reason),
            (other, Reason::Split)
        );
        assert_eq!(split.value, variants[other]);
    }
}

#[test]
fn reasons_and_codes_are_spelled_as_ofrep_spells_them() {
    let reasons = [
        Reason::Static,
        Reason::TargetingMatch,
        Reason::Split,
        Reason::Disabled,
        Reason::Default,
    ];
    let spelled: Vec<&str> = reasons.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        spelled,
        ["STATIC", "TARGETING_MATCH", "SPLIT", "DISABLED", "DEFAULT"]
    );
    let codes = [
        ErrorCode::FlagNotFound,
        ErrorCode::ParseError,
        ErrorCode::TargetingKeyMissing,
        ErrorCode::InvalidContext,
        ErrorCode::General,
    ];
    let spelled: Vec<String> = codes.iter().map(ToString::to_string).collect();
    assert_eq!(
        spelled,
        [
            "FLAG_NOT_FOUND",
            "PARSE_ERROR",
            "TARGETING_KEY_MISSING",
            "INVALID_CONTEXT",
            "GENERAL"
        ]
    );
}
