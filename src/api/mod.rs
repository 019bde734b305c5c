//! The JSON shapes of the engine-level C API calls (engine options, info, tokenize,
//! detokenize, raw completion): parsing with unknown fields refused, validation with messages
//! that name the field, and conversion to and from the engine's Rust types.

mod complete;
mod engine;
mod tokenize;

pub use complete::{CompleteRequest, UsageJson, complete, sampling_params};
pub use engine::{EngineOptionsJson, info_json, parse_engine_options};
pub use tokenize::{detokenize, tokenize};

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Parses `json` as `T`, mapping serde's message (which names unknown fields and wrong types
/// and says where) to an invalid-JSON error that names what was being parsed.
pub fn parse<T: DeserializeOwned>(what: &str, json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| Error::invalid_json(format!("{what}: {e}")))
}

/// Serializes a response; our own types always serialize, so a failure is a bug.
pub fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| Error::internal(format!("could not serialize the response: {e}")))
}
