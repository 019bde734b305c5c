//! A chat session: its history, its own KV cache, and the turn loop that renders the
//! template, applies the context policy, reuses the cached prefix and generates.

use std::sync::Arc;

use std::time::Instant;

use super::message::{FunctionCall, Message, Role, ToolCall};
use super::policy::{ContextLimits, ContextPolicy, apply_policy};
use super::retrieval::{Chunk, Citation, citations, documents_value, retrieval_section};
use super::structured::{self, validate_json_against_schema};
use super::template::{BuiltinFormat, ChatTemplate, TemplateContext};
use super::tool_constraint::tool_constraint;
use super::tools::{
    ToolChoice, ToolFormat, Tools, builtin_tool_section, lower_for_builtin, parse_reply,
};
use crate::api::{RequestOptions, ResponseFormat};
use crate::engine::KvCache;
use crate::engine::{
    CacheSlot, Engine, Eviction, FinishReason, GenerationEvents, GenerationRequest, TokenLogprob,
    Usage, check_fits,
};
use crate::error::{Error, Result};
use crate::sample::SamplingParams;
use parking_lot::Mutex;

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
    /// The host runs tool calls itself through `execute_tool`.
    fn can_execute_tools(&self) -> bool {
        false
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
    /// The functions the model may call (None: no tools).
    pub tools: Option<Tools>,
    pub tool_choice: ToolChoice,
    /// Calls the send runs through the host's executor before it stops and returns the
    /// model's next calls to the host.
    pub max_tool_calls: usize,
    /// Chunks for the prompt, numbered [1]..[n] in this order.
    pub retrieved_context: Vec<Chunk>,
    /// When the host's call began.
    pub started_at: std::time::Instant,
}

/// Default bound on the calls one send runs through the host's executor.
pub const DEFAULT_MAX_TOOL_CALLS: usize = 8;

/// A call the send ran through the host's executor.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    pub id: String,
    pub name: String,
    /// The arguments as a JSON string.
    pub arguments: String,
    pub content: String,
    pub elapsed_ms: f64,
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
    /// How many of `token_ids` the leading system messages (with the tool and retrieval
    /// sections) render to on their own: the part other chats with the same system turn
    /// share (0 without a system message).
    pub shared_prefix: usize,
    pub context: ContextReport,
    /// What the host should know about how the prompt was made.
    pub warnings: Vec<String>,
}

/// One turn's result.
#[derive(Debug, Clone)]
pub struct TurnOutput {
    /// The last assistant message (with its `tool_calls` when the turn ended on calls).
    pub reply: Message,
    /// Of the last generation.
    pub finish_reason: FinishReason,
    /// The turn ended with tool calls for the host to run (finish_reason "tool_calls").
    pub ended_on_tool_calls: bool,
    /// Calls run through the host's executor, in order.
    pub tool_results: Vec<ToolResult>,
    /// The retrieved chunks the reply cites, in order of first mention.
    pub citations: Vec<Citation>,
    /// What the response should tell the host (parse failures, max_tool_calls, unknown
    /// citation markers, a reply cut short under a response_format).
    pub warnings: Vec<String>,
    pub usage: Usage,
    pub context: ContextReport,
    pub token_ids: Vec<u32>,
    /// Of every generated token, when the request asked for `logprobs`.
    pub logprobs: Vec<TokenLogprob>,
}

pub struct Session {
    engine: Arc<Engine>,
    template: ChatTemplate,
    /// How the model writes tool calls.
    tool_format: ToolFormat,
    /// The template renders `tools` (and tool messages) itself; otherwise the built-in tool
    /// section and `lower_for_builtin` stand in.
    native_tools: bool,
    /// The template has a `documents` variable for retrieved chunks.
    template_documents: bool,
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
        let template_source = builtin.is_none().then_some(source.as_str());
        let (tool_format, native_tools) = ToolFormat::for_template(template_source);
        let template_documents = template_source.is_some_and(|s| s.contains("documents"));
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
            tool_format,
            native_tools,
            template_documents,
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
    /// `parse_special_in_content` is set). The turn's tools and retrieved chunks join the
    /// prompt (the template's variables, or built-in system sections). Returns the prompt as
    /// text (with the BOS when one was added), as token ids, and warnings.
    fn render_prompt(
        &self,
        messages: &[Message],
        turn: &Turn,
    ) -> Result<(String, Vec<u32>, Vec<String>)> {
        let tokenizer = &self.engine.tokenizer;
        let bos = tokenizer
            .bos_id()
            .and_then(|id| tokenizer.token_text(id))
            .unwrap_or("");
        let eos = tokenizer
            .eos_id()
            .and_then(|id| tokenizer.token_text(id))
            .unwrap_or("");
        let offered = turn
            .tools
            .as_ref()
            .filter(|_| turn.tool_choice != ToolChoice::None);
        let mut messages = if self.native_tools {
            messages.to_vec()
        } else {
            lower_for_builtin(messages)
        };
        let mut section = Vec::new();
        if !self.native_tools
            && let Some(tools) = offered
        {
            section.push(builtin_tool_section(tools));
        }
        if !turn.retrieved_context.is_empty() && !self.template_documents {
            section.push(retrieval_section(&turn.retrieved_context));
        }
        if !section.is_empty() {
            let section = section.join("\n\n");
            match messages.first_mut() {
                Some(first) if first.role == Role::System => {
                    first.content = format!("{}\n\n{section}", first.content.trim_end());
                }
                _ => messages.insert(0, Message::new(Role::System, section)),
            }
        }
        let documents = (self.template_documents && !turn.retrieved_context.is_empty())
            .then(|| documents_value(&turn.retrieved_context));
        let ctx = TemplateContext {
            messages: &messages,
            tools: offered.filter(|_| self.native_tools).map(|t| &t.json),
            documents: documents.as_ref(),
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
        self.prepare_conversation(self.conversation(turn), turn)
    }

    /// The history and the turn's messages (or the messages alone with history "replace").
    fn conversation(&self, turn: &Turn) -> Vec<Message> {
        match turn.history {
            HistoryMode::Append => {
                let mut all = self.history.clone();
                all.extend(turn.messages.iter().cloned());
                all
            }
            HistoryMode::Replace => turn.messages.clone(),
        }
    }

    /// The prompt of `conversation` for `turn` (see `prepare`).
    fn prepare_conversation(
        &self,
        conversation: Vec<Message>,
        turn: &Turn,
    ) -> Result<PreparedPrompt> {
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
                Ok(u32::try_from(self.render_prompt(&subset, turn)?.1.len()).unwrap_or(u32::MAX))
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
        let (text, token_ids, warnings) = self.render_prompt(&kept, turn)?;
        let shared_prefix = self.system_turn_tokens(&kept, &token_ids, turn);
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
            shared_prefix,
            context,
            warnings,
        })
    }

    /// The tokens of `prompt` that the leading system messages of `messages` render to by
    /// themselves: where this prompt and every other with the same system turn agree.
    /// 0 when there is no system message, nothing after it, or the template cannot render
    /// the system messages alone.
    fn system_turn_tokens(&self, messages: &[Message], prompt: &[u32], turn: &Turn) -> usize {
        let leading = messages
            .iter()
            .take_while(|m| m.role == Role::System)
            .count();
        if leading == 0 || leading == messages.len() {
            return 0;
        }
        match self.render_prompt(&messages[..leading], turn) {
            Ok((_, alone, _)) => alone.iter().zip(prompt).take_while(|(a, b)| a == b).count(),
            Err(_) => 0,
        }
    }

    /// Runs one turn: retrieves chunks (the host's retriever, if any), builds the prompt (see
    /// `prepare`), generates the reply reusing the cached prefix, and, when the model calls
    /// tools and the host runs them (`execute_tool`), feeds the results back and generates
    /// again until a plain reply or `max_tool_calls`. The history records the conversation,
    /// the assistant's calls and the tool results. A turn that was cancelled leaves the
    /// history as it was, so the host can send it again.
    ///
    /// Events, each once per send: on_request_start, on_cache_lookup,
    /// on_context_policy_applied, on_first_token (unless cancelled before it); on_text for
    /// every piece of reply text (never tool-call markup); on_tool_call per call run;
    /// on_request_complete. A request that overflows the context hears nothing.
    pub fn send(&mut self, mut turn: Turn, events: &mut dyn ChatEvents) -> Result<TurnOutput> {
        self.engine.ensure_weights()?;
        let mut warnings = Vec::new();
        if let Some(query) = turn.messages.iter().rev().find(|m| m.role == Role::User) {
            match events.retrieve(&query.content) {
                None => {}
                Some(Err(e)) => return Err(e),
                Some(Ok(HostReply::Cancel)) => return self.cancelled_before_start(&turn),
                Some(Ok(HostReply::Content(json))) => {
                    let what = "the retrieve callback's result";
                    let value: serde_json::Value = serde_json::from_str(&json).map_err(|e| {
                        Error::invalid_argument(format!(
                            "{what} is not JSON ({e}); answer with a JSON array of chunks"
                        ))
                    })?;
                    turn.retrieved_context
                        .extend(super::retrieval::chunks_from_value(&value, what)?);
                }
            }
        }
        let mut conversation = self.conversation(&turn);
        let mut prepared = self.prepare_conversation(conversation.clone(), &turn)?;
        let context = prepared.context.clone();
        warnings.append(&mut prepared.warnings);
        let slot = Arc::clone(&self.cache);
        let mut cache = slot.lock();
        if !self.config.kv_cache {
            cache.clear();
        }
        self.share_and_reserve(&mut cache, &prepared, turn.max_tokens, events)?;
        events.on_request_start(turn.messages.len());
        let parse_calls = turn.tools.is_some() && turn.tool_choice != ToolChoice::None;
        let mut once = OncePerSend::default();
        let mut usage = Usage::default();
        let mut tool_results = Vec::new();
        let mut executed = 0usize;
        let mut token_ids = Vec::new();
        let mut logprobs = Vec::new();
        let mut held = Some(cache);
        let (reply, finish_reason, ended_on_tool_calls) = loop {
            let mut cache = match held.take() {
                Some(cache) => cache,
                None => {
                    let mut cache = slot.lock();
                    self.share_and_reserve(&mut cache, &prepared, turn.max_tokens, events)?;
                    cache
                }
            };
            let request = GenerationRequest {
                prompt: std::mem::take(&mut prepared.token_ids),
                sampling: turn.sampling.clone(),
                max_tokens: turn.max_tokens,
                stop: turn.stop.clone(),
                stop_token_ids: turn.stop_token_ids.clone(),
                ignore_eos: turn.ignore_eos,
                top_logprobs: turn.top_logprobs,
                prompt_logprobs: false,
                started_at: turn.started_at,
                shared_prefix: prepared.shared_prefix,
            };
            let mut constraint = match (&turn.tools, parse_calls) {
                (Some(tools), true) => {
                    tool_constraint(&self.engine, self.tool_format, tools, &turn.tool_choice)?
                }
                _ => structured::response_constraint(&self.engine, &turn.response_format)?,
            };
            let mut step = StepEvents {
                inner: &mut *events,
                context: &context,
                once: &mut once,
                hold: parse_calls.then(|| HoldBack::new(self.tool_format.open_marker())),
            };
            let output = self.engine.generate(
                &mut cache,
                &request,
                constraint
                    .as_mut()
                    .map(|c| &mut **c as &mut dyn crate::sample::TokenConstraint),
                &mut step,
            );
            self.engine.kv_budget().settle(self.budget_id, &cache);
            drop(cache);
            let output = output?;
            add_usage(&mut usage, &output.usage);
            logprobs.extend(output.logprobs.iter().cloned());
            token_ids.extend_from_slice(&output.token_ids);
            if output.finish_reason == FinishReason::Cancelled {
                step.finish(false);
                self.turns += 1;
                events.on_request_complete(&usage);
                return Ok(self.output(
                    Message::new(Role::Assistant, output.text),
                    FinishReason::Cancelled,
                    false,
                    usage,
                    context,
                    token_ids,
                    tool_results,
                    &turn,
                    warnings,
                ));
            }
            let parsed = match (&turn.tools, parse_calls) {
                (Some(tools), true) => Some(parse_reply(self.tool_format, &output.text, tools)),
                _ => None,
            };
            let calls = parsed.as_ref().map_or(0, |p| p.calls.len());
            if !step.finish(calls > 0) {
                // The host cancelled while the held text was streamed.
                self.turns += 1;
                events.on_request_complete(&usage);
                return Ok(self.output(
                    Message::new(Role::Assistant, output.text),
                    FinishReason::Cancelled,
                    false,
                    usage,
                    context,
                    token_ids,
                    tool_results,
                    &turn,
                    warnings,
                ));
            }
            let Some(parsed) = parsed.filter(|p| !p.calls.is_empty() || !p.warnings.is_empty())
            else {
                warnings.extend(structured::check_reply(
                    &turn.response_format,
                    &output.text,
                    output.finish_reason,
                )?);
                let reply = Message::new(Role::Assistant, output.text);
                conversation.push(reply.clone());
                break (reply, output.finish_reason, false);
            };
            warnings.extend(parsed.warnings);
            if let Some(tools) = &turn.tools {
                // The second line of defence after the constraint: an independent validator.
                for call in &parsed.calls {
                    if let Some(spec) = tools.get(&call.name)
                        && let Err(why) =
                            validate_json_against_schema(&spec.parameters, &call.arguments)
                    {
                        warnings.push(format!(
                            "the arguments of the call to \"{}\" do not match its parameters: {why}",
                            call.name
                        ));
                    }
                }
            }
            if parsed.calls.is_empty() {
                let reply = Message::new(Role::Assistant, parsed.content);
                conversation.push(reply.clone());
                break (reply, output.finish_reason, false);
            }
            let mut reply = Message::new(Role::Assistant, parsed.content);
            for call in parsed.calls {
                let id = fresh_call_id(&conversation, &reply.tool_calls);
                reply.tool_calls.push(ToolCall {
                    id,
                    kind: "function".into(),
                    function: FunctionCall {
                        name: call.name,
                        arguments: call.arguments.to_string(),
                    },
                });
            }
            conversation.push(reply.clone());
            if !events.can_execute_tools() {
                // No executor: the host runs the calls and answers with tool messages.
                break (reply, output.finish_reason, true);
            }
            // Run the calls the budget allows; the rest go back to the host.
            let budget = turn.max_tool_calls - executed;
            let mut results = Vec::new();
            for call in reply.tool_calls.iter().take(budget) {
                let call_json = serde_json::json!({
                    "id": call.id,
                    "name": call.function.name,
                    "arguments": serde_json::from_str::<serde_json::Value>(&call.function.arguments)
                        .unwrap_or_default(),
                })
                .to_string();
                let started = Instant::now();
                let answer = events.execute_tool(&call_json).ok_or_else(|| {
                    Error::internal("the host said it runs tools but has no executor")
                })??;
                let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
                let HostReply::Content(content) = answer else {
                    self.turns += 1;
                    events.on_request_complete(&usage);
                    return Ok(self.output(
                        reply.clone(),
                        FinishReason::Cancelled,
                        false,
                        usage,
                        context,
                        token_ids,
                        tool_results,
                        &turn,
                        warnings,
                    ));
                };
                events.on_tool_call(&call.function.name, elapsed_ms);
                results.push(ToolResult {
                    id: call.id.clone(),
                    name: call.function.name.clone(),
                    arguments: call.function.arguments.clone(),
                    content,
                    elapsed_ms,
                });
            }
            let executed_now = results.len();
            executed += executed_now;
            // "required" and a named function bind the send's first generation; once their
            // results are in, the model may answer (otherwise every send would end at
            // max_tool_calls).
            if turn.tool_choice != ToolChoice::None {
                turn.tool_choice = ToolChoice::Auto;
            }
            for r in &results {
                let mut message = Message::new(Role::Tool, r.content.clone());
                message.tool_call_id = Some(r.id.clone());
                message.name = Some(r.name.clone());
                conversation.push(message);
            }
            tool_results.extend(results);
            if executed == turn.max_tool_calls && executed_now < reply.tool_calls.len() {
                let pending = reply.tool_calls.split_off(executed_now);
                warnings.push(format!(
                    "max_tool_calls ({}) reached: {executed} call(s) ran; the model's {} further call(s) are in message.tool_calls for the host to run",
                    turn.max_tool_calls,
                    pending.len()
                ));
                reply.tool_calls = pending;
                break (reply, output.finish_reason, true);
            }
            prepared = self.prepare_conversation(conversation.clone(), &turn)?;
            for warning in std::mem::take(&mut prepared.warnings) {
                if !warnings.contains(&warning) {
                    warnings.push(warning);
                }
            }
        };
        self.turns += 1;
        // The system prompt option and the retrieval and tool sections are rendered, not
        // recorded (they belong to the chat's options and to this request).
        self.history = conversation;
        events.on_request_complete(&usage);
        let mut out = self.output(
            reply,
            finish_reason,
            ended_on_tool_calls,
            usage,
            context,
            token_ids,
            tool_results,
            &turn,
            warnings,
        );
        out.logprobs = logprobs;
        Ok(out)
    }

    /// Takes a system turn another chat holds before reserving, so the reservation counts
    /// only what this chat adds; then makes room in the engine's KV budget for the most
    /// this generation of `prepared` can hold.
    fn share_and_reserve(
        &self,
        cache: &mut KvCache,
        prepared: &PreparedPrompt,
        max_tokens: usize,
        events: &mut dyn ChatEvents,
    ) -> Result<()> {
        self.engine.lend_prefix(
            self.budget_id,
            cache,
            &prepared.token_ids,
            prepared.shared_prefix,
        );
        self.reserve_kv(cache, prepared.token_ids.len(), max_tokens, events)
    }

    /// Checks that a generation from `prompt_len` tokens fits the cache and makes room in
    /// the engine's KV budget for the most it can hold.
    fn reserve_kv(
        &self,
        cache: &KvCache,
        prompt_len: usize,
        max_tokens: usize,
        events: &mut dyn ChatEvents,
    ) -> Result<()> {
        check_fits(prompt_len, max_tokens, cache.max_positions())?;
        let budget = self.engine.kv_budget();
        let needed = cache.bytes_for(prompt_len + max_tokens);
        match budget.reserve(self.budget_id, needed) {
            Ok(evictions) => {
                evictions.iter().for_each(|e| events.on_kv_eviction(e));
                Ok(())
            }
            Err(e) => {
                events.on_kv_budget_exceeded(e.requested_bytes, e.budget_bytes);
                budget.settle(self.budget_id, cache);
                Err(e.error)
            }
        }
    }

    /// The retriever cancelled the send before anything ran.
    fn cancelled_before_start(&mut self, turn: &Turn) -> Result<TurnOutput> {
        let context = self.prepare(turn)?.context;
        Ok(self.output(
            Message::new(Role::Assistant, String::new()),
            FinishReason::Cancelled,
            false,
            Usage::default(),
            context,
            Vec::new(),
            Vec::new(),
            turn,
            Vec::new(),
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn output(
        &mut self,
        reply: Message,
        finish_reason: FinishReason,
        ended_on_tool_calls: bool,
        usage: Usage,
        context: ContextReport,
        token_ids: Vec<u32>,
        tool_results: Vec<ToolResult>,
        turn: &Turn,
        turn_warnings: Vec<String>,
    ) -> TurnOutput {
        // The chat's pending warnings first; the Gemma system-role warning once per
        // conversation.
        let mut warnings = std::mem::take(&mut self.pending_warnings);
        for warning in turn_warnings {
            if warning.starts_with(GEMMA_NO_SYSTEM_ROLE) {
                if self.gemma_system_warned {
                    continue;
                }
                self.gemma_system_warned = true;
            }
            warnings.push(warning);
        }
        let (citations, citation_warnings) = if turn.retrieved_context.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            citations(&reply.content, &turn.retrieved_context)
        };
        warnings.extend(citation_warnings);
        TurnOutput {
            reply,
            finish_reason,
            ended_on_tool_calls,
            tool_results,
            citations,
            warnings,
            usage,
            context,
            token_ids,
            logprobs: Vec::new(),
        }
    }

    /// How many turns this session has answered.
    pub fn turns(&self) -> u64 {
        self.turns
    }
}

/// Adds one generation's figures to the send's: counts add up, the time to first token is
/// the first generation's.
fn add_usage(total: &mut Usage, step: &Usage) {
    if total.prompt_tokens == 0 {
        total.time_to_first_token_ms = step.time_to_first_token_ms;
    }
    total.prompt_tokens += step.prompt_tokens;
    total.completion_tokens += step.completion_tokens;
    total.cached_tokens += step.cached_tokens;
    total.prefill_ms += step.prefill_ms;
    total.decode_ms += step.decode_ms;
}

/// A call id not used anywhere in the conversation: "call_<n>", the lowest free n.
fn fresh_call_id(conversation: &[Message], pending: &[ToolCall]) -> String {
    let used = |id: &str| {
        pending.iter().any(|c| c.id == id)
            || conversation.iter().any(|m| {
                m.tool_calls.iter().any(|c| c.id == id) || m.tool_call_id.as_deref() == Some(id)
            })
    };
    (1..)
        .map(|n| format!("call_{n}"))
        .find(|id| !used(id))
        .expect("an unused id exists")
}

/// Events that fire once per send however many generations it runs.
#[derive(Default)]
struct OncePerSend {
    cache_lookup: bool,
    first_token: bool,
}

/// One generation's events: the policy event right after the KV cache event (the documented
/// order start → kv access → policy → first token → tokens → complete), each only on the
/// send's first generation, and reply text held back while it may be tool-call markup.
struct StepEvents<'a> {
    inner: &'a mut dyn ChatEvents,
    context: &'a ContextReport,
    once: &'a mut OncePerSend,
    hold: Option<HoldBack>,
}

impl StepEvents<'_> {
    /// The generation ended: held text is streamed unless it was a call. False when the host
    /// cancelled while it was streamed.
    fn finish(&mut self, was_call: bool) -> bool {
        match self.hold.take() {
            Some(hold) if !was_call && !hold.pending.is_empty() => {
                self.inner.on_text(&hold.pending)
            }
            _ => true,
        }
    }
}

impl GenerationEvents for StepEvents<'_> {
    fn on_cache_lookup(&mut self, cached_tokens: usize) {
        if !self.once.cache_lookup {
            self.once.cache_lookup = true;
            self.inner.on_cache_lookup(cached_tokens);
            let c = self.context;
            self.inner
                .on_context_policy_applied(c.policy, c.tokens_before, c.tokens_after);
        }
    }
    fn on_first_token(&mut self, elapsed_ms: f64) {
        if !self.once.first_token {
            self.once.first_token = true;
            self.inner.on_first_token(elapsed_ms);
        }
    }
    fn on_text(&mut self, text: &str) -> bool {
        match &mut self.hold {
            None => self.inner.on_text(text),
            Some(hold) => match hold.push(text) {
                Some(visible) if !visible.is_empty() => self.inner.on_text(&visible),
                _ => true,
            },
        }
    }
    fn cancelled(&mut self) -> bool {
        self.inner.cancelled()
    }
}

/// Holds back reply text that is, or may become, tool-call markup, as stop strings are held
/// back: from the opening marker on, a possible start of it at the end, and a reply that
/// starts with JSON (a bare call).
struct HoldBack {
    marker: &'static str,
    pending: String,
    streamed_any: bool,
    /// The marker or a leading JSON value was seen: nothing more streams this generation.
    holding: bool,
}

impl HoldBack {
    fn new(marker: &'static str) -> Self {
        Self {
            marker,
            pending: String::new(),
            streamed_any: false,
            holding: false,
        }
    }

    /// Takes a piece; returns the text that is safe to stream now.
    fn push(&mut self, text: &str) -> Option<String> {
        self.pending.push_str(text);
        if self.holding {
            return None;
        }
        if !self.streamed_any {
            let t = self.pending.trim_start();
            if t.is_empty() {
                return None;
            }
            if t.starts_with('{') || t.starts_with('[') || t.starts_with("```") {
                self.holding = true;
                return None;
            }
        }
        if let Some(at) = self.pending.find(self.marker) {
            self.holding = true;
            let visible: String = self.pending.drain(..at).collect();
            self.streamed_any |= !visible.is_empty();
            return Some(visible);
        }
        // Keep the longest suffix that could begin the marker.
        let keep = (1..self.marker.len().min(self.pending.len() + 1))
            .rev()
            .find(|&k| {
                let cut = self.pending.len() - k;
                self.pending.is_char_boundary(cut) && self.marker.starts_with(&self.pending[cut..])
            })
            .unwrap_or(0);
        let cut = self.pending.len() - keep;
        let visible: String = self.pending.drain(..cut).collect();
        self.streamed_any |= !visible.is_empty();
        Some(visible)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(pieces: &[&str], was_call: bool) -> String {
        let mut hold = HoldBack::new("<tool_call>");
        let mut out = String::new();
        for p in pieces {
            if let Some(v) = hold.push(p) {
                out.push_str(&v);
            }
        }
        if !was_call {
            out.push_str(&hold.pending);
        }
        out
    }

    #[test]
    fn tool_call_markup_is_never_streamed() {
        assert_eq!(
            stream(
                &[
                    "Let me ",
                    "check.<",
                    "tool",
                    "_call>{\"name\"",
                    ": \"f\"}</tool_call>"
                ],
                true
            ),
            "Let me check."
        );
        assert_eq!(stream(&["  {\"name\": ", "\"f\"}"], true), "");
        // Text that only looked like the start of a call is streamed in the end.
        assert_eq!(stream(&["a <tool", "s> b"], false), "a <tools> b");
        assert_eq!(stream(&["{\"x\": 1}"], false), "{\"x\": 1}");
        assert_eq!(stream(&["é<", "tool_callé"], false), "é<tool_callé");
    }
}
