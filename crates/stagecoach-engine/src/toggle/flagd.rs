//! Rendering an application's toggles for one stage as one flagd flag set: the document
//! flagd, or any flagd in-process provider, reads from the stage's ConfigMap.
//!
//! Each flag gets `state`, `variants`, `defaultVariant` (the stage's, else the toggle's) and,
//! when the stage has active rules, `targeting` as one JsonLogic `if` chain, rules in order:
//!
//! ```text
//! client   = {"if": [{"var": "<bucketBy>"}, {"var": "<bucketBy>"}, {"var": "targetingKey"}]}
//!            ({"var": "targetingKey"} when bucketBy is targetingKey)
//! clients  -> {"in": [client, ["acme", "globex"]]}, "on"
//! split    -> client, {"fractional": [{"cat": ["<flag key>", client]}, ["off", 80], ["on", 20]]}
//! ```
//!
//! - `client` is the `bucketBy` attribute when it is truthy, else the targeting key, as
//!   [`super::evaluate()`] reads it. It is an `if`, not the equivalent
//!   `{"or": [{"var": "<bucketBy>"}, {"var": "targetingKey"}]}`: flagd's JavaScript
//!   evaluator (`@openfeature/flagd-core`, json-logic-engine 5 in its default compiled mode)
//!   compiles an `or` inside `cat` without parentheses, so the `cat` yields the attribute
//!   alone (or null) and 38-47 % of clients land in another variant than in flagd's Go
//!   evaluator. An `if` compiles parenthesized and reads the same in every evaluator.
//! - The `cat` makes flagd hash exactly flag key + bucketing value, as [`super::hash`] does.
//!   The key is written literally rather than as `{"var": "$flagd.flagKey"}`, so the rule
//!   does not depend on an evaluator injecting `$flagd` properties. flagd's Go evaluator
//!   trims the concatenation (which [`super::evaluate()`] follows); the JavaScript one does
//!   not, so a bucketing value ending in whitespace is hashed differently there, and its
//!   MurmurHash3 hashes UTF-16 code units, so a non-ASCII bucketing value too. No rendering
//!   can change that; ASCII client ids without trailing whitespace land alike everywhere.
//! - A split is guarded by `client` itself: without a bucketing value, `client` is falsy and
//!   `cat` would turn it into a fixed string and hash that, putting every anonymous caller
//!   in one bucket; guarded, the split is skipped and flagd serves the default.
//!   ([`super::evaluate()`] answers TARGETING_KEY_MISSING there instead.)
//! - Empty client ids are left out of client lists: an empty value never identifies a
//!   client, while a falsy `client` could equal "".
//! - Split variants with weight 0 are left out (they can never win and do not move other
//!   variants' ranges); a split with a single remaining variant is rendered as that variant,
//!   since flagd's schema wants at least two in `fractional`.
//! - A rule whose coupling is inactive is left out; a disabled stage renders `state: DISABLED`
//!   with no targeting. Note that flagd treats a disabled flag as absent (FLAG_DISABLED /
//!   not found), so an SDK reading the flag set gets its code default there, while OFREP
//!   serves the stage's default variant with reason DISABLED.
//!
//! Output is deterministic: object keys sorted, flags sorted by key, rules in spec order,
//! split variants in the spec's (sorted) order, which is also the order flagd buckets them in.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use stagecoach_api::FeatureToggleSpec;

use super::stage_rules::{ActiveRule, RuleAction, StagePlan, plan_stage};
use super::{ActiveCouplings, TARGETING_KEY, ToggleError, validate_toggle};

/// The `$schema` of every rendered flag set: flagd's published flag-definition schema.
pub const FLAGD_SCHEMA_URL: &str = "https://flagd.dev/schema/v0/flags.json";

/// One stage's flag set.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderedFlagSet {
    /// `{"$schema": ..., "flags": {...}}`, valid against flagd's schema.
    pub document: Value,
    /// [`flag_set_version`] of `document`.
    pub version: String,
    /// Toggles left out, with why; the other toggles are served regardless.
    pub rejected: Vec<FlagSetError>,
}

/// Why a toggle was left out of a flag set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlagSetError {
    #[error("flag {flag_key:?} is not served: {source}")]
    InvalidToggle {
        /// Position of the toggle in the input.
        index: usize,
        flag_key: String,
        #[source]
        source: ToggleError,
    },
    #[error(
        "flag key {flag_key:?} is not a valid flagd flag key: it must be non-empty and on one line"
    )]
    InvalidKey { index: usize, flag_key: String },
    #[error(
        "flag key {flag_key:?} is used by more than one FeatureToggle of the application; only the first (input position {first_index}) is served"
    )]
    DuplicateKey {
        index: usize,
        flag_key: String,
        first_index: usize,
    },
}

impl FlagSetError {
    /// CamelCase reason for a condition or an event.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidToggle { source, .. } => source.reason(),
            Self::InvalidKey { .. } => "InvalidFlagKey",
            Self::DuplicateKey { .. } => "DuplicateFlagKey",
        }
    }

    /// Position in the input of the toggle left out.
    pub fn index(&self) -> usize {
        match self {
            Self::InvalidToggle { index, .. }
            | Self::InvalidKey { index, .. }
            | Self::DuplicateKey { index, .. } => *index,
        }
    }
}

/// Renders an application's toggles, as (flag key, spec), for `stage` with the couplings in
/// `couplings` active, as one flagd flag set.
///
/// A toggle whose spec is invalid, or whose key is not usable, is left out and reported in
/// `rejected`. When two toggles share a key, the first in the input is served and the
/// others are reported: pass the toggles oldest first (creationTimestamp, then name) so an
/// established flag keeps working when a newer toggle claims its key.
pub fn render_flag_set(
    toggles: &[(&str, &FeatureToggleSpec)],
    stage: &str,
    couplings: &ActiveCouplings,
) -> RenderedFlagSet {
    let mut flags = Map::new();
    let mut first_index = std::collections::BTreeMap::new();
    let mut rejected = Vec::new();
    for (index, &(flag_key, spec)) in toggles.iter().enumerate() {
        if let Some(&first_index) = first_index.get(flag_key) {
            rejected.push(FlagSetError::DuplicateKey {
                index,
                flag_key: flag_key.to_owned(),
                first_index,
            });
            continue;
        }
        first_index.insert(flag_key, index);
        if !is_flag_key(flag_key) {
            rejected.push(FlagSetError::InvalidKey {
                index,
                flag_key: flag_key.to_owned(),
            });
            continue;
        }
        match render_flag(flag_key, spec, stage, couplings) {
            Ok(flag) => {
                flags.insert(flag_key.to_owned(), flag);
            }
            Err(source) => rejected.push(FlagSetError::InvalidToggle {
                index,
                flag_key: flag_key.to_owned(),
                source,
            }),
        }
    }
    let document = sorted(&json!({"$schema": FLAGD_SCHEMA_URL, "flags": flags}));
    RenderedFlagSet {
        version: flag_set_version(&document),
        document,
        rejected,
    }
}

/// flagd's flag-map keys match `^.{1,}$`: at least one character, no line terminator.
fn is_flag_key(flag_key: &str) -> bool {
    !flag_key.is_empty() && !flag_key.contains(['\n', '\r', '\u{2028}', '\u{2029}'])
}

/// One toggle as a flagd flag for `stage`, after [`validate_toggle`].
pub fn render_flag(
    flag_key: &str,
    spec: &FeatureToggleSpec,
    stage: &str,
    couplings: &ActiveCouplings,
) -> Result<Value, ToggleError> {
    validate_toggle(spec)?;
    let variants: Map<String, Value> = spec
        .variants
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    let mut flag = Map::new();
    flag.insert("variants".into(), Value::Object(variants));
    let (flag_state, default_variant) = match plan_stage(spec, stage, couplings) {
        StagePlan::NotConfigured { default_variant } => ("ENABLED", default_variant),
        StagePlan::Disabled { default_variant } => ("DISABLED", default_variant),
        StagePlan::Enabled {
            default_variant,
            bucket_by,
            rules,
        } => {
            if !rules.is_empty() {
                flag.insert("targeting".into(), targeting(flag_key, bucket_by, &rules));
            }
            ("ENABLED", default_variant)
        }
    };
    flag.insert("state".into(), flag_state.into());
    flag.insert("defaultVariant".into(), default_variant.into());
    Ok(sorted(&Value::Object(flag)))
}

/// The JsonLogic that yields the client's bucketing value: the `bucketBy` attribute when it
/// is truthy, else the targeting key. Written as an `if`, never an `or`: see the module
/// documentation.
fn bucketing_expression(bucket_by: &str) -> Value {
    if bucket_by == TARGETING_KEY {
        json!({"var": TARGETING_KEY})
    } else {
        json!({"if": [{"var": bucket_by}, {"var": bucket_by}, {"var": TARGETING_KEY}]})
    }
}

fn targeting(flag_key: &str, bucket_by: &str, rules: &[ActiveRule<'_>]) -> Value {
    let client = bucketing_expression(bucket_by);
    let mut branches = Vec::with_capacity(rules.len() * 2);
    for rule in rules {
        match &rule.action {
            RuleAction::Clients { clients, variant } => {
                let listed = clients
                    .iter()
                    .filter(|c| !c.0.is_empty())
                    .map(|c| Value::String(c.0.clone()))
                    .collect();
                branches.push(json!({"in": [client, Value::Array(listed)]}));
                branches.push(Value::String((*variant).to_owned()));
            }
            RuleAction::Split { weights } => {
                branches.push(client.clone());
                branches.push(split(flag_key, &client, weights));
            }
        }
    }
    json!({"if": branches})
}

fn split(flag_key: &str, client: &Value, weights: &[(&str, u32)]) -> Value {
    let weighted: Vec<&(&str, u32)> = weights.iter().filter(|(_, weight)| *weight > 0).collect();
    match weighted.as_slice() {
        [] => Value::Null,
        [(only, _)] => Value::String((*only).to_owned()),
        _ => {
            let mut arguments = vec![json!({"cat": [flag_key, client]})];
            arguments.extend(
                weighted
                    .iter()
                    .map(|(variant, weight)| json!([variant, weight])),
            );
            json!({"fractional": arguments})
        }
    }
}

/// `value` with every object's keys in sorted order (independent of serde_json's map
/// implementation).
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(fields) => {
            let mut entries: Vec<(&String, &Value)> = fields.iter().collect();
            entries.sort_by_key(|(name, _)| *name);
            Value::Object(
                entries
                    .into_iter()
                    .map(|(name, value)| (name.clone(), sorted(value)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// Canonical JSON text of `document`: compact, object keys sorted. What a ConfigMap should
/// hold so that its content hash is [`flag_set_version`].
pub fn canonical_json(document: &Value) -> String {
    sorted(document).to_string()
}

/// Content version of a flag set: `sha256:<hex>` of its [`canonical_json`].
pub fn flag_set_version(document: &Value) -> String {
    let digest = Sha256::digest(canonical_json(document).as_bytes());
    format!("sha256:{digest:x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(value: Value) -> FeatureToggleSpec {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn renders_the_design_example_for_demo() {
        let toggle = spec(json!({
            "application": "billing",
            "variants": {"on": true, "off": false},
            "defaultVariant": "off",
            "stages": {"demo": {"rules": [
                {"clients": ["acme", "globex"], "variant": "on"},
                {"split": {"on": 20, "off": 80}}
            ]}}
        }));
        let set = render_flag_set(
            &[("new-invoice-ui", &toggle)],
            "demo",
            &ActiveCouplings::none(),
        );
        let client =
            json!({"if": [{"var": "clientId"}, {"var": "clientId"}, {"var": "targetingKey"}]});
        assert_eq!(
            set.document,
            json!({
                "$schema": FLAGD_SCHEMA_URL,
                "flags": {"new-invoice-ui": {
                    "state": "ENABLED",
                    "variants": {"on": true, "off": false},
                    "defaultVariant": "off",
                    "targeting": {"if": [
                        {"in": [client, ["acme", "globex"]]}, "on",
                        client, {"fractional": [
                            {"cat": ["new-invoice-ui", client]}, ["off", 80], ["on", 20]
                        ]}
                    ]}
                }}
            })
        );
        assert!(set.rejected.is_empty());
        assert!(set.version.starts_with("sha256:") && set.version.len() == 7 + 64);
    }

    #[test]
    fn empty_client_ids_are_not_listed() {
        let toggle = spec(json!({
            "application": "billing",
            "variants": {"on": true, "off": false},
            "defaultVariant": "off",
            "bucketBy": "targetingKey",
            "stages": {"demo": {"rules": [{"clients": ["", "acme"], "variant": "on"}]}}
        }));
        let flag = render_flag("f", &toggle, "demo", &ActiveCouplings::none()).unwrap();
        assert_eq!(
            flag["targeting"],
            json!({"if": [{"in": [{"var": "targetingKey"}, ["acme"]]}, "on"]})
        );
    }

    #[test]
    fn version_ignores_key_order_and_follows_content() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": 2, "x": 3}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a": {"x": 3, "y": 2}, "b": 1}"#).unwrap();
        assert_eq!(canonical_json(&a), r#"{"a":{"x":3,"y":2},"b":1}"#);
        assert_eq!(flag_set_version(&a), flag_set_version(&b));
        assert_ne!(flag_set_version(&a), flag_set_version(&json!({"b": 2})));
    }

    #[test]
    fn duplicates_and_bad_keys_are_reported_and_the_rest_served() {
        let good =
            spec(json!({"application": "a", "variants": {"on": true}, "defaultVariant": "on"}));
        let bad =
            spec(json!({"application": "a", "variants": {"on": true}, "defaultVariant": "off"}));
        let set = render_flag_set(
            &[
                ("x", &good),
                ("x", &bad),
                ("", &good),
                ("y", &bad),
                ("z", &good),
            ],
            "dev",
            &ActiveCouplings::none(),
        );
        let served: Vec<&String> = set.document["flags"].as_object().unwrap().keys().collect();
        assert_eq!(served, ["x", "z"]);
        let reasons: Vec<(usize, &str)> = set
            .rejected
            .iter()
            .map(|e| (e.index(), e.reason()))
            .collect();
        assert_eq!(
            reasons,
            [
                (1, "DuplicateFlagKey"),
                (2, "InvalidFlagKey"),
                (3, "UnknownVariant")
            ]
        );
    }
}
