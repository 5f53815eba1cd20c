//! The toggle controller's unit of work: one application, that is the FeatureToggles of
//! one application in one namespace.
//!
//! Every toggle of an application shares one plan and one set of flag-set ConfigMaps, so
//! the controller reconciles applications, not toggles: 100 applications of 100 toggles
//! are 100 entries in kube's scheduler, not 10,000 (whose delay queue and hash maps held
//! 8 MB for the scale benchmark's world, and kept that capacity after the start's burst).
//! kube's `Controller` schedules objects it finds in a reflector store, so an application
//! is a small in-memory object ([`ToggleApplication`], never sent to the API server) in a
//! store that the toggle watch keeps: see [`Applications`].

use std::borrow::Cow;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use serde::{Deserialize, Serialize};
use stagecoach_api::FeatureToggle;

use super::flagsets::AppKey;

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
/// A list of toggles lists the applications anew, and its end marks the store ready
/// (kube's `Controller` starts reconciling then). When an application's last toggle is
/// deleted or moves to another application, [`super::fan_out`] retires the application;
/// a moved one leaves the store at the next deletion of one of its toggles or re-list.
pub struct Applications {
    writer: Writer<ToggleApplication>,
    reader: Store<ToggleApplication>,
}

impl Applications {
    /// An empty store, not ready until the first list of toggles has ended.
    pub fn new() -> Self {
        let writer = Writer::default();
        let reader = writer.as_reader();
        Self { writer, reader }
    }

    /// The store kube's `Controller` reads.
    pub fn store(&self) -> Store<ToggleApplication> {
        self.reader.clone()
    }

    /// Applies one toggle watch event; `toggles` is the toggle cache, already updated.
    pub fn apply(&mut self, toggles: &Store<FeatureToggle>, event: &watcher::Event<FeatureToggle>) {
        match event {
            watcher::Event::Init => self.writer.apply_watcher_event(&watcher::Event::Init),
            watcher::Event::InitApply(toggle) => self
                .writer
                .apply_watcher_event(&watcher::Event::InitApply(ToggleApplication::of(toggle))),
            watcher::Event::InitDone => self.writer.apply_watcher_event(&watcher::Event::InitDone),
            watcher::Event::Apply(toggle) => {
                let app = ToggleApplication::of(toggle);
                if self.reader.get(&ObjectRef::from_obj(&app)).is_none() {
                    self.writer.apply_watcher_event(&watcher::Event::Apply(app));
                }
            }
            watcher::Event::Delete(toggle) => {
                let app = ToggleApplication::of(toggle);
                let (namespace, application) = (toggle.namespace(), &toggle.spec.application);
                let left = toggles
                    .find(|t| t.spec.application == *application && t.namespace() == namespace);
                if left.is_none() {
                    self.writer
                        .apply_watcher_event(&watcher::Event::Delete(app));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;
    use kube::runtime::reflector;
    use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};

    use super::*;

    fn toggle(name: &str, app: &str) -> FeatureToggle {
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
        let (toggles, mut toggle_writer) = reflector::store::<FeatureToggle>();
        let mut apps = Applications::new();
        let store = apps.store();
        let mut event = |event: watcher::Event<FeatureToggle>| {
            toggle_writer.apply_watcher_event(&event);
            apps.apply(&toggles, &event);
        };
        event(Init);
        event(InitApply(toggle("a", "shop")));
        event(InitApply(toggle("b", "shop")));
        assert!(store.wait_until_ready().now_or_never().is_none());
        event(InitDone);
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

        event(Apply(toggle("c", "billing")));
        assert_eq!(names(&store), ["billing", "shop"]);
        // One of shop's two toggles gone: shop stays; its last: shop goes.
        event(Delete(toggle("a", "shop")));
        assert_eq!(names(&store), ["billing", "shop"]);
        event(Delete(toggle("b", "shop")));
        assert_eq!(names(&store), ["billing"]);
        // A re-list lists the applications anew.
        event(Init);
        event(InitApply(toggle("d", "search")));
        event(InitDone);
        assert_eq!(names(&store), ["search"]);
    }
}
