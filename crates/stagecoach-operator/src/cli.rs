//! Command line of the `stagecoach` binary.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Stagecoach: rolls releases through stages (dev, qa, demo, prod) behind health gates,
/// and serves feature toggles per stage.
#[derive(Debug, Parser)]
#[command(name = "stagecoach", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once, at start
pub enum Command {
    /// Run the operator: watch Releases and FeatureToggles and serve the admin endpoints.
    ///
    /// Connects to the cluster named by KUBECONFIG (or ~/.kube/config), or, inside a pod,
    /// with the pod's service account. Stops cleanly on SIGTERM or Ctrl-C.
    ///
    /// For tests only, never in production: STAGECOACH_TEST_KILL_AFTER_WRITES=N aborts
    /// the process right after its N-th successful write to the API server (Lease
    /// renewals not counted), to test recovery from a crash at every write.
    Run(RunArgs),
    /// Print the version and exit.
    Version,
}

/// Options of `stagecoach run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Address of the admin HTTP server, which serves /livez, /readyz and /metrics.
    #[arg(long, env = "STAGECOACH_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,

    /// Address of the OFREP server (OpenFeature Remote Evaluation Protocol), which
    /// evaluates feature toggles for OpenFeature SDKs. Give a provider the base URL
    /// http://ADDRESS/apps/NAMESPACE/APPLICATION/stages/STAGE.
    #[arg(long, env = "STAGECOACH_OFREP_ADDR", default_value = "0.0.0.0:8081")]
    pub ofrep_addr: SocketAddr,

    /// A browser origin allowed to call OFREP (CORS), such as https://shop.example.com;
    /// repeat for several (comma-separated in the environment variable), `*` for any.
    /// Default: none, no CORS headers are sent.
    #[arg(
        long = "ofrep-cors-origin",
        env = "STAGECOACH_OFREP_CORS_ORIGINS",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub ofrep_cors_origins: Vec<String>,

    /// OFREP requests per second allowed to one client (its bearer token, else its
    /// address), in bursts of up to twice as many; more are answered 429 with
    /// Retry-After. 0 (the default) turns the limit off.
    #[arg(long, env = "STAGECOACH_OFREP_RATE_LIMIT", default_value_t = 0)]
    pub ofrep_rate_limit: u32,

    /// Log format: text for people, json for one JSON object per line. The level is set
    /// with RUST_LOG (default info), such as RUST_LOG=stagecoach=debug,info.
    #[arg(long, env = "STAGECOACH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Watch Releases and FeatureToggles in this namespace only. Default: all namespaces.
    #[arg(long, env = "STAGECOACH_NAMESPACE")]
    pub namespace: Option<String>,

    /// Leader election: only the replica holding the Lease reconciles and writes; every
    /// replica serves OFREP and /metrics. Off: this process always writes (run one only).
    #[arg(long, env = "STAGECOACH_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,

    /// Name of the coordination.k8s.io Lease used for leader election.
    #[arg(
        long,
        env = "STAGECOACH_LEASE_NAME",
        default_value = "stagecoach-leader"
    )]
    pub lease_name: String,

    /// Namespace of the Lease. Default: the --namespace watched if given, else the
    /// POD_NAMESPACE environment variable, else `default`.
    #[arg(long, env = "STAGECOACH_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// This replica's identity in the Lease. Default: host name and process id.
    #[arg(long, env = "STAGECOACH_IDENTITY")]
    pub identity: Option<String>,

    /// How long a Lease stays valid after its last renewal; a follower takes over once it
    /// has passed (for example 15s, 1500ms or 15).
    #[arg(long, env = "STAGECOACH_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// How long the leader keeps trying to renew before it gives up (and exits); shorter
    /// than --lease-duration.
    #[arg(long, env = "STAGECOACH_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub renew_deadline: Duration,

    /// How often every replica reads the Lease (the leader renews, followers try to take
    /// over); shorter than --renew-deadline.
    #[arg(long, env = "STAGECOACH_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub retry_period: Duration,

    /// Longest wait between two attempts to deliver a notification that failed; the wait
    /// starts at 1s and doubles with every failure.
    #[arg(long, env = "STAGECOACH_NOTIFICATION_MAX_BACKOFF", default_value = "5m", value_parser = parse_duration)]
    pub notification_max_backoff: Duration,

    #[command(flatten)]
    pub sentry: SentryArgs,
}

/// Error reporting to Sentry: off unless a DSN is given.
#[derive(Debug, Clone, clap::Args)]
pub struct SentryArgs {
    /// Report panics and reconcile errors that are not transient to this Sentry DSN, such
    /// as https://KEY@o0.ingest.sentry.io/PROJECT. Default: no reporting.
    #[arg(long = "sentry-dsn", env = "SENTRY_DSN", value_name = "DSN")]
    pub dsn: Option<String>,

    /// The Sentry environment of the events, such as production or staging. Default:
    /// production.
    #[arg(
        long = "sentry-environment",
        env = "SENTRY_ENVIRONMENT",
        default_value = "production"
    )]
    pub environment: String,

    /// Also send an info event when a release enters a stage ("billing 2.4.0 entered
    /// stage prod"), tagged with its application, version and stage: a marker next to
    /// the errors. Needs --sentry-dsn.
    #[arg(
        long = "sentry-release-markers",
        env = "STAGECOACH_SENTRY_RELEASE_MARKERS",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub release_markers: bool,
}

impl RunArgs {
    /// Where the Lease lives: --lease-namespace, else the watched --namespace (so that
    /// operators watching different namespaces never contend), else POD_NAMESPACE, else
    /// `default`.
    pub fn lease_namespace(&self) -> String {
        self.lease_namespace
            .clone()
            .or_else(|| self.namespace.clone())
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| "default".to_owned())
    }
}

/// A duration: a number with `ms`, `s` or `m`, or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((text, "s"), |at| text.split_at(at));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("not a duration: {text:?} (use for example 15s or 500ms)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use ms, s or m)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|error| format!("{text:?}: {error}"))
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_defaults() {
        let cli = Cli::try_parse_from(["stagecoach", "run"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("expected run");
        };
        // The environment of the test process could set these; only check when unset.
        if std::env::var_os("STAGECOACH_ADMIN_ADDR").is_none() {
            assert_eq!(args.admin_addr, "0.0.0.0:8080".parse().unwrap());
        }
        if std::env::var_os("STAGECOACH_OFREP_ADDR").is_none() {
            assert_eq!(args.ofrep_addr, "0.0.0.0:8081".parse().unwrap());
        }
        if std::env::var_os("STAGECOACH_LOG_FORMAT").is_none() {
            assert_eq!(args.log_format, LogFormat::Text);
        }
    }

    #[test]
    fn run_flags() {
        let cli = Cli::try_parse_from([
            "stagecoach",
            "run",
            "--admin-addr",
            "127.0.0.1:9090",
            "--ofrep-addr",
            "127.0.0.1:9091",
            "--log-format",
            "json",
            "--namespace",
            "billing",
            "--ofrep-cors-origin",
            "https://a.example",
            "--ofrep-cors-origin",
            "https://b.example",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("expected run");
        };
        assert_eq!(args.admin_addr, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(args.ofrep_addr, "127.0.0.1:9091".parse().unwrap());
        assert_eq!(args.log_format, LogFormat::Json);
        assert_eq!(args.namespace.as_deref(), Some("billing"));
        assert_eq!(
            args.ofrep_cors_origins,
            ["https://a.example", "https://b.example"]
        );
    }

    #[test]
    fn leader_election_flags() {
        let cli = Cli::try_parse_from([
            "stagecoach",
            "run",
            "--leader-elect",
            "false",
            "--lease-duration",
            "4s",
            "--renew-deadline",
            "3000ms",
            "--retry-period",
            "1",
            "--lease-namespace",
            "ops",
            "--identity",
            "pod-a",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("expected run");
        };
        assert!(!args.leader_elect);
        assert_eq!(args.lease_duration, Duration::from_secs(4));
        assert_eq!(args.renew_deadline, Duration::from_secs(3));
        assert_eq!(args.retry_period, Duration::from_secs(1));
        assert_eq!(args.lease_namespace(), "ops");
        assert_eq!(args.identity.as_deref(), Some("pod-a"));
    }

    #[test]
    fn lease_follows_the_watched_namespace() {
        if std::env::var_os("STAGECOACH_LEASE_NAMESPACE").is_some() {
            return;
        }
        let cli = Cli::try_parse_from(["stagecoach", "run", "--namespace", "billing"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("expected run");
        };
        assert_eq!(args.lease_namespace(), "billing");
        if std::env::var_os("STAGECOACH_LEADER_ELECT").is_none() {
            assert!(args.leader_elect);
        }
    }

    #[test]
    fn sentry_flags() {
        let cli = Cli::try_parse_from([
            "stagecoach",
            "run",
            "--sentry-dsn",
            "http://public@127.0.0.1:9/1",
            "--sentry-environment",
            "staging",
            "--sentry-release-markers",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("expected run");
        };
        assert_eq!(
            args.sentry.dsn.as_deref(),
            Some("http://public@127.0.0.1:9/1")
        );
        assert_eq!(args.sentry.environment, "staging");
        assert!(args.sentry.release_markers);
        if std::env::var_os("SENTRY_DSN").is_none()
            && std::env::var_os("STAGECOACH_SENTRY_RELEASE_MARKERS").is_none()
        {
            let cli = Cli::try_parse_from(["stagecoach", "run"]).unwrap();
            let Command::Run(args) = cli.command else {
                panic!("expected run");
            };
            assert_eq!(args.sentry.dsn, None);
            assert!(!args.sentry.release_markers);
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3h").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn bad_log_format_is_refused() {
        assert!(Cli::try_parse_from(["stagecoach", "run", "--log-format", "xml"]).is_err());
    }
}
