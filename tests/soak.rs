//! Soak: 8 chats x 100 turns on one engine from 4 threads while another thread cancels at
//! random moments. A cancelled turn leaves the history as it was, so it is sent again; every
//! reply that completed must equal the one a sequential, uncancelled run gives; the resident
//! memory after warm-up stays flat; and the run ends (a watchdog fails it on a deadlock).
//! A tiny synthetic model keeps it to seconds.

#[path = "support/models.rs"]
mod models;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use smallmind::chat::Chat;
use smallmind::engine::{Engine, EngineOptions, NoEvents, SilentLoad};

const CHATS: usize = 8;
const TURNS: usize = 100;
const THREADS: usize = 4;
const WARM_UP_TURNS: usize = 10;

fn engine() -> Arc<Engine> {
    let mut options =
        EngineOptions::new(models::oracle_dir().join("synthetic/synth-llama3-q8_0.gguf"));
    options.threads = Some(2.min(smallmind::engine::available_cores()));
    options.context_length = Some(512);
    Engine::load(&options, &mut SilentLoad).expect("the synthetic model loads")
}

fn new_chat(engine: &Arc<Engine>, i: usize) -> Chat {
    let options = json!({
        "session_id": format!("soak-{i}"),
        "context_policy": {"type": "sliding_window", "max_tokens": 160},
    });
    Chat::create(Arc::clone(engine), Some(&options.to_string())).expect("create a chat")
}

fn request(chat: usize, turn: usize) -> String {
    json!({
        "messages": [{"role": "user", "content": format!("chat {chat} turn {turn}: go on")}],
        "max_tokens": 4,
        "temperature": 0,
    })
    .to_string()
}

/// Sends turn `turn` until it completes; returns the reply and how many tries were cancelled.
fn complete_turn(chat: &Chat, c: usize, turn: usize) -> (String, usize) {
    let mut cancelled = 0;
    loop {
        let (response, _) = chat
            .send(&request(c, turn), Instant::now(), &mut NoEvents)
            .expect("send");
        let response: Value = serde_json::from_str(&response).unwrap();
        if response["finish_reason"] == "cancelled" {
            cancelled += 1;
            continue;
        }
        return (
            response["message"]["content"].as_str().unwrap().to_string(),
            cancelled,
        );
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn eight_chats_a_hundred_turns_four_threads_with_random_cancels() {
    let engine = engine();

    // The reference: every chat alone, in order, never cancelled.
    let expected: Vec<Vec<String>> = (0..CHATS)
        .map(|c| {
            let chat = new_chat(&engine, c);
            (0..TURNS).map(|t| complete_turn(&chat, c, t).0).collect()
        })
        .collect();

    let chats: Arc<Vec<Chat>> = Arc::new((0..CHATS).map(|c| new_chat(&engine, c)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let cancels_sent = Arc::new(AtomicUsize::new(0));
    let canceller = {
        let (chats, stop, cancels_sent) = (chats.clone(), stop.clone(), cancels_sent.clone());
        std::thread::spawn(move || {
            // xorshift: random moments, reproducible.
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            while !stop.load(Ordering::Acquire) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                std::thread::sleep(Duration::from_micros(20_000 + x % 40_000));
                chats[(x >> 32) as usize % CHATS].cancel();
                cancels_sent.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let warm = Arc::new(Barrier::new(THREADS + 1));
    let (done_tx, done_rx) = mpsc::channel();
    let workers: Vec<_> = (0..THREADS)
        .map(|w| {
            let (chats, warm, done_tx) = (chats.clone(), warm.clone(), done_tx.clone());
            std::thread::spawn(move || {
                let mine: Vec<usize> = (0..CHATS).filter(|c| c % THREADS == w).collect();
                let mut replies = vec![Vec::new(); CHATS];
                let mut cancelled = 0;
                for t in 0..TURNS {
                    if t == WARM_UP_TURNS {
                        warm.wait();
                    }
                    for &c in &mine {
                        let (reply, n) = complete_turn(&chats[c], c, t);
                        replies[c].push(reply);
                        cancelled += n;
                    }
                }
                done_tx.send(()).unwrap();
                (mine, replies, cancelled)
            })
        })
        .collect();
    warm.wait();
    let rss_after_warm_up = rss_bytes();
    for _ in 0..THREADS {
        done_rx
            .recv_timeout(Duration::from_secs(600))
            .expect("a worker did not finish: deadlock");
    }
    let rss_at_end = rss_bytes();
    stop.store(true, Ordering::Release);
    canceller.join().unwrap();

    let mut cancelled_turns = 0;
    for worker in workers {
        let (mine, replies, cancelled) = worker.join().unwrap();
        cancelled_turns += cancelled;
        for c in mine {
            assert_eq!(
                replies[c], expected[c],
                "chat {c}: replies differ from the sequential run"
            );
        }
    }
    eprintln!(
        "soak: {} turns completed, {} cancelled and resent ({} cancels sent); RSS {:.1} MiB after warm-up, {:.1} MiB at the end",
        CHATS * TURNS,
        cancelled_turns,
        cancels_sent.load(Ordering::Relaxed),
        rss_after_warm_up as f64 / (1 << 20) as f64,
        rss_at_end as f64 / (1 << 20) as f64
    );
    assert!(
        cancelled_turns > 0,
        "the canceller never hit a running turn"
    );
    assert!(
        rss_at_end <= rss_after_warm_up + (16 << 20),
        "resident memory grew from {rss_after_warm_up} to {rss_at_end} bytes"
    );
}
