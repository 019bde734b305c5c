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
use crate::store;

/// An optional JSON string argument: NULL is `None`.
///
/// # Safety
/// `ptr` is NULL or a NUL-terminated string valid for the call.
unsafe fn optional_str<'a>(ptr: *const c_char, name: &str) -> Result<Option<&'a str>> {
    if ptr.is_null() {
        Ok(None)
    } else {
        // SAFETY: `ptr` is non-null (checked just above) and, by this fn's # Safety, NUL-terminated
        // and alive for the call, as str_arg requires.
        unsafe { str_arg(ptr, name) }.map(Some)
    }
}

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
    // SAFETY: this fn's # Safety makes `chat` NULL or a live handle, so as_ref is sound; NULL
    // becomes the error.
    unsafe { chat.as_ref() }
        .map(|c| &c.chat)
        .ok_or_else(|| Error::invalid_argument("chat is NULL"))
}

/// Hands a new chat to C; freed by `smallmind_chat_free`.
fn into_handle(chat: Chat) -> *mut smallmind_chat {
    Box::into_raw(Box::new(smallmind_chat { chat }))
}

/// Creates a chat on `engine`. `options_json` may be NULL or
/// {"session_id", "chat_template" (a Jinja template replacing the engine's), "system_prompt" (rendered first when the conversation has no system
/// message; a system message in the conversation wins; never written into the history),
/// "parse_special_in_content" (default false: message content is tokenized as plain text, so
/// only the template's own markup becomes special tokens; true: special-token text in content
/// becomes special tokens too), "context_policy": {"type": "keep_all" | "keep_last_n_turns"
/// (+"max_turns": turns kept before the new one, 0 = only the new one) | "sliding_window"
/// (+"window_tokens", also accepted as "max_tokens": the prompt's budget)}, "kv_cache" (default true),
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
        // SAFETY: `engine` is NULL or a live handle from smallmind_engine_create (# Safety of
        // smallmind_chat_create); engine_ref turns NULL into an error.
        let engine = unsafe { engine_ref(engine) }?;
        out_arg(out, "out")?;
        let options_text = if options_json.is_null() {
            None
        } else {
            // SAFETY: `options_json` is non-null (checked just above), and NUL-terminated and alive
            // for this call (# Safety of smallmind_chat_create).
            Some(unsafe { str_arg(options_json, "options_json") }?)
        };
        let chat = Chat::create(Arc::clone(&engine.engine), options_text)?;
        // SAFETY: out_arg rejected a NULL `out` above, and a non-NULL one is valid for writes
        // (# Safety of smallmind_chat_create).
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
            // SAFETY: `chat` is non-null (checked above) and, by # Safety, an unfreed handle from
            // into_handle's Box::into_raw that no running call uses.
            drop(unsafe { Box::from_raw(chat) });
        }));
    }
}

/// Sends messages and generates the reply. Request: {"messages": [{"role": "system" | "user"
/// | "assistant" | "tool", "content", "name"?, "tool_calls"?, "tool_call_id"? (required for
/// "tool")}], "history": "append" (default: messages extend the session's history) |
/// "replace" (they are the whole conversation), "context_policy", the generation options of
/// `smallmind_engine_complete` (they override the chat's defaults; "max_tokens" must be at
/// least 1), "tools": [{"type": "function", "function": {"name", "description",
/// "parameters": a JSON Schema}}], "tool_choice": "none" | "auto" (default with tools) |
/// "required" | {"type": "function", "function": {"name"}}, "max_tool_calls" (default 8),
/// "retrieved_context": [{"id", "content", "source", "title", "score"}]}.
/// With `cb->execute_tool` the send runs the model's calls itself and continues until a plain
/// reply or max_tool_calls; without it a reply that calls tools ends with finish_reason
/// "tool_calls" and the host answers with "tool" messages in its next send. With
/// `cb->retrieve` the host's chunks for the last user message join "retrieved_context".
/// Response: {"id", "model", "session_id", "message": {"role", "content", "tool_calls"?:
/// [{"id", "type": "function", "function": {"name", "arguments": a JSON string}}]},
/// "finish_reason": "stop" | "length" | "tool_calls" | "cancelled", "usage":
/// {"prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details":
/// {"cached_tokens"}, "time_to_first_token_ms", "prefill_ms", "decode_ms",
/// "prefill_tokens_per_second", "decode_tokens_per_second"} (summed over every generation of
/// the send), "context": {"policy", "tokens_before", "tokens_after", "dropped_messages"},
/// "seed", "logprobs"? (as in `smallmind_engine_complete`, when asked for), "tool_results"?:
/// [{"id", "name", "arguments", "content", "elapsed_ms"}], "citations"?: [{"id", "index",
/// "source", "title", "snippet", "score"}], "warnings"}. Under a JSON "response_format"
/// "message.content" is the JSON text, as for completions. "id" is unique in the process
/// ("chatcmpl-" + a random part drawn once per process + a counter). After a cancel, "usage"
/// counts only the prompt tokens really processed (cached + evaluated), and its rates come
/// from those. A cancelled turn (on_token, execute_tool or retrieve returned non-zero, or
/// `smallmind_chat_cancel`) returns SMALLMIND_OK with the text so far and leaves the history
/// as it was.
/// `cb` may be NULL; callbacks run on this thread, in the order documented at
/// `smallmind_chat_callbacks`. `*out_response_json` is freed with `smallmind_string_free`.
/// A second concurrent call on the same chat returns SMALLMIND_ERR_BUSY at once.
/// When a send fails after generation began, the text already passed to `on_token` stays
/// delivered but is not part of the conversation: the history is left as it was before the
/// call, so the host should discard what it streamed (or show it as failed).
/// Errors: INVALID_ARGUMENT, INVALID_JSON, CONTEXT_OVERFLOW (keep_all and the conversation
/// does not fit, naming both sizes), BUSY, INTERNAL (a bug, caught: the message says what
/// panicked; the chat then refuses sends with INTERNAL until `smallmind_chat_reset`).
/// Limits: SMALLMIND_MAX_REQUEST_BYTES, SMALLMIND_MAX_MESSAGES, the engine's context, and
/// the template limits (SMALLMIND_MAX_RENDERED_PROMPT_BYTES, SMALLMIND_MAX_TEMPLATE_FUEL,
/// SMALLMIND_MAX_TEMPLATE_RECURSION).
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
        // SAFETY: `chat` is NULL or a live chat handle (# Safety of smallmind_chat_send); chat_ref
        // turns NULL into an error.
        let chat = unsafe { chat_ref(chat) }?;
        // SAFETY: `request_json` is NULL or NUL-terminated and alive for this call (# Safety of
        // smallmind_chat_send); str_arg rejects NULL.
        let json = unsafe { str_arg(request_json, "request_json") }?;
        out_arg(out_response_json, "out_response_json")?;
        // SAFETY: `cb` is NULL or a host table readable for its struct_size bytes during this call
        // (# Safety of smallmind_chat_send), which is what read requires.
        let table = unsafe { smallmind_chat_callbacks::read(cb) }?;
        let mut events = RequestCallbacks::new(table, chat.session_id());
        let (response, _usage) = chat.send(json, started_at, &mut events)?;
        let response = string_to_c(response)?;
        // SAFETY: out_arg rejected a NULL `out_response_json` above, and a non-NULL one is valid
        // for writes (# Safety of smallmind_chat_send).
        unsafe { *out_response_json = response };
        Ok(())
    })
}

/// Renders the prompt that `smallmind_chat_send` with the same request would give the model
/// now (the history, the messages, the system prompt and the context policy applied), without
/// generating or changing anything: {"prompt": the template's text, "prompt_token_ids": [...],
/// "context": {"policy", "tokens_before", "tokens_after", "dropped_messages"}, "warnings"}. For checking
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
        // SAFETY: `chat` is NULL or a live chat handle (# Safety of smallmind_chat_render);
        // chat_ref turns NULL into an error.
        let chat = unsafe { chat_ref(chat) }?;
        // SAFETY: `request_json` is NULL or NUL-terminated and alive for this call (# Safety of
        // smallmind_chat_render); str_arg rejects NULL.
        let json = unsafe { str_arg(request_json, "request_json") }?;
        out_arg(out_json, "out_json")?;
        let text = string_to_c(chat.render(json)?)?;
        // SAFETY: out_arg rejected a NULL `out_json` above, and a non-NULL one is valid for writes
        // (# Safety of smallmind_chat_render).
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
        // SAFETY: `chat` is NULL or a live handle (# Safety of smallmind_chat_cancel) that no
        // smallmind_chat_free ends during this call; chat_ref turns NULL into an error.
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
        // SAFETY: `chat` is NULL or a live chat handle (# Safety of smallmind_chat_reset); chat_ref
        // turns NULL into an error.
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
        // SAFETY: `chat` is NULL or a live chat handle (# Safety of smallmind_chat_history);
        // chat_ref turns NULL into an error.
        let chat = unsafe { chat_ref(chat) }?;
        out_arg(out_json, "out_json")?;
        let text = string_to_c(chat.history_json()?)?;
        // SAFETY: out_arg rejected a NULL `out_json` above, and a non-NULL one is valid for writes
        // (# Safety of smallmind_chat_history).
        unsafe { *out_json = text };
        Ok(())
    })
}

/// The session as a versioned JSON envelope {"format": "smallmind.chat", "version": 2,
/// "session_id", "options", "history"} for hosts that store it themselves, without its KV
/// cache (`smallmind_chat_export_with_options` adds it); restore it with
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
        // SAFETY: `chat` is NULL or a live chat handle (# Safety of smallmind_chat_export);
        // chat_ref turns NULL into an error.
        let chat = unsafe { chat_ref(chat) }?;
        out_arg(out_json, "out_json")?;
        let text = string_to_c(chat.export_json()?)?;
        // SAFETY: out_arg rejected a NULL `out_json` above, and a non-NULL one is valid for writes
        // (# Safety of smallmind_chat_export).
        unsafe { *out_json = text };
        Ok(())
    })
}

/// Restores a chat from `smallmind_chat_export`'s JSON onto `engine`: its options, history
/// and, when the envelope carries "kv_snapshot" that fits this engine, its KV cache (when
/// it does not fit — another model, kv_type or context — the history loads, the snapshot
/// is dropped and the next response's "warnings" says why; the next turn recomputes).
/// Version 1 envelopes migrate; newer versions are refused (INVALID_JSON, naming both).
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
        // SAFETY: `engine` is NULL or a live handle from smallmind_engine_create (# Safety of
        // smallmind_chat_import); engine_ref turns NULL into an error.
        let engine = unsafe { engine_ref(engine) }?;
        // SAFETY: `json` is NULL or NUL-terminated and alive for this call (# Safety of
        // smallmind_chat_import); str_arg rejects NULL.
        let text = unsafe { str_arg(json, "json") }?;
        out_arg(out, "out")?;
        let chat = Chat::import(Arc::clone(&engine.engine), text)?;
        // SAFETY: out_arg rejected a NULL `out` above, and a non-NULL one is valid for writes
        // (# Safety of smallmind_chat_import).
        unsafe { *out = into_handle(chat) };
        Ok(())
    })
}

/// Like `smallmind_chat_export`, with `options_json` NULL or {"include_kv": bool} (default
/// false). With the KV cache the envelope carries "kv_snapshot": the KV section of a saved
/// file (README "Saving chats" gives its layout) encoded as base64 (RFC 4648 standard
/// alphabet, padded), about 1.33 times its size. `*out_json` is freed with
/// `smallmind_string_free`. BUSY while a send runs. Errors: INVALID_JSON (options).
///
/// # Safety
/// Pointers are NULL or valid; strings NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smallmind_chat_export_with_options(
    chat: *const smallmind_chat,
    options_json: *const c_char,
    out_json: *mut *mut c_char,
) -> smallmind_status {
    ffi_call(|| {
        // SAFETY: `chat` is NULL or a live chat handle (# Safety of
        // smallmind_chat_export_with_options); chat_ref turns NULL into an error.
        let chat = unsafe { chat_ref(chat) }?;
        // SAFETY: `options_json` is NULL or NUL-terminated and alive for this call (# Safety of
        // smallmind_chat_export_with_options); optional_str maps NULL to None.
        let options = unsafe { optional_str(options_json, "options_json") }?;
        out_arg(out_json, "out_json")?;
        let text = string_to_c(store::export(chat, options)?)?;
        // SAFETY: out_arg rejected a NULL `out_json` above, and a non-NULL one is valid for writes
        // (# Safety of smallmind_chat_export_with_options).
        unsafe { *out_json = text };
        Ok(())
    })
}

/// Like `smallmind_chat_import`, with `options_json` NULL or chat options (as for
/// `smallmind_chat_create`) that replace the exported ones, e.g. a new "session_id".
///
/// # Safety
/// Pointers are NULL or valid; strings NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smallmind_chat_import_with_options(
    engine: *mut smallmind_engine,
    json: *const c_char,
    options_json: *const c_char,
    out: *mut *mut smallmind_chat,
) -> smallmind_status {
    ffi_call(|| {
        // SAFETY: `engine` is NULL or a live handle from smallmind_engine_create (# Safety of
        // smallmind_chat_import_with_options); engine_ref turns NULL into an error.
        let engine = unsafe { engine_ref(engine) }?;
        // SAFETY: `json` is NULL or NUL-terminated and alive for this call (# Safety of
        // smallmind_chat_import_with_options); str_arg rejects NULL.
        let text = unsafe { str_arg(json, "json") }?;
        // SAFETY: `options_json` is NULL or NUL-terminated and alive for this call (# Safety of
        // smallmind_chat_import_with_options); optional_str maps NULL to None.
        let options = unsafe { optional_str(options_json, "options_json") }?;
        out_arg(out, "out")?;
        let chat = store::import_json(Arc::clone(&engine.engine), text, options)?;
        // SAFETY: out_arg rejected a NULL `out` above, and a non-NULL one is valid for writes
        // (# Safety of smallmind_chat_import_with_options).
        unsafe { *out = into_handle(chat) };
        Ok(())
    })
}

/// Saves the chat to the file at `path` (UTF-8): its options and history, and with
/// `options_json` {"include_kv": true} its KV cache too, so a loaded chat's next turn skips
/// recomputing the prompt. `options_json` may be NULL (= {"include_kv": false}).
/// Atomic: the bytes go to a temporary file in the same directory, which is flushed, renamed
/// over `path`, and the directory flushed; a crash at any instant leaves the old file or the
/// new one. When this call returns no temporary file is left (a save killed part-way may
/// leave `.<name>.smallmind-tmp.<pid>.<n>`, which the next save to `path` removes).
/// BUSY while a send runs on the chat. Errors: INVALID_ARGUMENT, INVALID_JSON (options),
/// IO (the message names the path and the system's reason).
///
/// # Safety
/// Pointers are NULL or valid; strings NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smallmind_chat_save(
    chat: *const smallmind_chat,
    path: *const c_char,
    options_json: *const c_char,
) -> smallmind_status {
    ffi_call(|| {
        // SAFETY: `chat` is NULL or a live chat handle (# Safety of smallmind_chat_save); chat_ref
        // turns NULL into an error.
        let chat = unsafe { chat_ref(chat) }?;
        // SAFETY: `path` is NULL or NUL-terminated and alive for this call (# Safety of
        // smallmind_chat_save); str_arg rejects NULL.
        let path = unsafe { str_arg(path, "path") }?;
        // SAFETY: `options_json` is NULL or NUL-terminated and alive for this call (# Safety of
        // smallmind_chat_save); optional_str maps NULL to None.
        let options = unsafe { optional_str(options_json, "options_json") }?;
        store::save(chat, std::path::Path::new(path), options)
    })
}

/// Loads a chat saved by `smallmind_chat_save` (or a file holding an exported JSON
/// envelope) onto `engine`. `options_json` may be NULL or chat options (as for
/// `smallmind_chat_create`) that replace the saved ones, e.g. a new "session_id".
/// A saved KV cache is used when it was made by this model (fingerprint) with the same
/// kv_type, context_length and KV limit; otherwise the history loads, the cache is dropped,
/// the next response's "warnings" says why and its turn recomputes the prompt. Older
/// versions migrate; newer ones are refused naming both versions.
/// On success `*out` receives a chat freed with `smallmind_chat_free`.
/// Errors: INVALID_ARGUMENT, IO (missing, unreadable, truncated or corrupt file: the message
/// gives the byte offset), INVALID_JSON (a bad envelope: the message gives the JSON path).
///
/// # Safety
/// Pointers are NULL or valid; strings NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smallmind_chat_load(
    engine: *mut smallmind_engine,
    path: *const c_char,
    options_json: *const c_char,
    out: *mut *mut smallmind_chat,
) -> smallmind_status {
    ffi_call(|| {
        // SAFETY: `engine` is NULL or a live handle from smallmind_engine_create (# Safety of
        // smallmind_chat_load); engine_ref turns NULL into an error.
        let engine = unsafe { engine_ref(engine) }?;
        // SAFETY: `path` is NULL or NUL-terminated and alive for this call (# Safety of
        // smallmind_chat_load); str_arg rejects NULL.
        let path = unsafe { str_arg(path, "path") }?;
        // SAFETY: `options_json` is NULL or NUL-terminated and alive for this call (# Safety of
        // smallmind_chat_load); optional_str maps NULL to None.
        let options = unsafe { optional_str(options_json, "options_json") }?;
        out_arg(out, "out")?;
        let chat = store::load(
            Arc::clone(&engine.engine),
            std::path::Path::new(path),
            options,
        )?;
        // SAFETY: out_arg rejected a NULL `out` above, and a non-NULL one is valid for writes
        // (# Safety of smallmind_chat_load).
        unsafe { *out = into_handle(chat) };
        Ok(())
    })
}
