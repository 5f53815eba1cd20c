//! Error reporting to Sentry (`--sentry-dsn` or `SENTRY_DSN`; off without one).
//!
//! What is reported:
//!
//! - **Panics**, by the sentry client's panic handler, with a backtrace.
//! - **Reconcile errors that are faults** ([`ReconcileError::is_fault`]): a refusal that
//!   comes back on every retry (403, 422 from a policy, ...) or a fault of the operator.
//!   Not the transient ones the retry absorbs (409 conflicts, throttling, an API server
//!   restarting), nor the write fence's stale-cache waits (plain requeues, no error). A
//!   fault is reported when it first fails an object, again when the error changes, and
//!   at most once an hour while it stays the same; a successful reconcile forgets it. So
//!   a Release stuck on a refused write is one Sentry event, not one per retry.
//! - With `--sentry-release-markers`, an info event when a release enters a stage
//!   ("shop 1.4.0 entered stage prod"), next to the errors of that time.
//!
//! Every reconcile runs with a Sentry hub of its own ([`reported`]) whose scope carries
//! the object's tags: `kind`, `namespace`, `name`, `application`, and for a Release
//! `release_name` and `stage` (the stage a failed write was for, else the stage the
//! release is working on). A panic inside a reconcile is reported with the same tags.
//! (`release` is Sentry's own tag: the operator's version, `stagecoach@0.1.0`, as is
//! `environment`, from `--sentry-environment`.) Events go out on the sentry client's own
//! thread, through reqwest with rustls; the reconcile never waits for them.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use sentry::{Hub, Level, SentryFutureExt};
use stagecoach_api::Release;

use crate::controller::toggle::ToggleApplication;

use crate::cli::SentryArgs;
use crate::error::ReconcileError;

/// How long the same fault of the same object stays quiet after it was reported.
const REPEAT_AFTER: Duration = Duration::from_secs(3600);

/// Most objects whose reported fault is remembered; past it the memory is cleared (which
/// only lets a few faults be reported once more).
const MAX_TRACKED: usize = 10_000;

/// The reporter of this process, set by [`init`] when a DSN is configured.
static REPORTER: OnceLock<Reporter> = OnceLock::new();

/// The Sentry release of the operator's events: its own version.
pub fn release_name() -> String {
    format!("stagecoach@{}", env!("CARGO_PKG_VERSION"))
}

/// Starts the Sentry client when a DSN is configured. The guard flushes queued events
/// (for up to two seconds) when dropped: keep it until the process ends.
pub fn init(args: &SentryArgs) -> anyhow::Result<Option<sentry::ClientInitGuard>> {
    let Some(dsn) = args.dsn.as_deref().map(str::trim).filter(|d| !d.is_empty()) else {
        return Ok(None);
    };
    let dsn: sentry::types::Dsn = dsn
        .parse()
        .context("--sentry-dsn (SENTRY_DSN) is not a Sentry DSN")?;
    // The transport's TLS: rustls needs a process-wide crypto provider; ring, as kube
    // uses. Already installed is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut options = sentry::ClientOptions::default();
    options.dsn = Some(dsn);
    options.release = Some(release_name().into());
    options.environment = Some(args.environment.clone().into());
    options.shutdown_timeout = Duration::from_secs(2);
    let guard = sentry::init(options);
    if !guard.is_enabled() {
        anyhow::bail!("the Sentry client did not start with this DSN");
    }
    let _ = REPORTER.set(Reporter::new(args.release_markers));
    tracing::info!(
        environment = %args.environment,
        release_markers = args.release_markers,
        "reporting panics and reconcile faults to Sentry"
    );
    Ok(Some(guard))
}

/// The object a reconcile is about, for the tags of what it reports.
#[derive(Clone)]
pub enum Subject {
    Release(Arc<Release>),
    /// An application's toggles (the toggle controller reconciles them together).
    Toggles(Arc<ToggleApplication>),
}

impl Subject {
    fn kind(&self) -> &'static str {
        match self {
            Self::Release(_) => "Release",
            Self::Toggles(_) => "FeatureToggle",
        }
    }

    fn key(&self) -> ObjectKey {
        let (namespace, name) = match self {
            Self::Release(r) => (r.namespace(), r.name_any()),
            Self::Toggles(app) => (app.namespace(), app.name_any()),
        };
        (self.kind(), namespace.unwrap_or_default(), name)
    }

    /// The tags every event about this object carries.
    fn tags(&self) -> Vec<(&'static str, String)> {
        let (kind, namespace, name) = self.key();
        let mut tags = vec![("kind", kind.to_owned()), ("namespace", namespace)];
        match self {
            Self::Release(release) => {
                tags.push(("application", release.spec.application.clone()));
                tags.push(("release_name", name.clone()));
                tags.push(("version", release.spec.version.clone()));
                if let Some(stage) = release
                    .status
                    .as_ref()
                    .and_then(|s| s.current_stage.clone())
                {
                    tags.push(("stage", stage));
                }
            }
            Self::Toggles(app) => tags.push(("application", app.name_any())),
        }
        tags.push(("name", name));
        tags
    }

    /// The stage whose namespace `namespace` is, for a Release.
    fn stage_in(&self, namespace: &str) -> Option<String> {
        let Self::Release(release) = self else {
            return None;
        };
        release
            .spec
            .resolved_stages()
            .into_iter()
            .find(|s| s.namespace.as_deref() == Some(namespace))
            .map(|s| s.name)
    }

    /// A hub whose scope carries [`Subject::tags`], on top of the current one.
    fn hub(&self) -> Arc<Hub> {
        let hub = Hub::new_from_top(Hub::current());
        hub.configure_scope(|scope| {
            for (key, value) in self.tags() {
                scope.set_tag(key, value);
            }
        });
        Arc::new(hub)
    }
}

/// Runs a reconcile in a hub tagged with its object (so a panic in it is reported with
/// those tags) and reports its error if it is a fault. Without Sentry it only runs it.
pub fn reported<F>(
    subject: Subject,
    reconcile: F,
) -> impl Future<Output = Result<Action, ReconcileError>> + Send
where
    F: Future<Output = Result<Action, ReconcileError>> + Send,
{
    reported_by(REPORTER.get(), subject, reconcile)
}

fn reported_by<F>(
    reporter: Option<&'static Reporter>,
    subject: Subject,
    reconcile: F,
) -> impl Future<Output = Result<Action, ReconcileError>> + Send
where
    F: Future<Output = Result<Action, ReconcileError>> + Send,
{
    let hub = match reporter {
        Some(_) => subject.hub(),
        None => Hub::current(),
    };
    async move {
        let result = reconcile.await;
        if let Some(reporter) = reporter {
            reporter.reconciled(&subject, &result);
        }
        result
    }
    .bind_hub(hub)
}

/// With `--sentry-release-markers`: an info event saying that `release` entered `stage`.
pub fn stage_entered(release: &Release, stage: &str) {
    if let Some(reporter) = REPORTER.get() {
        reporter.stage_entered(release, stage);
    }
}

/// An object: kind, namespace, name.
type ObjectKey = (&'static str, String, String);

/// What has been reported, per object (the error's text and when), and whether release
/// markers are on.
#[derive(Debug)]
pub struct Reporter {
    release_markers: bool,
    reported: Mutex<HashMap<ObjectKey, (String, Instant)>>,
}

impl Reporter {
    fn new(release_markers: bool) -> Self {
        Self {
            release_markers,
            reported: Mutex::default(),
        }
    }

    /// Reports a fault the first time, when it changes, and hourly while it stays;
    /// forgets the object's fault after a success. Transient errors change nothing.
    fn reconciled(&self, subject: &Subject, result: &Result<Action, ReconcileError>) {
        match result {
            Ok(_) => {
                let mut reported = self.reported.lock().unwrap_or_else(PoisonError::into_inner);
                if !reported.is_empty() {
                    reported.remove(&subject.key());
                }
            }
            Err(error) if error.is_fault() => {
                if self.is_news(subject.key(), error.to_string(), Instant::now()) {
                    capture_fault(subject, error);
                }
            }
            Err(_) => {}
        }
    }

    /// Whether `signature` (an error's text) is news for the object at `now`, remembering it.
    fn is_news(
        &self,
        key: (&'static str, String, String),
        signature: String,
        now: Instant,
    ) -> bool {
        let mut reported = self.reported.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((last, at)) = reported.get(&key)
            && *last == signature
            && now.duration_since(*at) < REPEAT_AFTER
        {
            return false;
        }
        if reported.len() >= MAX_TRACKED && !reported.contains_key(&key) {
            reported.clear();
        }
        reported.insert(key, (signature, now));
        true
    }

    fn stage_entered(&self, release: &Release, stage: &str) {
        if !self.release_markers {
            return;
        }
        let subject = Subject::Release(Arc::new(release.clone()));
        let message = format!(
            "{} {} entered stage {stage}",
            release.spec.application, release.spec.version
        );
        sentry::with_scope(
            |scope| {
                for (key, value) in subject.tags() {
                    scope.set_tag(key, value);
                }
                scope.set_tag("stage", stage);
                scope.set_tag("stagecoach_event", "stage-entered");
                // One group per application and stage, whatever the version.
                scope.set_fingerprint(Some(&[
                    "stage-entered",
                    release.spec.application.as_str(),
                    stage,
                ]));
            },
            || sentry::capture_message(&message, Level::Info),
        );
    }
}

/// One error event for a reconcile fault, with the object's tags, the failing step
/// (`error_category`), the API server's HTTP status, and the stage its write was for.
fn capture_fault(subject: &Subject, error: &ReconcileError) {
    sentry::with_scope(
        |scope| {
            for (key, value) in subject.tags() {
                scope.set_tag(key, value);
            }
            scope.set_tag("error_category", error.category());
            if let Some(code) = error.api_status() {
                scope.set_tag("http_status", code);
            }
            if let Some(namespace) = error.target_namespace() {
                scope.set_tag("target_namespace", namespace);
                if let Some(stage) = subject.stage_in(namespace) {
                    scope.set_tag("stage", stage);
                }
            }
        },
        || sentry::capture_error(error),
    );
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use sentry::test::with_captured_events;

    use super::*;

    fn release() -> Arc<Release> {
        let release: Release = serde_json::from_value(serde_json::json!({
            "apiVersion": "stagecoach.dev/v1alpha1",
            "kind": "Release",
            "metadata": {"name": "shop-1.4.0", "namespace": "shop"},
            "spec": {
                "application": "shop",
                "version": "1.4.0",
                "workloads": [{"deployment": "api", "containers": [{"name": "app", "image": "shop:1.4.0"}]}],
                "stages": [{"name": "dev", "namespace": "shop-dev"}, {"name": "prod", "namespace": "shop-live"}]
            },
            "status": {"currentStage": "dev"}
        }))
        .unwrap();
        Arc::new(release)
    }

    fn refused(code: u16) -> ReconcileError {
        ReconcileError::ApplyWorkload {
            action: "update",
            namespace: "shop-live".into(),
            name: "api".into(),
            source: Box::new(kube::Error::Api(Box::new(kube::core::Status {
                code,
                message: format!("refused with {code}"),
                ..kube::core::Status::default()
            }))),
        }
    }

    fn tags(event: &sentry::protocol::Event<'_>) -> BTreeMap<String, String> {
        event
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn leaked(markers: bool) -> &'static Reporter {
        Box::leak(Box::new(Reporter::new(markers)))
    }

    fn run(
        reporter: &'static Reporter,
        result: impl FnOnce() -> Result<Action, ReconcileError> + Send,
    ) -> Result<Action, ReconcileError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(reported_by(
            Some(reporter),
            Subject::Release(release()),
            async move { result() },
        ))
    }

    #[test]
    fn transient_errors_are_not_reported() {
        let reporter = leaked(false);
        let events = with_captured_events(|| {
            for code in [409, 429, 503, 504, 404] {
                assert!(run(reporter, move || Err(refused(code))).is_err());
            }
            let refused_connection = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
            let _ = run(reporter, move || {
                Err(ReconcileError::PatchStatus(kube::Error::Service(Box::new(
                    refused_connection,
                ))))
            });
            let _ = run(reporter, || Ok(Action::requeue(Duration::from_millis(500))));
        });
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn a_fault_is_reported_once_with_its_tags_until_it_changes_or_clears() {
        let reporter = leaked(false);
        let events = with_captured_events(|| {
            for _ in 0..3 {
                let _ = run(reporter, || Err(refused(422)));
            }
            // Another fault of the same object: news.
            let _ = run(reporter, || Err(refused(403)));
            // A success forgets it: the same fault afterwards is reported again.
            let _ = run(reporter, || Ok(Action::await_change()));
            let _ = run(reporter, || Err(refused(403)));
        });
        assert_eq!(events.len(), 3, "{events:?}");
        let first = &events[0];
        assert_eq!(first.level, Level::Error);
        let first_tags = tags(first);
        assert_eq!(first_tags["application"], "shop");
        assert_eq!(first_tags["release_name"], "shop-1.4.0");
        assert_eq!(first_tags["version"], "1.4.0");
        assert_eq!(first_tags["kind"], "Release");
        assert_eq!(first_tags["namespace"], "shop");
        // The failed write was for the stage whose namespace is shop-live.
        assert_eq!(first_tags["stage"], "prod");
        assert_eq!(first_tags["target_namespace"], "shop-live");
        assert_eq!(first_tags["error_category"], "apply_workload");
        assert_eq!(first_tags["http_status"], "422");
        // Sentry lists the cause first and the error itself last.
        let exception = first.exception.values.last().unwrap();
        assert!(
            exception
                .value
                .as_deref()
                .unwrap_or_default()
                .contains("cannot update shop-live/api"),
            "{exception:?}"
        );
        assert_eq!(tags(&events[1])["http_status"], "403");
    }

    #[test]
    fn what_happens_inside_a_reconcile_carries_its_tags() {
        // The panic handler captures into the current hub, as this message does.
        let reporter = leaked(false);
        let events = with_captured_events(|| {
            let _ = run(reporter, || {
                sentry::capture_message("inside", Level::Warning);
                Ok(Action::await_change())
            });
        });
        assert_eq!(events.len(), 1);
        let tags = tags(&events[0]);
        assert_eq!(tags["application"], "shop");
        assert_eq!(tags["stage"], "dev", "the stage the release is working on");
    }

    #[test]
    fn release_markers_only_when_asked_for() {
        let events = with_captured_events(|| {
            leaked(false).stage_entered(&release(), "prod");
            leaked(true).stage_entered(&release(), "prod");
        });
        assert_eq!(events.len(), 1, "{events:?}");
        let marker = &events[0];
        assert_eq!(marker.level, Level::Info);
        assert_eq!(
            marker.message.as_deref(),
            Some("shop 1.4.0 entered stage prod")
        );
        let tags = tags(marker);
        assert_eq!(tags["stage"], "prod");
        assert_eq!(tags["version"], "1.4.0");
        assert_eq!(tags["application"], "shop");
        assert_eq!(tags["stagecoach_event"], "stage-entered");
    }

    #[test]
    fn a_fault_repeats_after_an_hour() {
        let reporter = Reporter::new(false);
        let key = ("Release", "shop".to_owned(), "shop-1.4.0".to_owned());
        let now = Instant::now();
        assert!(reporter.is_news(key.clone(), "refused".into(), now));
        assert!(!reporter.is_news(key.clone(), "refused".into(), now + Duration::from_secs(60)));
        assert!(reporter.is_news(key, "refused".into(), now + REPEAT_AFTER));
    }

    #[test]
    fn release_name_is_the_operator_version() {
        assert_eq!(
            release_name(),
            format!("stagecoach@{}", env!("CARGO_PKG_VERSION"))
        );
    }
}
