//! The chat runtime through its Rust face (`smallmind::chat::Chat`, the JSON the C API passes
//! through): the model's own template against llama.cpp, context policies, history modes,
//! export/import, events, and bad input. Replies are kept to a few tokens; most checks render
//! the prompt without generating.

#[path = "support/models.rs"]
mod models;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde_json::{Value, json};
use smallmind::ErrorKind;
use smallmind::chat::{Chat, ChatEvents};
use smallmind::engine::{Engine, EngineOptions, GenerationEvents, NoEvents, SilentLoad, Usage};

fn load(context_length: Option<usize>) -> Arc<Engine> {
    let mut options = EngineOptions::new(models::smollm2());
    options.context_length = context_length;
    // Each chat's cached_tokens here counts its own cache only; sharing a system turn
    // between chats is tested in tests/shared_prefixes.rs.
    options.share_prefixes = false;
    Engine::load(&options, &mut SilentLoad).expect("load SmolLM2")
}

/// The default model with its full context, shared by the tests.
fn engine() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    Arc::clone(ENGINE.get_or_init(|| load(None)))
}

fn chat(options: Value) -> Chat {
    Chat::create(engine(), Some(&options.to_string())).expect("create a chat")
}

fn render(chat: &Chat, request: Value) -> Value {
    serde_json::from_str(&chat.render(&request.to_string()).expect("render")).unwrap()
}

fn send(chat: &Chat, request: Value) -> Value {
    let (response, _) = chat
        .send(&request.to_string(), Instant::now(), &mut NoEvents)
        .expect("send");
    serde_json::from_str(&response).unwrap()
}

fn history(chat: &Chat) -> Vec<Value> {
    let history: Value = serde_json::from_str(&chat.history_json().unwrap()).unwrap();
    history["messages"].as_array().unwrap().clone()
}

fn user(content: &str) -> Value {
    json!({"role": "user", "content": content})
}

fn assistant(content: &str) -> Value {
    json!({"role": "assistant", "content": content})
}

/// System, then four turns; turn 2 has a tool result, which belongs to it.
fn four_turns() -> Vec<Value> {
    vec![
        json!({"role": "system", "content": "You are terse."}),
        user("first question"),
        assistant("first answer"),
        user("second question"),
        assistant("second answer"),
        json!({"role": "tool", "content": "second tool result", "tool_call_id": "call_1"}),
        user("third question"),
        assistant("third answer"),
        user("fourth question"),
    ]
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn the_models_own_template_renders_llama_cpps_chat_prompt() {
    let text = std::fs::read_to_string(models::oracle_dir().join("llamacpp-greedy.json")).unwrap();
    let oracle: Value = serde_json::from_str(&text).unwrap();
    let case = oracle["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "c" && c["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf")
        .expect("chat case c");
    let prompt_text = case["prompt_text"].as_str().unwrap();
    let question = prompt_text
        .split("<|im_start|>user\n")
        .nth(1)
        .unwrap()
        .split("<|im_end|>")
        .next()
        .unwrap();
    let rendered = render(&chat(json!({})), json!({"messages": [user(question)]}));
    assert_eq!(
        rendered["prompt"], prompt_text,
        "the template's text, default system prompt included"
    );
    assert_eq!(
        ids(&rendered["prompt_token_ids"]),
        ids(&case["prompt_token_ids"]),
        "llama.cpp's 37 ids"
    );
    assert_eq!(rendered["context"]["tokens_after"], 37);
}

#[test]
fn keep_last_n_turns_drops_whole_oldest_turns_and_keeps_the_system_message() {
    let chat = chat(json!({"temperature": 0}));
    // max_turns counts the turns kept before the new one (the fourth question).
    let policy = json!({"type": "keep_last_n_turns", "max_turns": 1});
    let request = json!({"messages": four_turns(), "history": "replace", "context_policy": policy, "max_tokens": 2});
    let rendered = render(&chat, request.clone());
    let prompt = rendered["prompt"].as_str().unwrap();
    assert!(
        prompt.starts_with("<|im_start|>system\nYou are terse.<|im_end|>"),
        "{prompt}"
    );
    for dropped in ["first", "second"] {
        assert!(
            !prompt.contains(dropped),
            "turns 1 and 2 are dropped whole: {prompt}"
        );
    }
    assert!(
        prompt.contains("third question")
            && prompt.contains("third answer")
            && prompt.contains("fourth question")
    );
    let context = &rendered["context"];
    assert_eq!(context["policy"], "keep_last_n_turns");
    assert_eq!(
        context["dropped_messages"], 5,
        "u1, a1, u2, a2 and turn 2's tool result"
    );
    assert!(context["tokens_before"].as_u64() > context["tokens_after"].as_u64());
    assert_eq!(
        context["tokens_after"].as_u64().unwrap() as usize,
        rendered["prompt_token_ids"].as_array().unwrap().len()
    );
    assert_eq!(render(&chat, request.clone()), rendered, "deterministic");

    // The send reports the same in its context object, and the history keeps everything.
    let response = send(&chat, request);
    assert_eq!(response["context"], rendered["context"]);
    assert_eq!(
        response["usage"]["prompt_tokens"],
        rendered["context"]["tokens_after"]
    );
    assert!(
        response["warnings"][0]
            .as_str()
            .unwrap()
            .contains("left out 5 older message(s)"),
        "{response}"
    );
    assert_eq!(
        history(&chat).len(),
        four_turns().len() + 1,
        "policies shape the prompt, never the history"
    );
}

#[test]
fn sliding_window_keeps_the_newest_whole_turns_that_fit_and_reserves_the_reply() {
    let chat = chat(json!({}));
    let all = four_turns();
    // Sizes of the system message with the last two turns, and with the last turn alone.
    let size = |messages: Vec<Value>| -> u64 {
        render(&chat, json!({"messages": messages, "history": "replace"}))["context"]["tokens_after"].as_u64().unwrap()
    };
    let last_two: Vec<Value> = [&all[..1], &all[6..]].concat();
    let last_one: Vec<Value> = [&all[..1], &all[8..]].concat();
    let (two_turns, one_turn) = (size(last_two.clone()), size(last_one.clone()));

    let window = |max_tokens: u64| {
        json!({"messages": all, "history": "replace", "max_tokens": 4,
               "context_policy": {"type": "sliding_window", "max_tokens": max_tokens}})
    };
    let expected_two = render(&chat, json!({"messages": last_two, "history": "replace"}));
    let fits_two = render(&chat, window(two_turns));
    assert_eq!(
        fits_two["prompt_token_ids"], expected_two["prompt_token_ids"],
        "exactly the last two turns"
    );
    assert_eq!(fits_two["context"]["dropped_messages"], 5);
    let fits_one = render(&chat, window(two_turns - 1));
    let expected_one = render(&chat, json!({"messages": last_one, "history": "replace"}));
    assert_eq!(
        fits_one["prompt_token_ids"], expected_one["prompt_token_ids"],
        "one token less: only the last turn"
    );
    assert_eq!(fits_one["context"]["dropped_messages"], 7);

    let err = chat.render(&window(one_turn - 1).to_string()).unwrap_err();
    assert_eq!(
        err.kind,
        ErrorKind::ContextOverflow,
        "the system message and the last turn are never dropped"
    );

    // The reply's room counts against the context: with 8 tokens of context left after the
    // last two turns, asking for 9 reserved tokens drops turn 3.
    let small = Chat::create(
        load(Some(two_turns as usize + 8)),
        Some(r#"{"context_policy": {"type": "sliding_window", "max_tokens": 100000}}"#),
    )
    .unwrap();
    let request =
        |max_tokens: u32| json!({"messages": all, "history": "replace", "max_tokens": max_tokens});
    let roomy = render(&small, request(8));
    assert_eq!(roomy["prompt_token_ids"], expected_two["prompt_token_ids"]);
    let tight = render(&small, request(9));
    assert_eq!(tight["prompt_token_ids"], expected_one["prompt_token_ids"]);
}

#[test]
fn keep_all_refuses_a_conversation_that_does_not_fit_naming_both_sizes() {
    let small = Chat::create(load(Some(64)), None).unwrap();
    let err = small
        .render(&json!({"messages": four_turns(), "max_tokens": 16}).to_string())
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::ContextOverflow);
    assert!(
        err.message
            .contains("tokens, more than the context holds (64 tokens, set by context_length)")
            && err.message.contains("raise context_length to at least"),
        "{}",
        err.message
    );
    assert!(
        err.message.contains("sliding_window"),
        "the message says what to do: {}",
        err.message
    );
}

#[test]
fn history_replace_makes_the_messages_the_whole_conversation() {
    let chat = chat(json!({"temperature": 0, "max_tokens": 2}));
    send(&chat, json!({"messages": [user("Name a fruit.")]}));
    send(&chat, json!({"messages": [user("Name a color.")]}));
    assert_eq!(history(&chat).len(), 4);

    let replaced = json!({"messages": [user("Name a fruit."), assistant("Apple."), user("Name a tree.")], "history": "replace"});
    let expected = render(&chat, replaced.clone());
    let response = send(&chat, replaced);
    let history = history(&chat);
    assert_eq!(
        history.len(),
        4,
        "the three messages sent and the reply: {history:?}"
    );
    assert_eq!(history[1]["content"], "Apple.");
    assert_eq!(history[3]["content"], response["message"]["content"]);
    assert_eq!(
        response["usage"]["prompt_tokens"],
        expected["context"]["tokens_after"]
    );
    assert!(
        response["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            > 0,
        "the shared prefix is reused"
    );
}

#[test]
fn export_then_import_restores_the_options_and_the_history() {
    let original = chat(
        json!({"session_id": "round-trip", "system_prompt": "Be kind.", "temperature": 0, "max_tokens": 3,
                               "context_policy": {"type": "keep_last_n_turns", "max_turns": 4}}),
    );
    send(&original, json!({"messages": [user("Hello.")]}));
    let exported = original.export_json().unwrap();
    let envelope: Value = serde_json::from_str(&exported).unwrap();
    assert_eq!(envelope["format"], "smallmind.chat");
    assert_eq!(envelope["version"], 2);

    let restored = Chat::import(engine(), &exported).unwrap();
    assert_eq!(restored.session_id(), "round-trip");
    assert_eq!(
        restored.history_json().unwrap(),
        original.history_json().unwrap()
    );
    assert_eq!(
        restored.export_json().unwrap(),
        exported,
        "a second export is identical"
    );
    let next = json!({"messages": [user("And goodbye.")]});
    assert_eq!(
        render(&restored, next.clone()),
        render(&original, next.clone()),
        "same system prompt, history and policy"
    );
    let continued = send(&restored, next);
    assert_eq!(
        continued["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
        "its cache is rebuilt by the first send"
    );
    assert_eq!(
        history(&restored).len(),
        4,
        "two turns: the system prompt option is rendered, never recorded"
    );

    let newer = exported.replace("\"version\":2", "\"version\":3");
    let err = Chat::import(engine(), &newer)
        .err()
        .expect("a newer envelope is refused");
    assert_eq!(err.kind, ErrorKind::InvalidJson);
    assert!(
        err.message.contains("newer smallmind (format version 3)"),
        "{}",
        err.message
    );
    let tampered = exported.replacen("\"history\":", "\"extra\":1,\"history\":", 1);
    let err = Chat::import(engine(), &tampered)
        .err()
        .expect("an unknown field is refused");
    assert!(err.message.contains("extra"), "{}", err.message);

    original.reset().unwrap();
    assert!(history(&original).is_empty());
}

/// Records the order and values of a send's events.
#[derive(Default)]
struct Recorder {
    order: String,
    message_count: usize,
    cached_tokens: usize,
    policy: (String, usize, usize),
    first_token_ms: f64,
    text: String,
    usage: Option<Usage>,
}

impl GenerationEvents for Recorder {
    fn on_cache_lookup(&mut self, cached_tokens: usize) {
        self.order.push('K');
        self.cached_tokens = cached_tokens;
    }
    fn on_first_token(&mut self, elapsed_ms: f64) {
        self.order.push('F');
        self.first_token_ms = elapsed_ms;
    }
    fn on_text(&mut self, text: &str) -> bool {
        self.order.push('T');
        self.text.push_str(text);
        true
    }
}

impl ChatEvents for Recorder {
    fn on_request_start(&mut self, message_count: usize) {
        self.order.push('S');
        self.message_count = message_count;
    }
    fn on_context_policy_applied(
        &mut self,
        policy: &str,
        tokens_before: usize,
        tokens_after: usize,
    ) {
        self.order.push('P');
        self.policy = (policy.to_string(), tokens_before, tokens_after);
    }
    fn on_request_complete(&mut self, usage: &Usage) {
        self.order.push('C');
        self.usage = Some(*usage);
    }
}

#[test]
fn events_come_once_each_in_order_with_the_responses_figures() {
    let chat = chat(json!({"temperature": 0, "max_tokens": 5}));
    for turn in 0..2 {
        let mut events = Recorder::default();
        let request =
            json!({"messages": [user(if turn == 0 { "Name a fruit." } else { "Name a color." })]});
        let (response, usage) = chat
            .send(&request.to_string(), Instant::now(), &mut events)
            .unwrap();
        let response: Value = serde_json::from_str(&response).unwrap();
        let tokens = events.order.len() - 5;
        assert_eq!(
            events.order,
            format!("SKPF{}C", "T".repeat(tokens)),
            "start, kv, policy, first token, tokens, complete"
        );
        assert!(tokens >= 1);
        assert_eq!(events.usage, Some(usage));
        assert_eq!(events.message_count, 1);
        assert_eq!(events.cached_tokens, usage.cached_tokens);
        assert_eq!(
            turn == 0,
            usage.cached_tokens == 0,
            "turn 2 reuses turn 1's cache"
        );
        assert_eq!(
            events.policy,
            (
                "keep_all".to_string(),
                usage.prompt_tokens,
                usage.prompt_tokens
            )
        );
        assert_eq!(events.first_token_ms, usage.time_to_first_token_ms);
        // serde_json's default float parser may land one ulp off the printed shortest form.
        let json_ttft = response["usage"]["time_to_first_token_ms"]
            .as_f64()
            .unwrap();
        assert!(
            (json_ttft - usage.time_to_first_token_ms).abs() <= 1e-9 * usage.time_to_first_token_ms
        );
        assert_eq!(
            response["usage"]["prompt_tokens"].as_u64().unwrap() as usize,
            usage.prompt_tokens
        );
        assert_eq!(
            response["message"]["content"].as_str().unwrap(),
            events.text,
            "the pieces make up the reply"
        );
        assert!(usage.prefill_ms > 0.0 && usage.time_to_first_token_ms >= usage.prefill_ms);
    }
}

/// A callback that calls back into its own chat.
struct ReentrantCaller<'a> {
    chat: &'a Chat,
    errors: Vec<ErrorKind>,
}

impl GenerationEvents for ReentrantCaller<'_> {
    fn on_text(&mut self, _text: &str) -> bool {
        if self.errors.is_empty() {
            let request = json!({"messages": [user("Again.")]}).to_string();
            self.errors.push(
                self.chat
                    .send(&request, Instant::now(), &mut NoEvents)
                    .unwrap_err()
                    .kind,
            );
            self.errors.push(self.chat.history_json().unwrap_err().kind);
            self.errors.push(self.chat.reset().unwrap_err().kind);
        }
        true
    }
}

impl ChatEvents for ReentrantCaller<'_> {}

#[test]
fn a_call_on_a_chat_that_is_busy_returns_busy_instead_of_waiting() {
    let chat = chat(json!({"temperature": 0, "max_tokens": 2}));
    let mut caller = ReentrantCaller {
        chat: &chat,
        errors: Vec::new(),
    };
    chat.send(
        &json!({"messages": [user("Hello.")]}).to_string(),
        Instant::now(),
        &mut caller,
    )
    .unwrap();
    assert_eq!(caller.errors, vec![ErrorKind::Busy; 3]);
    assert_eq!(history(&chat).len(), 2, "only the outer send was recorded");
}

#[test]
fn bad_input_gives_its_own_error_kind_and_says_what_to_fix() {
    let chat = chat(json!({}));
    let hi = json!([user("hi")]);
    let cases: Vec<(String, ErrorKind, &str)> = vec![
        ("{\"messages\": [".into(), ErrorKind::InvalidJson, "EOF while parsing"),
        ("{}".into(), ErrorKind::InvalidJson, "missing field `messages`"),
        (json!({"messages": [{"role": "robot", "content": "hi"}]}).to_string(), ErrorKind::InvalidJson, "messages[0].role: unknown variant `robot`"),
        (json!({"messages": [{"role": "user", "content": ["hi"]}]}).to_string(), ErrorKind::InvalidJson, "messages[0].content: invalid type: sequence, expected a string"),
        (json!({"messages": hi, "max_tokens": 1.5}).to_string(), ErrorKind::InvalidArgument, "max_tokens is 1.5; it must be"),
        (json!({"messages": hi, "max_tokens": "many"}).to_string(), ErrorKind::InvalidJson, "max_tokens must be an integer, not the string \"many\""),
        (json!({"messages": hi, "seed": -2}).to_string(), ErrorKind::InvalidArgument, "seed is -2; it must be -1 (a new random seed"),
        (json!({"messages": hi, "logprobs": -1}).to_string(), ErrorKind::InvalidArgument, "logprobs is -1"),
        (json!({"messages": hi, "stop_token_ids": [-1]}).to_string(), ErrorKind::InvalidArgument, "stop_token_ids entries is -1"),
        (json!({"messages": hi, "stop": 3}).to_string(), ErrorKind::InvalidJson, "stop must be a string or a list of strings, not the number 3"),
        (json!({"messages": hi, "max_tokens": 0}).to_string(), ErrorKind::InvalidArgument, "a chat reply needs at least 1"),
        (json!({"messages": hi, "stream": true}).to_string(), ErrorKind::InvalidJson, "unknown field `stream`"),
        (json!({"messages": []}).to_string(), ErrorKind::InvalidArgument, "messages is empty"),
        (json!({"messages": hi, "max_tokens": -1}).to_string(), ErrorKind::InvalidArgument, "max_tokens is -1; it must be"),
        (json!({"messages": hi, "top_p": 1.5}).to_string(), ErrorKind::InvalidArgument, "top_p"),
        (json!({"messages": hi, "history": "keep"}).to_string(), ErrorKind::InvalidArgument, "history is 'keep'"),
        (json!({"messages": hi, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "dict"}}}]}).to_string(), ErrorKind::InvalidArgument, "tools[0].function.parameters (of \"f\") is not a JSON Schema: parameters.type is \"dict\""),
        (json!({"messages": hi, "tools": [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]}).to_string(), ErrorKind::InvalidArgument, "tools has two functions named \"f\""),
        (json!({"messages": hi, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": {"name": "g"}}}).to_string(), ErrorKind::InvalidArgument, "tool_choice names the function \"g\", which is not among the tools (f)"),
        (json!({"messages": hi, "tool_choice": "auto"}).to_string(), ErrorKind::InvalidArgument, "the request has no tools"),
        (json!({"messages": [user("hi"), {"role": "tool", "content": "42"}]}).to_string(), ErrorKind::InvalidArgument, "messages[1] has role \"tool\" but no tool_call_id"),
        (json!({"messages": hi, "retrieved_context": [{"id": "a"}]}).to_string(), ErrorKind::InvalidArgument, "retrieved_context[0] has no \"content\""),
        (json!({"messages": hi, "response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}).to_string(), ErrorKind::InvalidJson, "response_format.json_schema needs a \"name\""),
        (json!({"messages": hi, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "https://example.com/s.json"}}}}).to_string(), ErrorKind::InvalidArgument, "$ref"),
        (json!({"messages": hi, "max_tokens": 100000}).to_string(), ErrorKind::ContextOverflow, "max_tokens 100000 reserves the whole context"),
    ];
    for (request, kind, message) in cases {
        let err = chat
            .send(&request, Instant::now(), &mut NoEvents)
            .unwrap_err();
        assert_eq!(err.kind, kind, "{request}: {}", err.message);
        assert!(
            err.message.contains(message),
            "{request}: `{}` should contain `{message}`",
            err.message
        );
    }
    assert!(history(&chat).is_empty(), "no failed send left a trace");

    for (options, kind, message) in [
        (
            r#"{"kv_cache": 1}"#,
            ErrorKind::InvalidJson,
            "kv_cache: invalid type",
        ),
        (
            r#"{"context_policy": {"type": "keep_all", "max_tokens": 10}}"#,
            ErrorKind::InvalidJson,
            "unknown field `max_tokens`",
        ),
        (
            r#"{"context_policy": {"type": "sliding_window", "max_tokens": 0}}"#,
            ErrorKind::InvalidArgument,
            "window_tokens (max_tokens) must be at least 1",
        ),
        (
            r#"{"max_kv_tokens": 9000}"#,
            ErrorKind::InvalidArgument,
            "max_kv_tokens is 9000, but the engine's context holds 8192",
        ),
        (
            r#"{"session_id": ""}"#,
            ErrorKind::InvalidArgument,
            "session_id must be 1 to 256 bytes",
        ),
        (
            r#"{"context_policy": {"type": "everything"}}"#,
            ErrorKind::InvalidJson,
            "it must be {\"type\": \"keep_all\"}",
        ),
        (
            r#"{"stop": ["a", 1]}"#,
            ErrorKind::InvalidJson,
            "stop entries must be strings, not the number 1",
        ),
    ] {
        let err = Chat::create(engine(), Some(options)).err().expect(options);
        assert_eq!(err.kind, kind, "{options}: {}", err.message);
        assert!(!err.message.contains("enum"), "{}", err.message);
        assert!(
            err.message.contains(message),
            "{options}: `{}` should contain `{message}`",
            err.message
        );
    }

    let missing =
        Engine::load(&EngineOptions::new("/no/such/model.gguf"), &mut SilentLoad).unwrap_err();
    assert_eq!(missing.kind, ErrorKind::Io);
    assert!(
        missing
            .message
            .contains("'/no/such/model.gguf' does not exist"),
        "{}",
        missing.message
    );
    let not_gguf =
        std::env::temp_dir().join(format!("smallmind-not-gguf-{}.gguf", std::process::id()));
    std::fs::write(&not_gguf, "plain text, not a model").unwrap();
    let err = Engine::load(&EngineOptions::new(&not_gguf), &mut SilentLoad).unwrap_err();
    std::fs::remove_file(&not_gguf).ok();
    assert_eq!(err.kind, ErrorKind::ModelLoad);
    assert!(err.message.contains("GGUF"), "{}", err.message);
}
