//! Shared helpers for the end-to-end tests.
//!
//! The tests run against the real control plane that `cargo xtask test` starts
//! (KUBECONFIG points at it). They are `#[ignore]`d so that a plain `cargo test` does not
//! pretend to run them; `cargo xtask test` runs them with `--ignored`. Every test works
//! in a fresh namespace labelled [`E2E_LABEL`], deleted at the end.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use tokio::process::{Child, Command};

pub mod prometheus;

/// Label on every namespace a test creates.
pub const E2E_LABEL: &str = "stagecoach.dev/e2e";

/// Message used by `#[ignore]` on every end-to-end test.
pub const HOW_TO_RUN: &str = "needs the test control plane: run `cargo xtask test` (or `cargo xtask cluster up` and `cargo test -p stagecoach-e2e -- --ignored` with its KUBECONFIG)";

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A client for the cluster in KUBECONFIG; fails clearly when there is none.
pub async fn client() -> Result<Client> {
    if std::env::var_os("KUBECONFIG").is_none() {
        bail!("KUBECONFIG is not set; {HOW_TO_RUN}");
    }
    Client::try_default()
        .await
        .context("connecting to the cluster in KUBECONFIG")
}

/// Parses every YAML document in a file into JSON objects.
pub fn read_manifests(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// Server-side applies `doc` (a manifest with `metadata.name`) through `api`, as the
/// field manager `stagecoach-e2e`, forcing conflicts: what `kubectl apply --server-side`
/// does.
pub async fn apply<K>(api: &Api<K>, doc: serde_json::Value) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = doc["metadata"]["name"].as_str().context("name")?.to_owned();
    api.patch(
        &name,
        &PatchParams::apply("stagecoach-e2e").force(),
        &Patch::Apply(&doc),
    )
    .await
    .with_context(|| format!("applying {name}"))?;
    Ok(())
}

/// Installs everything in `crds/` (the CRDs and the admission policy; server-side apply,
/// idempotent), waits until the CRDs are Established and the policy is enforced.
pub async fn install_crds(client: &Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let dir = repo_root().join("crds");
    let mut names = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for path in files {
        for doc in read_manifests(&path)? {
            let name = doc["metadata"]["name"].as_str().context("name")?.to_owned();
            let kind = doc["kind"].as_str().context("kind")?.to_owned();
            let (group, version) = doc["apiVersion"]
                .as_str()
                .context("apiVersion")?
                .split_once('/')
                .context("apiVersion without group")?;
            let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &kind));
            let dynamic: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
            let obj: DynamicObject = serde_json::from_value(doc)?;
            dynamic
                .patch(
                    &name,
                    &PatchParams::apply("stagecoach-e2e").force(),
                    &Patch::Apply(&obj),
                )
                .await
                .with_context(|| format!("applying {kind} {name} from {}", path.display()))?;
            if kind == "CustomResourceDefinition" {
                names.push(name);
            }
        }
    }
    for name in names {
        eventually(Duration::from_secs(30), || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let crd = api.get(&name).await?;
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                Ok(established.then_some(()))
            }
        })
        .await
        .with_context(|| format!("CRD {name} never became Established"))?;
    }
    wait_for_admission_policy(client).await
}

/// Admission policies take effect a moment after they are created: wait until a toggle
/// that only the policy rejects is rejected.
async fn wait_for_admission_policy(client: &Client) -> Result<()> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "stagecoach.dev",
        "v1alpha1",
        "FeatureToggle",
    ));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let probe: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "stagecoach.dev/v1alpha1",
        "kind": "FeatureToggle",
        "metadata": {"name": "policy-probe"},
        "spec": {"application": "probe", "variants": {"a": true}, "defaultVariant": "b"}
    }))?;
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    eventually(Duration::from_secs(30), || {
        let api = api.clone();
        let probe = probe.clone();
        let params = params.clone();
        async move {
            match api.create(&params, &probe).await {
                Err(kube::Error::Api(e)) if e.message.contains("defaultVariant must be one of") => {
                    Ok(Some(()))
                }
                _ => Ok(None),
            }
        }
    })
    .await
    .context("the FeatureToggle admission policy never took effect")
}

/// A namespace that exists for one test.
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    /// Creates `e2e-<prefix>-<random>` labelled [`E2E_LABEL`].
    pub async fn create(client: &Client, prefix: &str) -> Result<Self> {
        let suffix = format!("{:x}", rand_suffix());
        Self::create_named(client, &format!("e2e-{prefix}-{suffix}")).await
    }

    /// Creates the namespace `name` labelled [`E2E_LABEL`], so that
    /// [`delete_test_namespaces`] catches it too.
    pub async fn create_named(client: &Client, name: &str) -> Result<Self> {
        let name = name.to_owned();
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {E2E_LABEL: "true"}}
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        // Pods need the default ServiceAccount, which the real controller-manager makes.
        let sa_api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), &name);
        eventually(Duration::from_secs(30), || {
            let sa_api = sa_api.clone();
            async move { Ok(sa_api.get_opt("default").await?.map(|_| ())) }
        })
        .await
        .context("the default ServiceAccount never appeared")?;
        Ok(Self {
            name,
            client: client.clone(),
        })
    }

    /// Deletes the namespace (its contents go with it).
    pub async fn delete(self) -> Result<()> {
        Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::background())
            .await?;
        Ok(())
    }
}

/// Deletes every namespace a test left behind.
pub async fn delete_test_namespaces(client: &Client) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let selector = format!("{E2E_LABEL}=true");
    api.delete_collection(
        &DeleteParams::background(),
        &ListParams::default().labels(&selector),
    )
    .await?;
    Ok(())
}

/// A random number below `bound` (not for cryptography: delays and name suffixes).
pub fn random_below(bound: u64) -> u64 {
    u64::from(rand_suffix()) % bound.max(1)
}

fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    // Truncation is the point: a short random suffix.
    #[allow(clippy::cast_possible_truncation)]
    let short = h.finish() as u32;
    short
}

/// Polls `check` until it returns `Some`, or fails after `timeout` with the last error.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(match last_error {
                Some(e) => e.context(format!("condition not met within {timeout:?}")),
                None => anyhow::anyhow!("condition not met within {timeout:?}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A Deployment manifest with `replicas` pods of one container `app` running `image`,
/// labelled `app: <name>`.
pub fn deployment(name: &str, image: &str, replicas: i32) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image}]}
            }
        }
    })
}

/// Pod template annotations that make kwok take a pod to Ready in about one second
/// (half a second to start, half a second to turn Ready) instead of its default 2-12 s.
/// kwok reads each `*-jitter-delay` as the upper bound of the delay; when it is not above
/// the stage's fixed delay it is the delay itself.
pub const FAST_POD_ANNOTATIONS: [(&str, &str); 2] = [
    ("pod-create.stage.kwok.x-k8s.io/jitter-delay", "500ms"),
    ("pod-ready.stage.kwok.x-k8s.io/jitter-delay", "500ms"),
];

/// [`deployment`] whose pods become Ready in about a second (see [`FAST_POD_ANNOTATIONS`]).
pub fn deployment_with_fast_pods(name: &str, image: &str, replicas: i32) -> serde_json::Value {
    let mut doc = deployment(name, image, replicas);
    let annotations: serde_json::Map<String, serde_json::Value> = FAST_POD_ANNOTATIONS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
        .collect();
    doc["spec"]["template"]["metadata"]["annotations"] = serde_json::Value::Object(annotations);
    doc
}

/// Waits until the Deployment has `replicas` ready pods, all on its current template.
pub async fn wait_until_rolled_out(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    eventually(timeout, || {
        let api = api.clone();
        async move {
            let d = api.get(name).await?;
            let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let generation = d.metadata.generation.unwrap_or(0);
            let s = d.status.unwrap_or_default();
            let done = s.observed_generation.unwrap_or(0) >= generation
                && s.updated_replicas.unwrap_or(0) == wanted
                && s.replicas.unwrap_or(0) == wanted
                && s.ready_replicas.unwrap_or(0) == wanted;
            Ok(done.then_some(()))
        }
    })
    .await
    .with_context(|| format!("Deployment {namespace}/{name} never rolled out"))
}

/// Whether the pod's Ready condition is True.
pub fn pod_is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Why the pod's first waiting container waits (such as CrashLoopBackOff), if one does.
pub fn pod_waiting_reason(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find_map(|s| s.state.as_ref()?.waiting.as_ref()?.reason.clone())
}

/// The image of the pod's container `app` (the container a [`Pipeline`] releases).
pub fn pod_image(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == "app"))
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// Name of the Deployment every stage of a [`Pipeline`] runs.
pub const PIPELINE_DEPLOYMENT: &str = "api";

/// A release pipeline for one test: a namespace for the Release and one namespace per
/// stage, `<release namespace>-<stage>`, each running the Deployment
/// [`PIPELINE_DEPLOYMENT`] (one container `app`, pods Ready in about a second). Every
/// namespace is labelled [`E2E_LABEL`]; [`Pipeline::delete`] removes them all.
pub struct Pipeline {
    /// Where the Releases live (and the namespace the test's operator watches).
    pub home: TestNamespace,
    /// (stage name, its namespace), in pipeline order.
    pub stages: Vec<(String, TestNamespace)>,
}

impl Pipeline {
    /// Creates the namespaces and the Deployments (`replicas` per stage), and waits until
    /// every Deployment is fully rolled out.
    pub async fn create(
        client: &Client,
        prefix: &str,
        stages: &[(&str, i32)],
        image: &str,
    ) -> Result<Self> {
        let home = TestNamespace::create(client, prefix).await?;
        let mut pipeline = Self {
            home,
            stages: Vec::new(),
        };
        for (stage, replicas) in stages {
            let name = format!("{}-{stage}", pipeline.home.name);
            let ns = TestNamespace::create_named(client, &name).await?;
            let api: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
            let doc = deployment_with_fast_pods(PIPELINE_DEPLOYMENT, image, *replicas);
            api.create(&PostParams::default(), &serde_json::from_value(doc)?)
                .await
                .with_context(|| format!("creating the Deployment in {name}"))?;
            pipeline.stages.push(((*stage).to_owned(), ns));
        }
        for (_, ns) in &pipeline.stages {
            wait_until_rolled_out(
                client,
                &ns.name,
                PIPELINE_DEPLOYMENT,
                Duration::from_secs(60),
            )
            .await?;
        }
        Ok(pipeline)
    }

    /// The namespace of a stage.
    ///
    /// # Panics
    /// When the pipeline has no such stage (a mistake in the test).
    pub fn namespace(&self, stage: &str) -> &str {
        self.stages
            .iter()
            .find(|(name, _)| name == stage)
            .map_or_else(
                || panic!("the pipeline has no stage {stage}"),
                |(_, ns)| ns.name.as_str(),
            )
    }

    /// The stage namespaces, in pipeline order.
    pub fn namespaces(&self) -> impl Iterator<Item = &str> {
        self.stages.iter().map(|(_, ns)| ns.name.as_str())
    }

    /// Deletes every namespace of the pipeline.
    pub async fn delete(self) -> Result<()> {
        for (_, ns) in self.stages {
            ns.delete().await?;
        }
        self.home.delete().await
    }
}

/// A Release manifest for `application` setting the container `app` of
/// [`PIPELINE_DEPLOYMENT`] to `image`, with the given `spec.stages`.
pub fn release_manifest(
    name: &str,
    application: &str,
    version: &str,
    image: &str,
    stages: &[serde_json::Value],
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "stagecoach.dev/v1alpha1",
        "kind": "Release",
        "metadata": {"name": name},
        "spec": {
            "application": application,
            "version": version,
            "changes": [{"id": format!("E2E-{version}"), "title": format!("{application} {version}")}],
            "workloads": [{"deployment": PIPELINE_DEPLOYMENT, "containers": [{"name": "app", "image": image}]}],
            "stages": stages,
        }
    })
}

/// A process of a local control plane as `cargo xtask cluster up` recorded how it was
/// started: `commands/<name>.json` in the cluster's state directory. The fault tests and
/// the scale benchmark kill one and start it again with the same command line.
pub struct RecordedProcess {
    pub program: String,
    pub args: Vec<String>,
    pub log: PathBuf,
}

impl RecordedProcess {
    /// How `name` (`kube-apiserver`, `etcd`, ...) of the cluster in `cluster_dir` was started.
    pub fn read(cluster_dir: &Path, name: &str) -> Result<Self> {
        let file = cluster_dir.join(format!("commands/{name}.json"));
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let command: serde_json::Value = serde_json::from_str(&text)?;
        Ok(Self {
            program: command["program"].as_str().context("program")?.to_owned(),
            args: command["args"]
                .as_array()
                .context("args")?
                .iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect(),
            log: PathBuf::from(command["log"].as_str().context("log")?),
        })
    }

    /// PIDs of running processes whose command line is exactly this one (the data
    /// directory and ports in it make it this control plane's, not another's).
    pub fn pids(&self) -> Vec<u32> {
        let wanted: Vec<&str> = std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .collect();
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
                    let argv: Vec<&str> = raw
                        .split(|b| *b == 0)
                        .filter(|a| !a.is_empty())
                        .filter_map(|a| std::str::from_utf8(a).ok())
                        .collect();
                    argv == wanted
                })
            })
            .collect()
    }

    /// Sends SIGKILL to every running process with this command line (at least one).
    pub fn sigkill(&self) -> Result<()> {
        let pids = self.pids();
        if pids.is_empty() {
            bail!("no running {} found", self.program);
        }
        for pid in &pids {
            let status = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()?;
            if !status.success() {
                bail!("kill -KILL {pid} ({}) failed", self.program);
            }
        }
        Ok(())
    }

    /// Starts it again with the same flags, appending to its log, in a process group of
    /// its own (so it outlives the test; `cargo xtask cluster down` stops it).
    pub fn spawn(&self) -> Result<std::process::Child> {
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new().append(true).open(&self.log)?;
        std::process::Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {} again", self.program))
    }
}

/// A TCP port on 127.0.0.1 that is free right now.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `N` distinct TCP ports on 127.0.0.1 that are free right now: all bound at once, so two
/// calls of [`free_port`] can never hand out the same port twice (an operator's admin and
/// OFREP servers once got the same one).
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// The operator binary: STAGECOACH_BIN, or the workspace's debug build.
pub fn operator_binary() -> PathBuf {
    std::env::var_os("STAGECOACH_BIN").map_or_else(
        || repo_root().join("target/debug/stagecoach"),
        PathBuf::from,
    )
}

/// A `stagecoach run` process started by a test, with its own admin port and a JSON log
/// file. Dropping it kills the process.
pub struct Operator {
    child: Child,
    admin: String,
    ofrep: String,
    log: PathBuf,
}

impl Operator {
    /// Starts the operator watching Releases and FeatureToggles in `namespace` only, so
    /// that operators of tests running at the same time never act on each other's
    /// releases.
    pub fn start(name: &str, namespace: &str) -> Result<Self> {
        Self::start_with_env(name, namespace, &[])
    }

    /// [`Operator::start`] with extra environment variables (a KUBECONFIG of its own, say).
    pub fn start_with_env(name: &str, namespace: &str, env: &[(&str, &str)]) -> Result<Self> {
        let [port, ofrep_port] = free_ports()?;
        let admin = format!("http://127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!("stagecoach-e2e-{name}-{port}.log"));
        let file = std::fs::File::create(&log)?;
        let binary = operator_binary();
        if !binary.exists() {
            bail!(
                "{} does not exist: build it with `cargo build -p stagecoach-operator`",
                binary.display()
            );
        }
        let child = Command::new(&binary)
            .args([
                "run",
                "--namespace",
                namespace,
                "--admin-addr",
                &format!("127.0.0.1:{port}"),
                "--log-format",
                "json",
            ])
            // Its OFREP server too needs a port of its own.
            .env("STAGECOACH_OFREP_ADDR", format!("127.0.0.1:{ofrep_port}"))
            // Leader election: the Lease is in `namespace` (one per test, so tests never
            // contend), and an operator started again in the same namespace after a kill
            // is the same identity, which renews the Lease at once rather than waiting
            // for it to expire. Tests running two operators give each its own identity.
            .env("STAGECOACH_IDENTITY", format!("e2e-{namespace}"))
            .envs(env.iter().copied())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        println!("operator log: {}", log.display());
        Ok(Self {
            child,
            admin,
            ofrep: format!("http://127.0.0.1:{ofrep_port}"),
            log,
        })
    }

    /// [`Operator::start`], then waits until `/readyz` answers 200 (caches synced).
    pub async fn start_ready(name: &str, namespace: &str) -> Result<Self> {
        let operator = Self::start(name, namespace)?;
        operator.wait_ready().await?;
        Ok(operator)
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) -> Result<()> {
        eventually(Duration::from_secs(30), || async {
            Ok(self
                .get("/readyz")
                .await
                .ok()
                .filter(|(s, _)| *s == 200)
                .map(|_| ()))
        })
        .await
        .with_context(|| format!("operator never became ready; log:\n{}", self.log_text()))
    }

    /// GET on the admin server: (status code, body).
    pub async fn get(&self, path: &str) -> Result<(u16, String)> {
        let response = reqwest::get(format!("{}{path}", self.admin)).await?;
        let status = response.status().as_u16();
        Ok((status, response.text().await?))
    }

    /// The value of a counter, summed over the label sets whose text contains `labels`.
    pub async fn metric(&self, name: &str, labels: &str) -> Result<f64> {
        let (_, body) = self.get("/metrics").await?;
        Ok(body
            .lines()
            .filter(|l| {
                l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(labels)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// The operator's resident memory (VmRSS), in KiB.
    pub fn resident_kib(&self) -> Result<u64> {
        let pid = self.child.id().context("operator already exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("no VmRSS in /proc/<pid>/status")
    }

    /// Where its OFREP server answers, as `http://127.0.0.1:<port>`.
    pub fn ofrep_url(&self) -> &str {
        &self.ofrep
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Where the log is written.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn stop(mut self) -> Result<()> {
        let pid = self.child.id().context("operator already exited")?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("could not send SIGTERM to the operator (pid {pid})");
        }
        let exit = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .context("operator did not stop within 15s of SIGTERM")??;
        if !exit.success() {
            bail!(
                "operator exited with {exit} after SIGTERM; log:\n{}",
                self.log_text()
            );
        }
        Ok(())
    }

    /// SIGKILL (no chance to finish anything), and wait until the process is gone.
    pub async fn kill(mut self) -> Result<()> {
        self.child.start_kill().context("sending SIGKILL")?;
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .context("operator still alive 10s after SIGKILL")??;
        Ok(())
    }
}
