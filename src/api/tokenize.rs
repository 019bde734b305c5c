//! Tokenize and detokenize.

use serde::{Deserialize, Serialize};

use super::{parse, to_json};
use crate::engine::Engine;
use crate::error::Result;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenizeRequest {
    text: String,
    /// Add BOS/EOS as the model's metadata asks (default true).
    #[serde(default = "yes")]
    add_special: bool,
    /// Turn special-token text such as "<|im_start|>" into its id (default false, so user
    /// text can never inject control tokens unless the host asks).
    #[serde(default)]
    parse_special: bool,
}

fn yes() -> bool {
    true
}

/// A token's text: a string when its bytes are valid UTF-8 alone, else the raw bytes.
#[derive(Serialize)]
#[serde(untagged)]
enum Piece {
    Text(String),
    Bytes(Vec<u8>),
}

#[derive(Serialize)]
struct TokenizeResponse {
    ids: Vec<u32>,
    pieces: Vec<Piece>,
}

/// `{"text","add_special","parse_special"}` → `{"ids","pieces"}`.
pub fn tokenize(engine: &Engine, json: &str) -> Result<String> {
    let req: TokenizeRequest = parse("tokenize request", json)?;
    let ids = engine
        .tokenizer
        .encode(&req.text, req.add_special, req.parse_special);
    let pieces = ids
        .iter()
        .map(|&id| {
            let bytes = engine.tokenizer.token_to_piece(id, true).to_vec();
            match String::from_utf8(bytes) {
                Ok(s) => Piece::Text(s),
                Err(e) => Piece::Bytes(e.into_bytes()),
            }
        })
        .collect();
    to_json(&TokenizeResponse { ids, pieces })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DetokenizeRequest {
    ids: serde_json::Value,
    /// Include the text of control tokens such as "<|im_end|>" (default false).
    #[serde(default)]
    render_special: bool,
}

#[derive(Serialize)]
struct DetokenizeResponse {
    text: String,
}

/// `{"ids"}` → `{"text"}`. Bytes that do not form valid UTF-8 become U+FFFD.
pub fn detokenize(engine: &Engine, json: &str) -> Result<String> {
    let req: DetokenizeRequest = parse("detokenize request", json)?;
    let ids = super::options::token_ids("ids", &req.ids, engine)?;
    let bytes = engine.tokenizer.decode(&ids, req.render_special);
    to_json(&DetokenizeResponse {
        text: String::from_utf8_lossy(&bytes).into_owned(),
    })
}
