#![allow(dead_code)]
//! Where the tests find their models and oracle data.

use std::path::PathBuf;

/// `tests/oracle`: llama.cpp's reference outputs, kept inside the repository so a plain
/// clone passes its own tests (tests/oracle/README.md says what each file is).
pub fn oracle_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oracle"))
}

fn cache_dir() -> PathBuf {
    match std::env::var_os("SMALLMIND_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/smallmind")
        }
    }
}

fn cached_model(file: &str, fetch_arg: &str) -> PathBuf {
    let path = cache_dir().join(file);
    assert!(
        path.exists(),
        "{} is missing: run `scripts/fetch-model {fetch_arg}` (the README's test command does)",
        path.display()
    );
    path
}

/// llama.cpp's `models/` test data (vocab files, chat templates) and the jinja2 venv, as
/// `scripts/fetch-llamacpp-data` leaves them: (models directory, jinja2's python).
pub fn llamacpp_data() -> (PathBuf, PathBuf) {
    let cache = cache_dir();
    let models = cache.join("llama.cpp-11434/models");
    let python = cache.join("jinja2-venv/bin/python");
    assert!(
        cache.join("llama.cpp-11434/.complete").exists() && python.exists(),
        "llama.cpp's test data is missing from {}: run `scripts/fetch-llamacpp-data` (scripts/test does)",
        cache.display()
    );
    (models, python)
}

/// The default model, SmolLM2-135M-Instruct Q4_1.
pub fn smollm2() -> PathBuf {
    cached_model("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2")
}

/// Gemma 3 270M Q4_K_M.
pub fn gemma3() -> PathBuf {
    cached_model("gemma-3-270m-q4_k_m.gguf", "gemma")
}
