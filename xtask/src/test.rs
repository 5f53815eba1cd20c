//! `cargo xtask test`: every check, in the order CI runs them.
//!
//! fmt, clippy, `gen --check`, unit and property tests, then the end-to-end tests on a
//! fresh control plane that this command builds (if needed), starts and stops.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::cluster::{Cluster, build};
use crate::{crdgen, workspace_root};

fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root()).args(args);
    cmd
}

fn run(step: &str, mut cmd: Command) -> Result<()> {
    let started = Instant::now();
    eprintln!("\n==> {step}");
    let status = cmd.status().with_context(|| format!("starting {step}"))?;
    if !status.success() {
        bail!("{step} failed ({status})");
    }
    eprintln!("<== {step}: ok in {:.0}s", started.elapsed().as_secs_f64());
    Ok(())
}

pub fn run_all(skip_e2e: bool) -> Result<()> {
    let started = Instant::now();
    run(
        "cargo fmt --check",
        cargo(&["fmt", "--all", "--", "--check"]),
    )?;
    run(
        "cargo clippy (warnings are errors)",
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    eprintln!("\n==> cargo xtask gen --check");
    crdgen::run(true)?;
    run(
        "unit and property tests",
        cargo(&["test", "--workspace", "--exclude", "stagecoach-e2e"]),
    )?;
    if skip_e2e {
        eprintln!("\nend-to-end tests skipped (--skip-e2e)");
        return Ok(());
    }
    run(
        "build the operator and the kubectl plugin",
        cargo(&[
            "build",
            "-p",
            "stagecoach-operator",
            "-p",
            "kubectl-stagecoach",
        ]),
    )?;
    run(
        "build the end-to-end tests",
        cargo(&["test", "-p", "stagecoach-e2e", "--no-run"]),
    )?;

    eprintln!("\n==> control plane up");
    let bin_dir = build::ensure_binaries(true)?;
    let cluster = Cluster::named("test");
    if cluster.is_running() {
        cluster.down()?;
    }
    cluster.up()?;
    let mut e2e = cargo(&[
        "test",
        "-p",
        "stagecoach-e2e",
        "--",
        "--ignored",
        "--test-threads=4",
    ]);
    e2e.env("KUBECONFIG", cluster.kubeconfig())
        .env(
            "STAGECOACH_BIN",
            workspace_root().join("target/debug/stagecoach"),
        )
        .env("HELM_BIN", bin_dir.join("helm"));
    let result = run("end-to-end tests against the real control plane", e2e);
    if result.is_err() {
        cluster.print_logs_hint();
    }
    eprintln!("\n==> control plane down");
    cluster.down()?;
    result?;
    eprintln!(
        "\nall checks passed in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
