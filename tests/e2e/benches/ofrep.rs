//! Benchmark, not a timed test: OFREP single-evaluation throughput and p99 latency with
//! 1,000 toggles loaded (wrk over loopback), open and then with the application's bearer
//! token required (what access control costs), and the operator's resident memory with
//! 10,000 toggles. Prints its numbers and asserts nothing about them (targets: >= 20,000
//! evaluations/s, p99 < 2 ms, < 64 MiB resident). `cargo xtask bench` runs it on a fresh
//! control plane with a release build of the operator; by hand:
//!
//! ```text
//! KUBECONFIG=... STAGECOACH_BIN=target/release/stagecoach \
//!     cargo test -p stagecoach-e2e --bench ofrep
//! ```
//!
//! Needs `wrk` (Debian: `apt-get install -y wrk`).

#![allow(clippy::unwrap_used, clippy::too_many_lines)] // a benchmark script

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use stagecoach_api::{FeatureToggle, Release};
use stagecoach_e2e::{E2E_LABEL, TestNamespace, client, eventually, install_crds, repo_root};
use tokio::process::{Child, Command};

/// Toggles per application (one flag set per stage, well under a ConfigMap's 1 MiB).
const PER_APPLICATION: usize = 1_000;
const STAGES: [&str; 4] = ["dev", "qa", "demo", "prod"];

struct Operator {
    child: Child,
    admin: String,
    ofrep: String,
    log: PathBuf,
}

impl Operator {
    async fn start(namespace: &str) -> Result<Self> {
        let port = |()| -> Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let (admin_port, ofrep_port) = (port(())?, port(())?);
        let log = std::env::temp_dir().join(format!("stagecoach-bench-ofrep-{admin_port}.log"));
        let file = std::fs::File::create(&log)?;
        let binary = std::env::var_os("STAGECOACH_BIN").map_or_else(
            || repo_root().join("target/release/stagecoach"),
            PathBuf::from,
        );
        let child = Command::new(&binary)
            .args(["run", "--namespace", namespace, "--log-format", "json"])
            .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")])
            .args(["--ofrep-addr", &format!("127.0.0.1:{ofrep_port}")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        println!("operator {} (log {})", binary.display(), log.display());
        let admin = format!("http://127.0.0.1:{admin_port}");
        eventually(Duration::from_secs(30), || async {
            let ready = reqwest::get(format!("{admin}/readyz")).await;
            Ok(ready.ok().filter(|r| r.status() == 200).map(|_| ()))
        })
        .await?;
        Ok(Self {
            child,
            admin,
            ofrep: format!("http://127.0.0.1:{ofrep_port}"),
            log,
        })
    }

    /// Waits until the operator has written nothing (statuses, flag sets) for 5 s.
    async fn wait_quiet(&self) -> Result<()> {
        let writes = || async {
            let body = reqwest::get(format!("{}/metrics", self.admin))
                .await?
                .text()
                .await?;
            Ok::<f64, anyhow::Error>(
                body.lines()
                    .filter(|l| {
                        l.starts_with("stagecoach_status_writes_total")
                            || l.starts_with("stagecoach_flag_set_writes_total")
                    })
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum(),
            )
        };
        let started = Instant::now();
        let mut last = writes().await?;
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < Duration::from_secs(5) {
            if started.elapsed() > Duration::from_secs(900) {
                bail!("the operator kept writing for 15 minutes");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = writes().await?;
            if (now - last).abs() > 0.5 {
                last = now;
                quiet_since = Instant::now();
            }
        }
        Ok(())
    }

    /// VmRSS of the operator process, in KiB.
    fn resident_kib(&self) -> Result<u64> {
        let pid = self.child.id().context("operator exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc/<pid>/status")
    }
}

fn app_name(index: usize) -> String {
    format!("app{index}")
}

/// A Release (paused: only its stages matter) and the stage namespaces of one application.
async fn application(client: &kube::Client, home: &str, index: usize) -> Result<Vec<String>> {
    let app = app_name(index);
    let mut namespaces = Vec::new();
    for stage in STAGES {
        let name = format!("{home}-{app}-{stage}");
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {E2E_LABEL: "true"}}
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        namespaces.push(name);
    }
    let stages: Vec<Value> = STAGES
        .iter()
        .map(|s| json!({"name": s, "namespace": format!("{home}-{app}-{s}")}))
        .collect();
    let release = json!({
        "apiVersion": "stagecoach.dev/v1alpha1", "kind": "Release",
        "metadata": {"name": format!("{app}-1.0.0")},
        "spec": {
            "application": app, "version": "1.0.0", "paused": true,
            "workloads": [{"deployment": "api", "containers": [{"name": "api", "image": "x:1"}]}],
            "stages": stages
        }
    });
    Api::<Release>::namespaced(client.clone(), home)
        .patch(
            &format!("{app}-1.0.0"),
            &PatchParams::apply("stagecoach-bench").force(),
            &Patch::Apply(&release),
        )
        .await?;
    Ok(namespaces)
}

/// Creates toggles `flag-<from>`..`flag-<to - 1>`, PER_APPLICATION per application.
async fn load_toggles(client: &kube::Client, home: &str, from: usize, to: usize) -> Result<()> {
    let api: Api<FeatureToggle> = Api::namespaced(client.clone(), home);
    futures::stream::iter(from..to)
        .map(|i| {
            let api = api.clone();
            async move {
                // Shaped like the design's example toggle: on in dev, two clients and a
                // 20 % split in demo, one client in prod once the release is there.
                let app = app_name(i / PER_APPLICATION);
                let demo_clients = [format!("client-{}", i % 997), format!("client-{}", i % 991)];
                let doc = json!({
                    "apiVersion": "stagecoach.dev/v1alpha1", "kind": "FeatureToggle",
                    "metadata": {"name": format!("flag-{i}")},
                    "spec": {
                        "application": app,
                        "description": format!("benchmark toggle {i}"),
                        "variants": {"on": true, "off": false},
                        "defaultVariant": "off",
                        "stages": {
                            "dev": {"defaultVariant": "on"},
                            "demo": {"rules": [
                                {"clients": demo_clients, "variant": "on"},
                                {"split": {"on": 20, "off": 80}}
                            ]},
                            "prod": {"rules": [{
                                "clients": [format!("client-{}", i % 983)], "variant": "on",
                                "when": {"release": format!("{app}-1.0.0"), "reached": "prod"}
                            }]}
                        }
                    }
                });
                api.patch(
                    &format!("flag-{i}"),
                    &PatchParams::apply("stagecoach-bench").force(),
                    &Patch::Apply(&doc),
                )
                .await
                .map(|_| ())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Waits until OFREP serves `flags` flags for application `index` in demo.
async fn wait_served(operator: &Operator, home: &str, index: usize, flags: usize) -> Result<()> {
    let url = format!(
        "{}/apps/{home}/{}/stages/demo/ofrep/v1/evaluate/flags",
        operator.ofrep,
        app_name(index)
    );
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(600), || async {
        let response = http
            .post(&url)
            .body(r#"{"context":{"targetingKey":"probe"}}"#)
            .send()
            .await?;
        if response.status() != 200 {
            return Ok(None);
        }
        let body: Value = response.json().await?;
        let served = body["flags"].as_array().map_or(0, Vec::len);
        Ok((served == flags).then_some(()))
    })
    .await
    .with_context(|| format!("OFREP never served {flags} flags of {}", app_name(index)))
}

/// One line of wrk's output after `label`, such as "Requests/sec:" or "99%".
fn wrk_value<'a>(output: &'a str, label: &str) -> Option<&'a str> {
    output
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
}

async fn bench_ofrep() -> Result<()> {
    if std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!("wrk is not installed: apt-get install -y wrk");
    }
    let client = client().await?;
    install_crds(&client).await?;
    let home = TestNamespace::create(&client, "bench").await?;
    let ns = home.name.clone();
    let mut stage_namespaces = Vec::new();
    for index in 0..10 {
        stage_namespaces.extend(application(&client, &ns, index).await?);
    }
    let operator = Operator::start(&ns).await?;

    // 1,000 toggles, one application.
    let started = Instant::now();
    load_toggles(&client, &ns, 0, PER_APPLICATION).await?;
    wait_served(&operator, &ns, 0, PER_APPLICATION).await?;
    let served = started.elapsed();
    operator.wait_quiet().await?;
    println!(
        "1,000 toggles applied and served over OFREP in {:.1}s, every status written after \
         {:.1}s; operator resident: {} KiB",
        served.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        operator.resident_kib()?
    );

    // wrk: single evaluations of random flags for random clients in demo (client lists,
    // then 20/80 splits); first open, then with app0's bearer token required.
    let script = std::env::temp_dir().join(format!("stagecoach-ofrep-{ns}.lua"));
    std::fs::write(&script, wrk_script(&ns, None))?;
    let open = wrk_runs(&operator, &script, "no token").await?;
    let token = format!("bench-token-{}", std::process::id());
    require_token(&client, &operator, &ns, &token).await?;
    let authed_script = std::env::temp_dir().join(format!("stagecoach-ofrep-{ns}-auth.lua"));
    std::fs::write(&authed_script, wrk_script(&ns, Some(&token)))?;
    let authed = wrk_runs(&operator, &authed_script, "bearer token").await?;
    for ((connections, open), (_, authed)) in open.iter().zip(&authed) {
        println!(
            "OFREP single evaluation, {connections} connections: {open} without a token, \
             {authed} with a bearer token checked"
        );
    }

    // 10,000 toggles: nine more applications of 1,000.
    let started = Instant::now();
    load_toggles(&client, &ns, PER_APPLICATION, 10 * PER_APPLICATION).await?;
    for index in 1..10 {
        wait_served(&operator, &ns, index, PER_APPLICATION).await?;
    }
    let served = started.elapsed();
    operator.wait_quiet().await?;
    println!(
        "10,000 toggles applied and served in {:.1}s, every status written after {:.1}s",
        served.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let kib = operator.resident_kib()?;
    #[allow(clippy::cast_precision_loss)] // KiB of a process fit an f64
    let mib = kib as f64 / 1024.0;
    println!("operator resident memory with 10,000 toggles: {mib:.1} MiB (target < 64 MiB)");
    println!("operator log: {}", operator.log.display());

    drop(operator);
    for name in stage_namespaces {
        Api::<Namespace>::all(client.clone())
            .delete(&name, &DeleteParams::background())
            .await?;
    }
    home.delete().await
}

/// wrk's Lua script: single evaluations of random flags of app0 in demo for random
/// clients, with `Authorization: Bearer <token>` when given.
fn wrk_script(ns: &str, token: Option<&str>) -> String {
    let authorization = token.map_or_else(String::new, |token| {
        format!("wrk.headers[\"Authorization\"] = \"Bearer {token}\"\n")
    });
    format!(
        r#"wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
{authorization}local base = "/apps/{ns}/app0/stages/demo/ofrep/v1/evaluate/flags/flag-"
math.randomseed(os.time())
request = function()
  local flag = math.random(0, {last})
  local body = '{{"context":{{"targetingKey":"user-' .. math.random(1, 100000) .. '","clientId":"client-' .. math.random(0, 10000) .. '"}}}}'
  return wrk.format(nil, base .. flag, nil, body)
end
"#,
        last = PER_APPLICATION - 1
    )
}

/// Two wrk runs with `script`: 50 connections find the most the operator answers (wrk's
/// closed loop makes latency = connections / throughput there, so its p99 says little);
/// 10 connections show the latency while it answers the target rate. Returns (connections,
/// summary) per run.
async fn wrk_runs(operator: &Operator, script: &Path, label: &str) -> Result<Vec<(u32, String)>> {
    let mut summaries = Vec::new();
    for connections in [50_u32, 10] {
        let connections_text = connections.to_string();
        let args = [
            "-t2",
            "-c",
            connections_text.as_str(),
            "-d20s",
            "--latency",
            "-s",
        ];
        println!(
            "$ wrk {} {} {}",
            args.join(" "),
            script.display(),
            operator.ofrep
        );
        let out = Command::new("wrk")
            .args(args)
            .arg(script)
            .arg(&operator.ofrep)
            .output()
            .await?;
        let output = String::from_utf8_lossy(&out.stdout).into_owned();
        println!("{output}");
        let rps = wrk_value(&output, "Requests/sec:").unwrap_or("?");
        let p50 = wrk_value(&output, "50%").unwrap_or("?");
        let p99 = wrk_value(&output, "99%").unwrap_or("?");
        let errors = wrk_value(&output, "Non-2xx or 3xx responses:").unwrap_or("0");
        let summary = format!("{rps} evaluations/s, p50 {p50}, p99 {p99}, non-2xx {errors}");
        println!(
            "OFREP single evaluation ({label}), 1,000 toggles, {connections} connections: \
             {summary} (targets: >= 20,000/s, p99 < 2 ms)"
        );
        summaries.push((connections, summary));
    }
    Ok(summaries)
}

/// Requires a bearer token for app0 (a labelled Secret, as in the README) and waits until
/// OFREP answers 401 without it and 200 with it.
async fn require_token(
    client: &kube::Client,
    operator: &Operator,
    ns: &str,
    token: &str,
) -> Result<()> {
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {
            "name": "app0-ofrep",
            "labels": {"stagecoach.dev/ofrep-application": "app0"}
        },
        "stringData": {"token": token}
    }))?;
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await?;
    let url = format!(
        "{}/apps/{ns}/app0/stages/demo/ofrep/v1/evaluate/flags/flag-1",
        operator.ofrep
    );
    let http = reqwest::Client::new();
    let body = r#"{"context":{"targetingKey":"probe"}}"#;
    eventually(Duration::from_secs(30), || async {
        let open = http.post(&url).body(body).send().await?.status();
        let authed = http
            .post(&url)
            .bearer_auth(token)
            .body(body)
            .send()
            .await?
            .status();
        Ok((open == 401 && authed == 200).then_some(()))
    })
    .await
    .context("OFREP never required app0's token")
}

/// A benchmark, not a test (`harness = false`): `cargo xtask bench` runs it.
fn main() -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench_ofrep())
}
