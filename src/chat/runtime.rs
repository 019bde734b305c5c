//! A chat as hosts drive it: JSON in, JSON out, one call at a time, cancellable from any
//! thread. The C API's `smallmind_chat` is a thin wrapper around [`Chat`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use parking_lot::{Mutex, MutexGuard};

use super::message::Message;
use super::session::{ChatEvents, HostReply, Session};
use super::types::{
    ChatOptions, ChatRequest, EXPORT_FORMAT, EXPORT_VERSION, ExportEnvelope, render_json,
    response_json,
};
use crate::engine::{Engine, Eviction, GenerationEvents, Usage};
use crate::error::{Error, ErrorKind, Result};

/// A conversation on one engine: its options, its history and its own KV cache.
pub struct Chat {
    engine: Arc<Engine>,
    /// As given at creation (or import), for export.
    options: ChatOptions,
    session_id: String,
    session: Mutex<Session>,
    /// Set by `cancel` from any thread; polled by the running send between forward passes.
    cancel: AtomicBool,
    /// Set when a send panicked: its state may be inconsistent, so sends fail until `reset`.
    broken: AtomicBool,
}

/// Marks the chat broken when dropped during a panic (which the C boundary then reports).
struct BrokenOnPanic<'a>(&'a AtomicBool);

impl Drop for BrokenOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Release);
        }
        crate::engine::debug::set_injected_panic(false);
    }
}

/// A response id unique in this process and, by its random part, across processes and
/// restarts: "chatcmpl-" + 16 hex digits drawn once per process + a per-process counter.
/// Never derived from the session id or the turn number, which an import or a second chat
/// with the same session_id repeats.
fn response_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::OnceLock;
    use std::sync::atomic::AtomicU64;
    static PROCESS_RANDOM: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let random = *PROCESS_RANDOM.get_or_init(|| {
        // RandomState is seeded from the operating system's random source.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        hasher.write_u128(now);
        hasher.finish()
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("chatcmpl-{random:016x}{n:06x}")
}

fn busy() -> Error {
    Error::new(
        ErrorKind::Busy,
        "this chat is busy with a call on another thread; wait for it to return, or use another chat",
    )
}

/// The host's events, with the chat's cancel flag polled alongside the host's own.
struct CancellableEvents<'a> {
    host: &'a mut dyn ChatEvents,
    cancel: &'a AtomicBool,
}

impl GenerationEvents for CancellableEvents<'_> {
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
        self.cancel.load(Ordering::Acquire) || self.host.cancelled()
    }
}

impl ChatEvents for CancellableEvents<'_> {
    fn on_request_start(&mut self, message_count: usize) {
        self.host.on_request_start(message_count);
    }
    fn on_context_policy_applied(
        &mut self,
        policy: &str,
        tokens_before: usize,
        tokens_after: usize,
    ) {
        self.host
            .on_context_policy_applied(policy, tokens_before, tokens_after);
    }
    fn on_request_complete(&mut self, usage: &Usage) {
        self.host.on_request_complete(usage);
    }
    fn on_kv_eviction(&mut self, eviction: &Eviction) {
        self.host.on_kv_eviction(eviction);
    }
    fn on_kv_budget_exceeded(&mut self, requested_bytes: usize, budget_bytes: usize) {
        self.host
            .on_kv_budget_exceeded(requested_bytes, budget_bytes);
    }
    fn execute_tool(&mut self, call_json: &str) -> Option<Result<HostReply>> {
        self.host.execute_tool(call_json)
    }
    fn can_execute_tools(&self) -> bool {
        self.host.can_execute_tools()
    }
    fn on_tool_call(&mut self, name: &str, elapsed_ms: f64) {
        self.host.on_tool_call(name, elapsed_ms);
    }
    fn retrieve(&mut self, query: &str) -> Option<Result<HostReply>> {
        self.host.retrieve(query)
    }
}

impl Chat {
    /// A new chat; `options_json` is `None` or the chat options (see `ChatOptions`).
    pub fn create(engine: Arc<Engine>, options_json: Option<&str>) -> Result<Self> {
        Self::with_history(engine, ChatOptions::parse(options_json)?, Vec::new())
    }

    /// Restores a chat from [`Chat::export_json`]'s envelope; the KV cache is rebuilt by the
    /// first send. (`store::import` also restores a KV snapshot the envelope carries.)
    pub fn import(engine: Arc<Engine>, json: &str) -> Result<Self> {
        Self::from_envelope(engine, ExportEnvelope::parse(json)?, ChatOptions::default())
    }

    /// A chat with the envelope's options (each field `overrides` sets replaces the saved
    /// one) and history, and an empty KV cache.
    pub fn from_envelope(
        engine: Arc<Engine>,
        envelope: ExportEnvelope,
        overrides: ChatOptions,
    ) -> Result<Self> {
        let mut options = envelope.options;
        options.session_id = Some(envelope.session_id);
        Self::with_history(engine, options.overridden_by(overrides), envelope.history)
    }

    fn with_history(
        engine: Arc<Engine>,
        options: ChatOptions,
        history: Vec<Message>,
    ) -> Result<Self> {
        let config = options.to_config(&engine)?;
        let session_id = config.session_id.clone();
        let mut session = Session::new(Arc::clone(&engine), config)?;
        session.set_history(history);
        Ok(Self {
            engine,
            options,
            session_id,
            session: Mutex::new(session),
            cancel: AtomicBool::new(false),
            broken: AtomicBool::new(false),
        })
    }

    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The session, or BUSY at once when another call holds it.
    fn lock(&self) -> Result<MutexGuard<'_, Session>> {
        self.session.try_lock().ok_or_else(busy)
    }

    /// Runs one turn of a chat request (JSON) and returns the response JSON and the measured
    /// usage. `started_at` is when the host's call began: time to first token counts from it.
    /// BUSY at once while another call runs on this chat.
    pub fn send(
        &self,
        request_json: &str,
        started_at: Instant,
        events: &mut dyn ChatEvents,
    ) -> Result<(String, Usage)> {
        let mut session = self.lock()?;
        if self.broken.load(Ordering::Acquire) {
            return Err(Error::internal(
                "an earlier send on this chat failed with an internal error and may have left its state inconsistent; call smallmind_chat_reset before sending again",
            ));
        }
        let _broken_on_panic = BrokenOnPanic(&self.broken);
        if std::env::var_os("SMALLMIND_DEBUG_INJECT_PANIC")
            .is_some_and(|id| id.as_encoded_bytes() == self.session_id.as_bytes())
        {
            crate::engine::debug::set_injected_panic(true);
        }
        // A cancel that arrives before this point was meant for an earlier send.
        self.cancel.store(false, Ordering::Release);
        let turn = ChatRequest::parse(request_json)?.into_turn(
            session.config(),
            &self.engine,
            started_at,
        )?;
        let seed = turn.sampling.seed;
        let wants_logprobs = turn.top_logprobs.is_some();
        let mut events = CancellableEvents {
            host: events,
            cancel: &self.cancel,
        };
        let output = session.send(turn, &mut events)?;
        let response = response_json(
            &output,
            self.model_name(),
            &self.session_id,
            &response_id(),
            seed,
            wants_logprobs.then_some(&*self.engine),
        )?;
        Ok((response, output.usage))
    }

    /// The prompt a send of `request_json` would give the model now, as JSON
    /// {"prompt", "prompt_token_ids", "context"}; nothing is generated or recorded.
    pub fn render(&self, request_json: &str) -> Result<String> {
        let session = self.lock()?;
        let turn = ChatRequest::parse(request_json)?.into_turn(
            session.config(),
            &self.engine,
            Instant::now(),
        )?;
        render_json(&session.prepare(&turn)?)
    }

    /// Asks the running send, if any, to stop within one token or one prefill chunk. Any
    /// thread; never blocks.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Release);
    }

    /// Forgets the history and the KV cache, and clears the broken mark a panic left.
    pub fn reset(&self) -> Result<()> {
        self.lock()?.reset();
        self.broken.store(false, Ordering::Release);
        Ok(())
    }

    /// {"session_id", "messages": [...]}.
    pub fn history_json(&self) -> Result<String> {
        let session = self.lock()?;
        crate::api::to_json(
            &serde_json::json!({ "session_id": self.session_id, "messages": session.history() }),
        )
    }

    /// The versioned envelope {"format", "version", "session_id", "options", "history"}.
    pub fn export_json(&self) -> Result<String> {
        crate::api::to_json(&self.envelope()?)
    }

    /// The envelope without a KV snapshot. BUSY while a send runs.
    pub fn envelope(&self) -> Result<ExportEnvelope> {
        let session = self.lock()?;
        let mut options = self.options.clone();
        options.session_id = Some(self.session_id.clone());
        Ok(ExportEnvelope {
            format: EXPORT_FORMAT.to_string(),
            version: EXPORT_VERSION,
            session_id: self.session_id.clone(),
            options,
            history: session.history().to_vec(),
            kv_snapshot: None,
        })
    }

    /// The envelope and `f` applied to the KV cache, both taken under one lock so they
    /// describe the same moment. BUSY while a send runs.
    pub fn envelope_with_cache<R>(
        &self,
        f: impl FnOnce(&crate::engine::KvCache) -> R,
    ) -> Result<(ExportEnvelope, R)> {
        let session = self.lock()?;
        let mut options = self.options.clone();
        options.session_id = Some(self.session_id.clone());
        let envelope = ExportEnvelope {
            format: EXPORT_FORMAT.to_string(),
            version: EXPORT_VERSION,
            session_id: self.session_id.clone(),
            options,
            history: session.history().to_vec(),
            kv_snapshot: None,
        };
        Ok((envelope, session.with_cache(f)))
    }

    /// Positions this chat's KV cache may hold.
    pub fn max_kv_positions(&self) -> Result<usize> {
        Ok(self.lock()?.max_kv_positions())
    }

    /// Installs a restored KV cache (see `Session::restore_cache`).
    pub fn restore_cache(&self, cache: crate::engine::KvCache) -> Result<()> {
        self.lock()?
            .restore_cache(cache, &mut crate::engine::NoEvents)
    }

    /// A warning the next send's response reports.
    pub fn add_warning(&self, warning: String) -> Result<()> {
        self.lock()?.add_warning(warning);
        Ok(())
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    fn model_name(&self) -> &str {
        self.engine.model_name()
    }
}
