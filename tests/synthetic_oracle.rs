//! The 22 synthetic models of tests/oracle/synthetic against llama.cpp's outputs on them:
//! every architecture and tensor type. Token ids exact; last-position top-20 log-probabilities
//! within 0.02 (F32 weights) or 0.1 (other types); greedy equal up to the first near-tie.

#[path = "support/models.rs"]
mod models;
#[path = "support/oracle.rs"]
mod oracle;

use base64::Engine as _;
use serde_json::Value;
use smallmind::model::KvType;

fn synthetic() -> Value {
    let path = models::oracle_dir().join("synthetic/llamacpp-synthetic.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn decode_f32s(b64: &str) -> Vec<f32> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn check_model(file: &str) {
    let oracle_json = synthetic();
    let entry = oracle_json["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["file"] == file)
        .unwrap();
    let all_f32 = entry["tensor_types"]
        .as_object()
        .unwrap()
        .values()
        .all(|t| t == "F32");
    let tolerance = if all_f32 { 0.02 } else { 0.1 };
    let path = models::oracle_dir().join("synthetic").join(file);
    let engine = oracle::load_engine(&path, KvType::F32, 2);

    for case in entry["cases"].as_array().unwrap() {
        let what = format!("{file} case {}", case["id"]);
        let prompt = ids(&case["prompt_token_ids"]);
        let text = case["prompt_text"].as_str().unwrap();
        assert_eq!(
            engine.tokenizer.encode(text, true, true),
            prompt,
            "{what}: token ids"
        );

        // Last-position logits; for prompts with special tokens llama-debug has none, and the
        // first greedy step holds the same distribution.
        let steps = case["greedy"]["steps"].as_array().unwrap();
        let theirs = match case["last_prompt_position_logits"]["f32_le_base64"].as_str() {
            Some(b64) => oracle::log_softmax(&decode_f32s(b64)),
            None => decode_f32s(steps[0]["full_logprobs_f32_le_base64"].as_str().unwrap())
                .into_iter()
                .map(f64::from)
                .collect(),
        };
        let ours = oracle::last_logits(&engine, &prompt);
        oracle::assert_logprobs_close(&ours, &theirs, 20, tolerance, &what);

        let generated = ids(&case["greedy"]["generated_token_ids"]);
        let near_tie = steps
            .iter()
            .position(|s| {
                let top = s["top5"].as_array().unwrap();
                top[0]["logprob"].as_f64().unwrap() - top[1]["logprob"].as_f64().unwrap()
                    < tolerance
            })
            .unwrap_or(usize::MAX);
        let n = generated.len().min(near_tie.saturating_add(1));
        let ours = oracle::greedy(&engine, &prompt, n);
        oracle::assert_greedy_prefix(&ours, &generated, near_tie, &what);
    }
}

macro_rules! synthetic_tests {
    ($($name:ident => $file:literal,)*) => {
        $(
            #[test]
            fn $name() {
                check_model($file);
            }
        )*
    };
}

synthetic_tests! {
    llama_f32_matches_llama_cpp => "synth-llama-f32.gguf",
    llama_f16_matches_llama_cpp => "synth-llama-f16.gguf",
    llama_bf16_matches_llama_cpp => "synth-llama-bf16.gguf",
    llama_q4_0_matches_llama_cpp => "synth-llama-q4_0.gguf",
    llama_q4_1_matches_llama_cpp => "synth-llama-q4_1.gguf",
    llama_q5_0_matches_llama_cpp => "synth-llama-q5_0.gguf",
    llama_q5_1_matches_llama_cpp => "synth-llama-q5_1.gguf",
    llama_q8_0_matches_llama_cpp => "synth-llama-q8_0.gguf",
    llama_q2_k_matches_llama_cpp => "synth-llama-q2_k.gguf",
    llama_q3_k_matches_llama_cpp => "synth-llama-q3_k.gguf",
    llama_q4_k_matches_llama_cpp => "synth-llama-q4_k.gguf",
    llama_q5_k_matches_llama_cpp => "synth-llama-q5_k.gguf",
    llama_q6_k_matches_llama_cpp => "synth-llama-q6_k.gguf",
    llama_q4_k_m_mixture_matches_llama_cpp => "synth-llama-q4_k_m.gguf",
    qwen2_f32_matches_llama_cpp => "synth-qwen2-f32.gguf",
    qwen2_q8_0_matches_llama_cpp => "synth-qwen2-q8_0.gguf",
    qwen3_f32_matches_llama_cpp => "synth-qwen3-f32.gguf",
    qwen3_q8_0_matches_llama_cpp => "synth-qwen3-q8_0.gguf",
    gemma3_f32_matches_llama_cpp => "synth-gemma3-f32.gguf",
    gemma3_q8_0_matches_llama_cpp => "synth-gemma3-q8_0.gguf",
    llama3_f32_matches_llama_cpp => "synth-llama3-f32.gguf",
    llama3_q8_0_matches_llama_cpp => "synth-llama3-q8_0.gguf",
}
