//! Log-probabilities of tokens, for `logprobs` in responses and for scoring prompts.

use super::is_possible;
use super::select::{possible_candidates, select_best};

/// Writes the log-softmax of `logits` into `out` (cleared first), one entry per logit.
///
/// Stable for any magnitude: the largest logit is subtracted before exponentiating and the sum
/// is accumulated in `f64`. Impossible tokens (NaN or `-inf` logit) get `-inf`. If no token is
/// possible there is no distribution and every entry is NaN.
pub fn log_softmax(logits: &[f32], out: &mut Vec<f32>) {
    out.clear();
    match LogPartition::of(logits) {
        Some(partition) => out.extend(logits.iter().map(|&logit| partition.log_prob(logit))),
        None => out.resize(logits.len(), f32::NAN),
    }
}

/// The `k` most likely token ids with their log-probabilities (as [`log_softmax`] gives them),
/// sorted by log-probability, highest first, then by id. Tokens of probability zero are left
/// out, so fewer than `k` come back when fewer are possible.
///
/// One pass to select and one to normalise, O(k) memory: no sort of the whole vocabulary.
pub fn top_logprobs(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    if k == 0 {
        return Vec::new();
    }
    let Some(partition) = LogPartition::of(logits) else {
        return Vec::new();
    };
    let mut best = Vec::new();
    select_best(possible_candidates(logits, None), k, &mut best);
    let mut top: Vec<(u32, f32)> = best
        .iter()
        .map(|candidate| (candidate.id, partition.log_prob(candidate.logit)))
        .filter(|&(_, logprob)| logprob > f32::NEG_INFINITY)
        .collect();
    // Not by logit: two logits a rounding step apart can share a log-probability, and then the
    // lower id must come first.
    top.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    top
}

/// log Σ exp(logit) over the possible tokens, split as `max + log_sum` so that no
/// exponential overflows.
struct LogPartition {
    /// The largest possible logit.
    max: f32,
    /// log Σ exp(logit - max); when `max` is `+inf`, the log of how many tokens have it.
    log_sum: f64,
}

impl LogPartition {
    /// None when no token is possible.
    fn of(logits: &[f32]) -> Option<Self> {
        let mut possible = logits.iter().copied().filter(|&logit| is_possible(logit));
        let first = possible.next()?;
        let max = possible.fold(first, f32::max);
        let log_sum = if max == f32::INFINITY {
            (logits
                .iter()
                .filter(|&&logit| logit == f32::INFINITY)
                .count() as f64)
                .ln()
        } else {
            logits
                .iter()
                .filter(|&&logit| is_possible(logit))
                .map(|&logit| (f64::from(logit) - f64::from(max)).exp())
                .sum::<f64>()
                .ln()
        };
        Some(Self { max, log_sum })
    }

    fn log_prob(&self, logit: f32) -> f32 {
        if !is_possible(logit) {
            f32::NEG_INFINITY
        } else if self.max == f32::INFINITY {
            if logit == f32::INFINITY {
                -self.log_sum as f32
            } else {
                f32::NEG_INFINITY
            }
        } else {
            (f64::from(logit) - f64::from(self.max) - self.log_sum) as f32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Rng;

    fn random_logits(n: usize, seed: u64, spread: f32) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..n).map(|_| (rng.next_f32() - 0.5) * spread).collect()
    }

    fn probability_sum(logprobs: &[f32]) -> f64 {
        logprobs.iter().map(|&lp| f64::from(lp).exp()).sum()
    }

    #[test]
    fn log_softmax_sums_to_one_in_probability() {
        let mut out = Vec::new();
        // Gemma's vocabulary; under Miri (an interpreter) a few thousand stand for it.
        let large = if cfg!(miri) { 2_048 } else { 262_144 };
        for (n, spread) in [(10, 4.0), (1000, 40.0), (large, 30.0)] {
            let logits = random_logits(n, n as u64, spread);
            log_softmax(&logits, &mut out);
            assert_eq!(out.len(), n);
            let total = probability_sum(&out);
            assert!((total - 1.0).abs() < 1e-5, "n {n}: total {total}");
        }
    }

    #[test]
    fn log_softmax_is_stable_for_huge_logits_and_exact_on_known_values() {
        let mut out = Vec::new();
        log_softmax(&[1000.0, 1000.0, -1000.0], &mut out);
        let half = -std::f32::consts::LN_2;
        assert!(
            (out[0] - half).abs() < 1e-6 && (out[1] - half).abs() < 1e-6,
            "{out:?}"
        );
        assert!(out[2] < -1999.0);
        let probabilities = [0.5f32, 0.25, 0.125, 0.125];
        let logits: Vec<f32> = probabilities.iter().map(|p| p.ln() + 3.0).collect();
        log_softmax(&logits, &mut out);
        for (lp, p) in out.iter().zip(probabilities) {
            assert!((lp - p.ln()).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn impossible_tokens_get_minus_infinity_and_infinite_logits_share_the_mass() {
        let mut out = Vec::new();
        log_softmax(&[0.0, f32::NAN, f32::NEG_INFINITY, 0.0], &mut out);
        assert_eq!(
            out,
            [
                -std::f32::consts::LN_2,
                f32::NEG_INFINITY,
                f32::NEG_INFINITY,
                -std::f32::consts::LN_2
            ]
        );
        let logits = [f32::INFINITY, 5.0, f32::INFINITY, f32::NAN];
        assert_eq!(
            top_logprobs(&logits, 4),
            [(0, -std::f32::consts::LN_2), (2, -std::f32::consts::LN_2)]
        );
        log_softmax(&logits, &mut out);
        assert_eq!(
            out,
            [
                -std::f32::consts::LN_2,
                f32::NEG_INFINITY,
                -std::f32::consts::LN_2,
                f32::NEG_INFINITY
            ]
        );
    }

    #[test]
    fn without_a_possible_token_there_is_no_distribution() {
        let mut out = vec![1.0];
        log_softmax(&[f32::NAN, f32::NEG_INFINITY], &mut out);
        assert!(out.len() == 2 && out.iter().all(|lp| lp.is_nan()));
        log_softmax(&[], &mut out);
        assert!(out.is_empty());
        assert!(top_logprobs(&[f32::NAN], 3).is_empty());
        assert!(top_logprobs(&[], 3).is_empty());
    }

    #[test]
    fn top_logprobs_orders_by_logprob_then_id() {
        let logits = [1.0, 3.0, 2.0, 3.0, f32::NEG_INFINITY, f32::NAN, 2.0];
        let mut all = Vec::new();
        log_softmax(&logits, &mut all);
        let top = top_logprobs(&logits, 4);
        assert_eq!(top, [(1, all[1]), (3, all[3]), (2, all[2]), (6, all[6])]);
        // More than there are possible tokens: the impossible ones stay out.
        let ids: Vec<u32> = top_logprobs(&logits, 100)
            .iter()
            .map(|&(id, _)| id)
            .collect();
        assert_eq!(ids, [1, 3, 2, 6, 0]);
        assert!(top_logprobs(&logits, 0).is_empty());
    }

    #[test]
    fn top_logprobs_agrees_with_a_full_sort_on_a_large_vocabulary() {
        // Coarse logits so that many ties fall across the cut.
        let n = if cfg!(miri) { 2_000 } else { 50_000 };
        let logits: Vec<f32> = random_logits(n, 3, 20.0)
            .iter()
            .map(|l| l.round())
            .collect();
        let mut all = Vec::new();
        log_softmax(&logits, &mut all);
        let mut expected: Vec<(u32, f32)> = (0u32..).zip(all.iter().copied()).collect();
        expected.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for k in [1, 7, 20, 500] {
            assert_eq!(top_logprobs(&logits, k), expected[..k]);
        }
    }
}
