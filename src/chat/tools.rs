//! Tool calling: the tools of a request, how they reach the prompt, and how the calls a model
//! writes are read back, per model family.
//!
//! Families (chosen from the template's text):
//! - Hermes / Qwen: `<tool_call>{"name": …, "arguments": …}</tool_call>`, several per turn. Also
//!   the syntax of the built-in tool section, used for templates without tool support (SmolLM2,
//!   Gemma 3).
//! - Llama 3: `<|python_tag|>{"name": …, "parameters": …}` or a reply that is only such a JSON
//!   object (several separated by `;`).
//! - Mistral: `[TOOL_CALLS][{"name": …, "arguments": …}, …]`, or `[TOOL_CALLS]name[ARGS]{…}`.
//! - Every family also accepts the generic fallback: a reply that is only a JSON call object
//!   (or an array of them, or `{"tool_calls": [...]}`) naming one of the tools.

use serde_json::{Map, Value};

use super::message::{Message, Role};
use crate::error::{Error, Result};

/// One function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// A JSON Schema object for the arguments.
    pub parameters: Value,
}

/// The tools of one request, validated, with their OpenAI JSON for the template.
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    pub specs: Vec<ToolSpec>,
    /// As the request gave them (normalised: `parameters` always present).
    pub json: Value,
}

/// JSON Schema keywords whose presence makes an object a schema (an empty object is one too).
const SCHEMA_KEYWORDS: &[&str] = &[
    "type",
    "properties",
    "required",
    "items",
    "enum",
    "const",
    "anyOf",
    "oneOf",
    "allOf",
    "$ref",
    "$defs",
    "definitions",
    "additionalProperties",
    "description",
    "title",
    "default",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "$schema",
    "not",
    "prefixItems",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "uniqueItems",
    "patternProperties",
    "propertyNames",
    "minProperties",
    "maxProperties",
    "contains",
    "examples",
    "nullable",
    "if",
    "then",
    "else",
    "dependentRequired",
    "dependentSchemas",
];

const SCHEMA_TYPES: &[&str] = &[
    "object", "array", "string", "number", "integer", "boolean", "null",
];

/// Checks that `schema` has the shape of a JSON Schema: an object whose keys are schema
/// keywords, `type` a known type name (or a list of them), `properties` an object of schemas,
/// `required` a list of strings. Returns what is wrong, naming its path.
fn check_schema(schema: &Value, path: &str) -> std::result::Result<(), String> {
    let Some(map) = schema.as_object() else {
        return if schema.is_boolean() {
            Ok(())
        } else {
            Err(format!("{path} is {schema}, not a JSON Schema object"))
        };
    };
    for key in map.keys() {
        if !SCHEMA_KEYWORDS.contains(&key.as_str()) {
            return Err(format!(
                "{path} has \"{key}\", which is not a JSON Schema keyword"
            ));
        }
    }
    if let Some(t) = map.get("type") {
        let names: Vec<&Value> = match t {
            Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        for name in names {
            if !name.as_str().is_some_and(|n| SCHEMA_TYPES.contains(&n)) {
                return Err(format!(
                    "{path}.type is {name}; use one of {}",
                    SCHEMA_TYPES.join(", ")
                ));
            }
        }
    }
    if let Some(props) = map.get("properties") {
        let Some(props) = props.as_object() else {
            return Err(format!("{path}.properties must be an object of schemas"));
        };
        for (name, sub) in props {
            check_schema(sub, &format!("{path}.properties.{name}"))?;
        }
    }
    if let Some(req) = map.get("required")
        && !req
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_string))
    {
        return Err(format!("{path}.required must be a list of property names"));
    }
    if let Some(items) = map.get("items") {
        check_schema(items, &format!("{path}.items"))?;
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(list) = map.get(key) {
            let Some(list) = list.as_array() else {
                return Err(format!("{path}.{key} must be a list of schemas"));
            };
            for (i, sub) in list.iter().enumerate() {
                check_schema(sub, &format!("{path}.{key}[{i}]"))?;
            }
        }
    }
    Ok(())
}

impl Tools {
    /// Validates the request's `tools` (OpenAI form): each `{"type": "function", "function":
    /// {"name", "description"?, "parameters"?}}`, names unique, `parameters` a JSON Schema.
    pub fn from_request(value: &Value) -> Result<Option<Self>> {
        let items = match value {
            Value::Null => return Ok(None),
            Value::Array(items) if items.is_empty() => return Ok(None),
            Value::Array(items) => items,
            _ => {
                return Err(Error::invalid_argument(
                    "tools must be a list of {\"type\": \"function\", \"function\": {\"name\", \"description\", \"parameters\"}}",
                ));
            }
        };
        let mut specs: Vec<ToolSpec> = Vec::new();
        let mut json = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let at = format!("tools[{i}]");
            let obj = item.as_object().ok_or_else(|| {
                Error::invalid_argument(format!(
                    "{at} must be an object {{\"type\": \"function\", \"function\": {{...}}}}"
                ))
            })?;
            if let Some(key) = obj.keys().find(|k| *k != "type" && *k != "function") {
                return Err(Error::invalid_argument(format!(
                    "{at} has an unknown field \"{key}\"; a tool has \"type\" and \"function\""
                )));
            }
            if obj.get("type").and_then(Value::as_str) != Some("function") {
                return Err(Error::invalid_argument(format!(
                    "{at}.type must be \"function\" (the only kind of tool)"
                )));
            }
            let function = obj.get("function").and_then(Value::as_object).ok_or_else(|| {
                Error::invalid_argument(format!("{at}.function must be an object {{\"name\", \"description\", \"parameters\"}}"))
            })?;
            if let Some(key) = function
                .keys()
                .find(|k| !["name", "description", "parameters", "strict"].contains(&k.as_str()))
            {
                return Err(Error::invalid_argument(format!(
                    "{at}.function has an unknown field \"{key}\"; use \"name\", \"description\", \"parameters\""
                )));
            }
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| {
                    !n.is_empty()
                        && n.len() <= 64
                        && n.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
                })
                .ok_or_else(|| {
                    Error::invalid_argument(format!(
                        "{at}.function.name must be 1 to 64 characters of a-z, A-Z, 0-9, '_', '-', '.'"
                    ))
                })?;
            if specs.iter().any(|s| s.name == name) {
                return Err(Error::invalid_argument(format!(
                    "tools has two functions named \"{name}\"; tool names must be unique"
                )));
            }
            let description = match function.get("description") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(d)) => d.clone(),
                Some(_) => {
                    return Err(Error::invalid_argument(format!(
                        "{at}.function.description must be a string"
                    )));
                }
            };
            let parameters = match function.get("parameters") {
                None | Some(Value::Null) => serde_json::json!({"type": "object", "properties": {}}),
                Some(p) => {
                    check_schema(p, "parameters").map_err(|why| {
                        Error::invalid_argument(format!(
                            "{at}.function.parameters (of \"{name}\") is not a JSON Schema: {why}"
                        ))
                    })?;
                    if !p.is_object() {
                        return Err(Error::invalid_argument(format!(
                            "{at}.function.parameters (of \"{name}\") is not a JSON Schema: it must be an object schema such as {{\"type\": \"object\", \"properties\": {{...}}}}"
                        )));
                    }
                    p.clone()
                }
            };
            let mut f = Map::new();
            f.insert("name".into(), name.into());
            if !description.is_empty() {
                f.insert("description".into(), description.clone().into());
            }
            f.insert("parameters".into(), parameters.clone());
            json.push(serde_json::json!({"type": "function", "function": f}));
            specs.push(ToolSpec {
                name: name.to_string(),
                description,
                parameters,
            });
        }
        Ok(Some(Self {
            specs,
            json: Value::Array(json),
        }))
    }

    pub fn get(&self, name: &str) -> Option<&ToolSpec> {
        self.specs.iter().find(|s| s.name == name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.specs.iter().map(|s| s.name.as_str()).collect()
    }
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Named(String),
}

impl ToolChoice {
    /// Reads `tool_choice` against the request's tools (`auto` by default when tools are given).
    pub fn from_request(value: Option<&Value>, tools: Option<&Tools>) -> Result<Self> {
        let choice = match value {
            None | Some(Value::Null) => {
                return Ok(if tools.is_some() {
                    Self::Auto
                } else {
                    Self::None
                });
            }
            Some(Value::String(s)) => match s.as_str() {
                "none" => Self::None,
                "auto" => Self::Auto,
                "required" => Self::Required,
                other => {
                    return Err(Error::invalid_argument(format!(
                        "tool_choice is \"{other}\"; use \"none\", \"auto\", \"required\" or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}"
                    )));
                }
            },
            Some(v) => {
                let name = v
                    .as_object()
                    .filter(|o| o.get("type").and_then(Value::as_str) == Some("function"))
                    .and_then(|o| o.get("function"))
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        Error::invalid_argument(
                            "tool_choice must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                        )
                    })?;
                Self::Named(name.to_string())
            }
        };
        match (&choice, tools) {
            (Self::None, _) => {}
            (_, None) => {
                return Err(Error::invalid_argument(
                    "tool_choice asks for a tool call, but the request has no tools; add \"tools\" or drop tool_choice",
                ));
            }
            (Self::Named(name), Some(tools)) if tools.get(name).is_none() => {
                return Err(Error::invalid_argument(format!(
                    "tool_choice names the function \"{name}\", which is not among the tools ({})",
                    tools.names().join(", ")
                )));
            }
            _ => {}
        }
        Ok(choice)
    }
}

/// How a model family writes tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// `<tool_call>{...}</tool_call>`; also the built-in section's syntax.
    Hermes,
    /// `<|python_tag|>{...}` or a bare `{"name", "parameters"}` object.
    Llama3,
    /// `[TOOL_CALLS][...]` or `[TOOL_CALLS]name[ARGS]{...}`.
    Mistral,
}

impl ToolFormat {
    /// The family a chat template writes calls in, and whether it renders tools itself.
    /// Templates that never mention `tools` get the built-in section (Hermes syntax).
    pub fn for_template(source: Option<&str>) -> (Self, bool) {
        let Some(src) = source else {
            return (Self::Hermes, false);
        };
        let native = src.contains("tools");
        let format = if !native {
            Self::Hermes
        } else if src.contains("[TOOL_CALLS]") {
            Self::Mistral
        } else if src.contains("<|python_tag|>") || src.contains("ipython") {
            Self::Llama3
        } else {
            Self::Hermes
        };
        (format, native)
    }

    /// The text that opens a call in this family's output.
    pub fn open_marker(self) -> &'static str {
        match self {
            Self::Hermes => "<tool_call>",
            Self::Llama3 => "<|python_tag|>",
            Self::Mistral => "[TOOL_CALLS]",
        }
    }
}

/// A call as the model wrote it, before it gets an id.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedCall {
    pub name: String,
    /// Always a JSON object.
    pub arguments: Value,
}

/// What a reply held: its text (markup of the calls removed) and its calls.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ParsedReply {
    pub content: String,
    pub calls: Vec<ParsedCall>,
    pub warnings: Vec<String>,
}

/// Reads one call object: {"name", "arguments" | "parameters"} (arguments as an object or a
/// string holding one), also wrapped as {"function": {...}} or {"type": "function", ...}.
fn call_from_value(v: &Value, tools: &Tools) -> std::result::Result<ParsedCall, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{v} is not a call object {{\"name\", \"arguments\"}}"))?;
    let obj = match obj.get("function").and_then(Value::as_object) {
        Some(inner) if inner.contains_key("name") => inner,
        _ => obj,
    };
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| "the call has no \"name\"".to_string())?;
    if tools.get(name).is_none() {
        return Err(format!(
            "the call names \"{name}\", which is not among the tools ({})",
            tools.names().join(", ")
        ));
    }
    let arguments = match obj.get("arguments").or_else(|| obj.get("parameters")) {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::String(s)) => serde_json::from_str::<Value>(s)
            .map_err(|e| format!("the arguments of \"{name}\" are not JSON: {e}"))?,
        Some(other) => other.clone(),
    };
    if !arguments.is_object() {
        return Err(format!(
            "the arguments of \"{name}\" are {arguments}, not a JSON object"
        ));
    }
    Ok(ParsedCall {
        name: name.to_string(),
        arguments,
    })
}

/// Parses the first JSON value at the start of `text` (after whitespace); returns it and the
/// bytes it took.
fn leading_json(text: &str) -> Option<(Value, usize)> {
    let start = text.len() - text.trim_start().len();
    let mut stream = serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
    match stream.next() {
        Some(Ok(v)) => Some((v, start + stream.byte_offset())),
        _ => None,
    }
}

/// Strips a Markdown code fence around a whole reply (```json ... ```).
fn unfenced(text: &str) -> &str {
    let t = text.trim();
    if let Some(rest) = t.strip_prefix("```")
        && let Some(body) = rest.strip_suffix("```")
    {
        let body = body.strip_prefix("json").unwrap_or(body);
        return body.trim();
    }
    t
}

/// The generic fallback: a reply that is nothing but one call object, a list of them, or
/// {"tool_calls": [...]}, naming known tools. `None` when the reply is not of that shape.
fn generic_calls(text: &str, tools: &Tools) -> Option<Vec<ParsedCall>> {
    let body = unfenced(text);
    if !(body.starts_with('{') || body.starts_with('[')) {
        return None;
    }
    let value: Value = serde_json::from_str(body).ok()?;
    let items: Vec<&Value> = match &value {
        Value::Array(items) => items.iter().collect(),
        Value::Object(o) => match o.get("tool_calls").and_then(Value::as_array) {
            Some(items) => items.iter().collect(),
            None => vec![&value],
        },
        _ => return None,
    };
    if items.is_empty() {
        return None;
    }
    items
        .into_iter()
        .map(|v| call_from_value(v, tools).ok())
        .collect()
}

/// Reads the calls out of a reply written in `format`.
pub fn parse_reply(format: ToolFormat, text: &str, tools: &Tools) -> ParsedReply {
    let mut out = match format {
        ToolFormat::Hermes => parse_hermes(text, tools),
        ToolFormat::Llama3 => parse_llama3(text, tools),
        ToolFormat::Mistral => parse_mistral(text, tools),
    };
    if out.calls.is_empty()
        && out.warnings.is_empty()
        && let Some(calls) = generic_calls(text, tools)
    {
        out.calls = calls;
        out.content.clear();
    }
    out
}

fn parse_hermes(text: &str, tools: &Tools) -> ParsedReply {
    const OPEN: &str = "<tool_call>";
    const CLOSE: &str = "</tool_call>";
    let mut out = ParsedReply::default();
    let mut content = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(OPEN) {
        content.push_str(&rest[..at]);
        let after = &rest[at + OPEN.len()..];
        let (body, next, closed) = match after.find(CLOSE) {
            Some(end) => (&after[..end], &after[end + CLOSE.len()..], true),
            None => {
                // Cut off (max_tokens): the call object, then at most a start of the tag.
                let body = match leading_json(after) {
                    Some((_, used)) if CLOSE.starts_with(after[used..].trim()) => &after[..used],
                    _ => after,
                };
                (body, "", false)
            }
        };
        let raw = &rest[at..rest.len() - next.len()];
        let parsed = serde_json::from_str::<Value>(body.trim())
            .map_err(|e| format!("not valid JSON ({e})"))
            .and_then(|v| call_from_value(&v, tools));
        match parsed {
            Ok(call) if closed => out.calls.push(call),
            Ok(call) => {
                // A complete object whose closing tag was cut off still is the call.
                out.calls.push(call);
                out.warnings.push(
                    "a tool call had no closing </tool_call>; it was read without one".into(),
                );
            }
            Err(why) => {
                out.warnings.push(format!(
                    "a <tool_call> could not be read and was kept as text: {why}"
                ));
                content.push_str(raw);
            }
        }
        rest = next;
    }
    content.push_str(rest);
    out.content = content.trim().to_string();
    out
}

/// Splits `text` into the JSON values it holds one after another, separated by whitespace or
/// `;` (Llama 3 writes several calls that way). `Err` with the first unreadable part.
fn json_sequence(text: &str) -> std::result::Result<Vec<Value>, String> {
    let mut values = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        match leading_json(rest) {
            Some((v, used)) => {
                values.push(v);
                rest = rest[used..]
                    .trim_start()
                    .trim_start_matches(';')
                    .trim_start();
            }
            None => {
                let e = serde_json::from_str::<Value>(rest)
                    .err()
                    .map_or_else(|| "trailing text".to_string(), |e| e.to_string());
                return Err(format!("not valid JSON ({e})"));
            }
        }
    }
    Ok(values)
}

fn parse_llama3(text: &str, tools: &Tools) -> ParsedReply {
    const TAG: &str = "<|python_tag|>";
    let mut out = ParsedReply::default();
    let (before, body) = match text.find(TAG) {
        Some(at) => (&text[..at], &text[at + TAG.len()..]),
        None => {
            let t = text.trim_start();
            if !t.starts_with('{') {
                out.content = text.trim().to_string();
                return out;
            }
            ("", t)
        }
    };
    let calls = json_sequence(body).and_then(|values| {
        values
            .iter()
            .map(|v| call_from_value(v, tools))
            .collect::<std::result::Result<Vec<_>, _>>()
    });
    match calls {
        Ok(calls) if !calls.is_empty() => {
            out.calls = calls;
            out.content = before.trim().to_string();
        }
        Ok(_) => out.content = text.trim().to_string(),
        Err(why) => {
            // A bare JSON answer that is not a call is ordinary content, not a failed call.
            if text.contains(TAG) {
                out.warnings.push(format!(
                    "the tool call after <|python_tag|> could not be read and was kept as text: {why}"
                ));
            }
            out.content = text.trim().to_string();
        }
    }
    out
}

fn parse_mistral(text: &str, tools: &Tools) -> ParsedReply {
    const TAG: &str = "[TOOL_CALLS]";
    const ARGS: &str = "[ARGS]";
    let mut out = ParsedReply::default();
    let Some(at) = text.find(TAG) else {
        out.content = text.trim().to_string();
        return out;
    };
    let before = text[..at].trim();
    let mut calls = Vec::new();
    let mut failure = None;
    // Newer Mistral templates: one `[TOOL_CALLS]name[ARGS]{...}` per call.
    for segment in text[at..].split(TAG).skip(1) {
        let segment = segment.trim();
        if segment.is_empty() {
            continue;
        }
        let result = if let Some((name, args)) = segment.split_once(ARGS)
            && !name.trim_start().starts_with('[')
        {
            serde_json::from_str::<Value>(args.trim())
                .map_err(|e| format!("not valid JSON ({e})"))
                .and_then(|a| {
                    call_from_value(
                        &serde_json::json!({"name": name.trim(), "arguments": a}),
                        tools,
                    )
                })
                .map(|c| vec![c])
        } else {
            serde_json::from_str::<Value>(segment)
                .map_err(|e| format!("not valid JSON ({e})"))
                .and_then(|v| match v {
                    Value::Array(items) => {
                        items.iter().map(|i| call_from_value(i, tools)).collect()
                    }
                    other => call_from_value(&other, tools).map(|c| vec![c]),
                })
        };
        match result {
            Ok(mut c) => calls.append(&mut c),
            Err(why) => {
                failure = Some(why);
                break;
            }
        }
    }
    match failure {
        None if !calls.is_empty() => {
            out.calls = calls;
            out.content = before.to_string();
        }
        None => {
            out.warnings
                .push("[TOOL_CALLS] was not followed by any call; kept as text".into());
            out.content = text.trim().to_string();
        }
        Some(why) => {
            out.warnings.push(format!(
                "the tool calls after [TOOL_CALLS] could not be read and were kept as text: {why}"
            ));
            out.content = text.trim().to_string();
        }
    }
    out
}

/// The built-in tool section, for templates that do not render tools: added to the system
/// message. Documented in README.md ("Tools and retrieval").
pub fn builtin_tool_section(tools: &Tools) -> String {
    let mut s =
        String::from("You can call functions to help answer. The functions, as JSON:\n<tools>\n");
    for t in tools.json.as_array().into_iter().flatten() {
        s.push_str(&t.to_string());
        s.push('\n');
    }
    s.push_str("</tools>\nTo call a function, reply with one line per call:\n<tool_call>{\"name\": \"<function name>\", \"arguments\": {<arguments as JSON>}}</tool_call>\nThe results come back inside <tool_response></tool_response>. Answer directly when no function is needed.");
    s
}

/// The JSON of a call as the built-in syntax writes it (the template sees past calls so).
pub fn builtin_call_text(name: &str, arguments: &str) -> String {
    let args: Value = serde_json::from_str(arguments).unwrap_or_else(|_| arguments.into());
    format!(
        "<tool_call>{{\"name\": {}, \"arguments\": {}}}</tool_call>",
        Value::String(name.to_string()),
        args
    )
}

/// Rewrites a conversation for a template without tool support: assistant calls become
/// `<tool_call>` text in the assistant's content, and tool results become a user message of
/// `<tool_response>` blocks (consecutive results merged), so templates that insist on
/// alternating user/assistant turns still render it.
pub fn lower_for_builtin(messages: &[Message]) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::with_capacity(messages.len());
    for m in messages {
        match m.role {
            Role::Assistant if !m.tool_calls.is_empty() => {
                let mut text = m.content.trim().to_string();
                for c in &m.tool_calls {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&builtin_call_text(&c.function.name, &c.function.arguments));
                }
                out.push(Message::new(Role::Assistant, text));
            }
            Role::Tool => {
                let block = format!("<tool_response>\n{}\n</tool_response>", m.content);
                match out.last_mut() {
                    Some(prev)
                        if prev.role == Role::User
                            && prev.content.ends_with("</tool_response>") =>
                    {
                        prev.content.push('\n');
                        prev.content.push_str(&block);
                    }
                    _ => out.push(Message::new(Role::User, block)),
                }
            }
            _ => out.push(Message::new(m.role, m.content.clone())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> Tools {
        Tools::from_request(&serde_json::json!([
            {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
            {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
        ]))
        .unwrap()
        .unwrap()
    }

    fn call(name: &str, args: Value) -> ParsedCall {
        ParsedCall {
            name: name.into(),
            arguments: args,
        }
    }

    #[test]
    fn hermes_reads_several_calls_and_keeps_the_text_around_them() {
        let out = parse_reply(
            ToolFormat::Hermes,
            "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>{\"name\": \"get_time\", \"arguments\": {}}</tool_call>",
            &tools(),
        );
        assert_eq!(
            out.calls,
            vec![
                call("get_weather", serde_json::json!({"city": "Paris"})),
                call("get_time", serde_json::json!({}))
            ]
        );
        assert_eq!(out.content, "Let me look.");
        assert!(out.warnings.is_empty());
    }

    #[test]
    fn hermes_keeps_malformed_calls_as_text_with_a_warning() {
        let text = "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": </tool_call>";
        let out = parse_reply(ToolFormat::Hermes, text, &tools());
        assert!(out.calls.is_empty());
        assert_eq!(out.content, text);
        assert!(
            out.warnings[0].contains("not valid JSON"),
            "{:?}",
            out.warnings
        );

        let text = "<tool_call>{\"name\": \"launch_rocket\", \"arguments\": {}}</tool_call>";
        let out = parse_reply(ToolFormat::Hermes, text, &tools());
        assert!(out.calls.is_empty());
        assert_eq!(out.content, text);
        assert!(
            out.warnings[0].contains(
                "\"launch_rocket\", which is not among the tools (get_weather, get_time)"
            ),
            "{:?}",
            out.warnings
        );

        // Arguments given as a JSON string are read; a string that is not JSON is not.
        let out = parse_reply(
            ToolFormat::Hermes,
            "<tool_call>{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Oslo\\\"}\"}</tool_call>",
            &tools(),
        );
        assert_eq!(
            out.calls,
            vec![call("get_weather", serde_json::json!({"city": "Oslo"}))]
        );
        let out = parse_reply(
            ToolFormat::Hermes,
            "<tool_call>{\"name\": \"get_weather\", \"arguments\": \"Oslo\"}</tool_call>",
            &tools(),
        );
        assert!(
            out.calls.is_empty()
                && out.warnings[0].contains("arguments of \"get_weather\" are not JSON")
        );
    }

    #[test]
    fn hermes_reads_a_call_whose_closing_tag_was_cut_off() {
        let out = parse_reply(
            ToolFormat::Hermes,
            "<tool_call>{\"name\": \"get_time\", \"arguments\": {}}",
            &tools(),
        );
        assert_eq!(out.calls, vec![call("get_time", serde_json::json!({}))]);
        assert!(out.warnings[0].contains("no closing"));
        let out = parse_reply(
            ToolFormat::Hermes,
            "<tool_call>{\"name\": \"get_time\", \"arguments\": {}}</tool",
            &tools(),
        );
        assert_eq!(out.calls, vec![call("get_time", serde_json::json!({}))]);
        assert!(out.content.is_empty());
        let out = parse_reply(
            ToolFormat::Hermes,
            "<tool_call>{\"name\": \"get_ti",
            &tools(),
        );
        assert!(out.calls.is_empty());
        assert_eq!(out.content, "<tool_call>{\"name\": \"get_ti");
    }

    #[test]
    fn llama3_reads_python_tag_and_bare_json_calls() {
        let out = parse_reply(
            ToolFormat::Llama3,
            "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Rome\"}}",
            &tools(),
        );
        assert_eq!(
            out.calls,
            vec![call("get_weather", serde_json::json!({"city": "Rome"}))]
        );
        let out = parse_reply(
            ToolFormat::Llama3,
            "{\"type\": \"function\", \"name\": \"get_time\", \"parameters\": {}}; {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Bern\"}}",
            &tools(),
        );
        assert_eq!(
            out.calls,
            vec![
                call("get_time", serde_json::json!({})),
                call("get_weather", serde_json::json!({"city": "Bern"}))
            ]
        );
        // Plain answers, JSON answers that are not calls, and a broken tagged call.
        let out = parse_reply(ToolFormat::Llama3, "It is sunny.", &tools());
        assert!(out.calls.is_empty() && out.warnings.is_empty() && out.content == "It is sunny.");
        let out = parse_reply(ToolFormat::Llama3, "{\"answer\": 4}", &tools());
        assert!(out.calls.is_empty() && out.content == "{\"answer\": 4}");
        let out = parse_reply(
            ToolFormat::Llama3,
            "<|python_tag|>{\"name\": \"get_time\", \"parameters\": {",
            &tools(),
        );
        assert!(
            out.calls.is_empty() && out.warnings[0].contains("python_tag"),
            "{out:?}"
        );
    }

    #[test]
    fn mistral_reads_both_call_syntaxes() {
        let out = parse_reply(
            ToolFormat::Mistral,
            "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Lyon\"}}, {\"name\": \"get_time\", \"arguments\": {}}]",
            &tools(),
        );
        assert_eq!(
            out.calls,
            vec![
                call("get_weather", serde_json::json!({"city": "Lyon"})),
                call("get_time", serde_json::json!({}))
            ]
        );
        let out = parse_reply(
            ToolFormat::Mistral,
            "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Nice\"}[TOOL_CALLS]get_time[ARGS]{}",
            &tools(),
        );
        assert_eq!(
            out.calls,
            vec![
                call("get_weather", serde_json::json!({"city": "Nice"})),
                call("get_time", serde_json::json!({}))
            ]
        );
        let text = "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Nice\"}";
        let out = parse_reply(ToolFormat::Mistral, text, &tools());
        assert!(
            out.calls.is_empty() && out.content == text && out.warnings[0].contains("[TOOL_CALLS]")
        );
        let out = parse_reply(ToolFormat::Mistral, "[TOOL_CALLS]", &tools());
        assert!(out.calls.is_empty() && out.warnings[0].contains("not followed"));
    }

    #[test]
    fn generic_fallback_reads_a_reply_that_is_only_a_call() {
        for text in [
            "{\"name\": \"get_time\", \"arguments\": {}}",
            "```json\n{\"name\": \"get_time\", \"arguments\": {}}\n```",
            "[{\"name\": \"get_time\"}]",
            "{\"tool_calls\": [{\"function\": {\"name\": \"get_time\", \"arguments\": \"{}\"}}]}",
        ] {
            for format in [ToolFormat::Hermes, ToolFormat::Mistral] {
                let out = parse_reply(format, text, &tools());
                assert_eq!(
                    out.calls,
                    vec![call("get_time", serde_json::json!({}))],
                    "{format:?} {text}"
                );
                assert!(out.content.is_empty());
            }
        }
        // Not calls: unknown names, JSON that is not a call, text around the JSON.
        for text in [
            "{\"name\": \"get_date\", \"arguments\": {}}",
            "{\"city\": \"Paris\"}",
            "Here: {\"name\": \"get_time\", \"arguments\": {}}",
        ] {
            let out = parse_reply(ToolFormat::Hermes, text, &tools());
            assert!(
                out.calls.is_empty() && out.content == text && out.warnings.is_empty(),
                "{text}"
            );
        }
    }

    #[test]
    fn tools_are_validated() {
        let err = |v: Value| Tools::from_request(&v).unwrap_err().message;
        let e = err(
            serde_json::json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "dict"}}}]),
        );
        assert!(
            e.contains("parameters (of \"f\") is not a JSON Schema") && e.contains("dict"),
            "{e}"
        );
        let e = err(
            serde_json::json!([{"type": "function", "function": {"name": "f", "parameters": "a string"}}]),
        );
        assert!(e.contains("is not a JSON Schema"), "{e}");
        let e = err(
            serde_json::json!([{"type": "function", "function": {"name": "f", "parameters": {"city": {"type": "string"}}}}]),
        );
        assert!(
            e.contains("\"city\", which is not a JSON Schema keyword"),
            "{e}"
        );
        let e = err(serde_json::json!([
            {"type": "function", "function": {"name": "f"}},
            {"type": "function", "function": {"name": "f"}}
        ]));
        assert!(e.contains("two functions named \"f\""), "{e}");
        let e = err(serde_json::json!([{"type": "retrieval"}]));
        assert!(e.contains("tools[0].type must be \"function\""), "{e}");
        let e = err(serde_json::json!([{"type": "function", "function": {"name": "a b"}}]));
        assert!(e.contains("tools[0].function.name"), "{e}");
    }

    #[test]
    fn tool_choice_is_checked_against_the_tools() {
        let t = tools();
        let named = serde_json::json!({"type": "function", "function": {"name": "get_time"}});
        assert_eq!(
            ToolChoice::from_request(Some(&named), Some(&t)).unwrap(),
            ToolChoice::Named("get_time".into())
        );
        assert_eq!(
            ToolChoice::from_request(None, Some(&t)).unwrap(),
            ToolChoice::Auto
        );
        assert_eq!(
            ToolChoice::from_request(None, None).unwrap(),
            ToolChoice::None
        );
        let unknown = serde_json::json!({"type": "function", "function": {"name": "get_date"}});
        let e = ToolChoice::from_request(Some(&unknown), Some(&t))
            .unwrap_err()
            .message;
        assert!(
            e.contains("\"get_date\", which is not among the tools (get_weather, get_time)"),
            "{e}"
        );
        let e = ToolChoice::from_request(Some(&"required".into()), None)
            .unwrap_err()
            .message;
        assert!(e.contains("has no tools"), "{e}");
        let e = ToolChoice::from_request(Some(&"always".into()), Some(&t))
            .unwrap_err()
            .message;
        assert!(e.contains("\"always\""), "{e}");
    }

    #[test]
    fn conversations_are_lowered_for_templates_without_tools() {
        let mut assistant = Message::new(Role::Assistant, "");
        assistant.tool_calls = vec![super::super::message::ToolCall {
            id: "call_1".into(),
            kind: "function".into(),
            function: super::super::message::FunctionCall {
                name: "get_time".into(),
                arguments: "{}".into(),
            },
        }];
        let mut result = Message::new(Role::Tool, "12:00");
        result.tool_call_id = Some("call_1".into());
        let lowered = lower_for_builtin(&[
            Message::new(Role::User, "Time?"),
            assistant,
            result.clone(),
            result,
        ]);
        assert_eq!(lowered.len(), 3);
        assert_eq!(
            lowered[1].content,
            "<tool_call>{\"name\": \"get_time\", \"arguments\": {}}</tool_call>"
        );
        assert_eq!(lowered[2].role, Role::User);
        assert_eq!(
            lowered[2].content,
            "<tool_response>\n12:00\n</tool_response>\n<tool_response>\n12:00\n</tool_response>"
        );
    }
}
