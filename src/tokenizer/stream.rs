//! Streaming detokenization: token pieces arrive as bytes that may split a UTF-8 character;
//! only whole characters are released.

#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

/// Length of the UTF-8 sequence a lead byte announces, or None for a byte that cannot start one.
fn sequence_len(lead: u8) -> Option<usize> {
    match lead {
        0x00..=0x7f => Some(1),
        0xc2..=0xdf => Some(2),
        0xe0..=0xef => Some(3),
        0xf0..=0xf4 => Some(4),
        _ => None,
    }
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes; returns the text that is now complete. A sequence that can no longer
    /// become valid is released as U+FFFD at once, never held.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(
                        std::str::from_utf8(&self.pending[..valid]).expect("checked valid prefix"),
                    );
                    match e.error_len() {
                        // Invalid bytes: replace them and go on.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                        // An incomplete sequence at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid);
                            debug_assert!(
                                self.pending.len() < sequence_len(self.pending[0]).unwrap_or(1)
                            );
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// Releases what is left at the end of the stream (an incomplete sequence becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emoji_split_over_four_pushes_comes_out_whole() {
        let emoji = "🙂".as_bytes();
        let mut d = StreamDecoder::new();
        assert_eq!(d.push(&emoji[..1]), "");
        assert_eq!(d.push(&emoji[1..2]), "");
        assert_eq!(d.push(&emoji[2..3]), "");
        assert_eq!(d.push(&emoji[3..]), "🙂");
        assert_eq!(d.finish(), "");
    }

    #[test]
    fn invalid_bytes_are_replaced_immediately_and_text_continues() {
        let mut d = StreamDecoder::new();
        assert_eq!(d.push(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(d.push(b"\xe6\x97"), "");
        assert_eq!(d.push(b"x"), "\u{fffd}x");
        assert_eq!(d.push(b"\xe6"), "");
        assert_eq!(d.finish(), "\u{fffd}");
    }
}
