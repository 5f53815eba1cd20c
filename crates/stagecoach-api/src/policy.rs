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

/// Every policy and binding, as Kubernetes objects: the FeatureToggle rules, then the
/// Approval rules.
pub fn admission_policy() -> Vec<Value> {
    let mut objects = feature_toggle_policy();
    objects.extend(approval_policy());
    objects
}

/// Name of the policy that checks who makes an Approval.
pub const APPROVAL_POLICY: &str = "stagecoach-approval-identity";
/// Name of the policy that checks an Approval names a stage of its release.
pub const APPROVAL_STAGE_POLICY: &str = "stagecoach-approval-stage";

/// The authorizer check of verb `verb` on `releases/<stage>` of the approved release.
fn approval_check(verb: &str) -> String {
    format!(
        "authorizer.group('{group}').resource('releases').subresource(object.spec.stage).namespace(object.metadata.namespace).name(object.spec.release).check('{verb}').allowed()",
        group = crate::GROUP
    )
}

/// Approvals: the approver is whoever creates it (the API server's word, not the
/// client's), and that user may `approve` (and for an override `override`)
/// `releases/<stage>` of that release, as RBAC says. Plus: the stage is one of the
/// release's (the Release is the policy's parameter, one evaluation per Release in the
/// namespace; only the named one can fail it).
fn approval_policy() -> Vec<Value> {
    let identity = [
        (
            "object.spec.approver == request.userInfo.username".to_owned(),
            "'spec.approver must be the user making the approval: you are ' + request.userInfo.username + ', not ' + object.spec.approver".to_owned(),
        ),
        (
            approval_check("approve"),
            "request.userInfo.username + ' may not approve or reject stage ' + object.spec.stage + ' of release ' + object.spec.release + ' (RBAC needs verb approve on resource releases/' + object.spec.stage + ' in namespace ' + object.metadata.namespace + ')'".to_owned(),
        ),
        (
            format!("!has(object.spec.override) || !object.spec.override || {}", approval_check("override")),
            "request.userInfo.username + ' may not override the schedule of stage ' + object.spec.stage + ' (RBAC needs verb override on resource releases/' + object.spec.stage + ' in namespace ' + object.metadata.namespace + ')'".to_owned(),
        ),
        (
            "!has(object.spec.override) || !object.spec.override || object.spec.decision == 'Approve'".to_owned(),
            "'an override is an approval: decision must be Approve'".to_owned(),
        ),
    ];
    let identity: Vec<Value> = identity
        .iter()
        .map(|(expression, message)| json!({"expression": expression, "messageExpression": message, "reason": "Forbidden"}))
        .collect();
    let stage_exists = "params.metadata.name != object.spec.release || (has(params.status) && has(params.status.stages) ? params.status.stages.exists(s, s.name == object.spec.stage) : (has(params.spec.stages) ? params.spec.stages.exists(s, s.name == object.spec.stage) : object.spec.stage in ['dev', 'qa', 'demo', 'prod']))";
    let approvals = json!({
        "apiGroups": [crate::GROUP],
        "apiVersions": [crate::VERSION],
        "operations": ["CREATE", "UPDATE"],
        "resources": ["approvals"]
    });
    vec![
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": APPROVAL_POLICY},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [approvals.clone()]},
                "validations": identity
            }
        }),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": APPROVAL_POLICY},
            "spec": {"policyName": APPROVAL_POLICY, "validationActions": ["Deny"]}
        }),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": APPROVAL_STAGE_POLICY},
            "spec": {
                "failurePolicy": "Fail",
                "paramKind": {"apiVersion": format!("{}/{}", crate::GROUP, crate::VERSION), "kind": "Release"},
                "matchConstraints": {"resourceRules": [approvals]},
                "validations": [{
                    "expression": stage_exists,
                    "messageExpression": "'release ' + object.spec.release + ' has no stage ' + object.spec.stage",
                    "reason": "Invalid"
                }]
            }
        }),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": APPROVAL_STAGE_POLICY},
            "spec": {
                "policyName": APPROVAL_STAGE_POLICY,
                "validationActions": ["Deny"],
                "paramRef": {"selector": {}, "parameterNotFoundAction": "Deny"}
            }
        }),
    ]
}

/// The FeatureToggle policy and its binding.
fn feature_toggle_policy() -> Vec<Value> {
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
