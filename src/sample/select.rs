//! Finding the best few tokens of a large vocabulary in one pass, for top-k sampling and for
//! `top_logprobs`.

use std::cmp::Ordering;

use super::is_possible;

/// A token still in the running, with its logit (never NaN).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Candidate {
    pub id: u32,
    pub logit: f32,
}

/// The order candidates are ranked in: the larger logit first, then the lower id, so that every
/// selection is fully determined even with ties. Sorting with it puts the best first.
pub(super) fn best_first(a: &Candidate, b: &Candidate) -> Ordering {
    // Candidates never hold NaN, so the comparison always succeeds; +0 and -0 compare equal, as
    // in greedy sampling, so that top-k = 1 picks what greedy picks.
    b.logit
        .partial_cmp(&a.logit)
        .unwrap_or(Ordering::Equal)
        .then(a.id.cmp(&b.id))
}

/// The possible tokens (not NaN, not `-inf`) that `allowed` permits, or all possible tokens
/// without a mask, in id order.
pub(super) fn possible_candidates<'a>(
    logits: &'a [f32],
    allowed: Option<&'a super::TokenMask>,
) -> impl Iterator<Item = Candidate> + 'a {
    (0u32..)
        .zip(logits.iter().copied())
        .filter(move |&(id, logit)| {
            is_possible(logit) && allowed.is_none_or(|mask| mask.is_allowed(id))
        })
        .map(|(id, logit)| Candidate { id, logit })
}

/// Replaces the contents of `best` with the `k` best of `candidates` (by [`best_first`]), in no
/// particular order; all of them when there are no more than `k`. `k` must be > 0.
///
/// Linear time with a small constant: most candidates cost one comparison against the worst
/// of the best found so far. Those that reach it are buffered, and the buffer is cut back to `k`
/// with a linear-time selection whenever it reaches `2k`, so the memory is O(k).
pub(super) fn select_best(
    candidates: impl IntoIterator<Item = Candidate>,
    k: usize,
    best: &mut Vec<Candidate>,
) {
    best.clear();
    // The logit a candidate must reach to enter: -inf at first, then that of the k-th best so
    // far. A tie with it enters, because a lower id wins the tie; the cut settles it.
    let mut entry_bar = f32::NEG_INFINITY;
    for candidate in candidates {
        if candidate.logit >= entry_bar {
            best.push(candidate);
            if best.len() == k.saturating_mul(2) {
                keep_best(best, k);
                entry_bar = best[k - 1].logit;
            }
        }
    }
    keep_best(best, k);
}

/// Cuts `candidates` to its `k` best, the k-th best last.
fn keep_best(candidates: &mut Vec<Candidate>, k: usize) {
    if k < candidates.len() {
        candidates.select_nth_unstable_by(k - 1, best_first);
        candidates.truncate(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{Rng, TokenMask};

    /// The reference: every qualifying token, fully sorted, cut to k.
    fn sorted_best(logits: &[f32], k: usize, allowed: Option<&TokenMask>) -> Vec<Candidate> {
        let mut all: Vec<Candidate> = possible_candidates(logits, allowed).collect();
        all.sort_by(best_first);
        all.truncate(k);
        all
    }

    #[test]
    fn selects_what_a_full_sort_selects_including_ties_at_the_cut() {
        let mut rng = Rng::new(12);
        // Few distinct values, so that many ties straddle the k-th place.
        let n = if cfg!(miri) { 3_000 } else { 30_000 };
        let logits: Vec<f32> = (0..n).map(|_| (rng.next_f32() * 50.0).floor()).collect();
        let mut best = Vec::new();
        let mut even_ids = TokenMask::new(logits.len());
        for id in (0..logits.len() as u32).step_by(2) {
            even_ids.allow(id);
        }
        for k in [1, 2, 40, 1000, n - 1, n, n + 10_000] {
            for allowed in [None, Some(&even_ids)] {
                select_best(possible_candidates(&logits, allowed), k, &mut best);
                best.sort_by(best_first);
                assert_eq!(
                    best,
                    sorted_best(&logits, k, allowed),
                    "k {k}, mask {}",
                    allowed.is_some()
                );
            }
        }
    }

    #[test]
    fn ties_go_to_the_lower_id_whatever_the_input_order() {
        let sorted_ids = |candidates: &[Candidate]| {
            let mut ids: Vec<u32> = candidates.iter().map(|candidate| candidate.id).collect();
            ids.sort_unstable();
            ids
        };
        let equal: Vec<Candidate> = (0..100)
            .rev()
            .map(|id| Candidate { id, logit: 1.0 })
            .collect();
        let mut best = Vec::new();
        select_best(equal.iter().copied(), 3, &mut best);
        assert_eq!(sorted_ids(&best), [0, 1, 2]);
    }

    #[test]
    fn impossible_tokens_are_never_selected() {
        let logits = [f32::NAN, f32::NEG_INFINITY, 1.0, f32::INFINITY, -0.0, 0.0];
        let mut best = Vec::new();
        select_best(possible_candidates(&logits, None), 10, &mut best);
        best.sort_by(best_first);
        let ids: Vec<u32> = best.iter().map(|candidate| candidate.id).collect();
        assert_eq!(ids, [3, 2, 4, 5]);
    }
}
