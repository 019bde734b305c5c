//! Chat templates: the model's own Jinja template (`tokenizer.chat_template`), run by
//! minijinja set up the way Hugging Face transformers renders them, or a built-in format for
//! files that have none.

use std::fmt;
use std::ops::Range;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde};
use minijinja::{Environment, Error as JinjaError, ErrorKind as JinjaErrorKind, Value};

use super::message::Message;
use crate::error::{Error, ErrorKind};

const TEMPLATE_NAME: &str = "chat_template";

/// Work one render may do, in minijinja fuel (about one instruction, or 64 bytes of data
/// created): a hostile template can neither hang the caller nor exhaust its memory. A
/// thousand-message conversation through a real template takes well under 1% of it.
pub const MAX_TEMPLATE_FUEL: u64 = 4_000_000;
/// Nesting of macro calls, includes and recursive loops in one render, kept low enough that
/// the deepest stays within a small thread stack.
pub const MAX_TEMPLATE_RECURSION: usize = 64;
/// Size of a rendered prompt (16 MiB: more text than any model's context can hold).
pub const MAX_RENDERED_BYTES: usize = 16 << 20;

#[derive(Debug, Clone, PartialEq)]
pub enum TemplateError {
    /// The template does not compile.
    Syntax(String),
    /// Rendering failed, e.g. the template raised an exception about the messages.
    Render(String),
    /// Rendering did more work, nested deeper or wrote more than the limits allow.
    Limit(String),
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax(m) => write!(f, "the model's chat template does not compile: {m}"),
            Self::Render(m) => write!(f, "the chat template rejected the conversation: {m}"),
            Self::Limit(m) => write!(f, "the chat template was stopped: {m}"),
        }
    }
}

impl std::error::Error for TemplateError {}

impl From<TemplateError> for Error {
    fn from(e: TemplateError) -> Self {
        let kind = match e {
            TemplateError::Syntax(_) => ErrorKind::UnsupportedModel,
            TemplateError::Render(_) | TemplateError::Limit(_) => ErrorKind::InvalidArgument,
        };
        Error::new(kind, e.to_string())
    }
}

fn describe(e: &JinjaError) -> String {
    let mut text = e.to_string();
    if let Some(line) = e.line() {
        text.push_str(&format!(" (template line {line})"));
    }
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        text.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    text
}

/// Chat formats used when a model file has no template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinFormat {
    ChatMl,
    Llama3,
    Gemma,
}

impl BuiltinFormat {
    /// The format's Jinja source.
    pub fn source(self) -> &'static str {
        match self {
            Self::ChatMl => {
                "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
            }
            Self::Llama3 => {
                "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
            }
            // Gemma has no system role: a leading system message goes at the start of the
            // first user turn, as Gemma's own template does; with no user turn it becomes one.
            Self::Gemma => {
                "{{ bos_token }}{% if messages and messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}{% set ns = namespace(prefix=first_user_prefix) %}{% for message in loop_messages %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}{{ '<start_of_turn>' + role + '\n' + (ns.prefix if role == 'user' else '') + message['content'] | trim + '<end_of_turn>\n' }}{% if role == 'user' %}{% set ns.prefix = '' %}{% endif %}{% endfor %}{% if ns.prefix %}{{ '<start_of_turn>user\n' + ns.prefix | trim + '<end_of_turn>\n' }}{% endif %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
            }
        }
    }

    /// The format for a file without a template: Llama 3's when a `llama` file has Llama 3's
    /// header tokens, otherwise the family's (`for_architecture`).
    pub fn for_model(arch: crate::engine::Architecture, has_token: &dyn Fn(&str) -> bool) -> Self {
        match Self::for_architecture(arch) {
            Self::ChatMl
                if arch == crate::engine::Architecture::Llama
                    && has_token("<|start_header_id|>")
                    && has_token("<|eot_id|>") =>
            {
                Self::Llama3
            }
            format => format,
        }
    }

    /// The format a model family uses (the architecture table's `default_chat_format`).
    pub fn for_architecture(arch: crate::engine::Architecture) -> Self {
        match arch.traits().default_chat_format {
            crate::model::ChatFamily::Gemma => Self::Gemma,
            crate::model::ChatFamily::ChatMl => Self::ChatMl,
        }
    }
}

/// What a template sees.
pub struct TemplateContext<'a> {
    pub messages: &'a [Message],
    pub tools: Option<&'a serde_json::Value>,
    /// Retrieved chunks, for templates with a `documents` variable.
    pub documents: Option<&'a serde_json::Value>,
    pub add_generation_prompt: bool,
    pub bos_token: &'a str,
    pub eos_token: &'a str,
}

/// A compiled chat template, reused for every render.
pub struct ChatTemplate {
    env: Environment<'static>,
}

/// transformers' `{% generation %}…{% endgeneration %}` marks the assistant's text for its
/// training masks and renders its body unchanged. minijinja has no such tag, so each becomes
/// an `{% if true %}` / `{% endif %}` with the same whitespace control (`-`, `+`), which
/// trim_blocks and lstrip_blocks treat exactly as they treat any block tag.
fn rewrite_generation_tags(source: &str) -> std::borrow::Cow<'_, str> {
    if !source.contains("generation") {
        return source.into();
    }
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(open) = rest.find("{%") {
        out.push_str(&rest[..open]);
        let tag = &rest[open..];
        // The closing "%}" starts after the opening "{%" ("{%}" is not a closed tag).
        let Some(close) = tag[2..].find("%}").map(|i| i + 2) else {
            break;
        };
        let inner = &tag[2..close];
        let (left, body) = match inner.strip_prefix(['-', '+']) {
            Some(b) => (&inner[..1], b),
            None => ("", inner),
        };
        let (body, right) = match body.strip_suffix(['-', '+']) {
            Some(b) => (b, &body[body.len() - 1..]),
            None => (body, ""),
        };
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => out.push_str(&format!("{{%{left} {r} {right}%}}")),
            None => out.push_str(&tag[..close + 2]),
        }
        rest = &tag[close + 2..];
    }
    out.push_str(rest);
    out.into()
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChatTemplate")
    }
}

fn raise_exception(message: String) -> Result<Value, JinjaError> {
    Err(JinjaError::new(JinjaErrorKind::InvalidOperation, message))
}

/// HF's `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`, every argument honoured as Python honours it.
fn tojson(value: Value, indent: Option<usize>, kwargs: Kwargs) -> Result<Value, JinjaError> {
    let indent = match indent {
        Some(n) => Some(n),
        None => kwargs.get::<Option<usize>>("indent")?,
    };
    let separators = match kwargs.get::<Option<Vec<String>>>("separators")? {
        None => None,
        Some(pair) => match <[String; 2]>::try_from(pair) {
            Ok([item, key]) => Some((item, key)),
            Err(_) => {
                return Err(JinjaError::new(
                    JinjaErrorKind::InvalidOperation,
                    "tojson: separators must be a pair (item separator, key separator)",
                ));
            }
        },
    };
    let options = PyJson {
        indent,
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
        // Python's defaults: ", " without indent, "," with it; ": " always.
        separators: separators.unwrap_or_else(|| {
            let item = if indent.is_some() { "," } else { ", " };
            (item.to_string(), ": ".to_string())
        }),
    };
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| JinjaError::new(JinjaErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    options.write(&json, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

/// jinja2's `indent(width=4, first=False, blank=False)`: indents every line after the first
/// (the first too with `first`, empty lines too with `blank`) and, unlike minijinja's, keeps
/// a trailing newline. `width` may be a number of spaces or the indentation text itself.
fn indent(
    text: String,
    width: Option<Value>,
    first: Option<bool>,
    blank: Option<bool>,
    kwargs: Kwargs,
) -> Result<String, JinjaError> {
    let width = match width {
        Some(w) => Some(w),
        None => kwargs.get::<Option<Value>>("width")?,
    };
    let first = first
        .or(kwargs.get::<Option<bool>>("first")?)
        .unwrap_or(false);
    let blank = blank
        .or(kwargs.get::<Option<bool>>("blank")?)
        .unwrap_or(false);
    kwargs.assert_all_used()?;
    let indentation = match width {
        None => "    ".to_string(),
        Some(w) => match w.as_str() {
            Some(s) => s.to_string(),
            None => {
                let n = i64::try_from(w.clone()).map_err(|_| {
                    JinjaError::new(
                        JinjaErrorKind::InvalidOperation,
                        format!("indent: width must be a number or a string, not {w}"),
                    )
                })?;
                " ".repeat(n.max(0) as usize)
            }
        },
    };
    // Python: (s + "\n").splitlines(), then lines after the first are indented.
    let with_newline = format!("{text}\n");
    let lines: Vec<&str> = with_newline.lines().collect();
    let mut out = String::with_capacity(text.len() + 16);
    if first {
        out.push_str(&indentation);
    }
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            out.push('\n');
            if blank || !line.is_empty() {
                out.push_str(&indentation);
            }
        }
        out.push_str(line);
    }
    Ok(out)
}

/// The options of Python's `json.dumps` that templates pass.
struct PyJson {
    indent: Option<usize>,
    ensure_ascii: bool,
    sort_keys: bool,
    /// (item separator, key separator).
    separators: (String, String),
}

impl PyJson {
    fn newline(&self, level: usize, out: &mut String) {
        if let Some(n) = self.indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    }

    fn write(&self, v: &serde_json::Value, level: usize, out: &mut String) {
        match v {
            serde_json::Value::Array(items) if !items.is_empty() => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.separators.0);
                    }
                    self.newline(level + 1, out);
                    self.write(item, level + 1, out);
                }
                self.newline(level, out);
                out.push(']');
            }
            serde_json::Value::Object(map) if !map.is_empty() => {
                let mut entries: Vec<_> = map.iter().collect();
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                }
                out.push('{');
                for (i, (key, item)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.separators.0);
                    }
                    self.newline(level + 1, out);
                    self.string(key, out);
                    out.push_str(&self.separators.1);
                    self.write(item, level + 1, out);
                }
                self.newline(level, out);
                out.push('}');
            }
            serde_json::Value::String(text) => self.string(text, out),
            other => out.push_str(&other.to_string()),
        }
    }

    /// A string as Python escapes it; with ensure_ascii, non-ASCII as \\uXXXX (UTF-16).
    fn string(&self, text: &str, out: &mut String) {
        let escaped = serde_json::Value::String(text.to_string()).to_string();
        if !self.ensure_ascii {
            out.push_str(&escaped);
            return;
        }
        for c in escaped.chars() {
            if c.is_ascii() {
                out.push(c);
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
}

/// `strftime_now(format)`: the time `now` (seconds since 1970, UTC) as Python's strftime
/// formats it, for templates that print today's date.
fn strftime(format: &str, secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('B') => out.push_str(MONTHS[(month - 1) as usize]),
            Some('b') => out.push_str(&MONTHS[(month - 1) as usize][..3]),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem % 3600 / 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// A message as templates see it: arguments of tool calls parsed into objects when they are
/// valid JSON (templates call `tojson` on them).
fn message_value(m: &Message) -> serde_json::Value {
    let mut v = serde_json::json!({ "role": m.role.as_str(), "content": m.content });
    if let Some(name) = &m.name {
        v["name"] = name.clone().into();
    }
    if let Some(id) = &m.tool_call_id {
        v["tool_call_id"] = id.clone().into();
    }
    if !m.tool_calls.is_empty() {
        v["tool_calls"] = m
            .tool_calls
            .iter()
            .map(|c| {
                let arguments: serde_json::Value =
                    serde_json::from_str(&c.function.arguments).unwrap_or_else(|_| c.function.arguments.clone().into());
                serde_json::json!({"id": c.id, "type": c.kind, "function": {"name": c.function.name, "arguments": arguments}})
            })
            .collect();
    }
    v
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error names the line.
    pub fn new(source: &str) -> Result<Self, TemplateError> {
        Self::with_clock(source, None)
    }

    /// As [`ChatTemplate::new`], with `strftime_now` fixed at `now` (seconds since 1970, UTC)
    /// instead of the current time: for reproducible renders.
    pub fn with_clock(source: &str, now: Option<i64>) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|e| TemplateError::Syntax(describe(&e)))?;
        env.set_syntax(syntax);
        env.set_fuel(Some(MAX_TEMPLATE_FUEL));
        env.set_recursion_limit(MAX_TEMPLATE_RECURSION);
        env.set_unknown_method_callback(content_aware_methods);
        env.add_filter("trim", content_aware_trim);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", move |format: String| {
            let secs = now.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()) as i64
            });
            strftime(&format, secs)
        });
        env.add_filter("tojson", tojson);
        env.add_filter("indent", indent);
        env.add_template_owned(TEMPLATE_NAME, rewrite_generation_tags(source).into_owned())
            .map_err(|e| TemplateError::Syntax(describe(&e)))?;
        Ok(Self { env })
    }

    pub fn builtin(format: BuiltinFormat) -> Self {
        Self::new(format.source()).expect("built-in templates compile")
    }

    pub fn render(&self, ctx: &TemplateContext<'_>) -> Result<String, TemplateError> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TemplateError::Syntax(describe(&e)))?;
        let messages: Vec<serde_json::Value> = ctx.messages.iter().map(message_value).collect();
        let given = minijinja::context! {
            messages => Value::from(Serde(&messages)),
            add_generation_prompt => ctx.add_generation_prompt,
            bos_token => ctx.bos_token,
            eos_token => ctx.eos_token,
        };
        // Without retrieved chunks, `documents` stays undefined too.
        let given = match ctx.documents {
            Some(documents) => {
                minijinja::context! { documents => Value::from(Serde(documents)), ..given }
            }
            None => given,
        };
        // Without tools, `tools` stays undefined (as Hugging Face leaves it): templates test
        // `tools is defined`, and `tools | length` on none fails.
        let context = match ctx.tools {
            Some(tools) => minijinja::context! { tools => Value::from(Serde(tools)), ..given },
            None => given,
        };
        let mut out = CappedWriter::default();
        match template.render_captured_to(context, &mut out) {
            Ok(_) => String::from_utf8(out.bytes)
                .map_err(|_| TemplateError::Render("the output is not valid UTF-8".into())),
            Err(_) if out.full => Err(TemplateError::Limit(format!(
                "the rendered prompt would exceed {MAX_RENDERED_BYTES} bytes"
            ))),
            Err(e) if e.kind() == JinjaErrorKind::OutOfFuel => Err(TemplateError::Limit(format!(
                "rendering needed more than the {MAX_TEMPLATE_FUEL} steps a render may take (a runaway loop?)"
            ))),
            Err(e)
                if e.kind() == JinjaErrorKind::InvalidOperation
                    && e.to_string().contains("recursion") =>
            {
                Err(TemplateError::Limit(format!(
                    "templates nest at most {MAX_TEMPLATE_RECURSION} levels deep: {}",
                    describe(&e)
                )))
            }
            Err(e) => Err(TemplateError::Render(describe(&e))),
        }
    }

    /// Renders like [`ChatTemplate::render`] and also says which bytes of the text came from
    /// message content, so that only the template's own markup becomes special tokens.
    /// Each non-empty content is rendered once more between two marker characters; the
    /// markers' positions are the content spans, trusted only when the text without them is
    /// exactly the ordinary render. Otherwise (a template that transforms content in a way
    /// the markers do not survive) `content_spans` is `None`.
    pub fn render_with_content_spans(
        &self,
        ctx: &TemplateContext<'_>,
    ) -> Result<RenderedPrompt, TemplateError> {
        let text = self.render(ctx)?;
        if let Some(m) = ctx
            .messages
            .iter()
            .find(|m| m.content.contains([CONTENT_OPEN, CONTENT_CLOSE]))
        {
            return Err(TemplateError::Render(format!(
                "a {} message contains U+{:X} or U+{:X}, private-use characters smallmind reserves to mark message content; remove them (or set the chat option parse_special_in_content)",
                m.role.as_str(),
                CONTENT_OPEN as u32,
                CONTENT_CLOSE as u32
            )));
        }
        let marked_messages: Vec<Message> = ctx
            .messages
            .iter()
            .map(|m| {
                let mut m = m.clone();
                if !m.content.is_empty() {
                    m.content = format!("{CONTENT_OPEN}{}{CONTENT_CLOSE}", m.content);
                }
                m
            })
            .collect();
        let marked = self.render(&TemplateContext {
            messages: &marked_messages,
            ..*ctx
        })?;
        let content_spans = content_spans(&marked).filter(|(plain, _)| *plain == text);
        Ok(RenderedPrompt {
            text,
            content_spans: content_spans.map(|(_, spans)| spans),
        })
    }
}

/// Collects the rendered text, refusing to grow past `MAX_RENDERED_BYTES`.
#[derive(Default)]
struct CappedWriter {
    bytes: Vec<u8>,
    full: bool,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_RENDERED_BYTES {
            self.full = true;
            return Err(std::io::Error::other("rendered prompt too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A rendered prompt and where message content sits in it.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedPrompt {
    pub text: String,
    /// Byte ranges of `text` that came from message content, in order; `None` when they
    /// could not be told apart from the template's markup.
    pub content_spans: Option<Vec<Range<usize>>>,
}

/// Private-use characters (plane 15) around each message content while the spans render.
const CONTENT_OPEN: char = '\u{F0000}';
const CONTENT_CLOSE: char = '\u{F0001}';

fn is_marker(c: char) -> bool {
    c == CONTENT_OPEN || c == CONTENT_CLOSE
}

/// The text without markers and the spans between them; `None` when they do not pair up.
fn content_spans(marked: &str) -> Option<(String, Vec<Range<usize>>)> {
    let mut text = String::with_capacity(marked.len());
    let mut spans = Vec::new();
    let mut open: Option<usize> = None;
    for c in marked.chars() {
        match c {
            CONTENT_OPEN if open.is_none() => open = Some(text.len()),
            CONTENT_CLOSE => {
                let start = open.take()?;
                if start < text.len() {
                    spans.push(start..text.len());
                }
            }
            CONTENT_OPEN => return None,
            c => text.push(c),
        }
    }
    open.is_none().then_some((text, spans))
}

/// Strips characters matching `strip` from the start and/or end of `s`, looking through
/// content markers (kept in place), so that `trim` on marked content gives what it gives on
/// the content itself.
fn strip_through_markers(s: &str, start: bool, end: bool, strip: &dyn Fn(char) -> bool) -> String {
    let chars: Vec<char> = s.chars().collect();
    let (mut lo, mut hi) = (0, chars.len());
    let mut head = String::new();
    let mut tail = Vec::new();
    if start {
        while lo < hi && (strip(chars[lo]) || is_marker(chars[lo])) {
            if is_marker(chars[lo]) {
                head.push(chars[lo]);
            }
            lo += 1;
        }
    }
    if end {
        while hi > lo && (strip(chars[hi - 1]) || is_marker(chars[hi - 1])) {
            if is_marker(chars[hi - 1]) {
                tail.push(chars[hi - 1]);
            }
            hi -= 1;
        }
    }
    let mut out = head;
    out.extend(&chars[lo..hi]);
    out.extend(tail.iter().rev());
    out
}

fn stripper(chars: Option<String>) -> Box<dyn Fn(char) -> bool> {
    match chars {
        None => Box::new(char::is_whitespace),
        Some(set) => Box::new(move |c| set.contains(c)),
    }
}

/// The `trim` filter, looking through content markers.
fn content_aware_trim(value: String, chars: Option<String>) -> String {
    strip_through_markers(&value, true, true, &*stripper(chars))
}

/// Python's string methods (minijinja-contrib's pycompat), with `strip`/`lstrip`/`rstrip`
/// looking through content markers and tests (`startswith`, `find`, ...) seeing the content
/// without them.
fn content_aware_methods(
    state: &mut minijinja::State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, JinjaError> {
    let Some(s) = value.as_str().filter(|s| s.contains(is_marker)) else {
        return minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args);
    };
    // One whole content: the method runs on the content, and strings it makes from it
    // (split parts, a stripped or replaced copy) are still content.
    if let Some(inner) = s
        .strip_prefix(CONTENT_OPEN)
        .and_then(|rest| rest.strip_suffix(CONTENT_CLOSE))
        .filter(|inner| !inner.contains(is_marker))
    {
        let wrap = |v: Value| match v.as_str() {
            Some(text) if !text.is_empty() => {
                Value::from(format!("{CONTENT_OPEN}{text}{CONTENT_CLOSE}"))
            }
            _ => v,
        };
        let out = minijinja_contrib::pycompat::unknown_method_callback(
            state,
            &Value::from(inner),
            method,
            args,
        )?;
        return Ok(match out.kind() {
            minijinja::value::ValueKind::String => wrap(out),
            minijinja::value::ValueKind::Seq => match out.try_iter() {
                Ok(items) => Value::from(items.map(wrap).collect::<Vec<_>>()),
                Err(_) => out,
            },
            _ => out,
        });
    }
    let (start, end) = match method {
        "strip" => (true, true),
        "lstrip" => (true, false),
        "rstrip" => (false, true),
        "startswith" | "endswith" | "find" | "rfind" | "count" | "index" | "isdigit"
        | "isalpha" | "isalnum" | "isspace" | "islower" | "isupper" => {
            let clean = Value::from(s.replace(is_marker, ""));
            return minijinja_contrib::pycompat::unknown_method_callback(
                state, &clean, method, args,
            );
        }
        _ => {
            return minijinja_contrib::pycompat::unknown_method_callback(
                state, value, method, args,
            );
        }
    };
    let chars = match args {
        [] => None,
        [c] if c.is_none() => None,
        [c] => Some(
            c.as_str()
                .ok_or_else(|| {
                    JinjaError::new(
                        JinjaErrorKind::InvalidOperation,
                        format!("{method}() takes a string"),
                    )
                })?
                .to_string(),
        ),
        _ => {
            return Err(JinjaError::new(
                JinjaErrorKind::TooManyArguments,
                format!("{method}() takes at most one argument"),
            ));
        }
    };
    Ok(Value::from(strip_through_markers(
        s,
        start,
        end,
        &*stripper(chars),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::message::Role;

    fn render(source: &str, messages: &[Message]) -> Result<String, TemplateError> {
        ChatTemplate::new(source)?.render(&TemplateContext {
            messages,
            tools: None,
            documents: None,
            add_generation_prompt: true,
            bos_token: "<s>",
            eos_token: "</s>",
        })
    }

    #[test]
    fn builtin_formats_render_a_conversation() {
        let msgs = [
            Message::new(Role::System, "Be brief."),
            Message::new(Role::User, "Hi"),
        ];
        assert_eq!(
            render(BuiltinFormat::ChatMl.source(), &msgs).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            render(BuiltinFormat::Gemma.source(), &msgs).unwrap(),
            "<s><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
        );
        assert!(
            render(BuiltinFormat::Llama3.source(), &msgs)
                .unwrap()
                .starts_with(
                    "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                )
        );
    }

    #[test]
    fn raise_exception_and_syntax_errors_are_reported() {
        let err = render(
            "{{ raise_exception('Only user and assistant roles are supported!') }}",
            &[],
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("Only user and assistant roles are supported!"),
            "{err}"
        );
        let err = ChatTemplate::new("line one\n{% if %}").unwrap_err();
        assert!(
            matches!(err, TemplateError::Syntax(_)) && err.to_string().contains("line 2"),
            "{err}"
        );
    }

    #[test]
    fn generation_tags_render_their_body_with_the_same_whitespace_control() {
        let msgs = [Message::new(Role::Assistant, "Sure.")];
        let out = render(
            "A{%- generation -%}\n  {{ messages[0].content }}\n{%- endgeneration %}\nB",
            &msgs,
        )
        .unwrap();
        assert_eq!(out, "ASure.B");
        assert_eq!(
            rewrite_generation_tags("{% if x %}{%+ generation %}y{% endgeneration -%}{% endif %}"),
            "{% if x %}{%+ if true %}y{% endif -%}{% endif %}"
        );
    }

    /// Found by the chat_template fuzz target: "{%}" once made the rewrite slice backwards.
    #[test]
    fn a_tag_opener_followed_by_its_own_percent_is_not_a_closed_tag() {
        // As Jinja lexes it, the first tag runs to the first "%}" after its opener.
        let source = "{%}{% generation %}x{% endgeneration %}{%}";
        assert_eq!(
            rewrite_generation_tags(source),
            "{%}{% generation %}x{% endif %}{%}"
        );
        assert!(ChatTemplate::new("{% 'generation' %}{%}{% {% endif %}").is_err());
    }

    #[test]
    fn variables_the_caller_does_not_give_stay_undefined() {
        let out = render(
            "{{ tools is defined }}|{{ documents is defined }}|{% if tools is not defined or tools | length == 0 %}none{% endif %}",
            &[],
        )
        .unwrap();
        assert_eq!(out, "False|False|none");
    }

    #[test]
    fn indent_and_tojson_follow_python() {
        let out = render(
            "{{ '{\\n' | indent(4, first=true) }}|{{ 'a\\n\\nb' | indent(2) }}|{{ {'b': 1, 'a': 'é'} | tojson(ensure_ascii=true, sort_keys=true, separators=[',', ':']) }}|{{ [1, {'k': []}] | tojson(indent=2) }}",
            &[],
        )
        .unwrap();
        assert_eq!(
            out,
            "    {\n|a\n\n  b|{\"a\":\"\\u00e9\",\"b\":1}|[\n  1,\n  {\n    \"k\": []\n  }\n]"
        );
    }

    #[test]
    fn content_spans_survive_trim_and_strip_and_are_dropped_when_content_is_transformed() {
        let msgs = [
            Message::new(Role::User, "  <|im_end|>hi \n"),
            Message::new(Role::Assistant, "x</think>\n ok "),
        ];
        let template = ChatTemplate::new(
            "{% for m in messages %}[{{ m['content'] | trim }}|{{ m['content'].split('</think>')[-1].lstrip('\\n').rstrip() }}]{% endfor %}",
        )
        .unwrap();
        let ctx = TemplateContext {
            messages: &msgs,
            tools: None,
            documents: None,
            add_generation_prompt: true,
            bos_token: "<s>",
            eos_token: "</s>",
        };
        let rendered = template.render_with_content_spans(&ctx).unwrap();
        assert_eq!(
            rendered.text,
            "[<|im_end|>hi|  <|im_end|>hi][x</think>\n ok| ok]"
        );
        let spans = rendered.content_spans.expect("spans");
        let texts: Vec<&str> = spans.iter().map(|r| &rendered.text[r.clone()]).collect();
        // Parts split from a content are content.
        assert_eq!(
            texts,
            ["<|im_end|>hi", "  <|im_end|>hi", "x</think>\n ok", " ok"]
        );
        // A template that measures content sees the markers: no spans, never wrong ones.
        let measuring = ChatTemplate::new("{{ messages[0]['content'] | length }}").unwrap();
        let rendered = measuring.render_with_content_spans(&ctx).unwrap();
        assert_eq!(rendered.text, "16");
        assert_eq!(rendered.content_spans, None);
        let marked = [Message::new(Role::User, "\u{F0000}")];
        let err = template
            .render_with_content_spans(&TemplateContext {
                messages: &marked,
                ..ctx
            })
            .unwrap_err();
        assert!(err.to_string().contains("U+F0000"), "{err}");
    }

    #[test]
    fn python_methods_tojson_and_strftime_work() {
        let msgs = [Message::new(Role::User, "  padded  ")];
        let out = render("{{ messages[0]['content'].strip() }}|{{ {'a': [1, 'é']} | tojson }}|{{ strftime_now('%Y') | length }}", &msgs).unwrap();
        assert_eq!(out, "padded|{\"a\": [1, \"é\"]}|4");
    }

    fn limit_err(source: &str) -> String {
        match render(source, &[Message::new(Role::User, "hi")]) {
            Err(e @ TemplateError::Limit(_)) => e.to_string(),
            other => panic!("expected a limit error, got {other:?}"),
        }
    }

    #[test]
    fn a_template_that_loops_a_billion_times_runs_out_of_fuel() {
        let err = limit_err(
            "{% for a in range(100000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}",
        );
        assert!(err.contains("steps"), "{err}");
    }

    #[test]
    fn unbounded_macro_recursion_stops_at_the_limit_even_on_a_small_stack() {
        let source = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
        let err = std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(move || limit_err(source))
            .unwrap()
            .join()
            .unwrap();
        assert!(err.contains("64 levels"), "{err}");
    }

    #[test]
    fn a_rendered_prompt_past_the_size_cap_is_refused() {
        let err = limit_err("{% for i in range(100) %}{{ 'x' * 1000000 }}{% endfor %}");
        assert!(err.contains("16777216 bytes"), "{err}");
        // Just under the cap renders.
        let ok = render(
            "{% for i in range(16) %}{{ 'x' * 1000000 }}{% endfor %}",
            &[],
        )
        .unwrap();
        assert_eq!(ok.len(), 16_000_000);
    }
}
