//! flagd's `fractional` bucketing, so that Stagecoach and flagd put every client in the
//! same bucket.
//!
//! This matches the current flagd evaluator (open-feature/flagd,
//! `core/pkg/evaluator/fractional.go`):
//!
//! - the hashed string is the flag key immediately followed by the bucketing value, as
//!   UTF-8 bytes;
//! - hash = MurmurHash3 x86 32-bit with seed 0, read as an unsigned 32-bit number;
//! - bucket = `(hash * totalWeight) >> 32` in 64-bit integer arithmetic, so it lies in
//!   `[0, totalWeight)`; weights are non-negative integers and only relative;
//! - the first variant, in the given order, whose cumulative weight exceeds the bucket wins.
//!
//! It does not match older flagd releases, which took a float percentage of `|int32(hash)|`
//! (and before that xxh3 in `fractionalEvaluation`); those place some clients differently.
//!
//! Coming change: flagd's accepted ADR "fractional-non-string-rand-units" ("fractional v3")
//! hashes the deterministic CBOR encoding of the bucketing input instead of its raw bytes
//! (and `[flagKey, targetingKey]` as a CBOR array in the shorthand form). The Python flagd
//! core 2.0.0 already does; the Go flagd evaluator read for this module does not. Once flagd
//! releases it, this module and the rendered targeting must follow, or about a third of the
//! clients of an 80/20 split land differently.

use std::io::Read;

/// MurmurHash3, x86 32-bit variant, seed 0, of `bytes`.
pub fn murmur3_x86_32(bytes: &[u8]) -> u32 {
    hash_reader(&mut &*bytes)
}

/// flagd's bucketing hash: MurmurHash3 x86 32-bit, seed 0, of `flag_key` followed by
/// `bucketing_value` (no separator). Hashes the two parts in sequence, without building
/// the concatenated string.
pub fn bucketing_hash(flag_key: &str, bucketing_value: &str) -> u32 {
    hash_reader(&mut flag_key.as_bytes().chain(bucketing_value.as_bytes()))
}

fn hash_reader(source: &mut impl Read) -> u32 {
    match murmur3::murmur3_32(source, 0) {
        Ok(hash) => hash,
        // The sources are in-memory byte slices, whose reads cannot fail.
        Err(error) => unreachable!("reading an in-memory byte slice failed: {error}"),
    }
}

/// The bucket of `hash` among `total_weight` buckets: `(hash * total_weight) >> 32`, which is
/// in `[0, total_weight)` for every `total_weight` up to 2^32.
pub fn bucket(hash: u32, total_weight: u64) -> u64 {
    (u64::from(hash) * total_weight) >> 32
}

/// The variant flagd's `fractional` gives the client `bucketing_value` for flag `flag_key`,
/// among `weights` (variant and relative weight, in the order the split lists them).
///
/// None when the weights sum to zero, where flagd has no answer either.
pub fn pick_variant<'v>(
    flag_key: &str,
    bucketing_value: &str,
    weights: &[(&'v str, u32)],
) -> Option<&'v str> {
    let total: u64 = weights.iter().map(|&(_, weight)| u64::from(weight)).sum();
    if total == 0 {
        return None;
    }
    let bucket = bucket(bucketing_hash(flag_key, bucketing_value), total);
    let mut range_end = 0u64;
    weights.iter().find_map(|&(variant, weight)| {
        range_end += u64::from(weight);
        (bucket < range_end).then_some(variant)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucketing_hash_is_the_hash_of_the_concatenation() {
        for (key, value) in [
            ("", ""),
            ("a", ""),
            ("", "b"),
            ("abc", "d"),
            ("flag", "client-42"),
        ] {
            assert_eq!(
                bucketing_hash(key, value),
                murmur3_x86_32(format!("{key}{value}").as_bytes()),
                "{key:?} + {value:?}"
            );
        }
    }

    #[test]
    fn buckets_cover_the_range() {
        assert_eq!(bucket(0, 100), 0);
        assert_eq!(bucket(u32::MAX, 100), 99);
        assert_eq!(bucket(u32::MAX, 1 << 32), u64::from(u32::MAX));
    }

    #[test]
    fn zero_weights_have_no_answer_and_never_win() {
        assert_eq!(pick_variant("f", "c", &[]), None);
        assert_eq!(pick_variant("f", "c", &[("a", 0), ("b", 0)]), None);
        assert_eq!(pick_variant("f", "c", &[("a", 0), ("b", 5)]), Some("b"));
    }
}
