//! Sentry end to end: the operator's real sentry client sends its envelopes to a small
//! HTTP server in this test (DSN `http://public@127.0.0.1:<port>/1`), and the test reads
//! what a Sentry server would store.
//!
//! A ValidatingAdmissionPolicy refuses every Deployment write in the dev stage, as a
//! cluster policy (Kyverno, Gatekeeper, a freeze) would: the operator's update is answered
//! 422, a fault that comes back on every retry. It must reach Sentry once (not once per
//! retry) with the release, application and stage tags. Then the policy goes, the release
//! enters dev and qa, and with release markers on each entry is an info event.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use stagecoach_api::Release;
use stagecoach_e2e::{
    Operator, PIPELINE_DEPLOYMENT, Pipeline, client, eventually, install_crds, release_manifest,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const APP: &str = "shop";
const OLD_IMAGE: &str = "example/shop-api:1.0.0";
const NEW_IMAGE: &str = "example/shop-api:1.1.0";
const REFUSAL: &str = "Deployments in this namespace are frozen (e2e sentry test)";

/// One request the Sentry stand-in received: its path, its `X-Sentry-Auth` header and the
/// envelope's items as (item header, payload).
#[derive(Clone, Debug)]
struct Received {
    path: String,
    auth: String,
    items: Vec<(Value, Value)>,
}

/// A Sentry stand-in: accepts envelopes over HTTP/1.1 and keeps them.
#[derive(Clone, Default)]
struct Inbox {
    received: Arc<Mutex<Vec<Received>>>,
}

impl Inbox {
    /// Listens on 127.0.0.1 and returns the DSN that points at it.
    async fn start(&self) -> Result<String> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let inbox = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let inbox = inbox.clone();
                tokio::spawn(async move {
                    let _ = inbox.serve(stream).await;
                });
            }
        });
        Ok(format!("http://public@127.0.0.1:{port}/1"))
    }

    /// Answers every request of one keep-alive connection with 200 `{}`.
    async fn serve(&self, stream: TcpStream) -> Result<()> {
        let mut reader = BufReader::new(stream);
        loop {
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).await? == 0 {
                return Ok(());
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            let mut headers = BTreeMap::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).await?;
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
                }
            }
            let length: usize = headers
                .get("content-length")
                .map_or(Ok(0), |v| v.parse())
                .context("content-length")?;
            let mut body = vec![0; length];
            reader.read_exact(&mut body).await?;
            self.received.lock().unwrap().push(Received {
                path,
                auth: headers.get("x-sentry-auth").cloned().unwrap_or_default(),
                items: envelope_items(&body),
            });
            reader
                .get_mut()
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
                )
                .await?;
        }
    }

    /// Every event received so far (the payloads of `event` items).
    fn events(&self) -> Vec<Value> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.items.iter())
            .filter(|(header, _)| header["type"] == "event")
            .map(|(_, payload)| payload.clone())
            .collect()
    }

    fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// An envelope's items: a header line, then each item as a header line and a payload
/// line (JSON items only, which is all an event envelope holds).
fn envelope_items(body: &[u8]) -> Vec<(Value, Value)> {
    let text = String::from_utf8_lossy(body);
    let mut lines = text.lines().skip(1);
    let mut items = Vec::new();
    while let (Some(header), Some(payload)) = (lines.next(), lines.next()) {
        if let (Ok(header), Ok(payload)) =
            (serde_json::from_str(header), serde_json::from_str(payload))
        {
            items.push((header, payload));
        }
    }
    items
}

fn tag<'a>(event: &'a Value, name: &str) -> Option<&'a str> {
    event["tags"][name].as_str()
}

/// The error events about reconcile faults.
fn faults(inbox: &Inbox) -> Vec<Value> {
    inbox
        .events()
        .into_iter()
        // Sentry leaves out the default level, error.
        .filter(|e| {
            e.get("level").is_none_or(|l| l == "error") && tag(e, "error_category").is_some()
        })
        .collect()
}

/// The release markers: info events for a stage entered.
fn markers(inbox: &Inbox) -> Vec<Value> {
    inbox
        .events()
        .into_iter()
        .filter(|e| tag(e, "stagecoach_event") == Some("stage-entered"))
        .collect()
}

/// A ValidatingAdmissionPolicy and its binding that refuse every Deployment create and
/// update in `namespace`.
async fn freeze_deployments(client: &kube::Client, name: &str, namespace: &str) -> Result<()> {
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["apps"], "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE"], "resources": ["deployments"]
            }]},
            "validations": [{"expression": "false", "message": REFUSAL}]
        }
    }))?;
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {
                "matchLabels": {"kubernetes.io/metadata.name": namespace}
            }}
        }
    }))?;
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .create(&PostParams::default(), &policy)
        .await?;
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await?;
    // Policies take effect a moment after they are created: wait until a dry-run update
    // of the Deployment is refused.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams {
        dry_run: true,
        ..PatchParams::default()
    };
    eventually(Duration::from_secs(30), || {
        let (deployments, params) = (deployments.clone(), params.clone());
        async move {
            let patch = json!({"metadata": {"annotations": {"e2e/probe": "1"}}});
            match deployments
                .patch(PIPELINE_DEPLOYMENT, &params, &Patch::Merge(&patch))
                .await
            {
                Err(kube::Error::Api(status)) if status.message.contains(REFUSAL) => Ok(Some(())),
                _ => Ok(None),
            }
        }
    })
    .await
    .context("the freezing admission policy never took effect")
}

async fn thaw_deployments(client: &kube::Client, name: &str) -> Result<()> {
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await?;
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await?;
    Ok(())
}

/// What a fault event must say: where, what failed and why, and which operator.
fn check_fault(fault: &Value, name: &str, home: &str, dev: &str) -> Result<()> {
    let expected_tags = [
        ("application", APP),
        ("release_name", name),
        ("version", "1.1.0"),
        ("stage", "dev"),
        ("kind", "Release"),
        ("namespace", home),
        ("target_namespace", dev),
        ("error_category", "apply_workload"),
        ("http_status", "422"),
    ];
    for (key, value) in expected_tags {
        ensure!(
            tag(fault, key) == Some(value),
            "tag {key} should be {value}: {fault:#}"
        );
    }
    ensure!(
        fault["release"] == format!("stagecoach@{}", env!("CARGO_PKG_VERSION")),
        "the Sentry release is the operator's version: {fault:#}"
    );
    ensure!(fault["environment"] == "e2e", "{fault:#}");
    let text = fault["exception"]["values"].to_string();
    ensure!(text.contains(REFUSAL), "the exception says why: {text}");
    Ok(())
}

/// What the release markers must say: one per stage entered, with the release's tags.
fn check_markers(entered: &[Value], name: &str) -> Result<()> {
    for marker in entered {
        let stage = tag(marker, "stage").unwrap_or_default();
        ensure!(marker["level"] == "info", "{marker:#}");
        ensure!(
            marker["message"]["formatted"] == format!("{APP} 1.1.0 entered stage {stage}")
                || marker["message"] == format!("{APP} 1.1.0 entered stage {stage}"),
            "{marker:#}"
        );
        for (key, value) in [
            ("application", APP),
            ("version", "1.1.0"),
            ("release_name", name),
        ] {
            ensure!(
                tag(marker, key) == Some(value),
                "marker tag {key}: {marker:#}"
            );
        }
    }
    ensure!(
        entered.len() == 2,
        "one marker per stage entered: {entered:#?}"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn reconcile_faults_and_stage_entries_reach_sentry_with_their_tags() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let pipeline = Pipeline::create(&client, "sentry", &[("dev", 1), ("qa", 1)], OLD_IMAGE).await?;
    let (home, dev, qa) = (
        pipeline.home.name.clone(),
        pipeline.namespace("dev").to_owned(),
        pipeline.namespace("qa").to_owned(),
    );
    let policy = format!("{home}-freeze");
    freeze_deployments(&client, &policy, &dev).await?;

    let inbox = Inbox::default();
    let dsn = inbox.start().await?;
    let operator = Operator::start_with_env(
        "sentry",
        &home,
        &[
            ("SENTRY_DSN", dsn.as_str()),
            ("SENTRY_ENVIRONMENT", "e2e"),
            ("STAGECOACH_SENTRY_RELEASE_MARKERS", "true"),
        ],
    )?;
    operator.wait_ready().await?;

    let name = "shop-1.1.0";
    let stages = [
        json!({"name": "dev", "namespace": dev, "progressDeadline": "120s"}),
        json!({"name": "qa", "namespace": qa, "progressDeadline": "120s"}),
    ];
    let releases: Api<Release> = Api::namespaced(client.clone(), &home);
    let manifest = release_manifest(name, APP, "1.1.0", NEW_IMAGE, &stages);
    releases
        .create(&PostParams::default(), &serde_json::from_value(manifest)?)
        .await?;

    // The refused update: one error event with the tags, whatever the number of retries.
    let fault = eventually(Duration::from_secs(60), || async {
        Ok(faults(&inbox).into_iter().next())
    })
    .await
    .with_context(|| {
        format!(
            "no fault reached Sentry; received: {:#?}\nlog:\n{}",
            inbox.requests(),
            operator.log_tail(30)
        )
    })?;
    println!("fault event: {fault:#}");
    check_fault(&fault, name, &home, &dev)?;
    // The operator retries (1 s, 2 s, 4 s ...) and fails each time; Sentry hears once.
    let errors = || operator.metric("stagecoach_reconcile_errors_total", "apply_workload");
    eventually(Duration::from_secs(30), || async {
        Ok((errors().await? >= 3.0).then_some(()))
    })
    .await
    .context("the refused update was not retried")?;
    ensure!(
        faults(&inbox).len() == 1,
        "{} failed reconciles, {} fault events (one expected): {:#?}",
        errors().await?,
        faults(&inbox).len(),
        faults(&inbox)
    );
    let request = inbox.requests().into_iter().next().context("no request")?;
    ensure!(
        request.path == "/api/1/envelope/" && request.auth.contains("sentry_key=public"),
        "the client posts envelopes with the DSN's key: {} {}",
        request.path,
        request.auth
    );

    // Unfrozen, the release enters dev, then qa: a marker for each.
    thaw_deployments(&client, &policy).await?;
    let entered = eventually(Duration::from_secs(120), || async {
        let markers = markers(&inbox);
        let stages: Vec<&str> = markers.iter().filter_map(|m| tag(m, "stage")).collect();
        Ok((stages.contains(&"dev") && stages.contains(&"qa")).then_some(markers))
    })
    .await
    .with_context(|| {
        format!(
            "no release markers for dev and qa: {:#?}\noperator log:\n{}",
            markers(&inbox),
            operator.log_tail(30)
        )
    })?;
    check_markers(&entered, name)?;
    ensure!(
        faults(&inbox).len() == 1,
        "no new fault: {:#?}",
        faults(&inbox)
    );

    // Clean up: the operator lets the deleted Release go once it has cleaned its stages.
    releases
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    eventually(Duration::from_secs(60), || async {
        Ok(releases
            .list(&ListParams::default())
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await
    .context("the Release was never let go")?;
    operator.stop().await?;
    pipeline.delete().await
}

/// The stand-in itself: an envelope posted to it is read back as its items.
#[tokio::test]
async fn the_sentry_stand_in_reads_envelopes() -> Result<()> {
    let inbox = Inbox::default();
    let dsn = inbox.start().await?;
    let port = dsn
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .unwrap();
    let envelope = concat!(
        r#"{"event_id":"9ec79c33ec9942ab8353589fcb2e04dc"}"#,
        "\n",
        r#"{"type":"event","length":41}"#,
        "\n",
        r#"{"level":"error","tags":{"stage":"dev"}}"#,
        "\n"
    );
    let http = reqwest::Client::new();
    for _ in 0..2 {
        let response = http
            .post(format!("http://127.0.0.1:{port}/api/1/envelope/"))
            .header("X-Sentry-Auth", "Sentry sentry_key=public")
            .body(envelope)
            .send()
            .await?;
        ensure!(response.status() == 200);
    }
    let events = inbox.events();
    ensure!(events.len() == 2, "{:#?}", inbox.requests());
    ensure!(tag(&events[0], "stage") == Some("dev"));
    Ok(())
}
