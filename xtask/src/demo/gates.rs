//! Act four of `cargo xtask demo`: the gates of `examples/gates/`. Application `orders`
//! has a Pipeline whose qa stage runs an end-to-end suite as a Job (kwok completes its
//! pod) and whose prod stage reads an error ratio from Prometheus, during the rollout and
//! its early life support. The demo runs that Prometheus itself (Debian's binary, a
//! configuration and a TSDB of its own in a temporary directory) scraping an exporter it
//! controls on 127.0.0.1; once release orders-1.0.0 is in early life support the exporter
//! starts serving a bad value, and the gate rolls prod back.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;

use super::{OperatorProcess, release_json, text_of, watch_releases};
use crate::cluster::{kubectl, kubectl_apply};
use crate::workspace_root;

/// The application of the act, its home namespace, and its release.
const APP: &str = "orders";
const RELEASE: &str = "orders-1.0.0";
/// The series the exporter serves; the Pipeline's query asks for `{stage="{{stage}}"}`.
const SERIES: &str = "orders_error_ratio{stage=\"prod\"}";
/// What the exporter serves while all is well, and once it is not (threshold 0.05).
const GOOD: f64 = 0.012;
const BAD: f64 = 0.27;

/// An exporter on 127.0.0.1: `/metrics` in Prometheus' text format, one gauge whose value
/// the demo sets. Dropping it stops it.
struct Exporter {
    addr: SocketAddr,
    value: Arc<Mutex<f64>>,
    stop: Arc<AtomicBool>,
}

impl Exporter {
    fn start(value: f64) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("starting the exporter")?;
        let addr = listener.local_addr()?;
        let value = Arc::new(Mutex::new(value));
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, stopped) = (Arc::clone(&value), Arc::clone(&stop));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(stream) = stream {
                    let current = *shared.lock().unwrap_or_else(PoisonError::into_inner);
                    let _ = answer_scrape(stream, current);
                }
            }
        });
        Ok(Self { addr, value, stop })
    }

    fn set(&self, value: f64) {
        *self.value.lock().unwrap_or_else(PoisonError::into_inner) = value;
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accepting thread, which then returns and closes the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Reads a scrape's request head and answers with the gauge.
fn answer_scrape(stream: TcpStream, value: f64) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    while reader.read_line(&mut line)? > 0 && line != "\r\n" && line != "\n" {
        line.clear();
    }
    let body = format!(
        "# HELP orders_error_ratio Share of orders requests answered with a 5xx.\n\
         # TYPE orders_error_ratio gauge\n{SERIES} {value}\n"
    );
    let mut stream = stream;
    stream.write_all(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )?;
    Ok(())
}

/// A Prometheus process scraping the exporter every second; dropping it stops it and
/// removes its directory.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    fn start(binary: &Path, exporter: SocketAddr) -> Result<Self> {
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let dir = std::env::temp_dir().join(format!("stagecoach-demo-prometheus-{}", addr.port()));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: orders\n    static_configs:\n      - targets: ['{exporter}']\n"
            ),
        )?;
        let log = workspace_root().join("target/stagecoach-demo/prometheus.log");
        let file = std::fs::File::create(&log)?;
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let prometheus = Self { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while prometheus.query("up{job=\"orders\"}").as_deref() != Some("1") {
            if Instant::now() > deadline {
                bail!(
                    "Prometheus did not scrape the exporter within 30 s; its log: {}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(prometheus)
    }

    /// The value of an instant query with one sample, if it has one.
    fn query(&self, query: &str) -> Option<String> {
        let mut encoded = String::new();
        for byte in query.bytes() {
            if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
                encoded.push(char::from(byte));
            } else {
                let _ = write!(encoded, "%{byte:02X}");
            }
        }
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let request = format!(
            "GET /api/v1/query?query={encoded} HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.addr
        );
        stream.write_all(request.as_bytes()).ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (_, body) = response.split_once("\r\n\r\n")?;
        let answer: Value = serde_json::from_str(body).ok()?;
        answer["data"]["result"][0]["value"][1]
            .as_str()
            .map(str::to_owned)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A previous run's release of orders deleted (the operator lets it go), so this run
/// starts from the same place.
fn reset(kubeconfig: &Path) -> Result<()> {
    kubectl(
        kubeconfig,
        &[
            "delete",
            "releases",
            "-n",
            APP,
            "--all",
            "--ignore-not-found",
            "--timeout=60s",
        ],
    )?;
    Ok(())
}

/// Applies examples/gates/ file by file, in name order, with the address of every
/// Prometheus gate of a Pipeline pointed at `prometheus`.
fn apply_examples(kubeconfig: &Path, prometheus: SocketAddr) -> Result<()> {
    let dir = workspace_root().join("examples/gates");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.retain(|f| f.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let mut manifest = String::new();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let mut doc = Value::deserialize(document)
                .with_context(|| format!("reading {}", file.display()))?;
            if doc["kind"] == "Pipeline" {
                let stages = doc
                    .pointer_mut("/spec/stages")
                    .and_then(Value::as_array_mut);
                for stage in stages.into_iter().flatten() {
                    let stage_name = text_of(&stage["name"]);
                    let gates = stage.get_mut("gates").and_then(Value::as_array_mut);
                    for gate in gates.into_iter().flatten() {
                        let gate_name = text_of(&gate["name"]);
                        if let Some(address) = gate.pointer_mut("/prometheus/address") {
                            let local = format!("http://{prometheus}");
                            eprintln!(
                                "  (gate {gate_name} of stage {stage_name}: address {} moved to the demo's Prometheus, {local})",
                                text_of(address)
                            );
                            *address = Value::String(local);
                        }
                    }
                }
            }
            manifest.push_str("---\n");
            manifest.push_str(&serde_yaml::to_string(&doc)?);
        }
        for line in kubectl_apply(kubeconfig, &manifest)?.lines() {
            eprintln!("  {line}");
        }
    }
    Ok(())
}

/// Gate `gate` of `stage`: from the stage's status, else from the closing record.
fn gate_of<'a>(release: &'a Value, stage: &str, gate: &str) -> Option<&'a Value> {
    let find = |stages: &'a Value| {
        stages.as_array()?.iter().find(|s| s["name"] == stage)?["gates"]
            .as_array()?
            .iter()
            .find(|g| g["name"] == gate)
    };
    find(&release["status"]["stages"])
        .or_else(|| find(&release["status"]["closingRecord"]["stages"]))
}

/// "Passing (value 0.012, at ...): <message>".
fn verdict_line(gate: Option<&Value>) -> String {
    gate.map_or_else(
        || "(no result in status)".to_owned(),
        |g| {
            let value = g["value"]
                .as_str()
                .map_or_else(String::new, |v| format!("value {v}, "));
            format!(
                "{} ({value}evaluated {}): {}",
                text_of(&g["verdict"]),
                text_of(&g["lastEvaluatedAt"]),
                g["message"]
                    .as_str()
                    .unwrap_or_default()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        },
    )
}

fn prod_image(kubeconfig: &Path) -> Result<String> {
    kubectl(
        kubeconfig,
        &[
            "get",
            "deployment",
            "-n",
            "orders-prod",
            "orders-api",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ],
    )
}

/// Act four: a Job gate in qa, a Prometheus gate in prod that rolls the release back
/// during early life support.
pub(super) fn gates_act(kubeconfig: &Path, operator: &OperatorProcess) -> Result<()> {
    eprintln!("\n=== act 4: gates ===");
    eprintln!(
        "orders' Pipeline runs its end-to-end suite as a Job in qa, and in prod reads the \
         error ratio from Prometheus every second,\nduring the rollout and its 60 s of early \
         life support: at 5 % or more, prod is rolled back"
    );
    let act = Instant::now();
    reset(kubeconfig)?;
    let binary = crate::test::ensure_prometheus()?;
    let exporter = Exporter::start(GOOD)?;
    let prometheus = Prometheus::start(&binary, exporter.addr)?;
    println!(
        "Prometheus ({}) on http://{}, scraping the demo's exporter http://{}/metrics every 1 s: \
         {SERIES} = {}",
        binary.display(),
        prometheus.addr,
        exporter.addr,
        prometheus
            .query(SERIES)
            .unwrap_or_else(|| "(none)".to_owned())
    );

    eprintln!("\napplying examples/gates/");
    apply_examples(kubeconfig, prometheus.addr)?;

    eprintln!("\nwatching {RELEASE} travel dev -> qa (e2e Job) -> demo -> prod (error ratio)");
    watch_releases(
        kubeconfig,
        operator,
        Some(&[RELEASE]),
        Instant::now(),
        |releases, _| {
            releases.iter().any(|(n, p, _)| {
                n == RELEASE && matches!(p.as_str(), "EarlyLifeSupport" | "RolledBack" | "Failed")
            })
        },
    )?;
    let release = release_json(kubeconfig, APP, RELEASE)?;
    if release["status"]["phase"] != "EarlyLifeSupport" {
        bail!(
            "{RELEASE} ended {} before early life support: {}",
            text_of(&release["status"]["phase"]),
            serde_json::to_string(&release["status"]["rollbacks"])?
        );
    }
    println!(
        "  qa's gate e2e (Job registry.example.com/orders-e2e:1.0): {}",
        verdict_line(gate_of(&release, "qa", "e2e"))
    );
    println!(
        "  prod's gate error-ratio: {}",
        verdict_line(gate_of(&release, "prod", "error-ratio"))
    );
    println!(
        "  orders-prod runs {}, in early life support for 60 s",
        prod_image(kubeconfig)?
    );

    goes_bad(kubeconfig, operator, &exporter)?;
    drop(prometheus);
    drop(exporter);
    println!(
        "Prometheus and the exporter stopped; the act took {} s",
        act.elapsed().as_secs()
    );
    Ok(())
}

/// The exporter starts serving a bad error ratio during early life support; waits for
/// the rollback and shows its record and how long it took.
fn goes_bad(kubeconfig: &Path, operator: &OperatorProcess, exporter: &Exporter) -> Result<()> {
    eprintln!("\nthe error ratio goes bad: the exporter now serves {SERIES} {BAD}");
    exporter.set(BAD);
    let flipped = Instant::now();
    let rolled_back = loop {
        let release = release_json(kubeconfig, APP, RELEASE)?;
        match release["status"]["phase"].as_str() {
            Some("RolledBack") => break release,
            Some("EarlyLifeSupport") => {}
            other => bail!(
                "{RELEASE} went {} instead of being rolled back",
                other.unwrap_or("?")
            ),
        }
        if flipped.elapsed() > Duration::from_secs(45) {
            bail!(
                "{RELEASE} not rolled back 45 s after the metric went bad; operator log {}",
                operator.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let took = flipped.elapsed();
    println!(
        "  {RELEASE}: phase RolledBack, seen {:.1} s after the flip (scrape every 1 s, gate \
         every 1 s, the release polled every 0.2 s)",
        took.as_secs_f64()
    );
    println!("  the rollback record (status.rollbacks):");
    for rollback in rolled_back["status"]["rollbacks"]
        .as_array()
        .into_iter()
        .flatten()
    {
        println!(
            "    {} at {}: {}: {}",
            text_of(&rollback["stage"]),
            text_of(&rollback["at"]),
            text_of(&rollback["reason"]),
            text_of(&rollback["message"])
        );
    }
    println!(
        "  prod's gate error-ratio: {}",
        verdict_line(gate_of(&rolled_back, "prod", "error-ratio"))
    );
    println!("  orders-prod runs {} again", prod_image(kubeconfig)?);
    Ok(())
}
