//! Chat templates: the model's own Jinja template (`tokenizer.chat_template`), run by
//! minijinja set up the way Hugging Face transformers renders them, or a built-in format for
//! files that have none.

use std::fmt;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde};
use minijinja::{Environment, Error as JinjaError, ErrorKind as JinjaErrorKind, Value};

use super::message::Message;
use crate::error::{Error, ErrorKind};

const TEMPLATE_NAME: &str = "chat_template";

#[derive(Debug, Clone, PartialEq)]
pub enum TemplateError {
    /// The template does not compile.
    Syntax(String),
    /// Rendering failed, e.g. the template raised an exception about the messages.
    Render(String),
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax(m) => write!(f, "the model's chat template does not compile: {m}"),
            Self::Render(m) => write!(f, "the chat template rejected the conversation: {m}"),
        }
    }
}

impl std::error::Error for TemplateError {}

impl From<TemplateError> for Error {
    fn from(e: TemplateError) -> Self {
        let kind = match e {
            TemplateError::Syntax(_) => ErrorKind::UnsupportedModel,
            TemplateError::Render(_) => ErrorKind::InvalidArgument,
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
    fn source(self) -> &'static str {
        match self {
            Self::ChatMl => {
                "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
            }
            Self::Llama3 => {
                "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
            }
            Self::Gemma => {
                "{{ bos_token }}{% set first_user_prefix = '' %}{% if messages and messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}{% else %}{% set loop_messages = messages %}{% endif %}{% for message in loop_messages %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
            }
        }
    }

    /// The format a model family uses.
    pub fn for_architecture(arch: crate::model::Architecture) -> Self {
        use crate::model::Architecture;
        match arch {
            Architecture::Gemma3 => Self::Gemma,
            Architecture::Llama | Architecture::Qwen2 | Architecture::Qwen3 => Self::ChatMl,
        }
    }
}

/// What a template sees.
pub struct TemplateContext<'a> {
    pub messages: &'a [Message],
    pub tools: Option<&'a serde_json::Value>,
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
        let Some(close) = tag.find("%}") else {
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
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
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
        // Without tools, `tools` stays undefined (as Hugging Face leaves it): templates test
        // `tools is defined`, and `tools | length` on none fails.
        let context = match ctx.tools {
            Some(tools) => minijinja::context! { tools => Value::from(Serde(tools)), ..given },
            None => given,
        };
        template
            .render(context)
            .map_err(|e| TemplateError::Render(describe(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::message::Role;

    fn render(source: &str, messages: &[Message]) -> Result<String, TemplateError> {
        ChatTemplate::new(source)?.render(&TemplateContext {
            messages,
            tools: None,
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
    fn python_methods_tojson_and_strftime_work() {
        let msgs = [Message::new(Role::User, "  padded  ")];
        let out = render("{{ messages[0]['content'].strip() }}|{{ {'a': [1, 'é']} | tojson }}|{{ strftime_now('%Y') | length }}", &msgs).unwrap();
        assert_eq!(out, "padded|{\"a\": [1, \"é\"]}|4");
    }
}
