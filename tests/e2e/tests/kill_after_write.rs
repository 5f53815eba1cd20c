//! The operator SIGKILLed (in effect: aborted) right after each of its writes, through a
//! four-stage rollout with canary steps, on the real control plane.
//!
//! Every operator of the interrupted run is started with the test-only
//! `STAGECOACH_TEST_KILL_AFTER_WRITES=1` (see the operator's `kill_after_writes.rs`): it
//! aborts the moment the API server answers its first successful write, before it acts on
//! the answer. The test starts one after the other until one finds nothing left to write
//! (the release ended and it stays alive). Meanwhile a second pipeline rolls out the same
//! release with an operator that is never interrupted. Both must end the same, as a user
//! sees it: the new template in every stage, no canary, the stable revisions recorded,
//! phase Succeeded, every stage Succeeded, one audit record; and the timeline of the
//! interrupted release must have every stage start and every step complete exactly once,
//! in order, as the reference's does.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod release_support;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use stagecoach_api::Release;
use stagecoach_api::condition::ConditionStatus;
use stagecoach_api::release::{ReleasePhase, StagePhase};
use stagecoach_e2e::{
    Operator, PIPELINE_DEPLOYMENT, eventually, free_port, operator_binary, release_manifest,
};
use tokio::process::{Child, Command};

use release_support::*;

/// The test-only variable of the operator.
const KILL_AFTER_WRITES: &str = "STAGECOACH_TEST_KILL_AFTER_WRITES";
/// Most operators the interrupted run may start before the test gives up.
const MAX_OPERATORS: usize = 400;
/// Longest an operator of the interrupted run may live without writing while the release
/// has not ended: longer than any pause below, with room for a slow start under load.
const STUCK_AFTER: Duration = Duration::from_secs(90);
/// How long an operator must stay alive, ready, with the release ended, to count as
/// having nothing left to write.
const QUIET: Duration = Duration::from_secs(10);
/// SIGABRT: what `std::process::abort` ends the process with.
const SIGABRT: i32 = 6;

/// Canary steps in every stage but qa (one step to 100 %), pauses in demo and prod.
fn stage_steps(stage: &str) -> Option<Value> {
    match stage {
        "dev" => Some(json!([{"setWeight": 50}, {"setWeight": 100}])),
        "demo" => Some(json!([
            {"setWeight": 50}, {"pause": {"duration": "2s"}}, {"setWeight": 100}
        ])),
        "prod" => Some(json!([
            {"setWeight": 25}, {"pause": {"duration": "3s"}}, {"setWeight": 100}
        ])),
        _ => None,
    }
}

/// Steps per stage, as the timeline counts them.
const STEPS: [(&str, usize); 4] = [("dev", 2), ("qa", 1), ("demo", 3), ("prod", 3)];

fn manifest(f: &Fixture, name: &str) -> Value {
    let stages: Vec<Value> = f
        .pipeline
        .stages
        .iter()
        .map(|(stage, ns)| {
            // A deadline far beyond what the restarts cost: this test is about writes.
            let mut s = json!({"name": stage, "namespace": ns.name, "progressDeadline": "600s"});
            if let Some(steps) = stage_steps(stage) {
                s["steps"] = steps;
            }
            if stage == "prod" {
                s["earlyLifeSupport"] = json!({"duration": "5s"});
            }
            s
        })
        .collect();
    release_manifest(name, APP, "1.1.0", NEW_IMAGE, &stages)
}

/// The messages of the StageStarted and StepCompleted entries a release that goes through
/// [`STEPS`] once writes, in order.
fn expected_progress() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (stage, steps) in STEPS {
        out.push((stage.to_owned(), "StageStarted".to_owned()));
        for step in 1..=steps {
            out.push((
                stage.to_owned(),
                format!("StepCompleted: stage {stage}: step {step}/{steps} completed"),
            ));
        }
    }
    out
}

/// The StageStarted and StepCompleted entries of the timeline, in order (StepCompleted
/// with its message, which names the step).
fn progress(release: &Release) -> Vec<(String, String)> {
    status(release)
        .timeline
        .iter()
        .filter_map(|t| {
            let stage = t.stage.clone().unwrap_or_default();
            match t.reason.as_str() {
                "StageStarted" => Some((stage, t.reason.clone())),
                "StepCompleted" => Some((stage, format!("{}: {}", t.reason, t.message))),
                _ => None,
            }
        })
        .collect()
}

/// What a user sees of each stage in status: (name, phase, step, weight, recorded stable
/// revisions).
fn stage_summary(release: &Release) -> Vec<String> {
    status(release)
        .stages
        .iter()
        .map(|s| {
            format!(
                "{} {:?} step {:?} weight {:?} stable {:?}",
                s.name, s.phase, s.step, s.weight, s.stable_revisions
            )
        })
        .collect()
}

/// The status of a release of [`STEPS`] that went through without incident.
fn assert_succeeded(release: &Release, run: &str) {
    let s = status(release);
    assert_eq!(s.phase, Some(ReleasePhase::Succeeded), "{run}: {s:?}");
    for (stage, _) in STEPS {
        assert_eq!(
            stage_phase(release, stage),
            Some(StagePhase::Succeeded),
            "{run}: {stage}"
        );
    }
    assert!(s.rollbacks.is_empty(), "{run}: rollbacks {:?}", s.rollbacks);
    assert_eq!(
        condition(release, "Ready"),
        Some((ConditionStatus::True, "Succeeded".into())),
        "{run}"
    );
    let Some(record) = s.closing_record.as_ref() else {
        panic!("{run}: no closing record")
    };
    assert_eq!(record.outcome, ReleasePhase::Succeeded, "{run}");
    let names: Vec<&str> = record.stages.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["dev", "qa", "demo", "prod"], "{run}");
    assert_eq!(
        timeline_shape(release),
        successful_timeline(&STEPS),
        "{run}: timeline {:#?}",
        s.timeline
    );
    assert_eq!(
        progress(release),
        expected_progress(),
        "{run}: every stage started and every step completed once, in order"
    );
    assert!(
        repeated_steps(release).is_empty(),
        "{run}: {:?}",
        repeated_steps(release)
    );
}

/// The audit record ConfigMaps in the Release namespace.
async fn records(f: &Fixture) -> Result<Vec<String>> {
    let api: Api<ConfigMap> = Api::namespaced(f.client.clone(), &f.pipeline.home.name);
    Ok(api
        .list(&ListParams::default().labels("stagecoach.dev/record=true"))
        .await?
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect())
}

/// (type, reason) of the Events about the release, with how often each was published.
async fn event_counts(f: &Fixture, name: &str) -> Result<BTreeMap<(String, String), usize>> {
    let mut counts = BTreeMap::new();
    for (type_, reason, _) in f.events(name).await? {
        *counts.entry((type_, reason)).or_default() += 1;
    }
    Ok(counts)
}

/// An operator started with `STAGECOACH_TEST_KILL_AFTER_WRITES=1`, as
/// [`Operator::start`] starts one (same flags, same identity, so that it renews the Lease
/// its predecessor held at once), but whose exit the test watches.
struct Doomed {
    child: Child,
    admin: String,
    log: PathBuf,
}

impl Doomed {
    fn start(index: usize, namespace: &str) -> Result<Self> {
        // Two probes in a row can get the same free port: the two servers need two.
        let port = free_port()?;
        let mut ofrep_port = free_port()?;
        while ofrep_port == port {
            ofrep_port = free_port()?;
        }
        let log =
            std::env::temp_dir().join(format!("stagecoach-e2e-kill-write-{index}-{port}.log"));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(operator_binary())
            .args([
                "run",
                "--namespace",
                namespace,
                "--admin-addr",
                &format!("127.0.0.1:{port}"),
                "--log-format",
                "json",
            ])
            .env("STAGECOACH_OFREP_ADDR", format!("127.0.0.1:{ofrep_port}"))
            .env("STAGECOACH_IDENTITY", format!("e2e-{namespace}"))
            .env(KILL_AFTER_WRITES, "1")
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .context("starting the operator")?;
        Ok(Self {
            child,
            admin: format!("http://127.0.0.1:{port}"),
            log,
        })
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    async fn ready(&self) -> bool {
        reqwest::get(format!("{}/readyz", self.admin))
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// The write it aborted after, as its last words say: `METHOD /path`.
    fn fatal_write(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.log).ok()?;
        text.lines().find_map(|l| {
            l.strip_prefix(&format!("{KILL_AFTER_WRITES}: aborting after write 1: "))
                .map(str::to_owned)
        })
    }
}

/// How one operator of the interrupted run ended.
enum Ended {
    /// Aborted by the hook right after this write.
    AfterWrite(String),
    /// Could not start: a port it was given was taken in the meantime (by another test's
    /// process, say). Started again; not a kill.
    PortTaken,
    /// Alive and ready with the release ended, without writing anything for [`QUIET`].
    Quiet(Box<Doomed>),
}

async fn run_one(f: &Fixture, name: &str, mut operator: Doomed) -> Result<Ended> {
    let started = Instant::now();
    let mut quiet_since: Option<Instant> = None;
    loop {
        if let Some(exit) = operator.child.try_wait()? {
            if exit.code() == Some(1) && operator.log_tail().contains("Address already in use") {
                return Ok(Ended::PortTaken);
            }
            ensure!(
                exit.signal() == Some(SIGABRT),
                "an operator exited with {exit}, not by the hook; log:\n{}",
                operator.log_tail()
            );
            let write = operator.fatal_write().with_context(|| {
                format!(
                    "an operator aborted without saying after which write; log:\n{}",
                    operator.log_tail()
                )
            })?;
            return Ok(Ended::AfterWrite(write));
        }
        let ended = is_terminal(status(&f.release(name).await?).phase);
        if ended && operator.ready().await {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= QUIET {
                return Ok(Ended::Quiet(Box::new(operator)));
            }
        } else {
            quiet_since = None;
        }
        if started.elapsed() > STUCK_AFTER && !ended {
            bail!(
                "an operator has lived {STUCK_AFTER:?} without writing while the release has not ended: stuck\nstatus: {}\nlog:\n{}",
                serde_json::to_string_pretty(&status(&f.release(name).await?))?,
                operator.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The interrupted run: operators with N=1 one after the other until one stays quiet.
/// Returns the release as it ended and the writes the operators died after, in order.
async fn interrupted(f: &mut Fixture, name: &str) -> Result<(Release, Vec<String>)> {
    // The fixture's operator (never interrupted) goes before the release exists.
    f.operator.take().unwrap().stop().await?;
    f.create_release(&manifest(f, name)).await?;
    let (watch, versions) = count_versions(f, name);
    let started = Instant::now();
    let mut writes = Vec::new();
    let mut started_again = 0;
    let quiet = loop {
        ensure!(
            writes.len() + started_again < MAX_OPERATORS,
            "{MAX_OPERATORS} operators killed and the release has not converged: {}\nwrites: {writes:#?}",
            serde_json::to_string_pretty(&status(&f.release(name).await?))?
        );
        let operator = Doomed::start(writes.len() + started_again, &f.pipeline.home.name)?;
        match run_one(f, name, operator).await? {
            Ended::AfterWrite(write) => writes.push(write),
            Ended::PortTaken => started_again += 1,
            Ended::Quiet(operator) => break operator,
        }
    };
    println!(
        "interrupted run: {} operators killed right after their write ({started_again} more \
         started again, their port taken), converged in {:.0}s; the writes:\n  {}",
        writes.len(),
        started.elapsed().as_secs_f64(),
        writes.join("\n  ")
    );
    let release = f.release(name).await?;
    watch.abort();
    println!(
        "interrupted run: the Release changed {} times",
        versions.load(Ordering::SeqCst)
    );
    // The last operator, which had nothing left to write, still aborts at its first
    // write: clean up with one that does not.
    drop(quiet);
    // (Operator::start can be given one port twice, for its admin and OFREP servers: a
    // second try then.)
    let mut last = Operator::start_ready("kill-write-last", &f.pipeline.home.name).await;
    if last.is_err() {
        last = Operator::start_ready("kill-write-last-again", &f.pipeline.home.name).await;
    }
    f.operator = Some(last?);
    Ok((release, writes))
}

/// Counts the versions of the Release a watch sees (each write that changed it is one)
/// until the returned task is aborted.
fn count_versions(f: &Fixture, name: &str) -> (tokio::task::JoinHandle<()>, Arc<AtomicUsize>) {
    use futures::StreamExt as _;
    let versions = Arc::new(AtomicUsize::new(0));
    let (api, name, out) = (f.releases.clone(), name.to_owned(), versions.clone());
    let task = tokio::spawn(async move {
        let mut stream = kube::runtime::watcher::watch_object(api, &name).boxed();
        let mut last = None;
        while let Some(Ok(Some(r))) = stream.next().await {
            if r.metadata.resource_version != last {
                last = r.metadata.resource_version;
                out.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (task, versions)
}

/// The reference: the same release with an operator that is never interrupted.
async fn reference(f: &Fixture, name: &str) -> Result<Release> {
    f.create_release(&manifest(f, name)).await?;
    let (watch, versions) = count_versions(f, name);
    let release = f.wait_phase(name, ReleasePhase::Succeeded).await;
    watch.abort();
    println!(
        "reference run: the Release changed {} times",
        versions.load(Ordering::SeqCst)
    );
    release
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn the_operator_killed_after_each_write_takes_every_step_exactly_once() -> Result<()> {
    let name = "shop-1.1.0";
    let (mut killed, calm) = tokio::try_join!(
        Fixture::start("kill-write"),
        Fixture::start("kill-write-ref")
    )?;
    let ((release, writes), reference_release) =
        tokio::try_join!(interrupted(&mut killed, name), reference(&calm, name))?;

    // Enough kills that every step was interrupted at least once on its way.
    let steps: usize = STEPS.iter().map(|(_, n)| n).sum();
    ensure!(
        writes.len() > steps,
        "only {} writes for {steps} steps: the hook did not kill after each write",
        writes.len()
    );

    // The same end state as the uninterrupted rollout, as a user sees it.
    for (f, release, run) in [
        (&killed, &release, "interrupted"),
        (&calm, &reference_release, "reference"),
    ] {
        f.assert_released_everywhere(name, NEW_IMAGE, &f.before)
            .await
            .with_context(|| format!("{run} run"))?;
        assert_succeeded(release, run);
        let records = records(f).await?;
        assert_eq!(records.len(), 1, "{run}: one audit record: {records:?}");
    }
    assert_eq!(
        timeline_shape(&release),
        timeline_shape(&reference_release),
        "the interrupted timeline has the reference's shape"
    );
    assert_eq!(progress(&release), progress(&reference_release));
    assert_eq!(
        stage_summary(&release),
        stage_summary(&reference_release),
        "every stage ends as in the reference"
    );

    // Events are best effort (the timeline is the durable record): a kill between a status
    // write and its Events loses them. None may be published twice, though.
    let (lost, seen) = (
        event_counts(&calm, name).await?,
        event_counts(&killed, name).await?,
    );
    println!("Events about the release, reference run: {lost:?}");
    println!("Events about the release, interrupted run: {seen:?}");
    for ((type_, reason), count) in &seen {
        let expected = lost.get(&(type_.clone(), reason.clone())).copied();
        assert!(
            expected.is_some_and(|e| *count <= e),
            "{type_} {reason} published {count} times in the interrupted run, {expected:?} in the reference"
        );
    }

    // The reference's Events tell its timeline, in the timeline's order: each reconcile's
    // Events are published in the background, after the release's earlier ones. (They
    // may still be on their way when the release has succeeded.) The spec's acceptance is
    // announced on its own and is no timeline entry.
    let mut told = BTreeSet::new();
    let timeline: Vec<(String, String)> = status(&reference_release)
        .timeline
        .iter()
        .map(|t| (t.reason.clone(), t.message.chars().take(1000).collect()))
        .filter(|entry: &(String, String)| told.insert(entry.clone()))
        .collect();
    let told_in_order = || async {
        let mut events = calm.events_in_order(name).await?;
        events.retain(|(reason, _)| reason != "Accepted");
        anyhow::Ok(events)
    };
    let in_order = eventually(Duration::from_secs(20), || async {
        Ok((told_in_order().await? == timeline).then_some(()))
    })
    .await;
    if in_order.is_err() {
        bail!(
            "the reference's Events {:#?} are not its timeline {timeline:#?}",
            told_in_order().await?
        );
    }

    // Every write but the Release's status, once: the finalizer, then per stage the
    // record of its stable revision, its canary (created and deleted) and the stable
    // Deployment at 100 %, and at the end the audit record. A write made again after a
    // restart (a step repeated) would show here, and a missing one as a skipped step.
    let mut others: BTreeMap<String, usize> = BTreeMap::new();
    let mut status_writes = 0;
    for write in &writes {
        if write.ends_with("/status") {
            status_writes += 1;
        } else {
            *others.entry(write.clone()).or_default() += 1;
        }
    }
    println!(
        "kills: {} ({status_writes} after a status write, the rest after: {others:#?})",
        writes.len()
    );
    let home = &killed.pipeline.home.name;
    let mut expected: BTreeMap<String, usize> = BTreeMap::from([
        (
            format!("PATCH /apis/stagecoach.dev/v1alpha1/namespaces/{home}/releases/{name}"),
            1,
        ),
        (format!("POST /api/v1/namespaces/{home}/configmaps"), 1),
    ]);
    for (stage, _) in STEPS {
        let ns = killed.ns(stage);
        expected.insert(
            format!("POST /apis/apps/v1/namespaces/{ns}/controllerrevisions"),
            1,
        );
        let deployments = format!("/apis/apps/v1/namespaces/{ns}/deployments");
        expected.insert(format!("PATCH {deployments}/{PIPELINE_DEPLOYMENT}"), 1);
        if stage != "qa" {
            let canary = format!("{deployments}/{PIPELINE_DEPLOYMENT}{CANARY_SUFFIX}");
            expected.insert(format!("PATCH {canary}"), 1);
            expected.insert(format!("DELETE {canary}"), 1);
        }
    }
    assert_eq!(
        others, expected,
        "every write but the status, exactly once (all writes, in order: {writes:#?})"
    );

    killed.finish().await?;
    calm.finish().await
}

/// The timeline checks above see a step done twice, or not at all (no cluster needed).
#[test]
fn a_repeated_or_a_skipped_step_fails_the_timeline_checks() {
    let mut entries = Vec::new();
    for (stage, steps) in STEPS {
        entries.push((stage, "StageStarted", format!("stage {stage} started")));
        for step in 1..=steps {
            let message = format!("stage {stage}: step {step}/{steps} completed");
            entries.push((stage, "StepCompleted", message));
        }
    }
    let release = |entries: &[(&str, &str, String)]| -> Release {
        let mut doc = release_manifest("r", APP, "1.1.0", NEW_IMAGE, &[]);
        doc["status"]["timeline"] = entries
            .iter()
            .map(|(stage, reason, message)| {
                json!({"at": "2026-11-29T00:00:00Z", "stage": stage, "reason": reason, "message": message})
            })
            .collect();
        serde_json::from_value(doc).unwrap()
    };
    assert_eq!(progress(&release(&entries)), expected_progress());
    assert!(repeated_steps(&release(&entries)).is_empty());

    // demo's step 1/3 twice.
    let mut repeated = entries.clone();
    repeated.insert(7, entries[6].clone());
    assert_ne!(progress(&release(&repeated)), expected_progress());
    assert_eq!(repeated_steps(&release(&repeated)).len(), 1);
    // demo's step 1/3 never.
    let mut skipped = entries.clone();
    skipped.remove(6);
    assert_ne!(progress(&release(&skipped)), expected_progress());
    // demo's steps 1/3 and 2/3 swapped.
    let mut swapped = entries;
    swapped.swap(6, 7);
    assert_ne!(progress(&release(&swapped)), expected_progress());
}
