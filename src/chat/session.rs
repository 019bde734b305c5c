//! A chat session: its history, its own KV cache, and the turn loop that renders the
//! template, applies the context policy, reuses the cached prefix and generates.

use std::sync::Arc;

use super::message::{Message, Role};
use super::policy::{ContextPolicy, apply_policy};
use super::template::{BuiltinFormat, ChatTemplate, TemplateContext};
use crate::engine::{Engine, FinishReason, GenerationEvents, GenerationRequest, Usage};
use crate::error::Result;
use crate::model::KvCache;
use crate::sample::SamplingParams;

/// What a host hears during `send`, beyond the generation events.
pub trait ChatEvents: GenerationEvents {
    fn on_request_start(&mut self, _message_count: usize) {}
    fn on_context_policy_applied(
        &mut self,
        _policy: &str,
        _tokens_before: usize,
        _tokens_after: usize,
    ) {
    }
}

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
    /// Sampling used when a request gives no value.
    pub sampling: SamplingParams,
    /// The options gave a seed: every turn reuses it (otherwise each turn draws a new one).
    pub fixed_seed: bool,
    pub max_tokens: usize,
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

/// One turn's result.
#[derive(Debug, Clone)]
pub struct TurnOutput {
    pub reply: Message,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub context: ContextReport,
    pub token_ids: Vec<u32>,
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
        let max_positions = config
            .max_kv_tokens
            .unwrap_or(engine.context_length())
            .min(engine.context_length());
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
    fn prompt_tokens(&self, messages: &[Message], add_generation_prompt: bool) -> Result<Vec<u32>> {
        let tokenizer = &self.engine.tokenizer;
        let bos = tokenizer
            .bos_id()
            .and_then(|id| tokenizer.token_text(id))
            .unwrap_or("");
        let eos = tokenizer
            .eos_id()
            .and_then(|id| tokenizer.token_text(id))
            .unwrap_or("");
        let text = self.template.render(&TemplateContext {
            messages,
            tools: None,
            add_generation_prompt,
            bos_token: bos,
            eos_token: eos,
        })?;
        // Templates that write the BOS themselves must not get a second one.
        let add_bos = tokenizer.add_bos() && (bos.is_empty() || !text.starts_with(bos));
        let mut ids = tokenizer.encode(&text, false, true);
        if add_bos && let Some(bos_id) = tokenizer.bos_id() {
            ids.insert(0, bos_id);
        }
        Ok(ids)
    }

    /// Runs one turn: builds the conversation, applies the context policy, generates the reply
    /// reusing the cached prefix, and records the reply in the history.
    pub fn send(&mut self, turn: Turn, events: &mut dyn ChatEvents) -> Result<TurnOutput> {
        events.on_request_start(turn.messages.len());
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
        let context_length = self.context_length();
        let outcome = {
            let mut count = |indices: &[usize]| -> Result<u32> {
                let subset: Vec<Message> =
                    indices.iter().map(|&i| conversation[i].clone()).collect();
                Ok(self.prompt_tokens(&subset, true)?.len() as u32)
            };
            apply_policy(
                &policy,
                &conversation,
                context_length as u32,
                turn.max_tokens as u32,
                &mut count,
            )?
        };
        let kept: Vec<Message> = outcome
            .kept
            .iter()
            .map(|&i| conversation[i].clone())
            .collect();
        let prompt = self.prompt_tokens(&kept, true)?;
        let context = ContextReport {
            policy: policy.name(),
            tokens_before: outcome.tokens_before as usize,
            tokens_after: prompt.len(),
            dropped_messages: outcome.dropped.len(),
        };

        if !self.config.kv_cache {
            self.cache.clear();
        }
        let request = GenerationRequest {
            prompt,
            sampling: turn.sampling,
            max_tokens: turn.max_tokens,
            stop: turn.stop,
            stop_token_ids: turn.stop_token_ids,
            ignore_eos: false,
            top_logprobs: None,
            prompt_logprobs: false,
            started_at: turn.started_at,
        };
        let mut ordered = PolicyAfterCacheLookup {
            inner: events,
            context: &context,
            announced: false,
        };
        let output = self
            .engine
            .generate(&mut self.cache, &request, &mut ordered)?;
        self.turns += 1;

        let reply = Message::new(Role::Assistant, output.text.clone());
        if output.finish_reason != FinishReason::Cancelled {
            conversation.push(reply.clone());
            self.history = conversation;
        }
        Ok(TurnOutput {
            reply,
            finish_reason: output.finish_reason,
            usage: output.usage,
            context,
            token_ids: output.token_ids,
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
