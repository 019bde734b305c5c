//! Stop strings over streamed text: text that might begin a stop string is held back until
//! it either completes one (and is dropped, with everything after) or cannot.

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopOutcome {
    /// Text that may be shown now.
    pub emit: String,
    /// A stop string completed; generation should end.
    pub stopped: bool,
}

#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopMatcher {
    pub fn new(mut stops: Vec<String>) -> Self {
        stops.retain(|s| !s.is_empty());
        stops.sort();
        stops.dedup();
        Self { stops, held: String::new(), stopped: false }
    }

    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.stopped {
            return StopOutcome { emit: String::new(), stopped: true };
        }
        self.held.push_str(text);
        // The earliest complete stop string wins.
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let emit = self.held[..at].to_string();
            self.held.clear();
            self.stopped = true;
            return StopOutcome { emit, stopped: true };
        }
        // Keep the longest suffix that is a proper prefix of some stop string.
        let keep_from = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&self.held[i..])))
            .unwrap_or(self.held.len());
        let emit = self.held[..keep_from].to_string();
        self.held.drain(..keep_from);
        StopOutcome { emit, stopped: false }
    }

    /// The held-back text, at the end of generation.
    pub fn finish(&mut self) -> String {
        if self.stopped { String::new() } else { std::mem::take(&mut self.held) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], chunks: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for c in chunks {
            let o = m.push(c);
            out.push_str(&o.emit);
            if o.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_across_chunks_is_dropped_with_what_follows() {
        assert_eq!(run(&["STOP"], &["Hel", "lo ST", "OP now"]), ("Hello ".to_string(), true));
    }

    #[test]
    fn a_false_start_is_released() {
        assert_eq!(run(&["STOP"], &["ST", "ART", " ok"]), ("START ok".to_string(), false));
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(m.push("abST").emit, "ab");
        assert_eq!(m.finish(), "ST");
    }

    #[test]
    fn overlapping_stops_and_multibyte_text() {
        assert_eq!(run(&["ab", "bc"], &["xb", "c"]), ("x".to_string(), true));
        assert_eq!(run(&["日本"], &["é日", "本語"]), ("é".to_string(), true));
        assert_eq!(run(&["\n\n"], &["a\n", "b\n", "\nc"]), ("a\nb".to_string(), true));
    }
}
