//! The scale benchmark (issue 14, items 1 and 3): a hundred applications at once, and what
//! the operator costs with them. Prints a table and writes it to `target/bench-scale.md`;
//! asserts nothing about time or memory (it fails only when the world never settles).
//!
//! The world (STAGECOACH_SCALE_APPS applications, default 100; everything below scales
//! with it): each application `appNNN` has a home namespace `appNNN` (its Releases,
//! FeatureToggles and Pipeline) and four stage namespaces `appNNN-dev|qa|demo|prod`, as
//! the default pipeline names them. Even applications run three Deployments per stage
//! (`api`, `web`, `worker`), odd ones two, so a hundred applications have exactly 1,000
//! Deployments of 3 pods (3,000 pods). Every application has a Pipeline (the four stages,
//! records kept: the last 20), 100 FeatureToggles (10,000; one in ten coupled to the
//! current release reaching prod) and 10 Releases (1,000) created one after the other,
//! each updating every workload: the engine supersedes the nine older ones before they
//! enter a stage (phase Superseded, history with a closing record), and the newest rolls
//! through the four stages (all its Deployments updated, the pods replaced, labelled as
//! rolled out, so the operator caches them) into early life support (48 h: it stays
//! there, the built-in health gate watching). All of it is created before the operator
//! starts.
//!
//! Measured, with a release build of the operator (STAGECOACH_BIN) watching every
//! namespace, leader election on (its Lease renewals are counted apart):
//! - cold start: from starting the operator to every object reconciled, that is every
//!   Release's status at its generation and in its final phase (Superseded, or
//!   EarlyLifeSupport with every stage at 100 %), every FeatureToggle's status at its
//!   generation with Ready=True, every Pipeline's status at its generation, and OFREP
//!   serving all of an application's flags (bulk evaluation in dev) for every application.
//!   It includes rolling the current releases out: 1,000 Deployments and 3,000 pods
//!   replaced by the controller-manager and kwok;
//! - resident memory (VmRSS from /proc, sampled every 50 ms): steady over a minute once
//!   settled (median and max), and the peak through a forced relist: the API server
//!   SIGKILLed and started again with the same flags (every watch lists anew), max VmRSS
//!   from the kill to a minute after the API server is back, and VmHWM before and after;
//! - idle writes: for STAGECOACH_SCALE_IDLE_SECS (default 300) once settled, and again for
//!   as long from the API server's restart, every write the API server counted
//!   (`apiserver_request_total`, diff of two scrapes, by verb, group, resource,
//!   subresource) and every write in its audit log (the scale profile's `logs/audit.log`)
//!   attributed by user agent: the operator's is the one that writes its Lease;
//! - an operator restart (SIGTERM, a new process with the same identity): time to ready
//!   and to every object reconciled again (the operator's own counter of finished
//!   reconciles per kind reaching the number of objects, and OFREP serving every
//!   application), its peak (VmHWM, exact: a new process) and its writes in the 90 s
//!   after it started.
//!
//! It runs an operator that watches every namespace, so it needs a control plane of its
//! own: `cargo xtask bench --scale` starts one (profile `scale`) and runs this, or by hand:
//!
//! ```text
//! cargo xtask cluster up --name h4 --profile scale
//! KUBECONFIG=target/stagecoach-cluster/h4/kubeconfig \
//! STAGECOACH_CLUSTER_DIR=target/stagecoach-cluster/h4 \
//! STAGECOACH_BIN=target/release/stagecoach STAGECOACH_SCALE_APPS=10 \
//! STAGECOACH_SCALE_IDLE_SECS=60 cargo test -p stagecoach-e2e --bench scale
//! ```

#![allow(clippy::unwrap_used, clippy::too_many_lines)] // a benchmark script
#![allow(clippy::cast_precision_loss)] // counts and KiB far below 2^52

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead as _, Seek as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use stagecoach_api::{FeatureToggle, Pipeline, Release};
use stagecoach_e2e::{
    FAST_POD_ANNOTATIONS, RecordedProcess, TestNamespace, eventually, install_crds, repo_root,
};
use tokio::process::{Child, Command};

const STAGES: [&str; 4] = ["dev", "qa", "demo", "prod"];
const RELEASES_PER_APP: usize = 10;
const TOGGLES_PER_APP: usize = 100;
const REPLICAS: i32 = 3;
/// The benchmark's own user agent, so that its writes are never taken for the operator's.
const BENCH_AGENT: &str = "stagecoach-scale-bench";
/// How the operator identifies itself for leader election (the same after a restart, so
/// the new process renews the Lease at once).
const IDENTITY: &str = "scale-bench";
/// Concurrent creates.
const PARALLEL: usize = 32;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn app_name(index: usize) -> String {
    format!("app{index:03}")
}

/// Even applications run three Deployments per stage, odd ones two.
fn workloads(index: usize) -> &'static [&'static str] {
    if index.is_multiple_of(2) {
        &["api", "web", "worker"]
    } else {
        &["api", "web"]
    }
}

fn release_name(app: &str, n: usize) -> String {
    format!("{app}-r{n:02}")
}

fn image(app: &str, workload: &str, minor: usize) -> String {
    format!("registry.example.com/{app}/{workload}:1.{minor}.0")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A client that says who it is (see [`BENCH_AGENT`]).
async fn bench_client() -> Result<Client> {
    let mut config = kube::Config::infer()
        .await
        .context("KUBECONFIG: run `cargo xtask bench --scale`, or see this file's header")?;
    // reqwest's header types are the `http` crate's, which kube's configuration takes.
    config.headers.push((
        reqwest::header::USER_AGENT,
        reqwest::header::HeaderValue::from_static(BENCH_AGENT),
    ));
    Ok(Client::try_from(config)?)
}

// ---------------------------------------------------------------------------------------
// The world.

async fn apply<K>(api: &Api<K>, doc: &Value) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = doc["metadata"]["name"].as_str().context("name")?;
    api.patch(
        name,
        &PatchParams::apply("stagecoach-bench").force(),
        &Patch::Apply(doc),
    )
    .await
    .with_context(|| format!("applying {name}"))?;
    Ok(())
}

fn deployment_doc(app: &str, workload: &str) -> Value {
    let annotations: serde_json::Map<String, Value> = FAST_POD_ANNOTATIONS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
        .collect();
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": workload},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": {"app": workload}},
            "template": {
                "metadata": {"labels": {"app": workload}, "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": image(app, workload, 0)}]}
            }
        }
    })
}

fn pipeline_doc(app: &str) -> Value {
    let stages: Vec<Value> = STAGES.iter().map(|s| json!({"name": s})).collect();
    json!({
        "apiVersion": "stagecoach.dev/v1alpha1", "kind": "Pipeline",
        "metadata": {"name": app},
        "spec": {"stages": stages, "retention": {"count": 20}}
    })
}

fn release_doc(index: usize, n: usize) -> Value {
    let app = app_name(index);
    let workloads: Vec<Value> = workloads(index)
        .iter()
        .map(|w| json!({"deployment": w, "containers": [{"name": "app", "image": image(&app, w, n)}]}))
        .collect();
    json!({
        "apiVersion": "stagecoach.dev/v1alpha1", "kind": "Release",
        "metadata": {"name": release_name(&app, n)},
        "spec": {
            "application": app,
            "version": format!("1.{n}.0"),
            "type": "minor",
            "changes": [
                {"id": format!("PR-{index}{n:02}1"), "title": format!("{app}: change one of 1.{n}.0")},
                {"id": format!("PR-{index}{n:02}2"), "title": format!("{app}: change two of 1.{n}.0")}
            ],
            "workloads": workloads
        }
    })
}

/// Shaped like the README's toggle: on in dev, two clients and a 20 % split in demo, one
/// client in prod (in one toggle of ten, once the current release has reached prod).
fn toggle_doc(index: usize, k: usize) -> Value {
    let app = app_name(index);
    let mut prod_rule = json!({"clients": [format!("client-{}", k % 7)], "variant": "on"});
    if k.is_multiple_of(10) {
        prod_rule["when"] =
            json!({"release": release_name(&app, RELEASES_PER_APP), "reached": "prod"});
    }
    json!({
        "apiVersion": "stagecoach.dev/v1alpha1", "kind": "FeatureToggle",
        "metadata": {"name": format!("flag-{k:03}")},
        "spec": {
            "application": app,
            "description": format!("scale benchmark toggle {k} of {app}"),
            "variants": {"on": true, "off": false},
            "defaultVariant": "off",
            "bucketBy": "clientId",
            "stages": {
                "dev": {"state": "Enabled", "defaultVariant": "on"},
                "demo": {"state": "Enabled", "rules": [
                    {"clients": [format!("client-{}", k % 13), format!("client-{}", k % 17)], "variant": "on"},
                    {"split": {"on": 20, "off": 80}}
                ]},
                "prod": {"state": "Enabled", "rules": [prod_rule]}
            }
        }
    })
}

/// Runs `work` over `items`, [`PARALLEL`] at a time, printing progress every tenth.
async fn concurrently<T, F, Fut>(what: &str, items: Vec<T>, work: F) -> Result<Duration>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let started = Instant::now();
    let total = items.len();
    let step = (total / 10).max(1);
    let mut done = 0;
    let mut stream = futures::stream::iter(items)
        .map(work)
        .buffer_unordered(PARALLEL);
    while let Some(result) = stream.next().await {
        result?;
        done += 1;
        if done % step == 0 || done == total {
            println!(
                "  {what}: {done}/{total} ({:.0}s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(started.elapsed())
}

struct World {
    apps: usize,
    deployments: usize,
    releases: usize,
    toggles: usize,
}

async fn create_world(client: &Client, apps: usize) -> Result<(World, Duration)> {
    let started = Instant::now();
    let namespaces: Vec<String> = (0..apps)
        .flat_map(|i| {
            let app = app_name(i);
            std::iter::once(app.clone()).chain(STAGES.iter().map(move |s| format!("{app}-{s}")))
        })
        .collect();
    concurrently("namespaces", namespaces, |name| {
        let client = client.clone();
        async move {
            // Labelled and waited for (its default ServiceAccount) like every test's.
            TestNamespace::create_named(&client, &name).await?;
            Ok(())
        }
    })
    .await?;
    let deployments: Vec<(usize, &str, &str)> = (0..apps)
        .flat_map(|i| {
            STAGES
                .iter()
                .flat_map(move |s| workloads(i).iter().map(move |w| (i, *s, *w)))
        })
        .collect();
    let deployment_count = deployments.len();
    concurrently("Deployments", deployments, |(i, stage, workload)| {
        let client = client.clone();
        async move {
            let app = app_name(i);
            let api: Api<Deployment> = Api::namespaced(client, &format!("{app}-{stage}"));
            apply(&api, &deployment_doc(&app, workload)).await
        }
    })
    .await?;
    concurrently("Pipelines", (0..apps).collect(), |i| {
        let client = client.clone();
        async move {
            let app = app_name(i);
            apply(
                &Api::<Pipeline>::namespaced(client, &app),
                &pipeline_doc(&app),
            )
            .await
        }
    })
    .await?;
    let toggles: Vec<(usize, usize)> = (0..apps)
        .flat_map(|i| (0..TOGGLES_PER_APP).map(move |k| (i, k)))
        .collect();
    concurrently("FeatureToggles", toggles, |(i, k)| {
        let client = client.clone();
        async move {
            let api: Api<FeatureToggle> = Api::namespaced(client, &app_name(i));
            apply(&api, &toggle_doc(i, k)).await
        }
    })
    .await?;
    // One application's Releases one after the other (supersession orders by creation
    // time, then name), the applications side by side.
    concurrently("applications' Releases", (0..apps).collect(), |i| {
        let client = client.clone();
        async move {
            let api: Api<Release> = Api::namespaced(client, &app_name(i));
            for n in 1..=RELEASES_PER_APP {
                apply(&api, &release_doc(i, n)).await?;
            }
            Ok(())
        }
    })
    .await?;
    Ok((
        World {
            apps,
            deployments: deployment_count,
            releases: apps * RELEASES_PER_APP,
            toggles: apps * TOGGLES_PER_APP,
        },
        started.elapsed(),
    ))
}

// ---------------------------------------------------------------------------------------
// Watching the world from the benchmark.

/// A reflector of every object of kind `K`, kept current in the background.
fn watch_all<K>(client: &Client) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .applied_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    });
    reader
}

fn status_json<T: serde::Serialize>(status: Option<&T>) -> Value {
    status
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(Value::Null)
}

fn at_generation(meta: &kube::core::ObjectMeta, status: &Value) -> bool {
    meta.generation.is_some() && status["observedGeneration"].as_i64() == meta.generation
}

fn condition_true(status: &Value, kind: &str) -> bool {
    status["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == kind && c["status"] == "True")
    })
}

/// Whether a Release is where the engine leaves it: the newest of its application in
/// early life support with every stage at 100 %, the others superseded.
fn release_settled(release: &Release) -> bool {
    let status = status_json(release.status.as_ref());
    if !at_generation(release.meta(), &status) {
        return false;
    }
    let current = release
        .name_any()
        .ends_with(&format!("-r{RELEASES_PER_APP:02}"));
    if current {
        status["phase"] == "EarlyLifeSupport"
            && status["stages"]
                .as_array()
                .is_some_and(|s| s.len() == STAGES.len())
    } else {
        status["phase"] == "Superseded"
    }
}

fn toggle_settled(toggle: &FeatureToggle) -> bool {
    let status = status_json(toggle.status.as_ref());
    at_generation(toggle.meta(), &status) && condition_true(&status, "Ready")
}

fn pipeline_settled(pipeline: &Pipeline) -> bool {
    at_generation(pipeline.meta(), &status_json(pipeline.status.as_ref()))
}

fn deployment_rolled_out(d: &Deployment) -> bool {
    let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let s = d.status.clone().unwrap_or_default();
    s.observed_generation == d.metadata.generation
        && s.updated_replicas == Some(wanted)
        && s.replicas == Some(wanted)
        && s.ready_replicas == Some(wanted)
}

struct Stores {
    releases: Store<Release>,
    toggles: Store<FeatureToggle>,
    pipelines: Store<Pipeline>,
    deployments: Store<Deployment>,
}

impl Stores {
    /// (settled, total) per kind, and one example of each kind not settled.
    fn progress(&self) -> (Vec<(&'static str, usize, usize)>, Vec<String>) {
        let mut rows = Vec::new();
        let mut examples = Vec::new();
        macro_rules! count {
            ($label:expr, $store:expr, $settled:expr) => {{
                let all = $store.state();
                let settled = all.iter().filter(|o| $settled(o.as_ref())).count();
                if let Some(o) = all.iter().find(|o| !$settled(o.as_ref())) {
                    examples.push(format!(
                        "{} {}/{}",
                        $label,
                        o.namespace().unwrap_or_default(),
                        o.name_any()
                    ));
                }
                rows.push(($label, settled, all.len()));
            }};
        }
        count!("Releases", self.releases, release_settled);
        count!("FeatureToggles", self.toggles, toggle_settled);
        count!("Pipelines", self.pipelines, pipeline_settled);
        count!("Deployments", self.deployments, deployment_rolled_out);
        (rows, examples)
    }
}

/// Waits until every Deployment is rolled out (before the operator starts).
async fn wait_rolled_out(stores: &Stores, world: &World, timeout: Duration) -> Result<Duration> {
    let started = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let all = stores.deployments.state();
        let done = all.iter().filter(|d| deployment_rolled_out(d)).count();
        if done == world.deployments && all.len() == world.deployments {
            return Ok(started.elapsed());
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            println!(
                "  Deployments rolled out: {done}/{} ({:.0}s)",
                world.deployments,
                started.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        ensure!(
            started.elapsed() < timeout,
            "only {done} of {} Deployments rolled out after {timeout:?}",
            world.deployments
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The operator and its memory.

struct Operator {
    child: Child,
    admin: String,
    ofrep: String,
    log: PathBuf,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Operator {
    /// `stagecoach run` watching every namespace, leader election on.
    fn start(label: &str) -> Result<Self> {
        let (admin_port, ofrep_port) = (free_port()?, free_port()?);
        let log =
            std::env::temp_dir().join(format!("stagecoach-bench-scale-{label}-{admin_port}.log"));
        let file = std::fs::File::create(&log)?;
        let binary = std::env::var_os("STAGECOACH_BIN").map_or_else(
            || repo_root().join("target/release/stagecoach"),
            PathBuf::from,
        );
        ensure!(
            binary.exists(),
            "{} does not exist: `cargo build --release -p stagecoach-operator`",
            binary.display()
        );
        let child = Command::new(&binary)
            .args(["run", "--log-format", "json"])
            .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")])
            .args(["--ofrep-addr", &format!("127.0.0.1:{ofrep_port}")])
            .env("STAGECOACH_IDENTITY", IDENTITY)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        println!("operator {} (log {})", binary.display(), log.display());
        Ok(Self {
            child,
            admin: format!("http://127.0.0.1:{admin_port}"),
            ofrep: format!("http://127.0.0.1:{ofrep_port}"),
            log,
        })
    }

    fn pid(&self) -> Result<u32> {
        self.child.id().context("the operator exited")
    }

    async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let admin = self.admin.clone();
        eventually(timeout, || {
            let admin = admin.clone();
            async move {
                let ready = reqwest::get(format!("{admin}/readyz")).await;
                Ok(ready.ok().filter(|r| r.status() == 200).map(|_| ()))
            }
        })
        .await
        .with_context(|| format!("operator never ready; log {}", self.log.display()))
    }

    /// Sums of the operator's own counters `name`, per value of the label `kind`.
    async fn counters(&self, name: &str) -> Result<BTreeMap<String, f64>> {
        let body = reqwest::get(format!("{}/metrics", self.admin))
            .await?
            .text()
            .await?;
        let mut sums = BTreeMap::new();
        for sample in parse_metrics(&body, name) {
            *sums
                .entry(sample.labels.get("kind").cloned().unwrap_or_default())
                .or_insert(0.0) += sample.value;
        }
        Ok(sums)
    }

    async fn status_writes(&self) -> Result<f64> {
        Ok(self
            .counters("stagecoach_status_writes_total")
            .await?
            .values()
            .sum::<f64>()
            + self
                .counters("stagecoach_flag_set_writes_total")
                .await?
                .values()
                .sum::<f64>())
    }

    /// Waits until the operator has counted no status or flag-set write for `quiet`.
    async fn wait_quiet(&self, quiet: Duration, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        let mut last = self.status_writes().await?;
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < quiet {
            ensure!(
                started.elapsed() < timeout,
                "the operator kept writing for {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = self.status_writes().await?;
            if (now - last).abs() > 0.5 {
                last = now;
                quiet_since = Instant::now();
            }
        }
        Ok(())
    }

    /// SIGTERM (the leader releases its Lease), then waits for the exit.
    async fn stop(mut self) -> Result<()> {
        let pid = self.pid()?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        ensure!(status.success(), "kill -TERM {pid} failed");
        let exit = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .context("operator still running 30 s after SIGTERM")??;
        println!("operator stopped ({exit})");
        Ok(())
    }

    fn log_mentions(&self, text: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches(text)
            .count()
    }
}

/// `/proc/<pid>/status` fields in KiB.
fn proc_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// VmRSS of the process `pid` every 50 ms, from a thread of its own.
#[derive(Clone, Default)]
struct Sampler {
    pid: Arc<AtomicU32>,
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<AtomicBool>,
}

impl Sampler {
    fn start() -> Self {
        let sampler = Self::default();
        let s = sampler.clone();
        std::thread::spawn(move || {
            while !s.stop.load(Ordering::Relaxed) {
                let pid = s.pid.load(Ordering::Relaxed);
                if pid != 0
                    && let Some(kib) = proc_kib(pid, "VmRSS:")
                {
                    s.samples.lock().unwrap().push((Instant::now(), kib));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        sampler
    }

    fn follow(&self, pid: u32) {
        self.pid.store(pid, Ordering::Relaxed);
    }

    /// The samples taken in [from, to].
    fn between(&self, from: Instant, to: Instant) -> Vec<u64> {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|(_, kib)| *kib)
            .collect()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        if Arc::strong_count(&self.stop) <= 2 {
            self.stop.store(true, Ordering::Relaxed);
        }
    }
}

fn median(values: &[u64]) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Writes, as the API server counts them.

struct Sample {
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of metric `name` in Prometheus text.
fn parse_metrics(text: &str, name: &str) -> Vec<Sample> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = if let Some(rest) = rest.strip_prefix('{') {
                let (labels, value) = rest.rsplit_once('}')?;
                (labels, value)
            } else if rest.starts_with(' ') {
                ("", rest)
            } else {
                return None;
            };
            let labels = labels
                .split("\",")
                .filter_map(|pair| {
                    let (k, v) = pair.split_once("=\"")?;
                    Some((k.trim().to_owned(), v.trim_end_matches('"').to_owned()))
                })
                .collect();
            Some(Sample {
                labels,
                value: value.trim().parse().ok()?,
            })
        })
        .collect()
}

const WRITE_VERBS: [&str; 8] = [
    "POST",
    "PUT",
    "PATCH",
    "DELETE",
    "DELETECOLLECTION",
    "APPLY",
    "CREATE",
    "UPDATE",
];

/// (verb, group, resource, subresource) -> count of writes in `apiserver_request_total`.
type WriteCounts = BTreeMap<(String, String, String, String), f64>;

fn kubectl(args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("kubectl").args(args).output()?;
    ensure!(
        out.status.success(),
        "kubectl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn scrape_writes() -> Result<WriteCounts> {
    let text = kubectl(&["get", "--raw", "/metrics"])?;
    let mut counts = WriteCounts::new();
    for s in parse_metrics(&text, "apiserver_request_total") {
        let verb = s.labels.get("verb").cloned().unwrap_or_default();
        if !WRITE_VERBS.contains(&verb.as_str()) {
            continue;
        }
        let get = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
        *counts
            .entry((verb, get("group"), get("resource"), get("subresource")))
            .or_insert(0.0) += s.value;
    }
    Ok(counts)
}

fn diff_writes(before: &WriteCounts, after: &WriteCounts) -> WriteCounts {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0.0);
            (d > 0.5).then(|| (k.clone(), d))
        })
        .collect()
}

/// One write in the audit log.
#[derive(Debug, Clone)]
struct AuditWrite {
    agent: String,
    verb: String,
    resource: String,
    subresource: String,
    namespace: String,
    name: String,
    code: i64,
}

impl AuditWrite {
    fn is_lease(&self) -> bool {
        self.resource == "leases"
    }
}

/// The audit log from `offset` to its end (written by the API server with the scale
/// profile); returns the writes and the new offset. A log shorter than `offset` was
/// started again: read from its beginning.
fn audit_writes(path: &Path, offset: u64) -> Result<(Vec<AuditWrite>, u64)> {
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("{} (the scale profile writes it)", path.display()))?;
    let len = file.metadata()?.len();
    let start = if len < offset { 0 } else { offset };
    file.seek(std::io::SeekFrom::Start(start))?;
    let mut writes = Vec::new();
    let mut reader = std::io::BufReader::new(file);
    let mut line = String::new();
    let mut position = start;
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 || !line.ends_with('\n') {
            break; // the end, or a line still being written: read it next time
        }
        position += n as u64;
        let Ok(event) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let object = &event["objectRef"];
        writes.push(AuditWrite {
            agent: text(&event["userAgent"]),
            verb: text(&event["verb"]),
            resource: text(&object["resource"]),
            subresource: text(&object["subresource"]),
            namespace: text(&object["namespace"]),
            name: text(&object["name"]),
            code: event["responseStatus"]["code"].as_i64().unwrap_or(0),
        });
    }
    Ok((writes, position))
}

fn audit_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Who wrote: a control-plane component (by its user agent's product), the benchmark,
/// or the operator (the user agent that writes its Lease).
fn writer_of(write: &AuditWrite, operator_agent: Option<&str>) -> String {
    if Some(write.agent.as_str()) == operator_agent {
        return "operator".into();
    }
    if write.agent == BENCH_AGENT {
        return "benchmark".into();
    }
    let product = write.agent.split('/').next().unwrap_or_default();
    if product.is_empty() {
        "(no user agent)".into()
    } else {
        product.to_owned()
    }
}

/// The operator's user agent: the one writing its Lease `stagecoach-leader`.
fn operator_agent(path: &Path) -> Result<Option<String>> {
    let (writes, _) = audit_writes(path, 0)?;
    Ok(writes
        .iter()
        .find(|w| w.resource == "leases" && w.name == "stagecoach-leader")
        .map(|w| w.agent.clone()))
}

/// What one idle window saw.
struct IdleWindow {
    seconds: u64,
    /// The operator's writes other than its Lease (audit log).
    operator: Vec<AuditWrite>,
    /// Its Lease writes (renewals: by design).
    operator_lease: usize,
    /// Every write in the audit log, by writer.
    by_writer: BTreeMap<String, usize>,
    /// The API server's counter, diffed.
    counted: WriteCounts,
}

impl IdleWindow {
    fn stagecoach_counted(&self) -> f64 {
        self.counted
            .iter()
            .filter(|((_, group, _, _), _)| group == "stagecoach.dev")
            .map(|(_, v)| v)
            .fold(0.0, |a, b| a + b)
    }

    fn print(&self, title: &str) {
        println!("\n{title} ({} s):", self.seconds);
        println!("  audit log, writes by writer: {:?}", self.by_writer);
        println!(
            "  operator: {} writes besides {} Lease writes",
            self.operator.len(),
            self.operator_lease
        );
        for w in self.operator.iter().take(20) {
            println!(
                "    {} {}/{} {}/{} -> {}",
                w.verb, w.resource, w.subresource, w.namespace, w.name, w.code
            );
        }
        println!("  apiserver_request_total, writes (verb group resource subresource: count):");
        for ((verb, group, resource, sub), v) in &self.counted {
            println!("    {verb} {group} {resource} {sub}: {v}");
        }
    }
}

async fn idle_window(
    seconds: u64,
    audit: &Path,
    operator_agent: Option<&str>,
    audit_from: u64,
    counted_before: &WriteCounts,
) -> Result<IdleWindow> {
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let counted = diff_writes(counted_before, &scrape_writes()?);
    let (writes, _) = audit_writes(audit, audit_from)?;
    let mut by_writer = BTreeMap::new();
    let mut operator = Vec::new();
    let mut operator_lease = 0;
    for w in writes {
        let who = writer_of(&w, operator_agent);
        *by_writer.entry(who.clone()).or_insert(0) += 1;
        if who == "operator" {
            if w.is_lease() {
                operator_lease += 1;
            } else {
                operator.push(w);
            }
        }
    }
    Ok(IdleWindow {
        seconds,
        operator,
        operator_lease,
        by_writer,
        counted,
    })
}

// ---------------------------------------------------------------------------------------
// The API server, restarted.

struct ApiServer(RecordedProcess);

impl ApiServer {
    fn from_cluster(dir: &Path) -> Result<Self> {
        RecordedProcess::read(dir, "kube-apiserver").map(Self)
    }

    fn pids(&self) -> Vec<u32> {
        self.0.pids()
    }

    async fn kill(&self) -> Result<()> {
        self.0.sigkill()?;
        for _ in 0..100 {
            if self.pids().is_empty() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("kube-apiserver still running 10 s after SIGKILL")
    }

    /// Starts it again with the same flags, appending to its log, in a process group of
    /// its own (`cargo xtask cluster down` stops it), and waits until it is ready. Right
    /// after the kill its port can still be taken for a moment (the new one exits with
    /// "address already in use"): then it is started again.
    async fn start_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let mut child = self.0.spawn()?;
            loop {
                if kubectl(&["get", "--raw", "/readyz"]).is_ok() {
                    // It keeps running (dropping the handle neither kills nor waits).
                    drop(child);
                    return Ok(());
                }
                if let Some(status) = child.try_wait()? {
                    println!("  kube-apiserver exited at start ({status}); starting it again");
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "kube-apiserver not ready 180 s after starting it again"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reconciled.

/// Every object settled (see the header) and OFREP serving every application's flags.
async fn wait_settled(
    stores: &Stores,
    world: &World,
    operator: &Operator,
    timeout: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let (rows, examples) = stores.progress();
        let complete = rows.iter().all(|(_, settled, total)| settled == total)
            && rows
                .iter()
                .find(|(k, _, _)| *k == "Releases")
                .is_some_and(|(_, _, t)| *t == world.releases)
            && rows
                .iter()
                .find(|(k, _, _)| *k == "FeatureToggles")
                .is_some_and(|(_, _, t)| *t == world.toggles);
        if complete && ofrep_serves_all(operator, world).await? {
            return Ok(started.elapsed());
        }
        if last_print.elapsed() > Duration::from_secs(15) {
            let summary: Vec<String> = rows
                .iter()
                .map(|(k, s, t)| format!("{k} {s}/{t}"))
                .collect();
            println!(
                "  settled: {} ({:.0}s); e.g. not yet: {}",
                summary.join(", "),
                started.elapsed().as_secs_f64(),
                examples.join(", ")
            );
            last_print = Instant::now();
        }
        if started.elapsed() > timeout {
            bail!(
                "not settled after {timeout:?}: {rows:?}; e.g. {examples:?}; operator log {}",
                operator.log.display()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Whether OFREP serves all [`TOGGLES_PER_APP`] flags of every application in dev.
async fn ofrep_serves_all(operator: &Operator, world: &World) -> Result<bool> {
    let http = reqwest::Client::new();
    for i in 0..world.apps {
        let app = app_name(i);
        let url = format!(
            "{}/apps/{app}/{app}/stages/dev/ofrep/v1/evaluate/flags",
            operator.ofrep
        );
        let Ok(response) = http
            .post(&url)
            .header("content-type", "application/json")
            .body(r#"{"context":{"targetingKey":"probe","clientId":"client-1"}}"#)
            .send()
            .await
        else {
            return Ok(false);
        };
        if response.status() != 200 {
            return Ok(false);
        }
        let body: Value = response.json().await?;
        if body["flags"].as_array().map_or(0, Vec::len) != TOGGLES_PER_APP {
            return Ok(false);
        }
    }
    Ok(true)
}

/// After a restart: the operator's count of finished reconciles reaches the number of
/// objects of each kind (of applications for toggles), and OFREP serves every
/// application.
async fn wait_reconciled_again(
    operator: &Operator,
    world: &World,
    timeout: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let counts = operator.counters("stagecoach_reconciles_total").await?;
        let get = |k: &str| counts.get(k).copied().unwrap_or(0.0);
        if get("Release") >= world.releases as f64
            // The toggle controller reconciles an application's toggles together.
            && get("FeatureToggle") >= world.apps as f64
            && get("Pipeline") >= world.apps as f64
            && ofrep_serves_all(operator, world).await?
        {
            return Ok(started.elapsed());
        }
        ensure!(
            started.elapsed() < timeout,
            "not reconciled again after {timeout:?}: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The table.

struct Table {
    rows: Vec<(String, String, String)>,
}

impl Table {
    fn row(&mut self, metric: impl Into<String>, value: impl Into<String>, target: &str) {
        let (metric, value) = (metric.into(), value.into());
        println!("  {metric}: {value} (target: {target})");
        self.rows.push((metric, value, target.to_owned()));
    }

    fn markdown(&self) -> String {
        let mut text = String::from("| metric | value | target |\n|---|---|---|\n");
        for (m, v, t) in &self.rows {
            let _ = writeln!(text, "| {m} | {v} | {t} |");
        }
        text
    }
}

fn writes_text(window: &IdleWindow) -> String {
    if window.operator.is_empty() {
        "0".to_owned()
    } else {
        let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
        for w in &window.operator {
            let what = if w.subresource.is_empty() {
                format!("{} {}", w.verb, w.resource)
            } else {
                format!("{} {}/{}", w.verb, w.resource, w.subresource)
            };
            *kinds.entry(what).or_insert(0) += 1;
        }
        let parts: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
        format!("{} ({})", window.operator.len(), parts.join(", "))
    }
}

// ---------------------------------------------------------------------------------------

async fn bench() -> Result<()> {
    let apps = usize::try_from(env_number("STAGECOACH_SCALE_APPS", 100))?;
    let idle_secs = env_number("STAGECOACH_SCALE_IDLE_SECS", 300);
    let settle_timeout = Duration::from_secs(env_number("STAGECOACH_SCALE_SETTLE_SECS", 3600));
    let cluster_dir = std::env::var_os("STAGECOACH_CLUSTER_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("KUBECONFIG")
                .and_then(|k| Path::new(&k).parent().map(Path::to_path_buf))
        })
        .context("STAGECOACH_CLUSTER_DIR (the control plane's state directory) is not set")?;
    let audit = cluster_dir.join("logs/audit.log");
    ensure!(
        audit.exists(),
        "{} does not exist: start the control plane with the scale profile \
         (`cargo xtask cluster up --name <name> --profile scale`)",
        audit.display()
    );
    let apiserver = ApiServer::from_cluster(&cluster_dir)?;

    let client = bench_client().await?;
    install_crds(&client).await?;
    let existing = Api::<Release>::all(client.clone())
        .list(&ListParams::default().limit(1))
        .await?;
    ensure!(
        existing.items.is_empty(),
        "this cluster already has Releases: the scale benchmark runs an operator watching \
         every namespace, so it needs a fresh control plane of its own"
    );
    let started_at = chrono::Utc::now();
    println!(
        "scale benchmark: {apps} applications, {} Releases, {} FeatureToggles; idle windows of {idle_secs} s",
        apps * RELEASES_PER_APP,
        apps * TOGGLES_PER_APP
    );
    let stores = Stores {
        releases: watch_all(&client),
        toggles: watch_all(&client),
        pipelines: watch_all(&client),
        deployments: watch_all(&client),
    };
    println!("creating the world:");
    let (world, created_in) = create_world(&client, apps).await?;
    println!("created in {:.0}s", created_in.as_secs_f64());
    let rolled_out_in = wait_rolled_out(&stores, &world, settle_timeout).await?;
    println!(
        "{} Deployments ({} pods) rolled out {:.0}s later",
        world.deployments,
        world.deployments * usize::try_from(REPLICAS)?,
        rolled_out_in.as_secs_f64()
    );

    // Cold start.
    let sampler = Sampler::start();
    let operator = Operator::start("cold")?;
    let cold_started = Instant::now();
    sampler.follow(operator.pid()?);
    operator.wait_ready(Duration::from_secs(600)).await?;
    let ready_in = cold_started.elapsed();
    println!(
        "operator ready in {:.1}s; waiting until everything is reconciled",
        ready_in.as_secs_f64()
    );
    let settled_in = wait_settled(&stores, &world, &operator, settle_timeout).await?;
    let settled_in = settled_in + ready_in;
    println!(
        "everything reconciled {:.0}s after the operator started",
        settled_in.as_secs_f64()
    );
    operator
        .wait_quiet(Duration::from_secs(10), Duration::from_secs(600))
        .await?;
    let operator_agent = operator_agent(&audit)?;
    println!("the operator's user agent (from its Lease writes): {operator_agent:?}");

    // Steady memory: a minute, once settled.
    let steady_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let steady = sampler.between(steady_from, Instant::now());
    let hwm_cold = proc_kib(operator.pid()?, "VmHWM:").unwrap_or(0);
    println!(
        "steady resident: median {:.1} MiB, max {:.1} MiB ({} samples); VmHWM since start {:.1} MiB",
        mib(median(&steady)),
        mib(steady.iter().copied().max().unwrap_or(0)),
        steady.len(),
        mib(hwm_cold)
    );

    // Idle writes, settled.
    println!("idle: counting writes for {idle_secs} s");
    let before = scrape_writes()?;
    let audit_from = audit_len(&audit);
    let idle = idle_window(
        idle_secs,
        &audit,
        operator_agent.as_deref(),
        audit_from,
        &before,
    )
    .await?;
    idle.print("writes while idle");

    // A forced relist: the API server killed and started again.
    println!("\nrelist: killing the API server and starting it again");
    let hwm_before = proc_kib(operator.pid()?, "VmHWM:").unwrap_or(0);
    let lost_before = operator.log_mentions("leadership lost");
    let kill_at = Instant::now();
    apiserver.kill().await?;
    let audit_from = audit_len(&audit);
    apiserver.start_ready().await?;
    let back_at = Instant::now();
    let down_for = back_at - kill_at;
    let before = scrape_writes()?;
    println!("API server back after {:.1}s", down_for.as_secs_f64());
    let relist_window = Duration::from_secs(60).min(Duration::from_secs(idle_secs.max(1)));
    tokio::time::sleep(relist_window).await;
    let relist = sampler.between(kill_at, Instant::now());
    let hwm_after = proc_kib(operator.pid()?, "VmHWM:").unwrap_or(0);
    let lost = operator.log_mentions("leadership lost") - lost_before;
    println!(
        "relist: max resident {:.1} MiB ({} samples), VmHWM {:.1} -> {:.1} MiB, leadership lost {lost} time(s)",
        mib(relist.iter().copied().max().unwrap_or(0)),
        relist.len(),
        mib(hwm_before),
        mib(hwm_after)
    );
    let mut after_relist = idle_window(
        idle_secs.saturating_sub(relist_window.as_secs()),
        &audit,
        operator_agent.as_deref(),
        audit_from,
        &before,
    )
    .await?;
    after_relist.seconds = idle_secs;
    after_relist.print("writes from the API server's restart on");
    let after_relist_rss = sampler.between(back_at + relist_window, Instant::now());

    // An operator restart.
    println!("\noperator restart (SIGTERM, a new process)");
    operator.stop().await?;
    let audit_from = audit_len(&audit);
    let before = scrape_writes()?;
    let operator = Operator::start("restart")?;
    let restart_at = Instant::now();
    sampler.follow(operator.pid()?);
    operator.wait_ready(Duration::from_secs(600)).await?;
    let restart_ready = restart_at.elapsed();
    let restart_reconciled = wait_reconciled_again(&operator, &world, settle_timeout).await?;
    let observe = Duration::from_secs(90);
    if let Some(rest) = observe.checked_sub(restart_at.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let restart_hwm = proc_kib(operator.pid()?, "VmHWM:").unwrap_or(0);
    let restart_rss = proc_kib(operator.pid()?, "VmRSS:").unwrap_or(0);
    let restart_sampled = sampler.between(restart_at, Instant::now());
    let mut after_restart =
        idle_window(0, &audit, operator_agent.as_deref(), audit_from, &before).await?;
    after_restart.seconds = restart_at.elapsed().as_secs();
    after_restart.print("writes in the 90 s after the operator restarted");
    let status_writes = operator.status_writes().await?;
    operator.stop().await?;

    // The table.
    let mut table = Table { rows: Vec::new() };
    println!("\nscale benchmark ({started_at}):");
    table.row(
        "world",
        format!(
            "{} applications x 4 stages: {} namespaces, {} Deployments x {REPLICAS} pods, {} Releases ({} current, the rest superseded), {} FeatureToggles, {} Pipelines",
            world.apps,
            world.apps * 5,
            world.deployments,
            world.releases,
            world.apps,
            world.toggles,
            world.apps
        ),
        "1,000 / 1,000 x 3 / 10,000",
    );
    table.row(
        "created (concurrent server-side applies, 32 at once); Deployments rolled out",
        format!(
            "{:.0} s; {:.0} s later",
            created_in.as_secs_f64(),
            rolled_out_in.as_secs_f64()
        ),
        "-",
    );
    table.row(
        "cold start: operator ready (caches listed)",
        format!("{:.1} s", ready_in.as_secs_f64()),
        "-",
    );
    table.row(
        "cold start: every object reconciled (statuses at their generation and final, OFREP serving every application; includes rolling the current releases out)",
        format!("{:.0} s", settled_in.as_secs_f64()),
        "-",
    );
    table.row(
        "resident memory, steady (a minute once settled, every 50 ms)",
        format!(
            "median {:.1} MiB, max {:.1} MiB",
            mib(median(&steady)),
            mib(steady.iter().copied().max().unwrap_or(0))
        ),
        "< 64 MiB",
    );
    table.row(
        "resident memory peak since the cold start (VmHWM, rollout included)",
        format!("{:.1} MiB", mib(hwm_cold)),
        "-",
    );
    table.row(
        format!(
            "writes by the operator while idle ({} s, audit log), besides its Lease",
            idle.seconds
        ),
        writes_text(&idle),
        "0",
    );
    table.row(
        "  its Lease renewals (leader election, by design)",
        idle.operator_lease.to_string(),
        "-",
    );
    table.row(
        "  writes to stagecoach.dev resources (apiserver_request_total)",
        format!("{:.0}", idle.stagecoach_counted()),
        "0",
    );
    table.row(
        "relist (API server SIGKILLed, restarted): resident peak (max of 50 ms samples, kill to 60 s after it is back)",
        format!(
            "{:.1} MiB (API server back after {:.0} s; leadership lost {lost}x)",
            mib(relist.iter().copied().max().unwrap_or(0)),
            down_for.as_secs_f64()
        ),
        "< 128 MiB",
    );
    table.row(
        "  VmHWM before and after the relist",
        format!("{:.1} -> {:.1} MiB", mib(hwm_before), mib(hwm_after)),
        "< 128 MiB",
    );
    table.row(
        "  resident after the relist (median)",
        format!("{:.1} MiB", mib(median(&after_relist_rss))),
        "< 64 MiB",
    );
    table.row(
        format!(
            "writes by the operator from the API server's restart on ({idle_secs} s incl. the relist), besides its Lease"
        ),
        writes_text(&after_relist),
        "0",
    );
    table.row(
        "  its Lease writes",
        after_relist.operator_lease.to_string(),
        "-",
    );
    table.row(
        "  writes to stagecoach.dev resources (apiserver_request_total)",
        format!("{:.0}", after_relist.stagecoach_counted()),
        "0",
    );
    table.row(
        "operator restart: ready; every object reconciled again (its reconcile counters >= objects, OFREP serving all)",
        format!(
            "{:.1} s; {:.1} s",
            restart_ready.as_secs_f64(),
            restart_reconciled.as_secs_f64() + restart_ready.as_secs_f64()
        ),
        "-",
    );
    table.row(
        "operator restart: resident peak (VmHWM of the new process); resident at 90 s",
        format!(
            "{:.1} MiB (sampled max {:.1}); {:.1} MiB",
            mib(restart_hwm),
            mib(restart_sampled.iter().copied().max().unwrap_or(0)),
            mib(restart_rss)
        ),
        "< 128 MiB; < 64 MiB",
    );
    table.row(
        "operator restart: its writes in the first 90 s, besides its Lease (audit log; its own status-write counters)",
        format!("{} ({status_writes:.0})", writes_text(&after_restart)),
        "0",
    );
    let markdown = format!(
        "Scale benchmark, {started_at} (`cargo xtask bench --scale`, tests/e2e/benches/scale.rs; \
         STAGECOACH_SCALE_APPS={apps}, STAGECOACH_SCALE_IDLE_SECS={idle_secs}):\n\n{}\n\
         Writes while idle, by writer (audit log): {:?}; from the API server's restart on: {:?}.\n",
        table.markdown(),
        idle.by_writer,
        after_relist.by_writer
    );
    let out = repo_root().join("target/bench-scale.md");
    std::fs::write(&out, &markdown)?;
    println!("\n{markdown}\n(written to {})", out.display());
    Ok(())
}

/// A benchmark, not a test (`harness = false`): `cargo xtask bench --scale` runs it.
fn main() -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench())
}
