//! The engine-wide KV budget: many chats under a budget that holds a few of them reply exactly
//! as without a budget, evicting least-recently-used idle caches, reported by the telemetry and
//! the engine's counters, never holding more than the budget.

#[path = "support/models.rs"]
mod models;

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use smallmind::ErrorKind;
use smallmind::chat::{Chat, ChatEvents};
use smallmind::engine::{
    BudgetLimits, Engine, EngineOptions, Eviction, GenerationEvents, SilentLoad,
};

fn engine(limits: BudgetLimits) -> Arc<Engine> {
    let mut options = EngineOptions::new(models::smollm2());
    options.context_length = Some(2048);
    options.budget = limits;
    // An evicted chat recomputes its whole prompt here; with sharing it would take the common
    // system turn from a resident chat (tests/shared_prefixes.rs covers that under a budget).
    options.share_prefixes = false;
    Engine::load(&options, &mut SilentLoad).expect("load SmolLM2")
}

#[derive(Default)]
struct Telemetry {
    evictions: Vec<Eviction>,
    exceeded: Vec<(usize, usize)>,
    cached: usize,
}

impl GenerationEvents for Telemetry {
    fn on_cache_lookup(&mut self, cached_tokens: usize) {
        self.cached = cached_tokens;
    }
}

impl ChatEvents for Telemetry {
    fn on_kv_eviction(&mut self, eviction: &Eviction) {
        self.evictions.push(eviction.clone());
    }
    fn on_kv_budget_exceeded(&mut self, requested_bytes: usize, budget_bytes: usize) {
        self.exceeded.push((requested_bytes, budget_bytes));
    }
}

fn send(chat: &Chat, content: &str, events: &mut Telemetry) -> Value {
    let request = json!({"messages": [{"role": "user", "content": content}]});
    let (response, _) = chat
        .send(&request.to_string(), Instant::now(), events)
        .expect("send");
    serde_json::from_str(&response).unwrap()
}

const CHATS: usize = 50;
/// SmolLM2: 30 layers × 192 K and V values × 2 bytes = 23,040 bytes a position; a cache grows
/// in chunks of 64 positions. Each chat's turns stay within one chunk.
const CHUNK_BYTES: usize = 64 * 23_040;

fn chat_options(i: usize) -> String {
    json!({"session_id": format!("chat-{i}"), "system_prompt": "Be brief.", "temperature": 0, "max_tokens": 3})
        .to_string()
}

fn questions(i: usize) -> [String; 2] {
    [
        format!("What is {i} plus one?"),
        "And minus one?".to_string(),
    ]
}

/// Replies of every chat's two turns, round-robin (turn 1 of every chat, then turn 2).
fn run(engine: &Arc<Engine>, mut after_send: impl FnMut(&Value, &mut Telemetry)) -> Vec<String> {
    let chats: Vec<Chat> = (0..CHATS)
        .map(|i| Chat::create(Arc::clone(engine), Some(&chat_options(i))).unwrap())
        .collect();
    let mut replies = Vec::new();
    for turn in 0..2 {
        for (i, chat) in chats.iter().enumerate() {
            let mut events = Telemetry::default();
            let response = send(chat, &questions(i)[turn], &mut events);
            after_send(&response, &mut events);
            replies.push(response["message"]["content"].as_str().unwrap().to_string());
        }
    }
    replies
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn fifty_chats_under_a_budget_for_five_reply_as_without_a_budget() {
    let unlimited = engine(BudgetLimits::default());
    let expected = run(&unlimited, |_, _| {});
    let held_unbudgeted = unlimited.kv_budget().stats();
    assert_eq!(held_unbudgeted.evictions, 0);
    assert_eq!(held_unbudgeted.sessions, 0, "the chats were freed");

    let budget = 5 * CHUNK_BYTES;
    let limited = engine(BudgetLimits {
        kv_budget_bytes: Some(budget),
        max_sessions: None,
    });
    let mut reported = Vec::new();
    let mut recomputed = 0;
    let mut max_used = 0;
    let replies = run(&limited, |response, events| {
        let stats = limited.kv_budget().stats();
        assert!(
            stats.used_bytes <= budget,
            "{} bytes held, over the budget of {budget}",
            stats.used_bytes
        );
        assert!(stats.resident_sessions <= 5);
        max_used = max_used.max(stats.used_bytes);
        assert!(events.exceeded.is_empty());
        reported.append(&mut events.evictions);
        if response["usage"]["prompt_tokens_details"]["cached_tokens"] == 0 {
            recomputed += 1;
        }
    });
    assert_eq!(replies, expected, "every reply is the unbudgeted run's");
    let stats = limited.kv_budget().stats();
    // Turn 1: chats 6..50 each evict one; turn 2: every chat was evicted by then and evicts one.
    assert_eq!(reported.len(), 45 + 50, "{reported:?}");
    assert_eq!(
        stats.evictions,
        reported.len() as u64,
        "engine info counts the same evictions"
    );
    assert!(
        reported
            .iter()
            .all(|e| e.bytes == CHUNK_BYTES && e.tokens > 0),
        "{reported:?}"
    );
    assert_eq!(
        reported[0].session_id, "chat-0",
        "the least recently used goes first"
    );
    assert_eq!(
        recomputed, 100,
        "every turn after an eviction recomputes its prompt"
    );
    assert_eq!(max_used, budget);
    eprintln!(
        "50 chats, budget {budget} bytes: {} evictions, max used {max_used} bytes; peak RSS {} MiB",
        stats.evictions,
        peak_rss_kib() / 1024
    );
}

#[test]
fn a_turn_that_cannot_fit_the_budget_is_refused_naming_the_sizes() {
    let limited = engine(BudgetLimits {
        kv_budget_bytes: Some(CHUNK_BYTES),
        max_sessions: None,
    });
    let chat = Chat::create(Arc::clone(&limited), Some(&chat_options(0))).unwrap();
    let mut events = Telemetry::default();
    let request = json!({"messages": [{"role": "user", "content": "Hi."}], "max_tokens": 100});
    let err = chat
        .send(&request.to_string(), Instant::now(), &mut events)
        .expect_err("refused");
    assert_eq!(err.kind, ErrorKind::BudgetExceeded);
    assert_eq!(events.exceeded.len(), 1);
    let (requested, budget) = events.exceeded[0];
    assert_eq!(budget, CHUNK_BYTES);
    assert!(
        requested > CHUNK_BYTES && requested % CHUNK_BYTES == 0,
        "{requested}"
    );
    assert!(
        err.message
            .contains(&format!("needs {requested} bytes of KV cache"))
            && err
                .message
                .contains(&format!("kv_budget_bytes of {CHUNK_BYTES}")),
        "{}",
        err.message
    );
    assert!(
        chat.history_json().unwrap().contains("\"messages\":[]"),
        "nothing was recorded"
    );
    let fits = send(&chat, "Hi.", &mut events);
    assert_eq!(fits["finish_reason"], "length");
}

#[test]
fn max_sessions_bounds_the_caches_held_at_once() {
    let limited = engine(BudgetLimits {
        kv_budget_bytes: None,
        max_sessions: Some(2),
    });
    let chats: Vec<Chat> = (0..3)
        .map(|i| Chat::create(Arc::clone(&limited), Some(&chat_options(i))).unwrap())
        .collect();
    let mut events = Telemetry::default();
    for (i, chat) in chats.iter().enumerate() {
        send(chat, &questions(i)[0], &mut events);
    }
    assert_eq!(events.evictions.len(), 1);
    assert_eq!(events.evictions[0].session_id, "chat-0");
    let stats = limited.kv_budget().stats();
    assert_eq!((stats.sessions, stats.resident_sessions), (3, 2));
}
