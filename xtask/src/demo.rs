//! `cargo xtask demo`: Stagecoach on a cluster in a few minutes.
//!
//! Uses the cluster in KUBECONFIG when it answers, otherwise brings up the local control
//! plane; installs the CRDs and admission policy, starts the operator, applies
//! `examples/` and shows what the operator made of them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cluster::{Cluster, kubectl};
use crate::workspace_root;

struct OperatorProcess {
    child: Child,
    log: PathBuf,
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
    }
}

/// The kubeconfig to use: KUBECONFIG if its cluster answers, else the local one (started
/// if needed).
fn target_cluster() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("KUBECONFIG").map(PathBuf::from) {
        if kubectl(&path, &["get", "--raw", "/readyz"]).is_ok() {
            eprintln!("using the cluster in KUBECONFIG={}", path.display());
            return Ok(path);
        }
        eprintln!(
            "KUBECONFIG={} does not answer; using the local control plane instead",
            path.display()
        );
    }
    let cluster = Cluster::named("dev");
    if cluster.is_running() {
        eprintln!("using the running local control plane");
    } else {
        eprintln!("starting the local control plane (`cargo xtask cluster down` stops it)");
        cluster.up()?;
    }
    Ok(cluster.kubeconfig())
}

fn cargo_build_operator() -> Result<PathBuf> {
    eprintln!("building the operator");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(workspace_root())
        .args(["build", "--quiet", "-p", "stagecoach-operator"])
        .status()?;
    if !status.success() {
        bail!("building the operator failed");
    }
    Ok(workspace_root().join("target/debug/stagecoach"))
}

fn start_operator(binary: &Path, kubeconfig: &Path) -> Result<OperatorProcess> {
    let dir = workspace_root().join("target/stagecoach-demo");
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("operator.log");
    let file = std::fs::File::create(&log)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(binary)
        .env("KUBECONFIG", kubeconfig)
        .args(["run", "--admin-addr", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .context("starting the operator")?;
    eprintln!(
        "operator started (log {}, metrics http://127.0.0.1:{port}/metrics)",
        log.display()
    );
    Ok(OperatorProcess { child, log })
}

fn apply_dir(kubeconfig: &Path, dir: &Path) -> Result<()> {
    let out = kubectl(
        kubeconfig,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &dir.display().to_string(),
        ],
    )?;
    for line in out.lines() {
        eprintln!("  {line}");
    }
    Ok(())
}

pub fn run(keep_running: bool) -> Result<()> {
    let kubeconfig = target_cluster()?;
    let binary = cargo_build_operator()?;

    eprintln!("\ninstalling the CRDs and the admission policy");
    apply_dir(&kubeconfig, &workspace_root().join("crds"))?;
    kubectl(
        &kubeconfig,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/releases.stagecoach.dev",
            "crd/featuretoggles.stagecoach.dev",
        ],
    )?;

    let operator = start_operator(&binary, &kubeconfig)?;

    eprintln!("\napplying examples/");
    apply_dir(&kubeconfig, &workspace_root().join("examples"))?;

    eprintln!("\nwaiting for the operator to accept every Release and FeatureToggle");
    let started = Instant::now();
    loop {
        let pending = kubectl(
            &kubeconfig,
            &[
                "get",
                "releases,featuretoggles",
                "-n",
                "billing",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Accepted\")].status}{\"\\n\"}{end}",
            ],
        )?;
        if pending.lines().all(|l| !l.ends_with('=')) && !pending.trim().is_empty() {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "the operator did not accept the examples within 60s; see {}",
                operator.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    println!("\n$ kubectl get releases,featuretoggles -n billing");
    print!(
        "{}",
        kubectl(
            &kubeconfig,
            &["get", "releases,featuretoggles", "-n", "billing"]
        )?
    );
    println!("\nconditions set by the operator:");
    print!(
        "{}",
        kubectl(
            &kubeconfig,
            &[
                "get",
                "releases,featuretoggles",
                "-n",
                "billing",
                "-o",
                "custom-columns=KIND:.kind,NAME:.metadata.name,ACCEPTED:.status.conditions[?(@.type==\"Accepted\")].status,REASON:.status.conditions[?(@.type==\"Accepted\")].reason,GENERATION:.status.observedGeneration",
            ],
        )?
    );
    println!("\n$ kubectl get deployments -A -l app=billing-api");
    print!(
        "{}",
        kubectl(
            &kubeconfig,
            &["get", "deployments", "-A", "-l", "app=billing-api"]
        )
        .unwrap_or_default()
    );

    println!(
        "\nexplore: export KUBECONFIG={}\n  kubectl explain release.spec.stages.steps\n  kubectl describe release -n billing billing-2.4.0",
        kubeconfig.display()
    );
    if keep_running {
        println!("the operator keeps running; press Ctrl-C to stop it");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    drop(operator);
    println!("operator stopped; `cargo xtask cluster down` stops the local control plane");
    Ok(())
}
