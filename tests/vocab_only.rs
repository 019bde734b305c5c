//! `"vocab_only": true` engines: metadata and tokenizer only, for any architecture. Tokenize,
//! detokenize, info and prompt rendering work against llama.cpp's references; completion and
//! chat sends are refused with an error that says why.

#[path = "support/models.rs"]
mod models;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use smallmind::ErrorKind;
use smallmind::api;
use smallmind::chat::Chat;
use smallmind::engine::{Engine, NoEvents, SilentLoad};

fn vocab_only(path: &Path) -> Arc<Engine> {
    let options = api::parse_engine_options(
        &json!({"model_path": path.to_str().unwrap(), "vocab_only": true}).to_string(),
    )
    .unwrap();
    Engine::load(&options, &mut SilentLoad).expect("vocab-only load")
}

fn oracle_case(model: &str, id: &str) -> Value {
    let text = std::fs::read_to_string(models::oracle_dir().join("llamacpp-greedy.json")).unwrap();
    let oracle: Value = serde_json::from_str(&text).unwrap();
    oracle["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id && c["model"] == model)
        .unwrap()
        .clone()
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn a_vocab_only_gemma_tokenizes_and_detokenizes_as_llama_cpp_does() {
    let engine = vocab_only(&models::gemma3());
    let case = oracle_case("gemma-3-270m-q4_k_m.gguf", "d");
    let text = case["prompt_text"].as_str().unwrap();
    let out: Value = serde_json::from_str(
        &api::tokenize(
            &engine,
            &json!({"text": text, "add_special": true, "parse_special": true}).to_string(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(ids(&out["ids"]), ids(&case["prompt_token_ids"]));
    let back: Value = serde_json::from_str(
        &api::detokenize(&engine, &json!({"ids": &ids(&out["ids"])[1..]}).to_string()).unwrap(),
    )
    .unwrap();
    assert_eq!(back["text"], text);
}

#[test]
fn a_vocab_only_engine_reports_the_vocabulary_and_no_model_shape() {
    let engine = vocab_only(&models::gemma3());
    let info: Value = serde_json::from_str(&api::info_json(&engine).unwrap()).unwrap();
    assert_eq!(info["vocab_only"], true);
    assert_eq!(info["architecture"], "gemma3");
    assert_eq!(info["n_vocab"], 262_144);
    assert_eq!(info["n_ctx_train"], 32_768);
    assert_eq!(info["context_length"], 32_768);
    assert_eq!(info["n_layer"], Value::Null);
    assert_eq!(info["n_embd"], Value::Null);
}

#[test]
fn completion_and_chat_sends_are_refused_but_rendering_works() {
    let engine = vocab_only(&models::smollm2());
    let err = api::completion_request(
        &engine,
        &json!({"prompt": "Hi", "max_tokens": 1}).to_string(),
        Instant::now(),
    )
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("vocab_only"), "{err}");

    // The rendered chat prompt is llama.cpp's (oracle case c, SmolLM2's template).
    let case = oracle_case("SmolLM2-135M-Instruct.Q4_1.gguf", "c");
    let prompt_text = case["prompt_text"].as_str().unwrap();
    let question = prompt_text
        .split("<|im_start|>user\n")
        .nth(1)
        .unwrap()
        .split("<|im_end|>")
        .next()
        .unwrap();
    let chat = Chat::create(Arc::clone(&engine), None).unwrap();
    let request = json!({"messages": [{"role": "user", "content": question}]}).to_string();
    let rendered: Value = serde_json::from_str(&chat.render(&request).unwrap()).unwrap();
    assert_eq!(rendered["prompt"], prompt_text);
    assert_eq!(
        ids(&rendered["prompt_token_ids"]),
        ids(&case["prompt_token_ids"])
    );

    let err = chat
        .send(&request, Instant::now(), &mut NoEvents)
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("vocab_only"), "{err}");
    let history: Value = serde_json::from_str(&chat.history_json().unwrap()).unwrap();
    assert_eq!(
        history["messages"],
        json!([]),
        "a refused send records nothing"
    );
}

#[test]
fn any_architecture_loads_vocab_only_and_tokenizes_as_hugging_face_does() {
    // Falcon and Command-R are architectures smallmind does not run; their llama.cpp vocab
    // files hold no tensors at all.
    let (dir, _) = models::llamacpp_data();
    for (name, arch) in [("falcon", "falcon"), ("command-r", "command-r")] {
        let path = dir.join(format!("ggml-vocab-{name}.gguf"));
        let full =
            api::parse_engine_options(&json!({"model_path": path.to_str().unwrap()}).to_string())
                .unwrap();
        assert!(
            Engine::load(&full, &mut SilentLoad).is_err(),
            "{name} without vocab_only"
        );
        let engine = vocab_only(&path);
        let info: Value = serde_json::from_str(&api::info_json(&engine).unwrap()).unwrap();
        assert_eq!(info["architecture"], arch);
        let inp = std::fs::read_to_string(path.with_extension("gguf.inp")).unwrap();
        let out = std::fs::read_to_string(path.with_extension("gguf.out")).unwrap();
        let (text, expected) = inp
            .split("\n__ggml_vocab_test__\n")
            .zip(out.lines())
            .find(|(t, _)| t.contains("Hello world"))
            .unwrap();
        let got: Value = serde_json::from_str(
            &api::tokenize(
                &engine,
                &json!({"text": text, "add_special": false}).to_string(),
            )
            .unwrap(),
        )
        .unwrap();
        let expected: Vec<u64> = expected
            .split_whitespace()
            .map(|id| id.parse().unwrap())
            .collect();
        assert_eq!(ids(&got["ids"]), expected, "{name}: {text:?}");
    }
}
