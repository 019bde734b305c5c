//! The random generator behind sampling: xoshiro256** seeded through splitmix64.
//!
//! Chosen because it is fast, statistically sound for this use, and its whole state is four
//! words that a session can save and restore to continue exactly where it left off. It is not
//! cryptographic, and nothing here needs it to be.

/// xoshiro256** with its state in the open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    state: [u64; 4],
}

impl Rng {
    /// A generator whose state is the first four outputs of splitmix64 from `seed`, as the
    /// xoshiro authors recommend: nearby seeds give unrelated streams.
    pub fn new(seed: u64) -> Self {
        let mut splitmix_state = seed;
        Self {
            state: std::array::from_fn(|_| splitmix64(&mut splitmix_state)),
        }
    }

    /// Continues from a state saved with [`Rng::state`].
    ///
    /// The all-zero state is xoshiro's one fixed point (the generator would return 0 forever)
    /// and [`Rng::new`] never produces it; it can only come from a corrupted save, and is
    /// replaced by the state of `Rng::new(0)` so that sampling still works.
    pub fn from_state(state: [u64; 4]) -> Self {
        if state == [0; 4] {
            Self::new(0)
        } else {
            Self { state }
        }
    }

    /// The whole state: `Rng::from_state(rng.state())` continues the same sequence.
    pub fn state(&self) -> [u64; 4] {
        self.state
    }

    pub fn next_u64(&mut self) -> u64 {
        let [s0, s1, s2, s3] = &mut self.state;
        let result = s1.wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let shifted = *s1 << 17;
        *s2 ^= *s0;
        *s3 ^= *s1;
        *s1 ^= *s2;
        *s0 ^= *s3;
        *s2 ^= shifted;
        *s3 = s3.rotate_left(45);
        result
    }

    /// Uniform in [0, 1): the top 24 bits, which an `f32` represents exactly.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in [0, 1): the top 53 bits, which an `f64` represents exactly. The sampler draws
    /// with this so that even tokens of probability 1e-9 in a 262k vocabulary get their share.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeding_matches_the_splitmix64_reference_outputs() {
        assert_eq!(
            Rng::new(0).state(),
            [
                0xe220_a839_7b1d_cdaf,
                0x6e78_9e6a_a1b9_65f4,
                0x06c4_5d18_8009_454f,
                0xf88b_b8a8_724c_81ec
            ]
        );
    }

    #[test]
    fn outputs_match_the_xoshiro256starstar_reference() {
        let mut rng = Rng::from_state([1, 2, 3, 4]);
        let outputs: Vec<u64> = (0..4).map(|_| rng.next_u64()).collect();
        assert_eq!(
            outputs,
            [11520, 0, 1_509_978_240, 1_215_971_899_390_074_240]
        );
    }

    #[test]
    fn same_seed_same_stream_different_seed_different_stream() {
        let stream = |seed| {
            let mut rng = Rng::new(seed);
            (0..16).map(|_| rng.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(stream(42), stream(42));
        assert_ne!(stream(42), stream(43));
    }

    #[test]
    fn saved_state_continues_the_same_sequence() {
        let mut rng = Rng::new(7);
        for _ in 0..10 {
            rng.next_u64();
        }
        let mut resumed = Rng::from_state(rng.state());
        for _ in 0..100 {
            assert_eq!(rng.next_u64(), resumed.next_u64());
        }
    }

    #[test]
    fn the_all_zero_state_is_replaced_by_a_working_one() {
        let mut rng = Rng::from_state([0; 4]);
        assert_eq!(rng, Rng::new(0));
        assert_ne!(rng.next_u64(), 0);
    }

    #[test]
    fn floats_are_in_the_unit_interval_with_a_uniform_mean() {
        let mut rng = Rng::new(1);
        let n = 100_000;
        let (mut sum32, mut sum64) = (0.0f64, 0.0f64);
        for _ in 0..n {
            let (x32, x64) = (rng.next_f32(), rng.next_f64());
            assert!((0.0..1.0).contains(&x32) && (0.0..1.0).contains(&x64));
            sum32 += f64::from(x32);
            sum64 += x64;
        }
        // The mean of n uniforms has standard deviation 1/sqrt(12 n) ≈ 0.0009; allow 5 of them.
        for mean in [sum32 / n as f64, sum64 / n as f64] {
            assert!((mean - 0.5).abs() < 0.0046, "mean {mean}");
        }
    }
}
