//! Pipelines and approvals on the real control plane: who may approve is RBAC, checked by
//! the API server's admission policy with distinct (impersonated) users; approvals count
//! only for the content they name; a reject ends the release; windows and freezes gate
//! the start of a stage, never a rollback; toggles follow the Pipeline's stages.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_arguments,
    clippy::too_many_lines
)] // test code: a scenario per test

mod release_support;

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use chrono::{Timelike, Utc};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use release_support::{
    APP, BAD_IMAGE, Fixture, IGNORE, NEW_IMAGE, NEWER_IMAGE, ROLLOUT_TIMEOUT, condition,
    stage_phase, status,
};
use serde_json::{Value, json};
use stagecoach_api::release::{ReleasePhase, StagePhase};
use stagecoach_api::{Approval, FeatureToggle};
use stagecoach_e2e::{apply, eventually};

/// A client that acts as `user` (impersonation by the test's admin identity): the API
/// server authenticates the request as that user, so admission sees that user name.
async fn client_as(user: &str) -> Result<Client> {
    let mut config = kube::Config::infer().await?;
    config.auth_info.impersonate = Some(user.to_owned());
    config.auth_info.impersonate_groups = Some(vec!["system:authenticated".to_owned()]);
    Ok(Client::try_from(config)?)
}

/// The Pipeline of the fixture's application: its stage namespaces, fast deadlines, and
/// `extra` merged into the spec.
fn pipeline_doc(fixture: &Fixture, extra: &Value) -> Value {
    let stages: Vec<Value> = fixture
        .pipeline
        .stages
        .iter()
        .map(|(stage, ns)| json!({"name": stage, "namespace": ns.name, "progressDeadline": "60s"}))
        .collect();
    let mut spec = json!({"application": APP, "stages": stages});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            spec.insert(key.clone(), value.clone());
        }
    }
    json!({
        "apiVersion": "stagecoach.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": APP, "namespace": fixture.pipeline.home.name},
        "spec": spec
    })
}

/// Sets a stage's `approval` in a pipeline document.
fn with_approval(mut doc: Value, stage: &str, required: i32) -> Value {
    for s in doc["spec"]["stages"].as_array_mut().unwrap() {
        if s["name"] == stage {
            s["approval"] = json!({"required": required});
        }
    }
    doc
}

async fn apply_pipeline(fixture: &Fixture, doc: Value) -> Result<()> {
    let api: Api<stagecoach_api::Pipeline> =
        Api::namespaced(fixture.client.clone(), &fixture.pipeline.home.name);
    apply(&api, doc).await
}

/// A Release of the fixture's application that names no stages (the Pipeline's apply).
fn release_doc(fixture: &Fixture, name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "stagecoach.dev/v1alpha1",
        "kind": "Release",
        "metadata": {"name": name, "namespace": fixture.pipeline.home.name},
        "spec": {
            "application": APP,
            "version": "1.1.0",
            "changes": [{"id": "PR-7", "title": "faster export", "authors": ["carol"]}],
            "workloads": [{"deployment": "api", "containers": [{"name": "app", "image": image}]}]
        }
    })
}

/// RBAC in the home namespace: `approvers` may approve (and `overriders` override)
/// `stage`; everyone listed may create Approvals and read Releases.
async fn grant(
    fixture: &Fixture,
    stage: &str,
    approvers: &[&str],
    overriders: &[&str],
    others: &[&str],
) -> Result<()> {
    let ns = &fixture.pipeline.home.name;
    let roles: Api<Role> = Api::namespaced(fixture.client.clone(), ns);
    let bindings: Api<RoleBinding> = Api::namespaced(fixture.client.clone(), ns);
    let basics = json!([
        {"apiGroups": ["stagecoach.dev"], "resources": ["approvals"], "verbs": ["create", "get", "list"]},
        {"apiGroups": ["stagecoach.dev"], "resources": ["releases"], "verbs": ["get", "list"]}
    ]);
    let mut grants = vec![
        (format!("approve-{stage}"), "approve", approvers.to_vec()),
        (format!("override-{stage}"), "override", overriders.to_vec()),
    ];
    grants.push(("approval-basics".into(), "", others.to_vec()));
    for (name, verb, users) in grants {
        let mut granted = basics.as_array().unwrap().clone();
        if !verb.is_empty() {
            granted.push(json!({"apiGroups": ["stagecoach.dev"], "resources": [format!("releases/{stage}")], "verbs": [verb]}));
        }
        apply(
            &roles,
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                   "metadata": {"name": name, "namespace": ns}, "rules": granted}),
        )
        .await?;
        let subjects: Vec<Value> = users
            .iter()
            .map(|u| json!({"kind": "User", "name": u, "apiGroup": "rbac.authorization.k8s.io"}))
            .collect();
        apply(
            &bindings,
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": name, "namespace": ns},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                   "subjects": subjects}),
        )
        .await?;
    }
    Ok(())
}

/// Creates an Approval as `user` (with `approver` in the spec).
async fn decide(
    fixture: &Fixture,
    user: &str,
    approver: &str,
    release: &str,
    stage: &str,
    decision: &str,
    digest: &str,
    r#override: bool,
) -> Result<Approval, kube::Error> {
    let client = client_as(user).await.expect("impersonating client");
    let api: Api<Approval> = Api::namespaced(client, &fixture.pipeline.home.name);
    let approval: Approval = serde_json::from_value(json!({
        "apiVersion": "stagecoach.dev/v1alpha1",
        "kind": "Approval",
        "metadata": {"generateName": format!("{release}-{stage}-"), "namespace": fixture.pipeline.home.name},
        "spec": {"release": release, "stage": stage, "decision": decision, "approver": approver,
                 "releaseDigest": digest, "comment": "e2e", "override": r#override}
    }))
    .unwrap();
    api.create(&PostParams::default(), &approval).await
}

/// The API server's refusal message, or an error if the request was admitted. Retried
/// for a few seconds: a newly created RBAC rule or policy takes a moment to apply.
async fn refused(
    fixture: &Fixture,
    user: &str,
    approver: &str,
    release: &str,
    stage: &str,
    digest: &str,
) -> Result<String> {
    eventually(Duration::from_secs(20), || async {
        match decide(
            fixture, user, approver, release, stage, "Approve", digest, false,
        )
        .await
        {
            Err(kube::Error::Api(status)) => Ok(Some(status.message)),
            Err(other) => Err(other.into()),
            Ok(admitted) => {
                // Not enforced yet: take it back and try again.
                let api: Api<Approval> =
                    Api::namespaced(fixture.client.clone(), &fixture.pipeline.home.name);
                api.delete(&admitted.name_any(), &kube::api::DeleteParams::default())
                    .await?;
                Ok(None)
            }
        }
    })
    .await
}

/// The user name the API server gives the test's own identity.
async fn admin_name(client: &Client) -> Result<String> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .context("no user name in the SelfSubjectReview")
}

async fn digest_of(fixture: &Fixture, release: &str) -> Result<String> {
    fixture
        .wait_release(release, "a digest", Duration::from_secs(30), |r| {
            status(r).digest.is_some()
        })
        .await
        .map(|r| status(&r).digest.unwrap())
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn prod_needs_two_approvals_from_allowed_users_of_the_current_content() -> Result<()> {
    let _ = IGNORE;
    let fixture = Fixture::start("pl-approve").await?;
    let name = "shop-1-1-0";
    apply_pipeline(
        &fixture,
        with_approval(pipeline_doc(&fixture, &json!({})), "prod", 2),
    )
    .await?;
    grant(
        &fixture,
        "prod",
        &["alice", "bob", "carol"],
        &[],
        &["mallory"],
    )
    .await?;
    fixture
        .create_release(&release_doc(&fixture, name, NEW_IMAGE))
        .await?;

    let waiting = fixture
        .wait_phase(name, ReleasePhase::AwaitingApproval)
        .await?;
    let st = status(&waiting);
    ensure!(st.current_stage.as_deref() == Some("prod"), "{st:?}");
    ensure!(stage_phase(&waiting, "demo") == Some(StagePhase::Succeeded));
    let ready = st.conditions.iter().find(|c| c.r#type == "Ready").unwrap();
    ensure!(ready.reason == "AwaitingApproval", "{ready:?}");
    ensure!(
        ready.message.contains("stage prod needs 2 approvals") && ready.message.contains("0 given"),
        "{}",
        ready.message
    );
    fixture.assert_untouched("prod", name).await?;
    fixture
        .wait_event(name, "Normal", "AwaitingApproval")
        .await?;
    let first = st.digest.clone().unwrap();

    // Without the RBAC rule: refused by the API server, with its reason.
    let message = refused(&fixture, "mallory", "mallory", name, "prod", &first).await?;
    ensure!(
        message.contains("mallory may not approve or reject stage prod")
            && message.contains("releases/prod"),
        "{message}"
    );
    // Someone else's name in spec.approver: refused.
    let message = refused(&fixture, "alice", "bob", name, "prod", &first).await?;
    ensure!(message.contains("you are alice, not bob"), "{message}");
    // A stage the release does not have: refused, even for a user RBAC allows everything
    // (the test's own identity).
    let admin: Api<Approval> = Api::namespaced(fixture.client.clone(), &fixture.pipeline.home.name);
    let who = admin_name(&fixture.client).await?;
    let staging: Approval = serde_json::from_value(json!({
        "apiVersion": "stagecoach.dev/v1alpha1", "kind": "Approval",
        "metadata": {"generateName": "staging-", "namespace": fixture.pipeline.home.name},
        "spec": {"release": name, "stage": "staging", "decision": "Approve", "approver": who,
                 "releaseDigest": first}
    }))?;
    match admin.create(&PostParams::default(), &staging).await {
        Err(kube::Error::Api(status)) => {
            ensure!(
                status.message.contains("has no stage staging"),
                "{}",
                status.message
            );
        }
        other => bail!("an approval of a stage the release lacks was not refused: {other:?}"),
    }

    // alice approves; then the image changes: her approval no longer counts.
    decide(
        &fixture, "alice", "alice", name, "prod", "Approve", &first, false,
    )
    .await?;
    fixture
        .wait_release(name, "1 approval given", Duration::from_secs(30), |r| {
            status(r)
                .message
                .is_some_and(|m| m.contains("1 given (alice)"))
        })
        .await?;
    fixture
        .patch_spec(
            name,
            json!({"workloads": [{"deployment": "api", "containers": [{"name": "app", "image": NEWER_IMAGE}]}]}),
        )
        .await?;
    let changed = fixture
        .wait_release(name, "a new digest", Duration::from_secs(30), |r| {
            status(r).digest.as_deref().is_some_and(|d| d != first)
        })
        .await?;
    let second = status(&changed).digest.unwrap();
    let changed = fixture
        .wait_release(
            name,
            "the old approval not counted",
            Duration::from_secs(30),
            |r| {
                status(r).message.is_some_and(|m| {
                    m.contains("0 given") && m.contains("alice approved an earlier version")
                })
            },
        )
        .await?;
    ensure!(status(&changed).phase == Some(ReleasePhase::AwaitingApproval));
    // carol wrote a change in the release: her approval does not count.
    decide(
        &fixture, "carol", "carol", name, "prod", "Approve", &second, false,
    )
    .await?;
    decide(
        &fixture, "alice", "alice", name, "prod", "Approve", &second, false,
    )
    .await?;
    fixture
        .wait_release(name, "carol not counted", Duration::from_secs(30), |r| {
            status(r)
                .message
                .is_some_and(|m| m.contains("carol is an author"))
        })
        .await?;
    ensure!(stage_phase(&fixture.release(name).await?, "prod") == Some(StagePhase::Pending));
    decide(
        &fixture, "bob", "bob", name, "prod", "Approve", &second, false,
    )
    .await?;

    let done = fixture
        .wait_phase(name, ReleasePhase::EarlyLifeSupport)
        .await?;
    // Made within one second, so in either order.
    let mut approvers: Vec<String> = status(&done)
        .approvals
        .iter()
        .map(|a| format!("{}:{}", a.approver, a.digest == second))
        .collect();
    approvers.sort();
    ensure!(approvers == ["alice:true", "bob:true"], "{approvers:?}");
    fixture.wait_pods_on("prod", NEWER_IMAGE).await?;
    fixture.wait_event(name, "Normal", "Approved").await?;
    fixture.finish().await
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_reject_stops_the_release_with_nothing_rolled_out_at_that_stage() -> Result<()> {
    let fixture = Fixture::start("pl-reject").await?;
    let name = "shop-1-1-0";
    apply_pipeline(
        &fixture,
        with_approval(pipeline_doc(&fixture, &json!({})), "demo", 1),
    )
    .await?;
    grant(&fixture, "demo", &["quinn"], &[], &[]).await?;
    fixture
        .create_release(&release_doc(&fixture, name, NEW_IMAGE))
        .await?;
    let waiting = fixture
        .wait_phase(name, ReleasePhase::AwaitingApproval)
        .await?;
    ensure!(status(&waiting).current_stage.as_deref() == Some("demo"));
    let digest = digest_of(&fixture, name).await?;
    decide(
        &fixture, "quinn", "quinn", name, "demo", "Reject", &digest, false,
    )
    .await?;
    let rejected = fixture
        .wait_release(name, "Rejected", ROLLOUT_TIMEOUT, |r| {
            status(r).phase == Some(ReleasePhase::Rejected)
        })
        .await?;
    ensure!(stage_phase(&rejected, "demo") == Some(StagePhase::Rejected));
    ensure!(stage_phase(&rejected, "prod") == Some(StagePhase::Skipped));
    ensure!(stage_phase(&rejected, "qa") == Some(StagePhase::Succeeded));
    ensure!(condition(&rejected, "Stalled").is_some_and(|(_, why)| why == "Rejected"));
    fixture.assert_untouched("demo", name).await?;
    fixture.assert_untouched("prod", name).await?;
    fixture.wait_event(name, "Warning", "Rejected").await?;
    fixture.finish().await
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_release_outside_its_window_waits_and_starts_when_it_opens() -> Result<()> {
    let fixture = Fixture::start("pl-window").await?;
    let name = "shop-1-1-0";
    // A window opening at the next full minute (UTC), at least 20 s away.
    let mut opens = Utc::now() + chrono::Duration::seconds(80);
    opens = opens.with_second(0).unwrap().with_nanosecond(0).unwrap();
    if opens.hour() == 23 && opens.minute() >= 50 {
        bail!("too close to midnight UTC for a one-day window; run again in a few minutes");
    }
    let day = opens.format("%a").to_string();
    let window = json!({
        "days": [day],
        "start": opens.format("%H:%M").to_string(),
        "end": (opens + chrono::Duration::minutes(10)).format("%H:%M").to_string(),
        "timeZone": "UTC"
    });
    let extra = json!({"releaseTypes": {"minor": {"windows": [window]}}});
    apply_pipeline(&fixture, pipeline_doc(&fixture, &extra)).await?;
    fixture
        .create_release(&release_doc(&fixture, name, NEW_IMAGE))
        .await?;
    let waiting = fixture
        .wait_release(name, "WaitingForWindow", Duration::from_secs(30), |r| {
            status(r).phase == Some(ReleasePhase::WaitingForWindow)
        })
        .await?;
    ensure!(
        status(&waiting).next_window == Some(opens),
        "{:?}",
        status(&waiting).next_window
    );
    ensure!(stage_phase(&waiting, "dev") == Some(StagePhase::Pending));
    fixture.assert_untouched("dev", name).await?;
    let started = fixture
        .wait_release(name, "dev started", Duration::from_secs(150), |r| {
            stage_phase(r, "dev") != Some(StagePhase::Pending)
        })
        .await?;
    let dev = status(&started)
        .stages
        .into_iter()
        .find(|s| s.name == "dev")
        .unwrap();
    ensure!(dev.started_at.is_some_and(|t| t >= opens), "{dev:?}");
    ensure!(
        status(&started).next_window.is_none()
            || stage_phase(&started, "qa") != Some(StagePhase::Pending)
    );
    fixture.finish().await
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_freeze_blocks_entry_an_override_lets_in_and_a_rollback_is_never_blocked() -> Result<()> {
    let fixture = Fixture::start("pl-freeze").await?;
    let now = Utc::now();
    let freeze = json!({
        "from": (now - chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "to": (now + chrono::Duration::days(2)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "reason": "e2e freeze"
    });
    apply_pipeline(
        &fixture,
        pipeline_doc(&fixture, &json!({"freezes": [freeze]})),
    )
    .await?;
    grant(&fixture, "dev", &["olga"], &["olga"], &["pat"]).await?;
    let name = "shop-1-1-1";
    fixture
        .create_release(&release_doc(&fixture, name, BAD_IMAGE))
        .await?;
    let waiting = fixture
        .wait_release(name, "frozen", Duration::from_secs(30), |r| {
            status(r).phase == Some(ReleasePhase::WaitingForWindow)
        })
        .await?;
    let message = status(&waiting).message.unwrap_or_default();
    ensure!(message.contains("e2e freeze"), "{message}");
    let digest = status(&waiting).digest.unwrap();
    // An override needs the override verb.
    let denied = {
        let client = client_as("pat").await?;
        let api: Api<Approval> = Api::namespaced(client, &fixture.pipeline.home.name);
        let approval: Approval = serde_json::from_value(json!({
            "apiVersion": "stagecoach.dev/v1alpha1", "kind": "Approval",
            "metadata": {"generateName": "pat-", "namespace": fixture.pipeline.home.name},
            "spec": {"release": name, "stage": "dev", "decision": "Approve", "approver": "pat",
                     "releaseDigest": digest, "override": true}
        }))?;
        api.create(&PostParams::default(), &approval).await
    };
    ensure!(
        denied.is_err(),
        "pat has no right to approve or override dev"
    );
    decide(
        &fixture, "olga", "olga", name, "dev", "Approve", &digest, true,
    )
    .await?;
    // Let in during the freeze, the bad image fails, and the rollback is not held back.
    let ended = fixture
        .wait_release(name, "rolled back", ROLLOUT_TIMEOUT, |r| {
            status(r).phase == Some(ReleasePhase::RolledBack)
        })
        .await?;
    ensure!(stage_phase(&ended, "dev") == Some(StagePhase::RolledBack));
    ensure!(
        status(&ended)
            .approvals
            .iter()
            .any(|a| a.r#override && a.approver == "olga"),
        "{:?}",
        status(&ended).approvals
    );
    fixture
        .wait_template("dev", &fixture.before("dev").clone())
        .await?;
    fixture
        .wait_event(name, "Warning", "ScheduleOverridden")
        .await?;
    fixture.finish().await
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_toggle_applied_before_any_release_is_served_in_the_pipelines_stages() -> Result<()> {
    let fixture = Fixture::start("pl-toggle").await?;
    apply_pipeline(&fixture, pipeline_doc(&fixture, &json!({}))).await?;
    let toggles: Api<FeatureToggle> =
        Api::namespaced(fixture.client.clone(), &fixture.pipeline.home.name);
    apply(
        &toggles,
        json!({
            "apiVersion": "stagecoach.dev/v1alpha1", "kind": "FeatureToggle",
            "metadata": {"name": "new-export", "namespace": fixture.pipeline.home.name},
            "spec": {"application": APP, "variants": {"on": true, "off": false}, "defaultVariant": "off",
                     "stages": {"dev": {"defaultVariant": "on"}}}
        }),
    )
    .await?;
    for (stage, ns) in &fixture.pipeline.stages {
        let api: Api<ConfigMap> = Api::namespaced(fixture.client.clone(), &ns.name);
        let flags = eventually(Duration::from_secs(60), || async {
            Ok(api.get_opt("stagecoach-flags").await?)
        })
        .await
        .with_context(|| format!("no flag set in stage {stage}"))?;
        let text: String = flags.data.unwrap_or_default().into_values().collect();
        ensure!(text.contains("new-export"), "{stage}: {text}");
    }
    // And OFREP answers for the Pipeline's stages.
    let url = format!(
        "{}/apps/{}/{APP}/stages/dev/ofrep/v1/evaluate/flags/new-export",
        fixture.operator().ofrep_url(),
        fixture.pipeline.home.name
    );
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(json!({"context": {"targetingKey": "client-1"}}).to_string())
        .send()
        .await?;
    let code = response.status().as_u16();
    let body: Value = serde_json::from_str(&response.text().await?)?;
    ensure!(code == 200 && body["value"] == json!(true), "{code} {body}");
    fixture.finish().await
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn bad_pipelines_are_refused_at_admission_naming_the_field() -> Result<()> {
    let fixture = Fixture::start("pl-bad").await?;
    let good = pipeline_doc(&fixture, &json!({}));
    let api: Api<stagecoach_api::Pipeline> =
        Api::namespaced(fixture.client.clone(), &fixture.pipeline.home.name);
    let window = |w: Value| json!({"releaseTypes": {"major": {"windows": [w]}}});
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"stages": [{"name": "dev"}, {"name": "dev"}]}),
            "stage names must be unique",
        ),
        (
            window(json!({"days": ["Fri2"], "start": "06:00", "end": "09:00", "timeZone": "UTC"})),
            "days[0]",
        ),
        (
            window(json!({"days": ["Tue"], "start": "09:00", "end": "06:00", "timeZone": "UTC"})),
            "end must be after its start",
        ),
        (
            window(
                json!({"days": ["Tue"], "start": "06:00", "end": "09:00", "timeZone": "Mars/Olympus"}),
            ),
            "timeZone must be an IANA time zone",
        ),
        (
            json!({"releaseTypes": {"major": {"notice": "-72h"}}}),
            "notice must be a positive duration",
        ),
        (
            json!({"freezes": [{"from": "2026-12-20T00:00:00Z", "to": "2026-12-01T00:00:00Z"}]}),
            "a freeze must end",
        ),
        (
            json!({"stages": [{"name": "prod", "approval": {"required": 0}}]}),
            "approval.required",
        ),
        (
            json!({"notifications": [{"name": "x", "webhook": {"url": "hooks.example.com/x"}}]}),
            "url must be an http",
        ),
    ];
    for (extra, expected) in cases {
        let mut doc = good.clone();
        for (k, v) in extra.as_object().unwrap() {
            doc["spec"][k] = v.clone();
        }
        let err = apply(&api, doc)
            .await
            .err()
            .context(format!("admitted: {expected}"))?;
        let text = format!("{err:#}");
        ensure!(text.contains(expected), "expected {expected:?} in: {text}");
    }
    fixture.finish().await
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_release_that_contradicts_its_pipeline_is_not_accepted_and_changes_nothing() -> Result<()>
{
    let fixture = Fixture::start("pl-contra").await?;
    let mut doc = pipeline_doc(&fixture, &json!({}));
    doc["spec"]["stages"][3]["steps"] = json!([{"setWeight": 50}, {"setWeight": 100}]);
    apply_pipeline(&fixture, doc).await?;
    let name = "shop-1-1-0";
    let mut release = release_doc(&fixture, name, NEW_IMAGE);
    release["spec"]["stages"] = json!([{"name": "prod", "steps": [{"setWeight": 100}]}]);
    fixture.create_release(&release).await?;
    let refused = fixture
        .wait_release(name, "Accepted=False", Duration::from_secs(30), |r| {
            condition(r, "Accepted").is_some_and(|(_, why)| why == "ContradictsPipeline")
        })
        .await?;
    let accepted = status(&refused)
        .conditions
        .into_iter()
        .find(|c| c.r#type == "Accepted")
        .unwrap();
    ensure!(
        accepted
            .message
            .contains("the steps of stage prod are set by the pipeline"),
        "{}",
        accepted.message
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    for stage in ["dev", "qa", "demo", "prod"] {
        fixture.assert_untouched(stage, name).await?;
    }
    fixture.finish().await
}

#[tokio::test]
#[ignore = "needs the test control plane: run `cargo xtask test`"]
async fn a_pipeline_reports_itself_in_force_and_two_for_one_application_hold_its_releases()
-> Result<()> {
    let fixture = Fixture::start("pl-status").await?;
    apply_pipeline(&fixture, pipeline_doc(&fixture, &json!({}))).await?;
    let api: Api<stagecoach_api::Pipeline> =
        Api::namespaced(fixture.client.clone(), &fixture.pipeline.home.name);
    let ready = |p: &stagecoach_api::Pipeline| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.r#type == "Ready"))
            .map(|c| (c.status, c.reason.clone()))
    };
    let in_force = eventually(Duration::from_secs(30), || async {
        let p = api.get(APP).await?;
        Ok(ready(&p)
            .is_some_and(|(s, why)| s == stagecoach_api::ConditionStatus::True && why == "InForce")
            .then_some(p))
    })
    .await?;
    ensure!(
        in_force.status.as_ref().and_then(|s| s.stages.as_deref()) == Some("dev, qa, demo, prod")
    );
    // A receiver whose Secret does not exist is named in a condition, until it does.
    let mut with_receiver = pipeline_doc(
        &fixture,
        &json!({"notifications": [
            {"name": "clients", "webhook": {"url": "https://hooks.example.com/clients",
                                            "secretRef": {"name": "client-hook", "key": "token"}}}
        ]}),
    );
    with_receiver["metadata"]["name"] = json!(APP);
    apply(&api, with_receiver).await?;
    let notifications = |p: &stagecoach_api::Pipeline| {
        p.status
            .as_ref()
            .and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.r#type == "NotificationsReady")
            })
            .map(|c| (c.status, c.message.clone()))
    };
    let broken = eventually(Duration::from_secs(30), || async {
        let p = api.get(APP).await?;
        Ok(notifications(&p).filter(|(s, _)| *s == stagecoach_api::ConditionStatus::False))
    })
    .await?;
    ensure!(
        broken
            .1
            .contains("receiver clients: Secret client-hook not found"),
        "{}",
        broken.1
    );
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(fixture.client.clone(), &fixture.pipeline.home.name);
    apply(
        &secrets,
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "client-hook", "namespace": fixture.pipeline.home.name},
               "stringData": {"token": "s3cret"}}),
    )
    .await?;
    eventually(Duration::from_secs(40), || async {
        let p = api.get(APP).await?;
        Ok(notifications(&p)
            .is_some_and(|(s, _)| s == stagecoach_api::ConditionStatus::True)
            .then_some(()))
    })
    .await
    .context("the condition did not clear once the Secret existed")?;

    // A second Pipeline for the same application: both say so, and releases wait.
    let mut second = pipeline_doc(&fixture, &json!({}));
    second["metadata"]["name"] = json!("shop-too");
    apply(&api, second).await?;
    for name in [APP, "shop-too"] {
        eventually(Duration::from_secs(30), || async {
            let p = api.get(name).await?;
            Ok(ready(&p)
                .is_some_and(|(_, why)| why == "AmbiguousPipeline")
                .then_some(()))
        })
        .await
        .with_context(|| format!("{name} does not report the conflict"))?;
    }
    let release = "shop-1-1-0";
    fixture
        .create_release(&release_doc(&fixture, release, NEW_IMAGE))
        .await?;
    fixture
        .wait_release(release, "AmbiguousPipeline", Duration::from_secs(30), |r| {
            condition(r, "Accepted").is_some_and(|(_, why)| why == "AmbiguousPipeline")
        })
        .await?;
    fixture.assert_untouched("dev", release).await?;
    // Removing one lets the release go, and the other is in force again.
    api.delete("shop-too", &kube::api::DeleteParams::default())
        .await?;
    fixture
        .wait_release(release, "dev started", ROLLOUT_TIMEOUT, |r| {
            stage_phase(r, "dev").is_some_and(|p| p != StagePhase::Pending)
        })
        .await?;
    eventually(Duration::from_secs(30), || async {
        let p = api.get(APP).await?;
        Ok(ready(&p)
            .is_some_and(|(_, why)| why == "InForce")
            .then_some(()))
    })
    .await?;
    fixture.finish().await
}
