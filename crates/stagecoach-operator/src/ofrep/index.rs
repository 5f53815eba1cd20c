//! The in-memory flag index every OFREP answer comes from: per (namespace, application),
//! the flags served and, per stage, the flag set's version. The toggle controller
//! replaces an application's entry whenever its flag sets change; requests only read it,
//! with no API call.
//!
//! The index does not copy toggle specs: a served flag names its FeatureToggle, whose spec
//! is read from the controller's toggle cache (decoded from the cache's compact text per
//! request, see `controller::toggle::ToggleCache`). Between a spec change reaching the cache and the controller planning it
//! (within a couple of seconds, see `controller::toggle`), the new spec is evaluated with
//! the application's planned couplings.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use stagecoach_api::FeatureToggleSpec;
pub use stagecoach_engine::toggle::AppFlags;

use crate::controller::toggle::ToggleCache;

/// Applications by namespace, then name, and the toggle cache. Cheap to clone; clones
/// share the index.
///
/// A request takes the read lock only long enough to clone one `Arc<AppFlags>`; the
/// controller takes the write lock only to swap an application's entry. What an
/// application serves is immutable once published.
#[derive(Clone)]
pub struct FlagIndex {
    apps: Arc<RwLock<ByNamespace>>,
    toggles: ToggleCache,
}

/// Namespace -> application name -> flags.
type ByNamespace = HashMap<String, HashMap<String, Arc<AppFlags>>>;

impl FlagIndex {
    /// An empty index reading specs from `toggles`.
    pub fn new(toggles: ToggleCache) -> Self {
        Self {
            apps: Arc::default(),
            toggles,
        }
    }

    /// Replaces what `application` in `namespace` serves.
    pub fn publish(&self, namespace: &str, application: &str, flags: Arc<AppFlags>) {
        let mut apps = self.apps.write().unwrap_or_else(PoisonError::into_inner);
        apps.entry(namespace.to_owned())
            .or_default()
            .insert(application.to_owned(), flags);
    }

    /// Stops serving `application` in `namespace`.
    pub fn remove(&self, namespace: &str, application: &str) {
        let mut apps = self.apps.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(by_name) = apps.get_mut(namespace) {
            by_name.remove(application);
            if by_name.is_empty() {
                apps.remove(namespace);
            }
        }
    }

    /// What `application` in `namespace` serves now, if anything.
    pub fn application(&self, namespace: &str, application: &str) -> Option<Arc<AppFlags>> {
        let apps = self.apps.read().unwrap_or_else(PoisonError::into_inner);
        apps.get(namespace)?.get(application).cloned()
    }

    /// The spec of the FeatureToggle `name` in `namespace`, from the cache; None once
    /// deleted.
    pub fn spec(&self, namespace: &str, name: &str) -> Option<FeatureToggleSpec> {
        self.toggles.spec(namespace, name)
    }
}

impl std::fmt::Debug for FlagIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlagIndex").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::watcher;
    use stagecoach_api::FeatureToggle;

    use super::*;

    #[test]
    fn publish_replace_remove_and_read_specs_from_the_cache() {
        let cache = ToggleCache::new();
        let index = FlagIndex::new(cache.clone());
        assert!(index.application("team", "billing").is_none());
        index.publish("team", "billing", Arc::new(AppFlags::default()));
        index.publish("team", "shop", Arc::new(AppFlags::default()));
        assert!(index.application("team", "shop").is_some());
        let first = index.application("team", "billing").unwrap();
        index.publish("team", "billing", Arc::new(AppFlags::default()));
        let second = index.application("team", "billing").unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        index.remove("team", "billing");
        index.remove("team", "shop");
        index.remove("elsewhere", "x");
        assert!(index.apps.read().unwrap().is_empty());

        let mut toggle = FeatureToggle::new(
            "new-ui",
            serde_json::from_value(serde_json::json!({
                "application": "shop", "variants": {"on": true}, "defaultVariant": "on"
            }))
            .unwrap(),
        );
        toggle.metadata.namespace = Some("team".into());
        cache.apply(&watcher::Event::Apply(toggle));
        assert_eq!(index.spec("team", "new-ui").unwrap().application, "shop");
        assert!(index.spec("other", "new-ui").is_none());
    }
}
