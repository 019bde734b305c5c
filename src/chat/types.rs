//! The JSON of `smallmind_chat_*`: chat options, send requests, responses, and the session
//! export envelope. Unknown fields are refused; features that later versions add (tools,
//! structured output, retrieval) are refused with a message, never ignored.

use serde::{Deserialize, Serialize};

use super::message::Message;
use super::message::Role;
use super::policy::ContextPolicy;
use super::retrieval::{Citation, chunks_from_value};
use super::session::{
    ContextReport, DEFAULT_MAX_TOOL_CALLS, HistoryMode, PreparedPrompt, SessionConfig, Turn,
    TurnOutput,
};
use super::tools::{ToolChoice, Tools};
use crate::api::{RequestOptions, TokenLogprobJson, UsageJson, parse, parse_with_options};
use crate::engine::Engine;
use crate::error::{Error, Result};

/// The chat's own creation fields; the generation options beside them are the defaults of
/// every send (see `RequestOptions`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ChatFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    system_prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chat_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parse_special_in_content: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    context_policy: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kv_cache: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_kv_tokens: Option<u32>,
}

/// `smallmind_chat_create` options; also stored in exports.
#[derive(Debug, Clone, Default)]
pub struct ChatOptions {
    pub session_id: Option<String>,
    pub system_prompt: Option<String>,
    /// A Jinja chat template that replaces the engine's (or the file's) for this chat.
    pub chat_template: Option<String>,
    pub parse_special_in_content: Option<bool>,
    pub context_policy: Option<ContextPolicy>,
    pub kv_cache: Option<bool>,
    pub max_kv_tokens: Option<u32>,
    /// Defaults for every send; a request's own values win.
    pub generation: RequestOptions,
}

/// A new session id: 128 random bits as hex, "session-<32 hex digits>". Saved chats of
/// different processes meet in one store, so ids come from the OS-seeded keys of std's
/// `RandomState` (fresh random keys per process, advanced for every instance), mixed with
/// the time and the process id, never from a per-process counter.
pub fn random_session_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let half = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.finish()
    };
    format!("session-{:016x}{:016x}", half(1), half(2))
}

/// `context_policy`, with a message that says what is valid (serde's would name Rust types).
fn context_policy(value: Option<serde_json::Value>) -> Result<Option<ContextPolicy>> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    serde_json::from_value::<ContextPolicy>(value.clone())
        .map(Some)
        .map_err(|error| {
            let reason = error.to_string();
            let reason = if reason.contains("enum") || reason.contains("variant") {
                "it must be {\"type\": \"keep_all\"}, {\"type\": \"keep_last_n_turns\", \"max_turns\": N} or {\"type\": \"sliding_window\", \"max_tokens\": N}".to_string()
            } else {
                reason
            };
            Error::invalid_json(format!("context_policy {value} is not valid: {reason}"))
        })
}

impl ChatOptions {
    /// These options with every field `overrides` sets replaced (load and import options).
    pub fn overridden_by(self, overrides: ChatOptions) -> ChatOptions {
        ChatOptions {
            session_id: overrides.session_id.or(self.session_id),
            system_prompt: overrides.system_prompt.or(self.system_prompt),
            chat_template: overrides.chat_template.or(self.chat_template),
            context_policy: overrides.context_policy.or(self.context_policy),
            kv_cache: overrides.kv_cache.or(self.kv_cache),
            max_kv_tokens: overrides.max_kv_tokens.or(self.max_kv_tokens),
            parse_special_in_content: overrides
                .parse_special_in_content
                .or(self.parse_special_in_content),
            generation: overrides.generation.over(&self.generation),
        }
    }

    pub fn parse(json: Option<&str>) -> Result<Self> {
        match json {
            None => Ok(Self::default()),
            Some(j) if j.trim().is_empty() => Ok(Self::default()),
            Some(j) => {
                let (generation, fields): (RequestOptions, ChatFields) =
                    parse_with_options("chat options", j)?;
                Self::from_parts(generation, fields)
            }
        }
    }

    fn from_parts(generation: RequestOptions, fields: ChatFields) -> Result<Self> {
        Ok(Self {
            session_id: fields.session_id,
            system_prompt: fields.system_prompt,
            chat_template: fields.chat_template,
            parse_special_in_content: fields.parse_special_in_content,
            context_policy: context_policy(fields.context_policy)
                .map_err(|e| Error::new(e.kind, format!("chat options: {}", e.message)))?,
            kv_cache: fields.kv_cache,
            max_kv_tokens: fields.max_kv_tokens,
            generation,
        })
    }

    /// Validates and resolves the options into a session configuration.
    pub fn to_config(&self, engine: &Engine) -> Result<SessionConfig> {
        let policy = self.context_policy.clone().unwrap_or_default();
        policy.validate()?;
        if let Some(source) = &self.chat_template {
            crate::api::check_chat_template(source)?;
        }
        if self.max_kv_tokens == Some(0) {
            return Err(Error::invalid_argument("max_kv_tokens must be at least 1"));
        }
        if let Some(id) = &self.session_id
            && (id.is_empty() || id.len() > 256)
        {
            return Err(Error::invalid_argument(
                "session_id must be 1 to 256 bytes long",
            ));
        }
        // Validate the defaults now so a bad option fails at create, not at the first send.
        check_chat_max_tokens(self.generation.max_tokens)?;
        self.generation.resolve(engine)?;
        Ok(SessionConfig {
            session_id: self.session_id.clone().unwrap_or_else(random_session_id),
            system_prompt: self.system_prompt.clone(),
            chat_template: self.chat_template.clone(),
            parse_special_in_content: self.parse_special_in_content.unwrap_or(false),
            context_policy: policy,
            kv_cache: self.kv_cache.unwrap_or(true),
            max_kv_tokens: self.max_kv_tokens.map(|n| n as usize),
            defaults: self.generation.clone(),
        })
    }
}

impl Serialize for ChatOptions {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        let fields = ChatFields {
            session_id: self.session_id.clone(),
            system_prompt: self.system_prompt.clone(),
            chat_template: self.chat_template.clone(),
            parse_special_in_content: self.parse_special_in_content,
            context_policy: self
                .context_policy
                .as_ref()
                .map(|p| serde_json::to_value(p).map_err(serde::ser::Error::custom))
                .transpose()?,
            kv_cache: self.kv_cache,
            max_kv_tokens: self.max_kv_tokens,
        };
        let mut map = match serde_json::to_value(&fields).map_err(serde::ser::Error::custom)? {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        map.extend(self.generation.to_json_map());
        map.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ChatOptions {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut map = serde_json::Map::deserialize(deserializer)?;
        let generation =
            RequestOptions::take_from(&mut map).map_err(|e| D::Error::custom(e.message))?;
        let fields: ChatFields =
            serde_json::from_value(serde_json::Value::Object(map)).map_err(D::Error::custom)?;
        Self::from_parts(generation, fields).map_err(|e| D::Error::custom(e.message))
    }
}

/// A chat reply needs room for at least one token.
fn check_chat_max_tokens(max_tokens: Option<usize>) -> Result<()> {
    if max_tokens == Some(0) {
        return Err(Error::invalid_argument(
            "max_tokens is 0; a chat reply needs at least 1 (0 only scores a prompt, with smallmind_engine_complete)",
        ));
    }
    Ok(())
}

/// A send's own fields; the generation options beside them override the chat's defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatRequestFields {
    messages: Vec<Message>,
    #[serde(default)]
    history: Option<String>,
    #[serde(default)]
    context_policy: Option<serde_json::Value>,
    #[serde(default)]
    tools: Option<serde_json::Value>,
    #[serde(default)]
    tool_choice: Option<serde_json::Value>,
    #[serde(default)]
    max_tool_calls: Option<u64>,
    #[serde(default)]
    retrieved_context: Option<serde_json::Value>,
}

#[derive(Debug)]
pub struct ChatRequest {
    fields: ChatRequestFields,
    options: RequestOptions,
}

/// Messages one chat request may carry.
pub const MAX_MESSAGES: usize = 65_536;
impl ChatRequest {
    pub fn parse(json: &str) -> Result<Self> {
        let (options, fields) = parse_with_options("chat request", json)?;
        Ok(Self { fields, options })
    }

    /// Validates the request against the session's defaults.
    pub fn into_turn(
        self,
        config: &SessionConfig,
        engine: &Engine,
        started_at: std::time::Instant,
    ) -> Result<Turn> {
        let fields = self.fields;
        if fields.messages.len() > MAX_MESSAGES {
            return Err(Error::invalid_argument(format!(
                "messages holds {} messages; a request may carry at most {MAX_MESSAGES}",
                fields.messages.len()
            )));
        }
        if fields.messages.is_empty() {
            return Err(Error::invalid_argument(
                "messages is empty: send at least one message",
            ));
        }
        for (i, m) in fields.messages.iter().enumerate() {
            if m.role == Role::Tool && m.tool_call_id.as_deref().is_none_or(str::is_empty) {
                return Err(Error::invalid_argument(format!(
                    "messages[{i}] has role \"tool\" but no tool_call_id; give the id of the call it answers"
                )));
            }
            if m.role != Role::Assistant && !m.tool_calls.is_empty() {
                return Err(Error::invalid_argument(format!(
                    "messages[{i}] has tool_calls, but only assistant messages make calls"
                )));
            }
            for c in &m.tool_calls {
                if c.kind != "function" || c.id.is_empty() {
                    return Err(Error::invalid_argument(format!(
                        "messages[{i}].tool_calls: each call needs an \"id\" and \"type\": \"function\""
                    )));
                }
                if !serde_json::from_str::<serde_json::Value>(&c.function.arguments)
                    .is_ok_and(|a| a.is_object())
                {
                    return Err(Error::invalid_argument(format!(
                        "messages[{i}].tool_calls: the arguments of \"{}\" must be a JSON object in a string, e.g. \"{{}}\"",
                        c.function.name
                    )));
                }
            }
        }
        let tools = match &fields.tools {
            None => None,
            Some(t) => Tools::from_request(t)?,
        };
        let tool_choice = ToolChoice::from_request(fields.tool_choice.as_ref(), tools.as_ref())?;
        let max_tool_calls = match fields.max_tool_calls {
            None => DEFAULT_MAX_TOOL_CALLS,
            Some(n) if n <= 1024 => n as usize,
            Some(n) => {
                return Err(Error::invalid_argument(format!(
                    "max_tool_calls is {n}; use 0 to 1024"
                )));
            }
        };
        let retrieved_context = match &fields.retrieved_context {
            None => Vec::new(),
            Some(v) => chunks_from_value(v, "retrieved_context")?,
        };
        let history = match fields.history.as_deref() {
            None | Some("append") => HistoryMode::Append,
            Some("replace") => HistoryMode::Replace,
            Some(other) => {
                return Err(Error::invalid_argument(format!(
                    "history is '{other}'; use \"append\" or \"replace\""
                )));
            }
        };
        let context_policy = context_policy(fields.context_policy)
            .map_err(|e| Error::new(e.kind, format!("chat request: {}", e.message)))?;
        if let Some(policy) = &context_policy {
            policy.validate()?;
        }
        check_chat_max_tokens(self.options.max_tokens)?;
        let resolved = self.options.over(&config.defaults).resolve(engine)?;
        if tools.is_some() && tool_choice != ToolChoice::None {
            if !resolved.stop.is_empty() {
                return Err(Error::invalid_argument(
                    "stop cannot be combined with tools: tool calls are constrained, and the constraint decides where a call ends; remove stop, or set tool_choice to \"none\"",
                ));
            }
            if resolved.response_format != crate::api::ResponseFormat::Text {
                return Err(Error::invalid_argument(
                    "response_format cannot be combined with tools (both constrain the reply); remove one, or set tool_choice to \"none\"",
                ));
            }
        }
        Ok(Turn {
            messages: fields.messages,
            history,
            sampling: resolved.sampling,
            max_tokens: resolved.max_tokens,
            stop: resolved.stop,
            stop_token_ids: resolved.stop_token_ids,
            ignore_eos: resolved.ignore_eos,
            top_logprobs: resolved.top_logprobs,
            response_format: resolved.response_format,
            context_policy,
            tools,
            tool_choice,
            max_tool_calls,
            retrieved_context,
            started_at,
        })
    }
}

#[derive(Serialize)]
struct ReplyJson<'a> {
    role: &'static str,
    content: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    tool_calls: &'a [super::message::ToolCall],
}

#[derive(Serialize)]
struct ToolResultJson<'a> {
    id: &'a str,
    name: &'a str,
    arguments: &'a str,
    content: &'a str,
    elapsed_ms: f64,
}

#[derive(Serialize)]
struct ContextJson<'a> {
    policy: &'a str,
    tokens_before: usize,
    tokens_after: usize,
    dropped_messages: usize,
}

impl<'a> From<&'a ContextReport> for ContextJson<'a> {
    fn from(c: &'a ContextReport) -> Self {
        Self {
            policy: c.policy,
            tokens_before: c.tokens_before,
            tokens_after: c.tokens_after,
            dropped_messages: c.dropped_messages,
        }
    }
}

#[derive(Serialize)]
struct ChatResponseJson<'a> {
    id: String,
    model: &'a str,
    session_id: &'a str,
    message: ReplyJson<'a>,
    finish_reason: &'static str,
    usage: UsageJson,
    context: ContextJson<'a>,
    seed: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_results: Vec<ToolResultJson<'a>>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    citations: &'a [Citation],
    /// Each generated token, with alternatives, when the request asked for `logprobs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<Vec<TokenLogprobJson>>,
    warnings: Vec<String>,
}

/// The response JSON of one turn.
pub fn response_json(
    out: &TurnOutput,
    model: &str,
    session_id: &str,
    id: &str,
    seed: u64,
    logprobs: Option<&Engine>,
) -> Result<String> {
    let mut warnings = out.warnings.clone();
    if out.context.dropped_messages > 0 {
        warnings.push(format!(
            "the context policy {} left out {} older message(s) to fit the context",
            out.context.policy, out.context.dropped_messages
        ));
    }
    crate::api::to_json(&ChatResponseJson {
        id: id.to_string(),
        model,
        session_id,
        message: ReplyJson {
            role: "assistant",
            content: &out.reply.content,
            tool_calls: &out.reply.tool_calls,
        },
        finish_reason: if out.ended_on_tool_calls {
            "tool_calls"
        } else {
            out.finish_reason.as_str()
        },
        usage: UsageJson::from(&out.usage),
        context: ContextJson::from(&out.context),
        seed,
        tool_results: out
            .tool_results
            .iter()
            .map(|r| ToolResultJson {
                id: &r.id,
                name: &r.name,
                arguments: &r.arguments,
                content: &r.content,
                elapsed_ms: r.elapsed_ms,
            })
            .collect(),
        citations: &out.citations,
        logprobs: logprobs.map(|engine| crate::api::logprobs_json(engine, &out.logprobs)),
        warnings,
    })
}

#[derive(Serialize)]
struct RenderJson<'a> {
    prompt: &'a str,
    prompt_token_ids: &'a [u32],
    context: ContextJson<'a>,
    warnings: &'a [String],
}

/// The JSON of `smallmind_chat_render`: the prompt a send would give the model.
pub fn render_json(prepared: &PreparedPrompt) -> Result<String> {
    crate::api::to_json(&RenderJson {
        prompt: &prepared.text,
        prompt_token_ids: &prepared.token_ids,
        context: ContextJson::from(&prepared.context),
        warnings: &prepared.warnings,
    })
}

/// The versioned envelope of `smallmind_chat_export` / `_import`, and the JSON part of a
/// saved file.
///
/// Versions: 1 (smallmind 0.1.0: format, version, session_id, options, history) and 2 (adds
/// the optional "kv_snapshot": the KV section of a saved file, base64, standard alphabet
/// with padding). Version 1 envelopes migrate on read; newer ones are refused.
pub const EXPORT_FORMAT: &str = "smallmind.chat";
pub const EXPORT_VERSION: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportEnvelope {
    pub format: String,
    pub version: u32,
    pub session_id: String,
    pub options: ChatOptions,
    pub history: Vec<Message>,
    /// The KV snapshot, base64 (present only when exported with "include_kv").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_snapshot: Option<String>,
}

/// Version 1, as smallmind 0.1.0 wrote it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportEnvelopeV1 {
    format: String,
    #[allow(dead_code)]
    version: u32,
    session_id: String,
    options: ChatOptions,
    history: Vec<Message>,
}

fn from_value<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        Error::invalid_json(format!("session export: {path}: {}", e.into_inner()))
    })
}

impl ExportEnvelope {
    /// Parses an envelope of any version this smallmind reads, migrated to the current one.
    pub fn parse(json: &str) -> Result<Self> {
        let value: serde_json::Value = parse("session export", json)?;
        let version = match (
            value.get("format").and_then(|f| f.as_str()),
            value.get("version").and_then(|v| v.as_u64()),
        ) {
            (Some(EXPORT_FORMAT), Some(v)) if (1..=EXPORT_VERSION as u64).contains(&v) => v,
            (Some(EXPORT_FORMAT), Some(v)) if v > EXPORT_VERSION as u64 => {
                return Err(Error::invalid_json(format!(
                    "this session was exported by a newer smallmind (format version {v}); this version reads versions 1 to {EXPORT_VERSION}"
                )));
            }
            _ => {
                return Err(Error::invalid_json(format!(
                    "not a smallmind session export: expected \"format\": \"{EXPORT_FORMAT}\" and \"version\" from 1 to {EXPORT_VERSION}"
                )));
            }
        };
        if version == 1 {
            let v1: ExportEnvelopeV1 = from_value(value)?;
            return Ok(Self {
                format: v1.format,
                version: EXPORT_VERSION,
                session_id: v1.session_id,
                options: v1.options,
                history: v1.history,
                kv_snapshot: None,
            });
        }
        from_value(value)
    }
}
