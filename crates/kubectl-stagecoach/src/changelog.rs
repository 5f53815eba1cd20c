//! `changelog` and `dora`: what the plugin prints from the audit records (the immutable
//! ConfigMaps the operator writes when a release ends), as pure functions of the record
//! documents (snapshot-tested against records made from the fixtures).

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde_json::Value;
use stagecoach_engine::dora::{Report, Summary};

const TIME: &str = "%Y-%m-%d %H:%M:%S";

fn time(doc: &Value, field: &str) -> Option<DateTime<Utc>> {
    doc.get(field)?
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn text<'a>(doc: &'a Value, field: &str) -> &'a str {
    doc.get(field).and_then(Value::as_str).unwrap_or_default()
}

fn items<'a>(doc: &'a Value, field: &str) -> &'a [Value] {
    doc.get(field)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// When the release ended (the record's completedAt).
fn completed(doc: &Value) -> Option<DateTime<Utc>> {
    time(doc, "completedAt")
}

/// Sorts record documents newest first: by the time the release ended, then by name.
pub fn newest_first(records: &mut [Value]) {
    records.sort_by(|a, b| {
        completed(b)
            .cmp(&completed(a))
            .then_with(|| text(&b["release"], "name").cmp(text(&a["release"], "name")))
    });
}

/// `changelog --format text`: one line per release, newest first.
pub fn table(records: &[Value]) -> String {
    let mut out = format!(
        "{:<20} {:<12} {:<6} {:<12} {:>7}  RELEASE\n",
        "ENDED", "VERSION", "TYPE", "OUTCOME", "CHANGES"
    );
    for doc in records {
        let _ = writeln!(
            out,
            "{:<20} {:<12} {:<6} {:<12} {:>7}  {}",
            completed(doc).map_or_else(|| "-".to_owned(), |t| t.format(TIME).to_string()),
            text(doc, "version"),
            text(doc, "type"),
            text(doc, "outcome"),
            items(doc, "changes").len(),
            text(&doc["release"], "name"),
        );
    }
    out
}

/// What happened to the release, in words for its clients.
fn outcome(doc: &Value) -> String {
    let dora = &doc["dora"];
    let last = text(dora, "lastStage");
    let deployed = time(dora, "deployedAt");
    let rollback = items(doc, "rollbacks").last();
    let on = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M UTC").to_string();
    match text(doc, "outcome") {
        "Succeeded" => match deployed {
            Some(t) => format!("Released to {last} on {}.", on(t)),
            None => "Released.".to_owned(),
        },
        "RolledBack" => {
            let (stage, why, at) = rollback.map_or(("", "", None), |r| {
                (text(r, "stage"), text(r, "reason"), time(r, "at"))
            });
            let when = at.map(|t| format!(" on {}", on(t))).unwrap_or_default();
            match deployed {
                Some(t) if stage == last => format!(
                    "Released to {last} on {}, then rolled back{when} ({why}).",
                    on(t)
                ),
                _ => format!("Not released: rolled back in {stage}{when} ({why})."),
            }
        }
        "Rejected" => {
            let stage = items(doc, "approvals")
                .iter()
                .rev()
                .find(|a| text(a, "decision") == "Reject")
                .map_or("", |a| text(a, "stage"));
            format!("Not released: rejected at {stage}.")
        }
        "Superseded" => "Not released: superseded by a newer release.".to_owned(),
        "Failed" => format!("Not released: {}.", text(doc, "message")),
        other => format!("{other}."),
    }
}

/// `changelog --format markdown`: release notes a team can hand to its clients, newest
/// first: version, type and date, what happened, the changes with their links, the
/// notes.
pub fn markdown(application: &str, records: &[Value]) -> String {
    let mut out = format!("# {application}: release notes\n");
    if records.is_empty() {
        out.push_str("\nNo release has ended yet.\n");
    }
    for doc in records {
        let date = time(&doc["dora"], "deployedAt")
            .or_else(|| completed(doc))
            .map(|t| t.format("%Y-%m-%d").to_string())
            .unwrap_or_default();
        let _ = write!(
            out,
            "\n## {} ({}), {date}\n\n{}\n",
            text(doc, "version"),
            text(doc, "type"),
            outcome(doc)
        );
        let changes = items(doc, "changes");
        if !changes.is_empty() {
            out.push_str("\n### Changes\n\n");
            for change in changes {
                let id = text(change, "id");
                let title = text(change, "title");
                match change.get("url").and_then(Value::as_str) {
                    Some(url) => {
                        let _ = writeln!(out, "- [{id}]({url}): {title}");
                    }
                    None => {
                        let _ = writeln!(out, "- {id}: {title}");
                    }
                }
            }
            let cut = items(doc, "truncated")
                .iter()
                .find(|m| text(m, "field") == "changes");
            if let Some(cut) = cut {
                let total = cut["total"].as_u64().unwrap_or_default();
                let kept = cut["kept"].as_u64().unwrap_or_default();
                let _ = writeln!(
                    out,
                    "- and {} more (the record was too large to keep them all)",
                    total.saturating_sub(kept)
                );
            }
        }
        let notes = text(doc, "notes").trim();
        if !notes.is_empty() {
            let _ = write!(out, "\n### Notes\n\n{notes}\n");
        }
    }
    out
}

fn duration(seconds: f64) -> String {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // rounded seconds
    let total = seconds.max(0.0).round() as u64;
    let (days, hours, minutes, secs) = (
        total / 86_400,
        total % 86_400 / 3600,
        total % 3600 / 60,
        total % 60,
    );
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, _) => format!("{minutes}m {secs}s"),
        (0, _, _) => format!("{hours}h {minutes}m"),
        _ => format!("{days}d {hours}h"),
    }
}

fn summary(s: Option<&Summary>, what: &str) -> String {
    s.map_or_else(
        || "-".to_owned(),
        |s| {
            format!(
                "median {} (mean {}, {} {what})",
                duration(s.median_seconds),
                duration(s.mean_seconds),
                s.count
            )
        },
    )
}

/// `dora --format text`: the four figures, with what they were computed from.
pub fn dora_text(
    application: &str,
    namespace: &str,
    last_stage: &str,
    records: usize,
    report: &Report,
) -> String {
    let mut out = String::new();
    #[allow(clippy::cast_precision_loss)] // seconds far below 2^52
    let days = (report.until - report.since).num_seconds() as f64 / 86_400.0;
    let _ = writeln!(
        out,
        "DORA metrics of {application} (namespace {namespace}), {} to {} ({days:.0} days), \
         from {records} audit records",
        report.since.format(TIME),
        report.until.format(TIME)
    );
    let _ = writeln!(
        out,
        "deployment frequency:   {:.2} per day ({} deployments to {last_stage}, on {} days)",
        report.deployments_per_day, report.deployments, report.days_with_deployments
    );
    let _ = writeln!(
        out,
        "lead time for changes:  {}",
        summary(report.lead_time.as_ref(), "changes")
    );
    let _ = writeln!(
        out,
        "change failure rate:    {}",
        report.change_failure_rate.map_or_else(
            || format!("- (no release entered {last_stage})"),
            |rate| format!(
                "{:.1}% ({} of {} releases entering {last_stage} rolled back there)",
                rate * 100.0,
                report.failures,
                report.releases_entering_last_stage
            )
        )
    );
    let _ = writeln!(
        out,
        "time to restore:        {}",
        summary(report.time_to_restore.as_ref(), "rollbacks")
    );
    out
}

/// Parses `--since`: days (`30d`), weeks (`2w`) or a duration as Stagecoach writes them
/// (`12h`, `90m`).
pub fn parse_since(input: &str) -> Result<chrono::Duration, String> {
    let days = |n: &str, per: i64| {
        n.parse::<i64>()
            .ok()
            .filter(|n| *n > 0)
            .and_then(|n| chrono::Duration::try_days(n * per))
    };
    let parsed = if let Some(n) = input.strip_suffix('d') {
        days(n, 1)
    } else if let Some(n) = input.strip_suffix('w') {
        days(n, 7)
    } else {
        stagecoach_api::parse_duration(input)
            .ok()
            .and_then(|d| chrono::Duration::from_std(d).ok())
    };
    parsed.ok_or_else(|| {
        format!("--since {input:?}: write a number of days, weeks or hours, such as 30d, 2w or 12h")
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use kube::ResourceExt;
    use stagecoach_api::Release;
    use stagecoach_engine::dora;
    use stagecoach_engine::record::{self, RecordInput};

    use super::*;
    use crate::render::tests::fixture;

    /// The record the operator would write for a fixture Release.
    fn record_of(release: &Release) -> Value {
        let status = release.status.clone().unwrap_or_default();
        let created = release
            .creation_timestamp()
            .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0))
            .unwrap();
        record::document(&RecordInput {
            name: &release.name_any(),
            namespace: &release.namespace().unwrap(),
            uid: &release.uid().unwrap(),
            created,
            spec: &release.spec,
            status: &status,
            pipeline: Some("shop"),
            archived_at: status.completed_at.unwrap(),
        })
    }

    fn records() -> Vec<Value> {
        let mut records: Vec<Value> = ["rolled-back", "succeeded", "rejected"]
            .into_iter()
            .map(|name| record_of(&fixture(name)))
            .collect();
        newest_first(&mut records);
        records
    }

    #[test]
    fn records_come_newest_first() {
        let records = records();
        let versions: Vec<&str> = records.iter().map(|r| text(r, "version")).collect();
        assert_eq!(versions, ["2.0.0", "2.3.0", "1.9.0"]);
    }

    #[test]
    fn changelog_as_a_table() {
        insta::assert_snapshot!(table(&records()));
    }

    #[test]
    fn changelog_as_release_notes_in_markdown() {
        insta::assert_snapshot!(markdown("shop", &records()));
    }

    #[test]
    fn release_notes_of_a_record_whose_changes_were_cut() {
        let mut doc = record_of(&fixture("succeeded"));
        doc["changes"].as_array_mut().unwrap().truncate(1);
        doc["truncated"] =
            serde_json::json!([{"field": "changes", "kept": 1, "total": 3, "unit": "entries"}]);
        let notes = markdown("shop", &[doc]);
        assert!(
            notes.contains("- and 2 more (the record was too large to keep them all)"),
            "{notes}"
        );
    }

    #[test]
    fn dora_figures_as_text() {
        let facts: Vec<_> = records()
            .iter()
            .filter_map(dora::facts_of_document)
            .collect();
        let since = DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let until = since + chrono::Duration::days(30);
        let report = dora::report(&facts, since, until);
        insta::assert_snapshot!(dora_text("shop", "shop", "prod", facts.len(), &report));
    }

    #[test]
    fn since_takes_days_weeks_and_durations() {
        assert_eq!(parse_since("30d"), Ok(chrono::Duration::days(30)));
        assert_eq!(parse_since("2w"), Ok(chrono::Duration::days(14)));
        assert_eq!(parse_since("12h"), Ok(chrono::Duration::hours(12)));
        assert!(parse_since("0d").is_err());
        assert!(parse_since("soon").is_err());
    }
}
