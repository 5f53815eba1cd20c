use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::get;
use futures::StreamExt;
use serde_json::json;
use stagecoach_api::release::GateVerdict;

use super::*;

/// A self-signed CA certificate (EC P-256), for the client that trusts a gate's CA.
const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBkDCCATegAwIBAgIUKk3+Wjy4tyd7l0xXa91qxvOlFq8wCgYIKoZIzj0EAwIw
HTEbMBkGA1UEAwwSc3RhZ2Vjb2FjaC10ZXN0LWNhMCAXDTI2MTEyOTAxMDkwN1oY
DzIxMjYxMTA1MDEwOTA3WjAdMRswGQYDVQQDDBJzdGFnZWNvYWNoLXRlc3QtY2Ew
WTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAS4fxjnpQn28Pm6ToDYut+jOl0RyBaw
mlA2G5UJrEsAhDUUBKlOMpI8129+p2CuEsQ7IoNMQSuTirH3PN2JdwsRo1MwUTAd
BgNVHQ4EFgQUkcJ1D4wYPII/z+9eBrtx4qe8JC8wHwYDVR0jBBgwFoAUkcJ1D4wY
PII/z+9eBrtx4qe8JC8wDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNHADBE
AiA8ZGiYaUHnVIy4oV+wnM3/du8rZgg9K22GMU3CNLNgNgIgUKN+UQ87/C5i5nWF
dbi/qRH8hsa69ycFhS0++qtrKfs=
-----END CERTIFICATE-----
";

fn release() -> Release {
    serde_json::from_value(json!({
        "apiVersion": "stagecoach.dev/v1alpha1",
        "kind": "Release",
        "metadata": {"name": "shop-1.4.0", "namespace": "shop"},
        "spec": {
            "application": "shop",
            "version": "1.4.0",
            "workloads": [{"deployment": "api", "containers": [{"name": "app", "image": "shop:1.4.0"}]}],
        }
    }))
    .unwrap()
}

fn gate(url: &str) -> Gate {
    serde_json::from_value(json!({
        "name": "errors",
        "interval": "1s",
        "http": {"url": url, "jsonPointer": "/count", "value": "0"}
    }))
    .unwrap()
}

fn stages(gates: &[Gate]) -> Vec<ResolvedStage> {
    ["dev", "prod"]
        .iter()
        .map(|name| ResolvedStage {
            name: (*name).to_owned(),
            namespace: Some(format!("shop-{name}")),
            steps: Vec::new(),
            gates: if *name == "prod" {
                gates.to_vec()
            } else {
                Vec::new()
            },
            progress_deadline: None,
            early_life_support: None,
            approval: None,
        })
        .collect()
}

fn status(phase: &str, stage: &str, stage_phase: &str, step: i32) -> ReleaseStatus {
    serde_json::from_value(json!({
        "phase": phase,
        "currentStage": stage,
        "stages": [
            {"name": "dev", "namespace": "shop-dev", "phase": "Succeeded"},
            {"name": "prod", "namespace": "shop-prod", "phase": stage_phase, "step": step},
        ]
    }))
    .unwrap()
}

#[test]
fn gates_are_wanted_while_their_stage_progresses_or_is_in_early_life_support() {
    let release = release();
    let stages = stages(&[gate("http://errors.example/count")]);
    let of = |s: &ReleaseStatus, deleting| Wanted::of(&release, Some(s), &stages, deleting);

    let at_step = of(&status("Progressing", "prod", "Progressing", 2), false).unwrap();
    assert_eq!(
        (
            at_step.stage.as_str(),
            at_step.namespace.as_str(),
            at_step.step.as_str()
        ),
        ("prod", "shop-prod", "step 2")
    );
    assert_eq!(
        (at_step.release.as_str(), at_step.version.as_str()),
        ("shop-1.4.0", "1.4.0")
    );
    assert_eq!(at_step.gates.len(), 1);
    // A person's pause holds the steps, not the gates.
    let paused = of(&status("Paused", "prod", "Progressing", 2), false).unwrap();
    assert_eq!(paused, at_step);
    let early = of(
        &status("EarlyLifeSupport", "prod", "EarlyLifeSupport", 2),
        false,
    )
    .unwrap();
    assert_eq!(early.step, "early-life-support");

    // Nothing once it ended, is being deleted, or is at a stage without gates.
    assert!(of(&status("RolledBack", "prod", "RolledBack", 2), false).is_none());
    assert!(of(&status("Progressing", "prod", "Progressing", 2), true).is_none());
    assert!(of(&status("Progressing", "prod", "Pending", 0), false).is_none());
    let dev: ReleaseStatus = serde_json::from_value(json!({
        "phase": "Progressing", "currentStage": "dev",
        "stages": [{"name": "dev", "namespace": "shop-dev", "phase": "Progressing", "step": 0}]
    }))
    .unwrap();
    assert!(of(&dev, false).is_none());
    assert!(Wanted::of(&release, None, &stages, false).is_none());
}

#[test]
fn a_running_gate_serves_only_the_stage_step_and_spec_it_was_started_for() {
    let release = release();
    let g = gate("http://errors.example/count");
    let stages_now = stages(std::slice::from_ref(&g));
    let step2 = Wanted::of(
        &release,
        Some(&status("Progressing", "prod", "Progressing", 2)),
        &stages_now,
        false,
    )
    .unwrap();
    let step3 = Wanted::of(
        &release,
        Some(&status("Progressing", "prod", "Progressing", 3)),
        &stages_now,
        false,
    )
    .unwrap();
    assert!(step2.same_evaluation(&step2, &g));
    assert!(!step3.same_evaluation(&step2, &g));
    let mut changed = g.clone();
    changed.interval = Some("5s".into());
    assert!(!step2.same_evaluation(&step2, &changed));
}

#[test]
fn evaluation_ids_are_stable_and_differ_per_step_gate_spec_and_number() {
    let release = release();
    let g = gate("http://errors.example/count");
    let stages = stages(std::slice::from_ref(&g));
    let wanted = |step| {
        Wanted::of(
            &release,
            Some(&status("Progressing", "prod", "Progressing", step)),
            &stages,
            false,
        )
        .unwrap()
    };
    let id = evaluation_id("shop", &wanted(1), &g, 0);
    assert_eq!(id, evaluation_id("shop", &wanted(1), &g, 0));
    assert!(id.ends_with("-0"), "{id}");
    let mut other = g.clone();
    other.count = Some(3);
    for different in [
        evaluation_id("shop", &wanted(1), &g, 1),
        evaluation_id("shop", &wanted(2), &g, 0),
        evaluation_id("shop", &wanted(1), &other, 0),
        evaluation_id("shop-2", &wanted(1), &g, 0),
    ] {
        assert_ne!(id, different);
    }
}

#[test]
fn job_manifest_names_its_release_exactly_and_runs_in_the_stage_namespace() {
    let job: stagecoach_api::release::JobGate =
        serde_json::from_value(json!({"image": "registry.example/e2e:1", "timeout": "5m"}))
            .unwrap();
    let ctx = providers::GateContext {
        stage: "qa",
        namespace: "shop-qa",
        release: "shop-1.4.0",
        version: "1.4.0",
    };
    let manifest = job::manifest(&job::Evaluation {
        release_namespace: "shop",
        gate_name: "e2e",
        gate: &job,
        ctx: &ctx,
        id: "0a1b2c3d-0",
        timeout: Duration::from_secs(300),
    });
    assert_eq!(manifest["metadata"]["namespace"], "shop-qa");
    assert_eq!(
        manifest["metadata"]["annotations"][job::RELEASE_ANNOTATION],
        "shop/shop-1.4.0"
    );
    assert_eq!(
        manifest["metadata"]["labels"][providers::MANAGED_BY_LABEL],
        "stagecoach"
    );
    assert!(manifest["spec"]["ttlSecondsAfterFinished"].is_number());
    let parsed: k8s_openapi::api::batch::v1::Job = serde_json::from_value(manifest).unwrap();
    assert!(!kube::ResourceExt::name_any(&parsed).is_empty());
}

#[test]
fn the_query_goes_to_the_instant_query_endpoint_under_the_address() {
    // Google Cloud Managed Service for Prometheus serves the API under a path.
    let url = prometheus::query_url(
        "https://monitoring.googleapis.com/v1/projects/shop/location/global/prometheus/",
        "sum(rate(http_requests_total{code=~\"5..\"}[5m])) > 0",
    )
    .unwrap();
    assert_eq!(
        url.path(),
        "/v1/projects/shop/location/global/prometheus/api/v1/query"
    );
    let (key, value) = url.query_pairs().next().unwrap();
    assert_eq!(key, "query");
    assert_eq!(
        value,
        "sum(rate(http_requests_total{code=~\"5..\"}[5m])) > 0"
    );
}

#[test]
fn a_custom_ca_is_trusted_next_to_the_system_roots_and_garbage_is_refused() {
    assert!(http_client(Some(TEST_CA.as_bytes())).is_ok());
    let error = http_client(Some(b"not a certificate")).unwrap_err();
    assert!(error.to_string().contains("no certificate"), "{error:#}");
}

/// An endpoint answering `{"count": N}`, counting its requests and remembering the last
/// `release` query parameter.
#[derive(Default)]
struct Endpoint {
    count: AtomicU32,
    requests: AtomicU32,
    release: Mutex<String>,
}

async fn serve(endpoint: Arc<Endpoint>) -> String {
    async fn answer(
        State(endpoint): State<Arc<Endpoint>>,
        Query(query): Query<BTreeMap<String, String>>,
    ) -> axum::Json<serde_json::Value> {
        endpoint.requests.fetch_add(1, Ordering::SeqCst);
        *endpoint.release.lock().unwrap() = query.get("release").cloned().unwrap_or_default();
        axum::Json(json!({"count": endpoint.count.load(Ordering::SeqCst)}))
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/count", get(answer))
        .with_state(endpoint);
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// A client for an API server that is not there (the HTTP gate never asks it anything).
fn unused_client() -> Client {
    let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    Client::try_from(config).unwrap()
}

/// A Release cache holding `release`, and its writer.
fn cached(
    release: &Release,
) -> (
    Store<Release>,
    kube::runtime::reflector::store::Writer<Release>,
) {
    let (store, mut writer) = kube::runtime::reflector::store();
    writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(release.clone()));
    (store, writer)
}

#[tokio::test]
async fn a_wanted_gate_is_measured_at_once_then_every_interval_and_stops_when_unwanted() {
    let endpoint = Arc::new(Endpoint::default());
    let base = serve(endpoint.clone()).await;
    let metrics = Metrics::new().unwrap();
    let (gates, mut triggers) =
        GateEvaluator::new(unused_client(), metrics.clone(), cached(&release()).0).unwrap();
    let release = release();
    let g = gate(&format!("{base}/count?release={{{{release}}}}"));
    let stages = stages(std::slice::from_ref(&g));
    let at_step = |step| {
        Wanted::of(
            &release,
            Some(&status("Progressing", "prod", "Progressing", step)),
            &stages,
            false,
        )
    };
    let next_trigger = async |triggers: &mut trigger::UnboundedReceiver<ObjectRef<Release>>| {
        tokio::time::timeout(Duration::from_secs(5), triggers.next())
            .await
            .expect("a measurement within 5s")
            .unwrap()
    };

    // Wanted: measured at once, and the release is asked to reconcile.
    gates.want("shop", "shop-1.4.0", at_step(1));
    let asked = next_trigger(&mut triggers).await;
    assert_eq!(asked, ObjectRef::new("shop-1.4.0").within("shop"));
    let now = gates.measurements("shop", "shop-1.4.0", at_step(1).as_ref());
    assert_eq!(now["errors"].verdict, GateVerdict::Passing, "{now:?}");
    assert_eq!(*endpoint.release.lock().unwrap(), "shop-1.4.0");
    // Not for another step, nor for another release.
    assert!(
        gates
            .measurements("shop", "shop-1.4.0", at_step(2).as_ref())
            .is_empty()
    );
    assert!(
        gates
            .measurements("shop", "shop-1.5.0", at_step(1).as_ref())
            .is_empty()
    );

    // The same want again changes nothing; the next evaluation comes an interval later.
    gates.want("shop", "shop-1.4.0", at_step(1));
    endpoint.count.store(4, Ordering::SeqCst);
    next_trigger(&mut triggers).await;
    let now = gates.measurements("shop", "shop-1.4.0", at_step(1).as_ref());
    assert_eq!(now["errors"].verdict, GateVerdict::Failing, "{now:?}");
    assert_eq!(now["errors"].value.as_deref(), Some("4"));
    assert_eq!(endpoint.requests.load(Ordering::SeqCst), 2);

    // A new step starts afresh, at once.
    endpoint.count.store(0, Ordering::SeqCst);
    gates.want("shop", "shop-1.4.0", at_step(2));
    assert!(
        gates
            .measurements("shop", "shop-1.4.0", at_step(2).as_ref())
            .is_empty()
    );
    next_trigger(&mut triggers).await;
    let now = gates.measurements("shop", "shop-1.4.0", at_step(2).as_ref());
    assert_eq!(now["errors"].verdict, GateVerdict::Passing, "{now:?}");

    // Unwanted: no more requests.
    gates.want("shop", "shop-1.4.0", None);
    let requests = endpoint.requests.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(endpoint.requests.load(Ordering::SeqCst), requests);
    assert!(
        gates
            .measurements("shop", "shop-1.4.0", at_step(2).as_ref())
            .is_empty()
    );
    let scraped = metrics.render().unwrap();
    assert!(
        scraped.contains("stagecoach_gate_evaluation_duration_seconds_count{provider=\"http\",verdict=\"Failing\"} 1"),
        "{scraped}"
    );
}

#[tokio::test]
async fn dropping_the_evaluator_stops_every_evaluation() {
    let endpoint = Arc::new(Endpoint::default());
    let base = serve(endpoint.clone()).await;
    let (gates, mut triggers) = GateEvaluator::new(
        unused_client(),
        Metrics::new().unwrap(),
        cached(&release()).0,
    )
    .unwrap();
    let release = release();
    let g = gate(&format!("{base}/count"));
    let stages = stages(std::slice::from_ref(&g));
    let wanted = Wanted::of(
        &release,
        Some(&status("Progressing", "prod", "Progressing", 0)),
        &stages,
        false,
    );
    gates.want("shop", "shop-1.4.0", wanted);
    tokio::time::timeout(Duration::from_secs(5), triggers.next())
        .await
        .unwrap();
    drop(gates);
    let requests = endpoint.requests.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(endpoint.requests.load(Ordering::SeqCst), requests);
}

#[tokio::test]
async fn an_unreachable_endpoint_is_inconclusive_and_says_why() {
    let (gates, mut triggers) = GateEvaluator::new(
        unused_client(),
        Metrics::new().unwrap(),
        cached(&release()).0,
    )
    .unwrap();
    let release = release();
    // Nothing listens on port 9 of the loopback address.
    let g = gate("http://127.0.0.1:9/count");
    let stages = stages(std::slice::from_ref(&g));
    let wanted = Wanted::of(
        &release,
        Some(&status("Progressing", "prod", "Progressing", 0)),
        &stages,
        false,
    );
    gates.want("shop", "shop-1.4.0", wanted.clone());
    tokio::time::timeout(Duration::from_secs(5), triggers.next())
        .await
        .unwrap();
    let now = gates.measurements("shop", "shop-1.4.0", wanted.as_ref());
    assert_eq!(now["errors"].verdict, GateVerdict::Inconclusive);
    assert!(now["errors"].message.contains("cannot connect"), "{now:?}");
}

#[tokio::test]
async fn an_evaluation_stops_when_its_release_is_gone_from_the_cache() {
    let endpoint = Arc::new(Endpoint::default());
    let base = serve(endpoint.clone()).await;
    let release = release();
    let (store, mut writer) = cached(&release);
    let (gates, mut triggers) =
        GateEvaluator::new(unused_client(), Metrics::new().unwrap(), store).unwrap();
    let g = gate(&format!("{base}/count"));
    let stages = stages(std::slice::from_ref(&g));
    let wanted = Wanted::of(
        &release,
        Some(&status("Progressing", "prod", "Progressing", 0)),
        &stages,
        false,
    );
    gates.want("shop", "shop-1.4.0", wanted);
    tokio::time::timeout(Duration::from_secs(5), triggers.next())
        .await
        .unwrap();
    // Deleted without a reconcile seeing it (a finalizer removed by hand).
    writer.apply_watcher_event(&kube::runtime::watcher::Event::Delete(release.clone()));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let requests = endpoint.requests.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(endpoint.requests.load(Ordering::SeqCst), requests);
    // The next want of any release forgets it.
    gates.want("shop", "shop-other", None);
    assert!(gates.running().is_empty());
}
