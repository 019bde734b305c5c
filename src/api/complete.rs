//! Raw completion: a prompt (text or ids) continued with no template and no session.

use serde::{Deserialize, Serialize};

use super::{parse, to_json};
use crate::engine::{Engine, GenerationEvents, GenerationOutput, GenerationRequest, Usage};
use crate::error::{Error, Result};
use crate::sample::SamplingParams;

const DEFAULT_MAX_TOKENS: u32 = 256;
/// More alternatives than this per token is a mistake, not a use case.
const MAX_TOP_LOGPROBS: u32 = 100;

/// Stop strings: OpenAI accepts one string or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    prompt_ids: Option<Vec<u32>>,
    /// With `prompt`: add BOS/EOS as the model's metadata says (default true).
    #[serde(default)]
    add_special: Option<bool>,
    /// With `prompt`: turn special-token text into ids (default false).
    #[serde(default)]
    parse_special: Option<bool>,
    #[serde(default)]
    max_tokens: Option<i64>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_k: Option<i64>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    min_p: Option<f32>,
    #[serde(default)]
    repeat_penalty: Option<f32>,
    #[serde(default)]
    repeat_last_n: Option<i64>,
    #[serde(default)]
    presence_penalty: Option<f32>,
    #[serde(default)]
    frequency_penalty: Option<f32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stop: Option<StopField>,
    #[serde(default)]
    stop_token_ids: Option<Vec<u32>>,
    #[serde(default)]
    ignore_eos: Option<bool>,
    #[serde(default)]
    logprobs: Option<u32>,
    #[serde(default)]
    prompt_logprobs: Option<bool>,
}

/// Parses the sampling fields shared by completion and chat requests over `base`.
#[allow(clippy::too_many_arguments)]
pub fn sampling_params(
    base: SamplingParams,
    temperature: Option<f32>,
    top_k: Option<i64>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    repeat_last_n: Option<i64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    seed: Option<u64>,
) -> Result<SamplingParams> {
    let mut p = base;
    if let Some(t) = temperature {
        p.temperature = t;
    }
    if let Some(k) = top_k {
        p.top_k = u32::try_from(k).map_err(|_| {
            Error::invalid_argument(format!(
                "top_k is {k}; it must be 0 (off) or a positive number of tokens"
            ))
        })?;
    }
    if let Some(v) = top_p {
        p.top_p = v;
    }
    if let Some(v) = min_p {
        p.min_p = v;
    }
    if let Some(v) = repeat_penalty {
        p.repeat_penalty = v;
    }
    if let Some(n) = repeat_last_n {
        p.repeat_last_n = usize::try_from(n).map_err(|_| {
            Error::invalid_argument(format!("repeat_last_n is {n}; it must be 0 or more"))
        })?;
    }
    if let Some(v) = presence_penalty {
        p.presence_penalty = v;
    }
    if let Some(v) = frequency_penalty {
        p.frequency_penalty = v;
    }
    p.seed = seed.unwrap_or_else(random_seed);
    p.validate()?;
    Ok(p)
}

/// A seed for requests that give none: different for every request, reported in the
/// response so a run can be reproduced.
fn random_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ COUNTER.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
}

impl CompleteRequest {
    fn into_generation(
        self,
        engine: &Engine,
        started_at: std::time::Instant,
    ) -> Result<GenerationRequest> {
        let prompt = match (self.prompt, self.prompt_ids) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid_argument(
                    "give either prompt or prompt_ids, not both",
                ));
            }
            (None, None) => {
                return Err(Error::invalid_argument(
                    "the request needs prompt (text) or prompt_ids (token ids)",
                ));
            }
            (Some(text), None) => {
                let ids = engine.tokenizer.encode(
                    &text,
                    self.add_special.unwrap_or(true),
                    self.parse_special.unwrap_or(false),
                );
                if ids.is_empty() {
                    return Err(Error::invalid_argument(
                        "prompt is empty: it tokenizes to no tokens",
                    ));
                }
                ids
            }
            (None, Some(ids)) => {
                if self.add_special.is_some() || self.parse_special.is_some() {
                    return Err(Error::invalid_argument(
                        "add_special and parse_special apply to prompt text; with prompt_ids give the exact ids",
                    ));
                }
                if ids.is_empty() {
                    return Err(Error::invalid_argument(
                        "prompt_ids is empty: give at least one token id",
                    ));
                }
                let n_vocab = engine.tokenizer.n_vocab();
                if let Some(bad) = ids.iter().find(|&&id| id as usize >= n_vocab) {
                    return Err(Error::invalid_argument(format!(
                        "prompt_ids contains {bad}, but the vocabulary has {n_vocab} tokens (ids 0..{})",
                        n_vocab - 1
                    )));
                }
                ids
            }
        };
        let max_tokens = match self.max_tokens {
            None => DEFAULT_MAX_TOKENS as usize,
            Some(n) if n < 0 => {
                return Err(Error::invalid_argument(format!(
                    "max_tokens is {n}; it must be 0 (score the prompt only) or more"
                )));
            }
            Some(n) => n as usize,
        };
        let stop = match self.stop {
            None => Vec::new(),
            Some(StopField::One(s)) => vec![s],
            Some(StopField::Many(v)) => v,
        };
        if stop.iter().any(String::is_empty) {
            return Err(Error::invalid_argument(
                "stop contains an empty string, which would stop at once; remove it",
            ));
        }
        if let Some(k) = self.logprobs.filter(|&k| k > MAX_TOP_LOGPROBS) {
            return Err(Error::invalid_argument(format!(
                "logprobs is {k}; it must be at most {MAX_TOP_LOGPROBS}"
            )));
        }
        let sampling = sampling_params(
            SamplingParams::default(),
            self.temperature,
            self.top_k,
            self.top_p,
            self.min_p,
            self.repeat_penalty,
            self.repeat_last_n,
            self.presence_penalty,
            self.frequency_penalty,
            self.seed,
        )?;
        Ok(GenerationRequest {
            prompt,
            sampling,
            max_tokens,
            stop,
            stop_token_ids: self.stop_token_ids.unwrap_or_default(),
            ignore_eos: self.ignore_eos.unwrap_or(false),
            top_logprobs: self.logprobs.map(|k| k as usize),
            prompt_logprobs: self.prompt_logprobs.unwrap_or(false),
            started_at,
        })
    }
}

#[derive(Serialize)]
pub struct UsageJson {
    prompt_tokens: usize,
    completion_tokens: usize,
    total_tokens: usize,
    prompt_tokens_details: CachedTokensJson,
    time_to_first_token_ms: f64,
    prefill_ms: f64,
    decode_ms: f64,
    prefill_tokens_per_second: f64,
    decode_tokens_per_second: f64,
}

#[derive(Serialize)]
struct CachedTokensJson {
    cached_tokens: usize,
}

impl From<&Usage> for UsageJson {
    fn from(u: &Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens(),
            prompt_tokens_details: CachedTokensJson {
                cached_tokens: u.cached_tokens,
            },
            time_to_first_token_ms: u.time_to_first_token_ms,
            prefill_ms: u.prefill_ms,
            decode_ms: u.decode_ms,
            prefill_tokens_per_second: u.prefill_tokens_per_second(),
            decode_tokens_per_second: u.decode_tokens_per_second(),
        }
    }
}

#[derive(Serialize)]
struct IdLogprob {
    id: u32,
    logprob: f32,
}

#[derive(Serialize)]
struct TokenLogprobJson {
    id: u32,
    logprob: f32,
    top: Vec<IdLogprob>,
}

#[derive(Serialize)]
struct CompleteResponse {
    text: String,
    token_ids: Vec<u32>,
    finish_reason: &'static str,
    usage: UsageJson,
    seed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<Vec<TokenLogprobJson>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_logprobs: Option<Vec<Option<f32>>>,
}

/// Parses and validates a raw completion request, checking that it fits the context.
/// `started_at` is when the host's call began: time to first token counts from it.
pub fn completion_request(
    engine: &Engine,
    json: &str,
    started_at: std::time::Instant,
) -> Result<GenerationRequest> {
    engine.model()?;
    let req: CompleteRequest = parse("completion request", json)?;
    let gen_req = req.into_generation(engine, started_at)?;
    crate::engine::check_fits(
        gen_req.prompt.len(),
        gen_req.max_tokens,
        engine.context_length(),
    )?;
    Ok(gen_req)
}

/// Runs a validated completion request; returns the response JSON and the usage figures.
pub fn complete(
    engine: &Engine,
    gen_req: &GenerationRequest,
    events: &mut dyn GenerationEvents,
) -> Result<(String, Usage)> {
    let mut cache = engine.new_cache();
    let out: GenerationOutput = engine.generate(&mut cache, gen_req, None, events)?;
    let response = CompleteResponse {
        text: out.text,
        token_ids: out.token_ids,
        finish_reason: out.finish_reason.as_str(),
        usage: UsageJson::from(&out.usage),
        seed: gen_req.sampling.seed,
        logprobs: gen_req.top_logprobs.map(|_| {
            out.logprobs
                .iter()
                .map(|t| TokenLogprobJson {
                    id: t.id,
                    logprob: t.logprob,
                    top: t
                        .top
                        .iter()
                        .map(|&(id, logprob)| IdLogprob { id, logprob })
                        .collect(),
                })
                .collect()
        }),
        prompt_logprobs: gen_req.prompt_logprobs.then_some(out.prompt_logprobs),
    };
    Ok((to_json(&response)?, out.usage))
}
