//! `cargo xtask demo`: Stagecoach on a cluster in a few minutes.
//!
//! Uses the cluster in KUBECONFIG when it answers, otherwise brings up the local control
//! plane; installs the CRDs and admission policy, starts the operator, applies
//! `examples/` and shows what the operator made of them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cluster::{Cluster, kubectl};
use crate::workspace_root;

struct OperatorProcess {
    child: Child,
    log: PathBuf,
    /// Where the operator serves OFREP.
    ofrep: SocketAddr,
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
    let cluster = Cluster::named("demo");
    if cluster.is_running() {
        eprintln!("using the running local control plane");
    } else {
        eprintln!(
            "starting the local control plane (`cargo xtask cluster down --name demo` stops it)"
        );
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
    let free =
        || -> Result<SocketAddr> { Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?) };
    let (admin, ofrep) = (free()?, free()?);
    let port = admin.port();
    let child = Command::new(binary)
        .env("KUBECONFIG", kubeconfig)
        .args(["run", "--admin-addr", &admin.to_string()])
        .args(["--ofrep-addr", &ofrep.to_string()])
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .context("starting the operator")?;
    eprintln!(
        "operator started (log {}, metrics http://127.0.0.1:{port}/metrics, OFREP http://{ofrep})",
        log.display()
    );
    Ok(OperatorProcess { child, log, ofrep })
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

/// (name, phase, one-line progress) of every Release.
fn release_lines(kubeconfig: &Path) -> Result<Vec<(String, String, String)>> {
    let json = kubectl(kubeconfig, &["get", "releases", "-A", "-o", "json"])?;
    let list: serde_json::Value = serde_json::from_str(&json)?;
    let mut out = Vec::new();
    for item in list["items"].as_array().into_iter().flatten() {
        let name = item["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let phase = item["status"]["phase"]
            .as_str()
            .unwrap_or("Pending")
            .to_owned();
        let stages: Vec<String> = item["status"]["stages"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let stage = s["name"].as_str().unwrap_or_default();
                let mark = match s["phase"].as_str().unwrap_or_default() {
                    "Succeeded" => "ok".to_owned(),
                    "Progressing" => format!("{}%", s["weight"].as_i64().unwrap_or(0)),
                    "EarlyLifeSupport" => "ELS".to_owned(),
                    "RolledBack" => "ROLLED BACK".to_owned(),
                    "Skipped" => "skipped".to_owned(),
                    _ => "..".to_owned(),
                };
                format!("{stage} {mark}")
            })
            .collect();
        out.push((
            name,
            phase.clone(),
            format!("{} | {}", stages.join(" > "), phase),
        ));
    }
    out.sort();
    Ok(out)
}

/// The OFREP base path of a stage of the example application `billing`, whose toggles
/// and Releases live in namespace `billing`.
fn ofrep_base(stage: &str) -> String {
    format!("/apps/billing/billing/stages/{stage}")
}

/// What an OpenFeature client of `stage` asking for `flag` as `client` gets: the variant
/// and OFREP's reason, or the error code. Plain HTTP/1.0 over loopback, as any OFREP
/// provider would send it.
fn ofrep_evaluate(ofrep: SocketAddr, stage: &str, flag: &str, client: &str) -> String {
    let body = serde_json::json!({"context": {"targetingKey": format!("user-of-{client}"), "clientId": client}}).to_string();
    let request = format!(
        "POST {}/ofrep/v1/evaluate/flags/{flag} HTTP/1.0\r\nHost: {ofrep}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        ofrep_base(stage),
        body.len()
    );
    let answer = (|| -> Result<serde_json::Value> {
        let mut stream = TcpStream::connect_timeout(&ofrep, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(request.as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let (_, body) = response.split_once("\r\n\r\n").context("no HTTP body")?;
        Ok(serde_json::from_str(body)?)
    })();
    match answer {
        Ok(v) if v["variant"].is_string() => format!(
            "{} ({})",
            v["variant"].as_str().unwrap_or_default(),
            v["reason"].as_str().unwrap_or_default()
        ),
        Ok(v) => v["errorCode"].as_str().unwrap_or("?").to_owned(),
        Err(_) => "unreachable".to_owned(),
    }
}

/// The demo's view of toggle `new-invoice-ui` through OFREP: in demo, listed client acme
/// and unlisted client initech (outside the 20 % split); in prod, acme, whose rule waits
/// for billing-2.4.0 to reach prod.
fn toggle_line(ofrep: SocketAddr) -> String {
    let flag = "new-invoice-ui";
    format!(
        "toggle {flag}: demo: acme {}, initech {} | prod: acme {}",
        ofrep_evaluate(ofrep, "demo", flag, "acme"),
        ofrep_evaluate(ofrep, "demo", flag, "initech"),
        ofrep_evaluate(ofrep, "prod", flag, "acme"),
    )
}

/// Prints a line per release whenever one changes (and one for the demo toggle as an
/// OpenFeature client sees it), until `done` or 5 minutes.
fn watch_releases(
    kubeconfig: &Path,
    operator: &OperatorProcess,
    started: Instant,
    done: impl Fn(&[(String, String, String)], &str) -> bool,
) -> Result<()> {
    let mut last = Vec::new();
    let mut last_toggle = String::new();
    loop {
        let toggle = toggle_line(operator.ofrep);
        if toggle != last_toggle {
            println!("[{:>4}s] {toggle}", started.elapsed().as_secs());
            last_toggle = toggle;
        }
        let lines = release_lines(kubeconfig)?;
        if lines != last {
            for (name, _, progress) in &lines {
                if !last.iter().any(|(n, _, p)| n == name && p == progress) {
                    println!(
                        "[{:>4}s] {name:<15} {progress}",
                        started.elapsed().as_secs()
                    );
                }
            }
            last = lines;
        }
        if done(&last, &last_toggle) {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!(
                "the releases did not get there within 5 minutes; operator log {}",
                operator.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
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

    eprintln!("\nwatching the releases travel (dev -> qa -> demo -> prod)");
    let started = Instant::now();
    watch_releases(&kubeconfig, &operator, started, |releases, toggle| {
        ["billing-2.4.0", "reports-1.8.0"].iter().all(|name| {
            releases.iter().any(|(n, phase, _)| {
                n == name && matches!(phase.as_str(), "EarlyLifeSupport" | "Succeeded")
            })
        }) && toggle.contains("prod: acme on")
    })?;

    eprintln!("\napplying examples/failing/: billing-2.5.0, whose image crash-loops");
    apply_dir(&kubeconfig, &workspace_root().join("examples/failing"))?;
    watch_releases(&kubeconfig, &operator, Instant::now(), |releases, _| {
        releases
            .iter()
            .any(|(n, phase, _)| n == "billing-2.5.0" && phase == "RolledBack")
    })?;

    show_results(&kubeconfig)?;
    if keep_running {
        println!(
            "  curl -s -X POST http://{}{}/ofrep/v1/evaluate/flags/new-invoice-ui -d '{{\"context\":{{\"targetingKey\":\"u1\",\"clientId\":\"acme\"}}}}'",
            operator.ofrep,
            ofrep_base("demo")
        );
        println!("the operator keeps running; press Ctrl-C to stop it");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    drop(operator);
    println!(
        "operator stopped; `cargo xtask cluster down --name demo` stops the local control plane"
    );
    Ok(())
}

/// What the operator made of the examples: releases, toggles, the rollback's reason,
/// images per stage, and a flag set as flagd reads it.
fn show_results(kubeconfig: &Path) -> Result<()> {
    println!("\n$ kubectl get releases -A");
    print!("{}", kubectl(kubeconfig, &["get", "releases", "-A"])?);
    println!("\n$ kubectl get featuretoggles -A");
    print!("{}", kubectl(kubeconfig, &["get", "featuretoggles", "-A"])?);
    println!("\nwhy billing-2.5.0 was rolled back:");
    print!(
        "{}",
        kubectl(
            kubeconfig,
            &[
                "get",
                "release",
                "-n",
                "billing",
                "billing-2.5.0",
                "-o",
                "jsonpath={range .status.rollbacks[*]}  {.stage}: {.reason}: {.message}{\"\\n\"}{end}"
            ],
        )?
    );
    println!("\n$ kubectl get deployments -A -l app=billing-api (images)");
    print!(
        "{}",
        kubectl(
            kubeconfig,
            &["get", "deployments", "-A", "-o", "custom-columns=NAMESPACE:.metadata.namespace,NAME:.metadata.name,READY:.status.readyReplicas,IMAGE:.spec.template.spec.containers[0].image"],
        )
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("NAMESPACE") || l.contains("billing"))
        .fold(String::new(), |mut out, line| {
            out.push_str(line);
            out.push('\n');
            out
        })
    );

    println!(
        "\nthe flag set flagd reads in billing-demo (ConfigMap stagecoach-flags), new-invoice-ui:"
    );
    let flags = kubectl(
        kubeconfig,
        &[
            "get",
            "configmap",
            "-n",
            "billing-demo",
            "stagecoach-flags",
            "-o",
            "jsonpath={.data.flags\\.json}",
        ],
    )
    .unwrap_or_default();
    let flag = serde_json::from_str::<serde_json::Value>(&flags).map_or_else(
        |_| "(not found)".into(),
        |set| serde_json::to_string(&set["flags"]["new-invoice-ui"]).unwrap_or_default(),
    );
    println!("  {flag}");

    println!(
        "\nexplore: export KUBECONFIG={}\n  kubectl explain release.spec.stages.steps\n  kubectl describe release -n billing billing-2.5.0\n  kubectl describe featuretoggle -n billing new-invoice-ui\n  target/debug/kubectl-stagecoach -n billing history billing-2.4.0",
        kubeconfig.display()
    );
    Ok(())
}
