//! Engine options and model info.

use serde::{Deserialize, Serialize};

use super::{parse, to_json};
use crate::engine::{BudgetLimits, Engine, EngineOptions};
use crate::engine::{Kernels, KvType};
use crate::error::{Error, Result};

/// `smallmind_engine_create` options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineOptionsJson {
    pub model_path: String,
    #[serde(default)]
    pub threads: Option<u32>,
    #[serde(default)]
    pub context_length: Option<u32>,
    #[serde(default)]
    pub kv_type: Option<String>,
    #[serde(default)]
    pub use_mmap: Option<bool>,
    #[serde(default)]
    pub vocab_only: Option<bool>,
    #[serde(default)]
    pub chat_template: Option<String>,
    #[serde(default)]
    pub kv_budget_bytes: Option<u64>,
    #[serde(default)]
    pub max_sessions: Option<u32>,
    #[serde(default)]
    pub share_prefixes: Option<bool>,
    #[serde(default)]
    pub kernels: Option<String>,
}

/// Parses and validates engine options.
pub fn parse_engine_options(json: &str) -> Result<EngineOptions> {
    let raw: EngineOptionsJson = parse("engine options", json)?;
    if raw.model_path.is_empty() {
        return Err(Error::invalid_argument(
            "model_path is empty: give the path of a GGUF file",
        ));
    }
    if raw.kv_budget_bytes == Some(0) {
        return Err(Error::invalid_argument(
            "kv_budget_bytes must be at least 1 (omit it for no budget)",
        ));
    }
    if raw.max_sessions == Some(0) {
        return Err(Error::invalid_argument(
            "max_sessions must be at least 1 (omit it for no limit)",
        ));
    }
    if let Some(source) = &raw.chat_template {
        check_chat_template(source)?;
    }
    let kv_type = match raw.kv_type.as_deref() {
        None | Some("f16") => KvType::F16,
        Some("f32") => KvType::F32,
        Some(other) => {
            return Err(Error::invalid_argument(format!(
                "kv_type is '{other}'; use \"f16\" or \"f32\""
            )));
        }
    };
    let kernels = match raw.kernels.as_deref() {
        None | Some("fast") => Kernels::Fast,
        Some("reference") => Kernels::Reference,
        Some(other) => {
            return Err(Error::invalid_argument(format!(
                "kernels is '{other}'; use \"fast\" (the default) or \"reference\" (the scalar reference kernels, to check the fast ones)"
            )));
        }
    };
    let threads = match raw.threads {
        Some(0) => {
            return Err(Error::invalid_argument(
                "threads must be at least 1 (omit it to use one per physical core)",
            ));
        }
        t => t.map(|t| t as usize),
    };
    let context_length = match raw.context_length {
        Some(0) => return Err(Error::invalid_argument("context_length must be at least 1")),
        c => c.map(|c| c as usize),
    };
    Ok(EngineOptions {
        model_path: raw.model_path.into(),
        threads,
        context_length,
        kv_type,
        use_mmap: raw.use_mmap.unwrap_or(true),
        budget: BudgetLimits {
            kv_budget_bytes: raw
                .kv_budget_bytes
                .map(|b| usize::try_from(b).unwrap_or(usize::MAX)),
            max_sessions: raw.max_sessions.map(|n| n as usize),
        },
        vocab_only: raw.vocab_only.unwrap_or(false),
        chat_template: raw.chat_template,
        share_prefixes: raw.share_prefixes.unwrap_or(true),
        kernels,
    })
}

/// A `chat_template` option (engine or chat) must be a template that compiles.
pub fn check_chat_template(source: &str) -> Result<()> {
    if source.trim().is_empty() {
        return Err(Error::invalid_argument(
            "chat_template is empty: give a Jinja chat template, or omit it to use the model's",
        ));
    }
    crate::chat::ChatTemplate::new(source)
        .map(drop)
        .map_err(|e| {
            let (crate::chat::TemplateError::Syntax(m)
            | crate::chat::TemplateError::Render(m)
            | crate::chat::TemplateError::Limit(m)) = e;
            Error::invalid_argument(format!("the chat_template option does not compile: {m}"))
        })
}

#[derive(Serialize)]
struct InfoJson<'a> {
    architecture: &'a str,
    name: Option<&'a str>,
    vocab_only: bool,
    n_vocab: usize,
    n_ctx_train: Option<usize>,
    context_length: usize,
    n_embd: Option<usize>,
    n_layer: Option<usize>,
    n_head: Option<usize>,
    n_head_kv: Option<usize>,
    head_dim: Option<usize>,
    n_ff: Option<usize>,
    n_params: u64,
    file_bytes: u64,
    tensor_types: serde_json::Map<String, serde_json::Value>,
    chat_template: Option<&'a str>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    kv_type: &'static str,
    threads: usize,
    /// "fast" or "reference" (the engine option).
    kernels: &'static str,
    fingerprint: &'a str,
    load_ms: f64,
    /// Milliseconds spent building the token trie for constrained decoding, on the first
    /// request with a `response_format` or grammar; null before.
    constraint_trie_ms: Option<f64>,
    smallmind_version: &'static str,
    warnings: &'a [String],
    kv_cache: KvCacheJson,
}

/// The engine-wide KV budget and what every chat's cache holds now.
#[derive(Serialize)]
struct KvCacheJson {
    /// null: no budget.
    budget_bytes: Option<usize>,
    max_sessions: Option<usize>,
    used_bytes: usize,
    /// Chats on the engine.
    sessions: usize,
    /// Chats holding a KV cache.
    resident_sessions: usize,
    evictions: u64,
    /// Positions a cache grows by.
    chunk_positions: usize,
    /// The engine option: chats share a common system turn's rows.
    share_prefixes: bool,
    /// Times a chat took a prefix from another so far.
    prefix_shares: u64,
    /// Of used_bytes, the rows chats share, each counted once.
    shared_bytes: usize,
}

/// `smallmind_engine_info` output.
pub fn info_json(engine: &Engine) -> Result<String> {
    let info = engine.info();
    to_json(&InfoJson {
        architecture: &info.architecture,
        name: info.name.as_deref(),
        vocab_only: info.vocab_only,
        n_vocab: info.n_vocab,
        n_ctx_train: info.n_ctx_train,
        context_length: info.context_length,
        n_embd: info.n_embd,
        n_layer: info.n_layer,
        n_head: info.n_head,
        n_head_kv: info.n_head_kv,
        head_dim: info.head_dim,
        n_ff: info.n_ff,
        n_params: info.n_params,
        file_bytes: info.file_bytes,
        tensor_types: info
            .tensor_types
            .iter()
            .map(|(ty, n)| (ty.to_string(), (*n).into()))
            .collect(),
        chat_template: info.chat_template.as_deref(),
        bos_id: info.bos_id,
        eos_id: info.eos_id,
        kv_type: match info.kv_type {
            KvType::F16 => "f16",
            KvType::F32 => "f32",
        },
        threads: info.threads,
        kernels: match info.kernels {
            Kernels::Fast => "fast",
            Kernels::Reference => "reference",
        },
        fingerprint: &info.fingerprint,
        load_ms: info.load_ms,
        constraint_trie_ms: crate::chat::structured::constraint_environment_build_ms(engine),
        smallmind_version: env!("CARGO_PKG_VERSION"),
        warnings: &info.warnings,
        kv_cache: {
            let stats = engine.kv_budget().stats();
            KvCacheJson {
                budget_bytes: stats.budget_bytes,
                max_sessions: stats.max_sessions,
                used_bytes: stats.used_bytes,
                sessions: stats.sessions,
                resident_sessions: stats.resident_sessions,
                evictions: stats.evictions,
                chunk_positions: crate::engine::KV_CHUNK_POSITIONS,
                share_prefixes: engine.shares_prefixes(),
                prefix_shares: stats.prefix_shares,
                shared_bytes: stats.shared_bytes,
            }
        },
    })
}
