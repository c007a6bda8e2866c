//! What the property-based fuzz tests share: a deterministic proptest configuration.

use proptest::prelude::ProptestConfig;
use proptest::test_runner::{RngAlgorithm, RngSeed};

/// `cases` properties from a fixed `seed`, so CI runs are reproducible and never write failure
/// files; `PROPTEST_CASES` and `PROPTEST_RNG_SEED` override both for longer runs by hand.
pub(crate) fn proptest_config(cases: u32, seed: u64, max_shrink_iters: u32) -> ProptestConfig {
    // `ProptestConfig::default()` already reads PROPTEST_CASES and PROPTEST_RNG_SEED.
    let base = ProptestConfig::default();
    let env = |name| std::env::var_os(name).is_some();
    ProptestConfig {
        cases: if env("PROPTEST_CASES") {
            base.cases
        } else {
            cases
        },
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: if env("PROPTEST_RNG_SEED") {
            base.rng_seed
        } else {
            RngSeed::Fixed(seed)
        },
        failure_persistence: None,
        max_shrink_iters,
        ..base
    }
}
