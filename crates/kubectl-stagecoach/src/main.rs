//! `kubectl stagecoach`: the release manager's view of Stagecoach.
//!
//! Installed as `kubectl-stagecoach` on the PATH, kubectl finds it as a plugin.

mod decide;
mod render;

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use kube::api::{Api, ListParams, Patch, PatchParams};
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
    /// Hold a release: no new step starts (gates keep running; a failure still rolls back).
    /// Sets spec.paused; in a GitOps repo, set `paused: true` in the manifest instead.
    Pause { release: String },
    /// Let a paused release continue (spec.paused=false).
    Resume { release: String },
    /// Roll back the stage in progress and stop the release (spec.abort=true). Stages that
    /// already succeeded keep the new version. Cannot be undone.
    Abort { release: String },
    /// End a pause step that has no duration (annotation stagecoach.dev/promote).
    ///
    /// Without --step: the next pause without duration at or after the current step of
    /// the stage in progress; if the release has not reached it yet, it ends that pause as
    /// soon as the release gets there. Refused when the stage has no such pause left.
    Promote {
        release: String,
        /// The step to end, by its 0-based index in the stage's steps (as in
        /// status.stages[].step).
        #[arg(long)]
        step: Option<usize>,
        /// The stage of --step (default: the stage in progress).
        #[arg(long, requires = "step")]
        stage: Option<String>,
    },
    /// What happened to a release: its timeline, rollbacks and closing record.
    History { release: String },
}

fn api(client: Client, namespace: Option<&str>) -> Api<Release> {
    match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::default_namespaced(client),
    }
}

fn namespace_of(client: &Client, namespace: Option<&str>) -> String {
    namespace.map_or_else(|| client.default_namespace().to_owned(), str::to_owned)
}

/// The Release, or why it cannot be read (not found is said plainly).
async fn get(client: &Client, namespace: Option<&str>, name: &str) -> Result<Release> {
    match api(client.clone(), namespace).get_opt(name).await {
        Ok(Some(release)) => Ok(release),
        Ok(None) => bail!(
            "release {name} not found in namespace {}",
            namespace_of(client, namespace)
        ),
        Err(e) => Err(e).with_context(|| format!("cannot read release {name}")),
    }
}

async fn status(client: Client, namespace: Option<&str>, name: Option<&str>) -> Result<()> {
    if let Some(name) = name {
        print!(
            "{}",
            render::status_detail(&get(&client, namespace, name).await?)
        );
        return Ok(());
    }
    let mut releases = api(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .context("cannot list releases")?
        .items;
    if releases.is_empty() {
        eprintln!(
            "No releases found in namespace {}.",
            namespace_of(&client, namespace)
        );
        return Ok(());
    }
    releases.sort_by_key(ResourceExt::name_any);
    print!("{}", render::status_table(&releases));
    Ok(())
}

/// Reads the Release, decides, and merge-patches it as the person running the plugin:
/// the API server records their identity, and RBAC decides whether they may.
async fn change(
    client: Client,
    namespace: Option<&str>,
    name: &str,
    decide: impl FnOnce(&Release) -> Result<decide::Request, String>,
) -> Result<()> {
    let release = get(&client, namespace, name).await?;
    let request = decide(&release).map_err(anyhow::Error::msg)?;
    if let Some(body) = &request.patch {
        api(client, namespace)
            .patch(
                name,
                &PatchParams::apply("kubectl-stagecoach"),
                &Patch::Merge(body),
            )
            .await
            .with_context(|| format!("cannot change release {name}"))?;
    }
    println!("{}", request.message);
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    let client = Client::try_default()
        .await
        .context("cannot connect to the cluster in your kubeconfig")?;
    let ns = cli.namespace.as_deref();
    match cli.command {
        Command::Status { release } => status(client, ns, release.as_deref()).await,
        Command::Pause { release } => change(client, ns, &release, decide::pause).await,
        Command::Resume { release } => change(client, ns, &release, decide::resume).await,
        Command::Abort { release } => change(client, ns, &release, decide::abort).await,
        Command::Promote {
            release,
            step,
            stage,
        } => {
            change(client, ns, &release, |r| {
                decide::promote(r, stage.as_deref(), step)
            })
            .await
        }
        Command::History { release } => {
            print!("{}", render::history(&get(&client, ns, &release).await?));
            Ok(())
        }
    }
}

/// Anything that cannot be done is said on stderr, with exit status 1.
#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
