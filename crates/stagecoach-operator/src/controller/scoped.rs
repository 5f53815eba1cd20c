//! Caches of stage-namespace objects (Deployments, Pods, ControllerRevisions), either for
//! the whole cluster or, when the operator watches one namespace (`--namespace`), only
//! for the stage namespaces the Releases it watches name.
//!
//! Stage namespaces are not the Release's namespace (two stages may not share one), so a
//! namespaced operator cannot watch them with one namespaced watch. A
//! [`Cache::Namespaces`] starts one watch per stage namespace, the first time a Release
//! names it, and keeps it for the operator's lifetime; every watch feeds the same stream
//! of changed objects, which drives the release controller like a cluster-wide watch
//! would. Memory then grows with the namespaces Stagecoach rolls out to, not with the
//! cluster.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::info;

use super::{ManagedFields, cached_watch_with, reflected_watch};
use crate::admin::CacheSync;

/// The changed objects that drive the release controller.
pub type Changes<K> = futures::stream::BoxStream<'static, Result<K, watcher::Error>>;

/// A cache of one kind of object.
#[derive(Clone)]
pub enum Cache<K: Resource<DynamicType = ()> + Clone + 'static> {
    /// One watch over the whole cluster, and its first-list flag.
    Cluster(Store<K>, CacheSync),
    /// One watch per stage namespace, started on first use.
    Namespaces(NamespacedCache<K>),
}

/// Each watched namespace's store and first-list flag.
type Stores<K> = HashMap<String, (Store<K>, CacheSync)>;

/// One reflector per namespace, started when a Release first names the namespace.
#[derive(Clone)]
pub struct NamespacedCache<K: Resource<DynamicType = ()> + Clone + 'static> {
    client: Client,
    config: watcher::Config,
    managed_fields: ManagedFields,
    stores: Arc<Mutex<Stores<K>>>,
    changed: mpsc::UnboundedSender<K>,
}

impl<K> Cache<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    /// A cache per stage namespace (`per_namespace`, the operator watches one namespace)
    /// or one for the whole cluster, and the stream of changed objects that drives the
    /// release controller.
    pub fn new(
        client: &Client,
        per_namespace: bool,
        config: watcher::Config,
        synced: CacheSync,
        managed_fields: ManagedFields,
    ) -> (Self, Changes<K>) {
        if per_namespace {
            Self::namespaces(client, config, &synced, managed_fields)
        } else {
            Self::cluster(client, config, synced, managed_fields)
        }
    }

    /// A cluster-wide cache and the stream of changed objects that drives the controller.
    pub fn cluster(
        client: &Client,
        config: watcher::Config,
        synced: CacheSync,
        managed_fields: ManagedFields,
    ) -> (Self, Changes<K>) {
        let (store, changes) = cached_watch_with(
            Api::<K>::all(client.clone()),
            config,
            synced.clone(),
            managed_fields,
        );
        (Self::Cluster(store, synced), changes.boxed())
    }

    /// A cache of only the namespaces [`Cache::watch`] is asked for, and the stream of
    /// changed objects in all of them. There is nothing to list at start, so `synced`
    /// is marked at once; each namespace's first list is awaited by [`Cache::ready`].
    pub fn namespaces(
        client: &Client,
        config: watcher::Config,
        synced: &CacheSync,
        managed_fields: ManagedFields,
    ) -> (Self, Changes<K>) {
        synced.synced();
        let (sender, receiver) = mpsc::unbounded_channel();
        let cache = NamespacedCache {
            client: client.clone(),
            config,
            managed_fields,
            stores: Arc::default(),
            changed: sender,
        };
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            let object = receiver.recv().await?;
            Some((Ok::<K, watcher::Error>(object), receiver))
        });
        (Self::Namespaces(cache), stream.boxed())
    }

    /// Makes sure `namespaces` are watched (a cluster-wide cache already does).
    pub fn watch(&self, namespaces: &[String]) {
        let Self::Namespaces(cache) = self else {
            return;
        };
        let mut stores = cache.lock();
        for namespace in namespaces {
            if stores.contains_key(namespace) {
                continue;
            }
            info!(%namespace, kind = K::kind(&()).as_ref(), "watching a stage namespace");
            let api = Api::<K>::namespaced(cache.client.clone(), namespace);
            let synced = CacheSync::unlisted();
            let (store, objects) = reflected_watch(
                api,
                cache.config.clone(),
                Some(synced.clone()),
                cache.managed_fields,
            );
            let sender = cache.changed.clone();
            tokio::spawn(objects.for_each(move |object| {
                if let Ok(object) = object {
                    // The receiver lives as long as the controller; a send after it
                    // stopped only means the operator is shutting down.
                    let _ = sender.send(object);
                }
                std::future::ready(())
            }));
            stores.insert(namespace.clone(), (store, synced));
        }
    }

    /// Waits until the cache has its first complete list of `namespaces` (or of the
    /// cluster): before that, an object missing from it may exist.
    pub async fn ready(&self, namespaces: &[String]) {
        let flags: Vec<CacheSync> = match self {
            Self::Cluster(_, synced) => vec![synced.clone()],
            Self::Namespaces(cache) => {
                let stores = cache.lock();
                namespaces
                    .iter()
                    .filter_map(|ns| stores.get(ns).map(|(_, synced)| synced.clone()))
                    .collect()
            }
        };
        for synced in flags {
            synced.wait().await;
        }
    }

    /// The cached object, if any.
    pub fn get(&self, key: &ObjectRef<K>) -> Option<Arc<K>> {
        match self {
            Self::Cluster(store, _) => store.get(key),
            Self::Namespaces(cache) => {
                let namespace = key.namespace.as_deref()?;
                cache.lock().get(namespace)?.0.get(key)
            }
        }
    }

    /// Every cached object of `namespace`.
    pub fn state_in(&self, namespace: &str) -> Vec<Arc<K>> {
        match self {
            Self::Cluster(store, _) => store
                .state()
                .into_iter()
                .filter(|o| o.namespace().as_deref() == Some(namespace))
                .collect(),
            Self::Namespaces(cache) => cache
                .lock()
                .get(namespace)
                .map(|(store, _)| store.state())
                .unwrap_or_default(),
        }
    }
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> NamespacedCache<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Stores<K>> {
        // A poisoned lock only means a panic elsewhere mid-insert of a map of handles.
        self.stores.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
