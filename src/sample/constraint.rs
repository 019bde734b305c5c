//! Constrained decoding, as this layer sees it: a set of allowed token ids per step and
//! something that computes it. What decides the set (a grammar, a JSON schema) lives above;
//! here there are only masks and token ids.

/// A set of vocabulary ids, one bit per token: the tokens a constraint allows at one step.
///
/// Bits past `len` in the last word are always clear, so whole-word operations stay exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenMask {
    words: Vec<u64>,
    len: usize,
}

impl TokenMask {
    /// A mask over `n_vocab` tokens with none allowed.
    pub fn new(n_vocab: usize) -> Self {
        Self {
            words: vec![0; n_vocab.div_ceil(64)],
            len: n_vocab,
        }
    }

    /// A mask over `n_vocab` tokens with all allowed.
    pub fn all(n_vocab: usize) -> Self {
        let mut mask = Self::new(n_vocab);
        mask.allow_all();
        mask
    }

    /// How many tokens the mask covers (the vocabulary size).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Allows `token`; ids outside the vocabulary are ignored.
    pub fn allow(&mut self, token: u32) {
        let i = token as usize;
        if i < self.len {
            self.words[i / 64] |= 1 << (i % 64);
        }
    }

    /// Forbids `token`; ids outside the vocabulary are ignored.
    pub fn forbid(&mut self, token: u32) {
        let i = token as usize;
        if i < self.len {
            self.words[i / 64] &= !(1 << (i % 64));
        }
    }

    /// Whether `token` is allowed (never for ids outside the vocabulary).
    #[inline]
    pub fn is_allowed(&self, token: u32) -> bool {
        let i = token as usize;
        i < self.len && self.words[i / 64] & (1 << (i % 64)) != 0
    }

    /// Allows every token.
    pub fn allow_all(&mut self) {
        self.words.fill(u64::MAX);
        self.clear_tail();
    }

    /// Forbids every token.
    pub fn clear(&mut self) {
        self.words.fill(0);
    }

    /// Forbids every token `other` allows (both masks cover the same vocabulary).
    pub fn forbid_all_of(&mut self, other: &TokenMask) {
        for (word, &forbidden) in self.words.iter_mut().zip(&other.words) {
            *word &= !forbidden;
        }
    }

    /// How many tokens are allowed.
    pub fn count_allowed(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The allowed ids, in increasing order.
    pub fn allowed(&self) -> impl Iterator<Item = u32> + '_ {
        (0u32..).zip(&self.words).flat_map(|(word_index, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let bit = bits.trailing_zeros();
                bits &= bits - 1;
                Some(word_index * 64 + bit)
            })
        })
    }

    /// Replaces the mask with one given as 32-bit words (bit `i % 32` of word `i / 32` is
    /// token `i`), the layout constraint libraries commonly use. Words past the vocabulary
    /// are ignored, missing ones forbid their tokens.
    pub fn set_from_u32_words(&mut self, source: &[u32]) {
        for (i, word) in self.words.iter_mut().enumerate() {
            let low = source.get(2 * i).copied().unwrap_or(0);
            let high = source.get(2 * i + 1).copied().unwrap_or(0);
            *word = u64::from(low) | (u64::from(high) << 32);
        }
        self.clear_tail();
    }

    fn clear_tail(&mut self) {
        let rest = self.len % 64;
        if rest != 0
            && let Some(last) = self.words.last_mut()
        {
            *last &= (1u64 << rest) - 1;
        }
    }
}

/// Decides, step by step, which tokens may come next.
///
/// The generation loop calls, for each generated token: [`TokenConstraint::must_stop`] (when
/// true generation ends without sampling), [`TokenConstraint::compute_mask`], samples among
/// the allowed tokens, then [`TokenConstraint::accept_token`] with the chosen one. End of
/// generation (an end-of-generation token, a stop token id, a stop string) is honoured only
/// where [`TokenConstraint::may_stop`] is true; elsewhere the end-of-generation tokens are
/// forbidden and stop strings are not looked for.
///
/// Errors are messages for the caller; the generation loop reports them as internal errors,
/// since a constraint that was accepted at construction should never fail while running.
pub trait TokenConstraint: Send {
    /// Writes into `mask` (cleared or not: the implementation sets every bit) the tokens
    /// allowed next. `mask.len()` is the vocabulary size.
    fn compute_mask(&mut self, mask: &mut TokenMask) -> Result<(), String>;
    /// Advances past `token`, which the last mask allowed.
    fn accept_token(&mut self, token: u32) -> Result<(), String>;
    /// Whether what was accepted so far is complete: generation may end here.
    fn may_stop(&self) -> bool;
    /// Whether nothing may follow what was accepted so far: generation must end here.
    fn must_stop(&self) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_set_cleared_and_counted_across_word_boundaries() {
        let mut mask = TokenMask::new(130);
        assert_eq!((mask.len(), mask.count_allowed()), (130, 0));
        for id in [0, 63, 64, 127, 128, 129] {
            mask.allow(id);
        }
        mask.allow(130); // outside: ignored
        assert_eq!(
            mask.allowed().collect::<Vec<_>>(),
            vec![0, 63, 64, 127, 128, 129]
        );
        assert!(mask.is_allowed(64) && !mask.is_allowed(65) && !mask.is_allowed(130));
        mask.forbid(64);
        assert!(!mask.is_allowed(64));
        assert_eq!(mask.count_allowed(), 5);
        mask.allow_all();
        assert_eq!(mask.count_allowed(), 130);
        let mut some = TokenMask::new(130);
        some.allow(3);
        some.allow(129);
        mask.forbid_all_of(&some);
        assert_eq!(mask.count_allowed(), 128);
        assert!(!mask.is_allowed(3) && !mask.is_allowed(129) && mask.is_allowed(4));
        mask.allow_all();
        assert!(!mask.is_allowed(130));
        mask.clear();
        assert_eq!(mask.count_allowed(), 0);
        assert_eq!(TokenMask::all(64).count_allowed(), 64);
    }

    #[test]
    fn u32_words_map_bit_for_bit() {
        let mut mask = TokenMask::new(70);
        // Tokens 1, 33 (second word), 64 and 69 (third word); 70.. are past the vocabulary.
        mask.set_from_u32_words(&[0b10, 0b10, 0b1 | (1 << 5) | (1 << 6), 0xffff_ffff]);
        assert_eq!(mask.allowed().collect::<Vec<_>>(), vec![1, 33, 64, 69]);
        mask.set_from_u32_words(&[1]);
        assert_eq!(mask.allowed().collect::<Vec<_>>(), vec![0]);
    }
}
