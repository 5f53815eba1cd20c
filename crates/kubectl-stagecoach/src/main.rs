//! `kubectl stagecoach`: the release manager's view of Stagecoach.
//!
//! Installed as `kubectl-stagecoach` on the PATH, kubectl finds it as a plugin.

mod approve;
mod changelog;
mod decide;
mod render;

use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Config, ResourceExt};
use stagecoach_api::{Decision, Pipeline, Release};
use stagecoach_engine::release::promote::Route;

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
    /// Act as this user (impersonation, as kubectl's --as; your own user needs the
    /// RBAC verb impersonate).
    #[arg(long = "as", global = true, value_name = "USER")]
    as_user: Option<String>,
    /// With --as: act as a member of this group (repeat for more).
    #[arg(
        long = "as-group",
        global = true,
        value_name = "GROUP",
        requires = "as_user"
    )]
    as_group: Vec<String>,
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
    /// Approve the release's entry into a stage, as yourself, for its current content.
    ///
    /// Creates an Approval naming you (as the API server knows you: kubectl auth whoami)
    /// and the release's status.digest; an approval of earlier content does not count.
    /// The API server refuses it unless RBAC gives you verb approve on releases/<stage>
    /// in the release's namespace; its message is printed as is.
    Approve {
        release: String,
        /// The stage to let the release into.
        #[arg(long)]
        stage: String,
        /// Why, for the record (spec.comment).
        #[arg(short = 'm', long = "message", value_name = "COMMENT")]
        comment: Option<String>,
        /// Emergency: let the stage start outside its windows, during a freeze or before
        /// a major release's notice has run out (needs verb override on releases/<stage>).
        #[arg(long = "override")]
        r#override: bool,
    },
    /// Reject the release at a stage: it ends there, with nothing rolled out in that stage.
    ///
    /// Needs the same RBAC as approve (verb approve on releases/<stage>).
    Reject {
        release: String,
        /// The stage to stop the release at.
        #[arg(long)]
        stage: String,
        /// Why, for the record (spec.comment).
        #[arg(short = 'm', long = "message", value_name = "COMMENT")]
        comment: Option<String>,
    },
    /// The releases of an application that have ended, newest first, from their audit
    /// records (the immutable ConfigMaps the operator writes; they outlive the Releases).
    ///
    /// --format markdown prints release notes for clients: version, date, what happened,
    /// the changes with their links and the notes. --format json prints the records.
    Changelog {
        application: String,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Only the newest N releases.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// DORA metrics of an application from its audit records: deployment frequency to
    /// its last stage, lead time for changes, change failure rate, time to restore.
    Dora {
        application: String,
        /// The window, up to now: days (30d), weeks (2w) or hours (12h).
        #[arg(long, default_value = "30d")]
        since: String,
        /// text or json.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

/// How `changelog` and `dora` print.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Markdown,
    Json,
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
        Err(e) => bail!("cannot read release {name}: {}", api_message(&e)),
    }
}

/// The stages the release goes through as the operator resolves them: merged into its
/// application's Pipeline when the namespace has one. Without read access to Pipelines
/// (or their CRD), the release's own stages, with a note on stderr.
async fn route(client: &Client, release: &Release) -> Route {
    let namespace = release.namespace().unwrap_or_default();
    match Api::<Pipeline>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default())
        .await
    {
        Ok(list) => decide::route(release, &list.items),
        Err(e) => {
            eprintln!(
                "note: cannot read the Pipelines in namespace {namespace} ({}); showing the \
                 release's own stages",
                api_message(&e)
            );
            Route::of(&release.spec)
        }
    }
}

/// The API server's own words for a refusal (an admission policy's message, an RBAC
/// denial), else the error as kube reports it.
fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    }
}

async fn status(client: Client, namespace: Option<&str>, name: Option<&str>) -> Result<()> {
    if let Some(name) = name {
        let release = get(&client, namespace, name).await?;
        let route = route(&client, &release).await;
        print!("{}", render::status_detail(&release, &route));
        return Ok(());
    }
    let mut releases = api(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map_err(|e| anyhow!("cannot list releases: {}", api_message(&e)))?
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
    decide: impl FnOnce(&Release, &Route) -> Result<decide::Request, String>,
) -> Result<()> {
    let release = get(&client, namespace, name).await?;
    let route = route(&client, &release).await;
    let request = decide(&release, &route).map_err(anyhow::Error::msg)?;
    if let Some(body) = &request.patch {
        api(client, namespace)
            .patch(
                name,
                &PatchParams::apply("kubectl-stagecoach"),
                &Patch::Merge(body),
            )
            .await
            .map_err(|e| anyhow!("cannot change release {name}: {}", api_message(&e)))?;
    }
    println!("{}", request.message);
    Ok(())
}

/// The user name the API server knows the caller by (SelfSubjectReview, as `kubectl auth
/// whoami`): what the admission policy compares spec.approver with.
async fn whoami(client: &Client) -> Result<String> {
    let review = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(|e| {
            anyhow!(
                "cannot find out who you are (SelfSubjectReview, as kubectl auth whoami): {}",
                api_message(&e)
            )
        })?;
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .filter(|u| !u.is_empty())
        .context("the API server did not say who you are (SelfSubjectReview has no user name)")
}

/// `approve` and `reject`: reads the Release, finds out who the user is, creates the
/// Approval. A refusal by the API server is printed in its own words.
async fn decide_stage(
    client: Client,
    namespace: Option<&str>,
    name: &str,
    ask: &approve::Ask<'_>,
) -> Result<()> {
    let release = get(&client, namespace, name).await?;
    let approver = whoami(&client).await?;
    let approval = approve::approval(&release, &approver, ask).map_err(anyhow::Error::msg)?;
    let ns = release
        .namespace()
        .unwrap_or_else(|| namespace_of(&client, namespace));
    let created = Api::namespaced(client, &ns)
        .create(&PostParams::default(), &approval)
        .await
        .map_err(|e| anyhow!(api_message(&e)))?;
    print!("{}", approve::done(&created));
    Ok(())
}

/// The audit record documents of an application in the namespace, newest first.
async fn records(
    client: &Client,
    namespace: Option<&str>,
    application: &str,
) -> Result<Vec<serde_json::Value>> {
    use stagecoach_engine::record::{APPLICATION_LABEL, DATA_KEY, RECORD_LABEL};
    let ns = namespace_of(client, namespace);
    let selector = format!("{RECORD_LABEL}=true,{APPLICATION_LABEL}={application}");
    let list = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| {
            anyhow!(
                "cannot list the audit records in namespace {ns}: {}",
                api_message(&e)
            )
        })?;
    let mut docs = Vec::new();
    for config_map in list.items {
        let name = config_map.name_any();
        let text = config_map.data.as_ref().and_then(|d| d.get(DATA_KEY));
        match text.map(|t| serde_json::from_str::<serde_json::Value>(t)) {
            Some(Ok(doc)) => docs.push(doc),
            _ => eprintln!("note: ConfigMap {ns}/{name} holds no readable {DATA_KEY}; skipped"),
        }
    }
    changelog::newest_first(&mut docs);
    Ok(docs)
}

async fn show_changelog(
    client: &Client,
    namespace: Option<&str>,
    application: &str,
    format: Format,
    limit: Option<usize>,
) -> Result<()> {
    let mut docs = records(client, namespace, application).await?;
    if let Some(limit) = limit {
        docs.truncate(limit);
    }
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&docs)?),
        Format::Markdown => print!("{}", changelog::markdown(application, &docs)),
        Format::Text if docs.is_empty() => eprintln!(
            "No audit records of {application} in namespace {}.",
            namespace_of(client, namespace)
        ),
        Format::Text => print!("{}", changelog::table(&docs)),
    }
    Ok(())
}

async fn show_dora(
    client: &Client,
    namespace: Option<&str>,
    application: &str,
    since: &str,
    format: Format,
) -> Result<()> {
    let window = changelog::parse_since(since).map_err(anyhow::Error::msg)?;
    let docs = records(client, namespace, application).await?;
    let facts: Vec<_> = docs
        .iter()
        .filter_map(stagecoach_engine::dora::facts_of_document)
        .collect();
    let until = chrono::Utc::now();
    let report = stagecoach_engine::dora::report(&facts, until - window, until);
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text | Format::Markdown => {
            let last_stage = facts
                .iter()
                .rev()
                .find_map(|f| f.last_stage.clone())
                .unwrap_or_else(|| "the last stage".to_owned());
            print!(
                "{}",
                changelog::dora_text(
                    application,
                    &namespace_of(client, namespace),
                    &last_stage,
                    docs.len(),
                    &report
                )
            );
        }
    }
    Ok(())
}

/// A client for the kubeconfig's cluster and user, impersonating `--as` if given.
async fn connect(cli: &Cli) -> Result<Client> {
    let mut config = Config::infer()
        .await
        .context("cannot read your kubeconfig")?;
    if let Some(user) = &cli.as_user {
        config.auth_info.impersonate = Some(user.clone());
        if !cli.as_group.is_empty() {
            config.auth_info.impersonate_groups = Some(cli.as_group.clone());
        }
    }
    Client::try_from(config).context("cannot connect to the cluster in your kubeconfig")
}

async fn run(cli: Cli) -> Result<()> {
    let client = connect(&cli).await?;
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
            change(client, ns, &release, |r, route| {
                decide::promote(r, route, stage.as_deref(), step)
            })
            .await
        }
        Command::History { release } => {
            print!("{}", render::history(&get(&client, ns, &release).await?));
            Ok(())
        }
        Command::Approve {
            release,
            stage,
            comment,
            r#override,
        } => {
            let ask = approve::Ask {
                stage: &stage,
                decision: Decision::Approve,
                comment: comment.as_deref(),
                r#override,
            };
            decide_stage(client, ns, &release, &ask).await
        }
        Command::Changelog {
            application,
            format,
            limit,
        } => show_changelog(&client, ns, &application, format, limit).await,
        Command::Dora {
            application,
            since,
            format,
        } => show_dora(&client, ns, &application, &since, format).await,
        Command::Reject {
            release,
            stage,
            comment,
        } => {
            let ask = approve::Ask {
                stage: &stage,
                decision: Decision::Reject,
                comment: comment.as_deref(),
                r#override: false,
            };
            decide_stage(client, ns, &release, &ask).await
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
