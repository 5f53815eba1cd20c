//! Release couplings (`when: {release, reached}`): which are active right now
//! ([`ActiveCouplings`], for evaluation and rendering), which are in effect for one toggle
//! ([`ToggleCouplings`], as its status shows them), and what changed between two of those
//! ([`coupling_changes`], for Events). All data: display text is made only for Events'
//! messages and `describe`.

use std::collections::BTreeSet;

use stagecoach_api::toggle::{ReleaseCoupling, StageCoupling};
use stagecoach_api::{FeatureToggleSpec, FeatureToggleStatus};

use super::application::reason;

/// The (release, stage) pairs whose couplings are active: a rule with
/// `when: {release: R, reached: S}` applies exactly when (R, S) is in the set.
///
/// The operator fills it from the Releases of the toggle's namespace: a release counts as
/// having reached stage S once it has succeeded at S or at a later stage, or is in early
/// life support at S, and stops counting when it is rolled back at S. So for a release
/// now live in prod the set holds (release, dev), (release, qa), (release, demo) and
/// (release, prod).
///
/// A plain set rather than a callback: it is data, so it can be compared to the previous
/// one to detect a change, printed in a log line, and built in a test with one line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ActiveCouplings {
    reached: BTreeSet<(String, String)>,
}

impl ActiveCouplings {
    /// No release has reached any stage: every coupled rule is inactive.
    pub fn none() -> Self {
        Self::default()
    }

    /// Records that `release` has reached `stage`.
    pub fn insert(&mut self, release: impl Into<String>, stage: impl Into<String>) {
        self.reached.insert((release.into(), stage.into()));
    }

    /// Whether `release` counts as having reached `stage`.
    pub fn has_reached(&self, release: &str, stage: &str) -> bool {
        // BTreeSet<(String, String)> cannot be queried with borrowed pairs; the sets are
        // small (releases x stages of one namespace), so a scan is fine.
        self.reached.iter().any(|(r, s)| r == release && s == stage)
    }

    /// Whether a rule coupled by `coupling` applies now.
    pub fn is_active(&self, coupling: &ReleaseCoupling) -> bool {
        self.has_reached(&coupling.release, &coupling.reached)
    }

    /// The (release, stage) pairs, sorted.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.reached.iter().map(|(r, s)| (r.as_str(), s.as_str()))
    }

    /// Whether no release has reached any stage.
    pub fn is_empty(&self) -> bool {
        self.reached.is_empty()
    }
}

impl<R: Into<String>, S: Into<String>> FromIterator<(R, S)> for ActiveCouplings {
    fn from_iter<I: IntoIterator<Item = (R, S)>>(pairs: I) -> Self {
        let mut couplings = Self::none();
        for (release, stage) in pairs {
            couplings.insert(release, stage);
        }
        couplings
    }
}

/// A coupling in effect in one stage of a toggle: `release` has reached `reached`, so
/// the toggle's rules of `stage` that wait for it are served. Several rules waiting for
/// the same release and stage are one coupling (one Event, not one per rule).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Coupling {
    /// The toggle's stage the rules belong to.
    pub stage: String,
    pub release: String,
    pub reached: String,
}

/// What one toggle's status says about couplings, as data: the stages it is served in
/// (pipeline order) and the couplings in effect there. Compared old against new to
/// decide the coupling Events ([`coupling_changes`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToggleCouplings {
    pub stages: Vec<String>,
    pub active: BTreeSet<Coupling>,
}

impl ToggleCouplings {
    /// The couplings in effect in `stage`, as the status lists them.
    pub fn in_stage(&self, stage: &str) -> Vec<StageCoupling> {
        self.active
            .iter()
            .filter(|c| c.stage == stage)
            .map(|c| StageCoupling {
                release: c.release.clone(),
                reached: c.reached.clone(),
            })
            .collect()
    }

    /// What a toggle's status says: its stages and the couplings in effect there. This is
    /// what the next coupling Events are decided against, so they survive a restart.
    pub fn from_status(status: &FeatureToggleStatus) -> Self {
        Self {
            stages: status.stages.iter().map(|s| s.name.clone()).collect(),
            active: status
                .stages
                .iter()
                .flat_map(|s| {
                    s.couplings.iter().map(|c| Coupling {
                        stage: s.name.clone(),
                        release: c.release.clone(),
                        reached: c.reached.clone(),
                    })
                })
                .collect(),
        }
    }
}

/// A coupled rule that became active or inactive in one stage of a toggle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CouplingChange {
    /// The toggle's stage the rule belongs to.
    pub stage: String,
    pub release: String,
    pub reached: String,
    pub active: bool,
}

impl CouplingChange {
    pub fn reason(&self) -> &'static str {
        if self.active {
            reason::COUPLING_ACTIVATED
        } else {
            reason::COUPLING_DEACTIVATED
        }
    }

    pub fn message(&self) -> String {
        if self.active {
            format!(
                "Release {} reached {}: its coupled rules in stage {} are active",
                self.release, self.reached, self.stage
            )
        } else {
            format!(
                "Release {} is no longer at {} (rolled back, failed or gone): its coupled \
                 rules in stage {} are inactive",
                self.release, self.reached, self.stage
            )
        }
    }
}

/// Coupling changes between what `before` and `after` say about one toggle: for each stage
/// in both, each distinct `when: {release, reached}` of the spec's rules that went from
/// inactive to active or back. Without `before` (a new toggle, or one this process has
/// not seen yet) nothing is reported, and neither is a stage missing from `before` (a new
/// stage is not a coupling change).
pub fn coupling_changes(
    spec: &FeatureToggleSpec,
    before: Option<&ToggleCouplings>,
    after: &ToggleCouplings,
) -> Vec<CouplingChange> {
    let Some(before) = before else {
        return Vec::new();
    };
    let mut changes = Vec::new();
    for stage in &after.stages {
        if !before.stages.contains(stage) {
            continue;
        }
        let Some(settings) = spec.stages.get(stage) else {
            continue;
        };
        let mut seen = BTreeSet::new();
        for when in settings.rules.iter().filter_map(|r| r.when.as_ref()) {
            let coupling = Coupling {
                stage: stage.clone(),
                release: when.release.clone(),
                reached: when.reached.clone(),
            };
            let (was, is) = (
                before.active.contains(&coupling),
                after.active.contains(&coupling),
            );
            if was != is && seen.insert(coupling) {
                changes.push(CouplingChange {
                    stage: stage.clone(),
                    release: when.release.clone(),
                    reached: when.reached.clone(),
                    active: is,
                });
            }
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_carries_a_toggles_couplings_and_gives_them_back() {
        let coupling = |stage: &str, release: &str| Coupling {
            stage: stage.into(),
            release: release.into(),
            reached: "prod".into(),
        };
        let couplings = ToggleCouplings {
            stages: vec!["dev".into(), "prod".into()],
            active: [coupling("prod", "shop-1"), coupling("prod", "shop-2")].into(),
        };
        assert!(couplings.in_stage("dev").is_empty());
        let status = FeatureToggleStatus {
            stages: couplings
                .stages
                .iter()
                .map(|name| stagecoach_api::toggle::ToggleStageStatus {
                    name: name.clone(),
                    flag_set_version: None,
                    config_map: None,
                    active_rules: Vec::new(),
                    couplings: couplings.in_stage(name),
                })
                .collect(),
            ..FeatureToggleStatus::default()
        };
        assert_eq!(status.stages[1].couplings.len(), 2);
        assert_eq!(ToggleCouplings::from_status(&status), couplings);
    }

    #[test]
    fn a_coupling_is_active_only_for_its_release_and_stage() {
        let couplings: ActiveCouplings = [("billing-2.4.0", "demo")].into_iter().collect();
        let when = |release: &str, reached: &str| ReleaseCoupling {
            release: release.into(),
            reached: reached.into(),
        };
        assert!(couplings.is_active(&when("billing-2.4.0", "demo")));
        assert!(!couplings.is_active(&when("billing-2.4.0", "prod")));
        assert!(!couplings.is_active(&when("billing-2.5.0", "demo")));
        assert!(!ActiveCouplings::none().is_active(&when("billing-2.4.0", "demo")));
    }

    #[test]
    fn changes_are_per_stage_and_coupling_not_per_rule() {
        let spec: FeatureToggleSpec = serde_json::from_value(serde_json::json!({
            "application": "shop",
            "variants": {"on": true, "off": false},
            "defaultVariant": "off",
            "stages": {
                "demo": {"rules": [
                    {"clients": ["a"], "variant": "on", "when": {"release": "r", "reached": "qa"}},
                    {"clients": ["b"], "variant": "on", "when": {"release": "r", "reached": "qa"}},
                    {"clients": ["c"], "variant": "on", "when": {"release": "r", "reached": "demo"}}
                ]},
                "prod": {"rules": [
                    {"clients": ["a"], "variant": "on", "when": {"release": "r", "reached": "qa"}}
                ]}
            }
        }))
        .unwrap();
        let coupling = |stage: &str, reached: &str| Coupling {
            stage: stage.into(),
            release: "r".into(),
            reached: reached.into(),
        };
        let state = |stages: &[&str], active: &[Coupling]| ToggleCouplings {
            stages: stages.iter().map(|s| (*s).to_owned()).collect(),
            active: active.iter().cloned().collect(),
        };
        let before = state(&["demo"], &[coupling("demo", "demo")]);
        let after = state(
            &["demo", "prod"],
            &[coupling("demo", "qa"), coupling("prod", "qa")],
        );
        let changes: Vec<(String, String, bool)> = coupling_changes(&spec, Some(&before), &after)
            .into_iter()
            .map(|c| (c.stage, c.reached, c.active))
            .collect();
        assert_eq!(
            changes,
            [
                ("demo".to_owned(), "qa".to_owned(), true),
                ("demo".to_owned(), "demo".to_owned(), false),
            ],
            "two rules waiting for (r, qa) are one change; prod is new, so not a change"
        );
        assert!(coupling_changes(&spec, None, &after).is_empty());
        assert!(coupling_changes(&spec, Some(&after), &after).is_empty());
    }
}
