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

use crate::api::ResponseFormat;
use crate::engine::{Engine, FinishReason};
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
    /// The tokens whose text starts with an ASCII digit, and how many digits each ends with
    /// (all of them when the token is only digits: then `u8::MAX`).
    digit_start: TokenMask,
    trailing_digits: Vec<u8>,
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
    let mut digit_start = TokenMask::new(n_vocab);
    let trailing_digits = (0u32..)
        .zip(&words)
        .map(|(id, word)| {
            if word.first().is_some_and(u8::is_ascii_digit) {
                digit_start.allow(id);
            }
            let trailing = word.iter().rev().take_while(|b| b.is_ascii_digit()).count();
            if !word.is_empty() && trailing == word.len() {
                u8::MAX
            } else {
                trailing.min(254) as u8
            }
        })
        .collect();
    Ok(Arc::new(Environment {
        factory,
        digit_start,
        trailing_digits,
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
    Ok(LlgConstraint {
        matcher,
        accepting,
        last_token: None,
        run: 0,
        digits: 0,
        environment,
    })
}

/// The most digits in a row a constrained reply may hold where the grammar allows anything
/// else: small models decoding a number greedily go on with digits forever
/// ("10.50000100001…", Gemma 3 270M at temperature 0). Where only digits are allowed (a
/// pattern such as `[0-9]{16}`) they are still generated.
pub(crate) const MAX_DIGIT_RUN: usize = 12;

/// The most times one token may follow itself in a constrained reply. Small models decoding
/// greedily inside a JSON value fall into runs of one token ("10.5000000…", "!!!!…") that
/// only max_tokens ends; past this many the repeated token is forbidden, whenever the grammar
/// allows something else, and the value moves on. Measured on the twenty schemas of
/// tests/structured.rs: without it Gemma 3 270M at temperature 0 never closes a number.
pub(crate) const MAX_TOKEN_RUN: usize = 4;

/// An llguidance matcher behind the generation loop's constraint seam.
struct LlgConstraint {
    matcher: Matcher,
    /// `matcher.is_accepting()` after the last accepted token (it needs `&mut`).
    accepting: bool,
    last_token: Option<u32>,
    /// How many times in a row `last_token` was accepted.
    run: usize,
    /// How many ASCII digits the accepted text ends with.
    digits: usize,
    environment: Arc<Environment>,
}

impl LlgConstraint {
    /// Forbids what `forbidden` allows, unless that leaves nothing to generate (when the
    /// reply may stop here, ending it is then the way out).
    fn forbid_unless_stuck(&self, mask: &mut TokenMask, forbid: impl FnOnce(&mut TokenMask)) {
        let before = mask.clone();
        forbid(mask);
        if mask.count_allowed() == 0 && !self.may_stop() {
            *mask = before;
        }
    }
}

impl TokenConstraint for LlgConstraint {
    fn compute_mask(&mut self, mask: &mut TokenMask) -> std::result::Result<(), String> {
        let allowed = self
            .matcher
            .compute_mask()
            .map_err(|error| error.to_string())?;
        mask.set_from_u32_words(allowed.as_slice());
        if let Some(last) = self.last_token
            && self.run >= MAX_TOKEN_RUN
            && mask.is_allowed(last)
        {
            self.forbid_unless_stuck(mask, |mask| mask.forbid(last));
        }
        if self.digits >= MAX_DIGIT_RUN {
            let digit_start = &self.environment.digit_start;
            self.forbid_unless_stuck(mask, |mask| mask.forbid_all_of(digit_start));
        }
        Ok(())
    }

    fn accept_token(&mut self, token: u32) -> std::result::Result<(), String> {
        self.matcher
            .consume_token(token)
            .map_err(|error| error.to_string())?;
        match self.environment.trailing_digits.get(token as usize) {
            Some(&u8::MAX) => {
                self.digits += self
                    .environment
                    .factory
                    .tok_env()
                    .tok_trie()
                    .token_len(token)
            }
            Some(&trailing) => self.digits = usize::from(trailing),
            None => self.digits = 0,
        }
        if self.last_token == Some(token) {
            self.run += 1;
        } else {
            self.last_token = Some(token);
            self.run = 1;
        }
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

/// The constraint a `response_format` asks for: none for text, any object for
/// `json_object`, the schema for `json_schema`. Whether or not `strict` is set, the whole
/// schema is enforced, and a schema with a keyword that cannot be is refused.
pub fn response_constraint(
    engine: &Arc<Engine>,
    format: &ResponseFormat,
) -> Result<Option<Box<dyn TokenConstraint>>> {
    match format.schema() {
        None => Ok(None),
        Some(schema) => json_schema_constraint(engine, &schema)
            .map(Some)
            .map_err(|error| Error::new(error.kind, format!("response_format: {}", error.message))),
    }
}

/// The second line of defence: a finished reply under a JSON `response_format` must parse
/// and validate, or it is our bug (`INTERNAL`). A reply cut by `max_tokens` or cancelled is
/// returned as it is, with a warning that says so. Returns the warnings for the response.
pub fn check_reply(
    format: &ResponseFormat,
    text: &str,
    finish_reason: FinishReason,
) -> Result<Vec<String>> {
    let Some(schema) = format.schema() else {
        return Ok(Vec::new());
    };
    match finish_reason {
        FinishReason::Length => {
            return Ok(vec![
                "max_tokens ran out before the JSON value was complete: the text is cut short and does not parse; raise max_tokens".to_string(),
            ]);
        }
        FinishReason::Cancelled => {
            return Ok(vec![
                "the reply was cancelled before the JSON value was complete".to_string(),
            ]);
        }
        FinishReason::Stop => {}
    }
    let value: Value = serde_json::from_str(text).map_err(|error| {
        Error::internal(format!(
            "the constrained reply does not parse as JSON ({error}); this is a bug in smallmind, please report it with the schema"
        ))
    })?;
    validate_json_against_schema(&schema, &value).map_err(|reason| {
        Error::internal(format!(
            "the constrained reply does not validate against the schema ({reason}); this is a bug in smallmind, please report it with the schema"
        ))
    })?;
    Ok(Vec::new())
}
