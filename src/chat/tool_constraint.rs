//! `tool_choice` enforced by constrained decoding: a grammar whose calls name one of the tools
//! and whose arguments validate against that function's `parameters` (llguidance `%json`).
//! `required` and a named function constrain the reply from its first token; `auto` leaves
//! the reply free until the model opens a call, then constrains the rest of it.

use std::sync::Arc;

use serde_json::Value;

use super::structured::lark_constraint;
use super::tools::{ToolChoice, ToolFormat, Tools};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::sample::{TokenConstraint, TokenMask};

/// A lark string literal (JSON string escapes are lark's too).
fn literal(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

/// The grammar of one or more calls in `format`, each naming one of `names` with arguments
/// valid against its `parameters`.
fn calls_grammar(format: ToolFormat, tools: &Tools, names: &[&str]) -> Result<String> {
    let mut rules = Vec::new();
    let mut bodies = Vec::new();
    let key = match format {
        ToolFormat::Llama3 => "parameters",
        ToolFormat::Hermes | ToolFormat::Mistral => "arguments",
    };
    for (i, name) in names.iter().enumerate() {
        let spec = tools
            .get(name)
            .ok_or_else(|| Error::internal(format!("no tool named {name}")))?;
        let mut schema = spec.parameters.clone();
        if let Value::Object(map) = &mut schema {
            map.insert(
                "x-guidance".into(),
                serde_json::json!({"whitespace_flexible": false, "lenient": false}),
            );
        }
        rules.push(format!(
            "body_{i}: {} args_{i} \"}}\"\nargs_{i}: %json {}",
            literal(&format!("{{\"name\": \"{name}\", \"{key}\": ")),
            schema
        ));
        bodies.push(format!("body_{i}"));
    }
    let start = match format {
        ToolFormat::Hermes => {
            "start: call (\"\\n\" call)*\ncall: \"<tool_call>\" body \"</tool_call>\"".to_string()
        }
        ToolFormat::Llama3 => "start: body (\"; \" body)*".to_string(),
        ToolFormat::Mistral => {
            return Err(Error::invalid_argument(
                "tool_choice \"required\" or a named function is not supported for this model's tool format ([TOOL_CALLS]); use \"auto\"",
            ));
        }
    };
    Ok(format!(
        "{start}\nbody: {}\n{}\n",
        bodies.join(" | "),
        rules.join("\n")
    ))
}

/// The constraint `choice` asks for, or `None` when the reply is free (`none`, or `auto` in a
/// format whose opening marker is not text). Errors before generation: a tool whose
/// `parameters` llguidance cannot enforce, naming the tool.
pub fn tool_constraint(
    engine: &Arc<Engine>,
    format: ToolFormat,
    tools: &Tools,
    choice: &ToolChoice,
) -> Result<Option<Box<dyn TokenConstraint>>> {
    let all = tools.names();
    let compile = |names: &[&str]| -> Result<Box<dyn TokenConstraint>> {
        let grammar = calls_grammar(format, tools, names)?;
        lark_constraint(engine, &grammar).map_err(|e| {
            Error::invalid_argument(format!(
                "the tools' parameters cannot be enforced ({}): {}",
                names.join(", "),
                e.message
            ))
        })
    };
    match choice {
        ToolChoice::None => Ok(None),
        ToolChoice::Required => compile(&all).map(Some),
        ToolChoice::Named(name) => compile(&[name.as_str()]).map(Some),
        ToolChoice::Auto if format == ToolFormat::Hermes => {
            // Compile once now so a schema llguidance cannot enforce fails before generation.
            compile(&all)?;
            let grammar = calls_grammar(format, tools, &all)?;
            Ok(Some(Box::new(AfterMarker {
                engine: Arc::clone(engine),
                marker: format.open_marker().as_bytes(),
                grammar,
                text: Vec::new(),
                inner: None,
                abandoned: false,
            })))
        }
        ToolChoice::Auto => Ok(None),
    }
}

/// Allows every token until the accepted text contains `marker`; from there on the rest of
/// the reply follows `grammar` (which starts with the marker), fed the text from the marker
/// on to catch up.
struct AfterMarker {
    engine: Arc<Engine>,
    marker: &'static [u8],
    grammar: String,
    /// The bytes accepted so far, until the marker is seen.
    text: Vec<u8>,
    inner: Option<Box<dyn TokenConstraint>>,
    /// The text after the marker could not start a valid call: the rest stays free (the
    /// parser then keeps it as text, with a warning).
    abandoned: bool,
}

impl AfterMarker {
    fn start_inner(&mut self, at: usize) -> std::result::Result<(), String> {
        let mut inner = lark_constraint(&self.engine, &self.grammar).map_err(|e| e.message)?;
        let tail = String::from_utf8_lossy(&self.text[at..]).into_owned();
        let mut mask = TokenMask::new(self.engine.tokenizer.n_vocab());
        for id in self.engine.tokenizer.encode(&tail, false, false) {
            inner.compute_mask(&mut mask)?;
            if !mask.is_allowed(id) {
                return Err(format!("token {id} cannot continue a call"));
            }
            inner.accept_token(id)?;
        }
        self.inner = Some(inner);
        Ok(())
    }
}

impl TokenConstraint for AfterMarker {
    fn compute_mask(&mut self, mask: &mut TokenMask) -> std::result::Result<(), String> {
        match &mut self.inner {
            Some(inner) => inner.compute_mask(mask),
            None => {
                mask.allow_all();
                Ok(())
            }
        }
    }

    fn accept_token(&mut self, token: u32) -> std::result::Result<(), String> {
        if let Some(inner) = &mut self.inner {
            return inner.accept_token(token);
        }
        if self.abandoned {
            return Ok(());
        }
        self.text
            .extend_from_slice(self.engine.tokenizer.token_to_piece(token, false));
        if let Some(at) = self
            .text
            .windows(self.marker.len())
            .position(|w| w == self.marker)
            && self.start_inner(at).is_err()
        {
            self.abandoned = true;
        }
        Ok(())
    }

    fn may_stop(&self) -> bool {
        self.inner.as_ref().is_none_or(|c| c.may_stop())
    }

    fn must_stop(&self) -> bool {
        self.inner.as_ref().is_some_and(|c| c.must_stop())
    }
}
