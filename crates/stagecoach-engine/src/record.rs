//! The audit record of a release that ended: what the operator writes to an immutable
//! ConfigMap in the release's namespace so that the record outlives the Release (deleted,
//! or pruned from Git). The IO shell writes what [`document`] returns under [`DATA_KEY`],
//! named [`record_name`] and labelled [`labels`]; this module decides what is in it, when
//! it is written ([`due`]), how it fits in a ConfigMap ([`render`]) and which records a
//! Pipeline's retention lets go ([`to_prune`]).
//!
//! # The document
//!
//! One JSON object with stable, camelCase field names (`schema` names the version of this
//! layout, [`SCHEMA`]): the release (name, namespace, uid, creation), application,
//! version, type, digest, outcome and message, when it started, ended and was archived,
//! its changes and notes, workloads, the approvals that counted (approver, decision,
//! digest, time, override), the notifications and how their delivery went, one entry
//! per stage (phase, start, end, duration, when it reached 100 %, gate results), the
//! rollbacks with their reasons and the gate verdicts of the stage rolled back, the
//! timeline, and the DORA facts of the release ([`crate::dora::Facts`], computed once,
//! here, so the figures of a record never change when this code does).
//!
//! The record is built from the Release's spec and status at the time it is written,
//! not from `status.closingRecord` alone: the last notifications (`Closed`) are
//! delivered after the release ended, and the record says whether they arrived.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use stagecoach_api::pipeline::Retention;
use stagecoach_api::release::{ReleasePhase, ReleaseSpec, ReleaseStatus};

use crate::dora;
use crate::notify;
use crate::release::plan::reason;

/// Version of the document's layout, its `schema` field.
pub const SCHEMA: &str = "stagecoach.dev/record/v1";
/// The ConfigMap key holding the document.
pub const DATA_KEY: &str = "record.json";
/// Label on every record ConfigMap (value `"true"`): what the operator and the plugin
/// select on.
pub const RECORD_LABEL: &str = "stagecoach.dev/record";
/// Label: the application the release belongs to.
pub const APPLICATION_LABEL: &str = "stagecoach.dev/application";
/// Label: the Release's name (when it is a valid label value; always in the annotation
/// [`RELEASE_ANNOTATION`]).
pub const RELEASE_LABEL: &str = "stagecoach.dev/release";
/// Label: the Release's uid.
pub const RELEASE_UID_LABEL: &str = "stagecoach.dev/release-uid";
/// Annotation: the Release's name.
pub const RELEASE_ANNOTATION: &str = "stagecoach.dev/release";
/// Annotation: when the release ended (RFC 3339); retention and ordering read it without
/// parsing the document.
pub const COMPLETED_ANNOTATION: &str = "stagecoach.dev/completed-at";
/// Annotation: the release's outcome (Succeeded, RolledBack, ...).
pub const OUTCOME_ANNOTATION: &str = "stagecoach.dev/outcome";
/// Annotation: the release's version.
pub const VERSION_ANNOTATION: &str = "stagecoach.dev/version";
/// Largest document written, in bytes. A ConfigMap holds at most 1 MiB in all; this
/// leaves room for its metadata. A larger record is cut down by [`render`], which says
/// what it cut.
pub const SIZE_LIMIT: usize = 900 * 1024;
/// How long after a release ended its record waits for notifications still being
/// delivered (so that the record says whether `Closed` arrived). After this, or as soon as
/// nothing is pending, or when the Release is being deleted, the record is written.
pub const NOTIFICATION_GRACE: Duration = Duration::from_secs(600);

/// What a record is made from.
#[derive(Clone, Copy, Debug)]
pub struct RecordInput<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub uid: &'a str,
    pub created: DateTime<Utc>,
    pub spec: &'a ReleaseSpec,
    pub status: &'a ReleaseStatus,
    /// The Pipeline the release followed, if its application has one.
    pub pipeline: Option<&'a str>,
    /// When the record is written.
    pub archived_at: DateTime<Utc>,
}

/// When the record of a release is to be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// The release has not ended: no record.
    NotEnded,
    /// Write it now.
    Now,
    /// Write it at this time, unless the last notifications are settled before.
    At(DateTime<Utc>),
}

/// Whether the record of a release with this status is written now: once it has ended
/// and no notification is still pending, or [`NOTIFICATION_GRACE`] after it ended, or at
/// once when the Release is being deleted.
pub fn due(status: &ReleaseStatus, deleting: bool, now: DateTime<Utc>) -> Due {
    if !status.phase.is_some_and(ReleasePhase::is_terminal) {
        return Due::NotEnded;
    }
    if deleting || !status.notifications.iter().any(notify::is_pending) {
        return Due::Now;
    }
    let ended = status.completed_at.unwrap_or(now);
    let deadline = ended + chrono::Duration::from_std(NOTIFICATION_GRACE).unwrap_or_default();
    if now >= deadline {
        Due::Now
    } else {
        Due::At(deadline)
    }
}

/// The record ConfigMap's name: `stagecoach-record-<release>-<first 8 characters of the
/// uid>`, the release's part shortened so the name stays a valid DNS subdomain of at most
/// 253 characters. Stable: writing a release's record twice names the same object.
pub fn record_name(release: &str, uid: &str) -> String {
    const PREFIX: &str = "stagecoach-record-";
    let short: String = uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase();
    let room = 253 - PREFIX.len() - 1 - short.len();
    let mut middle: String = release.chars().take(room).collect();
    while middle.ends_with(['-', '.']) {
        middle.pop();
    }
    if middle.is_empty() {
        format!("{PREFIX}{short}")
    } else {
        format!("{PREFIX}{middle}-{short}")
    }
}

/// Whether `value` can be a label value (at most 63 characters of `[A-Za-z0-9_.-]`,
/// beginning and ending with a letter or digit).
pub fn is_label_value(value: &str) -> bool {
    value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && value
            .chars()
            .next()
            .is_none_or(|c| c.is_ascii_alphanumeric())
        && value
            .chars()
            .last()
            .is_none_or(|c| c.is_ascii_alphanumeric())
}

/// The record ConfigMap's labels.
pub fn labels(input: &RecordInput<'_>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "stagecoach".to_owned(),
        ),
        (RECORD_LABEL.to_owned(), "true".to_owned()),
        (APPLICATION_LABEL.to_owned(), input.spec.application.clone()),
        (RELEASE_UID_LABEL.to_owned(), input.uid.to_owned()),
    ]);
    if is_label_value(input.name) {
        labels.insert(RELEASE_LABEL.to_owned(), input.name.to_owned());
    }
    labels.retain(|_, v| is_label_value(v));
    labels
}

/// The record ConfigMap's annotations: the release's name, version, outcome and end.
pub fn annotations(input: &RecordInput<'_>) -> BTreeMap<String, String> {
    let mut annotations = BTreeMap::from([
        (RELEASE_ANNOTATION.to_owned(), input.name.to_owned()),
        (VERSION_ANNOTATION.to_owned(), input.spec.version.clone()),
    ]);
    if let Some(phase) = input.status.phase {
        annotations.insert(OUTCOME_ANNOTATION.to_owned(), phase.as_str().to_owned());
    }
    if let Some(at) = input.status.completed_at {
        annotations.insert(COMPLETED_ANNOTATION.to_owned(), rfc3339(at));
    }
    annotations
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn seconds_between(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Option<i64> {
    Some((to? - from?).num_seconds())
}

/// Puts `value` under `key` unless it is null or an empty array.
fn put(map: &mut Map<String, Value>, key: &str, value: Value) {
    let empty = value.is_null() || value.as_array().is_some_and(Vec::is_empty);
    if !empty {
        map.insert(key.to_owned(), value);
    }
}

/// The closing record of a release, as the JSON document described in the module
/// documentation.
pub fn document(input: &RecordInput<'_>) -> Value {
    let (spec, status) = (input.spec, input.status);
    let mut doc = Map::new();
    doc.insert("schema".into(), SCHEMA.into());
    doc.insert(
        "release".into(),
        json!({
            "name": input.name,
            "namespace": input.namespace,
            "uid": input.uid,
            "createdAt": rfc3339(input.created),
        }),
    );
    doc.insert("application".into(), spec.application.clone().into());
    put(&mut doc, "pipeline", json!(input.pipeline));
    doc.insert("version".into(), spec.version.clone().into());
    doc.insert("type".into(), json!(spec.release_type));
    put(&mut doc, "digest", json!(status.digest));
    put(&mut doc, "outcome", json!(status.phase));
    put(&mut doc, "message", json!(status.message));
    put(&mut doc, "startedAt", json!(status.started_at.map(rfc3339)));
    put(
        &mut doc,
        "completedAt",
        json!(status.completed_at.map(rfc3339)),
    );
    doc.insert("archivedAt".into(), rfc3339(input.archived_at).into());
    put(
        &mut doc,
        "durationSeconds",
        json!(seconds_between(Some(input.created), status.completed_at)),
    );
    put(
        &mut doc,
        "leadTimeSeconds",
        json!(
            status
                .closing_record
                .as_ref()
                .and_then(|c| c.lead_time_seconds)
        ),
    );
    put(&mut doc, "changes", json!(spec.changes));
    put(&mut doc, "notes", json!(spec.notes));
    put(&mut doc, "workloads", json!(spec.workloads));
    put(&mut doc, "approvals", json!(status.approvals));
    put(
        &mut doc,
        "announcedAt",
        json!(status.announced_at.map(rfc3339)),
    );
    put(&mut doc, "notifications", json!(status.notifications));
    doc.insert("stages".into(), Value::Array(stages(status)));
    put(&mut doc, "rollbacks", Value::Array(rollbacks(status)));
    put(&mut doc, "timeline", json!(status.timeline));
    doc.insert(
        "dora".into(),
        json!(dora::Facts::of(input.created, spec, status)),
    );
    Value::Object(doc)
}

/// When the stage reached 100 % and stayed there to be watched (the last stage's early
/// life support), from the timeline.
fn reached_full(status: &ReleaseStatus, stage: &str) -> Option<DateTime<Utc>> {
    status
        .timeline
        .iter()
        .rev()
        .find(|t| t.reason == reason::EARLY_LIFE_SUPPORT && t.stage.as_deref() == Some(stage))
        .map(|t| t.at)
}

fn stages(status: &ReleaseStatus) -> Vec<Value> {
    status
        .stages
        .iter()
        .map(|s| {
            let mut entry = Map::new();
            entry.insert("name".into(), s.name.clone().into());
            put(
                &mut entry,
                "namespace",
                json!(Some(&s.namespace).filter(|n| !n.is_empty())),
            );
            entry.insert("phase".into(), s.phase.as_str().into());
            put(&mut entry, "startedAt", json!(s.started_at.map(rfc3339)));
            put(&mut entry, "finishedAt", json!(s.finished_at.map(rfc3339)));
            put(
                &mut entry,
                "durationSeconds",
                json!(seconds_between(s.started_at, s.finished_at)),
            );
            put(
                &mut entry,
                "earlyLifeSupportStartedAt",
                json!(reached_full(status, &s.name).map(rfc3339)),
            );
            let steps = status
                .timeline
                .iter()
                .filter(|t| {
                    t.reason == reason::STEP_COMPLETED && t.stage.as_deref() == Some(&s.name)
                })
                .count();
            if steps > 0 {
                entry.insert("stepsCompleted".into(), steps.into());
            }
            put(&mut entry, "gates", json!(s.gates));
            put(&mut entry, "message", json!(s.message));
            Value::Object(entry)
        })
        .collect()
}

fn rollbacks(status: &ReleaseStatus) -> Vec<Value> {
    status
        .rollbacks
        .iter()
        .map(|r| {
            let stage = status.stages.iter().find(|s| s.name == r.stage);
            let mut entry = Map::new();
            entry.insert("at".into(), rfc3339(r.at).into());
            entry.insert("stage".into(), r.stage.clone().into());
            entry.insert("reason".into(), r.reason.clone().into());
            put(
                &mut entry,
                "message",
                json!(Some(&r.message).filter(|m| !m.is_empty())),
            );
            put(
                &mut entry,
                "failingSince",
                json!(
                    stage
                        .and_then(|s| dora::failing_since(s, r.at))
                        .map(rfc3339)
                ),
            );
            // The verdicts the stage ended with: those that caused the rollback.
            put(
                &mut entry,
                "gates",
                json!(stage.map(|s| s.gates.clone()).unwrap_or_default()),
            );
            Value::Object(entry)
        })
        .collect()
}

/// The document as it is stored: pretty-printed when that fits in `limit` bytes, else
/// compact, else cut down (see [`fit`]). Returns the text and whether anything was cut.
pub fn render(doc: &Value, limit: usize) -> (String, bool) {
    if let Ok(pretty) = serde_json::to_string_pretty(doc)
        && pretty.len() <= limit
    {
        return (pretty, false);
    }
    let compact = doc.to_string();
    if compact.len() <= limit {
        return (compact, false);
    }
    (fit(doc.clone(), limit).to_string(), true)
}

/// What [`fit`] removed from one field, recorded in the document's `truncated` list.
fn marker(field: &str, kept: usize, total: usize, unit: &str) -> Value {
    json!({"field": field, "kept": kept, "total": total, "unit": unit})
}

fn size(doc: &Value) -> usize {
    serde_json::to_vec(doc).map_or(usize::MAX, |v| v.len())
}

/// Cuts a document down to at most `limit` bytes (compact JSON), saying what was cut in
/// a `truncated` list of `{field, kept, total, unit}`. In order, until it fits: the
/// oldest timeline entries, the oldest notifications, the notes (to a prefix), the
/// changes (the first ones kept), long stage, rollback and gate messages. The facts
/// (release, outcome, stages, rollbacks, approvals, DORA) are never cut; a record that
/// still does not fit keeps only them and says everything else was dropped.
pub fn fit(mut doc: Value, limit: usize) -> Value {
    // The marker list takes room too: reserve some for it.
    let budget = limit.saturating_sub(1024);
    let fits = |doc: &Value| size(doc) <= budget;
    let mut cuts: Vec<Value> = Vec::new();
    let steps: [Cut<'_>; 5] = [
        &|doc| cut_list(doc, "timeline", true, budget),
        &|doc| cut_list(doc, "notifications", true, budget),
        &|doc| cut_notes(doc, budget),
        &|doc| cut_list(doc, "changes", false, budget),
        &|doc| Some(cut_messages(doc)),
    ];
    for step in steps {
        if fits(&doc) {
            break;
        }
        cuts.extend(step(&mut doc));
    }
    if !fits(&doc) {
        let object = doc.as_object().cloned().unwrap_or_default();
        let kept: Map<String, Value> = object
            .into_iter()
            .filter(|(key, _)| {
                matches!(
                    key.as_str(),
                    "schema"
                        | "release"
                        | "application"
                        | "pipeline"
                        | "version"
                        | "type"
                        | "digest"
                        | "outcome"
                        | "startedAt"
                        | "completedAt"
                        | "archivedAt"
                        | "durationSeconds"
                        | "leadTimeSeconds"
                        | "dora"
                )
            })
            .collect();
        doc = Value::Object(kept);
        cuts.push(json!({"field": "*", "unit": "fields", "kept": 0}));
    }
    doc["truncated"] = Value::Array(cuts);
    doc
}

/// One way of making a document smaller; the marker saying what it cut, if anything.
type Cut<'a> = &'a dyn Fn(&mut Value) -> Option<Value>;

/// Keeps as many entries of the list `field` as fit in `budget` (the newest when
/// `keep_end`, else the first); the marker when it cut any.
fn cut_list(doc: &mut Value, field: &str, keep_end: bool, budget: usize) -> Option<Value> {
    let total = doc[field].as_array().map_or(0, Vec::len);
    if total == 0 {
        return None;
    }
    let slice = |kept: usize| {
        let mut out = doc.clone();
        if let Some(items) = out[field].as_array_mut() {
            if keep_end {
                items.drain(..total - kept);
            } else {
                items.truncate(kept);
            }
        }
        out
    };
    let (mut low, mut high) = (0, total);
    while low < high {
        let mid = (low + high).div_ceil(2);
        if size(&slice(mid)) <= budget {
            low = mid;
        } else {
            high = mid - 1;
        }
    }
    *doc = slice(low);
    Some(marker(field, low, total, "entries"))
}

/// Shortens the notes so the document fits in `budget`, ending them with `[truncated]`.
fn cut_notes(doc: &mut Value, budget: usize) -> Option<Value> {
    let notes = doc["notes"].as_str()?.to_owned();
    let total = notes.chars().count();
    // Each character is at least one byte: cutting the excess in characters is enough.
    let over = size(doc).saturating_sub(budget);
    let kept = total.saturating_sub(over + 32);
    let mut cut: String = notes.chars().take(kept).collect();
    cut.push_str(" [truncated]");
    doc["notes"] = cut.into();
    Some(marker("notes", kept, total, "characters"))
}

/// Shortens stage, rollback and gate messages to 200 characters.
fn cut_messages(doc: &mut Value) -> Value {
    const KEEP: usize = 200;
    let shorten = |value: &mut Value| {
        if let Some(message) = value["message"].as_str()
            && message.chars().count() > KEEP
        {
            let short: String = message.chars().take(KEEP).collect();
            value["message"] = format!("{short} [truncated]").into();
        }
    };
    for list in ["stages", "rollbacks"] {
        let items = doc.get_mut(list).and_then(Value::as_array_mut);
        for item in items.into_iter().flatten() {
            shorten(item);
            let gates = item.get_mut("gates").and_then(Value::as_array_mut);
            for gate in gates.into_iter().flatten() {
                shorten(gate);
            }
        }
    }
    json!({"field": "messages", "unit": "characters", "kept": KEEP})
}

/// A record as retention sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Archived {
    /// The ConfigMap's name.
    pub name: String,
    /// When the release ended.
    pub completed_at: DateTime<Utc>,
}

/// The records of one application that `retention` lets go, oldest first: beyond the
/// newest `count`, and those of releases that ended longer than `age` ago.
pub fn to_prune(records: &[Archived], retention: &Retention, now: DateTime<Utc>) -> Vec<String> {
    let mut newest_first: Vec<&Archived> = records.iter().collect();
    newest_first.sort_by(|a, b| {
        b.completed_at
            .cmp(&a.completed_at)
            .then_with(|| b.name.cmp(&a.name))
    });
    let count = retention
        .count
        .and_then(|c| usize::try_from(c).ok())
        .unwrap_or(usize::MAX);
    let oldest_kept = retention
        .age
        .as_deref()
        .and_then(|a| stagecoach_api::parse_duration(a).ok())
        .and_then(|a| chrono::Duration::from_std(a).ok())
        .map(|a| now - a);
    let mut pruned: Vec<String> = newest_first
        .iter()
        .enumerate()
        .filter(|(index, r)| *index >= count || oldest_kept.is_some_and(|t| r.completed_at < t))
        .map(|(_, r)| r.name.clone())
        .collect();
    pruned.reverse();
    pruned
}

#[cfg(test)]
mod tests;
