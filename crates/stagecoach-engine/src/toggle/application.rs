//! One application's toggles, decided together: from its FeatureToggles and the Releases
//! of their namespace to the flag set of each stage, what OFREP serves, which toggle
//! keeps a duplicated key, each toggle's problems and Ready condition, the couplings in
//! effect for each toggle, and the coupling changes worth an Event.
//!
//! Every toggle of an application shares one plan (one flag set per stage), so the
//! controller computes it once per change of its inputs ([`ApplicationInput::fingerprint`])
//! and reuses it for the status of each toggle. Pure: objects in, plain data out; the
//! operator caches the plan, writes the ConfigMaps and statuses, and publishes the Events.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use stagecoach_api::condition::{self, Condition, ConditionStatus};
use stagecoach_api::toggle::ToggleStageStatus;
use stagecoach_api::{FeatureToggle, FeatureToggleSpec, FeatureToggleStatus, Release};

use super::reached::{
    StageTarget, active_couplings, application_stages, pipeline_stages, release_stage_names,
};
use super::stage_rules::active_rule_couplings;
use super::{
    ActiveCouplings, Coupling, FlagSetError, RenderedFlagSet, ToggleCouplings, canonical_json,
    describe_active_rules, render_flag_set,
};
use crate::acceptance::{ACCEPTED, plan_toggle_status};
use stagecoach_api::pipeline::PipelineSpec;

/// Name of the ConfigMap holding an application's flag set in each stage namespace.
pub const FLAG_SET_CONFIG_MAP: &str = "stagecoach-flags";
/// Key of the flagd flag-set document in that ConfigMap.
pub const FLAG_SET_KEY: &str = "flags.json";
/// Largest flag set written to a ConfigMap (the API server refuses objects over 1 MiB).
pub const MAX_FLAG_SET_BYTES: usize = 1_000_000;
/// Type of the condition saying whether a toggle is served as its spec says.
pub const READY: &str = "Ready";

/// Reasons of the Ready condition and of toggle Events, in CamelCase.
pub mod reason {
    /// Ready=True: served in every stage of the application.
    pub const SERVED: &str = "Served";
    /// A stage key (or a `when.reached`) names a stage no Release of the application has.
    pub const UNKNOWN_STAGE: &str = "UnknownStage";
    /// A `when.release` names a Release that does not exist in the namespace.
    pub const UNKNOWN_RELEASE: &str = "UnknownRelease";
    /// Another, older toggle of the application has the same flag key.
    pub const DUPLICATE_KEY: &str = "DuplicateKey";
    /// The application has no Release, so no stage namespace to serve in.
    pub const NO_RELEASES: &str = "NoReleases";
    /// A stage namespace already holds another application's flag set.
    pub const FLAG_SET_CONFLICT: &str = "FlagSetConflict";
    /// A stage's flag set is too large for a ConfigMap (OFREP still serves it).
    pub const FLAG_SET_TOO_LARGE: &str = "FlagSetTooLarge";
    /// A stage's flag set could not be written (its namespace does not exist, say); OFREP
    /// still serves it, and the write is retried with backoff.
    pub const FLAG_SET_NOT_WRITTEN: &str = "FlagSetNotWritten";
    /// Event: a release reached the stage a rule waits for.
    pub const COUPLING_ACTIVATED: &str = "CouplingActivated";
    /// Event: a rule's release is no longer at its stage (rolled back).
    pub const COUPLING_DEACTIVATED: &str = "CouplingDeactivated";
}

/// What one application serves over OFREP. Whether a toggle is served does not depend on
/// the stage (only what it serves does), so the flags are shared by all stages.
#[derive(Debug, Default)]
pub struct AppFlags {
    /// Flag-set version (`sha256:...`, as in the stage's ConfigMap) by stage name.
    pub stages: HashMap<String, String>,
    /// The release couplings active for the application's toggles.
    pub couplings: ActiveCouplings,
    /// Served flags by key, with the name of the FeatureToggle serving each.
    pub flags: BTreeMap<String, String>,
    /// Keys of toggles that are not served (invalid spec or key), with the reason: a
    /// request for one gets FLAG_NOT_FOUND with this explanation.
    pub not_served: BTreeMap<String, String>,
}

/// Something about a toggle that keeps it from being served exactly as its spec says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    /// Which problem names the Ready condition when there are several: the ones that keep
    /// the toggle from being served at all first.
    fn rank(&self) -> u8 {
        match self.reason {
            reason::DUPLICATE_KEY => 0,
            reason::UNKNOWN_RELEASE => 2,
            reason::UNKNOWN_STAGE => 3,
            reason::NO_RELEASES => 4,
            reason::FLAG_SET_CONFLICT => 5,
            reason::FLAG_SET_TOO_LARGE => 6,
            reason::FLAG_SET_NOT_WRITTEN => 7,
            _ => 1, // the spec is invalid: not served
        }
    }
}

/// Everything an application's plan depends on, read from the caches.
#[derive(Debug)]
pub struct ApplicationInput<'a> {
    pub namespace: &'a str,
    pub application: &'a str,
    /// The application's toggles, oldest first (creation time, then name): for a
    /// duplicated key the oldest toggle is served.
    pub toggles: Vec<&'a FeatureToggle>,
    /// The application's stages, in pipeline order.
    pub stages: Vec<StageTarget>,
    /// Active couplings of the releases the toggles' `when` rules name.
    pub couplings: ActiveCouplings,
    /// Every Release of the namespace, with its stage names.
    pub releases: BTreeMap<String, Vec<String>>,
}

impl<'a> ApplicationInput<'a> {
    /// The input of `application` from the toggles and Releases of `namespace` (objects
    /// of other namespaces and applications, and toggles being deleted, are ignored).
    pub fn new(
        namespace: &'a str,
        application: &'a str,
        toggles: impl IntoIterator<Item = &'a FeatureToggle>,
        releases: &[Arc<Release>],
    ) -> Self {
        let mut toggles: Vec<&FeatureToggle> = toggles
            .into_iter()
            .filter(|t| {
                t.metadata.namespace.as_deref() == Some(namespace)
                    && t.spec.application == application
                    && t.metadata.deletion_timestamp.is_none()
            })
            .collect();
        toggles.sort_by(|a, b| {
            let created = |t: &FeatureToggle| t.metadata.creation_timestamp.as_ref().map(|t| t.0);
            created(a)
                .cmp(&created(b))
                .then_with(|| a.metadata.name.cmp(&b.metadata.name))
        });
        let releases: Vec<&Release> = releases
            .iter()
            .map(AsRef::as_ref)
            .filter(|r| r.metadata.namespace.as_deref() == Some(namespace))
            .collect();
        let wanted: BTreeSet<&str> = toggles
            .iter()
            .flat_map(|t| coupled_releases(&t.spec))
            .collect();
        Self {
            namespace,
            application,
            stages: application_stages(application, releases.iter().copied()),
            couplings: active_couplings(releases.iter().copied(), &wanted),
            releases: release_stage_names(releases.iter().copied()),
            toggles,
        }
    }

    /// With the application's Pipeline, the stages are the Pipeline's (in its order),
    /// whatever its Releases list: a toggle is served there before the first Release.
    #[must_use]
    pub fn with_pipeline(mut self, pipeline: Option<&PipelineSpec>) -> Self {
        if let Some(pipeline) = pipeline {
            self.stages = pipeline_stages(self.application, pipeline);
        }
        self
    }

    /// A hash of everything the plan depends on: equal fingerprints, equal plans. A
    /// toggle contributes its identity and `metadata.generation`, which the API server
    /// bumps on every spec change (and not on status writes).
    pub fn fingerprint(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        self.namespace.hash(&mut hasher);
        self.application.hash(&mut hasher);
        for toggle in &self.toggles {
            toggle.metadata.name.hash(&mut hasher);
            toggle.metadata.uid.hash(&mut hasher);
            toggle.metadata.generation.hash(&mut hasher);
        }
        self.stages.hash(&mut hasher);
        self.couplings.hash(&mut hasher);
        self.releases.hash(&mut hasher);
        hasher.finish()
    }

    /// The flag set of `stage`: every toggle of the application, rendered for flagd.
    pub fn render(&self, stage: &str) -> RenderedFlagSet {
        let toggles: Vec<(&str, &FeatureToggleSpec)> = self
            .toggles
            .iter()
            .map(|t| (t.flag_key(), &t.spec))
            .collect();
        render_flag_set(&toggles, stage, &self.couplings)
    }
}

fn coupled_releases(spec: &FeatureToggleSpec) -> impl Iterator<Item = &str> {
    spec.stages
        .values()
        .flat_map(|stage| &stage.rules)
        .filter_map(|rule| rule.when.as_ref())
        .map(|when| when.release.as_str())
}

/// The flag set served in one stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageFlagSet {
    pub name: String,
    /// Stage namespace: where the ConfigMap goes.
    pub namespace: String,
    /// Content version (`sha256:...`) of the flag set.
    pub version: String,
}

impl StageFlagSet {
    /// The ConfigMap holding this flag set, as `namespace/name`.
    pub fn config_map(&self) -> String {
        format!("{}/{FLAG_SET_CONFIG_MAP}", self.namespace)
    }

    /// The problem when the stage namespace's flag-set ConfigMap belongs to another
    /// application (`owner`, as `namespace/name`, when known): the stage is served over
    /// OFREP only.
    pub fn conflict(&self, owner: Option<&str>) -> Problem {
        Problem {
            reason: reason::FLAG_SET_CONFLICT,
            message: format!(
                "stage {} shares namespace {} with application {}, whose flag set is in \
                 ConfigMap {}; the flag set of stage {} is served over OFREP only",
                self.name,
                self.namespace,
                owner.unwrap_or("another application"),
                self.config_map(),
                self.name
            ),
        }
    }

    /// The problem when the flag set's document, `bytes` long, does not fit in a
    /// ConfigMap ([`MAX_FLAG_SET_BYTES`]); None when it fits.
    pub fn size_problem(&self, bytes: usize) -> Option<Problem> {
        (bytes > MAX_FLAG_SET_BYTES).then(|| Problem {
            reason: reason::FLAG_SET_TOO_LARGE,
            message: format!(
                "the flag set of stage {} is {bytes} bytes, more than a ConfigMap holds \
                 ({MAX_FLAG_SET_BYTES} bytes); it is served over OFREP only",
                self.name,
            ),
        })
    }

    /// The problem when writing the flag set failed with `error` (the API server's
    /// words): served over OFREP only until a retry succeeds.
    pub fn not_written(&self, error: &str) -> Problem {
        Problem {
            reason: reason::FLAG_SET_NOT_WRITTEN,
            message: format!(
                "cannot write the flag set of stage {} to ConfigMap {}: {error}; it is served \
                 over OFREP only until the write succeeds",
                self.name,
                self.config_map(),
            ),
        }
    }
}

/// The plan of one application: shared by all its toggles.
#[derive(Debug)]
pub struct ApplicationPlan {
    /// The [`ApplicationInput::fingerprint`] this plan was computed from.
    pub fingerprint: u64,
    pub stages: Vec<StageFlagSet>,
    pub couplings: ActiveCouplings,
    /// What OFREP serves for the application.
    pub index: Arc<AppFlags>,
    /// Problems of the toggles that have any, by toggle name.
    problems: HashMap<String, Vec<Problem>>,
    /// Toggles that are in no flag set (invalid, or a duplicate key), by name.
    not_served: BTreeSet<String>,
}

impl ApplicationPlan {
    /// A plan with nothing in it, for tests of what is done with plans.
    pub fn empty(fingerprint: u64) -> Self {
        Self {
            fingerprint,
            stages: Vec::new(),
            couplings: ActiveCouplings::none(),
            index: Arc::new(AppFlags::default()),
            problems: HashMap::new(),
            not_served: BTreeSet::new(),
        }
    }

    /// The couplings in effect for `toggle` under this plan: the stages it is served in
    /// and, per stage, the `when` of every active coupled rule (the rules its status lists
    /// as `when ... reached ...`). A toggle that is not served has none.
    pub fn toggle_couplings(&self, toggle: &FeatureToggle) -> ToggleCouplings {
        let name = toggle.metadata.name.as_deref().unwrap_or_default();
        let mut result = ToggleCouplings::default();
        if self.not_served.contains(name) {
            return result;
        }
        for stage in &self.stages {
            result.stages.push(stage.name.clone());
            for when in active_rule_couplings(&toggle.spec, &stage.name, &self.couplings) {
                result.active.insert(Coupling {
                    stage: stage.name.clone(),
                    release: when.release.clone(),
                    reached: when.reached.clone(),
                });
            }
        }
        result
    }
}

/// The plan of an application, and the canonical JSON of each stage's flag set (in the
/// order of `plan.stages`), which the caller writes to the ConfigMaps and then drops.
pub fn plan_application(input: &ApplicationInput<'_>) -> (ApplicationPlan, Vec<String>) {
    let mut rejected: BTreeMap<usize, FlagSetError> = BTreeMap::new();
    let mut stages = Vec::with_capacity(input.stages.len());
    let mut documents = Vec::with_capacity(input.stages.len());
    let mut index = AppFlags {
        couplings: input.couplings.clone(),
        ..AppFlags::default()
    };
    for stage in &input.stages {
        let rendered = input.render(&stage.name);
        for error in &rendered.rejected {
            rejected
                .entry(error.index())
                .or_insert_with(|| error.clone());
        }
        index
            .stages
            .insert(stage.name.clone(), rendered.version.clone());
        stages.push(StageFlagSet {
            name: stage.name.clone(),
            namespace: stage.namespace.clone(),
            version: rendered.version,
        });
        documents.push(canonical_json(&rendered.document));
    }
    if input.stages.is_empty() {
        // No stage to serve in, but a duplicate or invalid toggle is reported all the same
        // (whether a toggle is rejected does not depend on the stage).
        for error in input.render("").rejected {
            rejected.entry(error.index()).or_insert(error);
        }
    }
    // Whether a toggle is served does not depend on the stage either: every stage's flag
    // set has the same flags, each from the oldest toggle with its key.
    for (position, toggle) in input.toggles.iter().enumerate() {
        let key = toggle.flag_key();
        match rejected.get(&position) {
            None => {
                let name = toggle.metadata.name.clone().unwrap_or_default();
                index.flags.entry(key.to_owned()).or_insert(name);
            }
            Some(FlagSetError::DuplicateKey { .. }) => {}
            Some(error) => {
                index.not_served.insert(key.to_owned(), error.to_string());
            }
        }
    }
    index
        .not_served
        .retain(|key, _| !index.flags.contains_key(key));

    let mut problems: HashMap<String, Vec<Problem>> = HashMap::new();
    let mut not_served = BTreeSet::new();
    for (position, toggle) in input.toggles.iter().enumerate() {
        let name = toggle.metadata.name.clone().unwrap_or_default();
        let mut found = Vec::new();
        if let Some(error) = rejected.get(&position) {
            not_served.insert(name.clone());
            found.push(rejection_problem(input, error));
        }
        found.extend(spec_problems(input, &toggle.spec));
        if !found.is_empty() {
            problems.insert(name, found);
        }
    }
    let plan = ApplicationPlan {
        fingerprint: input.fingerprint(),
        stages,
        couplings: input.couplings.clone(),
        index: Arc::new(index),
        problems,
        not_served,
    };
    (plan, documents)
}

fn rejection_problem(input: &ApplicationInput<'_>, error: &FlagSetError) -> Problem {
    match error {
        FlagSetError::DuplicateKey {
            flag_key,
            first_index,
            ..
        } => {
            let older = input
                .toggles
                .get(*first_index)
                .and_then(|t| t.metadata.name.as_deref())
                .unwrap_or_default();
            Problem {
                reason: reason::DUPLICATE_KEY,
                message: format!(
                    "flag key {flag_key:?} is already used by the older FeatureToggle {older} \
                     of application {}; this toggle is not served until its key changes or \
                     {older} is deleted",
                    input.application
                ),
            }
        }
        other => Problem {
            reason: other.reason(),
            message: other.to_string(),
        },
    }
}

/// Stage keys and `when` rules naming stages or releases that do not exist.
fn spec_problems(input: &ApplicationInput<'_>, spec: &FeatureToggleSpec) -> Vec<Problem> {
    let mut problems = Vec::new();
    let stage_names: Vec<&str> = input.stages.iter().map(|s| s.name.as_str()).collect();
    if stage_names.is_empty() {
        problems.push(Problem {
            reason: reason::NO_RELEASES,
            message: format!(
                "no Release of application {} exists in namespace {}, so it has no stage \
                 namespaces to serve flags in yet",
                input.application, input.namespace
            ),
        });
    } else {
        let unknown: Vec<&str> = spec
            .stages
            .keys()
            .map(String::as_str)
            .filter(|stage| !stage_names.contains(stage))
            .collect();
        if !unknown.is_empty() {
            problems.push(Problem {
                reason: reason::UNKNOWN_STAGE,
                message: format!(
                    "stage(s) {} are not stages of any Release of application {} (its stages: \
                     {}); the toggle is served in the others",
                    unknown.join(", "),
                    input.application,
                    stage_names.join(", ")
                ),
            });
        }
    }
    for (stage, settings) in &spec.stages {
        for (position, rule) in settings.rules.iter().enumerate() {
            let Some(when) = &rule.when else { continue };
            let rule_name = format!("rule {} of stage {stage}", position + 1);
            match input.releases.get(&when.release) {
                None => problems.push(Problem {
                    reason: reason::UNKNOWN_RELEASE,
                    message: format!(
                        "{rule_name} waits for Release {}, which does not exist in namespace \
                         {}; the rule stays inactive",
                        when.release, input.namespace
                    ),
                }),
                Some(stages) if !stages.contains(&when.reached) => problems.push(Problem {
                    reason: reason::UNKNOWN_STAGE,
                    message: format!(
                        "{rule_name} waits for Release {} to reach stage {}, which that \
                         release does not go through (its stages: {}); the rule stays inactive",
                        when.release,
                        when.reached,
                        stages.join(", ")
                    ),
                }),
                Some(_) => {}
            }
        }
    }
    problems
}

/// The desired status of `toggle`: Accepted (from the admission checks), the flag key,
/// what is served in each stage, and Ready. `flag_set_problems` are the application's
/// problems found while writing its ConfigMaps (conflicts, size). Fields are kept as they
/// are when nothing changed, so planning again gives an equal status (no write).
pub fn desired_status(
    toggle: &FeatureToggle,
    plan: &ApplicationPlan,
    flag_set_problems: &[Problem],
    now: DateTime<Utc>,
) -> FeatureToggleStatus {
    /// kstatus condition, present only while True (see below).
    const STALLED: &str = "Stalled";
    let current = toggle.status.as_ref();
    let generation = toggle.metadata.generation;
    let mut status = plan_toggle_status(current, &toggle.spec, generation, now);
    let name = toggle.metadata.name.as_deref().unwrap_or_default();
    status.key = Some(toggle.flag_key().to_owned());
    let served = !plan.not_served.contains(name);
    let couplings = plan.toggle_couplings(toggle);
    status.stages = if served {
        plan.stages
            .iter()
            .map(|stage| ToggleStageStatus {
                name: stage.name.clone(),
                flag_set_version: Some(stage.version.clone()),
                config_map: Some(stage.config_map()),
                active_rules: describe_active_rules(&toggle.spec, &stage.name, &plan.couplings),
                couplings: couplings.in_stage(&stage.name),
            })
            .collect()
    } else {
        Vec::new()
    };

    let mut problems: Vec<&Problem> = plan.problems.get(name).into_iter().flatten().collect();
    if served {
        problems.extend(flag_set_problems);
    }
    problems.sort_by_key(|p| p.rank());
    let ready = match problems.first() {
        None => Condition::new(
            READY,
            ConditionStatus::True,
            reason::SERVED,
            format!(
                "flag {} is served in stage(s) {}",
                toggle.flag_key(),
                plan.stages
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            generation,
            now,
        ),
        Some(first) => Condition::new(
            READY,
            ConditionStatus::False,
            first.reason,
            problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            generation,
            now,
        ),
    };
    // kstatus: `Stalled` (present only while True) when the problem needs a person to
    // edit a spec. Not for problems that end by themselves once another object appears
    // (a Release of the application, the named Release or stage) or a write is retried.
    let waits = [
        reason::NO_RELEASES,
        reason::UNKNOWN_RELEASE,
        reason::UNKNOWN_STAGE,
        reason::FLAG_SET_NOT_WRITTEN,
    ];
    let stalled = (ready.status == ConditionStatus::False
        && !waits.contains(&ready.reason.as_str()))
    .then(|| {
        Condition::new(
            STALLED,
            ConditionStatus::True,
            &ready.reason,
            ready.message.clone(),
            generation,
            now,
        )
    });
    condition::upsert(&mut status.conditions, ready);
    status
        .conditions
        .retain(|c| c.r#type == READY || c.r#type == ACCEPTED || c.r#type == STALLED);
    match stalled {
        Some(stalled) => condition::upsert(&mut status.conditions, stalled),
        None => status.conditions.retain(|c| c.r#type != STALLED),
    }
    status
}
#[cfg(test)]
#[allow(clippy::needless_pass_by_value)] // fixtures take json! values
mod tests {
    use chrono::TimeZone;
    use serde_json::{Value, json};
    use stagecoach_api::release::{ReleasePhase, StagePhase};

    use super::super::reached::tests::{release, with_phases};
    use super::super::{CouplingChange, coupling_changes};
    use super::*;

    fn at(second: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + second, 0).unwrap()
    }

    fn toggle(name: &str, age: i64, spec: Value) -> FeatureToggle {
        let mut toggle = FeatureToggle::new(name, serde_json::from_value(spec).unwrap());
        toggle.metadata = serde_json::from_value(json!({
            "name": name,
            "namespace": "team",
            "uid": format!("uid-{name}"),
            "generation": 1,
            "creationTimestamp": at(-age).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }))
        .unwrap();
        toggle
    }

    fn shop_toggle(name: &str, age: i64, stages: Value) -> FeatureToggle {
        toggle(
            name,
            age,
            json!({
                "application": "shop",
                "variants": {"on": true, "off": false},
                "defaultVariant": "off",
                "stages": stages
            }),
        )
    }

    fn shop_release() -> Arc<Release> {
        Arc::new(release(
            "shop-1",
            "shop",
            50,
            &[("dev", "shop-dev"), ("demo", "shop-demo")],
        ))
    }

    fn ready(status: &FeatureToggleStatus) -> &Condition {
        condition::find(&status.conditions, READY).unwrap()
    }

    #[test]
    fn one_flag_set_per_stage_and_served_status() {
        let toggles = [
            shop_toggle("b", 10, json!({"dev": {"defaultVariant": "on"}})),
            shop_toggle(
                "a",
                20,
                json!({"demo": {"rules": [{"clients": ["acme"], "variant": "on"}]}}),
            ),
            toggle(
                "other-app",
                5,
                json!({"application": "else", "variants": {"x": 1}, "defaultVariant": "x"}),
            ),
        ];
        let releases = [shop_release()];
        let input = ApplicationInput::new("team", "shop", toggles.iter(), &releases);
        let names: Vec<&str> = input
            .toggles
            .iter()
            .map(|t| t.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(
            names,
            ["a", "b"],
            "oldest first, other applications left out"
        );
        let (plan, documents) = plan_application(&input);
        assert_eq!(plan.stages.len(), 2);
        assert_eq!(plan.stages[0].config_map(), "shop-dev/stagecoach-flags");
        let dev: Value = serde_json::from_str(&documents[0]).unwrap();
        assert_eq!(dev["flags"]["b"]["defaultVariant"], "on");
        assert_eq!(dev["flags"]["a"]["defaultVariant"], "off");
        assert_eq!(plan.index.flags.len(), 2);
        assert_eq!(plan.index.stages["demo"], plan.stages[1].version);

        let status = desired_status(&toggles[1], &plan, &[], at(0));
        assert_eq!(status.key.as_deref(), Some("a"));
        assert_eq!(ready(&status).status, ConditionStatus::True);
        assert_eq!(ready(&status).reason, reason::SERVED);
        assert_eq!(
            condition::find(&status.conditions, ACCEPTED)
                .unwrap()
                .status,
            ConditionStatus::True
        );
        let stage_names: Vec<&str> = status.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(stage_names, ["dev", "demo"]);
        assert_eq!(
            status.stages[1].active_rules,
            ["clients [acme] -> on", "otherwise -> off"]
        );
        assert_eq!(
            status.stages[1].flag_set_version.as_deref(),
            Some(plan.stages[1].version.as_str())
        );

        // Planning again from the written status changes nothing.
        let mut written = toggles[1].clone();
        written.status = Some(status.clone());
        assert_eq!(desired_status(&written, &plan, &[], at(60)), status);
    }

    #[test]
    fn fingerprint_follows_inputs_not_status() {
        let mut a = shop_toggle("a", 20, json!({}));
        let releases = [shop_release()];
        let before = ApplicationInput::new("team", "shop", [&a], &releases).fingerprint();
        a.status = Some(FeatureToggleStatus::default());
        assert_eq!(
            ApplicationInput::new("team", "shop", [&a], &releases).fingerprint(),
            before
        );
        a.metadata.generation = Some(2);
        assert_ne!(
            ApplicationInput::new("team", "shop", [&a], &releases).fingerprint(),
            before
        );
        a.metadata.generation = Some(1);
        assert_ne!(
            ApplicationInput::new("team", "shop", [&a], &[]).fingerprint(),
            before
        );
    }

    #[test]
    fn bad_input_becomes_reasons_and_the_rest_keeps_working() {
        let toggles = [
            shop_toggle(
                "old",
                30,
                json!({"staging": {}, "dev": {"defaultVariant": "on"}}),
            ),
            toggle(
                "new",
                10,
                json!({
                    "application": "shop", "key": "old",
                    "variants": {"on": true}, "defaultVariant": "on"
                }),
            ),
            shop_toggle(
                "coupled",
                5,
                json!({"demo": {"rules": [
                    {"clients": ["acme"], "variant": "on", "when": {"release": "shop-9", "reached": "demo"}},
                    {"clients": ["globex"], "variant": "on", "when": {"release": "shop-1", "reached": "prod"}}
                ]}}),
            ),
        ];
        let releases = [shop_release()];
        let input = ApplicationInput::new("team", "shop", toggles.iter(), &releases);
        let (plan, documents) = plan_application(&input);
        let dev: Value = serde_json::from_str(&documents[0]).unwrap();
        assert_eq!(
            dev["flags"]["old"]["defaultVariant"], "on",
            "the older toggle keeps its key"
        );

        let old = desired_status(&toggles[0], &plan, &[], at(0));
        assert_eq!(ready(&old).reason, reason::UNKNOWN_STAGE);
        assert!(
            ready(&old).message.contains("staging"),
            "{}",
            ready(&old).message
        );
        assert_eq!(old.stages.len(), 2, "still served in the stages that exist");

        let new = desired_status(&toggles[1], &plan, &[], at(0));
        assert_eq!(ready(&new).status, ConditionStatus::False);
        assert_eq!(ready(&new).reason, reason::DUPLICATE_KEY);
        assert!(
            ready(&new).message.contains("FeatureToggle old"),
            "{}",
            ready(&new).message
        );
        assert!(new.stages.is_empty());

        let coupled = desired_status(&toggles[2], &plan, &[], at(0));
        assert_eq!(ready(&coupled).reason, reason::UNKNOWN_RELEASE);
        assert!(ready(&coupled).message.contains("shop-9"));
        assert!(
            ready(&coupled).message.contains("stage prod"),
            "{}",
            ready(&coupled).message
        );

        let conflict = Problem {
            reason: reason::FLAG_SET_CONFLICT,
            message: "taken".into(),
        };
        let status = desired_status(&toggles[0], &plan, &[conflict], at(0));
        assert_eq!(ready(&status).reason, reason::UNKNOWN_STAGE);
        assert!(ready(&status).message.ends_with("taken"));
    }

    #[test]
    fn flag_set_problems_name_the_stage_and_rank_after_the_toggles_own() {
        let stage = StageFlagSet {
            name: "demo".into(),
            namespace: "shop-demo".into(),
            version: "sha256:1".into(),
        };
        assert!(stage.size_problem(MAX_FLAG_SET_BYTES).is_none());
        let large = stage.size_problem(MAX_FLAG_SET_BYTES + 1).unwrap();
        assert_eq!(large.reason, reason::FLAG_SET_TOO_LARGE);
        assert!(large.message.contains("1000001 bytes"), "{}", large.message);
        let conflict = stage.conflict(Some("team/other"));
        assert!(
            conflict
                .message
                .contains("with application team/other, whose flag set is in ConfigMap shop-demo/stagecoach-flags"),
            "{}",
            conflict.message
        );
        assert!(stage.conflict(None).message.contains("another application"));
        let failed = stage.not_written("namespaces \"shop-demo\" not found");
        assert_eq!(failed.reason, reason::FLAG_SET_NOT_WRITTEN);
        let mut problems = [failed, large, conflict];
        problems.sort_by_key(Problem::rank);
        let reasons: Vec<&str> = problems.iter().map(|p| p.reason).collect();
        assert_eq!(
            reasons,
            [
                reason::FLAG_SET_CONFLICT,
                reason::FLAG_SET_TOO_LARGE,
                reason::FLAG_SET_NOT_WRITTEN
            ]
        );
    }

    #[test]
    fn no_release_means_no_stage() {
        let toggles = [
            shop_toggle("a", 10, json!({})),
            toggle(
                "b",
                5,
                json!({"application": "shop", "key": "a", "variants": {"on": true}, "defaultVariant": "on"}),
            ),
        ];
        let input = ApplicationInput::new("team", "shop", toggles.iter(), &[]);
        let (plan, documents) = plan_application(&input);
        assert!(plan.stages.is_empty() && documents.is_empty());
        let a = desired_status(&toggles[0], &plan, &[], at(0));
        assert_eq!(ready(&a).reason, reason::NO_RELEASES);
        let b = desired_status(&toggles[1], &plan, &[], at(0));
        assert_eq!(ready(&b).reason, reason::DUPLICATE_KEY);
    }

    #[test]
    fn couplings_switch_rules_and_are_reported_once() {
        let coupled = shop_toggle(
            "coupled",
            5,
            json!({"demo": {"rules": [
                {"clients": ["acme"], "variant": "on", "when": {"release": "shop-1", "reached": "demo"}},
                {"clients": ["globex"], "variant": "on", "when": {"release": "shop-1", "reached": "demo"}}
            ]}}),
        );
        let pending = shop_release();
        let reached = Arc::new(with_phases(
            (*pending).clone(),
            ReleasePhase::EarlyLifeSupport,
            &[
                ("dev", StagePhase::Succeeded),
                ("demo", StagePhase::EarlyLifeSupport),
            ],
        ));
        let rolled_back = Arc::new(with_phases(
            (*pending).clone(),
            ReleasePhase::RolledBack,
            &[
                ("dev", StagePhase::Succeeded),
                ("demo", StagePhase::RolledBack),
            ],
        ));
        let status_with = |release: &Arc<Release>, previous: Option<&FeatureToggleStatus>| {
            let mut toggle = coupled.clone();
            toggle.status = previous.cloned();
            let input =
                ApplicationInput::new("team", "shop", [&toggle], std::slice::from_ref(release));
            let (plan, _) = plan_application(&input);
            let couplings = plan.toggle_couplings(&toggle);
            (desired_status(&toggle, &plan, &[], at(0)), couplings, plan)
        };
        let (off, off_couplings, off_plan) = status_with(&pending, None);
        assert_eq!(off.stages[1].active_rules, ["otherwise -> off"]);
        assert_eq!(off_couplings.stages, ["dev", "demo"]);
        assert!(off_couplings.active.is_empty());
        assert!(coupling_changes(&coupled.spec, None, &off_couplings).is_empty());

        let (on, on_couplings, on_plan) = status_with(&reached, Some(&off));
        assert_ne!(
            on.stages[1].flag_set_version,
            off.stages[1].flag_set_version
        );
        assert!(on_plan.index.couplings.has_reached("shop-1", "demo"));
        assert!(!off_plan.index.couplings.has_reached("shop-1", "demo"));
        let demo = Coupling {
            stage: "demo".into(),
            release: "shop-1".into(),
            reached: "demo".into(),
        };
        assert_eq!(on_couplings.active, BTreeSet::from([demo]));
        let changes = coupling_changes(&coupled.spec, Some(&off_couplings), &on_couplings);
        assert_eq!(
            changes,
            [CouplingChange {
                stage: "demo".into(),
                release: "shop-1".into(),
                reached: "demo".into(),
                active: true
            }],
            "two rules waiting for the same coupling are one change"
        );
        assert_eq!(changes[0].reason(), reason::COUPLING_ACTIVATED);
        assert!(coupling_changes(&coupled.spec, Some(&on_couplings), &on_couplings).is_empty());

        let (back_off, back_off_couplings, _) = status_with(&rolled_back, Some(&on));
        assert_eq!(back_off.stages[1], off.stages[1]);
        assert_eq!(back_off_couplings, off_couplings);
        let changes = coupling_changes(&coupled.spec, Some(&on_couplings), &back_off_couplings);
        assert_eq!(changes.len(), 1);
        assert!(!changes[0].active);
        assert_eq!(changes[0].reason(), reason::COUPLING_DEACTIVATED);
    }

    #[test]
    fn couplings_follow_what_is_served() {
        let coupled = shop_toggle(
            "coupled",
            5,
            json!({
                "dev": {"state": "Disabled", "rules": [
                    {"clients": ["acme"], "variant": "on", "when": {"release": "shop-1", "reached": "dev"}}
                ]},
                "demo": {"rules": [
                    {"clients": ["acme"], "variant": "on", "when": {"release": "shop-1", "reached": "dev"}}
                ]}
            }),
        );
        let duplicate = toggle(
            "duplicate",
            1,
            json!({
                "application": "shop", "key": "coupled",
                "variants": {"on": true}, "defaultVariant": "on",
                "stages": {"demo": {"rules": [
                    {"clients": ["acme"], "variant": "on", "when": {"release": "shop-1", "reached": "dev"}}
                ]}}
            }),
        );
        let reached = Arc::new(with_phases(
            (*shop_release()).clone(),
            ReleasePhase::Progressing,
            &[("dev", StagePhase::Succeeded)],
        ));
        let input = ApplicationInput::new(
            "team",
            "shop",
            [&coupled, &duplicate],
            std::slice::from_ref(&reached),
        );
        let (plan, _) = plan_application(&input);
        let couplings = plan.toggle_couplings(&coupled);
        let stages: Vec<&str> = couplings.active.iter().map(|c| c.stage.as_str()).collect();
        assert_eq!(stages, ["demo"], "a disabled stage serves no coupled rule");
        assert_eq!(
            plan.toggle_couplings(&duplicate),
            ToggleCouplings::default(),
            "a toggle that is not served has no coupling in effect"
        );
        // A stage the old state did not list is not a coupling change.
        let before = ToggleCouplings {
            stages: vec!["dev".into()],
            active: BTreeSet::new(),
        };
        assert!(coupling_changes(&coupled.spec, Some(&before), &couplings).is_empty());
    }
}
