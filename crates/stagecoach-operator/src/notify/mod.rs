//! Delivery of notifications: the IO half of `stagecoach_engine::notify`.
//!
//! The release reconcile never waits for a receiver. After its status is written it hands
//! the records that are due ([`Notifier::dispatch`]) to a background worker through a
//! bounded queue and returns; the worker POSTs them (a few at a time, each with a short
//! timeout), keeps each outcome in memory and asks for a reconcile of the release, whose
//! planner folds the outcomes into `status.notifications` ([`Notifier::outcomes`]). An
//! outcome is forgotten once the status shows it. What is pending is always read from
//! status, so after a restart everything without `deliveredAt` is sent again, with the
//! same id. Memory only prevents sending the same attempt twice while it is in flight.
//!
//! Only the leader reconciles releases, so only the leader delivers; the worker lives as
//! long as the leader's run (dropping it aborts the deliveries in flight).

mod deliver;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::channel::mpsc as trigger;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};
use stagecoach_api::pipeline::{NotificationEvent, PipelineSpec, SecretKeyRef};
use stagecoach_api::{Release, ReleaseStatus};
use stagecoach_engine::notify::{self, Outcome, Subject, event_name, render};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::controller::status_now;
use crate::metrics::Metrics;

/// Deliveries waiting for the worker; past this a reconcile leaves the rest for later.
const QUEUE: usize = 256;
/// Deliveries in flight at once.
const CONCURRENCY: usize = 8;
/// How long a receiver gets to answer.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// An outcome no reconcile has picked up after this long is dropped (its release is gone).
const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// How soon a reconcile that could not queue everything that was due tries again.
const QUEUE_FULL_RETRY: Duration = Duration::from_secs(1);

/// One record of one release: (namespace, release, event id, receiver).
type SlotKey = (String, String, String, String);

enum Slot {
    /// Being sent.
    InFlight,
    /// Sent; waiting for a reconcile to write it into status.
    Done(Outcome, Instant),
}

/// One POST to make.
pub struct Job {
    key: SlotKey,
    attempt: i32,
    event: NotificationEvent,
    url: String,
    /// The Secret key holding the token, in the release's namespace.
    secret: Option<SecretKeyRef>,
    content_type: &'static str,
    body: String,
}

struct Shared {
    slots: Mutex<HashMap<SlotKey, Slot>>,
    queue: mpsc::Sender<Job>,
    max_backoff: Duration,
}

/// The reconcile's handle on delivery (cheap to clone).
#[derive(Clone)]
pub struct Notifier {
    shared: Arc<Shared>,
}

/// The worker that POSTs; run it with [`Worker::run`] for as long as this replica leads.
pub struct Worker {
    jobs: mpsc::Receiver<Job>,
    shared: Arc<Shared>,
    client: Client,
    http: reqwest::Client,
    metrics: Metrics,
    triggers: trigger::UnboundedSender<ObjectRef<Release>>,
}

impl Notifier {
    /// The handle, its worker, and the stream of releases to reconcile because a delivery
    /// ended (for the release controller's `reconcile_on`).
    pub fn new(
        client: Client,
        metrics: Metrics,
        max_backoff: Duration,
    ) -> anyhow::Result<(Self, Worker, trigger::UnboundedReceiver<ObjectRef<Release>>)> {
        let (queue, jobs) = mpsc::channel(QUEUE);
        let (triggers, triggered) = trigger::unbounded();
        let shared = Arc::new(Shared {
            slots: Mutex::new(HashMap::new()),
            queue,
            max_backoff,
        });
        let worker = Worker {
            jobs,
            shared: shared.clone(),
            client,
            http: deliver::http_client()?,
            metrics,
            triggers,
        };
        Ok((Self { shared }, worker, triggered))
    }

    /// The longest wait between two attempts (for the engine's backoff).
    pub fn max_backoff(&self) -> Duration {
        self.shared.max_backoff
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<SlotKey, Slot>> {
        self.shared
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The attempts on this release's notifications that ended and are not in its status
    /// yet, to fold in before planning.
    pub fn outcomes(&self, namespace: &str, name: &str) -> Vec<Outcome> {
        self.slots()
            .iter()
            .filter(|((ns, release, _, _), _)| ns == namespace && release == name)
            .filter_map(|(_, slot)| match slot {
                Slot::Done(outcome, _) => Some(outcome.clone()),
                Slot::InFlight => None,
            })
            .collect()
    }

    /// After the reconcile wrote `status` (or found it already written): forgets the
    /// outcomes it shows, then queues every record that is due and not already being sent.
    /// Returns how soon to reconcile again if the queue could not take everything.
    pub fn dispatch(
        &self,
        release: &Release,
        status: &ReleaseStatus,
        pipeline: Option<&PipelineSpec>,
    ) -> Option<Duration> {
        let namespace = release.namespace().unwrap_or_default();
        let name = release.name_any();
        let uid = release.uid().unwrap_or_default();
        let now = status_now();
        let mut slots = self.slots();
        slots.retain(|key, slot| {
            let (ns, release_name, id, receiver) = key;
            let Slot::Done(outcome, since) = slot else {
                return true;
            };
            if since.elapsed() > FORGET_AFTER {
                return false;
            }
            if *ns != namespace || *release_name != name {
                return true;
            }
            // Kept until the status counts this attempt (or the record is gone).
            status
                .notifications
                .iter()
                .find(|r| r.id == *id && r.receiver == *receiver)
                .is_some_and(|r| r.attempts < outcome.attempt && r.delivered_at.is_none())
        });
        let receivers = pipeline
            .map(|p| p.notifications.as_slice())
            .unwrap_or_default();
        let subject = Subject {
            namespace: &namespace,
            name: &name,
            uid: &uid,
            spec: &release.spec,
            status,
            pipeline,
            now,
        };
        let mut full = false;
        for record in notify::due(status, now) {
            let key = (
                namespace.clone(),
                name.clone(),
                record.id.clone(),
                record.receiver.clone(),
            );
            if slots.contains_key(&key) {
                continue;
            }
            let Some(receiver) = receivers.iter().find(|r| r.name == record.receiver) else {
                debug!(receiver = %record.receiver, "no such receiver in the Pipeline any more; not sent");
                continue;
            };
            let rendered = render(&subject, record, receiver.webhook.format);
            let job = Job {
                key: key.clone(),
                attempt: record.attempts + 1,
                event: record.event,
                url: receiver.webhook.url.clone(),
                secret: receiver.webhook.secret_ref.clone(),
                content_type: rendered.content_type,
                body: rendered.body,
            };
            match self.shared.queue.try_send(job) {
                Ok(()) => {
                    slots.insert(key, Slot::InFlight);
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    full = true;
                    break;
                }
                // The worker has stopped: this replica is shutting down or no longer leads.
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
        full.then_some(QUEUE_FULL_RETRY)
    }
}

impl Worker {
    /// Sends what is queued, at most [`CONCURRENCY`] at a time, until the queue closes.
    /// Dropping the future aborts the deliveries in flight.
    pub async fn run(mut self) {
        let mut in_flight = JoinSet::new();
        loop {
            tokio::select! {
                job = self.jobs.recv(), if in_flight.len() < CONCURRENCY => {
                    let Some(job) = job else { break };
                    let (client, http) = (self.client.clone(), self.http.clone());
                    in_flight.spawn(async move {
                        let result = deliver::send(&client, &http, &job).await;
                        (job, result)
                    });
                }
                Some(done) = in_flight.join_next() => {
                    if let Ok((job, result)) = done {
                        self.finish(job, result);
                    }
                }
                else => break,
            }
        }
        while let Some(done) = in_flight.join_next().await {
            if let Ok((job, result)) = done {
                self.finish(job, result);
            }
        }
    }

    fn finish(&self, job: Job, result: Result<(), String>) {
        let (namespace, name, id, receiver) = job.key.clone();
        let outcome = match &result {
            Ok(()) => "delivered",
            Err(_) => "failed",
        };
        self.metrics.notified(event_name(job.event), outcome);
        match &result {
            Ok(()) => info!(
                %namespace, release = %name, %receiver, event = event_name(job.event), %id,
                attempt = job.attempt, "notification delivered"
            ),
            Err(error) => warn!(
                %namespace, release = %name, %receiver, event = event_name(job.event), %id,
                attempt = job.attempt, %error, "notification not delivered"
            ),
        }
        let done = Outcome {
            id,
            receiver,
            attempt: job.attempt,
            at: status_now(),
            error: result.err(),
        };
        self.shared
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(job.key, Slot::Done(done, Instant::now()));
        let _ = self
            .triggers
            .unbounded_send(ObjectRef::new(&name).within(&namespace));
    }
}

/// Aborts the worker when dropped: it lives exactly as long as the run that leads.
pub struct WorkerGuard(tokio::task::JoinHandle<()>);

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Spawns the worker; dropping the guard stops it.
pub fn spawn(worker: Worker) -> WorkerGuard {
    WorkerGuard(tokio::spawn(worker.run()))
}
