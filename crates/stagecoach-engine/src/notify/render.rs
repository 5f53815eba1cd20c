//! What a receiver gets: a CloudEvents 1.0 event in structured JSON mode, or a
//! Slack-compatible message (`format: slack`).

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use stagecoach_api::approval::Decision;
use stagecoach_api::parse_duration;
use stagecoach_api::pipeline::{NotificationEvent, PipelineSpec, WebhookFormat};
use stagecoach_api::release::{NotificationRecord, ReleasePhase, ReleaseSpec, ReleaseStatus};

use super::{event_name, reason_of_event};
use crate::pipeline::type_name;
use crate::schedule::{ScheduleInput, decide};

/// The release an event is about, as it is now.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    pub spec: &'a ReleaseSpec,
    pub status: &'a ReleaseStatus,
    /// The Pipeline the release follows (for the earliest start of its last stage).
    pub pipeline: Option<&'a PipelineSpec>,
    /// The time of rendering.
    pub now: DateTime<Utc>,
}

/// A body to POST and its content type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    pub content_type: &'static str,
    pub body: String,
}

/// The body for a receiver of this `format` (CloudEvents when unset).
pub fn render(
    subject: &Subject<'_>,
    record: &NotificationRecord,
    format: Option<WebhookFormat>,
) -> Rendered {
    match format.unwrap_or(WebhookFormat::Cloudevents) {
        WebhookFormat::Cloudevents => Rendered {
            content_type: "application/cloudevents+json; charset=utf-8",
            body: cloudevent(subject, record).to_string(),
        },
        WebhookFormat::Slack => Rendered {
            content_type: "application/json",
            body: slack(subject, record).to_string(),
        },
    }
}

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The CloudEvents `source` of a release's events: its API path.
pub fn source(namespace: &str, name: &str) -> String {
    format!("/apis/stagecoach.dev/v1alpha1/namespaces/{namespace}/releases/{name}")
}

/// A CloudEvents 1.0 event, structured JSON: `type` is `dev.stagecoach.release.<Event>`
/// with the event named as in the Pipeline, `subject` the stage (when there is one).
pub fn cloudevent(subject: &Subject<'_>, record: &NotificationRecord) -> Value {
    let mut event = json!({
        "specversion": "1.0",
        "id": record.id,
        "source": source(subject.namespace, subject.name),
        "type": format!("dev.stagecoach.release.{}", event_name(record.event)),
        "time": time(record.at),
        "datacontenttype": "application/json",
        "data": data(subject, record),
    });
    if let Some(stage) = &record.stage {
        event["subject"] = json!(stage);
    }
    event
}

/// The timeline message of the entry the record was made from, if it is still there.
fn message(status: &ReleaseStatus, record: &NotificationRecord) -> Option<String> {
    let reason = reason_of_event(record.event)?;
    status
        .timeline
        .iter()
        .find(|t| t.reason == reason && t.stage == record.stage && t.at == record.at)
        .map(|t| t.message.clone())
}

/// What every event says about the release, plus what its kind adds.
#[allow(clippy::too_many_lines)] // one arm per event, read top to bottom
fn data(subject: &Subject<'_>, record: &NotificationRecord) -> Value {
    let spec = subject.spec;
    let status = subject.status;
    let mut data = json!({
        "event": event_name(record.event),
        "application": spec.application,
        "release": {"name": subject.name, "namespace": subject.namespace, "uid": subject.uid},
        "version": spec.version,
        "type": type_name(spec.release_type),
        "digest": status.digest,
        "phase": status.phase.map(ReleasePhase::as_str),
    });
    if let Some(stage) = &record.stage {
        data["stage"] = json!(stage);
    }
    if let Some(message) = message(status, record) {
        data["message"] = json!(message);
    }
    let stage_status = record
        .stage
        .as_deref()
        .and_then(|name| status.stages.iter().find(|s| s.name == name));
    let decisions = |decision: Decision| -> Vec<Value> {
        status
            .approvals
            .iter()
            .filter(|a| Some(&a.stage) == record.stage.as_ref() && a.decision == decision)
            .map(|a| serde_json::to_value(a).unwrap_or_default())
            .collect()
    };
    match record.event {
        NotificationEvent::Announced => {
            data["changes"] = json!(spec.changes);
            data["notes"] = json!(spec.notes);
            if let Some((stage, earliest, notice)) = earliest_last_stage(subject) {
                data["lastStage"] = json!(stage);
                data["notice"] = json!(notice);
                data["earliestLastStageStart"] = json!(earliest.map(time));
            }
        }
        NotificationEvent::ApprovalRequired => {
            if let Some(policy) = subject
                .pipeline
                .and_then(|p| {
                    p.stages
                        .iter()
                        .find(|s| Some(&s.name) == record.stage.as_ref())
                })
                .and_then(|s| s.approval.as_ref())
            {
                data["required"] = json!(policy.required);
            }
        }
        NotificationEvent::Approved => data["approvals"] = json!(decisions(Decision::Approve)),
        NotificationEvent::Rejected => data["approvals"] = json!(decisions(Decision::Reject)),
        NotificationEvent::StageStarted => {
            if let Some(stage) = stage_status {
                data["namespace"] = json!(stage.namespace);
            }
        }
        NotificationEvent::StageSucceeded | NotificationEvent::EarlyLifeSupportStarted => {
            if let Some(stage) = stage_status {
                data["gates"] = json!(stage.gates);
                if let (Some(start), Some(end)) = (stage.started_at, stage.finished_at) {
                    data["durationSeconds"] = json!((end - start).num_seconds());
                }
            }
        }
        NotificationEvent::RolledBack => {
            // The rollback of this stage closest to the event, and the verdicts behind it.
            let rollback = status
                .rollbacks
                .iter()
                .filter(|r| Some(&r.stage) == record.stage.as_ref())
                .min_by_key(|r| (r.at - record.at).num_seconds().abs());
            data["rollback"] = json!(rollback);
            data["gates"] = json!(stage_status.map(|s| s.gates.clone()).unwrap_or_default());
        }
        NotificationEvent::Closed => {
            data["outcome"] = json!(status.phase.map(ReleasePhase::as_str));
            data["completedAt"] = json!(status.completed_at.map(time));
            data["changes"] = json!(spec.changes);
            data["notes"] = json!(spec.notes);
            data["approvals"] = json!(status.approvals);
            data["rollbacks"] = json!(status.rollbacks);
            data["closingRecord"] = json!(status.closing_record);
            data["stages"] = json!(
                status
                    .stages
                    .iter()
                    .map(|s| json!({"name": s.name, "phase": s.phase.as_str(), "gates": s.gates}))
                    .collect::<Vec<_>>()
            );
        }
    }
    data
}

/// (last stage, earliest start of it as the policy stands now, notice) for a release
/// that follows a Pipeline: windows, freezes and the notice counted from `announcedAt`,
/// or from now when it is being announced.
fn earliest_last_stage(
    subject: &Subject<'_>,
) -> Option<(String, Option<DateTime<Utc>>, Option<String>)> {
    let pipeline = subject.pipeline?;
    let last = pipeline.stages.last()?;
    let policy = pipeline
        .release_types
        .as_ref()
        .and_then(|t| t.get(subject.spec.release_type));
    let notice_text = policy.and_then(|p| p.notice.clone());
    let decision = decide(&ScheduleInput {
        stage: &last.name,
        is_last_stage: true,
        release_type: subject.spec.release_type,
        windows: policy.map(|p| p.windows.as_slice()).unwrap_or_default(),
        freezes: &pipeline.freezes,
        notice: notice_text.as_deref().and_then(|n| parse_duration(n).ok()),
        announced_at: Some(subject.status.announced_at.unwrap_or(subject.now)),
        now: subject.now,
    });
    Some((last.name.clone(), decision.until(subject.now), notice_text))
}

/// One line for people about the event.
pub fn headline(subject: &Subject<'_>, record: &NotificationRecord) -> String {
    let who = format!(
        "{} {} ({} release {})",
        subject.spec.application,
        subject.spec.version,
        type_name(subject.spec.release_type),
        subject.name
    );
    let stage = record.stage.as_deref().unwrap_or("?");
    match record.event {
        NotificationEvent::Announced => format!("{who} is announced"),
        NotificationEvent::ApprovalRequired => format!("{who} needs approval to enter {stage}"),
        NotificationEvent::Approved => format!("{who} was approved into {stage}"),
        NotificationEvent::Rejected => format!("{who} was rejected at {stage}"),
        NotificationEvent::StageStarted => format!("{who} started in {stage}"),
        NotificationEvent::StageSucceeded => format!("{who} succeeded in {stage}"),
        NotificationEvent::RolledBack => format!("{who} was rolled back in {stage}"),
        NotificationEvent::EarlyLifeSupportStarted => {
            format!("{who} is live in {stage}: early life support started")
        }
        NotificationEvent::Closed => format!(
            "{who} closed: {}",
            subject.status.phase.map_or("ended", |p| p.as_str())
        ),
    }
}

/// A Slack incoming-webhook message: `text` (also the notification's fallback) and
/// blocks with the details.
pub fn slack(subject: &Subject<'_>, record: &NotificationRecord) -> Value {
    let headline = headline(subject, record);
    let mut detail = String::new();
    if let Some(message) = message(subject.status, record) {
        let _ = writeln!(detail, "{message}");
    }
    let data = data(subject, record);
    if let Some(earliest) = data["earliestLastStageStart"].as_str() {
        let _ = writeln!(
            detail,
            "Earliest start of {}: {earliest}",
            data["lastStage"].as_str().unwrap_or("the last stage")
        );
    }
    if let Some(rollback) = data.get("rollback").filter(|r| !r.is_null()) {
        let _ = writeln!(
            detail,
            "Reason: {} ({})",
            rollback["reason"].as_str().unwrap_or_default(),
            rollback["message"].as_str().unwrap_or_default()
        );
    }
    if let Some(gates) = data["gates"].as_array() {
        for gate in gates {
            let _ = writeln!(
                detail,
                "• gate {}: {} {}",
                gate["name"].as_str().unwrap_or_default(),
                gate["verdict"].as_str().unwrap_or_default(),
                gate["message"].as_str().unwrap_or_default()
            );
        }
    }
    if matches!(
        record.event,
        NotificationEvent::Announced | NotificationEvent::Closed
    ) {
        for change in &subject.spec.changes {
            match &change.url {
                Some(url) => {
                    let _ = writeln!(detail, "• <{url}|{}> {}", change.id, change.title);
                }
                None => {
                    let _ = writeln!(detail, "• {} {}", change.id, change.title);
                }
            }
        }
    }
    let mut blocks = vec![json!({
        "type": "section",
        "text": {"type": "mrkdwn", "text": format!("*{headline}*")}
    })];
    if !detail.is_empty() {
        // Slack refuses a section text over 3000 characters.
        let detail: String = detail.trim_end().chars().take(2900).collect();
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": detail}}));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": format!(
            "{}/{} · {} · {}",
            subject.namespace, subject.name, time(record.at), record.id
        )}]
    }));
    json!({"text": headline, "blocks": blocks})
}
