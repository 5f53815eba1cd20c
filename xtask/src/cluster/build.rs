//! Building the control-plane binaries from the Go modules in `tests/cluster/`, once,
//! into a cache outside the repository keyed by the pinned versions.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};

use crate::workspace_root;

/// One binary of the control plane: how to build it.
struct Component {
    /// Output file name.
    binary: &'static str,
    /// Go module directory, relative to `tests/cluster`.
    module_dir: &'static str,
    /// Package to build.
    package: &'static str,
    /// Whether the Kubernetes version ldflags apply.
    kubernetes: bool,
}

const COMPONENTS: [Component; 5] = [
    Component {
        binary: "etcd",
        module_dir: ".",
        package: "go.etcd.io/etcd/server/v3",
        kubernetes: false,
    },
    Component {
        binary: "kube-apiserver",
        module_dir: ".",
        package: "k8s.io/kubernetes/cmd/kube-apiserver",
        kubernetes: true,
    },
    Component {
        binary: "kube-controller-manager",
        module_dir: ".",
        package: "k8s.io/kubernetes/cmd/kube-controller-manager",
        kubernetes: true,
    },
    Component {
        binary: "kube-scheduler",
        module_dir: ".",
        package: "k8s.io/kubernetes/cmd/kube-scheduler",
        kubernetes: true,
    },
    Component {
        binary: "kwok",
        module_dir: "kwok",
        package: "sigs.k8s.io/kwok/cmd/kwok",
        kubernetes: false,
    },
];

/// Pinned versions, read from the go.mod files (the single source of truth).
#[derive(Debug, Clone)]
pub struct Versions {
    pub kubernetes: String,
    pub etcd: String,
    pub kwok: String,
    pub helm: String,
}

fn required_version(go_mod: &Path, module: &str) -> Result<String> {
    let text =
        std::fs::read_to_string(go_mod).with_context(|| format!("reading {}", go_mod.display()))?;
    text.lines()
        .map(str::trim)
        .map(|l| l.trim_start_matches("require").trim())
        .find_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next() == Some(module))
                .then(|| parts.next().map(str::to_owned))
                .flatten()
        })
        .with_context(|| format!("{module} is not required in {}", go_mod.display()))
}

pub fn versions() -> Result<Versions> {
    let dir = cluster_module_dir();
    Ok(Versions {
        kubernetes: required_version(&dir.join("go.mod"), "k8s.io/kubernetes")?,
        etcd: required_version(&dir.join("go.mod"), "go.etcd.io/etcd/server/v3")?,
        kwok: required_version(&dir.join("kwok/go.mod"), "sigs.k8s.io/kwok")?,
        helm: required_version(&dir.join("helm/go.mod"), "helm.sh/helm/v3")?,
    })
}

pub fn cluster_module_dir() -> PathBuf {
    workspace_root().join("tests/cluster")
}

fn go_version() -> Result<String> {
    let out = Command::new("go")
        .arg("env")
        .arg("GOVERSION")
        .output()
        .context("running `go env GOVERSION`: is Go installed?")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `$XDG_CACHE_HOME/stagecoach/control-plane/<versions>`: outside the repository, so a
/// fresh clone on the same machine reuses it, and keyed by every pinned version and the
/// Go toolchain, so a version bump builds anew.
pub fn cache_dir(versions: &Versions) -> Result<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set")?;
    Ok(base.join("stagecoach/control-plane").join(format!(
        "k8s-{}_etcd-{}_kwok-{}_helm-{}_{}",
        versions.kubernetes,
        versions.etcd,
        versions.kwok,
        versions.helm,
        go_version()?
    )))
}

/// Builds whatever is missing from the cache and returns the directory of binaries.
/// `with_helm` adds helm, which only the chart test needs.
pub fn ensure_binaries(with_helm: bool) -> Result<PathBuf> {
    let versions = versions()?;
    let dir = cache_dir(&versions)?;
    std::fs::create_dir_all(&dir)?;
    let mut missing: Vec<(&str, &str, &str, Vec<String>)> = Vec::new();
    let k8s = versions.kubernetes.trim_start_matches('v');
    let mut parts = k8s.split('.');
    let (major, minor) = (
        parts.next().unwrap_or("1").to_owned(),
        parts.next().unwrap_or("0").to_owned(),
    );
    for c in &COMPONENTS {
        if dir.join(c.binary).exists() {
            continue;
        }
        let mut flags = Vec::new();
        if c.kubernetes {
            let mut ld = String::from("-s -w");
            for pkg in [
                "k8s.io/component-base/version",
                "k8s.io/client-go/pkg/version",
            ] {
                let _ = write!(
                    ld,
                    " -X {pkg}.gitVersion={} -X {pkg}.gitMajor={major} -X {pkg}.gitMinor={minor} -X {pkg}.gitTreeState=clean",
                    versions.kubernetes
                );
            }
            flags = vec![
                "-tags".into(),
                "selinux,notest".into(),
                "-ldflags".into(),
                ld,
            ];
        } else {
            flags.extend(["-ldflags".to_owned(), "-s -w".to_owned()]);
        }
        missing.push((c.binary, c.module_dir, c.package, flags));
    }
    if with_helm && !dir.join("helm").exists() {
        // As helm's own Makefile does: a truthful `helm version`, and the Kubernetes
        // version `helm template` assumes set to the control plane's.
        let ld = format!(
            "-s -w -X helm.sh/helm/v3/internal/version.version={helm} -X helm.sh/helm/v3/internal/version.gitTreeState=clean \
             -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor={major} -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor={minor} \
             -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor={major} -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor={minor}",
            helm = versions.helm
        );
        missing.push((
            "helm",
            "helm",
            "helm.sh/helm/v3/cmd/helm",
            vec!["-ldflags".into(), ld],
        ));
    }
    if missing.is_empty() {
        return Ok(dir);
    }
    eprintln!(
        "building the test control plane into {} (once per version; a first build takes 15-25 minutes on 2 cores, Go's caches make later ones fast)",
        dir.display()
    );
    let total = missing.len();
    for (i, (binary, module_dir, package, flags)) in missing.into_iter().enumerate() {
        build_one(&dir, binary, module_dir, package, &flags, i + 1, total)?;
    }
    Ok(dir)
}

fn build_one(
    out_dir: &Path,
    binary: &str,
    module_dir: &str,
    package: &str,
    flags: &[String],
    index: usize,
    total: usize,
) -> Result<()> {
    let log_path = out_dir.join(format!("build-{binary}.log"));
    let log = std::fs::File::create(&log_path)?;
    let tmp_out = out_dir.join(format!(".{binary}.partial"));
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    spinner.set_message(format!(
        "go build {binary} ({index}/{total}) from {package}"
    ));
    spinner.enable_steady_tick(Duration::from_millis(200));
    let started = Instant::now();
    let mut child = Command::new("go")
        .current_dir(cluster_module_dir().join(module_dir))
        .env("CGO_ENABLED", "0")
        .arg("build")
        .args(flags)
        .arg("-o")
        .arg(&tmp_out)
        .arg(package)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting go build")?;
    // A non-interactive run (CI) gets a line a minute instead of a spinner.
    let mut last_line = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if spinner.is_hidden() && last_line.elapsed() > Duration::from_secs(60) {
            eprintln!(
                "  still building {binary} ({}s)",
                started.elapsed().as_secs()
            );
            last_line = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    spinner.finish_and_clear();
    if !status.success() {
        let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
        bail!(
            "go build of {binary} failed ({status}); log {}:\n{}",
            log_path.display(),
            tail.lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    std::fs::rename(&tmp_out, out_dir.join(binary))?;
    eprintln!(
        "  built {binary} ({index}/{total}) in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The directory holding kwok's own stage manifests (`kustomize/stage/...`), from the
/// module cache, so the control plane uses exactly the stages of the pinned kwok.
pub fn kwok_module_dir() -> Result<PathBuf> {
    let out = Command::new("go")
        .current_dir(cluster_module_dir().join("kwok"))
        .args(["list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/kwok"])
        .output()
        .context("go list -m sigs.k8s.io/kwok")?;
    if !out.status.success() {
        bail!(
            "go list -m sigs.k8s.io/kwok failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if dir.as_os_str().is_empty() || !dir.exists() {
        // The module is not downloaded yet (a build normally does it).
        let status = Command::new("go")
            .current_dir(cluster_module_dir().join("kwok"))
            .args(["mod", "download", "sigs.k8s.io/kwok"])
            .status()?;
        if !status.success() {
            bail!("go mod download sigs.k8s.io/kwok failed");
        }
        return kwok_module_dir();
    }
    Ok(dir)
}
