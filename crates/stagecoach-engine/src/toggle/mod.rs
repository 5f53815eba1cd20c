//! Feature toggles: what a FeatureToggle serves to one client in one stage, and the flagd
//! flag set that makes flagd (or any flagd in-process provider) serve the same thing.
//!
//! - [`hash`]: flagd's `fractional` bucketing (MurmurHash3 x86 32-bit, seed 0).
//! - [`evaluate`](mod@evaluate): one toggle, one stage, one evaluation context -> value, variant and
//!   OFREP reason, or an OFREP error code.
//! - [`flagd`]: all toggles of an application for one stage -> one flagd flag-set document
//!   and its content version.
//! - [`describe`]: the rules in effect in a stage, as short sentences for status.
//! - [`reached`]: what Releases say to toggles: an application's stages and their
//!   namespaces, and which stages a release has reached (so which couplings are active).
//! - [`application`]: all toggles of an application together -> the flag set of each
//!   stage, what OFREP serves, each toggle's problems, Ready condition and couplings in
//!   effect, and the coupling changes to announce.
//!
//! Evaluation, rendering, descriptions and couplings read a stage through one private
//! reading of the spec (`stage_rules`), so they cannot disagree about which rules are
//! active. A spec is checked by [`validate_toggle`] before it is evaluated or rendered.
//!
//! Pure: no IO, no clock, no client.

pub mod application;
mod couplings;
pub mod describe;
pub mod evaluate;
pub mod flagd;
pub mod hash;
pub mod reached;
mod stage_rules;
mod validate;

pub use application::{
    AppFlags, ApplicationInput, ApplicationPlan, Problem, StageFlagSet, desired_status,
    plan_application,
};
pub use couplings::{ActiveCouplings, Coupling, CouplingChange, ToggleCouplings, coupling_changes};
pub use describe::describe_active_rules;
pub use evaluate::{ErrorCode, Evaluation, EvaluationContext, EvaluationError, Reason, evaluate};
pub use flagd::{FlagSetError, RenderedFlagSet, canonical_json, flag_set_version, render_flag_set};
pub use hash::{bucket, bucketing_hash, murmur3_x86_32, pick_variant};
pub use reached::{ReleaseFacts, StageTarget, reached_stages};
pub use validate::{ToggleError, ValueType, validate_toggle};

/// Context attribute that identifies a client when `spec.bucketBy` is not set.
pub const DEFAULT_BUCKET_BY: &str = "clientId";

/// The OpenFeature targeting key, used when the `bucketBy` attribute is absent.
pub const TARGETING_KEY: &str = "targetingKey";
