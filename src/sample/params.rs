//! What a request may set about sampling, the valid range of each field, and the errors of
//! this layer.

use std::fmt;

use crate::error::Error;

/// How the next token is chosen. Names, meanings and defaults follow llama.cpp.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Divides the logits before the draw: below 1 sharpens the distribution, above 1 flattens
    /// it. 0 is greedy: the most likely token, the lowest id on an exact tie.
    pub temperature: f32,
    /// Keeps only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: u32,
    /// Keeps the smallest set of most likely tokens whose probabilities add up to at least
    /// `top_p` (always at least one); 1 keeps all.
    pub top_p: f32,
    /// Drops the tokens less likely than `min_p` times the most likely one; 0 keeps all.
    pub min_p: f32,
    /// Makes each token seen in the penalty window less likely, whatever its count: a positive
    /// logit is divided by it, a negative one multiplied. 1 is off.
    pub repeat_penalty: f32,
    /// How many of the most recent tokens the three penalties look at; 0 turns them off.
    pub repeat_last_n: usize,
    /// Subtracted once from the logit of each token seen in the window, in [-2, 2]; 0 is off, a
    /// negative value encourages repetition.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per occurrence in the window, in [-2, 2]; 0 is off.
    pub frequency_penalty: f32,
    /// Seeds the random generator: the same seed and the same logits give the same tokens.
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
    /// Checks every field against its valid range and names the first one out of it.
    pub fn validate(&self) -> Result<(), SampleError> {
        let invalid = |field, value, valid| {
            Err(SampleError::InvalidParameter {
                field,
                value,
                valid,
            })
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return invalid(
                "temperature",
                self.temperature,
                "a finite number >= 0 (0 = greedy)",
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return invalid("top_p", self.top_p, "in (0, 1] (1 = off)");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return invalid("min_p", self.min_p, "in [0, 1] (0 = off)");
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return invalid(
                "repeat_penalty",
                self.repeat_penalty,
                "a finite number > 0 (1 = off)",
            );
        }
        // OpenAI's range, which its users expect; it also catches a misplaced decimal point.
        let penalty_range = -2.0..=2.0;
        if !penalty_range.contains(&self.presence_penalty) {
            return invalid(
                "presence_penalty",
                self.presence_penalty,
                "in [-2, 2] (0 = off)",
            );
        }
        if !penalty_range.contains(&self.frequency_penalty) {
            return invalid(
                "frequency_penalty",
                self.frequency_penalty,
                "in [-2, 2] (0 = off)",
            );
        }
        Ok(())
    }
}

/// Why a token could not be sampled.
#[derive(Debug, Clone, PartialEq)]
pub enum SampleError {
    /// A sampling parameter is outside its valid range.
    InvalidParameter {
        field: &'static str,
        value: f32,
        valid: &'static str,
    },
    /// The logits slice is empty.
    EmptyLogits,
    /// The mask of allowed tokens does not have one entry per logit.
    MaskLengthMismatch { mask_len: usize, vocab_size: usize },
    /// A token in the penalty window is not a vocabulary id.
    TokenOutOfRange { token: u32, vocab_size: usize },
    /// Every token is disallowed by the mask or has a NaN or `-inf` logit.
    NothingToSample,
}

impl fmt::Display for SampleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidParameter { field, value, valid } => {
                write!(f, "{field} is {value}, but it must be {valid}")
            }
            Self::EmptyLogits => f.write_str("there are no logits to sample from (the vocabulary is empty)"),
            Self::MaskLengthMismatch { mask_len, vocab_size } => write!(
                f,
                "the mask of allowed tokens has {mask_len} entries, but the vocabulary has {vocab_size}: give one entry per token"
            ),
            Self::TokenOutOfRange { token, vocab_size } => write!(
                f,
                "token id {token} among the recent tokens is outside the vocabulary of {vocab_size} tokens"
            ),
            Self::NothingToSample => f.write_str(
                "no token can be sampled: every token is disallowed by the constraints or has an invalid (NaN or -inf) logit",
            ),
        }
    }
}

impl std::error::Error for SampleError {}

impl From<SampleError> for Error {
    fn from(error: SampleError) -> Self {
        Error::invalid_argument(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn defaults_are_valid_and_llama_cpp_like() {
        let params = SamplingParams::default();
        assert_eq!(params.validate(), Ok(()));
        assert_eq!(
            (params.temperature, params.top_k, params.top_p, params.min_p),
            (0.8, 40, 0.95, 0.05)
        );
        assert_eq!((params.repeat_penalty, params.repeat_last_n), (1.0, 64));
    }

    #[test]
    fn validate_rejects_each_bad_field_by_name() {
        let base = SamplingParams::default;
        let cases = [
            (
                SamplingParams {
                    temperature: -0.1,
                    ..base()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    temperature: f32::NAN,
                    ..base()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    temperature: f32::INFINITY,
                    ..base()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    top_p: 0.0,
                    ..base()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    top_p: 1.01,
                    ..base()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    top_p: f32::NAN,
                    ..base()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    min_p: -0.01,
                    ..base()
                },
                "min_p",
            ),
            (
                SamplingParams {
                    min_p: 1.5,
                    ..base()
                },
                "min_p",
            ),
            (
                SamplingParams {
                    min_p: f32::NAN,
                    ..base()
                },
                "min_p",
            ),
            (
                SamplingParams {
                    repeat_penalty: 0.0,
                    ..base()
                },
                "repeat_penalty",
            ),
            (
                SamplingParams {
                    repeat_penalty: -1.0,
                    ..base()
                },
                "repeat_penalty",
            ),
            (
                SamplingParams {
                    repeat_penalty: f32::INFINITY,
                    ..base()
                },
                "repeat_penalty",
            ),
            (
                SamplingParams {
                    presence_penalty: f32::NAN,
                    ..base()
                },
                "presence_penalty",
            ),
            (
                SamplingParams {
                    frequency_penalty: f32::NEG_INFINITY,
                    ..base()
                },
                "frequency_penalty",
            ),
        ];
        for (params, field) in cases {
            let error = params.validate().unwrap_err();
            assert!(
                matches!(error, SampleError::InvalidParameter { field: named, .. } if named == field),
                "{params:?} gave {error:?}"
            );
            let message = error.to_string();
            assert!(
                message.starts_with(field) && message.contains("must be"),
                "{message}"
            );
        }
    }

    #[test]
    fn validate_accepts_the_edges_of_each_range() {
        let edges = SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 1.0,
            repeat_penalty: 0.01,
            repeat_last_n: 0,
            presence_penalty: -2.0,
            frequency_penalty: 2.0,
            seed: u64::MAX,
        };
        assert_eq!(edges.validate(), Ok(()));
        assert_eq!(
            SamplingParams {
                min_p: 0.0,
                top_p: f32::MIN_POSITIVE,
                ..edges
            }
            .validate(),
            Ok(())
        );
    }

    #[test]
    fn errors_become_invalid_argument() {
        let error: Error = SampleError::NothingToSample.into();
        assert_eq!(error.kind, ErrorKind::InvalidArgument);
        assert!(error.message.contains("no token can be sampled"));
    }
}
