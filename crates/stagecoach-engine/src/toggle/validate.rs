//! What a FeatureToggle spec must satisfy before it is evaluated or rendered as a flagd flag.
//!
//! The API server's CRD schema, CEL rules and the ValidatingAdmissionPolicy refuse most of
//! this at admission; it is checked again here because the engine relies on it (a flag set
//! that breaks flagd's schema would be refused by flagd, taking every flag of the stage with
//! it) and because objects admitted before a rule existed still reach the operator.

use serde_json::Value;
use stagecoach_api::FeatureToggleSpec;
use stagecoach_api::toggle::ToggleRule;

use super::DEFAULT_BUCKET_BY;

/// The type of a toggle's variant values: which typed OpenFeature call reads it
/// (`getBooleanValue`, `getStringValue`, `getIntegerValue`/`getFloatValue`,
/// `getObjectValue`) and which flagd flag type it renders as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    Boolean,
    String,
    /// Numbers that are all integers.
    Integer,
    /// Numbers, at least one of them with a fraction or exponent.
    Float,
    Object,
}

impl ValueType {
    /// The type of one variant value; None for null and arrays, which OpenFeature flags
    /// cannot carry (flagd's schema refuses them).
    pub fn of(value: &Value) -> Option<Self> {
        match value {
            Value::Bool(_) => Some(Self::Boolean),
            Value::String(_) => Some(Self::String),
            Value::Number(n) if n.is_f64() => Some(Self::Float),
            Value::Number(_) => Some(Self::Integer),
            Value::Object(_) => Some(Self::Object),
            Value::Null | Value::Array(_) => None,
        }
    }

    /// Lower-case name, as in messages: boolean, string, integer, float, object.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Boolean => "boolean",
            Self::String => "string",
            Self::Integer => "integer",
            Self::Float => "float",
            Self::Object => "object",
        }
    }

    /// Whether values of this type are numbers (a flagd number flag).
    pub fn is_number(self) -> bool {
        matches!(self, Self::Integer | Self::Float)
    }

    /// The common type of two variants, if they have one: integers and floats are numbers.
    fn unify(self, other: Self) -> Option<Self> {
        match (self, other) {
            (a, b) if a == b => Some(a),
            (a, b) if a.is_number() && b.is_number() => Some(Self::Float),
            _ => None,
        }
    }
}

impl std::fmt::Display for ValueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a FeatureToggle spec cannot be evaluated or rendered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ToggleError {
    #[error("spec.variants is empty: a toggle needs at least one variant")]
    NoVariants,
    #[error(
        "variant name {name:?} must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
    )]
    InvalidVariantName { name: String },
    #[error(
        "variant {variant:?} is {found}; variant values must be booleans, strings, numbers or objects"
    )]
    UnsupportedValue {
        variant: String,
        found: &'static str,
    },
    #[error(
        "variants {first:?} ({first_type}) and {other:?} ({other_type}) differ in type; all variants must have one type"
    )]
    MixedValueTypes {
        first: String,
        first_type: ValueType,
        other: String,
        other_type: ValueType,
    },
    #[error("{field} names variant {variant:?}, which is not in spec.variants")]
    UnknownVariant { field: String, variant: String },
    #[error("{field}: {problem}")]
    InvalidRule {
        field: String,
        problem: &'static str,
    },
    #[error("spec.bucketBy {bucket_by:?}: {problem}")]
    InvalidBucketBy {
        bucket_by: String,
        problem: &'static str,
    },
}

impl ToggleError {
    /// CamelCase reason for an `Accepted=False` condition or an event.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoVariants => "NoVariants",
            Self::InvalidVariantName { .. } => "InvalidVariantName",
            Self::UnsupportedValue { .. } => "UnsupportedVariantValue",
            Self::MixedValueTypes { .. } => "MixedVariantTypes",
            Self::UnknownVariant { .. } => "UnknownVariant",
            Self::InvalidRule { .. } => "InvalidRule",
            Self::InvalidBucketBy { .. } => "InvalidBucketBy",
        }
    }
}

/// Checks everything evaluation and flagd rendering rely on, in every stage, and returns
/// the type of the toggle's values. The first problem found is returned.
///
/// A spec that passes renders as a flag that validates against flagd's published schema,
/// and evaluates without a PARSE_ERROR.
pub fn validate_toggle(spec: &FeatureToggleSpec) -> Result<ValueType, ToggleError> {
    let value_type = check_variants(spec)?;
    check_bucket_by(spec.bucket_by.as_deref().unwrap_or(DEFAULT_BUCKET_BY))?;
    check_known(spec, "spec.defaultVariant", &spec.default_variant)?;
    for (stage_name, stage) in &spec.stages {
        let at = format!("spec.stages.{stage_name}");
        if let Some(variant) = &stage.default_variant {
            check_known(spec, &format!("{at}.defaultVariant"), variant)?;
        }
        for (index, rule) in stage.rules.iter().enumerate() {
            check_rule(spec, &format!("{at}.rules[{index}]"), rule)?;
        }
    }
    Ok(value_type)
}

fn check_variants(spec: &FeatureToggleSpec) -> Result<ValueType, ToggleError> {
    let mut common: Option<(&str, ValueType)> = None;
    for (name, value) in &spec.variants {
        if !is_variant_name(name) {
            return Err(ToggleError::InvalidVariantName { name: name.clone() });
        }
        let Some(value_type) = ValueType::of(value) else {
            let found = if value.is_null() { "null" } else { "an array" };
            return Err(ToggleError::UnsupportedValue {
                variant: name.clone(),
                found,
            });
        };
        common = match common {
            None => Some((name, value_type)),
            Some((first, first_type)) => match first_type.unify(value_type) {
                Some(unified) => Some((first, unified)),
                None => {
                    return Err(ToggleError::MixedValueTypes {
                        first: first.to_owned(),
                        first_type,
                        other: name.clone(),
                        other_type: value_type,
                    });
                }
            },
        };
    }
    common
        .map(|(_, value_type)| value_type)
        .ok_or(ToggleError::NoVariants)
}

/// The variant-name rule of the admission policy: it keeps names that flagd's evaluator
/// returns verbatim (no quotes, backslashes or HTML characters its JSON encoder escapes).
fn is_variant_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let inner = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            bytes.len() <= 63
                && first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes.iter().all(inner)
        }
        _ => false,
    }
}

/// bucketBy is read like a JsonLogic `var`: an attribute name, or a dotted path into
/// nested attributes. flagd reserves `$flagd.*`.
fn check_bucket_by(bucket_by: &str) -> Result<(), ToggleError> {
    let problem = if bucket_by.is_empty() {
        Some("must name a context attribute")
    } else if bucket_by.split('.').any(str::is_empty) {
        Some("a dotted path must not have empty segments")
    } else if bucket_by.starts_with("$flagd.") {
        Some("$flagd.* is reserved by flagd")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(ToggleError::InvalidBucketBy {
            bucket_by: bucket_by.to_owned(),
            problem,
        }),
        None => Ok(()),
    }
}

fn check_known(spec: &FeatureToggleSpec, field: &str, variant: &str) -> Result<(), ToggleError> {
    if spec.variants.contains_key(variant) {
        Ok(())
    } else {
        Err(ToggleError::UnknownVariant {
            field: field.to_owned(),
            variant: variant.to_owned(),
        })
    }
}

fn check_rule(spec: &FeatureToggleSpec, at: &str, rule: &ToggleRule) -> Result<(), ToggleError> {
    let invalid = |problem| {
        Err(ToggleError::InvalidRule {
            field: at.to_owned(),
            problem,
        })
    };
    match (&rule.clients, &rule.variant, &rule.split) {
        (Some(_), _, Some(_)) => invalid("a rule has either clients or a split, not both"),
        (None, _, None) => invalid("a rule needs clients (with a variant) or a split"),
        (Some(_), None, None) => invalid("a clients rule needs the variant those clients get"),
        (Some(clients), Some(variant), None) => {
            if clients.is_empty() {
                return invalid("clients must list at least one client");
            }
            check_known(spec, &format!("{at}.variant"), variant)
        }
        (None, Some(_), Some(_)) => {
            invalid("a split rule names its variants in split; remove variant")
        }
        (None, None, Some(split)) => {
            let mut total: u64 = 0;
            for (variant, &weight) in split {
                check_known(spec, &format!("{at}.split"), variant)?;
                match u32::try_from(weight) {
                    Ok(weight) => total += u64::from(weight),
                    Err(_) => return invalid("split weights must not be negative"),
                }
            }
            if total == 0 {
                return invalid("split weights must add up to more than 0");
            }
            // flagd refuses a sum above int32's maximum; admission caps it at 100.
            if total > u64::from(i32::MAX.unsigned_abs()) {
                return invalid("split weights add up to more than 2147483647");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(variants: Value) -> FeatureToggleSpec {
        let mut spec = json!({"application": "billing", "defaultVariant": "off"});
        spec["variants"] = variants;
        serde_json::from_value(spec).unwrap()
    }

    #[test]
    fn value_types() {
        let cases = [
            (json!({"on": true, "off": false}), ValueType::Boolean),
            (json!({"on": "a", "off": "b"}), ValueType::String),
            (json!({"on": 1, "off": 0}), ValueType::Integer),
            (json!({"on": 1.5, "off": 0}), ValueType::Float),
            (json!({"on": {"a": 1}, "off": {}}), ValueType::Object),
        ];
        for (variants, expected) in cases {
            assert_eq!(validate_toggle(&spec(variants)), Ok(expected));
        }
    }

    #[test]
    fn refusals() {
        let mixed = spec(json!({"on": true, "off": "no"}));
        assert_eq!(
            validate_toggle(&mixed).unwrap_err().reason(),
            "MixedVariantTypes"
        );
        let array = spec(json!({"on": [1], "off": [2]}));
        assert_eq!(
            validate_toggle(&array).unwrap_err().reason(),
            "UnsupportedVariantValue"
        );
        let badly_named = spec(json!({"on": true, "off": false, "a&b": true}));
        assert_eq!(
            validate_toggle(&badly_named).unwrap_err().reason(),
            "InvalidVariantName"
        );
        let mut no_default = spec(json!({"on": true}));
        no_default.default_variant = "off".into();
        assert_eq!(
            validate_toggle(&no_default).unwrap_err().reason(),
            "UnknownVariant"
        );
        let mut reserved = spec(json!({"on": true, "off": false}));
        reserved.bucket_by = Some("$flagd.flagKey".into());
        assert_eq!(
            validate_toggle(&reserved).unwrap_err().reason(),
            "InvalidBucketBy"
        );
        let empty = spec(json!({}));
        assert_eq!(validate_toggle(&empty), Err(ToggleError::NoVariants));
    }

    #[test]
    fn rule_shapes() {
        let rule = |value: Value| -> ToggleRule { serde_json::from_value(value).unwrap() };
        let toggle = spec(json!({"on": true, "off": false}));
        let check = |r: &ToggleRule| check_rule(&toggle, "r", r).map_err(|e| e.to_string());
        assert!(check(&rule(json!({"clients": ["a"], "variant": "on"}))).is_ok());
        assert!(check(&rule(json!({"split": {"on": 20, "off": 80}}))).is_ok());
        for bad in [
            json!({"clients": ["a"], "variant": "on", "split": {"on": 1}}),
            json!({"variant": "on"}),
            json!({"clients": ["a"]}),
            json!({"clients": [], "variant": "on"}),
            json!({"clients": ["a"], "variant": "maybe"}),
            json!({"split": {"on": 1}, "variant": "on"}),
            json!({"split": {"on": -1, "off": 101}}),
            json!({"split": {"on": 0, "off": 0}}),
            json!({"split": {"maybe": 100}}),
            json!({"split": {"on": 2_000_000_000, "off": 2_000_000_000}}),
        ] {
            assert!(check(&rule(bad.clone())).is_err(), "{bad}");
        }
    }
}
