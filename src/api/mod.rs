//! The JSON shapes of the engine-level C API calls (engine options, info, tokenize,
//! detokenize, raw completion): parsing with unknown fields refused, validation with messages
//! that name the field, and conversion to and from the engine's Rust types.

mod complete;
mod engine;
pub mod options;
mod tokenize;

pub use complete::{
    CompleteRequest, CompletionEvents, TokenLogprobJson, UsageJson, complete, completion_request,
    logprobs_json,
};
pub use engine::{EngineOptionsJson, check_chat_template, info_json, parse_engine_options};
pub use options::{RequestOptions, ResolvedOptions, ResponseFormat, Seed};
pub use tokenize::{detokenize, tokenize};

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// The largest JSON text any call accepts (64 MiB).
pub const MAX_REQUEST_BYTES: usize = 64 << 20;

/// Parses `json` as `T`, mapping serde's message (which names unknown fields and wrong types
/// and says where) to an invalid-JSON error that names what was being parsed and the path of
/// the offending value, e.g. "chat request: messages[0].role: unknown variant `robot`, ...".
pub fn parse<T: DeserializeOwned>(what: &str, json: &str) -> Result<T> {
    if json.len() > MAX_REQUEST_BYTES {
        return Err(Error::invalid_argument(format!(
            "{what} is {} bytes; smallmind reads at most {MAX_REQUEST_BYTES}",
            json.len()
        )));
    }
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || inner.is_syntax() || inner.is_eof() {
            Error::invalid_json(format!("{what}: {inner}"))
        } else {
            Error::invalid_json(format!("{what}: {path}: {inner}"))
        }
    })?;
    deserializer
        .end()
        .map_err(|e| Error::invalid_json(format!("{what}: {e}")))?;
    Ok(value)
}

/// Parses `json`, a JSON object holding the generation options (see [`RequestOptions`])
/// beside the call's own fields `T`: the options are taken out and validated, the rest must
/// be exactly `T`'s fields.
pub fn parse_with_options<T: DeserializeOwned>(
    what: &str,
    json: &str,
) -> Result<(RequestOptions, T)> {
    let value: serde_json::Value = parse(what, json)?;
    let serde_json::Value::Object(mut map) = value else {
        return Err(Error::invalid_json(format!(
            "{what}: must be a JSON object"
        )));
    };
    let options = RequestOptions::take_from(&mut map)
        .map_err(|error| Error::new(error.kind, format!("{what}: {}", error.message)))?;
    let fields = serde_path_to_error::deserialize(serde_json::Value::Object(map)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            Error::invalid_json(format!("{what}: {inner}"))
        } else {
            Error::invalid_json(format!("{what}: {path}: {inner}"))
        }
    })?;
    Ok((options, fields))
}

/// Serializes a response; our own types always serialize, so a failure is a bug.
pub fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| Error::internal(format!("could not serialize the response: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[allow(dead_code)]
        count: u32,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[allow(dead_code)]
        items: Vec<Inner>,
    }

    #[test]
    fn errors_name_the_path_of_the_bad_value() {
        let err = parse::<Outer>("request", r#"{"items": [{"count": 1}, {"count": "two"}]}"#)
            .unwrap_err();
        assert!(
            err.message
                .starts_with("request: items[1].count: invalid type: string \"two\""),
            "{}",
            err.message
        );
        let err = parse::<Outer>("request", r#"{"items": [{"cont": 1}]}"#).unwrap_err();
        assert!(
            err.message
                .contains("items[0].cont: unknown field `cont`, expected `count`"),
            "{}",
            err.message
        );
        let err = parse::<Outer>("request", r#"{"items": [}"#).unwrap_err();
        assert!(
            err.message
                .starts_with("request: expected value at line 1 column 12"),
            "{}",
            err.message
        );
        let err = parse::<Outer>("request", r#"{"items": []} trailing"#).unwrap_err();
        assert!(
            err.message.contains("trailing characters"),
            "{}",
            err.message
        );
    }
}
