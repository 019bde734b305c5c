//! Stop strings over streamed text.
//!
//! Text arrives in pieces as tokens are decoded, and a stop string may straddle pieces. The
//! matcher holds back the tail that could still become a stop string and releases it as soon
//! as it cannot. When a stop string completes, it and everything after it are dropped: as in
//! the OpenAI API, the stop sequence is not part of the output.

/// The result of feeding one piece of text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopOutcome {
    /// Text that can be shown now; never part of a stop string.
    pub emit: String,
    /// A stop string completed: generation should end.
    pub stopped: bool,
}

/// Finds stop strings in streamed text. One per generation.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    /// Non-empty and distinct.
    stops: Vec<String>,
    /// Bytes in the longest stop string: no more than that minus one are ever held back.
    longest_stop_len: usize,
    /// Text received but not yet emitted, because a stop string may start in it.
    held: String,
    /// A stop string has completed; everything after it is dropped.
    stopped: bool,
}

impl StopMatcher {
    /// Empty strings, which callers should reject, never match; duplicates are ignored.
    pub fn new(stops: Vec<String>) -> Self {
        let mut stops = stops;
        stops.retain(|stop| !stop.is_empty());
        stops.sort_unstable();
        stops.dedup();
        let longest_stop_len = stops.iter().map(String::len).max().unwrap_or(0);
        Self {
            stops,
            longest_stop_len,
            held: String::new(),
            stopped: false,
        }
    }

    /// Feeds newly decoded text. Once a stop string has completed, every later call returns
    /// nothing to emit and `stopped: true`.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.stopped {
            return StopOutcome {
                emit: String::new(),
                stopped: true,
            };
        }
        self.held.push_str(text);
        // The earliest start wins: text before it is output, whichever stop string it is.
        if let Some(stop_start) = self
            .stops
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()))
            .min()
        {
            self.held.truncate(stop_start);
            self.stopped = true;
            return StopOutcome {
                emit: std::mem::take(&mut self.held),
                stopped: true,
            };
        }
        let still_held = self.held.split_off(self.possible_stop_start());
        StopOutcome {
            emit: std::mem::replace(&mut self.held, still_held),
            stopped: false,
        }
    }

    /// The text still held back, to emit when generation ends for another reason than a stop
    /// string (after one, there is none).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Where the longest tail of `held` that begins some stop string starts; `held.len()` when
    /// no tail does. No stop string occurs whole in `held` when this is called, so any match
    /// is a proper prefix, at most `longest_stop_len - 1` bytes long.
    fn possible_stop_start(&self) -> usize {
        let earliest = self
            .held
            .len()
            .saturating_sub(self.longest_stop_len.saturating_sub(1));
        (earliest..self.held.len())
            .filter(|&start| self.held.is_char_boundary(start))
            .find(|&start| {
                self.stops
                    .iter()
                    .any(|stop| stop.starts_with(&self.held[start..]))
            })
            .unwrap_or(self.held.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(stops: &[&str]) -> StopMatcher {
        StopMatcher::new(stops.iter().map(|stop| stop.to_string()).collect())
    }

    /// What each push emits, and whether the last one stopped.
    fn emitted(matcher: &mut StopMatcher, chunks: &[&str]) -> (Vec<String>, bool) {
        let mut stopped = false;
        let emits = chunks
            .iter()
            .map(|chunk| {
                let outcome = matcher.push(chunk);
                stopped = outcome.stopped;
                outcome.emit
            })
            .collect();
        (emits, stopped)
    }

    #[test]
    fn a_stop_across_chunk_boundaries_is_dropped_with_what_follows() {
        let mut stop = matcher(&["STOP"]);
        assert_eq!(
            emitted(&mut stop, &["Hel", "lo ST", "OP now"]),
            (vec!["Hel".into(), "lo ".into(), "".into()], true)
        );
        assert_eq!(
            stop.push("more"),
            StopOutcome {
                emit: String::new(),
                stopped: true
            }
        );
        assert_eq!(stop.finish(), "");
    }

    #[test]
    fn a_stop_inside_one_chunk_keeps_the_text_before_it() {
        let mut stop = matcher(&["</s>"]);
        assert_eq!(
            stop.push("answer</s>junk"),
            StopOutcome {
                emit: "answer".into(),
                stopped: true
            }
        );
    }

    #[test]
    fn a_prefix_that_does_not_become_a_stop_is_released() {
        let mut stop = matcher(&["STOP"]);
        assert_eq!(
            emitted(&mut stop, &["ST", "O", "RE", " ok"]),
            (
                vec!["".into(), "".into(), "STORE".into(), " ok".into()],
                false
            )
        );
        // A second start inside a failed one is still held.
        assert_eq!(
            stop.push("STST"),
            StopOutcome {
                emit: "ST".into(),
                stopped: false
            }
        );
        assert_eq!(
            stop.push("OP"),
            StopOutcome {
                emit: "".into(),
                stopped: true
            }
        );
    }

    #[test]
    fn finish_releases_the_held_text() {
        let mut stop = matcher(&["STOP"]);
        assert_eq!(stop.push("abc ST").emit, "abc ");
        assert_eq!(stop.finish(), "ST");
        assert_eq!(stop.finish(), "");
    }

    #[test]
    fn with_overlapping_stops_the_earliest_start_wins() {
        // "abc" might be the start of "abcd"; then "bce" completes, starting at 1.
        let mut stop = matcher(&["abcd", "bce"]);
        assert_eq!(
            emitted(&mut stop, &["xabc", "e"]),
            (vec!["x".into(), "a".into()], true)
        );
        let mut stop = matcher(&["world", "lo w"]);
        assert_eq!(
            stop.push("hello world"),
            StopOutcome {
                emit: "hel".into(),
                stopped: true
            }
        );
        // One stop string being a prefix of another.
        let mut stop = matcher(&["\n\n", "\n"]);
        assert_eq!(
            stop.push("a\nb"),
            StopOutcome {
                emit: "a".into(),
                stopped: true
            }
        );
    }

    #[test]
    fn multi_byte_text_is_held_and_cut_at_character_boundaries() {
        let mut stop = matcher(&["😀end"]);
        assert_eq!(
            emitted(&mut stop, &["日本語😀", "en", "d more"]),
            (vec!["日本語".into(), "".into(), "".into()], true)
        );
        // "é" is held as the possible start of "éa", then released whole.
        let mut stop = matcher(&["éa"]);
        assert_eq!(
            emitted(&mut stop, &["café", "b"]),
            (vec!["caf".into(), "éb".into()], false)
        );
        // "è" shares its first byte with "é" but is not a prefix of the stop string.
        assert_eq!(stop.push("è").emit, "è");
    }

    #[test]
    fn duplicates_and_empty_strings_are_ignored() {
        let mut stop = matcher(&["x", "x", ""]);
        assert_eq!(
            stop.push("abc"),
            StopOutcome {
                emit: "abc".into(),
                stopped: false
            }
        );
        assert_eq!(
            stop.push("yxz"),
            StopOutcome {
                emit: "y".into(),
                stopped: true
            }
        );
        let mut no_stops = matcher(&[]);
        assert_eq!(
            no_stops.push("anything"),
            StopOutcome {
                emit: "anything".into(),
                stopped: false
            }
        );
    }

    #[test]
    fn output_is_the_same_however_the_text_is_split() {
        let text = "one two STOP three";
        let stops = ["STOP", "TWO", "wo S"];
        for split in 0..=text.len() {
            let mut stop = matcher(&stops);
            let (emits, stopped) = emitted(&mut stop, &[&text[..split], &text[split..]]);
            assert!(stopped, "split at {split}");
            assert_eq!(emits.concat(), "one t", "split at {split}");
        }
    }
}
