//! The JSON of `smallmind_chat_*`: chat options, send requests, responses, and the session
//! export envelope. Unknown fields are refused; features that later versions add (tools,
//! structured output, retrieval) are refused with a message, never ignored.

use serde::{Deserialize, Serialize};

use super::message::Message;
use super::policy::ContextPolicy;
use super::session::{ContextReport, HistoryMode, PreparedPrompt, SessionConfig, Turn, TurnOutput};
use crate::api::{UsageJson, parse, sampling_params};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::sample::SamplingParams;

const DEFAULT_MAX_TOKENS: u32 = 512;

/// Stop strings: OpenAI accepts one string or a list.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

/// `smallmind_chat_create` options; also stored in exports.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChatOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// A Jinja chat template that replaces the engine's (or the file's) for this chat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parse_special_in_content: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_policy: Option<ContextPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_kv_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
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

fn max_tokens(value: Option<i64>, default: u32) -> Result<usize> {
    match value {
        None => Ok(default as usize),
        Some(n) if n < 1 => Err(Error::invalid_argument(format!(
            "max_tokens is {n}; it must be at least 1"
        ))),
        Some(n) => Ok(n as usize),
    }
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
            max_tokens: overrides.max_tokens.or(self.max_tokens),
            temperature: overrides.temperature.or(self.temperature),
            top_k: overrides.top_k.or(self.top_k),
            top_p: overrides.top_p.or(self.top_p),
            min_p: overrides.min_p.or(self.min_p),
            repeat_penalty: overrides.repeat_penalty.or(self.repeat_penalty),
            presence_penalty: overrides.presence_penalty.or(self.presence_penalty),
            frequency_penalty: overrides.frequency_penalty.or(self.frequency_penalty),
            seed: overrides.seed.or(self.seed),
        }
    }

    pub fn parse(json: Option<&str>) -> Result<Self> {
        match json {
            None => Ok(Self::default()),
            Some(j) if j.trim().is_empty() => Ok(Self::default()),
            Some(j) => parse("chat options", j),
        }
    }

    /// Validates and resolves the options into a session configuration.
    pub fn to_config(&self) -> Result<SessionConfig> {
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
        let sampling = sampling_params(
            SamplingParams::default(),
            self.temperature,
            self.top_k,
            self.top_p,
            self.min_p,
            self.repeat_penalty,
            None,
            self.presence_penalty,
            self.frequency_penalty,
            self.seed,
        )?;
        Ok(SessionConfig {
            session_id: self.session_id.clone().unwrap_or_else(random_session_id),
            system_prompt: self.system_prompt.clone(),
            chat_template: self.chat_template.clone(),
            parse_special_in_content: self.parse_special_in_content.unwrap_or(false),
            context_policy: policy,
            kv_cache: self.kv_cache.unwrap_or(true),
            max_kv_tokens: self.max_kv_tokens.map(|n| n as usize),
            sampling,
            fixed_seed: self.seed.is_some(),
            max_tokens: max_tokens(self.max_tokens, DEFAULT_MAX_TOKENS)?,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    messages: Vec<Message>,
    #[serde(default)]
    history: Option<String>,
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
    context_policy: Option<ContextPolicy>,
    #[serde(default)]
    tools: Option<serde_json::Value>,
    #[serde(default)]
    tool_choice: Option<serde_json::Value>,
    #[serde(default)]
    max_tool_calls: Option<serde_json::Value>,
    #[serde(default)]
    response_format: Option<serde_json::Value>,
    #[serde(default)]
    retrieved_context: Option<serde_json::Value>,
}

fn not_yet(field: &str, what: &str) -> Error {
    Error::invalid_argument(format!(
        "{field} is not supported by this version of smallmind yet ({what}); remove it from the request"
    ))
}

/// Messages one chat request may carry.
pub const MAX_MESSAGES: usize = 65_536;

impl ChatRequest {
    pub fn parse(json: &str) -> Result<Self> {
        parse("chat request", json)
    }

    /// Validates the request against the session's defaults.
    pub fn into_turn(
        self,
        config: &SessionConfig,
        engine: &Engine,
        started_at: std::time::Instant,
    ) -> Result<Turn> {
        if self.messages.len() > MAX_MESSAGES {
            return Err(Error::invalid_argument(format!(
                "messages holds {} messages; a request may carry at most {MAX_MESSAGES}",
                self.messages.len()
            )));
        }
        if self.messages.is_empty() {
            return Err(Error::invalid_argument(
                "messages is empty: send at least one message",
            ));
        }
        if self
            .tools
            .as_ref()
            .is_some_and(|t| !t.is_null() && t.as_array().is_none_or(|a| !a.is_empty()))
        {
            return Err(not_yet("tools", "tool calling"));
        }
        if self
            .tool_choice
            .as_ref()
            .is_some_and(|c| !c.is_null() && c != "none")
        {
            return Err(not_yet("tool_choice", "tool calling"));
        }
        if self.max_tool_calls.is_some() {
            return Err(not_yet("max_tool_calls", "tool calling"));
        }
        if let Some(format) = &self.response_format
            && format != &serde_json::json!({"type": "text"})
        {
            return Err(not_yet(
                "response_format other than {\"type\":\"text\"}",
                "structured output",
            ));
        }
        if self
            .retrieved_context
            .as_ref()
            .is_some_and(|r| !r.is_null() && r.as_array().is_none_or(|a| !a.is_empty()))
        {
            return Err(not_yet("retrieved_context", "retrieval citations"));
        }
        let history = match self.history.as_deref() {
            None | Some("append") => HistoryMode::Append,
            Some("replace") => HistoryMode::Replace,
            Some(other) => {
                return Err(Error::invalid_argument(format!(
                    "history is '{other}'; use \"append\" or \"replace\""
                )));
            }
        };
        if let Some(policy) = &self.context_policy {
            policy.validate()?;
        }
        let base = config.sampling.clone();
        let seed = self.seed.or(config.fixed_seed.then_some(base.seed));
        let sampling = sampling_params(
            base,
            self.temperature,
            self.top_k,
            self.top_p,
            self.min_p,
            self.repeat_penalty,
            None,
            self.presence_penalty,
            self.frequency_penalty,
            seed,
        )?;
        let stop = match self.stop {
            None => Vec::new(),
            Some(StopField::One(s)) => vec![s],
            Some(StopField::Many(v)) => v,
        };
        if stop.iter().any(String::is_empty) {
            return Err(Error::invalid_argument(
                "stop contains an empty string; remove it",
            ));
        }
        let stop_token_ids = self.stop_token_ids.unwrap_or_default();
        let n_vocab = engine.tokenizer.n_vocab();
        if let Some(bad) = stop_token_ids.iter().find(|&&id| id as usize >= n_vocab) {
            return Err(Error::invalid_argument(format!(
                "stop_token_ids contains {bad}, outside the {n_vocab}-token vocabulary"
            )));
        }
        Ok(Turn {
            messages: self.messages,
            history,
            sampling,
            max_tokens: max_tokens(self.max_tokens, config.max_tokens as u32)?,
            stop,
            stop_token_ids,
            context_policy: self.context_policy,
            started_at,
        })
    }
}

#[derive(Serialize)]
struct ReplyJson<'a> {
    role: &'static str,
    content: &'a str,
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
    warnings: Vec<String>,
}

/// The response JSON of one turn.
pub fn response_json(
    out: &TurnOutput,
    model: &str,
    session_id: &str,
    id: &str,
    seed: u64,
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
        },
        finish_reason: out.finish_reason.as_str(),
        usage: UsageJson::from(&out.usage),
        context: ContextJson::from(&out.context),
        seed,
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
