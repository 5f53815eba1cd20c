//! The policy a release is subject to: which Pipeline governs it, the stages that result
//! from merging the Release into that Pipeline (never loosening it), the release's content
//! digest, and the approvals that count.
//!
//! Pure: the caller passes the Pipelines and Approvals it has cached.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};
use stagecoach_api::approval::{Approval, Decision};
use stagecoach_api::names::default_stage_namespace;
use stagecoach_api::pipeline::{NotificationEvent, Pipeline, PipelineSpec};
use stagecoach_api::release::ReleaseType;
use stagecoach_api::release::{ApprovalRecord, ResolvedStage, default_steps};
use stagecoach_api::{ReleaseSpec, parse_duration};

use crate::admission::Rejection;

/// CamelCase reasons of `Accepted=False` that come from the Pipeline.
pub mod reason {
    /// The Release asks for something its Pipeline does not allow.
    pub const CONTRADICTS_PIPELINE: &str = "ContradictsPipeline";
    /// Two Pipelines in the namespace claim the application.
    pub const AMBIGUOUS_PIPELINE: &str = "AmbiguousPipeline";
    /// A notice is required but no receiver hears Announced for this kind of release.
    pub const NOTICE_WITHOUT_RECEIVER: &str = "NoticeWithoutReceiver";
}

/// The Pipeline that governs a release, if any.
#[derive(Clone, Copy, Debug)]
pub enum Governing<'a> {
    /// The application has no Pipeline: the Release alone decides (today's behaviour).
    None,
    /// One Pipeline, by name.
    Pipeline(&'a str, &'a PipelineSpec),
    /// More than one claims the application: nothing may proceed until one is removed.
    Conflict(&'a [String]),
}

/// The Pipelines among `pipelines` (one namespace) that claim `application`, by name.
pub fn pipelines_of<'a>(application: &str, pipelines: &'a [&'a Pipeline]) -> Vec<&'a Pipeline> {
    let mut found: Vec<&Pipeline> = pipelines
        .iter()
        .copied()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && p.application() == application)
        .collect();
    found.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    found
}

/// The stages a release goes through and how, given what governs it. Without a Pipeline:
/// the Release's own (or default) stages. With one: the Pipeline's stages in its order,
/// each taking from the Release only what does not loosen the policy; anything else the
/// Release asks for is refused, every point in one message.
pub fn resolve_stages(
    spec: &ReleaseSpec,
    governing: Governing<'_>,
) -> Result<Vec<ResolvedStage>, Rejection> {
    match governing {
        Governing::None => Ok(spec.resolved_stages()),
        Governing::Conflict(names) => Err(Rejection {
            reason: reason::AMBIGUOUS_PIPELINE,
            message: format!(
                "Pipelines {} all govern application {}; remove all but one",
                names.join(", "),
                spec.application
            ),
        }),
        Governing::Pipeline(name, pipeline) => merge(spec, name, pipeline),
    }
}

fn merge(
    spec: &ReleaseSpec,
    pipeline_name: &str,
    pipeline: &PipelineSpec,
) -> Result<Vec<ResolvedStage>, Rejection> {
    let mut refused: Vec<String> = Vec::new();
    let own = spec.stages.as_deref().unwrap_or_default();
    for stage in own {
        if !pipeline.stages.iter().any(|p| p.name == stage.name) {
            refused.push(format!(
                "stage {} is not in the pipeline (its stages: {})",
                stage.name,
                stage_list(pipeline)
            ));
        }
    }
    let mut stages = Vec::with_capacity(pipeline.stages.len());
    for policy in &pipeline.stages {
        let asked = own.iter().find(|s| s.name == policy.name);
        stages.push(merge_stage(spec, policy, asked, &mut refused));
    }
    let release_type = spec.release_type;
    let notice = pipeline
        .release_types
        .as_ref()
        .and_then(|t| t.get(release_type))
        .and_then(|p| p.notice.as_deref());
    if let Some(notice) = notice
        && !pipeline
            .notifications
            .iter()
            .any(|r| r.wants(NotificationEvent::Announced, release_type))
    {
        return Err(Rejection {
            reason: reason::NOTICE_WITHOUT_RECEIVER,
            message: format!(
                "Pipeline {pipeline_name} requires {notice} notice for {} releases, but none of its notifications receives Announced events for them: nobody would be told",
                type_name(release_type)
            ),
        });
    }
    if refused.is_empty() {
        Ok(stages)
    } else {
        Err(Rejection {
            reason: reason::CONTRADICTS_PIPELINE,
            message: format!(
                "the release contradicts Pipeline {pipeline_name}: {}",
                refused.join("; ")
            ),
        })
    }
}

/// One stage of the Pipeline with what the Release asks for there (`asked`), taking only
/// what does not loosen the Pipeline; every refusal is added to `refused`.
fn merge_stage(
    spec: &ReleaseSpec,
    policy: &stagecoach_api::pipeline::PipelineStage,
    asked: Option<&stagecoach_api::release::Stage>,
    refused: &mut Vec<String>,
) -> ResolvedStage {
    let namespace = policy
        .namespace
        .clone()
        .or_else(|| default_stage_namespace(&spec.application, &policy.name));
    let mut stage = ResolvedStage {
        name: policy.name.clone(),
        namespace: namespace.clone(),
        steps: policy.steps.clone().unwrap_or_else(default_steps),
        gates: policy.gates.clone(),
        progress_deadline: policy.progress_deadline.clone(),
        early_life_support: policy.early_life_support.clone(),
        approval: policy.approval.clone(),
    };
    if let Some(asked) = asked {
        let at = &policy.name;
        if let Some(ns) = &asked.namespace
            && Some(ns) != namespace.as_ref()
        {
            refused.push(format!(
                "stage {at} runs in namespace {}, not {ns}",
                namespace.as_deref().unwrap_or("(none)")
            ));
        }
        match (&policy.steps, &asked.steps) {
            (Some(fixed), Some(own)) if fixed != own => refused.push(format!(
                "the steps of stage {at} are set by the pipeline and cannot be changed"
            )),
            (None, Some(own)) => stage.steps.clone_from(own),
            _ => {}
        }
        for gate in &asked.gates {
            match stage.gates.iter().find(|g| g.name == gate.name) {
                Some(same) if same == gate => {}
                Some(_) => refused.push(format!(
                    "gate {} of stage {at} is set by the pipeline and cannot be changed (add a gate with another name)",
                    gate.name
                )),
                None => stage.gates.push(gate.clone()),
            }
        }
        match (
            duration(policy.progress_deadline.as_deref()),
            duration(asked.progress_deadline.as_deref()),
        ) {
            (Some(limit), Some(own)) if own > limit => refused.push(format!(
                "progressDeadline of stage {at} may be at most the pipeline's {}",
                policy.progress_deadline.as_deref().unwrap_or_default()
            )),
            (_, Some(_)) => stage.progress_deadline.clone_from(&asked.progress_deadline),
            _ => {}
        }
        let els = |s: Option<&stagecoach_api::release::EarlyLifeSupport>| {
            s.map(|e| duration(e.duration.as_deref()))
        };
        match (
            els(policy.early_life_support.as_ref()),
            els(asked.early_life_support.as_ref()),
        ) {
            (Some(Some(floor)), Some(own)) if own.is_none_or(|own| own < floor) => {
                refused.push(format!(
                    "earlyLifeSupport of stage {at} must be at least the pipeline's {}",
                    policy
                        .early_life_support
                        .as_ref()
                        .and_then(|e| e.duration.as_deref())
                        .unwrap_or_default()
                ));
            }
            (_, Some(_)) => stage
                .early_life_support
                .clone_from(&asked.early_life_support),
            _ => {}
        }
    }
    stage
}

fn duration(text: Option<&str>) -> Option<Duration> {
    text.and_then(|t| parse_duration(t).ok())
}

fn stage_list(pipeline: &PipelineSpec) -> String {
    pipeline
        .stages
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A kind of release as written in manifests.
pub fn type_name(release_type: ReleaseType) -> &'static str {
    match release_type {
        ReleaseType::Patch => "patch",
        ReleaseType::Minor => "minor",
        ReleaseType::Major => "major",
    }
}

/// The stage names of a pipeline, for people: "dev, qa, demo, prod".
pub fn describe_stages(pipeline: &PipelineSpec) -> String {
    stage_list(pipeline)
}

/// The release's content digest, `sha256:<hex>`: a hash of the spec without its
/// operational switches (`paused`, `abort`), so pausing does not invalidate approvals
/// and changing an image does.
pub fn digest(spec: &ReleaseSpec) -> String {
    let mut value = serde_json::to_value(spec).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.remove("paused");
        map.remove("abort");
    }
    let canonical = canonical_json(&value);
    let hash = Sha256::digest(canonical.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in hash {
        use std::fmt::Write as _;
        let _ = write!(hex, "{byte:02x}");
    }
    format!("sha256:{hex}")
}

/// JSON with object keys sorted, so equal specs hash equally whatever the map order.
fn canonical_json(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        serde_json::Value::String(k.clone()),
                        canonical_json(&map[k])
                    )
                })
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        serde_json::Value::Array(items) => {
            let items: Vec<String> = items.iter().map(canonical_json).collect();
            format!("[{}]", items.join(","))
        }
        other => other.to_string(),
    }
}

/// What the approvals of one release at one stage add up to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    /// One approval per distinct approver that counts, earliest first.
    pub approvals: Vec<ApprovalRecord>,
    /// The first Reject of the current digest, if any.
    pub rejection: Option<ApprovalRecord>,
    /// The first override (by someone allowed to override; the API server checked).
    pub override_by: Option<ApprovalRecord>,
    /// Approvals that do not count, with why: "bob approved an earlier digest".
    pub not_counted: Vec<String>,
}

impl Tally {
    /// Distinct approvers counted.
    pub fn given(&self) -> usize {
        self.approvals.len()
    }
}

/// Counts the decisions about `release` at `stage` whose digest is `digest`: distinct
/// approvers only, authors of the release's changes do not count, the earliest Reject
/// wins over any number of approvals. Approvals of another digest are listed as not
/// counted.
pub fn tally(
    approvals: &[&Approval],
    release: &str,
    stage: &str,
    digest: &str,
    authors: &[&str],
) -> Tally {
    let mut relevant: Vec<&Approval> = approvals
        .iter()
        .copied()
        .filter(|a| a.spec.release == release && a.spec.stage == stage)
        .collect();
    relevant.sort_by_key(|a| (created(a), a.metadata.name.clone()));
    let mut result = Tally::default();
    for approval in relevant {
        let record = record_of(approval);
        if approval.spec.release_digest != digest {
            result.not_counted.push(format!(
                "{} {} an earlier version of the release (digest {})",
                approval.spec.approver,
                past(approval.spec.decision),
                short(&approval.spec.release_digest)
            ));
            continue;
        }
        match approval.spec.decision {
            Decision::Reject => {
                if result.rejection.is_none() {
                    result.rejection = Some(record);
                }
            }
            Decision::Approve => {
                if approval.spec.r#override && result.override_by.is_none() {
                    result.override_by = Some(record.clone());
                }
                if authors.contains(&approval.spec.approver.as_str()) {
                    result.not_counted.push(format!(
                        "{} is an author of a change in the release",
                        approval.spec.approver
                    ));
                } else if result
                    .approvals
                    .iter()
                    .all(|a| a.approver != approval.spec.approver)
                {
                    result.approvals.push(record);
                }
            }
        }
    }
    result.not_counted.dedup();
    result
}

fn created(approval: &Approval) -> Option<DateTime<Utc>> {
    approval
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0))
}

fn record_of(approval: &Approval) -> ApprovalRecord {
    ApprovalRecord {
        stage: approval.spec.stage.clone(),
        decision: approval.spec.decision,
        approver: approval.spec.approver.clone(),
        digest: approval.spec.release_digest.clone(),
        at: created(approval),
        approval: approval.metadata.name.clone().unwrap_or_default(),
        r#override: approval.spec.r#override,
        comment: approval.spec.comment.clone(),
    }
}

fn past(decision: Decision) -> &'static str {
    match decision {
        Decision::Approve => "approved",
        Decision::Reject => "rejected",
    }
}

/// The first 12 hex digits of a digest, for messages.
pub fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.get(..12).unwrap_or(hex)
}

#[cfg(test)]
mod tests;

/// Reason of the Pipeline's `Ready=True`.
pub const IN_FORCE: &str = "InForce";

/// The desired status of a Pipeline: `current` with `observedGeneration`, the stage list
/// for people and `Ready` (in force, or why its releases cannot proceed) updated.
/// `claimants` are the names of every Pipeline in the namespace governing the same
/// application, this one included.
pub fn pipeline_status(
    name: &str,
    spec: &PipelineSpec,
    claimants: &[String],
    current: Option<&stagecoach_api::pipeline::PipelineStatus>,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> stagecoach_api::pipeline::PipelineStatus {
    use stagecoach_api::condition::{self, Condition, ConditionStatus};
    let mut status = current.cloned().unwrap_or_default();
    status.observed_generation = generation;
    status.stages = Some(stage_list(spec));
    let application = spec.application_or(name);
    status.application = Some(application.to_owned());
    let ready = match check_pipeline(name, spec, claimants) {
        Ok(()) => Condition::new(
            "Ready",
            ConditionStatus::True,
            IN_FORCE,
            format!("every release of application {application} follows this pipeline"),
            generation,
            now,
        ),
        Err(rejection) => Condition::new(
            "Ready",
            ConditionStatus::False,
            rejection.reason,
            rejection.message,
            generation,
            now,
        ),
    };
    condition::upsert(&mut status.conditions, ready);
    status
}

/// What keeps a Pipeline from governing its releases: another Pipeline claiming the same
/// application, a stage without a namespace, two stages in one namespace, a gate the
/// providers cannot evaluate as written.
pub fn check_pipeline(
    name: &str,
    spec: &PipelineSpec,
    claimants: &[String],
) -> Result<(), Rejection> {
    let application = spec.application_or(name);
    if claimants.len() > 1 {
        return Err(Rejection {
            reason: reason::AMBIGUOUS_PIPELINE,
            message: format!(
                "Pipelines {} all govern application {application}; its releases wait until all but one are removed",
                claimants.join(", ")
            ),
        });
    }
    // The checks a release would get, on a release that asks for nothing of its own.
    let probe: ReleaseSpec = serde_json::from_value(serde_json::json!({
        "application": application,
        "version": "0.0.0",
        "workloads": [],
    }))
    .map_err(|e| Rejection {
        reason: reason::CONTRADICTS_PIPELINE,
        message: e.to_string(),
    })?;
    let stages = merge(&probe, name, spec)?;
    crate::admission::check_release_in(&probe, &stages)
}

/// Type of the Pipeline condition about its notification receivers.
pub const NOTIFICATIONS_READY: &str = "NotificationsReady";

/// What the operator found about one receiver's Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretCheck {
    /// The receiver names no Secret.
    NotNeeded,
    /// The Secret and its key exist.
    Found,
    /// No Secret of that name in the Pipeline's namespace.
    MissingSecret,
    /// The Secret exists without the key.
    MissingKey,
    /// It could not be read (the message says why).
    Unreadable(String),
}

/// The `NotificationsReady` condition: True when every receiver's Secret and key exist,
/// else False naming each receiver and what is wrong. A broken receiver never blocks a
/// rollout; only a major release's notice waits for its Announced delivery.
pub fn notifications_condition(
    spec: &PipelineSpec,
    checks: &[(String, SecretCheck)],
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> stagecoach_api::condition::Condition {
    use stagecoach_api::condition::{Condition, ConditionStatus};
    let mut problems = Vec::new();
    for receiver in &spec.notifications {
        let Some(secret) = &receiver.webhook.secret_ref else {
            continue;
        };
        let check = checks
            .iter()
            .find(|(name, _)| *name == receiver.name)
            .map_or(&SecretCheck::NotNeeded, |(_, c)| c);
        let problem = match check {
            SecretCheck::NotNeeded | SecretCheck::Found => continue,
            SecretCheck::MissingSecret => format!("Secret {} not found", secret.name),
            SecretCheck::MissingKey => {
                format!("Secret {} has no key {}", secret.name, secret.key)
            }
            SecretCheck::Unreadable(why) => format!("Secret {} unreadable: {why}", secret.name),
        };
        problems.push(format!("receiver {}: {problem}", receiver.name));
    }
    if problems.is_empty() {
        let message = if spec.notifications.is_empty() {
            "no receivers".to_owned()
        } else {
            format!(
                "{} receiver(s), every Secret in place",
                spec.notifications.len()
            )
        };
        Condition::new(
            NOTIFICATIONS_READY,
            ConditionStatus::True,
            "ReceiversReady",
            message,
            generation,
            now,
        )
    } else {
        Condition::new(
            NOTIFICATIONS_READY,
            ConditionStatus::False,
            "ReceiverSecretMissing",
            format!(
                "{}; their notifications fail until it is fixed (rollouts go on; a major release's notice waits for its Announced delivery)",
                problems.join("; ")
            ),
            generation,
            now,
        )
    }
}
