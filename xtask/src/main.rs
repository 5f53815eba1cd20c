//! Project automation for Stagecoach. `cargo xtask --help` lists the commands.

mod cluster;
mod crdgen;
mod demo;
mod image;
mod test;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Stagecoach project tasks", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write crds/ and the chart's CRDs from the Rust types (--check: fail on drift).
    Gen {
        /// Do not write; fail if the committed files differ from the generated ones.
        #[arg(long)]
        check: bool,
    },
    /// Every check: fmt, clippy, gen --check, unit tests, then the end-to-end tests on a
    /// fresh local control plane (built on first use, started and stopped here).
    Test {
        /// Stop after the unit tests.
        #[arg(long)]
        skip_e2e: bool,
    },
    /// The demo: the local control plane (or the cluster in KUBECONFIG), the CRDs, the
    /// operator, examples/ applied and their status shown.
    Demo {
        /// Keep the operator running at the end until Ctrl-C.
        #[arg(long)]
        keep_running: bool,
    },
    /// The container image without a container engine: the operator built with the
    /// Dockerfile's flags (static, musl), checked, and the Dockerfile linted (hadolint).
    /// Part of `test` (dev profile).
    Image {
        /// Build the release profile, exactly the Dockerfile's binary (slower).
        #[arg(long)]
        release: bool,
    },
    /// Benchmarks: rollback latency, step overhead, OFREP throughput and memory, on a
    /// fresh control plane with a release build of the operator.
    Bench {
        /// Instead: the scale benchmarks (100 applications, 1,000 Releases, 1,000
        /// Deployments, 10,000 FeatureToggles: time to reconcile, memory, idle writes;
        /// then concurrent rollouts) on a fresh scale-profile control plane. Tables in
        /// target/bench-scale.md and target/bench-concurrency.md.
        #[arg(long)]
        scale: bool,
    },
    /// The local test control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok).
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
        /// Which local control plane: each name has its own state, ports and logs
        /// (`dev` by default; the demo uses `demo`, the tests `test`).
        #[arg(long, global = true, default_value = "dev")]
        name: String,
        /// How `up` sizes it: `scale` is what `bench --scale` runs on (higher client
        /// limits for the controllers, an audit log of every write).
        #[arg(long, global = true, value_enum, default_value_t = cluster::Profile::Default)]
        profile: cluster::Profile,
    },
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Build the binaries if needed, start everything and print the KUBECONFIG to use.
    Up,
    /// Stop everything `up` started, and nothing else.
    Down,
    /// Say whether the control plane is running, and where its kubeconfig and logs are.
    Status,
    /// Only build (or find in the cache) the control-plane binaries.
    Build,
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Gen { check } => crdgen::run(check),
        Command::Test { skip_e2e } => test::run_all(skip_e2e),
        Command::Image { release } => image::check(if release {
            image::Profile::Release
        } else {
            image::Profile::Dev
        }),
        Command::Bench { scale } => {
            if scale {
                test::run_scale_benchmarks()
            } else {
                test::run_benchmarks()
            }
        }
        Command::Demo { keep_running } => demo::run(keep_running),
        Command::Cluster {
            action,
            name,
            profile,
        } => {
            let cluster = cluster::Cluster::named(&name).with_profile(profile);
            match action {
                ClusterAction::Up => cluster.up(),
                ClusterAction::Down => cluster.down(),
                ClusterAction::Status => {
                    if cluster.is_running() {
                        println!(
                            "running\n  export KUBECONFIG={}",
                            cluster.kubeconfig().display()
                        );
                    } else {
                        println!("not running");
                    }
                    cluster.print_logs_hint();
                    Ok(())
                }
                ClusterAction::Build => {
                    let dir = cluster::build::ensure_binaries(true)?;
                    println!("control-plane binaries in {}", dir.display());
                    Ok(())
                }
            }
        }
    }
}
