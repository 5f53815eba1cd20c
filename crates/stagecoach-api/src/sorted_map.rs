//! [`SortedMap`]: a map with string keys kept as one sorted `Vec`, for the small maps of a
//! FeatureToggle's spec (variants, stages, split percentages).
//!
//! The operator caches every FeatureToggle. A `BTreeMap` allocates a whole node (room
//! for eleven entries) even for two, which made those small maps most of a cached
//! toggle's memory; a sorted `Vec` allocates exactly what it holds. On the wire and in
//! the CRD schema it is an ordinary JSON object, exactly like a `BTreeMap<String, V>`,
//! and it iterates in the same (key) order.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// String keys to values, sorted by key, one entry per key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SortedMap<V> {
    entries: Vec<(String, V)>,
}

impl<V> Default for SortedMap<V> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<V> SortedMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    fn position(&self, key: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.position(key).ok().map(|i| &self.entries[i].1)
    }

    /// The value of `key`, mutably.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.position(key).ok().map(|i| &mut self.entries[i].1)
    }

    /// Whether `key` has a value.
    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_ok()
    }

    /// Sets the value of `key`, returning the one it replaced.
    pub fn insert(&mut self, key: String, value: V) -> Option<V> {
        match self.position(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.entries.insert(i, (key, value));
                None
            }
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        self.position(key).ok().map(|i| self.entries.remove(i).1)
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&String, &V)> + ExactSizeIterator {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// Keys in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &String> + ExactSizeIterator {
        self.entries.iter().map(|(k, _)| k)
    }

    /// Values in key order.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator {
        self.entries.iter().map(|(_, v)| v)
    }

    /// Values in key order, mutably.
    pub fn values_mut(&mut self) -> impl DoubleEndedIterator<Item = &mut V> + ExactSizeIterator {
        self.entries.iter_mut().map(|(_, v)| v)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<V> FromIterator<(String, V)> for SortedMap<V> {
    /// Like a `BTreeMap`: sorted by key, and a later entry replaces an earlier one.
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        let map: BTreeMap<String, V> = iter.into_iter().collect();
        map.into()
    }
}

impl<V> From<BTreeMap<String, V>> for SortedMap<V> {
    fn from(map: BTreeMap<String, V>) -> Self {
        let mut entries: Vec<(String, V)> = map.into_iter().collect();
        entries.shrink_to_fit();
        Self { entries }
    }
}

impl<K: Into<String>, V, const N: usize> From<[(K, V); N]> for SortedMap<V> {
    fn from(entries: [(K, V); N]) -> Self {
        entries.into_iter().map(|(k, v)| (k.into(), v)).collect()
    }
}

impl<'a, V> IntoIterator for &'a SortedMap<V> {
    type Item = (&'a String, &'a V);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, V)>,
        fn(&'a (String, V)) -> (&'a String, &'a V),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

impl<V> IntoIterator for SortedMap<V> {
    type Item = (String, V);
    type IntoIter = std::vec::IntoIter<(String, V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<V: Serialize> Serialize for SortedMap<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.entries.iter().map(|(k, v)| (k, v)))
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for SortedMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BTreeMap::<String, V>::deserialize(deserializer).map(Self::from)
    }
}

impl<V: JsonSchema> JsonSchema for SortedMap<V> {
    fn inline_schema() -> bool {
        <BTreeMap<String, V>>::inline_schema()
    }

    fn schema_name() -> Cow<'static, str> {
        <BTreeMap<String, V>>::schema_name()
    }

    fn schema_id() -> Cow<'static, str> {
        <BTreeMap<String, V>>::schema_id()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        <BTreeMap<String, V>>::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn behaves_like_a_btreemap() {
        let mut map: SortedMap<i32> = SortedMap::from([("on", 20), ("off", 80)]);
        assert_eq!(map.keys().collect::<Vec<_>>(), ["off", "on"]);
        assert_eq!(map.get("on"), Some(&20));
        assert_eq!(map.get("maybe"), None);
        assert_eq!(map.insert("on".into(), 25), Some(20));
        assert_eq!(map.insert("maybe".into(), 0), None);
        assert_eq!(map.keys().collect::<Vec<_>>(), ["maybe", "off", "on"]);
        assert_eq!(map.remove("maybe"), Some(0));
        assert_eq!(map.len(), 2);
        let later_wins: SortedMap<i32> = [("a".to_owned(), 1), ("a".to_owned(), 2)]
            .into_iter()
            .collect();
        assert_eq!(later_wins.get("a"), Some(&2));
    }

    #[test]
    fn is_a_json_object_on_the_wire_and_in_the_schema() {
        let map: SortedMap<i32> = serde_json::from_value(json!({"on": 20, "off": 80})).unwrap();
        assert_eq!(
            serde_json::to_value(&map).unwrap(),
            json!({"off": 80, "on": 20})
        );
        assert_eq!(
            serde_json::to_string(&map).unwrap(),
            serde_json::to_string(&BTreeMap::from([("on", 20), ("off", 80)])).unwrap()
        );
        assert_eq!(
            schemars::schema_for!(SortedMap<i32>),
            schemars::schema_for!(BTreeMap<String, i32>)
        );
    }
}
