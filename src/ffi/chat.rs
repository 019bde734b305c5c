//! Chat entry points: sessions with history and their own KV cache. Each converts and checks
//! its arguments and calls `crate::chat::Chat`, where the logic lives.

use std::ffi::c_char;
use std::sync::Arc;

use super::boundary::{ffi_call, out_arg, str_arg, string_to_c};
use super::callbacks::RequestCallbacks;
use super::engine::engine_ref;
use super::{smallmind_chat_callbacks, smallmind_engine, smallmind_status};
use crate::chat::Chat;
use crate::error::{Error, Result};

/// A conversation: its history and its own KV cache, on one engine.
/// Created by `smallmind_chat_create` / `_import`, freed by `smallmind_chat_free`.
/// One call at a time; `smallmind_chat_cancel` may be called from any thread.
pub struct smallmind_chat {
    chat: Chat,
}

/// Borrows a chat handle.
///
/// # Safety
/// `chat` is NULL or a live handle.
unsafe fn chat_ref<'a>(chat: *const smallmind_chat) -> Result<&'a Chat> {
    // SAFETY: per the caller's contract.
    unsafe { chat.as_ref() }
        .map(|c| &c.chat)
        .ok_or_else(|| Error::invalid_argument("chat is NULL"))
}

/// Hands a new chat to C; freed by `smallmind_chat_free`.
fn into_handle(chat: Chat) -> *mut smallmind_chat {
    Box::into_raw(Box::new(smallmind_chat { chat }))
}

/// Creates a chat on `engine`. `options_json` may be NULL or
/// {"session_id", "system_prompt", "context_policy": {"type": "keep_all" | "keep_last_n_turns"
/// (+"max_turns") | "sliding_window" (+"max_tokens")}, "kv_cache" (default true),
/// "max_kv_tokens" (at most the engine's context_length), and the generation options of
/// `smallmind_engine_complete` as defaults for every send}.
/// On success `*out` receives a chat freed with `smallmind_chat_free`. Thread-safe.
/// Errors: INVALID_ARGUMENT, INVALID_JSON (syntax, wrong type, unknown field).
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
        let chat = Chat::create(Arc::clone(&engine.engine), options_text)?;
        // SAFETY: checked non-null.
        unsafe { *out = into_handle(chat) };
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

/// Sends messages and generates the reply. Request: {"messages": [{"role": "system" | "user"
/// | "assistant" | "tool", "content", "name"?, "tool_calls"?, "tool_call_id"?}], "history":
/// "append" (default: messages extend the session's history) | "replace" (they are the whole
/// conversation), "context_policy", and the generation options of
/// `smallmind_engine_complete` (they override the chat's defaults; "max_tokens" must be at
/// least 1)}. "tools", "tool_choice" (other than "none"), "max_tool_calls" and
/// "retrieved_context" are refused with INVALID_ARGUMENT until smallmind supports them.
/// Response: {"id", "model", "session_id", "message": {"role", "content"}, "finish_reason":
/// "stop" | "length" | "cancelled", "usage": {"prompt_tokens", "completion_tokens",
/// "total_tokens", "prompt_tokens_details": {"cached_tokens"}, "time_to_first_token_ms",
/// "prefill_ms", "decode_ms", "prefill_tokens_per_second", "decode_tokens_per_second"},
/// "context": {"policy", "tokens_before", "tokens_after", "dropped_messages"}, "seed",
/// "logprobs"? (as in `smallmind_engine_complete`, when asked for), "warnings"}. Under a
/// JSON "response_format" "message.content" is the JSON text, as for completions. A cancelled turn (on_token returned non-zero, or `smallmind_chat_cancel`)
/// returns SMALLMIND_OK with the text so far and leaves the history as it was.
/// `cb` may be NULL; callbacks run on this thread, in the order documented at
/// `smallmind_chat_callbacks`. `*out_response_json` is freed with `smallmind_string_free`.
/// A second concurrent call on the same chat returns SMALLMIND_ERR_BUSY at once.
/// Errors: INVALID_ARGUMENT, INVALID_JSON, CONTEXT_OVERFLOW (keep_all and the conversation
/// does not fit, naming both sizes), BUSY.
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
        // SAFETY: cb is NULL or valid for the call.
        let mut events = RequestCallbacks::new(unsafe { cb.as_ref() }, chat.session_id());
        let (response, _usage) = chat.send(json, started_at, &mut events)?;
        let response = string_to_c(response)?;
        // SAFETY: checked non-null.
        unsafe { *out_response_json = response };
        Ok(())
    })
}

/// Renders the prompt that `smallmind_chat_send` with the same request would give the model
/// now (the history, the messages, the system prompt and the context policy applied), without
/// generating or changing anything: {"prompt": the template's text, "prompt_token_ids": [...],
/// "context": {"policy", "tokens_before", "tokens_after", "dropped_messages"}}. For checking
/// templates and policies. `*out_json` is freed with `smallmind_string_free`. BUSY while a
/// send runs. Errors as for `smallmind_chat_send`.
///
/// # Safety
/// Pointers are NULL or valid; strings NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smallmind_chat_render(
    chat: *const smallmind_chat,
    request_json: *const c_char,
    out_json: *mut *mut c_char,
) -> smallmind_status {
    ffi_call(|| {
        // SAFETY: per the function's contract.
        let chat = unsafe { chat_ref(chat) }?;
        // SAFETY: per the function's contract.
        let json = unsafe { str_arg(request_json, "request_json") }?;
        out_arg(out_json, "out_json")?;
        let text = string_to_c(chat.render(json)?)?;
        // SAFETY: checked non-null.
        unsafe { *out_json = text };
        Ok(())
    })
}

/// Asks the chat's running send (if any) to stop within one token or one prefill chunk; it
/// then returns SMALLMIND_OK with `finish_reason: "cancelled"`. A cancel with no send running
/// has no effect on later sends. Any thread; never blocks.
///
/// # Safety
/// `chat` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smallmind_chat_cancel(chat: *mut smallmind_chat) -> smallmind_status {
    ffi_call(|| {
        // SAFETY: per the function's contract.
        let chat = unsafe { chat_ref(chat) }?;
        chat.cancel();
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
        chat.reset()
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
        let text = string_to_c(chat.history_json()?)?;
        // SAFETY: checked non-null.
        unsafe { *out_json = text };
        Ok(())
    })
}

/// The session as a versioned JSON envelope {"format": "smallmind.chat", "version": 1,
/// "session_id", "options", "history"} for hosts that store it themselves; restore it with
/// `smallmind_chat_import`. `*out_json` is freed with `smallmind_string_free`. BUSY while a
/// send runs.
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
        let text = string_to_c(chat.export_json()?)?;
        // SAFETY: checked non-null.
        unsafe { *out_json = text };
        Ok(())
    })
}

/// Restores a chat from `smallmind_chat_export`'s JSON onto `engine` (its KV cache is
/// rebuilt on the first send). Envelopes from newer versions are refused (INVALID_JSON).
/// On success `*out` receives a chat freed with `smallmind_chat_free`.
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
        let chat = Chat::import(Arc::clone(&engine.engine), text)?;
        // SAFETY: checked non-null.
        unsafe { *out = into_handle(chat) };
        Ok(())
    })
}
