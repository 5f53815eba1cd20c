//! `cargo xtask demo`: Stagecoach on a cluster in a few minutes.
//!
//! Uses the cluster in KUBECONFIG when it answers, otherwise brings up the local control
//! plane; installs the CRDs and admission policy, starts the operator, applies
//! `examples/` and shows what the operator made of them, in four acts: two releases
//! travel, a failing one is rolled back, the policy of `examples/policy/` (approvals
//! checked by the API server, a release window) holds releases back while a webhook the
//! demo runs itself hears about every event of payments' releases, and the gates of
//! `examples/gates/` (a Job in qa, Prometheus in prod) roll a release back during its
//! early life support.

mod gates;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;

use crate::cluster::{Cluster, kubectl, kubectl_apply};
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

/// Builds the operator and the kubectl plugin (the policy act approves with it): their
/// paths.
fn cargo_build() -> Result<(PathBuf, PathBuf)> {
    eprintln!("building the operator and the kubectl plugin");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(workspace_root())
        .args(["build", "--quiet", "-p", "stagecoach-operator"])
        .args(["-p", "kubectl-stagecoach"])
        .status()?;
    if !status.success() {
        bail!("building the operator and the plugin failed");
    }
    let bin = workspace_root().join("target/debug");
    Ok((bin.join("stagecoach"), bin.join("kubectl-stagecoach")))
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

/// (name, phase, one-line progress) of every Release, or of those named in `only`.
fn release_lines(
    kubeconfig: &Path,
    only: Option<&[&str]>,
) -> Result<Vec<(String, String, String)>> {
    let json = kubectl(kubeconfig, &["get", "releases", "-A", "-o", "json"])?;
    let list: serde_json::Value = serde_json::from_str(&json)?;
    let mut out = Vec::new();
    for item in list["items"].as_array().into_iter().flatten() {
        let name = item["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if only.is_some_and(|only| !only.contains(&name.as_str())) {
            continue;
        }
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
                    "Rejected" => "REJECTED".to_owned(),
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

/// Prints a line per release whenever one changes, until `done` or 5 minutes. With
/// `only`, just the releases it names; without, every release and a line for the demo
/// toggle as an OpenFeature client sees it.
fn watch_releases(
    kubeconfig: &Path,
    operator: &OperatorProcess,
    only: Option<&[&str]>,
    started: Instant,
    done: impl Fn(&[(String, String, String)], &str) -> bool,
) -> Result<()> {
    let mut last = Vec::new();
    let mut last_toggle = String::new();
    loop {
        if only.is_none() {
            let toggle = toggle_line(operator.ofrep);
            if toggle != last_toggle {
                println!("[{:>4}s] {toggle}", started.elapsed().as_secs());
                last_toggle = toggle;
            }
        }
        let lines = release_lines(kubeconfig, only)?;
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
    let (binary, plugin) = cargo_build()?;

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
            "crd/pipelines.stagecoach.dev",
            "crd/approvals.stagecoach.dev",
        ],
    )?;

    let operator = start_operator(&binary, &kubeconfig)?;

    eprintln!("\n=== act 1: two releases travel ===");
    eprintln!("applying examples/");
    apply_dir(&kubeconfig, &workspace_root().join("examples"))?;

    eprintln!("\nwatching the releases travel (dev -> qa -> demo -> prod)");
    let started = Instant::now();
    watch_releases(&kubeconfig, &operator, None, started, |releases, toggle| {
        ["billing-2.4.0", "reports-1.8.0"].iter().all(|name| {
            releases.iter().any(|(n, phase, _)| {
                n == name && matches!(phase.as_str(), "EarlyLifeSupport" | "Succeeded")
            })
        }) && toggle.contains("prod: acme on")
    })?;

    eprintln!("\n=== act 2: a rollback ===");
    eprintln!("applying examples/failing/: billing-2.5.0, whose image crash-loops");
    apply_dir(&kubeconfig, &workspace_root().join("examples/failing"))?;
    watch_releases(
        &kubeconfig,
        &operator,
        None,
        Instant::now(),
        |releases, _| {
            releases
                .iter()
                .any(|(n, phase, _)| n == "billing-2.5.0" && phase == "RolledBack")
        },
    )?;

    policy_act(&kubeconfig, &plugin, &operator)?;
    gates::gates_act(&kubeconfig, &operator)?;

    show_results(&kubeconfig)?;
    // What outlives the Releases: their audit records, as release notes for clients
    // (releases still in early life support have none yet).
    println!("\nrelease notes from the audit records (immutable ConfigMaps):");
    for application in ["billing", "payments", "orders"] {
        run_plugin(
            &plugin,
            &kubeconfig,
            None,
            &[
                "-n",
                application,
                "changelog",
                application,
                "--format",
                "markdown",
            ],
        )?;
    }
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
    println!("\n$ kubectl get pipelines -A");
    print!("{}", kubectl(kubeconfig, &["get", "pipelines", "-A"])?);
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
        "\nexplore: export KUBECONFIG={}\n  kubectl explain release.spec.stages.steps\n  kubectl describe release -n billing billing-2.5.0\n  kubectl describe featuretoggle -n billing new-invoice-ui\n  target/debug/kubectl-stagecoach -n billing history billing-2.4.0\n  kubectl get pipelines -A; kubectl explain pipeline.spec.releaseTypes\n  kubectl get approvals -n payments -o wide\n  target/debug/kubectl-stagecoach -n payments status payments-3.2.0\n  target/debug/kubectl-stagecoach -n ledger status ledger-2.0.0\n  kubectl describe release -n payments payments-3.3.0\n  kubectl get pipeline -n orders orders -o yaml   # the gates\n  kubectl get release -n orders orders-1.0.0 -o jsonpath='{{.status.rollbacks}}'\n  target/debug/kubectl-stagecoach -n orders status orders-1.0.0",
        kubeconfig.display()
    );
    Ok(())
}

// ----- act 3: the policy -------------------------------------------------------------

/// The home namespaces of the policy act's applications (payments, ledger).
const POLICY_NAMESPACES: [&str; 2] = ["payments", "ledger"];
/// The release of payments that waits for approval into prod.
const APPROVED: &str = "payments-3.2.0";
/// The next release of payments, rejected at prod.
const REJECTED: &str = "payments-3.3.0";
/// The major release of ledger that waits for its window.
const MAJOR: &str = "ledger-2.0.0";

/// Where the demo keeps the Releases and Pipelines of the policy act as they were in
/// their waiting states (YAML, as `kubectl get -o yaml` prints them).
fn snapshot_dir() -> PathBuf {
    workspace_root().join("target/stagecoach-demo/policy")
}

/// Tomorrow's day of the week in UTC, as a Pipeline window names it. A window that opens
/// at 06:00 Stockholm time on that day is at least four hours away (Stockholm is one or
/// two hours ahead of UTC), so it stays closed while the demo runs.
fn tomorrow_utc() -> &'static str {
    // Day 0 of the Unix epoch, 1970-01-01, was a Thursday.
    const FROM_THURSDAY: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    FROM_THURSDAY[usize::try_from((days + 1) % 7).unwrap_or_default()]
}

/// A Release as JSON.
fn release_json(kubeconfig: &Path, namespace: &str, name: &str) -> Result<serde_json::Value> {
    let json = kubectl(
        kubeconfig,
        &["get", "release", "-n", namespace, name, "-o", "json"],
    )?;
    Ok(serde_json::from_str(&json)?)
}

/// The Ready condition of a Release: "Ready=False AwaitingApproval: stage prod needs ...".
fn ready_line(release: &serde_json::Value) -> String {
    release["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .map_or_else(
            || "(no Ready condition yet)".to_owned(),
            |c| {
                format!(
                    "Ready={} {}: {}",
                    c["status"].as_str().unwrap_or_default(),
                    c["reason"].as_str().unwrap_or_default(),
                    c["message"].as_str().unwrap_or_default()
                )
            },
        )
}

/// Polls a Release until `ok` holds, for at most `timeout`.
fn wait_release(
    kubeconfig: &Path,
    namespace: &str,
    name: &str,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let release = release_json(kubeconfig, namespace, name)?;
        if ok(&release) {
            return Ok(release);
        }
        if Instant::now() > deadline {
            bail!(
                "release {name} did not get to {what} within {}s; it is at: {}",
                timeout.as_secs(),
                ready_line(&release)
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Whether the Ready condition's message contains `text`.
fn ready_says(release: &serde_json::Value, text: &str) -> bool {
    ready_line(release).contains(text)
}

/// Writes `kubectl get <what> -o yaml` into the snapshot directory as `file`.
fn snapshot(kubeconfig: &Path, args: &[&str], file: &str) -> Result<()> {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend(["-o", "yaml"]);
    let yaml = kubectl(kubeconfig, &all)?;
    std::fs::write(snapshot_dir().join(file), yaml)?;
    Ok(())
}

/// Runs the kubectl plugin, as `user` if given (impersonated: the demo's kubeconfig is
/// the cluster's administrator), printing the command and everything it said. Whether it
/// succeeded.
fn run_plugin(plugin: &Path, kubeconfig: &Path, user: Option<&str>, args: &[&str]) -> Result<bool> {
    let mut all: Vec<&str> = user.map_or_else(Vec::new, |u| vec!["--as", u]);
    all.extend_from_slice(args);
    let shown: Vec<String> = all
        .iter()
        .map(|a| {
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                (*a).to_owned()
            }
        })
        .collect();
    println!("$ kubectl stagecoach {}", shown.join(" "));
    let out = Command::new(plugin)
        .env("KUBECONFIG", kubeconfig)
        .args(&all)
        .output()
        .context("running the kubectl plugin")?;
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        println!("  {line}");
    }
    Ok(out.status.success())
}

/// `user` approves stage prod of a payments release with the plugin, which must succeed.
fn approve_as(
    plugin: &Path,
    kubeconfig: &Path,
    user: &str,
    release: &str,
    comment: &str,
) -> Result<()> {
    let args = [
        "-n", "payments", "approve", release, "--stage", "prod", "-m", comment,
    ];
    if !run_plugin(plugin, kubeconfig, Some(user), &args)? {
        bail!("{user}'s approval was refused (see above)");
    }
    Ok(())
}

/// A previous run's policy act undone: its Releases and Approvals deleted (the operator
/// lets them go), so this run starts from the same place.
fn reset_policy_act(kubeconfig: &Path) -> Result<()> {
    for namespace in POLICY_NAMESPACES {
        kubectl(
            kubeconfig,
            &[
                "delete",
                "releases,approvals",
                "-n",
                namespace,
                "--all",
                "--ignore-not-found",
                "--timeout=60s",
            ],
        )?;
    }
    Ok(())
}

/// A notification receiver of a Pipeline in examples/policy/, as the demo pointed it at
/// its own.
struct Hook {
    name: String,
    /// The path of its URL, which the demo keeps: posts to it are this receiver's.
    path: String,
    slack: bool,
    /// The Secret it names and the token that Secret holds (from the examples).
    signing: Option<(String, String)>,
}

/// Applies examples/policy/ file by file, in name order; windows in a Pipeline are moved
/// to `day`, so that a major release certainly waits while the demo runs, and the webhook
/// of each notification receiver is pointed at `receiver` (the path kept).
fn apply_policy_examples(kubeconfig: &Path, day: &str, receiver: SocketAddr) -> Result<Vec<Hook>> {
    let dir = workspace_root().join("examples/policy");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.retain(|f| f.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    // (Secret, key) -> value, from the Secrets' stringData.
    let mut secrets = BTreeMap::new();
    // Each receiver with the (Secret, key) it names.
    let mut hooks = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let mut manifest = String::new();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let mut doc = Value::deserialize(document)
                .with_context(|| format!("reading {}", file.display()))?;
            if doc["kind"] == "Secret" {
                let name = text_of(&doc["metadata"]["name"]);
                for (key, value) in doc["stringData"].as_object().into_iter().flatten() {
                    let value = value.as_str().unwrap_or_default().trim().to_owned();
                    secrets.insert((name.clone(), key.clone()), value);
                }
            }
            if doc["kind"] == "Pipeline" {
                for kind in ["patch", "minor", "major"] {
                    let windows = doc
                        .pointer_mut(&format!("/spec/releaseTypes/{kind}/windows"))
                        .and_then(Value::as_array_mut);
                    for window in windows.into_iter().flatten() {
                        window["days"] = serde_json::json!([day]);
                    }
                }
                let receivers = doc
                    .pointer_mut("/spec/notifications")
                    .and_then(Value::as_array_mut);
                for hook in receivers.into_iter().flatten() {
                    let url = text_of(&hook["webhook"]["url"]);
                    let path = url
                        .split_once("://")
                        .and_then(|(_, rest)| rest.find('/').map(|at| rest[at..].to_owned()))
                        .unwrap_or_else(|| "/".to_owned());
                    let local = format!("http://{receiver}{path}");
                    eprintln!("  (receiver {url} moved to the demo's: {local})");
                    hook["webhook"]["url"] = Value::String(local);
                    let secret = &hook["webhook"]["secretRef"];
                    let secret = secret["name"].as_str().zip(secret["key"].as_str());
                    hooks.push((
                        Hook {
                            name: text_of(&hook["name"]),
                            path,
                            slack: hook["webhook"]["format"] == "slack",
                            signing: None,
                        },
                        secret.map(|(n, k)| (n.to_owned(), k.to_owned())),
                    ));
                }
            }
            manifest.push_str("---\n");
            manifest.push_str(&serde_yaml::to_string(&doc)?);
        }
        for line in kubectl_apply(kubeconfig, &manifest)?.lines() {
            eprintln!("  {line}");
        }
    }
    Ok(hooks
        .into_iter()
        .map(|(mut hook, secret)| {
            hook.signing = secret.and_then(|(name, key)| {
                let token = secrets.get(&(name.clone(), key))?.clone();
                Some((name, token))
            });
            hook
        })
        .collect())
}

/// Act three: what a Pipeline holds releases to, on the real control plane. payments
/// needs two approvals for prod; ledger lets a major release into prod only in a window.
fn policy_act(kubeconfig: &Path, plugin: &Path, operator: &OperatorProcess) -> Result<()> {
    eprintln!("\n=== act 3: the policy ===");
    eprintln!(
        "payments' Pipeline wants two approvals for prod (RBAC: rita and sam may approve, \
         dave may not) and tells a webhook about every event;\nledger's lets a major \
         release into prod only in its window"
    );
    reset_policy_act(kubeconfig)?;
    let day = tomorrow_utc();
    eprintln!(
        "\napplying examples/policy/ (ledger's window moved to tomorrow, {day}, so it is \
         closed while the demo runs)"
    );
    let receiver = Receiver::start()?;
    let hooks = apply_policy_examples(kubeconfig, day, receiver.addr)?;
    std::fs::create_dir_all(snapshot_dir())?;

    eprintln!("\nwatching {APPROVED} and {MAJOR} travel until the policy holds them");
    watch_releases(
        kubeconfig,
        operator,
        Some(&[APPROVED, MAJOR]),
        Instant::now(),
        |releases, _| {
            let at =
                |name: &str, phase: &str| releases.iter().any(|(n, p, _)| n == name && p == phase);
            at(APPROVED, "AwaitingApproval") && at(MAJOR, "WaitingForWindow")
        },
    )?;
    for app in POLICY_NAMESPACES {
        snapshot(
            kubeconfig,
            &["pipeline", "-n", app, app],
            &format!("pipeline-{app}.yaml"),
        )?;
    }

    awaiting_approval(kubeconfig, plugin)?;
    approved(kubeconfig, plugin, operator)?;
    rejected(kubeconfig, plugin, operator)?;
    waiting_for_window(kubeconfig, plugin)?;
    notifications_received(kubeconfig, &receiver, &hooks)?;
    eprintln!(
        "\nthe policy act's releases and pipelines as they were while waiting: {}",
        snapshot_dir().display()
    );
    Ok(())
}

/// Steps 1-3 of the policy act: payments-3.2.0 waits for approval into prod, dave is
/// refused by the API server, and rita's approval stops counting when the image changes.
fn awaiting_approval(kubeconfig: &Path, plugin: &Path) -> Result<()> {
    eprintln!("\n(1) {APPROVED} waits for approval into prod; its Ready condition:");
    let release = release_json(kubeconfig, "payments", APPROVED)?;
    println!("  {}", ready_line(&release));
    snapshot(
        kubeconfig,
        &["release", "-n", "payments", APPROVED],
        "release-awaiting-approval.yaml",
    )?;

    eprintln!(
        "\n(2) dave, who wrote its change and has no right to approve prod, tries anyway; the \
         API server refuses"
    );
    let args = [
        "-n", "payments", "approve", APPROVED, "--stage", "prod", "-m", "LGTM",
    ];
    if run_plugin(plugin, kubeconfig, Some("dave"), &args)? {
        bail!("dave's approval was admitted: is the Approval admission policy installed?");
    }

    eprintln!(
        "\n(3) rita, a release manager, approves; then the release's image is changed, and \
         her approval no longer counts"
    );
    approve_as(plugin, kubeconfig, "rita", APPROVED, "QA report attached")?;
    let release = wait_release(
        kubeconfig,
        "payments",
        APPROVED,
        "one approval",
        Duration::from_secs(30),
        |r| ready_says(r, "1 given (rita)"),
    )?;
    println!("  {}", ready_line(&release));
    let patch = r#"{"spec":{"workloads":[{"deployment":"payments-api","containers":[{"name":"api","image":"registry.example.com/payments-api:3.2.0-fix1"}]}]}}"#;
    println!("$ kubectl patch release -n payments {APPROVED} --type merge -p '{patch}'");
    let out = kubectl(
        kubeconfig,
        &[
            "patch", "release", "-n", "payments", APPROVED, "--type", "merge", "-p", patch,
        ],
    )?;
    print!("  {out}");
    let release = wait_release(
        kubeconfig,
        "payments",
        APPROVED,
        "rita's approval not counted",
        Duration::from_secs(30),
        |r| ready_says(r, "earlier version"),
    )?;
    println!("  {}", ready_line(&release));
    snapshot(
        kubeconfig,
        &["release", "-n", "payments", APPROVED],
        "release-awaiting-approval-earlier-approval-not-counted.yaml",
    )
}

/// Step 4: two approvals of the current content let payments-3.2.0 into prod. The next
/// release, payments-3.3.0, is applied as prod rolls out (step 5 rejects it).
fn approved(kubeconfig: &Path, plugin: &Path, operator: &OperatorProcess) -> Result<()> {
    eprintln!("\n(4) rita and sam approve what will now ship; with two approvals prod rolls out");
    approve_as(
        plugin,
        kubeconfig,
        "rita",
        APPROVED,
        "fixed image checked, QA report attached",
    )?;
    approve_as(plugin, kubeconfig, "sam", APPROVED, "go")?;
    // The next release travels dev, qa and demo meanwhile (step 5).
    kubectl(
        kubeconfig,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &workspace_root()
                .join("examples/policy/rejected")
                .display()
                .to_string(),
        ],
    )?;
    watch_releases(
        kubeconfig,
        operator,
        Some(&[APPROVED]),
        Instant::now(),
        |releases, _| {
            releases.iter().any(|(n, p, _)| {
                n == APPROVED && matches!(p.as_str(), "EarlyLifeSupport" | "Succeeded")
            })
        },
    )?;
    println!("$ kubectl get approvals -n payments");
    print!(
        "{}",
        kubectl(kubeconfig, &["get", "approvals", "-n", "payments"])?
    );
    println!("what let {APPROVED} into prod (status.approvals):");
    print!(
        "{}",
        kubectl(
            kubeconfig,
            &[
                "get",
                "release",
                "-n",
                "payments",
                APPROVED,
                "-o",
                "jsonpath={range .status.approvals[*]}  {.stage}: {.decision} by {.approver} of digest {.digest} ({.approval}){\"\\n\"}{end}",
            ],
        )?
    );
    Ok(())
}

/// Step 5: the next release of payments, rejected at prod by a release manager.
fn rejected(kubeconfig: &Path, plugin: &Path, operator: &OperatorProcess) -> Result<()> {
    eprintln!(
        "\n(5) applied meanwhile from examples/policy/rejected/: {REJECTED}; it waits for approval \
         into prod, and rita rejects it"
    );
    let done = |phase: &'static str| {
        move |releases: &[(String, String, String)], _: &str| {
            releases.iter().any(|(n, p, _)| n == REJECTED && p == phase)
        }
    };
    watch_releases(
        kubeconfig,
        operator,
        Some(&[REJECTED]),
        Instant::now(),
        done("AwaitingApproval"),
    )?;
    let args = [
        "-n",
        "payments",
        "reject",
        REJECTED,
        "--stage",
        "prod",
        "-m",
        "the new tokenization provider has not passed its PCI review",
    ];
    if !run_plugin(plugin, kubeconfig, Some("rita"), &args)? {
        bail!("rita's reject was refused (see above)");
    }
    watch_releases(
        kubeconfig,
        operator,
        Some(&[REJECTED]),
        Instant::now(),
        done("Rejected"),
    )?;
    let release = release_json(kubeconfig, "payments", REJECTED)?;
    println!("  {}", ready_line(&release));
    let image = kubectl(
        kubeconfig,
        &[
            "get",
            "deployment",
            "-n",
            "payments-prod",
            "payments-api",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ],
    )?;
    println!("  payments-prod still runs {image}");
    snapshot(
        kubeconfig,
        &["release", "-n", "payments", REJECTED],
        "release-rejected.yaml",
    )
}

/// Step 6: ledger-2.0.0, a major release, waits for the window of its Pipeline.
fn waiting_for_window(kubeconfig: &Path, plugin: &Path) -> Result<()> {
    eprintln!("\n(6) {MAJOR}, a major release, waits for ledger's window before prod");
    let window = kubectl(
        kubeconfig,
        &[
            "get",
            "pipeline",
            "-n",
            "ledger",
            "ledger",
            "-o",
            "jsonpath={.spec.releaseTypes.major.windows}",
        ],
    )?;
    println!("  ledger's windows for major releases: {window}");
    let release = release_json(kubeconfig, "ledger", MAJOR)?;
    println!(
        "  phase {}, status.nextWindow {}",
        release["status"]["phase"].as_str().unwrap_or("?"),
        release["status"]["nextWindow"].as_str().unwrap_or("(none)")
    );
    println!("  {}", ready_line(&release));
    snapshot(
        kubeconfig,
        &["release", "-n", "ledger", MAJOR],
        "release-waiting-for-window.yaml",
    )?;
    run_plugin(plugin, kubeconfig, None, &["-n", "ledger", "status", MAJOR])?;
    Ok(())
}

// ----- act 3: the webhook payments' Pipeline notifies ----------------------------------

/// One POST the demo's receiver got.
#[derive(Clone)]
struct Received {
    path: String,
    /// Header names in lower case.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A webhook on 127.0.0.1 (the operator runs on this machine): an HTTP/1.1 server that
/// records every POST and answers 200, one request per connection.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn start() -> Result<Self> {
        let listener =
            TcpListener::bind("127.0.0.1:0").context("starting the notification receiver")?;
        let addr = listener.local_addr()?;
        let got = Arc::new(Mutex::new(Vec::new()));
        let book = Arc::clone(&got);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let book = Arc::clone(&book);
                // A request it cannot read gets no answer, and the operator tries again.
                std::thread::spawn(move || serve(stream, &book));
            }
        });
        Ok(Self { addr, got })
    }

    fn received(&self) -> Vec<Received> {
        self.got
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Reads one request (request line, headers, a body of Content-Length bytes), records a
/// POST and answers it 200 (anything else 405), then closes the connection.
fn serve(stream: TcpStream, book: &Mutex<Vec<Received>>) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let post = line.starts_with("POST ");
    let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("the connection closed in the headers");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    if length > 4 << 20 {
        bail!("a body of {length} bytes");
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let status = if post {
        book.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Received {
                path,
                headers,
                body,
            });
        "200 OK"
    } else {
        "405 Method Not Allowed"
    };
    let mut stream = stream;
    stream.write_all(
        format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
    )?;
    Ok(())
}

/// `sha256=<hex>`: HMAC-SHA256 of `body` keyed with `token`, what X-Stagecoach-Signature
/// must say.
fn signature(token: &str, body: &[u8]) -> Result<String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes())
        .map_err(|e| anyhow::anyhow!("HMAC key: {e}"))?;
    mac.update(body);
    let mut hex = String::from("sha256=");
    for byte in mac.finalize().into_bytes() {
        let _ = write!(hex, "{byte:02x}");
    }
    Ok(hex)
}

/// A few words on what a CloudEvent's `data` says, per event.
fn event_summary(data: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or("?").to_owned();
    let approvers = |v: &Value| {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|a| text(&a["approver"]))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let changes = || {
        data["changes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| format!("{} {}", text(&c["id"]), text(&c["title"])))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let gates = || {
        let mut out = String::new();
        for gate in data["gates"].as_array().into_iter().flatten() {
            let _ = write!(
                out,
                "; gate {} {}",
                text(&gate["name"]),
                text(&gate["verdict"])
            );
        }
        out
    };
    match data["event"].as_str().unwrap_or_default() {
        "Announced" => format!(
            "{} {}: {}",
            text(&data["type"]),
            text(&data["version"]),
            changes()
        ),
        "ApprovalRequired" => format!("{} approvals required", data["required"]),
        "Approved" => format!("approved by {}", approvers(&data["approvals"])),
        "Rejected" => {
            let reject = &data["approvals"][0];
            format!(
                "rejected by {}: {}",
                text(&reject["approver"]),
                text(&reject["comment"])
            )
        }
        "StageStarted" => format!("rolling out in namespace {}", text(&data["namespace"])),
        "StageSucceeded" => format!(
            "succeeded in {} s{}",
            data["durationSeconds"].as_i64().unwrap_or_default(),
            gates()
        ),
        "RolledBack" => format!(
            "{}: {}",
            text(&data["rollback"]["reason"]),
            text(&data["rollback"]["message"])
        ),
        "Closed" => format!(
            "outcome {} at {}; changes {}",
            text(&data["outcome"]),
            text(&data["completedAt"]),
            changes()
        ),
        _ => text(&data["message"]),
    }
}

/// Step 7: what payments' receivers got during the act, one line per notification in
/// the order of each release's status.notifications; every signature is checked with the
/// receiver's token, and the bodies are kept in the snapshot directory.
fn notifications_received(kubeconfig: &Path, receiver: &Receiver, hooks: &[Hook]) -> Result<()> {
    eprintln!(
        "\n(7) what payments' receivers (the demo's, on http://{}) got during the act",
        receiver.addr
    );
    let releases = wait_delivered(kubeconfig)?;
    let posts = receiver.received();
    let mut bodies = String::new();
    for post in &posts {
        bodies.push_str(&String::from_utf8_lossy(&post.body));
        bodies.push('\n');
    }
    let file = snapshot_dir().join("notifications.jsonl");
    std::fs::write(&file, bodies)?;
    for hook in hooks {
        let mine: Vec<&Received> = posts.iter().filter(|p| p.path == hook.path).collect();
        let mut by_id = BTreeMap::new();
        for post in &mine {
            let body: Value = serde_json::from_slice(&post.body)
                .context("a notification whose body is not JSON")?;
            by_id.insert(notification_id(&body), body);
        }
        println!(
            "  receiver {} ({}, {} POSTs, {} distinct events):",
            hook.name,
            if hook.slack {
                "format: slack"
            } else {
                "CloudEvents"
            },
            mine.len(),
            by_id.len()
        );
        for release in &releases {
            let records = release["status"]["notifications"].as_array();
            for record in records.into_iter().flatten() {
                let Some(body) = by_id.get(&text_of(&record["id"])) else {
                    continue;
                };
                if record["receiver"].as_str() != Some(hook.name.as_str()) {
                    continue;
                }
                if hook.slack {
                    println!("    {}", text_of(&body["text"]));
                } else {
                    let id = text_of(&body["id"]);
                    println!(
                        "    {:<14} {:<46} {:<4} id {}…  {}",
                        text_of(&body["data"]["release"]["name"]),
                        text_of(&body["type"]),
                        body["subject"].as_str().unwrap_or(""),
                        &id[..id.len().min(12)],
                        event_summary(&body["data"])
                    );
                }
            }
        }
        if let Some((secret, token)) = &hook.signing {
            for post in &mine {
                let expected = signature(token, &post.body)?;
                if post.header("x-stagecoach-signature") != Some(expected.as_str())
                    || post.header("authorization") != Some(format!("Bearer {token}").as_str())
                {
                    bail!(
                        "a notification's signature or token is not that of Secret payments/{secret}: {}",
                        String::from_utf8_lossy(&post.body)
                    );
                }
            }
            println!(
                "    signatures verified, {n} of {n}: each X-Stagecoach-Signature is \
                 sha256=<HMAC-SHA256 of the body>\n    keyed with the token of Secret \
                 payments/{secret}, which came as Authorization: Bearer too",
                n = mine.len()
            );
        }
    }
    let records: usize = releases
        .iter()
        .map(|r| r["status"]["notifications"].as_array().map_or(0, Vec::len))
        .sum();
    println!(
        "  status.notifications of {APPROVED} and {REJECTED}: {records} records, each with deliveredAt"
    );
    println!("  the bodies, as POSTed: {}", file.display());
    Ok(())
}

/// The event id of a notification: a CloudEvent's `id`, or the last part of the context
/// line of a Slack message (`<namespace>/<release> · <time> · <id>`).
fn notification_id(body: &Value) -> String {
    if let Some(id) = body["id"].as_str() {
        return id.to_owned();
    }
    let blocks = body["blocks"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    blocks
        .iter()
        .filter_map(|b| b["elements"][0]["text"].as_str())
        .filter_map(|t| t.rsplit(" · ").next())
        .next_back()
        .unwrap_or("?")
        .to_owned()
}

/// The releases of payments that notified, once every record in their
/// status.notifications has a deliveredAt (within 30 s: everything owed arrives in a
/// second or two, and deliveredAt is written after the receiver answered).
fn wait_delivered(kubeconfig: &Path) -> Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let releases = [APPROVED, REJECTED]
            .iter()
            .map(|name| release_json(kubeconfig, "payments", name))
            .collect::<Result<Vec<_>>>()?;
        let pending: Vec<String> = releases
            .iter()
            .flat_map(|r| {
                r["status"]["notifications"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|n| n["deliveredAt"].is_null())
            .map(|n| {
                format!(
                    "{} ({})",
                    text_of(&n["event"]),
                    n["lastError"].as_str().unwrap_or("not tried yet")
                )
            })
            .collect();
        if pending.is_empty() {
            return Ok(releases);
        }
        if Instant::now() > deadline {
            bail!(
                "notifications still not delivered after 30 s: {}",
                pending.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A JSON string's text, "?" for anything else.
fn text_of(value: &Value) -> String {
    value.as_str().unwrap_or("?").to_owned()
}
