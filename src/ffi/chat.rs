//! Chat entry points: sessions with history and their own KV cache.

use std::ffi::c_char;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::boundary::{ffi_call, out_arg, str_arg, string_to_c};
use super::callbacks::RequestCallbacks;
use super::engine::engine_ref;
use super::{smallmind_chat_callbacks, smallmind_engine, smallmind_status};
use crate::chat::{
    ChatEvents, ChatOptions, ChatRequest, EXPORT_FORMAT, EXPORT_VERSION, ExportEnvelope, Message,
    Session, response_json,
};
use crate::engine::{Engine, GenerationEvents};
use crate::error::{Error, ErrorKind, Result};

/// A conversation: its history and its own KV cache, on one engine.
/// Created by `smallmind_chat_create` / `_import`, freed by `smallmind_chat_free`.
/// One call at a time; `smallmind_chat_cancel` may be called from any thread.
pub struct smallmind_chat {
    engine: Arc<Engine>,
    options: ChatOptions,
    session_id: String,
    session: Mutex<Session>,
    cancel: AtomicBool,
}

/// Borrows a chat handle.
///
/// # Safety
/// `chat` is NULL or a live handle.
unsafe fn chat_ref<'a>(chat: *const smallmind_chat) -> Result<&'a smallmind_chat> {
    // SAFETY: per the caller's contract.
    unsafe { chat.as_ref() }.ok_or_else(|| Error::invalid_argument("chat is NULL"))
}

fn busy() -> Error {
    Error::new(
        ErrorKind::Busy,
        "this chat is busy with a call on another thread; wait for it to return, or use another chat",
    )
}

fn new_chat(
    engine: Arc<Engine>,
    options: ChatOptions,
    history: Vec<Message>,
) -> Result<*mut smallmind_chat> {
    let config = options.to_config()?;
    let session_id = config.session_id.clone();
    let mut session = Session::new(Arc::clone(&engine), config)?;
    session.set_history(history);
    Ok(Box::into_raw(Box::new(smallmind_chat {
        engine,
        options,
        session_id,
        session: Mutex::new(session),
        cancel: AtomicBool::new(false),
    })))
}

/// Creates a chat on `engine`. `options_json` may be NULL or
/// {"session_id", "system_prompt", "context_policy": {"type": "keep_all" | "keep_last_n_turns"
/// (+"max_turns") | "sliding_window" (+"max_tokens")}, "kv_cache" (default true),
/// "max_kv_tokens", "max_tokens", "temperature", "top_k", "top_p", "min_p", "repeat_penalty",
/// "presence_penalty", "frequency_penalty", "seed"} (defaults for every send).
/// On success `*out` receives a chat freed with `smallmind_chat_free`. Thread-safe.
///
/// # Safety
/// Pointers are NULL or valid; strings NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smallmind_chat_create(
    engine: *mut smallmind_engine,
    options_json: *const c_char,
    out: *mut *mut smallmind_chat,
) -> smallmind_status {
    ffi_call(|| {
        // SAFETY: per the function's contract.
        let engine = unsafe { engine_ref(engine) }?;
        out_arg(out, "out")?;
        let options_text = if options_json.is_null() {
            None
        } else {
            // SAFETY: non-null, NUL-terminated per the contract.
            Some(unsafe { str_arg(options_json, "options_json") }?)
        };
        let chat = new_chat(
            Arc::clone(&engine.engine),
            ChatOptions::parse(options_text)?,
            Vec::new(),
        )?;
        // SAFETY: checked non-null.
        unsafe { *out = chat };
        Ok(())
    })
}

/// Frees a chat. NULL is a no-op. Any thread, but not while a call on this chat is running.
///
/// # Safety
/// `chat` is NULL or a live handle not used by any running call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smallmind_chat_free(chat: *mut smallmind_chat) {
    if !chat.is_null() {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: the caller guarantees a live handle from Box::into_raw.
            drop(unsafe { Box::from_raw(chat) });
        }));
    }
}

/// Routes session events to the host's callbacks and polls the chat's cancel flag.
struct ChatCallbacks<'a> {
    host: RequestCallbacks<'a>,
    cancel: &'a AtomicBool,
}

impl GenerationEvents for ChatCallbacks<'_> {
    fn on_cache_lookup(&mut self, cached_tokens: usize) {
        self.host.on_cache_lookup(cached_tokens);
    }
    fn on_first_token(&mut self, elapsed_ms: f64) {
        self.host.on_first_token(elapsed_ms);
    }
    fn on_text(&mut self, text: &str) -> bool {
        self.host.on_text(text)
    }
    fn cancelled(&mut self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

impl ChatEvents for ChatCallbacks<'_> {
    fn on_request_start(&mut self, message_count: usize) {
        self.host
            .request_start(u32::try_from(message_count).unwrap_or(u32::MAX));
    }
    fn on_context_policy_applied(
        &mut self,
        policy: &str,
        tokens_before: usize,
        tokens_after: usize,
    ) {
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        self.host
            .context_policy_applied(policy, clamp(tokens_before), clamp(tokens_after));
    }
}

/// Sends messages and generates the reply. Request: {"messages": [{"role", "content", ...}],
/// "history": "append" (default: messages extend the session's history) | "replace",
/// "max_tokens", sampling fields, "stop", "stop_token_ids", "context_policy"}.
/// Response: {"id", "model", "session_id", "message": {"role", "content"}, "finish_reason":
/// "stop" | "length" | "cancelled", "usage", "context", "seed", "warnings"}.
/// `cb` may be NULL; callbacks run on this thread. A second concurrent call on the same chat
/// returns SMALLMIND_ERR_BUSY at once. Errors: INVALID_ARGUMENT, INVALID_JSON,
/// CONTEXT_OVERFLOW (keep_all and the conversation does not fit), BUSY.
///
/// # Safety
/// Pointers are NULL or valid; strings NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smallmind_chat_send(
    chat: *mut smallmind_chat,
    request_json: *const c_char,
    cb: *const smallmind_chat_callbacks,
    out_response_json: *mut *mut c_char,
) -> smallmind_status {
    let started_at = std::time::Instant::now();
    ffi_call(|| {
        // SAFETY: per the function's contract.
        let chat = unsafe { chat_ref(chat) }?;
        // SAFETY: per the function's contract.
        let json = unsafe { str_arg(request_json, "request_json") }?;
        out_arg(out_response_json, "out_response_json")?;
        let mut session = chat.session.try_lock().ok_or_else(busy)?;
        chat.cancel.store(false, Ordering::Relaxed);
        let turn =
            ChatRequest::parse(json)?.into_turn(session.config(), &chat.engine, started_at)?;
        let seed = turn.sampling.seed;
        // SAFETY: cb is NULL or valid for the call.
        let mut events = ChatCallbacks {
            host: RequestCallbacks::new(unsafe { cb.as_ref() }, &chat.session_id),
            cancel: &chat.cancel,
        };
        let output = session.send(turn, &mut events)?;
        events.host.request_complete(&output.usage);
        let model = chat
            .engine
            .model
            .file
            .get_str("general.name")
            .unwrap_or("model");
        let response = string_to_c(response_json(
            &output,
            model,
            &chat.session_id,
            session.turns(),
            seed,
        )?)?;
        // SAFETY: checked non-null.
        unsafe { *out_response_json = response };
        Ok(())
    })
}

/// Asks the chat's running send (if any) to stop within one token or one prefill chunk; it
/// then returns SMALLMIND_OK with `finish_reason: "cancelled"`. Any thread; never blocks.
///
/// # Safety
/// `chat` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smallmind_chat_cancel(chat: *mut smallmind_chat) -> smallmind_status {
    ffi_call(|| {
        // SAFETY: per the function's contract.
        let chat = unsafe { chat_ref(chat) }?;
        chat.cancel.store(true, Ordering::Relaxed);
        Ok(())
    })
}

/// Forgets the history and the KV cache. BUSY while a send runs.
///
/// # Safety
/// `chat` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smallmind_chat_reset(chat: *mut smallmind_chat) -> smallmind_status {
    ffi_call(|| {
        // SAFETY: per the function's contract.
        let chat = unsafe { chat_ref(chat) }?;
        chat.session.try_lock().ok_or_else(busy)?.reset();
        Ok(())
    })
}

/// The history as JSON: {"session_id", "messages": [...]}. `*out_json` is freed with
/// `smallmind_string_free`. BUSY while a send runs.
///
/// # Safety
/// Pointers are NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smallmind_chat_history(
    chat: *const smallmind_chat,
    out_json: *mut *mut c_char,
) -> smallmind_status {
    ffi_call(|| {
        // SAFETY: per the function's contract.
        let chat = unsafe { chat_ref(chat) }?;
        out_arg(out_json, "out_json")?;
        let session = chat.session.try_lock().ok_or_else(busy)?;
        let json = crate::api::to_json(
            &serde_json::json!({ "session_id": chat.session_id, "messages": session.history() }),
        )?;
        let text = string_to_c(json)?;
        // SAFETY: checked non-null.
        unsafe { *out_json = text };
        Ok(())
    })
}

/// The session as a versioned JSON envelope {"format": "smallmind.chat", "version": 1,
/// "session_id", "options", "history"} for hosts that store it themselves; restore it with
/// `smallmind_chat_import`. `*out_json` is freed with `smallmind_string_free`.
///
/// # Safety
/// Pointers are NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smallmind_chat_export(
    chat: *const smallmind_chat,
    out_json: *mut *mut c_char,
) -> smallmind_status {
    ffi_call(|| {
        // SAFETY: per the function's contract.
        let chat = unsafe { chat_ref(chat) }?;
        out_arg(out_json, "out_json")?;
        let session = chat.session.try_lock().ok_or_else(busy)?;
        let mut options = chat.options.clone();
        options.session_id = Some(chat.session_id.clone());
        let envelope = ExportEnvelope {
            format: EXPORT_FORMAT.to_string(),
            version: EXPORT_VERSION,
            session_id: chat.session_id.clone(),
            options,
            history: session.history().to_vec(),
        };
        let text = string_to_c(crate::api::to_json(&envelope)?)?;
        // SAFETY: checked non-null.
        unsafe { *out_json = text };
        Ok(())
    })
}

/// Restores a chat from `smallmind_chat_export`'s JSON onto `engine` (its KV cache is
/// rebuilt on the first send). Envelopes from newer versions are refused.
///
/// # Safety
/// Pointers are NULL or valid; strings NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smallmind_chat_import(
    engine: *mut smallmind_engine,
    json: *const c_char,
    out: *mut *mut smallmind_chat,
) -> smallmind_status {
    ffi_call(|| {
        // SAFETY: per the function's contract.
        let engine = unsafe { engine_ref(engine) }?;
        // SAFETY: per the function's contract.
        let text = unsafe { str_arg(json, "json") }?;
        out_arg(out, "out")?;
        let envelope = ExportEnvelope::parse(text)?;
        let mut options = envelope.options;
        options.session_id = Some(envelope.session_id);
        let chat = new_chat(Arc::clone(&engine.engine), options, envelope.history)?;
        // SAFETY: checked non-null.
        unsafe { *out = chat };
        Ok(())
    })
}
