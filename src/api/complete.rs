//! Raw completion: a prompt (text or ids) continued with no template and no session.

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::options::{RequestOptions, ResponseFormat, token_ids};
use super::{parse_with_options, to_json};
use crate::chat::structured;
use crate::engine::{
    Engine, GenerationEvents, GenerationOutput, GenerationRequest, TokenLogprob, Usage,
};
use crate::error::{Error, Result};

/// The completion's own fields; the generation options (`RequestOptions`) are taken out of
/// the request first.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CompletionFields {
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    prompt_ids: Option<serde_json::Value>,
    /// With `prompt`: add BOS/EOS as the model's metadata says (default true).
    #[serde(default)]
    add_special: Option<bool>,
    /// With `prompt`: turn special-token text into ids (default false).
    #[serde(default)]
    parse_special: Option<bool>,
    #[serde(default)]
    prompt_logprobs: Option<bool>,
}

/// What a completion tells its caller: the generation events, and when the request starts
/// (it passed validation) and completes (with its measured figures).
pub trait CompletionEvents: GenerationEvents {
    fn on_request_start(&mut self) {}
    fn on_request_complete(&mut self, _usage: &Usage) {}
}

impl CompletionEvents for crate::engine::NoEvents {}

/// A validated completion request.
#[derive(Debug, Clone)]
pub struct CompleteRequest {
    pub generation: GenerationRequest,
    pub response_format: ResponseFormat,
}

impl CompletionFields {
    fn prompt(self, engine: &Engine) -> Result<Vec<u32>> {
        match (self.prompt, self.prompt_ids) {
            (Some(_), Some(_)) => Err(Error::invalid_argument(
                "give either prompt or prompt_ids, not both",
            )),
            (None, None) => Err(Error::invalid_argument(
                "the request needs prompt (text) or prompt_ids (token ids)",
            )),
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
                Ok(ids)
            }
            (None, Some(ids)) => {
                if self.add_special.is_some() || self.parse_special.is_some() {
                    return Err(Error::invalid_argument(
                        "add_special and parse_special apply to prompt text; with prompt_ids give the exact ids",
                    ));
                }
                let ids = token_ids("prompt_ids", &ids, engine)?;
                if ids.is_empty() {
                    return Err(Error::invalid_argument(
                        "prompt_ids is empty: give at least one token id",
                    ));
                }
                Ok(ids)
            }
        }
    }
}

/// Parses and validates a raw completion request, checking that it fits the context.
/// `started_at` is when the host's call began: time to first token counts from it.
pub fn completion_request(
    engine: &Engine,
    json: &str,
    started_at: std::time::Instant,
) -> Result<CompleteRequest> {
    // A vocab-only engine holds no weights: refuse before anything else is checked.
    engine.model()?;
    let what = "completion request";
    let (options, fields): (RequestOptions, CompletionFields) = parse_with_options(what, json)?;
    let prompt_logprobs = fields.prompt_logprobs.unwrap_or(false);
    let prompt = fields.prompt(engine)?;
    let resolved = options.resolve(engine)?;
    let generation = GenerationRequest {
        prompt,
        sampling: resolved.sampling,
        max_tokens: resolved.max_tokens,
        stop: resolved.stop,
        stop_token_ids: resolved.stop_token_ids,
        ignore_eos: resolved.ignore_eos,
        top_logprobs: resolved.top_logprobs,
        prompt_logprobs,
        started_at,
        shared_prefix: 0,
    };
    crate::engine::check_fits(
        generation.prompt.len(),
        generation.max_tokens,
        engine.context_length(),
    )?;
    Ok(CompleteRequest {
        generation,
        response_format: resolved.response_format,
    })
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

/// A token's text in logprob entries: its bytes as UTF-8, with U+FFFD where a token holds
/// only part of a character (the ids say exactly which tokens they were).
fn piece_text(engine: &Engine, id: u32) -> String {
    String::from_utf8_lossy(engine.tokenizer.token_to_piece(id, true)).into_owned()
}

#[derive(Serialize)]
pub struct IdLogprob {
    id: u32,
    text: String,
    logprob: f32,
}

/// One generated token's log-probability and the most likely alternatives. Values are
/// natural logs of the model's distribution after the constraint of a `response_format`
/// (forbidden tokens excluded, the rest renormalised) and before penalties and temperature:
/// with penalties or a temperature the chosen token need not be `top[0]`.
#[derive(Serialize)]
pub struct TokenLogprobJson {
    id: u32,
    text: String,
    logprob: f32,
    top: Vec<IdLogprob>,
}

/// The logprob entries of a response.
pub fn logprobs_json(engine: &Engine, logprobs: &[TokenLogprob]) -> Vec<TokenLogprobJson> {
    logprobs
        .iter()
        .map(|t| TokenLogprobJson {
            id: t.id,
            text: piece_text(engine, t.id),
            logprob: t.logprob,
            top: t
                .top
                .iter()
                .map(|&(id, logprob)| IdLogprob {
                    id,
                    text: piece_text(engine, id),
                    logprob,
                })
                .collect(),
        })
        .collect()
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
    warnings: Vec<String>,
}

/// Runs a validated completion request; returns the response JSON and the usage figures.
pub fn complete(
    engine: &Arc<Engine>,
    request: &CompleteRequest,
    events: &mut dyn CompletionEvents,
) -> Result<(String, Usage)> {
    events.on_request_start();
    let gen_req = &request.generation;
    let mut constraint = structured::response_constraint(engine, &request.response_format)?;
    let mut cache = engine.new_cache();
    let out: GenerationOutput =
        engine.generate(&mut cache, gen_req, constraint.as_deref_mut(), events)?;
    let warnings = structured::check_reply(&request.response_format, &out.text, out.finish_reason)?;
    let response = CompleteResponse {
        logprobs: gen_req
            .top_logprobs
            .map(|_| logprobs_json(engine, &out.logprobs)),
        text: out.text,
        token_ids: out.token_ids,
        finish_reason: out.finish_reason.as_str(),
        usage: UsageJson::from(&out.usage),
        seed: gen_req.sampling.seed,
        prompt_logprobs: gen_req.prompt_logprobs.then_some(out.prompt_logprobs),
        warnings,
    };
    events.on_request_complete(&out.usage);
    Ok((to_json(&response)?, out.usage))
}
