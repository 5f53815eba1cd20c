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
    /// A stage configures a gate kind whose provider this operator version lacks.
    pub const UNSUPPORTED_GATE: &str = "UnsupportedGate";
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
        check_gate_providers(stage)?;
    }
    Ok(())
}

/// Gate providers (Prometheus, HTTP, Job) are not part of this operator version yet. A
/// gate nobody can measure would stay Inconclusive and fail the stage at its deadline;
/// refusing the spec up front says why instead.
fn check_gate_providers(stage: &ResolvedStage) -> Result<(), Rejection> {
    match stage.gates.first() {
        None => Ok(()),
        Some(gate) => Err(Rejection::new(
            reason::UNSUPPORTED_GATE,
            format!(
                "stage {} gate {}: this version of the operator evaluates only \
                 the built-in workload-health gate; remove the gates list or upgrade the operator",
                stage.name, gate.name
            ),
        )),
    }
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
        let timeout = gate.job.as_ref().and_then(|j| j.timeout.as_deref());
        check_duration(&format!("{gate_at}.job.timeout"), timeout)?;
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
