#![allow(dead_code)]
//! Comparisons against llama.cpp's recorded outputs.

use smallmind::engine::{Engine, EngineOptions, GenerationRequest, NoEvents, SilentLoad};
use smallmind::model::{ForwardScratch, KvType, Logits};
use smallmind::sample::SamplingParams;
use std::path::Path;
use std::sync::Arc;

pub fn load_engine(path: &Path, kv_type: KvType, threads: usize) -> Arc<Engine> {
    let mut options = EngineOptions::new(path);
    options.kv_type = kv_type;
    options.threads = Some(threads.min(smallmind::engine::available_cores()));
    Engine::load(&options, &mut SilentLoad).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

/// log-softmax in f64.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    logits.iter().map(|&l| l as f64 - lse).collect()
}

/// Ids of the `k` largest values, largest first.
pub fn top_ids(values: &[f64], k: usize) -> Vec<usize> {
    let mut ids: Vec<usize> = (0..values.len()).collect();
    ids.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    ids.truncate(k);
    ids
}

/// Last-position logits of `tokens` evaluated in one pass from an empty cache.
pub fn last_logits(engine: &Engine, tokens: &[u32]) -> Vec<f32> {
    let mut cache = engine.new_cache();
    let mut scratch = ForwardScratch::default();
    let mut logits = Vec::new();
    engine
        .model
        .forward(engine.pool(), tokens, &mut cache, Logits::Last, &mut scratch, &mut logits)
        .expect("forward pass");
    logits
}

/// Asserts: same top-1 as the oracle, and the oracle's top-`k` log-probabilities within `tol`.
pub fn assert_logprobs_close(ours: &[f32], oracle_logprobs: &[f64], k: usize, tol: f64, what: &str) {
    let mine = log_softmax(ours);
    let their_top = top_ids(oracle_logprobs, k);
    let my_top = top_ids(&mine, 1)[0];
    assert_eq!(my_top, their_top[0], "{what}: top-1 token differs");
    let mut worst = 0.0f64;
    for &id in &their_top {
        let diff = (mine[id] - oracle_logprobs[id]).abs();
        worst = worst.max(diff);
        assert!(
            diff <= tol,
            "{what}: logprob of token {id} is {:.4}, llama.cpp has {:.4} (|Δ| {diff:.4} > {tol})",
            mine[id],
            oracle_logprobs[id]
        );
    }
    eprintln!("{what}: top-{k} max |Δ logprob| = {worst:.5}");
}

/// Greedy generation of `n` tokens.
pub fn greedy(engine: &Engine, prompt: &[u32], n: usize) -> Vec<u32> {
    let request = GenerationRequest {
        prompt: prompt.to_vec(),
        sampling: SamplingParams { temperature: 0.0, ..SamplingParams::default() },
        max_tokens: n,
        stop: Vec::new(),
        stop_token_ids: Vec::new(),
        ignore_eos: false,
        top_logprobs: None,
        prompt_logprobs: false,
    };
    let mut cache = engine.new_cache();
    engine.generate(&mut cache, &request, &mut NoEvents).expect("generation").token_ids
}

/// Asserts that `ours` equals `theirs` up to (not including) step `trusted_steps`, and that
/// wherever they stop agreeing is at or after it.
pub fn assert_greedy_prefix(ours: &[u32], theirs: &[u32], trusted_steps: usize, what: &str) {
    let n = trusted_steps.min(theirs.len());
    let agree = ours.iter().zip(theirs).take_while(|(a, b)| a == b).count();
    assert!(
        agree >= n.min(ours.len()),
        "{what}: greedy tokens diverge at step {agree}, before the first near-tie at step {trusted_steps}\n ours:   {ours:?}\n theirs: {theirs:?}"
    );
    eprintln!("{what}: {agree} greedy tokens agree (near-tie at step {trusted_steps})");
}
