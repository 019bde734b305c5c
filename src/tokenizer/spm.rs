//! SentencePiece (GGUF `llama` tokenizer model): merge the adjacent pair whose joined text
//! is the highest-scoring vocabulary entry (leftmost on ties), then map pieces to ids,
//! re-splitting unknown pieces and falling back to `<0xXX>` byte tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::HashMap;

struct Symbol<'t> {
    text: &'t str,
    prev: Option<usize>,
    next: Option<usize>,
}

#[derive(PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    len: usize,
}

impl Eq for Bigram {}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        // Max-heap: higher score first, then the leftmost.
        self.score
            .total_cmp(&other.score)
            .then(other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

pub struct Vocab<'v> {
    pub token_to_id: &'v HashMap<String, u32>,
    pub scores: &'v [f32],
    /// Ids of `<0x00>`..`<0xFF>`, when the vocabulary has them.
    pub byte_tokens: &'v [Option<u32>; 256],
    pub unknown_id: Option<u32>,
}

/// Tokenizes `text` (spaces already written as ▁) and appends the ids to `out`.
pub fn encode(text: &str, vocab: &Vocab<'_>, out: &mut Vec<u32>) {
    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    for (i, (offset, c)) in text.char_indices().enumerate() {
        symbols.push(Symbol {
            text: &text[offset..offset + c.len_utf8()],
            prev: i.checked_sub(1),
            next: Some(i + 1),
        });
    }
    if let Some(last) = symbols.last_mut() {
        last.next = None;
    }
    let mut queue = BinaryHeap::new();
    // Merged text → the pieces it came from, to re-split pieces that are not tokens.
    let mut history: HashMap<&str, (usize, usize)> = HashMap::default();
    let try_pair = |queue: &mut BinaryHeap<Bigram>, symbols: &[Symbol], left: usize| {
        let Some(right) = symbols[left].next else {
            return;
        };
        let start = symbols[left].text.as_ptr() as usize - text.as_ptr() as usize;
        let len = symbols[left].text.len() + symbols[right].text.len();
        if let Some(&id) = vocab.token_to_id.get(&text[start..start + len]) {
            queue.push(Bigram {
                score: vocab.scores.get(id as usize).copied().unwrap_or(0.0),
                left,
                len,
            });
        }
    };
    for i in 0..symbols.len() {
        try_pair(&mut queue, &symbols, i);
    }
    while let Some(Bigram { left, len, .. }) = queue.pop() {
        let Some(right) = symbols[left].next else {
            continue;
        };
        // Skip bigrams whose symbols changed since they were queued.
        if symbols[left].text.is_empty()
            || symbols[left].text.len() + symbols[right].text.len() != len
        {
            continue;
        }
        let start = symbols[left].text.as_ptr() as usize - text.as_ptr() as usize;
        let merged = &text[start..start + len];
        history.insert(
            merged,
            (symbols[left].text.len(), symbols[right].text.len()),
        );
        symbols[left].text = merged;
        symbols[right].text = "";
        symbols[left].next = symbols[right].next;
        if let Some(after) = symbols[right].next {
            symbols[after].prev = Some(left);
        }
        if let Some(before) = symbols[left].prev {
            try_pair(&mut queue, &symbols, before);
        }
        try_pair(&mut queue, &symbols, left);
    }
    let mut cursor = (!symbols.is_empty()).then_some(0);
    while let Some(i) = cursor {
        resegment(symbols[i].text, vocab, &history, out);
        cursor = symbols[i].next;
    }
}

fn resegment(
    piece: &str,
    vocab: &Vocab<'_>,
    history: &HashMap<&str, (usize, usize)>,
    out: &mut Vec<u32>,
) {
    if let Some(&id) = vocab.token_to_id.get(piece) {
        out.push(id);
        return;
    }
    if let Some(&(left_len, _)) = history.get(piece) {
        resegment(&piece[..left_len], vocab, history, out);
        resegment(&piece[left_len..], vocab, history, out);
        return;
    }
    for &b in piece.as_bytes() {
        match vocab.byte_tokens[b as usize].or(vocab.unknown_id) {
            Some(id) => out.push(id),
            None => continue,
        }
    }
}
