//! The Grafana dashboard the chart ships (`charts/stagecoach/dashboards/stagecoach.json`)
//! is valid JSON, and every metric it queries is one the operator exports (declared in
//! `crates/stagecoach-operator/src/metrics.rs`) or one listed in [`PENDING`], a metric
//! that another issue brings. No cluster needed: this reads the two files.

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use stagecoach_e2e::repo_root;
use std::collections::BTreeSet;

/// Metrics the dashboard may query before the operator exports them (a metric another
/// issue brings), and where each comes from. Their panels must say so in their description
/// and stay empty until then. Once a metric lands in the operator's `metrics.rs`, remove it
/// here (the test says so). Empty now: every panel's metric is exported.
const PENDING: [(&str, &str); 0] = [];

/// The panels issue 13 asks for, by title.
const REQUIRED_PANELS: [&str; 10] = [
    "Releases by phase",
    "Rollouts in progress",
    "Rollouts in progress per stage",
    "Rollbacks by reason",
    "Step duration",
    "Deployment lead time",
    "Gate verdicts",
    "OFREP requests",
    "OFREP latency",
    "Reconcile errors",
];

fn dashboard() -> Result<Value> {
    let path = repo_root().join("charts/stagecoach/dashboards/stagecoach.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The metric names in a PromQL expression: every `stagecoach_...` identifier.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("stagecoach_") {
        let preceded_by_ident = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded_by_ident {
            names.push(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// The metric names declared in the operator's `metrics.rs` (string literals `"stagecoach_..."`).
fn exported_metrics() -> Result<BTreeSet<String>> {
    let path = repo_root().join("crates/stagecoach-operator/src/metrics.rs");
    let source =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let names: BTreeSet<String> = source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.starts_with("stagecoach_") && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .map(str::to_owned)
        .collect();
    ensure!(
        names.contains("stagecoach_reconciles_total"),
        "found no metric names in {}: {names:?}",
        path.display()
    );
    Ok(names)
}

/// The exported metric a queried series belongs to: itself, or the histogram whose
/// `_bucket`, `_sum` or `_count` series it is.
fn exported_as<'a>(series: &str, exported: &'a BTreeSet<String>) -> Option<&'a String> {
    exported.get(series).or_else(|| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| series.strip_suffix(suffix))
            .and_then(|base| exported.get(base))
    })
}

fn pending_base(series: &str) -> Option<&'static str> {
    PENDING.iter().map(|(name, _)| *name).find(|name| {
        series == *name
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| series.strip_suffix(suffix) == Some(*name))
    })
}

#[test]
fn dashboard_queries_only_metrics_the_operator_exports() -> Result<()> {
    let dashboard = dashboard()?;
    let exported = exported_metrics()?;
    let mut queried = BTreeSet::new();
    let mut used_pending = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        let mut panel_pending = Vec::new();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().context("a target without expr")?;
            let names = metric_names(expr);
            ensure!(
                !names.is_empty(),
                "panel {title:?} queries no stagecoach metric: {expr}"
            );
            for name in names {
                if let Some(base) = exported_as(&name, &exported) {
                    queried.insert(base.clone());
                } else if let Some(base) = pending_base(&name) {
                    panel_pending.push(base);
                    used_pending.insert(base);
                } else {
                    bail!(
                        "panel {title:?} queries {name}, which metrics.rs does not declare \
                         (declared: {exported:?})"
                    );
                }
            }
        }
        for base in panel_pending {
            let description = panel["description"].as_str().unwrap_or_default();
            ensure!(
                description.contains(base) && description.contains("empty"),
                "panel {title:?} queries {base}, which is not exported yet: its description \
                 must name it and say the panel stays empty until then"
            );
        }
    }
    for (name, why) in PENDING {
        ensure!(
            !exported.contains(name),
            "{name} is now declared in metrics.rs: remove it from PENDING in this test \
             and check its panel's query and description ({why})"
        );
        ensure!(
            used_pending.contains(name),
            "{name} is in PENDING but no panel queries it"
        );
    }
    // The release, OFREP and reconcile metrics all have a panel.
    for name in [
        "stagecoach_releases",
        "stagecoach_rollbacks_total",
        "stagecoach_stage_transitions_total",
        "stagecoach_step_duration_seconds",
        "stagecoach_deployment_lead_time_seconds",
        "stagecoach_ofrep_requests_total",
        "stagecoach_reconcile_errors_total",
        "stagecoach_reconciles_total",
        "stagecoach_reconcile_duration_seconds",
        "stagecoach_gate_verdicts_total",
        "stagecoach_stage_rollouts_in_progress",
        "stagecoach_ofrep_request_duration_seconds",
    ] {
        ensure!(queried.contains(name), "no panel shows {name}");
    }
    Ok(())
}

#[test]
fn dashboard_has_the_panels_and_a_datasource_variable() -> Result<()> {
    let dashboard = dashboard()?;
    let panels = panels(&dashboard);
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for title in REQUIRED_PANELS {
        ensure!(
            titles.contains(&title),
            "no panel {title:?}; panels: {titles:?}"
        );
    }
    let mut ids = BTreeSet::new();
    for panel in &panels {
        let id = panel["id"]
            .as_u64()
            .context("a panel without a numeric id")?;
        ensure!(ids.insert(id), "panel id {id} is used twice");
        if panel["type"] != "row" {
            ensure!(
                panel["datasource"]["uid"] == "${datasource}",
                "panel {} does not use the datasource variable",
                panel["title"]
            );
        }
    }
    let variables = dashboard["templating"]["list"]
        .as_array()
        .context("templating.list")?;
    ensure!(
        variables
            .iter()
            .any(|v| v["name"] == "datasource" && v["query"] == "prometheus"),
        "the dashboard needs a Prometheus datasource variable named datasource"
    );
    ensure!(
        dashboard["uid"].as_str().is_some_and(|uid| !uid.is_empty()),
        "a fixed uid keeps links to the dashboard stable"
    );
    Ok(())
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        metric_names(
            r#"sum(rate(stagecoach_a_total{job=~"$job"}[5m])) / sum(rate(stagecoach_b_bucket[5m])) + my_stagecoach_x"#
        ),
        ["stagecoach_a_total", "stagecoach_b_bucket"]
    );
}

/// `cargo xtask test` runs this package's tests with `--ignored` only (the others need the
/// control plane), so the checks above run there through this twin.
#[test]
#[ignore = "the same checks, for the --ignored run of cargo xtask test"]
fn dashboard_checks_in_the_end_to_end_run() -> Result<()> {
    dashboard_queries_only_metrics_the_operator_exports()?;
    dashboard_has_the_panels_and_a_datasource_variable()
}
