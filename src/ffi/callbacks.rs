//! Callback tables the host passes in, and the adapters that call them.

use std::ffi::{CString, c_char, c_void};

use super::boundary::{ffi_call, str_arg};
use super::smallmind_status;
use crate::api::CompletionEvents;
use crate::chat::ChatEvents;
use crate::chat::HostReply;
use crate::engine::{Eviction, GenerationEvents, LoadObserver, LogLevel, Usage};
use crate::error::{Error, Result};

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
///
/// The struct grows at its end only. `struct_size` says which fields the host knows: 0 (a
/// zero-initialised struct) means `user_data` and the six callbacks from `on_token` to
/// `on_request_complete`; any other value is the host's `sizeof(smallmind_chat_callbacks)`, and
/// fields that do not lie wholly within it count as NULL. Initialise with
/// `SMALLMIND_CHAT_CALLBACKS_INIT` and set the fields you use.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct smallmind_chat_callbacks {
    /// 0 or `sizeof(smallmind_chat_callbacks)` as the host compiled it (see above).
    pub struct_size: u32,
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
    /// Runs a tool call the model made (requests with "tools"). `call_json` is
    /// {"id", "name", "arguments"} (arguments a JSON object). Answer with
    /// `smallmind_host_result_set(result, content)` (the text the model reads as the tool's
    /// result; the library copies it) and return 0; the send then continues the conversation
    /// with that result. Return non-zero to cancel the send (finish_reason "cancelled"). Without
    /// this callback a send that calls tools returns finish_reason "tool_calls" for the host to
    /// run them.
    pub execute_tool: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            session_id: *const c_char,
            call_json: *const c_char,
            result: *mut smallmind_host_result,
        ) -> i32,
    >,
    /// A tool call ran through `execute_tool`, taking `elapsed_ms`.
    pub on_tool_call: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            session_id: *const c_char,
            name: *const c_char,
            elapsed_ms: f64,
        ),
    >,
    /// Supplies retrieved chunks for this send: `query` is the last user message. Answer with
    /// `smallmind_host_result_set(result, json)`, `json` an array of {"id", "content", "source"?,
    /// "title"?, "score"?}, and return 0; they join the request's "retrieved_context". Return
    /// non-zero to cancel the send.
    pub retrieve: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            session_id: *const c_char,
            query: *const c_char,
            result: *mut smallmind_host_result,
        ) -> i32,
    >,
    /// This send needs `requested_bytes` of KV cache (the most its turn can hold) and the
    /// engine's `kv_budget_bytes` (`budget_bytes`) cannot make room: every other chat holding
    /// a cache is busy, or this one alone is over the budget. The send then returns
    /// SMALLMIND_ERR_BUDGET_EXCEEDED (no other callback of this send runs). With only
    /// `max_sessions` set, `budget_bytes` is UINT64_MAX.
    pub on_kv_budget_exceeded: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            session_id: *const c_char,
            requested_bytes: u64,
            budget_bytes: u64,
        ),
    >,
    /// To make room for this send, the KV cache of the idle chat `evicted_session_id` (least
    /// recently used) was released: `tokens` positions, `bytes` bytes. Its next send
    /// recomputes its prompt and replies the same. Called before on_request_start, once per
    /// evicted chat.
    pub on_kv_eviction: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            evicted_session_id: *const c_char,
            tokens: u32,
            bytes: u64,
        ),
    >,
}

/// The host's answer to a callback that asks for data (`execute_tool`, `retrieve`). Owned by
/// the library and valid only during that callback; fill it with `smallmind_host_result_set`.
pub struct smallmind_host_result {
    /// Which callback this answers, for error messages.
    callback: &'static str,
    answer: Option<Result<String>>,
}

impl smallmind_host_result {
    fn new(callback: &'static str) -> Self {
        Self {
            callback,
            answer: None,
        }
    }
}

/// Answers the callback that passed `result`: copies `content` (UTF-8, NUL-terminated) into it.
/// A second call replaces the first answer. Only during that callback, on its thread.
/// Errors: INVALID_ARGUMENT (NULL pointers; `content` not UTF-8, which also fails the send
/// with the same message).
///
/// # Safety
/// `result` is NULL or the pointer the callback received; `content` is NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smallmind_host_result_set(
    result: *mut smallmind_host_result,
    content: *const c_char,
) -> smallmind_status {
    ffi_call(|| {
        // SAFETY: `result` is NULL or the pointer the running callback got (# Safety): ask's local
        // result, alive and not otherwise borrowed during the callback; as_mut maps NULL to None.
        let result =
            unsafe { result.as_mut() }.ok_or_else(|| Error::invalid_argument("result is NULL"))?;
        let callback = result.callback;
        // SAFETY: `content` is NULL or NUL-terminated and alive for this call (# Safety of
        // smallmind_host_result_set); str_arg rejects NULL.
        match unsafe { str_arg(content, "content") } {
            Ok(text) => {
                result.answer = Some(Ok(text.to_string()));
                Ok(())
            }
            Err(e) => {
                let e = Error::invalid_argument(format!(
                    "the {callback} callback's result: {}",
                    e.message
                ));
                result.answer = Some(Err(e.clone()));
                Err(e)
            }
        }
    })
}

/// Bytes of the table a `struct_size` of 0 stands for: `struct_size`, `user_data` and the six
/// callbacks of ABI version 1, up to `on_request_complete`.
const FIRST_TABLE_SIZE: usize = std::mem::offset_of!(smallmind_chat_callbacks, on_request_complete)
    + std::mem::size_of::<usize>();

// Every field after `struct_size` is pointer-sized and pointer-aligned, so "the fields that lie
// wholly within struct_size" are the bytes up to struct_size rounded down to a pointer.
const _: () = assert!(
    std::mem::offset_of!(smallmind_chat_callbacks, user_data) == std::mem::size_of::<usize>()
);
const _: () = assert!(
    std::mem::size_of::<smallmind_chat_callbacks>().is_multiple_of(std::mem::size_of::<usize>())
);

impl smallmind_chat_callbacks {
    /// The host's table as this library sees it: the fields within the host's `struct_size`
    /// copied, every later field NULL. The only way the FFI reads a host's table, so a host
    /// compiled against an older, smaller header is never read past its end.
    ///
    /// # Safety
    /// `ptr` is NULL or points to a readable table of `struct_size` bytes (of the version-1
    /// size when `struct_size` is 0), valid for this call.
    pub(crate) unsafe fn read(ptr: *const Self) -> Result<Option<Self>> {
        if ptr.is_null() {
            return Ok(None);
        }
        // SAFETY: `ptr` is non-null (checked above), so by # Safety it points at a readable table
        // whose first 4 bytes are its u32 struct_size; read_unaligned needs no alignment.
        let declared = unsafe { ptr.cast::<u32>().read_unaligned() } as usize;
        let host_size = match declared {
            0 => FIRST_TABLE_SIZE,
            n if n < FIRST_TABLE_SIZE => {
                return Err(Error::invalid_argument(format!(
                    "smallmind_chat_callbacks.struct_size is {n}, smaller than the oldest table ({FIRST_TABLE_SIZE} bytes); set it to sizeof(smallmind_chat_callbacks) (SMALLMIND_CHAT_CALLBACKS_INIT does) or to 0"
                )));
            }
            n => n,
        };
        let copy = host_size.min(std::mem::size_of::<Self>());
        let copy = copy - copy % std::mem::size_of::<usize>();
        let mut table = std::mem::MaybeUninit::<Self>::zeroed();
        // SAFETY: # Safety makes `host_size` bytes readable at `ptr` and `copy` <= host_size (min
        // above); the destination is a local of size_of::<Self>() >= `copy`, so no overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(ptr.cast::<u8>(), table.as_mut_ptr().cast::<u8>(), copy)
        };
        // SAFETY: all-zero bytes are a valid table (struct_size 0, NULL pointers, None
        // callbacks), and the copied prefix consists of whole fields the host initialised.
        Ok(Some(unsafe { table.assume_init() }))
    }
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
pub(crate) struct RequestCallbacks {
    /// The host's table, read with [`smallmind_chat_callbacks::read`].
    cb: Option<smallmind_chat_callbacks>,
    session_id: CString,
    /// Reused buffer holding a NUL-terminated copy of each piece.
    piece: Vec<u8>,
}

impl RequestCallbacks {
    pub fn new(cb: Option<smallmind_chat_callbacks>, session_id: &str) -> Self {
        Self {
            cb,
            session_id: CString::new(session_id.replace('\0', " ")).unwrap_or_default(),
            piece: Vec::new(),
        }
    }

    pub fn request_start(&mut self, message_count: u32) {
        if let Some((f, ud)) = self
            .cb
            .as_ref()
            .and_then(|c| c.on_request_start.map(|f| (f, c.user_data)))
        {
            // SAFETY: host-supplied function; session_id outlives the call.
            unsafe { f(ud, self.session_id.as_ptr(), message_count) };
        }
    }

    pub fn context_policy_applied(&mut self, policy: &str, before: u32, after: u32) {
        if let Some((f, ud)) = self
            .cb
            .as_ref()
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
            .as_ref()
            .and_then(|c| c.on_request_complete.map(|f| (f, c.user_data)))
        {
            let usage = smallmind_usage::from(usage);
            // SAFETY: host-supplied function; `usage` outlives the call.
            unsafe { f(ud, self.session_id.as_ptr(), &usage) };
        }
    }
}

impl GenerationEvents for RequestCallbacks {
    fn on_cache_lookup(&mut self, cached_tokens: usize) {
        if let Some((f, ud)) = self
            .cb
            .as_ref()
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
            .as_ref()
            .and_then(|c| c.on_first_token.map(|f| (f, c.user_data)))
        {
            // SAFETY: host-supplied function; session_id outlives the call.
            unsafe { f(ud, self.session_id.as_ptr(), elapsed_ms) };
        }
    }

    fn on_text(&mut self, text: &str) -> bool {
        let Some((f, ud)) = self
            .cb
            .as_ref()
            .and_then(|c| c.on_token.map(|f| (f, c.user_data)))
        else {
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

/// A callback that answers through a `smallmind_host_result`.
type AskFn = unsafe extern "C" fn(
    *mut c_void,
    *const c_char,
    *const c_char,
    *mut smallmind_host_result,
) -> i32;

impl RequestCallbacks {
    /// Calls `f` with `argument` and a fresh result, and returns what the host answered.
    fn ask(
        &self,
        f: AskFn,
        user_data: *mut c_void,
        callback: &'static str,
        argument: &str,
    ) -> Result<HostReply> {
        let argument = CString::new(argument.replace('\0', " ")).unwrap_or_default();
        let mut result = smallmind_host_result::new(callback);
        // SAFETY: host-supplied function; the strings and the result outlive the call, and the
        // result is only reached through the pointer during it.
        let verdict = unsafe {
            f(
                user_data,
                self.session_id.as_ptr(),
                argument.as_ptr(),
                &mut result,
            )
        };
        if verdict != 0 {
            return Ok(HostReply::Cancel);
        }
        match result.answer {
            Some(answer) => answer.map(HostReply::Content),
            None => Err(Error::invalid_argument(format!(
                "the {callback} callback returned 0 without calling smallmind_host_result_set; answer with smallmind_host_result_set, or return non-zero to cancel"
            ))),
        }
    }
}

/// A completion has no session and no messages: its events carry an empty session id and a
/// message count of 0.
impl CompletionEvents for RequestCallbacks {
    fn on_request_start(&mut self) {
        self.request_start(0);
    }
    fn on_request_complete(&mut self, usage: &Usage) {
        self.request_complete(usage);
    }
}

impl ChatEvents for RequestCallbacks {
    fn can_execute_tools(&self) -> bool {
        self.cb.as_ref().is_some_and(|c| c.execute_tool.is_some())
    }
    fn execute_tool(&mut self, call_json: &str) -> Option<Result<HostReply>> {
        let (f, ud) = self
            .cb
            .as_ref()
            .and_then(|c| c.execute_tool.map(|f| (f, c.user_data)))?;
        Some(self.ask(f, ud, "execute_tool", call_json))
    }
    fn retrieve(&mut self, query: &str) -> Option<Result<HostReply>> {
        let (f, ud) = self
            .cb
            .as_ref()
            .and_then(|c| c.retrieve.map(|f| (f, c.user_data)))?;
        Some(self.ask(f, ud, "retrieve", query))
    }
    fn on_tool_call(&mut self, name: &str, elapsed_ms: f64) {
        if let Some((f, ud)) = self
            .cb
            .as_ref()
            .and_then(|c| c.on_tool_call.map(|f| (f, c.user_data)))
        {
            let name = CString::new(name.replace('\0', " ")).unwrap_or_default();
            // SAFETY: host-supplied function; both strings outlive the call.
            unsafe { f(ud, self.session_id.as_ptr(), name.as_ptr(), elapsed_ms) };
        }
    }
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
    fn on_kv_budget_exceeded(&mut self, requested_bytes: usize, budget_bytes: usize) {
        if let Some((f, ud)) = self
            .cb
            .as_ref()
            .and_then(|c| c.on_kv_budget_exceeded.map(|f| (f, c.user_data)))
        {
            let wide = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
            // SAFETY: host-supplied function; session_id outlives the call.
            unsafe {
                f(
                    ud,
                    self.session_id.as_ptr(),
                    wide(requested_bytes),
                    wide(budget_bytes),
                )
            };
        }
    }
    fn on_kv_eviction(&mut self, eviction: &Eviction) {
        if let Some((f, ud)) = self
            .cb
            .as_ref()
            .and_then(|c| c.on_kv_eviction.map(|f| (f, c.user_data)))
        {
            let id = CString::new(eviction.session_id.replace('\0', " ")).unwrap_or_default();
            let tokens = u32::try_from(eviction.tokens).unwrap_or(u32::MAX);
            let bytes = u64::try_from(eviction.bytes).unwrap_or(u64::MAX);
            // SAFETY: host-supplied function; the id outlives the call.
            unsafe { f(ud, id.as_ptr(), tokens, bytes) };
        }
    }
}
