//! The trainer's own random number generator: ChaCha8, seeded, its state saved in every
//! checkpoint (candle's CPU generator cannot be seeded or saved).

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

/// A seedable, saveable generator for initialisation, shuffling and dropout. The same seed
/// gives the same numbers on every platform.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainRng(ChaCha8Rng);

/// A [`TrainRng`]'s full state, as checkpoints store it (JSON numbers cannot hold a `u128`, so
/// the position is a decimal string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The 32-byte ChaCha key, hex.
    pub seed: String,
    /// The stream.
    pub stream: u64,
    /// Words consumed, decimal.
    pub word_pos: String,
}

impl TrainRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        TrainRng(ChaCha8Rng::seed_from_u64(seed))
    }

    /// A generator for `seed` on its own `stream` (independent of the others).
    pub fn with_stream(seed: u64, stream: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        TrainRng(rng)
    }

    /// Its state.
    pub fn state(&self) -> RngState {
        let seed: String = self
            .0
            .get_seed()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        RngState {
            seed,
            stream: self.0.get_stream(),
            word_pos: self.0.get_word_pos().to_string(),
        }
    }

    /// The generator in `state`.
    pub fn from_state(state: &RngState) -> Result<Self, String> {
        let bad = || format!("bad RNG state {state:?}");
        let hex = state.seed.as_bytes();
        // Bytes, not string slices: a seed of 64 bytes with multi-byte characters must be an
        // error, not a slice inside a character.
        if hex.len() != 64 || !hex.iter().all(u8::is_ascii_hexdigit) {
            return Err(bad());
        }
        let nibble = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
        let mut seed = [0u8; 32];
        for (byte, pair) in seed.iter_mut().zip(hex.chunks_exact(2)) {
            *byte = nibble(pair[0]) << 4 | nibble(pair[1]);
        }
        let word_pos: u128 = state.word_pos.parse().map_err(|_| bad())?;
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_stream(state.stream);
        rng.set_word_pos(word_pos);
        Ok(TrainRng(rng))
    }

    /// A value in `[0, 1)` with 24 random bits.
    pub fn next_f32(&mut self) -> f32 {
        (self.0.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// `n` values uniform in `[low, high)`.
    pub fn uniform(&mut self, n: usize, low: f32, high: f32) -> Vec<f32> {
        (0..n)
            .map(|_| low + (high - low) * self.next_f32())
            .collect()
    }

    /// 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A uniform integer below `bound` (unbiased).
    pub fn below(&mut self, bound: u64) -> u64 {
        below(&mut self.0, bound)
    }

    /// A random permutation of `0..n`.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        shuffle(&mut order, &mut self.0);
        order
    }
}

fn below<R: RngCore>(rng: &mut R, bound: u64) -> u64 {
    assert!(bound > 0, "below(0)");
    // Rejection sampling: accept only values below the largest multiple of `bound`.
    let zone = u64::MAX - (u64::MAX - bound + 1) % bound;
    loop {
        let v = rng.next_u64();
        if v <= zone {
            return v % bound;
        }
    }
}

/// Fisher-Yates shuffle.
pub(crate) fn shuffle<T, R: RngCore>(items: &mut [T], rng: &mut R) {
    for i in (1..items.len()).rev() {
        let j = below(rng, i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trip_continues_the_same_sequence() {
        let mut rng = TrainRng::with_stream(42, 3);
        rng.uniform(17, 0.0, 1.0);
        let state = rng.state();
        let json = serde_json::to_string(&state).unwrap();
        let mut back = TrainRng::from_state(&serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(rng.uniform(100, -1.0, 1.0), back.uniform(100, -1.0, 1.0));
        assert_eq!(rng.permutation(50), back.permutation(50));
    }

    #[test]
    fn same_seed_same_numbers_other_seed_other_numbers() {
        assert_eq!(
            TrainRng::new(1).permutation(20),
            TrainRng::new(1).permutation(20)
        );
        assert_ne!(
            TrainRng::new(1).permutation(20),
            TrainRng::new(2).permutation(20)
        );
        let mut p = TrainRng::new(9).permutation(1000);
        p.sort_unstable();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
    }

    /// Hardening issue #13: an RNG state from a checkpoint whose 64-byte seed holds
    /// multi-byte characters was sliced inside a character (a panic).
    #[test]
    fn rng_state_with_multibyte_seed_is_an_error() {
        let state = RngState {
            seed: format!("a{}", "é".repeat(31)) + "b",
            stream: 0,
            word_pos: "0".into(),
        };
        assert_eq!(state.seed.len(), 64);
        assert!(
            TrainRng::from_state(&state)
                .unwrap_err()
                .starts_with("bad RNG state")
        );
        let mut good = TrainRng::new(3).state();
        good.word_pos = "x".into();
        assert!(TrainRng::from_state(&good).is_err());
    }

    #[test]
    fn below_is_in_range_and_covers_it() {
        let mut rng = TrainRng::new(5);
        let mut seen = [0u32; 7];
        for _ in 0..7000 {
            seen[rng.below(7) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800), "{seen:?}");
    }
}
