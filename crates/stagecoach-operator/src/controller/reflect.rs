//! Applying watch events to a reflector cache, without holding the cache twice during a
//! re-list.
//!
//! kube's `reflect` builds a complete second copy of the cache while a (re)list runs and
//! swaps it in at the end. The operator re-lists every watch after any watch error (see
//! `relisting_watcher`), so when the API server restarts, all its caches (10,000
//! toggles, 1,000 Releases, every Deployment and pod it rolled out) existed twice at
//! once: that, more than anything, was the relist peak of the scale benchmark. Here a
//! listed object whose resource version is the one already cached is left as it is (the
//! same allocation, nothing copied), a new or changed one is applied at once, as a watch
//! event would be, and when the list is complete whatever it did not contain is removed.
//! Readers see the list's changes as they arrive instead of all at once at its end, as
//! they see watch events.

use std::collections::HashSet;

use futures::{Stream, StreamExt};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{Lookup, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

/// What kube's `reflect` does to a stream of watcher events, through a [`Reflector`]:
/// each event is applied to `writer`'s store, then passed on.
pub fn reflect<K, E>(
    events: impl Stream<Item = Result<watcher::Event<K>, E>>,
    writer: Writer<K>,
) -> impl Stream<Item = Result<watcher::Event<K>, E>>
where
    K: Resource<DynamicType = ()> + Lookup<DynamicType = ()> + Clone + 'static,
{
    let mut reflector = Reflector::new(writer);
    events.map(move |event| {
        if let Ok(event) = &event {
            reflector.apply(event);
        }
        event
    })
}

/// Applies watcher events to a reflector store (see the module docs).
pub struct Reflector<K: Resource<DynamicType = ()> + Lookup<DynamicType = ()> + Clone + 'static> {
    writer: Writer<K>,
    reader: Store<K>,
    /// The objects the list in progress has contained so far, by namespace and name.
    listed: Option<HashSet<(String, String)>>,
    /// Whether a first list has completed. The first goes through kube's writer as it
    /// is (there is nothing cached to hold twice yet): its end is what marks the store
    /// ready, which kube's `Controller` waits for before reconciling anything.
    listed_once: bool,
}

fn key<K: Resource>(obj: &K) -> (String, String) {
    (
        ResourceExt::namespace(obj).unwrap_or_default(),
        obj.name_any(),
    )
}

impl<K> Reflector<K>
where
    K: Resource<DynamicType = ()> + Lookup<DynamicType = ()> + Clone + 'static,
{
    /// A reflector writing to `writer`, whose store is `reader`.
    pub fn new(writer: Writer<K>) -> Self {
        let reader = writer.as_reader();
        Self {
            writer,
            reader,
            listed: None,
            listed_once: false,
        }
    }

    /// Applies one event to the store.
    pub fn apply(&mut self, event: &watcher::Event<K>) {
        if !self.listed_once {
            self.writer.apply_watcher_event(event);
            self.listed_once = matches!(event, watcher::Event::InitDone);
            return;
        }
        match event {
            watcher::Event::Apply(_) | watcher::Event::Delete(_) => {
                self.writer.apply_watcher_event(event);
            }
            watcher::Event::Init => self.listed = Some(HashSet::new()),
            watcher::Event::InitApply(obj) => {
                let cached = self
                    .reader
                    .get(&kube::runtime::reflector::ObjectRef::from_obj(obj));
                let unchanged = cached.is_some_and(|cached| {
                    obj.meta().resource_version.is_some()
                        && cached.meta().resource_version == obj.meta().resource_version
                });
                if !unchanged {
                    self.writer
                        .apply_watcher_event(&watcher::Event::Apply(obj.clone()));
                }
                self.listed.get_or_insert_default().insert(key(obj));
            }
            watcher::Event::InitDone => {
                let listed = self.listed.take().unwrap_or_default();
                for gone in self.reader.state() {
                    if !listed.contains(&key(gone.as_ref())) {
                        self.writer
                            .apply_watcher_event(&watcher::Event::Delete(gone.as_ref().clone()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::FutureExt;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::reflector::{self, ObjectRef};
    use kube::runtime::watcher::Event;

    use super::*;

    fn config_map(name: &str, version: &str) -> ConfigMap {
        let mut map = ConfigMap::default();
        map.metadata.name = Some(name.to_owned());
        map.metadata.namespace = Some("ns".to_owned());
        map.metadata.resource_version = Some(version.to_owned());
        map
    }

    fn get(store: &Store<ConfigMap>, name: &str) -> Option<Arc<ConfigMap>> {
        store.get(&ObjectRef::new(name).within("ns"))
    }

    fn list(reflector: &mut Reflector<ConfigMap>, objects: &[ConfigMap]) {
        reflector.apply(&Event::Init);
        for obj in objects {
            reflector.apply(&Event::InitApply(obj.clone()));
        }
        reflector.apply(&Event::InitDone);
    }

    #[test]
    fn a_relist_keeps_unchanged_objects_and_applies_the_rest() {
        let (store, writer) = reflector::store::<ConfigMap>();
        let mut reflector = Reflector::new(writer);
        // The first list marks the store ready (kube's Controller waits for that).
        assert!(store.wait_until_ready().now_or_never().is_none());
        list(
            &mut reflector,
            &[
                config_map("a", "1"),
                config_map("b", "2"),
                config_map("c", "3"),
            ],
        );
        assert!(matches!(
            store.wait_until_ready().now_or_never(),
            Some(Ok(()))
        ));
        assert_eq!(store.state().len(), 3);
        let (a, b) = (get(&store, "a").unwrap(), get(&store, "b").unwrap());
        reflector.apply(&Event::Apply(config_map("d", "4")));
        assert!(get(&store, "d").is_some());

        // Relisted: a unchanged, b changed, c and d gone, e new.
        reflector.apply(&Event::Init);
        reflector.apply(&Event::InitApply(config_map("a", "1")));
        reflector.apply(&Event::InitApply(config_map("b", "5")));
        // The changed object is visible before the list completes; nothing is gone yet.
        assert_eq!(
            get(&store, "b")
                .unwrap()
                .metadata
                .resource_version
                .as_deref(),
            Some("5")
        );
        assert!(get(&store, "c").is_some());
        reflector.apply(&Event::InitApply(config_map("e", "6")));
        reflector.apply(&Event::InitDone);

        let mut names: Vec<String> = store.state().iter().map(|o| o.name_any()).collect();
        names.sort();
        assert_eq!(names, ["a", "b", "e"]);
        // The unchanged object is the very allocation cached before; the changed one is new.
        assert!(Arc::ptr_eq(&a, &get(&store, "a").unwrap()));
        assert!(!Arc::ptr_eq(&b, &get(&store, "b").unwrap()));
    }

    #[test]
    fn watch_events_apply_and_an_empty_relist_empties_the_cache() {
        let (store, writer) = reflector::store::<ConfigMap>();
        let mut reflector = Reflector::new(writer);
        list(&mut reflector, &[]);
        reflector.apply(&Event::Apply(config_map("a", "1")));
        reflector.apply(&Event::Apply(config_map("a", "2")));
        assert_eq!(
            get(&store, "a")
                .unwrap()
                .metadata
                .resource_version
                .as_deref(),
            Some("2")
        );
        reflector.apply(&Event::Delete(config_map("a", "2")));
        assert!(store.state().is_empty());
        reflector.apply(&Event::Apply(config_map("b", "3")));
        list(&mut reflector, &[]);
        assert!(store.state().is_empty());
    }

    /// Without a resource version nothing can be known to be unchanged: applied again.
    #[test]
    fn an_object_without_a_resource_version_is_applied_again() {
        let (store, writer) = reflector::store::<ConfigMap>();
        let mut reflector = Reflector::new(writer);
        let mut unversioned = config_map("a", "1");
        unversioned.metadata.resource_version = None;
        list(&mut reflector, std::slice::from_ref(&unversioned));
        let before = get(&store, "a").unwrap();
        list(&mut reflector, &[unversioned]);
        assert!(!Arc::ptr_eq(&before, &get(&store, "a").unwrap()));
    }
}
