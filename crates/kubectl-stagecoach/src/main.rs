//! `kubectl stagecoach`: the release manager's view of Stagecoach.
//!
//! Installed as `kubectl-stagecoach` on the PATH, kubectl finds it as a plugin.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use stagecoach_api::Release;
use stagecoach_api::release::StagePhase;

#[derive(Parser)]
#[command(
    name = "kubectl-stagecoach",
    bin_name = "kubectl stagecoach",
    version,
    about = "Watch and steer Stagecoach releases",
    long_about = "Watch and steer Stagecoach releases.\n\nThe cluster and namespace come from your kubeconfig, as for kubectl."
)]
struct Cli {
    /// Namespace of the releases (default: the kubeconfig's namespace).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show releases: version, phase, and where each stage is.
    Status {
        /// One release; all releases in the namespace when omitted.
        release: Option<String>,
    },
    /// Hold a release: no new step starts (gates keep running; a failure still rolls back).
    /// Sets spec.paused; in a GitOps repo, set `paused: true` in the manifest instead.
    Pause { release: String },
    /// Let a paused release continue (spec.paused=false).
    Resume { release: String },
    /// Roll back the stage in progress and stop the release (spec.abort=true). Stages that
    /// already succeeded keep the new version. Cannot be undone.
    Abort { release: String },
    /// End a pause step that has no duration (annotation stagecoach.dev/promote).
    Promote { release: String },
    /// What happened to a release: its timeline, rollbacks and closing record.
    History { release: String },
}

async fn status(client: Client, namespace: Option<&str>, name: Option<&str>) -> Result<()> {
    let api = api(client, namespace);
    let releases = match name {
        Some(name) => vec![
            api.get(name)
                .await
                .with_context(|| format!("release {name}"))?,
        ],
        None => api.list(&ListParams::default()).await?.items,
    };
    if releases.is_empty() {
        println!("No releases found.");
        return Ok(());
    }
    println!(
        "{:<28} {:<12} {:<10} {:<18} STAGES",
        "RELEASE", "APPLICATION", "VERSION", "PHASE"
    );
    for release in releases {
        let status = release.status.clone().unwrap_or_default();
        let phase = status
            .phase
            .map_or_else(|| "-".to_owned(), |p| format!("{p:?}"));
        let stages = status
            .stages
            .iter()
            .map(|s| {
                let weight = s.weight.map(|w| format!(" {w}%")).unwrap_or_default();
                format!("{}:{:?}{weight}", s.name, s.phase)
            })
            .collect::<Vec<_>>()
            .join("  ");
        println!(
            "{:<28} {:<12} {:<10} {:<18} {}",
            release.name_any(),
            release.spec.application,
            release.spec.version,
            phase,
            if stages.is_empty() {
                "-".into()
            } else {
                stages
            }
        );
    }
    Ok(())
}

fn api(client: Client, namespace: Option<&str>) -> Api<Release> {
    match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::default_namespaced(client),
    }
}

/// Merge-patches the Release as the person running the plugin: the API server records
/// their identity, and RBAC decides whether they may.
async fn patch(
    client: Client,
    namespace: Option<&str>,
    name: &str,
    body: serde_json::Value,
    what: &str,
) -> Result<()> {
    api(client, namespace)
        .patch(
            name,
            &PatchParams::apply("kubectl-stagecoach"),
            &Patch::Merge(&body),
        )
        .await
        .with_context(|| format!("cannot {what} release {name}"))?;
    println!("release {name}: {what} requested");
    Ok(())
}

async fn promote(client: Client, namespace: Option<&str>, name: &str) -> Result<()> {
    let release = api(client.clone(), namespace)
        .get(name)
        .await
        .with_context(|| format!("release {name}"))?;
    let status = release.status.unwrap_or_default();
    let stage = status
        .stages
        .iter()
        .find(|s| s.phase == StagePhase::Progressing)
        .context("the release has no stage in progress")?;
    let key = format!("{}/{}", stage.name, stage.step.unwrap_or(0));
    let body = serde_json::json!({"metadata": {"annotations": {"stagecoach.dev/promote": key}}});
    patch(client, namespace, name, body, &format!("promote {key}")).await
}

async fn history(client: Client, namespace: Option<&str>, name: &str) -> Result<()> {
    let release = api(client, namespace)
        .get(name)
        .await
        .with_context(|| format!("release {name}"))?;
    let status = release.status.unwrap_or_default();
    println!("{:<22} {:<8} {:<22} MESSAGE", "AT", "STAGE", "REASON");
    for entry in &status.timeline {
        println!(
            "{:<22} {:<8} {:<22} {}",
            entry.at.format("%Y-%m-%d %H:%M:%S"),
            entry.stage.as_deref().unwrap_or("-"),
            entry.reason,
            entry.message
        );
    }
    for rollback in &status.rollbacks {
        println!(
            "rollback: {} in {} ({}): {}",
            rollback.at.format("%Y-%m-%d %H:%M:%S"),
            rollback.stage,
            rollback.reason,
            rollback.message
        );
    }
    if let Some(record) = status.closing_record {
        println!(
            "closed {:?} at {}; lead time {}",
            record.outcome,
            record.completed_at.format("%Y-%m-%d %H:%M:%S"),
            record
                .lead_time_seconds
                .map_or_else(|| "-".to_owned(), |s| format!("{s}s"))
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let client = Client::try_default()
        .await
        .context("connecting to the cluster in your kubeconfig")?;
    let ns = cli.namespace.as_deref();
    match cli.command {
        Command::Status { release } => status(client, ns, release.as_deref()).await,
        Command::Pause { release } => {
            patch(
                client,
                ns,
                &release,
                json!({"spec": {"paused": true}}),
                "pause",
            )
            .await
        }
        Command::Resume { release } => {
            patch(
                client,
                ns,
                &release,
                json!({"spec": {"paused": false}}),
                "resume",
            )
            .await
        }
        Command::Abort { release } => {
            patch(
                client,
                ns,
                &release,
                json!({"spec": {"abort": true}}),
                "abort",
            )
            .await
        }
        Command::Promote { release } => promote(client, ns, &release).await,
        Command::History { release } => history(client, ns, &release).await,
    }
}
