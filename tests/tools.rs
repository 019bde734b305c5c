//! Tool calling and retrieval through the chat runtime's Rust face (the JSON the C API passes
//! through), on the default model (SmolLM2, no tool support in its template: the built-in
//! section) and on Gemma 3.

#[path = "support/models.rs"]
mod models;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde_json::{Value, json};
use smallmind::chat::{Chat, ChatEvents, HostReply};
use smallmind::engine::{Engine, EngineOptions, GenerationEvents, NoEvents, SilentLoad};
use smallmind::error::Result;

fn smollm2() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    Arc::clone(ENGINE.get_or_init(|| {
        let mut options = EngineOptions::new(models::smollm2());
        options.context_length = Some(2048);
        Engine::load(&options, &mut SilentLoad).expect("load SmolLM2")
    }))
}

fn gemma() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    Arc::clone(ENGINE.get_or_init(|| {
        let mut options = EngineOptions::new(models::gemma3());
        options.context_length = Some(2048);
        Engine::load(&options, &mut SilentLoad).expect("load Gemma 3")
    }))
}

fn user(content: &str) -> Value {
    json!({"role": "user", "content": content})
}

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "calculator", "description": "Evaluates an arithmetic expression",
         "parameters": {"type": "object", "properties": {"expression": {"type": "string", "maxLength": 24}}, "required": ["expression"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "clock", "description": "The current time in a city",
         "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"], "additionalProperties": false}}}
    ])
}

/// Four tools with varied argument types, for the tool_choice cases.
fn many_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "calculator", "description": "Evaluates an arithmetic expression",
         "parameters": {"type": "object", "properties": {"expression": {"type": "string", "maxLength": 24}}, "required": ["expression"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "clock", "description": "The current time in a city",
         "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "weather", "description": "The weather forecast for a city",
         "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "convert", "description": "Converts a length between units",
         "parameters": {"type": "object", "properties": {"value": {"type": "integer", "minimum": 0, "maximum": 100000}, "from": {"enum": ["m", "km", "mi"]}, "to": {"enum": ["m", "km", "mi"]}}, "required": ["value", "from", "to"], "additionalProperties": false}}}
    ])
}

/// A host that runs the calculator and the clock, and records what it heard.
#[derive(Default)]
struct Host {
    execute: bool,
    calls: Vec<Value>,
    streamed: String,
    tool_events: Vec<String>,
}

impl GenerationEvents for Host {
    fn on_text(&mut self, text: &str) -> bool {
        self.streamed.push_str(text);
        true
    }
}

impl ChatEvents for Host {
    fn can_execute_tools(&self) -> bool {
        self.execute
    }
    fn execute_tool(&mut self, call_json: &str) -> Option<Result<HostReply>> {
        let call: Value = serde_json::from_str(call_json).unwrap();
        self.calls.push(call.clone());
        let answer = match call["name"].as_str().unwrap() {
            "calculator" => "42".to_string(),
            "clock" => "12:00".to_string(),
            _ => "done".to_string(),
        };
        Some(Ok(HostReply::Content(answer)))
    }
    fn on_tool_call(&mut self, name: &str, _elapsed_ms: f64) {
        self.tool_events.push(name.to_string());
    }
}

fn send_with(chat: &Chat, request: Value, host: &mut Host) -> Value {
    let (response, _) = chat
        .send(&request.to_string(), Instant::now(), host)
        .expect("send");
    serde_json::from_str(&response).unwrap()
}

fn chunks() -> Value {
    json!([
        {"id": "doc-paris", "content": "The Eiffel Tower is 330 metres tall.", "source": "towers.txt", "title": "Eiffel Tower", "score": 0.92},
        {"id": "doc-rome", "content": "The Colosseum held about 50,000 spectators.", "source": "rome.txt", "title": "Colosseum", "score": 0.71}
    ])
}

/// The [n] markers of `text`, in order of first mention, read independently of the library.
fn markers_in(text: &str) -> Vec<usize> {
    let mut found = Vec::new();
    for (i, _) in text.match_indices('[') {
        let rest = &text[i + 1..];
        if let Some(end) = rest.find(']') {
            for part in rest[..end].split(',') {
                if let Ok(n) = part.trim().parse::<usize>()
                    && !found.contains(&n)
                {
                    found.push(n);
                }
            }
        }
    }
    found
}

#[test]
fn render_shows_the_retrieved_chunks_numbered_in_a_system_section() {
    let chat = Chat::create(smollm2(), Some(r#"{"system_prompt": "You are terse."}"#)).unwrap();
    let request =
        json!({"messages": [user("How tall is the Eiffel Tower?")], "retrieved_context": chunks()});
    let rendered: Value =
        serde_json::from_str(&chat.render(&request.to_string()).unwrap()).unwrap();
    let prompt = rendered["prompt"].as_str().unwrap();
    let expected_system = "<|im_start|>system\nYou are terse.\n\nAnswer using the numbered sources below. After each statement that uses a source, cite it with its number in square brackets, like [1].\n\n[1] Eiffel Tower (towers.txt)\nThe Eiffel Tower is 330 metres tall.\n\n[2] Colosseum (rome.txt)\nThe Colosseum held about 50,000 spectators.\n<|im_end|>\n";
    assert!(prompt.starts_with(expected_system), "{prompt}");
    assert!(
        prompt.ends_with(
            "<|im_start|>user\nHow tall is the Eiffel Tower?<|im_end|>\n<|im_start|>assistant\n"
        ),
        "{prompt}"
    );
}

#[test]
fn render_shows_the_built_in_tool_section_for_a_template_without_tools() {
    let chat = Chat::create(smollm2(), None).unwrap();
    let request = json!({"messages": [user("What is 6 times 7?")], "tools": tools()});
    let rendered: Value =
        serde_json::from_str(&chat.render(&request.to_string()).unwrap()).unwrap();
    let prompt = rendered["prompt"].as_str().unwrap();
    assert!(prompt.starts_with("<|im_start|>system\nYou can call functions to help answer. The functions, as JSON:\n<tools>\n{\"type\":\"function\",\"function\":{\"name\":\"calculator\",\"description\":\"Evaluates an arithmetic expression\","), "{prompt}");
    assert!(prompt.contains("</tools>\nTo call a function, reply with one line per call:\n<tool_call>{\"name\": \"<function name>\", \"arguments\": {<arguments as JSON>}}</tool_call>\n"), "{prompt}");
    // tool_choice "none": the model is not told about the tools.
    let request =
        json!({"messages": [user("What is 6 times 7?")], "tools": tools(), "tool_choice": "none"});
    let rendered: Value =
        serde_json::from_str(&chat.render(&request.to_string()).unwrap()).unwrap();
    assert!(!rendered["prompt"].as_str().unwrap().contains("<tools>"));
    // Past calls and results reach the prompt in the built-in syntax.
    let request = json!({"messages": [
        user("What is 6 times 7?"),
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": "{\"expression\": \"6*7\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"}
    ], "tools": tools()});
    let rendered: Value =
        serde_json::from_str(&chat.render(&request.to_string()).unwrap()).unwrap();
    assert!(rendered["prompt"].as_str().unwrap().ends_with("<|im_start|>assistant\n<tool_call>{\"name\": \"calculator\", \"arguments\": {\"expression\":\"6*7\"}}</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n42\n</tool_response><|im_end|>\n<|im_start|>assistant\n"), "{}", rendered["prompt"]);
}

#[test]
fn citations_are_the_chunks_whose_markers_the_answer_writes() {
    let chat = Chat::create(smollm2(), Some(r#"{"temperature": 0}"#)).unwrap();
    let mut markers_written = 0;
    for question in [
        "How tall is the Eiffel Tower? Cite the source.",
        "How many people did the Colosseum hold? Answer with the source number.",
        // SmolLM2 answers this one with a marker, so the comparison below is not vacuous.
        "Which source says how tall the Eiffel Tower is? Reply with its number in brackets.",
    ] {
        let mut host = Host::default();
        let r = send_with(
            &chat,
            json!({"messages": [user(question)], "retrieved_context": chunks(), "max_tokens": 40, "history": "replace"}),
            &mut host,
        );
        let content = r["message"]["content"].as_str().unwrap();
        let ids = ["doc-paris", "doc-rome"];
        let expected: Vec<&str> = markers_in(content)
            .iter()
            .filter_map(|&n| n.checked_sub(1).and_then(|i| ids.get(i)).copied())
            .collect();
        let cited: Vec<&str> = r["citations"]
            .as_array()
            .map(|a| a.iter().map(|c| c["id"].as_str().unwrap()).collect())
            .unwrap_or_default();
        assert_eq!(cited, expected, "{content}");
        markers_written += markers_in(content).len();
        let unknown = markers_in(content)
            .iter()
            .filter(|&&n| n == 0 || n > 2)
            .count();
        let warned = r["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| {
                w.as_str()
                    .unwrap()
                    .contains("but there are chunks [1] to [2]")
            })
            .count();
        assert_eq!(warned, unknown, "{r}");
        eprintln!("{question} -> {content} {}", r["citations"]);
    }
    assert!(
        markers_written > 0,
        "no answer wrote a marker, so nothing was compared"
    );
}

#[test]
fn retrieve_callback_chunks_reach_the_prompt_and_the_citations() {
    struct Retriever(Vec<String>);
    impl GenerationEvents for Retriever {}
    impl ChatEvents for Retriever {
        fn retrieve(&mut self, query: &str) -> Option<Result<HostReply>> {
            self.0.push(query.to_string());
            Some(Ok(HostReply::Content(chunks().to_string())))
        }
    }
    let chat = Chat::create(smollm2(), Some(r#"{"temperature": 0}"#)).unwrap();
    let mut host = Retriever(Vec::new());
    let request = json!({"messages": [user("How tall is the Eiffel Tower? Cite it like [1].")], "max_tokens": 24});
    let (response, usage) = chat
        .send(&request.to_string(), Instant::now(), &mut host)
        .unwrap();
    assert_eq!(host.0, ["How tall is the Eiffel Tower? Cite it like [1]."]);
    // The prompt had the section: the same request with the chunks inline renders as long.
    let inline = json!({"messages": [user("How tall is the Eiffel Tower? Cite it like [1].")], "retrieved_context": chunks(), "history": "replace"});
    let rendered: Value = serde_json::from_str(&chat.render(&inline.to_string()).unwrap()).unwrap();
    assert_eq!(
        usage.prompt_tokens,
        rendered["prompt_token_ids"].as_array().unwrap().len()
    );
    let r: Value = serde_json::from_str(&response).unwrap();
    let content = r["message"]["content"].as_str().unwrap();
    assert_eq!(
        r["citations"].as_array().map_or(0, Vec::len),
        markers_in(content)
            .iter()
            .filter(|&&n| n == 1 || n == 2)
            .count(),
        "{r}"
    );

    // A retriever answering something that is not a list of chunks fails the send, saying so.
    struct Bad;
    impl GenerationEvents for Bad {}
    impl ChatEvents for Bad {
        fn retrieve(&mut self, _query: &str) -> Option<Result<HostReply>> {
            Some(Ok(HostReply::Content("{\"content\": \"x\"}".into())))
        }
    }
    let err = chat
        .send(&request.to_string(), Instant::now(), &mut Bad)
        .unwrap_err();
    assert!(
        err.message
            .contains("the retrieve callback's result must be a list"),
        "{}",
        err.message
    );
    let _ = NoEvents;
}

/// Checks one tool_choice case: under "required" and a named function every reply is calls,
/// each naming an existing tool (the named one) with arguments that validate against its
/// parameters (checked by the jsonschema crate, not by smallmind); under "auto" the same holds
/// for whatever calls the model makes.
fn check_case(engine: Arc<Engine>, question: &str, choice: Value) {
    let chat = Chat::create(engine, Some(r#"{"temperature": 0}"#)).unwrap();
    let tools = many_tools();
    let mut host = Host::default();
    let r = send_with(
        &chat,
        json!({"messages": [user(question)], "tools": tools, "tool_choice": choice, "max_tokens": 64}),
        &mut host,
    );
    let calls = r["message"]["tool_calls"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let forced = choice != json!("auto");
    if forced {
        assert!(!calls.is_empty(), "{question} / {choice}: {r}");
        assert_eq!(r["finish_reason"], "tool_calls", "{r}");
    }
    assert_eq!(r["finish_reason"] == "tool_calls", !calls.is_empty(), "{r}");
    for call in &calls {
        let name = call["function"]["name"].as_str().unwrap();
        if let Some(wanted) = choice.pointer("/function/name") {
            assert_eq!(name, wanted, "{r}");
        }
        let spec = tools
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["function"]["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not one of the tools: {r}"));
        let arguments: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        let validator = jsonschema::validator_for(&spec["function"]["parameters"]).unwrap();
        assert!(
            validator.is_valid(&arguments),
            "{question}: {arguments} against {}",
            spec["function"]["parameters"]
        );
        assert_eq!(call["type"], "function");
    }
    // The streamed text never shows call markup.
    assert!(
        !host.streamed.contains("<tool_call>"),
        "{:?}",
        host.streamed
    );
    if forced {
        assert_eq!(host.streamed, "", "a forced call streams no text");
    }
}

const QUESTIONS: [&str; 5] = [
    "What is 17 times 23?",
    "What time is it in Tokyo?",
    "Will it rain in London tomorrow?",
    "How many kilometres are 5 miles?",
    "Tell me a joke.",
];

#[test]
fn twelve_tool_choice_cases_on_smollm2_all_give_valid_calls() {
    for q in QUESTIONS {
        check_case(smollm2(), q, json!("required"));
    }
    for (q, name) in [
        (QUESTIONS[0], "calculator"),
        (QUESTIONS[2], "weather"),
        (QUESTIONS[3], "convert"),
        (QUESTIONS[4], "clock"),
    ] {
        check_case(
            smollm2(),
            q,
            json!({"type": "function", "function": {"name": name}}),
        );
    }
    for q in &QUESTIONS[..3] {
        check_case(smollm2(), q, json!("auto"));
    }
}

#[test]
fn eight_tool_choice_cases_on_gemma_all_give_valid_calls() {
    for q in &QUESTIONS[..4] {
        check_case(gemma(), q, json!("required"));
    }
    for (q, name) in [(QUESTIONS[1], "clock"), (QUESTIONS[3], "convert")] {
        check_case(
            gemma(),
            q,
            json!({"type": "function", "function": {"name": name}}),
        );
    }
    for q in &QUESTIONS[..2] {
        check_case(gemma(), q, json!("auto"));
    }
}

#[test]
fn a_host_run_loop_answers_with_a_tool_message_and_reuses_the_cache() {
    let chat = Chat::create(smollm2(), Some(r#"{"temperature": 0}"#)).unwrap();
    let mut host = Host::default();
    let r = send_with(
        &chat,
        json!({"messages": [user("What is 6 times 7?")], "tools": tools(), "tool_choice": {"type": "function", "function": {"name": "calculator"}}, "max_tokens": 64}),
        &mut host,
    );
    assert_eq!(r["finish_reason"], "tool_calls", "{r}");
    assert!(host.calls.is_empty(), "no executor: the host runs the call");
    let call = &r["message"]["tool_calls"][0];
    assert_eq!(call["id"], "call_1");
    let answers: Vec<Value> = r["message"]["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| json!({"role": "tool", "tool_call_id": c["id"], "content": "42"}))
        .collect();
    let answer = json!({"messages": answers, "tools": tools(), "max_tokens": 24});
    let (response, usage) = chat
        .send(&answer.to_string(), Instant::now(), &mut Host::default())
        .unwrap();
    let r2: Value = serde_json::from_str(&response).unwrap();
    assert!(usage.cached_tokens > 0, "{r2}");
    assert_eq!(
        r2["usage"]["prompt_tokens_details"]["cached_tokens"],
        usage.cached_tokens
    );
    let history: Value = serde_json::from_str(&chat.history_json().unwrap()).unwrap();
    let roles: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    let mut expected = vec!["user", "assistant"];
    expected.extend(std::iter::repeat_n("tool", answers.len()));
    expected.push("assistant");
    assert_eq!(roles, expected, "{history}");
    assert_eq!(history["messages"][1]["tool_calls"][0], *call);
    assert_eq!(history["messages"][2]["tool_call_id"], "call_1");
    // The next call gets a fresh id.
    let r3 = send_with(
        &chat,
        json!({"messages": [user("And 8 times 9?")], "tools": tools(), "tool_choice": "required", "max_tokens": 64}),
        &mut Host::default(),
    );
    let earlier: Vec<&Value> = r["message"]["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["id"])
        .collect();
    let fresh: Vec<&Value> = r3["message"]["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["id"])
        .collect();
    assert!(
        !fresh.is_empty() && fresh.iter().all(|id| !earlier.contains(id)),
        "{r3}"
    );
    let mut unique = fresh.clone();
    unique.dedup();
    assert_eq!(unique, fresh, "ids are unique within a reply too");
}

#[test]
fn the_in_process_loop_runs_calls_through_the_executor_and_answers() {
    let chat = Chat::create(smollm2(), Some(r#"{"temperature": 0}"#)).unwrap();
    let mut host = Host {
        execute: true,
        ..Host::default()
    };
    let r = send_with(
        &chat,
        json!({"messages": [user("What is 6 times 7?")], "tools": tools(), "tool_choice": {"type": "function", "function": {"name": "calculator"}}, "max_tokens": 64}),
        &mut host,
    );
    let results = r["tool_results"].as_array().unwrap();
    assert!(!results.is_empty(), "{r}");
    assert_eq!(results[0]["name"], "calculator");
    assert_eq!(results[0]["content"], "42");
    assert_eq!(host.calls[0]["id"], results[0]["id"]);
    assert_eq!(
        host.calls[0]["arguments"].to_string(),
        results[0]["arguments"].as_str().unwrap()
    );
    assert_eq!(host.tool_events.len(), results.len());
    let history: Value = serde_json::from_str(&chat.history_json().unwrap()).unwrap();
    let messages = history["messages"].as_array().unwrap();
    assert_eq!(messages[1]["tool_calls"][0]["id"], results[0]["id"]);
    assert_eq!(messages[2]["role"], "tool");
    assert_eq!(messages[2]["content"], "42");
    eprintln!("{r}");
}

#[test]
fn max_tool_calls_ends_the_loop_with_the_calls_for_the_host_and_a_warning() {
    let chat = Chat::create(smollm2(), Some(r#"{"temperature": 0}"#)).unwrap();
    let mut host = Host {
        execute: true,
        ..Host::default()
    };
    let r = send_with(
        &chat,
        json!({"messages": [user("What time is it in Paris?")], "tools": tools(), "tool_choice": "required", "max_tool_calls": 0, "max_tokens": 64}),
        &mut host,
    );
    assert_eq!(r["finish_reason"], "tool_calls", "{r}");
    assert!(
        host.calls.is_empty() && r.get("tool_results").is_none(),
        "{r}"
    );
    assert!(
        r["warnings"].as_array().unwrap().iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("max_tool_calls (0) reached: 0 call(s) ran")),
        "{r}"
    );
    assert!(
        !r["message"]["tool_calls"].as_array().unwrap().is_empty(),
        "the calls are left for the host: {r}"
    );
}
