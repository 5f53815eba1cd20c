//! The control plane failing under a release, during a canary pause:
//!
//! - the API server killed (SIGKILL) and started again 15 s later with the same flags,
//!   etcd keeping its data;
//! - etcd (the control plane's only member) killed and started again 15 s later with the
//!   same flags and data directory, the API server up all along and answering errors.
//!
//! Both outages last longer than the operator's renew deadline (10 s), so the operator
//! loses its Lease, drops everything and starts again as a follower inside the same
//! process (see `stagecoach_operator::operator::run`), then leads again once the API
//! server answers. Either way it must neither crash nor repeat or skip a step, nor stretch
//! the pause, nor write its status more than a rollout without the fault; the release
//! ends Succeeded with the templates right and no canary left, and its status and Events
//! claim nothing that did not happen.
//!
//! These tests stop a component of the shared control plane, so `cargo xtask test` runs
//! this file on its own, after the other end-to-end tests (it skips every test whose name
//! contains `fault_apiserver` in the concurrent run); inside this file the tests take
//! [`ALONE`] so that they never overlap either. `STAGECOACH_CLUSTER_DIR` names the control
//! plane's state directory, whose `commands/<component>.json` says how each component was
//! started.

#![allow(clippy::unwrap_used)]

mod release_support;

use std::cell::Cell;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kube::Client;
use kube::api::GetParams;
use serde_json::json;
use stagecoach_api::release::ReleasePhase;
use stagecoach_e2e::{PIPELINE_DEPLOYMENT, RecordedProcess, client, eventually, release_manifest};

use release_support::*;

/// The pause under test.
const PAUSE: Duration = Duration::from_secs(40);
/// How long into the pause the component is killed, and how long it stays down: longer
/// than the operator's renew deadline (10 s), so that it loses its Lease.
const KILL_AFTER: Duration = Duration::from_secs(5);
const DOWN_FOR: Duration = Duration::from_secs(15);
/// How much longer than `PAUSE` the pause may take: the next reconcile after the pause
/// ends, plus a status write. The outage ends 20 s into the pause and the operator leads
/// again a few seconds later (the API server ready, one retry period of 2 s for the
/// Lease, its caches listed anew): well before the pause ends, whose end is computed from
/// the step's start in the status, not from a timer that the restart would reset. So the
/// fault gets no more slack than a clean rollout.
const PAUSE_SLACK: i64 = 6;
/// How many more status writes than the clean rollout the faulty one may make. The
/// operator writes its status only when it changed, and an outage changes nothing the
/// status says: at most the reconcile interrupted by the lost Lease and the first one after
/// leading again write what the clean rollout wrote once. Measured: 50 or 51 without a
/// fault, 47 to 49 with either (the writes counted over the in-process restart); the rest
/// of the slack is for pods becoming ready in other batches, which changes the count of
/// progress messages.
const STATUS_WRITES_SLACK: f64 = 10.0;
/// How long the API server may take to answer `/readyz` with 200 once the component is
/// started again.
const BACK_WITHIN: Duration = Duration::from_secs(60);

/// One test of this file at a time: each stops part of the control plane.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// The rollout without a fault that both tests compare with, measured once.
static CLEAN: tokio::sync::OnceCell<Measured> = tokio::sync::OnceCell::const_new();

/// One process of the shared control plane, as `commands/<name>.json` says it was started.
struct Component {
    name: &'static str,
    process: RecordedProcess,
}

impl Component {
    fn from_cluster(name: &'static str) -> Result<Self> {
        let Some(dir) = std::env::var_os("STAGECOACH_CLUSTER_DIR") else {
            bail!(
                "STAGECOACH_CLUSTER_DIR is not set: run `cargo xtask test`, which sets it to \
                 the control plane's state directory"
            );
        };
        let component = Self {
            name,
            process: RecordedProcess::read(&PathBuf::from(dir), name)?,
        };
        ensure!(
            component.pids().len() == 1,
            "expected one running {name} started as its commands/{name}.json says"
        );
        Ok(component)
    }

    fn pids(&self) -> Vec<u32> {
        self.process.pids()
    }

    /// SIGKILL, and wait until it is gone. The returned guard starts it again when
    /// dropped, should the test fail before [`Outage::end`].
    fn kill(&self) -> Result<Outage<'_>> {
        ensure!(!self.pids().is_empty(), "no running {} found", self.name);
        let outage = Outage {
            component: self,
            ended: false,
        };
        self.process.sigkill()?;
        for _ in 0..100 {
            if self.pids().is_empty() {
                return Ok(outage);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("{} still running 10 s after SIGKILL", self.name)
    }

    /// Starts it again with the same flags (see [`RecordedProcess::spawn`]); it keeps
    /// running (dropping the handle neither kills nor waits).
    fn start(&self) -> Result<()> {
        self.process.spawn().map(drop)
    }
}

/// A component killed by the test: started again by [`Outage::end`], or, if the test
/// fails first, when this is dropped, so that the control plane is whole for whatever
/// runs next.
struct Outage<'a> {
    component: &'a Component,
    ended: bool,
}

impl Outage<'_> {
    fn end(mut self) -> Result<()> {
        self.ended = true;
        self.component.start()
    }
}

impl Drop for Outage<'_> {
    fn drop(&mut self) {
        if self.ended || !self.component.pids().is_empty() {
            return;
        }
        match self.component.start() {
            Ok(()) => eprintln!("{} started again after a failure", self.component.name),
            Err(e) => eprintln!("could not start {} again: {e:#}", self.component.name),
        }
    }
}

/// `GET /readyz` on the API server: Ok once it answers 200 (etcd reachable among its
/// checks), an error while it answers anything else or nothing.
async fn apiserver_ready(client: &Client) -> Result<()> {
    let request = kube::core::Request::new("").get("readyz", &GetParams::default())?;
    let body = client.request_text(request).await?;
    ensure!(body.trim() == "ok", "/readyz answered {body}");
    Ok(())
}

/// What one rollout through the pipeline cost: how long prod's pause lasted (from the
/// timeline) and how many status writes the operator made.
#[derive(Clone, Copy, Debug)]
struct Measured {
    pause_seconds: i64,
    /// From the end of the pause to the release's end (the 100 % step and early life
    /// support), for the record: it includes kube-controller-manager's rollout of the
    /// Deployment, which after an outage waits on the controller-manager's own recovery.
    after_pause_seconds: i64,
    /// The operator's part of the 100 % step: from prod's Deployment rolled out (its
    /// `Progressing` condition turning `NewReplicaSetAvailable`, or the pause's end if
    /// that came later) to the step completed. Long when a cache stays stale after the
    /// restart.
    after_rollout_seconds: i64,
    /// Attempted status writes of kind Release, over all of the operator's in-process
    /// restarts (see [`WriteCount`]).
    status_writes: f64,
    /// Times the operator lost its Lease and started again inside its process.
    restarts: usize,
}

/// `stagecoach_status_writes_total{kind="Release"}` summed over the operator's in-process
/// restarts: each restart registers its metrics anew, from zero, so the counter is read
/// every 200 ms and a value lower than the last one read means a restart, whose writes
/// add to those counted before it. (The operator cannot write while it has no Lease, that
/// is for at least its renew deadline before a restart, so no write falls between the
/// last read and the restart.)
#[derive(Default)]
struct WriteCount {
    earlier: Cell<f64>,
    last: Cell<f64>,
}

impl WriteCount {
    async fn read(&self, f: &Fixture) {
        if let Ok(now) = f.release_metric("stagecoach_status_writes_total").await {
            if now < self.last.get() {
                self.earlier.set(self.earlier.get() + self.last.get());
            }
            self.last.set(now);
        }
    }

    async fn follow(&self, f: &Fixture) {
        loop {
            self.read(f).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn total(&self) -> f64 {
        self.earlier.get() + self.last.get()
    }
}

async fn roll_out(prefix: &str, fault: Option<&Component>) -> Result<Measured> {
    let f = Fixture::start(prefix).await?;
    let writes = WriteCount::default();
    let release = tokio::select! {
        release = rollout_with_fault(&f, fault) => release?,
        () = writes.follow(&f) => unreachable!("follows the counter until the rollout ends"),
    };
    writes.read(&f).await;

    // The end the user sees: every stage on the new image with the template otherwise
    // untouched, Ready pods, no canary, the stable revisions recorded; a status that went
    // through every step once, in order, with no rollback, a Ready condition and no
    // Degraded one; and no Warning Event (no failure was ever claimed).
    let name = release.metadata.name.clone().unwrap();
    assert_succeeded_status(&release, 3);
    f.assert_released_everywhere(&name, NEW_IMAGE, &f.before)
        .await?;
    let warnings: Vec<_> = f
        .events(&name)
        .await?
        .into_iter()
        .filter(|(type_, _, _)| type_ == "Warning")
        .collect();
    ensure!(warnings.is_empty(), "Warning Events: {warnings:?}");

    // The same process as at the start (a crash would have ended it: nothing restarts it
    // here), having restarted inside it at most once for the one outage.
    f.operator()
        .resident_kib()
        .context("the operator process is gone")?;
    let log = f.operator().log_text();
    ensure!(
        !log.contains("panicked"),
        "the operator panicked; log:\n{log}"
    );
    let restarts = log
        .lines()
        .filter(|l| l.contains("leadership lost"))
        .count();

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
    let rolled_out = rolled_out_at(&f).await?.max(prod[1]);
    let measured = Measured {
        pause_seconds: (prod[1] - prod[0]).num_seconds(),
        after_pause_seconds: (ended - prod[1]).num_seconds(),
        after_rollout_seconds: (prod[2] - rolled_out).num_seconds(),
        status_writes: writes.total(),
        restarts,
    };
    println!(
        "{prefix}: {measured:?} (status writes: {} before the last in-process restart, {} after)",
        writes.earlier.get(),
        writes.last.get()
    );
    f.finish().await?;
    Ok(measured)
}

/// When kube-controller-manager last finished rolling out prod's Deployment: the
/// `lastUpdateTime` of its `Progressing` condition with reason `NewReplicaSetAvailable`
/// (the condition it sets once every new pod is available and no old one is left).
async fn rolled_out_at(f: &Fixture) -> Result<chrono::DateTime<chrono::Utc>> {
    let deployment = f.deployments("prod").get(PIPELINE_DEPLOYMENT).await?;
    let conditions = deployment
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default();
    let progressing = conditions
        .iter()
        .find(|c| c.type_ == "Progressing" && c.reason.as_deref() == Some("NewReplicaSetAvailable"))
        .with_context(|| format!("prod's Deployment is not rolled out: {conditions:?}"))?;
    progressing
        .last_update_time
        .as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.0.as_second(), 0))
        .context("the Progressing condition has no lastUpdateTime")
}

/// Creates the release, and once prod pauses, takes `fault` down for [`DOWN_FOR`] and
/// waits until the API server is ready again; returns the Release once it succeeded.
async fn rollout_with_fault(
    f: &Fixture,
    fault: Option<&Component>,
) -> Result<stagecoach_api::Release> {
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
    if let Some(component) = fault {
        tokio::time::sleep(KILL_AFTER).await;
        let outage = component.kill()?;
        println!("{} killed", component.name);
        let client = client().await?;
        tokio::time::sleep(DOWN_FOR / 2).await;
        // Meanwhile the API server answers, but not ready (the API server killed: nothing).
        ensure!(
            apiserver_ready(&client).await.is_err(),
            "the API server is ready with {} down",
            component.name
        );
        tokio::time::sleep(DOWN_FOR / 2).await;
        outage.end()?;
        let started = Instant::now();
        eventually(BACK_WITHIN, || async {
            Ok(apiserver_ready(&client).await.ok())
        })
        .await
        .with_context(|| {
            format!(
                "the API server was not ready after {} came back",
                component.name
            )
        })?;
        println!(
            "{} back: the API server ready {:.1}s after it started again",
            component.name,
            started.elapsed().as_secs_f64()
        );
    }
    f.wait_phase(name, ReleasePhase::Succeeded).await
}

/// Runs the rollout with `component` taken down mid-pause and compares it with one
/// without the fault.
async fn fault_against_clean(component: &'static str) -> Result<()> {
    let _alone = ALONE.lock().await;
    let component = Component::from_cluster(component)?;
    let clean = *CLEAN
        .get_or_try_init(|| roll_out("restart-clean", None))
        .await?;
    let faulty = roll_out(&format!("restart-{}", component.name), Some(&component)).await?;
    let pause = i64::try_from(PAUSE.as_secs())?;
    ensure!(
        (pause..=pause + PAUSE_SLACK).contains(&clean.pause_seconds),
        "the clean pause lasted {}s",
        clean.pause_seconds
    );
    ensure!(
        (pause..=pause + PAUSE_SLACK).contains(&faulty.pause_seconds),
        "with {} restarted, the {pause}s pause lasted {}s",
        component.name,
        faulty.pause_seconds
    );
    println!(
        "the rest of prod after the pause: {}s with {} restarted, {}s without \
         (kube-controller-manager's rollout of the 100 % step included)",
        faulty.after_pause_seconds, component.name, clean.after_pause_seconds
    );
    // Measured from the Deployment's own rolled-out status: after an outage
    // kube-controller-manager recovers too, and its rollout of the 100 % step once took
    // 52 s (against 5 s); that is not the operator's to answer for, a stale cache is.
    ensure!(
        faulty.after_rollout_seconds <= clean.after_rollout_seconds + 30,
        "after the restart the 100 % step completed {}s after prod's Deployment rolled \
         out, against {}s without: a cache stayed stale",
        faulty.after_rollout_seconds,
        clean.after_rollout_seconds
    );
    ensure!(
        faulty.restarts <= 1,
        "the operator started again {} times for one outage",
        faulty.restarts
    );
    ensure!(
        faulty.status_writes <= clean.status_writes + STATUS_WRITES_SLACK,
        "{} status writes with {} restarted, {} without",
        faulty.status_writes,
        component.name,
        clean.status_writes
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test control plane, alone: run `cargo xtask test`"]
async fn fault_apiserver_restart_mid_pause_keeps_the_pause_and_the_writes() -> Result<()> {
    fault_against_clean("kube-apiserver").await
}

/// (Named `fault_apiserver…` so that the concurrent run skips it: the API server loses
/// its etcd.)
#[tokio::test]
#[ignore = "needs the test control plane, alone: run `cargo xtask test`"]
async fn fault_apiserver_loses_etcd_mid_pause_keeps_the_pause_and_the_writes() -> Result<()> {
    fault_against_clean("etcd").await
}
