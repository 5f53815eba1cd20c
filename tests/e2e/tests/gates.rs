//! Gates on real servers: a Prometheus process per test (Debian's `prometheus`) scraping
//! an exporter the test controls every second, an HTTP endpoint in the test, and Jobs
//! the real Job controller runs on the control plane (kwok completes their pods, fails
//! those with a `bad` image and never finishes those with a `hang` image).
//!
//! A metric that goes bad mid-rollout rolls the stage back; no answer, an empty result or
//! a Job that never finishes is Inconclusive and the release is never promoted on it.

#![allow(clippy::unwrap_used, clippy::too_many_lines)] // test code: a scenario per test

mod release_support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};
use release_support::{APP, Fixture, NEW_IMAGE, condition, stage_phase, stage_step, status};
use serde_json::{Value, json};
use stagecoach_api::Release;
use stagecoach_api::condition::ConditionStatus;
use stagecoach_api::release::{GateStatus, GateVerdict, ReleasePhase, StagePhase};
use stagecoach_e2e::prometheus::{Exporter, Prometheus};
use stagecoach_e2e::{apply, eventually, release_manifest};

/// The metric the exporter serves for prod.
const ERROR_RATIO: &str = "shop_error_ratio{stage=\"prod\"}";
/// The query of the Prometheus gates: one query for every stage.
const ERROR_QUERY: &str = "max(shop_error_ratio{stage=\"{{stage}}\"})";

// ----- the pipeline under test ---------------------------------------------------------------

/// `spec.stages` with the fixture's namespaces, fast deadlines, a short early life
/// support in prod, and `extra(stage)` merged into each stage.
fn stages(fixture: &Fixture, extra: impl Fn(&str) -> Value) -> Vec<Value> {
    fixture
        .pipeline
        .stages
        .iter()
        .map(|(stage, ns)| {
            let mut s = json!({"name": stage, "namespace": ns.name, "progressDeadline": "60s"});
            if stage == "prod" {
                s["earlyLifeSupport"] = json!({"duration": "2s"});
            }
            if let (Some(s), Value::Object(extra)) = (s.as_object_mut(), extra(stage)) {
                s.extend(extra);
            }
            s
        })
        .collect()
}

fn prometheus_gate(address: &str, query: &str, extra: &Value) -> Value {
    let mut gate = json!({
        "name": "error-ratio",
        "interval": "1s",
        "prometheus": {
            "address": address,
            "query": query,
            "comparison": "LessThan",
            "threshold": 0.05,
        }
    });
    if let (Some(gate), Some(extra)) = (gate.as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            if key == "prometheus" {
                for (k, v) in value.as_object().unwrap() {
                    gate["prometheus"][k] = v.clone();
                }
            } else {
                gate.insert(key.clone(), value.clone());
            }
        }
    }
    gate
}

async fn create_secret(fixture: &Fixture, stage: &str, name: &str, value: &str) -> Result<()> {
    let api: Api<Secret> = Api::namespaced(fixture.client.clone(), fixture.ns(stage));
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name},
        "stringData": {"token": value}
    }))?;
    api.create(&PostParams::default(), &secret).await?;
    Ok(())
}

/// The status of gate `gate` in `stage`, if the stage lists it.
fn gate_status(release: &Release, stage: &str, gate: &str) -> Option<GateStatus> {
    status(release)
        .stages
        .iter()
        .find(|s| s.name == stage)?
        .gates
        .iter()
        .find(|g| g.name == gate)
        .cloned()
}

/// The gate's result as the closing record keeps it.
fn recorded_gate(release: &Release, stage: &str, gate: &str) -> Option<GateStatus> {
    status(release)
        .closing_record?
        .stages
        .iter()
        .find(|s| s.name == stage)?
        .gates
        .iter()
        .find(|g| g.name == gate)
        .cloned()
}

/// The gate's last verdict: in the stage's status, else in the closing record.
fn last_verdict(release: &Release, stage: &str, gate: &str) -> Option<GateStatus> {
    gate_status(release, stage, gate).or_else(|| recorded_gate(release, stage, gate))
}

fn passing(release: &Release, stage: &str, gate: &str) -> bool {
    gate_status(release, stage, gate).is_some_and(|g| g.verdict == GateVerdict::Passing)
}

/// The release is held by a gate that stays inconclusive: phase Paused, and the
/// conditions say why (Progressing=False and Stalled=True, reason GateInconclusive).
fn held_inconclusive(release: &Release) -> bool {
    status(release).phase == Some(ReleasePhase::Paused)
        && condition(release, "Progressing")
            == Some((ConditionStatus::False, "GateInconclusive".into()))
        && condition(release, "Stalled")
            .is_some_and(|(s, why)| s == ConditionStatus::True && why == "GateInconclusive")
}

/// Checks for `seconds` that the release stays held and never leaves `stage` nor goes
/// past `step` (never promoted on an inconclusive verdict).
async fn stays_held(
    fixture: &Fixture,
    name: &str,
    stage: &str,
    step: i32,
    seconds: u64,
) -> Result<()> {
    for _ in 0..seconds * 2 {
        let r = fixture.release(name).await?;
        ensure!(
            held_inconclusive(&r),
            "the release is no longer held: {:#?}",
            status(&r)
        );
        ensure!(
            stage_phase(&r, stage) == Some(StagePhase::Progressing)
                && stage_step(&r, stage) == Some(step),
            "the release moved on from {stage} step {step}: {:#?}",
            status(&r)
        );
        ensure!(status(&r).current_stage.as_deref() == Some(stage));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

// ----- servers in the test -------------------------------------------------------------------

/// What an HTTP endpoint of the test saw: (headers, query, body) per request.
#[derive(Default)]
struct Seen {
    requests: Vec<(HeaderMap, String, String)>,
    rejected: usize,
}

/// Serves `router` on a free port of 127.0.0.1 until dropped.
struct Server {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(router: Router) -> Result<Server> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(Server { url, task })
}

/// A proxy in front of Prometheus that wants `Authorization: Bearer <token>`, as Google
/// Cloud Managed Service for Prometheus does: the query API, behind a bearer token.
async fn token_proxy(prometheus: String, token: &str) -> Result<(Server, Arc<Mutex<Seen>>)> {
    #[derive(Clone)]
    struct Proxy {
        prometheus: String,
        wanted: String,
        seen: Arc<Mutex<Seen>>,
    }
    async fn query(
        State(proxy): State<Proxy>,
        headers: HeaderMap,
        RawQuery(raw): RawQuery,
    ) -> (StatusCode, String) {
        let raw = raw.unwrap_or_default();
        let authorized = headers.get("authorization").and_then(|v| v.to_str().ok())
            == Some(proxy.wanted.as_str());
        {
            let mut seen = proxy.seen.lock().unwrap();
            if authorized {
                seen.requests.push((headers, raw.clone(), String::new()));
            } else {
                seen.rejected += 1;
            }
        }
        if !authorized {
            return (
                StatusCode::UNAUTHORIZED,
                "{\"status\":\"error\",\"error\":\"no token\"}".into(),
            );
        }
        match reqwest::get(format!("{}/api/v1/query?{raw}", proxy.prometheus)).await {
            Ok(answer) => (
                StatusCode::from_u16(answer.status().as_u16()).unwrap(),
                answer.text().await.unwrap_or_default(),
            ),
            Err(error) => (StatusCode::BAD_GATEWAY, error.to_string()),
        }
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let router = Router::new()
        .route("/gmp/api/v1/query", get(query))
        .with_state(Proxy {
            prometheus,
            wanted: format!("Bearer {token}"),
            seen: seen.clone(),
        });
    Ok((serve(router).await?, seen))
}

// ----- Prometheus ----------------------------------------------------------------------------

#[tokio::test]
#[ignore = "needs the test control plane and Prometheus: run `cargo xtask test`"]
async fn a_metric_that_goes_bad_mid_rollout_rolls_prod_back() -> Result<()> {
    let fixture = Fixture::start("gt-metric").await?;
    let exporter = Exporter::start().await?;
    exporter.set(ERROR_RATIO, 0.01);
    let prometheus = Prometheus::start(&exporter).await?;
    // Through a proxy that wants the bearer token from a Secret in prod's namespace
    // (the newline `echo` leaves is not part of it).
    let (proxy, seen) = token_proxy(prometheus.address(), "s3cret").await?;
    create_secret(&fixture, "prod", "metrics-token", "s3cret\n").await?;
    let gate = prometheus_gate(
        &format!("{}/gmp", proxy.url),
        ERROR_QUERY,
        &json!({"prometheus": {"bearerTokenSecretRef": {"name": "metrics-token", "key": "token"}}}),
    );
    let spec = stages(&fixture, |stage| {
        if stage == "prod" {
            json!({
                "steps": [{"setWeight": 25}, {"pause": {"duration": "5m"}}, {"setWeight": 100}],
                "gates": [gate.clone()],
            })
        } else {
            json!({})
        }
    });
    let name = "shop-1-1-0";
    fixture
        .create_release(&release_manifest(name, APP, "1.1.0", NEW_IMAGE, &spec))
        .await?;

    // At prod's pause, the gate passes on the value Prometheus scraped.
    let at_pause = fixture
        .wait_release(
            name,
            "prod's pause with the gate passing",
            Duration::from_secs(180),
            |r| stage_step(r, "prod") == Some(1) && passing(r, "prod", "error-ratio"),
        )
        .await?;
    let before = gate_status(&at_pause, "prod", "error-ratio").unwrap();
    assert_eq!(before.value.as_deref(), Some("0.01"), "{before:?}");
    assert_eq!(at_pause.status.as_ref().unwrap().current_weight, Some(25));

    // The metric goes bad: the next scrape has it, the next evaluation fails the gate,
    // and the stage is rolled back.
    exporter.set(ERROR_RATIO, 0.5);
    let rolled_back = fixture.wait_phase(name, ReleasePhase::RolledBack).await?;
    let s = status(&rolled_back);
    assert_eq!(s.rollbacks.len(), 1, "{:?}", s.rollbacks);
    assert_eq!(s.rollbacks[0].stage, "prod");
    assert_eq!(s.rollbacks[0].reason, "GateFailed");
    assert!(
        s.rollbacks[0].message.contains("error-ratio"),
        "the rollback names the gate: {}",
        s.rollbacks[0].message
    );
    let failed = last_verdict(&rolled_back, "prod", "error-ratio").context("the gate's result")?;
    assert_eq!(failed.verdict, GateVerdict::Failing, "{failed:?}");
    assert_eq!(failed.value.as_deref(), Some("0.5"), "{failed:?}");
    assert!(failed.message.contains("0.5"), "{failed:?}");
    for stage in ["dev", "qa", "demo"] {
        assert_eq!(
            stage_phase(&rolled_back, stage),
            Some(StagePhase::Succeeded)
        );
    }
    fixture
        .wait_template("prod", fixture.before("prod"))
        .await?;
    fixture.wait_no_canary("prod").await?;

    // Every query carried the token; none was refused.
    {
        let seen = seen.lock().unwrap();
        assert!(!seen.requests.is_empty());
        assert_eq!(seen.rejected, 0);
        assert!(
            seen.requests
                .iter()
                .all(|(_, query, _)| query.contains("stage%3D%22prod%22")
                    || query.contains("stage=%22prod%22")),
            "the query names the stage: {:?}",
            seen.requests.iter().map(|(_, q, _)| q).collect::<Vec<_>>()
        );
    }
    fixture.finish().await
}

#[tokio::test]
#[ignore = "needs the test control plane and Prometheus: run `cargo xtask test`"]
async fn prometheus_stopped_mid_rollout_holds_the_release_and_never_promotes_it() -> Result<()> {
    let fixture = Fixture::start("gt-down").await?;
    let exporter = Exporter::start().await?;
    exporter.set(ERROR_RATIO, 0.0);
    let mut prometheus = Prometheus::start(&exporter).await?;
    let gate = prometheus_gate(
        &prometheus.address(),
        ERROR_QUERY,
        &json!({"inconclusiveLimit": 2, "prometheus": {"timeout": "2s"}}),
    );
    let spec = stages(&fixture, |stage| {
        if stage == "prod" {
            json!({
                "steps": [{"setWeight": 25}, {"pause": {"duration": "6s"}}, {"setWeight": 100}],
                "gates": [gate.clone()],
            })
        } else {
            json!({})
        }
    });
    let name = "shop-1-1-0";
    fixture
        .create_release(&release_manifest(name, APP, "1.1.0", NEW_IMAGE, &spec))
        .await?;
    fixture
        .wait_release(name, "prod's pause", Duration::from_secs(180), |r| {
            stage_step(r, "prod") == Some(1)
        })
        .await?;
    prometheus.stop().await?;

    // No answer three times in a row (limit 2): the release holds at the pause, asking a
    // person to look, and stays there after the pause's time is up.
    let held = fixture
        .wait_release(
            name,
            "held by the inconclusive gate",
            Duration::from_secs(60),
            held_inconclusive,
        )
        .await?;
    let gate_now = gate_status(&held, "prod", "error-ratio").unwrap();
    assert_eq!(gate_now.verdict, GateVerdict::Inconclusive, "{gate_now:?}");
    assert!(gate_now.inconclusive > 2, "{gate_now:?}");
    assert!(
        gate_now.message.contains("no answer from Prometheus"),
        "{gate_now:?}"
    );
    assert_eq!(stage_step(&held, "prod"), Some(1));
    stays_held(&fixture, name, "prod", 1, 10).await?;
    // Never promoted: the canary at 25 %, the stable Deployment still on the old version.
    let after = fixture.release(name).await?;
    assert_eq!(status(&after).current_weight, Some(25));
    assert_eq!(fixture.template("prod").await?, *fixture.before("prod"));
    fixture.finish().await
}

#[tokio::test]
#[ignore = "needs the test control plane and Prometheus: run `cargo xtask test`"]
async fn an_empty_result_is_inconclusive_and_the_release_goes_on_once_the_metric_is_there()
-> Result<()> {
    let fixture = Fixture::start("gt-empty").await?;
    let exporter = Exporter::start().await?;
    exporter.set("shop_other_metric", 1.0);
    let prometheus = Prometheus::start(&exporter).await?;
    let gate = prometheus_gate(
        &prometheus.address(),
        "max(shop_error_ratio{stage=\"{{stage}}\"})",
        &json!({"inconclusiveLimit": 1}),
    );
    let spec = stages(&fixture, |stage| {
        if stage == "dev" {
            json!({"gates": [gate.clone()]})
        } else {
            json!({})
        }
    });
    let name = "shop-1-1-0";
    fixture
        .create_release(&release_manifest(name, APP, "1.1.0", NEW_IMAGE, &spec))
        .await?;
    let held = fixture
        .wait_release(
            name,
            "held by the empty result",
            Duration::from_secs(90),
            held_inconclusive,
        )
        .await?;
    let gate_now = gate_status(&held, "dev", "error-ratio").unwrap();
    assert_eq!(gate_now.verdict, GateVerdict::Inconclusive, "{gate_now:?}");
    assert!(gate_now.message.contains("empty"), "{gate_now:?}");
    assert_eq!(stage_phase(&held, "qa"), Some(StagePhase::Pending));
    stays_held(&fixture, name, "dev", 0, 4).await?;

    // The series appears: the next evaluation is conclusive and the release goes on.
    exporter.set("shop_error_ratio{stage=\"dev\"}", 0.0);
    let done = fixture.wait_phase(name, ReleasePhase::Succeeded).await?;
    let record = recorded_gate(&done, "dev", "error-ratio").context("dev's gate in the record")?;
    assert_eq!(record.verdict, GateVerdict::Passing, "{record:?}");
    fixture.finish().await
}

#[tokio::test]
#[ignore = "needs the test control plane and Prometheus: run `cargo xtask test`"]
async fn a_query_prometheus_cannot_parse_fails_the_gate_in_prometheus_words() -> Result<()> {
    let fixture = Fixture::start("gt-parse").await?;
    let exporter = Exporter::start().await?;
    exporter.set(ERROR_RATIO, 0.0);
    let prometheus = Prometheus::start(&exporter).await?;
    let gate = prometheus_gate(
        &prometheus.address(),
        "sum(rate(shop_error_ratio[1m]",
        &json!({}),
    );
    let spec = stages(&fixture, |stage| {
        if stage == "dev" {
            json!({"gates": [gate.clone()]})
        } else {
            json!({})
        }
    });
    let name = "shop-1-1-0";
    fixture
        .create_release(&release_manifest(name, APP, "1.1.0", NEW_IMAGE, &spec))
        .await?;
    let rolled_back = fixture.wait_phase(name, ReleasePhase::RolledBack).await?;
    let s = status(&rolled_back);
    assert_eq!(s.rollbacks[0].stage, "dev");
    assert_eq!(s.rollbacks[0].reason, "GateFailed");
    let failed = last_verdict(&rolled_back, "dev", "error-ratio").unwrap();
    assert_eq!(failed.verdict, GateVerdict::Failing);
    // Prometheus's own words (its PromQL parser's).
    assert!(failed.message.contains("parse error"), "{failed:?}");
    fixture.wait_template("dev", fixture.before("dev")).await?;
    fixture.finish().await
}

// ----- HTTP ----------------------------------------------------------------------------------

/// An issue tracker's API, as Sentry's: the new issues of a release, behind a token.
#[derive(Clone)]
struct Tracker {
    new_issues: Arc<Mutex<i64>>,
    seen: Arc<Mutex<Seen>>,
}

/// The tracker's answer: `{"newIssues": N}`, every request recorded.
async fn issues(
    State(tracker): State<Tracker>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: String,
) -> (StatusCode, axum::Json<Value>) {
    let count = *tracker.new_issues.lock().unwrap();
    tracker
        .seen
        .lock()
        .unwrap()
        .requests
        .push((headers, query.unwrap_or_default(), body));
    (
        StatusCode::OK,
        axum::Json(json!({"release": "1.1.0", "newIssues": count})),
    )
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn an_http_gate_from_the_pipeline_passes_then_a_bad_value_rolls_prod_back() -> Result<()> {
    let fixture = Fixture::start("gt-http").await?;
    let tracker = Tracker {
        new_issues: Arc::new(Mutex::new(0)),
        seen: Arc::new(Mutex::new(Seen::default())),
    };
    let server = serve(
        Router::new()
            .route("/api/0/issues", post(issues))
            .with_state(tracker.clone()),
    )
    .await?;
    create_secret(&fixture, "prod", "tracker-token", "Bearer t0ken").await?;

    // The gate is the Pipeline's: the Release names no stages at all.
    let gate = json!({
        "name": "new-issues",
        "interval": "1s",
        "http": {
            "url": format!("{}/api/0/issues?version={{{{version}}}}&stage={{{{stage}}}}", server.url),
            "method": "POST",
            "headers": [
                {"name": "Authorization", "secretRef": {"name": "tracker-token", "key": "token"}},
                {"name": "Accept", "value": "application/json"},
            ],
            "body": "{\"release\": \"{{release}}\", \"namespace\": \"{{namespace}}\"}",
            "expectedStatus": 200,
            "jsonPointer": "/newIssues",
            "comparison": "LessOrEqual",
            "value": "0",
        }
    });
    let pipeline_stages = stages(&fixture, |stage| {
        if stage == "prod" {
            json!({
                "steps": [{"setWeight": 25}, {"pause": {"duration": "5m"}}, {"setWeight": 100}],
                "gates": [gate.clone()],
            })
        } else {
            json!({})
        }
    });
    let pipelines: Api<stagecoach_api::Pipeline> =
        Api::namespaced(fixture.client.clone(), &fixture.pipeline.home.name);
    apply(
        &pipelines,
        json!({
            "apiVersion": "stagecoach.dev/v1alpha1",
            "kind": "Pipeline",
            "metadata": {"name": APP, "namespace": fixture.pipeline.home.name},
            "spec": {"application": APP, "stages": pipeline_stages}
        }),
    )
    .await?;
    let name = "shop-1-1-0";
    fixture
        .create_release(&release_manifest(name, APP, "1.1.0", NEW_IMAGE, &[]))
        .await?;
    let at_pause = fixture
        .wait_release(
            name,
            "prod's pause with the gate passing",
            Duration::from_secs(180),
            |r| stage_step(r, "prod") == Some(1) && passing(r, "prod", "new-issues"),
        )
        .await?;
    assert_eq!(
        gate_status(&at_pause, "prod", "new-issues")
            .unwrap()
            .value
            .as_deref(),
        Some("0")
    );
    {
        let seen = tracker.seen.lock().unwrap();
        let (headers, query, body) = seen.requests.last().unwrap();
        assert_eq!(headers.get("authorization").unwrap(), "Bearer t0ken");
        assert_eq!(headers.get("accept").unwrap(), "application/json");
        assert_eq!(query, "version=1.1.0&stage=prod");
        let body: Value = serde_json::from_str(body)?;
        assert_eq!(
            body,
            json!({"release": name, "namespace": fixture.ns("prod")})
        );
    }

    // New issues appear: Failing, rolled back.
    *tracker.new_issues.lock().unwrap() = 3;
    let rolled_back = fixture.wait_phase(name, ReleasePhase::RolledBack).await?;
    let s = status(&rolled_back);
    assert_eq!(s.rollbacks[0].stage, "prod");
    assert_eq!(s.rollbacks[0].reason, "GateFailed");
    let failed = last_verdict(&rolled_back, "prod", "new-issues").unwrap();
    assert_eq!(failed.verdict, GateVerdict::Failing, "{failed:?}");
    assert_eq!(failed.value.as_deref(), Some("3"), "{failed:?}");
    fixture
        .wait_template("prod", fixture.before("prod"))
        .await?;
    fixture.finish().await
}

// ----- Jobs ----------------------------------------------------------------------------------

fn job_gate(image: &str, extra: &Value) -> Value {
    let mut gate = json!({
        "name": "e2e",
        "interval": "1s",
        "job": {
            "image": image,
            "command": ["/run-suite"],
            "args": ["--stage", "qa"],
            "env": [{"name": "SUITE", "value": "smoke"}],
        }
    });
    for (key, value) in extra.as_object().unwrap() {
        if key == "job" {
            for (k, v) in value.as_object().unwrap() {
                gate["job"][k] = v.clone();
            }
        } else {
            gate[key] = value.clone();
        }
    }
    gate
}

fn qa_gate(fixture: &Fixture, gate: &Value) -> Vec<Value> {
    stages(fixture, |stage| {
        if stage == "qa" {
            json!({"gates": [gate.clone()]})
        } else {
            json!({})
        }
    })
}

async fn gate_jobs(fixture: &Fixture, stage: &str) -> Result<Vec<Job>> {
    let api: Api<Job> = Api::namespaced(fixture.client.clone(), fixture.ns(stage));
    Ok(api
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=stagecoach"))
        .await?
        .items
        .into_iter()
        .filter(|j| j.metadata.deletion_timestamp.is_none())
        .collect())
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_job_gate_runs_its_job_on_the_control_plane_and_passes_when_it_succeeds() -> Result<()> {
    let fixture = Fixture::start("gt-job").await?;
    let name = "shop-1-1-0";
    let spec = qa_gate(&fixture, &job_gate("example/shop-e2e:1.1.0", &json!({})));
    fixture
        .create_release(&release_manifest(name, APP, "1.1.0", NEW_IMAGE, &spec))
        .await?;
    // The Job as the Job controller runs it: in qa's namespace, with the release's
    // version and stage in its environment.
    let jobs = eventually(Duration::from_secs(120), || async {
        let jobs = gate_jobs(&fixture, "qa").await?;
        Ok((!jobs.is_empty()).then_some(jobs))
    })
    .await
    .context("no gate Job in qa")?;
    let job = &jobs[0];
    let labels = job.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("stagecoach.dev/gate").map(String::as_str),
        Some("e2e")
    );
    let spec_of_job = job.spec.clone().unwrap();
    assert!(spec_of_job.ttl_seconds_after_finished.is_some());
    let container = &spec_of_job.template.spec.unwrap().containers[0];
    assert_eq!(container.image.as_deref(), Some("example/shop-e2e:1.1.0"));
    assert_eq!(container.command.clone().unwrap(), ["/run-suite"]);
    let env: BTreeMap<String, String> = container
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name, e.value.unwrap_or_default()))
        .collect();
    assert_eq!(env["SUITE"], "smoke");
    assert_eq!(env["STAGECOACH_VERSION"], "1.1.0");
    assert_eq!(env["STAGECOACH_STAGE"], "qa");
    assert_eq!(env["STAGECOACH_RELEASE"], name);
    assert_eq!(env["STAGECOACH_NAMESPACE"], fixture.ns("qa"));

    let done = fixture.wait_phase(name, ReleasePhase::Succeeded).await?;
    let record = recorded_gate(&done, "qa", "e2e").context("qa's gate in the record")?;
    assert_eq!(record.verdict, GateVerdict::Passing, "{record:?}");
    assert!(record.message.contains("succeeded"), "{record:?}");
    // qa ended: its gate Jobs are gone.
    eventually(Duration::from_secs(30), || async {
        Ok(gate_jobs(&fixture, "qa").await?.is_empty().then_some(()))
    })
    .await
    .context("qa's gate Jobs were not deleted when the stage ended")?;
    fixture.finish().await
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_job_gate_whose_job_fails_rolls_the_stage_back() -> Result<()> {
    let fixture = Fixture::start("gt-jobfail").await?;
    let name = "shop-1-1-0";
    let spec = qa_gate(
        &fixture,
        &job_gate("example/shop-e2e:bad-1.1.0", &json!({})),
    );
    fixture
        .create_release(&release_manifest(name, APP, "1.1.0", NEW_IMAGE, &spec))
        .await?;
    let rolled_back = fixture.wait_phase(name, ReleasePhase::RolledBack).await?;
    let s = status(&rolled_back);
    assert_eq!(s.rollbacks[0].stage, "qa");
    assert_eq!(s.rollbacks[0].reason, "GateFailed");
    let failed = last_verdict(&rolled_back, "qa", "e2e").unwrap();
    assert_eq!(failed.verdict, GateVerdict::Failing, "{failed:?}");
    assert!(failed.message.contains("failed"), "{failed:?}");
    fixture.assert_untouched("demo", name).await?;
    fixture.wait_template("qa", fixture.before("qa")).await?;
    eventually(Duration::from_secs(30), || async {
        Ok(gate_jobs(&fixture, "qa").await?.is_empty().then_some(()))
    })
    .await
    .context("the gate Jobs of a rolled-back stage were not deleted")?;
    fixture.finish().await
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_job_that_never_finishes_is_inconclusive_and_the_release_is_never_promoted() -> Result<()>
{
    let fixture = Fixture::start("gt-jobhang").await?;
    let name = "shop-1-1-0";
    let gate = job_gate(
        "example/shop-e2e:hang",
        &json!({"inconclusiveLimit": 1, "job": {"timeout": "5s"}}),
    );
    let spec = qa_gate(&fixture, &gate);
    fixture
        .create_release(&release_manifest(name, APP, "1.1.0", NEW_IMAGE, &spec))
        .await?;
    let held = fixture
        .wait_release(
            name,
            "held by the Job that never finishes",
            Duration::from_secs(120),
            held_inconclusive,
        )
        .await?;
    let gate_now = gate_status(&held, "qa", "e2e").unwrap();
    assert_eq!(gate_now.verdict, GateVerdict::Inconclusive, "{gate_now:?}");
    assert!(
        gate_now.message.contains("did not finish within 5s"),
        "{gate_now:?}"
    );
    stays_held(&fixture, name, "qa", 0, 4).await?;
    assert_eq!(
        stage_phase(&fixture.release(name).await?, "demo"),
        Some(StagePhase::Pending)
    );
    // Deleting the Release deletes its gate Jobs.
    fixture
        .releases
        .delete(name, &kube::api::DeleteParams::default())
        .await?;
    eventually(Duration::from_secs(60), || async {
        Ok(gate_jobs(&fixture, "qa").await?.is_empty().then_some(()))
    })
    .await
    .context("the gate Jobs of a deleted Release were not deleted")?;
    fixture.finish().await
}
