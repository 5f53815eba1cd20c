//! The release state machine: every phase a Release can be in and every transition one
//! reconcile may make, in one table. The planner may set `status.phase` more than once
//! while it works out a plan; what counts is the phase it starts from (the status it was
//! given) and the one it ends with, and that pair must be in [`allowed`]. The planner
//! checks it in debug builds; the planner tests check it for every plan they make,
//! including the property tests' random releases, crashes and restarts.
//!
//! ```text
//!                    ┌──────────── spec.paused, a pause without duration, an outside edit,
//!                    │             a gate inconclusive past its limit (policy Pause)
//!                    │          ┌─ resumed, promoted, edit reverted, a conclusive result
//!                    ▼          │
//!  (none) ──► Progressing ◄──► Paused ◄───┐   a gate inconclusive past its limit holds
//!    │          │    │  ▲         │       │   early life support too; a conclusive
//!    │          │    │  └─ waits ─┘       │   result resumes it (all may also end as
//!    │          │    ▼                    ▼   below)
//!    │          │  EarlyLifeSupport ◄─────┘
//!    │          │    │     └──────► Succeeded
//!    │          ▼    ▼
//!    ├──────► RolledBack     a gate failed, a deadline passed, abort, the Release deleted
//!    ├──────► Failed         aborted or deleted before a stage, a Deployment deleted
//!    ├──────► Superseded     a newer release, before a stage this one had not entered
//!    └──────► Rejected       an approver rejected it before a stage
//!
//!  Before any stage (from none, Progressing or Paused, and back to them):
//!    AwaitingApproval        the Pipeline wants approvals of this digest it lacks
//!    WaitingForWindow        outside the windows, in a freeze, before a major's notice
//! ```
//!
//! Succeeded, RolledBack, Failed, Superseded and Rejected are terminal: a terminal release
//! only keeps rolled-back stages on their recorded revisions and never changes phase again.

use stagecoach_api::release::ReleasePhase;

/// Whether one reconcile may take a release from phase `from` (none: never planned) to
/// phase `to`.
pub fn allowed(from: Option<ReleasePhase>, to: ReleasePhase) -> bool {
    use ReleasePhase::{
        AwaitingApproval, EarlyLifeSupport, Failed, Paused, Pending, Progressing, Rejected,
        RolledBack, Succeeded, Superseded, WaitingForWindow,
    };
    let from = from.unwrap_or(Pending);
    if from.is_terminal() {
        return to == from;
    }
    if from == EarlyLifeSupport {
        // Early life support ends (without incident, because a newer release entered the
        // stage, or because the Release was deleted) or rolls back; it does not go back.
        // A gate inconclusive past its limit holds it (Paused) until a conclusive result.
        return matches!(
            to,
            EarlyLifeSupport | Paused | Succeeded | RolledBack | Failed
        );
    }
    match to {
        // Nothing goes back to Pending.
        Pending => false,
        // The last stage reached 100 %: never from a release that has not started.
        EarlyLifeSupport => from != Pending,
        // Before a stage (approvals, windows, a reject), during the rollout, and every
        // stage succeeded.
        AwaitingApproval | WaitingForWindow | Rejected | Progressing | Paused | RolledBack
        | Failed | Superseded | Succeeded => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReleasePhase::{EarlyLifeSupport, Failed, Paused, Progressing, RolledBack, Succeeded};

    #[test]
    fn terminal_phases_never_change() {
        for terminal in [Succeeded, RolledBack, Failed, ReleasePhase::Superseded] {
            assert!(allowed(Some(terminal), terminal));
            for other in [Progressing, Paused, EarlyLifeSupport, Succeeded, RolledBack] {
                assert_eq!(allowed(Some(terminal), other), other == terminal);
            }
        }
    }

    #[test]
    fn a_release_starts_progressing_paused_or_ended_never_in_early_life_support() {
        assert!(allowed(None, Progressing));
        assert!(allowed(None, Paused));
        assert!(allowed(None, Failed));
        assert!(!allowed(None, EarlyLifeSupport));
        assert!(!allowed(Some(EarlyLifeSupport), ReleasePhase::Pending));
        // A gate holds early life support, and a conclusive result resumes it.
        assert!(allowed(Some(EarlyLifeSupport), Paused));
        assert!(allowed(Some(Paused), EarlyLifeSupport));
        assert!(!allowed(Some(EarlyLifeSupport), Progressing));
        assert!(allowed(Some(Progressing), ReleasePhase::AwaitingApproval));
        assert!(!allowed(
            Some(EarlyLifeSupport),
            ReleasePhase::AwaitingApproval
        ));
        assert!(!allowed(Some(ReleasePhase::Rejected), Progressing));
    }
}
