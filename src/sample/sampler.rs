//! The sampler chain, in llama.cpp's order: penalties → top-k → top-p → min-p → temperature →
//! a draw from the remaining distribution. Temperature 0 replaces everything after the
//! penalties with the argmax.
//!
//! Built for vocabularies of 262,144 tokens: top-k reads the logits once without building a
//! candidate list, nothing sorts more than a few dozen tokens, and the buffers are kept between
//! calls so that sampling does not allocate once they have grown.

use super::select::{Candidate, best_first, possible_candidates, select_best};
use super::{Rng, SampleError, SamplingParams, TokenMask, is_possible};

/// Chooses tokens from logits, with its own random state. One per generation stream.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    candidates: Candidates,
    /// The penalty window, sorted so that each token's occurrences are adjacent.
    sorted_window: Vec<u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self, SampleError> {
        params.validate()?;
        let rng = Rng::new(params.seed);
        Ok(Self {
            params,
            rng,
            candidates: Candidates::default(),
            sorted_window: Vec::new(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Chooses the next token.
    ///
    /// `recent` holds the previous tokens (prompt and generated so far); the penalties look at
    /// its last `repeat_last_n`, which must be vocabulary ids. `allowed`, when given, covers
    /// one token per logit and only the tokens it allows can be chosen, in every mode.
    ///
    /// The penalties are applied to `logits` in place (they are what greedy takes the argmax
    /// of); nothing else is written there. A non-greedy call consumes exactly one random number,
    /// a greedy one none.
    pub fn sample(
        &mut self,
        logits: &mut [f32],
        recent: &[u32],
        allowed: Option<&TokenMask>,
    ) -> Result<u32, SampleError> {
        if logits.is_empty() {
            return Err(SampleError::EmptyLogits);
        }
        if let Some(mask) = allowed
            && mask.len() != logits.len()
        {
            return Err(SampleError::MaskLengthMismatch {
                mask_len: mask.len(),
                vocab_size: logits.len(),
            });
        }
        self.apply_penalties(logits, recent)?;
        if self.params.temperature == 0.0 {
            return argmax(logits, allowed);
        }
        self.narrow_candidates(logits, allowed)?;
        Ok(self.candidates.draw(self.params.temperature, &mut self.rng))
    }

    /// The random state, to save with a session: restoring it with
    /// [`Sampler::set_rng_state`] continues the same sequence of draws.
    pub fn rng_state(&self) -> [u64; 4] {
        self.rng.state()
    }

    pub fn set_rng_state(&mut self, state: [u64; 4]) {
        self.rng = Rng::from_state(state);
    }

    /// Repeat, frequency and presence penalties on the tokens of the window, as llama.cpp
    /// applies them: the repeat penalty once per distinct token, then
    /// `count * frequency_penalty + presence_penalty` subtracted.
    fn apply_penalties(&mut self, logits: &mut [f32], recent: &[u32]) -> Result<(), SampleError> {
        let params = &self.params;
        let any_penalty = params.repeat_penalty != 1.0
            || params.frequency_penalty != 0.0
            || params.presence_penalty != 0.0;
        if params.repeat_last_n == 0 || !any_penalty {
            return Ok(());
        }
        let window = &recent[recent.len().saturating_sub(params.repeat_last_n)..];
        self.sorted_window.clear();
        self.sorted_window.extend_from_slice(window);
        self.sorted_window.sort_unstable();
        // Checked before any logit changes, so that an error leaves the logits as they were.
        if let Some(&largest) = self.sorted_window.last()
            && largest as usize >= logits.len()
        {
            return Err(SampleError::TokenOutOfRange {
                token: largest,
                vocab_size: logits.len(),
            });
        }
        for occurrences in self.sorted_window.chunk_by(|a, b| a == b) {
            let logit = &mut logits[occurrences[0] as usize];
            // Dividing a negative logit would make the token more likely, hence the multiplication.
            if *logit <= 0.0 {
                *logit *= params.repeat_penalty;
            } else {
                *logit /= params.repeat_penalty;
            }
            *logit -= occurrences.len() as f32 * params.frequency_penalty + params.presence_penalty;
        }
        Ok(())
    }

    /// Leaves in `self.candidates` the tokens that survive top-k, top-p and min-p.
    fn narrow_candidates(
        &mut self,
        logits: &[f32],
        allowed: Option<&TokenMask>,
    ) -> Result<(), SampleError> {
        let candidates = &mut self.candidates;
        candidates.refill(logits, allowed, self.params.top_k as usize);
        if candidates.tokens.is_empty() {
            return Err(SampleError::NothingToSample);
        }
        if self.params.top_p < 1.0 {
            candidates.keep_top_p(self.params.top_p);
        }
        if self.params.min_p > 0.0 {
            candidates.keep_min_p(self.params.min_p);
        }
        Ok(())
    }
}

/// The possible, allowed token with the largest logit; the lowest id on an exact tie.
fn argmax(logits: &[f32], allowed: Option<&TokenMask>) -> Result<u32, SampleError> {
    let mut best: Option<(u32, f32)> = None;
    for (id, &logit) in (0u32..).zip(logits) {
        let permitted = allowed.is_none_or(|mask| mask.is_allowed(id));
        // Strictly greater, so that the first (lowest) id keeps a tie.
        if permitted && is_possible(logit) && best.is_none_or(|(_, best_logit)| logit > best_logit)
        {
            best = Some((id, logit));
        }
    }
    best.map(|(id, _)| id).ok_or(SampleError::NothingToSample)
}

/// The tokens still in the running, in no particular order, in buffers reused between calls.
#[derive(Debug, Clone, Default)]
struct Candidates {
    tokens: Vec<Candidate>,
    /// Where top-p gathers its first guess.
    guess: Vec<Candidate>,
}

/// How many of the best candidates top-p tries first, and how few undecided candidates it
/// sorts rather than halving further.
const TOP_P_FEW: usize = 64;

impl Candidates {
    /// Starts over with the possible, allowed tokens: the best `top_k` of them, or all when
    /// `top_k` is 0. When some logits are `+inf`, those tokens alone remain, with equal chances.
    fn refill(&mut self, logits: &[f32], allowed: Option<&TokenMask>, top_k: usize) {
        let possible = possible_candidates(logits, allowed);
        if top_k == 0 || top_k >= logits.len() {
            self.tokens.clear();
            self.tokens.extend(possible);
        } else {
            select_best(possible, top_k, &mut self.tokens);
        }
        if self
            .tokens
            .iter()
            .any(|candidate| candidate.logit == f32::INFINITY)
        {
            self.tokens
                .retain(|candidate| candidate.logit == f32::INFINITY);
            for candidate in &mut self.tokens {
                candidate.logit = 0.0;
            }
        }
    }

    fn max_logit(&self) -> f32 {
        self.tokens
            .iter()
            .map(|candidate| candidate.logit)
            .fold(f32::NEG_INFINITY, f32::max)
    }

    /// Keeps the smallest set of best candidates whose probabilities (at temperature 1, over
    /// the current candidates) add up to at least `top_p`; at least one.
    fn keep_top_p(&mut self, top_p: f32) {
        let max = self.max_logit();
        let weight = |candidate: &Candidate| relative_weight(candidate.logit, max, 1.0);
        let total: f64 = self.tokens.iter().map(weight).sum();
        let mut still_needed = f64::from(top_p) * total;
        if self.tokens.len() > TOP_P_FEW {
            // A language model usually puts nearly all the probability on a few tokens: when
            // the best few are enough, one cheap pass finds them.
            select_best(self.tokens.iter().copied(), TOP_P_FEW, &mut self.guess);
            if self.guess.iter().map(weight).sum::<f64>() >= still_needed {
                std::mem::swap(&mut self.tokens, &mut self.guess);
            }
        }
        // When the guess fell short, rather than sorting everything, halve the undecided range
        // with linear-time selections: when the better half holds enough probability the answer
        // lies within it; if not, the whole better half is kept and the answer lies in the worse
        // half. `tokens[..kept]` are kept for sure; the last one to keep is in
        // `tokens[kept..end]`. Few tokens remain after a good guess, and this loop does nothing.
        let (mut kept, mut end) = (0, self.tokens.len());
        while end - kept > TOP_P_FEW {
            let undecided = &mut self.tokens[kept..end];
            let half = undecided.len() / 2;
            undecided.select_nth_unstable_by(half, best_first);
            let better_half: f64 = undecided[..half].iter().map(weight).sum();
            if better_half >= still_needed {
                end = kept + half;
            } else {
                still_needed -= better_half;
                kept += half;
            }
        }
        let undecided = &mut self.tokens[kept..end];
        undecided.sort_unstable_by(best_first);
        for candidate in undecided.iter() {
            kept += 1;
            still_needed -= weight(candidate);
            if still_needed <= 0.0 {
                break;
            }
        }
        self.tokens.truncate(kept);
    }

    /// Drops the candidates whose probability is below `min_p` times the largest one, that is
    /// whose logit is below `max + ln(min_p)`. The best candidate always stays.
    fn keep_min_p(&mut self, min_p: f32) {
        let floor = f64::from(self.max_logit()) + f64::from(min_p).ln();
        self.tokens
            .retain(|candidate| f64::from(candidate.logit) >= floor);
    }

    /// Draws one candidate with probability ∝ exp(logit / temperature).
    fn draw(&self, temperature: f32, rng: &mut Rng) -> u32 {
        let max = self.max_logit();
        let weight = |candidate: &Candidate| relative_weight(candidate.logit, max, temperature);
        let total: f64 = self.tokens.iter().map(weight).sum();
        let target = rng.next_f64() * total;
        let mut cumulative = 0.0;
        // `target < total` in exact arithmetic, but the product can round up to `total`; the
        // last token with any weight is then the right answer. The best candidate has weight 1,
        // so this is always overwritten before the loop ends.
        let mut last_weighted = self.tokens[0].id;
        for candidate in &self.tokens {
            let weight = weight(candidate);
            if weight > 0.0 {
                last_weighted = candidate.id;
            }
            cumulative += weight;
            if target < cumulative {
                return candidate.id;
            }
        }
        last_weighted
    }
}

/// exp((logit - max) / temperature): the unnormalised probability, at most 1, in `f64` so that
/// sums over a large vocabulary keep their precision.
fn relative_weight(logit: f32, max: f32, temperature: f32) -> f64 {
    ((f64::from(logit) - f64::from(max)) / f64::from(temperature)).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: u32, top_p: f32, min_p: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            ..SamplingParams::default()
        }
    }

    fn mask_of(bits: &[bool]) -> TokenMask {
        let mut mask = TokenMask::new(bits.len());
        for (id, _) in (0u32..).zip(bits).filter(|(_, allowed)| **allowed) {
            mask.allow(id);
        }
        mask
    }

    fn sampler(params: SamplingParams) -> Sampler {
        Sampler::new(params).unwrap()
    }

    fn greedy() -> Sampler {
        sampler(params(0.0, 40, 0.95, 0.05))
    }

    /// Only the draw: every filter off.
    fn pure(temperature: f32, seed: u64) -> Sampler {
        sampler(SamplingParams {
            seed,
            ..params(temperature, 0, 1.0, 0.0)
        })
    }

    fn random_logits(n: usize, seed: u64, spread: f32) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..n).map(|_| (rng.next_f32() - 0.5) * spread).collect()
    }

    /// The logits whose softmax is `probabilities`.
    fn logits_of(probabilities: &[f64]) -> Vec<f32> {
        probabilities.iter().map(|p| p.ln() as f32).collect()
    }

    /// The ids that survive the filters, in id order.
    fn survivors(sampler: &mut Sampler, logits: &[f32]) -> Vec<u32> {
        sampler.narrow_candidates(logits, None).unwrap();
        let mut ids: Vec<u32> = sampler
            .candidates
            .tokens
            .iter()
            .map(|candidate| candidate.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Draws for the frequency tests: enough for a chi-square test either way, fewer under
    /// Miri (an interpreter).
    const DRAWS: usize = if cfg!(miri) { 600 } else { 20_000 };

    fn draws(sampler: &mut Sampler, logits: &[f32], n: usize) -> Vec<u32> {
        (0..n)
            .map(|_| sampler.sample(&mut logits.to_vec(), &[], None).unwrap())
            .collect()
    }

    #[test]
    fn greedy_picks_the_argmax_and_the_lowest_id_on_ties() {
        let mut greedy = greedy();
        assert_eq!(greedy.sample(&mut [0.5, 2.0, -1.0, 2.0], &[], None), Ok(1));
        assert_eq!(greedy.sample(&mut [-3.0, -1.0, -2.0], &[], None), Ok(1));
        assert_eq!(greedy.sample(&mut [0.0, -0.0, -1.0], &[], None), Ok(0));
        assert_eq!(greedy.sample(&mut [-0.0, 0.0, -1.0], &[], None), Ok(0));
        assert_eq!(
            greedy.sample(&mut [f32::NAN, 1.0, f32::NAN], &[], None),
            Ok(1)
        );
        assert_eq!(
            greedy.sample(&mut [1.0, f32::INFINITY, f32::INFINITY], &[], None),
            Ok(1)
        );
    }

    #[test]
    fn greedy_respects_the_mask() {
        let mut greedy = greedy();
        let logits = [5.0, 1.0, 3.0, 3.0];
        assert_eq!(
            greedy.sample(
                &mut logits.clone(),
                &[],
                Some(&mask_of(&[false, true, true, true]))
            ),
            Ok(2)
        );
        assert_eq!(
            greedy.sample(
                &mut logits.clone(),
                &[],
                Some(&mask_of(&[false, true, false, false]))
            ),
            Ok(1)
        );
        assert_eq!(
            greedy.sample(&mut logits.clone(), &[], Some(&mask_of(&[false; 4]))),
            Err(SampleError::NothingToSample)
        );
    }

    #[test]
    fn sampling_never_chooses_a_disallowed_token() {
        let logits = [3.0, 2.9, 0.0, 2.8, -1.0];
        let mask = [false, true, true, false, true];
        let mut sampler = pure(1.0, 5);
        let mut seen = [false; 5];
        for _ in 0..2000 {
            seen[sampler
                .sample(&mut logits.clone(), &[], Some(&mask_of(&mask)))
                .unwrap() as usize] = true;
        }
        assert_eq!(seen, mask);
    }

    #[test]
    fn unsampleable_input_is_an_error_not_a_token() {
        let mut sampler = sampler(SamplingParams::default());
        assert_eq!(
            sampler.sample(&mut [], &[], None),
            Err(SampleError::EmptyLogits)
        );
        assert_eq!(
            sampler.sample(&mut [f32::NAN; 3], &[], None),
            Err(SampleError::NothingToSample)
        );
        assert_eq!(
            sampler.sample(&mut [f32::NEG_INFINITY; 3], &[], None),
            Err(SampleError::NothingToSample)
        );
        assert_eq!(
            sampler.sample(&mut [1.0, 2.0], &[], Some(&mask_of(&[false, false]))),
            Err(SampleError::NothingToSample)
        );
        assert_eq!(
            sampler.sample(&mut [1.0, 2.0], &[], Some(&mask_of(&[true]))),
            Err(SampleError::MaskLengthMismatch {
                mask_len: 1,
                vocab_size: 2
            })
        );
        assert_eq!(
            greedy().sample(&mut [f32::NAN; 3], &[], None),
            Err(SampleError::NothingToSample)
        );
    }

    #[test]
    fn nan_and_minus_infinity_are_never_drawn_and_plus_infinity_always_is() {
        let mut sampler = pure(1.0, 11);
        let drawn = draws(&mut sampler, &[f32::NAN, 0.0, f32::NEG_INFINITY, 0.1], 500);
        assert!(drawn.iter().all(|&id| id == 1 || id == 3));
        let drawn = draws(&mut sampler, &[5.0, f32::INFINITY, 9.0, f32::INFINITY], 500);
        assert!(
            drawn.contains(&1) && drawn.contains(&3) && drawn.iter().all(|&id| id == 1 || id == 3)
        );
    }

    /// The logits after the penalties of `params`, with greedy sampling so that nothing else runs.
    fn penalised(penalties: SamplingParams, logits: &[f32], recent: &[u32]) -> Vec<f32> {
        let mut sampler = sampler(SamplingParams {
            temperature: 0.0,
            ..penalties
        });
        let mut logits = logits.to_vec();
        sampler.sample(&mut logits, recent, None).unwrap();
        logits
    }

    #[test]
    fn repeat_penalty_divides_positive_and_multiplies_negative_logits_once_per_token() {
        let repeat = SamplingParams {
            repeat_penalty: 2.0,
            ..SamplingParams::default()
        };
        let logits = [2.0, -2.0, 1.0, 0.5, 0.0];
        assert_eq!(
            penalised(repeat, &logits, &[0, 1, 0, 0, 4]),
            [1.0, -4.0, 1.0, 0.5, 0.0]
        );
    }

    #[test]
    fn frequency_penalty_subtracts_per_occurrence() {
        let frequency = SamplingParams {
            frequency_penalty: 0.5,
            ..SamplingParams::default()
        };
        let logits = [2.0, -2.0, 1.0, 0.5];
        assert_eq!(
            penalised(frequency, &logits, &[0, 2, 0, 0]),
            [0.5, -2.0, 0.5, 0.5]
        );
    }

    #[test]
    fn presence_penalty_subtracts_once_per_token() {
        let presence = SamplingParams {
            presence_penalty: 0.25,
            ..SamplingParams::default()
        };
        let logits = [2.0, -2.0, 1.0, 0.5];
        assert_eq!(
            penalised(presence, &logits, &[0, 2, 0, 0]),
            [1.75, -2.0, 0.75, 0.5]
        );
    }

    #[test]
    fn penalties_combine_repeat_first_and_see_only_the_window() {
        let all = SamplingParams {
            repeat_penalty: 2.0,
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            repeat_last_n: 3,
            ..SamplingParams::default()
        };
        // Token 3 and the first 0 fall outside the last three tokens.
        let logits = [2.0, -2.0, 1.0, 0.5];
        assert_eq!(
            penalised(all.clone(), &logits, &[3, 0, 1, 0, 0]),
            [2.0 / 2.0 - 1.0 - 0.25, -4.0 - 0.75, 1.0, 0.5]
        );
        let off = SamplingParams {
            repeat_last_n: 0,
            ..all
        };
        assert_eq!(penalised(off, &logits, &[3, 0, 1, 0, 0]), logits);
    }

    #[test]
    fn penalties_can_change_the_greedy_choice() {
        let mut sampler = sampler(SamplingParams {
            temperature: 0.0,
            presence_penalty: 1.0,
            ..SamplingParams::default()
        });
        assert_eq!(sampler.sample(&mut [2.0, 1.5, 0.0], &[0], None), Ok(1));
    }

    #[test]
    fn a_recent_token_outside_the_vocabulary_is_an_error_and_leaves_the_logits() {
        let mut sampler = sampler(SamplingParams {
            repeat_penalty: 1.5,
            ..SamplingParams::default()
        });
        let mut logits = [1.0, 2.0];
        let result = sampler.sample(&mut logits, &[0, 7], None);
        assert_eq!(
            result,
            Err(SampleError::TokenOutOfRange {
                token: 7,
                vocab_size: 2
            })
        );
        assert_eq!(logits, [1.0, 2.0]);
        // Without a penalty the window is not read, so nothing can be wrong with it.
        assert!(greedy().sample(&mut logits, &[0, 7], None).is_ok());
    }

    #[test]
    fn top_k_one_is_greedy() {
        for seed in 0..50 {
            // Rounded logits have many exact ties, which must be broken the same way.
            let logits: Vec<f32> = random_logits(300, seed, 10.0)
                .iter()
                .map(|l| l.round())
                .collect();
            let expected = greedy().sample(&mut logits.clone(), &[], None);
            let mut top_1 = sampler(SamplingParams {
                seed,
                ..params(1.5, 1, 0.95, 0.05)
            });
            assert_eq!(top_1.sample(&mut logits.clone(), &[], None), expected);
        }
    }

    #[test]
    fn top_k_keeps_the_k_best_with_ties_broken_by_id() {
        let logits = [1.0, 3.0, 2.0, 3.0, 2.0, 0.0];
        assert_eq!(
            survivors(&mut sampler(params(1.0, 3, 1.0, 0.0)), &logits),
            [1, 2, 3]
        );
        assert_eq!(
            survivors(&mut sampler(params(1.0, 100, 1.0, 0.0)), &logits),
            [0, 1, 2, 3, 4, 5]
        );
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        let logits = logits_of(&[0.5, 0.25, 0.15, 0.1]);
        for (top_p, expected) in [
            (0.4, &[0][..]),
            (0.7, &[0, 1]),
            (0.8, &[0, 1, 2]),
            (0.95, &[0, 1, 2, 3]),
            (1.0, &[0, 1, 2, 3]),
        ] {
            assert_eq!(
                survivors(&mut sampler(params(1.0, 0, top_p, 0.0)), &logits),
                expected,
                "top_p {top_p}"
            );
        }
        // The order of the vocabulary does not matter.
        let shuffled = logits_of(&[0.1, 0.25, 0.5, 0.15]);
        assert_eq!(
            survivors(&mut sampler(params(1.0, 0, 0.7, 0.0)), &shuffled),
            [1, 2]
        );
    }

    #[test]
    fn top_p_works_on_the_probabilities_left_by_top_k() {
        // After top-k = 2 the probabilities are 2/3 and 1/3.
        let logits = logits_of(&[0.5, 0.25, 0.15, 0.1]);
        assert_eq!(
            survivors(&mut sampler(params(1.0, 2, 0.6, 0.0)), &logits),
            [0]
        );
        assert_eq!(
            survivors(&mut sampler(params(1.0, 2, 0.7, 0.0)), &logits),
            [0, 1]
        );
    }

    #[test]
    fn top_p_on_a_large_vocabulary_matches_a_full_sort() {
        // Flat: hundreds of tokens are needed, found by halving. Peaked: a handful of boosted
        // tokens hold nearly all the probability, found by the first guess.
        for (seed, top_p, boosted) in [
            (1, 0.5, 0),
            (2, 0.9, 0),
            (3, 0.99, 0),
            (4, 0.9, 10),
            (5, 0.99, 30),
        ] {
            let n = if cfg!(miri) { 4_000 } else { 20_000 };
            let mut logits = random_logits(n, seed, 16.0);
            for id in 0..boosted {
                logits[id * (n / 32)] += 12.0;
            }
            let mut order: Vec<u32> = (0..logits.len() as u32).collect();
            order.sort_by(|&a, &b| {
                logits[b as usize]
                    .total_cmp(&logits[a as usize])
                    .then(a.cmp(&b))
            });
            let max = f64::from(logits[order[0] as usize]);
            let weights: Vec<f64> = order
                .iter()
                .map(|&id| (f64::from(logits[id as usize]) - max).exp())
                .collect();
            let target = f64::from(top_p) * weights.iter().sum::<f64>();
            let mut cumulative = 0.0;
            let last_kept = weights.iter().position(|w| {
                cumulative += w;
                cumulative >= target
            });
            let mut expected = order[..=last_kept.unwrap()].to_vec();
            expected.sort_unstable();
            let kept = survivors(&mut sampler(params(1.0, 0, top_p, 0.0)), &logits);
            assert_eq!(kept, expected, "top_p {top_p}, {boosted} boosted");
            assert_eq!(
                boosted > 0,
                kept.len() <= TOP_P_FEW,
                "top_p {top_p}: {} kept",
                kept.len()
            );
        }
    }

    #[test]
    fn min_p_drops_tokens_below_a_fraction_of_the_best() {
        let logits = logits_of(&[0.5, 0.25, 0.15, 0.1]);
        for (min_p, expected) in [
            (0.6, &[0][..]),
            (0.45, &[0, 1]),
            (0.25, &[0, 1, 2]),
            (0.1, &[0, 1, 2, 3]),
            (1.0, &[0]),
        ] {
            // Both code paths: candidates unsorted (no top-k) and sorted (after top-k).
            for top_k in [0, 4] {
                let kept = survivors(&mut sampler(params(1.0, top_k, 1.0, min_p)), &logits);
                assert_eq!(kept, expected, "min_p {min_p}, top_k {top_k}");
            }
        }
    }

    #[test]
    fn filters_use_probabilities_before_temperature() {
        // At temperature 0.1, token 1 would be 1000 times less likely than token 0, but min-p
        // judges the temperature-1 probabilities (ratio 0.5), as in llama.cpp.
        let logits = logits_of(&[0.5, 0.25, 0.25]);
        assert_eq!(
            survivors(&mut sampler(params(0.1, 0, 1.0, 0.4)), &logits),
            [0, 1, 2]
        );
    }

    #[test]
    fn same_seed_same_tokens_different_seed_different_tokens() {
        let logits = random_logits(1000, 9, 4.0);
        let run = |seed| {
            draws(
                &mut sampler(SamplingParams {
                    seed,
                    ..SamplingParams::default()
                }),
                &logits,
                64,
            )
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn the_result_does_not_depend_on_the_sampler_history() {
        // A sampler that first worked on other logits (its buffers hold leftovers) must give
        // what a fresh one with the same random state gives.
        // Interpreter-sized under Miri, where each top-p sort of thousands of logits is slow.
        let (n, other) = if cfg!(miri) { (300, 400) } else { (5000, 7000) };
        let logits = random_logits(n, 4, 8.0);
        let mut used = sampler(params(0.9, 0, 0.9, 0.02));
        draws(&mut used, &random_logits(other, 5, 3.0), 10);
        let mut fresh = sampler(params(0.9, 0, 0.9, 0.02));
        fresh.set_rng_state(used.rng_state());
        assert_eq!(
            draws(&mut used, &logits, 50),
            draws(&mut fresh, &logits, 50)
        );
    }

    #[test]
    fn rng_state_save_and_restore_continues_the_sequence() {
        let logits = random_logits(100, 6, 2.0);
        let mut original = sampler(SamplingParams {
            seed: 5,
            ..SamplingParams::default()
        });
        draws(&mut original, &logits, 3);
        let saved = original.rng_state();
        let mut restored = sampler(SamplingParams {
            seed: 999,
            ..SamplingParams::default()
        });
        restored.set_rng_state(saved);
        assert_eq!(
            draws(&mut original, &logits, 40),
            draws(&mut restored, &logits, 40)
        );
    }

    /// Pearson's chi-square statistic of observed counts against expected probabilities.
    fn chi_square(counts: &[usize], probabilities: &[f64]) -> f64 {
        let n: usize = counts.iter().sum();
        counts
            .iter()
            .zip(probabilities)
            .map(|(&count, &p)| {
                let expected = p * n as f64;
                (count as f64 - expected).powi(2) / expected
            })
            .sum()
    }

    fn softmax(logits: &[f32], temperature: f64) -> Vec<f64> {
        let scaled: Vec<f64> = logits
            .iter()
            .map(|&l| (f64::from(l) / temperature).exp())
            .collect();
        let total: f64 = scaled.iter().sum();
        scaled.iter().map(|w| w / total).collect()
    }

    #[test]
    fn draw_frequencies_match_the_softmax() {
        let logits = [1.0, 2.0, 0.5, 3.0, -1.0, 2.5];
        // 99.9th percentile of chi-square with 5 degrees of freedom.
        let critical = 20.52;
        for temperature in [1.0f32, 0.5, 2.0] {
            let mut sampler = pure(temperature, 2024);
            let mut counts = [0usize; 6];
            for id in draws(&mut sampler, &logits, DRAWS) {
                counts[id as usize] += 1;
            }
            let statistic = chi_square(&counts, &softmax(&logits, f64::from(temperature)));
            assert!(
                statistic < critical,
                "temperature {temperature}: counts {counts:?}, chi-square {statistic}"
            );
        }
    }

    #[test]
    fn draw_frequencies_after_the_filters_match_the_renormalised_softmax() {
        // Defaults: top-k 40 keeps 40 of 100 tokens, then top-p and min-p cut further; the draw
        // must follow the softmax at temperature 0.8 over exactly the survivors.
        let logits = random_logits(100, 8, 6.0);
        let mut sampler = sampler(SamplingParams {
            seed: 77,
            ..SamplingParams::default()
        });
        let kept = survivors(&mut sampler, &logits);
        assert!(kept.len() > 2 && kept.len() < 40, "{kept:?}");
        let kept_logits: Vec<f32> = kept.iter().map(|&id| logits[id as usize]).collect();
        let mut counts = vec![0usize; kept.len()];
        for id in draws(&mut sampler, &logits, DRAWS) {
            counts[kept
                .binary_search(&id)
                .expect("a filtered-out token was drawn")] += 1;
        }
        let probabilities = softmax(&kept_logits, 0.8);
        // Rare tokens would dominate the statistic by chance alone; pool them into one bin.
        let (mut pooled_counts, mut pooled_probabilities) = (vec![0usize], vec![0.0f64]);
        for (&count, &p) in counts.iter().zip(&probabilities) {
            if p * DRAWS as f64 >= 20.0 {
                pooled_counts.push(count);
                pooled_probabilities.push(p);
            } else {
                pooled_counts[0] += count;
                pooled_probabilities[0] += p;
            }
        }
        if pooled_probabilities[0] == 0.0 {
            pooled_counts.remove(0);
            pooled_probabilities.remove(0);
        }
        let degrees = pooled_counts.len() - 1;
        // Wilson–Hilferty approximation of the 99.9th percentile of chi-square.
        let z = 3.09;
        let d = degrees as f64;
        let critical = d * (1.0 - 2.0 / (9.0 * d) + z * (2.0 / (9.0 * d)).sqrt()).powi(3);
        let statistic = chi_square(&pooled_counts, &pooled_probabilities);
        assert!(
            statistic < critical,
            "chi-square {statistic} over {degrees} degrees of freedom"
        );
    }

    #[test]
    fn a_huge_vocabulary_samples_correctly_with_every_filter_combination() {
        let logits = random_logits(if cfg!(miri) { 4_096 } else { 262_144 }, 10, 20.0);
        let best = greedy().sample(&mut logits.clone(), &[], None).unwrap();
        for (top_k, top_p, min_p) in [
            (0, 1.0, 0.0),
            (40, 0.95, 0.05),
            (0, 0.9, 0.0),
            (0, 1.0, 0.1),
            (1, 1.0, 0.0),
        ] {
            let mut sampler = sampler(params(1.0, top_k, top_p, min_p));
            let token = sampler.sample(&mut logits.clone(), &[], None).unwrap();
            assert!((token as usize) < logits.len());
            if top_k == 1 {
                assert_eq!(token, best);
            }
        }
    }
}
