//! Release planning: stage order, step progression, gates, rollback, early life support.
//!
//! - [`observed`]: what the controller saw, as plain data;
//! - [`rollout`]: canary sizing and pod-template arithmetic;
//! - [`gate`]: the gate model and the built-in workload-health gate;
//! - [`providers`]: what a Prometheus, HTTP or Job gate's answer means (pure; the
//!   operator does the IO);
//! - [`phases`]: the release state machine, the transitions a reconcile may make;
//! - [`promote`]: what the promote annotation names, against where the release is;
//! - [`plan`]: the planner itself.

pub mod gate;
pub mod observed;
pub mod phases;
pub mod plan;
pub mod progress_only;
pub mod promote;
pub mod providers;
pub mod rollout;

#[cfg(test)]
mod tests;

pub use plan::{Action, Plan, PlanInput, PlannedEvent, plan_release};
