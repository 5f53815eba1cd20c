//! `kubectl stagecoach`: the release manager's view of Stagecoach.
//!
//! Installed as `kubectl-stagecoach` on the PATH, kubectl finds it as a plugin.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use stagecoach_api::Release;

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
}

async fn status(client: Client, namespace: Option<&str>, name: Option<&str>) -> Result<()> {
    let api: Api<Release> = match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::default_namespaced(client),
    };
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

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let client = Client::try_default()
        .await
        .context("connecting to the cluster in your kubeconfig")?;
    match cli.command {
        Command::Status { release } => {
            status(client, cli.namespace.as_deref(), release.as_deref()).await
        }
    }
}
