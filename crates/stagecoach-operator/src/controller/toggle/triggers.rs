//! What reconciles an application's toggles: a flag set depends on every toggle of the
//! application and on Releases (stages, couplings), so a change to any of those
//! re-reconciles the application; and an application whose last toggle is gone has its
//! flag sets deleted.
//!
//! The watches below feed the caches (the toggle cache, reflector stores for the rest)
//! and, after each cache update, report which applications changed. Only changes that
//! matter for the plan are reported: a toggle's spec (generation), creation or deletion (any change to a toggle, its status included,
//! also reconciles its application, through the stream [`watch_toggles`] returns); a
//! Release's stages or reached stages, not every status write; any change to a flag-set
//! ConfigMap (edited or deleted by someone else, or gone stale). [`fan_out`] turns the
//! reports into reconcile requests.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use stagecoach_api::{FeatureToggle, Pipeline, Release};
use stagecoach_engine::toggle::ReleaseFacts;
use stagecoach_engine::toggle::application::FLAG_SET_CONFIG_MAP;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::ToggleContext;
use super::cache::compact_for_cache;
use super::flagsets::{AppKey, Epoch, FlagSetCache, VERSION_ANNOTATION, delete_flag_sets};
use super::store::{ToggleCache, ToggleChange};
use super::unit::{ApplicationStore, ToggleApplication};
use crate::admin::CacheSync;
use crate::controller::reflect;
use crate::controller::workloads::MANAGED_BY;
use crate::controller::{WatchBackoff, relisting_watcher};

/// How often every flag-set ConfigMap is checked for an application with no toggle left
/// (besides the check on every change): catches deletions that failed before.
const SWEEP_INTERVAL: Duration = Duration::from_secs(300);

/// A change that can affect the toggles of some applications.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Something every toggle of the application depends on.
    Application(AppKey),
    /// A flag-set ConfigMap of the application in `namespace` changed (`version` is its
    /// flag-set version) or is gone (None).
    FlagSet {
        app: AppKey,
        namespace: String,
        version: Option<String>,
    },
    /// A Release: its application's stages, and the couplings naming it.
    Release {
        namespace: String,
        name: String,
        application: String,
    },
}

/// Where the watches report changes.
#[derive(Clone, Debug)]
pub struct Changes {
    sender: mpsc::UnboundedSender<Change>,
    epochs: Arc<Epochs>,
}

/// A channel for [`Change`]s: the watches get the sender, [`fan_out`] the receiver.
pub fn changes() -> (Changes, mpsc::UnboundedReceiver<Change>) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let epochs = Arc::default();
    (Changes { sender, epochs }, receiver)
}

impl Changes {
    fn send(&self, change: Change) {
        // Only fails once the fan-out has stopped, at shutdown.
        let _ = self.sender.send(change);
    }

    /// The epochs the watches advance (for the toggle controller's context).
    pub fn epochs(&self) -> Arc<Epochs> {
        self.epochs.clone()
    }
}

/// Counters the watches advance, after the cache has the change, whenever something a
/// plan depends on changes: per application (its toggles' specs), per namespace (its
/// Releases' stages and reached stages), and on every re-list. An application whose
/// [`Epoch`] is the one it was planned at needs no new plan.
#[derive(Debug, Default)]
pub struct Epochs {
    counters: std::sync::Mutex<EpochCounters>,
}

#[derive(Debug, Default)]
struct EpochCounters {
    relists: u64,
    applications: HashMap<AppKey, u64>,
    namespaces: HashMap<String, u64>,
}

impl Epochs {
    fn counters(&self) -> std::sync::MutexGuard<'_, EpochCounters> {
        self.counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn application_changed(&self, app: &AppKey) {
        *self.counters().applications.entry(app.clone()).or_default() += 1;
    }

    fn namespace_changed(&self, namespace: &str) {
        *self
            .counters()
            .namespaces
            .entry(namespace.to_owned())
            .or_default() += 1;
    }

    fn relisted(&self) {
        self.counters().relists += 1;
    }

    /// The epoch of everything `app`'s plan depends on.
    pub fn of(&self, app: &AppKey) -> Epoch {
        let counters = self.counters();
        (
            counters.relists,
            counters.applications.get(app).copied().unwrap_or(0),
            counters
                .namespaces
                .get(&app.namespace)
                .copied()
                .unwrap_or(0),
        )
    }
}

/// Watches `api` into a reflector cache, calling `tell` with every event after the cache
/// has applied it. Returns the cache and the stream of applied objects (which drives a
/// controller, like [`crate::controller::cached_watch_with`]).
fn watch_and_tell<K>(
    api: Api<K>,
    synced: CacheSync,
    mut tell: impl FnMut(&watcher::Event<K>) + Send + 'static,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let objects = reflect::reflect(
        relisting_watcher(api, watcher::Config::default())
            .backoff(WatchBackoff::default())
            .modify(|obj: &mut K| obj.managed_fields_mut().clear()),
        writer,
    )
    .inspect(move |event| {
        if let Ok(event) = event {
            if let watcher::Event::InitDone = event {
                synced.synced();
            }
            tell(event);
        }
    })
    .applied_objects();
    (reader, objects)
}

/// A change [`Seen`] reports: the object's namespace and name, what it was and is.
type KeyedChange<T> = ((String, String), Option<T>, Option<T>);

/// Remembers what was last reported per object, so that only changes are reported, and
/// notices objects that vanished during a re-list (which yields no delete event).
struct Seen<T> {
    last: HashMap<(String, String), T>,
    relisted: Option<HashSet<(String, String)>>,
}

impl<T: PartialEq + Clone> Seen<T> {
    fn new() -> Self {
        Self {
            last: HashMap::new(),
            relisted: None,
        }
    }

    /// Returns the changes to report for `event`: `(before, after)` pairs, where `None`
    /// means absent.
    fn observe<K: Resource>(
        &mut self,
        event: &watcher::Event<K>,
        facts: impl Fn(&K) -> T,
    ) -> Vec<(Option<T>, Option<T>)> {
        self.observe_keyed(event, facts)
            .into_iter()
            .map(|(_, before, after)| (before, after))
            .collect()
    }

    /// [`Self::observe`], each change with the namespace and name of its object.
    fn observe_keyed<K: Resource>(
        &mut self,
        event: &watcher::Event<K>,
        facts: impl Fn(&K) -> T,
    ) -> Vec<KeyedChange<T>> {
        let key = |obj: &K| (obj.namespace().unwrap_or_default(), obj.name_any());
        match event {
            watcher::Event::Init => {
                self.relisted = Some(HashSet::new());
                Vec::new()
            }
            watcher::Event::InitApply(obj) | watcher::Event::Apply(obj) => {
                if let (watcher::Event::InitApply(_), Some(relisted)) =
                    (event, self.relisted.as_mut())
                {
                    relisted.insert(key(obj));
                }
                let now = facts(obj);
                if self.last.get(&key(obj)) == Some(&now) {
                    return Vec::new();
                }
                let before = self.last.insert(key(obj), now.clone());
                vec![(key(obj), before, Some(now))]
            }
            watcher::Event::Delete(obj) => {
                vec![(key(obj), self.last.remove(&key(obj)), None)]
            }
            watcher::Event::InitDone => {
                let Some(relisted) = self.relisted.take() else {
                    return Vec::new();
                };
                let gone: Vec<(String, String)> = self
                    .last
                    .keys()
                    .filter(|k| !relisted.contains(*k))
                    .cloned()
                    .collect();
                gone.into_iter()
                    .map(|k| {
                        let before = self.last.remove(&k);
                        (k, before, None)
                    })
                    .collect()
            }
        }
    }
}

/// Watches FeatureToggles; reports the application of every toggle whose spec changed,
/// that appeared or that is gone (both applications when it moved to another one), and
/// keeps the store of applications the toggle controller reconciles. Returns the toggle
/// cache, the application store, and the stream of the applications of changed toggles
/// (every change, status included: a status someone else wrote is written again).
pub fn watch_toggles(
    api: Api<FeatureToggle>,
    synced: CacheSync,
    changes: Changes,
) -> (
    ToggleCache,
    Store<ToggleApplication>,
    impl Stream<Item = Result<ToggleApplication, watcher::Error>> + Send + 'static,
) {
    let mut applications = ApplicationStore::new();
    let application_store = applications.store();
    let cache = ToggleCache::new();
    let toggles = cache.clone();
    let events = relisting_watcher(api, watcher::Config::default())
        .backoff(WatchBackoff::default())
        .modify(|toggle: &mut FeatureToggle| {
            toggle.managed_fields_mut().clear();
            compact_for_cache(toggle);
        })
        .inspect(move |event| {
            let Ok(event) = event else { return };
            let toggle_changes = toggles.apply(event);
            if let watcher::Event::InitDone = event {
                synced.synced();
                changes.epochs.relisted();
            }
            applications.apply(event);
            for ToggleChange {
                namespace,
                before,
                after,
            } in toggle_changes
            {
                // Deleted, or moved to another application: the one it left may have no
                // toggle left.
                if let Some(left) = before.as_ref().filter(|b| {
                    after
                        .as_ref()
                        .is_none_or(|a| a.application != b.application)
                }) {
                    applications.vacated(&toggles, &AppKey::new(&namespace, &left.application));
                }
                let apps: BTreeSet<String> = [before, after]
                    .into_iter()
                    .flatten()
                    .map(|f| f.application)
                    .collect();
                for application in apps {
                    let app = AppKey::new(&namespace, &application);
                    changes.epochs.application_changed(&app);
                    changes.send(Change::Application(app));
                }
            }
        })
        .applied_objects();
    let applications_applied = events.map(|toggle| toggle.map(|t| ToggleApplication::of(&t)));
    (cache, application_store, applications_applied)
}

/// Watches Pipelines (the cache and stream the release controller uses too); reports the
/// application of every Pipeline whose application or stages changed, that appeared or
/// that is gone: its toggles are served in the Pipeline's stages.
pub fn watch_pipelines(
    api: Api<Pipeline>,
    synced: CacheSync,
    changes: Changes,
    deleted: mpsc::UnboundedSender<Pipeline>,
) -> (
    Store<Pipeline>,
    impl Stream<Item = Result<Pipeline, watcher::Error>> + Send + 'static,
) {
    let mut seen = Seen::new();
    watch_and_tell(api, synced, move |event| {
        // The controller's stream carries applied objects only: a deleted Pipeline
        // is reported on its own (its releases and the other claimants look again).
        if let watcher::Event::Delete(pipeline) = event {
            let _ = deleted.send(pipeline.clone());
        }
        let facts = |p: &Pipeline| {
            let stages: Vec<(String, Option<String>)> = p
                .spec
                .stages
                .iter()
                .map(|s| (s.name.clone(), s.namespace.clone()))
                .collect();
            (
                AppKey::new(&p.namespace().unwrap_or_default(), p.application()),
                stages,
            )
        };
        for (before, after) in seen.observe(event, facts) {
            let apps: BTreeSet<AppKey> =
                [before, after].into_iter().flatten().map(|f| f.0).collect();
            for app in apps {
                changes.epochs.application_changed(&app);
                changes.send(Change::Application(app));
            }
        }
    })
}

/// Watches Releases (the cache and stream the release controller uses); reports every
/// Release whose stages or reached stages changed, that appeared or that is gone.
pub fn watch_releases(
    api: Api<Release>,
    synced: CacheSync,
    changes: Changes,
) -> (
    Store<Release>,
    impl Stream<Item = Result<Release, watcher::Error>> + Send + 'static,
) {
    let mut seen = Seen::new();
    watch_and_tell(api, synced, move |event| {
        let facts = |r: &Release| {
            (
                r.namespace().unwrap_or_default(),
                r.name_any(),
                ReleaseFacts::of(r),
            )
        };
        if let watcher::Event::InitDone = event {
            changes.epochs.relisted();
        }
        for (before, after) in seen.observe(event, facts) {
            for (namespace, name, facts) in [before, after].into_iter().flatten() {
                changes.epochs.namespace_changed(&namespace);
                changes.send(Change::Release {
                    namespace,
                    name,
                    application: facts.application,
                });
            }
        }
    })
}

/// Watches the operator's flag-set ConfigMaps in every namespace (metadata only: labels
/// and annotations, never the flag sets themselves); reports the application of every
/// ConfigMap that changed or is gone. The returned stream must be polled for the cache
/// to stay current ([`fan_out`] does).
pub fn watch_flag_sets(
    client: &Client,
    synced: CacheSync,
    changes: Changes,
) -> (FlagSetCache, impl Stream<Item = ()> + Send + 'static) {
    let (reader, writer) = reflector::store();
    let config = watcher::Config::default()
        .labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1))
        .fields(&format!("metadata.name={FLAG_SET_CONFIG_MAP}"));
    let events = relisting_watcher(
        Api::<PartialObjectMeta<ConfigMap>>::all(client.clone()),
        config,
    )
    .backoff(WatchBackoff::default())
    .modify(|obj: &mut PartialObjectMeta<ConfigMap>| obj.managed_fields_mut().clear())
    .reflect(writer)
    .map(move |event| match &event {
        Ok(watcher::Event::InitDone) => synced.synced(),
        Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => {
            if let Some(app) = AppKey::of_flag_set(cm) {
                changes.send(Change::FlagSet {
                    app,
                    namespace: cm.namespace().unwrap_or_default(),
                    version: cm.annotations().get(VERSION_ANNOTATION).cloned(),
                });
            }
        }
        Ok(watcher::Event::Delete(cm)) => {
            if let Some(app) = AppKey::of_flag_set(cm) {
                changes.send(Change::FlagSet {
                    app,
                    namespace: cm.namespace().unwrap_or_default(),
                    version: None,
                });
            }
        }
        Ok(watcher::Event::Init) => {}
        Err(error) => warn!(%error, "flag-set ConfigMap watch failed; retrying"),
    });
    (reader, events)
}

/// Turns reported changes into reconcile requests for the applications they affect, and
/// deletes the flag sets of applications with no toggle left. Returns the request stream
/// (for `Controller::reconcile_on`) and the task to run until `shutdown`.
///
/// `scope` is the namespace the operator watches (None: all): flag sets of applications
/// in other namespaces belong to another operator and are left alone.
pub fn fan_out(
    mut changes: mpsc::UnboundedReceiver<Change>,
    flag_set_events: impl Stream<Item = ()> + Send + 'static,
    ctx: Arc<ToggleContext>,
    scope: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (
    impl Stream<Item = ObjectRef<ToggleApplication>> + Send + 'static,
    impl Future<Output = ()> + Send + 'static,
) {
    let (requests, requested) = mpsc::unbounded_channel::<ObjectRef<ToggleApplication>>();
    let requested = futures::stream::unfold(requested, |mut receiver| async move {
        receiver.recv().await.map(|r| (r, receiver))
    });
    let task = async move {
        let mut flag_set_events = std::pin::pin!(flag_set_events);
        let mut shutdown = std::pin::pin!(shutdown);
        // Nothing can be decided before the toggles and Releases are known: an empty
        // cache would look like applications without toggles.
        let ready = async {
            ctx.synced.toggles.wait().await;
            ctx.synced.releases.wait().await;
        };
        tokio::select! {
            () = ready => {}
            () = &mut shutdown => return,
        }
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            let mut batch = Vec::new();
            tokio::select! {
                () = &mut shutdown => return,
                Some(change) = changes.recv() => batch.push(change),
                Some(()) = flag_set_events.next() => {}
                _ = sweep.tick() => batch.extend(
                    ctx.flag_sets.state().iter().filter_map(|cm| AppKey::of_flag_set(cm)).map(Change::Application)
                ),
            }
            while let Ok(change) = changes.try_recv() {
                batch.push(change);
            }
            if batch.is_empty() {
                continue;
            }
            for request in affected_applications(&ctx, scope.as_deref(), batch).await {
                if requests.send(request).is_err() {
                    return;
                }
            }
        }
    };
    (requested, task)
}

/// The applications to reconcile for a batch of changes: those changed, and those with a
/// toggle coupled to a changed Release; deletes the flag sets of applications that have
/// no toggle left.
async fn affected_applications(
    ctx: &ToggleContext,
    scope: Option<&str>,
    batch: Vec<Change>,
) -> Vec<ObjectRef<ToggleApplication>> {
    let mut applications = BTreeSet::new();
    let mut releases = BTreeSet::new();
    for change in batch {
        match change {
            Change::Application(app) => {
                applications.insert(app);
            }
            Change::FlagSet {
                app,
                namespace,
                version,
            } => {
                // The echo of the operator's own write changes nothing.
                if !version.is_some_and(|v| ctx.applications.serves(&app, &namespace, &v)) {
                    applications.insert(app);
                }
            }
            Change::Release {
                namespace,
                name,
                application,
            } => {
                applications.insert(AppKey::new(&namespace, &application));
                releases.insert((namespace, name));
            }
        }
    }
    let mut requests = BTreeSet::new();
    let mut with_toggles = BTreeSet::new();
    ctx.toggles
        .for_each(|namespace, application, coupled_releases| {
            let app = AppKey::new(namespace, application);
            if requests.contains(&app) {
                return;
            }
            let changed = applications.contains(&app);
            if changed {
                with_toggles.insert(app.clone());
            }
            let coupled = || {
                coupled_releases
                    .iter()
                    .any(|release| releases.contains(&(namespace.to_owned(), release.to_string())))
            };
            if changed || coupled() {
                requests.insert(app);
            }
        });
    // The applications left have no toggle (any more).
    for app in applications.difference(&with_toggles) {
        if scope.is_some_and(|ns| ns != app.namespace) {
            continue;
        }
        if let Err(error) = retire(ctx, app).await {
            warn!(application = %app, %error, "cannot remove the flag sets of an application without toggles; retrying at the next sweep");
        }
    }
    debug!(
        applications = requests.len(),
        "applications to reconcile after changes"
    );
    requests.iter().map(ToggleApplication::reference).collect()
}

/// Stops serving an application that has no toggle left: OFREP forgets it and its
/// flag-set ConfigMaps are deleted.
async fn retire(ctx: &ToggleContext, app: &AppKey) -> Result<(), crate::error::ReconcileError> {
    ctx.index.remove(&app.namespace, &app.application);
    ctx.applications.forget(app);
    // Only the leader writes; a new leader's sweep deletes what is left.
    if !ctx.base.leadership.is_leader() {
        return Ok(());
    }
    delete_flag_sets(
        &ctx.base.client,
        &ctx.flag_sets,
        ctx.base.metrics.toggles(),
        app,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toggle(name: &str, app: &str, generation: i64) -> FeatureToggle {
        let mut t = super::super::unit::tests::toggle(name, app);
        t.metadata.generation = Some(generation);
        t
    }

    type Facts = (String, i64);

    fn observe(
        seen: &mut Seen<Facts>,
        event: &watcher::Event<FeatureToggle>,
    ) -> Vec<(Option<Facts>, Option<Facts>)> {
        seen.observe(event, |t| {
            (
                t.spec.application.clone(),
                t.metadata.generation.unwrap_or(0),
            )
        })
    }

    #[test]
    fn only_changes_are_reported() {
        use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};
        let mut seen = Seen::new();
        let a1 = toggle("a", "shop", 1);
        assert_eq!(
            observe(&mut seen, &Apply(a1.clone())),
            [(None, Some(("shop".into(), 1)))]
        );
        assert!(
            observe(&mut seen, &Apply(a1.clone())).is_empty(),
            "a status write is not a change"
        );
        let a2 = toggle("a", "billing", 2);
        assert_eq!(
            observe(&mut seen, &Apply(a2.clone())),
            [(Some(("shop".into(), 1)), Some(("billing".into(), 2)))]
        );
        // A re-list that no longer has `a` but has a new `b`.
        let b = toggle("b", "shop", 1);
        assert!(observe(&mut seen, &Init).is_empty());
        assert_eq!(
            observe(&mut seen, &InitApply(b.clone())),
            [(None, Some(("shop".into(), 1)))]
        );
        assert_eq!(
            observe(&mut seen, &InitDone),
            [(Some(("billing".into(), 2)), None)]
        );
        // A re-list with nothing new reports nothing.
        assert!(observe(&mut seen, &Init).is_empty());
        assert!(observe(&mut seen, &InitApply(b.clone())).is_empty());
        assert!(observe(&mut seen, &InitDone).is_empty());
        assert_eq!(
            observe(&mut seen, &Delete(b)),
            [(Some(("shop".into(), 1)), None)]
        );
    }
}
