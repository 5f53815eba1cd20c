//! The toggle controller's unit of work: one application, that is the FeatureToggles of
//! one application in one namespace.
//!
//! Every toggle of an application shares one plan and one set of flag-set ConfigMaps, so
//! the controller reconciles applications, not toggles: 100 applications of 100 toggles
//! are 100 entries in kube's scheduler, not 10,000 (whose delay queue and hash maps held
//! 8 MB for the scale benchmark's world, and kept that capacity after the start's burst).
//! kube's `Controller` schedules objects it finds in a reflector store, so an application
//! is a small in-memory object ([`ToggleApplication`], never sent to the API server) in a
//! store that the toggle watch keeps: see [`ApplicationStore`].

use std::borrow::Cow;
use std::collections::HashSet;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use serde::{Deserialize, Serialize};
use stagecoach_api::FeatureToggle;

use super::flagsets::AppKey;
use super::store::ToggleCache;

/// An application whose toggles the controller serves: named after the application, in
/// its toggles' namespace. Exists only in the operator's memory.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ToggleApplication {
    pub metadata: ObjectMeta,
}

impl ToggleApplication {
    /// The application `app`.
    pub fn new(app: &AppKey) -> Self {
        Self {
            metadata: ObjectMeta {
                name: Some(app.application.clone()),
                namespace: Some(app.namespace.clone()),
                ..ObjectMeta::default()
            },
        }
    }

    /// The application `toggle` belongs to.
    pub fn of(toggle: &FeatureToggle) -> Self {
        Self::new(&AppKey::new(
            &toggle.namespace().unwrap_or_default(),
            &toggle.spec.application,
        ))
    }

    /// Which application this is.
    pub fn key(&self) -> AppKey {
        AppKey::new(
            self.metadata.namespace.as_deref().unwrap_or_default(),
            self.metadata.name.as_deref().unwrap_or_default(),
        )
    }

    /// The reference kube's scheduler keys `app` by.
    pub fn reference(app: &AppKey) -> ObjectRef<Self> {
        ObjectRef::new(&app.application).within(&app.namespace)
    }
}

impl kube::Resource for ToggleApplication {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind((): &()) -> Cow<'_, str> {
        "ToggleApplication".into()
    }

    fn group((): &()) -> Cow<'_, str> {
        "stagecoach.dev".into()
    }

    fn version((): &()) -> Cow<'_, str> {
        "v1alpha1".into()
    }

    fn plural((): &()) -> Cow<'_, str> {
        "toggleapplications".into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Keeps the store of applications from the toggle watch's events, after the toggle cache
/// has applied each one: an application is in it while the cache has one of its toggles.
///
/// The first list of toggles fills the store and marks it ready (kube's `Controller`
/// starts reconciling then). Later lists (after any watch error) change the store as they
/// go, as `controller::reflect` does with the toggle cache: an application first seen in
/// the list is added at once, so the reconcile its toggles ask for finds it (kube drops a
/// request for an object its store does not have), and those the list did not contain
/// are removed at its end. An application whose last toggle is deleted or moves to
/// another one is removed through [`ApplicationStore::vacated`] (and [`super::fan_out`]
/// retires it: no OFREP entry, no ConfigMaps).
pub struct ApplicationStore {
    writer: Writer<ToggleApplication>,
    reader: Store<ToggleApplication>,
    /// Whether a first list has ended.
    listed_once: bool,
    /// The applications the list in progress (after the first) has contained so far.
    listed: HashSet<AppKey>,
}

impl ApplicationStore {
    /// An empty store, not ready until the first list of toggles has ended.
    pub fn new() -> Self {
        let writer = Writer::default();
        let reader = writer.as_reader();
        Self {
            writer,
            reader,
            listed_once: false,
            listed: HashSet::new(),
        }
    }

    /// The store kube's `Controller` reads.
    pub fn store(&self) -> Store<ToggleApplication> {
        self.reader.clone()
    }

    /// Applies one toggle watch event (the toggle cache has applied it already).
    pub fn apply(&mut self, event: &watcher::Event<FeatureToggle>) {
        if !self.listed_once {
            // The first list goes through kube's writer, whose end marks the store ready.
            let event = match event {
                watcher::Event::Init => watcher::Event::Init,
                watcher::Event::InitApply(toggle) => {
                    watcher::Event::InitApply(ToggleApplication::of(toggle))
                }
                watcher::Event::InitDone => {
                    self.listed_once = true;
                    watcher::Event::InitDone
                }
                watcher::Event::Apply(toggle) => {
                    watcher::Event::Apply(ToggleApplication::of(toggle))
                }
                watcher::Event::Delete(_) => return,
            };
            self.writer.apply_watcher_event(&event);
            return;
        }
        match event {
            watcher::Event::Init => self.listed.clear(),
            watcher::Event::InitApply(toggle) => {
                let app = ToggleApplication::of(toggle);
                self.listed.insert(app.key());
                self.add(app);
            }
            watcher::Event::Apply(toggle) => self.add(ToggleApplication::of(toggle)),
            watcher::Event::InitDone => {
                let listed = std::mem::take(&mut self.listed);
                for app in self.reader.state() {
                    if !listed.contains(&app.key()) {
                        self.writer
                            .apply_watcher_event(&watcher::Event::Delete(app.as_ref().clone()));
                    }
                }
            }
            // Through `vacated`, which knows the application a toggle moved away from.
            watcher::Event::Delete(_) => {}
        }
    }

    /// `app` lost a toggle (deleted, or moved to another application): removed from the
    /// store if `toggles` (the cache, already updated) has none of its toggles left.
    pub fn vacated(&mut self, toggles: &ToggleCache, app: &AppKey) {
        if !toggles.has_application(&app.namespace, &app.application) {
            self.listed.remove(app);
            self.writer
                .apply_watcher_event(&watcher::Event::Delete(ToggleApplication::new(app)));
        }
    }

    fn add(&mut self, app: ToggleApplication) {
        if self.reader.get(&ObjectRef::from_obj(&app)).is_none() {
            self.writer.apply_watcher_event(&watcher::Event::Apply(app));
        }
    }
}

#[cfg(test)]
pub mod tests {
    use futures::FutureExt;
    use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};

    use super::*;

    /// A minimal toggle `name` of application `app` in namespace `team`.
    pub fn toggle(name: &str, app: &str) -> FeatureToggle {
        let mut t = FeatureToggle::new(
            name,
            serde_json::from_value(serde_json::json!({
                "application": app, "variants": {"on": true}, "defaultVariant": "on"
            }))
            .unwrap(),
        );
        t.metadata.namespace = Some("team".into());
        t
    }

    fn names(store: &Store<ToggleApplication>) -> Vec<String> {
        let mut names: Vec<String> = store.state().iter().map(|a| a.name_any()).collect();
        names.sort();
        names
    }

    #[test]
    fn an_application_is_stored_while_the_cache_has_one_of_its_toggles() {
        let toggles = ToggleCache::new();
        let mut apps = ApplicationStore::new();
        let store = apps.store();
        // What the toggle watch does: the cache first, then the applications; a deleted
        // or moved toggle vacates its (former) application.
        let mut event = |event: watcher::Event<FeatureToggle>, vacated: Option<&str>| {
            toggles.apply(&event);
            apps.apply(&event);
            if let Some(app) = vacated {
                apps.vacated(&toggles, &AppKey::new("team", app));
            }
        };
        event(Init, None);
        event(InitApply(toggle("a", "shop")), None);
        event(InitApply(toggle("b", "shop")), None);
        assert!(store.wait_until_ready().now_or_never().is_none());
        event(InitDone, None);
        assert!(matches!(
            store.wait_until_ready().now_or_never(),
            Some(Ok(()))
        ));
        assert_eq!(names(&store), ["shop"]);
        assert_eq!(
            store
                .get(&ToggleApplication::reference(&AppKey::new("team", "shop")))
                .map(|a| a.key()),
            Some(AppKey::new("team", "shop"))
        );

        event(Apply(toggle("c", "billing")), None);
        assert_eq!(names(&store), ["billing", "shop"]);
        // One of shop's two toggles gone: shop stays; its last: shop goes.
        event(Delete(toggle("a", "shop")), Some("shop"));
        assert_eq!(names(&store), ["billing", "shop"]);
        event(Delete(toggle("b", "shop")), Some("shop"));
        assert_eq!(names(&store), ["billing"]);
        // billing's only toggle moves to search: billing goes.
        event(Apply(toggle("c", "search")), Some("billing"));
        assert_eq!(names(&store), ["search"]);

        // A re-list: an application new in it is there at once (its toggles' reconcile
        // requests must find it), one it no longer has goes at its end.
        event(Init, None);
        event(InitApply(toggle("d", "mail")), None);
        assert_eq!(names(&store), ["mail", "search"]);
        event(InitDone, None);
        assert_eq!(names(&store), ["mail"]);
    }
}
