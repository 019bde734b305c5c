//! Retrieved chunks: validated from the request or the host's retriever, numbered [1]..[n] in
//! the prompt, and the citations an answer makes to them.

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// One retrieved piece of text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Chunk {
    pub id: String,
    pub content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
}

/// A chunk the answer cited.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Citation {
    pub id: String,
    /// Its number in the prompt, as the answer wrote it ([n]).
    pub index: usize,
    pub source: Option<String>,
    pub title: Option<String>,
    /// The start of the chunk's content (at most 200 characters).
    pub snippet: String,
    pub score: Option<f64>,
}

const SNIPPET_CHARS: usize = 200;

/// Reads a list of chunks `[{id, content, source?, title?, score?}]`; `what` names where they
/// came from in error messages ("retrieved_context", "the retrieve callback's result").
pub fn chunks_from_value(value: &Value, what: &str) -> Result<Vec<Chunk>> {
    let items = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        _ => {
            return Err(Error::invalid_argument(format!(
                "{what} must be a list of {{\"id\", \"content\", \"source\", \"title\", \"score\"}}"
            )));
        }
    };
    let mut chunks = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("{what}[{i}]");
        let obj = item.as_object().ok_or_else(|| {
            Error::invalid_argument(format!(
                "{at} must be an object {{\"id\", \"content\", ...}}"
            ))
        })?;
        if let Some(key) = obj
            .keys()
            .find(|k| !["id", "content", "source", "title", "score"].contains(&k.as_str()))
        {
            return Err(Error::invalid_argument(format!(
                "{at} has an unknown field \"{key}\"; a chunk has \"id\", \"content\", \"source\", \"title\", \"score\""
            )));
        }
        let text = |key: &str| -> Result<Option<String>> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(Value::Number(n)) if key == "id" => Ok(Some(n.to_string())),
                Some(_) => Err(Error::invalid_argument(format!(
                    "{at}.{key} must be a string"
                ))),
            }
        };
        let content = text("content")?.ok_or_else(|| {
            Error::invalid_argument(format!("{at} has no \"content\"; give the chunk's text"))
        })?;
        let score =
            match obj.get("score") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_f64().ok_or_else(|| {
                    Error::invalid_argument(format!("{at}.score must be a number"))
                })?),
            };
        chunks.push(Chunk {
            id: text("id")?.unwrap_or_else(|| (i + 1).to_string()),
            content,
            source: text("source")?,
            title: text("title")?,
            score,
        });
    }
    Ok(chunks)
}

/// The system-message section that gives the model the chunks, for templates without a
/// `documents` variable. Documented in README.md ("Tools and retrieval").
pub fn retrieval_section(chunks: &[Chunk]) -> String {
    let mut s = String::from(
        "Answer using the numbered sources below. After each statement that uses a source, cite it with its number in square brackets, like [1].\n",
    );
    for (i, c) in chunks.iter().enumerate() {
        s.push_str(&format!("\n[{}]", i + 1));
        if let Some(title) = &c.title {
            s.push_str(&format!(" {title}"));
        }
        if let Some(source) = &c.source {
            s.push_str(&format!(" ({source})"));
        }
        s.push('\n');
        s.push_str(c.content.trim());
        s.push('\n');
    }
    s
}

/// The chunks as a template's `documents` variable: {"id": n, "title", "text", "source"}.
pub fn documents_value(chunks: &[Chunk]) -> Value {
    chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            serde_json::json!({
                "id": i + 1,
                "title": c.title.clone().unwrap_or_else(|| format!("[{}]", i + 1)),
                "text": c.content,
                "source": c.source,
            })
        })
        .collect()
}

/// The numbers in `[n]`, `[n, m]` and `[n][m]` markers of `text`, in order of appearance.
fn markers(text: &str) -> Vec<usize> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find(']') else { break };
        let inside = &after[..close];
        let numbers: Option<Vec<usize>> = inside
            .split(',')
            .map(|p| {
                let p = p.trim();
                if !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit()) {
                    p.parse().ok()
                } else {
                    None
                }
            })
            .collect();
        match numbers {
            Some(ns) => {
                found.extend(ns);
                rest = &after[close + 1..];
            }
            None => rest = after,
        }
    }
    found
}

/// The chunks `answer` cites, in order of first mention, and a warning for each marker with
/// no chunk.
pub fn citations(answer: &str, chunks: &[Chunk]) -> (Vec<Citation>, Vec<String>) {
    let mut cited = Vec::new();
    let mut warnings = Vec::new();
    let mut seen = Vec::new();
    for n in markers(answer) {
        if seen.contains(&n) {
            continue;
        }
        seen.push(n);
        match n.checked_sub(1).and_then(|i| chunks.get(i)) {
            Some(c) => cited.push(Citation {
                id: c.id.clone(),
                index: n,
                source: c.source.clone(),
                title: c.title.clone(),
                snippet: c.content.trim().chars().take(SNIPPET_CHARS).collect(),
                score: c.score,
            }),
            None => warnings.push(format!(
                "the answer cites [{n}], but there {} [1] to [{}]; that marker was not listed in citations",
                if chunks.len() == 1 { "is only chunk" } else { "are chunks" },
                chunks.len()
            )),
        }
    }
    (cited, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks() -> Vec<Chunk> {
        chunks_from_value(
            &serde_json::json!([
                {"id": "a", "content": "Paris is the capital of France.", "source": "atlas.txt", "title": "France", "score": 0.9},
                {"id": "b", "content": "Berlin is the capital of Germany."},
                {"content": "Rome is the capital of Italy."}
            ]),
            "retrieved_context",
        )
        .unwrap()
    }

    #[test]
    fn citations_follow_the_order_of_first_mention() {
        let (cited, warnings) = citations(
            "Berlin [2] and Paris [1]; again [2]. Both [1, 3][2].",
            &chunks(),
        );
        let ids: Vec<&str> = cited.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["b", "a", "3"]);
        assert_eq!(cited[1].snippet, "Paris is the capital of France.");
        assert_eq!(cited[1].score, Some(0.9));
        assert!(warnings.is_empty());
    }

    #[test]
    fn unknown_markers_become_warnings_and_other_brackets_are_not_markers() {
        let (cited, warnings) = citations("See [4] and [0], not [a] or [12345] or [ ].", &chunks());
        assert!(cited.is_empty());
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].contains("[4]") && warnings[0].contains("[1] to [3]"),
            "{warnings:?}"
        );
    }

    #[test]
    fn chunks_are_validated_and_numbered_in_the_section() {
        let section = retrieval_section(&chunks());
        assert!(
            section.contains("\n[1] France (atlas.txt)\nParis is the capital of France.\n"),
            "{section}"
        );
        assert!(
            section.contains("\n[3]\nRome is the capital of Italy.\n"),
            "{section}"
        );
        let err =
            chunks_from_value(&serde_json::json!([{"id": "x"}]), "retrieved_context").unwrap_err();
        assert!(
            err.message
                .contains("retrieved_context[0] has no \"content\""),
            "{}",
            err.message
        );
        let err = chunks_from_value(
            &serde_json::json!([{"content": "x", "url": "y"}]),
            "retrieved_context",
        )
        .unwrap_err();
        assert!(
            err.message.contains("unknown field \"url\""),
            "{}",
            err.message
        );
        let err = chunks_from_value(
            &serde_json::json!({"content": "x"}),
            "the retrieve callback's result",
        )
        .unwrap_err();
        assert!(
            err.message
                .contains("the retrieve callback's result must be a list"),
            "{}",
            err.message
        );
    }
}
