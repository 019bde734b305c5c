//! SmolLM2-135M-Instruct Q4_1 against llama.cpp (tests/oracle/llamacpp-greedy.json,
//! logits/, llamacpp-perplexity.json): tokens, last-position logits, greedy text, perplexity.

#[path = "support/models.rs"]
mod models;
#[path = "support/oracle.rs"]
mod oracle;

use serde_json::Value;
use smallmind::engine::{GenerationRequest, NoEvents};
use smallmind::model::KvType;
use smallmind::sample::SamplingParams;

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Near-tie margin for greedy comparisons (the 0.1).
const LOGPROB_TOLERANCE: f64 = 0.1;
/// The top-20 log-probability tolerance, the floor of the oracle comparison (see
/// `oracle::assert_case_logits_close` for where llama.cpp's own spread widens it).
const LOGITS_TOLERANCE: f64 = 0.1;

fn oracle_cases() -> Vec<Value> {
    let text = std::fs::read_to_string(models::oracle_dir().join("llamacpp-greedy.json")).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["model"] == MODEL)
        .cloned()
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The first step whose top-1/top-2 margin in llama.cpp's run is below `tolerance`.
fn first_near_tie(case: &Value, tolerance: f64) -> usize {
    case["generated_topk_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .position(|step| {
            let top = step["top"].as_array().unwrap();
            top[0]["logprob"].as_f64().unwrap() - top[1]["logprob"].as_f64().unwrap() < tolerance
        })
        .unwrap_or(usize::MAX)
}

#[test]
fn last_position_logits_match_llama_cpp_precise() {
    let engine = oracle::load_engine(&models::smollm2(), KvType::F32, 2);
    let mut checked = 0;
    for case in oracle_cases() {
        if !case["last_prompt_position_logits"]["precise"]["file"].is_string() {
            continue;
        }
        oracle::assert_case_logits_close(&engine, &case, LOGITS_TOLERANCE);
        checked += 1;
    }
    assert_eq!(checked, 4, "cases a, b, d and e have logits");
}

#[test]
fn greedy_generation_matches_llama_cpp_up_to_the_first_near_tie() {
    // f16 KV against llama.cpp's default configuration (f16 KV), whose margins the file holds.
    let engine = oracle::load_engine(&models::smollm2(), KvType::F16, 2);
    for case in oracle_cases() {
        let theirs = ids(&case["generated_token_ids"]);
        let trusted = first_near_tie(&case, LOGPROB_TOLERANCE);
        let n = theirs.len().min(trusted.saturating_add(1));
        let ours = oracle::greedy(&engine, &ids(&case["prompt_token_ids"]), n);
        oracle::assert_greedy_prefix(
            &ours,
            &theirs,
            trusted,
            &format!("case {} (f16 KV)", case["id"]),
        );
    }
}

#[test]
fn greedy_generation_with_f32_kv_matches_llama_cpp_precise() {
    let engine = oracle::load_engine(&models::smollm2(), KvType::F32, 2);
    for case in oracle_cases() {
        let precise = &case["precise_config_generation"];
        let theirs = ids(&precise["generated_token_ids"]);
        // Where the two llama.cpp configurations agree, the default run's margins tell near-ties.
        let diverge = precise["first_divergence_index_vs_default"]
            .as_u64()
            .map_or(usize::MAX, |d| d as usize);
        let trusted = first_near_tie(&case, LOGPROB_TOLERANCE).min(diverge);
        let n = theirs.len().min(trusted.saturating_add(1));
        let ours = oracle::greedy(&engine, &ids(&case["prompt_token_ids"]), n);
        oracle::assert_greedy_prefix(
            &ours,
            &theirs,
            trusted,
            &format!("case {} (f32 KV)", case["id"]),
        );
    }
}

#[test]
fn chat_case_reply_is_llama_cpps() {
    let engine = oracle::load_engine(&models::smollm2(), KvType::F16, 2);
    let case = oracle_cases().into_iter().find(|c| c["id"] == "c").unwrap();
    let request = GenerationRequest {
        prompt: ids(&case["prompt_token_ids"]),
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        max_tokens: 64,
        stop: Vec::new(),
        stop_token_ids: Vec::new(),
        ignore_eos: false,
        top_logprobs: None,
        prompt_logprobs: false,
        started_at: std::time::Instant::now(),
        shared_prefix: 0,
    };
    let mut cache = engine.new_cache();
    let out = engine
        .generate(&mut cache, &request, None, &mut NoEvents)
        .unwrap();
    assert_eq!(out.text, "The answer to this classic math problem is 4.");
    assert_eq!(out.finish_reason, smallmind::engine::FinishReason::Stop);
    assert_eq!(out.token_ids, ids(&case["generated_token_ids"]));
}

#[test]
fn perplexity_is_within_one_percent_of_llama_cpp() {
    let text = std::fs::read_to_string(models::oracle_dir().join("ppl-text.txt")).unwrap();
    let anchor: Value = serde_json::from_str(
        &std::fs::read_to_string(models::oracle_dir().join("llamacpp-perplexity.json")).unwrap(),
    )
    .unwrap();
    let expected = anchor["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == MODEL && r["config"] == "precise")
        .unwrap();
    let engine = oracle::load_engine(&models::smollm2(), KvType::F32, 2);
    let tokens = engine.tokenizer.encode(&text, true, false);
    assert_eq!(
        tokens.len() as u64,
        expected["n_tokens"].as_u64().unwrap(),
        "tokenized length"
    );

    const N_CTX: usize = 512;
    let mut nll = 0.0f64;
    let mut scored = 0usize;
    for chunk in tokens.chunks_exact(N_CTX) {
        let mut prompt = chunk.to_vec();
        if engine.tokenizer.add_bos() {
            prompt[0] = engine.tokenizer.bos_id().unwrap();
        }
        let request = GenerationRequest {
            prompt,
            sampling: SamplingParams {
                temperature: 0.0,
                ..SamplingParams::default()
            },
            max_tokens: 0,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            top_logprobs: None,
            prompt_logprobs: true,
            started_at: std::time::Instant::now(),
            shared_prefix: 0,
        };
        let mut cache = engine.new_cache();
        let out = engine
            .generate(&mut cache, &request, None, &mut NoEvents)
            .unwrap();
        for lp in &out.prompt_logprobs[N_CTX / 2 + 1..N_CTX] {
            nll -= lp.unwrap() as f64;
            scored += 1;
        }
    }
    assert_eq!(scored as u64, expected["scored_tokens"].as_u64().unwrap());
    let ppl = (nll / scored as f64).exp();
    let reference = expected["ppl"].as_f64().unwrap();
    eprintln!("perplexity {ppl:.4} (llama.cpp {reference})");
    assert!(
        (ppl / reference - 1.0).abs() < 0.01,
        "perplexity {ppl:.4} is not within 1% of llama.cpp's {reference}"
    );
}

#[test]
fn greedy_output_is_identical_with_one_and_two_threads() {
    let one = oracle::load_engine(&models::smollm2(), KvType::F16, 1);
    let two = oracle::load_engine(&models::smollm2(), KvType::F16, 2);
    let prompt = one.tokenizer.encode("Once upon a time", true, false);
    assert_eq!(
        oracle::last_logits(&one, &prompt),
        oracle::last_logits(&two, &prompt),
        "bit-identical logits"
    );
    assert_eq!(
        oracle::greedy(&one, &prompt, 24),
        oracle::greedy(&two, &prompt, 24)
    );
}
