//! Arbitrary bytes as a model's `tokenizer.chat_template`: compiled, then rendered with a
//! small conversation, as a session does with the template a file carries. Must end with
//! output or an error, never hang (fuel), overflow the stack (recursion limit) or exhaust
//! memory (fuel and the output cap).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smallmind::chat::{ChatTemplate, Message, Role, TemplateContext};

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(template) = ChatTemplate::new(source) else {
        return;
    };
    let messages = [
        Message::new(Role::System, "Be brief."),
        Message::new(Role::User, "Hi there"),
        Message::new(Role::Assistant, "Hello!"),
        Message::new(Role::User, "What is 2+2?"),
    ];
    let tools = serde_json::json!([{"type": "function", "function": {"name": "add",
        "description": "Adds", "parameters": {"type": "object", "properties": {"a": {"type": "number"}}}}}]);
    for tools in [None, Some(&tools)] {
        let _ = template.render(&TemplateContext {
            messages: &messages,
            tools,
            documents: None,
            add_generation_prompt: true,
            bos_token: "<s>",
            eos_token: "</s>",
        });
    }
});
