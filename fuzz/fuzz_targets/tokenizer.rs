//! Arbitrary bytes through the tokenizers: encode as text (special tokens parsed or not),
//! decode as ids, and the streaming decoder on the pieces and on the raw bytes. Round trip:
//! text without special tokens decodes back to itself. The byte-level BPE of the synthetic
//! models always; SmolLM2's BPE and Gemma 3's SentencePiece when they are in the model cache.
#![no_main]

#[path = "common.rs"]
mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use smallmind::gguf::GgufFile;
use smallmind::tokenizer::{StreamDecoder, Tokenizer};

fn tokenizers() -> &'static [Tokenizer] {
    static ALL: OnceLock<Vec<Tokenizer>> = OnceLock::new();
    ALL.get_or_init(|| {
        let cache = std::env::var_os("SMALLMIND_CACHE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/smallmind")));
        let mut paths = vec![common::synthetic("synth-llama3-q8_0.gguf")];
        if let Some(cache) = cache {
            for name in ["SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"] {
                if cache.join(name).exists() {
                    paths.push(cache.join(name));
                }
            }
        }
        paths
            .iter()
            .map(|p| {
                let file = GgufFile::open(p, true).expect("the model parses");
                Tokenizer::from_gguf(&file).expect("its tokenizer loads")
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let all = tokenizers();
    let t = &all[flags as usize % all.len()];
    let parse_special = flags & 0x10 != 0;
    let add_special = flags & 0x20 != 0;

    let text = String::from_utf8_lossy(rest);
    let ids = t.encode(&text, add_special, parse_special);
    if !parse_special && !add_special {
        let back = t.decode(&ids, false);
        // SentencePiece may drop the leading space it adds; compare what it must keep.
        let back = String::from_utf8_lossy(&back);
        assert!(
            back.trim_start() == text.trim_start() || back == text,
            "round trip: {text:?} -> {ids:?} -> {back:?}"
        );
    }

    // The bytes as ids, valid or not.
    let n = t.n_vocab() as u32;
    let raw_ids: Vec<u32> = rest
        .chunks(2)
        .map(|c| u32::from(c[0]) | u32::from(*c.get(1).unwrap_or(&0)) << 8)
        .collect();
    let in_range: Vec<u32> = raw_ids.iter().map(|&id| id % n).collect();
    let mut stream = StreamDecoder::new();
    let mut streamed = String::new();
    for &id in &in_range {
        streamed.push_str(&stream.push(t.token_to_piece(id, flags & 0x40 != 0)));
    }
    streamed.push_str(&stream.finish());
    let whole = t.decode(&in_range, flags & 0x40 != 0);
    assert_eq!(streamed, String::from_utf8_lossy(&whole), "streamed text differs from decode");
    let _ = t.decode(&raw_ids, true);
    for &id in &raw_ids {
        let _ = t.token_to_piece(id, true);
        let _ = t.token_text(id);
    }

    // The raw bytes split at arbitrary points.
    let mut stream = StreamDecoder::new();
    let mut out = String::new();
    for chunk in rest.chunks((flags as usize % 7) + 1) {
        out.push_str(&stream.push(chunk));
    }
    out.push_str(&stream.finish());
    assert_eq!(out, String::from_utf8_lossy(rest));
});
