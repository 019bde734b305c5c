//! Callback tables the host passes in, and the adapters that call them.

use std::ffi::{CString, c_char, c_void};

use crate::chat::ChatEvents;
use crate::engine::{GenerationEvents, LoadObserver, LogLevel, Usage};

/// Measured figures of one request, as passed to `on_request_complete`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct smallmind_usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    /// Prompt tokens whose KV cache entries were reused.
    pub cached_tokens: u32,
    /// From the call to the first generated token.
    pub time_to_first_token_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub prefill_tokens_per_second: f64,
    pub decode_tokens_per_second: f64,
}

impl From<&Usage> for smallmind_usage {
    fn from(u: &Usage) -> Self {
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Self {
            prompt_tokens: clamp(u.prompt_tokens),
            completion_tokens: clamp(u.completion_tokens),
            total_tokens: clamp(u.total_tokens()),
            cached_tokens: clamp(u.cached_tokens),
            time_to_first_token_ms: u.time_to_first_token_ms,
            prefill_ms: u.prefill_ms,
            decode_ms: u.decode_ms,
            prefill_tokens_per_second: u.prefill_tokens_per_second(),
            decode_tokens_per_second: u.decode_tokens_per_second(),
        }
    }
}

/// Per-request callbacks. Every field may be NULL, and so may the pointer to the struct. They
/// run on the thread that made the call; strings passed to them are valid only during the
/// callback. Each fires once per request, in this order: on_request_start,
/// on_kv_cache_access, on_context_policy_applied (chat sends only; every send, also when
/// nothing was dropped), on_first_token (not when the request was cancelled before its first
/// token), on_token for each piece, on_request_complete (also when cancelled). A request that
/// fails before it starts (bad input, context overflow) calls none of them. Every figure is
/// measured, and agrees with the response's "usage" and "context".
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct smallmind_chat_callbacks {
    /// Passed back as the first argument of every callback.
    pub user_data: *mut c_void,
    /// A piece of generated text: whole UTF-8 characters, `len` bytes, also NUL-terminated.
    /// Return non-zero to cancel: the call then returns SMALLMIND_OK with the text so far and
    /// `finish_reason: "cancelled"`.
    pub on_token: Option<
        unsafe extern "C" fn(user_data: *mut c_void, text: *const c_char, len: usize) -> i32,
    >,
    /// The request was accepted; `message_count` is the number of messages it carried (0 for
    /// engine completions). `session_id` is "" for engine completions.
    pub on_request_start: Option<
        unsafe extern "C" fn(user_data: *mut c_void, session_id: *const c_char, message_count: u32),
    >,
    /// The first token was generated, `elapsed_ms` after the call began (the response's
    /// usage.time_to_first_token_ms).
    pub on_first_token: Option<
        unsafe extern "C" fn(user_data: *mut c_void, session_id: *const c_char, elapsed_ms: f64),
    >,
    /// The context policy ran (chat only): `policy` is its name ("keep_all",
    /// "keep_last_n_turns", "sliding_window"); prompt tokens of the whole conversation and of
    /// what was kept (equal when nothing was dropped; `tokens_after` is usage.prompt_tokens).
    pub on_context_policy_applied: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            session_id: *const c_char,
            policy: *const c_char,
            tokens_before: u32,
            tokens_after: u32,
        ),
    >,
    /// The KV cache was consulted: `hit` when `cached_tokens` > 0 prompt tokens were reused
    /// (usage.prompt_tokens_details.cached_tokens).
    pub on_kv_cache_access: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            session_id: *const c_char,
            hit: bool,
            cached_tokens: u32,
        ),
    >,
    /// The request finished (also when cancelled); `usage` is valid during the call.
    pub on_request_complete: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            session_id: *const c_char,
            usage: *const smallmind_usage,
        ),
    >,
}

/// Engine-level callbacks, given to `smallmind_engine_create`. Every field may be NULL.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct smallmind_engine_callbacks {
    pub user_data: *mut c_void,
    /// Load progress in 0..=1, on the creating thread. Return non-zero to abort the load
    /// (smallmind_engine_create then returns SMALLMIND_ERR_CANCELLED).
    pub on_load_progress:
        Option<unsafe extern "C" fn(user_data: *mut c_void, fraction: f32) -> i32>,
    /// A log line; level 0 debug, 1 info, 2 warning, 3 error. Called only during
    /// smallmind_engine_create, on the creating thread.
    pub on_log:
        Option<unsafe extern "C" fn(user_data: *mut c_void, level: i32, message: *const c_char)>,
}

/// Calls the host's load callbacks.
pub(crate) struct LoadCallbacks<'a>(pub Option<&'a smallmind_engine_callbacks>);

impl LoadObserver for LoadCallbacks<'_> {
    fn progress(&mut self, fraction: f32) -> bool {
        match self
            .0
            .and_then(|cb| cb.on_load_progress.map(|f| (f, cb.user_data)))
        {
            // SAFETY: the host supplied this function and user_data for this call.
            Some((f, user_data)) => unsafe { f(user_data, fraction) == 0 },
            None => true,
        }
    }

    fn log(&mut self, level: LogLevel, message: &str) {
        if let Some((f, user_data)) = self.0.and_then(|cb| cb.on_log.map(|f| (f, cb.user_data))) {
            let level = match level {
                LogLevel::Debug => 0,
                LogLevel::Info => 1,
                LogLevel::Warn => 2,
                LogLevel::Error => 3,
            };
            let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
            // SAFETY: host-supplied function; `text` outlives the call.
            unsafe { f(user_data, level, text.as_ptr()) };
        }
    }
}

/// Calls the host's per-request callbacks.
pub(crate) struct RequestCallbacks<'a> {
    cb: Option<&'a smallmind_chat_callbacks>,
    session_id: CString,
    /// Reused buffer holding a NUL-terminated copy of each piece.
    piece: Vec<u8>,
}

impl<'a> RequestCallbacks<'a> {
    pub fn new(cb: Option<&'a smallmind_chat_callbacks>, session_id: &str) -> Self {
        Self {
            cb,
            session_id: CString::new(session_id.replace('\0', " ")).unwrap_or_default(),
            piece: Vec::new(),
        }
    }

    pub fn request_start(&mut self, message_count: u32) {
        if let Some((f, ud)) = self
            .cb
            .and_then(|c| c.on_request_start.map(|f| (f, c.user_data)))
        {
            // SAFETY: host-supplied function; session_id outlives the call.
            unsafe { f(ud, self.session_id.as_ptr(), message_count) };
        }
    }

    pub fn context_policy_applied(&mut self, policy: &str, before: u32, after: u32) {
        if let Some((f, ud)) = self
            .cb
            .and_then(|c| c.on_context_policy_applied.map(|f| (f, c.user_data)))
        {
            let policy = CString::new(policy).unwrap_or_default();
            // SAFETY: host-supplied function; both strings outlive the call.
            unsafe { f(ud, self.session_id.as_ptr(), policy.as_ptr(), before, after) };
        }
    }

    pub fn request_complete(&mut self, usage: &Usage) {
        if let Some((f, ud)) = self
            .cb
            .and_then(|c| c.on_request_complete.map(|f| (f, c.user_data)))
        {
            let usage = smallmind_usage::from(usage);
            // SAFETY: host-supplied function; `usage` outlives the call.
            unsafe { f(ud, self.session_id.as_ptr(), &usage) };
        }
    }
}

impl GenerationEvents for RequestCallbacks<'_> {
    fn on_cache_lookup(&mut self, cached_tokens: usize) {
        if let Some((f, ud)) = self
            .cb
            .and_then(|c| c.on_kv_cache_access.map(|f| (f, c.user_data)))
        {
            let n = u32::try_from(cached_tokens).unwrap_or(u32::MAX);
            // SAFETY: host-supplied function; session_id outlives the call.
            unsafe { f(ud, self.session_id.as_ptr(), n > 0, n) };
        }
    }

    fn on_first_token(&mut self, elapsed_ms: f64) {
        if let Some((f, ud)) = self
            .cb
            .and_then(|c| c.on_first_token.map(|f| (f, c.user_data)))
        {
            // SAFETY: host-supplied function; session_id outlives the call.
            unsafe { f(ud, self.session_id.as_ptr(), elapsed_ms) };
        }
    }

    fn on_text(&mut self, text: &str) -> bool {
        let Some((f, ud)) = self.cb.and_then(|c| c.on_token.map(|f| (f, c.user_data))) else {
            return true;
        };
        self.piece.clear();
        self.piece.extend_from_slice(text.as_bytes());
        self.piece.push(0);
        // SAFETY: host-supplied function; the piece buffer is NUL-terminated and outlives the call.
        let verdict = unsafe { f(ud, self.piece.as_ptr().cast(), text.len()) };
        verdict == 0
    }
}

impl ChatEvents for RequestCallbacks<'_> {
    fn on_request_start(&mut self, message_count: usize) {
        self.request_start(u32::try_from(message_count).unwrap_or(u32::MAX));
    }
    fn on_context_policy_applied(
        &mut self,
        policy: &str,
        tokens_before: usize,
        tokens_after: usize,
    ) {
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        self.context_policy_applied(policy, clamp(tokens_before), clamp(tokens_after));
    }
    fn on_request_complete(&mut self, usage: &Usage) {
        self.request_complete(usage);
    }
}
