//! Notifications on the real control plane, to a receiver the test runs itself: CloudEvents
//! bodies with a Bearer token and an HMAC signature the test verifies with its own HMAC;
//! a receiver that fails never holds a rollout, and gets everything once it is back; a
//! major release enters prod only after its announcement arrived plus the notice; what
//! was pending when the operator was SIGKILLed arrives after the restart, with the same ids.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code

mod release_support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use release_support::{APP, BAD_IMAGE, Fixture, NEW_IMAGE, ROLLOUT_TIMEOUT, stage_phase, status};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use stagecoach_api::release::{NotificationRecord, ReleasePhase, StagePhase};
use stagecoach_e2e::{Operator, apply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const TOKEN: &str = "s3cret-token";
/// The operator's longest wait between two attempts, short so a test does not wait
/// minutes for a receiver that came back.
const MAX_BACKOFF: &str = "2s";

// ----- a receiver ---------------------------------------------------------------------------

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Request {
    path: String,
    /// Lower-case names.
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    /// The status code it was answered with.
    answered: u16,
}

impl Request {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn id(&self) -> String {
        self.json()["id"].as_str().unwrap_or_default().to_owned()
    }
}

/// An "answer" that is none: the connection is held open and nothing is sent back.
const NEVER: u16 = 0;

#[derive(Default)]
struct Book {
    /// Status code per path ([`NEVER`]: no answer at all); 200 when not set.
    answers: BTreeMap<String, u16>,
    requests: Vec<Request>,
}

/// An HTTP/1.1 server on 127.0.0.1 that records every request and answers each path with
/// the status it is told to (one request per connection).
struct Receiver {
    addr: SocketAddr,
    book: Arc<Mutex<Book>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let book = Arc::new(Mutex::new(Book::default()));
        let shared = book.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let book = shared.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, &book).await;
                });
            }
        });
        Ok(Self { addr, book, task })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn answer(&self, path: &str, code: u16) {
        self.book
            .lock()
            .unwrap()
            .answers
            .insert(path.to_owned(), code);
    }

    fn requests(&self, path: &str) -> Vec<Request> {
        self.book
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

async fn serve(mut stream: tokio::net::TcpStream, book: &Mutex<Book>) -> Result<()> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before the headers ended");
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let answered = {
        let mut book = book.lock().unwrap();
        let answered = book.answers.get(&path).copied().unwrap_or(200);
        book.requests.push(Request {
            path,
            headers,
            body,
            answered,
        });
        answered
    };
    if answered == NEVER {
        // Holds the connection open without a word (until the receiver is dropped).
        tokio::time::sleep(Duration::from_secs(600)).await;
        return Ok(());
    }
    let response = format!(
        "HTTP/1.1 {answered} {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        if answered < 300 { "OK" } else { "Nope" }
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

/// HMAC-SHA256 (RFC 2104) written out here from SHA-256, so the operator's signature is
/// checked by an implementation of its own.
fn hmac_sha256(key: &[u8], message: &[u8]) -> String {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner_pad: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let outer_pad: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&inner_pad)
        .chain_update(message)
        .finalize();
    let outer = Sha256::new()
        .chain_update(&outer_pad)
        .chain_update(inner)
        .finalize();
    let mut hex = String::with_capacity(64);
    for byte in outer {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

#[test]
fn the_tests_own_hmac_is_right() {
    // RFC 4231, test case 2.
    assert_eq!(
        hmac_sha256(b"Jefe", b"what do ya want for nothing?"),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

/// A request is a CloudEvent of this release, with the token and a valid signature.
fn check_cloudevent(request: &Request, fixture: &Fixture, release: &str) -> Result<Value> {
    let event = request.json();
    ensure!(
        event.is_object(),
        "not JSON: {:?}",
        String::from_utf8_lossy(&request.body)
    );
    ensure!(
        request.headers.get("content-type").map(String::as_str)
            == Some("application/cloudevents+json; charset=utf-8"),
        "{:?}",
        request.headers
    );
    ensure!(
        request.headers.get("authorization") == Some(&format!("Bearer {TOKEN}")),
        "{:?}",
        request.headers.get("authorization")
    );
    let expected = format!("sha256={}", hmac_sha256(TOKEN.as_bytes(), &request.body));
    ensure!(
        request.headers.get("x-stagecoach-signature") == Some(&expected),
        "signature {:?}, expected {expected}",
        request.headers.get("x-stagecoach-signature")
    );
    ensure!(event["specversion"] == "1.0", "{event}");
    ensure!(
        event["source"]
            == format!(
                "/apis/stagecoach.dev/v1alpha1/namespaces/{}/releases/{release}",
                fixture.pipeline.home.name
            ),
        "{event}"
    );
    let kind = event["type"].as_str().unwrap_or_default();
    ensure!(kind.starts_with("dev.stagecoach.release."), "{event}");
    ensure!(
        event["id"].as_str().is_some_and(|id| id.len() == 32),
        "{event}"
    );
    ensure!(event["datacontenttype"] == "application/json", "{event}");
    ensure!(
        event["time"]
            .as_str()
            .is_some_and(|t| DateTime::parse_from_rfc3339(t).is_ok()),
        "{event}"
    );
    ensure!(event["data"]["release"]["name"] == release, "{event}");
    ensure!(event["data"]["application"] == APP, "{event}");
    ensure!(
        event["data"]["event"].as_str() == kind.strip_prefix("dev.stagecoach.release."),
        "{event}"
    );
    Ok(event)
}

// ----- the pipeline --------------------------------------------------------------------------

/// A Secret with the receivers' token (with the newline `echo` would leave).
async fn token_secret(fixture: &Fixture) -> Result<()> {
    let api: Api<Secret> = Api::namespaced(fixture.client.clone(), &fixture.pipeline.home.name);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "hook"},
        "stringData": {"token": format!("{TOKEN}\n")}
    }))?;
    api.create(&PostParams::default(), &secret).await?;
    Ok(())
}

/// A Pipeline of the fixture's stages (prod: 50 %, a 2 s pause, 100 %, 3 s of early life
/// support) with `receivers` and `release_types`.
async fn apply_pipeline(fixture: &Fixture, receivers: &Value, release_types: &Value) -> Result<()> {
    let stages: Vec<Value> = fixture
        .pipeline
        .stages
        .iter()
        .map(|(stage, ns)| {
            let mut s = json!({"name": stage, "namespace": ns.name, "progressDeadline": "60s"});
            if stage == "prod" {
                s["steps"] =
                    json!([{"setWeight": 50}, {"pause": {"duration": "2s"}}, {"setWeight": 100}]);
                s["earlyLifeSupport"] = json!({"duration": "3s"});
            }
            s
        })
        .collect();
    let api: Api<stagecoach_api::Pipeline> =
        Api::namespaced(fixture.client.clone(), &fixture.pipeline.home.name);
    apply(
        &api,
        json!({
            "apiVersion": "stagecoach.dev/v1alpha1",
            "kind": "Pipeline",
            "metadata": {"name": APP, "namespace": fixture.pipeline.home.name},
            "spec": {"application": APP, "stages": stages, "notifications": receivers,
                     "releaseTypes": release_types}
        }),
    )
    .await
}

fn receiver(name: &str, url: &str, events: &[&str]) -> Value {
    let mut r = json!({"name": name, "webhook": {"url": url, "secretRef": {"name": "hook", "key": "token"}}});
    if !events.is_empty() {
        r["events"] = json!(events);
    }
    r
}

fn release_doc(fixture: &Fixture, name: &str, kind: &str, image: &str) -> Value {
    json!({
        "apiVersion": "stagecoach.dev/v1alpha1",
        "kind": "Release",
        "metadata": {"name": name, "namespace": fixture.pipeline.home.name},
        "spec": {
            "application": APP,
            "version": "2.0.0",
            "type": kind,
            "changes": [{"id": "PR-9", "title": "new export format", "url": "https://example.com/pr/9"}],
            "notes": "Exports are CSV now.",
            "workloads": [{"deployment": "api", "containers": [{"name": "app", "image": image}]}]
        }
    })
}

/// The fixture with its operator started again with a short backoff.
async fn fixture(prefix: &str) -> Result<Fixture> {
    let mut fixture = Fixture::start(prefix).await?;
    fixture.operator.take().unwrap().stop().await?;
    fixture.operator = Some(start_operator(&fixture).await?);
    Ok(fixture)
}

async fn start_operator(fixture: &Fixture) -> Result<Operator> {
    let operator = Operator::start_with_env(
        &format!("{}-op", fixture.pipeline.home.name),
        &fixture.pipeline.home.name,
        &[("STAGECOACH_NOTIFICATION_MAX_BACKOFF", MAX_BACKOFF)],
    )?;
    operator.wait_ready().await?;
    Ok(operator)
}

fn records(release: &stagecoach_api::Release) -> Vec<NotificationRecord> {
    status(release).notifications
}

/// Waits until every notification record of the release says delivered.
async fn wait_all_delivered(fixture: &Fixture, name: &str) -> Result<stagecoach_api::Release> {
    fixture
        .wait_release(
            name,
            "every notification delivered",
            Duration::from_secs(90),
            |r| {
                let records = records(r);
                !records.is_empty() && records.iter().all(|n| n.delivered_at.is_some())
            },
        )
        .await
}

// ----- the tests ----------------------------------------------------------------------------

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn every_event_arrives_signed_and_a_failing_receiver_never_holds_the_rollout() -> Result<()> {
    let fixture = fixture("nt-events").await?;
    let hooks = Receiver::start().await?;
    hooks.answer("/down", 500);
    token_secret(&fixture).await?;
    apply_pipeline(
        &fixture,
        &json!([
            receiver("everything", &hooks.url("/all"), &[]),
            receiver("down", &hooks.url("/down"), &["StageSucceeded", "Closed"]),
        ]),
        &json!({}),
    )
    .await?;
    let name = "shop-2-0-0";
    fixture
        .create_release(&release_doc(&fixture, name, "minor", NEW_IMAGE))
        .await?;

    // The rollout ends while every delivery to `down` still fails.
    let done = fixture.wait_phase(name, ReleasePhase::Succeeded).await?;
    let failing = hooks.requests("/down");
    ensure!(!failing.is_empty(), "the failing receiver was never tried");
    ensure!(failing.iter().all(|r| r.answered == 500));
    let down: Vec<NotificationRecord> = records(&done)
        .into_iter()
        .filter(|r| r.receiver == "down")
        .collect();
    ensure!(
        down.iter().all(|r| r.delivered_at.is_none()),
        "delivered to a receiver that only answers 500? {down:?}"
    );
    ensure!(
        down.iter()
            .any(|r| r.attempts >= 1 && r.last_error.as_deref() == Some("HTTP 500")),
        "{down:?}"
    );

    // It comes back: everything arrives, each event with the id it had when it failed.
    hooks.answer("/down", 200);
    let delivered = wait_all_delivered(&fixture, name).await?;
    let all = records(&delivered);
    let down: Vec<&NotificationRecord> = all.iter().filter(|r| r.receiver == "down").collect();
    let expected_down = 5; // four stages succeeded, and the release closed
    ensure!(down.len() == expected_down, "{down:?}");
    ensure!(down.iter().any(|r| r.attempts > 1), "{down:?}");
    let requests = hooks.requests("/down");
    for record in &down {
        let tries: Vec<&Request> = requests.iter().filter(|r| r.id() == record.id).collect();
        ensure!(
            i32::try_from(tries.len())? == record.attempts,
            "{} attempts recorded, {} requests: {record:?}",
            record.attempts,
            tries.len()
        );
        ensure!(tries.last().is_some_and(|r| r.answered == 200));
        ensure!(record.last_error.is_none() && record.next_attempt_at.is_none());
    }
    for request in &requests {
        check_cloudevent(request, &fixture, name)?;
    }

    // The receiver of every event got each exactly once, signed, in CloudEvents form.
    let got = hooks.requests("/all");
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for request in &got {
        let event = check_cloudevent(request, &fixture, name)?;
        ensure!(ids.insert(request.id()), "sent twice: {event}");
        let kind = event["type"].as_str().unwrap().to_owned();
        *kinds
            .entry(
                kind.trim_start_matches("dev.stagecoach.release.")
                    .to_owned(),
            )
            .or_default() += 1;
        match event["data"]["event"].as_str().unwrap_or_default() {
            "Announced" => {
                ensure!(event["data"]["changes"][0]["id"] == "PR-9", "{event}");
                ensure!(event["data"]["notes"] == "Exports are CSV now.", "{event}");
                ensure!(event["data"]["lastStage"] == "prod", "{event}");
                ensure!(event.get("subject").is_none(), "{event}");
            }
            "StageStarted" | "StageSucceeded" | "EarlyLifeSupportStarted" => {
                ensure!(event["subject"].is_string(), "{event}");
            }
            "Closed" => {
                ensure!(event["data"]["outcome"] == "Succeeded", "{event}");
                ensure!(
                    event["data"]["changes"][0]["title"] == "new export format",
                    "{event}"
                );
                ensure!(event["data"]["notes"] == "Exports are CSV now.", "{event}");
            }
            other => bail!("unexpected event {other}: {event}"),
        }
    }
    let expected: BTreeMap<String, usize> = [
        ("Announced", 1),
        ("StageStarted", 4),
        ("StageSucceeded", 4),
        ("EarlyLifeSupportStarted", 1),
        ("Closed", 1),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_owned(), n))
    .collect();
    ensure!(kinds == expected, "{kinds:?}");
    let recorded: BTreeSet<String> = all
        .iter()
        .filter(|r| r.receiver == "everything")
        .map(|r| r.id.clone())
        .collect();
    ensure!(recorded == ids, "status {recorded:?}\nreceived {ids:?}");
    // The same event went to both receivers under one id.
    for record in &down {
        ensure!(ids.contains(&record.id), "{record:?}");
    }
    ensure!(status(&delivered).announced_at.is_some());
    let total = fixture
        .operator()
        .metric("stagecoach_notifications_total", "outcome=\"delivered\"")
        .await?;
    ensure!(total >= 16.0, "delivered total {total}");
    fixture.finish().await
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_major_release_enters_prod_after_its_announcement_arrived_plus_the_notice() -> Result<()>
{
    let fixture = fixture("nt-notice").await?;
    let hooks = Receiver::start().await?;
    hooks.answer("/clients", 503);
    token_secret(&fixture).await?;
    apply_pipeline(
        &fixture,
        &json!([{
            "name": "clients",
            "webhook": {"url": hooks.url("/clients"), "secretRef": {"name": "hook", "key": "token"}},
            "events": ["Announced"],
            "releaseTypes": ["major"]
        }]),
        &json!({"major": {"notice": "5s"}}),
    )
    .await?;
    let name = "shop-2-0-0";
    fixture
        .create_release(&release_doc(&fixture, name, "major", NEW_IMAGE))
        .await?;

    // Not announced (every delivery fails): the release goes as far as prod and waits.
    let waiting = fixture
        .wait_release(
            name,
            "waiting for its announcement before prod",
            ROLLOUT_TIMEOUT,
            |r| {
                status(r).phase == Some(ReleasePhase::WaitingForWindow)
                    && status(r).current_stage.as_deref() == Some("prod")
            },
        )
        .await?;
    let s = status(&waiting);
    ensure!(s.announced_at.is_none(), "{s:?}");
    ensure!(
        s.message
            .as_deref()
            .is_some_and(|m| m.contains("not been announced")),
        "{:?}",
        s.message
    );
    ensure!(stage_phase(&waiting, "demo") == Some(StagePhase::Succeeded));
    fixture.assert_untouched("prod", name).await?;
    let announced = s
        .notifications
        .iter()
        .find(|r| r.event == stagecoach_api::pipeline::NotificationEvent::Announced)
        .context("no Announced record")?
        .clone();
    ensure!(announced.attempts >= 1, "{announced:?}");
    ensure!(
        announced.last_error.as_deref() == Some("HTTP 503"),
        "{announced:?}"
    );
    // Still held a little later: nothing but the announcement lets it in.
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(stage_phase(&fixture.release(name).await?, "prod") == Some(StagePhase::Pending));

    // The receiver is back: announcedAt is when the Announced arrived; prod starts
    // no earlier than the notice after that.
    hooks.answer("/clients", 200);
    let announced_release = fixture
        .wait_release(name, "announced", Duration::from_secs(30), |r| {
            status(r).announced_at.is_some()
        })
        .await?;
    let s = status(&announced_release);
    let at = s.announced_at.unwrap();
    let record = s
        .notifications
        .iter()
        .find(|r| r.id == announced.id)
        .context("the Announced record is gone")?;
    ensure!(record.delivered_at == Some(at), "{record:?} vs {at}");
    ensure!(record.attempts > announced.attempts, "{record:?}");
    let delivered: Vec<Request> = hooks
        .requests("/clients")
        .into_iter()
        .filter(|r| r.answered == 200)
        .collect();
    ensure!(delivered.len() == 1, "{delivered:?}");
    let event = check_cloudevent(&delivered[0], &fixture, name)?;
    ensure!(event["type"] == "dev.stagecoach.release.Announced");
    ensure!(
        event["id"] == json!(announced.id),
        "the same id on every attempt"
    );
    ensure!(event["data"]["notice"] == "5s", "{event}");
    ensure!(event["data"]["type"] == "major", "{event}");
    let started = fixture
        .wait_release(name, "prod started", Duration::from_secs(60), |r| {
            stage_phase(r, "prod").is_some_and(|p| p != StagePhase::Pending)
        })
        .await?;
    let prod = status(&started)
        .stages
        .into_iter()
        .find(|s| s.name == "prod")
        .unwrap();
    let entered = prod.started_at.context("prod has no startedAt")?;
    ensure!(
        entered >= at + chrono::Duration::seconds(5),
        "prod entered {entered}, announced {at}: less than the 5s notice"
    );
    ensure!(
        entered <= at + chrono::Duration::seconds(20),
        "prod entered {entered}, long after the notice from {at}"
    );
    fixture.wait_phase(name, ReleasePhase::Succeeded).await?;
    fixture.finish().await
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn what_was_pending_when_the_operator_was_killed_arrives_after_the_restart_with_the_same_ids()
-> Result<()> {
    let mut fixture = fixture("nt-kill").await?;
    let hooks = Receiver::start().await?;
    hooks.answer("/hook", 500);
    token_secret(&fixture).await?;
    apply_pipeline(
        &fixture,
        &json!([receiver(
            "hook",
            &hooks.url("/hook"),
            &["StageStarted", "StageSucceeded", "RolledBack", "Closed"]
        )]),
        &json!({}),
    )
    .await?;
    let name = "shop-2-0-0";
    fixture
        .create_release(&release_doc(&fixture, name, "minor", NEW_IMAGE))
        .await?;
    let pending = fixture
        .wait_release(name, "undelivered notifications", ROLLOUT_TIMEOUT, |r| {
            stage_phase(r, "dev") == Some(StagePhase::Succeeded)
                && records(r).iter().filter(|n| n.attempts >= 1).count() >= 2
        })
        .await?;
    fixture.operator.take().unwrap().kill().await?;
    let before: Vec<NotificationRecord> = records(&pending);
    ensure!(
        before.iter().all(|r| r.delivered_at.is_none()),
        "{before:?}"
    );
    let failed_ids: BTreeSet<String> = hooks.requests("/hook").iter().map(Request::id).collect();

    // Nothing is sent while no operator runs; the receiver comes back meanwhile.
    hooks.answer("/hook", 200);
    let sent = hooks.requests("/hook").len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(hooks.requests("/hook").len() == sent);

    fixture.operator = Some(start_operator(&fixture).await?);
    fixture.wait_phase(name, ReleasePhase::Succeeded).await?;
    let delivered = wait_all_delivered(&fixture, name).await?;
    let after = records(&delivered);
    let ok: Vec<Request> = hooks
        .requests("/hook")
        .into_iter()
        .filter(|r| r.answered == 200)
        .collect();
    let mut ok_ids = BTreeSet::new();
    for request in &ok {
        check_cloudevent(request, &fixture, name)?;
        ensure!(
            ok_ids.insert(request.id()),
            "delivered twice: {}",
            request.id()
        );
    }
    // Every record pending at the kill arrived after the restart, under the same id.
    for record in &before {
        ensure!(ok_ids.contains(&record.id), "never delivered: {record:?}");
        let now = after
            .iter()
            .find(|r| r.id == record.id && r.receiver == record.receiver)
            .context("record gone")?;
        ensure!(now.attempts > record.attempts, "{now:?} after {record:?}");
    }
    ensure!(
        failed_ids.is_subset(&ok_ids),
        "{failed_ids:?} vs {ok_ids:?}"
    );
    let recorded: BTreeSet<String> = after.iter().map(|r| r.id.clone()).collect();
    ensure!(
        recorded == ok_ids,
        "status {recorded:?}\nreceived {ok_ids:?}"
    );
    fixture.finish().await
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_rollback_tells_the_receivers_which_gate_failed() -> Result<()> {
    let fixture = fixture("nt-rollback").await?;
    let hooks = Receiver::start().await?;
    token_secret(&fixture).await?;
    apply_pipeline(
        &fixture,
        &json!([receiver(
            "ops",
            &hooks.url("/ops"),
            &["RolledBack", "Closed"]
        )]),
        &json!({}),
    )
    .await?;
    let name = "shop-2-0-1";
    fixture
        .create_release(&release_doc(&fixture, name, "minor", BAD_IMAGE))
        .await?;
    fixture.wait_phase(name, ReleasePhase::RolledBack).await?;
    wait_all_delivered(&fixture, name).await?;
    let got = hooks.requests("/ops");
    ensure!(got.len() == 2, "{got:?}");
    let events: Vec<Value> = got
        .iter()
        .map(|r| check_cloudevent(r, &fixture, name))
        .collect::<Result<_>>()?;
    let rolled = events
        .iter()
        .find(|e| e["type"] == "dev.stagecoach.release.RolledBack")
        .context("no RolledBack event")?;
    ensure!(rolled["subject"] == "dev", "{rolled}");
    ensure!(rolled["data"]["rollback"]["stage"] == "dev", "{rolled}");
    ensure!(rolled["data"]["rollback"]["reason"].is_string(), "{rolled}");
    let gates = rolled["data"]["gates"].as_array().context("no gates")?;
    ensure!(
        gates
            .iter()
            .any(|g| g["name"] == "workload-health" && g["verdict"] == "Failing"),
        "{rolled}"
    );
    let closed = events
        .iter()
        .find(|e| e["type"] == "dev.stagecoach.release.Closed")
        .context("no Closed event")?;
    ensure!(closed["data"]["outcome"] == "RolledBack", "{closed}");
    ensure!(closed["data"]["rollbacks"][0]["stage"] == "dev", "{closed}");
    let _: DateTime<Utc> = DateTime::parse_from_rfc3339(closed["time"].as_str().unwrap())?.into();
    fixture.finish().await
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_receiver_that_never_answers_does_not_slow_a_rollback() -> Result<()> {
    let fixture = fixture("nt-silent").await?;
    let hooks = Receiver::start().await?;
    hooks.answer("/silent", NEVER);
    token_secret(&fixture).await?;
    // The same failing release twice: first with no receiver, then with one that holds
    // every request until the operator's timeout, for every event.
    let mut took = Vec::new();
    for (round, receivers) in [
        json!([]),
        json!([receiver("silent", &hooks.url("/silent"), &[])]),
    ]
    .into_iter()
    .enumerate()
    {
        apply_pipeline(&fixture, &receivers, &json!({})).await?;
        let name = format!("shop-2-0-{round}");
        let started = std::time::Instant::now();
        fixture
            .create_release(&release_doc(&fixture, &name, "minor", BAD_IMAGE))
            .await?;
        let rolled = fixture.wait_phase(&name, ReleasePhase::RolledBack).await?;
        took.push(started.elapsed());
        fixture.wait_template("dev", fixture.before("dev")).await?;
        if round == 1 {
            // Every attempt so far is still waiting for an answer, or timed out.
            ensure!(
                records(&rolled).iter().all(|r| r.delivered_at.is_none()),
                "{:?}",
                records(&rolled)
            );
            ensure!(!hooks.requests("/silent").is_empty(), "never tried");
        }
    }
    println!(
        "rollback of a failing release: {:.1}s without a receiver, {:.1}s with one that never answers",
        took[0].as_secs_f64(),
        took[1].as_secs_f64()
    );
    ensure!(
        took[1] <= took[0] + Duration::from_secs(3),
        "the silent receiver slowed the rollback: {:?} against {:?}",
        took[1],
        took[0]
    );
    // The receiver's 5 s timeout is recorded as the reason.
    let waited = fixture
        .wait_release(
            "shop-2-0-1",
            "a timed-out attempt recorded",
            Duration::from_secs(30),
            |r| {
                records(r).iter().any(|n| {
                    n.last_error
                        .as_deref()
                        .is_some_and(|e| e.contains("no answer within 5s"))
                })
            },
        )
        .await?;
    ensure!(records(&waited).iter().all(|r| r.delivered_at.is_none()));
    fixture.finish().await
}
