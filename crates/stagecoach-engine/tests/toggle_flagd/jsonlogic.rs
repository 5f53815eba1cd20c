//! A tiny JsonLogic interpreter and flagd resolver, for tests only: just the operators the
//! flagd renderer emits (if, in, var, cat, fractional; and or, which it avoids since
//! flagd's JavaScript evaluator misreads it inside `cat`), with the semantics of flagd's
//! Go evaluator (github.com/diegoholiveira/jsonlogic/v3 plus flagd's own `fractional`):
//!
//! - `if` is a lazy if/else-if chain; with no match and no else branch it yields null;
//! - `or` yields its first truthy operand, else `false`;
//! - `in` tests membership in an array (or substring of a string);
//! - `var` walks a dotted path through objects and arrays, missing -> null;
//! - `cat` concatenates its operands as strings and trims surrounding whitespace;
//! - `fractional` hashes its first operand when that is a string (else flag key + targetingKey)
//!   with MurmurHash3 x86 32 seed 0, bucket = (hash * totalWeight) >> 32, first variant whose
//!   cumulative weight exceeds the bucket wins.
//!
//! The distribution logic is written here from flagd's description, independently of
//! `stagecoach_engine::toggle::pick_variant`; only the hash function is shared (it has its own
//! vector tests).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use serde_json::{Map, Value, json};
use stagecoach_engine::toggle::murmur3_x86_32;

/// What flagd answers for one flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlagdAnswer {
    Variant {
        variant: String,
        reason: &'static str,
    },
    /// flagd treats a disabled flag as absent (error FLAG_DISABLED / not found).
    Disabled,
    Error(&'static str),
}

/// Resolves `flag_key` in a flagd flag-set document for an evaluation context given as the
/// JSON object an SDK sends (targetingKey plus attributes).
pub fn resolve(flag_set: &Value, flag_key: &str, context: &Value) -> FlagdAnswer {
    let Some(flag) = flag_set["flags"].get(flag_key) else {
        return FlagdAnswer::Error("FLAG_NOT_FOUND");
    };
    if flag["state"] == "DISABLED" {
        return FlagdAnswer::Disabled;
    }
    let default_variant = flag["defaultVariant"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let targeting = match flag.get("targeting") {
        None => None,
        Some(Value::Object(rule)) if rule.is_empty() => None,
        Some(rule) => Some(rule),
    };
    let Some(targeting) = targeting else {
        return FlagdAnswer::Variant {
            variant: default_variant,
            reason: "STATIC",
        };
    };
    let mut data = context.as_object().cloned().unwrap_or_default();
    data.insert(
        "$flagd".into(),
        json!({"flagKey": flag_key, "timestamp": 0}),
    );
    match apply(targeting, &Value::Object(data)) {
        Value::Null => FlagdAnswer::Variant {
            variant: default_variant,
            reason: "DEFAULT",
        },
        Value::String(variant) if flag["variants"].get(&variant).is_some() => {
            FlagdAnswer::Variant {
                variant,
                reason: "TARGETING_MATCH",
            }
        }
        _ => FlagdAnswer::Error("PARSE_ERROR"),
    }
}

pub fn apply(rule: &Value, data: &Value) -> Value {
    match rule {
        Value::Object(operation) if operation.len() == 1 => {
            let (operator, operands) = operation.iter().next().unwrap();
            let operands: Vec<&Value> = match operands {
                Value::Array(items) => items.iter().collect(),
                single => vec![single],
            };
            evaluate(operator, &operands, data)
        }
        Value::Object(operation) if operation.is_empty() => Value::Object(Map::new()),
        Value::Object(operation) => panic!("not a JsonLogic operation: {operation:?}"),
        Value::Array(items) => Value::Array(items.iter().map(|item| apply(item, data)).collect()),
        literal => literal.clone(),
    }
}

fn evaluate(operator: &str, operands: &[&Value], data: &Value) -> Value {
    match operator {
        "var" => var(operands, data),
        "if" => {
            let mut pairs = operands.chunks_exact(2);
            for pair in pairs.by_ref() {
                if truthy(&apply(pair[0], data)) {
                    return apply(pair[1], data);
                }
            }
            match pairs.remainder() {
                [otherwise] => apply(otherwise, data),
                _ => Value::Null,
            }
        }
        "or" => operands
            .iter()
            .map(|operand| apply(operand, data))
            .find(truthy)
            .unwrap_or(Value::Bool(false)),
        "in" => {
            let needle = apply(operands[0], data);
            match apply(operands[1], data) {
                Value::Array(haystack) => Value::Bool(haystack.contains(&needle)),
                Value::String(haystack) => {
                    Value::Bool(needle.as_str().is_some_and(|n| haystack.contains(n)))
                }
                _ => Value::Bool(false),
            }
        }
        "cat" => {
            let joined: String = operands.iter().map(|o| text(&apply(o, data))).collect();
            Value::String(joined.trim().to_owned())
        }
        "fractional" => {
            let evaluated: Vec<Value> = operands.iter().map(|o| apply(o, data)).collect();
            fractional(&evaluated, data)
        }
        other => panic!("operator {other:?} is not supported by the test interpreter"),
    }
}

fn var(operands: &[&Value], data: &Value) -> Value {
    let Some(Value::String(path)) = operands.first() else {
        panic!("var with a non-string path: {operands:?}");
    };
    let mut current = data;
    for segment in path.split('.').filter(|s| !s.is_empty()) {
        let next = match current {
            Value::Object(fields) => fields.get(segment),
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        match next {
            Some(value) => current = value,
            None => return Value::Null,
        }
    }
    current.clone()
}

fn fractional(operands: &[Value], data: &Value) -> Value {
    let (bucketing, distribution) = match operands.first() {
        Some(Value::String(value)) => (value.clone(), &operands[1..]),
        first => {
            let Some(targeting_key) = data["targetingKey"].as_str() else {
                return Value::Null;
            };
            let flag_key = data["$flagd"]["flagKey"].as_str().unwrap_or_default();
            let rest = if first == Some(&Value::Null) {
                &operands[1..]
            } else {
                operands
            };
            (format!("{flag_key}{targeting_key}"), rest)
        }
    };
    let weighted: Vec<(Value, u64)> = distribution
        .iter()
        .map(|entry| {
            let entry = entry.as_array().expect("a distribution entry is an array");
            let weight = entry
                .get(1)
                .map_or(1, |w| w.as_u64().expect("integer weight"));
            (entry[0].clone(), weight)
        })
        .collect();
    let total: u64 = weighted.iter().map(|(_, weight)| weight).sum();
    if total == 0 {
        return Value::String(String::new());
    }
    let hash = u64::from(murmur3_x86_32(bucketing.as_bytes()));
    let bucket = (hash * total) >> 32;
    let mut range_end = 0;
    for (variant, weight) in weighted {
        range_end += weight;
        if bucket < range_end {
            return variant;
        }
    }
    Value::String(String::new())
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(_) => true,
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[test]
fn interpreter_basics() {
    let data = json!({"a": {"b": ["x", "y"]}, "targetingKey": "t", "$flagd": {"flagKey": "f"}});
    assert_eq!(apply(&json!({"var": "a.b.1"}), &data), json!("y"));
    assert_eq!(apply(&json!({"var": "nope"}), &data), Value::Null);
    assert_eq!(
        apply(
            &json!({"or": [{"var": "nope"}, {"var": "targetingKey"}]}),
            &data
        ),
        json!("t")
    );
    assert_eq!(
        apply(&json!({"or": [{"var": "nope"}, ""]}), &data),
        json!(false)
    );
    assert_eq!(apply(&json!({"in": ["t", ["s", "t"]]}), &data), json!(true));
    assert_eq!(apply(&json!({"cat": ["f", " t "]}), &data), json!("f t"));
    assert_eq!(
        apply(&json!({"if": [false, "a", true, "b"]}), &data),
        json!("b")
    );
    assert_eq!(apply(&json!({"if": [false, "a"]}), &data), Value::Null);
    // flagd's own default: flag key + targeting key when no bucketing string is given.
    let shorthand = json!({"fractional": [["a", 50], ["b", 50]]});
    let explicit = json!({"fractional": [{"cat": ["f", "t"]}, ["a", 50], ["b", 50]]});
    assert_eq!(apply(&shorthand, &data), apply(&explicit, &data));
}
