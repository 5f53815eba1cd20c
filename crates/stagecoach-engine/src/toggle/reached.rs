//! What toggles read from Releases: the stages (and stage namespaces) of an application,
//! what "a release reached a stage" means, and so which `when: {release, reached}`
//! couplings are active.
//!
//! Pure: Releases in, plain data out.

use std::collections::{BTreeMap, BTreeSet};

use super::ActiveCouplings;
use crate::acceptance::ACCEPTED;
use stagecoach_api::Release;
use stagecoach_api::names::default_stage_namespace;
use stagecoach_api::pipeline::PipelineSpec;
use stagecoach_api::release::StagePhase;

/// One stage of an application and the namespace its workloads (and its flag set) live in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StageTarget {
    pub name: String,
    pub namespace: String,
}

/// The stages of `application` in pipeline order, from its Releases (any order in,
/// Releases of other applications ignored). The newest Release decides the order and the
/// namespace of the stages it lists; stages only older Releases list follow, newest first.
/// A stage without a valid namespace is left out, and so is every stage of a Release
/// whose spec the operator refused (`Accepted=False`): such a release never ships, so its
/// stages (a typo, a shared namespace) must not become flag-set targets.
pub fn application_stages<'a>(
    application: &str,
    releases: impl IntoIterator<Item = &'a Release>,
) -> Vec<StageTarget> {
    let mut own: Vec<&Release> = releases
        .into_iter()
        .filter(|r| r.spec.application == application && !refused(r))
        .collect();
    own.sort_by(|a, b| newest_first(a, b));
    let mut stages: Vec<StageTarget> = Vec::new();
    for release in own {
        for stage in release.spec.resolved_stages() {
            let Some(namespace) = stage.namespace else {
                continue;
            };
            if stages.iter().all(|s| s.name != stage.name) {
                stages.push(StageTarget {
                    name: stage.name,
                    namespace,
                });
            }
        }
    }
    stages
}

/// True when the operator refused the Release's spec (`Accepted=False`).
pub fn refused(release: &Release) -> bool {
    release.status.as_ref().is_some_and(|status| {
        status
            .conditions
            .iter()
            .any(|c| c.r#type == ACCEPTED && c.status == stagecoach_api::ConditionStatus::False)
    })
}

fn newest_first(a: &Release, b: &Release) -> std::cmp::Ordering {
    let created = |r: &Release| r.metadata.creation_timestamp.as_ref().map(|t| t.0);
    created(b)
        .cmp(&created(a))
        .then_with(|| b.metadata.name.cmp(&a.metadata.name))
}

/// The stages `release` has reached, in pipeline order: a stage counts once the release
/// succeeded there or at a later stage, or is in early life support there; it does not
/// count where the release was rolled back or failed.
pub fn reached_stages(release: &Release) -> Vec<String> {
    let Some(status) = &release.status else {
        return Vec::new();
    };
    let mut reached = Vec::new();
    let mut later_reached = false;
    for stage in status.stages.iter().rev() {
        match stage.phase {
            StagePhase::Succeeded | StagePhase::EarlyLifeSupport => {
                later_reached = true;
                reached.push(stage.name.clone());
            }
            StagePhase::RolledBack | StagePhase::Failed | StagePhase::Rejected => {}
            StagePhase::Pending | StagePhase::Progressing | StagePhase::Skipped => {
                if later_reached {
                    reached.push(stage.name.clone());
                }
            }
        }
    }
    reached.reverse();
    reached
}

/// The active couplings among `releases` (all of one namespace), limited to the
/// releases named in `wanted`.
pub fn active_couplings<'a>(
    releases: impl IntoIterator<Item = &'a Release>,
    wanted: &BTreeSet<&str>,
) -> ActiveCouplings {
    let mut couplings = ActiveCouplings::none();
    for release in releases {
        let name = release.metadata.name.as_deref().unwrap_or_default();
        if !wanted.contains(name) {
            continue;
        }
        for stage in reached_stages(release) {
            couplings.insert(name, stage);
        }
    }
    couplings
}

/// Every Release of a namespace by name, with the stage names it goes through: what
/// `when` rules are checked against.
pub fn release_stage_names<'a>(
    releases: impl IntoIterator<Item = &'a Release>,
) -> BTreeMap<String, Vec<String>> {
    releases
        .into_iter()
        .filter_map(|r| {
            let name = r.metadata.name.clone()?;
            let stages = stage_list(r).into_iter().map(|(name, _)| name).collect();
            Some((name, stages))
        })
        .collect()
}

/// The stages a release goes through, with their namespaces: as its status lists them
/// once the operator planned it (with a Pipeline, the Pipeline's stages), else as its
/// spec says.
fn stage_list(release: &Release) -> Vec<(String, Option<String>)> {
    match release.status.as_ref().filter(|s| !s.stages.is_empty()) {
        Some(status) => status
            .stages
            .iter()
            .map(|s| {
                let namespace = (!s.namespace.is_empty()).then(|| s.namespace.clone());
                (s.name.clone(), namespace)
            })
            .collect(),
        None => release
            .spec
            .resolved_stages()
            .into_iter()
            .map(|s| (s.name, s.namespace))
            .collect(),
    }
}

/// The stages of an application that has a Pipeline: the Pipeline's, in its order, so
/// toggles are served there before the first Release exists.
pub fn pipeline_stages(application: &str, pipeline: &PipelineSpec) -> Vec<StageTarget> {
    pipeline
        .stages
        .iter()
        .filter_map(|stage| {
            let namespace = stage
                .namespace
                .clone()
                .or_else(|| default_stage_namespace(application, &stage.name))?;
            Some(StageTarget {
                name: stage.name.clone(),
                namespace,
            })
        })
        .collect()
}

/// What about one Release matters to toggles: a change here is what re-evaluates the
/// toggles of its application and those coupled to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseFacts {
    pub application: String,
    pub stages: Vec<(String, Option<String>)>,
    pub reached: Vec<String>,
    pub refused: bool,
}

impl ReleaseFacts {
    pub fn of(release: &Release) -> Self {
        Self {
            application: release.spec.application.clone(),
            stages: release
                .spec
                .resolved_stages()
                .into_iter()
                .map(|s| (s.name, s.namespace))
                .collect(),
            reached: reached_stages(release),
            refused: refused(release),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::json;
    use stagecoach_api::ReleaseStatus;
    use stagecoach_api::release::{ReleasePhase, StageStatus};

    use super::*;

    /// A Release of `application` created `age` seconds before a fixed instant, with the
    /// default stages unless `stages` lists (name, namespace) pairs.
    pub fn release(name: &str, application: &str, age: i64, stages: &[(&str, &str)]) -> Release {
        let mut spec = json!({
            "application": application, "version": "1.0.0",
            "workloads": [{"deployment": "api", "containers": [{"name": "api", "image": "x"}]}]
        });
        if !stages.is_empty() {
            spec["stages"] = stages
                .iter()
                .map(|(name, ns)| json!({"name": name, "namespace": ns}))
                .collect();
        }
        let mut release = Release::new(name, serde_json::from_value(spec).unwrap());
        release.metadata = serde_json::from_value(json!({
            "name": name,
            "namespace": "team",
            "creationTimestamp": chrono::DateTime::from_timestamp(1_800_000_000 - age, 0)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }))
        .unwrap();
        release
    }

    /// Sets the phase of each listed stage (and the release phase).
    pub fn with_phases(
        mut release: Release,
        phase: ReleasePhase,
        stages: &[(&str, StagePhase)],
    ) -> Release {
        release.status = Some(ReleaseStatus {
            phase: Some(phase),
            stages: stages
                .iter()
                .map(|(name, phase)| StageStatus {
                    name: (*name).into(),
                    namespace: format!("ns-{name}"),
                    phase: *phase,
                    step: None,
                    weight: None,
                    started_at: None,
                    step_started_at: None,
                    finished_at: None,
                    stable_revisions: vec![],
                    gates: vec![],
                    message: None,
                })
                .collect(),
            ..ReleaseStatus::default()
        });
        release
    }

    fn names(stages: &[StageTarget]) -> Vec<(&str, &str)> {
        stages
            .iter()
            .map(|s| (s.name.as_str(), s.namespace.as_str()))
            .collect()
    }

    #[test]
    fn stages_come_from_the_newest_release_first() {
        let old = release("a-1", "a", 100, &[("dev", "a-dev"), ("legacy", "a-old")]);
        let new = release("a-2", "a", 10, &[("dev", "dev-2"), ("prod", "a-prod")]);
        let other = release("b-1", "b", 5, &[("qa", "b-qa")]);
        let stages = application_stages("a", [&old, &new, &other]);
        assert_eq!(
            names(&stages),
            [("dev", "dev-2"), ("prod", "a-prod"), ("legacy", "a-old")]
        );
        let defaults = application_stages("b", [&release("b-2", "b", 1, &[])]);
        assert_eq!(
            names(&defaults),
            [
                ("dev", "b-dev"),
                ("qa", "b-qa"),
                ("demo", "b-demo"),
                ("prod", "b-prod")
            ]
        );
        assert!(application_stages("c", [&old]).is_empty());

        // A newer Release whose spec was refused contributes no stages.
        let mut refused = release("a-3", "a", 1, &[("dev", "shared"), ("qa", "shared")]);
        refused.status = Some(ReleaseStatus {
            conditions: vec![stagecoach_api::condition::Condition::new(
                ACCEPTED,
                stagecoach_api::ConditionStatus::False,
                "DuplicateNamespace",
                "stages share a namespace",
                Some(1),
                chrono::DateTime::UNIX_EPOCH,
            )],
            ..ReleaseStatus::default()
        });
        assert_eq!(
            names(&application_stages("a", [&old, &new, &refused])),
            [("dev", "dev-2"), ("prod", "a-prod"), ("legacy", "a-old")]
        );
        assert_ne!(ReleaseFacts::of(&refused), {
            let mut accepted = refused.clone();
            accepted.status = None;
            ReleaseFacts::of(&accepted)
        });
    }

    type Case<'a> = (Vec<(&'a str, StagePhase)>, Vec<&'a str>);

    #[test]
    fn reached_follows_success_and_stops_at_rollback() {
        use StagePhase::{
            EarlyLifeSupport, Failed, Pending, Progressing, RolledBack, Skipped, Succeeded,
        };
        let r = || release("r", "a", 0, &[]);
        let cases: Vec<Case> = vec![
            (vec![], vec![]),
            (
                vec![("dev", Succeeded), ("qa", Progressing), ("demo", Pending)],
                vec!["dev"],
            ),
            (
                vec![("dev", Succeeded), ("qa", Succeeded), ("demo", Succeeded)],
                vec!["dev", "qa", "demo"],
            ),
            (
                vec![
                    ("dev", Skipped),
                    ("qa", Succeeded),
                    ("demo", EarlyLifeSupport),
                ],
                vec!["dev", "qa", "demo"],
            ),
            (
                vec![("dev", Succeeded), ("qa", Succeeded), ("demo", RolledBack)],
                vec!["dev", "qa"],
            ),
            (
                vec![("dev", Succeeded), ("qa", Failed), ("demo", Skipped)],
                vec!["dev"],
            ),
        ];
        for (stages, expected) in cases {
            let release = with_phases(r(), ReleasePhase::Progressing, &stages);
            assert_eq!(reached_stages(&release), expected, "{stages:?}");
        }
    }

    #[test]
    fn couplings_only_for_wanted_releases() {
        let live = with_phases(
            release("a-1", "a", 0, &[]),
            ReleasePhase::EarlyLifeSupport,
            &[
                ("dev", StagePhase::Succeeded),
                ("prod", StagePhase::EarlyLifeSupport),
            ],
        );
        let other = with_phases(
            release("b-1", "b", 0, &[]),
            ReleasePhase::Succeeded,
            &[("dev", StagePhase::Succeeded)],
        );
        let couplings = active_couplings([&live, &other], &BTreeSet::from(["a-1"]));
        let pairs: Vec<(&str, &str)> = couplings.iter().collect();
        assert_eq!(pairs, [("a-1", "dev"), ("a-1", "prod")]);
    }

    #[test]
    fn facts_change_with_reached_stages_only() {
        let pending = release("a-1", "a", 0, &[]);
        let mut progressing = with_phases(
            pending.clone(),
            ReleasePhase::Progressing,
            &[("dev", StagePhase::Progressing)],
        );
        assert_eq!(ReleaseFacts::of(&pending), ReleaseFacts::of(&progressing));
        progressing = with_phases(
            progressing,
            ReleasePhase::Progressing,
            &[("dev", StagePhase::Succeeded)],
        );
        assert_ne!(ReleaseFacts::of(&pending), ReleaseFacts::of(&progressing));
    }
}
