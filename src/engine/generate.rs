//! The generation loop: prefill (reusing what the cache already holds), then sample,
//! detokenize and stream until a stop condition.

use std::time::Instant;

use super::Engine;
use crate::error::{Error, ErrorKind, Result};
use crate::model::{ForwardScratch, KvCache, Logits};
use crate::sample::{self, Sampler, SamplingParams, StopMatcher, TokenConstraint, TokenMask};
use crate::tokenizer::StreamDecoder;

/// Tokens evaluated per forward call during prefill: large enough for matrix-matrix work,
/// small enough that cancellation is honoured quickly.
const PREFILL_CHUNK: usize = 256;
/// With every position's logits kept, (chunk, n_vocab) floats are live at once.
const ALL_LOGITS_CHUNK: usize = 32;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    /// Upper bound on generated tokens (0: only evaluate the prompt).
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    /// Keep going past end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
    /// For each generated token, also report this many most likely alternatives.
    pub top_logprobs: Option<usize>,
    /// Report the log-probability of each prompt token given the ones before it.
    pub prompt_logprobs: bool,
    /// When the host's call began: time to first token is measured from here.
    pub started_at: Instant,
    /// `prompt[..shared_prefix]` may begin other prompts of this engine (a chat's system
    /// turn): it is evaluated in forward passes of its own, so that its rows are the same
    /// whichever chat computed them and can be shared (`Engine::lend_prefix`). 0: nothing
    /// is shared.
    pub shared_prefix: usize,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token, a stop token id or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The host cancelled.
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// Measured counts and times of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose keys and values were already cached.
    pub cached_tokens: usize,
    /// From the start of the request to the first generated token.
    pub time_to_first_token_ms: f64,
    /// Time spent evaluating the uncached prompt tokens.
    pub prefill_ms: f64,
    /// Time from the first generated token to the last.
    pub decode_ms: f64,
}

impl Usage {
    pub fn total_tokens(&self) -> usize {
        self.prompt_tokens + self.completion_tokens
    }

    pub fn prefill_tokens_per_second(&self) -> f64 {
        rate(self.prompt_tokens - self.cached_tokens, self.prefill_ms)
    }

    /// Tokens after the first, over the time they took (the first is counted in TTFT).
    pub fn decode_tokens_per_second(&self) -> f64 {
        rate(self.completion_tokens.saturating_sub(1), self.decode_ms)
    }
}

fn rate(tokens: usize, ms: f64) -> f64 {
    if tokens == 0 || ms <= 0.0 {
        0.0
    } else {
        tokens as f64 * 1000.0 / ms
    }
}

/// One generated token's probability, and optionally the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerationOutput {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub logprobs: Vec<TokenLogprob>,
    /// Entry i is log p(prompt[i] | prompt[..i]); the first token has none.
    pub prompt_logprobs: Vec<Option<f32>>,
}

/// What the generation loop tells its caller while it runs.
pub trait GenerationEvents {
    /// The prompt's cached prefix is known.
    fn on_cache_lookup(&mut self, _cached_tokens: usize) {}
    fn on_first_token(&mut self, _elapsed_ms: f64) {}
    /// Newly visible text (whole UTF-8). Returning false cancels.
    fn on_text(&mut self, _text: &str) -> bool {
        true
    }
    /// Polled between forward passes; true cancels.
    fn cancelled(&mut self) -> bool {
        false
    }
}

/// Events nobody listens to.
pub struct NoEvents;
impl GenerationEvents for NoEvents {}

impl Engine {
    /// Gives `cache` (registered with the KV budget as `budget_id`, locked by the caller)
    /// the first `shared_prefix` positions of `prompt` from another chat's idle cache that
    /// holds them computed the same way, when it holds less of them itself and the engine
    /// shares prefixes: the rows are shared, not copied, and count once in the budget.
    /// Called before the turn reserves its room, so the reservation counts only what the
    /// cache will add. Returns whether a prefix was shared; `generate` then reuses it.
    pub fn lend_prefix(
        &self,
        budget_id: u64,
        cache: &mut KvCache,
        prompt: &[u32],
        shared_prefix: usize,
    ) -> bool {
        let shared = shared_prefix.min(prompt.len().saturating_sub(1));
        let reusable = common_prefix(cache.tokens(), prompt);
        shared > reusable
            && self.shares_prefixes()
            && self
                .kv_budget()
                .lend_prefix(budget_id, cache, &prompt[..shared], PREFILL_CHUNK)
    }

    /// Generates from `request.prompt` on `cache`, reusing the longest prefix the cache already
    /// holds. The cache afterwards holds the prompt and the generated tokens evaluated so far.
    ///
    /// With a `constraint`, every generated token is one its mask allows: forbidden tokens get
    /// a `-inf` logit before logprobs and sampling, so reported logprobs are those of the
    /// model's distribution renormalised over the allowed tokens (before penalties and
    /// temperature). End-of-generation tokens and stop token ids are allowed only where the
    /// constraint may stop, generation ends where it must stop, and stop strings cannot be
    /// combined with it (the constraint decides where the output ends).
    pub fn generate(
        &self,
        cache: &mut KvCache,
        request: &GenerationRequest,
        mut constraint: Option<&mut (dyn TokenConstraint + 'static)>,
        events: &mut dyn GenerationEvents,
    ) -> Result<GenerationOutput> {
        let model = self.model()?;
        let start = request.started_at;
        let prompt = &request.prompt;
        if prompt.is_empty() {
            return Err(Error::invalid_argument(
                "the prompt is empty: give at least one token",
            ));
        }
        check_fits(prompt.len(), request.max_tokens, cache.max_positions())?;
        if constraint.is_some() && !request.stop.is_empty() {
            return Err(Error::invalid_argument(
                "stop strings cannot be combined with a constrained output (response_format or a grammar): the constraint decides where the output ends; remove stop",
            ));
        }
        let mut sampler = Sampler::new(request.sampling.clone())?;

        // Reuse the cached prefix, but always evaluate at least the last prompt token: its
        // logits choose the first generated token. Scoring needs every position's logits.
        let reusable = if request.prompt_logprobs {
            0
        } else {
            common_prefix(cache.tokens(), prompt).min(prompt.len() - 1)
        };
        cache.truncate(reusable);
        let replay = cache.take_replay();
        events.on_cache_lookup(reusable);
        let shared = request.shared_prefix.min(prompt.len() - 1);

        let mut scratch = ForwardScratch::default();
        let mut logits = Vec::new();
        let prefill_start = Instant::now();
        // A cache the KV budget released remembers its tokens and the forward passes that
        // computed them: recomputing the same passes reproduces its rows bit for bit (a row
        // depends on the batch it was computed in), so the reply is the one the chat would
        // have given had it kept its cache. These tokens count as computed, not cached.
        if let Some(replay) = replay.filter(|_| !request.prompt_logprobs) {
            let limit = common_prefix(&replay.tokens, prompt).min(prompt.len() - 1);
            let mut start = 0;
            for &segment in &replay.segments {
                let end = start + segment as usize;
                if end <= cache.len() {
                    // Already there: a lent prefix computed the same way.
                    start = end;
                    continue;
                }
                if start != cache.len() || end > limit || events.cancelled() {
                    break;
                }
                model.forward(
                    &self.pool,
                    &prompt[start..end],
                    cache,
                    Logits::None,
                    &mut scratch,
                    &mut logits,
                )?;
                start = end;
            }
        }

        let n_vocab = model.hparams.n_vocab;
        let mut prompt_logprobs = Vec::new();
        let mut logprob_row = Vec::new();
        let mut pos = cache.len();
        let mut cancelled = false;
        while pos < prompt.len() {
            if events.cancelled() {
                cancelled = true;
                break;
            }
            let chunk_len = if request.prompt_logprobs {
                ALL_LOGITS_CHUNK
            } else {
                PREFILL_CHUNK
            };
            let mut end = (pos + chunk_len).min(prompt.len());
            if pos < shared && end > shared {
                // The shareable prefix ends a pass, so its rows are the same in every chat.
                end = shared;
            }
            let chunk = &prompt[pos..end];
            let wanted = if request.prompt_logprobs {
                Logits::All
            } else if end == prompt.len() {
                Logits::Last
            } else {
                Logits::None
            };
            model.forward(&self.pool, chunk, cache, wanted, &mut scratch, &mut logits)?;
            if request.prompt_logprobs {
                if pos == 0 {
                    prompt_logprobs.push(None);
                }
                // Row i predicts prompt[pos + i + 1].
                for (i, row) in logits.chunks_exact(n_vocab).enumerate() {
                    if let Some(&next) = prompt.get(pos + i + 1) {
                        sample::log_softmax(row, &mut logprob_row);
                        prompt_logprobs.push(Some(logprob_row[next as usize]));
                    }
                }
                if end == prompt.len() {
                    let last = logits.len() - n_vocab;
                    logits.drain(..last);
                }
            }
            pos = end;
        }
        let prefill_ms = prefill_start.elapsed().as_secs_f64() * 1000.0;

        // Prompt tokens really in the cache: all of them, or up to the chunk where a cancel
        // stopped the prefill (rates are computed from these, never from the whole prompt).
        let mut usage = Usage {
            prompt_tokens: pos,
            cached_tokens: reusable,
            prefill_ms,
            ..Usage::default()
        };
        let mut output = GenerationOutput {
            text: String::new(),
            token_ids: Vec::new(),
            finish_reason: FinishReason::Length,
            usage,
            logprobs: Vec::new(),
            prompt_logprobs,
        };
        if cancelled {
            output.finish_reason = FinishReason::Cancelled;
            return Ok(output);
        }

        let mut recent: Vec<u32> = prompt.clone();
        let mut decoder = StreamDecoder::new();
        let mut stops = StopMatcher::new(request.stop.clone());
        let mut first_token_at = None;
        let mut finish = FinishReason::Length;
        let mut stopped_by_string = false;
        let mut mask = constraint.as_ref().map(|_| TokenMask::new(n_vocab));
        while output.token_ids.len() < request.max_tokens {
            if events.cancelled() {
                finish = FinishReason::Cancelled;
                break;
            }
            if let (Some(constraint), Some(mask)) = (constraint.as_deref_mut(), mask.as_mut()) {
                if constraint.must_stop() {
                    finish = FinishReason::Stop;
                    break;
                }
                self.constrain(constraint, mask, request, &mut logits)?;
            }
            if let Some(k) = request.top_logprobs {
                sample::log_softmax(&logits, &mut logprob_row);
                let top = if k > 0 {
                    sample::top_logprobs(&logits, k)
                } else {
                    Vec::new()
                };
                output.logprobs.push(TokenLogprob {
                    id: 0,
                    logprob: 0.0,
                    top,
                });
            }
            let token = sampler.sample(&mut logits, &recent, mask.as_ref())?;
            if let Some(entry) = output
                .logprobs
                .last_mut()
                .filter(|_| request.top_logprobs.is_some())
            {
                entry.id = token;
                entry.logprob = logprob_row[token as usize];
            }
            if first_token_at.is_none() {
                let now = Instant::now();
                first_token_at = Some(now);
                usage.time_to_first_token_ms = (now - start).as_secs_f64() * 1000.0;
                events.on_first_token(usage.time_to_first_token_ms);
            }
            output.token_ids.push(token);
            recent.push(token);

            let is_stop_id = request.stop_token_ids.contains(&token);
            let is_eog = !request.ignore_eos && self.tokenizer.is_end_of_generation(token);
            if is_stop_id || is_eog {
                finish = FinishReason::Stop;
                break;
            }
            if let Some(constraint) = constraint.as_deref_mut() {
                constraint.accept_token(token).map_err(|reason| {
                    Error::internal(format!(
                        "the output constraint refused token {token}, which its own mask allowed: {reason}"
                    ))
                })?;
            }
            let text = decoder.push(self.tokenizer.token_to_piece(token, false));
            let outcome = stops.push(&text);
            if !outcome.emit.is_empty() {
                output.text.push_str(&outcome.emit);
                if !events.on_text(&outcome.emit) {
                    finish = FinishReason::Cancelled;
                    break;
                }
            }
            if outcome.stopped {
                finish = FinishReason::Stop;
                stopped_by_string = true;
                break;
            }
            if constraint.as_deref().is_some_and(|c| c.must_stop()) {
                finish = FinishReason::Stop;
                break;
            }
            if output.token_ids.len() == request.max_tokens {
                break;
            }
            model.forward(
                &self.pool,
                &[token],
                cache,
                Logits::Last,
                &mut scratch,
                &mut logits,
            )?;
        }
        // Text held back as a possible stop-string prefix, or as an incomplete UTF-8
        // sequence, is real output unless a stop string ended generation or the host cancelled.
        if !stopped_by_string && finish != FinishReason::Cancelled {
            let mut rest = stops.push(&decoder.finish()).emit;
            rest.push_str(&stops.finish());
            if !rest.is_empty() {
                output.text.push_str(&rest);
                events.on_text(&rest);
            }
        }
        if let Some(first) = first_token_at {
            usage.decode_ms = first.elapsed().as_secs_f64() * 1000.0;
        }
        usage.completion_tokens = output.token_ids.len();
        output.usage = usage;
        output.finish_reason = finish;
        Ok(output)
    }
}

impl Engine {
    /// Applies one step of `constraint` to `logits`: the tokens it forbids get `-inf`, and
    /// the end-of-generation tokens and stop token ids are allowed exactly where it may stop.
    fn constrain(
        &self,
        constraint: &mut dyn TokenConstraint,
        mask: &mut TokenMask,
        request: &GenerationRequest,
        logits: &mut [f32],
    ) -> Result<()> {
        constraint.compute_mask(mask).map_err(|reason| {
            Error::internal(format!(
                "the output constraint failed to compute a mask: {reason}"
            ))
        })?;
        let may_stop = constraint.may_stop();
        let enders = self
            .tokenizer
            .end_of_generation_ids()
            .filter(|_| !request.ignore_eos)
            .chain(request.stop_token_ids.iter().copied());
        for id in enders {
            if may_stop {
                mask.allow(id);
            } else {
                mask.forbid(id);
            }
        }
        if mask.count_allowed() == 0 {
            return Err(Error::internal(
                "the output constraint allows no token at all: nothing valid can follow",
            ));
        }
        for (id, logit) in (0u32..).zip(logits.iter_mut()) {
            if !mask.is_allowed(id) {
                *logit = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }
}

/// Checks that a prompt of `prompt_len` tokens and up to `max_tokens` generated ones fit in
/// `max_positions` cached positions (the last generated token is never evaluated).
pub fn check_fits(prompt_len: usize, max_tokens: usize, max_positions: usize) -> Result<()> {
    if prompt_len > max_positions || (max_tokens > 0 && prompt_len + max_tokens > max_positions + 1)
    {
        return Err(Error::new(
            ErrorKind::ContextOverflow,
            format!(
                "the prompt is {prompt_len} tokens and max_tokens is {max_tokens}, but the context holds {max_positions} tokens (context_length): {}",
                fit_advice(prompt_len, max_tokens, max_positions)
            ),
        ));
    }
    Ok(())
}

/// The fixes that would make an overflowing prompt fit, and only those.
fn fit_advice(prompt_len: usize, max_tokens: usize, max_positions: usize) -> String {
    let needed = prompt_len.max(prompt_len + max_tokens.saturating_sub(1));
    if prompt_len <= max_positions {
        format!(
            "lower max_tokens to at most {}, raise context_length to at least {needed}, or shorten the prompt",
            max_positions + 1 - prompt_len
        )
    } else {
        format!("shorten the prompt, or raise context_length to at least {needed}")
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
