//! The generation options every call takes: a raw completion, a chat send, and the defaults a
//! chat is created with. One type, parsed and validated here, with one rule for bad values: a
//! value of the wrong JSON type is `INVALID_JSON`, a value of the right type outside its range
//! (a negative count, a fraction where an integer is needed, an unknown name) is
//! `INVALID_ARGUMENT`, and every message names the field and says what is valid.

use serde_json::{Map, Value};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::sample::SamplingParams;

/// `max_tokens` when neither the request nor the chat options give one, for every call.
pub(crate) const DEFAULT_MAX_TOKENS: usize = 512;
/// More alternatives than this per token is a mistake, not a use case.
pub(crate) const MAX_TOP_LOGPROBS: usize = 100;
/// Seeds, given or drawn, stay below 2^53 so that JSON readers that parse numbers as doubles
/// (JavaScript, some .NET setups) read them back exactly.
pub(crate) const MAX_SEED: u64 = (1 << 53) - 1;

/// The JSON names of the option fields, in the order they are documented.
pub(crate) const OPTION_FIELDS: [&str; 15] = [
    "max_tokens",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repeat_penalty",
    "repeat_last_n",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stop",
    "stop_token_ids",
    "ignore_eos",
    "logprobs",
    "response_format",
];

/// Where the random generator starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seed {
    /// A new seed for every call (`-1`, as in llama.cpp); the response says which.
    Random,
    Fixed(u64),
}

/// What shape the reply must have.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ResponseFormat {
    /// Free text (the default).
    #[default]
    Text,
    /// Any JSON object.
    JsonObject,
    /// One JSON value valid against `schema`.
    JsonSchema {
        name: String,
        schema: Value,
        strict: bool,
    },
}

impl ResponseFormat {
    /// The JSON schema the reply must satisfy, if any (`json_object` is `{"type":"object"}`).
    pub fn schema(&self) -> Option<Value> {
        match self {
            ResponseFormat::Text => None,
            ResponseFormat::JsonObject => Some(serde_json::json!({"type": "object"})),
            ResponseFormat::JsonSchema { schema, .. } => Some(schema.clone()),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            ResponseFormat::Text => serde_json::json!({"type": "text"}),
            ResponseFormat::JsonObject => serde_json::json!({"type": "json_object"}),
            ResponseFormat::JsonSchema {
                name,
                schema,
                strict,
            } => serde_json::json!({
                "type": "json_schema",
                "json_schema": {"name": name, "schema": schema, "strict": strict}
            }),
        }
    }
}

/// The option fields of one request, validated; `None` where the request gave none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestOptions {
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_k: Option<u32>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<usize>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<Seed>,
    pub stop: Option<Vec<String>>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub ignore_eos: Option<bool>,
    pub logprobs: Option<usize>,
    pub response_format: Option<ResponseFormat>,
}

/// Everything generation needs, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedOptions {
    /// With the seed chosen (drawn when the options asked for a random one).
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub top_logprobs: Option<usize>,
    pub response_format: ResponseFormat,
}

fn wrong_type(field: &str, expected: &str, value: &Value) -> Error {
    Error::invalid_json(format!(
        "{field} must be {expected}, not {}",
        describe(value)
    ))
}

fn out_of_range(field: &str, value: impl std::fmt::Display, valid: &str) -> Error {
    Error::invalid_argument(format!("{field} is {value}; it must be {valid}"))
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) if s.len() <= 40 => format!("the string \"{s}\""),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// An integer in `min..=max`; `valid` says so in words.
fn integer(field: &str, value: &Value, min: i128, max: i128, valid: &str) -> Result<i128> {
    let Value::Number(number) = value else {
        return Err(wrong_type(field, "an integer", value));
    };
    let n = if let Some(n) = number.as_i64() {
        i128::from(n)
    } else if let Some(n) = number.as_u64() {
        i128::from(n)
    } else {
        return Err(out_of_range(field, number, valid));
    };
    if n < min || n > max {
        return Err(out_of_range(field, n, valid));
    }
    Ok(n)
}

fn float(field: &str, value: &Value) -> Result<f32> {
    match value {
        Value::Number(n) => Ok(n.as_f64().map_or(f32::NAN, |x| x as f32)),
        _ => Err(wrong_type(field, "a number", value)),
    }
}

fn boolean(field: &str, value: &Value) -> Result<bool> {
    value
        .as_bool()
        .ok_or_else(|| wrong_type(field, "true or false", value))
}

fn strings(field: &str, value: &Value) -> Result<Vec<String>> {
    let expected = "a string or a list of strings";
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| wrong_type(&format!("{field} entries"), "strings", item))
            })
            .collect(),
        _ => Err(wrong_type(field, expected, value)),
    }
}

/// A list of token ids of `engine`'s vocabulary (`field` names it in errors).
pub fn token_ids(field: &str, value: &Value, engine: &Engine) -> Result<Vec<u32>> {
    let Value::Array(items) = value else {
        return Err(wrong_type(field, "a list of token ids", value));
    };
    let n_vocab = engine.tokenizer.n_vocab();
    let valid = format!("a token id from 0 to {}", n_vocab.saturating_sub(1));
    items
        .iter()
        .map(|item| {
            integer(
                &format!("{field} entries"),
                item,
                0,
                n_vocab as i128 - 1,
                &valid,
            )
            .map(|id| id as u32)
        })
        .collect()
}

fn response_format(value: &Value) -> Result<ResponseFormat> {
    let field = "response_format";
    let Value::Object(map) = value else {
        return Err(wrong_type(
            field,
            "an object such as {\"type\": \"json_object\"}",
            value,
        ));
    };
    let kind = match map.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(other) => return Err(wrong_type("response_format.type", "a string", other)),
        None => {
            return Err(Error::invalid_json(
                "response_format needs \"type\": \"text\", \"json_object\" or \"json_schema\"",
            ));
        }
    };
    let allowed: &[&str] = if kind == "json_schema" {
        &["type", "json_schema"]
    } else {
        &["type"]
    };
    if let Some(unknown) = map.keys().find(|key| !allowed.contains(&key.as_str())) {
        return Err(Error::invalid_json(format!(
            "response_format of type \"{kind}\" has an unknown field \"{unknown}\" (it takes {})",
            allowed.join(", ")
        )));
    }
    match kind {
        "text" => Ok(ResponseFormat::Text),
        "json_object" => Ok(ResponseFormat::JsonObject),
        "json_schema" => {
            let Some(spec) = map.get("json_schema") else {
                return Err(Error::invalid_json(
                    "response_format of type \"json_schema\" needs \"json_schema\": {\"name\", \"schema\", \"strict\"}",
                ));
            };
            let Value::Object(spec) = spec else {
                return Err(wrong_type("response_format.json_schema", "an object", spec));
            };
            let known = ["name", "description", "schema", "strict"];
            if let Some(unknown) = spec.keys().find(|key| !known.contains(&key.as_str())) {
                return Err(Error::invalid_json(format!(
                    "response_format.json_schema has an unknown field \"{unknown}\" (it takes name, description, schema, strict)"
                )));
            }
            let name = match spec.get("name") {
                Some(Value::String(name)) if !name.is_empty() => name.clone(),
                Some(Value::String(_)) => {
                    return Err(Error::invalid_argument(
                        "response_format.json_schema.name is empty; give the schema a name",
                    ));
                }
                Some(other) => {
                    return Err(wrong_type(
                        "response_format.json_schema.name",
                        "a string",
                        other,
                    ));
                }
                None => {
                    return Err(Error::invalid_json(
                        "response_format.json_schema needs a \"name\"",
                    ));
                }
            };
            if let Some(description) = spec.get("description")
                && !description.is_string()
            {
                return Err(wrong_type(
                    "response_format.json_schema.description",
                    "a string",
                    description,
                ));
            }
            let schema = match spec.get("schema") {
                Some(schema @ (Value::Object(_) | Value::Bool(_))) => schema.clone(),
                Some(other) => {
                    return Err(wrong_type(
                        "response_format.json_schema.schema",
                        "a JSON schema (an object)",
                        other,
                    ));
                }
                None => {
                    return Err(Error::invalid_json(
                        "response_format.json_schema needs a \"schema\"",
                    ));
                }
            };
            let strict = match spec.get("strict") {
                None | Some(Value::Null) => false,
                Some(value) => boolean("response_format.json_schema.strict", value)?,
            };
            Ok(ResponseFormat::JsonSchema {
                name,
                schema,
                strict,
            })
        }
        other => Err(Error::invalid_argument(format!(
            "response_format.type is \"{other}\"; use \"text\", \"json_object\" or \"json_schema\""
        ))),
    }
}

impl RequestOptions {
    /// Removes the option fields from `map` (a request or the chat options) and validates
    /// them; what is left is the call's own fields. `null` counts as not given.
    pub fn take_from(map: &mut Map<String, Value>) -> Result<Self> {
        let mut options = RequestOptions::default();
        for field in OPTION_FIELDS {
            let Some(value) = map.remove(field) else {
                continue;
            };
            if value.is_null() {
                continue;
            }
            options.set(field, &value)?;
        }
        Ok(options)
    }

    fn set(&mut self, field: &str, value: &Value) -> Result<()> {
        const U32: i128 = u32::MAX as i128;
        match field {
            "max_tokens" => {
                self.max_tokens = Some(integer(
                    field,
                    value,
                    0,
                    U32,
                    "a positive number of tokens (0, in completions only, scores the prompt)",
                )? as usize)
            }
            "temperature" => self.temperature = Some(float(field, value)?),
            "top_k" => {
                self.top_k = Some(integer(
                    field,
                    value,
                    0,
                    U32,
                    "0 (off) or a positive number of tokens",
                )? as u32)
            }
            "top_p" => self.top_p = Some(float(field, value)?),
            "min_p" => self.min_p = Some(float(field, value)?),
            "repeat_penalty" => self.repeat_penalty = Some(float(field, value)?),
            "repeat_last_n" => {
                self.repeat_last_n = Some(integer(
                    field,
                    value,
                    0,
                    U32,
                    "0 (penalties off) or a positive number of tokens",
                )? as usize)
            }
            "presence_penalty" => self.presence_penalty = Some(float(field, value)?),
            "frequency_penalty" => self.frequency_penalty = Some(float(field, value)?),
            "seed" => {
                let seed = integer(
                    field,
                    value,
                    -1,
                    MAX_SEED as i128,
                    "-1 (a new random seed for every call) or an integer from 0 to 9007199254740991 (2^53 - 1)",
                )?;
                self.seed = Some(if seed < 0 {
                    Seed::Random
                } else {
                    Seed::Fixed(seed as u64)
                });
            }
            "stop" => {
                let stop = strings(field, value)?;
                if stop.iter().any(String::is_empty) {
                    return Err(Error::invalid_argument(
                        "stop contains an empty string, which would stop at once; remove it",
                    ));
                }
                self.stop = Some(stop);
            }
            "stop_token_ids" => {
                let Value::Array(items) = value else {
                    return Err(wrong_type(field, "a list of token ids", value));
                };
                self.stop_token_ids = Some(
                    items
                        .iter()
                        .map(|item| {
                            integer(
                                "stop_token_ids entries",
                                item,
                                0,
                                U32,
                                "token ids (0 or more)",
                            )
                            .map(|id| id as u32)
                        })
                        .collect::<Result<_>>()?,
                );
            }
            "ignore_eos" => self.ignore_eos = Some(boolean(field, value)?),
            "logprobs" => {
                self.logprobs = Some(integer(
                    field,
                    value,
                    0,
                    MAX_TOP_LOGPROBS as i128,
                    "0 (only the chosen token's) to 100 alternatives per token",
                )? as usize)
            }
            "response_format" => self.response_format = Some(response_format(value)?),
            _ => unreachable!("every option field has a parser"),
        }
        Ok(())
    }

    /// These options where given, `base` elsewhere.
    pub fn over(&self, base: &RequestOptions) -> RequestOptions {
        RequestOptions {
            max_tokens: self.max_tokens.or(base.max_tokens),
            temperature: self.temperature.or(base.temperature),
            top_k: self.top_k.or(base.top_k),
            top_p: self.top_p.or(base.top_p),
            min_p: self.min_p.or(base.min_p),
            repeat_penalty: self.repeat_penalty.or(base.repeat_penalty),
            repeat_last_n: self.repeat_last_n.or(base.repeat_last_n),
            presence_penalty: self.presence_penalty.or(base.presence_penalty),
            frequency_penalty: self.frequency_penalty.or(base.frequency_penalty),
            seed: self.seed.or(base.seed),
            stop: self.stop.clone().or_else(|| base.stop.clone()),
            stop_token_ids: self
                .stop_token_ids
                .clone()
                .or_else(|| base.stop_token_ids.clone()),
            ignore_eos: self.ignore_eos.or(base.ignore_eos),
            logprobs: self.logprobs.or(base.logprobs),
            response_format: self
                .response_format
                .clone()
                .or_else(|| base.response_format.clone()),
        }
    }

    /// The fields that were given, as JSON (for exports: `take_from` reads them back).
    pub fn to_json_map(&self) -> Map<String, Value> {
        let mut map = Map::new();
        let mut put = |field: &str, value: Option<Value>| {
            if let Some(value) = value {
                map.insert(field.to_string(), value);
            }
        };
        put("max_tokens", self.max_tokens.map(Value::from));
        put("temperature", self.temperature.map(Value::from));
        put("top_k", self.top_k.map(Value::from));
        put("top_p", self.top_p.map(Value::from));
        put("min_p", self.min_p.map(Value::from));
        put("repeat_penalty", self.repeat_penalty.map(Value::from));
        put("repeat_last_n", self.repeat_last_n.map(Value::from));
        put("presence_penalty", self.presence_penalty.map(Value::from));
        put("frequency_penalty", self.frequency_penalty.map(Value::from));
        put(
            "seed",
            self.seed.map(|seed| match seed {
                Seed::Random => Value::from(-1),
                Seed::Fixed(seed) => Value::from(seed),
            }),
        );
        put("stop", self.stop.clone().map(Value::from));
        put(
            "stop_token_ids",
            self.stop_token_ids.clone().map(Value::from),
        );
        put("ignore_eos", self.ignore_eos.map(Value::from));
        put("logprobs", self.logprobs.map(Value::from));
        put(
            "response_format",
            self.response_format.as_ref().map(ResponseFormat::to_json),
        );
        map
    }

    /// Checks everything that needs the model or the combination of fields, and fills in the
    /// defaults; a random seed is drawn here.
    pub fn resolve(&self, engine: &Engine) -> Result<ResolvedOptions> {
        let defaults = SamplingParams::default();
        let sampling = SamplingParams {
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_k: self.top_k.unwrap_or(defaults.top_k),
            top_p: self.top_p.unwrap_or(defaults.top_p),
            min_p: self.min_p.unwrap_or(defaults.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(defaults.repeat_penalty),
            repeat_last_n: self.repeat_last_n.unwrap_or(defaults.repeat_last_n),
            presence_penalty: self.presence_penalty.unwrap_or(defaults.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(defaults.frequency_penalty),
            seed: match self.seed {
                Some(Seed::Fixed(seed)) => seed,
                None | Some(Seed::Random) => random_seed(),
            },
        };
        sampling.validate()?;
        let n_vocab = engine.tokenizer.n_vocab();
        let stop_token_ids = self.stop_token_ids.clone().unwrap_or_default();
        if let Some(bad) = stop_token_ids.iter().find(|&&id| id as usize >= n_vocab) {
            return Err(Error::invalid_argument(format!(
                "stop_token_ids contains {bad}, but the vocabulary has {n_vocab} tokens (ids 0..{})",
                n_vocab - 1
            )));
        }
        let response_format = self.response_format.clone().unwrap_or_default();
        let stop = self.stop.clone().unwrap_or_default();
        if response_format != ResponseFormat::Text && !stop.is_empty() {
            return Err(Error::invalid_argument(
                "stop cannot be combined with a JSON response_format: the schema decides where the reply ends; remove stop",
            ));
        }
        Ok(ResolvedOptions {
            sampling,
            max_tokens: self.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
            stop,
            stop_token_ids,
            ignore_eos: self.ignore_eos.unwrap_or(false),
            top_logprobs: self.logprobs,
            response_format,
        })
    }
}

/// A seed for requests that give none (or -1): different for every request, below 2^53, and
/// reported in the response so a run can be reproduced.
pub fn random_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mixed = (nanos ^ COUNTER.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed))
        .wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (mixed >> 11) & MAX_SEED
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use serde_json::json;

    fn take(request: Value) -> Result<RequestOptions> {
        let Value::Object(mut map) = request else {
            panic!("an object")
        };
        RequestOptions::take_from(&mut map)
    }

    #[test]
    fn negative_and_fractional_counts_are_invalid_arguments_naming_the_field() {
        for (request, field) in [
            (json!({"top_k": -1}), "top_k"),
            (json!({"logprobs": -1}), "logprobs"),
            (json!({"logprobs": 101}), "logprobs"),
            (json!({"stop_token_ids": [-1]}), "stop_token_ids"),
            (json!({"max_tokens": -5}), "max_tokens"),
            (json!({"max_tokens": 1.5}), "max_tokens"),
            (json!({"repeat_last_n": -1}), "repeat_last_n"),
            (json!({"seed": -2}), "seed"),
            (json!({"seed": 9007199254740992u64}), "seed"),
            (
                json!({"response_format": {"type": "xml"}}),
                "response_format.type",
            ),
        ] {
            let error = take(request.clone()).unwrap_err();
            assert_eq!(error.kind, ErrorKind::InvalidArgument, "{request}");
            assert!(
                error.message.starts_with(field),
                "{request}: {}",
                error.message
            );
            assert!(error.message.contains("must be") || error.message.contains("use"));
            assert!(!error.message.contains("u64") && !error.message.contains("enum"));
        }
    }

    #[test]
    fn wrong_types_are_invalid_json_without_rust_type_names() {
        for (request, field) in [
            (json!({"temperature": "hot"}), "temperature"),
            (json!({"stop": 5}), "stop"),
            (json!({"stop": ["a", 5]}), "stop entries"),
            (json!({"ignore_eos": 1}), "ignore_eos"),
            (json!({"seed": "x"}), "seed"),
            (json!({"response_format": "json"}), "response_format"),
            (
                json!({"response_format": {"type": "json_schema"}}),
                "response_format",
            ),
        ] {
            let error = take(request.clone()).unwrap_err();
            assert_eq!(error.kind, ErrorKind::InvalidJson, "{request}");
            assert!(
                error.message.starts_with(field),
                "{request}: {}",
                error.message
            );
            assert!(
                !error.message.contains("StopField") && !error.message.contains("untagged"),
                "{}",
                error.message
            );
        }
    }

    #[test]
    fn seeds_minus_one_is_random_and_drawn_seeds_fit_a_double() {
        let options = take(json!({"seed": -1, "stop": "x", "top_k": 5})).unwrap();
        assert_eq!(options.seed, Some(Seed::Random));
        assert_eq!(options.stop, Some(vec!["x".to_string()]));
        assert_eq!(options.top_k, Some(5));
        for _ in 0..1000 {
            let seed = random_seed();
            assert!(seed <= MAX_SEED);
            assert_eq!(seed as f64 as u64, seed);
        }
        let fixed = take(json!({"seed": MAX_SEED})).unwrap();
        assert_eq!(fixed.seed, Some(Seed::Fixed(MAX_SEED)));
    }

    #[test]
    fn the_request_overrides_the_defaults_and_exports_round_trip() {
        let defaults =
            take(json!({"temperature": 0.5, "stop": ["END"], "max_tokens": 20})).unwrap();
        let request = take(json!({"temperature": 0.0, "logprobs": 2})).unwrap();
        let merged = request.over(&defaults);
        assert_eq!(merged.temperature, Some(0.0));
        assert_eq!(merged.stop, Some(vec!["END".to_string()]));
        assert_eq!((merged.max_tokens, merged.logprobs), (Some(20), Some(2)));
        let format = json!({"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}, "strict": true}});
        let full =
            take(json!({"seed": -1, "response_format": format, "ignore_eos": true})).unwrap();
        assert_eq!(take(Value::Object(full.to_json_map())).unwrap(), full);
    }

    #[test]
    fn other_fields_stay_for_the_call() {
        let Value::Object(mut map) = json!({"prompt": "x", "top_p": 0.5}) else {
            unreachable!()
        };
        let options = RequestOptions::take_from(&mut map).unwrap();
        assert_eq!(options.top_p, Some(0.5));
        assert_eq!(map.keys().collect::<Vec<_>>(), ["prompt"]);
    }
}
