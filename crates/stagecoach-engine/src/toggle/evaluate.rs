//! Evaluating one toggle for one client in one stage, with OFREP's reasons and error codes.
//!
//! The answer is the one flagd gives for the flag set [`super::flagd`] renders (same variant
//! for every context), with OFREP's finer reasons: SPLIT where flagd says TARGETING_MATCH
//! for a fractional rule, DISABLED where flagd treats a disabled flag as absent. The one
//! other difference: a split reached without any bucketing value is the OFREP error
//! TARGETING_KEY_MISSING here, where flagd skips the split and serves the default.

use std::collections::BTreeMap;

use serde_json::Value;
use stagecoach_api::FeatureToggleSpec;

use super::stage_rules::{RuleAction, StagePlan, plan_stage};
use super::{ActiveCouplings, TARGETING_KEY, ToggleError, pick_variant, validate_toggle};

/// The OpenFeature evaluation context of a request: the targeting key and the other
/// attributes, as OFREP's `context` object carries them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EvaluationContext {
    /// OpenFeature `targetingKey`.
    pub targeting_key: Option<String>,
    /// Every other attribute, such as `clientId`.
    pub attributes: BTreeMap<String, Value>,
}

impl EvaluationContext {
    /// A context with a targeting key and no attributes.
    pub fn with_targeting_key(targeting_key: impl Into<String>) -> Self {
        Self {
            targeting_key: Some(targeting_key.into()),
            ..Self::default()
        }
    }

    /// Adds (or replaces) an attribute.
    #[must_use]
    pub fn attribute(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }

    /// Reads OFREP's `context` object: `targetingKey` (a string, if present) and the other
    /// attributes. A missing context (null) is an empty one.
    pub fn from_json(context: Value) -> Result<Self, EvaluationError> {
        let attributes = match context {
            Value::Null => return Ok(Self::default()),
            Value::Object(attributes) => attributes,
            other => {
                return Err(EvaluationError::InvalidContext {
                    detail: format!("the context must be a JSON object, not {}", kind(&other)),
                });
            }
        };
        let mut parsed = Self::default();
        for (name, value) in attributes {
            if name != TARGETING_KEY {
                parsed.attributes.insert(name, value);
                continue;
            }
            match value {
                Value::String(key) => parsed.targeting_key = Some(key),
                Value::Null => {}
                other => {
                    return Err(EvaluationError::InvalidContext {
                        detail: format!("targetingKey must be a string, not {}", kind(&other)),
                    });
                }
            }
        }
        Ok(parsed)
    }

    /// The value that identifies the client for client lists and splits: the attribute
    /// `bucket_by`, else the targeting key; None when neither is set.
    ///
    /// Read the way the rendered JsonLogic `{"or": [{"var": bucketBy}, {"var": "targetingKey"}]}`
    /// reads it: `bucket_by` may be a dotted path into nested objects (and array indices);
    /// an absent or falsy attribute (null, false, 0, "", []) falls back to the targeting key;
    /// an empty targeting key counts as none. A truthy attribute that is not a string
    /// (a number, true, an object) is INVALID_CONTEXT: client ids are strings.
    pub fn bucketing_value(&self, bucket_by: &str) -> Result<Option<&str>, EvaluationError> {
        if bucket_by != TARGETING_KEY {
            match self.lookup(bucket_by) {
                Some(Value::String(value)) if !value.is_empty() => return Ok(Some(value)),
                Some(value) if is_truthy(value) => {
                    return Err(EvaluationError::InvalidContext {
                        detail: format!(
                            "context attribute {bucket_by:?} identifies the client and must be a string, not {}",
                            kind(value)
                        ),
                    });
                }
                _ => {}
            }
        }
        Ok(self.targeting_key.as_deref().filter(|key| !key.is_empty()))
    }

    fn lookup(&self, path: &str) -> Option<&Value> {
        let mut segments = path.split('.').filter(|segment| !segment.is_empty());
        let first = self.attributes.get(segments.next()?)?;
        segments.try_fold(first, |value, segment| match value {
            Value::Object(fields) => fields.get(segment),
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?),
            _ => None,
        })
    }
}

/// JsonLogic truthiness.
fn is_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(_) => true,
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// OFREP's reason for a successful evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Nothing in the stage can vary by client: the stage is not configured, or has no
    /// active rules.
    Static,
    /// A client list matched.
    TargetingMatch,
    /// A percentage split placed the client.
    Split,
    /// The stage is disabled.
    Disabled,
    /// Rules were evaluated and none matched.
    Default,
}

impl Reason {
    /// As OFREP spells it: STATIC, TARGETING_MATCH, SPLIT, DISABLED, DEFAULT.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Static => "STATIC",
            Self::TargetingMatch => "TARGETING_MATCH",
            Self::Split => "SPLIT",
            Self::Disabled => "DISABLED",
            Self::Default => "DEFAULT",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A successful evaluation: OFREP's `value`, `variant` and `reason`.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    pub value: Value,
    pub variant: String,
    pub reason: Reason,
}

/// OFREP's error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    FlagNotFound,
    ParseError,
    TargetingKeyMissing,
    InvalidContext,
    General,
}

impl ErrorCode {
    /// As OFREP spells it: FLAG_NOT_FOUND, PARSE_ERROR, TARGETING_KEY_MISSING,
    /// INVALID_CONTEXT, GENERAL.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FlagNotFound => "FLAG_NOT_FOUND",
            Self::ParseError => "PARSE_ERROR",
            Self::TargetingKeyMissing => "TARGETING_KEY_MISSING",
            Self::InvalidContext => "INVALID_CONTEXT",
            Self::General => "GENERAL",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a flag could not be evaluated; [`EvaluationError::code`] is the OFREP error code and
/// the Display text is meant for OFREP's `errorDetails`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EvaluationError {
    /// No toggle of the application has this key. Not returned by [`evaluate`], which is
    /// given its toggle; for the caller that looks the key up.
    #[error("flag {flag_key:?} was not found")]
    FlagNotFound { flag_key: String },
    /// The toggle's spec is invalid (PARSE_ERROR: the flag configuration cannot be used).
    #[error("flag {flag_key:?} is misconfigured: {source}")]
    InvalidToggle {
        flag_key: String,
        #[source]
        source: ToggleError,
    },
    /// A percentage split was reached and the context identifies no client.
    #[error(
        "flag {flag_key:?} has a percentage split, which needs the context attribute {attribute:?} or a targetingKey"
    )]
    TargetingKeyMissing { flag_key: String, attribute: String },
    /// The context is not usable.
    #[error("invalid evaluation context: {detail}")]
    InvalidContext { detail: String },
}

impl EvaluationError {
    /// The OFREP error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::FlagNotFound { .. } => ErrorCode::FlagNotFound,
            Self::InvalidToggle { .. } => ErrorCode::ParseError,
            Self::TargetingKeyMissing { .. } => ErrorCode::TargetingKeyMissing,
            Self::InvalidContext { .. } => ErrorCode::InvalidContext,
        }
    }
}

/// Evaluates toggle `spec`, served under `flag_key`, in `stage` for `context`, with the
/// release couplings in `couplings` active.
///
/// - stage not in `spec.stages`: the toggle's defaultVariant, STATIC;
/// - `state: Disabled`: the stage's defaultVariant (else the toggle's), DISABLED;
/// - otherwise the active rules in order (a rule whose `when` is not active is skipped):
///   a client list matches when the bucketing value (see
///   [`EvaluationContext::bucketing_value`]) is in it, TARGETING_MATCH; a split places the
///   client with flagd's `fractional` bucketing of flag key + bucketing value, SPLIT, or
///   fails with TARGETING_KEY_MISSING when there is no bucketing value;
/// - no rule matched: the stage's defaultVariant (else the toggle's), DEFAULT; STATIC when
///   the stage has no active rules at all (as flagd reports a flag without targeting).
///
/// The spec is validated first ([`validate_toggle`]); an invalid one is PARSE_ERROR.
pub fn evaluate(
    flag_key: &str,
    spec: &FeatureToggleSpec,
    stage: &str,
    context: &EvaluationContext,
    couplings: &ActiveCouplings,
) -> Result<Evaluation, EvaluationError> {
    let invalid = |source| EvaluationError::InvalidToggle {
        flag_key: flag_key.to_owned(),
        source,
    };
    validate_toggle(spec).map_err(invalid)?;
    let serve = |variant: &str, reason| {
        let value = spec.variants.get(variant).cloned().ok_or_else(|| {
            invalid(ToggleError::UnknownVariant {
                field: format!("stage {stage}"),
                variant: variant.to_owned(),
            })
        })?;
        Ok(Evaluation {
            value,
            variant: variant.to_owned(),
            reason,
        })
    };
    let (default_variant, bucket_by, rules) = match plan_stage(spec, stage, couplings) {
        StagePlan::NotConfigured { default_variant } => {
            return serve(default_variant, Reason::Static);
        }
        StagePlan::Disabled { default_variant } => return serve(default_variant, Reason::Disabled),
        StagePlan::Enabled {
            default_variant,
            rules,
            ..
        } if rules.is_empty() => return serve(default_variant, Reason::Static),
        StagePlan::Enabled {
            default_variant,
            bucket_by,
            rules,
        } => (default_variant, bucket_by, rules),
    };
    let client = context.bucketing_value(bucket_by)?;
    for rule in &rules {
        match &rule.action {
            RuleAction::Clients { clients, variant } => {
                if client.is_some_and(|client| clients.iter().any(|listed| listed.0 == client)) {
                    return serve(variant, Reason::TargetingMatch);
                }
            }
            RuleAction::Split { weights } => {
                let Some(client) = client else {
                    return Err(EvaluationError::TargetingKeyMissing {
                        flag_key: flag_key.to_owned(),
                        attribute: bucket_by.to_owned(),
                    });
                };
                // The rendered targeting builds the hashed string with JsonLogic `cat`,
                // which in flagd's evaluator trims surrounding whitespace; the flag key
                // never starts with whitespace, so that trims the client's end only.
                let variant =
                    pick_variant(flag_key, client.trim_end(), weights).ok_or_else(|| {
                        invalid(ToggleError::InvalidRule {
                            field: format!("spec.stages.{stage}"),
                            problem: "split weights must add up to more than 0",
                        })
                    })?;
                return serve(variant, Reason::Split);
            }
        }
    }
    serve(default_variant, Reason::Default)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn context_from_ofrep_json() {
        let context = EvaluationContext::from_json(json!({
            "targetingKey": "user-1",
            "clientId": "acme",
            "tenant": {"id": "globex"}
        }))
        .unwrap();
        assert_eq!(context.targeting_key.as_deref(), Some("user-1"));
        assert_eq!(context.bucketing_value("clientId"), Ok(Some("acme")));
        assert_eq!(context.bucketing_value("tenant.id"), Ok(Some("globex")));
        assert_eq!(context.bucketing_value("missing"), Ok(Some("user-1")));
        assert_eq!(context.bucketing_value("targetingKey"), Ok(Some("user-1")));
        assert_eq!(
            EvaluationContext::from_json(Value::Null),
            Ok(EvaluationContext::default())
        );
        for bad in [json!([1]), json!("x"), json!({"targetingKey": 7})] {
            let error = EvaluationContext::from_json(bad).unwrap_err();
            assert_eq!(error.code(), ErrorCode::InvalidContext);
        }
    }

    #[test]
    fn falsy_attributes_fall_back_and_truthy_non_strings_are_refused() {
        for falsy in [json!(null), json!(false), json!(0), json!(""), json!([])] {
            let context = EvaluationContext::with_targeting_key("t").attribute("clientId", falsy);
            assert_eq!(context.bucketing_value("clientId"), Ok(Some("t")));
        }
        for truthy in [json!(7), json!(true), json!({}), json!(["a"])] {
            let context = EvaluationContext::default().attribute("clientId", truthy);
            let error = context.bucketing_value("clientId").unwrap_err();
            assert_eq!(error.code(), ErrorCode::InvalidContext);
        }
        let empty_key = EvaluationContext::with_targeting_key("");
        assert_eq!(empty_key.bucketing_value("clientId"), Ok(None));
    }
}
