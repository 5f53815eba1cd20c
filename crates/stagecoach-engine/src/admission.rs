//! Semantic checks on specs that the CRD schema and its CEL rules cannot express.
//!
//! The API server already refuses most invalid input at admission. What reaches the
//! operator is checked once more here, for the rules CEL cannot state (two stages in one
//! namespace) and, as defence in depth, for the ones the operator relies on when it
//! parses fields (versions, durations, variant names). A failed check is not an error of
//! the operator: it becomes an `Accepted=False` condition whose reason is
//! [`Rejection::reason`] and whose message says what to fix.
//!
//! Pure: no IO, no clock, no client.

use std::collections::BTreeMap;

use stagecoach_api::duration::parse_duration;
use stagecoach_api::release::{ResolvedStage, Stage};
use stagecoach_api::{FeatureToggleSpec, ReleaseSpec};

/// CamelCase reasons of the `Accepted=False` condition.
pub mod reason {
    /// A stage has no namespace of its own and none can be derived from the application.
    pub const NO_NAMESPACE: &str = "NoNamespace";
    /// Two stages resolve to the same namespace.
    pub const DUPLICATE_NAMESPACE: &str = "DuplicateNamespace";
    /// `spec.version` is not a semantic version.
    pub const INVALID_VERSION: &str = "InvalidVersion";
    /// A duration field does not parse.
    pub const INVALID_DURATION: &str = "InvalidDuration";
    /// A FeatureToggle names a variant that is not among `spec.variants`.
    pub const UNKNOWN_VARIANT: &str = "UnknownVariant";
    /// A gate the providers cannot evaluate as written (no provider or several, a
    /// reserved name, an ordering comparison with a value that is not a number).
    pub const INVALID_GATE: &str = "InvalidGate";
}

/// Why a spec cannot be acted on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// CamelCase reason, one of the constants in [`reason`].
    pub reason: &'static str,
    /// What is wrong and how to fix it, for the person who applied the manifest.
    pub message: String,
}

impl Rejection {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

impl std::error::Error for Rejection {}

/// Checks a Release spec on its own (no Pipeline); the first problem found is returned.
pub fn check_release(spec: &ReleaseSpec) -> Result<(), Rejection> {
    check_release_in(spec, &spec.resolved_stages())
}

/// Checks a Release spec with the stages it resolves to (its own, or its Pipeline's
/// merged with it); the first problem found is returned.
pub fn check_release_in(spec: &ReleaseSpec, stages: &[ResolvedStage]) -> Result<(), Rejection> {
    check_version(&spec.version)?;
    check_stage_namespaces(&spec.application, stages)?;
    if let Some(own) = &spec.stages {
        for (index, stage) in own.iter().enumerate() {
            check_stage_durations(index, stage)?;
        }
    }
    for stage in stages {
        check_gates(stage)?;
    }
    Ok(())
}

/// What the schema's CEL rules already say about gates, checked again because the
/// providers rely on it, and what they cannot say: an ordering comparison (LessThan...)
/// of an HTTP field needs a numeric value, else the gate could never pass.
fn check_gates(stage: &ResolvedStage) -> Result<(), Rejection> {
    use stagecoach_api::release::Comparison;
    for gate in &stage.gates {
        let invalid = |what: String| {
            Err(Rejection::new(
                reason::INVALID_GATE,
                format!("stage {} gate {}: {what}", stage.name, gate.name),
            ))
        };
        if gate.name == crate::release::gate::WORKLOAD_HEALTH {
            return invalid("the name is the built-in gate's; choose another".into());
        }
        let providers = [
            gate.prometheus.is_some(),
            gate.http.is_some(),
            gate.job.is_some(),
        ];
        if providers.iter().filter(|p| **p).count() != 1 {
            return invalid("set exactly one of prometheus, http or job".into());
        }
        if let Some(prometheus) = &gate.prometheus
            && !prometheus.threshold.is_finite()
        {
            return invalid("prometheus.threshold must be a finite number".into());
        }
        if let Some(http) = &gate.http {
            if let Some(pointer) = http.json_pointer.as_deref()
                && !pointer.is_empty()
                && !pointer.starts_with('/')
            {
                return invalid(format!(
                    "http.jsonPointer {pointer:?} must start with '/', such as /count"
                ));
            }
            let ordering = !matches!(
                http.comparison,
                None | Some(Comparison::Equal | Comparison::NotEqual)
            );
            if let (true, Some(value)) = (ordering, http.value.as_deref())
                && !value.trim().parse::<f64>().is_ok_and(f64::is_finite)
            {
                return invalid(format!(
                    "http.comparison {:?} needs a number as http.value, not {value:?} \
                     (text compares with Equal or NotEqual only)",
                    http.comparison.unwrap_or(Comparison::Equal)
                ));
            }
        }
    }
    Ok(())
}

fn check_version(version: &str) -> Result<(), Rejection> {
    semver::Version::parse(version).map(drop).map_err(|err| {
        Rejection::new(
            reason::INVALID_VERSION,
            format!(
                "spec.version {version:?} is not a semantic version ({err}); \
                 write MAJOR.MINOR.PATCH such as 2.4.0 or 3.0.0-rc.1"
            ),
        )
    })
}

fn check_stage_namespaces(application: &str, stages: &[ResolvedStage]) -> Result<(), Rejection> {
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    for stage in stages.iter().cloned() {
        let Some(namespace) = stage.namespace else {
            return Err(Rejection::new(
                reason::NO_NAMESPACE,
                format!(
                    "stage {:?} has no namespace: set its namespace in spec.stages, or use an \
                     application name for which '{}-{}' is a valid namespace name \
                     (lower-case letters, digits and '-', at most 63 characters)",
                    stage.name, application, stage.name
                ),
            ));
        };
        if let Some(first) = owners.get(&namespace) {
            return Err(Rejection::new(
                reason::DUPLICATE_NAMESPACE,
                format!(
                    "stages {first:?} and {:?} both use namespace {namespace:?}; \
                     every stage needs a namespace of its own",
                    stage.name
                ),
            ));
        }
        owners.insert(namespace, stage.name);
    }
    Ok(())
}

fn check_stage_durations(index: usize, stage: &Stage) -> Result<(), Rejection> {
    let at = format!("spec.stages[{index}]");
    check_duration(
        &format!("{at}.progressDeadline"),
        stage.progress_deadline.as_deref(),
    )?;
    for (step_index, step) in stage.steps.iter().flatten().enumerate() {
        let duration = step.pause.as_ref().and_then(|p| p.duration.as_deref());
        check_duration(
            &format!("{at}.steps[{step_index}].pause.duration"),
            duration,
        )?;
    }
    let early_life = stage
        .early_life_support
        .as_ref()
        .and_then(|e| e.duration.as_deref());
    check_duration(&format!("{at}.earlyLifeSupport.duration"), early_life)?;
    for (gate_index, gate) in stage.gates.iter().enumerate() {
        let gate_at = format!("{at}.gates[{gate_index}]");
        check_duration(&format!("{gate_at}.interval"), gate.interval.as_deref())?;
        let timeouts = [
            ("job", gate.job.as_ref().and_then(|j| j.timeout.as_deref())),
            (
                "prometheus",
                gate.prometheus.as_ref().and_then(|p| p.timeout.as_deref()),
            ),
            (
                "http",
                gate.http.as_ref().and_then(|h| h.timeout.as_deref()),
            ),
        ];
        for (provider, timeout) in timeouts {
            check_duration(&format!("{gate_at}.{provider}.timeout"), timeout)?;
        }
    }
    Ok(())
}

fn check_duration(field: &str, value: Option<&str>) -> Result<(), Rejection> {
    match value.map(parse_duration) {
        Some(Err(err)) => Err(Rejection::new(
            reason::INVALID_DURATION,
            format!("{field}: {err}"),
        )),
        _ => Ok(()),
    }
}

/// Checks a FeatureToggle spec; the first problem found is returned. A toggle without any
/// stage settings is valid: it serves its default variant everywhere.
pub fn check_feature_toggle(spec: &FeatureToggleSpec) -> Result<(), Rejection> {
    let known = |variant: &str| spec.variants.contains_key(variant);
    let unknown = |field: String, variant: &str| {
        let names: Vec<&str> = spec.variants.keys().map(String::as_str).collect();
        Rejection::new(
            reason::UNKNOWN_VARIANT,
            format!(
                "{field} names variant {variant:?}, which is not in spec.variants (known: {})",
                names.join(", ")
            ),
        )
    };
    if !known(&spec.default_variant) {
        return Err(unknown("spec.defaultVariant".into(), &spec.default_variant));
    }
    for (stage_name, stage) in &spec.stages {
        let at = format!("spec.stages.{stage_name}");
        if let Some(variant) = stage.default_variant.as_deref().filter(|v| !known(v)) {
            return Err(unknown(format!("{at}.defaultVariant"), variant));
        }
        for (rule_index, rule) in stage.rules.iter().enumerate() {
            let rule_at = format!("{at}.rules[{rule_index}]");
            if let Some(variant) = rule.variant.as_deref().filter(|v| !known(v)) {
                return Err(unknown(format!("{rule_at}.variant"), variant));
            }
            if let Some(variant) = rule
                .split
                .iter()
                .flatten()
                .map(|(v, _)| v)
                .find(|v| !known(v))
            {
                return Err(unknown(format!("{rule_at}.split"), variant));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
