//! Persistence of chats: save to and load from a file (atomically), export to and import
//! from a JSON string, each with or without the KV cache. Knows nothing of C.
//!
//! A saved file is the session envelope (`chat::ExportEnvelope`, the JSON of
//! `smallmind_chat_export`) in a small binary container, optionally followed by the KV
//! snapshot as binary (layouts in `format`). An export with the KV cache carries the same KV
//! section base64-encoded in the envelope's "kv_snapshot". A snapshot is only used by the
//! model that produced it (its fingerprint), with the same `kv_type`, layer shape, context
//! length and KV limit; otherwise the history loads, the snapshot is dropped, the next
//! response carries a warning saying why, and the next turn recomputes the prompt.

mod atomic;
mod format;

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;

pub use atomic::write_atomic;
pub use format::{FILE_VERSION, KV_VERSION, KvSnapshot, fnv1a64};

use crate::chat::{Chat, ChatOptions, ExportEnvelope};
use crate::engine::Engine;
use crate::engine::KvType;
use crate::error::{Error, Result};

/// Options of save and export: {"include_kv": bool} (default false).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SaveOptions {
    #[serde(default)]
    include_kv: Option<bool>,
}

fn include_kv(options_json: Option<&str>, what: &str) -> Result<bool> {
    let options: SaveOptions = match options_json {
        None => SaveOptions::default(),
        Some(j) if j.trim().is_empty() => SaveOptions::default(),
        Some(j) => crate::api::parse(what, j)?,
    };
    Ok(options.include_kv.unwrap_or(false))
}

/// The envelope and, when asked, the encoded KV section, taken at one moment.
fn snapshot(chat: &Chat, with_kv: bool) -> Result<(ExportEnvelope, Option<Vec<u8>>)> {
    if !with_kv {
        return Ok((chat.envelope()?, None));
    }
    let engine = Arc::clone(chat.engine());
    chat.envelope_with_cache(|cache| {
        KvSnapshot {
            fingerprint: engine.fingerprint().to_string(),
            context_length: engine.context_length(),
            max_positions: cache.max_positions(),
            cache: cache.clone(),
        }
        .encode()
    })
    .map(|(envelope, kv)| (envelope, Some(kv)))
}

/// Saves `chat` to `path` atomically. `options_json`: NULL or {"include_kv": bool}.
pub fn save(chat: &Chat, path: &Path, options_json: Option<&str>) -> Result<()> {
    let with_kv = include_kv(options_json, "save options")?;
    let (envelope, kv) = snapshot(chat, with_kv)?;
    let json = crate::api::to_json(&envelope)?;
    atomic::write_atomic(path, &format::encode_file(&json, kv.as_deref()))
}

/// The envelope as JSON; with "include_kv" it carries "kv_snapshot" (the KV section, base64).
pub fn export(chat: &Chat, options_json: Option<&str>) -> Result<String> {
    let with_kv = include_kv(options_json, "export options")?;
    let (mut envelope, kv) = snapshot(chat, with_kv)?;
    envelope.kv_snapshot = kv.map(|k| base64::engine::general_purpose::STANDARD.encode(k));
    crate::api::to_json(&envelope)
}

fn overrides(options_json: Option<&str>) -> Result<ChatOptions> {
    ChatOptions::parse(options_json)
}

/// Loads a chat saved by `save` (or a file holding an exported JSON envelope) onto
/// `engine`. `options_json`: NULL or chat options that replace the saved ones.
pub fn load(engine: Arc<Engine>, path: &Path, options_json: Option<&str>) -> Result<Chat> {
    let bytes = atomic::read(path)?;
    let what = format!("saved chat '{}'", path.display());
    let overrides = overrides(options_json)?;
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        let json = std::str::from_utf8(&bytes).map_err(|e| {
            Error::invalid_json(format!(
                "{what}: at byte {}: not valid UTF-8",
                e.valid_up_to()
            ))
        })?;
        return import(engine, json, Some(overrides));
    }
    let decoded = format::decode_file(&bytes, &what)?;
    let envelope = ExportEnvelope::parse(decoded.json)
        .map_err(|e| Error::new(e.kind, format!("{what}: {}", e.message)))?;
    if envelope.kv_snapshot.is_some() {
        return Err(Error::invalid_json(format!(
            "{what}: the JSON carries \"kv_snapshot\"; a saved file keeps its snapshot in the binary KV section"
        )));
    }
    let snapshot = decoded
        .kv_section
        .map(|(section, at)| KvSnapshot::decode(section, at, &what))
        .transpose()?;
    restore(engine, envelope, overrides, snapshot)
}

/// Restores a chat from `export`'s JSON, with its KV snapshot when it carries one.
/// `overrides`: chat options replacing the exported ones.
pub fn import(engine: Arc<Engine>, json: &str, overrides: Option<ChatOptions>) -> Result<Chat> {
    let mut envelope = ExportEnvelope::parse(json)?;
    let snapshot = match envelope.kv_snapshot.take() {
        None => None,
        Some(text) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|e| Error::invalid_json(format!("session export: kv_snapshot: {e}")))?;
            Some(
                KvSnapshot::decode(&bytes, 0, "session export: kv_snapshot (decoded)")
                    .map_err(|e| Error::invalid_json(e.message))?,
            )
        }
    };
    restore(engine, envelope, overrides.unwrap_or_default(), snapshot)
}

/// Imports with options given as JSON (see `import`).
pub fn import_json(engine: Arc<Engine>, json: &str, options_json: Option<&str>) -> Result<Chat> {
    import(engine, json, Some(overrides(options_json)?))
}

/// Why `snapshot` cannot serve a chat of `engine` whose cache holds `max_positions`.
fn mismatch(engine: &Engine, snapshot: &KvSnapshot, max_positions: usize) -> Option<String> {
    let Ok((n_layer, kv_dim)) = engine.kv_shape() else {
        return Some("this engine holds no weights (vocab_only)".to_string());
    };
    let name = |t: KvType| match t {
        KvType::F16 => "f16",
        KvType::F32 => "f32",
    };
    let c = &snapshot.cache;
    if snapshot.fingerprint != engine.fingerprint() {
        Some(format!(
            "it was made by another model (fingerprint {}, this model's is {})",
            snapshot.fingerprint,
            engine.fingerprint()
        ))
    } else if c.kv_type() != engine.kv_type() {
        Some(format!(
            "it holds kv_type {} and this engine uses {}",
            name(c.kv_type()),
            name(engine.kv_type())
        ))
    } else if c.n_layer() != n_layer || c.kv_dim() != kv_dim {
        Some(format!(
            "it has {} layers of {} values per position, the model {} of {}",
            c.n_layer(),
            c.kv_dim(),
            n_layer,
            kv_dim
        ))
    } else if snapshot.context_length != engine.context_length() {
        Some(format!(
            "it was made with context_length {} and this engine has {}",
            snapshot.context_length,
            engine.context_length()
        ))
    } else if snapshot.max_positions != max_positions {
        Some(format!(
            "it was made with a KV limit of {} positions and this chat's is {max_positions}",
            snapshot.max_positions
        ))
    } else {
        c.tokens()
            .iter()
            .find(|&&t| t as usize >= engine.tokenizer.n_vocab())
            .map(|bad| {
                format!(
                    "it holds token {bad}, outside the {}-token vocabulary",
                    engine.tokenizer.n_vocab()
                )
            })
    }
}

fn restore(
    engine: Arc<Engine>,
    envelope: ExportEnvelope,
    overrides: ChatOptions,
    snapshot: Option<KvSnapshot>,
) -> Result<Chat> {
    let chat = Chat::from_envelope(Arc::clone(&engine), envelope, overrides)?;
    if let Some(snapshot) = snapshot {
        let max_positions = chat.max_kv_positions()?;
        let dropped = match mismatch(&engine, &snapshot, max_positions) {
            Some(why) => Some(why),
            None => chat.restore_cache(snapshot.cache).err().map(|e| e.message),
        };
        if let Some(why) = dropped {
            chat.add_warning(format!(
                "the saved KV cache was not used ({why}); the history was restored and this turn recomputed the prompt"
            ))?;
        }
    }
    Ok(chat)
}
