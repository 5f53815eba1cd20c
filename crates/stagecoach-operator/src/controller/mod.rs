//! The controllers and what they share: the status write, the transition Event, the
//! error policy and the bookkeeping around each reconcile.
//!
//! Every reconcile is observe -> plan -> apply. Observe reads only the object handed in
//! by the controller (from the reflector cache); plan is a pure function from
//! `stagecoach-engine`; apply writes only when the planned status differs from the
//! current one.

pub mod release;
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

/// Watches `api` into a reflector cache. Returns the cache and the stream of changed
/// objects that drives a [`Controller`](kube::runtime::Controller). `synced` is marked
/// when the cache has its first complete list. Managed fields are dropped before caching:
/// nothing reads them, and they are a large part of every object.
pub fn cached_watch<K>(
    api: Api<K>,
    synced: CacheSync,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    cached_watch_with(api, watcher::Config::default(), synced)
}

/// [`cached_watch`] of only the objects matching a label selector.
pub fn cached_watch_selected<K>(
    api: Api<K>,
    labels: &str,
    synced: CacheSync,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    cached_watch_with(api, watcher::Config::default().labels(labels), synced)
}

fn cached_watch_with<K>(
    api: Api<K>,
    config: watcher::Config,
    synced: CacheSync,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let objects = watcher(api, config)
        .default_backoff()
        .modify(|obj: &mut K| obj.managed_fields_mut().clear())
        .reflect(writer)
        .inspect(move |event| {
            if let Ok(watcher::Event::InitDone) = event {
                synced.synced();
            }
        })
        .applied_objects();
    (reader, objects)
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
pub async fn apply_status<K>(
    ctx: &Context,
    key: &ObjectKey,
    status: &impl Serialize,
) -> Result<(), ReconcileError>
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
    api.patch_status(&key.name, &params, &Patch::Apply(&body))
        .await
        .map_err(ReconcileError::PatchStatus)?;
    debug!("status written");
    Ok(())
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
    fn status_time_has_whole_seconds() {
        assert_eq!(status_now().timestamp_subsec_nanos(), 0);
    }
}
