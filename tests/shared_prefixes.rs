//! Chats on one engine that begin with the same system turn share its KV rows: the second
//! chat's first turn computes only its own part, `cached_tokens` says so, and every reply is
//! the one the chat gives when it computes everything itself, also under a KV budget that
//! evicts.

#[path = "support/models.rs"]
mod models;

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use smallmind::chat::Chat;
use smallmind::engine::{BudgetLimits, BudgetStats, Engine, EngineOptions, NoEvents, SilentLoad};

fn engine(share_prefixes: bool, budget: BudgetLimits) -> Arc<Engine> {
    let mut options = EngineOptions::new(models::smollm2());
    options.context_length = Some(2048);
    options.share_prefixes = share_prefixes;
    options.budget = budget;
    Engine::load(&options, &mut SilentLoad).expect("load SmolLM2")
}

/// A help-desk system prompt of well over 300 tokens.
fn system_prompt() -> String {
    let mut prompt = String::from(
        "You are the help desk of the Riverside Public Library. Answer in one short sentence. Rules:",
    );
    for (i, rule) in [
        "Opening hours are 9:00 to 18:00 on weekdays and 10:00 to 14:00 on Saturdays.",
        "The library is closed on Sundays and on public holidays.",
        "Members may borrow up to eight books and two films at a time.",
        "Books are lent for three weeks and films for one week.",
        "A loan may be renewed twice, online or at the front desk, unless someone reserved it.",
        "Late returns cost ten cents a day for books and fifty cents a day for films.",
        "Membership is free for residents; others pay twelve euros a year.",
        "Children under twelve need a parent's signature to join.",
        "The reading room on the second floor is silent; phone calls are not allowed there.",
        "Printing costs five cents a page in black and white and twenty cents in colour.",
        "The meeting rooms can be booked up to a month in advance for two hours at most.",
        "Wireless internet is free; the network name and password are at the front desk.",
        "Lost cards are replaced for two euros; bring an identity document.",
        "Donations of books in good condition are welcome on Tuesday mornings.",
        "Guided tours for schools take place on Wednesdays and must be booked by phone.",
        "Food is not allowed in the building, but water in a closed bottle is.",
        "Bicycles may be parked in the courtyard, never in the entrance hall.",
        "The café next door belongs to a different owner and keeps its own hours.",
    ]
    .iter()
    .enumerate()
    {
        prompt.push_str(&format!(" {}. {rule}", i + 1));
    }
    prompt
}

const QUESTIONS: [&str; 10] = [
    "When do you open on Saturday?",
    "How many books can I borrow?",
    "What does a late film cost?",
    "Is membership free?",
    "Can I print in colour?",
    "Where can I park my bike?",
    "Can I eat in the reading room?",
    "How do I replace a lost card?",
    "When can I donate books?",
    "How long is a book loan?",
];

fn send(chat: &Chat, content: &str) -> Value {
    let request = json!({"messages": [{"role": "user", "content": content}]});
    let (response, _) = chat
        .send(&request.to_string(), Instant::now(), &mut NoEvents)
        .expect("send");
    serde_json::from_str(&response).unwrap()
}

fn cached(response: &Value) -> u64 {
    response["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap()
}

/// Two turns of each of the ten chats, round-robin; every response in order, and the
/// engine's KV budget while the chats still live.
fn ten_chats(engine: &Arc<Engine>) -> (Vec<Value>, BudgetStats) {
    let options =
        json!({"system_prompt": system_prompt(), "temperature": 0, "max_tokens": 8}).to_string();
    let chats: Vec<Chat> = QUESTIONS
        .iter()
        .map(|_| Chat::create(Arc::clone(engine), Some(&options)).unwrap())
        .collect();
    let mut responses = Vec::new();
    for turn in 0..2 {
        for (chat, question) in chats.iter().zip(QUESTIONS) {
            let content = if turn == 0 { question } else { "Thank you." };
            responses.push(send(chat, content));
        }
    }
    (responses, engine.kv_budget().stats())
}

fn replies(responses: &[Value]) -> Vec<&str> {
    responses
        .iter()
        .map(|r| r["message"]["content"].as_str().unwrap())
        .collect()
}

#[test]
fn ten_chats_with_one_system_prompt_share_it_and_reply_as_without_sharing() {
    let (unshared, unshared_stats) = ten_chats(&engine(false, BudgetLimits::default()));
    assert_eq!(unshared_stats.shared_bytes, 0);
    assert!(unshared[..10].iter().all(|r| cached(r) == 0));

    let sharing = engine(true, BudgetLimits::default());
    let (shared, stats) = ten_chats(&sharing);
    assert_eq!(
        replies(&shared),
        replies(&unshared),
        "sharing never changes a reply"
    );
    assert_eq!(cached(&shared[0]), 0, "the first chat has nothing to share");
    let system_turn = cached(&shared[1]);
    assert!(system_turn >= 300, "{}", shared[1]);
    for (i, response) in shared[1..10].iter().enumerate() {
        assert_eq!(cached(response), system_turn, "chat {}: {response}", i + 2);
        assert!(
            response["usage"]["prompt_tokens"].as_u64().unwrap() > system_turn,
            "the question is computed"
        );
    }
    assert_eq!(sharing.kv_budget().stats().prefix_shares, 9);
    let info: Value = serde_json::from_str(&smallmind::api::info_json(&sharing).unwrap()).unwrap();
    assert_eq!(info["kv_cache"]["share_prefixes"], true);
    assert_eq!(info["kv_cache"]["prefix_shares"], 9);
    assert_eq!(
        (
            &info["kv_cache"]["shared_bytes"],
            &info["kv_cache"]["used_bytes"]
        ),
        (&json!(0), &json!(0)),
        "the chats are gone, and their rows with them"
    );

    // The system turn's rows are held once: in the budget's count and in memory.
    let per_position = 23_040; // SmolLM2: 30 layers, K and V, 192 values, f16.
    assert_eq!(stats.shared_bytes, system_turn as usize * per_position);
    assert!(
        stats.used_bytes * 3 < unshared_stats.used_bytes,
        "sharing holds {} bytes, not sharing {}",
        stats.used_bytes,
        unshared_stats.used_bytes
    );

    // A budget for three of the ten chats' whole caches holds all ten when they share.
    let chunk = 64 * per_position;
    let three_chats = 3 * 8 * chunk;
    let roomy = engine(
        true,
        BudgetLimits {
            kv_budget_bytes: Some(three_chats),
            max_sessions: None,
        },
    );
    let (roomy_responses, roomy_stats) = ten_chats(&roomy);
    assert_eq!(replies(&roomy_responses), replies(&unshared));
    assert_eq!(roomy_stats.evictions, 0);

    // Under a budget that holds the system turn, one turn's reservation and little else:
    // evicted chats take the system turn from a resident one, and still reply as every
    // chat computing everything itself.
    let tight = engine(
        true,
        BudgetLimits {
            kv_budget_bytes: Some(13 * chunk),
            max_sessions: None,
        },
    );
    let (under_budget, stats) = ten_chats(&tight);
    assert_eq!(replies(&under_budget), replies(&unshared));
    assert!(stats.evictions >= 10, "{stats:?}");
    assert!(stats.used_bytes <= 13 * chunk);
    assert!(
        under_budget[10..].iter().all(|r| cached(r) >= system_turn),
        "an evicted chat's second turn takes the system turn from a resident chat: {:?} {stats:?}",
        under_budget.iter().map(cached).collect::<Vec<_>>()
    );
}

#[test]
fn chats_with_different_system_prompts_share_nothing() {
    let engine = engine(true, BudgetLimits::default());
    let first = Chat::create(
        Arc::clone(&engine),
        Some(
            &json!({"system_prompt": system_prompt(), "temperature": 0, "max_tokens": 4})
                .to_string(),
        ),
    )
    .unwrap();
    send(&first, QUESTIONS[0]);
    let other_prompt = system_prompt().replace("Riverside", "Hillside");
    let second = Chat::create(
        Arc::clone(&engine),
        Some(
            &json!({"system_prompt": other_prompt, "temperature": 0, "max_tokens": 4}).to_string(),
        ),
    )
    .unwrap();
    assert_eq!(cached(&send(&second, QUESTIONS[0])), 0);
    assert_eq!(engine.kv_budget().stats().prefix_shares, 0);
}
