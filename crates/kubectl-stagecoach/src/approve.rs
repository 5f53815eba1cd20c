//! `approve` and `reject`: the Approval to create for a release, decided from the Release
//! and the user's name alone, and what to print once the API server has taken it.
//!
//! Who may approve which stage is not decided here: the API server's admission policy
//! checks the user's name and their RBAC when the Approval is created, and the operator
//! decides whether it counts. This module only refuses what can never help (a release
//! that has ended, one the operator has not looked at yet, a stage already entered) and
//! names the content approved: the release's `status.digest`.

use std::fmt::Write as _;

use kube::ResourceExt;
use kube::api::ObjectMeta;
use stagecoach_api::approval::{Approval, ApprovalSpec, Decision};
use stagecoach_api::release::StagePhase;
use stagecoach_api::{Release, ReleaseStatus};
use stagecoach_engine::pipeline::{digest, short};

/// What the user asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ask<'a> {
    pub stage: &'a str,
    pub decision: Decision,
    pub comment: Option<&'a str>,
    /// An emergency override of the stage's windows, freezes and notice (approve only).
    pub r#override: bool,
}

/// The longest `generateName` the API server keeps whole: it appends five random
/// characters and keeps names within 63.
const MAX_GENERATE_NAME: usize = 58;

/// `metadata.generateName` of an Approval: `<release>-<stage>-`, to which the API server
/// appends a random suffix. A long release name is shortened (never the stage), and never
/// left ending in `-` or `.` before the separator, so the generated name stays valid.
pub fn generate_name(release: &str, stage: &str) -> String {
    let full = format!("{release}-{stage}-");
    if full.len() <= MAX_GENERATE_NAME {
        return full;
    }
    let room = MAX_GENERATE_NAME.saturating_sub(stage.len() + 2);
    let mut end = room.min(release.len());
    while !release.is_char_boundary(end) {
        end -= 1;
    }
    let prefix = release[..end].trim_end_matches(['-', '.']);
    if prefix.is_empty() {
        return format!("{stage}-");
    }
    format!("{prefix}-{stage}-")
}

fn past(decision: Decision) -> &'static str {
    match decision {
        Decision::Approve => "approved",
        Decision::Reject => "rejected",
    }
}

fn verb(decision: Decision) -> &'static str {
    match decision {
        Decision::Approve => "approve",
        Decision::Reject => "reject",
    }
}

/// The Approval to create for `ask`, made by `approver` (the name the API server knows
/// the user by), or why there is no point in creating one.
pub fn approval(release: &Release, approver: &str, ask: &Ask<'_>) -> Result<Approval, String> {
    let name = release.name_any();
    let stage = ask.stage;
    let verb = verb(ask.decision);
    let status = release.status.clone().unwrap_or_default();
    if let Some(phase) = status.phase.filter(|p| p.is_terminal()) {
        return Err(format!(
            "cannot {verb} stage {stage}: release {name} has finished ({}), so no decision \
             about it counts any more",
            phase.as_str()
        ));
    }
    let Some(current) = status.digest.clone().filter(|d| !d.is_empty()) else {
        return Err(format!(
            "cannot {verb} stage {stage} of release {name}: the operator has not seen this \
             release yet (it has no status.digest, the content an approval names); try again \
             when kubectl stagecoach status {name} shows a phase"
        ));
    };
    if let Some(why) = stale(release, &status, &current) {
        return Err(format!(
            "cannot {verb} stage {stage} of release {name}: {why}"
        ));
    }
    if let Some(entry) = status.stages.iter().find(|s| s.name == stage)
        && entry.phase != StagePhase::Pending
    {
        let mut why = format!(
            "cannot {verb} stage {stage}: release {name} is past the point where that \
             decides anything (the stage is {}); approvals and rejects only decide whether \
             a stage may start",
            entry.phase.as_str()
        );
        if matches!(
            entry.phase,
            StagePhase::Progressing | StagePhase::EarlyLifeSupport
        ) {
            let _ = write!(
                why,
                "; to stop the rollout there, run kubectl stagecoach abort {name}"
            );
        }
        return Err(why);
    }
    Ok(Approval {
        metadata: ObjectMeta {
            generate_name: Some(generate_name(&name, stage)),
            namespace: release.namespace(),
            ..ObjectMeta::default()
        },
        spec: ApprovalSpec {
            release: name,
            stage: stage.to_owned(),
            decision: ask.decision,
            approver: approver.to_owned(),
            release_digest: current,
            comment: ask.comment.filter(|c| !c.is_empty()).map(str::to_owned),
            r#override: ask.r#override,
        },
    })
}

/// The release changed after the operator computed `status.digest`: an approval of that
/// digest would name content that is no longer the release's. Only when the operator is
/// behind (its observedGeneration is not the current generation) and the spec's content
/// differs: a pause or resume changes the generation, not the digest.
fn stale(release: &Release, status: &ReleaseStatus, current: &str) -> Option<String> {
    let generation = release.metadata.generation?;
    let observed = status.observed_generation?;
    if observed == generation || digest(&release.spec) == current {
        return None;
    }
    Some(format!(
        "the release has changed since the operator last looked at it (status.digest {} \
         is of generation {observed}, the release is at generation {generation}); approve \
         what will run, not what was: wait until the operator has seen the change, review \
         it, and try again",
        short(current)
    ))
}

/// What to print once the API server has created `approval` (with its generated name).
pub fn done(approval: &Approval) -> String {
    let spec = &approval.spec;
    let mut out = format!(
        "{} stage {} of {} (digest sha256:{}…) as {}",
        past(spec.decision),
        spec.stage,
        spec.release,
        short(&spec.release_digest),
        spec.approver
    );
    if spec.r#override {
        out.push_str(", overriding the stage's windows, freezes and notice");
    }
    if let Some(name) = &approval.metadata.name {
        let _ = write!(out, ": approval {name}");
        if let Some(ns) = &approval.metadata.namespace {
            let _ = write!(out, " in namespace {ns}");
        }
    }
    out.push('\n');
    let _ = match spec.decision {
        Decision::Approve => writeln!(
            out,
            "the operator counts it for this content only; see where the release is with \
             kubectl stagecoach status {}",
            spec.release
        ),
        Decision::Reject => writeln!(
            out,
            "the release ends at stage {} once the operator sees it (nothing is rolled out \
             there)",
            spec.stage
        ),
    };
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::render::tests::fixture;

    fn ask(stage: &str, decision: Decision) -> Ask<'_> {
        Ask {
            stage,
            decision,
            comment: None,
            r#override: false,
        }
    }

    #[test]
    fn generated_names_are_release_and_stage_and_stay_valid() {
        assert_eq!(
            generate_name("billing-2.4.0", "prod"),
            "billing-2.4.0-prod-"
        );
        let long = format!("{}.{}", "a".repeat(40), "b".repeat(40));
        let name = generate_name(&long, "prod");
        assert!(name.len() <= MAX_GENERATE_NAME, "{name}");
        assert!(name.ends_with("-prod-"), "{name}");
        // Cut right after a dot: the dot is dropped, not left before the separator.
        let dotted = format!("{}.x", "a".repeat(MAX_GENERATE_NAME - "-prod-".len()));
        assert_eq!(
            generate_name(&dotted, "prod"),
            format!("{}-prod-", "a".repeat(52))
        );
        let cut_at_dot = format!("{}.{}", "a".repeat(51), "b".repeat(20));
        assert_eq!(
            generate_name(&cut_at_dot, "prod"),
            format!("{}-prod-", "a".repeat(51))
        );
    }

    #[test]
    fn an_approval_names_the_digest_the_user_and_the_stage() {
        let release = fixture("awaiting");
        let approval = approval(
            &release,
            "alice",
            &Ask {
                comment: Some("load test in demo looked fine"),
                ..ask("prod", Decision::Approve)
            },
        )
        .unwrap();
        insta::assert_snapshot!(serde_json::to_string_pretty(&approval).unwrap());
    }

    #[test]
    fn an_override_and_a_reject() {
        let release = fixture("window");
        let overriding = approval(
            &release,
            "alice",
            &Ask {
                r#override: true,
                comment: Some("security fix"),
                ..ask("prod", Decision::Approve)
            },
        )
        .unwrap();
        assert!(overriding.spec.r#override);
        let rejecting = approval(&release, "bob", &ask("prod", Decision::Reject)).unwrap();
        assert_eq!(rejecting.spec.decision, Decision::Reject);
        assert_eq!(rejecting.spec.comment, None);
    }

    #[test]
    fn approvals_that_cannot_matter_are_refused() {
        let mut unseen = fixture("awaiting");
        unseen.status = None;
        let mut no_digest = fixture("awaiting");
        no_digest.status.as_mut().unwrap().digest = None;
        let mut changed = fixture("awaiting");
        changed.metadata.generation = Some(3);
        changed.spec.workloads[0].containers[0].image = "example/shop-api:2.2.1".into();
        let mut paused = fixture("awaiting");
        paused.metadata.generation = Some(3);
        paused.spec.paused = true;
        let mut running = fixture("running");
        running.status.as_mut().unwrap().digest = Some(digest(&running.spec));
        let cases = [
            ("not seen", &unseen, "prod"),
            ("no digest", &no_digest, "prod"),
            ("changed since", &changed, "prod"),
            ("passed stage", &fixture("awaiting"), "qa"),
            ("running stage", &running, "dev"),
            ("finished", &fixture("rejected"), "prod"),
        ];
        let mut text = String::new();
        for (case, release, stage) in cases {
            let outcome = approval(release, "alice", &ask(stage, Decision::Approve));
            let _ = writeln!(text, "{case}: {}", outcome.unwrap_err());
        }
        // Paused after the operator's last look: same content, so the digest still holds.
        let outcome = approval(&paused, "alice", &ask("prod", Decision::Approve));
        let _ = writeln!(
            text,
            "paused since: {}",
            outcome.map_or_else(|e| e, |a| a.spec.release_digest)
        );
        insta::assert_snapshot!(text);
    }

    #[test]
    fn what_is_printed_when_the_api_server_took_it() {
        let release = fixture("window");
        let mut text = String::new();
        for (who, ask) in [
            ("alice", ask("prod", Decision::Approve)),
            ("bob", ask("prod", Decision::Reject)),
            (
                "carol",
                Ask {
                    r#override: true,
                    ..ask("prod", Decision::Approve)
                },
            ),
        ] {
            let mut made = approval(&release, who, &ask).unwrap();
            made.metadata.name = Some(format!(
                "{}x7k2p",
                made.metadata.generate_name.clone().unwrap()
            ));
            text.push_str(&done(&made));
        }
        insta::assert_snapshot!(text);
    }
}
