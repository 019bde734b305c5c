//! A chat session: its history, its own KV cache, and the turn loop that renders the
//! template, applies the context policy, reuses the cached prefix and generates.

use std::sync::Arc;

use super::message::{Message, Role};
use super::policy::{ContextLimits, ContextPolicy, apply_policy};
use super::structured;
use super::template::{BuiltinFormat, ChatTemplate, TemplateContext};
use parking_lot::Mutex;

use crate::api::{RequestOptions, ResponseFormat};
use crate::engine::{
    CacheSlot, Engine, Eviction, FinishReason, GenerationEvents, GenerationRequest, TokenLogprob,
    Usage, check_fits,
};
use crate::error::{Error, Result};
use crate::model::KvCache;
use crate::sample::SamplingParams;

/// How the warning about Gemma's missing system role begins.
const GEMMA_NO_SYSTEM_ROLE: &str = "Gemma's format has no system role";

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
    /// To make room for this turn, another idle chat's KV cache was released (its next
    /// turn recomputes its prompt).
    fn on_kv_eviction(&mut self, _eviction: &Eviction) {}
    /// This turn needs `requested_bytes` of KV cache and nothing more can be evicted under
    /// the engine's `budget_bytes`; the send fails with BUDGET_EXCEEDED.
    fn on_kv_budget_exceeded(&mut self, _requested_bytes: usize, _budget_bytes: usize) {}
    /// Runs a tool call, `call_json` = {"id", "name", "arguments"}; `None` when the host runs
    /// no tools itself (the turn then ends with the calls for the host).
    fn execute_tool(&mut self, _call_json: &str) -> Option<Result<HostReply>> {
        None
    }
    /// A call run through `execute_tool` took `elapsed_ms`.
    fn on_tool_call(&mut self, _name: &str, _elapsed_ms: f64) {}
    /// Retrieved chunks for `query` as a JSON array; `None` when the host has no retriever.
    fn retrieve(&mut self, _query: &str) -> Option<Result<HostReply>> {
        None
    }
}

/// What a host callback that supplies data answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostReply {
    Content(String),
    /// The host asked to cancel the send.
    Cancel,
}

/// A host that listens to nothing.
impl ChatEvents for crate::engine::NoEvents {}

/// Settings fixed when a session is created.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub session_id: String,
    /// Rendered as the first message when the conversation has no system message; never
    /// part of the history.
    pub system_prompt: Option<String>,
    /// Overrides the engine's template (its `chat_template` option, else the file's).
    pub chat_template: Option<String>,
    /// Tokenize message content with special tokens parsed, as the template's markup is
    /// (default false: content is plain text, so it cannot open turns of its own).
    pub parse_special_in_content: bool,
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
    /// What the host should know about how the prompt was made.
    pub warnings: Vec<String>,
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
    /// Things the host should know about this turn (e.g. a restored KV snapshot that was
    /// dropped), also reported in the response's "warnings".
    pub warnings: Vec<String>,
}

pub struct Session {
    engine: Arc<Engine>,
    template: ChatTemplate,
    /// The built-in format in use when the file has no template.
    builtin: Option<BuiltinFormat>,
    /// Special tokens that message content never produces, even user-defined ones: those
    /// the template's markup uses (other than whitespace), BOS and the end-of-generation
    /// tokens (sorted). Control tokens never come from content anyway.
    markup_tokens: Vec<u32>,
    config: SessionConfig,
    history: Vec<Message>,
    /// Locked by this session for a whole turn; the engine's KV budget may release it
    /// (try_lock) while the session is idle.
    cache: CacheSlot,
    /// This session's registration with the engine's KV budget.
    budget_id: u64,
    /// Positions the cache may hold (`max_kv_tokens`, or the engine's context).
    max_positions: usize,
    turns: u64,
    /// Reported with the next turn.
    pending_warnings: Vec<String>,
    /// The Gemma system-role warning was given in a response already (it is given once per
    /// conversation; `render` gives it every time).
    gemma_system_warned: bool,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.engine.kv_budget().unregister(self.budget_id);
    }
}

impl Session {
    /// A new, empty session. The template is the chat's `chat_template` option, else the
    /// engine's, else the model's own (`tokenizer.chat_template`), else a built-in format
    /// (`BuiltinFormat::for_model`).
    pub fn new(engine: Arc<Engine>, config: SessionConfig) -> Result<Self> {
        let tokenizer = &engine.tokenizer;
        let (template, builtin, source) = match config
            .chat_template
            .as_deref()
            .or_else(|| engine.chat_template())
        {
            Some(source) => (ChatTemplate::new(source)?, None, source.to_string()),
            None => {
                let format = engine.architecture().map_or(BuiltinFormat::ChatMl, |arch| {
                    BuiltinFormat::for_model(arch, &|text| tokenizer.token_id(text).is_some())
                });
                (
                    ChatTemplate::builtin(format),
                    Some(format),
                    format.source().to_string(),
                )
            }
        };
        let mut markup_tokens: Vec<u32> = tokenizer
            .special_ids()
            .into_iter()
            .filter(|&id| {
                tokenizer.bos_id() == Some(id)
                    || tokenizer.is_end_of_generation(id)
                    || tokenizer.token_text(id).is_some_and(|text| {
                        // Whitespace runs (Gemma's user-defined "\n\n", ...) are text.
                        !text.trim().is_empty() && source.contains(text)
                    })
            })
            .collect();
        markup_tokens.sort_unstable();
        let context_length = engine.context_length();
        if context_length == 0 {
            return Err(Error::invalid_argument(
                "the model file gives no context length; set the engine's context_length",
            ));
        }
        let max_positions = match config.max_kv_tokens {
            None => context_length,
            Some(n) if n > context_length => {
                return Err(Error::invalid_argument(format!(
                    "max_kv_tokens is {n}, but the engine's context holds {context_length} tokens; lower it or raise the engine's context_length"
                )));
            }
            Some(n) => n,
        };
        let cache: CacheSlot = Arc::new(Mutex::new(engine.new_cache_of(max_positions)));
        let budget_id = engine.kv_budget().register(&config.session_id, &cache);
        Ok(Self {
            engine,
            template,
            builtin,
            markup_tokens,
            config,
            history: Vec::new(),
            cache,
            budget_id,
            max_positions,
            turns: 0,
            pending_warnings: Vec::new(),
            gemma_system_warned: false,
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
        self.cache.lock().clear();
    }

    /// Installs a restored KV cache (a snapshot that matches this engine and session: the
    /// caller checked its model, type and limits). It counts against the engine's budget
    /// like any other; when it does not fit the error says why and the cache stays empty.
    pub fn restore_cache(&mut self, restored: KvCache, events: &mut dyn ChatEvents) -> Result<()> {
        let mut cache = self.cache.lock();
        let budget = self.engine.kv_budget();
        match budget.reserve(self.budget_id, restored.bytes()) {
            Ok(evictions) => evictions.iter().for_each(|e| events.on_kv_eviction(e)),
            Err(e) => {
                events.on_kv_budget_exceeded(e.requested_bytes, e.budget_bytes);
                budget.settle(self.budget_id, &cache);
                return Err(e.error);
            }
        }
        *cache = restored;
        budget.settle(self.budget_id, &cache);
        Ok(())
    }

    /// Runs `f` on the KV cache (export).
    pub fn with_cache<R>(&self, f: impl FnOnce(&KvCache) -> R) -> R {
        f(&self.cache.lock())
    }

    /// A warning reported with the next turn's response.
    pub fn add_warning(&mut self, warning: String) {
        self.pending_warnings.push(warning);
    }

    /// Forgets the conversation and the cache.
    pub fn reset(&mut self) {
        self.history.clear();
        self.gemma_system_warned = false;
        let mut cache = self.cache.lock();
        cache.release();
        self.engine.kv_budget().settle(self.budget_id, &cache);
    }

    /// Bytes held by this session's KV cache.
    pub fn kv_bytes(&self) -> usize {
        self.cache.lock().bytes()
    }

    /// Positions this session's cache may hold (`max_kv_tokens`, or the engine's context).
    pub fn max_kv_positions(&self) -> usize {
        self.max_positions
    }

    fn context_length(&self) -> usize {
        self.max_kv_positions()
    }

    /// Renders `messages` with the template and tokenizes the result: the template's markup
    /// with special tokens parsed, message content as plain text (unless the option
    /// `parse_special_in_content` is set). Returns the prompt as text (with the BOS when one
    /// was added), as token ids, and warnings.
    fn render_prompt(&self, messages: &[Message]) -> Result<(String, Vec<u32>, Vec<String>)> {
        let tokenizer = &self.engine.tokenizer;
        let bos = tokenizer
            .bos_id()
            .and_then(|id| tokenizer.token_text(id))
            .unwrap_or("");
        let eos = tokenizer
            .eos_id()
            .and_then(|id| tokenizer.token_text(id))
            .unwrap_or("");
        let ctx = TemplateContext {
            messages,
            tools: None,
            add_generation_prompt: true,
            bos_token: bos,
            eos_token: eos,
        };
        let mut warnings = Vec::new();
        let (mut text, mut ids) = if self.config.parse_special_in_content {
            let text = self.template.render(&ctx)?;
            let ids = tokenizer.encode(&text, false, true);
            (text, ids)
        } else {
            let rendered = self.template.render_with_content_spans(&ctx)?;
            let ids = match &rendered.content_spans {
                Some(spans) => {
                    tokenizer.encode_with_plain_ranges(&rendered.text, spans, &self.markup_tokens)
                }
                None => {
                    warnings.push(
                        "the chat template changes message content in a way smallmind cannot trace, so special-token text in the content was parsed as special tokens".to_string(),
                    );
                    tokenizer.encode(&rendered.text, false, true)
                }
            };
            (rendered.text, ids)
        };
        // Templates that write the BOS themselves must not get a second one.
        let add_bos = tokenizer.add_bos() && (bos.is_empty() || !text.starts_with(bos));
        if add_bos && let Some(bos_id) = tokenizer.bos_id() {
            ids.insert(0, bos_id);
            text.insert_str(0, bos);
        }
        if self.builtin == Some(BuiltinFormat::Gemma)
            && messages.first().is_some_and(|m| m.role == Role::System)
        {
            warnings.push(if messages.iter().any(|m| m.role == Role::User) {
                format!("{GEMMA_NO_SYSTEM_ROLE}: the system message was put at the start of the first user turn, as Gemma's own template does")
            } else {
                format!("{GEMMA_NO_SYSTEM_ROLE}: the system message was rendered as a user turn, since the conversation has none")
            });
        }
        Ok((text, ids, warnings))
    }

    /// Builds the prompt `turn` would give the model: the conversation (history and the new
    /// messages, or the new messages alone with history "replace"), the system prompt option
    /// rendered first when the conversation has no system message (it is not part of the
    /// conversation), and the context policy applied. Changes nothing.
    pub fn prepare(&self, turn: &Turn) -> Result<PreparedPrompt> {
        let conversation = match turn.history {
            HistoryMode::Append => {
                let mut all = self.history.clone();
                all.extend(turn.messages.iter().cloned());
                all
            }
            HistoryMode::Replace => turn.messages.clone(),
        };
        let mut rendered = conversation.clone();
        if let Some(system) = &self.config.system_prompt
            && !rendered.iter().any(|m| m.role == Role::System)
        {
            rendered.insert(0, Message::new(Role::System, system.clone()));
        }
        let policy = turn
            .context_policy
            .clone()
            .unwrap_or_else(|| self.config.context_policy.clone());
        let outcome = {
            let mut count = |indices: &[usize]| -> Result<u32> {
                let subset: Vec<Message> = indices.iter().map(|&i| rendered[i].clone()).collect();
                Ok(u32::try_from(self.render_prompt(&subset)?.1.len()).unwrap_or(u32::MAX))
            };
            let limits = ContextLimits {
                context: u32::try_from(self.context_length()).unwrap_or(u32::MAX),
                context_option: if self.config.max_kv_tokens.is_some() {
                    "max_kv_tokens"
                } else {
                    "context_length"
                },
                reserve: u32::try_from(turn.max_tokens).unwrap_or(u32::MAX),
            };
            apply_policy(&policy, &rendered, limits, &mut count)?
        };
        let kept: Vec<Message> = outcome.kept.iter().map(|&i| rendered[i].clone()).collect();
        let (text, token_ids, warnings) = self.render_prompt(&kept)?;
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
            warnings,
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
        self.engine.model()?;
        let PreparedPrompt {
            mut conversation,
            token_ids,
            context,
            warnings,
            ..
        } = self.prepare(&turn)?;
        let slot = Arc::clone(&self.cache);
        let mut cache = slot.lock();
        // Make room in the engine's KV budget for the most this turn can hold.
        check_fits(token_ids.len(), turn.max_tokens, cache.max_positions())?;
        let budget = self.engine.kv_budget();
        let needed = cache.bytes_for(token_ids.len() + turn.max_tokens);
        match budget.reserve(self.budget_id, needed) {
            Ok(evictions) => evictions.iter().for_each(|e| events.on_kv_eviction(e)),
            Err(e) => {
                events.on_kv_budget_exceeded(e.requested_bytes, e.budget_bytes);
                budget.settle(self.budget_id, &cache);
                return Err(e.error);
            }
        }
        events.on_request_start(turn.messages.len());
        if !self.config.kv_cache {
            cache.clear();
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
            &mut cache,
            &request,
            constraint.as_deref_mut(),
            &mut ordered,
        );
        budget.settle(self.budget_id, &cache);
        drop(cache);
        let output = output?;
        self.turns += 1;
        let format_warnings =
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
            warnings: {
                let mut all = std::mem::take(&mut self.pending_warnings);
                for warning in warnings {
                    if warning.starts_with(GEMMA_NO_SYSTEM_ROLE) {
                        if self.gemma_system_warned {
                            continue;
                        }
                        self.gemma_system_warned = true;
                    }
                    all.push(warning);
                }
                all.extend(format_warnings);
                all
            },
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
