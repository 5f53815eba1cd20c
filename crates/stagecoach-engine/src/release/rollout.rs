//! Rollout arithmetic: canary sizing, the release's pod template, template hashes.

use std::fmt::Write as _;

use serde_json::Value;
use stagecoach_api::release::Workload;

/// Label on canary pods and in the canary Deployment's selector.
pub const CANARY_LABEL: &str = "stagecoach.dev/role";
/// Value of [`CANARY_LABEL`].
pub const CANARY_ROLE: &str = "canary";

/// Name of the canary Deployment of `deployment`.
pub fn canary_name(deployment: &str) -> String {
    format!("{deployment}-canary")
}

/// Canary replicas for weight `w` next to a stable Deployment of `desired` replicas,
/// so that canary pods are about `w` % of all ready pods behind the Service selector:
/// `c / (desired + c) ≈ w / 100`, at least 1. The stable Deployment keeps all its
/// replicas, so ready capacity never drops below `desired`.
pub fn canary_replicas(weight: i32, desired: i32) -> i32 {
    let weight = i64::from(weight.clamp(1, 99));
    let desired = i64::from(desired.max(1));
    // Rounded to nearest: (w * d + (100 - w) / 2) / (100 - w).
    let c = (weight * desired + (100 - weight) / 2) / (100 - weight);
    i32::try_from(c.max(1)).unwrap_or(i32::MAX)
}

/// The share of ready pods on the new version, in percent, for `canary` next to `stable`.
pub fn effective_weight(canary: i32, stable: i32) -> i32 {
    let total = canary + stable;
    if total <= 0 {
        return 0;
    }
    i32::try_from(i64::from(canary) * 100 / i64::from(total)).unwrap_or(0)
}

/// `template` with the images of the containers named in `workload` replaced; every
/// other field is left exactly as it is.
pub fn with_release_images(template: &Value, workload: &Workload) -> Value {
    let mut out = template.clone();
    if let Some(containers) = out
        .pointer_mut("/spec/containers")
        .and_then(Value::as_array_mut)
    {
        for container in containers {
            let name = container.get("name").and_then(Value::as_str).unwrap_or("");
            if let Some(wanted) = workload.containers.iter().find(|c| c.name == name) {
                container["image"] = Value::String(wanted.image.clone());
            }
        }
    }
    out
}

/// Whether the template already runs the release's images.
pub fn runs_release_images(template: &Value, workload: &Workload) -> bool {
    let containers = template
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    workload.containers.iter().all(|wanted| {
        containers.iter().any(|c| {
            c.get("name").and_then(Value::as_str) == Some(wanted.name.as_str())
                && c.get("image").and_then(Value::as_str) == Some(wanted.image.as_str())
        })
    })
}

/// Label on the pod template of every pod the operator rolls out: canary pods, and the
/// stable Deployment's pods once it runs the release. The operator watches only pods that
/// carry it, so its memory grows with what it rolls out, not with the cluster.
pub const ROLLOUT_LABEL: &str = "stagecoach.dev/rollout";
/// Value of [`ROLLOUT_LABEL`].
pub const ROLLOUT_VALUE: &str = "true";

/// `template` with one more pod label.
fn with_label(template: &Value, key: &str, value: &str) -> Value {
    let mut template = template.clone();
    if !template.get("metadata").is_some_and(Value::is_object) {
        template["metadata"] = Value::Object(serde_json::Map::new());
    }
    if !template["metadata"]
        .get("labels")
        .is_some_and(Value::is_object)
    {
        template["metadata"]["labels"] = Value::Object(serde_json::Map::new());
    }
    template["metadata"]["labels"][key] = Value::String(value.to_owned());
    template
}

/// What the stable Deployment's template becomes at 100 %: the release's images and
/// [`ROLLOUT_LABEL`], every other field as it was.
pub fn released_template(stable_template: &Value, workload: &Workload) -> Value {
    with_label(
        &with_release_images(stable_template, workload),
        ROLLOUT_LABEL,
        ROLLOUT_VALUE,
    )
}

/// Whether the template carries [`ROLLOUT_LABEL`].
pub fn has_rollout_label(template: &Value) -> bool {
    template
        .pointer("/metadata/labels")
        .and_then(|l| l.get(ROLLOUT_LABEL))
        == Some(&Value::String(ROLLOUT_VALUE.to_owned()))
}

/// The canary's pod template: the release's template with the canary label added.
pub fn canary_template(stable_template: &Value, workload: &Workload) -> Value {
    with_label(
        &released_template(stable_template, workload),
        CANARY_LABEL,
        CANARY_ROLE,
    )
}

/// A stable, order-independent hash of a JSON value (FNV-1a 64 over its canonical form:
/// serde_json's maps are sorted), as 16 hex digits. Used to name and compare recorded
/// templates, not for security.
pub fn template_hash(template: &Value) -> String {
    let canonical = serde_json::to_string(template).unwrap_or_default();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in canonical.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let mut out = String::with_capacity(16);
    let _ = write!(out, "{hash:016x}");
    out
}

/// Name of the ControllerRevision holding a stage's stable revision of `deployment` for
/// `release`.
pub fn revision_name(release: &str, deployment: &str) -> String {
    let name = format!("stagecoach-{release}-{deployment}");
    if name.len() <= 253 {
        name
    } else {
        format!("stagecoach-{}", template_hash(&Value::String(name.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use stagecoach_api::release::ContainerImage;

    fn workload() -> Workload {
        Workload {
            deployment: "api".into(),
            containers: vec![ContainerImage {
                name: "app".into(),
                image: "example/api:2".into(),
            }],
        }
    }

    #[test]
    fn released_and_canary_templates_carry_the_rollout_label() {
        let stable = json!({
            "metadata": {"labels": {"app": "api"}},
            "spec": {"containers": [{"name": "app", "image": "example/api:1"}]}
        });
        assert!(!has_rollout_label(&stable));
        let released = released_template(&stable, &workload());
        assert!(has_rollout_label(&released));
        assert!(runs_release_images(&released, &workload()));
        assert_eq!(released["metadata"]["labels"]["app"], "api");
        let canary = canary_template(&stable, &workload());
        assert!(has_rollout_label(&canary));
        assert_eq!(canary["metadata"]["labels"][CANARY_LABEL], CANARY_ROLE);
        // Without metadata at all, too.
        assert!(has_rollout_label(&released_template(
            &json!({}),
            &workload()
        )));
    }

    #[test]
    fn canary_sizes() {
        assert_eq!(canary_replicas(10, 10), 1);
        assert_eq!(canary_replicas(50, 10), 10);
        assert_eq!(canary_replicas(25, 3), 1);
        assert_eq!(canary_replicas(90, 2), 18);
        assert_eq!(canary_replicas(1, 1), 1);
    }

    proptest! {
        #[test]
        fn canary_share_is_close_to_the_weight(w in 1i32..100, d in 1i32..200) {
            let c = canary_replicas(w, d);
            prop_assert!(c >= 1);
            let share = f64::from(c) / f64::from(c + d);
            let target = f64::from(w) / 100.0;
            // Within one pod of the exact share (or the floor of one canary pod).
            let one_pod = 1.0 / f64::from(c + d);
            prop_assert!((share - target).abs() <= one_pod + 1e-9 || c == 1, "w={w} d={d} c={c}");
        }
    }

    #[test]
    fn only_named_containers_change() {
        let template = json!({
            "metadata": {"labels": {"app": "api"}, "annotations": {"x": "y"}},
            "spec": {"containers": [
                {"name": "app", "image": "example/api:1", "env": [{"name": "A", "value": "1"}]},
                {"name": "sidecar", "image": "proxy:1"}
            ]}
        });
        let out = with_release_images(&template, &workload());
        assert_eq!(out["spec"]["containers"][0]["image"], "example/api:2");
        assert_eq!(
            out["spec"]["containers"][0]["env"],
            template["spec"]["containers"][0]["env"]
        );
        assert_eq!(
            out["spec"]["containers"][1],
            template["spec"]["containers"][1]
        );
        assert_eq!(out["metadata"], template["metadata"]);
        assert!(runs_release_images(&out, &workload()));
        assert!(!runs_release_images(&template, &workload()));
        let canary = canary_template(&template, &workload());
        assert_eq!(canary["metadata"]["labels"][CANARY_LABEL], CANARY_ROLE);
        assert_eq!(canary["metadata"]["labels"]["app"], "api");
    }

    #[test]
    fn hash_is_stable_and_sensitive() {
        let a = json!({"b": 1, "a": [1, 2]});
        let b = json!({"a": [1, 2], "b": 1});
        assert_eq!(template_hash(&a), template_hash(&b));
        assert_ne!(
            template_hash(&a),
            template_hash(&json!({"a": [2, 1], "b": 1}))
        );
        assert_eq!(template_hash(&a).len(), 16);
    }
}
