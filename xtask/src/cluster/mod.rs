//! `cargo xtask cluster up|down|status`: a real Kubernetes control plane on 127.0.0.1.
//!
//! etcd, kube-apiserver, kube-controller-manager and kube-scheduler built from
//! `k8s.io/kubernetes` and `go.etcd.io/etcd/server/v3`, and kwok playing the kubelet for
//! a few fake nodes. Everything lives in one state directory: certificates, data, logs,
//! the kubeconfig, the PIDs of what was started and how each component was started
//! (`commands/<component>.json`, see [`Cluster::spawn`]).
//!
//! Ports: all ports of one cluster are reserved together, each by a listening socket held
//! until right before the component that uses it is spawned ([`PortReservation`]), so two
//! components never get the same port and another process cannot take one meanwhile.
//!
//! While `up` waits for a component, it checks every component it spawned: one that
//! exits fails `up` at once with its exit status and the last lines of its log.
//!
//! `down` stops the recorded PIDs plus every process whose command line names the state
//! directory (every component's flags do: data dir, cert dir, kubeconfig, config), so a
//! component restarted by hand with the same flags is stopped too.

pub mod build;
mod pki;
pub mod stages;

use std::fmt::Write as _;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::workspace_root;

/// Number of fake nodes kwok manages (each node's capacity is kwok's default, 1M pods,
/// so three nodes hold any benchmark's pods).
const NODES: usize = 3;

/// How a control plane is sized: the tests' default, or for the scale benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// What the tests, the demo and the other benchmarks run on.
    #[default]
    Default,
    /// For `cargo xtask bench --scale` (thousands of pods and objects): the
    /// controller-manager's and scheduler's client limits raised from 20/50 requests/s to
    /// 500/1000 (their defaults make 3,000 pods take minutes to create), more
    /// Deployment and ReplicaSet workers, more requests in flight at the API server, and an
    /// audit log of every write (`logs/audit.log`, Metadata level: who wrote what, with
    /// its user agent), which the scale benchmark reads to attribute writes.
    Scale,
}

/// A running (or stopped) control plane's state directory.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub dir: PathBuf,
    profile: Profile,
}

impl Cluster {
    /// The cluster of the given name under `target/stagecoach-cluster/<name>`.
    pub fn named(name: &str) -> Self {
        Self {
            dir: workspace_root()
                .join("target/stagecoach-cluster")
                .join(name),
            profile: Profile::Default,
        }
    }

    /// The same cluster started with `profile` by [`Cluster::up`].
    #[must_use]
    pub fn with_profile(mut self, profile: Profile) -> Self {
        self.profile = profile;
        self
    }

    /// The API server's audit log (only written with [`Profile::Scale`]).
    pub fn audit_log(&self) -> PathBuf {
        self.log_dir().join("audit.log")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("pids")
    }

    /// `commands/<component>.json`: how [`Cluster::spawn`] started that component.
    pub fn command_file(&self, component: &str) -> PathBuf {
        self.dir.join("commands").join(format!("{component}.json"))
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

    /// Live processes of this cluster, named: the recorded PIDs that are still alive, plus
    /// every process whose command line names the state directory (a component restarted
    /// by hand), except this process and its ancestors.
    fn live_processes(&self) -> Vec<(String, u32)> {
        let recorded: Vec<(String, u32)> = std::fs::read_to_string(self.pid_file())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (name, pid) = l.split_once(' ')?;
                Some((name.to_owned(), pid.trim().parse().ok()?))
            })
            .collect();
        let mut found: Vec<(String, u32)> = recorded
            .iter()
            .filter(|(_, pid)| process_alive(*pid))
            .cloned()
            .collect();
        let ours = self_and_ancestors();
        for (pid, argv) in processes_naming(&self.dir) {
            if ours.contains(&pid) || found.iter().any(|(_, p)| *p == pid) {
                continue;
            }
            let name = argv
                .first()
                .and_then(|arg0| Path::new(arg0).file_name())
                .map_or_else(
                    || "process".to_owned(),
                    |n| n.to_string_lossy().into_owned(),
                );
            found.push((name, pid));
        }
        found
    }

    pub fn is_running(&self) -> bool {
        !self.live_processes().is_empty() && self.kubeconfig().exists()
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
        std::fs::create_dir_all(self.dir.join("commands"))?;
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
        let mut ports = PortReservation::new(6)?;
        let [
            etcd_port,
            etcd_peer_port,
            api_port,
            controller_manager_port,
            scheduler_port,
            kwok_port,
        ] = ports.ports()[..]
        else {
            bail!("expected 6 reserved ports");
        };
        let mut components = Components::default();
        let server = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = self.kubeconfig();
        std::fs::write(&kubeconfig, pki::admin_kubeconfig(pki_dir, &server))?;
        let kubeconfig_arg = format!("--kubeconfig={}", kubeconfig.display());

        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
        ports.release(&[etcd_port, etcd_peer_port]);
        components.push(self.spawn(
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
        )?);
        // Connect, not bind: a probing bind could take the port etcd is about to bind.
        wait_for("etcd", Duration::from_secs(30), &mut components, || {
            Ok(TcpStream::connect(("127.0.0.1", etcd_port)).is_ok())
        })?;

        ports.release(&[api_port]);
        let mut apiserver_args = vec![
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
        ];
        if self.profile == Profile::Scale {
            let policy = self.dir.join("audit-policy.yaml");
            std::fs::write(&policy, AUDIT_POLICY)?;
            apiserver_args.extend([
                format!("--audit-policy-file={}", policy.display()),
                format!("--audit-log-path={}", self.audit_log().display()),
                // One plain file, never rotated: the benchmark reads it by offset.
                "--audit-log-maxsize=0".into(),
                "--audit-log-maxbackup=0".into(),
                "--audit-log-maxage=0".into(),
                "--max-requests-inflight=1000".into(),
                "--max-mutating-requests-inflight=500".into(),
            ]);
        }
        components.push(self.spawn(
            "kube-apiserver",
            &bin.join("kube-apiserver"),
            &apiserver_args,
        )?);
        wait_for(
            "kube-apiserver /readyz",
            Duration::from_secs(120),
            &mut components,
            || Ok(kubectl(&kubeconfig, &["get", "--raw", "/readyz"]).is_ok()),
        )?;

        // The scale profile's client limits (the defaults are 20 requests/s, bursts of 30
        // for the controller-manager and 50/100 for the scheduler) and workers.
        let client_limits = || -> Vec<String> {
            match self.profile {
                Profile::Default => Vec::new(),
                Profile::Scale => vec!["--kube-api-qps=500".into(), "--kube-api-burst=1000".into()],
            }
        };
        let workers = match self.profile {
            Profile::Default => "10",
            Profile::Scale => "25",
        };
        ports.release(&[controller_manager_port]);
        let mut controller_manager_args: Vec<String> = vec![
            kubeconfig_arg.clone(),
            format!("--authentication-kubeconfig={}", kubeconfig.display()),
            format!("--authorization-kubeconfig={}", kubeconfig.display()),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={controller_manager_port}"),
            format!("--root-ca-file={}", pki(pki::CA_CERT)),
            format!("--service-account-private-key-file={}", pki(pki::SA_KEY)),
            "--use-service-account-credentials=false".into(),
            format!("--concurrent-deployment-syncs={workers}"),
            format!("--concurrent-replicaset-syncs={workers}"),
            "--v=1".into(),
        ];
        controller_manager_args.extend(client_limits());
        components.push(self.spawn(
            "kube-controller-manager",
            &bin.join("kube-controller-manager"),
            &controller_manager_args,
        )?);
        ports.release(&[scheduler_port]);
        let mut scheduler_args: Vec<String> = vec![
            kubeconfig_arg.clone(),
            format!("--authentication-kubeconfig={}", kubeconfig.display()),
            format!("--authorization-kubeconfig={}", kubeconfig.display()),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={scheduler_port}"),
            "--v=1".into(),
        ];
        scheduler_args.extend(client_limits());
        components.push(self.spawn(
            "kube-scheduler",
            &bin.join("kube-scheduler"),
            &scheduler_args,
        )?);

        let kwok_config = self.dir.join("kwok.yaml");
        std::fs::write(
            &kwok_config,
            stages::kwok_config(&build::kwok_module_dir()?)?,
        )?;
        ports.release(&[kwok_port]);
        components.push(self.spawn(
            "kwok",
            &bin.join("kwok"),
            &[
                kubeconfig_arg,
                format!("--config={}", kwok_config.display()),
                "--manage-all-nodes=false".into(),
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
                "--cidr=10.244.0.0/16".into(),
                "--node-ip=10.1.0.1".into(),
                format!("--server-address=127.0.0.1:{kwok_port}"),
                "--node-lease-duration-seconds=40".into(),
            ],
        )?);

        kubectl_apply(&kubeconfig, &fake_nodes())?;
        wait_for(
            "fake nodes Ready",
            Duration::from_secs(60),
            &mut components,
            || {
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
            },
        )?;
        wait_for(
            "the default ServiceAccount (controller-manager running)",
            Duration::from_secs(60),
            &mut components,
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

    /// Starts one component, its stdout and stderr in `logs/<name>.log`; records its PID
    /// in `pids` and how it was started in `commands/<name>.json`:
    /// `{"program": "<absolute path>", "args": ["--flag=value", ...], "log": "<log file>"}`,
    /// so that a test can restart it with the same flags (appending to the same log).
    fn spawn(&self, name: &str, program: &Path, args: &[String]) -> Result<Spawned> {
        let log_path = self.log_dir().join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)?;
        let command = serde_json::json!({
            "program": program.display().to_string(),
            "args": args,
            "log": log_path.display().to_string(),
        });
        let command_file = self.command_file(name);
        if let Some(parent) = command_file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(
            &command_file,
            serde_json::to_string_pretty(&command)? + "\n",
        )?;
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
        Ok(Spawned {
            name: name.to_owned(),
            child,
            log: log_path,
        })
    }

    /// Stops every process of this cluster (see [`Cluster::live_processes`]), and nothing
    /// else: SIGTERM to all, up to 10 s to exit, then SIGKILL (and up to 5 s more).
    #[allow(clippy::unnecessary_wraps)] // a command: same shape as `up`
    pub fn down(&self) -> Result<()> {
        let mut processes = self.live_processes();
        processes.reverse();
        for (_, pid) in &processes {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while processes.iter().any(|(_, pid)| process_alive(*pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        for (name, pid) in &processes {
            if process_alive(*pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                eprintln!("killed {name} (pid {pid}): still running 10 s after SIGTERM");
            } else {
                eprintln!("stopped {name} (pid {pid})");
            }
        }
        // Gone when this returns, so that its ports and data directory are free again.
        let deadline = Instant::now() + Duration::from_secs(5);
        while processes.iter().any(|(_, pid)| process_alive(*pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if processes.is_empty() {
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

/// Free TCP ports on 127.0.0.1 for one cluster, each held by a listening socket until
/// [`PortReservation::release`].
///
/// Binding port 0 and closing the socket at once, port after port, lets the kernel hand
/// out the same port twice (it did: kube-apiserver got etcd's client port). Here every
/// socket stays open while the next port is chosen, so the ports are distinct, and each
/// stays held until right before its component is spawned, so nothing else on the machine
/// (another cluster starting, say) can take it meanwhile. A socket that only listened
/// leaves no TIME_WAIT behind: the component can bind the port at once.
struct PortReservation {
    held: Vec<(u16, TcpListener)>,
}

impl PortReservation {
    fn new(count: usize) -> Result<Self> {
        let mut held = Vec::with_capacity(count);
        for _ in 0..count {
            let listener = TcpListener::bind(("127.0.0.1", 0)).context("reserving a free port")?;
            held.push((listener.local_addr()?.port(), listener));
        }
        Ok(Self { held })
    }

    /// The reserved ports, in the order they were reserved (distinct).
    fn ports(&self) -> Vec<u16> {
        self.held.iter().map(|(port, _)| *port).collect()
    }

    /// Closes the sockets holding `ports`, right before spawning what binds them.
    fn release(&mut self, ports: &[u16]) {
        self.held.retain(|(port, _)| !ports.contains(port));
    }
}

/// A component started by this `up`.
struct Spawned {
    name: String,
    child: Child,
    log: PathBuf,
}

/// The components started so far by one `up`, watched while waiting for the next step.
#[derive(Default)]
struct Components(Vec<Spawned>);

impl Components {
    fn push(&mut self, spawned: Spawned) {
        self.0.push(spawned);
    }

    /// Fails with the name, exit status and last log lines of a component that exited.
    fn check_running(&mut self) -> Result<()> {
        for component in &mut self.0 {
            if let Some(status) = component.child.try_wait()? {
                bail!(
                    "{} exited ({status}); the last lines of {}:\n{}",
                    component.name,
                    component.log.display(),
                    last_lines(&component.log, 20)
                );
            }
        }
        Ok(())
    }
}

/// The last `count` lines of a file (of its last 64 KiB), or why it cannot be read.
fn last_lines(path: &Path, count: usize) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(count);
            lines[start..]
                .iter()
                .map(|line| format!("    {line}"))
                .collect::<Vec<_>>()
                .join("\n")
        }
        Err(error) => format!("    (cannot read it: {error})"),
    }
}

/// Polls `check` until it says yes, failing after `timeout`, or at once when one of
/// `components` has exited.
fn wait_for(
    what: &str,
    timeout: Duration,
    components: &mut Components,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let started = Instant::now();
    let mut last_error = None;
    while started.elapsed() < timeout {
        components
            .check_running()
            .with_context(|| format!("while waiting for {what}"))?;
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

/// Whether one argument names `dir` or a path under it: `dir` at the start of the argument
/// or after a character that cannot be part of a path (`--kubeconfig=<dir>/kubeconfig`),
/// followed by `/` or the end (so `.../test` does not match `.../test2`).
fn arg_names_dir(arg: &[u8], dir: &[u8]) -> bool {
    if dir.is_empty() || arg.len() < dir.len() {
        return false;
    }
    let path_byte = |b: u8| b.is_ascii_alphanumeric() || b"/._-~".contains(&b);
    (0..=arg.len() - dir.len()).any(|at| {
        arg[at..].starts_with(dir)
            && (at == 0 || !path_byte(arg[at - 1]))
            && matches!(arg.get(at + dir.len()), None | Some(b'/'))
    })
}

/// Live processes (PID and argv) with an argument that names `dir` or a path under it.
fn processes_naming(dir: &Path) -> Vec<(u32, Vec<String>)> {
    use std::os::unix::ffi::OsStrExt;
    let dir = dir.as_os_str().as_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<(u32, Vec<String>)> = entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let argv: Vec<&[u8]> = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .collect();
            (argv.iter().any(|arg| arg_names_dir(arg, dir)) && process_alive(pid)).then(|| {
                let argv = argv
                    .iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                (pid, argv)
            })
        })
        .collect();
    found.sort_by_key(|(pid, _)| *pid);
    found
}

/// This process and its ancestors, never to be stopped by `down`.
fn self_and_ancestors() -> Vec<u32> {
    let mut pids = vec![std::process::id()];
    while let Some(parent) = std::fs::read_to_string(format!("/proc/{}/stat", pids[pids.len() - 1]))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace().nth(1)?.parse::<u32>().ok()
        })
        .filter(|ppid| *ppid > 1 && !pids.contains(ppid))
    {
        pids.push(parent);
    }
    pids
}

/// The scale profile's audit policy: every write (who, what, user agent, response code)
/// at Metadata level, no reads, no request or response bodies.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: None
";

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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A fresh, empty state directory under the system temp dir.
    fn temp_cluster(label: &str) -> Cluster {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "xtask-cluster-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        Cluster {
            dir,
            profile: Profile::Default,
        }
    }

    #[test]
    fn reserved_ports_are_distinct_and_held_until_released() {
        // Binding port 0 and closing, six times, repeated a port in about 1 of 500 picks.
        for _ in 0..2000 {
            let reservation = PortReservation::new(6).unwrap();
            let mut ports = reservation.ports();
            assert!(ports.iter().all(|p| *p != 0), "{ports:?}");
            ports.sort_unstable();
            ports.dedup();
            assert_eq!(ports.len(), 6, "{:?}", reservation.ports());
        }
        let mut reservation = PortReservation::new(2).unwrap();
        let [first, second] = reservation.ports()[..] else {
            unreachable!()
        };
        assert!(TcpListener::bind(("127.0.0.1", first)).is_err(), "held");
        reservation.release(&[first]);
        // Released: the component can bind it at once; the other one is still held.
        drop(TcpListener::bind(("127.0.0.1", first)).unwrap());
        assert!(
            TcpListener::bind(("127.0.0.1", second)).is_err(),
            "still held"
        );
    }

    #[test]
    fn a_component_that_exits_fails_the_wait_at_once_with_its_log() {
        let cluster = temp_cluster("exit");
        let mut components = Components::default();
        components.push(
            cluster
                .spawn(
                    "fake-etcd",
                    Path::new("/bin/sh"),
                    &[
                        "-c".into(),
                        "for i in $(seq 1 30); do echo line $i; done; echo boom >&2; exit 3".into(),
                    ],
                )
                .unwrap(),
        );
        let started = Instant::now();
        let error = wait_for("the fake", Duration::from_secs(60), &mut components, || {
            Ok(false)
        })
        .unwrap_err();
        let text = format!("{error:#}");
        assert!(started.elapsed() < Duration::from_secs(5), "{text}");
        assert!(text.contains("fake-etcd exited"), "{text}");
        assert!(text.contains("exit status: 3"), "{text}");
        assert!(text.contains("boom"), "{text}");
        assert!(text.contains("waiting for the fake"), "{text}");
        // The last 20 lines only.
        assert!(
            text.contains("line 30") && !text.contains("line 10\n"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&cluster.dir);
    }

    #[test]
    fn spawn_records_the_command_line() {
        let cluster = temp_cluster("command");
        let mut spawned = cluster
            .spawn(
                "fake",
                Path::new("/bin/sh"),
                &["-c".into(), "exit 0".into(), "--flag=a b".into()],
            )
            .unwrap();
        spawned.child.wait().unwrap();
        let command: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(cluster.command_file("fake")).unwrap())
                .unwrap();
        assert_eq!(
            command,
            serde_json::json!({
                "program": "/bin/sh",
                "args": ["-c", "exit 0", "--flag=a b"],
                "log": cluster.log_dir().join("fake.log").display().to_string(),
            })
        );
        let pids = std::fs::read_to_string(cluster.pid_file()).unwrap();
        assert_eq!(pids, format!("fake {}\n", spawned.child.id()));
        let _ = std::fs::remove_dir_all(&cluster.dir);
    }

    #[test]
    fn args_name_the_state_directory() {
        let dir = b"/w/target/stagecoach-cluster/test";
        for arg in [
            &b"/w/target/stagecoach-cluster/test"[..],
            b"--kubeconfig=/w/target/stagecoach-cluster/test/kubeconfig",
            b"--data-dir=/w/target/stagecoach-cluster/test/etcd",
            b"/w/target/stagecoach-cluster/test/marker",
        ] {
            assert!(arg_names_dir(arg, dir), "{}", String::from_utf8_lossy(arg));
        }
        for arg in [
            &b"/w/target/stagecoach-cluster/test2/kubeconfig"[..],
            b"--kubeconfig=/x/w/target/stagecoach-cluster/test/kubeconfig",
            b"/w/target/stagecoach-cluster",
            b"test",
        ] {
            assert!(!arg_names_dir(arg, dir), "{}", String::from_utf8_lossy(arg));
        }
    }

    /// A component restarted by hand (same flags, a PID `up` never recorded) is found by
    /// its command line and stopped by `down`; an unrelated process is left alone.
    #[test]
    fn down_stops_a_component_restarted_by_hand() {
        let cluster = temp_cluster("down");
        let flag = format!("--kubeconfig={}", cluster.kubeconfig().display());
        let script = "while :; do sleep 1; done";
        let mut recorded = cluster
            .spawn(
                "fake-apiserver",
                Path::new("/bin/sh"),
                &["-c".into(), script.into(), "sh".into(), flag.clone()],
            )
            .unwrap();
        // Restarted by hand from commands/fake-apiserver.json: stop, start again.
        let _ = Command::new("kill")
            .args(["-KILL", &recorded.child.id().to_string()])
            .status();
        recorded.child.wait().unwrap();
        let command: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(cluster.command_file("fake-apiserver")).unwrap(),
        )
        .unwrap();
        let args: Vec<String> = serde_json::from_value(command["args"].clone()).unwrap();
        let mut restarted = Command::new(command["program"].as_str().unwrap())
            .args(&args)
            .spawn()
            .unwrap();
        let mut bystander = Command::new("/bin/sh")
            .args(["-c", script, "sh", "--kubeconfig=/elsewhere/kubeconfig"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(process_alive(restarted.id()));

        cluster.down().unwrap();
        let stopped = restarted.try_wait().unwrap();
        let bystander_stopped = bystander.try_wait().unwrap();
        for child in [&mut restarted, &mut bystander] {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&cluster.dir);
        assert!(
            stopped.is_some(),
            "the restarted component is still running"
        );
        assert!(bystander_stopped.is_none(), "stopped a bystander");
    }
}
