//! What the plugin prints, as pure functions of Release objects (snapshot-tested against
//! the fixtures in `tests/fixtures/`).

use std::fmt::Write as _;

use kube::ResourceExt;
use stagecoach_api::Release;
use stagecoach_api::condition::{self, ConditionStatus};
use stagecoach_api::release::ReleasePhase;
use stagecoach_engine::release::plan::reason;
use stagecoach_engine::release::promote;

const TIME: &str = "%Y-%m-%d %H:%M:%S";

/// `status`: one line per release (version, phase, where each stage is).
pub fn status_table(releases: &[Release]) -> String {
    let mut out = format!(
        "{:<28} {:<12} {:<10} {:<18} STAGES\n",
        "RELEASE", "APPLICATION", "VERSION", "PHASE"
    );
    for release in releases {
        let status = release.status.clone().unwrap_or_default();
        let phase = status.phase.map_or("-", ReleasePhase::as_str);
        let stages = status
            .stages
            .iter()
            .map(|s| {
                let weight = s.weight.map(|w| format!(" {w}%")).unwrap_or_default();
                format!("{}:{}{weight}", s.name, s.phase.as_str())
            })
            .collect::<Vec<_>>()
            .join("  ");
        let _ = writeln!(
            out,
            "{:<28} {:<12} {:<10} {:<18} {}",
            release.name_any(),
            release.spec.application,
            release.spec.version,
            phase,
            if stages.is_empty() { "-" } else { &stages }
        );
    }
    out
}

/// `status <release>`: the table line, then where the release is, its message and what
/// needs a person (an ignored promote annotation, a Degraded condition).
pub fn status_detail(release: &Release) -> String {
    let mut out = status_table(std::slice::from_ref(release));
    let status = release.status.as_ref();
    let _ = writeln!(
        out,
        "\nposition: {}",
        promote::describe(&release.spec, status)
    );
    if let Some(message) = status.and_then(|s| s.message.as_deref()) {
        let _ = writeln!(out, "message:  {message}");
    }
    let conditions = status.map(|s| s.conditions.as_slice()).unwrap_or_default();
    if let Some(c) =
        condition::find(conditions, "Progressing").filter(|c| c.reason == reason::PROMOTE_IGNORED)
    {
        // The condition's message is the status message followed by the note.
        let message = c.message.as_str();
        let note = message
            .find(" is ignored: ")
            .and_then(|end| message[..end].rfind("annotation "))
            .map_or(message, |start| &message[start..]);
        let _ = writeln!(out, "promote:  {note}");
    }
    if let Some(c) =
        condition::find(conditions, "Degraded").filter(|c| c.status == ConditionStatus::True)
    {
        let _ = writeln!(out, "degraded: {} ({})", c.message, c.reason);
    }
    out
}

/// `history <release>`: the timeline, rollbacks and the closing record.
pub fn history(release: &Release) -> String {
    let status = release.status.clone().unwrap_or_default();
    if status.timeline.is_empty() && status.rollbacks.is_empty() && status.closing_record.is_none()
    {
        return format!(
            "release {} has no history yet (the operator has not started it)\n",
            release.name_any()
        );
    }
    let mut out = format!("{:<22} {:<8} {:<22} MESSAGE\n", "AT", "STAGE", "REASON");
    for entry in &status.timeline {
        let _ = writeln!(
            out,
            "{:<22} {:<8} {:<22} {}",
            entry.at.format(TIME),
            entry.stage.as_deref().unwrap_or("-"),
            entry.reason,
            entry.message
        );
    }
    for rollback in &status.rollbacks {
        let _ = writeln!(
            out,
            "rollback: {} in {} ({}): {}",
            rollback.at.format(TIME),
            rollback.stage,
            rollback.reason,
            rollback.message
        );
    }
    if let Some(record) = status.closing_record {
        let _ = writeln!(
            out,
            "closed {} at {}; lead time {}",
            record.outcome.as_str(),
            record.completed_at.format(TIME),
            record
                .lead_time_seconds
                .map_or_else(|| "-".to_owned(), |s| format!("{s}s"))
        );
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A fixture Release from `tests/fixtures/`.
    pub fn fixture(name: &str) -> Release {
        let text = match name {
            "waiting" => include_str!("../tests/fixtures/waiting.json"),
            "running" => include_str!("../tests/fixtures/running.json"),
            "rolled-back" => include_str!("../tests/fixtures/rolled-back.json"),
            "new" => include_str!("../tests/fixtures/new.json"),
            other => panic!("no fixture {other}"),
        };
        serde_json::from_str(text).expect(name)
    }

    #[test]
    fn status_of_every_release() {
        let releases: Vec<Release> = ["new", "running", "waiting", "rolled-back"]
            .into_iter()
            .map(fixture)
            .collect();
        insta::assert_snapshot!(status_table(&releases));
    }

    #[test]
    fn status_of_a_release_waiting_for_promotion_with_an_ignored_annotation() {
        insta::assert_snapshot!(status_detail(&fixture("waiting")));
    }

    #[test]
    fn status_of_a_running_release() {
        insta::assert_snapshot!(status_detail(&fixture("running")));
    }

    #[test]
    fn status_of_a_rolled_back_release() {
        insta::assert_snapshot!(status_detail(&fixture("rolled-back")));
    }

    #[test]
    fn status_of_a_release_not_started() {
        insta::assert_snapshot!(status_detail(&fixture("new")));
    }

    #[test]
    fn history_of_a_release_waiting_for_promotion() {
        insta::assert_snapshot!(history(&fixture("waiting")));
    }

    #[test]
    fn history_of_a_rolled_back_release() {
        insta::assert_snapshot!(history(&fixture("rolled-back")));
    }

    #[test]
    fn history_of_a_release_not_started() {
        insta::assert_snapshot!(history(&fixture("new")));
    }
}
