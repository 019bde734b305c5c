//! Arbitrary bytes as a GGUF file: the reader, then the tokenizer and the model built from
//! whatever parses, then (for a model small enough) a forward pass of two tokens. Seeds: the
//! synthetic models of tests/oracle/synthetic.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use smallmind::gguf::GgufFile;
use smallmind::kernels::ThreadPool;
use smallmind::model::{ForwardScratch, KvType, Logits, Model};
use smallmind::tokenizer::Tokenizer;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    let file = Arc::new(file);
    let tokenizer = Tokenizer::from_gguf(&file);
    let pool = ThreadPool::new(1);
    let Ok(model) = Model::load(Arc::clone(&file), Some(&pool), &mut |_, _| true) else {
        return;
    };
    let hp = &model.hparams;
    // The work of one token is about the weights' size, which the input's size bounds.
    if hp.n_layer * (hp.n_embd * (hp.q_dim() + 2 * hp.kv_dim() + 3 * hp.n_ff)) > 1 << 24 {
        return;
    }
    let mut cache = model.new_cache(KvType::F16, 8);
    let mut scratch = ForwardScratch::default();
    let mut logits = Vec::new();
    let n = hp.n_vocab as u32;
    let tokens = [data.len() as u32 % n, 1 % n];
    let _ = model.forward(&pool, &tokens, &mut cache, Logits::All, &mut scratch, &mut logits);
    if let Ok(t) = tokenizer {
        let _ = t.decode(&tokens, true);
    }
});
