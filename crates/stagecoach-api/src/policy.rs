//! The ValidatingAdmissionPolicy that checks what the CRD schema cannot.
//!
//! A FeatureToggle's variant values are arbitrary JSON, for which the API server's CRD
//! validation cannot give CEL a type, so CRD rules cannot look at them. Admission
//! policies evaluate CEL on the object without a schema, so these rules live here: the
//! API server still rejects the bad object before it is stored, with the message below.
//! `cargo xtask gen` writes this policy next to the CRDs and into the chart.

use serde_json::{Value, json};

/// Name of the policy and of its binding.
pub const FEATURE_TOGGLE_POLICY: &str = "stagecoach-featuretoggle-variants";

/// Each rule: (CEL expression over `object`, message shown to the user).
pub const FEATURE_TOGGLE_RULES: [(&str, &str); 6] = [
    (
        "object.spec.variants.all(k, size(k) <= 63 && k.matches('^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$'))",
        "variant names must be 1-63 letters, digits, '-', '_' or '.'",
    ),
    (
        "object.spec.variants.all(k, type(object.spec.variants[k]) == bool) || object.spec.variants.all(k, type(object.spec.variants[k]) == string) || object.spec.variants.all(k, (type(object.spec.variants[k]) == int || type(object.spec.variants[k]) == uint || type(object.spec.variants[k]) == double)) || object.spec.variants.all(k, type(object.spec.variants[k]) == map)",
        "all variants must have the same type: all booleans, all strings, all numbers or all objects",
    ),
    (
        "object.spec.defaultVariant in object.spec.variants",
        "defaultVariant must be one of the keys of variants",
    ),
    (
        "!has(object.spec.stages) || object.spec.stages.all(st, !has(object.spec.stages[st].defaultVariant) || object.spec.stages[st].defaultVariant in object.spec.variants)",
        "a stage's defaultVariant must be one of the keys of variants",
    ),
    (
        "!has(object.spec.stages) || object.spec.stages.all(st, !has(object.spec.stages[st].rules) || object.spec.stages[st].rules.all(r, !has(r.variant) || r.variant in object.spec.variants))",
        "a rule's variant must be one of the keys of variants",
    ),
    (
        "!has(object.spec.stages) || object.spec.stages.all(st, !has(object.spec.stages[st].rules) || object.spec.stages[st].rules.all(r, !has(r.split) || r.split.all(v, v in object.spec.variants)))",
        "every variant named in a split must be one of the keys of variants",
    ),
];

/// The policy and its binding, as Kubernetes objects.
pub fn admission_policy() -> Vec<Value> {
    let validations: Vec<Value> = FEATURE_TOGGLE_RULES
        .iter()
        .map(|(expression, message)| json!({"expression": expression, "message": message, "reason": "Invalid"}))
        .collect();
    vec![
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": FEATURE_TOGGLE_POLICY},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [{
                        "apiGroups": [crate::GROUP],
                        "apiVersions": [crate::VERSION],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["featuretoggles"]
                    }]
                },
                "validations": validations
            }
        }),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": FEATURE_TOGGLE_POLICY},
            "spec": {
                "policyName": FEATURE_TOGGLE_POLICY,
                "validationActions": ["Deny"]
            }
        }),
    ]
}
