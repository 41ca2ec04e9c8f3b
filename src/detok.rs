//! Incremental detokenization and stop strings, per choice.
//!
//! Decoding token by token is not enough: a character may span several byte-level tokens,
//! and some decoders change a token's text depending on what precedes it. So each step
//! decodes a small window (from `prefix_offset`) twice, with and without the new tokens,
//! and emits the difference once it no longer ends in an incomplete character.
//!
//! Stop strings can straddle tokens: text that could be the start of a stop string is
//! held back until it is clearly not one (or the choice ends).

use crate::model::tokenizer::Tokenizer;

/// Prompt tokens kept as decoding context for the first generated tokens.
const CONTEXT: usize = 5;

pub struct IncrementalDecoder {
    tokens: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    skip_special_tokens: bool,
}

impl IncrementalDecoder {
    pub fn new(prompt: &[u32], skip_special_tokens: bool) -> Self {
        let tokens = prompt[prompt.len().saturating_sub(CONTEXT)..].to_vec();
        let n = tokens.len();
        IncrementalDecoder { tokens, prefix_offset: 0, read_offset: n, skip_special_tokens }
    }

    /// Adds one token and returns the text it completes (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.tokens.push(id);
        let prefix = tok.decode(&self.tokens[self.prefix_offset..self.read_offset], self.skip_special_tokens);
        let full = tok.decode(&self.tokens[self.prefix_offset..], self.skip_special_tokens);
        if full.len() > prefix.len() && !full.ends_with('\u{fffd}') && full.is_char_boundary(prefix.len()) {
            self.prefix_offset = self.read_offset;
            self.read_offset = self.tokens.len();
            full[prefix.len()..].to_string()
        } else {
            String::new()
        }
    }

    /// Text still held back at the end (an incomplete character), decoded as it is.
    pub fn flush(&mut self, tok: &Tokenizer) -> String {
        let prefix = tok.decode(&self.tokens[self.prefix_offset..self.read_offset], self.skip_special_tokens);
        let full = tok.decode(&self.tokens[self.prefix_offset..], self.skip_special_tokens);
        self.prefix_offset = self.read_offset;
        self.read_offset = self.tokens.len();
        if full.len() > prefix.len() && full.is_char_boundary(prefix.len()) {
            full[prefix.len()..].to_string()
        } else {
            String::new()
        }
    }
}

/// Finds stop strings in streamed text and holds back what might begin one.
pub struct StopMatcher {
    stops: Vec<String>,
    include_stop: bool,
    held: String,
}

/// What `StopMatcher::push` lets through.
#[derive(Debug, PartialEq, Eq)]
pub struct Released {
    pub text: String,
    /// The stop string that matched; the choice ends here.
    pub stopped: Option<String>,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>, include_stop: bool) -> Self {
        StopMatcher { stops, include_stop, held: String::new() }
    }

    /// Feeds new text. With `last`, nothing is held back.
    pub fn push(&mut self, text: &str, last: bool) -> Released {
        self.held.push_str(text);
        if self.stops.is_empty() {
            return Released { text: std::mem::take(&mut self.held), stopped: None };
        }
        // The earliest match wins; at equal positions, the longest stop string.
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|at| (at, std::cmp::Reverse(s.len()), s)))
            .min();
        if let Some((at, _, stop)) = hit {
            // A stop that could still begin at or before this one, once more text comes
            // (a longer stop at the same place, or one that started earlier), decides
            // later: the answer must not depend on how the text was cut into pieces.
            if !last {
                let undecided = (0..=at).filter(|&q| self.held.is_char_boundary(q)).find(|&q| {
                    let rest = &self.held[q..];
                    self.stops.iter().any(|s| s.len() > rest.len() && s.starts_with(rest))
                });
                if let Some(q) = undecided {
                    let text = self.held[..q].to_string();
                    self.held.drain(..q);
                    return Released { text, stopped: None };
                }
            }
            let end = if self.include_stop { at + stop.len() } else { at };
            let text = self.held[..end].to_string();
            let stop = stop.clone();
            self.held.clear();
            return Released { text, stopped: Some(stop) };
        }
        if last {
            return Released { text: std::mem::take(&mut self.held), stopped: None };
        }
        let keep = self.partial_suffix_len();
        let cut = self.held.len() - keep;
        let text = self.held[..cut].to_string();
        self.held.drain(..cut);
        Released { text, stopped: None }
    }

    /// Length of the longest suffix of the held text that is a proper prefix of a stop string.
    fn partial_suffix_len(&self) -> usize {
        let h = &self.held;
        let mut best = 0;
        for s in &self.stops {
            for (k, _) in s.char_indices().skip(1) {
                if k > best && h.ends_with(&s[..k]) {
                    best = k;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], include: bool, pieces: &[&str]) -> (String, Option<String>) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect(), include);
        let mut out = String::new();
        for (i, p) in pieces.iter().enumerate() {
            let r = m.push(p, i + 1 == pieces.len());
            out.push_str(&r.text);
            if r.stopped.is_some() {
                return (out, r.stopped);
            }
        }
        (out, None)
    }

    #[test]
    fn stop_across_pieces() {
        assert_eq!(run(&["END"], false, &["abc E", "N", "Dxyz"]), ("abc ".into(), Some("END".into())));
        assert_eq!(run(&["END"], true, &["abc E", "N", "Dxyz"]), ("abc END".into(), Some("END".into())));
        assert_eq!(run(&["END"], false, &["abc E", "N", "x"]), ("abc ENx".into(), None));
    }

    #[test]
    fn earliest_stop_wins() {
        assert_eq!(run(&["b", "abc"], false, &["xabc"]), ("x".into(), Some("abc".into())));
        assert_eq!(run(&["c", "ab"], false, &["xabc"]), ("x".into(), Some("ab".into())));
    }

    /// Found by the property test: a match that a longer or earlier stop could still
    /// overtake waits for the text that decides it.
    #[test]
    fn a_match_waits_while_a_longer_or_earlier_stop_may_still_win() {
        assert_eq!(run(&["a", "aé"], false, &["bba", "éaaa"]), ("bb".into(), Some("aé".into())));
        assert_eq!(run(&["a", "aé"], false, &["bba", "xaaa"]), ("bb".into(), Some("a".into())));
        assert_eq!(run(&["a", "xab"], false, &["xa", "b"]), ("".into(), Some("xab".into())));
        assert_eq!(run(&["a", "xab"], false, &["xa", "c"]), ("x".into(), Some("a".into())));
    }

    #[test]
    fn held_text_is_released_at_the_end() {
        let mut m = StopMatcher::new(vec!["\n\n".into()], false);
        assert_eq!(m.push("hi\n", false).text, "hi");
        assert_eq!(m.push("", true).text, "\n");
    }

    /// Property: for any split of a text into pieces, the matcher releases exactly the
    /// text before the first stop occurrence (or all of it), and nothing twice.
    #[test]
    fn any_split_gives_the_same_result() {
        let texts = ["hello world, stop here", "aaab", "ab", "xx<|end|>yy", "é😀é stop", "stostopst"];
        let stops: [&[&str]; 3] = [&["stop"], &["<|end|>", "ab"], &["é😀", "st"]];
        for text in texts {
            for st in stops {
                let expected = {
                    let hit = st.iter().filter_map(|s| text.find(s).map(|a| (a, std::cmp::Reverse(s.len()), *s))).min();
                    match hit {
                        Some((a, _, s)) => (text[..a].to_string(), Some(s.to_string())),
                        None => (text.to_string(), None),
                    }
                };
                let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
                // Every way of cutting the text in two or three pieces.
                for &a in &bounds {
                    for &b in bounds.iter().filter(|&&b| b >= a) {
                        let pieces = [&text[..a], &text[a..b], &text[b..]];
                        assert_eq!(run(st, false, &pieces), expected, "{text:?} {st:?} {pieces:?}");
                    }
                }
            }
        }
    }
}

/// Random texts, stop lists and cuts: what the matcher releases never depends on how the
/// text arrived in pieces, and equals the text before the earliest (then longest) stop.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Texts over a small alphabet (with multi-byte characters) so that stops occur often.
    fn chars(len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
        proptest::collection::vec(prop::sample::select(vec!['a', 'b', 'c', '\n', 'é', '😀']), len)
            .prop_map(|v| v.into_iter().collect())
    }

    proptest! {
        #[test]
        fn pieces_never_change_the_result(
            text in chars(0..24),
            stops in proptest::collection::vec(chars(1..4), 1..4),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
            include in any::<bool>(),
        ) {
            let hit = stops.iter().filter_map(|s| text.find(s.as_str()).map(|a| (a, std::cmp::Reverse(s.len()), s))).min();
            let expected = match hit {
                Some((a, _, s)) => (text[..if include { a + s.len() } else { a }].to_string(), Some(s.clone())),
                None => (text.clone(), None),
            };
            let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
            let mut at: Vec<usize> = cuts.iter().map(|c| bounds[c.index(bounds.len())]).collect();
            at.sort();
            let mut pieces = Vec::new();
            let mut prev = 0;
            for c in at.into_iter().chain([text.len()]) {
                pieces.push(&text[prev..c]);
                prev = c;
            }
            let mut m = StopMatcher::new(stops.clone(), include);
            let mut out = String::new();
            let mut stopped = None;
            for (i, p) in pieces.iter().enumerate() {
                let r = m.push(p, i + 1 == pieces.len());
                out.push_str(&r.text);
                if r.stopped.is_some() {
                    stopped = r.stopped;
                    break;
                }
            }
            prop_assert_eq!((out, stopped), expected);
        }
    }
}
