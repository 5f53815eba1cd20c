//! What the annotation `stagecoach.dev/promote: <stage>/<step>` means for a release.
//!
//! A pause step without a duration ends when the annotation names it exactly. People (and
//! GitOps repositories) set the annotation at any time, so this module says what a value
//! names against the release's stages and status:
//!
//! - [`Meaning::Current`]: the pause the release is at; the planner ends it.
//! - [`Meaning::Early`]: a pause without duration the release has not reached yet; it
//!   ends that pause as soon as the release gets there (an early promote).
//! - [`Meaning::Passed`]: a pause without duration the release has already passed
//!   (normally the one this annotation ended).
//! - [`Meaning::NotAPause`], [`Meaning::NoSuchStep`], [`Meaning::UnknownStage`],
//!   [`Meaning::Malformed`]: it can never end anything.
//!
//! [`ignored`] is the planner's view (a note for a condition and a Warning Event, or none);
//! [`next_pause`] is the plugin's (which pause `kubectl stagecoach promote` ends).
//! Step indices are 0-based, as in `status.stages[].step`.

use std::fmt;

use stagecoach_api::release::{
    ReleasePhase, ReleaseSpec, ReleaseStatus, ResolvedStage, StagePhase, Step,
};

use super::plan::PROMOTE_ANNOTATION;

/// A step of a stage: `<stage>/<step index>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub stage: String,
    pub step: usize,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.stage, self.step)
    }
}

/// Parses `<stage>/<step index>` (such as `prod/1`); `None` for anything else.
pub fn parse(value: &str) -> Option<Target> {
    let (stage, step) = value.trim().rsplit_once('/')?;
    if stage.is_empty() || step.is_empty() || !step.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Target {
        stage: stage.to_owned(),
        step: step.parse().ok()?,
    })
}

/// A pause that ends only when promoted.
pub fn is_open_pause(step: &Step) -> bool {
    step.set_weight.is_none() && step.pause.as_ref().is_some_and(|p| p.duration.is_none())
}

/// What a step is, for messages: `setWeight 25`, `pause 10m`, `pause without duration`.
pub fn step_kind(step: &Step) -> String {
    match (step.set_weight, &step.pause) {
        (Some(w), _) => format!("setWeight {w}"),
        (None, Some(p)) => match &p.duration {
            Some(d) => format!("pause {d}"),
            None => "pause without duration".into(),
        },
        (None, None) => "empty step".into(),
    }
}

/// Where the release is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Position {
    /// The stage has not been entered yet (the release has not started, or waits to
    /// enter it); it starts at step 0.
    BeforeStage(String),
    /// Running this step of the stage in progress.
    At(Target),
    /// Every step of the last stage is done: early life support.
    EarlyLifeSupport(String),
    /// The release has ended (or a stage rolled back or failed): no step runs again.
    Ended(Option<ReleasePhase>),
}

/// What the promote logic needs of a release: the stages it goes through (its own, or
/// merged into its Pipeline) and whether `spec.paused` holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub stages: Vec<ResolvedStage>,
    pub paused: bool,
}

impl Route {
    /// The route of a release without a Pipeline.
    pub fn of(spec: &ReleaseSpec) -> Self {
        Self {
            stages: spec.resolved_stages(),
            paused: spec.paused,
        }
    }
}

/// Where the release is, from its status (the first stage that is neither Succeeded nor
/// Skipped, as the planner sees it).
pub fn position(route: &Route, status: Option<&ReleaseStatus>) -> Position {
    let phase = status.and_then(|s| s.phase);
    if phase.is_some_and(ReleasePhase::is_terminal) {
        return Position::Ended(phase);
    }
    for stage in route.stages.clone() {
        let entry = status.and_then(|s| s.stages.iter().find(|e| e.name == stage.name));
        match entry.map(|e| (e.phase, e.step)) {
            None | Some((StagePhase::Pending, _)) => return Position::BeforeStage(stage.name),
            Some((StagePhase::Progressing, step)) => {
                return Position::At(Target {
                    stage: stage.name,
                    step: step.and_then(|s| usize::try_from(s).ok()).unwrap_or(0),
                });
            }
            Some((StagePhase::EarlyLifeSupport, _)) => {
                return Position::EarlyLifeSupport(stage.name);
            }
            Some((StagePhase::RolledBack | StagePhase::Failed | StagePhase::Rejected, _)) => {
                return Position::Ended(phase);
            }
            Some((StagePhase::Succeeded | StagePhase::Skipped, _)) => {}
        }
    }
    Position::Ended(phase)
}

fn stage_of(route: &Route, name: &str) -> Option<(usize, ResolvedStage)> {
    route
        .stages
        .clone()
        .into_iter()
        .enumerate()
        .find(|(_, s)| s.name == name)
}

fn step_at(route: &Route, target: &Target) -> Option<Step> {
    stage_of(route, &target.stage).and_then(|(_, s)| s.steps.get(target.step).cloned())
}

/// The release waits at a pause without duration: the annotation it waits for.
pub fn waiting_for(route: &Route, status: Option<&ReleaseStatus>) -> Option<Target> {
    match position(route, status) {
        Position::At(at) if step_at(route, &at).is_some_and(|s| is_open_pause(&s)) => Some(at),
        _ => None,
    }
}

/// Where the release is and what it waits for, for people: `at dev/0 (setWeight 100,
/// step 1 of 2): it waits for the new pods to pass the gates`.
pub fn describe(route: &Route, status: Option<&ReleaseStatus>) -> String {
    let held = if route.paused {
        "; held by spec.paused (kubectl stagecoach resume)"
    } else {
        ""
    };
    let text = match position(route, status) {
        Position::BeforeStage(stage) => {
            format!("before stage {stage}: it waits to enter it")
        }
        Position::At(at) => {
            let steps = stage_of(route, &at.stage).map_or(0, |(_, s)| s.steps.len());
            match step_at(route, &at) {
                Some(step) => {
                    let waits = if is_open_pause(&step) {
                        format!("it waits for promotion ({PROMOTE_ANNOTATION}={at})")
                    } else if step.set_weight.is_some() {
                        "it waits for the new pods to pass the gates".into()
                    } else {
                        "it continues when the pause ends".into()
                    };
                    format!(
                        "at {at} ({}, step {} of {steps}): {waits}",
                        step_kind(&step),
                        at.step + 1
                    )
                }
                None => format!("at the end of stage {}", at.stage),
            }
        }
        Position::EarlyLifeSupport(stage) => {
            format!("in early life support in stage {stage}: every step is done")
        }
        Position::Ended(phase) => {
            return match phase {
                Some(p) => format!("finished ({})", p.as_str()),
                None => "finished".into(),
            };
        }
    };
    format!("{text}{held}")
}

/// What an annotation value names, against where the release is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Meaning {
    /// The pause without duration the release is at: it ends now.
    Current(Target),
    /// A pause without duration the release has not reached: it ends when reached.
    Early(Target),
    /// A pause without duration the release has already passed.
    Passed(Target),
    /// A step that is not a pause without duration (`kind` says what it is): a promote
    /// never ends it (setWeight steps end when the gates pass, timed pauses by themselves).
    NotAPause { target: Target, kind: String },
    /// The stage has fewer steps.
    NoSuchStep { target: Target, steps: usize },
    /// The release has no such stage.
    UnknownStage(Target),
    /// Not `<stage>/<step index>`.
    Malformed,
}

/// What the annotation value `value` means for this release.
pub fn classify(value: &str, route: &Route, status: Option<&ReleaseStatus>) -> Meaning {
    let Some(target) = parse(value) else {
        return Meaning::Malformed;
    };
    let Some((stage_index, stage)) = stage_of(route, &target.stage) else {
        return Meaning::UnknownStage(target);
    };
    let Some(step) = stage.steps.get(target.step) else {
        return Meaning::NoSuchStep {
            steps: stage.steps.len(),
            target,
        };
    };
    if !is_open_pause(step) {
        return Meaning::NotAPause {
            kind: step_kind(step),
            target,
        };
    }
    let index_of = |name: &str| stage_of(route, name).map_or(usize::MAX, |(i, _)| i);
    let passed = match position(route, status) {
        Position::BeforeStage(current) => stage_index < index_of(&current),
        Position::At(at) if at == target => return Meaning::Current(target),
        Position::At(at) => (stage_index, target.step) < (index_of(&at.stage), at.step),
        Position::EarlyLifeSupport(_) | Position::Ended(_) => true,
    };
    if passed {
        Meaning::Passed(target)
    } else {
        Meaning::Early(target)
    }
}

/// Why the annotation `value` does nothing, for a condition message and a Warning Event;
/// `None` when it is fine: it ends the current pause, waits for a pause ahead, or names a
/// pause already passed while the release does not wait at another one (that is the
/// promote that ended it).
pub fn ignored(value: &str, route: &Route, status: Option<&ReleaseStatus>) -> Option<String> {
    let what = format!("annotation {PROMOTE_ANNOTATION}={value} is ignored");
    let here = describe(route, status);
    let why = match classify(value, route, status) {
        Meaning::Current(_) | Meaning::Early(_) => return None,
        Meaning::Passed(target) => {
            waiting_for(route, status)?;
            format!("the release has already passed {target}")
        }
        Meaning::NotAPause { target, kind } => format!(
            "{target} is a {kind} step, not a pause without duration, so a promote cannot end it"
        ),
        Meaning::NoSuchStep { target, steps } => format!(
            "stage {} has {steps} steps (0 to {}), so there is no step {}",
            target.stage,
            steps.saturating_sub(1),
            target.step
        ),
        Meaning::UnknownStage(target) => format!(
            "this release has no stage {} (its stages: {})",
            target.stage,
            route
                .stages
                .clone()
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Meaning::Malformed => "it is not <stage>/<step index>, such as prod/1".into(),
    };
    Some(format!("{what}: {why}; the release is {here}"))
}

/// The pause `kubectl stagecoach promote` ends: the first pause without duration at or
/// after the current step of the stage in progress (from step 0 of a stage not entered
/// yet). `Err` says where the release is and why there is nothing to promote.
pub fn next_pause(route: &Route, status: Option<&ReleaseStatus>) -> Result<Target, String> {
    let (stage, from) = match position(route, status) {
        Position::BeforeStage(stage) => (stage, 0),
        Position::At(at) => (at.stage, at.step),
        Position::EarlyLifeSupport(_) | Position::Ended(_) => {
            return Err(format!(
                "the release is {}: no pause is left to promote",
                describe(route, status)
            ));
        }
    };
    let steps = stage_of(route, &stage)
        .map(|(_, s)| s.steps)
        .unwrap_or_default();
    steps
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, s)| is_open_pause(s))
        .map(|(step, _)| Target {
            stage: stage.clone(),
            step,
        })
        .ok_or_else(|| {
            format!(
                "stage {stage} has no pause without duration at or after step {stage}/{from}, \
                 so there is nothing to promote; the release is {}",
                describe(route, status)
            )
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use stagecoach_api::release::{
        ContainerImage, Pause, ReleaseType, Stage, StageStatus, Workload,
    };

    use super::*;

    fn weight(w: i32) -> Step {
        Step {
            set_weight: Some(w),
            pause: None,
        }
    }

    fn pause(duration: Option<&str>) -> Step {
        Step {
            set_weight: None,
            pause: Some(Pause {
                duration: duration.map(str::to_owned),
            }),
        }
    }

    /// dev: 100 %, pause; prod: 25 %, pause 10m, pause, 100 %, pause.
    fn spec() -> ReleaseSpec {
        let stage = |name: &str, steps: Vec<Step>| Stage {
            name: name.into(),
            namespace: None,
            steps: Some(steps),
            gates: vec![],
            progress_deadline: None,
            early_life_support: None,
        };
        ReleaseSpec {
            application: "shop".into(),
            version: "2.0.0".into(),
            release_type: ReleaseType::Minor,
            changes: vec![],
            notes: None,
            workloads: vec![Workload {
                deployment: "api".into(),
                containers: vec![ContainerImage {
                    name: "app".into(),
                    image: "shop/api:2".into(),
                }],
            }],
            stages: Some(vec![
                stage("dev", vec![weight(100), pause(None)]),
                stage(
                    "prod",
                    vec![
                        weight(25),
                        pause(Some("10m")),
                        pause(None),
                        weight(100),
                        pause(None),
                    ],
                ),
            ]),
            paused: false,
            abort: false,
        }
    }

    fn entry(name: &str, phase: StagePhase, step: Option<i32>) -> StageStatus {
        StageStatus {
            name: name.into(),
            namespace: format!("shop-{name}"),
            phase,
            step,
            weight: None,
            started_at: None,
            step_started_at: None,
            finished_at: None,
            stable_revisions: vec![],
            gates: vec![],
            message: None,
        }
    }

    /// A live release at `stage/step`.
    fn at(stage: &str, step: i32) -> ReleaseStatus {
        let stages = if stage == "dev" {
            vec![
                entry("dev", StagePhase::Progressing, Some(step)),
                entry("prod", StagePhase::Pending, None),
            ]
        } else {
            vec![
                entry("dev", StagePhase::Succeeded, Some(2)),
                entry(stage, StagePhase::Progressing, Some(step)),
            ]
        };
        ReleaseStatus {
            phase: Some(ReleasePhase::Progressing),
            stages,
            ..ReleaseStatus::default()
        }
    }

    fn target(stage: &str, step: usize) -> Target {
        Target {
            stage: stage.into(),
            step,
        }
    }

    #[test]
    fn parses_stage_and_step() {
        assert_eq!(parse("prod/2"), Some(target("prod", 2)));
        assert_eq!(parse(" dev/0 "), Some(target("dev", 0)));
        for bad in [
            "", "prod", "prod/", "/1", "prod/-1", "prod/+1", "prod/one", "prod/1.0",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_annotation_naming_the_pause_the_release_is_at_ends_it() {
        let status = at("dev", 1);
        assert_eq!(
            classify("dev/1", &Route::of(&spec()), Some(&status)),
            Meaning::Current(target("dev", 1))
        );
        assert_eq!(ignored("dev/1", &Route::of(&spec()), Some(&status)), None);
    }

    #[test]
    fn an_early_promote_names_a_pause_ahead_and_is_not_reported() {
        let spec = spec();
        for (value, status) in [
            ("dev/1", Some(at("dev", 0))),
            ("dev/1", None),
            ("prod/2", Some(at("dev", 1))),
            ("prod/2", Some(at("prod", 0))),
            ("prod/4", Some(at("prod", 2))),
        ] {
            let meaning = classify(value, &Route::of(&spec), status.as_ref());
            assert!(matches!(meaning, Meaning::Early(_)), "{value}: {meaning:?}");
            assert_eq!(
                ignored(value, &Route::of(&spec), status.as_ref()),
                None,
                "{value}"
            );
        }
    }

    #[test]
    fn a_passed_pause_is_reported_only_while_the_release_waits_at_another() {
        let spec = spec();
        // Just promoted: the release runs 100 % in prod, nothing to report.
        let running = at("prod", 3);
        assert_eq!(
            classify("prod/2", &Route::of(&spec), Some(&running)),
            Meaning::Passed(target("prod", 2))
        );
        assert_eq!(ignored("prod/2", &Route::of(&spec), Some(&running)), None);
        // Now it waits at prod/4 and the annotation still says prod/2 (or dev/1).
        let waiting = at("prod", 4);
        for value in ["prod/2", "dev/1"] {
            let note = ignored(value, &Route::of(&spec), Some(&waiting)).unwrap();
            assert!(note.contains("already passed"), "{note}");
            assert!(
                note.contains("it waits for promotion (stagecoach.dev/promote=prod/4)"),
                "{note}"
            );
        }
    }

    #[test]
    fn an_annotation_that_can_never_end_a_pause_is_reported_wherever_the_release_is() {
        let spec = spec();
        let status = at("dev", 1);
        let cases = [
            (
                "dev/0",
                "dev/0 is a setWeight 100 step, not a pause without duration",
            ),
            (
                "prod/1",
                "prod/1 is a pause 10m step, not a pause without duration",
            ),
            (
                "prod/9",
                "stage prod has 5 steps (0 to 4), so there is no step 9",
            ),
            (
                "qa/1",
                "this release has no stage qa (its stages: dev, prod)",
            ),
            ("dev", "it is not <stage>/<step index>"),
        ];
        for (value, why) in cases {
            let note = ignored(value, &Route::of(&spec), Some(&status)).unwrap();
            assert!(
                note.starts_with(&format!(
                    "annotation stagecoach.dev/promote={value} is ignored: {why}"
                )),
                "{note}"
            );
            assert!(
                note.ends_with(
                    "the release is at dev/1 (pause without duration, step 2 of 2): \
                     it waits for promotion (stagecoach.dev/promote=dev/1)"
                ),
                "{note}"
            );
        }
    }

    #[test]
    fn the_issue_case_an_old_promote_of_step_0_is_reported_at_the_pause() {
        let note = ignored("dev/0", &Route::of(&spec()), Some(&at("dev", 1))).unwrap();
        assert!(note.contains("setWeight 100"), "{note}");
        assert!(note.contains("stagecoach.dev/promote=dev/1"), "{note}");
    }

    #[test]
    fn the_plugin_promotes_the_next_pause_without_duration_of_the_stage_in_progress() {
        let spec = spec();
        assert_eq!(next_pause(&Route::of(&spec), None), Ok(target("dev", 1)));
        assert_eq!(
            next_pause(&Route::of(&spec), Some(&at("dev", 0))),
            Ok(target("dev", 1))
        );
        assert_eq!(
            next_pause(&Route::of(&spec), Some(&at("dev", 1))),
            Ok(target("dev", 1))
        );
        // The timed pause prod/1 is skipped: it ends by itself.
        assert_eq!(
            next_pause(&Route::of(&spec), Some(&at("prod", 0))),
            Ok(target("prod", 2))
        );
        assert_eq!(
            next_pause(&Route::of(&spec), Some(&at("prod", 3))),
            Ok(target("prod", 4))
        );
    }

    #[test]
    fn the_plugin_refuses_when_the_stage_has_no_pause_left() {
        let mut spec = spec();
        spec.stages.as_mut().unwrap()[0].steps = Some(vec![weight(50), weight(100)]);
        let err = next_pause(&Route::of(&spec), Some(&at("dev", 1))).unwrap_err();
        assert_eq!(
            err,
            "stage dev has no pause without duration at or after step dev/1, so there is \
             nothing to promote; the release is at dev/1 (setWeight 100, step 2 of 2): it \
             waits for the new pods to pass the gates"
        );
        let mut ended = at("prod", 4);
        ended.phase = Some(ReleasePhase::RolledBack);
        assert_eq!(
            next_pause(&Route::of(&spec), Some(&ended)).unwrap_err(),
            "the release is finished (RolledBack): no pause is left to promote"
        );
        let mut els = at("prod", 5);
        els.phase = Some(ReleasePhase::EarlyLifeSupport);
        els.stages[1].phase = StagePhase::EarlyLifeSupport;
        assert!(
            next_pause(&Route::of(&spec), Some(&els))
                .unwrap_err()
                .contains("early life support in stage prod")
        );
    }
}
