//! The audit records: the IO half of `stagecoach_engine::record` and `dora`.
//!
//! When a release has ended, the release reconcile asks [`Archiver::archive`] to write
//! its record: an immutable ConfigMap in the release's namespace, not owned by the
//! Release, so that deleting the Release (or pruning it from Git) keeps it. The write is
//! a create of a name derived from the release's name and uid: a second create of the
//! same record is refused with 409 AlreadyExists, which means done. Nothing is kept in
//! memory that a restart would need: a release that ended while no operator ran is
//! archived by its next reconcile (every release is reconciled after a start).
//!
//! The Release's finalizer holds a deleted Release until its record is written: the
//! release reconcile calls [`Archiver::archive`] before it removes the finalizer, and
//! a failed write keeps the finalizer (and is retried).
//!
//! A record its Pipeline's retention would delete at once is not written: so the record
//! of a Release that still exists, once pruned, is not written again by its next
//! reconcile.
//!
//! A watch of the labelled record ConfigMaps in the watched namespaces keeps a small
//! [`RecordIndex`] (per record: the release uid, application, end time and DORA facts;
//! never the documents), from which the DORA gauges are computed and the Pipelines'
//! retention is applied. Every replica keeps the index and exports the gauges; only the
//! leader writes and prunes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use prometheus::{GaugeVec, Opts};
use stagecoach_api::{Pipeline, Release, ReleaseStatus};
use stagecoach_engine::audit::{self as decisions, Entry};
use stagecoach_engine::dora::{self, Facts};
use stagecoach_engine::pipeline::{Governing, pipelines_of};
use stagecoach_engine::record::{self, Archived, Due, RecordInput};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::admin::CacheSync;
use crate::audit;
use crate::controller::{WatchBackoff, relisting_watcher, status_now};
use crate::error::ReconcileError;
use crate::leader::Leadership;
use crate::metrics::Metrics;

/// The window of the DORA gauges.
pub const DORA_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often retention is applied and the DORA gauges are recomputed (their window
/// slides) when nothing else asks for it.
const PERIOD: Duration = Duration::from_secs(60);
/// How soon a reconcile looks again when the record index has not listed yet.
const UNSYNCED_RETRY: Duration = Duration::from_secs(1);

/// One record as the index keeps it.
#[derive(Clone, Debug)]
struct Indexed {
    uid: String,
    application: String,
    release: String,
    version: String,
    digest: String,
    /// When the release ended; the ConfigMap's creation when the annotation is missing.
    completed_at: Option<DateTime<Utc>>,
    facts: Option<Facts>,
}

/// (namespace, ConfigMap name).
type RecordKey = (String, String);

#[derive(Default)]
struct Records {
    by_key: BTreeMap<RecordKey, Indexed>,
    uids: HashSet<String>,
}

impl Records {
    fn insert(&mut self, key: RecordKey, record: Indexed) {
        self.uids.insert(record.uid.clone());
        if let Some(old) = self.by_key.insert(key, record)
            && !self.by_key.values().any(|r| r.uid == old.uid)
        {
            self.uids.remove(&old.uid);
        }
    }

    fn remove(&mut self, key: &RecordKey) {
        if let Some(old) = self.by_key.remove(key) {
            self.uids.remove(&old.uid);
        }
    }
}

/// What the operator knows of the record ConfigMaps (see the module documentation).
#[derive(Clone)]
pub struct RecordIndex {
    records: Arc<Mutex<Records>>,
    synced: CacheSync,
}

impl RecordIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn has_release(&self, uid: &str) -> bool {
        self.lock().uids.contains(uid)
    }

    /// The records of one application, for retention.
    fn of(&self, namespace: &str, application: &str) -> Vec<Archived> {
        self.lock()
            .by_key
            .iter()
            .filter(|((ns, _), r)| ns == namespace && r.application == application)
            .filter_map(|((_, name), r)| {
                Some(Archived {
                    name: name.clone(),
                    completed_at: r.completed_at?,
                })
            })
            .collect()
    }

    /// The DORA facts of every application's records, by (namespace, application).
    fn facts(&self) -> BTreeMap<(String, String), Vec<Facts>> {
        let mut out: BTreeMap<(String, String), Vec<Facts>> = BTreeMap::new();
        for ((namespace, _), r) in &self.lock().by_key {
            out.entry((namespace.clone(), r.application.clone()))
                .or_default()
                .extend(r.facts.clone());
        }
        out
    }
}

/// What the index keeps of a record ConfigMap; `None` for one that is not a record.
fn index_entry(config_map: &ConfigMap) -> Option<(RecordKey, Indexed)> {
    let labels = config_map.labels();
    let annotations = config_map.annotations();
    let uid = labels.get(record::RELEASE_UID_LABEL)?.clone();
    let application = labels.get(record::APPLICATION_LABEL)?.clone();
    let document: Option<serde_json::Value> = config_map
        .data
        .as_ref()
        .and_then(|d| d.get(record::DATA_KEY))
        .and_then(|text| serde_json::from_str(text).ok());
    let completed_at = annotations
        .get(record::COMPLETED_ANNOTATION)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| {
            config_map
                .creation_timestamp()
                .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0))
        });
    let record = Indexed {
        uid,
        application,
        release: annotations
            .get(record::RELEASE_ANNOTATION)
            .cloned()
            .unwrap_or_default(),
        version: annotations
            .get(record::VERSION_ANNOTATION)
            .cloned()
            .unwrap_or_default(),
        digest: document
            .as_ref()
            .and_then(|d| d.get("digest"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        completed_at,
        facts: document.as_ref().and_then(dora::facts_of_document),
    };
    Some(((config_map.namespace()?, config_map.name_any()), record))
}

/// The DORA gauges, by namespace and application (bounded: one series per application
/// with records, never per release).
#[derive(Clone)]
struct DoraGauges {
    deployments: GaugeVec,
    per_day: GaugeVec,
    lead_time: GaugeVec,
    failure_rate: GaugeVec,
    time_to_restore: GaugeVec,
    shown: Arc<Mutex<BTreeSet<(String, String)>>>,
}

impl DoraGauges {
    fn new(metrics: &Metrics) -> Result<Self, prometheus::Error> {
        let labels = ["namespace", "application"];
        let window = "over the last 30 days, from the audit records";
        let gauge = |name: &str, help: &str| -> Result<GaugeVec, prometheus::Error> {
            let gauge = GaugeVec::new(Opts::new(name, format!("{help}, {window}.")), &labels)?;
            metrics.register(Box::new(gauge.clone()))?;
            Ok(gauge)
        };
        Ok(Self {
            deployments: gauge(
                "stagecoach_dora_deployments",
                "Releases whose last stage reached 100%",
            )?,
            per_day: gauge(
                "stagecoach_dora_deployment_frequency_per_day",
                "Deployment frequency: releases whose last stage reached 100%, per day",
            )?,
            lead_time: gauge(
                "stagecoach_dora_lead_time_seconds",
                "Lead time for changes: median time from a change's mergedAt (else the \
                 Release's creation) to its last stage at 100%",
            )?,
            failure_rate: gauge(
                "stagecoach_dora_change_failure_rate",
                "Change failure rate: share of the releases entering the last stage that \
                 were rolled back there (rollout or early life support)",
            )?,
            time_to_restore: gauge(
                "stagecoach_dora_time_to_restore_seconds",
                "Time to restore: median time from the failing verdict to the rollback in \
                 the last stage",
            )?,
            shown: Arc::default(),
        })
    }

    /// Sets every application's gauges from the index; removes those of applications
    /// without records.
    fn refresh(&self, index: &RecordIndex, now: DateTime<Utc>) {
        let since = now - chrono::Duration::from_std(DORA_WINDOW).unwrap_or_default();
        let all = index.facts();
        let mut shown = self.shown.lock().unwrap_or_else(PoisonError::into_inner);
        for gone in shown.iter().filter(|k| !all.contains_key(*k)) {
            let labels = [gone.0.as_str(), gone.1.as_str()];
            for gauge in [
                &self.deployments,
                &self.per_day,
                &self.lead_time,
                &self.failure_rate,
                &self.time_to_restore,
            ] {
                let _ = gauge.remove_label_values(&labels);
            }
        }
        for ((namespace, application), facts) in &all {
            let labels = [namespace.as_str(), application.as_str()];
            let report = dora::report(facts, since, now);
            #[allow(clippy::cast_precision_loss)] // counts far below 2^52
            self.deployments
                .with_label_values(&labels)
                .set(report.deployments as f64);
            self.per_day
                .with_label_values(&labels)
                .set(report.deployments_per_day);
            let set = |gauge: &GaugeVec, value: Option<f64>| match value {
                Some(v) => gauge.with_label_values(&labels).set(v),
                None => {
                    let _ = gauge.remove_label_values(&labels);
                }
            };
            set(
                &self.lead_time,
                report.lead_time.as_ref().map(|s| s.median_seconds),
            );
            set(&self.failure_rate, report.change_failure_rate);
            set(
                &self.time_to_restore,
                report.time_to_restore.as_ref().map(|s| s.median_seconds),
            );
        }
        *shown = all.into_keys().collect();
    }
}

struct Shared {
    client: Client,
    index: RecordIndex,
    /// Releases whose record this run wrote (or found written) and the index has not
    /// shown yet: not written twice in the meantime.
    written: Mutex<HashSet<String>>,
    /// Wakes the retention task when the records changed.
    wake: Notify,
}

/// The release reconcile's handle on the records (cheap to clone).
#[derive(Clone)]
pub struct Archiver {
    shared: Arc<Shared>,
}

/// Aborts the record watch and the retention task when dropped: they live as long as
/// the run that started them.
pub struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl Archiver {
    /// Starts the record watch (in `namespace`, or all), the DORA gauges and the
    /// retention task; returns the handle for the release reconcile and the tasks'
    /// guard.
    pub fn start(
        client: Client,
        namespace: Option<&str>,
        metrics: &Metrics,
        synced: CacheSync,
        pipelines: Store<Pipeline>,
        leadership: Leadership,
    ) -> Result<(Self, Tasks), prometheus::Error> {
        let gauges = DoraGauges::new(metrics)?;
        let index = RecordIndex {
            records: Arc::default(),
            synced,
        };
        let shared = Arc::new(Shared {
            client: client.clone(),
            index: index.clone(),
            written: Mutex::default(),
            wake: Notify::new(),
        });
        let api: Api<ConfigMap> = match namespace {
            Some(ns) => Api::namespaced(client, ns),
            None => Api::all(client),
        };
        let watch = tokio::spawn(watch_records(api, index, gauges.clone(), shared.clone()));
        let retention = tokio::spawn(retain(shared.clone(), gauges, pipelines, leadership));
        Ok((Self { shared }, Tasks(vec![watch, retention])))
    }

    /// Writes the record of a release that has ended, when it is due (see
    /// [`record::due`]): at once when `deleting`. Returns when to look again if it is
    /// not due yet. A record already written is not written again.
    pub async fn archive(
        &self,
        release: &Release,
        status: &ReleaseStatus,
        governing: Governing<'_>,
        deleting: bool,
    ) -> Result<Option<Duration>, ReconcileError> {
        let now = status_now();
        match record::due(status, deleting, now) {
            Due::NotEnded => return Ok(None),
            Due::At(at) => return Ok(Some((at - now).to_std().unwrap_or_default())),
            Due::Now => {}
        }
        let Some(uid) = release.uid() else {
            return Ok(None);
        };
        let shared = &self.shared;
        if shared.index.has_release(&uid) || self.was_written(&uid) {
            return Ok(None);
        }
        if !deleting && !shared.index.synced.is_synced() {
            // The index will say whether the record exists; a create would only find out
            // the same with a 409, once per release after every start.
            return Ok(Some(UNSYNCED_RETRY));
        }
        let (name, namespace) = (release.name_any(), release.namespace().unwrap_or_default());
        let (pipeline, retention) = match governing {
            Governing::Pipeline(name, spec) => (Some(name), spec.retention.as_ref()),
            Governing::None | Governing::Conflict(_) => (None, None),
        };
        let record_name = record::record_name(&name, &uid);
        if let (Some(retention), Some(completed_at)) = (retention, status.completed_at) {
            // A record the retention would delete at once is not written: it was, and
            // has been pruned (or the release ended long ago).
            let mut records = shared.index.of(&namespace, &release.spec.application);
            records.push(Archived {
                name: record_name.clone(),
                completed_at,
            });
            if record::to_prune(&records, retention, now).contains(&record_name) {
                debug!(record = %record_name, "beyond the Pipeline's retention: not written");
                return Ok(None);
            }
        }
        let input = RecordInput {
            name: &name,
            namespace: &namespace,
            uid: &uid,
            created: release
                .creation_timestamp()
                .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0))
                .unwrap_or_default(),
            spec: &release.spec,
            status,
            pipeline,
            archived_at: now,
        };
        let document = record::document(&input);
        let (text, truncated) = record::render(&document, record::SIZE_LIMIT);
        let config_map: ConfigMap = ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(record_name.clone()),
                namespace: Some(namespace.clone()),
                labels: Some(record::labels(&input)),
                annotations: Some(record::annotations(&input)),
                ..kube::api::ObjectMeta::default()
            },
            immutable: Some(true),
            data: Some(BTreeMap::from([(record::DATA_KEY.to_owned(), text)])),
            ..ConfigMap::default()
        };
        let api: Api<ConfigMap> = Api::namespaced(shared.client.clone(), &namespace);
        let outcome = status.phase.map_or("", |p| p.as_str());
        match api.create(&PostParams::default(), &config_map).await {
            Ok(_) => {
                if truncated {
                    warn!(record = %record_name, "the record was too large for a ConfigMap; \
                        parts were cut (listed in its `truncated` field)");
                }
                audit::emit(
                    &audit::Subject::of(release, status),
                    &Entry {
                        at: now,
                        actor: decisions::OPERATOR.to_owned(),
                        action: decisions::action::RECORD_WRITTEN.to_owned(),
                        stage: String::new(),
                        outcome: outcome.to_owned(),
                        reason: if truncated { "Truncated" } else { "" }.to_owned(),
                        message: format!("audit record ConfigMap {namespace}/{record_name}"),
                    },
                );
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                debug!(record = %record_name, "record already written");
            }
            Err(source) => return Err(ReconcileError::WriteRecord(Box::new(source))),
        }
        shared
            .written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(uid);
        Ok(None)
    }

    fn was_written(&self, uid: &str) -> bool {
        self.shared
            .written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(uid)
    }
}

/// Keeps the index current from the labelled record ConfigMaps, and the gauges with it.
async fn watch_records(
    api: Api<ConfigMap>,
    index: RecordIndex,
    gauges: DoraGauges,
    shared: Arc<Shared>,
) {
    let config = watcher::Config::default().labels(&format!("{}=true", record::RECORD_LABEL));
    let mut events = relisting_watcher(api, config)
        .backoff(WatchBackoff::default())
        .boxed();
    let mut listing: Option<Records> = None;
    while let Some(event) = events.next().await {
        let changed = match event {
            Ok(watcher::Event::Init) => {
                listing = Some(Records::default());
                false
            }
            Ok(watcher::Event::InitApply(config_map)) => {
                if let (Some(records), Some((key, entry))) =
                    (listing.as_mut(), index_entry(&config_map))
                {
                    records.insert(key, entry);
                }
                false
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(records) = listing.take() {
                    *index.lock() = records;
                }
                index.synced.synced();
                true
            }
            Ok(watcher::Event::Apply(config_map)) => {
                if let Some((key, entry)) = index_entry(&config_map) {
                    index.lock().insert(key, entry);
                }
                true
            }
            Ok(watcher::Event::Delete(config_map)) => {
                let key = (
                    config_map.namespace().unwrap_or_default(),
                    config_map.name_any(),
                );
                index.lock().remove(&key);
                true
            }
            Err(error) => {
                warn!(%error, "record ConfigMap watch failed; retrying");
                false
            }
        };
        if changed {
            // What the index shows needs no memory of its own any more.
            let mut written = shared
                .written
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !written.is_empty() {
                let records = index.lock();
                written.retain(|uid| !records.uids.contains(uid));
            }
            drop(written);
            gauges.refresh(&index, Utc::now());
            // A new record may put an older one beyond its Pipeline's retention.
            shared.wake.notify_one();
        }
    }
}

/// Applies the Pipelines' retention (on the leader) and refreshes the gauges, every
/// [`PERIOD`] and whenever the records changed.
async fn retain(
    shared: Arc<Shared>,
    gauges: DoraGauges,
    pipelines: Store<Pipeline>,
    leadership: Leadership,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(PERIOD) => {}
            () = shared.wake.notified() => {}
        }
        let now = Utc::now();
        gauges.refresh(&shared.index, now);
        if !leadership.is_leader() || !shared.index.synced.is_synced() {
            continue;
        }
        for (namespace, application, retention) in retention_policies(&pipelines) {
            let records = shared.index.of(&namespace, &application);
            let pruned = record::to_prune(&records, &retention, now);
            if pruned.is_empty() {
                continue;
            }
            let api: Api<ConfigMap> = Api::namespaced(shared.client.clone(), &namespace);
            for name in pruned {
                let indexed = shared
                    .index
                    .lock()
                    .by_key
                    .get(&(namespace.clone(), name.clone()))
                    .cloned();
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {
                        if let Some(record) = indexed {
                            audit::emit(
                                &audit::Subject {
                                    uid: &record.uid,
                                    namespace: &namespace,
                                    name: &record.release,
                                    application: &application,
                                    version: &record.version,
                                    digest: &record.digest,
                                },
                                &Entry {
                                    at: status_now(),
                                    actor: decisions::OPERATOR.to_owned(),
                                    action: decisions::action::RECORD_PRUNED.to_owned(),
                                    stage: String::new(),
                                    outcome: "Deleted".to_owned(),
                                    reason: "Retention".to_owned(),
                                    message: format!(
                                        "audit record ConfigMap {namespace}/{name} deleted by \
                                         the retention of the application's Pipeline"
                                    ),
                                },
                            );
                        }
                        info!(%namespace, record = %name, "audit record pruned (retention)");
                    }
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(error) => {
                        warn!(%namespace, record = %name, %error, "cannot prune audit record");
                    }
                }
            }
        }
    }
}

/// (namespace, application, retention) of every Pipeline that sets a retention and is
/// the only one claiming its application (two Pipelines for one application prune
/// nothing: the stricter might not be the one in force).
fn retention_policies(
    pipelines: &Store<Pipeline>,
) -> Vec<(String, String, stagecoach_api::pipeline::Retention)> {
    let all = pipelines.state();
    let mut by_namespace: HashMap<String, Vec<&Pipeline>> = HashMap::new();
    for p in &all {
        by_namespace
            .entry(p.namespace().unwrap_or_default())
            .or_default()
            .push(p.as_ref());
    }
    let mut out = Vec::new();
    for (namespace, pipelines) in &by_namespace {
        for pipeline in pipelines {
            let Some(retention) = &pipeline.spec.retention else {
                continue;
            };
            let application = pipeline.application();
            if pipelines_of(application, pipelines).len() == 1 {
                out.push((namespace.clone(), application.to_owned(), retention.clone()));
            }
        }
    }
    out
}
