//! One stage of one toggle, reduced to what is served there now: the single reading of a
//! spec shared by evaluation, flagd rendering and status descriptions.

use stagecoach_api::FeatureToggleSpec;
use stagecoach_api::sorted_map::SortedMap;
use stagecoach_api::toggle::{ClientId, ReleaseCoupling, ToggleState};

use super::{ActiveCouplings, DEFAULT_BUCKET_BY};

/// What a toggle serves in a stage.
#[derive(Debug)]
pub(crate) enum StagePlan<'a> {
    /// The stage is not listed in `spec.stages`: the toggle's default variant, STATIC.
    NotConfigured { default_variant: &'a str },
    /// `state: Disabled`: the stage's (or toggle's) default variant, DISABLED.
    Disabled { default_variant: &'a str },
    /// Rules in order (only the active ones), then the stage's (or toggle's) default.
    Enabled {
        default_variant: &'a str,
        bucket_by: &'a str,
        rules: Vec<ActiveRule<'a>>,
    },
}

/// A rule whose coupling, if any, is active.
#[derive(Debug)]
pub(crate) struct ActiveRule<'a> {
    /// The coupling that made the rule active, for descriptions.
    pub when: Option<&'a ReleaseCoupling>,
    pub action: RuleAction<'a>,
}

#[derive(Debug)]
pub(crate) enum RuleAction<'a> {
    /// The listed clients get `variant`.
    Clients {
        clients: &'a [ClientId],
        variant: &'a str,
    },
    /// flagd fractional split, variants in the spec's (sorted) order, zero weights kept.
    Split { weights: Vec<(&'a str, u32)> },
}

pub(crate) fn plan_stage<'a>(
    spec: &'a FeatureToggleSpec,
    stage: &str,
    couplings: &ActiveCouplings,
) -> StagePlan<'a> {
    let Some(settings) = spec.stages.get(stage) else {
        return StagePlan::NotConfigured {
            default_variant: &spec.default_variant,
        };
    };
    let default_variant = settings
        .default_variant
        .as_deref()
        .unwrap_or(&spec.default_variant);
    if settings.state == ToggleState::Disabled {
        return StagePlan::Disabled { default_variant };
    }
    let rules = settings
        .rules
        .iter()
        .filter(|rule| {
            rule.when
                .as_ref()
                .is_none_or(|when| couplings.is_active(when))
        })
        .filter_map(|rule| {
            // Shapes were checked by validate_toggle; a malformed rule is never active.
            let action = match (&rule.clients, &rule.variant, &rule.split) {
                (Some(clients), Some(variant), None) => RuleAction::Clients { clients, variant },
                (None, None, Some(split)) => RuleAction::Split {
                    weights: split_weights(split),
                },
                _ => return None,
            };
            Some(ActiveRule {
                when: rule.when.as_ref(),
                action,
            })
        })
        .collect();
    StagePlan::Enabled {
        default_variant,
        bucket_by: spec.bucket_by.as_deref().unwrap_or(DEFAULT_BUCKET_BY),
        rules,
    }
}

fn split_weights(split: &SortedMap<i32>) -> Vec<(&str, u32)> {
    split
        .iter()
        .map(|(variant, &weight)| (variant.as_str(), u32::try_from(weight).unwrap_or(0)))
        .collect()
}

/// The `when` of each coupled rule in effect in `stage` (the rules `describe` lists as
/// `when ... reached ...`): none when the stage is not configured or disabled.
pub(crate) fn active_rule_couplings<'a>(
    spec: &'a FeatureToggleSpec,
    stage: &str,
    couplings: &ActiveCouplings,
) -> Vec<&'a ReleaseCoupling> {
    match plan_stage(spec, stage, couplings) {
        StagePlan::Enabled { rules, .. } => rules.into_iter().filter_map(|r| r.when).collect(),
        StagePlan::NotConfigured { .. } | StagePlan::Disabled { .. } => Vec::new(),
    }
}
