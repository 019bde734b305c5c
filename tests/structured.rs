//! Constrained generation: the seam in the generation loop (with a hand-written constraint
//! whose every step is known), and the llguidance-backed JSON-schema and lark constraints on
//! SmolLM2. Replies are kept short.

#[path = "support/models.rs"]
mod models;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde_json::{Value, json};
use smallmind::ErrorKind;
use smallmind::chat::structured::{
    constraint_environment_build_ms, json_schema_constraint, lark_constraint,
    validate_json_against_schema,
};
use smallmind::engine::{
    Engine, EngineOptions, GenerationOutput, GenerationRequest, NoEvents, SilentLoad,
};
use smallmind::sample::{SamplingParams, TokenConstraint, TokenMask};

fn smollm2() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    Arc::clone(ENGINE.get_or_init(|| {
        let mut options = EngineOptions::new(models::smollm2());
        options.context_length = Some(512);
        Engine::load(&options, &mut SilentLoad).expect("load SmolLM2")
    }))
}

fn request(
    engine: &Engine,
    prompt: &str,
    temperature: f32,
    max_tokens: usize,
) -> GenerationRequest {
    GenerationRequest {
        prompt: engine.tokenizer.encode(prompt, true, true),
        sampling: SamplingParams {
            temperature,
            seed: 7,
            ..SamplingParams::default()
        },
        max_tokens,
        stop: Vec::new(),
        stop_token_ids: Vec::new(),
        ignore_eos: false,
        top_logprobs: None,
        prompt_logprobs: false,
        started_at: Instant::now(),
        shared_prefix: 0,
    }
}

fn run(
    engine: &Engine,
    request: &GenerationRequest,
    constraint: Option<&mut (dyn TokenConstraint + 'static)>,
) -> GenerationOutput {
    let mut cache = engine.new_cache();
    engine
        .generate(&mut cache, request, constraint, &mut NoEvents)
        .expect("generate")
}

/// Allows exactly the tokens of `script`, one per step, and stops after them; may stop only
/// at the end, or everywhere when `stop_anywhere`.
struct Script {
    script: Vec<u32>,
    at: usize,
    stop_anywhere: bool,
    accepted: Vec<u32>,
}

impl TokenConstraint for Script {
    fn compute_mask(&mut self, mask: &mut TokenMask) -> Result<(), String> {
        mask.clear();
        mask.allow(self.script[self.at]);
        Ok(())
    }
    fn accept_token(&mut self, token: u32) -> Result<(), String> {
        if token != self.script[self.at] {
            return Err(format!("expected {}, got {token}", self.script[self.at]));
        }
        self.accepted.push(token);
        self.at += 1;
        Ok(())
    }
    fn may_stop(&self) -> bool {
        self.stop_anywhere || self.at == self.script.len()
    }
    fn must_stop(&self) -> bool {
        self.at == self.script.len()
    }
}

fn script(engine: &Engine, text: &str, stop_anywhere: bool) -> Script {
    Script {
        script: engine.tokenizer.encode(text, false, false),
        at: 0,
        stop_anywhere,
        accepted: Vec::new(),
    }
}

#[test]
fn the_loop_follows_the_mask_and_ends_where_the_constraint_must_stop() {
    let engine = smollm2();
    let mut constraint = script(&engine, "purple elephants dance", false);
    let expected = constraint.script.clone();
    assert!(expected.len() >= 3);
    let mut greedy = request(&engine, "The capital of France is", 0.0, 20);
    greedy.top_logprobs = Some(3);
    let out = run(&engine, &greedy, Some(&mut constraint));
    assert_eq!(out.token_ids, expected);
    assert_eq!(constraint.accepted, expected);
    assert_eq!(out.text, "purple elephants dance");
    assert_eq!(out.finish_reason.as_str(), "stop");
    // Logprobs are after the mask: the only allowed token has all the probability, and no
    // other token appears among the alternatives.
    for (entry, &id) in out.logprobs.iter().zip(&expected) {
        assert_eq!(entry.id, id);
        assert_eq!(entry.logprob, 0.0);
        assert_eq!(entry.top.len(), 1, "{:?}", entry.top);
        assert_eq!(entry.top[0].0, id);
    }
}

#[test]
fn end_of_generation_is_allowed_only_where_the_constraint_may_stop() {
    let engine = smollm2();
    // A constraint that allows EOS and one word everywhere, and may stop only at the end:
    // EOS must be forbidden until then, whatever the model prefers.
    struct EosOrWord {
        word: u32,
        eos: u32,
        count: usize,
        may_stop_after: usize,
    }
    impl TokenConstraint for EosOrWord {
        fn compute_mask(&mut self, mask: &mut TokenMask) -> Result<(), String> {
            mask.clear();
            mask.allow(self.word);
            mask.allow(self.eos);
            Ok(())
        }
        fn accept_token(&mut self, token: u32) -> Result<(), String> {
            assert_eq!(token, self.word, "EOS must never be accepted");
            self.count += 1;
            Ok(())
        }
        fn may_stop(&self) -> bool {
            self.count >= self.may_stop_after
        }
        fn must_stop(&self) -> bool {
            false
        }
    }
    // The model ends its reply within a few tokens here; with those tokens added to the
    // prompt, it ends at once, with `eos`.
    let prompt = "<|im_start|>user\nSay ok.<|im_end|>\n<|im_start|>assistant\nok";
    let free = run(&engine, &request(&engine, prompt, 0.0, 8), None);
    let (&eos, reply) = free.token_ids.split_last().unwrap();
    assert!(
        engine.tokenizer.is_end_of_generation(eos),
        "{:?}",
        free.token_ids
    );
    let mut at_the_end = request(&engine, prompt, 0.0, 8);
    at_the_end.prompt.extend_from_slice(reply);
    assert_eq!(run(&engine, &at_the_end, None).token_ids, [eos]);
    let word = engine.tokenizer.encode(" zebra", false, false)[0];
    // Allowed at once, the model takes EOS over the word: the mask alone does not keep it out.
    let mut anywhere = EosOrWord {
        word,
        eos,
        count: 0,
        may_stop_after: 0,
    };
    let out = run(&engine, &at_the_end, Some(&mut anywhere));
    assert_eq!(out.token_ids, [eos]);
    let mut constraint = EosOrWord {
        word,
        eos,
        count: 0,
        may_stop_after: 3,
    };
    let out = run(&engine, &at_the_end, Some(&mut constraint));
    // EOS was forbidden for three tokens; after them it is allowed again, and ends the reply
    // if it comes.
    assert_eq!(
        out.token_ids[..3],
        [word, word, word],
        "{:?}",
        out.token_ids
    );
    let (last, before) = out.token_ids.split_last().unwrap();
    assert!(before.iter().all(|&t| t == word), "{:?}", out.token_ids);
    assert!(*last == word || (*last == eos && out.finish_reason.as_str() == "stop"));
}

#[test]
fn stop_strings_with_a_constraint_are_refused() {
    let engine = smollm2();
    let mut req = request(&engine, "Hi", 0.0, 4);
    req.stop = vec!["}".into()];
    let mut constraint = script(&engine, "{}", false);
    let error = engine
        .generate(
            &mut engine.new_cache(),
            &req,
            Some(&mut constraint),
            &mut NoEvents,
        )
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::InvalidArgument);
    assert!(error.message.contains("stop"), "{}", error.message);
}

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "colour": {"enum": ["red", "green", "blue"]}
        },
        "required": ["name", "age", "colour"],
        "additionalProperties": false
    })
}

#[test]
fn a_json_schema_constraint_gives_compact_valid_json_at_both_temperatures() {
    let engine = smollm2();
    let schema = person_schema();
    let prompt = "<|im_start|>user\nDescribe Ann, 31, who likes green, as JSON.<|im_end|>\n<|im_start|>assistant\n";
    for temperature in [0.0, 0.8] {
        let mut constraint = json_schema_constraint(&engine, &schema).expect("schema compiles");
        let out = run(
            &engine,
            &request(&engine, prompt, temperature, 60),
            Some(constraint.as_mut()),
        );
        assert_eq!(out.finish_reason.as_str(), "stop", "{:?}", out.text);
        let value: Value = serde_json::from_str(&out.text).expect("the reply parses");
        validate_json_against_schema(&schema, &value).expect("the reply validates");
        assert!(!out.text.contains(' ') || value["name"].as_str().unwrap().contains(' '));
        assert!(!out.text.contains('\n'));
        assert!(constraint.must_stop());
    }
    assert!(constraint_environment_build_ms(&engine).is_some_and(|ms| ms > 0.0));
}

#[test]
fn a_lark_grammar_with_an_embedded_schema_constrains_the_output() {
    let engine = smollm2();
    let grammar = r#"
start: "CALL " call
call: %json {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}}, "required": ["city"], "additionalProperties": false}
"#;
    let mut constraint = lark_constraint(&engine, grammar).expect("the grammar compiles");
    let prompt =
        "<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n<|im_start|>assistant\n";
    let out = run(
        &engine,
        &request(&engine, prompt, 0.0, 40),
        Some(constraint.as_mut()),
    );
    let json_part = out.text.strip_prefix("CALL ").expect(&out.text);
    let value: Value = serde_json::from_str(json_part).expect("the call parses");
    assert!(value["city"].is_string(), "{value}");
}

#[test]
fn unenforceable_and_malformed_schemas_and_grammars_are_invalid_arguments() {
    let engine = smollm2();
    for (schema, named) in [
        (json!({"$ref": "https://example.com/schema.json"}), "$ref"),
        (json!({"type": "strnig"}), "strnig"),
        (json!({"type": "object", "properties": 5}), "properties"),
        (json!([1, 2]), "array"),
    ] {
        let error = json_schema_constraint(&engine, &schema)
            .err()
            .expect("refused");
        assert_eq!(error.kind, ErrorKind::InvalidArgument, "{schema}");
        assert!(error.message.contains(named), "{schema}: {}", error.message);
    }
    let error = lark_constraint(&engine, "start: undefined_rule")
        .err()
        .expect("refused");
    assert_eq!(error.kind, ErrorKind::InvalidArgument);
    assert!(
        error.message.contains("undefined_rule"),
        "{}",
        error.message
    );
}

#[test]
fn the_validator_checks_independently() {
    let schema = person_schema();
    assert_eq!(
        validate_json_against_schema(
            &schema,
            &json!({"name": "Ann", "age": 31, "colour": "green"})
        ),
        Ok(())
    );
    let error = validate_json_against_schema(
        &schema,
        &json!({"name": "Ann", "age": 131, "colour": "green"}),
    )
    .unwrap_err();
    assert!(error.contains("/age"), "{error}");
    let error =
        validate_json_against_schema(&schema, &json!({"name": "Ann", "age": 1, "colour": "pink"}))
            .unwrap_err();
    assert!(error.contains("/colour"), "{error}");
}

// ---- response_format through the chat and completion calls ----

use smallmind::chat::Chat;

fn gemma() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    Arc::clone(ENGINE.get_or_init(|| {
        let mut options = EngineOptions::new(models::gemma3());
        options.context_length = Some(512);
        Engine::load(&options, &mut SilentLoad).expect("load Gemma")
    }))
}

fn send(chat: &Chat, request: Value) -> Result<Value, smallmind::Error> {
    chat.send(&request.to_string(), Instant::now(), &mut NoEvents)
        .map(|(response, _)| serde_json::from_str(&response).unwrap())
}

fn schema_format(schema: &Value) -> Value {
    json!({"type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": true}})
}

/// The twenty schemas of tests/structured/schemas.json, which together use every keyword
/// the issue lists, on one engine at temperatures 0 and 0.8: every reply finishes, parses
/// and validates (checked here with the jsonschema crate, independently of the runtime's own
/// check).
fn twenty_schemas(engine: Arc<Engine>, model: &str) {
    let cases: Vec<Value> = serde_json::from_str(include_str!("structured/schemas.json")).unwrap();
    assert_eq!(cases.len(), 20);
    let mut tokens = 0;
    for temperature in [0.0, 0.8] {
        for (i, case) in cases.iter().enumerate() {
            let chat = Chat::create(Arc::clone(&engine), None).unwrap();
            let schema = &case["schema"];
            let response = send(
                &chat,
                json!({
                    "messages": [{"role": "user", "content": format!("{} Reply in JSON.", case["prompt"].as_str().unwrap())}],
                    "response_format": schema_format(schema),
                    "temperature": temperature,
                    "seed": 11,
                    "max_tokens": 120,
                }),
            )
            .unwrap_or_else(|e| panic!("{model} schema {i} at {temperature}: {}", e.message));
            let content = response["message"]["content"].as_str().unwrap();
            assert_eq!(
                response["finish_reason"], "stop",
                "{model} schema {i} at {temperature}: {content}"
            );
            let value: Value = serde_json::from_str(content)
                .unwrap_or_else(|e| panic!("{model} schema {i}: {content}: {e}"));
            validate_json_against_schema(schema, &value)
                .unwrap_or_else(|e| panic!("{model} schema {i}: {content}: {e}"));
            tokens += response["usage"]["completion_tokens"].as_u64().unwrap();
        }
    }
    eprintln!("{model}: 40 constrained replies, {tokens} tokens");
}

#[test]
fn twenty_schemas_on_smollm2_always_parse_and_validate() {
    twenty_schemas(smollm2(), "SmolLM2");
}

#[test]
fn twenty_schemas_on_gemma_always_parse_and_validate() {
    twenty_schemas(gemma(), "Gemma");
}

#[test]
fn json_object_replies_are_objects_in_chats_and_completions() {
    let engine = smollm2();
    for temperature in [0.0, 0.8] {
        let chat = Chat::create(Arc::clone(&engine), None).unwrap();
        let response = send(
            &chat,
            json!({
                "messages": [{"role": "user", "content": "Describe a cat in JSON."}],
                "response_format": {"type": "json_object"},
                "temperature": temperature,
                "max_tokens": 200,
                "seed": 3,
            }),
        )
        .unwrap();
        let content = response["message"]["content"].as_str().unwrap();
        if response["finish_reason"] == "stop" {
            let value: Value = serde_json::from_str(content).expect(content);
            assert!(value.is_object(), "{content}");
        } else {
            assert_eq!(response["finish_reason"], "length");
            assert!(content.starts_with('{'));
            assert!(
                response["warnings"][0]
                    .as_str()
                    .unwrap()
                    .contains("max_tokens")
            );
        }
    }
    let request = json!({
        "prompt": "A JSON object describing a dog:",
        "response_format": {"type": "json_object"},
        "temperature": 0,
        "max_tokens": 200,
    });
    let request =
        smallmind::api::completion_request(&engine, &request.to_string(), Instant::now()).unwrap();
    let (response, _) = smallmind::api::complete(&engine, &request, &mut NoEvents).unwrap();
    let response: Value = serde_json::from_str(&response).unwrap();
    let text = response["text"].as_str().unwrap();
    assert!(text.starts_with('{'), "{text}");
    if response["finish_reason"] == "stop" {
        assert!(serde_json::from_str::<Value>(text).unwrap().is_object());
    }
}

#[test]
fn a_reply_cut_by_max_tokens_says_so_and_a_refused_schema_generates_nothing() {
    let engine = smollm2();
    let chat = Chat::create(Arc::clone(&engine), None).unwrap();
    let schema = json!({"type": "object", "properties": {"story": {"type": "string", "minLength": 50}}, "required": ["story"]});
    let response = send(
        &chat,
        json!({
            "messages": [{"role": "user", "content": "Tell a story."}],
            "response_format": schema_format(&schema),
            "temperature": 0,
            "max_tokens": 5,
        }),
    )
    .unwrap();
    assert_eq!(response["finish_reason"], "length");
    assert_eq!(response["usage"]["completion_tokens"], 5);
    let content = response["message"]["content"].as_str().unwrap();
    assert!(content.starts_with("{\"story"), "{content}");
    assert!(serde_json::from_str::<Value>(content).is_err());
    assert!(
        response["warnings"][0]
            .as_str()
            .unwrap()
            .contains("max_tokens ran out before the JSON value was complete")
    );

    let chat = Chat::create(Arc::clone(&engine), None).unwrap();
    for (schema, named) in [
        (
            json!({"type": "object", "properties": {"a": {"$ref": "other.json#/x"}}}),
            "$ref",
        ),
        (json!({"type": "object", "required": "name"}), "required"),
        (
            json!({"type": "string", "format": "no-such-format"}),
            "format",
        ),
    ] {
        let error = send(
            &chat,
            json!({"messages": [{"role": "user", "content": "Hi"}], "response_format": schema_format(&schema), "max_tokens": 10}),
        )
        .unwrap_err();
        assert_eq!(
            error.kind,
            ErrorKind::InvalidArgument,
            "{schema}: {}",
            error.message
        );
        assert!(error.message.contains(named), "{schema}: {}", error.message);
    }
    let history: Value = serde_json::from_str(&chat.history_json().unwrap()).unwrap();
    assert_eq!(
        history["messages"],
        json!([]),
        "refused sends leave no history"
    );
    let error = send(
        &chat,
        json!({"messages": [{"role": "user", "content": "Hi"}], "response_format": {"type": "json_object"}, "stop": ["}"], "max_tokens": 10}),
    )
    .unwrap_err();
    assert_eq!(error.kind, ErrorKind::InvalidArgument);
}

#[test]
fn chat_logprobs_carry_text_and_are_after_the_mask() {
    let engine = smollm2();
    let chat = Chat::create(Arc::clone(&engine), None).unwrap();
    let response = send(
        &chat,
        json!({
            "messages": [{"role": "user", "content": "Yes or no?"}],
            "response_format": schema_format(&json!({"enum": ["yes", "no"]})),
            "temperature": 0,
            "logprobs": 3,
            "max_tokens": 10,
        }),
    )
    .unwrap();
    let content = response["message"]["content"].as_str().unwrap();
    assert!(content == "\"yes\"" || content == "\"no\"", "{content}");
    let entries = response["logprobs"].as_array().unwrap();
    let texts: String = entries
        .iter()
        .map(|entry| entry["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, content);
    // The first token can only be the opening quote (or a token starting with it): the mask
    // leaves no other alternative, so every alternative's text starts with '"'.
    for alternative in entries[0]["top"].as_array().unwrap() {
        assert!(
            alternative["text"].as_str().unwrap().starts_with('"'),
            "{alternative}"
        );
    }
}

#[test]
fn constrained_chats_from_two_threads_match_the_same_chats_run_in_turn() {
    let engine = smollm2();
    let schema = json!({"type": "object", "properties": {"name": {"type": "string", "maxLength": 10}, "legs": {"type": "integer", "minimum": 0, "maximum": 8}}, "required": ["name", "legs"], "additionalProperties": false});
    let run_one = |animal: &str| -> String {
        let chat = Chat::create(Arc::clone(&engine), None).unwrap();
        let response = send(
            &chat,
            json!({
                "messages": [{"role": "user", "content": format!("Describe a {animal}.")}],
                "response_format": schema_format(&schema),
                "temperature": 0.8,
                "seed": 5,
                "max_tokens": 40,
            }),
        )
        .unwrap();
        response["message"]["content"].as_str().unwrap().to_string()
    };
    let in_turn = [run_one("spider"), run_one("horse")];
    let together = std::thread::scope(|scope| {
        let a = scope.spawn(|| run_one("spider"));
        let b = scope.spawn(|| run_one("horse"));
        [a.join().unwrap(), b.join().unwrap()]
    });
    assert_eq!(together, in_turn);
}
