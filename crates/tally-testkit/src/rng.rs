//! The one seeded RNG of the tests: a seed names a run exactly, so a failure can be replayed.

use rand::rngs::StdRng;
use rand::RngCore;

/// Draws over a source of random words: `rand`'s `StdRng` for the tests ([`Rng::new`]).
///
/// The draws are written on raw 64-bit words, not `rand`'s distributions, so that the
/// attribution benchmark can put its own SplitMix64 stream under them and keep generating
/// the log its printed ledger digest was taken on ([`Rng::with_source`]).
#[derive(Debug, Clone)]
pub struct Rng<S = StdRng>(S);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(rand::SeedableRng::seed_from_u64(seed))
    }
}

impl<S: RngCore> Rng<S> {
    pub fn with_source(source: S) -> Rng<S> {
        Rng(source)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (0 when `n` is 0). Multiply-shift rather than rejection: one word per
    /// draw keeps every stream in step, and the bias is far below what a test can see.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `per_mille / 1000`. At 0 it draws nothing, so a generator
    /// feature switched off leaves the rest of a stream (and a benchmark's digest) unchanged.
    pub fn per_mille(&mut self, per_mille: u64) -> bool {
        per_mille > 0 && self.below(1_000) < per_mille
    }

    /// In `0..n`, skewed towards 0 (the minimum of three uniform draws): a few big
    /// affiliates and popular sub IDs, a long tail of small ones.
    pub fn skewed(&mut self, n: u64) -> u64 {
        self.below(n).min(self.below(n)).min(self.below(n))
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// An index into `weights`, each chosen in proportion to its weight (one draw).
    pub fn weighted(&mut self, weights: &[u64]) -> usize {
        let mut r = self.below(weights.iter().sum());
        for (i, &w) in weights.iter().enumerate() {
            if r < w {
                return i;
            }
            r -= w;
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn a_seed_names_the_stream() {
        let draw = |seed| {
            let mut r = Rng::new(seed);
            (0..64).map(|_| r.below(1_000)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn draws_stay_in_range_and_weights_pick_in_proportion() {
        let mut r = Rng::new(1);
        let mut counts = [0u32; 3];
        for _ in 0..30_000 {
            assert!(r.below(10) < 10 && r.skewed(10) < 10);
            counts[r.weighted(&[1, 0, 2])] += 1;
        }
        assert_eq!(counts[1], 0);
        assert!((9_000..11_000).contains(&counts[0]) && (19_000..21_000).contains(&counts[2]), "{counts:?}");
        assert_eq!(r.below(0), 0);
        assert!(!r.per_mille(0));
    }
}
