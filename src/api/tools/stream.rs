//! Tool calls as they stream: after each new piece of text, the format's scan of the
//! whole text so far is compared with what was already sent, and only the difference
//! goes out — new content, a call's name (with its id) once the name is complete, then
//! its arguments' new text. What is sent is never taken back: a scan only ever extends
//! the content and each call's arguments.

use std::sync::Arc;

use serde_json::Value;

use super::{FunctionDelta, ToolCallDelta, ToolParser};

pub struct ToolStreamer {
    parser: ToolParser,
    tools: Arc<Vec<Value>>,
    text: String,
    content_sent: usize,
    /// Per call begun: its id and the argument text sent.
    sent: Vec<(String, String)>,
}

/// What one piece of text adds to the answer.
#[derive(Debug, Default, PartialEq)]
pub struct StreamOut {
    pub content: String,
    /// In order: a call's naming delta comes before its argument deltas.
    pub calls: Vec<ToolCallDelta>,
}

impl ToolStreamer {
    pub fn new(parser: ToolParser, tools: Arc<Vec<Value>>) -> Self {
        ToolStreamer { parser, tools, text: String::new(), content_sent: 0, sent: Vec::new() }
    }

    /// Takes the next piece of the answer; `last` when the answer ends with it.
    pub fn push(&mut self, piece: &str, last: bool) -> StreamOut {
        self.text.push_str(piece);
        let scan = self.parser.scan(&self.text, last, &self.tools);
        let mut out = StreamOut::default();
        if scan.content_end > self.content_sent {
            out.content = self.text[self.content_sent..scan.content_end].to_string();
            self.content_sent = scan.content_end;
        }
        for (index, call) in scan.calls.iter().enumerate() {
            if index == self.sent.len() {
                let Some(name) = &call.name else { break };
                if call.malformed {
                    break;
                }
                let id = self.parser.call_id();
                out.calls.push(ToolCallDelta {
                    index,
                    id: Some(id.clone()),
                    kind: Some("function"),
                    function: FunctionDelta { name: Some(name.clone()), arguments: Some(String::new()) },
                });
                self.sent.push((id, String::new()));
            }
            let sent = &mut self.sent[index].1;
            if call.args.len() > sent.len() && call.args.starts_with(sent.as_str()) {
                let more = call.args[sent.len()..].to_string();
                sent.push_str(&more);
                out.calls.push(ToolCallDelta {
                    index,
                    id: None,
                    kind: None,
                    function: FunctionDelta { name: None, arguments: Some(more) },
                });
            }
        }
        // An answer that called nothing: whatever was held back as a possible call is
        // content after all.
        if last && self.sent.is_empty() && self.content_sent < self.text.len() {
            out.content.push_str(&self.text[self.content_sent..]);
            self.content_sent = self.text.len();
        }
        out
    }

    /// Whether any call was sent.
    pub fn called(&self) -> bool {
        !self.sent.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::Parsed;
    use super::*;

    /// The calls as (name, arguments).
    pub fn read(p: &Parsed) -> Vec<(&str, &str)> {
        p.calls.iter().map(|c| (c.function.name.as_str(), c.function.arguments.as_str())).collect()
    }

    /// Streams `text` cut in two at every character boundary, and one character at a
    /// time: the content and calls sent add up to what reading it whole gives, each
    /// call's name comes before its arguments, and no delta is empty.
    pub fn assert_streams_like_whole(parser: ToolParser, text: &str, tools: &[Value]) {
        let whole = parser.parse(text, tools);
        let want_content = whole.content.clone().unwrap_or_default();
        for pieces in crate::api::stream_cuts::every_cut(text) {
            let mut s = ToolStreamer::new(parser, Arc::new(tools.to_vec()));
            let mut content = String::new();
            let mut calls: Vec<(String, String)> = Vec::new();
            for (k, piece) in pieces.iter().enumerate() {
                let out = s.push(piece, k + 1 == pieces.len());
                content.push_str(&out.content);
                for d in out.calls {
                    if let Some(name) = d.function.name {
                        assert_eq!(d.index, calls.len(), "calls are named in order");
                        assert!(d.id.is_some());
                        calls.push((name, String::new()));
                    } else {
                        let args = d.function.arguments.expect("an arguments delta");
                        assert!(!args.is_empty(), "empty delta for {pieces:?}");
                        calls[d.index].1.push_str(&args);
                    }
                }
            }
            let got: Vec<(&str, &str)> = calls.iter().map(|(n, a)| (n.as_str(), a.as_str())).collect();
            assert_eq!(got, read(&whole), "calls of {pieces:?}");
            if whole.calls.is_empty() {
                assert_eq!(content, text, "content of {pieces:?}");
            } else {
                assert_eq!(content.trim_end(), want_content, "content of {pieces:?}");
            }
        }
    }
}
