//! flagd bucketing: published MurmurHash3 vectors, golden placements computed outside this
//! code base, uniformity, stickiness and independence.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use proptest::prelude::*;
use serde_json::json;
use stagecoach_api::FeatureToggleSpec;
use stagecoach_engine::toggle::{
    ActiveCouplings, EvaluationContext, Reason, bucket, bucketing_hash, evaluate, murmur3_x86_32,
    pick_variant,
};

/// MurmurHash3 x86 32-bit, seed 0. The first three are the commonly published vectors;
/// every value was also checked with Python's `mmh3` 5.3.1 (`mmh3.hash(s, 0, signed=False)`).
#[test]
fn murmur3_published_vectors() {
    let vectors: [(&str, u32); 13] = [
        ("", 0x0000_0000),
        ("hello", 0x248b_fa47),
        ("The quick brown fox jumps over the lazy dog", 0x2e4f_f723),
        ("a", 0x3c25_69b2),
        ("ab", 0x9bbf_d75f),
        ("abc", 0xb3dd_93fa),
        ("abcd", 0x43ed_676a),
        ("abcde", 0xe89b_9af6),
        ("aaaa", 0x7eee_d987),
        ("hello, world", 0x149b_bb7f),
        ("Hello, world!", 0xc036_3e43),
        ("ü", 0x7840_e6aa),
        ("東京", 0x96bf_1142),
    ];
    for (input, expected) in vectors {
        assert_eq!(murmur3_x86_32(input.as_bytes()), expected, "{input:?}");
    }
}

/// SMHasher's verification value for MurmurHash3_x86_32 (0xB0F57EE3): hash the keys
/// [], [0], [0, 1], ..., [0..=254] with seeds 256, 255, ..., 1, then hash the 256 little-endian
/// results with seed 0. Covers every tail length and the seeded path of the hash crate that
/// `murmur3_x86_32` wraps.
#[test]
fn murmur3_smhasher_verification_value() {
    let key: Vec<u8> = (0..=255).collect();
    let mut hashes = Vec::with_capacity(1024);
    for (length, seed) in (0..256).zip((1..=256u32).rev()) {
        let hash = murmur3::murmur3_32(&mut &key[..length], seed).unwrap();
        hashes.extend_from_slice(&hash.to_le_bytes());
    }
    assert_eq!(
        murmur3::murmur3_32(&mut &hashes[..], 0).unwrap(),
        0xb0f5_7ee3
    );
    assert_eq!(murmur3_x86_32(&hashes), 0xb0f5_7ee3);
}

/// (flag key, client, hash, bucket of 100, variant of the split {off: 80, on: 20}).
///
/// Computed independently with Python `mmh3` 5.3.1 and flagd's formula:
/// `h = mmh3.hash((key + client).encode("utf-8"), 0, signed=False)`, `b = (h * 100) >> 32`,
/// variant = "off" if b < 80 else "on" (variants in the split's sorted order: off, then on).
const GOLDEN: [(&str, &str, u32, u64, &str); 14] = [
    ("new-invoice-ui", "acme", 0xf7f8_6600, 96, "on"),
    ("new-invoice-ui", "globex", 0xffe4_5f64, 99, "on"),
    ("new-invoice-ui", "initech", 0x5e7b_5173, 36, "off"),
    ("new-invoice-ui", "umbrella", 0x5f04_9842, 37, "off"),
    ("new-invoice-ui", "hooli", 0xd950_bace, 84, "on"),
    ("new-invoice-ui", "stark-industries", 0xf645_cef4, 96, "on"),
    ("new-invoice-ui", "müller-gmbh", 0x6308_6635, 38, "off"),
    ("new-invoice-ui", "東京", 0x02af_3aff, 1, "off"),
    ("dark-mode", "acme", 0x4cee_8c09, 30, "off"),
    ("dark-mode", "globex", 0x28e6_eefb, 15, "off"),
    ("checkout-v2", "user-1", 0xdffb_f784, 87, "on"),
    ("checkout-v2", "user-2", 0x9ac4_5380, 60, "off"),
    ("checkout-v2", "user-3", 0x63f4_4b89, 39, "off"),
    ("checkout-v2", "user-4", 0x3ab9_418a, 22, "off"),
];

#[test]
fn golden_bucket_placements() {
    for (flag, client, hash, bucket_of_100, variant) in GOLDEN {
        assert_eq!(bucketing_hash(flag, client), hash, "{flag} {client}");
        assert_eq!(bucket(hash, 100), bucket_of_100, "{flag} {client}");
        let split = [("off", 80), ("on", 20)];
        assert_eq!(
            pick_variant(flag, client, &split),
            Some(variant),
            "{flag} {client}"
        );
    }
}

#[test]
fn golden_placements_through_evaluate() {
    let split = |flag: &str| -> FeatureToggleSpec {
        serde_json::from_value(json!({
            "application": "billing",
            "key": flag,
            "variants": {"on": true, "off": false},
            "defaultVariant": "off",
            "stages": {"demo": {"rules": [{"split": {"on": 20, "off": 80}}]}}
        }))
        .unwrap()
    };
    for (flag, client, _, _, variant) in GOLDEN {
        let context = EvaluationContext::default().attribute("clientId", client);
        let evaluation = evaluate(
            flag,
            &split(flag),
            "demo",
            &context,
            &ActiveCouplings::none(),
        )
        .unwrap();
        assert_eq!(evaluation.variant, variant, "{flag} {client}");
        assert_eq!(evaluation.reason, Reason::Split);
        assert_eq!(evaluation.value, json!(variant == "on"));
    }
}

/// Deterministic pseudo-random client ids (splitmix64), so failures reproduce.
fn random_clients(count: usize, seed: u64) -> Vec<String> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (0..count)
        .map(|_| format!("client-{:016x}", next()))
        .collect()
}

/// 100,000 random clients into 10 equal buckets: each within 4 standard deviations of
/// 10,000, and Pearson's chi-square (9 degrees of freedom) below its 0.999 quantile.
#[test]
fn buckets_are_uniform() {
    const CLIENTS: u32 = 100_000;
    const BUCKETS: u32 = 10;
    // chi-square quantile 0.999 for 9 degrees of freedom
    const CHI_SQUARE_999_DF9: f64 = 27.877;
    let mut counts = [0u32; BUCKETS as usize];
    for client in random_clients(CLIENTS as usize, 0x5eed) {
        let index = bucket(bucketing_hash("uniformity", &client), u64::from(BUCKETS));
        counts[usize::try_from(index).unwrap()] += 1;
    }
    let n = f64::from(CLIENTS);
    let p = 1.0 / f64::from(BUCKETS);
    let expected = n * p;
    let sigma = (n * p * (1.0 - p)).sqrt();
    for (index, &count) in counts.iter().enumerate() {
        let deviation = (f64::from(count) - expected).abs();
        assert!(
            deviation < 4.0 * sigma,
            "bucket {index}: {count} (expected {expected} ± {})",
            4.0 * sigma
        );
    }
    let chi_square: f64 = counts
        .iter()
        .map(|&count| (f64::from(count) - expected).powi(2) / expected)
        .sum();
    assert!(
        chi_square < CHI_SQUARE_999_DF9,
        "chi-square {chi_square} with counts {counts:?}"
    );
}

/// Two flags bucket the same clients independently: the phi coefficient of their 50/50
/// splits is within 4 standard errors of 0, and a 10x10 contingency chi-square (81 degrees of
/// freedom) stays below its 0.999 quantile.
#[test]
fn two_flags_bucket_independently() {
    const CLIENTS: u32 = 20_000;
    // chi-square quantile 0.999 for 81 degrees of freedom
    const CHI_SQUARE_999_DF81: f64 = 124.839;
    let clients = random_clients(CLIENTS as usize, 0xd1ce);
    let split = [("off", 50), ("on", 50)];
    let mut both = [[0u32; 2]; 2];
    let mut joint = [[0u32; 10]; 10];
    for client in &clients {
        let a = pick_variant("new-invoice-ui", client, &split) == Some("on");
        let b = pick_variant("dark-mode", client, &split) == Some("on");
        both[usize::from(a)][usize::from(b)] += 1;
        let i = bucket(bucketing_hash("new-invoice-ui", client), 10);
        let j = bucket(bucketing_hash("dark-mode", client), 10);
        joint[usize::try_from(i).unwrap()][usize::try_from(j).unwrap()] += 1;
    }
    let [[n00, n01], [n10, n11]] = both.map(|row| row.map(f64::from));
    let phi =
        (n11 * n00 - n10 * n01) / ((n10 + n11) * (n00 + n01) * (n01 + n11) * (n00 + n10)).sqrt();
    let standard_error = 1.0 / f64::from(CLIENTS).sqrt();
    assert!(
        phi.abs() < 4.0 * standard_error,
        "phi {phi}, table {both:?}"
    );

    let n = f64::from(CLIENTS);
    let rows: Vec<f64> = joint
        .iter()
        .map(|row| row.iter().map(|&c| f64::from(c)).sum())
        .collect();
    let columns: Vec<f64> = (0..10)
        .map(|j| joint.iter().map(|row| f64::from(row[j])).sum())
        .collect();
    let mut chi_square = 0.0;
    for (i, row) in joint.iter().enumerate() {
        for (j, &count) in row.iter().enumerate() {
            let expected = rows[i] * columns[j] / n;
            chi_square += (f64::from(count) - expected).powi(2) / expected;
        }
    }
    assert!(chi_square < CHI_SQUARE_999_DF81, "chi-square {chi_square}");
}

fn two_way_split(raised: &'static str, share: u32) -> Vec<(&'static str, u32)> {
    // Variants in the order a split map lists them (sorted): "off" before "on".
    ["off", "on"]
        .into_iter()
        .map(|variant| {
            (
                variant,
                if variant == raised {
                    share
                } else {
                    100 - share
                },
            )
        })
        .collect()
}

proptest! {
    /// Raising a variant's share of a two-variant split never moves a client who had that
    /// variant out of it, whichever of the two is raised.
    #[test]
    fn raising_a_share_keeps_its_clients(
        flag in "[a-z][a-z0-9-]{0,30}",
        client in "\\PC{1,40}",
        low in 0u32..=100,
        raise in 0u32..=100,
    ) {
        let high = (low + raise).min(100);
        for raised in ["off", "on"] {
            let before = pick_variant(&flag, &client, &two_way_split(raised, low));
            let after = pick_variant(&flag, &client, &two_way_split(raised, high));
            if before == Some(raised) {
                prop_assert_eq!(after, Some(raised));
            }
        }
    }

    /// The same through a FeatureToggle: raising `on` in `split` only ever adds clients.
    #[test]
    fn raising_a_toggles_share_only_adds_clients(low in 0i32..=100, raise in 0i32..=100) {
        let high = (low + raise).min(100);
        let toggle = |on: i32| -> FeatureToggleSpec {
            serde_json::from_value(json!({
                "application": "billing",
                "variants": {"on": true, "off": false},
                "defaultVariant": "off",
                "stages": {"demo": {"rules": [{"split": {"on": on, "off": 100 - on}}]}}
            }))
            .unwrap()
        };
        let (before, after) = (toggle(low), toggle(high));
        for client in random_clients(300, u64::try_from(low).unwrap()) {
            let context = EvaluationContext::with_targeting_key(client);
            let had = evaluate("sticky", &before, "demo", &context, &ActiveCouplings::none()).unwrap();
            let has = evaluate("sticky", &after, "demo", &context, &ActiveCouplings::none()).unwrap();
            if had.variant == "on" {
                prop_assert_eq!(has.variant, "on");
            }
        }
    }
}
