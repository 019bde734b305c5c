//! Every chat template in llama.cpp's `models/templates` folder (real models' templates,
//! fetched by `scripts/fetch-llamacpp-data`) rendered by smallmind and by Python's jinja2 set
//! up as Hugging Face sets it up (tests/support/jinja_reference.py), with a plain conversation
//! (system, user, assistant, user) and with tools, a tool call and its result. Where jinja2
//! renders a template, smallmind must render the same text. The tools case runs at the
//! renderer level (chat sends refuse tools until tool calling lands).

#[path = "support/models.rs"]
mod models;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use smallmind::chat::{ChatTemplate, Message, TemplateContext};

/// Where smallmind knowingly differs from jinja2, and how. functionary v3.1 adds `|safe` text
/// to `tojson`'s output: Python's `Markup + str` HTML-escapes the str (so its tool list
/// reaches the model as `{&#34;description&#34;: ...}`), minijinja concatenates plain text.
/// (template, context index, how jinja2's text becomes smallmind's).
type KnownDifference = (&'static str, usize, fn(&str) -> String);

const KNOWN_DIFFERENCES: [KnownDifference; 1] =
    [("meetkai-functionary-medium-v3.1", 1, |jinja2| {
        jinja2.replace("&#34;", "\"")
    })];

/// 2026-01-15 09:30:00 UTC: `strftime_now` is fixed on both sides.
const NOW: i64 = 1_768_469_400;

fn plain_conversation() -> Value {
    json!([
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
        {"role": "user", "content": "And of Germany?"}
    ])
}

fn tools() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {"type": "object",
                       "properties": {"city": {"type": "string", "description": "The city name."}},
                       "required": ["city"]}}}])
}

/// Tool-call ids are nine letters and digits: Mistral's templates insist on that.
fn tool_conversation() -> Value {
    json!([
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call12345", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call12345", "name": "get_weather",
         "content": "{\"temperature\": 18, \"sky\": \"clear\"}"}
    ])
}

fn contexts() -> Vec<Value> {
    let common = |messages: Value| {
        json!({"messages": messages, "add_generation_prompt": true,
               "bos_token": "<s>", "eos_token": "</s>"})
    };
    let mut with_tools = common(tool_conversation());
    with_tools["tools"] = tools();
    vec![common(plain_conversation()), with_tools]
}

fn templates() -> BTreeMap<String, String> {
    let (dir, _) = models::llamacpp_data();
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir.join("templates")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jinja") {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            out.insert(name, std::fs::read_to_string(&path).unwrap());
        }
    }
    out
}

fn jinja2_renders(templates: &BTreeMap<String, String>, contexts: &[Value]) -> Value {
    let (_, python) = models::llamacpp_data();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/jinja_reference.py"
    );
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run jinja2");
    let request = json!({"now": NOW, "templates": templates, "contexts": contexts});
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "jinja_reference.py failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn smallmind_render(source: &str, ctx: &Value) -> Result<String, String> {
    let messages: Vec<Message> = serde_json::from_value(ctx["messages"].clone()).unwrap();
    let template = ChatTemplate::with_clock(source, Some(NOW)).map_err(|e| e.to_string())?;
    template
        .render(&TemplateContext {
            messages: &messages,
            tools: ctx.get("tools"),
            documents: ctx.get("documents"),
            add_generation_prompt: true,
            bos_token: "<s>",
            eos_token: "</s>",
        })
        .map_err(|e| e.to_string())
}

#[test]
fn every_template_jinja2_renders_renders_the_same_without_and_with_tools() {
    let templates = templates();
    assert!(templates.len() >= 70, "{} templates", templates.len());
    let contexts = contexts();
    let reference = jinja2_renders(&templates, &contexts);
    let mut compared = [0usize; 2];
    let mut jinja2_refuses = Vec::new();
    let mut differences = Vec::new();
    for (name, source) in &templates {
        for (i, ctx) in contexts.iter().enumerate() {
            let expected = &reference[name][i];
            let Some(expected) = expected["text"].as_str() else {
                jinja2_refuses.push(format!("{name} [{i}]: {}", expected["error"]));
                continue;
            };
            compared[i] += 1;
            let known = KNOWN_DIFFERENCES
                .iter()
                .find(|(n, c, _)| n == name && *c == i);
            let adjusted;
            let expected = match known {
                Some((_, _, adjust)) => {
                    adjusted = adjust(expected);
                    assert_ne!(adjusted, expected, "{name} [{i}] no longer differs");
                    adjusted.as_str()
                }
                None => expected,
            };
            match smallmind_render(source, ctx) {
                Ok(got) if got == expected => {}
                Ok(got) => differences.push(format!(
                    "{name} [{i}]: differs\n--- jinja2\n{expected}\n--- smallmind\n{got}"
                )),
                Err(e) => differences.push(format!("{name} [{i}]: smallmind fails: {e}")),
            }
        }
    }
    eprintln!(
        "compared {} plain and {} with tools; jinja2 refuses:\n{}",
        compared[0],
        compared[1],
        jinja2_refuses.join("\n")
    );
    assert!(
        differences.is_empty(),
        "{} renders differ from jinja2's:\n{}",
        differences.len(),
        differences.join("\n\n")
    );
    assert!(
        compared[0] >= 65 && compared[1] >= 60,
        "compared {compared:?}"
    );
}

fn vocab_only_smollm2(chat_template: Option<&str>) -> std::sync::Arc<smallmind::engine::Engine> {
    let mut options =
        json!({"model_path": models::smollm2().to_str().unwrap(), "vocab_only": true});
    if let Some(t) = chat_template {
        options["chat_template"] = t.into();
    }
    let options = smallmind::api::parse_engine_options(&options.to_string()).unwrap();
    smallmind::engine::Engine::load(&options, &mut smallmind::engine::SilentLoad).unwrap()
}

fn rendered_prompt(chat: &smallmind::chat::Chat) -> String {
    let request = json!({"messages": [{"role": "user", "content": "Hi"}]}).to_string();
    let out: Value = serde_json::from_str(&chat.render(&request).unwrap()).unwrap();
    out["prompt"].as_str().unwrap().to_string()
}

#[test]
fn the_chat_template_option_of_engine_and_chat_replaces_the_files() {
    use smallmind::chat::Chat;
    let engine_template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}";
    let engine = vocab_only_smollm2(Some(engine_template));
    let info: Value = serde_json::from_str(&smallmind::api::info_json(&engine).unwrap()).unwrap();
    assert_eq!(info["chat_template"], engine_template);
    // No system message: SmolLM2's own template would add its default one.
    let chat = Chat::create(std::sync::Arc::clone(&engine), None).unwrap();
    assert_eq!(rendered_prompt(&chat), "[user] Hi\n");
    let options = json!({"chat_template": "<{{ messages | length }}>{{ messages[0].content }}"});
    let chat = Chat::create(engine, Some(&options.to_string())).unwrap();
    assert_eq!(rendered_prompt(&chat), "<1>Hi");
}

#[test]
fn a_chat_template_option_that_does_not_compile_is_refused() {
    use smallmind::chat::Chat;
    let err = smallmind::api::parse_engine_options(
        &json!({"model_path": "m.gguf", "chat_template": "{% if %}"}).to_string(),
    )
    .unwrap_err();
    assert_eq!(err.kind, smallmind::ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("chat_template"), "{err}");
    let options = json!({"chat_template": "{% for %}"}).to_string();
    let Err(err) = Chat::create(vocab_only_smollm2(None), Some(&options)) else {
        panic!("a chat_template that does not compile was accepted");
    };
    assert_eq!(err.kind, smallmind::ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("chat_template"), "{err}");
}
