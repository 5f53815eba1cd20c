//! `cargo xtask test`: every check, in the order CI runs them.
//!
//! fmt, clippy, `gen --check`, unit and property tests (with flagd's JavaScript evaluator,
//! installed from npm into tests/flagd-js), the image checks without a container engine
//! (the static musl build with the Dockerfile's flags, hadolint; see `image.rs`), then the
//! end-to-end tests on a fresh control plane that this command builds (if needed), starts
//! and stops.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::cluster::{Cluster, build};
use crate::{crdgen, workspace_root};

pub(crate) fn cargo(args: &[&str]) -> Command {
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

/// Crates the pure crates must never link: kube's client and runtime, and an async
/// runtime. Their decisions are pure functions; IO belongs to the operator.
const IMPURE: [&str; 4] = ["kube-client", "kube-runtime", "tokio", "hyper"];

/// Fails when `stagecoach-api` or `stagecoach-engine` depends (normal dependencies, as
/// built on their own) on anything in [`IMPURE`].
fn pure_crates_stay_pure() -> Result<()> {
    eprintln!("\n==> the pure crates link no kube client, kube-runtime or tokio");
    for krate in ["stagecoach-api", "stagecoach-engine"] {
        let out = cargo(&["tree", "-p", krate, "-e", "normal", "--prefix", "none"])
            .output()
            .context("running cargo tree")?;
        if !out.status.success() {
            bail!(
                "cargo tree -p {krate} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let tree = String::from_utf8_lossy(&out.stdout);
        let found = impure_dependencies(&tree);
        if !found.is_empty() {
            bail!(
                "{krate} must stay pure but depends on {} (check the kube features in its Cargo.toml: `derive` only)",
                found.join(", ")
            );
        }
    }
    Ok(())
}

/// The [`IMPURE`] crates named in `cargo tree --prefix none` output.
fn impure_dependencies(tree: &str) -> Vec<String> {
    let mut found: Vec<String> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| IMPURE.contains(name))
        .map(str::to_owned)
        .collect();
    found.sort();
    found.dedup();
    found
}

/// The OpenFeature SDK the toggle tests evaluate through (a real client, from PyPI).
const PYTHON_SDK: [&str; 2] = [
    "openfeature-sdk==0.10.0",
    "openfeature-provider-ofrep==0.3.0",
];

/// A Python virtual environment in target/e2e-venv with [`PYTHON_SDK`] installed (made on
/// first use, reinstalled when the pins change); returns its interpreter.
fn python_sdk() -> Result<std::path::PathBuf> {
    let venv = workspace_root().join("target/e2e-venv");
    let python = venv.join("bin/python");
    let marker = venv.join("stagecoach-requirements.txt");
    let wanted = PYTHON_SDK.join("\n");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(python);
    }
    if !python.exists() {
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "venv"]).arg(&venv);
        run("python3 -m venv target/e2e-venv", cmd)
            .context("the toggle tests need python3 with the venv module (Debian: python3-venv)")?;
    }
    let mut pip = Command::new(&python);
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ])
    .args(PYTHON_SDK);
    run(&format!("pip install {}", PYTHON_SDK.join(" ")), pip)?;
    std::fs::write(&marker, wanted)?;
    Ok(python)
}

/// flagd's JavaScript evaluator, the flag-set tests' third oracle: tests/flagd-js with its
/// pinned npm packages installed (`npm ci`; again only when package-lock.json changes).
/// Returns the script those tests run with node (see `STAGECOACH_FLAGD_JS` in
/// crates/stagecoach-engine/tests/toggle_flagd/flagd_js.rs).
fn flagd_js() -> Result<std::path::PathBuf> {
    let dir = workspace_root().join("tests/flagd-js");
    let script = dir.join("resolve.cjs");
    let lock = dir.join("package-lock.json");
    let marker = dir.join("node_modules/.stagecoach-package-lock.json");
    let locked = std::fs::read(&lock).ok();
    if locked.is_some() && std::fs::read(&marker).ok() == locked {
        return Ok(script);
    }
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|output| output.status.success()) {
        bail!(
            "the flag-set tests need Node.js (20 or later) and npm on PATH (Debian: apt-get install -y nodejs npm)"
        );
    }
    let mut npm = Command::new("npm");
    npm.current_dir(&dir)
        .arg(if locked.is_some() { "ci" } else { "install" })
        .args(["--no-audit", "--no-fund"]);
    run(
        "npm ci in tests/flagd-js (flagd's JavaScript evaluator)",
        npm,
    )
    .context("installing tests/flagd-js needs npm and its registry")?;
    std::fs::write(&marker, std::fs::read(&lock)?)?;
    Ok(script)
}

/// The flag-set tests against flagd's JavaScript evaluator: #[ignore]d for a plain
/// `cargo test` (they need Node and the npm packages), always run here. Same package
/// selection as the unit tests, so nothing is rebuilt.
fn flag_sets_against_flagd_js(tally: &mut Tally) -> Result<()> {
    let mut cmd = cargo(&[
        "test",
        "--workspace",
        "--exclude",
        "stagecoach-e2e",
        "--test",
        "toggle_flagd",
        "--",
        "--ignored",
    ]);
    cmd.env("STAGECOACH_FLAGD_JS", flagd_js()?);
    run_tests("flag sets against flagd's JavaScript evaluator", cmd, tally)
}

/// The OFREP benchmark's load generator: `wrk`, installed from Debian when missing.
fn ensure_wrk() -> Result<()> {
    let present = |()| Command::new("wrk").arg("--version").output().is_ok();
    if present(()) {
        return Ok(());
    }
    let mut install = Command::new("sh");
    install.args([
        "-c",
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk",
    ]);
    run(
        "apt-get install wrk (the OFREP benchmark's load generator)",
        install,
    )
    .context("the OFREP benchmark needs wrk; install it (Debian: apt-get install -y wrk)")?;
    if !present(()) {
        bail!("wrk is still not on PATH after installing it");
    }
    Ok(())
}

/// Where Debian's `prometheus` package puts the server.
const PROMETHEUS_DEBIAN: &str = "/usr/bin/prometheus";

/// The Prometheus server the gate tests and the gate benchmark start (one process per
/// test, their own configuration): `prometheus` on PATH, else Debian's, installed with
/// apt-get when missing. The package's service is not needed (nor started here: without
/// systemd its postinst only enables it).
/// Debian's Prometheus, installed with apt-get when missing (the gate tests, the demo's
/// gates act).
pub(crate) fn ensure_prometheus() -> Result<std::path::PathBuf> {
    let on_path = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("prometheus"))
                .find(|p| p.is_file())
        })
    };
    let debian = std::path::PathBuf::from(PROMETHEUS_DEBIAN);
    if let Some(found) = on_path().or_else(|| debian.is_file().then(|| debian.clone())) {
        return Ok(found);
    }
    let mut install = Command::new("sh");
    install.args([
        "-c",
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus",
    ]);
    run(
        "apt-get install prometheus (Debian's package, for the gates: not on PATH yet)",
        install,
    )
    .context("the gates need Prometheus; install it (Debian: apt-get install -y prometheus)")?;
    if !debian.is_file() {
        bail!("{PROMETHEUS_DEBIAN} is still missing after installing the prometheus package");
    }
    Ok(debian)
}

pub(crate) fn run(step: &str, mut cmd: Command) -> Result<()> {
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
    pure_crates_stay_pure()?;
    eprintln!("\n==> cargo xtask gen --check");
    crdgen::run(true)?;
    let mut tally = Tally::default();
    run_tests(
        "unit and property tests",
        cargo(&["test", "--workspace", "--exclude", "stagecoach-e2e"]),
        &mut tally,
    )?;
    flag_sets_against_flagd_js(&mut tally)?;
    // No container engine runs here: the image's binary is built as the Dockerfile builds
    // it and checked, and the Dockerfile is linted.
    crate::image::check(crate::image::Profile::Dev)?;
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

    let result = end_to_end(&mut tally);
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
    result
}

/// The end-to-end tests on a fresh control plane (named `test`), stopped afterwards
/// whatever the outcome.
fn end_to_end(tally: &mut Tally) -> Result<()> {
    let python = python_sdk()?;
    let prometheus = ensure_prometheus()?;

    eprintln!("\n==> control plane up");
    let bin_dir = build::ensure_binaries(true)?;
    let cluster = Cluster::named("test");
    if cluster.is_running() {
        cluster.down()?;
    }
    cluster.up()?;
    let e2e = |args: &[&str]| {
        let mut cmd = cargo(&["test", "-p", "stagecoach-e2e"]);
        cmd.args(args)
            .env("KUBECONFIG", cluster.kubeconfig())
            .env(
                "STAGECOACH_BIN",
                workspace_root().join("target/debug/stagecoach"),
            )
            .env("HELM_BIN", bin_dir.join("helm"))
            .env("STAGECOACH_E2E_PYTHON", &python)
            .env("PROMETHEUS_BIN", &prometheus)
            .env("STAGECOACH_CLUSTER_DIR", &cluster.dir);
        cmd
    };
    // Concurrently, each test in its own namespaces (and the e2e crate's plain tests,
    // such as the Argo CD health scripts run in Lua); then, alone, the tests that stop
    // the control plane's API server (their names start with `fault_apiserver`).
    let result = run_tests(
        "end-to-end tests against the real control plane",
        e2e(&[
            "--tests",
            "--",
            "--include-ignored",
            "--test-threads=4",
            "--skip",
            "fault_apiserver",
        ]),
        tally,
    )
    .and_then(|()| {
        run_tests(
            "end-to-end: the API server restarted mid-rollout (alone)",
            e2e(&["--test", "apiserver_restart", "--", "--ignored"]),
            tally,
        )
    });
    if result.is_err() {
        cluster.print_logs_hint();
    }
    eprintln!("\n==> control plane down");
    cluster.down()?;
    result
}

/// `cargo xtask bench`: the benchmarks (rollback latency, step overhead, OFREP
/// throughput and memory, gate rollback latency) against a fresh control plane and a
/// release build of the operator. They print their numbers; they assert nothing about speed.
pub fn run_benchmarks() -> Result<()> {
    ensure_wrk()?;
    let prometheus = ensure_prometheus()?;
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
        "--bench",
        "release",
        "--bench",
        "ofrep",
        "--bench",
        "unrelated_pods",
        "--bench",
        "gates",
    ]);
    bench
        .env("KUBECONFIG", cluster.kubeconfig())
        .env(
            "STAGECOACH_BIN",
            workspace_root().join("target/release/stagecoach"),
        )
        .env("STAGECOACH_CONTROL_PLANE", &bin_dir)
        .env("PROMETHEUS_BIN", &prometheus);
    let result = run("benchmarks", bench);
    cluster.down()?;
    result
}

/// `cargo xtask bench --scale`: the scale benchmark (`tests/e2e/benches/scale.rs`: a
/// hundred applications' Releases, Deployments and FeatureToggles at once; time to
/// reconcile, resident memory steady and through relists, writes while idle), then the
/// concurrent rollouts (`concurrency.rs`), on a fresh control plane with the scale profile
/// and a release build of the operator watching every namespace. Each prints its table
/// (and writes it to target/bench-<name>.md); they assert nothing about speed or memory.
pub fn run_scale_benchmarks() -> Result<()> {
    run(
        "release build of the operator",
        cargo(&["build", "--release", "-p", "stagecoach-operator"]),
    )?;
    let bin_dir = build::ensure_binaries(false)?;
    let cluster = Cluster::named("scale").with_profile(crate::cluster::Profile::Scale);
    if cluster.is_running() {
        cluster.down()?;
    }
    cluster.up()?;
    for table in ["bench-scale.md", "bench-concurrency.md"] {
        let _ = std::fs::remove_file(workspace_root().join("target").join(table));
    }
    let bench = |name: &str| {
        let mut cmd = cargo(&["test", "-p", "stagecoach-e2e", "--bench", name]);
        cmd.env("KUBECONFIG", cluster.kubeconfig())
            .env(
                "STAGECOACH_BIN",
                workspace_root().join("target/release/stagecoach"),
            )
            .env("STAGECOACH_CONTROL_PLANE", &bin_dir)
            .env("STAGECOACH_CLUSTER_DIR", &cluster.dir);
        cmd
    };
    let mut result = run(
        "scale benchmark (tests/e2e/benches/scale.rs)",
        bench("scale"),
    );
    let concurrency = workspace_root().join("tests/e2e/benches/concurrency.rs");
    if result.is_ok() {
        if concurrency.exists() {
            // A fresh control plane: the scale benchmark's world (and its audit log) would
            // otherwise be watched and cached by the next benchmark's operator too.
            cluster.down()?;
            cluster.up()?;
            result = run(
                "concurrent rollouts (tests/e2e/benches/concurrency.rs)",
                bench("concurrency"),
            );
        } else {
            eprintln!(
                "\n{} does not exist (yet): no concurrent rollouts measured",
                concurrency.display()
            );
        }
    }
    if result.is_err() {
        cluster.print_logs_hint();
    }
    for table in ["bench-scale.md", "bench-concurrency.md"] {
        let path = workspace_root().join("target").join(table);
        if let Ok(text) = std::fs::read_to_string(&path) {
            println!("\n{}:\n{text}", path.display());
        }
    }
    cluster.down()?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impure_crates_are_found_by_name_only() {
        let tree = "stagecoach-engine v0.1.0\nkube v5.0.0\nkube-core v5.0.0\nkube-client v5.0.0\ntokio v1.48.0\ntokio v1.48.0\ntokio-util v0.7.0\n";
        assert_eq!(impure_dependencies(tree), ["kube-client", "tokio"]);
        assert!(impure_dependencies("kube v5.0.0\nkube-derive v5.0.0 (proc-macro)\n").is_empty());
    }
}
