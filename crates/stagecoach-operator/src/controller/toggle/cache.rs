//! What of a FeatureToggle the toggle cache ([`super::store::ToggleCache`]) keeps: it
//! holds every toggle for the operator's lifetime, so only what is read, with a digest of
//! its status to tell whether a status the controller computes is already written.

use std::hash::{DefaultHasher, Hash, Hasher};

use stagecoach_api::{FeatureToggle, FeatureToggleStatus};

/// An 8-byte digest of `value`, for what the controller keeps in memory per toggle: equal
/// values, equal digests (within one process).
pub fn digest(value: &impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// A digest of a status: equal statuses, equal digests.
pub fn status_digest(status: &FeatureToggleStatus) -> u64 {
    digest(&serde_json::to_vec(status).unwrap_or_default())
}

/// Shrinks a toggle for the toggle cache: the status is replaced by its digest
/// (`status.cache_digest`) plus the little the controller reads from it (the conditions'
/// status, reason and time, from which the next status keeps its transition times), and
/// the description and annotations, which nothing reads, go. [`status_unchanged`]
/// compares a desired status with the digest.
pub fn compact_for_cache(toggle: &mut FeatureToggle) {
    toggle.spec.description = None;
    toggle.metadata.annotations = None;
    if let Some(status) = &mut toggle.status {
        let digest = status_digest(status);
        for condition in &mut status.conditions {
            condition.message = String::new();
        }
        // What is served per stage is planned, never read back, except a coupled
        // toggle's stages and couplings: the next coupling Events are decided against
        // them (see `controller::toggle`). Nothing else is kept.
        let coupled = toggle
            .spec
            .stages
            .values()
            .any(|stage| stage.rules.iter().any(|rule| rule.when.is_some()));
        if coupled {
            for stage in &mut status.stages {
                stage.flag_set_version = None;
                stage.config_map = None;
                stage.active_rules = Vec::new();
            }
        } else {
            status.stages = Vec::new();
        }
        status.cache_digest = Some(digest);
    }
}

/// Whether `toggle` (from the cache) already has `desired` as its status.
pub fn status_unchanged(toggle: &FeatureToggle, desired: &FeatureToggleStatus) -> bool {
    let cached_digest = toggle.status.as_ref().and_then(|s| s.cache_digest);
    match cached_digest {
        Some(digest) => digest == status_digest(desired),
        None => toggle.status.as_ref() == Some(desired),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use serde_json::json;
    use stagecoach_api::condition::{self, ConditionStatus};
    use stagecoach_engine::toggle::application::READY;
    use stagecoach_engine::toggle::{
        ApplicationInput, ToggleCouplings, desired_status, plan_application,
    };

    use super::*;
    use stagecoach_api::Release;
    use std::sync::Arc;

    #[test]
    fn the_cache_keeps_a_digest_of_the_status_and_what_the_controller_reads() {
        let mut toggle: FeatureToggle = serde_json::from_value(json!({
            "apiVersion": "stagecoach.dev/v1alpha1", "kind": "FeatureToggle",
            "metadata": {"name": "coupled", "namespace": "team", "generation": 1,
                "annotations": {"note": "x"}},
            "spec": {
                "application": "shop", "description": "long text",
                "variants": {"on": true, "off": false}, "defaultVariant": "off",
                "stages": {"demo": {"rules": [{"clients": ["acme"], "variant": "on",
                    "when": {"release": "shop-1", "reached": "demo"}}]}}
            }
        }))
        .unwrap();
        let at = |second: i64| Utc.timestamp_opt(1_800_000_000 + second, 0).unwrap();
        let release: Release = serde_json::from_value(json!({
            "apiVersion": "stagecoach.dev/v1alpha1", "kind": "Release",
            "metadata": {"name": "shop-1", "namespace": "team"},
            "spec": {"application": "shop", "version": "1.0.0",
                "workloads": [{"deployment": "api", "containers": [{"name": "api", "image": "x"}]}]}
        }))
        .unwrap();
        let (plan, _) = plan_application(&ApplicationInput::new(
            "team",
            "shop",
            [&toggle],
            &[Arc::new(release)],
        ));
        let status = desired_status(&toggle, &plan, &[], at(0));
        assert_eq!(status.stages.len(), 4);
        let mut cached = toggle.clone();
        cached.status = Some(status.clone());
        compact_for_cache(&mut cached);
        assert!(cached.spec.description.is_none());
        assert!(cached.metadata.annotations.is_none());
        assert!(status_unchanged(&cached, &status));
        let compact = cached.status.clone().unwrap();
        assert!(compact.conditions.iter().all(|c| c.message.is_empty()));
        assert_eq!(
            condition::find(&compact.conditions, READY).unwrap().status,
            ConditionStatus::True
        );
        // A coupled toggle keeps its stages' names and couplings (what the next coupling
        // Events are decided against), nothing else of them.
        assert_eq!(
            ToggleCouplings::from_status(&compact),
            ToggleCouplings::from_status(&status)
        );
        assert!(compact.stages.iter().all(|s| s.flag_set_version.is_none()
            && s.config_map.is_none()
            && s.active_rules.is_empty()));
        // An uncoupled toggle keeps none.
        let mut uncoupled = cached.clone();
        uncoupled.spec.stages = stagecoach_api::sorted_map::SortedMap::default();
        uncoupled.status = Some(status.clone());
        compact_for_cache(&mut uncoupled);
        assert!(uncoupled.status.unwrap().stages.is_empty());

        // Planning again from the compact status gives the same status: no write.
        let again = desired_status(&cached, &plan, &[], at(60));
        assert_eq!(again, status);
        assert!(status_unchanged(&cached, &again));

        // A status that differs is seen as a change.
        let mut other = status.clone();
        other.stages.clear();
        assert!(!status_unchanged(&cached, &other));
        // Without a digest the status is compared as it is.
        toggle.status = Some(status.clone());
        assert!(status_unchanged(&toggle, &status));
        assert!(!status_unchanged(&toggle, &other));
    }
}
