//! The toggle cache: every FeatureToggle the operator watches, for its whole lifetime,
//! each kept as compact JSON text and decoded when it is read.
//!
//! A decoded `FeatureToggle` is large for what it holds: its `ObjectMeta` carries every
//! optional field inline, and its spec is a tree of small allocations (variant names,
//! stage names, client lists, split maps, each a string or vector of its own). In the
//! scale benchmark's world (10,000 toggles) kube's reflector store of decoded toggles was
//! the largest part of the operator's steady heap. Here a toggle is one string (the JSON
//! of its metadata, spec and compact status, see [`super::cache::compact_for_cache`]) and
//! the few facts read without decoding it: its application, resource version, the
//! Releases its rules are coupled to, and the digest of its status.
//!
//! Decoding costs microseconds. The toggle controller decodes an application's toggles
//! when it plans or serves them; OFREP decodes the spec of the flag it evaluates (see
//! [`ToggleCache::spec`]); the fan-out of Release changes reads only the facts.
//!
//! Watch events are applied as `controller::reflect` applies them to the other caches: a
//! (re-)listed toggle whose resource version is the one cached is left as it is, a new
//! or changed one is applied at once, and when the list is complete whatever it did not
//! contain is removed, so a re-list never holds the cache twice.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::watcher;
use serde::{Deserialize, Serialize};
use stagecoach_api::condition::{Condition, ConditionStatus};
use stagecoach_api::toggle::ToggleStageStatus;
use stagecoach_api::{FeatureToggle, FeatureToggleSpec, FeatureToggleStatus};
use tracing::error;

use super::cache::digest;

/// What changes to a toggle are told by: its application, uid and generation (its spec).
/// A status write changes none of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToggleFacts {
    pub application: String,
    pub uid: u64,
    pub generation: i64,
}

/// A toggle that appeared (`before` None), is gone (`after` None) or changed its
/// [`ToggleFacts`], in `namespace`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToggleChange {
    pub namespace: String,
    pub before: Option<ToggleFacts>,
    pub after: Option<ToggleFacts>,
}

/// Every cached FeatureToggle, by namespace and name. Cheap to clone; clones share the
/// cache.
#[derive(Clone, Default)]
pub struct ToggleCache {
    inner: Arc<RwLock<Inner>>,
}

#[derive(Default)]
struct Inner {
    /// Namespace -> name -> toggle.
    toggles: HashMap<Box<str>, HashMap<Box<str>, Entry>>,
    /// The toggles the list in progress has contained so far, by namespace and name.
    listed: Option<HashMap<Box<str>, HashSet<Box<str>>>>,
}

/// One cached toggle.
struct Entry {
    application: Box<str>,
    /// A digest of its uid: a toggle deleted and created again under its name while no
    /// watch ran starts at generation 1 again.
    uid_digest: u64,
    /// Its uid as a number, when it is a UUID in the API server's form (then it is not
    /// in the JSON).
    uid: Option<u128>,
    generation: Option<i64>,
    /// Its creation time in whole seconds, when it has no fraction (the API server's
    /// form; then it is not in the JSON).
    created: Option<i64>,
    resource_version: Box<str>,
    /// The Releases named by its rules' `when` (empty for most toggles).
    coupled_releases: Box<[Box<str>]>,
    /// [`FeatureToggleStatus::cache_digest`], which is never serialized.
    status_digest: Option<u64>,
    /// [`Wire`] as JSON.
    json: Box<str>,
}

/// What the JSON text of a cached toggle holds, with one-letter keys: the metadata
/// without what the entry holds (name and namespace, the cache's keys; resource version,
/// generation, and uid and creation time in their usual forms), the spec, and the status
/// with each condition as an array ([`ConditionWire`]).
#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(rename = "m")]
    metadata: ObjectMeta,
    #[serde(rename = "s")]
    spec: FeatureToggleSpec,
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    status: Option<StatusWire>,
}

/// Only the spec of a cached toggle (OFREP reads nothing else).
#[derive(Deserialize)]
struct SpecOnly {
    #[serde(rename = "s")]
    spec: FeatureToggleSpec,
}

#[derive(Serialize, Deserialize)]
struct StatusWire {
    #[serde(rename = "g", default, skip_serializing_if = "Option::is_none")]
    observed_generation: Option<i64>,
    #[serde(rename = "k", default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(rename = "c", default, skip_serializing_if = "Vec::is_empty")]
    conditions: Vec<ConditionWire>,
    #[serde(rename = "s", default, skip_serializing_if = "Vec::is_empty")]
    stages: Vec<ToggleStageStatus>,
}

/// A condition as an array: type, status, reason, message, observed generation, last
/// transition time.
type ConditionWire = (
    String,
    ConditionStatus,
    String,
    String,
    Option<i64>,
    DateTime<Utc>,
);

impl From<FeatureToggleStatus> for StatusWire {
    fn from(status: FeatureToggleStatus) -> Self {
        // Every field named: a field added to the status is not silently left out.
        let FeatureToggleStatus {
            observed_generation,
            key,
            conditions,
            stages,
            cache_digest: _,
        } = status;
        let conditions = conditions
            .into_iter()
            .map(|condition| {
                let Condition {
                    r#type,
                    status,
                    reason,
                    message,
                    observed_generation,
                    last_transition_time,
                } = condition;
                (
                    r#type,
                    status,
                    reason,
                    message,
                    observed_generation,
                    last_transition_time,
                )
            })
            .collect();
        Self {
            observed_generation,
            key,
            conditions,
            stages,
        }
    }
}

impl From<StatusWire> for FeatureToggleStatus {
    fn from(status: StatusWire) -> Self {
        let conditions = status
            .conditions
            .into_iter()
            .map(
                |(r#type, status, reason, message, observed_generation, last_transition_time)| {
                    Condition {
                        r#type,
                        status,
                        reason,
                        message,
                        observed_generation,
                        last_transition_time,
                    }
                },
            )
            .collect();
        Self {
            observed_generation: status.observed_generation,
            key: status.key,
            conditions,
            stages: status.stages,
            cache_digest: None,
        }
    }
}

/// `uid` as a number, if it is a UUID as the API server writes it (lower-case hex in
/// groups of 8-4-4-4-12), so that [`uid_text`] gives it back exactly.
fn uid_number(uid: &str) -> Option<u128> {
    let groups: Vec<&str> = uid.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    if lengths != [8, 4, 4, 4, 12]
        || !uid
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u128::from_str_radix(&groups.concat(), 16).ok()
}

/// The UUID text of a uid [`uid_number`] read.
fn uid_text(uid: u128) -> String {
    let hex = format!("{uid:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

impl Entry {
    /// The entry of `toggle` (already compacted for the cache).
    fn of(toggle: &FeatureToggle) -> Option<Self> {
        let uid = toggle.metadata.uid.as_deref().and_then(uid_number);
        let created = toggle
            .metadata
            .creation_timestamp
            .as_ref()
            .filter(|t| t.0.subsec_nanosecond() == 0)
            .map(|t| t.0.as_second());
        let metadata = ObjectMeta {
            name: None,
            namespace: None,
            resource_version: None,
            generation: None,
            uid: if uid.is_some() {
                None
            } else {
                toggle.metadata.uid.clone()
            },
            creation_timestamp: if created.is_some() {
                None
            } else {
                toggle.metadata.creation_timestamp.clone()
            },
            ..toggle.metadata.clone()
        };
        let wire = Wire {
            metadata,
            spec: toggle.spec.clone(),
            status: toggle.status.clone().map(StatusWire::from),
        };
        let json = match serde_json::to_string(&wire) {
            Ok(json) => json,
            Err(error) => {
                // Cannot happen for a toggle that was just deserialized; never cached
                // half.
                error!(name = %toggle.name_any(), %error, "cannot cache toggle");
                return None;
            }
        };
        let mut coupled: Vec<Box<str>> = toggle
            .spec
            .stages
            .values()
            .flat_map(|stage| &stage.rules)
            .filter_map(|rule| rule.when.as_ref())
            .map(|when| when.release.as_str().into())
            .collect();
        coupled.sort();
        coupled.dedup();
        Some(Self {
            application: toggle.spec.application.as_str().into(),
            uid_digest: digest(&toggle.metadata.uid),
            uid,
            generation: toggle.metadata.generation,
            created,
            resource_version: toggle
                .metadata
                .resource_version
                .as_deref()
                .unwrap_or_default()
                .into(),
            coupled_releases: coupled.into_boxed_slice(),
            status_digest: toggle.status.as_ref().and_then(|s| s.cache_digest),
            json: json.into_boxed_str(),
        })
    }

    fn facts(&self) -> ToggleFacts {
        ToggleFacts {
            application: self.application.to_string(),
            uid: self.uid_digest,
            generation: self.generation.unwrap_or(0),
        }
    }

    /// The toggle `name` in `namespace` this entry holds.
    fn decode(&self, namespace: &str, name: &str) -> Option<FeatureToggle> {
        let wire: Wire = match serde_json::from_str(&self.json) {
            Ok(wire) => wire,
            Err(error) => {
                error!(%namespace, %name, %error, "cannot read cached toggle");
                return None;
            }
        };
        let mut metadata = wire.metadata;
        metadata.name = Some(name.to_owned());
        metadata.namespace = Some(namespace.to_owned());
        if !self.resource_version.is_empty() {
            metadata.resource_version = Some(self.resource_version.to_string());
        }
        metadata.generation = self.generation;
        if let Some(uid) = self.uid {
            metadata.uid = Some(uid_text(uid));
        }
        if let Some(created) = self.created {
            metadata.creation_timestamp = Timestamp::from_second(created).ok().map(Time);
        }
        let status = wire.status.map(|status| FeatureToggleStatus {
            cache_digest: self.status_digest,
            ..status.into()
        });
        Some(FeatureToggle {
            metadata,
            spec: wire.spec,
            status,
        })
    }
}

/// The namespace and name of `toggle`.
fn key(toggle: &FeatureToggle) -> (Box<str>, Box<str>) {
    (
        toggle
            .metadata
            .namespace
            .as_deref()
            .unwrap_or_default()
            .into(),
        toggle.metadata.name.as_deref().unwrap_or_default().into(),
    )
}

impl ToggleCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies one watch event (see the module docs) and returns what changed for the
    /// toggles' applications: a status write is no change; a toggle that vanished during
    /// a re-list (which yields no delete event) is reported at the list's end.
    pub fn apply(&self, event: &watcher::Event<FeatureToggle>) -> Vec<ToggleChange> {
        let mut inner = self.write();
        match event {
            watcher::Event::Apply(toggle) => inner.insert(toggle).into_iter().collect(),
            watcher::Event::Delete(toggle) => {
                let (namespace, name) = key(toggle);
                inner.remove(&namespace, &name).into_iter().collect()
            }
            watcher::Event::Init => {
                inner.listed = Some(HashMap::new());
                Vec::new()
            }
            watcher::Event::InitApply(toggle) => {
                let (namespace, name) = key(toggle);
                let unchanged = toggle
                    .metadata
                    .resource_version
                    .as_deref()
                    .is_some_and(|rv| {
                        inner
                            .toggles
                            .get(&namespace)
                            .and_then(|by_name| by_name.get(&name))
                            .is_some_and(|cached| *cached.resource_version == *rv)
                    });
                let change = if unchanged {
                    None
                } else {
                    inner.insert(toggle)
                };
                inner
                    .listed
                    .get_or_insert_default()
                    .entry(namespace)
                    .or_default()
                    .insert(name);
                change.into_iter().collect()
            }
            watcher::Event::InitDone => {
                let listed = inner.listed.take().unwrap_or_default();
                let mut changes = Vec::new();
                inner.toggles.retain(|namespace, by_name| {
                    by_name.retain(|name, entry| {
                        let keep = listed
                            .get(namespace)
                            .is_some_and(|names| names.contains(name));
                        if !keep {
                            changes.push(ToggleChange {
                                namespace: namespace.to_string(),
                                before: Some(entry.facts()),
                                after: None,
                            });
                        }
                        keep
                    });
                    by_name.shrink_to_fit();
                    !by_name.is_empty()
                });
                inner.toggles.shrink_to_fit();
                changes
            }
        }
    }

    /// The toggle `name` in `namespace`, decoded; None when not cached.
    #[cfg(test)]
    fn get(&self, namespace: &str, name: &str) -> Option<FeatureToggle> {
        self.read()
            .toggles
            .get(namespace)?
            .get(name)?
            .decode(namespace, name)
    }

    /// Only the spec of the toggle `name` in `namespace`: what OFREP evaluates.
    pub fn spec(&self, namespace: &str, name: &str) -> Option<FeatureToggleSpec> {
        let inner = self.read();
        let entry = inner.toggles.get(namespace)?.get(name)?;
        match serde_json::from_str::<SpecOnly>(&entry.json) {
            Ok(wire) => Some(wire.spec),
            Err(error) => {
                error!(%namespace, %name, %error, "cannot read cached toggle");
                None
            }
        }
    }

    /// The toggles of `application` in `namespace`, decoded, in no particular order.
    pub fn of_application(&self, namespace: &str, application: &str) -> Vec<FeatureToggle> {
        let inner = self.read();
        let Some(by_name) = inner.toggles.get(namespace) else {
            return Vec::new();
        };
        by_name
            .iter()
            .filter(|(_, entry)| *entry.application == *application)
            .filter_map(|(name, entry)| entry.decode(namespace, name))
            .collect()
    }

    /// Whether any toggle of `application` in `namespace` is cached.
    pub fn has_application(&self, namespace: &str, application: &str) -> bool {
        self.read()
            .toggles
            .get(namespace)
            .is_some_and(|by_name| by_name.values().any(|e| *e.application == *application))
    }

    /// Calls `visit` with the namespace, application and coupled Releases of every
    /// cached toggle, without decoding any. The cache is locked meanwhile: `visit` must
    /// not read it.
    pub fn for_each(&self, mut visit: impl FnMut(&str, &str, &[Box<str>])) {
        let inner = self.read();
        for (namespace, by_name) in &inner.toggles {
            for entry in by_name.values() {
                visit(namespace, &entry.application, &entry.coupled_releases);
            }
        }
    }

    /// How many toggles are cached.
    fn len(&self) -> usize {
        self.read().toggles.values().map(HashMap::len).sum()
    }

    /// Whether no toggle is cached.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.read().toggles.is_empty()
    }
}

impl Inner {
    /// Caches `toggle`; what changed, if anything.
    fn insert(&mut self, toggle: &FeatureToggle) -> Option<ToggleChange> {
        let (namespace, name) = key(toggle);
        let Some(entry) = Entry::of(toggle) else {
            // Not cached at all rather than cached as it was: the old spec would be
            // served as if current.
            return self.remove(&namespace, &name);
        };
        let after = entry.facts();
        let before = self
            .toggles
            .entry(namespace.clone())
            .or_default()
            .insert(name, entry)
            .map(|before| before.facts());
        (before.as_ref() != Some(&after)).then(|| ToggleChange {
            namespace: namespace.into(),
            before,
            after: Some(after),
        })
    }

    /// Forgets the toggle `name` in `namespace`; that it is gone, if it was cached.
    fn remove(&mut self, namespace: &str, name: &str) -> Option<ToggleChange> {
        let by_name = self.toggles.get_mut(namespace)?;
        let removed = by_name.remove(name);
        if by_name.is_empty() {
            self.toggles.remove(namespace);
        }
        removed.map(|entry| ToggleChange {
            namespace: namespace.to_owned(),
            before: Some(entry.facts()),
            after: None,
        })
    }
}

impl std::fmt::Debug for ToggleCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToggleCache")
            .field("toggles", &self.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};

    use super::super::cache::compact_for_cache;
    use super::*;

    fn toggle(namespace: &str, name: &str, app: &str, version: &str) -> FeatureToggle {
        let mut toggle: FeatureToggle = serde_json::from_value(json!({
            "apiVersion": "stagecoach.dev/v1alpha1", "kind": "FeatureToggle",
            "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"),
                "resourceVersion": version, "generation": 2,
                "creationTimestamp": "2026-11-29T10:00:00Z", "labels": {"team": "web"}},
            "spec": {
                "application": app, "key": format!("key-{name}"),
                "variants": {"on": true, "off": false, "blue": {"colour": "#00f"}},
                "defaultVariant": "off", "bucketBy": "tenant",
                "stages": {
                    "dev": {"state": "Enabled", "defaultVariant": "on"},
                    "demo": {"rules": [
                        {"clients": ["acme", "globex"], "variant": "on"},
                        {"split": {"on": 20, "off": 80}},
                        {"clients": ["initech"], "variant": "blue",
                            "when": {"release": "shop-2", "reached": "demo"}}
                    ]},
                    "prod": {"state": "Disabled", "rules": [{"clients": ["acme"], "variant": "on",
                        "when": {"release": "shop-1", "reached": "prod"}}]}
                }
            },
            "status": {
                "observedGeneration": 2, "key": format!("key-{name}"),
                "conditions": [{"type": "Ready", "status": "True", "reason": "Served",
                    "message": "served in 3 stages", "observedGeneration": 2,
                    "lastTransitionTime": "2026-11-29T10:00:01Z"}],
                "stages": [{"name": "demo", "couplings": [{"release": "shop-2",
                    "reached": "demo", "active": false}]}]
            }
        }))
        .unwrap();
        compact_for_cache(&mut toggle);
        toggle
    }

    /// Equal as the API server would see them, and with the same status digest.
    fn assert_same(read: &FeatureToggle, cached: &FeatureToggle) {
        assert_eq!(
            serde_json::to_value(read).unwrap(),
            serde_json::to_value(cached).unwrap()
        );
        let digest = |t: &FeatureToggle| t.status.as_ref().and_then(|s| s.cache_digest);
        assert_eq!(digest(read), digest(cached));
    }

    fn names(cache: &ToggleCache, namespace: &str, app: &str) -> Vec<String> {
        let mut names: Vec<String> = cache
            .of_application(namespace, app)
            .iter()
            .map(ResourceExt::name_any)
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_cached_toggle_reads_back_exactly_as_it_was_cached() {
        let cache = ToggleCache::new();
        let original = toggle("team", "new-ui", "shop", "7");
        assert!(original.status.as_ref().unwrap().cache_digest.is_some());
        cache.apply(&Apply(original.clone()));
        assert_same(&cache.get("team", "new-ui").unwrap(), &original);
        assert_eq!(cache.spec("team", "new-ui"), Some(original.spec.clone()));
        let listed = cache.of_application("team", "shop");
        assert_eq!(listed.len(), 1);
        assert_same(&listed[0], &original);
        assert!(cache.get("other", "new-ui").is_none());
        assert!(cache.spec("team", "old-ui").is_none());
    }

    #[test]
    fn applications_and_couplings_are_read_without_decoding() {
        let cache = ToggleCache::new();
        cache.apply(&Apply(toggle("team", "a", "shop", "1")));
        cache.apply(&Apply(toggle("team", "b", "billing", "2")));
        cache.apply(&Apply(toggle("other", "c", "shop", "3")));
        assert!(cache.has_application("team", "shop"));
        assert!(cache.has_application("other", "shop"));
        assert!(!cache.has_application("other", "billing"));
        assert_eq!(names(&cache, "team", "shop"), ["a"]);
        let mut seen = Vec::new();
        cache.for_each(|namespace, app, coupled| {
            seen.push(format!("{namespace}/{app}: {coupled:?}"));
        });
        seen.sort();
        assert_eq!(
            seen,
            [
                r#"other/shop: ["shop-1", "shop-2"]"#,
                r#"team/billing: ["shop-1", "shop-2"]"#,
                r#"team/shop: ["shop-1", "shop-2"]"#,
            ]
        );
        cache.apply(&Delete(toggle("team", "b", "billing", "2")));
        assert!(!cache.has_application("team", "billing"));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn a_relist_keeps_unchanged_toggles_applies_changed_ones_and_drops_vanished_ones() {
        let cache = ToggleCache::new();
        cache.apply(&Init);
        cache.apply(&InitApply(toggle("team", "a", "shop", "1")));
        cache.apply(&InitApply(toggle("team", "b", "shop", "1")));
        cache.apply(&InitDone);
        assert_eq!(names(&cache, "team", "shop"), ["a", "b"]);

        let json_of = |name: &str| cache.read().toggles["team"][name].json.as_ptr() as usize;
        let a_before = json_of("a");
        cache.apply(&Init);
        // Unchanged: not even re-encoded.
        cache.apply(&InitApply(toggle("team", "a", "shop", "1")));
        assert_eq!(json_of("a"), a_before);
        // Moved to another application while no watch ran.
        cache.apply(&InitApply(toggle("team", "c", "billing", "5")));
        let mut moved = toggle("team", "b", "billing", "4");
        moved.spec.default_variant = "on".into();
        cache.apply(&InitApply(moved.clone()));
        // Readers see the list's changes as they arrive.
        assert_same(&cache.get("team", "b").unwrap(), &moved);
        cache.apply(&InitDone);
        assert_eq!(names(&cache, "team", "shop"), ["a"]);
        assert_eq!(names(&cache, "team", "billing"), ["b", "c"]);

        // A relist without any toggle of a namespace forgets the namespace.
        cache.apply(&Init);
        cache.apply(&InitDone);
        assert!(cache.is_empty());
    }

    #[test]
    fn only_changes_that_tell_a_plan_apart_are_reported() {
        let cache = ToggleCache::new();
        let facts = |app: &str, generation: i64| ToggleFacts {
            application: app.into(),
            uid: digest(&Some("uid-a".to_owned())),
            generation,
        };
        let change = |before, after| ToggleChange {
            namespace: "team".into(),
            before,
            after,
        };
        let a = toggle("team", "a", "shop", "1");
        assert_eq!(
            cache.apply(&Apply(a.clone())),
            [change(None, Some(facts("shop", 2)))]
        );
        // A status write: a new resource version, nothing else.
        let mut written = toggle("team", "a", "shop", "2");
        written.status.as_mut().unwrap().cache_digest = Some(1);
        assert!(cache.apply(&Apply(written)).is_empty());
        // A new spec, in another application.
        let mut moved = toggle("team", "a", "billing", "3");
        moved.metadata.generation = Some(3);
        assert_eq!(
            cache.apply(&Apply(moved.clone())),
            [change(Some(facts("shop", 2)), Some(facts("billing", 3)))]
        );
        // Deleted and created again under its name while no watch ran: a new uid.
        let mut again = toggle("team", "a", "billing", "9");
        again.metadata.uid = Some("uid-a-again".into());
        again.metadata.generation = Some(3);
        cache.apply(&Init);
        let listed = cache.apply(&InitApply(again));
        assert_eq!(listed.len(), 1);
        assert_ne!(
            listed[0].after.as_ref().unwrap().uid,
            facts("billing", 3).uid
        );
        assert!(cache.apply(&InitDone).is_empty());
        // Gone during a re-list: reported at its end.
        cache.apply(&Init);
        assert!(
            cache
                .apply(&InitApply(toggle("team", "b", "shop", "4")))
                .len()
                == 1
        );
        let gone = cache.apply(&InitDone);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].after, None);
        assert_eq!(gone[0].before.as_ref().unwrap().application, "billing");
        // Deleted.
        assert_eq!(
            cache.apply(&Delete(toggle("team", "b", "shop", "5"))),
            [ToggleChange {
                namespace: "team".into(),
                before: Some(ToggleFacts {
                    application: "shop".into(),
                    uid: digest(&Some("uid-b".to_owned())),
                    generation: 2
                }),
                after: None,
            }]
        );
        assert!(
            cache
                .apply(&Delete(toggle("team", "b", "shop", "5")))
                .is_empty()
        );
    }

    #[test]
    fn uids_and_creation_times_in_the_api_servers_form_are_kept_as_numbers() {
        let uid = "3999992c-c1db-46d3-b515-e058366d16b4";
        assert_eq!(uid_number(uid).map(uid_text).as_deref(), Some(uid));
        for not_canonical in [
            "uid-a",
            "3999992C-C1DB-46D3-B515-E058366D16B4",
            "3999992cc1db46d3b515e058366d16b4",
            "3999992c-c1db-46d3-b515-e058366d16b4-",
            "+999992c-c1db-46d3-b515-e058366d16b4",
        ] {
            assert_eq!(uid_number(not_canonical), None, "{not_canonical}");
        }

        let cache = ToggleCache::new();
        let mut usual = toggle("team", "usual", "shop", "1");
        usual.metadata.uid = Some(uid.into());
        cache.apply(&Apply(usual.clone()));
        let entry_json = |name: &str| cache.read().toggles["team"][name].json.to_string();
        let json = entry_json("usual");
        assert!(
            !json.contains(uid) && !json.contains("2026-11-29T10:00:00Z"),
            "{json}"
        );
        assert_same(&cache.get("team", "usual").unwrap(), &usual);

        // Other forms are kept as they are, in the JSON.
        let mut unusual = toggle("team", "unusual", "shop", "1");
        unusual.metadata.creation_timestamp =
            Some(Time("2026-11-29T10:00:00.25Z".parse().unwrap()));
        unusual.metadata.generation = None;
        cache.apply(&Apply(unusual.clone()));
        assert!(entry_json("unusual").contains("uid-unusual"));
        assert_same(&cache.get("team", "unusual").unwrap(), &unusual);
    }
}
