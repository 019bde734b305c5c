//! Arbitrary bytes as the JSON of every request the C API takes: engine options, chat options,
//! a chat send (rendered; really sent when it asks for at most 4 tokens), a raw completion,
//! tokenize and detokenize. The first byte picks which.
#![no_main]

#[path = "common.rs"]
mod common;

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use smallmind::api;
use smallmind::chat::{Chat, ChatOptions};
use smallmind::engine::NoEvents;

const MODEL: &str = "synth-llama3-q8_0.gguf";

fn small_max_tokens(json: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v.get("max_tokens").and_then(|m| m.as_u64()))
        .is_some_and(|m| m <= 4)
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(json) = std::str::from_utf8(rest) else {
        return;
    };
    let engine = common::engine(MODEL);
    match which % 6 {
        0 => {
            let _ = api::parse_engine_options(json);
        }
        1 => {
            if let Ok(options) = ChatOptions::parse(Some(json)) {
                let _ = options.to_config(&engine);
            }
            let _ = Chat::create(engine, Some(json));
        }
        2 => {
            let chat = Chat::create(engine, None).expect("a chat with default options");
            if chat.render(json).is_ok() && small_max_tokens(json) {
                let _ = chat.send(json, Instant::now(), &mut NoEvents);
            }
        }
        3 => {
            if let Ok(request) = api::completion_request(&engine, json, Instant::now())
                && request.generation.max_tokens <= 4
            {
                let _ = api::complete(&engine, &request, &mut NoEvents);
            }
        }
        4 => {
            let _ = api::tokenize(&engine, json);
        }
        _ => {
            let _ = api::detokenize(&engine, json);
        }
    }
});
