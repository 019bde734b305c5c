//! Pre-tokenizers: split text into the pieces BPE merges within, reproducing the regexes of
//! each model family exactly as llama.cpp applies them (hand-written matchers, as llama.cpp's
//! `unicode_regex_split_custom_*` do).
//!
//! A pre-tokenizer is a chain of splitters. Each splitter cuts every piece from the previous
//! stage into its matches and the unmatched text between them; pieces never merge.

use super::unicode::{Flags, flags};

/// The splitting rules of one `tokenizer.ggml.pre` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizer {
    /// llama.cpp's DEFAULT: punctuation runs, GPT-2, number runs, digit triples.
    Default,
    /// GPT-2's regex.
    Gpt2,
    /// Llama 3: case-insensitive contractions, letters with one leading non-letter, 1-3 digits.
    Llama3,
    /// Qwen 2: as Llama 3 with single digits.
    Qwen2,
    /// SmolLM: single digits, then GPT-2's regex.
    SmolLm,
}

impl PreTokenizer {
    pub const SUPPORTED: &'static str = "default, gpt2, gpt-2, llama3, llama-bpe, qwen2, smollm";

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "default" => Some(Self::Default),
            "gpt2" | "gpt-2" => Some(Self::Gpt2),
            "llama3" | "llama-bpe" => Some(Self::Llama3),
            "qwen2" => Some(Self::Qwen2),
            "smollm" => Some(Self::SmolLm),
            _ => None,
        }
    }

    fn stages(self) -> &'static [Splitter] {
        match self {
            Self::Default => &[
                Splitter::PunctuationRuns,
                Splitter::Gpt2,
                Splitter::NumberRuns,
                Splitter::AsciiDigitTriples,
            ],
            Self::Gpt2 => &[Splitter::Gpt2],
            Self::Llama3 => &[Splitter::Llama3 { max_digits: 3 }],
            Self::Qwen2 => &[Splitter::Llama3 { max_digits: 1 }],
            Self::SmolLm => &[Splitter::SingleNumbers, Splitter::Gpt2],
        }
    }

    /// The pieces of `text`, in order; their concatenation is `text`.
    pub fn split(self, text: &str) -> Vec<&str> {
        let mut pieces = vec![text];
        for stage in self.stages() {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for piece in pieces {
                stage.split_into(piece, &mut next);
            }
            pieces = next;
        }
        pieces
    }
}

#[derive(Debug, Clone, Copy)]
enum Splitter {
    /// `[\p{P}\$\+<=>\^~\|]+`
    PunctuationRuns,
    /// `\p{N}+`
    NumberRuns,
    /// `\p{N}`
    SingleNumbers,
    /// `[0-9][0-9][0-9]`
    AsciiDigitTriples,
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    Gpt2,
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    Llama3 { max_digits: usize },
}

/// A piece as characters with their byte offsets, so matchers can look around by index.
struct Chars<'t> {
    text: &'t str,
    chars: Vec<char>,
    /// Byte offset of each char, plus the text length at the end.
    offsets: Vec<usize>,
}

impl<'t> Chars<'t> {
    fn new(text: &'t str) -> Self {
        let mut chars = Vec::with_capacity(text.len());
        let mut offsets = Vec::with_capacity(text.len() + 1);
        for (i, c) in text.char_indices() {
            chars.push(c);
            offsets.push(i);
        }
        offsets.push(text.len());
        Self {
            text,
            chars,
            offsets,
        }
    }

    fn len(&self) -> usize {
        self.chars.len()
    }

    fn get(&self, i: usize) -> Option<char> {
        self.chars.get(i).copied()
    }

    fn flags(&self, i: usize) -> Flags {
        flags(self.get(i))
    }

    fn slice(&self, start: usize, end: usize) -> &'t str {
        &self.text[self.offsets[start]..self.offsets[end]]
    }
}

impl Splitter {
    fn split_into<'t>(self, piece: &'t str, out: &mut Vec<&'t str>) {
        let chars = Chars::new(piece);
        match self {
            Self::PunctuationRuns => split_runs(&chars, out, |c| {
                let f = flags(Some(c));
                f.punctuation || matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '~' | '|')
            }),
            Self::NumberRuns => split_runs(&chars, out, |c| flags(Some(c)).number),
            Self::SingleNumbers => split_matches(&chars, out, |chars, pos| {
                chars.flags(pos).number.then_some(pos + 1)
            }),
            Self::AsciiDigitTriples => split_matches(&chars, out, |chars, pos| {
                (0..3)
                    .all(|k| chars.get(pos + k).is_some_and(|c| c.is_ascii_digit()))
                    .then_some(pos + 3)
            }),
            Self::Gpt2 => split_whole(&chars, out, gpt2_token_end),
            Self::Llama3 { max_digits } => split_whole(&chars, out, |chars, pos| {
                llama3_token_end(chars, pos, max_digits)
            }),
        }
    }
}

/// Cuts maximal runs of characters satisfying `member` from the text between them.
fn split_runs<'t>(chars: &Chars<'t>, out: &mut Vec<&'t str>, member: impl Fn(char) -> bool) {
    split_matches(chars, out, |chars, pos| {
        let mut end = pos;
        while chars.get(end).is_some_and(&member) {
            end += 1;
        }
        (end > pos).then_some(end)
    });
}

/// Scans left to right; where `match_at(pos)` gives an end, that span is a piece; unmatched
/// characters between matches form pieces of their own.
fn split_matches<'t>(
    chars: &Chars<'t>,
    out: &mut Vec<&'t str>,
    match_at: impl Fn(&Chars<'t>, usize) -> Option<usize>,
) {
    let mut unmatched_start = 0;
    let mut pos = 0;
    while pos < chars.len() {
        match match_at(chars, pos) {
            Some(end) => {
                if unmatched_start < pos {
                    out.push(chars.slice(unmatched_start, pos));
                }
                out.push(chars.slice(pos, end));
                pos = end;
                unmatched_start = end;
            }
            None => pos += 1,
        }
    }
    if unmatched_start < chars.len() {
        out.push(chars.slice(unmatched_start, chars.len()));
    }
}

/// For regexes whose alternatives cover every character: each step yields the next token's end.
fn split_whole<'t>(
    chars: &Chars<'t>,
    out: &mut Vec<&'t str>,
    token_end: impl Fn(&Chars<'t>, usize) -> usize,
) {
    let mut pos = 0;
    while pos < chars.len() {
        let end = token_end(chars, pos).max(pos + 1);
        out.push(chars.slice(pos, end));
        pos = end;
    }
}

/// Length of a contraction ('s 't 'm 'd 're 've 'll) at `pos`, case-sensitive or not.
fn contraction_len(chars: &Chars<'_>, pos: usize, ignore_case: bool) -> usize {
    if chars.get(pos) != Some('\'') {
        return 0;
    }
    let lower = |i| {
        chars.get(i).map(|c: char| {
            if ignore_case {
                c.to_ascii_lowercase()
            } else {
                c
            }
        })
    };
    match (lower(pos + 1), lower(pos + 2)) {
        (Some('s' | 't' | 'm' | 'd'), _) => 2,
        (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l')) => 3,
        _ => 0,
    }
}

fn is_other(f: Flags) -> bool {
    !(f.whitespace || f.letter || f.number) && f.defined
}

fn gpt2_token_end(chars: &Chars<'_>, pos: usize) -> usize {
    let n = contraction_len(chars, pos, false);
    if n > 0 {
        return pos + n;
    }
    let c = chars.get(pos);
    let lead = usize::from(c == Some(' '));
    let f2 = chars.flags(pos + lead);
    let run = |start: usize, class: &dyn Fn(Flags) -> bool| {
        let mut end = start;
        while class(chars.flags(end)) {
            end += 1;
        }
        end
    };
    if f2.letter {
        return run(pos + lead, &|f| f.letter);
    }
    if f2.number {
        return run(pos + lead, &|f| f.number);
    }
    if is_other(f2) {
        return run(pos + lead, &is_other);
    }
    let spaces = run(pos, &|f| f.whitespace) - pos;
    if spaces > 1 && pos + spaces < chars.len() {
        // \s+(?!\S): leave the last space to lead the next word.
        return pos + spaces - 1;
    }
    if spaces > 0 {
        return pos + spaces;
    }
    pos + 1
}

fn llama3_token_end(chars: &Chars<'_>, pos: usize, max_digits: usize) -> usize {
    let n = contraction_len(chars, pos, true);
    if n > 0 {
        return pos + n;
    }
    let c = chars.get(pos);
    let f = chars.flags(pos);
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if !(c == Some('\r') || c == Some('\n') || f.number)
        && (f.letter || chars.flags(pos + 1).letter)
    {
        let mut end = pos + 1;
        while chars.flags(end).letter {
            end += 1;
        }
        return end;
    }
    // \p{N}{1,max_digits}
    if f.number {
        let mut end = pos;
        while end - pos < max_digits && chars.flags(end).number {
            end += 1;
        }
        return end;
    }
    // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
    let lead = usize::from(c == Some(' '));
    if is_other(chars.flags(pos + lead)) {
        let mut end = pos + lead;
        while is_other(chars.flags(end)) {
            end += 1;
        }
        while matches!(chars.get(end), Some('\r' | '\n')) {
            end += 1;
        }
        return end;
    }
    let mut spaces = 0;
    let mut after_last_newline = None;
    while chars.flags(pos + spaces).whitespace {
        if matches!(chars.get(pos + spaces), Some('\r' | '\n')) {
            after_last_newline = Some(pos + spaces + 1);
        }
        spaces += 1;
    }
    // \s*[\r\n]+
    if let Some(end) = after_last_newline {
        return end;
    }
    if spaces > 1 && pos + spaces < chars.len() {
        return pos + spaces - 1;
    }
    if spaces > 0 {
        return pos + spaces;
    }
    pos + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_splits_words_numbers_punctuation_and_spaces() {
        let p = PreTokenizer::Gpt2.split("Hello world's 123  ok!?\n\n x");
        assert_eq!(
            p,
            [
                "Hello", " world", "'s", " 123", " ", " ok", "!?", "\n\n", " x"
            ]
        );
    }

    #[test]
    fn llama3_groups_three_digits_and_keeps_newlines_together() {
        let p = PreTokenizer::Llama3.split("I'M 12345 ok.\n\nYes");
        assert_eq!(p, ["I", "'M", " ", "123", "45", " ok", ".\n\n", "Yes"]);
    }

    #[test]
    fn smollm_and_qwen2_split_every_digit() {
        assert_eq!(
            PreTokenizer::SmolLm.split("in 2024"),
            ["in", " ", "2", "0", "2", "4"]
        );
        assert_eq!(
            PreTokenizer::Qwen2.split("x 2024"),
            ["x", " ", "2", "0", "2", "4"]
        );
    }

    #[test]
    fn pieces_always_concatenate_to_the_text() {
        let text = "Café naïve 日本語 ✓ — emoji 🙂 déjà vu! \t\r\n  $x+=1;  ";
        for pre in [
            PreTokenizer::Default,
            PreTokenizer::Gpt2,
            PreTokenizer::Llama3,
            PreTokenizer::Qwen2,
            PreTokenizer::SmolLm,
        ] {
            assert_eq!(pre.split(text).concat(), text, "{pre:?}");
        }
    }

    #[test]
    fn unknown_names_are_not_guessed() {
        assert_eq!(PreTokenizer::from_name("deepseek-llm"), None);
        assert_eq!(
            PreTokenizer::from_name("llama-bpe"),
            Some(PreTokenizer::Llama3)
        );
    }
}
