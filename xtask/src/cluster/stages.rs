//! The kwok stage set of the test control plane.
//!
//! kwok (since v0.8) has no built-in behaviour: every transition of a fake node or pod
//! is a Stage. We take kwok's own node and pod stages from the pinned module
//! (`kustomize/stage/...`) and add three of ours, used to simulate failing releases and
//! gate Jobs:
//!
//! - `stagecoach-pod-crashloop`: a pod any of whose images contains `bad` starts, never
//!   becomes Ready, and reports restarts and CrashLoopBackOff (what a kubelet does with a
//!   crashing container it restarts: restartPolicy Always or OnFailure);
//! - `stagecoach-pod-fail`: the same pod with restartPolicy Never (a Job's) fails: phase
//!   Failed, its container terminated with exit code 1, as a kubelet leaves a container
//!   it does not restart;
//! - `stagecoach-pod-turn-unhealthy`: a Ready pod labelled `stagecoach.dev/test-unhealthy`
//!   (any value) turns NotReady with restarts, so a test can make a healthy release fail
//!   later (for example during early life support).
//!
//! kwok's pod-ready stage is narrowed so it never competes with these (weights are a
//! random draw among matching stages, so exclusion is the only deterministic choice), and
//! its pod-complete stage leaves alone a pod any of whose images contains `hang`: a Job
//! that runs and never finishes.
//! Selectors use kwok's JQ form: its CEL environment cannot resolve nested pod types
//! (`v1.PodCondition`) inside comprehensions.

use std::path::Path;

use anyhow::{Context, Result};
use serde_yaml::Value;

/// kwok's stage files used as they are (paths inside the kwok module).
const KWOK_STAGE_FILES: [&str; 8] = [
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat/node-heartbeat.yaml",
    "kustomize/stage/pod/general/pod-create.yaml",
    "kustomize/stage/pod/general/pod-init-container-running.yaml",
    "kustomize/stage/pod/general/pod-init-container-completed.yaml",
    "kustomize/stage/pod/general/pod-ready.yaml",
    "kustomize/stage/pod/general/pod-complete.yaml",
    "kustomize/stage/pod/general/pod-delete.yaml",
];

/// A pod with a `bad` image starts and keeps crashing.
const CRASHLOOP_STAGE: &str = r#"
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: stagecoach-pod-crashloop
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values: ['Pending']
    - key: '.status.conditions.[] | select( .type == "Initialized" ) | .status'
      operator: 'In'
      values: ['True']
    - key: '.spec.containers.[].image | select( contains("bad") )'
      operator: 'Exists'
    - key: '.spec.restartPolicy'
      operator: 'NotIn'
      values: ['Never']
  weight: 1
  delay:
    durationMilliseconds: 500
    jitterDurationMilliseconds: 1000
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - lastProbeTime: null
        lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Initialized
      - lastProbeTime: null
        lastTransitionTime: {{ $now | Quote }}
        message: "containers with unready status"
        reason: ContainersNotReady
        status: "False"
        type: Ready
      - lastProbeTime: null
        lastTransitionTime: {{ $now | Quote }}
        message: "containers with unready status"
        reason: ContainersNotReady
        status: "False"
        type: ContainersReady
      containerStatuses:
      {{ range $index, $item := .spec.containers }}
      - image: {{ $item.image | Quote }}
        name: {{ $item.name | Quote }}
        ready: false
        started: false
        restartCount: 5
        lastState:
          terminated:
            exitCode: 1
            reason: Error
            startedAt: {{ $now | Quote }}
            finishedAt: {{ $now | Quote }}
        state:
          waiting:
            reason: CrashLoopBackOff
            message: "back-off restarting failed container (simulated by kwok: image contains 'bad')"
      {{ end }}
      phase: Running
      startTime: {{ $now | Quote }}
"#;

/// A pod with a `bad` image that is never restarted (restartPolicy Never, a Job's) fails.
const FAIL_STAGE: &str = r#"
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: stagecoach-pod-fail
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values: ['Pending']
    - key: '.status.conditions.[] | select( .type == "Initialized" ) | .status'
      operator: 'In'
      values: ['True']
    - key: '.spec.containers.[].image | select( contains("bad") )'
      operator: 'Exists'
    - key: '.spec.restartPolicy'
      operator: 'In'
      values: ['Never']
  weight: 1
  delay:
    durationMilliseconds: 500
    jitterDurationMilliseconds: 1000
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - lastProbeTime: null
        lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Initialized
      - lastProbeTime: null
        lastTransitionTime: {{ $now | Quote }}
        reason: PodFailed
        status: "False"
        type: Ready
      - lastProbeTime: null
        lastTransitionTime: {{ $now | Quote }}
        reason: PodFailed
        status: "False"
        type: ContainersReady
      containerStatuses:
      {{ range $index, $item := .spec.containers }}
      - image: {{ $item.image | Quote }}
        name: {{ $item.name | Quote }}
        ready: false
        started: false
        restartCount: 0
        state:
          terminated:
            exitCode: 1
            reason: Error
            message: "exited with code 1 (simulated by kwok: image contains 'bad')"
            startedAt: {{ $now | Quote }}
            finishedAt: {{ $now | Quote }}
      {{ end }}
      phase: Failed
      startTime: {{ $now | Quote }}
"#;

/// A Ready pod carrying the marker label turns NotReady.
const TURN_UNHEALTHY_STAGE: &str = r#"
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: stagecoach-pod-turn-unhealthy
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.metadata.labels["stagecoach.dev/test-unhealthy"]'
      operator: 'Exists'
    - key: '.status.phase'
      operator: 'In'
      values: ['Running']
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'In'
      values: ['True']
  weight: 1
  delay:
    durationMilliseconds: 200
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - lastProbeTime: null
        lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Initialized
      - lastProbeTime: null
        lastTransitionTime: {{ $now | Quote }}
        message: "containers with unready status"
        reason: ContainersNotReady
        status: "False"
        type: Ready
      - lastProbeTime: null
        lastTransitionTime: {{ $now | Quote }}
        message: "containers with unready status"
        reason: ContainersNotReady
        status: "False"
        type: ContainersReady
      containerStatuses:
      {{ range $index, $item := .spec.containers }}
      - image: {{ $item.image | Quote }}
        name: {{ $item.name | Quote }}
        ready: false
        started: false
        restartCount: 1
        lastState:
          terminated:
            exitCode: 137
            reason: Error
            startedAt: {{ $now | Quote }}
            finishedAt: {{ $now | Quote }}
        state:
          waiting:
            reason: CrashLoopBackOff
            message: "back-off restarting failed container (simulated by kwok: pod marked stagecoach.dev/test-unhealthy)"
      {{ end }}
      phase: Running
"#;

/// JQ keys that must not exist for kwok's pod-ready stage, so it leaves our pods alone.
const POD_READY_EXCLUSIONS: [&str; 1] =
    [r#".spec.containers.[].image | select( contains("bad") )"#];

/// JQ keys that must not exist for kwok's pod-complete stage: a `hang` image never ends.
const POD_COMPLETE_EXCLUSIONS: [&str; 1] =
    [r#".spec.containers.[].image | select( contains("hang") )"#];

fn push_does_not_exist(stage: &mut Value, key: &str) -> Result<()> {
    let expressions = stage
        .get_mut("spec")
        .and_then(|s| s.get_mut("selector"))
        .and_then(|s| s.get_mut("matchExpressions"))
        .and_then(Value::as_sequence_mut)
        .context("a kwok pod stage has no spec.selector.matchExpressions")?;
    let mut item = serde_yaml::Mapping::new();
    item.insert("key".into(), key.into());
    item.insert("operator".into(), "DoesNotExist".into());
    expressions.push(Value::Mapping(item));
    Ok(())
}

/// The complete kwok configuration: one YAML stream of Stage documents.
pub fn kwok_config(kwok_module: &Path) -> Result<String> {
    let mut docs = Vec::new();
    for file in KWOK_STAGE_FILES {
        let path = kwok_module.join(file);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading kwok stage {}", path.display()))?;
        let mut stage: Value = serde_yaml::from_str(&text)?;
        if file.ends_with("pod-ready.yaml") {
            for key in POD_READY_EXCLUSIONS {
                push_does_not_exist(&mut stage, key)?;
            }
        }
        if file.ends_with("pod-complete.yaml") {
            for key in POD_COMPLETE_EXCLUSIONS {
                push_does_not_exist(&mut stage, key)?;
            }
        }
        docs.push(serde_yaml::to_string(&stage)?);
    }
    for own in [CRASHLOOP_STAGE, FAIL_STAGE, TURN_UNHEALTHY_STAGE] {
        // Parse to fail early on a typo, then keep the text as written.
        let _: Value = serde_yaml::from_str(own)?;
        docs.push(own.trim_start().to_owned());
    }
    Ok(docs.join("---\n"))
}
