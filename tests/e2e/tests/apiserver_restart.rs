//! The API server killed (SIGKILL) during a canary pause and started again 15 s later
//! with the same flags, etcd keeping its data. The operator must neither repeat the step
//! nor stretch the pause: it never plans from a cache older than its own last write, and
//! its watches list anew when the new API server answers 410 Gone.
//!
//! This test stops the shared control plane's API server, so `cargo xtask test` runs it
//! on its own, after the other end-to-end tests (`STAGECOACH_CLUSTER_DIR` names that
//! control plane's state directory, whose `commands/kube-apiserver.json` says how the
//! API server was started).

#![allow(clippy::unwrap_used)]

mod release_support;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use stagecoach_api::release::ReleasePhase;
use stagecoach_e2e::{client, eventually, release_manifest};

use release_support::*;

/// The pause under test.
const PAUSE: Duration = Duration::from_secs(40);
/// How long into the pause the API server is killed, and how long it stays down.
const KILL_AFTER: Duration = Duration::from_secs(5);
const DOWN_FOR: Duration = Duration::from_secs(15);
/// How much longer than `PAUSE` the pause may take: the next reconcile after the pause
/// ends, plus a status write.
const PAUSE_SLACK: i64 = 6;

/// How the shared control plane's API server was started.
struct ApiServer {
    program: String,
    args: Vec<String>,
    log: PathBuf,
}

impl ApiServer {
    fn from_cluster() -> Result<Self> {
        let Some(dir) = std::env::var_os("STAGECOACH_CLUSTER_DIR") else {
            bail!(
                "STAGECOACH_CLUSTER_DIR is not set: run `cargo xtask test`, which sets it to \
                 the control plane's state directory"
            );
        };
        let file = PathBuf::from(dir).join("commands/kube-apiserver.json");
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let command: Value = serde_json::from_str(&text)?;
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

    /// PIDs of running processes whose command line is exactly this one.
    fn pids(&self) -> Vec<u32> {
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

    fn kill(&self) -> Result<()> {
        let pids = self.pids();
        ensure!(!pids.is_empty(), "no running kube-apiserver found");
        for pid in &pids {
            let status = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()?;
            ensure!(status.success(), "kill -KILL {pid} failed");
        }
        for _ in 0..100 {
            if self.pids().is_empty() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("kube-apiserver still running 10 s after SIGKILL")
    }

    /// Starts it again with the same flags, appending to its log, in a process group of
    /// its own (so it outlives this test; `cargo xtask cluster down` stops it).
    fn start(&self) -> Result<()> {
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new().append(true).open(&self.log)?;
        std::process::Command::new(&self.program)
            .args(&self.args)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting kube-apiserver again")?;
        Ok(())
    }
}

/// What one rollout through the pipeline cost: how long prod's pause lasted (from the
/// timeline) and how many status writes the operator made.
#[derive(Debug)]
struct Measured {
    pause_seconds: i64,
    /// From the end of the pause to the release's end (the 100 % step and early life
    /// support): long when a cache stays stale after the restart.
    after_pause_seconds: i64,
    status_writes: f64,
}

async fn roll_out(prefix: &str, restart: Option<&ApiServer>) -> Result<Measured> {
    let f = Fixture::start(prefix).await?;
    let name = "shop-1.1.0";
    let steps = json!([
        {"setWeight": 25},
        {"pause": {"duration": format!("{}s", PAUSE.as_secs())}},
        {"setWeight": 100}
    ]);
    f.create_release(&release_manifest(
        name,
        APP,
        "1.1.0",
        NEW_IMAGE,
        &stages_spec(&f.pipeline, &steps, "1s"),
    ))
    .await?;
    f.wait_release(name, "prod's pause", ROLLOUT_TIMEOUT, |r| {
        stage_step(r, "prod") == Some(1)
    })
    .await?;
    if let Some(apiserver) = restart {
        tokio::time::sleep(KILL_AFTER).await;
        apiserver.kill()?;
        println!("kube-apiserver killed");
        tokio::time::sleep(DOWN_FOR).await;
        apiserver.start()?;
        let client = client().await?;
        eventually(Duration::from_secs(60), || async {
            Ok(client.apiserver_version().await.ok().map(|_| ()))
        })
        .await
        .context("kube-apiserver did not come back")?;
        println!("kube-apiserver back");
    }
    let release = f.wait_phase(name, ReleasePhase::Succeeded).await?;
    let repeated = repeated_steps(&release);
    ensure!(repeated.is_empty(), "steps repeated: {repeated:?}");
    let prod: Vec<_> = status(&release)
        .timeline
        .iter()
        .filter(|t| t.stage.as_deref() == Some("prod") && t.reason == "StepCompleted")
        .map(|t| t.at)
        .collect();
    ensure!(prod.len() == 3, "prod's steps: {prod:?}");
    let ended = status(&release)
        .completed_at
        .context("a succeeded release has completedAt")?;
    let measured = Measured {
        pause_seconds: (prod[1] - prod[0]).num_seconds(),
        after_pause_seconds: (ended - prod[1]).num_seconds(),
        status_writes: f.release_metric("stagecoach_status_writes_total").await?,
    };
    println!("{prefix}: {measured:?}");
    f.finish().await?;
    Ok(measured)
}

#[tokio::test]
#[ignore = "needs the test control plane, alone: run `cargo xtask test`"]
async fn fault_apiserver_restart_mid_pause_keeps_the_pause_and_the_writes() -> Result<()> {
    let apiserver = ApiServer::from_cluster()?;
    ensure!(
        apiserver.pids().len() == 1,
        "expected one running kube-apiserver started as commands/kube-apiserver.json says"
    );
    let clean = roll_out("restart-clean", None).await?;
    let faulty = roll_out("restart-fault", Some(&apiserver)).await?;
    let pause = i64::try_from(PAUSE.as_secs())?;
    ensure!(
        (pause..=pause + PAUSE_SLACK).contains(&clean.pause_seconds),
        "the clean pause lasted {}s",
        clean.pause_seconds
    );
    ensure!(
        (pause..=pause + PAUSE_SLACK).contains(&faulty.pause_seconds),
        "with the API server restarted, the {pause}s pause lasted {}s",
        faulty.pause_seconds
    );
    ensure!(
        faulty.after_pause_seconds <= clean.after_pause_seconds + 30,
        "after the restart the rest of prod took {}s, against {}s without: a cache stayed stale",
        faulty.after_pause_seconds,
        clean.after_pause_seconds
    );
    ensure!(
        faulty.status_writes <= clean.status_writes * 2.0 + 5.0,
        "{} status writes with the restart, {} without",
        faulty.status_writes,
        clean.status_writes
    );
    Ok(())
}
