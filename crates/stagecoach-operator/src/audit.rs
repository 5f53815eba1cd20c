//! The audit log: one structured log line per decision, with fixed field names, so a log
//! pipeline can index them. Lines have the target `stagecoach::audit` (at level INFO,
//! which `RUST_LOG` never filters out unless it names this target), and with
//! `--log-format json` they are flat JSON objects:
//!
//! | field | value |
//! |---|---|
//! | `target` | `stagecoach::audit` |
//! | `release_uid`, `release`, `namespace` | the Release |
//! | `application`, `version`, `digest` | what it releases (`digest`: status.digest) |
//! | `actor` | `stagecoach`, or the approver of an approval |
//! | `action` | what was decided (see `stagecoach_engine::audit`) |
//! | `stage` | the stage, empty for the release as a whole |
//! | `outcome` | what came of it (a phase, Approve/Reject, Delivered, ...) |
//! | `reason` | a rollback's reason, a receiver/event, Override, Retention |
//! | `at` | when the decision was taken (RFC 3339) |
//! | `message` | details for people |

use stagecoach_api::{Release, ReleaseStatus};
use stagecoach_engine::audit::{Entry, decisions};

use crate::controller::status_now;

/// The release a decision is about.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    pub uid: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub application: &'a str,
    pub version: &'a str,
    pub digest: &'a str,
}

impl<'a> Subject<'a> {
    /// The subject of a Release with this status.
    pub fn of(release: &'a Release, status: &'a ReleaseStatus) -> Self {
        Self {
            uid: release.metadata.uid.as_deref().unwrap_or_default(),
            namespace: release.metadata.namespace.as_deref().unwrap_or_default(),
            name: release.metadata.name.as_deref().unwrap_or_default(),
            application: &release.spec.application,
            version: &release.spec.version,
            digest: status.digest.as_deref().unwrap_or_default(),
        }
    }
}

/// Writes one audit line.
pub fn emit(subject: &Subject<'_>, entry: &Entry) {
    tracing::info!(
        target: "stagecoach::audit",
        release_uid = subject.uid,
        release = subject.name,
        namespace = subject.namespace,
        application = subject.application,
        version = subject.version,
        digest = subject.digest,
        actor = entry.actor.as_str(),
        action = entry.action.as_str(),
        stage = entry.stage.as_str(),
        outcome = entry.outcome.as_str(),
        reason = entry.reason.as_str(),
        at = %entry.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "{}",
        entry.message
    );
}

/// Logs the decisions a status write of the release made (`before` is the status it
/// replaced). Called once the write succeeded, so what is logged is what was recorded.
pub fn release_recorded(release: &Release, before: Option<&ReleaseStatus>, after: &ReleaseStatus) {
    let subject = Subject::of(release, after);
    for entry in decisions(before, after, status_now()) {
        emit(&subject, &entry);
    }
}
