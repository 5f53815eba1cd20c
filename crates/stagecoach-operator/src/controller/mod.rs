//! The controllers and what they share: the status write, the transition Event, the
//! error policy and the bookkeeping around each reconcile.
//!
//! Every reconcile is observe -> plan -> apply. Observe reads only the object handed in
//! by the controller (from the reflector cache); plan is a pure function from
//! `stagecoach-engine`; apply writes only when the planned status differs from the
//! current one.

pub mod cached;
pub mod fence;
pub mod pacer;
pub mod pipeline;
pub mod reflect;
pub mod release;
pub mod scoped;
pub mod toggle;
pub mod workloads;

use std::fmt::Debug;
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use futures::{Stream, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use stagecoach_api::FIELD_MANAGER;
use stagecoach_api::condition::{self, Condition, ConditionStatus};
use stagecoach_engine::acceptance::{ACCEPTED, is_transition};
use tracing::{debug, info, warn};

use crate::admin::CacheSync;
use crate::context::Context;
use crate::error::ReconcileError;
use crate::retry::ObjectKey;
use crate::shutdown::Shutdown;

/// How often an object is reconciled when nothing triggers it, as a safety net against
/// missed watch events. A reconcile with nothing to change writes nothing.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(3600);

/// Longest Event note the API accepts.
const MAX_EVENT_NOTE: usize = 1024;

/// What a cache keeps of `metadata.managedFields`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManagedFields {
    /// Nothing.
    Drop,
    /// Who wrote, how and when, but not which fields (`fieldsV1`, the large part): enough
    /// to name the field manager of an outside edit.
    ManagersOnly,
}

/// Watches `api` (with `config`: a label selector, say) into a reflector cache. Returns
/// the cache and the stream of changed (created, updated or deleted) objects that drives a
/// [`Controller`](kube::runtime::Controller). `synced` is marked when the cache has its
/// first complete list. Managed fields are dropped or thinned before caching (see
/// [`ManagedFields`]): they are a large part of every object.
pub fn cached_watch_with<K>(
    api: Api<K>,
    config: watcher::Config,
    synced: CacheSync,
    managed_fields: ManagedFields,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    reflected_watch(api, config, Some(synced), managed_fields)
}

/// [`cached_watch_with`], reporting the first complete list to `synced` if there is one
/// (a stage namespace's watch has none: the reconcile awaits its store instead).
pub fn reflected_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    synced: Option<CacheSync>,
    managed_fields: ManagedFields,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let objects = reflect::reflect(
        relisting_watcher(api, config)
            .backoff(WatchBackoff::default())
            .modify(move |obj: &mut K| match managed_fields {
                ManagedFields::Drop => obj.managed_fields_mut().clear(),
                ManagedFields::ManagersOnly => {
                    for entry in obj.managed_fields_mut() {
                        entry.fields_v1 = None;
                    }
                }
            }),
        writer,
    )
    .inspect(move |event| {
        if let (Ok(watcher::Event::InitDone), Some(synced)) = (event, &synced) {
            synced.synced();
        }
    })
    // Deleted objects too: a Deployment deleted mid-rollout must fail its stage at
    // once, not at the release's next requeue (a pause's end, say).
    .touched_objects();
    (reader, objects)
}

/// A [`watcher`] that starts over with a complete list after any error, instead of
/// resuming from its last resource version. kube's watcher relists only on a 410 *event*;
/// after other errors it resumes from the version it had. Against an API server that was
/// restarted, such a resumed watch was accepted and then stayed silent for 20 s to 2 min
/// before the new server answered 410 Gone (measured on the test control plane), and the
/// cache stayed stale all that time. A fresh watcher lists anew; the reflector
/// ([`reflect::reflect`]) applies what changed and removes what the list lacks. Errors are rare (the API server went away,
/// a watch expired), so the extra list is cheap.
pub fn relisting_watcher<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    type Inner<K> = futures::stream::BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>;
    futures::stream::unfold(None::<Inner<K>>, move |current| {
        let (api, config) = (api.clone(), config.clone());
        async move {
            let mut stream = current.unwrap_or_else(|| watcher(api, config).boxed());
            let item = stream.next().await?;
            if let Err(error) = &item
                && is_gone(error)
            {
                warn!(%error, "resource version gone; listing anew");
            }
            let keep = item.is_ok();
            Some((item, keep.then_some(stream)))
        }
    })
}

/// Whether a watch error means "your resource version is too old" (HTTP 410 Gone), in
/// whichever form the API server said it.
pub fn is_gone(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status))
        | watcher::Error::WatchError(status) => status.code == 410,
        _ => false,
    }
}

/// Backoff between failed watch attempts: 250 ms doubling to at most 4 s, reset by any
/// success. kube's default grows to 30 s, so an API server that was down for 15 s left
/// caches stale for up to half a minute after it came back.
#[derive(Debug)]
pub struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(4);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(delay)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// The current time as status stores it: whole seconds, like metav1.Time, so that what
/// is written reads back equal.
pub fn status_now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(0)
}

/// The name and namespace of a namespaced object, or the step error if one is missing.
pub fn object_key<K: Resource>(kind: &'static str, obj: &K) -> Result<ObjectKey, ReconcileError> {
    Ok(ObjectKey {
        kind,
        namespace: obj
            .namespace()
            .ok_or(ReconcileError::MissingMetadata("namespace"))?,
        name: obj
            .meta()
            .name
            .clone()
            .ok_or(ReconcileError::MissingMetadata("name"))?,
    })
}

/// Writes `status` to the status subresource with server-side apply, as the
/// `stagecoach` field manager. Counts the write in `stagecoach_status_writes_total`.
/// Returns the object's resource version after the write.
pub async fn apply_status<K>(
    ctx: &Context,
    key: &ObjectKey,
    status: &impl Serialize,
) -> Result<Option<String>, ReconcileError>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": serde_json::to_value(status).map_err(ReconcileError::SerializeStatus)?,
    });
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    ctx.metrics.status_written(key.kind);
    let written = api
        .patch_status(&key.name, &params, &Patch::Apply(&body))
        .await
        .map_err(ReconcileError::PatchStatus)?;
    debug!("status written");
    Ok(written.resource_version())
}

/// Publishes an Event when the Accepted condition appears or changes status or reason;
/// does nothing otherwise.
pub async fn announce_acceptance(
    ctx: &Context,
    reference: &ObjectReference,
    before: &[Condition],
    after: &[Condition],
) -> Result<(), ReconcileError> {
    let Some(accepted) = condition::find(after, ACCEPTED) else {
        return Ok(());
    };
    if !is_transition(condition::find(before, ACCEPTED), accepted) {
        return Ok(());
    }
    let (type_, reason) = match accepted.status {
        ConditionStatus::True => (EventType::Normal, ACCEPTED.to_owned()),
        ConditionStatus::False | ConditionStatus::Unknown => {
            (EventType::Warning, accepted.reason.clone())
        }
    };
    info!(reason = %reason, detail = %accepted.message, "acceptance changed");
    let event = Event {
        type_,
        reason,
        note: Some(truncate(&accepted.message, MAX_EVENT_NOTE)),
        action: "Validate".into(),
        secondary: None,
    };
    ctx.recorder
        .publish(&event, reference)
        .await
        .map_err(ReconcileError::PublishEvent)
}

/// Decides what happens after a failed reconcile: transient failures retry with bounded
/// exponential backoff per object; the others wait for the object to change.
pub fn error_policy<K: Resource>(
    kind: &'static str,
    obj: &K,
    error: &ReconcileError,
    ctx: &Context,
) -> Action {
    let (namespace, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
    if !error.is_transient() {
        warn!(kind, %namespace, %name, category = error.category(), error = %error,
            "reconcile failed; waiting for the object to change");
        return Action::await_change();
    }
    let delay = ctx.retries.failed(ObjectKey {
        kind,
        namespace: namespace.clone(),
        name: name.clone(),
    });
    warn!(kind, %namespace, %name, category = error.category(), error = %error,
        retry_in_seconds = delay.as_secs(), "reconcile failed; retrying");
    Action::requeue(delay)
}

/// Records the outcome of one reconcile in metrics and in the retry state.
pub fn record_outcome(
    ctx: &Context,
    kind: &'static str,
    key: Option<&ObjectKey>,
    started: Instant,
    result: &Result<Action, ReconcileError>,
) {
    ctx.metrics.reconciled(kind, started.elapsed());
    match result {
        Ok(_) => {
            if let Some(key) = key {
                ctx.retries.succeeded(key);
            }
        }
        Err(error) => ctx.metrics.reconcile_failed(kind, error.category()),
    }
}

/// Runs a controller's output stream to its end, logging what is worth logging.
///
/// After a shutdown signal the controller finishes its in-flight reconciles and ends.
/// Until its cache has synced it has none, but also cannot end (it waits for the cache
/// first), so then it is dropped at once.
pub async fn drain<K, S>(kind: &'static str, results: S, shutdown: Shutdown, synced: CacheSync)
where
    K: Resource,
    S: Stream<
        Item = Result<
            (reflector::ObjectRef<K>, Action),
            kube::runtime::controller::Error<ReconcileError, watcher::Error>,
        >,
    >,
{
    use kube::runtime::controller::Error;

    let logged = results.for_each(|result| async move {
        match result {
            Ok(_) | Err(Error::ReconcilerFailed(..)) => {} // logged by error_policy
            Err(Error::ObjectNotFound(object)) => debug!(kind, %object, "object is gone"),
            Err(Error::QueueError(error)) => warn!(kind, %error, "watch failed; retrying"),
            Err(error) => warn!(kind, %error, "controller error"),
        }
    });
    let stopped_unsynced = async {
        shutdown.wait().await;
        if synced.is_synced() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = logged => info!(kind, "controller stopped"),
        () = stopped_unsynced => info!(kind, "controller stopped before its cache synced"),
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
/// A hash map never gives back the room a burst made (the write fence after 10,000 toggle
/// statuses written at a cold start: about 1.5 MiB, held for the operator's lifetime).
/// Once at most an eighth of that room is used, the map shrinks to twice what it holds.
pub fn shrink_after_burst<K: Eq + std::hash::Hash, V>(map: &mut std::collections::HashMap<K, V>) {
    const SMALL: usize = 64;
    if map.capacity() > SMALL && map.len() * 8 <= map.capacity() {
        map.shrink_to((map.len() * 2).max(SMALL));
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abcdef", 3), "abc");
        assert_eq!(truncate("aé", 2), "a");
    }

    #[test]
    fn watch_backoff_grows_to_its_ceiling_and_resets() {
        use kube::runtime::utils::Backoff as _;
        let mut backoff = WatchBackoff::default();
        let delays: Vec<u64> = backoff
            .by_ref()
            .take(7)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 4000, 4000]);
        backoff.reset();
        assert_eq!(backoff.next(), Some(Duration::from_millis(250)));
    }

    #[test]
    fn a_410_in_any_form_means_list_anew() {
        let status = |code: u16| kube::core::Status {
            code,
            ..kube::core::Status::default()
        };
        assert!(is_gone(&watcher::Error::WatchStartFailed(
            kube::Error::Api(Box::new(status(410)))
        )));
        assert!(is_gone(&watcher::Error::WatchError(Box::new(status(410)))));
        assert!(!is_gone(&watcher::Error::WatchStartFailed(
            kube::Error::Api(Box::new(status(500)))
        )));
        assert!(!is_gone(&watcher::Error::NoResourceVersion));
    }

    #[test]
    fn status_time_has_whole_seconds() {
        assert_eq!(status_now().timestamp_subsec_nanos(), 0);
    }
}
