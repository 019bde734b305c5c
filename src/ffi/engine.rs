//! Library-level and engine-level entry points.

use std::ffi::c_char;
use std::sync::Arc;

use super::boundary::{ffi_call, last_error_ptr, out_arg, str_arg, string_to_c};
use super::callbacks::{LoadCallbacks, RequestCallbacks};
use super::{smallmind_chat_callbacks, smallmind_engine_callbacks, smallmind_status};
use crate::api;
use crate::engine::Engine;
use crate::error::Error;

/// The ABI version of this header: bumped whenever a struct layout or function signature
/// changes incompatibly. 2: `smallmind_chat_callbacks` starts with `struct_size`
/// (and grows at its end only from then on).
pub const SMALLMIND_ABI_VERSION: u32 = 2;

static VERSION: &std::ffi::CStr = c"0.1.0";

/// A loaded model, shared by any number of threads and chats.
/// Created by `smallmind_engine_create`, freed by `smallmind_engine_free`.
pub struct smallmind_engine {
    pub(crate) engine: Arc<Engine>,
}

/// The library version, e.g. "0.1.0". Static: do not free.
#[unsafe(no_mangle)]
pub extern "C" fn smallmind_version() -> *const c_char {
    VERSION.as_ptr()
}

/// The ABI version (`SMALLMIND_ABI_VERSION` when the header matches the library).
#[unsafe(no_mangle)]
pub extern "C" fn smallmind_abi_version() -> u32 {
    SMALLMIND_ABI_VERSION
}

/// The calling thread's message for its last failed call, or NULL when that call succeeded.
/// Owned by the library: valid until this thread's next smallmind call; do not free.
#[unsafe(no_mangle)]
pub extern "C" fn smallmind_last_error() -> *const c_char {
    last_error_ptr()
}

/// Frees a string returned by smallmind. NULL is a no-op. Any thread.
///
/// # Safety
/// `s` is NULL or a string returned by smallmind that has not been freed yet.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smallmind_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: `s` is non-null (checked above) and, by # Safety, an unfreed string smallmind
        // returned; every such string comes from CString::into_raw in boundary::string_to_c.
        drop(unsafe { std::ffi::CString::from_raw(s) });
    }
}

/// Loads a model. `options_json`: {"model_path" (required; UTF-8 like all JSON text, so a
/// path that is not UTF-8 is reached through a symbolic link with a UTF-8 name), "threads",
/// "context_length" (above the model's training context loads with a warning, sent to on_log
/// and listed in `smallmind_engine_info`'s "warnings"), "kv_type": "f16"|"f32", "use_mmap"
/// (default true: the file is memory-mapped and must not be truncated or rewritten while the
/// engine lives; false reads it into memory, so the file may change),
/// "vocab_only" (metadata and tokenizer only, any architecture: tokenize, detokenize, info and
/// chat render work, completion and chat sends fail with INVALID_ARGUMENT), "chat_template"
/// (a Jinja template replacing the file's), "kv_budget_bytes", "max_sessions", "share_prefixes"
/// (default true: chats whose prompts begin with the same system turn copy its KV rows from
/// an idle chat holding them instead of computing them; replies are the same either way),
/// "kernels": "fast" (default) | "reference" (the scalar reference kernels only, several
/// times slower: to check the fast path on your model; `smallmind_engine_info` reports it)}.
/// `cb` may be NULL. On success `*out` receives an
/// engine the caller frees with `smallmind_engine_free`; on failure `*out` is untouched.
/// Errors: INVALID_ARGUMENT, INVALID_JSON, IO (file missing), MODEL_LOAD (malformed file),
/// UNSUPPORTED_MODEL, CANCELLED (the progress callback returned non-zero).
///
/// # Safety
/// Pointers are NULL or valid; `options_json` is NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smallmind_engine_create(
    options_json: *const c_char,
    cb: *const smallmind_engine_callbacks,
    out: *mut *mut smallmind_engine,
) -> smallmind_status {
    ffi_call(|| {
        out_arg(out, "out")?;
        // SAFETY: `options_json` is NULL or NUL-terminated and alive for this call (# Safety of
        // smallmind_engine_create); str_arg rejects NULL.
        let json = unsafe { str_arg(options_json, "options_json") }.map_err(|e| {
            if options_json.is_null() {
                e
            } else {
                // Not UTF-8: most often a model_path copied from a file system that allows
                // any bytes in names.
                Error::invalid_argument(format!(
                    "{}; JSON text is UTF-8, so a model_path that is not valid UTF-8 cannot be given: open the file through a symbolic link (or a copy) whose path is UTF-8",
                    e.message
                ))
            }
        })?;
        let options = api::parse_engine_options(json)?;
        // SAFETY: `cb` is NULL or a valid smallmind_engine_callbacks for this call (# Safety of
        // smallmind_engine_create); as_ref maps NULL to None.
        let callbacks = unsafe { cb.as_ref() };
        let engine = Engine::load(&options, &mut LoadCallbacks(callbacks))?;
        let handle = Box::into_raw(Box::new(smallmind_engine { engine }));
        // SAFETY: out_arg rejected a NULL `out` above, and a non-NULL one is valid for writes
        // (# Safety of smallmind_engine_create).
        unsafe { *out = handle };
        Ok(())
    })
}

/// Frees an engine. NULL is a no-op. Any thread. Chats created from it keep the model alive
/// until they are freed; no call on this engine handle may be in flight.
///
/// # Safety
/// `engine` is NULL or a handle from `smallmind_engine_create` not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smallmind_engine_free(engine: *mut smallmind_engine) {
    if !engine.is_null() {
        // A panic in a destructor must not unwind into C.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: `engine` is non-null (checked above) and, by # Safety, an unfreed handle from
            // smallmind_engine_create, which made it with Box::into_raw.
            drop(unsafe { Box::from_raw(engine) });
        }));
    }
}

/// Borrows an engine handle.
///
/// # Safety
/// `engine` is NULL or a live handle.
pub(crate) unsafe fn engine_ref<'a>(
    engine: *const smallmind_engine,
) -> Result<&'a smallmind_engine, Error> {
    // SAFETY: this fn's # Safety makes `engine` NULL or a live handle, so as_ref is sound; NULL
    // becomes the error.
    unsafe { engine.as_ref() }.ok_or_else(|| Error::invalid_argument("engine is NULL"))
}

/// Model facts as JSON: architecture, sizes, context length, tensor types, chat template,
/// fingerprint, threads, load time, "warnings" (the load's, e.g. a context_length above the
/// training context), and "constraint_trie_ms": how long building the token trie for
/// constrained decoding took (null until the first request with a JSON response_format).
/// `*out_json` is freed with `smallmind_string_free`.
/// Thread-safe.
///
/// # Safety
/// Pointers are NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smallmind_engine_info(
    engine: *const smallmind_engine,
    out_json: *mut *mut c_char,
) -> smallmind_status {
    ffi_call(|| {
        // SAFETY: `engine` is NULL or a live handle from smallmind_engine_create (# Safety of
        // smallmind_engine_info); engine_ref turns NULL into an error.
        let engine = unsafe { engine_ref(engine) }?;
        out_arg(out_json, "out_json")?;
        let json = string_to_c(api::info_json(&engine.engine)?)?;
        // SAFETY: out_arg rejected a NULL `out_json` above, and a non-NULL one is valid for writes
        // (# Safety of smallmind_engine_info).
        unsafe { *out_json = json };
        Ok(())
    })
}

/// Tokenizes text: {"text", "add_special" (default true), "parse_special" (default false)}
/// → {"ids": [...], "pieces": [...]} (a piece that is not valid UTF-8 alone is a byte array).
/// `*out_json` is freed with `smallmind_string_free`. Thread-safe.
///
/// # Safety
/// Pointers are NULL or valid; strings NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smallmind_engine_tokenize(
    engine: *const smallmind_engine,
    request_json: *const c_char,
    out_json: *mut *mut c_char,
) -> smallmind_status {
    ffi_call(|| {
        // SAFETY: `engine` is NULL or a live handle from smallmind_engine_create (# Safety of
        // smallmind_engine_tokenize); engine_ref turns NULL into an error.
        let engine = unsafe { engine_ref(engine) }?;
        // SAFETY: `request_json` is NULL or NUL-terminated and alive for this call (# Safety of
        // smallmind_engine_tokenize); str_arg rejects NULL.
        let json = unsafe { str_arg(request_json, "request_json") }?;
        out_arg(out_json, "out_json")?;
        let result = string_to_c(api::tokenize(&engine.engine, json)?)?;
        // SAFETY: out_arg rejected a NULL `out_json` above, and a non-NULL one is valid for writes
        // (# Safety of smallmind_engine_tokenize).
        unsafe { *out_json = result };
        Ok(())
    })
}

/// Detokenizes: {"ids": [...], "render_special" (default false)} → {"text"}.
/// `*out_json` is freed with `smallmind_string_free`. Thread-safe.
///
/// # Safety
/// Pointers are NULL or valid; strings NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smallmind_engine_detokenize(
    engine: *const smallmind_engine,
    request_json: *const c_char,
    out_json: *mut *mut c_char,
) -> smallmind_status {
    ffi_call(|| {
        // SAFETY: `engine` is NULL or a live handle from smallmind_engine_create (# Safety of
        // smallmind_engine_detokenize); engine_ref turns NULL into an error.
        let engine = unsafe { engine_ref(engine) }?;
        // SAFETY: `request_json` is NULL or NUL-terminated and alive for this call (# Safety of
        // smallmind_engine_detokenize); str_arg rejects NULL.
        let json = unsafe { str_arg(request_json, "request_json") }?;
        out_arg(out_json, "out_json")?;
        let result = string_to_c(api::detokenize(&engine.engine, json)?)?;
        // SAFETY: out_arg rejected a NULL `out_json` above, and a non-NULL one is valid for writes
        // (# Safety of smallmind_engine_detokenize).
        unsafe { *out_json = result };
        Ok(())
    })
}

/// Raw text completion, no template, no session:
/// {"prompt" | "prompt_ids", "add_special", "parse_special", "prompt_logprobs": bool, and the
/// generation options} → {"text", "token_ids", "finish_reason", "usage", "seed",
/// "logprobs"?, "prompt_logprobs"?, "warnings"}.
///
/// Generation options, the same fields for completions, chat sends and chat options (the
/// defaults of a chat's sends; a send's own values win), all optional:
/// "max_tokens" (default 512; 0 scores the prompt only, completions only), "temperature"
/// (0.8; 0 = greedy), "top_k" (40; 0 = off), "top_p" (0.95), "min_p" (0.05),
/// "repeat_penalty" (1 = off), "repeat_last_n" (64), "presence_penalty" and
/// "frequency_penalty" (0, in [-2, 2]), "seed" (-1 or absent: a new random seed each call;
/// 0 to 2^53-1; the seed used is in the response and is always below 2^53), "stop" (a string
/// or a list), "stop_token_ids" (ids of the vocabulary), "ignore_eos", "logprobs" (0 to 100
/// alternatives per generated token), "response_format": {"type": "text"} (default) |
/// {"type": "json_object"} | {"type": "json_schema", "json_schema": {"name", "schema",
/// "strict", "description"?}}.
/// A value of the wrong JSON type is INVALID_JSON; a value out of range, an id outside the
/// vocabulary or an unknown name is INVALID_ARGUMENT; both messages name the field.
///
/// "token_ids" holds every generated token, including the end-of-generation or stop token
/// id that ended the reply and the tokens of a matched stop string; "usage.completion_tokens"
/// counts them; "text" excludes them. Each "logprobs" entry is {"id", "text", "logprob",
/// "top": [{"id", "text", "logprob"}]}: natural logs of the model's distribution before
/// penalties and temperature (so with those the chosen token need not be top[0]) and after
/// the response_format's mask (tokens the format forbids are excluded, the rest
/// renormalised).
///
/// "response_format": under "json_object" or "json_schema" decoding is constrained, so the
/// reply is one compact JSON value (no whitespace outside strings) that parses and validates
/// against the schema; it is validated again afterwards, and a reply that fails is
/// SMALLMIND_ERR_INTERNAL, never success. The whole schema is enforced whether "strict" is
/// true or false: a keyword that cannot be enforced, a "$ref" outside the schema ("#/..." is
/// supported) or a malformed schema is INVALID_ARGUMENT naming it, before any token is
/// generated. "stop" cannot be combined with a JSON format (INVALID_ARGUMENT). When
/// max_tokens runs out inside the value, finish_reason is "length", "text" holds the
/// unfinished JSON and "warnings" says so. The first constrained request on an engine builds
/// its token trie (see "constraint_trie_ms" in smallmind_engine_info).
/// `cb` may be NULL (its on_token streams the text; returning non-zero stops with
/// finish_reason "cancelled"). `*out_json` is freed with `smallmind_string_free`.
/// Thread-safe: any number of completions may run on one engine at once.
///
/// # Safety
/// Pointers are NULL or valid; strings NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smallmind_engine_complete(
    engine: *mut smallmind_engine,
    request_json: *const c_char,
    cb: *const smallmind_chat_callbacks,
    out_json: *mut *mut c_char,
) -> smallmind_status {
    let started_at = std::time::Instant::now();
    ffi_call(|| {
        // SAFETY: `engine` is NULL or a live handle from smallmind_engine_create (# Safety of
        // smallmind_engine_complete); engine_ref turns NULL into an error.
        let engine = unsafe { engine_ref(engine) }?;
        // SAFETY: `request_json` is NULL or NUL-terminated and alive for this call (# Safety of
        // smallmind_engine_complete); str_arg rejects NULL.
        let json = unsafe { str_arg(request_json, "request_json") }?;
        out_arg(out_json, "out_json")?;
        let request = api::completion_request(&engine.engine, json, started_at)?;
        // SAFETY: `cb` is NULL or a host table readable for its struct_size bytes during this call
        // (# Safety of smallmind_engine_complete), which is what read requires.
        let table = unsafe { smallmind_chat_callbacks::read(cb) }?;
        let mut events = RequestCallbacks::new(table, "");
        let (response, _) = api::complete(&engine.engine, &request, &mut events)?;
        let result = string_to_c(response)?;
        // SAFETY: out_arg rejected a NULL `out_json` above, and a non-NULL one is valid for writes
        // (# Safety of smallmind_engine_complete).
        unsafe { *out_json = result };
        Ok(())
    })
}
