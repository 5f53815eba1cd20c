//! The Argo CD health checks in `charts/stagecoach/health/` run in a real Lua interpreter
//! (Lua 5.1, the dialect of gopher-lua, which Argo CD embeds) against the fixtures their
//! `health_test.yaml` lists, the way Argo CD's own `resource_customizations` tests do.
//! Needs no cluster. Also checked: every fixture is listed, every `return` of each script
//! is reached by some fixture, and the `argocd-cm` snippet carries the scripts unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail, ensure};
use mlua::{HookTriggers, Lua, LuaOptions, LuaSerdeExt, StdLib, Table, VmState};
use serde::Deserialize;

const GROUP: &str = "stagecoach.dev";
const KINDS: [&str; 3] = ["Release", "FeatureToggle", "Pipeline"];

fn health_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts/stagecoach/health")
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HealthTests {
    tests: Vec<HealthTest>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HealthTest {
    health_status: HealthStatus,
    input_path: String,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
struct HealthStatus {
    status: String,
    message: String,
}

/// Runs `script` with `obj` set to the resource, as Argo CD does (JSON null is nil, arrays
/// are plain tables; only the base, table, string and math libraries). Returns the health
/// and the script lines that ran.
fn run(
    script: &str,
    name: &str,
    resource: &serde_json::Value,
) -> Result<(HealthStatus, BTreeSet<usize>)> {
    let lua = Lua::new_with(
        StdLib::TABLE | StdLib::STRING | StdLib::MATH,
        LuaOptions::default(),
    )?;
    let options = mlua::serde::SerializeOptions::new()
        .set_array_metatable(false)
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    lua.globals()
        .set("obj", lua.to_value_with(resource, options)?)?;
    let lines = Arc::new(Mutex::new(BTreeSet::new()));
    let seen = Arc::clone(&lines);
    lua.set_hook(HookTriggers::EVERY_LINE, move |_, debug| {
        if let Some(line) = debug.current_line() {
            seen.lock().unwrap().insert(line);
        }
        Ok(VmState::Continue)
    })?;
    let result: Table = lua.load(script).set_name(name).eval()?;
    let health = HealthStatus {
        status: result.get("status")?,
        message: result.get::<Option<String>>("message")?.unwrap_or_default(),
    };
    let lines = lines.lock().unwrap().clone();
    Ok((health, lines))
}

fn read_yaml(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    serde_yaml::from_str(&text).with_context(|| path.display().to_string())
}

fn check_kind(kind: &str) -> Result<()> {
    let dir = health_dir().join(GROUP).join(kind);
    let script = std::fs::read_to_string(dir.join("health.lua"))?;
    let tests: HealthTests = serde_yaml::from_value(serde_yaml::to_value(read_yaml(
        &dir.join("health_test.yaml"),
    )?)?)?;
    ensure!(!tests.tests.is_empty(), "{kind}: no tests");
    let mut covered = BTreeSet::new();
    let mut listed = BTreeSet::new();
    let mut failures = Vec::new();
    for test in &tests.tests {
        listed.insert(test.input_path.clone());
        let resource = read_yaml(&dir.join(&test.input_path))?;
        ensure!(
            resource["kind"] == kind
                && resource["apiVersion"]
                    .as_str()
                    .is_some_and(|v| v.starts_with(GROUP)),
            "{kind}: {} is not a {GROUP} {kind}",
            test.input_path
        );
        let (health, lines) = run(&script, &format!("{kind}/health.lua"), &resource)
            .with_context(|| format!("{kind}: {}", test.input_path))?;
        covered.extend(lines);
        if health != test.health_status {
            failures.push(format!(
                "{kind}: {}: expected {:?}, got {health:?}",
                test.input_path, test.health_status
            ));
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    // Every fixture is listed: none is silently left out.
    for entry in std::fs::read_dir(dir.join("testdata"))? {
        let file = format!("testdata/{}", entry?.file_name().to_string_lossy());
        ensure!(
            listed.contains(&file),
            "{kind}: {file} is not in health_test.yaml"
        );
    }
    // Every branch ends in `return hs`; each must be reached by some fixture.
    let missed: Vec<String> = script
        .lines()
        .enumerate()
        .filter(|(_, line)| line.trim() == "return hs")
        .map(|(i, _)| i + 1)
        .filter(|line| !covered.contains(line))
        .map(|line| format!("{kind}/health.lua:{line}"))
        .collect();
    ensure!(missed.is_empty(), "branches no fixture reaches: {missed:?}");
    Ok(())
}

#[test]
fn release_health() {
    check_kind("Release").unwrap();
}

#[test]
fn feature_toggle_health() {
    check_kind("FeatureToggle").unwrap();
}

#[test]
fn pipeline_health() {
    check_kind("Pipeline").unwrap();
}

/// The `argocd-cm` snippet carries each script exactly, under the key Argo CD reads.
#[test]
fn argocd_cm_snippet_carries_the_scripts() {
    let snippet = read_yaml(&health_dir().join("argocd-cm.yaml")).unwrap();
    assert_eq!(snippet["kind"], "ConfigMap");
    assert_eq!(snippet["metadata"]["name"], "argocd-cm");
    for kind in KINDS {
        let key = format!("resource.customizations.health.{GROUP}_{kind}");
        let script =
            std::fs::read_to_string(health_dir().join(GROUP).join(kind).join("health.lua"))
                .unwrap();
        assert_eq!(
            snippet["data"][&key].as_str(),
            Some(script.as_str()),
            "{key} in argocd-cm.yaml differs from {kind}/health.lua"
        );
    }
}

/// A script that breaks Lua 5.1 (Argo CD's dialect) or reads a missing field fails here,
/// not in Argo CD: a resource with the least the API server allows still gets a health.
#[test]
fn a_bare_resource_gets_a_health() {
    for kind in KINDS {
        let script =
            std::fs::read_to_string(health_dir().join(GROUP).join(kind).join("health.lua"))
                .unwrap();
        let bare = serde_json::json!({
            "apiVersion": format!("{GROUP}/v1alpha1"), "kind": kind,
            "metadata": {"name": "x", "namespace": "y"},
            "status": {"conditions": null}
        });
        let (health, _) = run(&script, kind, &bare).unwrap();
        assert_eq!(health.status, "Progressing", "{kind}: {health:?}");
    }
}
