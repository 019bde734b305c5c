//! Structured output: constraints built with llguidance (JSON schemas, lark grammars) that the
//! generation loop applies through [`TokenConstraint`], and the validation of finished replies.
//!
//! llguidance needs a token trie of the engine's vocabulary. It is built once per engine, on the
//! first constrained request (about a second for a 262,144-token vocabulary), and kept until the
//! engine is dropped; [`constraint_environment_build_ms`] reports how long it took.

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{InferenceCapabilities, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::sample::{TokenConstraint, TokenMask};

/// Our tokenizer as llguidance sees it: the bytes of every token, control tokens marked as
/// special (llguidance's `\xff` prefix, so a grammar can name them and text never matches them).
struct TokenEnvironment {
    trie: TokTrie,
    /// Not an `Arc`: the environment is cached beside the engine and must not keep it alive.
    engine: Weak<Engine>,
}

impl TokenizerEnv for TokenEnvironment {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, bytes: &[u8]) -> Vec<u32> {
        match (self.engine.upgrade(), std::str::from_utf8(bytes)) {
            (Some(engine), Ok(text)) => engine.tokenizer.encode(text, false, false),
            _ => self.trie.greedy_tokenize(bytes),
        }
    }

    fn tokenize_is_canonical(&self) -> bool {
        // Forced tokens are not used; llguidance then relies on masks alone.
        false
    }
}

/// What is built once per engine.
struct Environment {
    factory: ParserFactory,
    build_ms: f64,
}

type Slot = Arc<OnceLock<std::result::Result<Arc<Environment>, String>>>;

/// One slot per live engine. Entries of dropped engines are removed on the next lookup.
type Registry = Mutex<Vec<(Weak<Engine>, Slot)>>;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(Vec::new()))
}

fn slot_of(engine: &Arc<Engine>) -> Slot {
    let mut slots = registry()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    slots.retain(|(weak, _)| weak.strong_count() > 0);
    let weak = Arc::downgrade(engine);
    if let Some((_, slot)) = slots.iter().find(|(w, _)| Weak::ptr_eq(w, &weak)) {
        return Arc::clone(slot);
    }
    let slot = Slot::default();
    slots.push((weak, Arc::clone(&slot)));
    slot
}

/// The engine's llguidance environment, built on first use. Two threads asking at once build
/// it once; the second waits for the first.
fn environment(engine: &Arc<Engine>) -> Result<Arc<Environment>> {
    let slot = slot_of(engine);
    slot.get_or_init(|| build_environment(engine))
        .clone()
        .map_err(|reason| {
            Error::internal(format!(
                "the token trie for constrained decoding could not be built: {reason}"
            ))
        })
}

/// How long building the engine's token trie and constraint factory took, in milliseconds;
/// `None` until the first constrained request on this engine.
pub fn constraint_environment_build_ms(engine: &Engine) -> Option<f64> {
    let slots = registry()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (_, slot) = slots
        .iter()
        .find(|(weak, _)| std::ptr::eq(weak.as_ptr(), engine))?;
    slot.get()
        .and_then(|built| built.as_ref().ok())
        .map(|environment| environment.build_ms)
}

fn build_environment(engine: &Arc<Engine>) -> std::result::Result<Arc<Environment>, String> {
    let start = Instant::now();
    let tokenizer = &engine.tokenizer;
    let n_vocab = tokenizer.n_vocab();
    let words: Vec<Vec<u8>> = (0..n_vocab as u32)
        .map(|id| {
            if tokenizer.is_control(id) {
                let mut word = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                word.extend_from_slice(tokenizer.token_text(id).unwrap_or("").as_bytes());
                word
            } else {
                tokenizer.token_to_piece(id, false).to_vec()
            }
        })
        .collect();
    let end_of_generation: Vec<u32> = tokenizer.end_of_generation_ids().collect();
    let Some(&eos) = tokenizer.eos_id().as_ref().or(end_of_generation.first()) else {
        return Err("the vocabulary has no end-of-generation token".into());
    };
    let mut info = TokRxInfo::new(
        u32::try_from(n_vocab).map_err(|_| "the vocabulary is too large")?,
        eos,
    );
    info.tok_bos = tokenizer.bos_id();
    let mut trie = TokTrie::from(&info, &words);
    if !end_of_generation.is_empty() {
        trie = trie.with_eos_tokens(&end_of_generation);
    }
    let environment: TokEnv = Arc::new(TokenEnvironment {
        trie,
        engine: Arc::downgrade(engine),
    });
    let mut factory = ParserFactory::new(
        &environment,
        InferenceCapabilities::default(),
        &llguidance::earley::SlicedBiasComputer::general_slices(),
    )
    .map_err(|error| error.to_string())?;
    factory.quiet();
    Ok(Arc::new(Environment {
        factory,
        build_ms: start.elapsed().as_secs_f64() * 1000.0,
    }))
}

/// A constraint that makes the output one JSON value valid against `schema`, in compact form
/// (no whitespace between tokens). Keywords llguidance cannot enforce, a remote `$ref` and a
/// malformed schema are `INVALID_ARGUMENT` with llguidance's reason, before any generation.
pub fn json_schema_constraint(
    engine: &Arc<Engine>,
    schema: &Value,
) -> Result<Box<dyn TokenConstraint>> {
    if !schema.is_object() && !schema.is_boolean() {
        return Err(Error::invalid_argument(format!(
            "the JSON schema must be an object (or true/false), not {}",
            json_kind(schema)
        )));
    }
    let mut schema = schema.clone();
    if let Value::Object(map) = &mut schema {
        if map.contains_key("x-guidance") {
            return Err(Error::invalid_argument(
                "the JSON schema uses the keyword 'x-guidance', which is reserved; remove it",
            ));
        }
        map.insert(
            "x-guidance".into(),
            serde_json::json!({ "whitespace_flexible": false, "lenient": false }),
        );
    }
    let grammar = TopLevelGrammar::from_json_schema(schema);
    let constraint = constraint_from(engine, grammar).map_err(|reason| {
        Error::invalid_argument(format!("the JSON schema cannot be enforced: {reason}"))
    })?;
    Ok(Box::new(constraint))
}

/// A constraint from an llguidance lark grammar; `%json { ... }` embeds a JSON schema
/// (see llguidance's documentation of its lark syntax). A grammar that does not compile is
/// `INVALID_ARGUMENT` with llguidance's reason.
pub fn lark_constraint(engine: &Arc<Engine>, grammar: &str) -> Result<Box<dyn TokenConstraint>> {
    let grammar = TopLevelGrammar::from_lark(grammar.to_string());
    let constraint = constraint_from(engine, grammar).map_err(|reason| {
        Error::invalid_argument(format!("the grammar cannot be used: {reason}"))
    })?;
    Ok(Box::new(constraint))
}

fn constraint_from(
    engine: &Arc<Engine>,
    grammar: TopLevelGrammar,
) -> std::result::Result<LlgConstraint, String> {
    let environment = environment(engine).map_err(|error| error.message)?;
    let parser = environment
        .factory
        .create_parser(grammar)
        .map_err(|error| error.to_string())?;
    let mut matcher = Matcher::new(Ok(parser));
    if let Some(error) = matcher.get_error() {
        return Err(error);
    }
    let accepting = matcher.is_accepting().map_err(|error| error.to_string())?;
    Ok(LlgConstraint { matcher, accepting })
}

/// An llguidance matcher behind the generation loop's constraint seam.
struct LlgConstraint {
    matcher: Matcher,
    /// `matcher.is_accepting()` after the last accepted token (it needs `&mut`).
    accepting: bool,
}

impl TokenConstraint for LlgConstraint {
    fn compute_mask(&mut self, mask: &mut TokenMask) -> std::result::Result<(), String> {
        let allowed = self
            .matcher
            .compute_mask()
            .map_err(|error| error.to_string())?;
        mask.set_from_u32_words(allowed.as_slice());
        Ok(())
    }

    fn accept_token(&mut self, token: u32) -> std::result::Result<(), String> {
        self.matcher
            .consume_token(token)
            .map_err(|error| error.to_string())?;
        self.accepting = self
            .matcher
            .is_accepting()
            .map_err(|error| error.to_string())?;
        Ok(())
    }

    fn may_stop(&self) -> bool {
        self.accepting || self.matcher.is_stopped()
    }

    fn must_stop(&self) -> bool {
        self.matcher.is_stopped()
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks `value` against `schema` with an independent JSON Schema validator (the
/// `jsonschema` crate, whose draft is taken from `$schema`, 2020-12 by default): the second
/// line of defence after constrained decoding. The error names the first failing place.
pub fn validate_json_against_schema(
    schema: &Value,
    value: &Value,
) -> std::result::Result<(), String> {
    let validator = jsonschema::validator_for(schema)
        .map_err(|error| format!("the schema does not compile for validation: {error}"))?;
    match validator.iter_errors(value).next() {
        None => Ok(()),
        Some(error) => Err(format!(
            "the value at '{}' does not match the schema: {error}",
            error.instance_path()
        )),
    }
}
