//! `cargo xtask cluster up|down|status`: a real Kubernetes control plane on 127.0.0.1.
//!
//! etcd, kube-apiserver, kube-controller-manager and kube-scheduler built from
//! `k8s.io/kubernetes` and `go.etcd.io/etcd/server/v3`, and kwok playing the kubelet for
//! a few fake nodes. Everything lives in one state directory: certificates, data, logs,
//! the kubeconfig and the PIDs of what was started, so `down` stops exactly that.

pub mod build;
mod pki;
pub mod stages;

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::workspace_root;

/// Number of fake nodes kwok manages.
const NODES: usize = 3;

/// A running (or stopped) control plane's state directory.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub dir: PathBuf,
}

impl Cluster {
    /// The cluster of the given name under `target/stagecoach-cluster/<name>`.
    pub fn named(name: &str) -> Self {
        Self {
            dir: workspace_root()
                .join("target/stagecoach-cluster")
                .join(name),
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("pids")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// Log files of every component, for printing when a test fails.
    pub fn log_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.log_dir())
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        files
    }

    /// Recorded processes that are still alive.
    fn live_pids(&self) -> Vec<(String, u32)> {
        std::fs::read_to_string(self.pid_file())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (name, pid) = l.split_once(' ')?;
                Some((name.to_owned(), pid.trim().parse().ok()?))
            })
            .filter(|(_, pid)| process_alive(*pid))
            .collect()
    }

    pub fn is_running(&self) -> bool {
        !self.live_pids().is_empty() && self.kubeconfig().exists()
    }

    /// Builds what is missing, then starts every component and waits until the cluster
    /// can run pods. Fails when this cluster is already running.
    pub fn up(&self) -> Result<()> {
        if self.is_running() {
            bail!(
                "the control plane in {} is already running (KUBECONFIG={}); `cargo xtask cluster down` first",
                self.dir.display(),
                self.kubeconfig().display()
            );
        }
        let bin = build::ensure_binaries(false)?;
        let started = Instant::now();
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir)
                .with_context(|| format!("removing old state {}", self.dir.display()))?;
        }
        std::fs::create_dir_all(self.log_dir())?;
        std::fs::write(self.pid_file(), "")?;
        let pki_dir = self.dir.join("pki");
        pki::write_pki(&pki_dir)?;
        let result = self.start_components(&bin, &pki_dir);
        if let Err(err) = result {
            eprintln!("control plane failed to start: {err:#}");
            self.print_logs_hint();
            self.down()?;
            return Err(err);
        }
        eprintln!(
            "control plane ready in {:.1}s\n  export KUBECONFIG={}",
            started.elapsed().as_secs_f64(),
            self.kubeconfig().display()
        );
        Ok(())
    }

    #[allow(clippy::too_many_lines)] // one flat list of components and flags reads best
    fn start_components(&self, bin: &Path, pki_dir: &Path) -> Result<()> {
        let pki = |name: &str| pki_dir.join(name).display().to_string();
        let etcd_port = free_port()?;
        let etcd_peer_port = free_port()?;
        let api_port = free_port()?;
        let server = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = self.kubeconfig();
        std::fs::write(&kubeconfig, pki::admin_kubeconfig(pki_dir, &server))?;
        let kubeconfig_arg = format!("--kubeconfig={}", kubeconfig.display());

        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
        self.spawn(
            "etcd",
            &bin.join("etcd"),
            &[
                "--name=default".into(),
                format!("--data-dir={}", self.dir.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                "--unsafe-no-fsync=true".into(),
                "--quota-backend-bytes=4294967296".into(),
                "--log-level=warn".into(),
            ],
        )?;
        wait_for("etcd", Duration::from_secs(30), || {
            Ok(TcpListener::bind(("127.0.0.1", etcd_port)).is_err())
        })?;

        self.spawn(
            "kube-apiserver",
            &bin.join("kube-apiserver"),
            &[
                format!("--etcd-servers={etcd_url}"),
                format!("--secure-port={api_port}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--cert-dir={}", self.dir.join("apiserver").display()),
                format!("--tls-cert-file={}", pki(pki::SERVING_CERT)),
                format!("--tls-private-key-file={}", pki(pki::SERVING_KEY)),
                format!("--client-ca-file={}", pki(pki::CA_CERT)),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", pki(pki::SA_PUB)),
                format!("--service-account-signing-key-file={}", pki(pki::SA_KEY)),
                "--authorization-mode=Node,RBAC".into(),
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                "--endpoint-reconciler-type=none".into(),
                "--allow-privileged=true".into(),
                "--enable-priority-and-fairness=false".into(),
                "--v=1".into(),
            ],
        )?;
        wait_for("kube-apiserver /readyz", Duration::from_secs(120), || {
            Ok(kubectl(&kubeconfig, &["get", "--raw", "/readyz"]).is_ok())
        })?;

        self.spawn(
            "kube-controller-manager",
            &bin.join("kube-controller-manager"),
            &[
                kubeconfig_arg.clone(),
                format!("--authentication-kubeconfig={}", kubeconfig.display()),
                format!("--authorization-kubeconfig={}", kubeconfig.display()),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()?),
                format!("--root-ca-file={}", pki(pki::CA_CERT)),
                format!("--service-account-private-key-file={}", pki(pki::SA_KEY)),
                "--use-service-account-credentials=false".into(),
                "--concurrent-deployment-syncs=10".into(),
                "--concurrent-replicaset-syncs=10".into(),
                "--v=1".into(),
            ],
        )?;
        self.spawn(
            "kube-scheduler",
            &bin.join("kube-scheduler"),
            &[
                kubeconfig_arg.clone(),
                format!("--authentication-kubeconfig={}", kubeconfig.display()),
                format!("--authorization-kubeconfig={}", kubeconfig.display()),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()?),
                "--v=1".into(),
            ],
        )?;

        let kwok_config = self.dir.join("kwok.yaml");
        std::fs::write(
            &kwok_config,
            stages::kwok_config(&build::kwok_module_dir()?)?,
        )?;
        self.spawn(
            "kwok",
            &bin.join("kwok"),
            &[
                kubeconfig_arg,
                format!("--config={}", kwok_config.display()),
                "--manage-all-nodes=false".into(),
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
                "--cidr=10.244.0.0/16".into(),
                "--node-ip=10.1.0.1".into(),
                format!("--server-address=127.0.0.1:{}", free_port()?),
                "--node-lease-duration-seconds=40".into(),
            ],
        )?;

        kubectl_apply(&kubeconfig, &fake_nodes())?;
        wait_for("fake nodes Ready", Duration::from_secs(60), || {
            let out = kubectl(
                &kubeconfig,
                &[
                    "get",
                    "nodes",
                    "-o",
                    "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
                ],
            )?;
            Ok(out.lines().filter(|l| *l == "True").count() == NODES)
        })?;
        wait_for(
            "the default ServiceAccount (controller-manager running)",
            Duration::from_secs(60),
            || {
                Ok(kubectl(
                    &kubeconfig,
                    &["get", "serviceaccount", "default", "-n", "default"],
                )
                .is_ok())
            },
        )?;
        Ok(())
    }

    fn spawn(&self, name: &str, program: &Path, args: &[String]) -> Result<()> {
        let log = std::fs::File::create(self.log_dir().join(format!("{name}.log")))?;
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                // Its own process group: a Ctrl-C meant for xtask does not reach it, and
                // it outlives `cluster up` until `cluster down`.
                .process_group(0)
                .spawn()
                .with_context(|| format!("starting {}", program.display()))?
        };
        let mut pids = std::fs::read_to_string(self.pid_file()).unwrap_or_default();
        let _ = writeln!(pids, "{name} {}", child.id());
        std::fs::write(self.pid_file(), pids)?;
        Ok(())
    }

    /// Stops every process this cluster started (newest first), and nothing else.
    #[allow(clippy::unnecessary_wraps)] // a command: same shape as `up`
    pub fn down(&self) -> Result<()> {
        let mut pids = self.live_pids();
        pids.reverse();
        for (name, pid) in &pids {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while process_alive(*pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if process_alive(*pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            eprintln!("stopped {name} (pid {pid})");
        }
        if pids.is_empty() {
            eprintln!("no running control plane in {}", self.dir.display());
        }
        let _ = std::fs::remove_file(self.pid_file());
        Ok(())
    }

    pub fn print_logs_hint(&self) {
        eprintln!("component logs:");
        for file in self.log_files() {
            eprintln!("  {}", file.display());
        }
    }
}

fn process_alive(pid: u32) -> bool {
    // /proc/<pid>/stat's third field is the state; Z (zombie) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let started = Instant::now();
    let mut last_error = None;
    while started.elapsed() < timeout {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_error = Some(e),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    match last_error {
        Some(e) => Err(e.context(format!("timed out after {timeout:?} waiting for {what}"))),
        None => bail!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Runs kubectl against the cluster and returns its stdout.
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .output()
        .context("running kubectl (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `kubectl apply -f -` with the given manifest text.
pub fn kubectl_apply(kubeconfig: &Path, manifest: &str) -> Result<String> {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .args(["apply", "--server-side", "--force-conflicts", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running kubectl")?;
    child
        .stdin
        .take()
        .context("kubectl stdin")?
        .write_all(manifest.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn fake_nodes() -> String {
    (0..NODES)
        .map(|i| {
            format!(
                "apiVersion: v1
kind: Node
metadata:
  name: kwok-node-{i}
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: \"0\"
  labels:
    kubernetes.io/hostname: kwok-node-{i}
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    kubernetes.io/role: agent
    type: kwok
spec: {{}}
"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}
