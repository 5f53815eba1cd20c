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

/// Tests counted across every `cargo test` run, for the closing summary line.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    /// Adds the counts of a libtest summary line (`test result: ok. 3 passed; 0 failed; ...`).
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split([';', '.']) {
            let mut words = part.split_whitespace();
            if let (Some(n), Some(what)) = (words.next(), words.next())
                && let Ok(n) = n.parse::<u64>()
            {
                match what {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    "ignored" => self.ignored += n,
                    _ => {}
                }
            }
        }
    }
}

/// Runs a `cargo test` command, echoing its output and counting its results.
fn run_tests(step: &str, mut cmd: Command, tally: &mut Tally) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let started = Instant::now();
    eprintln!("\n==> {step}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {step}"))?;
    let stdout = child.stdout.take().context("test output")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        tally.add_line(&line);
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{step} failed ({status})");
    }
    eprintln!("<== {step}: ok in {:.0}s", started.elapsed().as_secs_f64());
    Ok(())
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
    let mut tally = Tally::default();
    run_tests(
        "unit and property tests",
        cargo(&["test", "--workspace", "--exclude", "stagecoach-e2e"]),
        &mut tally,
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
        "--tests",
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
    let result = run_tests(
        "end-to-end tests against the real control plane",
        e2e,
        &mut tally,
    );
    if result.is_err() {
        cluster.print_logs_hint();
    }
    eprintln!("\n==> control plane down");
    cluster.down()?;
    eprintln!(
        "\n{} in {:.0}s",
        if result.is_ok() {
            "all checks passed"
        } else {
            "FAILED"
        },
        started.elapsed().as_secs_f64()
    );
    // One plain closing line for whoever reads the log's end.
    println!("summary: {} passed, {} failed", tally.passed, tally.failed);
    result?;
    Ok(())
}

/// `cargo xtask bench`: the benchmarks (rollback latency, step overhead, OFREP
/// throughput and memory) against a fresh control plane and a release build of the
/// operator. They print their numbers; they assert nothing about speed.
pub fn run_benchmarks() -> Result<()> {
    run(
        "release build of the operator",
        cargo(&["build", "--release", "-p", "stagecoach-operator"]),
    )?;
    let bin_dir = build::ensure_binaries(false)?;
    let cluster = Cluster::named("bench");
    if cluster.is_running() {
        cluster.down()?;
    }
    cluster.up()?;
    let mut bench = cargo(&[
        "test",
        "-p",
        "stagecoach-e2e",
        "--tests",
        "--",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
        "bench_",
    ]);
    bench
        .env("KUBECONFIG", cluster.kubeconfig())
        .env("STAGECOACH_BENCH", "1")
        .env(
            "STAGECOACH_BIN",
            workspace_root().join("target/release/stagecoach"),
        )
        .env("STAGECOACH_CONTROL_PLANE", &bin_dir);
    let result = run("benchmarks", bench);
    cluster.down()?;
    result
}
