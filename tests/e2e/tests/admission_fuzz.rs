//! Bad input at volume: 1,000 invalid manifests of random shape, sent through admission
//! on the real API server. Every one must be refused with a message that names what is
//! wrong (a field path or the rule's message), none may be stored, and the operator
//! watching the namespace must not notice: same process, no writes, no reconciles, its
//! memory flat. Afterwards a valid Release and a valid FeatureToggle still go through
//! and are reconciled.
//!
//! The manifests come from a property-based generator (proptest strategies, drawn from a
//! fixed seed that is printed; `STAGECOACH_FUZZ_SEED=<n>` replays or explores another):
//! it starts from a valid manifest of each kind (Release, FeatureToggle, Pipeline,
//! Approval) and applies one to three mutations, each refused on its own by the CRD
//! schema, its CEL rules or the ValidatingAdmissionPolicies. Most mutations are derived
//! from the generated CRDs in `crds/` by walking the valid manifest alongside its schema:
//! a random JSON tree of another type in place of any field (objects, arrays, strings,
//! numbers at any depth), a required field dropped, enum values outside the set, strings
//! too long, too short or breaking a pattern/duration/time zone rule, numbers out of
//! range, lists too long or empty, duplicates in lists whose names must be unique, a
//! random object in place of a struct, an unknown field holding a random tree. The rest
//! are a catalogue of cross-field rules (weights, splits, windows, freezes, variants).
//!
//! Requests use `fieldValidation=Strict`, which is what kubectl sends by default: unknown
//! fields are refused (400, "strict decoding error") rather than silently pruned.
//!
//! The test also measures the kube-apiserver's CPU time (utime + stime of the process
//! whose command line names the control plane's state directory: STAGECOACH_CLUSTER_DIR,
//! or the directory of KUBECONFIG) over the barrage and prints it per request. Other
//! tests run at the same time, so that number is an upper bound.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use futures::StreamExt;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use proptest::prelude::*;
use proptest::strategy::{BoxedStrategy, Union, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};
use stagecoach_e2e::{
    Operator, Pipeline, client, eventually, install_crds, read_manifests, release_manifest,
    repo_root,
};

/// How many invalid manifests are sent.
const CASES: usize = 1000;
/// How many requests are in flight at once.
const IN_FLIGHT: usize = 8;
/// The seed used unless STAGECOACH_FUZZ_SEED says otherwise.
const DEFAULT_SEED: u64 = 20_261_129;
/// How much the operator's resident memory may grow over the barrage.
const MEMORY_GROWTH_KIB: u64 = 64 * 1024;
const GROUP: &str = "stagecoach.dev";
const VERSION: &str = "v1alpha1";
const IMAGE: &str = "example/fuzz:1.0.0";

/// The operator's counters of work done and writes made: none may move while only
/// invalid objects are sent.
const OPERATOR_COUNTERS: [&str; 7] = [
    "stagecoach_reconciles_total",
    "stagecoach_reconcile_errors_total",
    "stagecoach_status_writes_total",
    "stagecoach_flag_set_writes_total",
    "stagecoach_stage_transitions_total",
    "stagecoach_rollbacks_total",
    "stagecoach_notifications_total",
];

// ---------------------------------------------------------------------------------------
// The valid base manifests.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Release,
    FeatureToggle,
    Pipeline,
    Approval,
}

const KINDS: [Kind; 4] = [
    Kind::Release,
    Kind::FeatureToggle,
    Kind::Pipeline,
    Kind::Approval,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Release => "Release",
            Self::FeatureToggle => "FeatureToggle",
            Self::Pipeline => "Pipeline",
            Self::Approval => "Approval",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Self::Release => "releases",
            Self::FeatureToggle => "featuretoggles",
            Self::Pipeline => "pipelines",
            Self::Approval => "approvals",
        }
    }

    fn api(self, client: &Client, ns: &str) -> Api<DynamicObject> {
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(GROUP, VERSION, self.name()));
        Api::namespaced_with(client.clone(), ns, &ar)
    }

    /// A valid manifest of this kind, touching most of its schema.
    fn base(self, approver: &str) -> Value {
        let spec = match self {
            Self::Release => json!({
                "application": "fuzzapp",
                "version": "1.2.3-rc.1+build.5",
                "type": "minor",
                "paused": false,
                "notes": "the generator's valid base",
                "changes": [{
                    "id": "FZ-1", "title": "a change", "authors": ["ann"],
                    "url": "https://example.com/FZ-1", "mergedAt": "2026-01-02T03:04:05Z"
                }],
                "workloads": [{
                    "deployment": "api",
                    "containers": [
                        {"name": "app", "image": "example/app:1.2.3"},
                        {"name": "sidecar", "image": "example/side:1"}
                    ]
                }],
                "stages": [
                    {"name": "dev", "namespace": "fuzz-dev"},
                    {
                        "name": "prod",
                        "steps": [{"setWeight": 10}, {"pause": {"duration": "1m"}}, {"setWeight": 100}],
                        "progressDeadline": "5m",
                        "earlyLifeSupport": {"duration": "1h"},
                        "gates": [
                            {
                                "name": "errors", "interval": "30s", "count": 3,
                                "failureLimit": 1, "inconclusiveLimit": 1, "onInconclusive": "Pause",
                                "prometheus": {
                                    "address": "http://prometheus.monitoring:9090",
                                    "query": "sum(rate(errors_total[1m]))",
                                    "comparison": "LessThan", "threshold": 0.5, "timeout": "10s",
                                    "bearerTokenSecretRef": {"name": "prom", "key": "token"}
                                }
                            },
                            {
                                "name": "smoke",
                                "http": {
                                    "url": "https://smoke.example.com/check", "method": "GET",
                                    "expectedStatus": 200, "jsonPointer": "/ok",
                                    "comparison": "Equal", "value": "true", "timeout": "5s",
                                    "headers": [
                                        {"name": "X-Token", "secretRef": {"name": "smoke", "key": "token"}},
                                        {"name": "X-Env", "value": "prod"}
                                    ]
                                }
                            },
                            {
                                "name": "check",
                                "job": {
                                    "image": "example/check:1", "command": ["/check"],
                                    "args": ["--fast"], "env": [{"name": "MODE", "value": "quick"}],
                                    "timeout": "2m"
                                }
                            }
                        ]
                    }
                ]
            }),
            Self::FeatureToggle => json!({
                "application": "fuzzapp",
                "key": "fuzz.flag",
                "description": "the generator's valid base",
                "bucketBy": "tenant",
                "variants": {"on": true, "off": false},
                "defaultVariant": "off",
                "stages": {
                    "dev": {
                        "state": "Enabled",
                        "defaultVariant": "on",
                        "rules": [
                            {"clients": ["acme", "globex"], "variant": "on", "when": {"release": "r1", "reached": "dev"}},
                            {"split": {"on": 20, "off": 80}}
                        ]
                    },
                    "prod": {"state": "Disabled"}
                }
            }),
            Self::Pipeline => json!({
                "application": "fuzzapp",
                "stages": [
                    {"name": "dev", "namespace": "fuzz-dev"},
                    {
                        "name": "prod",
                        "approval": {"required": 2, "types": ["minor", "major"]},
                        "steps": [{"setWeight": 50}, {"pause": {"duration": "5s"}}, {"setWeight": 100}],
                        "progressDeadline": "10m",
                        "earlyLifeSupport": {"duration": "48h"},
                        "gates": [{
                            "name": "errors",
                            "prometheus": {
                                "address": "https://prometheus.example.com",
                                "query": "up", "comparison": "GreaterOrEqual", "threshold": 1
                            }
                        }]
                    }
                ],
                "releaseTypes": {
                    "major": {
                        "notice": "24h",
                        "windows": [{
                            "days": ["Mon", "Tue", "Wed"], "start": "06:00", "end": "16:00",
                            "timeZone": "Europe/Stockholm", "stages": ["prod"]
                        }]
                    },
                    "minor": {
                        "windows": [{"days": ["Thu"], "start": "00:00", "end": "24:00", "timeZone": "UTC"}]
                    }
                },
                "freezes": [{
                    "from": "2026-12-20T00:00:00Z", "to": "2027-01-02T00:00:00Z",
                    "reason": "year end", "stages": ["prod"]
                }],
                "notifications": [{
                    "name": "team",
                    "webhook": {
                        "url": "https://hooks.example.com/stagecoach", "format": "slack",
                        "secretRef": {"name": "hook", "key": "token"}
                    },
                    "events": ["Closed", "RolledBack"],
                    "releaseTypes": ["major"]
                }],
                "retention": {"count": 10, "age": "720h"}
            }),
            Self::Approval => json!({
                "approver": approver,
                "decision": "Approve",
                "release": "r1",
                "releaseDigest": format!("sha256:{}", "ab".repeat(32)),
                "stage": "prod",
                "override": false,
                "comment": "the generator's valid base"
            }),
        };
        json!({
            "apiVersion": format!("{GROUP}/{VERSION}"),
            "kind": self.name(),
            "metadata": {"name": "base"},
            "spec": spec,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Mutations.

#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Index(usize),
}

#[derive(Clone, Debug)]
enum Op {
    /// Replace the node.
    Set(Value),
    /// Remove the node from its object.
    Remove,
    /// Add a key to the node (an object).
    Insert(String, Value),
    /// Append copies of the node's (an array's) first item until it has this many.
    Grow(usize),
}

/// One change that makes a valid manifest invalid, and what the refusal should mention
/// (any one of `hints`: the field's path or the rule's message).
#[derive(Clone, Debug)]
struct Mutation {
    what: String,
    path: Vec<Seg>,
    op: Op,
    hints: Vec<String>,
}

impl Mutation {
    /// Applies the mutation; false when its target no longer exists (an earlier mutation
    /// replaced or removed it).
    fn apply(&self, doc: &mut Value) -> bool {
        let (last, parents) = match self.op {
            Op::Set(_) | Op::Remove => match self.path.split_last() {
                Some((last, parents)) => (Some(last), parents),
                None => return false,
            },
            Op::Insert(..) | Op::Grow(_) => (None, self.path.as_slice()),
        };
        let mut node = doc;
        for seg in parents {
            let next = match seg {
                Seg::Key(k) => node.as_object_mut().and_then(|o| o.get_mut(k)),
                Seg::Index(i) => node.as_array_mut().and_then(|a| a.get_mut(*i)),
            };
            match next {
                Some(n) => node = n,
                None => return false,
            }
        }
        match (&self.op, last) {
            (Op::Set(value), Some(Seg::Key(k))) => match node.as_object_mut() {
                Some(o) if o.contains_key(k) => {
                    o.insert(k.clone(), value.clone());
                    true
                }
                _ => false,
            },
            (Op::Set(value), Some(Seg::Index(i))) => {
                match node.as_array_mut().and_then(|a| a.get_mut(*i)) {
                    Some(slot) => {
                        *slot = value.clone();
                        true
                    }
                    None => false,
                }
            }
            (Op::Remove, Some(Seg::Key(k))) => {
                node.as_object_mut().is_some_and(|o| o.remove(k).is_some())
            }
            (Op::Insert(k, value), None) => match node.as_object_mut() {
                Some(o) => {
                    o.insert(k.clone(), value.clone());
                    true
                }
                None => false,
            },
            (Op::Grow(len), None) => match node.as_array_mut() {
                Some(a) if !a.is_empty() => {
                    let first = a[0].clone();
                    while a.len() < *len {
                        a.push(first.clone());
                    }
                    true
                }
                _ => false,
            },
            _ => false,
        }
    }
}

/// A field of a base manifest with its schema: where generic mutations apply.
#[derive(Clone, Debug)]
struct Slot {
    path: Vec<Seg>,
    /// The path as the API server's schema errors spell it (`spec.stages.dev.rules[0]`)
    /// and as its CEL errors do (`spec.stages[dev].rules[0]`).
    dotted: String,
    bracketed: String,
    schema: Value,
    value: Value,
    required: bool,
}

impl Slot {
    fn hints(&self) -> Vec<String> {
        let mut hints = vec![self.dotted.clone()];
        if self.bracketed != self.dotted {
            hints.push(self.bracketed.clone());
        }
        hints
    }

    fn rule_messages(&self) -> Vec<String> {
        self.schema["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["message"].as_str().map(str::to_owned))
            .collect()
    }

    fn rules(&self) -> String {
        self.schema["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["rule"].as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn mutation(&self, what: &str, op: Op, extra_hints: Vec<String>) -> Mutation {
        let mut hints = self.hints();
        hints.extend(extra_hints);
        Mutation {
            what: format!("{what} at {}", self.dotted),
            path: self.path.clone(),
            op,
            hints,
        }
    }
}

/// Walks the base manifest's spec alongside the CRD schema and lists every field.
fn slots(base: &Value, crd_schema: &Value) -> Vec<Slot> {
    let mut out = Vec::new();
    walk(
        &base["spec"],
        &crd_schema["properties"]["spec"],
        vec![Seg::Key("spec".into())],
        "spec".into(),
        "spec".into(),
        false,
        &mut out,
    );
    out
}

fn walk(
    value: &Value,
    schema: &Value,
    path: Vec<Seg>,
    dotted: String,
    bracketed: String,
    required: bool,
    out: &mut Vec<Slot>,
) {
    out.push(Slot {
        path,
        dotted,
        bracketed,
        schema: schema.clone(),
        value: value.clone(),
        required,
    });
    let (path, dotted, bracketed) = match out.last() {
        Some(s) => (s.path.clone(), s.dotted.clone(), s.bracketed.clone()),
        None => return,
    };
    match value {
        Value::Object(map) => {
            if let Some(props) = schema["properties"].as_object() {
                let req: Vec<&str> = schema["required"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                for (k, v) in map {
                    if let Some(s) = props.get(k) {
                        let mut p = path.clone();
                        p.push(Seg::Key(k.clone()));
                        walk(
                            v,
                            s,
                            p,
                            format!("{dotted}.{k}"),
                            format!("{bracketed}.{k}"),
                            req.contains(&k.as_str()),
                            out,
                        );
                    }
                }
            } else if let Some(s) = schema.get("additionalProperties") {
                // Map values kept as they are (variants) are arbitrary JSON: nothing to break.
                if s["x-kubernetes-preserve-unknown-fields"] == json!(true) {
                    return;
                }
                for (k, v) in map {
                    let mut p = path.clone();
                    p.push(Seg::Key(k.clone()));
                    walk(
                        v,
                        s,
                        p,
                        format!("{dotted}.{k}"),
                        format!("{bracketed}[{k}]"),
                        false,
                        out,
                    );
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let mut p = path.clone();
                p.push(Seg::Index(i));
                walk(
                    v,
                    &schema["items"],
                    p,
                    format!("{dotted}[{i}]"),
                    format!("{bracketed}[{i}]"),
                    false,
                    out,
                );
            }
        }
        _ => {}
    }
}

/// Parses `spec.stages[1].steps[0]` into segments.
fn parse_path(path: &str) -> Vec<Seg> {
    let mut segs = Vec::new();
    for part in path.split('.') {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            segs.push(Seg::Key(rest[..open].to_owned()));
            rest = &rest[open..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let close = stripped.find(']').unwrap();
                segs.push(Seg::Index(stripped[..close].parse().unwrap()));
                rest = &stripped[close + 1..];
            }
        } else {
            segs.push(Seg::Key(rest.to_owned()));
        }
    }
    segs
}

fn fixed(what: &str, path: &str, op: Op, hint: &str) -> Mutation {
    Mutation {
        what: what.to_owned(),
        path: parse_path(path),
        op,
        hints: vec![path.to_owned(), hint.to_owned()],
    }
}

fn set(what: &str, path: &str, value: Value, hint: &str) -> Mutation {
    fixed(what, path, Op::Set(value), hint)
}

/// The catalogue of cross-field and semantic mutations, per kind.
fn catalogue(kind: Kind) -> Vec<Mutation> {
    let weights = "setWeight values must strictly increase";
    let positive = "must be a positive duration";
    match kind {
        Kind::Release => vec![
            set(
                "setWeight 0",
                "spec.stages[1].steps[0].setWeight",
                json!(0),
                "setWeight must be between 1 and 100",
            ),
            set(
                "setWeight 101",
                "spec.stages[1].steps[2].setWeight",
                json!(101),
                "setWeight must be between 1 and 100",
            ),
            set(
                "setWeight -7",
                "spec.stages[1].steps[0].setWeight",
                json!(-7),
                "setWeight must be between 1 and 100",
            ),
            set(
                "weights decreasing",
                "spec.stages[1].steps",
                json!([{"setWeight": 50}, {"setWeight": 10}, {"setWeight": 100}]),
                weights,
            ),
            set(
                "weights repeated",
                "spec.stages[1].steps",
                json!([{"setWeight": 50}, {"setWeight": 50}, {"setWeight": 100}]),
                weights,
            ),
            set(
                "last weight below 100",
                "spec.stages[1].steps",
                json!([{"setWeight": 10}, {"setWeight": 60}]),
                "the last setWeight step of a stage must be 100",
            ),
            set(
                "step with weight and pause",
                "spec.stages[1].steps[0]",
                json!({"setWeight": 10, "pause": {"duration": "1m"}}),
                "a step is either setWeight or pause",
            ),
            set(
                "empty step",
                "spec.stages[1].steps[1]",
                json!({}),
                "a step is either setWeight or pause",
            ),
            set(
                "zero pause",
                "spec.stages[1].steps[1].pause.duration",
                json!("0s"),
                positive,
            ),
            set(
                "negative pause",
                "spec.stages[1].steps[1].pause.duration",
                json!("-5m"),
                positive,
            ),
            set(
                "pause in days",
                "spec.stages[1].steps[1].pause.duration",
                json!("2d"),
                positive,
            ),
            set(
                "pause without unit",
                "spec.stages[1].steps[1].pause.duration",
                json!("1h30"),
                positive,
            ),
            set(
                "progressDeadline in words",
                "spec.stages[1].progressDeadline",
                json!("ten minutes"),
                positive,
            ),
            set(
                "duplicate stage names",
                "spec.stages[1].name",
                json!("dev"),
                "stage names must be unique within a release",
            ),
            set(
                "no derivable namespace",
                "spec.application",
                json!("fuzz.app"),
                "every stage needs a namespace",
            ),
            set(
                "version with a leading v",
                "spec.version",
                json!("v1.2.3"),
                "version must be a semantic version",
            ),
            set(
                "version with two parts",
                "spec.version",
                json!("1.2"),
                "version must be a semantic version",
            ),
            set(
                "release type hotfix",
                "spec.type",
                json!("hotfix"),
                "supported values",
            ),
            set(
                "gate named workload-health",
                "spec.stages[1].gates[0].name",
                json!("workload-health"),
                "gate name must be lower-case",
            ),
            set(
                "duplicate gate names",
                "spec.stages[1].gates[1].name",
                json!("errors"),
                "gate names must be unique within a stage",
            ),
            fixed(
                "gate with two kinds",
                "spec.stages[1].gates[0]",
                Op::Insert("http".into(), json!({"url": "https://x.example.com"})),
                "a gate sets exactly one of prometheus, http or job",
            ),
            fixed(
                "gate with no kind",
                "spec.stages[1].gates[2].job",
                Op::Remove,
                "a gate sets exactly one of prometheus, http or job",
            ),
            fixed(
                "header with value and secretRef",
                "spec.stages[1].gates[1].http.headers[1]",
                Op::Insert("secretRef".into(), json!({"name": "s", "key": "k"})),
                "a header sets exactly one of value or secretRef",
            ),
            set(
                "jsonPointer without slash",
                "spec.stages[1].gates[1].http.jsonPointer",
                json!("ok"),
                "jsonPointer must start with '/'",
            ),
            set(
                "prometheus address not a URL",
                "spec.stages[1].gates[0].prometheus.address",
                json!("prometheus:9090"),
                "address must be an http:// or https:// URL",
            ),
            set(
                "image with whitespace",
                "spec.workloads[0].containers[0].image",
                json!("example/app 1.2.3"),
                "image must not be empty and must not contain whitespace",
            ),
            set(
                "duplicate containers",
                "spec.workloads[0].containers[1].name",
                json!("app"),
                "each container may appear only once",
            ),
            set(
                "no workloads",
                "spec.workloads",
                json!([]),
                "workloads must list at least one Deployment",
            ),
            set(
                "bad mergedAt",
                "spec.changes[0].mergedAt",
                json!("yesterday"),
                "mergedAt",
            ),
            set(
                "gate URL with a space in the host",
                "spec.stages[1].gates[1].http.url",
                json!("https://smoke example.com/check"),
                "url must be an http:// or https:// URL with a host",
            ),
            set(
                "header name with a colon",
                "spec.stages[1].gates[1].http.headers[1].name",
                json!("X-Env:"),
                "header name must be an HTTP token",
            ),
            set(
                "job image with whitespace",
                "spec.stages[1].gates[2].job.image",
                json!("example/check 1"),
                "image must not contain whitespace",
            ),
            set(
                "env name with '='",
                "spec.stages[1].gates[2].job.env[0].name",
                json!("MODE=fast"),
                "env name must be printable ASCII characters other than '='",
            ),
            set(
                "secret name in upper case",
                "spec.stages[1].gates[0].prometheus.bearerTokenSecretRef.name",
                json!("Prom-Token"),
                "secretRef name must be a Secret name",
            ),
            set(
                "secret key with a slash",
                "spec.stages[1].gates[1].http.headers[0].secretRef.key",
                json!("a/b"),
                "secretRef key must be a Secret key",
            ),
        ],
        Kind::FeatureToggle => vec![
            set(
                "defaultVariant not a variant",
                "spec.defaultVariant",
                json!("zz-missing"),
                "defaultVariant must be one of the keys of variants",
            ),
            set(
                "mixed variant types",
                "spec.variants",
                json!({"on": true, "off": "no"}),
                "all variants must have the same type",
            ),
            set(
                "numbers and strings",
                "spec.variants",
                json!({"on": 1, "off": "0"}),
                "all variants must have the same type",
            ),
            set(
                "objects and booleans",
                "spec.variants",
                json!({"on": {"a": 1}, "off": false}),
                "all variants must have the same type",
            ),
            set(
                "bad variant name",
                "spec.variants",
                json!({"on": true, "off": false, "not ok!": true}),
                "variant names must be 1-63 letters",
            ),
            set("no variants", "spec.variants", json!({}), "spec.variants"),
            set(
                "stage default not a variant",
                "spec.stages.dev.defaultVariant",
                json!("zz-missing"),
                "a stage's defaultVariant must be one of the keys of variants",
            ),
            set(
                "rule variant not a variant",
                "spec.stages.dev.rules[0].variant",
                json!("zz-missing"),
                "a rule's variant must be one of the keys of variants",
            ),
            set(
                "split to an unknown variant",
                "spec.stages.dev.rules[1].split",
                json!({"on": 20, "maybe": 80}),
                "every variant named in a split must be one of the keys of variants",
            ),
            set(
                "split summing to 90",
                "spec.stages.dev.rules[1].split",
                json!({"on": 20, "off": 70}),
                "split percentages must each be between 0 and 100 and sum to 100",
            ),
            set(
                "negative split",
                "spec.stages.dev.rules[1].split",
                json!({"on": -20, "off": 120}),
                "split percentages must each be between 0 and 100 and sum to 100",
            ),
            set(
                "stage key with spaces",
                "spec.stages",
                json!({"Dev Stage": {"state": "Enabled"}}),
                "stage keys must be stage names",
            ),
            set(
                "stage key too long",
                "spec.stages",
                json!({"a-very-long-stage-name-indeed": {"state": "Enabled"}}),
                "stage keys must be stage names",
            ),
            fixed(
                "rule with clients and split",
                "spec.stages.dev.rules[0]",
                Op::Insert("split".into(), json!({"on": 100})),
                "a rule has either clients (with a variant) or a split",
            ),
            fixed(
                "clients without a variant",
                "spec.stages.dev.rules[0].variant",
                Op::Remove,
                "a clients rule needs the variant",
            ),
            fixed(
                "split with a variant",
                "spec.stages.dev.rules[1]",
                Op::Insert("variant".into(), json!("on")),
                "a split rule names its variants in split",
            ),
            set(
                "empty rule",
                "spec.stages.dev.rules[1]",
                json!({}),
                "a rule has either clients (with a variant) or a split",
            ),
            set(
                "no clients",
                "spec.stages.dev.rules[0].clients",
                json!([]),
                "clients must list at least one client",
            ),
            set(
                "state On",
                "spec.stages.prod.state",
                json!("On"),
                "supported values",
            ),
            set(
                "reached not a stage name",
                "spec.stages.dev.rules[0].when.reached",
                json!("Prod Stage"),
                "reached must be a stage name",
            ),
            set(
                "key with spaces",
                "spec.key",
                json!("fuzz flag"),
                "key must be letters, digits",
            ),
        ],
        Kind::Pipeline => vec![
            set(
                "window ends before it starts",
                "spec.releaseTypes.major.windows[0].end",
                json!("05:00"),
                "a window's end must be after its start",
            ),
            set(
                "window start 25:00",
                "spec.releaseTypes.major.windows[0].start",
                json!("25:00"),
                "start must be a time of day HH:MM",
            ),
            set(
                "window start 24:00",
                "spec.releaseTypes.major.windows[0].start",
                json!("24:00"),
                "start must be a time of day HH:MM",
            ),
            set(
                "window end 24:01",
                "spec.releaseTypes.minor.windows[0].end",
                json!("24:01"),
                "end must be a time of day HH:MM",
            ),
            set(
                "window end 9:00",
                "spec.releaseTypes.major.windows[0].end",
                json!("9:00"),
                "end must be a time of day HH:MM",
            ),
            set(
                "unknown time zone",
                "spec.releaseTypes.major.windows[0].timeZone",
                json!("Europe/Atlantis"),
                "timeZone must be an IANA time zone name",
            ),
            set(
                "lower-case utc",
                "spec.releaseTypes.minor.windows[0].timeZone",
                json!("utc"),
                "timeZone must be an IANA time zone name",
            ),
            set(
                "offset as a zone",
                "spec.releaseTypes.minor.windows[0].timeZone",
                json!("+02:00"),
                "timeZone must be an IANA time zone name",
            ),
            set(
                "weekday Monday",
                "spec.releaseTypes.major.windows[0].days[0]",
                json!("Monday"),
                "supported values",
            ),
            set(
                "weekday lower-case",
                "spec.releaseTypes.minor.windows[0].days[0]",
                json!("thu"),
                "supported values",
            ),
            set(
                "no weekdays",
                "spec.releaseTypes.major.windows[0].days",
                json!([]),
                "spec.releaseTypes.major.windows[0].days",
            ),
            set(
                "eight weekdays",
                "spec.releaseTypes.major.windows[0].days",
                json!(["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun", "Mon"]),
                "spec.releaseTypes.major.windows[0].days",
            ),
            set(
                "window in an unknown stage",
                "spec.releaseTypes.major.windows[0].stages",
                json!(["nope"]),
                "releaseTypes.major.windows[].stages must name stages listed in spec.stages",
            ),
            set(
                "freeze ends before it starts",
                "spec.freezes[0].to",
                json!("2026-12-01T00:00:00Z"),
                "a freeze must end (to) after it starts (from)",
            ),
            set(
                "freeze of an unknown stage",
                "spec.freezes[0].stages",
                json!(["qa"]),
                "freezes[].stages must name stages listed in spec.stages",
            ),
            set(
                "freeze from not a time",
                "spec.freezes[0].from",
                json!("next Monday"),
                "spec.freezes[0].from",
            ),
            set(
                "retention empty",
                "spec.retention",
                json!({}),
                "retention sets count, age or both",
            ),
            set(
                "retention count 0",
                "spec.retention.count",
                json!(0),
                "spec.retention.count",
            ),
            set(
                "negative retention age",
                "spec.retention.age",
                json!("-1h"),
                positive,
            ),
            set(
                "notice 0s",
                "spec.releaseTypes.major.notice",
                json!("0s"),
                positive,
            ),
            set(
                "no approvers",
                "spec.stages[1].approval.required",
                json!(0),
                "spec.stages[1].approval.required",
            ),
            set(
                "eleven approvers",
                "spec.stages[1].approval.required",
                json!(11),
                "spec.stages[1].approval.required",
            ),
            set(
                "duplicate stage names",
                "spec.stages[1].name",
                json!("dev"),
                "stage names must be unique within a pipeline",
            ),
            set("no stages", "spec.stages", json!([]), "spec.stages"),
            set(
                "weights decreasing",
                "spec.stages[1].steps",
                json!([{"setWeight": 60}, {"setWeight": 40}, {"setWeight": 100}]),
                weights,
            ),
            fixed(
                "duplicate receivers",
                "spec.notifications",
                Op::Grow(2),
                "receiver names must be unique within a pipeline",
            ),
            set(
                "webhook over ftp",
                "spec.notifications[0].webhook.url",
                json!("ftp://hooks.example.com/x"),
                "url must be an http:// or https:// URL",
            ),
            set(
                "unknown event",
                "spec.notifications[0].events[0]",
                json!("Deployed"),
                "supported values",
            ),
            set(
                "unknown webhook format",
                "spec.notifications[0].webhook.format",
                json!("teams"),
                "supported values",
            ),
            set(
                "webhook secret name with a space",
                "spec.notifications[0].webhook.secretRef.name",
                json!("hook secret"),
                "secretRef name must be a Secret name",
            ),
        ],
        Kind::Approval => vec![
            set(
                "decision Maybe",
                "spec.decision",
                json!("Maybe"),
                "supported values",
            ),
            set(
                "digest not sha256",
                "spec.releaseDigest",
                json!("md5:abc"),
                "releaseDigest must be the Release's status.digest",
            ),
            set(
                "digest upper-case hex",
                "spec.releaseDigest",
                json!(format!("sha256:{}", "AB".repeat(32))),
                "releaseDigest must be the Release's status.digest",
            ),
            set(
                "digest too short",
                "spec.releaseDigest",
                json!("sha256:abcd"),
                "releaseDigest must be the Release's status.digest",
            ),
            set(
                "override not a boolean",
                "spec.override",
                json!("yes"),
                "spec.override",
            ),
            set(
                "stage name too long",
                "spec.stage",
                json!("s".repeat(21)),
                "spec.stage",
            ),
        ],
    }
}

/// Keys no schema has (every field name starts with a lower-case letter).
fn foreign_key() -> impl Strategy<Value = String> {
    "[A-Z][A-Za-z0-9]{0,7}"
}

/// An arbitrary JSON tree (objects, arrays, strings, numbers, booleans, nulls).
fn random_tree() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(Value::from),
        (-1_000_000_i64..1_000_000).prop_map(Value::from),
        (-1000_i32..1000).prop_map(|n| json!(f64::from(n) + 0.5)),
        "\\PC{0,12}".prop_map(Value::from),
        Just(Value::Null),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(foreign_key(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `value` if no schema of type `expected` accepts it, else `value` wrapped so that none
/// does (an integer is a number; null may be allowed).
fn of_other_type(value: Value, expected: &str) -> Value {
    let actual = json_type(&value);
    let compatible =
        actual == "null" || actual == expected || (expected == "number" && actual == "integer");
    if !compatible {
        value
    } else if expected == "array" {
        json!({"Wrapped": value})
    } else {
        json!([value])
    }
}

/// A string that breaks every pattern, duration, URL, name, time and zone rule in the
/// CRDs: it starts with an upper-case letter and holds a space, an '=' and a tab.
fn pattern_breaker() -> impl Strategy<Value = String> {
    "[A-Z][a-z]{0,6} [!?*#]{0,2}=\t[a-z]{0,4}"
}

/// Every mutation strategy for a kind: generic ones derived from each field's schema,
/// plus the catalogue.
fn mutation_strategies(
    kind: Kind,
    base: &Value,
    crd_schema: &Value,
) -> Vec<(u32, BoxedStrategy<Mutation>)> {
    let mut out: Vec<(u32, BoxedStrategy<Mutation>)> = Vec::new();
    for slot in slots(base, crd_schema) {
        let ty = slot.schema["type"].as_str().unwrap_or("object").to_owned();
        // A random JSON tree of another type, at any depth.
        let s = slot.clone();
        let t = ty.clone();
        out.push((
            3,
            random_tree()
                .prop_map(move |v| {
                    s.mutation(
                        "random tree of another type",
                        Op::Set(of_other_type(v, &t)),
                        vec![],
                    )
                })
                .boxed(),
        ));
        if slot.required {
            out.push((
                1,
                Just(slot.mutation(
                    "required field dropped",
                    Op::Remove,
                    vec!["Required value".into()],
                ))
                .boxed(),
            ));
        }
        if let Some(values) = slot.schema["enum"].as_array() {
            let values: Vec<String> = values
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            let s = slot.clone();
            out.push((
                1,
                "[A-Za-z][a-z]{0,11}"
                    .prop_filter("a value of the enum", move |v| !values.contains(v))
                    .prop_map(move |v| {
                        s.mutation(
                            "value outside the enum",
                            Op::Set(json!(v)),
                            vec!["supported values".into()],
                        )
                    })
                    .boxed(),
            ));
        }
        if ty == "string" {
            if let Some(max) = slot.schema["maxLength"].as_u64() {
                let s = slot.clone();
                out.push((
                    1,
                    (1_u64..40, "[a-z]")
                        .prop_map(move |(extra, c)| {
                            let long = c.repeat((max + extra) as usize);
                            s.mutation(
                                "string too long",
                                Op::Set(json!(long)),
                                vec!["Too long".into()],
                            )
                        })
                        .boxed(),
                ));
            }
            if slot.schema["minLength"].as_u64().unwrap_or(0) >= 1 {
                out.push((
                    1,
                    Just(slot.mutation("empty string", Op::Set(json!("")), vec![])).boxed(),
                ));
            }
            if slot.schema.get("x-kubernetes-validations").is_some()
                || slot.schema["format"] == json!("date-time")
            {
                let s = slot.clone();
                let messages = slot.rule_messages();
                out.push((
                    2,
                    pattern_breaker()
                        .prop_map(move |v| {
                            s.mutation(
                                "string breaking its rule",
                                Op::Set(json!(v)),
                                messages.clone(),
                            )
                        })
                        .boxed(),
                ));
            }
            if slot.rules().contains("duration(self)") {
                let s = slot.clone();
                let messages = slot.rule_messages();
                out.push((
                    2,
                    prop::sample::select(vec![
                        "0s", "0m", "-1m", "-5m", "2d", "1w", "10", "1h30", "1.5.0s", "m", "1 h",
                        "PT5M",
                    ])
                    .prop_map(move |v| {
                        s.mutation("bad duration", Op::Set(json!(v)), messages.clone())
                    })
                    .boxed(),
                ));
            }
        }
        if ty == "integer" {
            let min = slot.schema["minimum"].as_f64();
            let max = slot.schema["maximum"].as_f64();
            if min.is_some() || max.is_some() {
                let s = slot.clone();
                out.push((
                    1,
                    (any::<bool>(), 1_i64..1000)
                        .prop_map(move |(low, by)| {
                            let v = match (low, min, max) {
                                (true, Some(m), _) | (false, Some(m), None) => m as i64 - by,
                                (_, _, Some(m)) => m as i64 + by,
                                (_, None, None) => unreachable!(),
                            };
                            s.mutation("number out of range", Op::Set(json!(v)), vec![])
                        })
                        .boxed(),
                ));
            }
        }
        if ty == "array" {
            let len = slot.value.as_array().map_or(0, Vec::len);
            if let Some(max) = slot.schema["maxItems"].as_u64()
                && len > 0
            {
                out.push((
                    1,
                    Just(slot.mutation(
                        "too many items",
                        Op::Grow(max as usize + 1),
                        vec!["must have at most".into()],
                    ))
                    .boxed(),
                ));
            }
            let rules = slot.rules();
            if slot.schema["minItems"].as_u64().unwrap_or(0) >= 1
                || rules.contains("size(self) > 0")
            {
                out.push((
                    1,
                    Just(slot.mutation("empty list", Op::Set(json!([])), slot.rule_messages()))
                        .boxed(),
                ));
            }
            if rules.contains("exists_one") && len > 0 {
                out.push((
                    2,
                    Just(slot.mutation("duplicate names", Op::Grow(len + 1), slot.rule_messages()))
                        .boxed(),
                ));
            }
        }
        if ty == "object" && slot.schema.get("properties").is_some() {
            // A random object in place of a struct, and an unknown field holding a
            // random tree: both refused under fieldValidation=Strict.
            let s = slot.clone();
            out.push((
                2,
                prop::collection::btree_map(foreign_key(), random_tree(), 1..4)
                    .prop_map(move |m| {
                        s.mutation(
                            "random object",
                            Op::Set(Value::Object(m.into_iter().collect())),
                            vec!["unknown field".into()],
                        )
                    })
                    .boxed(),
            ));
            let s = slot.clone();
            out.push((
                2,
                (foreign_key(), random_tree())
                    .prop_map(move |(k, v)| s.mutation("unknown field", Op::Insert(k, v), vec![]))
                    .boxed(),
            ));
        }
    }
    for m in catalogue(kind) {
        out.push((3, Just(m).boxed()));
    }
    // metadata: names the API server refuses.
    let bad_names = vec![
        "Upper_Case".to_owned(),
        "a".repeat(254),
        "dots..twice".to_owned(),
        "-leading".to_owned(),
    ];
    out.push((
        1,
        prop::sample::select(bad_names)
            .prop_map(|n| {
                set(
                    "invalid object name",
                    "metadata.name",
                    json!(n),
                    "metadata.name",
                )
            })
            .boxed(),
    ));
    out
}

/// One generated case: a kind, the mutations applied, the resulting manifest.
#[derive(Clone, Debug)]
struct Case {
    index: usize,
    kind: Kind,
    applied: Vec<Mutation>,
    doc: Value,
}

fn generate(seed: u64, ns: &str, approver: &str) -> Result<Vec<Case>> {
    let mut schemas = BTreeMap::new();
    for path in std::fs::read_dir(repo_root().join("crds"))? {
        let path = path?.path();
        for doc in read_manifests(&path)? {
            if doc["kind"] == "CustomResourceDefinition" {
                let kind = doc["spec"]["names"]["kind"]
                    .as_str()
                    .context("kind")?
                    .to_owned();
                schemas.insert(
                    kind,
                    doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone(),
                );
            }
        }
    }
    let mut per_kind = Vec::new();
    for kind in KINDS {
        let base = kind.base(approver);
        let schema = schemas
            .get(kind.name())
            .with_context(|| format!("no CRD for {}", kind.name()))?;
        let strategies = mutation_strategies(kind, &base, schema);
        println!("{}: {} mutation strategies", kind.name(), strategies.len());
        let one = Union::new_weighted(strategies);
        per_kind.push(
            prop::collection::vec(one, 1..=3)
                .prop_map(move |ms| (kind, ms))
                .boxed(),
        );
    }
    let strategy = Union::new(per_kind);
    let mut seed_bytes = [0_u8; 32];
    for chunk in seed_bytes.chunks_mut(8) {
        chunk.copy_from_slice(&seed.to_le_bytes());
    }
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let mut cases = Vec::with_capacity(CASES);
    for index in 0..CASES {
        let (kind, mutations) = strategy
            .new_tree(&mut runner)
            .map_err(|e| anyhow!("generating case {index}: {e}"))?
            .current();
        let mut doc = kind.base(approver);
        doc["metadata"] = json!({"name": format!("barrage-{index}"), "namespace": ns});
        let applied: Vec<Mutation> = mutations
            .into_iter()
            .filter(|m| m.apply(&mut doc))
            .collect();
        ensure!(!applied.is_empty(), "case {index}: no mutation applied");
        cases.push(Case {
            index,
            kind,
            applied,
            doc,
        });
    }
    Ok(cases)
}

// ---------------------------------------------------------------------------------------
// Talking to the API server.

/// Creates the object with fieldValidation=Strict (what kubectl sends by default).
async fn create_strict(
    client: &Client,
    kind: Kind,
    ns: &str,
    doc: &Value,
    dry_run: bool,
) -> Result<Result<(), kube::core::Status>> {
    let url = format!("/apis/{GROUP}/{VERSION}/namespaces/{ns}/{}", kind.plural());
    let params = PostParams {
        dry_run,
        ..PostParams::default()
    };
    let mut request = kube::core::Request::new(url).create(&params, serde_json::to_vec(doc)?)?;
    let mut uri = request.uri().to_string();
    if !uri.ends_with('?') {
        uri.push('&');
    }
    uri.push_str("fieldValidation=Strict");
    *request.uri_mut() = uri.parse()?;
    match client.request::<Value>(request).await {
        Ok(_) => Ok(Ok(())),
        Err(kube::Error::Api(status)) => Ok(Err(*status)),
        Err(e) => Err(e.into()),
    }
}

/// The kube-apiserver of the control plane the tests run against: the process whose
/// command line names the control plane's state directory.
fn apiserver_pid() -> Result<u32> {
    let dir = match std::env::var_os("STAGECOACH_CLUSTER_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("KUBECONFIG")
            .map(PathBuf::from)
            .and_then(|k| k.parent().map(PathBuf::from))
            .context("neither STAGECOACH_CLUSTER_DIR nor KUBECONFIG is set")?,
    };
    let dir = std::fs::canonicalize(&dir).with_context(|| format!("{}", dir.display()))?;
    let needle = dir.to_string_lossy().into_owned();
    let pids: Vec<u32> = std::fs::read_dir("/proc")?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
                let argv: Vec<String> = raw
                    .split(|b| *b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                argv.first().is_some_and(|p| p.ends_with("kube-apiserver"))
                    && argv.iter().any(|a| a.contains(&needle))
            })
        })
        .collect();
    match pids.as_slice() {
        [pid] => Ok(*pid),
        [] => bail!("no kube-apiserver process names {needle} on its command line"),
        _ => bail!("several kube-apiserver processes name {needle}: {pids:?}"),
    }
}

/// utime + stime of a process, in milliseconds.
fn cpu_ms(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: count fields after its closing paren.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    let utime: f64 = fields.get(11).context("utime")?.parse()?;
    let stime: f64 = fields.get(12).context("stime")?.parse()?;
    let ticks = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    Ok((utime + stime) * 1000.0 / ticks)
}

async fn counters(operator: &Operator) -> Result<BTreeMap<&'static str, u64>> {
    let mut out = BTreeMap::new();
    for name in OPERATOR_COUNTERS {
        // Counters: whole, not negative (an empty sum is -0.0).
        out.insert(name, operator.metric(name, "").await?.abs() as u64);
    }
    Ok(out)
}

/// The enclosing fields of a field path, nearest first, down to (not including) the
/// top-level `spec` or `metadata`: `spec.a[0].b` gives `spec.a[0]` and `spec.a`. Not a
/// path (a rule's message): nothing.
fn ancestors(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    if !(path.starts_with("spec.") || path.starts_with("spec[")) {
        return out;
    }
    let mut current = path;
    while let Some(cut) = current.rfind(['.', '[']) {
        current = &current[..cut];
        if current == "spec" {
            break;
        }
        out.push(current.to_owned());
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn short(doc: &Value) -> String {
    let text = doc.to_string();
    if text.len() > 600 {
        format!(
            "{}…",
            &text[..text.char_indices().nth(600).map_or(text.len(), |(i, _)| i)]
        )
    } else {
        text
    }
}

/// What came back for one case.
struct Outcome {
    case: Case,
    result: Result<(), kube::core::Status>,
    latency: Duration,
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_thousand_random_invalid_manifests_are_refused_and_change_nothing() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let seed = std::env::var("STAGECOACH_FUZZ_SEED")
        .ok()
        .map(|s| s.parse::<u64>())
        .transpose()
        .context("STAGECOACH_FUZZ_SEED must be a number")?
        .unwrap_or(DEFAULT_SEED);
    println!("seed {seed} (replay with STAGECOACH_FUZZ_SEED={seed})");

    // The namespace the operator watches and the manifests are sent to, with one stage
    // namespace for the valid release at the end.
    let pipeline = Pipeline::create(&client, "admfuzz", &[("dev", 1)], IMAGE).await?;
    let ns = pipeline.home.name.clone();

    // Who we are: the Approval base must be made by its creator.
    let review: SelfSubjectReview = Api::all(client.clone())
        .create(&PostParams::default(), &serde_json::from_value(json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview", "metadata": {}
        }))?)
        .await
        .context("asking the API server who we are")?;
    let approver = review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .context("no username in the SelfSubjectReview")?;

    // Every base is valid (Approvals need a Release to approve: checked at the end).
    for kind in [Kind::Release, Kind::FeatureToggle, Kind::Pipeline] {
        let mut doc = kind.base(&approver);
        doc["metadata"]["namespace"] = json!(ns);
        if let Err(status) = create_strict(&client, kind, &ns, &doc, true).await? {
            bail!(
                "the valid base {} was refused: {}",
                kind.name(),
                status.message
            );
        }
    }

    let generated = Instant::now();
    let cases = generate(seed, &ns, &approver)?;
    println!(
        "generated {} cases in {:?}",
        cases.len(),
        generated.elapsed()
    );

    let operator = Operator::start_ready("admfuzz", &ns).await?;
    // Let whatever it does at start settle, then take the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = counters(&operator).await?;
    let rss_before = operator.resident_kib()?;
    let apiserver = apiserver_pid()?;
    let cpu_before = cpu_ms(apiserver)?;

    let started = Instant::now();
    let outcomes: Vec<Outcome> = futures::stream::iter(cases)
        .map(|case| {
            let client = client.clone();
            let ns = ns.clone();
            async move {
                let t = Instant::now();
                let result = create_strict(&client, case.kind, &ns, &case.doc, false).await;
                (case, result, t.elapsed())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .map(|(case, result, latency)| {
            result.map(|result| Outcome {
                case,
                result,
                latency,
            })
        })
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let wall = started.elapsed();
    let cpu_after = cpu_ms(apiserver)?;
    ensure!(
        apiserver_pid()? == apiserver,
        "the kube-apiserver is no longer the same process after the barrage"
    );

    // Every one refused, with a status a client understands and a message naming what
    // is wrong.
    let mut failures = Vec::new();
    let mut by_status: BTreeMap<(u16, String, &'static str), usize> = BTreeMap::new();
    let mut by_kind: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut by_mutation: BTreeMap<String, usize> = BTreeMap::new();
    let mut latencies: Vec<Duration> = Vec::with_capacity(outcomes.len());
    let mut examples: BTreeMap<&'static str, String> = BTreeMap::new();
    // Refusals naming the mutated field or the broken rule, and those naming only an
    // enclosing field (the API server reports some errors on the parent: an array where
    // a date-time string belongs fails the parent's CEL rule instead of the type check).
    let mut named_exactly = 0_usize;
    let mut named_by_parent = 0_usize;
    for o in &outcomes {
        latencies.push(o.latency);
        *by_kind.entry(o.case.kind.name()).or_default() += 1;
        for m in &o.case.applied {
            let family = m.what.split(" at ").next().unwrap_or(&m.what).to_owned();
            *by_mutation.entry(family).or_default() += 1;
        }
        let describe = || {
            format!(
                "case {} ({}; {}): {}",
                o.case.index,
                o.case.kind.name(),
                o.case
                    .applied
                    .iter()
                    .map(|m| m.what.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
                short(&o.case.doc)
            )
        };
        match &o.result {
            Ok(()) => failures.push(format!("ACCEPTED {}", describe())),
            Err(status) => {
                let source = if status.message.contains("strict decoding error") {
                    "strict decoding"
                } else if status.message.contains("ValidatingAdmissionPolicy") {
                    "admission policy"
                } else if status.message.contains("is invalid") {
                    "schema/CEL"
                } else {
                    "other"
                };
                *by_status
                    .entry((status.code, status.reason.clone(), source))
                    .or_default() += 1;
                examples
                    .entry(source)
                    .or_insert_with(|| status.message.clone());
                if !matches!(status.code, 400 | 403 | 422) {
                    failures.push(format!(
                        "refused with {} {}: {} — {}",
                        status.code,
                        status.reason,
                        status.message,
                        describe()
                    ));
                } else if status.message.trim().is_empty() {
                    failures.push(format!("refused with an empty message — {}", describe()));
                } else if o
                    .case
                    .applied
                    .iter()
                    .flat_map(|m| &m.hints)
                    .any(|h| status.message.contains(h.as_str()))
                {
                    named_exactly += 1;
                } else if o
                    .case
                    .applied
                    .iter()
                    .flat_map(|m| &m.hints)
                    .flat_map(|h| ancestors(h))
                    .any(|h| status.message.contains(h.as_str()))
                {
                    named_by_parent += 1;
                } else {
                    failures.push(format!(
                        "the message names none of {:?}: {} — {}",
                        o.case
                            .applied
                            .iter()
                            .flat_map(|m| &m.hints)
                            .collect::<Vec<_>>(),
                        status.message,
                        describe()
                    ));
                }
            }
        }
    }
    latencies.sort();

    println!("\nrefusals by status, reason and source:");
    for ((code, reason, source), n) in &by_status {
        println!("  {code} {reason:<12} {source:<17} {n:>5}");
    }
    println!("cases by kind: {by_kind:?}");
    println!("mutations applied, by family:");
    for (family, n) in &by_mutation {
        println!("  {family:<32} {n:>5}");
    }
    println!(
        "messages naming the mutated field or its rule: {named_exactly}; naming only an enclosing field: {named_by_parent}"
    );
    for (source, message) in &examples {
        println!("example ({source}): {}", short(&json!(message)));
    }
    let cpu = cpu_after - cpu_before;
    println!(
        "\n{} requests in {:.2} s ({:.0}/s, {IN_FLIGHT} in flight); latency p50 {:?}, p99 {:?}, max {:?}",
        outcomes.len(),
        wall.as_secs_f64(),
        outcomes.len() as f64 / wall.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
    );
    println!(
        "kube-apiserver (pid {apiserver}) CPU over the barrage: {cpu:.0} ms, {:.2} ms per request (other tests share it)",
        cpu / outcomes.len() as f64
    );
    if !failures.is_empty() {
        bail!(
            "{} of {} invalid manifests were not refused as they should be (seed {seed}):\n  {}",
            failures.len(),
            outcomes.len(),
            failures
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }

    // None stored.
    for kind in KINDS {
        let list = kind.api(&client, &ns).list(&ListParams::default()).await?;
        let names: Vec<String> = list
            .items
            .iter()
            .filter_map(|o| o.metadata.name.clone())
            .collect();
        ensure!(
            names.is_empty(),
            "{} stored in {ns}: {names:?}",
            kind.name()
        );
    }

    // The operator: the same live process, no work done, no writes, memory flat.
    let (status, _) = operator.get("/readyz").await?;
    ensure!(
        status == 200,
        "the operator's /readyz answers {status} after the barrage"
    );
    let rss_after = operator
        .resident_kib()
        .context("the operator process is gone after the barrage")?;
    let after = counters(&operator).await?;
    println!(
        "operator: resident {rss_before} KiB before, {rss_after} KiB after; counters before {before:?}, after {after:?}"
    );
    ensure!(
        after == before,
        "the operator did work while only invalid objects were sent: before {before:?}, after {after:?}\n{}",
        operator.log_tail(30)
    );
    let mentions: Vec<String> = operator
        .log_text()
        .lines()
        .filter(|l| l.contains("barrage-"))
        .map(str::to_owned)
        .collect();
    ensure!(
        mentions.is_empty(),
        "the operator's log mentions objects of the barrage:\n{}",
        mentions.join("\n")
    );
    ensure!(
        rss_after <= rss_before + MEMORY_GROWTH_KIB,
        "the operator's memory grew from {rss_before} KiB to {rss_after} KiB over the barrage"
    );

    // And valid objects still go through, at once: a Release rolls out, a toggle is served.
    let releases = Kind::Release.api(&client, &ns);
    let release = release_manifest(
        "after-fuzz",
        &ns,
        "1.0.1",
        "example/fuzz:1.0.1",
        &[json!({"name": "dev", "namespace": pipeline.namespace("dev")})],
    );
    if let Err(status) = create_strict(&client, Kind::Release, &ns, &release, false).await? {
        bail!(
            "a valid Release was refused after the barrage: {}",
            status.message
        );
    }
    eventually(Duration::from_secs(60), || {
        let releases = releases.clone();
        async move {
            let r = releases.get("after-fuzz").await?;
            let phase = r.data["status"]["phase"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            ensure!(
                !matches!(phase.as_str(), "Failed" | "RolledBack"),
                "the release ended {phase}"
            );
            // Rolled out: in early life support (two days by default), or past it.
            Ok(matches!(phase.as_str(), "EarlyLifeSupport" | "Succeeded").then_some(()))
        }
    })
    .await
    .with_context(|| {
        format!(
            "the valid Release did not succeed; operator log:\n{}",
            operator.log_tail(30)
        )
    })?;
    let toggle = json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "FeatureToggle",
        "metadata": {"name": "after-fuzz", "namespace": ns},
        "spec": {
            "application": ns, "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "stages": {"dev": {"rules": [{"clients": ["acme"], "variant": "on"}]}}
        }
    });
    if let Err(status) = create_strict(&client, Kind::FeatureToggle, &ns, &toggle, false).await? {
        bail!(
            "a valid FeatureToggle was refused after the barrage: {}",
            status.message
        );
    }
    let toggles = Kind::FeatureToggle.api(&client, &ns);
    eventually(Duration::from_secs(30), || {
        let toggles = toggles.clone();
        async move {
            let t = toggles.get("after-fuzz").await?;
            let ready = t.data["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            Ok(ready.then_some(()))
        }
    })
    .await
    .with_context(|| {
        format!(
            "the valid FeatureToggle never became Ready; operator log:\n{}",
            operator.log_tail(30)
        )
    })?;
    // The Approval base, now that there is a Release to approve (dry run: nothing more
    // is needed from it).
    let mut approval = Kind::Approval.base(&approver);
    approval["metadata"]["namespace"] = json!(ns);
    approval["spec"]["release"] = json!("after-fuzz");
    approval["spec"]["stage"] = json!("dev");
    if let Err(status) = create_strict(&client, Kind::Approval, &ns, &approval, true).await? {
        bail!("the valid base Approval was refused: {}", status.message);
    }
    let writes = operator
        .metric("stagecoach_status_writes_total", "")
        .await?;
    println!(
        "after the barrage: a valid Release rolled out and a valid FeatureToggle is Ready ({writes} status writes)"
    );

    operator.stop().await?;
    pipeline.delete().await
}
