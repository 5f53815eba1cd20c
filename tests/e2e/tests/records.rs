//! The audit record end to end, on the real control plane with the real operator and
//! plugin binaries: a release that ends leaves an immutable ConfigMap with its closing
//! record, which the API server refuses to change and which outlives the Release; a
//! rolled-back release's record holds the rollback's reason and gate verdicts; the DORA
//! gauges and `kubectl stagecoach dora` agree on the figures; `changelog` prints the
//! records as Markdown release notes; the audit log has one line per decision with its
//! fixed fields; deleting a Release right after it ended, its Closed notification still
//! pending, writes the record before the Release goes; a Pipeline's retention prunes the
//! oldest records.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod release_support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use release_support::*;
use serde_json::{Value, json};
use stagecoach_api::release::ReleasePhase;
use stagecoach_e2e::{PIPELINE_DEPLOYMENT, apply, eventually, free_port, repo_root};
use stagecoach_engine::record;

/// The plugin binary the tests run: KUBECTL_STAGECOACH_BIN, or the workspace's debug
/// build.
fn plugin() -> Result<std::path::PathBuf> {
    let path = std::env::var_os("KUBECTL_STAGECOACH_BIN").map_or_else(
        || repo_root().join("target/debug/kubectl-stagecoach"),
        std::path::PathBuf::from,
    );
    ensure!(
        path.exists(),
        "{} does not exist: build it with `cargo build -p kubectl-stagecoach`",
        path.display()
    );
    Ok(path)
}

/// Runs `kubectl-stagecoach <args>` against the cluster in KUBECONFIG; its stdout.
fn run_plugin(args: &[&str]) -> Result<String> {
    let output = Command::new(plugin()?).args(args).output()?;
    ensure!(
        output.status.success(),
        "kubectl-stagecoach {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

fn config_maps(f: &Fixture) -> Api<ConfigMap> {
    Api::namespaced(f.client.clone(), &f.pipeline.home.name)
}

/// The names of the application's record ConfigMaps.
async fn record_names(f: &Fixture) -> Result<BTreeSet<String>> {
    let selector = format!(
        "{}=true,{}={APP}",
        record::RECORD_LABEL,
        record::APPLICATION_LABEL
    );
    Ok(config_maps(f)
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect())
}

/// Waits for the record of `release` (whose uid is `uid`); the ConfigMap and its document.
async fn wait_record(f: &Fixture, release: &str, uid: &str) -> Result<(ConfigMap, Value)> {
    let name = record::record_name(release, uid);
    let config_map = eventually(Duration::from_secs(30), || async {
        Ok(config_maps(f).get_opt(&name).await?)
    })
    .await
    .with_context(|| {
        format!(
            "no record {name}; operator log:\n{}",
            f.operator().log_tail(30)
        )
    })?;
    let text = config_map
        .data
        .as_ref()
        .and_then(|d| d.get(record::DATA_KEY))
        .context("no record.json")?;
    let doc: Value = serde_json::from_str(text)?;
    Ok((config_map, doc))
}

/// The audit lines of the operator's JSON log.
fn audit_lines(f: &Fixture) -> Vec<Value> {
    f.operator()
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["target"] == "stagecoach::audit")
        .collect()
}

/// (action, stage, outcome) of the audit lines about the release with `uid`.
fn audit_shape(f: &Fixture, uid: &str) -> Vec<(String, String, String)> {
    audit_lines(f)
        .iter()
        .filter(|l| l["release_uid"] == uid)
        .map(|l| {
            let field = |k: &str| l[k].as_str().unwrap_or_default().to_owned();
            (field("action"), field("stage"), field("outcome"))
        })
        .collect()
}

fn uid(release: &stagecoach_api::Release) -> String {
    release.uid().unwrap_or_default()
}

/// Stages dev and prod of the fixture (prod: 2 s of early life support), or prod alone.
fn stages(f: &Fixture, names: &[&str]) -> Vec<Value> {
    names
        .iter()
        .map(|stage| {
            let mut s = json!({"name": stage, "namespace": f.ns(stage), "progressDeadline": "60s"});
            if *stage == "prod" {
                s["earlyLifeSupport"] = json!({"duration": "2s"});
            }
            s
        })
        .collect()
}

fn release_doc(name: &str, version: &str, image: &str, stages: &[Value]) -> Value {
    let merged = (chrono::Utc::now() - chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut doc = json!({
        "apiVersion": "stagecoach.dev/v1alpha1",
        "kind": "Release",
        "metadata": {"name": name},
        "spec": {
            "application": APP,
            "version": version,
            "changes": [
                {"id": format!("PR-{version}"), "title": format!("Shop {version}"),
                 "url": format!("https://git.example.com/shop/pull/{version}"), "mergedAt": merged},
                {"id": "OPS-1", "title": "Larger connection pool"}
            ],
            "notes": format!("Shop {version} for everyone."),
            "workloads": [{"deployment": PIPELINE_DEPLOYMENT, "containers": [{"name": "app", "image": image}]}],
        }
    });
    if !stages.is_empty() {
        doc["spec"]["stages"] = json!(stages);
    }
    doc
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn records_outlive_their_releases_and_feed_changelog_dora_and_the_audit_log() -> Result<()> {
    let f = Fixture::start("rec-main").await?;
    let ns = f.pipeline.home.name.clone();

    // ----- a release that succeeds ------------------------------------------------------
    let ok = "shop-1.1.0";
    f.create_release(&release_doc(
        ok,
        "1.1.0",
        NEW_IMAGE,
        &stages(&f, &["dev", "prod"]),
    ))
    .await?;
    let released = f.wait_phase(ok, ReleasePhase::Succeeded).await?;
    let ok_uid = uid(&released);
    let (config_map, doc) = wait_record(&f, ok, &ok_uid).await?;

    assert_eq!(config_map.immutable, Some(true), "the record is immutable");
    assert!(
        config_map.owner_references().is_empty(),
        "not owned by the Release"
    );
    let labels = config_map.labels();
    assert_eq!(labels[record::RECORD_LABEL], "true");
    assert_eq!(labels[record::APPLICATION_LABEL], APP);
    assert_eq!(labels[record::RELEASE_LABEL], ok);
    assert_eq!(labels[record::RELEASE_UID_LABEL], ok_uid);
    assert_eq!(labels["app.kubernetes.io/managed-by"], "stagecoach");
    assert_eq!(doc["schema"], record::SCHEMA);
    assert_eq!(doc["release"]["uid"], ok_uid.as_str());
    assert_eq!(doc["version"], "1.1.0");
    assert_eq!(doc["type"], "minor");
    assert_eq!(doc["outcome"], "Succeeded");
    assert!(
        doc["digest"].as_str().unwrap().starts_with("sha256:"),
        "{}",
        doc["digest"]
    );
    assert_eq!(
        doc["changes"][0]["url"],
        "https://git.example.com/shop/pull/1.1.0"
    );
    assert_eq!(doc["notes"], "Shop 1.1.0 for everyone.");
    let stage_names: Vec<&str> = doc["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(stage_names, ["dev", "prod"]);
    for stage in doc["stages"].as_array().unwrap() {
        assert_eq!(stage["phase"], "Succeeded", "{stage}");
        assert!(stage["durationSeconds"].is_i64(), "{stage}");
        assert!(stage["startedAt"].is_string(), "{stage}");
    }
    assert!(doc["stages"][1]["earlyLifeSupportStartedAt"].is_string());
    assert!(doc.get("rollbacks").is_none());
    assert!(
        doc["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["reason"] == "EarlyLifeSupport"),
        "the timeline is in the record"
    );
    assert_eq!(doc["dora"]["lastStage"], "prod");
    assert!(doc["dora"]["deployedAt"].is_string());
    let lead_times: Vec<i64> = doc["dora"]["leadTimesSeconds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(lead_times.len(), 2, "one per change");
    assert!(
        lead_times[0] >= 3600,
        "from the change's mergedAt: {lead_times:?}"
    );
    assert!(
        lead_times[1] < 600,
        "from the Release's creation: {lead_times:?}"
    );

    // The API server refuses to change it.
    let mut changed = config_map.clone();
    changed
        .data
        .as_mut()
        .unwrap()
        .insert(record::DATA_KEY.into(), "{}".into());
    match config_maps(&f)
        .replace(&config_map.name_any(), &PostParams::default(), &changed)
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 422 => {
            assert!(e.message.contains("immutable"), "{}", e.message);
        }
        other => bail!("the update of an immutable record was not refused: {other:?}"),
    }

    // ----- a release rolled back in its last stage --------------------------------------
    let bad = "shop-1.2.0";
    f.create_release(&release_doc(
        bad,
        "1.2.0",
        BAD_IMAGE,
        &stages(&f, &["prod"]),
    ))
    .await?;
    let rolled = f.wait_phase(bad, ReleasePhase::RolledBack).await?;
    let bad_uid = uid(&rolled);
    let (_, doc) = wait_record(&f, bad, &bad_uid).await?;
    assert_eq!(doc["outcome"], "RolledBack");
    let rollback = &doc["rollbacks"][0];
    assert_eq!(rollback["stage"], "prod");
    assert_eq!(rollback["reason"], "GateFailed");
    assert!(
        rollback["message"]
            .as_str()
            .unwrap()
            .contains("workload-health"),
        "{rollback}"
    );
    assert!(rollback["failingSince"].is_string(), "{rollback}");
    let health = rollback["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "workload-health")
        .context("the workload-health verdict is in the rollback")?;
    assert_eq!(health["verdict"], "Failing", "{health}");
    assert_eq!(doc["stages"][0]["phase"], "RolledBack");
    assert_eq!(doc["dora"]["failed"], true);
    assert!(doc["dora"].get("deployedAt").is_none());

    // ----- DORA: the operator's gauges and the plugin agree -----------------------------
    let operator = f.operator();
    let labels = format!("application=\"{APP}\"");
    eventually(Duration::from_secs(30), || async {
        let deployments = operator
            .metric("stagecoach_dora_deployments", &labels)
            .await?;
        let rate = operator
            .metric("stagecoach_dora_change_failure_rate", &labels)
            .await?;
        Ok(((deployments - 1.0).abs() < 1e-9 && (rate - 0.5).abs() < 1e-9).then_some(()))
    })
    .await
    .context("the DORA gauges never showed 1 deployment and a change failure rate of 0.5")?;
    let (_, metrics) = operator.get("/metrics").await?;
    for gauge in [
        "stagecoach_dora_deployment_frequency_per_day",
        "stagecoach_dora_lead_time_seconds",
        "stagecoach_dora_time_to_restore_seconds",
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(gauge) && l.contains(&labels)),
            "{gauge} is exported"
        );
    }
    let lead_gauge = operator
        .metric("stagecoach_dora_lead_time_seconds", &labels)
        .await?;
    let report: Value = serde_json::from_str(&run_plugin(&[
        "dora", APP, "-n", &ns, "--since", "30d", "--format", "json",
    ])?)?;
    assert_eq!(report["deployments"], 1);
    assert_eq!(report["releasesEnteringLastStage"], 2);
    assert_eq!(report["failures"], 1);
    assert_eq!(report["changeFailureRate"], 0.5);
    assert_eq!(report["timeToRestore"]["count"], 1);
    assert!(
        (report["leadTime"]["medianSeconds"].as_f64().unwrap() - lead_gauge).abs() < 1e-9,
        "the plugin's median lead time {} is the gauge's {lead_gauge}",
        report["leadTime"]["medianSeconds"]
    );
    let text = run_plugin(&["dora", APP, "-n", &ns])?;
    assert!(text.contains("change failure rate:    50.0%"), "{text}");

    // ----- deleting the Releases leaves the records -------------------------------------
    for name in [ok, bad] {
        f.releases.delete(name, &DeleteParams::default()).await?;
    }
    eventually(Duration::from_secs(60), || async {
        Ok(f.releases
            .list(&ListParams::default())
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await
    .context("the Releases were never let go")?;
    let names = record_names(&f).await?;
    assert_eq!(
        names,
        BTreeSet::from([
            record::record_name(ok, &ok_uid),
            record::record_name(bad, &bad_uid)
        ])
    );

    // ----- the changelog, from the records alone ----------------------------------------
    let notes = run_plugin(&["changelog", APP, "-n", &ns, "--format", "markdown"])?;
    println!("{notes}");
    let (newer, older) = (
        notes.find("## 1.2.0").context("1.2.0 in the notes")?,
        notes.find("## 1.1.0").context("1.1.0 in the notes")?,
    );
    assert!(newer < older, "newest first:\n{notes}");
    assert!(notes.contains("Released to prod on"), "{notes}");
    assert!(
        notes.contains("Not released: rolled back in prod"),
        "{notes}"
    );
    assert!(
        notes.contains("- [PR-1.1.0](https://git.example.com/shop/pull/1.1.0): Shop 1.1.0"),
        "{notes}"
    );
    assert!(notes.contains("Shop 1.1.0 for everyone."), "{notes}");
    let json: Value = serde_json::from_str(&run_plugin(&[
        "changelog",
        APP,
        "-n",
        &ns,
        "--format",
        "json",
    ])?)?;
    assert_eq!(json.as_array().map(Vec::len), Some(2));
    let table = run_plugin(&["changelog", APP, "-n", &ns])?;
    assert!(
        table.contains("RolledBack") && table.contains("Succeeded"),
        "{table}"
    );

    // ----- the audit log: one line per decision, fixed fields ---------------------------
    let lines = audit_lines(&f);
    for line in &lines {
        for field in [
            "release_uid",
            "release",
            "namespace",
            "application",
            "version",
            "digest",
            "actor",
            "action",
            "stage",
            "outcome",
            "reason",
            "at",
            "message",
        ] {
            assert!(line.get(field).is_some(), "{field} missing in {line}");
        }
    }
    let shape = audit_shape(&f, &ok_uid);
    for expected in [
        ("StageStarted", "dev", "Succeeded"),
        ("StageSucceeded", "dev", "Succeeded"),
        ("StageStarted", "prod", "Succeeded"),
        ("EarlyLifeSupport", "prod", "Succeeded"),
        ("ReleaseEnded", "", "Succeeded"),
        ("RecordWritten", "", "Succeeded"),
    ] {
        let (action, stage, _) = expected;
        assert!(
            shape.iter().any(|(a, s, _)| a == action && s == stage),
            "no audit line {expected:?} in {shape:#?}"
        );
    }
    let started: Vec<_> = shape
        .iter()
        .filter(|(a, s, _)| a == "StageStarted" && s == "dev")
        .collect();
    assert_eq!(started.len(), 1, "each decision once: {shape:#?}");
    let bad_lines: Vec<&Value> = lines
        .iter()
        .filter(|l| l["release_uid"] == bad_uid.as_str())
        .collect();
    let rolled_line = bad_lines
        .iter()
        .find(|l| l["action"] == "RolledBack")
        .context("an audit line for the rollback")?;
    assert_eq!(rolled_line["stage"], "prod");
    assert_eq!(rolled_line["reason"], "GateFailed");
    assert_eq!(rolled_line["outcome"], "RolledBack");
    assert_eq!(rolled_line["actor"], "stagecoach");
    assert!(
        rolled_line["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );

    f.finish().await
}

/// A Pipeline for the fixture's dev and prod stages (2 s of early life support) with
/// extra spec fields.
async fn apply_pipeline(f: &Fixture, stage_names: &[&str], extra: Value) -> Result<()> {
    let mut spec = json!({"application": APP, "stages": stages(f, stage_names)});
    if stage_names == ["dev"] {
        spec["stages"][0]["earlyLifeSupport"] = json!({"duration": "2s"});
    }
    for (k, v) in extra.as_object().into_iter().flatten() {
        spec[k] = v.clone();
    }
    let api: Api<stagecoach_api::Pipeline> =
        Api::namespaced(f.client.clone(), &f.pipeline.home.name);
    apply(
        &api,
        json!({
            "apiVersion": "stagecoach.dev/v1alpha1",
            "kind": "Pipeline",
            "metadata": {"name": APP, "namespace": f.pipeline.home.name},
            "spec": spec,
        }),
    )
    .await
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_release_deleted_while_its_record_waits_for_a_notification_still_leaves_it() -> Result<()>
{
    let f = Fixture::start("rec-del").await?;
    // A receiver nobody listens on: the Closed event stays pending, so the record waits
    // for it (up to 10 minutes) until the Release is deleted.
    let port = free_port()?;
    apply_pipeline(
        &f,
        &["dev", "prod"],
        json!({"notifications": [{"name": "down", "webhook": {"url": format!("http://127.0.0.1:{port}/")},
                                  "events": ["Closed"]}]}),
    )
    .await?;
    let name = "shop-1.3.0";
    // The Releases name the Pipeline's stages too (the same namespaces): should the
    // Pipeline ever be out of sight, they still resolve to namespaces that exist.
    f.create_release(&release_doc(
        name,
        "1.3.0",
        NEW_IMAGE,
        &stages(&f, &["dev", "prod"]),
    ))
    .await?;
    let ended = f.wait_phase(name, ReleasePhase::Succeeded).await?;
    let release_uid = uid(&ended);
    let closed = f
        .wait_release(
            name,
            "a failed Closed delivery",
            Duration::from_secs(30),
            |r| {
                status(r)
                    .notifications
                    .iter()
                    .any(|n| n.receiver == "down" && n.attempts >= 1 && n.delivered_at.is_none())
            },
        )
        .await?;
    ensure!(status(&closed).phase == Some(ReleasePhase::Succeeded));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        record_names(&f).await?.is_empty(),
        "the record waits for the pending notification"
    );

    f.releases.delete(name, &DeleteParams::default()).await?;
    eventually(Duration::from_secs(60), || async {
        Ok(f.releases.get_opt(name).await?.is_none().then_some(()))
    })
    .await
    .context("the Release was never let go")?;
    let (_, doc) = wait_record(&f, name, &release_uid).await?;
    assert_eq!(doc["outcome"], "Succeeded");
    let notification = doc["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["event"] == "Closed")
        .context("the Closed notification is in the record")?;
    assert_eq!(notification["receiver"], "down");
    assert!(notification.get("deliveredAt").is_none(), "{notification}");
    assert!(notification["lastError"].is_string(), "{notification}");
    assert_eq!(doc["pipeline"], APP);
    assert!(
        audit_shape(&f, &release_uid)
            .iter()
            .any(|(a, _, o)| a == "RecordWritten" && o == "Succeeded")
    );
    f.finish().await
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_pipelines_retention_prunes_the_oldest_records() -> Result<()> {
    let f = Fixture::start("rec-keep").await?;
    apply_pipeline(&f, &["dev"], json!({"retention": {"count": 2}})).await?;
    let mut uids = Vec::new();
    for (version, image) in [
        ("1.0.1", NEW_IMAGE),
        ("1.0.2", NEWER_IMAGE),
        ("1.0.3", NEW_IMAGE),
    ] {
        let name = format!("shop-{version}");
        f.create_release(&release_doc(&name, version, image, &stages(&f, &["dev"])))
            .await?;
        let ended = f.wait_phase(&name, ReleasePhase::Succeeded).await?;
        let release_uid = uid(&ended);
        wait_record(&f, &name, &release_uid).await?;
        uids.push((name, release_uid));
    }
    let kept: BTreeSet<String> = uids[1..]
        .iter()
        .map(|(name, uid)| record::record_name(name, uid))
        .collect();
    eventually(Duration::from_secs(90), || async {
        Ok((record_names(&f).await? == kept).then_some(()))
    })
    .await
    .with_context(|| {
        format!(
            "only the two newest records were to be kept; log:\n{}",
            f.operator().log_tail(20)
        )
    })?;
    let (oldest, oldest_uid) = &uids[0];
    assert!(
        audit_shape(&f, oldest_uid)
            .iter()
            .any(|(a, _, o)| a == "RecordPruned" && o == "Deleted"),
        "the pruning of {oldest}'s record is in the audit log"
    );
    // Its Release still exists; deleting it does not bring the pruned record back.
    f.releases.delete(oldest, &DeleteParams::default()).await?;
    eventually(Duration::from_secs(60), || async {
        Ok(f.releases.get_opt(oldest).await?.is_none().then_some(()))
    })
    .await
    .context("the Release was never let go")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        record_names(&f).await?,
        kept,
        "a pruned record stays pruned"
    );
    // The bad retention values are refused at admission.
    let api: Api<stagecoach_api::Pipeline> =
        Api::namespaced(f.client.clone(), &f.pipeline.home.name);
    for (retention, message) in [
        (json!({}), "retention sets count, age or both"),
        (json!({"count": 0}), "should be greater than or equal to 1"),
        (
            json!({"age": "30d"}),
            "retention age must be a positive duration",
        ),
    ] {
        let refused = apply(
            &api,
            json!({
                "apiVersion": "stagecoach.dev/v1alpha1",
                "kind": "Pipeline",
                "metadata": {"name": "refused", "namespace": f.pipeline.home.name},
                "spec": {"application": "other", "stages": [{"name": "dev"}], "retention": retention},
            }),
        )
        .await
        .err()
        .with_context(|| format!("retention {retention} was admitted"))?;
        assert!(format!("{refused:#}").contains(message), "{refused:#}");
    }
    f.finish().await
}
