//! Pre-tokenizers: split text into the pieces BPE merges within, reproducing the regexes of
//! each model family (llama.cpp's `llama-vocab.cpp`, from Hugging Face's `tokenizer.json`).
//!
//! A pre-tokenizer is a chain of splitters. Each splitter cuts every piece from the previous
//! stage into its matches and the unmatched text between them; pieces never merge.
//!
//! The GPT-2 and Llama 3 families run on hand-written matchers (as llama.cpp's
//! `unicode_regex_split_custom_*` do): they are the hot path of every chat prompt and are
//! tested equal to the regexes they replace. The other families run their regex with
//! fancy-regex. It is needed for `\s+(?!\S)` (look-ahead, which the `regex` crate lacks) and
//! matches the way Hugging Face's Oniguruma runs these patterns (leftmost alternative first,
//! backtracking); patterns without look-around are handed whole to the `regex` crate's
//! automata, so they cannot backtrack badly.

use std::sync::OnceLock;

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
    /// SmolLM, StarCoder, Refact, Command-R: single digits, then GPT-2's regex.
    SmolLm,
    /// Falcon: punctuation runs (with the backtick), GPT-2, digit triples.
    Falcon,
    /// DeepSeek LLM: line breaks, Latin/Greek/Cyrillic-like letter runs, ASCII and full-width
    /// punctuation, trailing spaces, CJK runs, number runs.
    DeepSeekLlm,
    /// DeepSeek Coder: line breaks, letter runs, punctuation runs, CJK runs, single digits.
    DeepSeekCoder,
    /// Qwen 3.5: as Qwen 2, with combining marks counted as letters.
    Qwen35,
}

impl PreTokenizer {
    pub const SUPPORTED: &'static str = "default, gpt2, gpt-2, mpt, llama3, llama-bpe, qwen2, qwen35, \
         smollm, starcoder, refact, command-r, falcon, deepseek-llm, deepseek-coder";

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "default" => Some(Self::Default),
            // MPT's regex is GPT-2's.
            "gpt2" | "gpt-2" | "mpt" => Some(Self::Gpt2),
            "llama3" | "llama-bpe" => Some(Self::Llama3),
            "qwen2" => Some(Self::Qwen2),
            "qwen35" => Some(Self::Qwen35),
            "smollm" | "starcoder" | "refact" | "command-r" => Some(Self::SmolLm),
            "falcon" => Some(Self::Falcon),
            "deepseek-llm" => Some(Self::DeepSeekLlm),
            "deepseek-coder" => Some(Self::DeepSeekCoder),
            _ => None,
        }
    }

    /// Whether a piece that is itself a vocabulary token skips the merges (llama.cpp's
    /// `ignore_merges`, Hugging Face's `ignore_merges: true`).
    pub fn ignores_merges(self) -> bool {
        self == Self::Llama3
    }

    fn stages(self) -> &'static [Splitter] {
        match self {
            Self::Default => &[
                Splitter::PunctuationRuns { backtick: false },
                Splitter::Gpt2,
                Splitter::NumberRuns,
                Splitter::AsciiDigitTriples,
            ],
            Self::Gpt2 => &[Splitter::Gpt2],
            Self::Llama3 => &[Splitter::Llama3 { max_digits: 3 }],
            Self::Qwen2 => &[Splitter::Llama3 { max_digits: 1 }],
            Self::SmolLm => &[Splitter::SingleNumbers, Splitter::Gpt2],
            Self::Falcon => &[
                Splitter::PunctuationRuns { backtick: true },
                Splitter::Gpt2,
                Splitter::AsciiDigitTriples,
            ],
            Self::DeepSeekLlm => &[
                Splitter::Regex(Pat::LineBreak),
                Splitter::Regex(Pat::DeepseekLlmLetters),
                Splitter::Regex(Pat::DeepseekLlmPunctuation),
                Splitter::Regex(Pat::TrailingSpaces),
                Splitter::Regex(Pat::CjkRuns),
                Splitter::Regex(Pat::NumberRuns),
            ],
            Self::DeepSeekCoder => &[
                Splitter::Regex(Pat::LineBreak),
                Splitter::Regex(Pat::LetterRuns),
                Splitter::Regex(Pat::PunctuationRuns),
                Splitter::Regex(Pat::CjkRuns),
                Splitter::SingleNumbers,
            ],
            Self::Qwen35 => &[Splitter::Regex(Pat::Qwen35)],
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

/// A regex pattern, compiled the first time a tokenizer needs it.
#[derive(Debug)]
struct Pattern {
    source: &'static str,
    compiled: OnceLock<fancy_regex::Regex>,
}

impl Pattern {
    const fn new(source: &'static str) -> Self {
        Self {
            source,
            compiled: OnceLock::new(),
        }
    }

    fn regex(&self) -> &fancy_regex::Regex {
        self.compiled.get_or_init(|| {
            fancy_regex::Regex::new(self.source)
                .expect("pre-tokenizer patterns are constants; a unit test compiles each")
        })
    }
}

static LINE_BREAK: Pattern = Pattern::new("[\r\n]");
static DEEPSEEK_LLM_LETTERS: Pattern = Pattern::new(
    "\\s?[A-Za-z\u{b5}\u{c0}-\u{d6}\u{d8}-\u{f6}\u{f8}-\u{1ba}\u{1bc}-\u{1bf}\u{1c4}-\u{293}\u{295}-\u{2af}\u{370}-\u{373}\u{376}\u{377}\u{37b}-\u{37d}\u{37f}\u{386}\u{388}-\u{38a}\u{38c}\u{38e}-\u{3a1}\u{3a3}-\u{3f5}\u{3f7}-\u{481}\u{48a}-\u{52f}\u{531}-\u{556}\u{10a0}-\u{10c5}\u{13a0}-\u{13f5}\u{13f8}-\u{13fd}\u{1c90}-\u{1cba}\u{1cbd}-\u{1cbf}\u{1d00}-\u{1d2b}\u{1d6b}-\u{1d77}\u{1d79}-\u{1d9a}\u{1e00}-\u{1f15}\u{1f18}-\u{1f1d}\u{1f20}-\u{1f45}\u{1f48}-\u{1f4d}\u{1f50}-\u{1f57}\u{1f59}\u{1f5b}\u{1f5d}\u{1f5f}-\u{1f7d}\u{1f80}-\u{1fb4}\u{1fb6}-\u{1fbc}\u{1fbe}\u{1fc2}-\u{1fc4}\u{1fc6}-\u{1fcc}\u{1fd0}-\u{1fd3}\u{1fd6}-\u{1fdb}\u{1fe0}-\u{1fec}\u{1ff2}-\u{1ff4}\u{1ff6}-\u{1ffc}\u{2102}\u{2107}\u{210a}-\u{2113}\u{2115}\u{2119}-\u{211d}\u{2124}\u{2126}\u{2128}\u{212a}-\u{212d}\u{212f}-\u{2134}\u{2139}\u{213c}-\u{213f}\u{2145}-\u{2149}\u{214e}\u{2183}\u{2184}\u{2c00}-\u{2c7b}\u{2c7e}-\u{2ce4}\u{2ceb}-\u{2cee}\u{2cf2}\u{2cf3}\u{a640}-\u{a66d}\u{a680}-\u{a69b}\u{a722}-\u{a76f}\u{a771}-\u{a787}\u{a78b}-\u{a78e}\u{ab70}-\u{abbf}\u{fb00}-\u{fb06}\u{fb13}-\u{fb17}\u{ff21}-\u{ff3a}\u{ff41}-\u{ff5a}\u{10400}-\u{1044f}\u{104b0}-\u{104d3}\u{104d8}-\u{104fb}\u{10c80}-\u{10cb2}\u{10cc0}-\u{10cf2}\u{118a0}-\u{118df}\u{1e900}-\u{1e943}]+",
);
static DEEPSEEK_LLM_PUNCTUATION: Pattern = Pattern::new(
    "\\s?[!-/:-~\u{ff01}-\u{ff0f}\u{ff1a}-\u{ff5e}\u{2018}-\u{201f}\u{3000}-\u{3002}]+",
);
static TRAILING_SPACES: Pattern = Pattern::new("\\s+$");
static CJK_RUNS: Pattern = Pattern::new("[\u{4e00}-\u{9fa5}\u{800}-\u{4e00}\u{ac00}-\u{d7ff}]+");
static NUMBER_RUNS: Pattern = Pattern::new("\\p{N}+");
static LETTER_RUNS: Pattern = Pattern::new("\\s?\\p{L}+");
static PUNCTUATION_RUNS: Pattern = Pattern::new("\\s?\\p{P}+");
static QWEN35: Pattern = Pattern::new(
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
);

/// The patterns the regex splitters run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pat {
    LineBreak,
    DeepseekLlmLetters,
    DeepseekLlmPunctuation,
    TrailingSpaces,
    CjkRuns,
    NumberRuns,
    LetterRuns,
    PunctuationRuns,
    Qwen35,
}

impl Pat {
    #[cfg(test)]
    const ALL: [Pat; 9] = [
        Pat::LineBreak,
        Pat::DeepseekLlmLetters,
        Pat::DeepseekLlmPunctuation,
        Pat::TrailingSpaces,
        Pat::CjkRuns,
        Pat::NumberRuns,
        Pat::LetterRuns,
        Pat::PunctuationRuns,
        Pat::Qwen35,
    ];

    fn pattern(self) -> &'static Pattern {
        match self {
            Self::LineBreak => &LINE_BREAK,
            Self::DeepseekLlmLetters => &DEEPSEEK_LLM_LETTERS,
            Self::DeepseekLlmPunctuation => &DEEPSEEK_LLM_PUNCTUATION,
            Self::TrailingSpaces => &TRAILING_SPACES,
            Self::CjkRuns => &CJK_RUNS,
            Self::NumberRuns => &NUMBER_RUNS,
            Self::LetterRuns => &LETTER_RUNS,
            Self::PunctuationRuns => &PUNCTUATION_RUNS,
            Self::Qwen35 => &QWEN35,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Splitter {
    /// `[\p{P}\$\+<=>\^~\|]+`, with the backtick too for Falcon.
    PunctuationRuns { backtick: bool },
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
    /// Any other pattern: its matches, and the text between them, become pieces.
    Regex(Pat),
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
            Self::PunctuationRuns { backtick } => split_runs(&chars, out, |c| {
                let f = flags(Some(c));
                f.punctuation
                    || matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '~' | '|')
                    || (backtick && c == '`')
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
            Self::Regex(pat) => split_regex(pat.pattern().regex(), piece, out),
        }
    }
}

/// Cuts the matches of `regex` (empty ones ignored) from the text between them. A match the
/// engine gives up on (its backtracking limit) ends the matching: the rest stays one piece.
fn split_regex<'t>(regex: &fancy_regex::Regex, piece: &'t str, out: &mut Vec<&'t str>) {
    let mut last = 0;
    for found in regex.find_iter(piece) {
        let Ok(m) = found else { break };
        if m.start() == m.end() {
            continue;
        }
        if last < m.start() {
            out.push(&piece[last..m.start()]);
        }
        out.push(m.as_str());
        last = m.end();
    }
    if last < piece.len() {
        out.push(&piece[last..]);
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
            PreTokenizer::Falcon,
            PreTokenizer::DeepSeekLlm,
            PreTokenizer::DeepSeekCoder,
            PreTokenizer::Qwen35,
        ] {
            assert_eq!(pre.split(text).concat(), text, "{pre:?}");
        }
    }

    const GPT2_REGEX: &str =
        "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";
    fn llama3_regex(digits: &str) -> String {
        format!(
            "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{{L}}\\p{{N}}]?\\p{{L}}+|\\p{{N}}{digits}| ?[^\\s\\p{{L}}\\p{{N}}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
        )
    }

    fn regex_split<'t>(pattern: &str, text: &'t str) -> Vec<&'t str> {
        let mut out = Vec::new();
        split_regex(&fancy_regex::Regex::new(pattern).unwrap(), text, &mut out);
        out
    }

    #[test]
    fn hand_written_matchers_equal_the_regexes_they_replace() {
        let texts = [
            "Hello world's 123  ok!?\n\n x",
            "I'M 12345 ok.\n\nYes   \t\r\n  tail  ",
            "Café naïve 日本語 ✓ — emoji 🙂 déjà vu! \t\r\n  $x+=1;  ",
            "   leading, 'LL 'Ve 'd\u{a0}\u{2003}x\n \n\t\tb ..\n\r\n",
            "x = [1, 22, 333, 4444]; // naïve ́combining a\u{301}b\u{0}\u{7f}",
        ];
        for text in texts {
            assert_eq!(
                PreTokenizer::Gpt2.split(text),
                regex_split(GPT2_REGEX, text),
                "{text:?}"
            );
            assert_eq!(
                PreTokenizer::Llama3.split(text),
                regex_split(&llama3_regex("{1,3}"), text),
                "{text:?}"
            );
            assert_eq!(
                PreTokenizer::Qwen2.split(text),
                regex_split(&llama3_regex(""), text),
                "{text:?}"
            );
        }
    }

    #[test]
    fn every_pattern_compiles() {
        for pat in Pat::ALL {
            let source = pat.pattern().source;
            assert!(fancy_regex::Regex::new(source).is_ok(), "{source}");
        }
    }

    #[test]
    fn deepseek_coder_splits_lines_letters_punctuation_and_digits() {
        assert_eq!(
            PreTokenizer::DeepSeekCoder.split("fn a1(x) {\n  42\n}"),
            [
                "fn", " a", "1", "(", "x", ")", " {", "\n", "  ", "4", "2", "\n", "}"
            ]
        );
    }

    #[test]
    fn unknown_names_are_not_guessed() {
        assert_eq!(PreTokenizer::from_name("deepseek-v3"), None);
        assert_eq!(PreTokenizer::from_name("Falcon"), None);
        assert_eq!(
            PreTokenizer::from_name("llama-bpe"),
            Some(PreTokenizer::Llama3)
        );
    }
}
