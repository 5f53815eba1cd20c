//! Many releases rolling out at the same time (issue 14, item 2): one operator, N
//! applications (STAGECOACH_CONCURRENCY, default 500), each with its own stage namespace
//! running a Deployment of 3 pods, and one Release per application created all at once,
//! about one in ten with a crash-looping image. Before that, the same measurement with one
//! release at a time (the baseline), in the same run and against the same operator.
//!
//! Not a test: it prints a table (also written as markdown to `target/bench-concurrency.md`)
//! and asserts nothing about speed. It fails only when it cannot measure (setup failed).
//!
//! ```text
//! KUBECONFIG=... STAGECOACH_BIN=target/release/stagecoach \
//!     cargo test -p stagecoach-e2e --bench concurrency
//! ```
//!
//! The operator watches all namespaces (what a platform installs: one operator for every
//! team's releases), so this needs a control plane of its own: it refuses to start when
//! Releases other than its own exist. One stage per application: every kind of step (canary
//! steps, pauses, the 100 % step, early life support, a rollback) happens in one stage, and
//! a second would double the pods without a new kind of step.
//!
//! Every release runs `setWeight 20, pause 1s, setWeight 50, pause 1s, setWeight 100`,
//! progress deadline 5m, early life support 1s. What is measured, on the benchmark's own
//! clock from cluster-wide watches (pods carrying the rollout label, Releases, Deployments),
//! each decoded in a task of its own that stamps its events as they arrive:
//! - canary step overhead: from the last canary pod of a step seen Ready to the Release seen
//!   on its next step;
//! - 100 % step overhead: from the last new stable pod seen Ready to the Release seen in
//!   EarlyLifeSupport. The operator waits for the Deployment's status here (all pods
//!   updated and available, the old ones gone), which kube-controller-manager writes, so
//!   this one is also measured from the Deployment seen rolled out;
//! - pause and early life support: from the step (phase) seen to the next one seen, for a
//!   declared 1 s (the operator's step clock has whole seconds);
//! - rollback latency: from a pod of the release seen in CrashLoopBackOff to the Release
//!   seen RolledBack;
//! - missed deadlines: releases rolled back for ProgressDeadlineExceeded, and releases that
//!   did not end within the bound (20 min);
//! - the API server's pace as any client sees it: the bench patches a ConfigMap every
//!   250 ms, one write at a time, and times each write;
//! - the slowest samples with the moment they happened (seconds into the run), and what
//!   the operator did: reconciles, their mean duration, status writes, waits for a cache
//!   behind its own write, CPU time and resident memory.
//!
//! Knobs: STAGECOACH_CONCURRENCY (releases at once, default 500), STAGECOACH_BASELINE_RUNS
//! (single releases of each kind, good and crash-looping, default 5).

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use stagecoach_api::Release;
use stagecoach_api::release::ReleasePhase;
use stagecoach_e2e::{
    PIPELINE_DEPLOYMENT, TestNamespace, client, deployment_with_fast_pods, eventually, free_port,
    install_crds, operator_binary, pod_image, pod_is_ready, pod_waiting_reason, release_manifest,
    repo_root,
};
use stagecoach_engine::release::rollout::{CANARY_LABEL, CANARY_ROLE, ROLLOUT_LABEL};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const OLD_IMAGE: &str = "example/conc-api:1.0.0";
const GOOD_IMAGE: &str = "example/conc-api:2.0.0";
/// kwok's crash-loop stage takes any pod whose image contains `bad`.
const BAD_IMAGE: &str = "example/conc-api:2.0.0-bad";
const REPLICAS: i32 = 3;
const STAGE: &str = "prod";
const PROGRESS_DEADLINE: &str = "5m";
/// One release in this many has the crash-looping image.
const BAD_EVERY: usize = 10;
/// How long one baseline release may take.
const BASELINE_BOUND: Duration = Duration::from_secs(120);
/// How long the concurrent releases may take, all together.
const CONCURRENT_BOUND: Duration = Duration::from_secs(20 * 60);
/// Release creations in flight at once: the API server's pace, not ours.
const CREATES_IN_FLIGHT: usize = 100;

/// The steps of every release, as the bench tracks them.
#[derive(Clone, Copy, Debug)]
enum Step {
    Canary(i32),
    Pause,
    Full,
}

const STEPS: [Step; 5] = [
    Step::Canary(20),
    Step::Pause,
    Step::Canary(50),
    Step::Pause,
    Step::Full,
];

fn steps_manifest() -> serde_json::Value {
    serde_json::Value::Array(
        STEPS
            .iter()
            .map(|s| match s {
                Step::Canary(w) => json!({"setWeight": w}),
                Step::Pause => json!({"pause": {"duration": "1s"}}),
                Step::Full => json!({"setWeight": 100}),
            })
            .collect(),
    )
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// (median, p99 by nearest rank, max) of a sample.
fn summary(values: &[f64]) -> (f64, f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let index = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[index]
    };
    (rank(0.5), rank(0.99), sorted[sorted.len() - 1])
}

/// One application: its stage namespace, its Release and what the Release deploys.
struct App {
    namespace: String,
    release: String,
    image: &'static str,
    bad: bool,
}

/// What the bench has seen of one release so far.
#[derive(Default)]
struct Seen {
    step: usize,
    step_at: Option<Instant>,
    ready_canary: HashSet<String>,
    ready_stable: HashSet<String>,
    /// When the current step's pods were all seen Ready.
    all_ready_at: Option<Instant>,
    crashed_at: Option<Instant>,
    /// When the stable Deployment was first seen rolled out on the release's image.
    rolled_out_at: Option<Instant>,
    early_life_at: Option<Instant>,
    ended: Option<(ReleasePhase, Option<String>)>,
}

/// The measurements of one run (the baseline runs add up into one).
#[derive(Default)]
struct Samples {
    canary_overhead: Vec<f64>,
    full_overhead: Vec<f64>,
    /// The 100 % step from the Deployment's status (rolled out) instead of its pods.
    full_after_deployment: Vec<f64>,
    pause: Vec<f64>,
    early_life: Vec<f64>,
    rollback: Vec<f64>,
    /// Created -> Succeeded, good releases.
    release_wall: Vec<f64>,
    /// A step or rollback seen before the pods that explain it (counted as 0 ms).
    seen_before_pods: usize,
    missed_deadlines: usize,
    wrong_outcomes: Vec<String>,
    unfinished: Vec<String>,
    wall: Duration,
    creates: Duration,
    /// The slowest steps and rollbacks: (ms, what, which release, seconds into the run).
    slowest: Vec<(f64, &'static str, String, f64)>,
    /// The bench's own API server probe: one small write at a time, in ms.
    api_writes: Vec<f64>,
}

impl Samples {
    fn add(&mut self, other: Self) {
        self.canary_overhead.extend(other.canary_overhead);
        self.full_overhead.extend(other.full_overhead);
        self.full_after_deployment
            .extend(other.full_after_deployment);
        self.pause.extend(other.pause);
        self.early_life.extend(other.early_life);
        self.rollback.extend(other.rollback);
        self.release_wall.extend(other.release_wall);
        self.seen_before_pods += other.seen_before_pods;
        self.missed_deadlines += other.missed_deadlines;
        self.wrong_outcomes.extend(other.wrong_outcomes);
        self.unfinished.extend(other.unfinished);
        self.wall += other.wall;
        self.creates += other.creates;
        self.slowest.extend(other.slowest);
        self.api_writes.extend(other.api_writes);
    }

    /// Remembers a sample among the slowest.
    fn note(&mut self, ms: f64, what: &'static str, release: &str, at: Duration) {
        self.slowest
            .push((ms, what, release.to_owned(), at.as_secs_f64()));
    }
}

enum Change {
    Pod(Box<watcher::Event<Pod>>),
    Release(Box<watcher::Event<Release>>),
    Deployment(Box<watcher::Event<Deployment>>),
}

type Stamped = (Instant, Result<Change, watcher::Error>);

/// Runs a watch in a task of its own, sending each event with the moment it was decoded.
fn spawn_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    sender: mpsc::UnboundedSender<Stamped>,
    wrap: fn(watcher::Event<K>) -> Change,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    tokio::spawn(async move {
        let mut events = watcher(api, config).boxed();
        while let Some(event) = events.next().await {
            if sender.send((Instant::now(), event.map(wrap))).is_err() {
                break;
            }
        }
    })
}

/// Stops the watch tasks when a run ends, however it ends.
struct AbortOnDrop<const N: usize>([tokio::task::JoinHandle<()>; N]);

impl<const N: usize> Drop for AbortOnDrop<N> {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Rolls the releases of `apps` out at once and measures them until every one has ended
/// or `bound` has passed.
async fn roll(client: &Client, home: &str, apps: &[App], bound: Duration) -> Result<Samples> {
    let by_namespace: HashMap<&str, usize> = apps
        .iter()
        .enumerate()
        .map(|(i, a)| (a.namespace.as_str(), i))
        .collect();
    let by_release: HashMap<&str, usize> = apps
        .iter()
        .enumerate()
        .map(|(i, a)| (a.release.as_str(), i))
        .collect();
    let releases: Api<Release> = Api::namespaced(client.clone(), home);
    // Each watch decodes in a task of its own and stamps its events as they arrive, so a
    // burst on one watch does not delay the clock of the other.
    let (sender, mut changes) = mpsc::unbounded_channel();
    let watches = [
        spawn_watch(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().labels(ROLLOUT_LABEL),
            sender.clone(),
            |e| Change::Pod(Box::new(e)),
        ),
        spawn_watch(
            releases.clone(),
            watcher::Config::default(),
            sender.clone(),
            |e| Change::Release(Box::new(e)),
        ),
        spawn_watch(
            Api::<Deployment>::all(client.clone()),
            watcher::Config::default(),
            sender,
            |e| Change::Deployment(Box::new(e)),
        ),
    ];
    let _stop_watches = AbortOnDrop(watches);
    // Every watch has its first list before the first Release exists.
    let mut listed = 0;
    while listed < 3 {
        let (_, change) = changes.recv().await.context("a watch ended")?;
        let done = match change? {
            Change::Pod(event) => matches!(*event, watcher::Event::InitDone),
            Change::Release(event) => matches!(*event, watcher::Event::InitDone),
            Change::Deployment(event) => matches!(*event, watcher::Event::InitDone),
        };
        if done {
            listed += 1;
        }
    }

    // The API server's pace as any client sees it: one small write at a time.
    let (stop_probe, probe_stopped) = tokio::sync::oneshot::channel::<()>();
    let probe = tokio::spawn(probe_writes(
        Api::namespaced(client.clone(), home),
        probe_stopped,
    ));

    let manifests: Vec<Release> = apps
        .iter()
        .map(|a| {
            let stage = json!({
                "name": STAGE,
                "namespace": a.namespace,
                "steps": steps_manifest(),
                "progressDeadline": PROGRESS_DEADLINE,
                "earlyLifeSupport": {"duration": "1s"},
            });
            serde_json::from_value(release_manifest(
                &a.release,
                &a.namespace,
                "2.0.0",
                a.image,
                &[stage],
            ))
        })
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    let creating = {
        let releases = releases.clone();
        tokio::spawn(async move {
            let mut created = Vec::with_capacity(manifests.len());
            let mut results = futures::stream::iter(manifests.into_iter().enumerate())
                .map(|(i, release)| {
                    let releases = releases.clone();
                    async move {
                        releases
                            .create(&PostParams::default(), &release)
                            .await
                            .with_context(|| format!("creating Release {}", release.name_any()))?;
                        anyhow::Ok((i, Instant::now()))
                    }
                })
                .buffer_unordered(CREATES_IN_FLIGHT);
            while let Some(result) = results.next().await {
                created.push(result?);
            }
            anyhow::Ok((created, Instant::now()))
        })
    };

    let mut seen: Vec<Seen> = apps.iter().map(|_| Seen::default()).collect();
    let mut samples = Samples::default();
    let mut open = apps.len();
    let deadline = tokio::time::sleep(bound);
    tokio::pin!(deadline);
    while open > 0 {
        let (now, change) = tokio::select! {
            change = changes.recv() => change.context("a watch ended")?,
            () = &mut deadline => break,
        };
        match change {
            // A watch error is retried by the watcher; the events it missed come back
            // with the relist.
            Err(error) => eprintln!("watch error (retrying): {error}"),
            Ok(Change::Pod(event)) => {
                let (pod, deleted) = match *event {
                    watcher::Event::Delete(pod) => (pod, true),
                    watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => (pod, false),
                    _ => continue,
                };
                let Some(&i) = pod.namespace().as_deref().and_then(|n| by_namespace.get(n)) else {
                    continue;
                };
                let (app, s) = (&apps[i], &mut seen[i]);
                if s.ended.is_some() || pod_image(&pod) != app.image {
                    continue;
                }
                let canary =
                    pod.labels().get(CANARY_LABEL).map(String::as_str) == Some(CANARY_ROLE);
                let ready =
                    !deleted && pod.metadata.deletion_timestamp.is_none() && pod_is_ready(&pod);
                let set = if canary {
                    &mut s.ready_canary
                } else {
                    &mut s.ready_stable
                };
                if ready {
                    set.insert(pod.name_any());
                } else {
                    set.remove(&pod.name_any());
                }
                if app.bad
                    && s.crashed_at.is_none()
                    && pod_waiting_reason(&pod).as_deref() == Some("CrashLoopBackOff")
                {
                    s.crashed_at = Some(now);
                }
                note_ready(s, now);
            }
            Ok(Change::Deployment(event)) => {
                let (watcher::Event::Apply(d) | watcher::Event::InitApply(d)) = *event else {
                    continue;
                };
                let Some(&i) = d.namespace().as_deref().and_then(|n| by_namespace.get(n)) else {
                    continue;
                };
                let s = &mut seen[i];
                if s.rolled_out_at.is_none()
                    && d.name_any() == PIPELINE_DEPLOYMENT
                    && rolled_out_on(&d, apps[i].image)
                {
                    s.rolled_out_at = Some(now);
                }
            }
            Ok(Change::Release(event)) => {
                let (watcher::Event::Apply(r) | watcher::Event::InitApply(r)) = *event else {
                    continue;
                };
                let Some(&i) = by_release.get(r.name_any().as_str()) else {
                    continue;
                };
                let s = &mut seen[i];
                if s.ended.is_some() {
                    continue;
                }
                let status = r.status.clone().unwrap_or_default();
                let step = status
                    .stages
                    .first()
                    .and_then(|st| st.step)
                    .and_then(|st| usize::try_from(st).ok())
                    .unwrap_or(0);
                let phase = status.phase;
                if step > s.step {
                    close_step(s, &mut samples, now, &apps[i].release, now - started);
                    s.step = step;
                    s.step_at = Some(now);
                    s.all_ready_at = None;
                }
                let past_full = matches!(
                    phase,
                    Some(ReleasePhase::EarlyLifeSupport | ReleasePhase::Succeeded)
                );
                if past_full && s.early_life_at.is_none() {
                    close_step(s, &mut samples, now, &apps[i].release, now - started);
                    s.early_life_at = Some(now);
                }
                if let Some(phase) = phase.filter(|p| p.is_terminal()) {
                    if phase == ReleasePhase::Succeeded
                        && let Some(at) = s.early_life_at
                    {
                        samples.early_life.push(millis(now - at));
                    }
                    if phase == ReleasePhase::RolledBack && apps[i].bad {
                        if let Some(at) = s.crashed_at {
                            let ms = millis(now.saturating_duration_since(at));
                            samples.note(ms, "rollback", &apps[i].release, now - started);
                            samples.rollback.push(ms);
                        } else {
                            samples.seen_before_pods += 1;
                            samples.rollback.push(0.0);
                        }
                    }
                    let reason = status.rollbacks.last().map(|rb| rb.reason.clone());
                    s.ended = Some((phase, reason));
                    s.step_at = Some(now);
                    open -= 1;
                }
            }
        }
    }
    let wall = started.elapsed();
    let _ = stop_probe.send(());
    samples.api_writes = probe.await.context("the API probe")?;
    let (created, creates_done) = creating.await.context("the creating task")??;
    samples.wall = wall;
    samples.creates = creates_done - started;
    let created: HashMap<usize, Instant> = created.into_iter().collect();
    for (i, (app, s)) in apps.iter().zip(&seen).enumerate() {
        match &s.ended {
            None => samples.unfinished.push(format!(
                "{} (step {}, {} canary / {} stable pods ready)",
                app.release,
                s.step,
                s.ready_canary.len(),
                s.ready_stable.len()
            )),
            Some((phase, reason)) => {
                let deadline = reason.as_deref() == Some("ProgressDeadlineExceeded");
                if deadline {
                    samples.missed_deadlines += 1;
                }
                let expected = if app.bad {
                    ReleasePhase::RolledBack
                } else {
                    ReleasePhase::Succeeded
                };
                if *phase != expected || (app.bad && deadline) {
                    samples.wrong_outcomes.push(format!(
                        "{}: {phase:?} ({})",
                        app.release,
                        reason.as_deref().unwrap_or("-")
                    ));
                }
                if *phase == ReleasePhase::Succeeded
                    && let (Some(c), Some(e)) = (created.get(&i), s.step_at)
                {
                    samples
                        .release_wall
                        .push(millis(e.saturating_duration_since(*c)));
                }
            }
        }
    }
    samples.missed_deadlines += samples.unfinished.len();
    Ok(samples)
}

/// Name of the ConfigMap the API probe writes, in the Releases' namespace.
const PROBE: &str = "bench-api-probe";

/// Patches the probe ConfigMap every 250 ms (one write at a time) until `stop`, and
/// returns how long each write took, in ms.
async fn probe_writes(
    api: Api<ConfigMap>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Vec<f64> {
    let mut latencies = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return latencies,
            _ = tick.tick() => {}
        }
        let patch = json!({"data": {"n": latencies.len().to_string()}});
        let started = Instant::now();
        if api
            .patch(PROBE, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .is_ok()
        {
            latencies.push(millis(started.elapsed()));
        }
    }
}

/// Whether the Deployment runs `image` on all its pods, Ready and available, by its status
/// (what kube-controller-manager says).
fn rolled_out_on(d: &Deployment, image: &str) -> bool {
    let on_image = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .is_some_and(|p| {
            p.containers
                .iter()
                .any(|c| c.image.as_deref() == Some(image))
        });
    let Some(status) = d.status.as_ref() else {
        return false;
    };
    let all = Some(REPLICAS);
    on_image
        && status.observed_generation >= d.metadata.generation
        && status.replicas == all
        && status.updated_replicas == all
        && status.ready_replicas == all
        && status.available_replicas == all
}

/// The current step's pods are all Ready: remember when it was first seen.
fn note_ready(s: &mut Seen, now: Instant) {
    if s.all_ready_at.is_some() || s.early_life_at.is_some() {
        return;
    }
    let ready = match STEPS.get(s.step) {
        Some(Step::Canary(weight)) => {
            let expected = stagecoach_engine::release::rollout::canary_replicas(*weight, REPLICAS);
            s.ready_canary.len() >= usize::try_from(expected).unwrap_or(usize::MAX)
        }
        Some(Step::Full) => s.ready_stable.len() >= usize::try_from(REPLICAS).unwrap_or(0),
        Some(Step::Pause) | None => false,
    };
    if ready {
        s.all_ready_at = Some(now);
    }
}

/// The release left its current step (or reached early life support): record the step.
fn close_step(s: &Seen, samples: &mut Samples, now: Instant, release: &str, into_run: Duration) {
    match STEPS.get(s.step) {
        Some(Step::Canary(_) | Step::Full) => {
            let sample = if let Some(at) = s.all_ready_at {
                millis(now - at)
            } else {
                samples.seen_before_pods += 1;
                0.0
            };
            if matches!(STEPS.get(s.step), Some(Step::Full)) {
                samples.note(sample, "100% step", release, into_run);
                samples.full_overhead.push(sample);
                samples
                    .full_after_deployment
                    .push(if let Some(at) = s.rolled_out_at {
                        millis(now.saturating_duration_since(at))
                    } else {
                        samples.seen_before_pods += 1;
                        0.0
                    });
            } else {
                samples.note(sample, "canary step", release, into_run);
                samples.canary_overhead.push(sample);
            }
        }
        Some(Step::Pause) => {
            if let Some(at) = s.step_at {
                let ms = millis(now - at);
                samples.note(ms - 1000.0, "pause beyond 1 s", release, into_run);
                samples.pause.push(ms);
            }
        }
        None => {}
    }
}

/// The operator, watching all namespaces.
struct ClusterOperator {
    child: Child,
    admin: String,
    log: PathBuf,
}

impl ClusterOperator {
    async fn start(home: &str) -> Result<Self> {
        let binary = operator_binary();
        if !binary.exists() {
            bail!(
                "{} does not exist: build it with `cargo build --release -p stagecoach-operator` and set STAGECOACH_BIN",
                binary.display()
            );
        }
        let port = free_port()?;
        let log = std::env::temp_dir().join(format!("stagecoach-bench-concurrency-{port}.log"));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(&binary)
            .args([
                "run",
                "--admin-addr",
                &format!("127.0.0.1:{port}"),
                "--ofrep-addr",
                &format!("127.0.0.1:{}", free_port()?),
                "--log-format",
                "json",
                "--lease-namespace",
                home,
                "--identity",
                "bench-concurrency",
            ])
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        println!(
            "operator {} (all namespaces), log {}",
            binary.display(),
            log.display()
        );
        let operator = Self {
            child,
            admin: format!("http://127.0.0.1:{port}"),
            log,
        };
        eventually(Duration::from_secs(60), || async {
            let ok = reqwest::get(format!("{}/readyz", operator.admin))
                .await
                .is_ok_and(|r| r.status().is_success());
            Ok(ok.then_some(()))
        })
        .await
        .with_context(|| {
            format!(
                "the operator never became ready; log {}",
                operator.log.display()
            )
        })?;
        Ok(operator)
    }

    fn pid(&self) -> Result<u32> {
        self.child.id().context("the operator exited")
    }

    /// Resident memory (KiB) and CPU time used so far (user + system).
    fn usage(&self) -> Result<(u64, Duration)> {
        let pid = self.pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("no VmRSS")?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command (which is in parentheses): state is field 3, utime 14.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks: u64 = fields
            .get(11..13)
            .context("short /proc/<pid>/stat")?
            .iter()
            .filter_map(|f| f.parse::<u64>().ok())
            .sum();
        // USER_HZ is 100 on Linux.
        Ok((rss, Duration::from_millis(ticks * 10)))
    }

    /// The sum of a metric's samples whose line contains `labels`.
    async fn metric(&self, name: &str, labels: &str) -> Result<f64> {
        let body = reqwest::get(format!("{}/metrics", self.admin))
            .await?
            .text()
            .await?;
        Ok(body
            .lines()
            .filter(|l| {
                l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(labels)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    async fn stop(mut self) -> Result<()> {
        let pid = self.pid()?;
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        let exit = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .context("the operator did not stop within 30s of SIGTERM")??;
        if !exit.success() {
            bail!(
                "the operator exited with {exit}; log {}",
                self.log.display()
            );
        }
        Ok(())
    }
}

/// What the operator did during one phase of the bench (differences of its counters).
#[derive(Default, Clone, Copy)]
struct OperatorWork {
    reconciles: f64,
    reconcile_seconds: f64,
    errors: f64,
    status_writes: f64,
    stale_waits: f64,
    cpu: Duration,
    rss_kib: u64,
}

impl OperatorWork {
    async fn read(operator: &ClusterOperator) -> Result<Self> {
        let (rss_kib, cpu) = operator.usage()?;
        Ok(Self {
            reconciles: operator
                .metric("stagecoach_reconciles_total", "kind=\"Release\"")
                .await?,
            reconcile_seconds: operator
                .metric(
                    "stagecoach_reconcile_duration_seconds_sum",
                    "kind=\"Release\"",
                )
                .await?,
            errors: operator
                .metric("stagecoach_reconcile_errors_total", "kind=\"Release\"")
                .await?,
            status_writes: operator
                .metric("stagecoach_status_writes_total", "kind=\"Release\"")
                .await?,
            stale_waits: operator
                .metric("stagecoach_stale_cache_waits_total", "")
                .await?,
            cpu,
            rss_kib,
        })
    }

    fn since(self, before: Self) -> Self {
        Self {
            reconciles: self.reconciles - before.reconciles,
            reconcile_seconds: self.reconcile_seconds - before.reconcile_seconds,
            errors: self.errors - before.errors,
            status_writes: self.status_writes - before.status_writes,
            stale_waits: self.stale_waits - before.stale_waits,
            cpu: self.cpu.saturating_sub(before.cpu),
            rss_kib: self.rss_kib,
        }
    }
}

/// Creates the stage namespaces and their Deployments, and waits until every Deployment
/// runs its 3 pods Ready.
async fn create_apps(client: &Client, namespaces: &[String]) -> Result<Vec<TestNamespace>> {
    let created: Vec<TestNamespace> = futures::stream::iter(namespaces.iter().cloned())
        .map(|name| {
            let client = client.clone();
            async move {
                let ns = TestNamespace::create_named(&client, &name).await?;
                let api: Api<Deployment> = Api::namespaced(client.clone(), &name);
                let doc = deployment_with_fast_pods(PIPELINE_DEPLOYMENT, OLD_IMAGE, REPLICAS);
                api.create(&PostParams::default(), &serde_json::from_value(doc)?)
                    .await
                    .with_context(|| format!("creating the Deployment in {name}"))?;
                anyhow::Ok(ns)
            }
        })
        .buffer_unordered(32)
        .try_collect()
        .await?;
    let wanted: HashSet<&str> = namespaces.iter().map(String::as_str).collect();
    let deployments: Api<Deployment> = Api::all(client.clone());
    let timeout = Duration::from_secs(120)
        + Duration::from_millis(600) * u32::try_from(namespaces.len()).unwrap_or(u32::MAX);
    eventually(timeout, || async {
        let list = deployments.list(&ListParams::default()).await?.items;
        let done = list
            .iter()
            .filter(|d| {
                d.namespace().is_some_and(|n| wanted.contains(n.as_str()))
                    && d.status.as_ref().is_some_and(|s| {
                        s.ready_replicas == Some(REPLICAS) && s.updated_replicas == Some(REPLICAS)
                    })
            })
            .count();
        Ok((done == wanted.len()).then_some(()))
    })
    .await
    .context("the applications' Deployments never all rolled out")?;
    Ok(created)
}

fn apps(home: &str, prefix: &str, count: usize, bad: impl Fn(usize) -> bool) -> Vec<App> {
    (0..count)
        .map(|i| {
            let bad = bad(i);
            App {
                namespace: format!("{home}-{prefix}{i}"),
                release: format!("{prefix}{i}-v2"),
                image: if bad { BAD_IMAGE } else { GOOD_IMAGE },
                bad,
            }
        })
        .collect()
}

fn table(baseline: &Samples, concurrent: &Samples, n: usize) -> String {
    let rows: [(&str, &Vec<f64>, &Vec<f64>); 8] = [
        (
            "canary step: last canary pod Ready -> next step",
            &baseline.canary_overhead,
            &concurrent.canary_overhead,
        ),
        (
            "100% step: last new pod Ready -> EarlyLifeSupport",
            &baseline.full_overhead,
            &concurrent.full_overhead,
        ),
        (
            "100% step: Deployment status rolled out -> EarlyLifeSupport",
            &baseline.full_after_deployment,
            &concurrent.full_after_deployment,
        ),
        (
            "rollback: CrashLoopBackOff -> RolledBack",
            &baseline.rollback,
            &concurrent.rollback,
        ),
        (
            "pause 1s: step seen -> next step",
            &baseline.pause,
            &concurrent.pause,
        ),
        (
            "early life support 1s: seen -> Succeeded",
            &baseline.early_life,
            &concurrent.early_life,
        ),
        (
            "release: created -> Succeeded",
            &baseline.release_wall,
            &concurrent.release_wall,
        ),
        (
            "API server: one ConfigMap patch (bench's probe, 4/s)",
            &baseline.api_writes,
            &concurrent.api_writes,
        ),
    ];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| measure (ms) | 1 at a time: n | median | p99 | max | {n} at once: n | median | p99 | max |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, one, many) in rows {
        let (m1, p1, x1) = summary(one);
        let (m2, p2, x2) = summary(many);
        let _ = writeln!(
            out,
            "| {name} | {} | {m1:.0} | {p1:.0} | {x1:.0} | {} | {m2:.0} | {p2:.0} | {x2:.0} |",
            one.len(),
            many.len()
        );
    }
    let _ = writeln!(out);
    for (label, s) in [
        ("1 at a time", baseline),
        (&format!("{n} at once") as &str, concurrent),
    ] {
        let _ = writeln!(
            out,
            "- {label}: wall {:.1} s (creating the Releases {:.1} s); missed deadlines {} \
             (ProgressDeadlineExceeded or not ended within the bound); wrong outcomes {}; \
             steps or rollbacks seen before their pods (counted 0 ms) {}",
            s.wall.as_secs_f64(),
            s.creates.as_secs_f64(),
            s.missed_deadlines,
            s.wrong_outcomes.len(),
            s.seen_before_pods,
        );
        for line in s.wrong_outcomes.iter().chain(&s.unfinished).take(10) {
            let _ = writeln!(out, "  - {line}");
        }
        let mut slowest = s.slowest.clone();
        slowest.sort_by(|a, b| b.0.total_cmp(&a.0));
        let listed: Vec<String> = slowest
            .iter()
            .take(8)
            .map(|(ms, what, release, at)| format!("{what} {release} {ms:.0} ms at {at:.0} s"))
            .collect();
        let _ = writeln!(
            out,
            "  - slowest (seconds into the run): {}",
            listed.join("; ")
        );
    }
    out
}

fn work_line(label: &str, w: &OperatorWork) -> String {
    let mean = if w.reconciles > 0.0 {
        w.reconcile_seconds / w.reconciles * 1000.0
    } else {
        f64::NAN
    };
    format!(
        "- operator, {label}: {:.0} Release reconciles (mean {mean:.1} ms), {:.0} errors, \
         {:.0} status writes, {:.0} stale-cache waits, {:.1} s CPU, {} MiB resident after",
        w.reconciles,
        w.errors,
        w.status_writes,
        w.stale_waits,
        w.cpu.as_secs_f64(),
        w.rss_kib / 1024
    )
}

async fn bench() -> Result<()> {
    let n = env_count("STAGECOACH_CONCURRENCY", 500);
    let baseline_runs = env_count("STAGECOACH_BASELINE_RUNS", 5);
    let client = client().await?;
    install_crds(&client).await?;
    // A cluster-wide operator acts on every Release it sees: only on a cluster of our own.
    let others = Api::<Release>::all(client.clone())
        .list(&ListParams::default().limit(1))
        .await?
        .items;
    if let Some(other) = others.first() {
        bail!(
            "Release {}/{} exists: this bench runs an operator watching all namespaces and \
             needs a control plane of its own (cargo xtask cluster up --name <yours>)",
            other.namespace().unwrap_or_default(),
            other.name_any()
        );
    }
    let home = TestNamespace::create(&client, "conc").await?;
    let probe: ConfigMap = serde_json::from_value(json!({"metadata": {"name": PROBE}}))?;
    Api::<ConfigMap>::namespaced(client.clone(), &home.name)
        .create(&PostParams::default(), &probe)
        .await
        .context("creating the API probe ConfigMap")?;
    let baseline = apps(&home.name, "b", 2 * baseline_runs, |i| i % 2 == 1);
    let many = apps(&home.name, "a", n, |i| i % BAD_EVERY == BAD_EVERY - 1);
    let names: Vec<String> = baseline
        .iter()
        .chain(&many)
        .map(|a| a.namespace.clone())
        .collect();
    let setup = Instant::now();
    let namespaces = create_apps(&client, &names).await?;
    println!(
        "{} applications with {REPLICAS} pods each ready in {:.0} s",
        names.len(),
        setup.elapsed().as_secs_f64()
    );

    let operator = ClusterOperator::start(&home.name).await?;
    let start = OperatorWork::read(&operator).await?;
    let mut one = Samples::default();
    for app in &baseline {
        let s = roll(
            &client,
            &home.name,
            std::slice::from_ref(app),
            BASELINE_BOUND,
        )
        .await?;
        one.add(s);
    }
    let after_baseline = OperatorWork::read(&operator).await?;
    println!(
        "baseline: {} single releases in {:.0} s",
        baseline.len(),
        one.wall.as_secs_f64()
    );
    let concurrent = roll(&client, &home.name, &many, CONCURRENT_BOUND).await?;
    let after = OperatorWork::read(&operator).await?;

    let mut report = String::new();
    let _ = writeln!(
        report,
        "# Concurrent rollouts: 1 release at a time vs {n} at once\n\n\
         One operator ({}) watching all namespaces; each application has one stage \
         namespace with a Deployment of {REPLICAS} pods; steps setWeight 20, pause 1s, \
         setWeight 50, pause 1s, setWeight 100, progress deadline {PROGRESS_DEADLINE}, early \
         life support 1s; one release in {BAD_EVERY} crash-loops and rolls back. Times on the \
         benchmark's clock from cluster-wide watches.\n",
        operator_binary().display()
    );
    report.push_str(&table(&one, &concurrent, n));
    let _ = writeln!(
        report,
        "{}",
        work_line("1 at a time", &after_baseline.since(start))
    );
    let _ = writeln!(
        report,
        "{}",
        work_line(&format!("{n} at once"), &after.since(after_baseline))
    );
    let _ = writeln!(
        report,
        "\ntargets (issue 14): step overhead p99 < 1000 ms, no missed deadlines, no rollback \
         slower than 1000 ms.\nmeasured with: STAGECOACH_CONCURRENCY={n} cargo test -p \
         stagecoach-e2e --bench concurrency (KUBECONFIG and STAGECOACH_BIN set)"
    );
    println!("\n{report}");
    let path = repo_root().join("target/bench-concurrency.md");
    std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    println!("written to {}", path.display());

    // The Releases go first, while the operator runs: it removes their finalizers.
    let releases: Api<Release> = Api::namespaced(client.clone(), &home.name);
    releases
        .delete_collection(&DeleteParams::background(), &ListParams::default())
        .await?;
    eventually(Duration::from_secs(300), || async {
        Ok(releases
            .list(&ListParams::default().limit(1))
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await
    .context("the Releases were not all deleted")?;
    operator.stop().await?;
    for ns in namespaces {
        ns.delete().await?;
    }
    home.delete().await
}

/// A benchmark, not a test (`harness = false`).
fn main() -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench())
}
