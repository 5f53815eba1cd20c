//! What the release end-to-end tests share: the pipeline under test, the [`Fixture`]
//! (pipeline, operator, Releases API) and the assertions on what a user sees. Included
//! with `mod release_support;` by each release test binary.

#![allow(dead_code, clippy::unwrap_used)] // each test binary uses a different part

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use stagecoach_api::condition::ConditionStatus;
use stagecoach_api::release::{ReleasePhase, StagePhase};
use stagecoach_api::{Release, ReleaseStatus};
use stagecoach_e2e::{
    Operator, PIPELINE_DEPLOYMENT, Pipeline, client, eventually, install_crds, pod_image,
    pod_is_ready,
};

pub const IGNORE: &str = "needs the test control plane: run `cargo xtask test`";
pub const APP: &str = "shop";
pub const OLD_IMAGE: &str = "example/shop-api:1.0.0";
pub const NEW_IMAGE: &str = "example/shop-api:1.1.0";
pub const NEWER_IMAGE: &str = "example/shop-api:1.2.0";
pub const BAD_IMAGE: &str = "example/shop-api:bad-1.1.1";
/// Stages and replicas: small, and more in prod so that canary sizes differ by weight.
pub const STAGES: [(&str, i32); 4] = [("dev", 2), ("qa", 2), ("demo", 2), ("prod", 4)];
pub const PROD_REPLICAS: i32 = 4;
pub const CANARY_SUFFIX: &str = "-canary";
pub const UNHEALTHY_LABEL: &str = "stagecoach.dev/test-unhealthy";
/// Long enough for a whole pipeline with fast pods, even with four tests at once.
pub const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(240);

// ----- the pipeline under test ---------------------------------------------------------------

/// prod's canary steps: 25 %, pause, 50 %, pause, 100 %.
pub fn canary_steps(pause: &str) -> Value {
    json!([
        {"setWeight": 25}, {"pause": {"duration": pause}},
        {"setWeight": 50}, {"pause": {"duration": pause}},
        {"setWeight": 100}
    ])
}

/// Canary pods the user should see at weight `w` next to `desired` stable pods:
/// round(w * d / (100 - w)), at least one (so that canary pods are about w % of all).
pub fn expected_canary(weight: i32, desired: i32) -> i32 {
    let exact = f64::from(weight * desired) / f64::from(100 - weight);
    // Small positive numbers: the rounding is exact.
    #[allow(clippy::cast_possible_truncation)]
    let rounded = exact.round() as i32;
    rounded.max(1)
}

/// `spec.stages` for a pipeline: dev, qa and demo with one step to 100 %, prod with
/// `prod_steps` and early life support of `early_life`.
pub fn stages_spec(pipeline: &Pipeline, prod_steps: &Value, early_life: &str) -> Vec<Value> {
    pipeline
        .stages
        .iter()
        .map(|(stage, ns)| {
            let mut s = json!({"name": stage, "namespace": ns.name, "progressDeadline": "60s"});
            if stage == "prod" {
                s["steps"] = prod_steps.clone();
                s["earlyLifeSupport"] = json!({"duration": early_life});
            }
            s
        })
        .collect()
}

pub fn is_terminal(phase: Option<ReleasePhase>) -> bool {
    matches!(
        phase,
        Some(
            ReleasePhase::Succeeded
                | ReleasePhase::RolledBack
                | ReleasePhase::Failed
                | ReleasePhase::Superseded
        )
    )
}

pub fn status(release: &Release) -> ReleaseStatus {
    release.status.clone().unwrap_or_default()
}

pub fn stage_phase(release: &Release, stage: &str) -> Option<StagePhase> {
    status(release)
        .stages
        .iter()
        .find(|s| s.name == stage)
        .map(|s| s.phase)
}

pub fn stage_step(release: &Release, stage: &str) -> Option<i32> {
    status(release)
        .stages
        .iter()
        .find(|s| s.name == stage)
        .and_then(|s| s.step)
}

pub fn condition(release: &Release, type_: &str) -> Option<(ConditionStatus, String)> {
    status(release)
        .conditions
        .iter()
        .find(|c| c.r#type == type_)
        .map(|c| (c.status, c.reason.clone()))
}

/// (stage, reason) of every timeline entry, oldest first.
pub fn timeline_shape(release: &Release) -> Vec<(String, String)> {
    status(release)
        .timeline
        .iter()
        .map(|t| (t.stage.clone().unwrap_or_default(), t.reason.clone()))
        .collect()
}

/// The timeline a release that goes through every stage without incident writes.
pub fn successful_timeline(stages: &[(&str, usize)]) -> Vec<(String, String)> {
    let mut shape = Vec::new();
    let (last, _) = stages.last().copied().unwrap_or_default();
    for (stage, steps) in stages {
        shape.push(((*stage).to_owned(), "StageStarted".to_owned()));
        for _ in 0..*steps {
            shape.push(((*stage).to_owned(), "StepCompleted".to_owned()));
        }
        if *stage == last {
            shape.push(((*stage).to_owned(), "EarlyLifeSupport".to_owned()));
        }
        shape.push(((*stage).to_owned(), "StageSucceeded".to_owned()));
    }
    shape.push((String::new(), "Succeeded".to_owned()));
    shape
}

/// Entries that mark progress and so must never appear twice.
pub fn repeated_steps(release: &Release) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut repeated = Vec::new();
    for t in &status(release).timeline {
        if !matches!(t.reason.as_str(), "StageStarted" | "StepCompleted") {
            continue;
        }
        let key = (t.stage.clone(), t.reason.clone(), t.message.clone());
        if !seen.insert(key) {
            repeated.push(format!("{:?} {} {}", t.stage, t.reason, t.message));
        }
    }
    repeated
}

/// What the operator makes of a stable template at 100 %: the release's image and its
/// rollout label (it watches only pods that carry it), everything else unchanged.
pub fn released(template: &Value, image: &str) -> Value {
    let mut out = with_image(template, image);
    out["metadata"]["labels"]["stagecoach.dev/rollout"] = json!("true");
    out
}

pub fn with_image(template: &Value, image: &str) -> Value {
    let mut out = template.clone();
    for c in out["spec"]["containers"].as_array_mut().unwrap() {
        if c["name"] == "app" {
            c["image"] = json!(image);
        }
    }
    out
}

/// How [`Fixture::finish_with`] ends the operator.
enum Stop {
    Term,
    Kill,
}

/// What one test works with: the pipeline, its operator, the Releases API, and every
/// stage's pod template as it was before any release.
pub struct Fixture {
    pub client: Client,
    pub pipeline: Pipeline,
    pub operator: Option<Operator>,
    pub releases: Api<Release>,
    pub before: BTreeMap<String, Value>,
    pub started: Instant,
}

impl Fixture {
    pub async fn start(prefix: &str) -> Result<Self> {
        let client = client().await?;
        install_crds(&client).await?;
        let pipeline = Pipeline::create(&client, prefix, &STAGES, OLD_IMAGE).await?;
        let operator = Operator::start_ready(prefix, &pipeline.home.name).await?;
        let releases = Api::namespaced(client.clone(), &pipeline.home.name);
        let mut fixture = Self {
            client,
            pipeline,
            operator: Some(operator),
            releases,
            before: BTreeMap::new(),
            started: Instant::now(),
        };
        for (stage, _) in STAGES {
            let template = fixture.template(stage).await?;
            fixture.before.insert(stage.to_owned(), template);
        }
        Ok(fixture)
    }

    pub fn operator(&self) -> &Operator {
        self.operator.as_ref().unwrap()
    }

    pub fn ns(&self, stage: &str) -> &str {
        self.pipeline.namespace(stage)
    }

    pub fn before(&self, stage: &str) -> &Value {
        &self.before[stage]
    }

    pub fn deployments(&self, stage: &str) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), self.ns(stage))
    }

    pub fn pods(&self, stage: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), self.ns(stage))
    }

    pub async fn create_release(&self, doc: &Value) -> Result<()> {
        let release: Release = serde_json::from_value(doc.clone())?;
        self.releases
            .create(&PostParams::default(), &release)
            .await
            .context("creating the Release")?;
        Ok(())
    }

    pub async fn patch_spec(&self, name: &str, spec: Value) -> Result<()> {
        self.releases
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": spec })),
            )
            .await?;
        Ok(())
    }

    pub async fn release(&self, name: &str) -> Result<Release> {
        Ok(self.releases.get(name).await?)
    }

    /// Waits until `check` holds for the Release; on timeout the error shows its status
    /// and the end of the operator log.
    pub async fn wait_release(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Release) -> bool,
    ) -> Result<Release> {
        let found = eventually(timeout, || async {
            let r = self.release(name).await?;
            Ok(check(&r).then_some(r))
        })
        .await;
        match found {
            Ok(r) => Ok(r),
            Err(e) => Err(e.context(self.explain(name, what).await)),
        }
    }

    /// Waits for a phase; a different final phase fails at once.
    pub async fn wait_phase(&self, name: &str, phase: ReleasePhase) -> Result<Release> {
        let found = eventually(ROLLOUT_TIMEOUT, || async {
            let r = self.release(name).await?;
            let current = status(&r).phase;
            if current == Some(phase) {
                return Ok(Some(r));
            }
            if is_terminal(current) {
                bail!("the release ended {current:?}, not {phase:?}");
            }
            Ok(None)
        })
        .await;
        match found {
            Ok(r) => Ok(r),
            Err(e) => Err(e.context(self.explain(name, &format!("phase {phase:?}")).await)),
        }
    }

    pub async fn explain(&self, name: &str, what: &str) -> String {
        let current = self
            .releases
            .get(name)
            .await
            .ok()
            .and_then(|r| r.status)
            .map(|s| serde_json::to_string_pretty(&s).unwrap_or_default())
            .unwrap_or_default();
        format!(
            "release {name} never reached {what}; status:\n{current}\noperator log (last lines, {}):\n{}",
            self.operator().log_path().display(),
            self.operator().log_tail(40)
        )
    }

    /// The stable Deployment's pod template, as JSON.
    pub async fn template(&self, stage: &str) -> Result<Value> {
        let d = self.deployments(stage).get(PIPELINE_DEPLOYMENT).await?;
        Ok(serde_json::to_value(d.spec.unwrap_or_default().template)?)
    }

    pub async fn canary(&self, stage: &str) -> Result<Option<Deployment>> {
        Ok(self
            .deployments(stage)
            .get_opt(&format!("{PIPELINE_DEPLOYMENT}{CANARY_SUFFIX}"))
            .await?)
    }

    /// The template recorded as the stage's stable revision for `release`, if any.
    pub async fn recorded_template(&self, stage: &str, release: &str) -> Result<Option<Value>> {
        let api: Api<ControllerRevision> = Api::namespaced(self.client.clone(), self.ns(stage));
        let name = format!("stagecoach-{release}-{PIPELINE_DEPLOYMENT}");
        Ok(api
            .get_opt(&name)
            .await?
            .and_then(|r| r.data)
            .map(|d| d.0["template"].clone()))
    }

    /// The Events about a Release.
    async fn release_events(&self, release: &str) -> Result<Vec<Event>> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.pipeline.home.name);
        Ok(api
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| {
                e.regarding
                    .as_ref()
                    .is_some_and(|r| r.name.as_deref() == Some(release))
            })
            .collect())
    }

    /// (type, reason, note) of the Events about a Release.
    pub async fn events(&self, release: &str) -> Result<Vec<(String, String, String)>> {
        Ok(self
            .release_events(release)
            .await?
            .into_iter()
            .map(|e| {
                (
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default(),
                )
            })
            .collect())
    }

    /// (reason, note) of the Events about a Release in the order they were first
    /// published (their `eventTime`; a repeated Event is one Event with a series).
    #[allow(dead_code)] // not every test file uses it
    pub async fn events_in_order(&self, release: &str) -> Result<Vec<(String, String)>> {
        let mut events = self.release_events(release).await?;
        events.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        Ok(events
            .into_iter()
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect())
    }

    /// resourceVersion of every Event in the Release namespace (a repeated Event updates
    /// its series, so counting Events is not enough).
    pub async fn event_versions(&self) -> Result<BTreeMap<String, String>> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.pipeline.home.name);
        Ok(api
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .map(|e| (e.name_any(), e.resource_version().unwrap_or_default()))
            .collect())
    }

    /// Waits until an Event of this type and reason about the release exists.
    pub async fn wait_event(&self, release: &str, type_: &str, reason: &str) -> Result<String> {
        eventually(Duration::from_secs(20), || async {
            Ok(self
                .events(release)
                .await?
                .into_iter()
                .find(|(t, r, _)| t == type_ && r == reason)
                .map(|(_, _, note)| note))
        })
        .await
        .with_context(|| format!("no {type_} Event {reason} about {release}"))
    }

    /// Waits until the stage's pod template is exactly `expected` (serde_json equality).
    pub async fn wait_template(&self, stage: &str, expected: &Value) -> Result<()> {
        let result = eventually(Duration::from_secs(30), || async {
            Ok((self.template(stage).await? == *expected).then_some(()))
        })
        .await;
        if result.is_err() {
            let actual = self.template(stage).await?;
            bail!(
                "the pod template in {stage} is not the expected one\nexpected: {expected}\nactual:   {actual}\noperator log:\n{}",
                self.operator().log_tail(30)
            );
        }
        Ok(())
    }

    pub async fn wait_no_canary(&self, stage: &str) -> Result<()> {
        eventually(Duration::from_secs(30), || async {
            Ok(self.canary(stage).await?.is_none().then_some(()))
        })
        .await
        .with_context(|| format!("a canary is still running in {stage}"))
    }

    /// Waits until the stage runs `replicas` Ready pods, all on `image`, and nothing else.
    pub async fn wait_pods_on(&self, stage: &str, image: &str) -> Result<()> {
        let replicas = STAGES.iter().find(|(s, _)| *s == stage).unwrap().1;
        let api = self.pods(stage);
        eventually(Duration::from_secs(60), || async {
            let pods = api
                .list(&ListParams::default().labels(&format!("app={PIPELINE_DEPLOYMENT}")))
                .await?
                .items;
            let live: Vec<&Pod> = pods
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            let ok = i32::try_from(live.len())? == replicas
                && live
                    .iter()
                    .all(|p| pod_is_ready(p) && pod_image(p) == image);
            Ok(ok.then_some(()))
        })
        .await
        .with_context(|| format!("{stage} never ran exactly {replicas} Ready pods of {image}"))
    }

    /// The user-visible end state of a successful release of `image`: every stage runs
    /// the pre-release template with only the image changed, on Ready pods, no canary,
    /// and the template it ran before this release (`previous`) recorded as its stable
    /// revision.
    pub async fn assert_released_everywhere(
        &self,
        release: &str,
        image: &str,
        previous: &BTreeMap<String, Value>,
    ) -> Result<()> {
        for (stage, _) in STAGES {
            self.wait_template(stage, &released(self.before(stage), image))
                .await?;
            self.wait_no_canary(stage).await?;
            self.wait_pods_on(stage, image).await?;
            let recorded = self.recorded_template(stage, release).await?;
            ensure!(
                recorded.as_ref() == previous.get(stage),
                "{stage}: the recorded stable revision of {release} is not the template the stage ran before it: {recorded:?}"
            );
        }
        Ok(())
    }

    /// A stage the release never entered: its template as before, no canary, no record.
    pub async fn assert_untouched(&self, stage: &str, release: &str) -> Result<()> {
        ensure!(
            self.template(stage).await? == *self.before(stage),
            "{stage} was changed"
        );
        ensure!(self.canary(stage).await?.is_none(), "{stage} has a canary");
        ensure!(
            self.recorded_template(stage, release).await?.is_none(),
            "{stage} has a recorded revision of {release}"
        );
        Ok(())
    }

    /// A counter of the operator's, for kind Release.
    pub async fn release_metric(&self, name: &str) -> Result<f64> {
        self.operator().metric(name, "kind=\"Release\"").await
    }

    /// Deletes the Releases (the operator lets them go once it has cleaned up: see its
    /// finalizer), stops the operator and deletes the namespaces.
    pub async fn finish(self) -> Result<()> {
        self.finish_with(Stop::Term).await
    }

    /// [`Fixture::finish`], ending the operator with SIGKILL instead of SIGTERM.
    pub async fn finish_killing(self) -> Result<()> {
        self.finish_with(Stop::Kill).await
    }

    async fn finish_with(mut self, stop: Stop) -> Result<()> {
        self.releases
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
        eventually(Duration::from_secs(60), || async {
            Ok(self
                .releases
                .list(&ListParams::default())
                .await?
                .items
                .is_empty()
                .then_some(()))
        })
        .await
        .with_context(|| {
            format!(
                "the operator never let the deleted Releases go; log:\n{}",
                self.operator().log_tail(30)
            )
        })?;
        if let Some(operator) = self.operator.take() {
            match stop {
                Stop::Term => operator.stop().await?,
                Stop::Kill => operator.kill().await?,
            }
        }
        println!(
            "{}: done in {:.0}s",
            self.pipeline.home.name,
            self.started.elapsed().as_secs_f64()
        );
        self.pipeline.delete().await
    }
}

/// The status of a release that went through every stage of [`STAGES`] (prod with
/// `prod_steps` steps) without incident.
pub fn assert_succeeded_status(release: &Release, prod_steps: usize) {
    let s = status(release);
    assert_eq!(s.phase, Some(ReleasePhase::Succeeded), "{s:?}");
    for (stage, _) in STAGES {
        assert_eq!(
            stage_phase(release, stage),
            Some(StagePhase::Succeeded),
            "{stage}"
        );
    }
    assert!(s.rollbacks.is_empty(), "no rollback: {:?}", s.rollbacks);
    assert_eq!(
        condition(release, "Ready"),
        Some((ConditionStatus::True, "Succeeded".into()))
    );
    assert_eq!(
        condition(release, "Degraded").map(|c| c.0),
        Some(ConditionStatus::False)
    );
    let Some(record) = s.closing_record else {
        panic!("no closing record")
    };
    assert_eq!(record.outcome, ReleasePhase::Succeeded);
    assert_eq!(record.changes.len(), 1, "the changes that shipped");
    let names: Vec<&str> = record.stages.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["dev", "qa", "demo", "prod"]);
    assert!(record.stages.iter().all(|r| r.duration_seconds.is_some()));
    assert!(record.lead_time_seconds.is_some(), "lead time recorded");
    assert_eq!(
        timeline_shape(release),
        successful_timeline(&[("dev", 1), ("qa", 1), ("demo", 1), ("prod", prod_steps)]),
        "timeline: {:#?}",
        s.timeline
    );
    assert!(
        repeated_steps(release).is_empty(),
        "{:?}",
        repeated_steps(release)
    );
}
