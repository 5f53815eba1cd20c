//! The rules in effect for a toggle in a stage, as short sentences for
//! `status.stages[].activeRules` and `kubectl stagecoach toggle`.

use stagecoach_api::FeatureToggleSpec;
use stagecoach_api::toggle::ClientId;

use super::ActiveCouplings;
use super::stage_rules::{ActiveRule, RuleAction, StagePlan, plan_stage};

/// How many clients of a list a description names before it counts the rest.
const CLIENTS_SHOWN: usize = 10;

/// Describes what `spec` serves in `stage` now: one line per active rule, in order, then
/// what everyone else gets. Rules whose coupling is inactive are not listed.
///
/// ```text
/// clients [acme, globex] -> on
/// when billing-2.4.0 reached prod: clients [acme] -> on
/// split off 80 / on 20
/// otherwise -> off
/// ```
///
/// A disabled stage is `disabled -> off`; a stage the toggle does not list is
/// `not configured -> off`. Split variants are named in bucketing order with their weights.
pub fn describe_active_rules(
    spec: &FeatureToggleSpec,
    stage: &str,
    couplings: &ActiveCouplings,
) -> Vec<String> {
    match plan_stage(spec, stage, couplings) {
        StagePlan::NotConfigured { default_variant } => {
            vec![format!("not configured -> {default_variant}")]
        }
        StagePlan::Disabled { default_variant } => vec![format!("disabled -> {default_variant}")],
        StagePlan::Enabled {
            default_variant,
            rules,
            ..
        } => rules
            .iter()
            .map(describe_rule)
            .chain(std::iter::once(format!("otherwise -> {default_variant}")))
            .collect(),
    }
}

fn describe_rule(rule: &ActiveRule<'_>) -> String {
    let action = match &rule.action {
        RuleAction::Clients { clients, variant } => {
            format!("clients [{}] -> {variant}", client_list(clients))
        }
        RuleAction::Split { weights } => {
            let shares: Vec<String> = weights
                .iter()
                .map(|(variant, weight)| format!("{variant} {weight}"))
                .collect();
            format!("split {}", shares.join(" / "))
        }
    };
    match rule.when {
        Some(when) => format!("when {} reached {}: {action}", when.release, when.reached),
        None => action,
    }
}

fn client_list(clients: &[ClientId]) -> String {
    let shown: Vec<&str> = clients
        .iter()
        .take(CLIENTS_SHOWN)
        .map(|c| c.0.as_str())
        .collect();
    let hidden = clients.len().saturating_sub(CLIENTS_SHOWN);
    if hidden == 0 {
        shown.join(", ")
    } else {
        format!("{}, +{hidden} more", shown.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn describes_the_design_example() {
        let spec: FeatureToggleSpec = serde_json::from_value(json!({
            "application": "billing",
            "variants": {"on": true, "off": false},
            "defaultVariant": "off",
            "stages": {
                "dev": {"state": "Enabled", "defaultVariant": "on"},
                "qa": {"state": "Disabled"},
                "demo": {"rules": [
                    {"clients": ["acme", "globex"], "variant": "on"},
                    {"split": {"on": 20, "off": 80}}
                ]},
                "prod": {"rules": [
                    {"clients": ["acme"], "variant": "on",
                     "when": {"release": "billing-2.4.0", "reached": "prod"}}
                ]}
            }
        }))
        .unwrap();
        let none = ActiveCouplings::none();
        let live: ActiveCouplings = [("billing-2.4.0", "prod")].into_iter().collect();
        assert_eq!(
            describe_active_rules(&spec, "dev", &none),
            ["otherwise -> on"]
        );
        assert_eq!(
            describe_active_rules(&spec, "qa", &none),
            ["disabled -> off"]
        );
        assert_eq!(
            describe_active_rules(&spec, "staging", &none),
            ["not configured -> off"]
        );
        assert_eq!(
            describe_active_rules(&spec, "demo", &none),
            [
                "clients [acme, globex] -> on",
                "split off 80 / on 20",
                "otherwise -> off"
            ]
        );
        assert_eq!(
            describe_active_rules(&spec, "prod", &none),
            ["otherwise -> off"]
        );
        assert_eq!(
            describe_active_rules(&spec, "prod", &live),
            [
                "when billing-2.4.0 reached prod: clients [acme] -> on",
                "otherwise -> off"
            ]
        );
    }

    #[test]
    fn long_client_lists_are_shortened() {
        let clients: Vec<ClientId> = (0..12).map(|i| ClientId(format!("c{i}"))).collect();
        assert_eq!(
            client_list(&clients),
            "c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, +2 more"
        );
    }
}
