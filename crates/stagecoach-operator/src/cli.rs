//! Command line of the `stagecoach` binary.

use std::net::SocketAddr;

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
pub enum Command {
    /// Run the operator: watch Releases and FeatureToggles and serve the admin endpoints.
    ///
    /// Connects to the cluster named by KUBECONFIG (or ~/.kube/config), or, inside a pod,
    /// with the pod's service account. Stops cleanly on SIGTERM or Ctrl-C.
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

    /// Log format: text for people, json for one JSON object per line. The level is set
    /// with RUST_LOG (default info), such as RUST_LOG=stagecoach=debug,info.
    #[arg(long, env = "STAGECOACH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Watch Releases and FeatureToggles in this namespace only. Default: all namespaces.
    #[arg(long, env = "STAGECOACH_NAMESPACE")]
    pub namespace: Option<String>,
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
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("expected run");
        };
        assert_eq!(args.admin_addr, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(args.ofrep_addr, "127.0.0.1:9091".parse().unwrap());
        assert_eq!(args.log_format, LogFormat::Json);
        assert_eq!(args.namespace.as_deref(), Some("billing"));
    }

    #[test]
    fn bad_log_format_is_refused() {
        assert!(Cli::try_parse_from(["stagecoach", "run", "--log-format", "xml"]).is_err());
    }
}
