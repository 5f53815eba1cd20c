//! Gate evaluation: the IO half of `stagecoach_engine::release::providers`.
//!
//! The release reconcile says which gates it wants evaluated now ([`GateEvaluator::want`]:
//! the gates of the release's current stage, for its current step or early life support)
//! and reads their latest measurements before planning ([`GateEvaluator::measurements`]).
//! Each wanted gate has a task of its own that evaluates it at once and then every
//! `interval`, keeps the latest [`Measurement`] in memory and asks for a reconcile of the
//! release (a channel into the release controller's `reconcile_on`), so a verdict reaches
//! the planner within one reconcile and a reconcile never waits for a provider.
//!
//! Measurements are observations, like the health of pods: they live in memory, and the
//! planner folds each new one into the counts in status. A gate that is no longer wanted
//! (its stage ended, its step changed, its spec changed, the release ended or is deleted)
//! is stopped; the Jobs of job gates are deleted with it (see [`job`]). Only the leader
//! reconciles releases, so only the leader evaluates; every task lives as long as the
//! evaluator, which lives as long as the leader's run (dropping it aborts them).

mod http;
mod job;
mod prometheus;
mod secret;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::channel::mpsc as trigger;
use kube::Client;
use kube::runtime::reflector::{ObjectRef, Store};
use sha2::{Digest, Sha256};
use stagecoach_api::release::{Gate, GateVerdict, ReleasePhase, ResolvedStage, StagePhase};
use stagecoach_api::{Release, ReleaseStatus};
use stagecoach_engine::release::gate::Measurement;
use stagecoach_engine::release::providers;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

pub use self::job::delete_release_jobs;
use crate::controller::status_now;
use crate::metrics::Metrics;

/// Which gates a release wants evaluated now, and for what.
#[derive(Clone, Debug, PartialEq)]
pub struct Wanted {
    /// The stage, and the namespace its gates run in (Secrets are read there, Jobs run
    /// there).
    pub stage: String,
    pub namespace: String,
    /// Which part of the stage: `step <n>` or `early-life-support`. Every step starts
    /// its gates afresh (a Job per step, no measurement carried over).
    pub step: String,
    /// The release's name and version (for placeholders and the Job's environment).
    pub release: String,
    pub version: String,
    /// The stage's configured gates (the Release merged with its Pipeline).
    pub gates: Vec<Gate>,
}

impl Wanted {
    /// The gates `status` calls for: those of the current stage while it is progressing
    /// or in early life support, unless the release is being deleted or has ended.
    /// `stages` are the release's resolved stages (merged with its Pipeline).
    pub fn of(
        release: &Release,
        status: Option<&ReleaseStatus>,
        stages: &[ResolvedStage],
        deleting: bool,
    ) -> Option<Self> {
        let status = status?;
        if deleting || status.phase.is_some_and(ReleasePhase::is_terminal) {
            return None;
        }
        let current = status.current_stage.as_deref()?;
        let entry = status.stages.iter().find(|s| s.name == current)?;
        let step = match entry.phase {
            StagePhase::Progressing => format!("step {}", entry.step.unwrap_or(0)),
            StagePhase::EarlyLifeSupport => "early-life-support".to_owned(),
            _ => return None,
        };
        let resolved = stages.iter().find(|s| s.name == current)?;
        if resolved.gates.is_empty() {
            return None;
        }
        let namespace = resolved
            .namespace
            .clone()
            .or_else(|| (!entry.namespace.is_empty()).then(|| entry.namespace.clone()))?;
        Some(Self {
            stage: current.to_owned(),
            namespace,
            step,
            release: kube::ResourceExt::name_any(release),
            version: release.spec.version.clone(),
            gates: resolved.gates.clone(),
        })
    }

    fn context(&self) -> providers::GateContext<'_> {
        providers::GateContext {
            stage: &self.stage,
            namespace: &self.namespace,
            release: &self.release,
            version: &self.version,
        }
    }

    /// Whether `gate`, running for `other`, measures what this one wants: the same stage,
    /// step and release, and a gate of this one with exactly that spec.
    fn same_evaluation(&self, other: &Self, gate: &Gate) -> bool {
        self.stage == other.stage
            && self.namespace == other.namespace
            && self.step == other.step
            && self.release == other.release
            && self.version == other.version
            && self.gates.iter().any(|g| g == gate)
    }
}

/// (namespace, name) of a Release.
type ReleaseKey = (String, String);

/// One gate being evaluated.
struct Running {
    /// What it evaluates for.
    wanted: Arc<Wanted>,
    gate: Gate,
    latest: Arc<Mutex<Option<Measurement>>>,
    task: tokio::task::AbortHandle,
}

struct Shared {
    client: Client,
    http: reqwest::Client,
    metrics: Metrics,
    /// The Release cache: an evaluation stops when its Release is gone from it (deleted
    /// without a reconcile seeing it, its finalizer removed by hand).
    releases: Store<Release>,
    triggers: trigger::UnboundedSender<ObjectRef<Release>>,
    /// Per release, per gate name.
    running: Mutex<HashMap<ReleaseKey, BTreeMap<String, Running>>>,
    /// Every task (evaluations and Job clean-ups): dropped with the evaluator, which
    /// aborts them all.
    tasks: Mutex<JoinSet<()>>,
}

/// The release reconcile's handle on gate evaluation (cheap to clone). Dropping the last
/// handle stops every evaluation.
#[derive(Clone)]
pub struct GateEvaluator {
    shared: Arc<Shared>,
}

impl GateEvaluator {
    /// The evaluator and the stream of releases to reconcile because a measurement
    /// arrived (for the release controller's `reconcile_on`).
    pub fn new(
        client: Client,
        metrics: Metrics,
        releases: Store<Release>,
    ) -> anyhow::Result<(Self, trigger::UnboundedReceiver<ObjectRef<Release>>)> {
        let (triggers, triggered) = trigger::unbounded();
        let shared = Arc::new(Shared {
            client,
            http: http_client(None)?,
            metrics,
            releases,
            triggers,
            running: Mutex::new(HashMap::new()),
            tasks: Mutex::new(JoinSet::new()),
        });
        Ok((Self { shared }, triggered))
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<ReleaseKey, BTreeMap<String, Running>>> {
        self.shared
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) -> tokio::task::AbortHandle {
        let mut tasks = self
            .shared
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Reap what has ended (aborted evaluations, finished clean-ups).
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task)
    }

    /// The latest measurement of each gate `wanted` names, taken for exactly that stage
    /// and step (a gate not measured yet is missing: the planner treats it as
    /// Inconclusive).
    pub fn measurements(
        &self,
        namespace: &str,
        name: &str,
        wanted: Option<&Wanted>,
    ) -> BTreeMap<String, Measurement> {
        let Some(wanted) = wanted else {
            return BTreeMap::new();
        };
        let running = self.running();
        let Some(gates) = running.get(&(namespace.to_owned(), name.to_owned())) else {
            return BTreeMap::new();
        };
        gates
            .iter()
            .filter(|(_, r)| wanted.same_evaluation(&r.wanted, &r.gate))
            .filter_map(|(gate, r)| {
                let latest = r.latest.lock().unwrap_or_else(PoisonError::into_inner);
                latest.clone().map(|m| (gate.clone(), m))
            })
            .collect()
    }

    /// After a reconcile: evaluate exactly the gates `wanted` names (none: stop them all).
    /// A gate already running for the same stage, step and spec goes on; anything else is
    /// stopped, and a new gate starts with an evaluation at once. Job gates leave no Job
    /// running when stopped, and a stage left behind loses the release's gate Jobs.
    pub fn want(&self, namespace: &str, name: &str, wanted: Option<Wanted>) {
        let key = (namespace.to_owned(), name.to_owned());
        let wanted = wanted.map(Arc::new);
        let mut cleanups = Vec::new();
        let mut started = Vec::new();
        {
            let mut all = self.running();
            // Evaluations that stopped by themselves (their Release is gone).
            all.retain(|_, gates| {
                gates.retain(|_, r| !r.task.is_finished());
                !gates.is_empty()
            });
            let gates = all.entry(key.clone()).or_default();
            gates.retain(|gate_name, r| {
                let keep = wanted
                    .as_ref()
                    .is_some_and(|w| w.same_evaluation(&r.wanted, &r.gate));
                if !keep {
                    r.task.abort();
                    debug!(namespace, release = name, gate = %gate_name, "gate stopped");
                    if r.gate.job.is_some() {
                        let left = wanted
                            .as_ref()
                            .is_none_or(|w| w.namespace != r.wanted.namespace);
                        cleanups.push((r.wanted.namespace.clone(), gate_name.clone(), left));
                    }
                }
                keep
            });
            if let Some(w) = &wanted {
                for gate in &w.gates {
                    if gates.contains_key(&gate.name) {
                        continue;
                    }
                    let latest = Arc::new(Mutex::new(None));
                    let task = Task {
                        client: self.shared.client.clone(),
                        http: self.shared.http.clone(),
                        metrics: self.shared.metrics.clone(),
                        releases: self.shared.releases.clone(),
                        triggers: self.shared.triggers.clone(),
                        release_namespace: namespace.to_owned(),
                        wanted: w.clone(),
                        gate: gate.clone(),
                        latest: latest.clone(),
                    };
                    started.push(gate.name.clone());
                    let handle = self.spawn(task.run());
                    gates.insert(
                        gate.name.clone(),
                        Running {
                            wanted: w.clone(),
                            gate: gate.clone(),
                            latest,
                            task: handle,
                        },
                    );
                }
            }
            if gates.is_empty() {
                all.remove(&key);
            }
        }
        if !started.is_empty()
            && let Some(w) = &wanted
        {
            info!(
                namespace, release = name, stage = %w.stage, step = %w.step,
                gates = ?started, "evaluating gates"
            );
        }
        // A stage left behind loses every gate Job of the release (finished ones too);
        // a gate stopped within its stage only its Job still running.
        cleanups.sort();
        cleanups.dedup();
        for (stage_namespace, gate, left) in cleanups {
            let client = self.shared.client.clone();
            let (release_namespace, release) = (namespace.to_owned(), name.to_owned());
            self.spawn(async move {
                let result = if left {
                    job::delete_jobs(&client, &stage_namespace, &release_namespace, &release, None, false)
                        .await
                } else {
                    job::delete_jobs(
                        &client,
                        &stage_namespace,
                        &release_namespace,
                        &release,
                        Some(&gate),
                        true,
                    )
                    .await
                };
                if let Err(error) = result {
                    warn!(%error, namespace = %stage_namespace, %release, "cannot delete gate Jobs; their ttlSecondsAfterFinished removes finished ones");
                }
            });
        }
    }
}

/// One gate's evaluations, for as long as it is wanted.
struct Task {
    client: Client,
    http: reqwest::Client,
    metrics: Metrics,
    releases: Store<Release>,
    triggers: trigger::UnboundedSender<ObjectRef<Release>>,
    release_namespace: String,
    wanted: Arc<Wanted>,
    gate: Gate,
    latest: Arc<Mutex<Option<Measurement>>>,
}

impl Task {
    /// Evaluates at once (from the next whole second on), then every interval (counted
    /// from the start of the previous evaluation; one that took longer is followed at
    /// once), until aborted.
    ///
    /// The planner counts a measurement only when it was taken after its step started,
    /// in whole seconds (as status keeps times); the step started at the latest in the
    /// second the gate was first wanted, so the first evaluation waits for the next one.
    async fn run(self) {
        let interval = providers::interval_of(&self.gate);
        let mut tls = prometheus::TlsClients::default();
        let mut previous: Option<GateVerdict> = None;
        let subsec = chrono::Utc::now().timestamp_subsec_nanos();
        let next_second = Duration::from_nanos(u64::from(1_000_000_000 - subsec.min(999_999_999)));
        tokio::time::sleep(next_second).await;
        let release = ObjectRef::new(&self.wanted.release).within(&self.release_namespace);
        for evaluation in 0u32.. {
            if self.releases.get(&release).is_none() {
                debug!(namespace = %self.release_namespace, release = %self.wanted.release,
                       gate = %self.gate.name, "the Release is gone; gate stopped");
                break;
            }
            let started = tokio::time::Instant::now();
            let measurement = self.evaluate(evaluation, &mut tls).await;
            let took = started.elapsed();
            self.metrics
                .gate_evaluated(self.provider(), verdict_name(measurement.verdict), took);
            let w = &self.wanted;
            if previous == Some(measurement.verdict) {
                debug!(
                    namespace = %self.release_namespace, release = %w.release,
                    gate = %self.gate.name, verdict = verdict_name(measurement.verdict),
                    message = %measurement.message, "gate measured"
                );
            } else {
                info!(
                    namespace = %self.release_namespace, release = %w.release, stage = %w.stage,
                    gate = %self.gate.name, verdict = verdict_name(measurement.verdict),
                    message = %measurement.message, "gate verdict"
                );
            }
            previous = Some(measurement.verdict);
            *self.latest.lock().unwrap_or_else(PoisonError::into_inner) = Some(measurement);
            let _ = self.triggers.unbounded_send(release.clone());
            tokio::time::sleep_until(started + interval).await;
        }
    }

    fn provider(&self) -> &'static str {
        if self.gate.prometheus.is_some() {
            "prometheus"
        } else if self.gate.http.is_some() {
            "http"
        } else {
            "job"
        }
    }

    async fn evaluate(&self, evaluation: u32, tls: &mut prometheus::TlsClients) -> Measurement {
        let w = &self.wanted;
        let ctx = w.context();
        let timeout = providers::timeout_of(&self.gate);
        // Status times are whole seconds; evaluations start at least a second apart (the
        // shortest interval), so each is newer than the one before.
        let at = status_now();
        if let Some(gate) = &self.gate.prometheus {
            prometheus::evaluate(
                &self.client,
                &self.http,
                tls,
                &prometheus::Query {
                    namespace: &w.namespace,
                    gate,
                    ctx: &ctx,
                    timeout,
                },
                at,
            )
            .await
        } else if let Some(gate) = &self.gate.http {
            http::evaluate(
                &self.client,
                &self.http,
                &w.namespace,
                gate,
                &ctx,
                timeout,
                at,
            )
            .await
        } else if let Some(gate) = &self.gate.job {
            let id = evaluation_id(&self.release_namespace, w, &self.gate, evaluation);
            job::evaluate(
                &self.client,
                &job::Evaluation {
                    release_namespace: &self.release_namespace,
                    gate_name: &self.gate.name,
                    gate,
                    ctx: &ctx,
                    id: &id,
                    timeout,
                },
            )
            .await
        } else {
            failing("the gate sets none of prometheus, http or job", at)
        }
    }
}

/// The id of one evaluation of a job gate, the same in every process: a short hash of
/// the release, stage, step and gate (its whole spec), then the evaluation's number. A
/// leader that takes over finds the Job its predecessor started for the same evaluation
/// and adopts it.
fn evaluation_id(release_namespace: &str, wanted: &Wanted, gate: &Gate, evaluation: u32) -> String {
    let spec = serde_json::to_string(gate).unwrap_or_default();
    let mut hash = Sha256::new();
    for part in [
        release_namespace,
        &wanted.release,
        &wanted.version,
        &wanted.stage,
        &wanted.step,
        &spec,
    ] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let mut id = String::new();
    for byte in &hash.finalize()[..4] {
        let _ = write!(id, "{byte:02x}");
    }
    format!("{id}-{evaluation}")
}

/// A measurement for input the gate cannot work with (never a crash loop, never passing).
fn failing(message: impl Into<String>, at: chrono::DateTime<chrono::Utc>) -> Measurement {
    Measurement {
        verdict: GateVerdict::Failing,
        message: message.into(),
        value: None,
        at,
    }
}

/// A measurement for a gate that cannot be measured right now (a Secret missing, say).
fn inconclusive(message: impl Into<String>, at: chrono::DateTime<chrono::Utc>) -> Measurement {
    Measurement {
        verdict: GateVerdict::Inconclusive,
        message: message.into(),
        value: None,
        at,
    }
}

fn verdict_name(verdict: GateVerdict) -> &'static str {
    match verdict {
        GateVerdict::Passing => "Passing",
        GateVerdict::Failing => "Failing",
        GateVerdict::Inconclusive => "Inconclusive",
    }
}

/// The HTTP client for Prometheus and HTTP gates: rustls with the process's ring
/// provider, the system's CA certificates plus `extra_ca` (a PEM bundle) when given, no
/// redirects (a bearer token is never sent elsewhere; a redirect is an answer like any
/// other). Timeouts are per request (each gate has its own).
pub fn http_client(extra_ca: Option<&[u8]>) -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .tls_backend_rustls()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("stagecoach/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = extra_ca {
        let certs = reqwest::Certificate::from_pem_bundle(pem)?;
        anyhow::ensure!(!certs.is_empty(), "no certificate in the PEM bundle");
        builder = builder.tls_certs_merge(certs);
    }
    Ok(builder.build()?)
}

/// A transport error in a few words: what failed and the innermost cause.
fn describe(error: &reqwest::Error, timeout: Duration) -> String {
    let what = if error.is_timeout() {
        format!("no answer within {}", humantime(timeout))
    } else if error.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut cause: &dyn std::error::Error = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    format!("{what}: {cause}")
}

fn humantime(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Reads at most `limit` bytes of a response body; `Err` when there is more.
async fn body_text(mut response: reqwest::Response, limit: usize) -> Result<String, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
    {
        if body.len() + chunk.len() > limit {
            return Err(format!("the answer is larger than {} KiB", limit / 1024));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[cfg(test)]
mod tests;
