//! Hostile model files: copies of a tiny synthetic model with one field made absurd. Each must
//! give an error naming the problem, quickly, and leave the process alive (the issue's four
//! "must show" files among them: a huge block count, a huge context, a template that loops a
//! billion times, a vocabulary of a million empty strings).

#[path = "support/gguf_writer.rs"]
mod gguf_writer;
#[path = "support/models.rs"]
mod models;

use std::path::PathBuf;
use std::sync::Arc;

use gguf_writer::{GgufBuilder, Meta};
use smallmind::ErrorKind;
use smallmind::chat::Chat;
use smallmind::engine::{Engine, EngineOptions, SilentLoad};
use smallmind::gguf::GgufFile;

const BASE: &str = "synth-llama3-q8_0.gguf";

fn base() -> GgufBuilder {
    let path = models::oracle_dir().join("synthetic").join(BASE);
    let file = GgufFile::open(&path, false).expect("the synthetic model parses");
    GgufBuilder::from_file(&file)
}

fn write(name: &str, builder: &GgufBuilder) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("smallmind-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.gguf"));
    std::fs::write(&path, builder.build()).unwrap();
    path
}

fn load(name: &str, builder: &GgufBuilder) -> smallmind::error::Result<Arc<Engine>> {
    let path = write(name, builder);
    let result = Engine::load(&EngineOptions::new(&path), &mut SilentLoad);
    let _ = std::fs::remove_file(&path);
    result
}

fn load_err(name: &str, builder: &GgufBuilder) -> (ErrorKind, String) {
    let start = std::time::Instant::now();
    match load(name, builder) {
        Ok(_) => panic!("{name}: the hostile file loaded"),
        Err(e) => {
            // Reported, not asserted: tests never time things.
            eprintln!(
                "{name}: {:?} after {:?}: {}",
                e.kind,
                start.elapsed(),
                e.message
            );
            (e.kind, e.message)
        }
    }
}

fn arch_key(suffix: &str) -> String {
    format!("llama.{suffix}")
}

#[test]
fn the_unmodified_base_model_loads() {
    let engine = load("base", &base()).expect("the rewritten base model loads");
    assert!(engine.model().expect("weights are loaded").hparams.n_layer >= 1);
}

#[test]
fn a_block_count_of_two_to_the_31_minus_one_is_an_error() {
    let b = base().set(&arch_key("block_count"), Meta::U32((1 << 31) - 1));
    let (kind, message) = load_err("block-count", &b);
    assert_eq!(kind, ErrorKind::ModelLoad);
    assert!(message.contains("block_count"), "{message}");
}

#[test]
fn a_context_length_of_two_to_the_40_is_an_error() {
    let b = base().set(&arch_key("context_length"), Meta::U64(1 << 40));
    let (kind, message) = load_err("context-length", &b);
    assert_eq!(kind, ErrorKind::ModelLoad);
    assert!(message.contains("context_length"), "{message}");
}

#[test]
fn a_vocabulary_of_a_million_empty_strings_is_an_error() {
    let tokens = Meta::Array(8, vec![Meta::Str(String::new()); 1_000_000]);
    let mut b = base().set("tokenizer.ggml.tokens", tokens);
    b.metadata.retain(|(k, _)| {
        k != "tokenizer.ggml.scores"
            && k != "tokenizer.ggml.token_type"
            && k != "tokenizer.ggml.merges"
    });
    let (kind, message) = load_err("empty-vocab", &b);
    assert_eq!(kind, ErrorKind::ModelLoad);
    assert!(message.contains("token"), "{message}");
}

#[test]
fn a_template_that_loops_a_billion_times_fails_to_render() {
    let template =
        "{% for a in range(100000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}";
    let b = base().set("tokenizer.chat_template", Meta::Str(template.into()));
    let engine = load("loop-template", &b).expect("the file itself is valid");
    let chat = Chat::create(engine, None).expect("the template compiles");
    let request = r#"{"messages":[{"role":"user","content":"hi"}]}"#;
    let err = chat
        .render(request)
        .expect_err("a billion iterations rendered");
    assert_eq!(err.kind, ErrorKind::InvalidArgument);
    assert!(
        err.message.contains("steps a render may take"),
        "{}",
        err.message
    );
}

/// Hyperparameters the file declares that no tensor could back, or that would overflow.
#[test]
fn every_absurd_hyperparameter_is_an_error_naming_it() {
    let cases: &[(&str, Meta, &str)] = &[
        (
            "attention.head_count",
            Meta::U32(0),
            "attention.head_count is 0",
        ),
        (
            "attention.head_count",
            Meta::U64(1 << 40),
            "attention.head_count is 1099511627776",
        ),
        (
            "attention.head_count_kv",
            Meta::U32(0),
            "attention.head_count_kv is 0",
        ),
        (
            "attention.head_count",
            Meta::U32(6),
            "not divisible by head_count 6",
        ),
        (
            "attention.key_length",
            Meta::U64(1 << 40),
            "attention.key_length is",
        ),
        ("embedding_length", Meta::U32(0), "embedding_length is 0"),
        (
            "embedding_length",
            Meta::U64(u64::MAX),
            "embedding_length is",
        ),
        (
            "feed_forward_length",
            Meta::U64(1 << 33),
            "feed_forward_length is",
        ),
        ("block_count", Meta::U32(0), "block_count is 0"),
        (
            "block_count",
            Meta::U32(1000),
            "too few for that many blocks",
        ),
        ("context_length", Meta::U32(0), "context_length is 0"),
        (
            "context_length",
            Meta::U32(u32::MAX),
            "context_length is 4294967295",
        ),
        (
            "attention.layer_norm_rms_epsilon",
            Meta::F32(f32::NAN),
            "finite",
        ),
        ("rope.freq_base", Meta::F32(-1.0), "rope.freq_base is -1"),
        (
            "rope.dimension_count",
            Meta::U32(1 << 30),
            "rope.dimension_count",
        ),
    ];
    for (suffix, value, expected) in cases {
        let b = base().set(&arch_key(suffix), value.clone());
        let (kind, message) = load_err(suffix, &b);
        assert_eq!(
            kind,
            ErrorKind::ModelLoad,
            "{suffix} = {value:?}: {message}"
        );
        assert!(
            message.contains(expected),
            "{suffix} = {value:?}: '{message}' does not say '{expected}'"
        );
    }
}

#[test]
fn head_sizes_that_disagree_with_the_tensors_are_an_error_naming_the_tensor() {
    let b = base()
        .set(&arch_key("attention.key_length"), Meta::U32(32))
        .set(&arch_key("attention.value_length"), Meta::U32(32));
    let (kind, message) = load_err("key-length", &b);
    assert_eq!(kind, ErrorKind::ModelLoad);
    assert!(
        message.contains("tensor 'blk.0.attn_q.weight'"),
        "{message}"
    );
}

#[test]
fn an_engine_context_beyond_the_limit_is_an_invalid_argument() {
    let path = write("engine-context", &base());
    let mut options = EngineOptions::new(&path);
    options.context_length = Some(1 << 40);
    let err = Engine::load(&options, &mut SilentLoad).expect_err("a 2^40 context was accepted");
    assert_eq!(err.kind, ErrorKind::InvalidArgument);
    assert!(
        err.message.contains("at most 16777216 positions"),
        "{}",
        err.message
    );
}

/// A panic in the middle of a forward pass (after some layers appended their rows) leaves the
/// KV cache as it was: the next pass on it gives exactly the logits a fresh cache gives.
#[test]
fn a_panicking_forward_pass_rolls_the_kv_cache_back() {
    use smallmind::kernels::ThreadPool;
    use smallmind::model::{ForwardScratch, KvType, Logits, Model, debug};

    let path = models::oracle_dir().join("synthetic").join(BASE);
    let file = Arc::new(GgufFile::open(&path, false).unwrap());
    let pool = ThreadPool::new(2);
    let model = Model::load(file, Some(&pool), &mut |_, _| true).unwrap();
    let mut scratch = ForwardScratch::default();
    let (prefix, next) = ([1u32, 2, 3], [4u32, 5]);
    let run = |cache: &mut _, tokens: &[u32], scratch: &mut _| {
        let mut logits = Vec::new();
        model
            .forward(&pool, tokens, cache, Logits::All, scratch, &mut logits)
            .unwrap();
        logits
    };

    let mut fresh = model.new_cache(KvType::F32, 16);
    run(&mut fresh, &prefix, &mut scratch);
    let expected = run(&mut fresh, &next, &mut scratch);

    let mut cache = model.new_cache(KvType::F32, 16);
    run(&mut cache, &prefix, &mut scratch);
    debug::set_injected_panic(true);
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(&mut cache, &next, &mut scratch)
    }));
    debug::set_injected_panic(false);
    let message = panicked.expect_err("the injected panic fired");
    let message = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(message.contains("injected panic"), "{message}");
    assert_eq!(cache.tokens(), &prefix);
    assert_eq!(run(&mut cache, &next, &mut scratch), expected);
}
