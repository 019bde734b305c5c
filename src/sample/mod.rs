//! Samplers, a seeded RNG with explicit state, stop-string matching and log-probabilities.
//! Works on logits and token ids only: nothing here knows models, text encodings or JSON.

mod rng;
mod stop;

use std::fmt;

pub use rng::Rng;
pub use stop::{StopMatcher, StopOutcome};

use crate::error::Error;

#[derive(Debug, Clone, PartialEq)]
pub enum SampleError {
    InvalidParameter { field: &'static str, value: String, valid: &'static str },
    NothingToSample,
}

impl fmt::Display for SampleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidParameter { field, value, valid } => write!(f, "{field} is {value}; it must be {valid}"),
            Self::NothingToSample => write!(f, "no token can be sampled: every candidate is masked or has an invalid logit"),
        }
    }
}

impl std::error::Error for SampleError {}

impl From<SampleError> for Error {
    fn from(e: SampleError) -> Self {
        Error::invalid_argument(e.to_string())
    }
}

/// How the next token is chosen. The defaults are llama.cpp's.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy (argmax; the lowest id wins an exact tie).
    pub temperature: f32,
    /// 0 = off.
    pub top_k: u32,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub min_p: f32,
    /// 1 = off.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub repeat_last_n: usize,
    /// 0 = off.
    pub presence_penalty: f32,
    /// 0 = off.
    pub frequency_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Checks every field's range.
    pub fn validate(&self) -> Result<(), SampleError> {
        let bad = |field, value: f32, valid| SampleError::InvalidParameter { field, value: value.to_string(), valid };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(bad("temperature", self.temperature, "a finite number ≥ 0 (0 = greedy)"));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(bad("top_p", self.top_p, "in (0, 1] (1 = off)"));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(bad("min_p", self.min_p, "in [0, 1] (0 = off)"));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(bad("repeat_penalty", self.repeat_penalty, "a finite number > 0 (1 = off)"));
        }
        if !self.presence_penalty.is_finite() || self.presence_penalty.abs() > 2.0 {
            return Err(bad("presence_penalty", self.presence_penalty, "in [-2, 2] (0 = off)"));
        }
        if !self.frequency_penalty.is_finite() || self.frequency_penalty.abs() > 2.0 {
            return Err(bad("frequency_penalty", self.frequency_penalty, "in [-2, 2] (0 = off)"));
        }
        Ok(())
    }
}

/// Chooses tokens from logits with the chain penalties → top-k → top-p → min-p →
/// temperature → draw, as llama.cpp orders it.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// (id, logit) candidates surviving the filters; reused between calls.
    candidates: Vec<(u32, f32)>,
    /// Occurrence counts of recent tokens, for the penalties; reused between calls.
    counts: Vec<(u32, u32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self, SampleError> {
        params.validate()?;
        let rng = Rng::new(params.seed);
        Ok(Self { params, rng, candidates: Vec::new(), counts: Vec::new() })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    pub fn rng_state(&self) -> [u64; 4] {
        self.rng.state()
    }

    pub fn set_rng_state(&mut self, state: [u64; 4]) {
        self.rng = Rng::from_state(state);
    }

    /// Chooses the next token. `recent` holds the previous tokens (for the penalties);
    /// `allowed`, when given, masks out tokens the caller forbids, in every mode.
    pub fn sample(&mut self, logits: &mut [f32], recent: &[u32], allowed: Option<&[bool]>) -> Result<u32, SampleError> {
        self.apply_penalties(logits, recent);
        let permitted = |id: usize, logit: f32| !logit.is_nan() && allowed.is_none_or(|mask| mask.get(id).copied().unwrap_or(false));

        if self.params.temperature == 0.0 {
            let mut best: Option<(usize, f32)> = None;
            for (id, &logit) in logits.iter().enumerate() {
                if permitted(id, logit) && best.is_none_or(|(_, b)| logit > b) {
                    best = Some((id, logit));
                }
            }
            return best.map(|(id, _)| id as u32).ok_or(SampleError::NothingToSample);
        }

        self.candidates.clear();
        self.candidates.extend(
            logits.iter().enumerate().filter(|&(id, &l)| permitted(id, l) && l > f32::NEG_INFINITY).map(|(id, &l)| (id as u32, l)),
        );
        if self.candidates.is_empty() {
            return Err(SampleError::NothingToSample);
        }
        let by_logit_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let k = self.params.top_k as usize;
        if k > 0 && k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(k - 1, by_logit_desc);
            self.candidates.truncate(k);
        }
        self.candidates.sort_unstable_by(by_logit_desc);

        // Probabilities at temperature 1 decide top-p and min-p, as in llama.cpp.
        let max = self.candidates[0].1;
        let weights: Vec<f64> = self.candidates.iter().map(|&(_, l)| ((l - max) as f64).exp()).collect();
        let total: f64 = weights.iter().sum();
        let mut keep = self.candidates.len();
        if self.params.top_p < 1.0 {
            let mut cumulative = 0.0;
            for (i, w) in weights.iter().enumerate() {
                cumulative += w / total;
                if cumulative >= self.params.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        if self.params.min_p > 0.0 {
            // weights[0] is the largest probability's weight (1.0).
            let threshold = self.params.min_p as f64 * weights[0];
            keep = keep.min(weights.iter().take_while(|&&w| w >= threshold).count().max(1));
        }
        self.candidates.truncate(keep);

        let inv_t = 1.0 / self.params.temperature as f64;
        let scaled: Vec<f64> = self.candidates.iter().map(|&(_, l)| ((l - max) as f64 * inv_t).exp()).collect();
        let sum: f64 = scaled.iter().sum();
        let mut draw = self.rng.next_f64() * sum;
        for (i, w) in scaled.iter().enumerate() {
            if draw < *w {
                return Ok(self.candidates[i].0);
            }
            draw -= w;
        }
        Ok(self.candidates[self.candidates.len() - 1].0)
    }

    fn apply_penalties(&mut self, logits: &mut [f32], recent: &[u32]) {
        let p = &self.params;
        if p.repeat_last_n == 0 || (p.repeat_penalty == 1.0 && p.presence_penalty == 0.0 && p.frequency_penalty == 0.0) {
            return;
        }
        let window = &recent[recent.len().saturating_sub(p.repeat_last_n)..];
        self.counts.clear();
        for &t in window {
            match self.counts.iter_mut().find(|(id, _)| *id == t) {
                Some((_, n)) => *n += 1,
                None => self.counts.push((t, 1)),
            }
        }
        for &(id, count) in &self.counts {
            let Some(logit) = logits.get_mut(id as usize) else { continue };
            if *logit <= 0.0 {
                *logit *= p.repeat_penalty;
            } else {
                *logit /= p.repeat_penalty;
            }
            *logit -= count as f32 * p.frequency_penalty + p.presence_penalty;
        }
    }
}

/// out[i] = log softmax(logits)[i], with the normaliser accumulated in f64.
pub fn log_softmax(logits: &[f32], out: &mut Vec<f32>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let log_norm = max as f64 + sum.ln();
    out.clear();
    out.extend(logits.iter().map(|&l| (l as f64 - log_norm) as f32));
}

/// The `k` most likely ids with their log-probabilities, most likely first (ties: lower id).
pub fn top_logprobs(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    if k == 0 || logits.is_empty() {
        return Vec::new();
    }
    let mut ids: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let k = k.min(ids.len());
    if k < ids.len() {
        ids.select_nth_unstable_by(k - 1, order);
        ids.truncate(k);
    }
    ids.sort_unstable_by(order);
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let log_norm = max as f64 + sum.ln();
    ids.into_iter().map(|(id, l)| (id, (l as f64 - log_norm) as f32)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greedy() -> Sampler {
        Sampler::new(SamplingParams { temperature: 0.0, ..SamplingParams::default() }).unwrap()
    }

    #[test]
    fn greedy_picks_the_argmax_and_the_lowest_id_on_ties() {
        let mut s = greedy();
        assert_eq!(s.sample(&mut [0.1, 3.0, -1.0, 3.0], &[], None).unwrap(), 1);
    }

    #[test]
    fn greedy_respects_the_mask() {
        let mut s = greedy();
        let mask = [true, false, true, false];
        assert_eq!(s.sample(&mut [0.1, 3.0, -1.0, 3.0], &[], Some(&mask)).unwrap(), 0);
        let none = [false; 4];
        assert_eq!(s.sample(&mut [0.1, 3.0, -1.0, 3.0], &[], Some(&none)), Err(SampleError::NothingToSample));
    }

    #[test]
    fn penalties_change_exactly_the_recent_tokens() {
        let params = SamplingParams {
            temperature: 0.0,
            repeat_penalty: 2.0,
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(params).unwrap();
        let mut logits = [4.0f32, -2.0, 1.0, 3.0];
        s.apply_penalties(&mut logits, &[0, 1, 1]);
        assert_eq!(logits, [4.0 / 2.0 - 0.25 - 0.5, -2.0 * 2.0 - 0.5 - 0.5, 1.0, 3.0]);
    }

    #[test]
    fn top_k_one_is_greedy_and_seeds_reproduce() {
        let logits = [0.3f32, 2.0, 1.9, -4.0, 0.0];
        let mut k1 = Sampler::new(SamplingParams { top_k: 1, temperature: 1.5, seed: 7, ..Default::default() }).unwrap();
        for _ in 0..50 {
            assert_eq!(k1.sample(&mut logits.clone(), &[], None).unwrap(), 1);
        }
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, seed, ..Default::default() }).unwrap();
            (0..64).map(|_| s.sample(&mut logits.clone(), &[], None).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }

    #[test]
    fn top_p_and_min_p_cut_the_candidate_set() {
        // Probabilities ∝ 8, 4, 2, 1, 1 (sum 16): top-p 0.7 keeps {0, 1}; min-p 0.2 keeps p ≥ 0.1·... .
        let logits: Vec<f32> = [8.0f32, 4.0, 2.0, 1.0, 1.0].iter().map(|w| w.ln()).collect();
        let mut seen = [false; 5];
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.7, min_p: 0.0, seed: 1, ..Default::default() }).unwrap();
        for _ in 0..2000 {
            seen[s.sample(&mut logits.clone(), &[], None).unwrap() as usize] = true;
        }
        assert_eq!(seen, [true, true, false, false, false]);
        let mut seen = [false; 5];
        // min_p 0.2 keeps weights ≥ 0.2·8 = 1.6: ids 0, 1, 2.
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.2, seed: 1, ..Default::default() }).unwrap();
        for _ in 0..2000 {
            seen[s.sample(&mut logits.clone(), &[], None).unwrap() as usize] = true;
        }
        assert_eq!(seen, [true, true, true, false, false]);
    }

    #[test]
    fn draws_follow_the_softmax() {
        let logits: Vec<f32> = [0.5f32, 0.3, 0.2].iter().map(|p| p.ln()).collect();
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, seed: 9, ..Default::default() }).unwrap();
        let mut counts = [0usize; 3];
        let n = 20_000;
        for _ in 0..n {
            counts[s.sample(&mut logits.clone(), &[], None).unwrap() as usize] += 1;
        }
        for (c, p) in counts.iter().zip([0.5, 0.3, 0.2]) {
            let expected = p * n as f64;
            // Five standard deviations of a binomial count.
            assert!((*c as f64 - expected).abs() < 5.0 * (expected * (1.0 - p)).sqrt(), "{counts:?}");
        }
    }

    #[test]
    fn rng_state_round_trips() {
        let mut a = Sampler::new(SamplingParams { seed: 5, ..Default::default() }).unwrap();
        let logits = [1.0f32, 1.1, 0.9, 1.05];
        for _ in 0..3 {
            a.sample(&mut logits.clone(), &[], None).unwrap();
        }
        let state = a.rng_state();
        let mut b = Sampler::new(SamplingParams { seed: 999, ..Default::default() }).unwrap();
        b.set_rng_state(state);
        for _ in 0..20 {
            assert_eq!(a.sample(&mut logits.clone(), &[], None), b.sample(&mut logits.clone(), &[], None));
        }
    }

    #[test]
    fn validate_names_each_bad_field() {
        let cases: [(SamplingParams, &str); 6] = [
            (SamplingParams { temperature: -1.0, ..Default::default() }, "temperature"),
            (SamplingParams { temperature: f32::NAN, ..Default::default() }, "temperature"),
            (SamplingParams { top_p: 0.0, ..Default::default() }, "top_p"),
            (SamplingParams { min_p: 1.5, ..Default::default() }, "min_p"),
            (SamplingParams { repeat_penalty: 0.0, ..Default::default() }, "repeat_penalty"),
            (SamplingParams { presence_penalty: 9.0, ..Default::default() }, "presence_penalty"),
        ];
        for (params, field) in cases {
            let msg = params.validate().unwrap_err().to_string();
            assert!(msg.starts_with(field), "{msg}");
        }
    }

    #[test]
    fn log_softmax_and_top_logprobs_agree() {
        let logits = [1.0f32, 3.0, 3.0, -2.0];
        let mut lp = Vec::new();
        log_softmax(&logits, &mut lp);
        let total: f64 = lp.iter().map(|&l| (l as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        let top = top_logprobs(&logits, 3);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2, 0]);
        assert!((top[0].1 - lp[1]).abs() < 1e-6);
    }
}
