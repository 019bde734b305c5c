//! Tokenizers as GGUF files define them: byte-level BPE (`gpt2`) with the pre-tokenizer named
//! by `tokenizer.ggml.pre`, and SentencePiece (`llama`). Special tokens, BOS/EOS rules and
//! detokenization follow llama.cpp. Knows nothing of models or chat.

mod bpe;
mod bytes;
mod pretokenize;
mod spm;
mod stream;
mod unicode;

/// The tokenizer's maps hash with foldhash (seeded per process): several times faster than
/// std's SipHash for the vocabulary and merge tables built at every load and probed for every
/// piece encoded.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::fmt;

pub use pretokenize::PreTokenizer;
pub use stream::StreamDecoder;

use crate::error::{Error, ErrorKind};
use crate::gguf::GgufFile;

/// Token types as GGUF stores them (`tokenizer.ggml.token_type`).
const TYPE_NORMAL: i32 = 1;
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;
const TYPE_BYTE: i32 = 6;

/// Token texts llama.cpp treats as ending generation, besides the EOS/EOT ids.
const END_OF_GENERATION_TEXTS: [&str; 10] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
];

#[derive(Debug, Clone, PartialEq)]
pub enum TokenizerError {
    UnsupportedModel(String),
    UnsupportedPreTokenizer(String),
    Malformed(String),
}

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedModel(m) => {
                write!(
                    f,
                    "tokenizer model '{m}' is not supported; smallmind reads 'gpt2' (byte-level BPE) and 'llama' (SentencePiece)"
                )
            }
            Self::UnsupportedPreTokenizer(p) => write!(
                f,
                "BPE pre-tokenizer '{p}' (tokenizer.ggml.pre) is not supported; smallmind knows {}",
                PreTokenizer::SUPPORTED
            ),
            Self::Malformed(m) => write!(f, "malformed tokenizer in the model file: {m}"),
        }
    }
}

impl std::error::Error for TokenizerError {}

impl From<TokenizerError> for Error {
    fn from(e: TokenizerError) -> Self {
        let kind = match e {
            TokenizerError::Malformed(_) => ErrorKind::ModelLoad,
            _ => ErrorKind::UnsupportedModel,
        };
        Error::new(kind, e.to_string())
    }
}

/// Everything a tokenizer is built from, as GGUF metadata holds it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenizerConfig {
    /// `tokenizer.ggml.model`: "gpt2" or "llama".
    pub model: String,
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// May be empty (every token normal).
    pub token_types: Vec<i32>,
    /// May be empty (SentencePiece scores all 0).
    pub scores: Vec<f32>,
    pub merges: Vec<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub eot_id: Option<u32>,
    pub unknown_id: Option<u32>,
    pub padding_id: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
}

fn strings(file: &GgufFile, key: &str) -> Result<Vec<String>, TokenizerError> {
    match file.get_array(key) {
        None => Ok(Vec::new()),
        Some(values) => values
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    TokenizerError::Malformed(format!(
                        "{key} holds a {} where strings belong",
                        v.type_name()
                    ))
                })
            })
            .collect(),
    }
}

impl TokenizerConfig {
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        let model = file
            .get_str("tokenizer.ggml.model")
            .ok_or_else(|| TokenizerError::Malformed("tokenizer.ggml.model is missing".into()))?
            .to_string();
        let tokens = strings(file, "tokenizer.ggml.tokens")?;
        let token_types = match file.get_array("tokenizer.ggml.token_type") {
            None => Vec::new(),
            Some(values) => values
                .iter()
                .map(|v| {
                    v.as_i64().map(|t| t as i32).ok_or_else(|| {
                        TokenizerError::Malformed(
                            "tokenizer.ggml.token_type holds a non-integer".into(),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let scores = match file.get_array("tokenizer.ggml.scores") {
            None => Vec::new(),
            Some(values) => values
                .iter()
                .map(|v| {
                    v.as_f32().ok_or_else(|| {
                        TokenizerError::Malformed("tokenizer.ggml.scores holds a non-number".into())
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Self {
            model,
            pre: file.get_str("tokenizer.ggml.pre").map(str::to_string),
            tokens,
            token_types,
            scores,
            merges: strings(file, "tokenizer.ggml.merges")?,
            bos_id: file.get_u32("tokenizer.ggml.bos_token_id"),
            eos_id: file.get_u32("tokenizer.ggml.eos_token_id"),
            eot_id: file.get_u32("tokenizer.ggml.eot_token_id"),
            unknown_id: file.get_u32("tokenizer.ggml.unknown_token_id"),
            padding_id: file.get_u32("tokenizer.ggml.padding_token_id"),
            add_bos: file.get_bool("tokenizer.ggml.add_bos_token"),
            add_eos: file.get_bool("tokenizer.ggml.add_eos_token"),
            add_space_prefix: file.get_bool("tokenizer.ggml.add_space_prefix"),
        })
    }
}

#[derive(Debug)]
enum Algorithm {
    Bpe {
        pre: PreTokenizer,
        merges: bpe::MergeTable,
        ignore_merges: bool,
        byte_char_ids: [Option<u32>; 256],
    },
    SentencePiece {
        byte_tokens: [Option<u32>; 256],
        add_space_prefix: bool,
    },
}

/// A tokenizer: immutable after construction, shared by every thread.
#[derive(Debug)]
pub struct Tokenizer {
    algorithm: Algorithm,
    tokens: Vec<String>,
    token_types: Vec<i32>,
    scores: Vec<f32>,
    token_to_id: HashMap<String, u32>,
    /// Special tokens matched in text, grouped by first byte, longest first.
    specials_by_first_byte: HashMap<u8, Vec<u32>>,
    /// The bytes each token contributes to text (control tokens: their text).
    pieces: Vec<Vec<u8>>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    end_of_generation: Vec<u32>,
}

impl Tokenizer {
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        Self::new(TokenizerConfig::from_gguf(file)?)
    }

    pub fn new(config: TokenizerConfig) -> Result<Self, TokenizerError> {
        let n = config.tokens.len();
        if n == 0 {
            return Err(TokenizerError::Malformed(
                "tokenizer.ggml.tokens is missing or empty".into(),
            ));
        }
        if !config.token_types.is_empty() && config.token_types.len() != n {
            return Err(TokenizerError::Malformed(format!(
                "{} token types for {n} tokens",
                config.token_types.len()
            )));
        }
        if !config.scores.is_empty() && config.scores.len() != n {
            return Err(TokenizerError::Malformed(format!(
                "{} scores for {n} tokens",
                config.scores.len()
            )));
        }
        for (name, id) in [
            ("bos", config.bos_id),
            ("eos", config.eos_id),
            ("eot", config.eot_id),
            ("unknown", config.unknown_id),
        ] {
            if let Some(id) = id.filter(|&id| id as usize >= n) {
                return Err(TokenizerError::Malformed(format!(
                    "the {name} token id {id} is outside the {n}-token vocabulary"
                )));
            }
        }
        let token_types = if config.token_types.is_empty() {
            vec![TYPE_NORMAL; n]
        } else {
            config.token_types
        };
        let mut token_to_id = HashMap::with_capacity_and_hasher(n, Default::default());
        for (id, text) in config.tokens.iter().enumerate() {
            // The first id wins when a text repeats, as in llama.cpp.
            token_to_id.entry(text.clone()).or_insert(id as u32);
        }

        let (algorithm, add_bos_default) = match config.model.as_str() {
            "gpt2" => {
                let pre_name = config.pre.as_deref().unwrap_or("default");
                let pre = PreTokenizer::from_name(pre_name)
                    .ok_or_else(|| TokenizerError::UnsupportedPreTokenizer(pre_name.to_string()))?;
                let mut merges = bpe::MergeTable::with_capacity_and_hasher(
                    config.merges.len(),
                    Default::default(),
                );
                let mut joined = String::new();
                for (rank, merge) in config.merges.iter().enumerate() {
                    let (left, right) = merge.split_once(' ').ok_or_else(|| {
                        TokenizerError::Malformed(format!(
                            "merge {rank} '{merge}' is not two tokens separated by a space"
                        ))
                    })?;
                    let id = |t: &str| {
                        token_to_id.get(t).copied().ok_or_else(|| {
                            TokenizerError::Malformed(format!(
                                "merge {rank} '{merge}' names '{t}', which is not in the vocabulary"
                            ))
                        })
                    };
                    joined.clear();
                    joined.push_str(left);
                    joined.push_str(right);
                    let merged = id(&joined)?;
                    merges
                        .entry((id(left)?, id(right)?))
                        .or_insert((rank as u32, merged));
                }
                let byte_char_ids = std::array::from_fn(|b| {
                    token_to_id
                        .get(bytes::byte_to_char(b as u8).to_string().as_str())
                        .copied()
                });
                (
                    Algorithm::Bpe {
                        pre,
                        merges,
                        ignore_merges: pre.ignores_merges(),
                        byte_char_ids,
                    },
                    false,
                )
            }
            "llama" => {
                let byte_tokens = std::array::from_fn(|b| {
                    token_to_id.get(format!("<0x{b:02X}>").as_str()).copied()
                });
                (
                    Algorithm::SentencePiece {
                        byte_tokens,
                        add_space_prefix: config.add_space_prefix.unwrap_or(true),
                    },
                    true,
                )
            }
            other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
        };

        let pieces = config
            .tokens
            .iter()
            .zip(&token_types)
            .map(|(text, &ty)| piece_bytes(&algorithm, text, ty))
            .collect();
        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&id| {
                matches!(token_types[id as usize], TYPE_CONTROL | TYPE_USER_DEFINED)
                    && !config.tokens[id as usize].is_empty()
            })
            .collect();
        specials.sort_by_key(|&id| std::cmp::Reverse(config.tokens[id as usize].len()));
        let mut specials_by_first_byte: HashMap<u8, Vec<u32>> = HashMap::default();
        for id in specials {
            specials_by_first_byte
                .entry(config.tokens[id as usize].as_bytes()[0])
                .or_default()
                .push(id);
        }
        let mut end_of_generation: Vec<u32> = [config.eos_id, config.eot_id]
            .into_iter()
            .flatten()
            .collect();
        for text in END_OF_GENERATION_TEXTS {
            if let Some(&id) = token_to_id.get(text) {
                end_of_generation.push(id);
            }
        }
        end_of_generation.sort_unstable();
        end_of_generation.dedup();

        Ok(Self {
            algorithm,
            scores: config.scores,
            tokens: config.tokens,
            token_types,
            token_to_id,
            specials_by_first_byte,
            pieces,
            bos_id: config.bos_id,
            eos_id: config.eos_id,
            add_bos: config.add_bos.unwrap_or(add_bos_default),
            add_eos: config.add_eos.unwrap_or(false),
            end_of_generation,
        })
    }

    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Whether the model wants a BOS token before a prompt.
    pub fn add_bos(&self) -> bool {
        self.add_bos && self.bos_id.is_some()
    }

    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.binary_search(&id).is_ok()
    }

    /// Every end-of-generation token, in increasing order.
    pub fn end_of_generation_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.end_of_generation.iter().copied()
    }

    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    pub fn is_control(&self, id: u32) -> bool {
        self.token_types.get(id as usize) == Some(&TYPE_CONTROL)
    }

    /// The bytes token `id` contributes to text. Control tokens contribute their text only
    /// when `render_special`; unknown ids contribute nothing.
    pub fn token_to_piece(&self, id: u32, render_special: bool) -> &[u8] {
        match self.token_types.get(id as usize) {
            None => &[],
            Some(&TYPE_CONTROL) if !render_special => &[],
            Some(_) => &self.pieces[id as usize],
        }
    }

    /// Text of `ids`, llama.cpp's detokenize: SentencePiece drops the space its prefix added.
    pub fn decode(&self, ids: &[u32], render_special: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for &id in ids {
            out.extend_from_slice(self.token_to_piece(id, render_special));
        }
        if let Algorithm::SentencePiece {
            add_space_prefix: true,
            ..
        } = self.algorithm
            && out.first() == Some(&b' ')
        {
            out.remove(0);
        }
        out
    }

    /// Token ids of `text`. `add_special` adds BOS/EOS as the metadata asks; with
    /// `parse_special`, control-token text becomes the token (user-defined tokens always do).
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.bos_id);
        }
        // Raw text between special tokens is tokenized fragment by fragment.
        let mut raw_start = 0;
        let mut pos = 0;
        while let Some(c) = text[pos..].chars().next() {
            match self.special_at(text, pos, parse_special) {
                Some(id) => {
                    self.encode_raw(&text[raw_start..pos], &mut out);
                    out.push(id);
                    pos += self.tokens[id as usize].len();
                    raw_start = pos;
                }
                None => pos += c.len_utf8(),
            }
        }
        self.encode_raw(&text[raw_start..], &mut out);
        if add_special && self.add_eos {
            out.extend(self.eos_id);
        }
        out
    }

    /// Like `encode` with `parse_special`, except inside `plain` (sorted, disjoint byte
    /// ranges of `text`, e.g. text a user wrote): there no control token is matched, nor a
    /// user-defined one listed in `never_in_plain` (sorted), and no special token matched
    /// outside reaches into a plain range. Text between special tokens is still tokenized as
    /// one fragment, so a plain range without special-token text gives what `encode` gives.
    pub fn encode_with_plain_ranges(
        &self,
        text: &str,
        plain: &[std::ops::Range<usize>],
        never_in_plain: &[u32],
    ) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        let mut raw_start = 0;
        let mut pos = 0;
        let mut next_range = 0;
        while let Some(c) = text[pos..].chars().next() {
            while next_range < plain.len() && plain[next_range].end <= pos {
                next_range += 1;
            }
            let range = plain.get(next_range);
            let inside = range.is_some_and(|r| r.start <= pos);
            // A match must end before the next plain range, or within the current one.
            let limit = match range {
                Some(r) if inside => r.end,
                Some(r) => r.start,
                None => text.len(),
            };
            let found = self
                .specials_by_first_byte
                .get(&text.as_bytes()[pos])
                .and_then(|candidates| {
                    candidates.iter().copied().find(|&id| {
                        let token = self.tokens[id as usize].as_str();
                        let allowed = !inside
                            || (self.token_types[id as usize] == TYPE_USER_DEFINED
                                && never_in_plain.binary_search(&id).is_err());
                        allowed && pos + token.len() <= limit && text[pos..].starts_with(token)
                    })
                });
            match found {
                Some(id) => {
                    self.encode_raw(&text[raw_start..pos], &mut out);
                    out.push(id);
                    pos += self.tokens[id as usize].len();
                    raw_start = pos;
                }
                None => pos += c.len_utf8(),
            }
        }
        self.encode_raw(&text[raw_start..], &mut out);
        out
    }

    /// Ids of the tokens whose text `encode` may match as one token (control and
    /// user-defined tokens), in no particular order.
    pub fn special_ids(&self) -> Vec<u32> {
        self.specials_by_first_byte
            .values()
            .flatten()
            .copied()
            .collect()
    }

    /// The longest special token starting at byte `pos`, if one may be matched there.
    fn special_at(&self, text: &str, pos: usize, parse_special: bool) -> Option<u32> {
        let candidates = self.specials_by_first_byte.get(&text.as_bytes()[pos])?;
        candidates.iter().copied().find(|&id| {
            (parse_special || self.token_types[id as usize] == TYPE_USER_DEFINED)
                && text[pos..].starts_with(self.tokens[id as usize].as_str())
        })
    }

    /// Tokenizes text that holds no special token. Every such fragment starts the text or
    /// follows a special token, which is where SentencePiece adds its space prefix.
    fn encode_raw(&self, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        match &self.algorithm {
            Algorithm::Bpe {
                pre,
                merges,
                ignore_merges,
                byte_char_ids,
            } => {
                let mut initial = Vec::new();
                for word in pre.split(text) {
                    let encoded = bytes::encode_bytes(word.as_bytes());
                    if *ignore_merges && let Some(&id) = self.token_to_id.get(&encoded) {
                        out.push(id);
                        continue;
                    }
                    initial.clear();
                    initial.extend(word.bytes().filter_map(|b| byte_char_ids[b as usize]));
                    bpe::merge(&initial, merges, out);
                }
            }
            Algorithm::SentencePiece {
                byte_tokens,
                add_space_prefix,
            } => {
                let mut escaped = String::with_capacity(text.len() + 3);
                if *add_space_prefix {
                    escaped.push('▁');
                }
                for c in text.chars() {
                    escaped.push(if c == ' ' { '▁' } else { c });
                }
                let vocab = spm::Vocab {
                    token_to_id: &self.token_to_id,
                    scores: &self.scores,
                    byte_tokens,
                    unknown_id: None,
                };
                spm::encode(&escaped, &vocab, out);
            }
        }
    }
}

/// What a token's text stands for in output bytes.
fn piece_bytes(algorithm: &Algorithm, text: &str, token_type: i32) -> Vec<u8> {
    match algorithm {
        Algorithm::Bpe { .. } => match token_type {
            TYPE_NORMAL | TYPE_UNKNOWN | TYPE_BYTE => {
                // Characters outside the byte alphabet (rare) are kept as their UTF-8.
                let mut out = Vec::with_capacity(text.len());
                for c in text.chars() {
                    match bytes::char_to_byte(c) {
                        Some(b) => out.push(b),
                        None => out.extend_from_slice(c.to_string().as_bytes()),
                    }
                }
                out
            }
            _ => text.as_bytes().to_vec(),
        },
        Algorithm::SentencePiece { .. } => match token_type {
            TYPE_BYTE => {
                parse_byte_token(text).map_or_else(|| text.as_bytes().to_vec(), |b| vec![b])
            }
            TYPE_CONTROL => text.as_bytes().to_vec(),
            _ => text.replace('▁', " ").into_bytes(),
        },
    }
}

/// The byte of a `<0xXX>` token.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}
