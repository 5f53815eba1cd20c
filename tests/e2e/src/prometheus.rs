//! A real Prometheus server for a test (Debian's `prometheus`, which `cargo xtask test`
//! installs when missing) scraping an exporter the test controls, every second.
//!
//! Each test starts its own: a free port, a temporary directory with the configuration
//! and the TSDB, a process of its own that is killed when dropped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use tokio::process::{Child, Command};

use crate::{eventually, free_port};

/// The Prometheus binary: PROMETHEUS_BIN, else `prometheus` on PATH, else Debian's path.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PROMETHEUS_BIN") {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("prometheus"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"))
}

/// A metric the exporter serves: `name{labels} value`.
type Series = BTreeMap<String, f64>;

struct Exported {
    series: Series,
    /// When each series last changed value (the test's clock and the wall clock).
    changed: BTreeMap<String, (Instant, SystemTime)>,
}

/// The exporter's `/metrics`: every series with its value, in the text format.
async fn metrics(State(exported): State<Arc<Mutex<Exported>>>) -> String {
    let exported = exported
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut text = String::new();
    for (series, value) in &exported.series {
        let _ = writeln!(text, "{series} {value}");
    }
    text
}

/// An HTTP server serving `/metrics` in the Prometheus text format, with values the test
/// sets. Dropping it stops it.
pub struct Exporter {
    pub port: u16,
    exported: Arc<Mutex<Exported>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Exporter {
    pub async fn start() -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let exported = Arc::new(Mutex::new(Exported {
            series: Series::new(),
            changed: BTreeMap::new(),
        }));
        let app = Router::new()
            .route("/metrics", get(metrics))
            .with_state(exported.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            port,
            exported,
            task,
        })
    }

    /// Serves `series` (such as `shop_error_ratio{stage="prod"}`) with `value` from now
    /// on; returns when that was, on the test's clock and the wall clock.
    pub fn set(&self, series: &str, value: f64) -> (Instant, SystemTime) {
        let mut exported = self
            .exported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = (Instant::now(), SystemTime::now());
        exported.series.insert(series.to_owned(), value);
        exported.changed.insert(series.to_owned(), now);
        now
    }

    /// Stops serving `series` (Prometheus then marks it stale: an empty result).
    pub fn remove(&self, series: &str) {
        let mut exported = self
            .exported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        exported.series.remove(series);
    }
}

/// A Prometheus process scraping one [`Exporter`] every second.
pub struct Prometheus {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `exporter` (job `exporter`, every second) and waits
    /// until it has scraped it once.
    pub async fn start(exporter: &Exporter) -> Result<Self> {
        let binary = binary();
        if !binary.is_file() {
            bail!(
                "{} not found: the gate tests need Prometheus (Debian: apt-get install -y prometheus; \
                 `cargo xtask test` installs it)",
                binary.display()
            );
        }
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("stagecoach-e2e-prometheus-{port}"));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: exporter\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
                exporter.port
            ),
        )?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let prometheus = Self {
            child: Some(child),
            port,
            dir,
        };
        eventually(Duration::from_secs(30), || async {
            let up = prometheus.query("up{job=\"exporter\"}").await?;
            Ok((up == Some(1.0)).then_some(()))
        })
        .await
        .with_context(|| {
            format!(
                "Prometheus never scraped the exporter; its log:\n{}",
                std::fs::read_to_string(prometheus.dir.join("prometheus.log")).unwrap_or_default()
            )
        })?;
        Ok(prometheus)
    }

    /// Where its HTTP API answers.
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The value of an instant query that returns one sample, if it does.
    pub async fn query(&self, query: &str) -> Result<Option<f64>> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.address()),
            [("query", query)],
        )?;
        let answer: serde_json::Value = reqwest::get(url).await?.json().await?;
        Ok(answer["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok()))
    }

    /// The samples of `series` in the last `seconds`: (unix time in seconds, value).
    pub async fn samples(&self, series: &str, seconds: u32) -> Result<Vec<(f64, f64)>> {
        let query = format!("{series}[{seconds}s]");
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.address()),
            [("query", query.as_str())],
        )?;
        let answer: serde_json::Value = reqwest::get(url).await?.json().await?;
        let values = answer["data"]["result"][0]["values"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(values
            .iter()
            .filter_map(|pair| {
                let at = pair[0].as_f64()?;
                let value = pair[1].as_str()?.parse().ok()?;
                Some((at, value))
            })
            .collect())
    }

    /// Stops the process (SIGKILL) and waits until it is gone: queries get no answer.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill()?;
            tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .context("Prometheus still running 10s after SIGKILL")??;
        }
        Ok(())
    }
}
