//! Splitting an answer into reasoning and content as it streams: text that may still
//! turn out to be a marker is held back until the next piece says, so neither side ever
//! gets a marker's first half.

use super::{Markers, ReasoningParser};
use crate::api::tools::scan::partial_suffix;

pub struct ReasoningStream {
    markers: &'static Markers,
    state: State,
    held: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Not yet known whether the answer opens with a start marker.
    Start,
    Reasoning,
    Content,
}

/// What one piece of the answer adds to each side.
#[derive(Debug, Default, PartialEq)]
pub struct Split {
    pub reasoning: String,
    pub content: String,
}

impl ReasoningStream {
    /// `content_only`: the answer holds no reasoning (see `answer_is_content`).
    pub fn new(parser: ReasoningParser, content_only: bool) -> Self {
        let state = if content_only { State::Content } else { State::Start };
        ReasoningStream { markers: parser.markers(), state, held: String::new() }
    }

    /// Whether what comes next is still reasoning.
    pub fn in_reasoning(&self) -> bool {
        self.state != State::Content
    }

    /// After the last piece: the reasoning never closed.
    pub fn unclosed(&self) -> bool {
        self.state == State::Reasoning
    }

    pub fn push(&mut self, text: &str, last: bool) -> Split {
        self.held.push_str(text);
        let mut out = Split::default();
        loop {
            match self.state {
                State::Start => {
                    let lead = self.held.len() - self.held.trim_start().len();
                    let rest = &self.held[lead..];
                    if let Some(m) = self.markers.start.iter().find(|m| rest.starts_with(*m)) {
                        self.held.drain(..lead + m.len());
                        self.state = State::Reasoning;
                    } else if !last && self.markers.start.iter().any(|m| m.starts_with(rest)) {
                        return out;
                    } else {
                        self.state = if self.markers.start_required { State::Content } else { State::Reasoning };
                    }
                }
                State::Reasoning => {
                    let end = self.markers.end.iter().filter_map(|m| self.held.find(m).map(|at| (at, m.len()))).min();
                    if let Some((at, len)) = end {
                        out.reasoning.push_str(&self.held[..at]);
                        self.held.drain(..at + len);
                        self.state = State::Content;
                        continue;
                    }
                    let hold = if last { 0 } else { self.markers.end.iter().map(|m| partial_suffix(&self.held, m)).max().unwrap_or(0) };
                    let cut = self.held.len() - hold;
                    out.reasoning.push_str(&self.held[..cut]);
                    self.held.drain(..cut);
                    return out;
                }
                State::Content => {
                    out.content.push_str(&self.held);
                    self.held.clear();
                    return out;
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Streams `text` cut in two at every character boundary and one character at a
    /// time: the two sides add up to what the whole answer splits into.
    pub fn assert_streams_like_whole(parser: ReasoningParser, text: &str, content_only: bool) {
        let mut whole = ReasoningStream::new(parser, content_only);
        let want = whole.push(text, true);
        for pieces in crate::api::stream_cuts::every_cut(text) {
            let mut s = ReasoningStream::new(parser, content_only);
            let mut got = Split::default();
            for (k, p) in pieces.iter().enumerate() {
                let out = s.push(p, k + 1 == pieces.len());
                got.reasoning.push_str(&out.reasoning);
                got.content.push_str(&out.content);
            }
            assert_eq!(got, want, "{pieces:?}");
        }
    }
}
