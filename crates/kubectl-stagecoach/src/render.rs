//! What the plugin prints, as pure functions of Release objects (snapshot-tested against
//! the fixtures in `tests/fixtures/`).

use std::fmt::Write as _;

use kube::ResourceExt;
use stagecoach_api::Release;
use stagecoach_api::approval::Decision;
use stagecoach_api::condition::{self, ConditionStatus};
use stagecoach_api::release::{ApprovalRecord, ReleasePhase, ReleaseStatus};
use stagecoach_engine::pipeline::short;
use stagecoach_engine::release::plan::reason;
use stagecoach_engine::release::promote::{self, Position, Route};

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
/// needs a person (an approval, a window, an ignored promote annotation, a Degraded
/// condition), then the decisions that counted. `route` is the release's stages as the
/// operator resolves them (merged into its Pipeline when it has one).
pub fn status_detail(release: &Release, route: &Route) -> String {
    let mut out = status_table(std::slice::from_ref(release));
    let status = release.status.as_ref();
    let _ = writeln!(out, "\nposition: {}", promote::describe(route, status));
    if let Some(message) = status.and_then(|s| s.message.as_deref()) {
        let _ = writeln!(out, "message:  {message}");
    }
    let conditions = status.map(|s| s.conditions.as_slice()).unwrap_or_default();
    if let Some(c) =
        condition::find(conditions, "Accepted").filter(|c| c.status == ConditionStatus::False)
        && status.and_then(|s| s.message.as_deref()) != Some(c.message.as_str())
    {
        let _ = writeln!(out, "refused:  {} ({})", c.message, c.reason);
    }
    if let Some(status) = status {
        decisions(&mut out, release, route, status);
    }
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

/// The stage a release waits to enter: the one its position is before, else its
/// current stage.
fn waiting_stage(route: &Route, status: &ReleaseStatus) -> Option<String> {
    match promote::position(route, Some(status)) {
        Position::BeforeStage(stage) => Some(stage),
        _ => status.current_stage.clone(),
    }
}

/// What a release waiting for people needs from them (an approval, a window or an
/// override), its digest, how it was rejected, and the decisions that counted.
fn decisions(out: &mut String, release: &Release, route: &Route, status: &ReleaseStatus) {
    let name = release.name_any();
    if let Some(digest) = &status.digest {
        let _ = writeln!(out, "digest:   {digest}");
    }
    match status.phase {
        Some(ReleasePhase::AwaitingApproval) => {
            let stage = waiting_stage(route, status).unwrap_or_else(|| "<stage>".into());
            let _ = writeln!(
                out,
                "approve:  kubectl stagecoach approve {name} --stage {stage} -m '<why>' \
                 (or reject); needs RBAC verb approve on releases/{stage}"
            );
        }
        Some(ReleasePhase::WaitingForWindow) => {
            let stage = waiting_stage(route, status).unwrap_or_else(|| "<stage>".into());
            let _ = match status.next_window {
                Some(at) => writeln!(
                    out,
                    "window:   stage {stage} may start at {} UTC",
                    at.format(TIME)
                ),
                None => writeln!(
                    out,
                    "window:   stage {stage} may not start yet, and when it may is not known \
                     yet (see the message)"
                ),
            };
            let _ = writeln!(
                out,
                "override: kubectl stagecoach approve {name} --stage {stage} --override -m \
                 '<why>' (an emergency; needs RBAC verb override on releases/{stage})"
            );
        }
        Some(ReleasePhase::Rejected) => {
            if let Some(r) = status
                .approvals
                .iter()
                .rev()
                .find(|a| a.decision == Decision::Reject)
            {
                let _ = writeln!(
                    out,
                    "rejected: at stage {} by {}{}{}",
                    r.stage,
                    r.approver,
                    r.at.map(|at| format!(" at {}", at.format(TIME)))
                        .unwrap_or_default(),
                    r.comment
                        .as_deref()
                        .map(|c| format!(": {c}"))
                        .unwrap_or_default()
                );
            }
        }
        _ => {}
    }
    if !status.approvals.is_empty() {
        out.push_str(&approval_table(&status.approvals));
    }
}

/// `status.approvals`: the decisions that let the release into a stage or stopped it.
fn approval_table(records: &[ApprovalRecord]) -> String {
    let mut out = format!(
        "\ndecisions:\n  {:<8} {:<8} {:<16} {:<13} {:<20} COMMENT\n",
        "STAGE", "DECISION", "APPROVER", "DIGEST", "AT"
    );
    for r in records {
        let decision = if r.r#override {
            "Override"
        } else {
            r.decision.as_str()
        };
        let _ = writeln!(
            out,
            "  {:<8} {:<8} {:<16} {:<13} {:<20} {}",
            r.stage,
            decision,
            r.approver,
            short(&r.digest),
            r.at.map_or_else(|| "-".to_owned(), |at| at.format(TIME).to_string()),
            r.comment.as_deref().unwrap_or("-")
        );
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
            "awaiting" => include_str!("../tests/fixtures/awaiting.json"),
            "window" => include_str!("../tests/fixtures/window.json"),
            "rejected" => include_str!("../tests/fixtures/rejected.json"),
            "new" => include_str!("../tests/fixtures/new.json"),
            "succeeded" => include_str!("../tests/fixtures/succeeded.json"),
            other => panic!("no fixture {other}"),
        };
        serde_json::from_str(text).expect(name)
    }

    fn detail(name: &str) -> String {
        let release = fixture(name);
        status_detail(&release, &Route::of(&release.spec))
    }

    #[test]
    fn status_of_every_release() {
        let releases: Vec<Release> = [
            "new",
            "running",
            "waiting",
            "rolled-back",
            "awaiting",
            "window",
            "rejected",
        ]
        .into_iter()
        .map(fixture)
        .collect();
        insta::assert_snapshot!(status_table(&releases));
    }

    #[test]
    fn status_of_a_release_waiting_for_promotion_with_an_ignored_annotation() {
        insta::assert_snapshot!(detail("waiting"));
    }

    #[test]
    fn status_of_a_running_release() {
        insta::assert_snapshot!(detail("running"));
    }

    #[test]
    fn status_of_a_rolled_back_release() {
        insta::assert_snapshot!(detail("rolled-back"));
    }

    #[test]
    fn status_of_a_release_not_started() {
        insta::assert_snapshot!(detail("new"));
    }

    #[test]
    fn status_of_a_release_awaiting_approval() {
        insta::assert_snapshot!(detail("awaiting"));
    }

    #[test]
    fn status_of_a_release_waiting_for_its_window() {
        insta::assert_snapshot!(detail("window"));
    }

    #[test]
    fn status_of_a_release_waiting_for_a_notice_with_no_window_known_yet() {
        let mut release = fixture("window");
        let status = release.status.as_mut().unwrap();
        status.next_window = None;
        status.message = Some(
            "stage prod may not start yet: a major release needs 72h notice and has not been \
             announced yet"
                .into(),
        );
        insta::assert_snapshot!(status_detail(&release, &Route::of(&release.spec)));
    }

    #[test]
    fn status_of_a_rejected_release() {
        insta::assert_snapshot!(detail("rejected"));
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
