//! What each command that changes a Release would do, decided from the Release alone:
//! the patch to send and what to tell the user, or why it cannot be done (printed to
//! stderr, exit status 1).

use kube::ResourceExt;
use serde_json::{Value, json};
use stagecoach_api::{Pipeline, Release};
use stagecoach_engine::pipeline::{Governing, pipelines_of, resolve_stages};
use stagecoach_engine::release::plan::PROMOTE_ANNOTATION;
use stagecoach_engine::release::promote::{self, Meaning, Position, Route};

/// A change to request.
#[derive(Debug, PartialEq)]
pub struct Request {
    /// Merge patch for the Release; `None` when nothing needs to change.
    pub patch: Option<Value>,
    /// What to print once it is done.
    pub message: String,
}

/// The stages `release` goes through, as the operator resolves them: merged into the
/// Pipeline of its application among `pipelines` (those of its namespace), or its own
/// when there is none. A release its Pipeline refuses (or that two Pipelines claim) does
/// not run; its own stages then say where it would be.
pub fn route(release: &Release, pipelines: &[Pipeline]) -> Route {
    let namespace = release.namespace();
    let here: Vec<&Pipeline> = pipelines
        .iter()
        .filter(|p| p.namespace() == namespace)
        .collect();
    let claiming = pipelines_of(&release.spec.application, &here);
    let governing = match claiming.as_slice() {
        [] => Governing::None,
        [one] => Governing::Pipeline(one.metadata.name.as_deref().unwrap_or_default(), &one.spec),
        _ => return Route::of(&release.spec),
    };
    match resolve_stages(&release.spec, governing) {
        Ok(stages) => Route {
            stages,
            paused: release.spec.paused,
        },
        Err(_) => Route::of(&release.spec),
    }
}

fn finished(release: &Release, route: &Route) -> Option<String> {
    match promote::position(route, release.status.as_ref()) {
        Position::Ended(_) => Some(format!(
            "release {} has {}",
            release.name_any(),
            here(release, route)
        )),
        _ => None,
    }
}

fn here(release: &Release, route: &Route) -> String {
    promote::describe(route, release.status.as_ref())
}

/// `promote [--stage S] [--step N]`: the pause to end. Without `--step`, the next pause
/// without duration at or after the current step of the stage in progress.
pub fn promote(
    release: &Release,
    route: &Route,
    stage: Option<&str>,
    step: Option<usize>,
) -> Result<Request, String> {
    let name = release.name_any();
    if let Some(why) = finished(release, route) {
        return Err(format!("{why}: nothing to promote"));
    }
    let status = release.status.as_ref();
    let target = match step {
        None => promote::next_pause(route, status)
            .map_err(|why| format!("cannot promote release {name}: {why}"))?,
        Some(step) => {
            let stage = match stage {
                Some(stage) => stage.to_owned(),
                None => match promote::position(route, status) {
                    Position::At(at) => at.stage,
                    Position::BeforeStage(stage) => stage,
                    _ => {
                        return Err(format!(
                            "cannot promote release {name}: it has no stage in progress \
                             (it is {}); name one with --stage",
                            here(release, route)
                        ));
                    }
                },
            };
            promote::Target { stage, step }
        }
    };
    let value = target.to_string();
    let when = match promote::classify(&value, route, status) {
        Meaning::Current(_) => "the release waits there now".to_owned(),
        Meaning::Early(_) => format!(
            "it ends that pause when the release gets there; the release is {}",
            here(release, route)
        ),
        Meaning::Passed(t) => {
            return Err(format!(
                "cannot promote {t}: release {name} has already passed it; it is {}",
                here(release, route)
            ));
        }
        Meaning::NotAPause { target, kind } => {
            return Err(format!(
                "cannot promote {target}: it is a {kind} step, not a pause without duration \
                 (setWeight steps end when the gates pass, timed pauses by themselves); \
                 release {name} is {}",
                here(release, route)
            ));
        }
        Meaning::NoSuchStep { target, steps } => {
            return Err(format!(
                "cannot promote {target}: stage {} has {steps} steps, numbered 0 to {}; \
                 release {name} is {}",
                target.stage,
                steps.saturating_sub(1),
                here(release, route)
            ));
        }
        Meaning::UnknownStage(target) => {
            return Err(format!(
                "cannot promote {target}: release {name} has no stage {} (its stages: {})",
                target.stage,
                route
                    .stages
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Meaning::Malformed => unreachable!("a Target always prints as <stage>/<step>"),
    };
    Ok(Request {
        patch: Some(json!({"metadata": {"annotations": {PROMOTE_ANNOTATION: value}}})),
        message: format!(
            "release {name}: promote {value} requested ({PROMOTE_ANNOTATION}={value}): {when}"
        ),
    })
}

/// `pause`: hold before the next step.
pub fn pause(release: &Release, route: &Route) -> Result<Request, String> {
    let name = release.name_any();
    if let Some(why) = finished(release, route) {
        return Err(format!("{why}: nothing to pause"));
    }
    if release.spec.paused {
        return Ok(Request {
            patch: None,
            message: format!("release {name} is already paused (spec.paused: true)"),
        });
    }
    Ok(Request {
        patch: Some(json!({"spec": {"paused": true}})),
        message: format!("release {name}: pause requested; no new step starts"),
    })
}

/// `resume`: let a paused release continue.
pub fn resume(release: &Release, route: &Route) -> Result<Request, String> {
    let name = release.name_any();
    if let Some(why) = finished(release, route) {
        return Err(format!("{why}: nothing to resume"));
    }
    if !release.spec.paused {
        let hint = if promote::waiting_for(route, release.status.as_ref()).is_some() {
            format!("; to end the pause step, run kubectl stagecoach promote {name}")
        } else {
            String::new()
        };
        return Err(format!(
            "release {name} is not paused (spec.paused is false), so there is nothing to \
             resume; it is {}{hint}",
            here(release, route)
        ));
    }
    Ok(Request {
        patch: Some(json!({"spec": {"paused": false}})),
        message: format!("release {name}: resume requested"),
    })
}

/// `abort`: roll back the stage in progress and stop.
pub fn abort(release: &Release, route: &Route) -> Result<Request, String> {
    let name = release.name_any();
    if let Some(why) = finished(release, route) {
        return Err(format!(
            "{why}: nothing to abort (a finished release changes nothing any more)"
        ));
    }
    if release.spec.abort {
        return Ok(Request {
            patch: None,
            message: format!("release {name}: abort was already requested (spec.abort: true)"),
        });
    }
    Ok(Request {
        patch: Some(json!({"spec": {"abort": true}})),
        message: format!("release {name}: abort requested; the stage in progress is rolled back"),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use stagecoach_api::release::StagePhase;

    use super::*;
    use crate::render::tests::fixture;

    fn route_of(release: &Release) -> Route {
        Route::of(&release.spec)
    }

    fn outcome(result: Result<Request, String>) -> String {
        match result {
            Ok(Request {
                patch: Some(patch),
                message,
            }) => format!("ok: {message}\npatch: {patch}"),
            Ok(Request {
                patch: None,
                message,
            }) => format!("ok, no change: {message}"),
            Err(why) => format!("refused: {why}"),
        }
    }

    fn pipeline(name: &str, namespace: &str, application: Option<&str>) -> Pipeline {
        serde_json::from_value(json!({
            "apiVersion": "stagecoach.dev/v1alpha1", "kind": "Pipeline",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "application": application,
                "stages": [
                    {"name": "dev"}, {"name": "qa"}, {"name": "demo"},
                    {"name": "prod", "approval": {"required": 2}}
                ]
            }
        }))
        .unwrap()
    }

    fn stage_names(route: &Route) -> Vec<&str> {
        route.stages.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn the_route_follows_the_applications_pipeline_in_the_releases_namespace() {
        let release = fixture("running");
        // Its own stages: no Pipeline, or only other applications' or namespaces'.
        let own = route(
            &release,
            &[
                pipeline("other", "shop", Some("other")),
                pipeline("shop", "elsewhere", None),
            ],
        );
        assert_eq!(stage_names(&own), ["dev", "qa", "prod"]);
        // The Pipeline's stages, in its order, keeping the release's own steps where the
        // Pipeline leaves them open.
        let governed = route(&release, &[pipeline("shop", "shop", None)]);
        assert_eq!(stage_names(&governed), ["dev", "qa", "demo", "prod"]);
        assert_eq!(governed.stages[0].steps, own.stages[0].steps);
        assert!(governed.stages[3].approval.is_some());
        // Two Pipelines claim the application: it does not run; its own stages say where
        // it would be.
        let conflict = route(
            &release,
            &[
                pipeline("shop", "shop", None),
                pipeline("shop-too", "shop", Some("shop")),
            ],
        );
        assert_eq!(stage_names(&conflict), ["dev", "qa", "prod"]);
    }

    #[test]
    fn promote_while_the_stage_still_runs_its_first_step_targets_the_pause_ahead() {
        // The case: dev is [setWeight 100, pause {}] and still at step 0.
        insta::assert_snapshot!(outcome(promote(
            &fixture("running"),
            &route_of(&fixture("running")),
            None,
            None
        )));
    }

    #[test]
    fn promote_at_the_pause_targets_it() {
        insta::assert_snapshot!(outcome(promote(
            &fixture("waiting"),
            &route_of(&fixture("waiting")),
            None,
            None
        )));
    }

    #[test]
    fn promote_with_a_step_names_one_explicitly() {
        let running = fixture("running");
        let cases = [
            (None, 1),
            (Some("dev"), 1),
            (Some("prod"), 1),
            (None, 0),
            (Some("prod"), 2),
            (None, 5),
            (Some("staging"), 1),
        ];
        let text = cases
            .iter()
            .map(|(stage, step)| {
                format!(
                    "--stage {} --step {step}\n{}",
                    stage.unwrap_or("-"),
                    outcome(promote(&running, &route_of(&running), *stage, Some(*step)))
                )
            })
            .collect::<Vec<_>>()
            .join("\n\n");
        insta::assert_snapshot!(text);
    }

    #[test]
    fn promote_of_a_passed_pause_is_refused() {
        // In prod at 100 %: dev's pause is behind it.
        let mut release = fixture("running");
        let status = release.status.as_mut().unwrap();
        status.stages[0].phase = StagePhase::Succeeded;
        status.stages[1].phase = StagePhase::Succeeded;
        status.stages[2].phase = StagePhase::Progressing;
        status.stages[2].step = Some(2);
        insta::assert_snapshot!(outcome(promote(
            &release,
            &route_of(&release),
            Some("dev"),
            Some(1)
        )));
    }

    #[test]
    fn promote_of_a_step_that_is_not_an_open_pause_is_refused() {
        insta::assert_snapshot!(outcome(promote(
            &fixture("waiting"),
            &route_of(&fixture("waiting")),
            Some("dev"),
            Some(0)
        )));
    }

    #[test]
    fn promote_with_no_pause_left_in_the_stage_is_refused() {
        let mut release = fixture("waiting");
        release.spec.stages.as_mut().unwrap()[0]
            .steps
            .as_mut()
            .unwrap()[1]
            .pause
            .as_mut()
            .unwrap()
            .duration = Some("10m".into());
        insta::assert_snapshot!(outcome(promote(&release, &route_of(&release), None, None)));
    }

    #[test]
    fn commands_on_a_finished_release_are_refused() {
        let release = fixture("rolled-back");
        let text = [
            (
                "promote",
                promote(&release, &route_of(&release), None, None),
            ),
            ("pause", pause(&release, &route_of(&release))),
            ("resume", resume(&release, &route_of(&release))),
            ("abort", abort(&release, &route_of(&release))),
        ]
        .into_iter()
        .map(|(command, result)| format!("{command}: {}", outcome(result)))
        .collect::<Vec<_>>()
        .join("\n");
        insta::assert_snapshot!(text);
    }

    #[test]
    fn pause_resume_and_abort_of_a_live_release() {
        let waiting = fixture("waiting");
        let mut paused = fixture("running");
        paused.spec.paused = true;
        let mut aborted = fixture("running");
        aborted.spec.abort = true;
        let text = [
            ("pause (waiting)", pause(&waiting, &route_of(&waiting))),
            ("pause (paused)", pause(&paused, &route_of(&paused))),
            (
                "resume (waiting, not paused)",
                resume(&waiting, &route_of(&waiting)),
            ),
            ("resume (paused)", resume(&paused, &route_of(&paused))),
            ("abort (waiting)", abort(&waiting, &route_of(&waiting))),
            ("abort (aborting)", abort(&aborted, &route_of(&aborted))),
        ]
        .into_iter()
        .map(|(command, result)| format!("{command}: {}", outcome(result)))
        .collect::<Vec<_>>()
        .join("\n");
        insta::assert_snapshot!(text);
    }
}
