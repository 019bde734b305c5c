//! Choosing tokens from logits: the sampler chain, a seeded random generator with explicit
//! state, streaming stop strings and log-probabilities.
//!
//! This layer sees logits (one `f32` per vocabulary id) and token ids (`u32`) only; it knows
//! nothing of models, tokenizers, chat or JSON.
//!
//! Across the module a token whose logit is NaN or `-inf` is *impossible*: it is never chosen
//! and its probability is 0. A `+inf` logit outweighs every finite one, so when some tokens have
//! it they share all the probability equally.

mod constraint;
mod logprob;
mod params;
mod rng;
mod sampler;
mod select;
mod stop;

pub use constraint::{TokenConstraint, TokenMask};
pub use logprob::{log_softmax, top_logprobs};
pub use params::{SampleError, SamplingParams};
pub use rng::Rng;
pub use sampler::Sampler;
pub use stop::{StopMatcher, StopOutcome};

/// Whether a token with this logit can be chosen at all (false for NaN and `-inf`).
fn is_possible(logit: f32) -> bool {
    // NaN compares false with everything, so this one test covers both cases.
    logit > f32::NEG_INFINITY
}
