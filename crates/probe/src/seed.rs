//! Random number generators derived from the spec's seed and a purpose, so
//! that every split and every unit draws the same numbers whatever the
//! thread count or the order in which units run.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Returns a generator seeded with the BLAKE3 hash of `seed` and `parts`
/// (such as a purpose, a task name, a classifier and a layer).
#[must_use]
pub fn derived_rng(seed: u64, parts: &[&str]) -> ChaCha8Rng {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"ihs-probe");
    hasher.update(&seed.to_le_bytes());
    for part in parts {
        // The length prefix keeps ["ab", "c"] and ["a", "bc"] apart.
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    ChaCha8Rng::from_seed(*hasher.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use rand::RngCore;

    use super::derived_rng;

    #[test]
    fn same_parts_same_stream() {
        let mut a = derived_rng(42, &["split", "normal"]);
        let mut b = derived_rng(42, &["split", "normal"]);
        assert_eq!(a.next_u64(), b.next_u64());
    }

    #[test]
    fn parts_are_not_concatenated() {
        let mut a = derived_rng(42, &["ab", "c"]);
        let mut b = derived_rng(42, &["a", "bc"]);
        assert_ne!(a.next_u64(), b.next_u64());
    }

    #[test]
    fn seed_changes_stream() {
        let mut a = derived_rng(42, &["split"]);
        let mut b = derived_rng(43, &["split"]);
        assert_ne!(a.next_u64(), b.next_u64());
    }
}
