//! A chat session: its history, its own KV cache, and the turn loop that renders the
//! template, applies the context policy, reuses the cached prefix and generates.

use std::sync::Arc;

use super::message::{Message, Role};
use super::policy::{ContextPolicy, apply_policy};
use super::structured;
use super::template::{BuiltinFormat, ChatTemplate, TemplateContext};
use crate::api::{RequestOptions, ResponseFormat};
use crate::engine::{
    Engine, FinishReason, GenerationEvents, GenerationRequest, TokenLogprob, Usage,
};
use crate::error::{Error, Result};
use crate::model::KvCache;
use crate::sample::SamplingParams;

/// What a host hears during `send`, beyond the generation events.
pub trait ChatEvents: GenerationEvents {
    /// The request passed validation and fits the context; `message_count` is the number of
    /// messages it carried.
    fn on_request_start(&mut self, _message_count: usize) {}
    /// The context policy ran (every send): prompt tokens of the whole conversation and of
    /// what was kept.
    fn on_context_policy_applied(
        &mut self,
        _policy: &str,
        _tokens_before: usize,
        _tokens_after: usize,
    ) {
    }
    /// The turn finished (also when cancelled) with these measured figures.
    fn on_request_complete(&mut self, _usage: &Usage) {}
}

/// A host that listens to nothing.
impl ChatEvents for crate::engine::NoEvents {}

/// Settings fixed when a session is created.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub session_id: String,
    /// Prepended as a system message when the conversation has none.
    pub system_prompt: Option<String>,
    pub context_policy: ContextPolicy,
    /// Reuse the KV cache across turns (default true).
    pub kv_cache: bool,
    /// Upper bound on this session's cached positions (default: the engine's context length).
    pub max_kv_tokens: Option<usize>,
    /// The generation options of every turn where its request gives none (a seed given here
    /// is reused by every turn; otherwise each turn draws a new one).
    pub defaults: RequestOptions,
}

/// Whether a request's messages extend the history or replace it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HistoryMode {
    #[default]
    Append,
    Replace,
}

/// One turn's input, validated.
#[derive(Debug, Clone)]
pub struct Turn {
    pub messages: Vec<Message>,
    pub history: HistoryMode,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub top_logprobs: Option<usize>,
    pub response_format: ResponseFormat,
    pub context_policy: Option<ContextPolicy>,
    /// When the host's call began.
    pub started_at: std::time::Instant,
}

/// What the context policy did to this turn's prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct ContextReport {
    pub policy: &'static str,
    pub tokens_before: usize,
    pub tokens_after: usize,
    pub dropped_messages: usize,
}

/// The prompt of a turn, before generation.
#[derive(Debug, Clone)]
pub struct PreparedPrompt {
    /// Every message of the conversation, before the policy dropped any.
    pub conversation: Vec<Message>,
    /// The rendered template, as the tokenizer saw it.
    pub text: String,
    pub token_ids: Vec<u32>,
    pub context: ContextReport,
}

/// One turn's result.
#[derive(Debug, Clone)]
pub struct TurnOutput {
    pub reply: Message,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub context: ContextReport,
    pub token_ids: Vec<u32>,
    pub logprobs: Vec<TokenLogprob>,
    /// What the response should tell the host (a reply cut short under a response_format).
    pub warnings: Vec<String>,
}

pub struct Session {
    engine: Arc<Engine>,
    template: ChatTemplate,
    config: SessionConfig,
    history: Vec<Message>,
    cache: KvCache,
    turns: u64,
}

impl Session {
    /// A new, empty session. The template is the model's own (`tokenizer.chat_template`) or,
    /// when the file has none, ChatML.
    pub fn new(engine: Arc<Engine>, config: SessionConfig) -> Result<Self> {
        let template = match engine.model.file.get_str("tokenizer.chat_template") {
            Some(source) => ChatTemplate::new(source)?,
            None => {
                ChatTemplate::builtin(BuiltinFormat::for_architecture(engine.model.hparams.arch))
            }
        };
        let context_length = engine.context_length();
        let max_positions = match config.max_kv_tokens {
            None => context_length,
            Some(n) if n > context_length => {
                return Err(Error::invalid_argument(format!(
                    "max_kv_tokens is {n}, but the engine's context holds {context_length} tokens; lower it or raise the engine's context_length"
                )));
            }
            Some(n) => n,
        };
        let cache = engine.model.new_cache(engine.kv_type(), max_positions);
        Ok(Self {
            engine,
            template,
            config,
            history: Vec::new(),
            cache,
            turns: 0,
        })
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    pub fn history(&self) -> &[Message] {
        &self.history
    }

    /// Replaces the history (import); the cache is rebuilt on the next turn.
    pub fn set_history(&mut self, history: Vec<Message>) {
        self.history = history;
        self.cache.clear();
    }

    /// Forgets the conversation and the cache.
    pub fn reset(&mut self) {
        self.history.clear();
        self.cache.release();
    }

    /// Bytes held by this session's KV cache.
    pub fn kv_bytes(&self) -> usize {
        self.cache.bytes()
    }

    fn context_length(&self) -> usize {
        self.cache.max_positions()
    }

    /// Renders `messages` with the template and tokenizes the result, special tokens parsed.
    /// Returns the prompt as text (with the BOS when one was added) and as token ids.
    fn render_prompt(&self, messages: &[Message]) -> Result<(String, Vec<u32>)> {
        let tokenizer = &self.engine.tokenizer;
        let bos = tokenizer
            .bos_id()
            .and_then(|id| tokenizer.token_text(id))
            .unwrap_or("");
        let eos = tokenizer
            .eos_id()
            .and_then(|id| tokenizer.token_text(id))
            .unwrap_or("");
        let mut text = self.template.render(&TemplateContext {
            messages,
            tools: None,
            add_generation_prompt: true,
            bos_token: bos,
            eos_token: eos,
        })?;
        let mut ids = tokenizer.encode(&text, false, true);
        // Templates that write the BOS themselves must not get a second one.
        let add_bos = tokenizer.add_bos() && (bos.is_empty() || !text.starts_with(bos));
        if add_bos && let Some(bos_id) = tokenizer.bos_id() {
            ids.insert(0, bos_id);
            text.insert_str(0, bos);
        }
        Ok((text, ids))
    }

    /// Builds the prompt `turn` would give the model: the conversation (history and the new
    /// messages, or the new messages alone with history "replace"), the system prompt when the
    /// conversation has none, and the context policy applied. Changes nothing.
    pub fn prepare(&self, turn: &Turn) -> Result<PreparedPrompt> {
        let mut conversation = match turn.history {
            HistoryMode::Append => {
                let mut all = self.history.clone();
                all.extend(turn.messages.iter().cloned());
                all
            }
            HistoryMode::Replace => turn.messages.clone(),
        };
        if let Some(system) = &self.config.system_prompt
            && !conversation.iter().any(|m| m.role == Role::System)
        {
            conversation.insert(0, Message::new(Role::System, system.clone()));
        }
        let policy = turn
            .context_policy
            .clone()
            .unwrap_or_else(|| self.config.context_policy.clone());
        let outcome = {
            let mut count = |indices: &[usize]| -> Result<u32> {
                let subset: Vec<Message> =
                    indices.iter().map(|&i| conversation[i].clone()).collect();
                Ok(u32::try_from(self.render_prompt(&subset)?.1.len()).unwrap_or(u32::MAX))
            };
            let context_length = u32::try_from(self.context_length()).unwrap_or(u32::MAX);
            let reserve = u32::try_from(turn.max_tokens).unwrap_or(u32::MAX);
            apply_policy(&policy, &conversation, context_length, reserve, &mut count)?
        };
        let kept: Vec<Message> = outcome
            .kept
            .iter()
            .map(|&i| conversation[i].clone())
            .collect();
        let (text, token_ids) = self.render_prompt(&kept)?;
        let context = ContextReport {
            policy: policy.name(),
            tokens_before: outcome.tokens_before as usize,
            tokens_after: token_ids.len(),
            dropped_messages: outcome.dropped.len(),
        };
        Ok(PreparedPrompt {
            conversation,
            text,
            token_ids,
            context,
        })
    }

    /// Runs one turn: builds the prompt (see `prepare`), generates the reply reusing the
    /// cached prefix, and records the conversation and the reply in the history. A turn that
    /// was cancelled leaves the history as it was, so the host can send it again.
    ///
    /// Events, each once: on_request_start, on_cache_lookup, on_context_policy_applied,
    /// on_first_token (unless cancelled before it), on_text for every piece,
    /// on_request_complete. A request that overflows the context hears nothing.
    pub fn send(&mut self, turn: Turn, events: &mut dyn ChatEvents) -> Result<TurnOutput> {
        let PreparedPrompt {
            mut conversation,
            token_ids,
            context,
            ..
        } = self.prepare(&turn)?;
        events.on_request_start(turn.messages.len());
        if !self.config.kv_cache {
            self.cache.clear();
        }
        let request = GenerationRequest {
            prompt: token_ids,
            sampling: turn.sampling,
            max_tokens: turn.max_tokens,
            stop: turn.stop,
            stop_token_ids: turn.stop_token_ids,
            ignore_eos: turn.ignore_eos,
            top_logprobs: turn.top_logprobs,
            prompt_logprobs: false,
            started_at: turn.started_at,
        };
        let mut constraint = structured::response_constraint(&self.engine, &turn.response_format)?;
        let mut ordered = PolicyAfterCacheLookup {
            inner: events,
            context: &context,
            announced: false,
        };
        let output = self.engine.generate(
            &mut self.cache,
            &request,
            constraint.as_deref_mut(),
            &mut ordered,
        )?;
        self.turns += 1;
        let warnings =
            structured::check_reply(&turn.response_format, &output.text, output.finish_reason)?;

        let reply = Message::new(Role::Assistant, output.text.clone());
        if output.finish_reason != FinishReason::Cancelled {
            conversation.push(reply.clone());
            self.history = conversation;
        }
        events.on_request_complete(&output.usage);
        Ok(TurnOutput {
            reply,
            finish_reason: output.finish_reason,
            usage: output.usage,
            context,
            token_ids: output.token_ids,
            logprobs: output.logprobs,
            warnings,
        })
    }

    /// How many turns this session has answered.
    pub fn turns(&self) -> u64 {
        self.turns
    }
}

/// Delivers the policy event right after the KV cache event, the documented order
/// (start → kv access → policy → first token → tokens → complete).
struct PolicyAfterCacheLookup<'a> {
    inner: &'a mut dyn ChatEvents,
    context: &'a ContextReport,
    announced: bool,
}

impl GenerationEvents for PolicyAfterCacheLookup<'_> {
    fn on_cache_lookup(&mut self, cached_tokens: usize) {
        self.inner.on_cache_lookup(cached_tokens);
        if !self.announced {
            self.announced = true;
            let c = self.context;
            self.inner
                .on_context_policy_applied(c.policy, c.tokens_before, c.tokens_after);
        }
    }
    fn on_first_token(&mut self, elapsed_ms: f64) {
        self.inner.on_first_token(elapsed_ms);
    }
    fn on_text(&mut self, text: &str) -> bool {
        self.inner.on_text(text)
    }
    fn cancelled(&mut self) -> bool {
        self.inner.cancelled()
    }
}
