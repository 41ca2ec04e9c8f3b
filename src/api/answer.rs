//! A chat answer as the client reads it: the model's text split into reasoning, content
//! and tool calls. Streamed answers are read a piece at a time (`AnswerReader`), whole
//! ones at once (`read_whole`); both apply the reasoning parser first and read tool calls
//! from what follows the reasoning, as vLLM does.

use crate::api::reasoning::{ReasoningParser, ReasoningStream};
use crate::api::tools::{Parsed, ToolCall, ToolCallDelta, ToolStreamer, ToolUse};

/// One piece of a streamed answer, in the order it is to be sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Reasoning(String),
    Content(String),
    /// A call's name (with its id), or more of its arguments.
    Call(ToolCallDelta),
}

/// How a request's answer is to be read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AnswerOptions {
    pub reasoning: Option<ReasoningParser>,
    pub tool_use: ToolUse,
    /// `include_reasoning: false`: the reasoning is split off and left out.
    pub omit_reasoning: bool,
}

pub struct AnswerReader {
    reasoning: Option<ReasoningStream>,
    omit_reasoning: bool,
    tools: Tools,
    /// Tokens generated while the answer was still reasoning.
    pub reasoning_tokens: usize,
}

enum Tools {
    Plain,
    Auto(ToolStreamer),
    /// A forced call: the whole answer is its arguments (or the list of calls), read at
    /// the end.
    Forced { tool_use: ToolUse, held: String },
}

impl AnswerReader {
    /// `content_only`: the prompt has already closed the reasoning.
    pub fn new(options: &AnswerOptions, content_only: bool) -> Self {
        let tools = match &options.tool_use {
            ToolUse::None => Tools::Plain,
            ToolUse::Auto(auto) => Tools::Auto(ToolStreamer::new(auto.parser, auto.tools.clone())),
            forced => Tools::Forced { tool_use: forced.clone(), held: String::new() },
        };
        AnswerReader {
            reasoning: options.reasoning.map(|p| ReasoningStream::new(p, content_only)),
            omit_reasoning: options.omit_reasoning,
            tools,
            reasoning_tokens: 0,
        }
    }

    /// The next piece of the model's text (from `tokens` tokens); `last` when the answer
    /// ends with it.
    pub fn push(&mut self, text: &str, tokens: usize, last: bool) -> Vec<Piece> {
        let mut pieces = Vec::new();
        let content = match &mut self.reasoning {
            Some(r) => {
                let was_reasoning = r.in_reasoning();
                let split = r.push(text, last);
                if was_reasoning && r.in_reasoning() {
                    self.reasoning_tokens += tokens;
                }
                if !split.reasoning.is_empty() && !self.omit_reasoning {
                    pieces.push(Piece::Reasoning(split.reasoning));
                }
                split.content
            }
            None => text.to_string(),
        };
        match &mut self.tools {
            Tools::Plain => {
                if !content.is_empty() {
                    pieces.push(Piece::Content(content));
                }
            }
            Tools::Auto(streamer) => {
                let out = streamer.push(&content, last);
                if !out.content.is_empty() {
                    pieces.push(Piece::Content(out.content));
                }
                pieces.extend(out.calls.into_iter().map(Piece::Call));
            }
            Tools::Forced { tool_use, held } => {
                held.push_str(&content);
                if last {
                    let read = tool_use.read(std::mem::take(held));
                    if let Some(c) = read.content.filter(|c| !c.is_empty()) {
                        pieces.push(Piece::Content(c));
                    }
                    pieces.extend(read.calls.into_iter().enumerate().map(|(i, c)| Piece::Call(ToolCallDelta::whole(i, c))));
                }
            }
        }
        pieces
    }

    /// Whether the parser read calls out of the answer (its finish reason is then
    /// "tool_calls").
    pub fn parser_called(&self) -> bool {
        matches!(&self.tools, Tools::Auto(s) if s.called())
    }
}

/// A whole answer, read.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub reasoning: Option<String>,
    pub content: Option<String>,
    pub calls: Vec<ToolCall>,
    /// The calls were read by the server's parser (not forced).
    pub parser_called: bool,
}

/// Reads a whole answer: reasoning first, then the calls in what follows it.
pub fn read_whole(options: &AnswerOptions, text: String, content_only: bool) -> Answer {
    let (reasoning, content) = match options.reasoning {
        Some(p) => p.split(&text, content_only),
        None => (None, Some(text)),
    };
    let reasoning = reasoning.filter(|_| !options.omit_reasoning);
    let Parsed { content, calls } = match content {
        Some(c) => options.tool_use.read(c),
        None => Parsed { content: None, calls: Vec::new() },
    };
    let parser_called = !calls.is_empty() && matches!(options.tool_use, ToolUse::Auto(_));
    Answer { reasoning, content, calls, parser_called }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tools::{AutoTools, ToolParser};
    use std::sync::Arc;

    fn auto() -> AnswerOptions {
        AnswerOptions {
            reasoning: Some(ReasoningParser::Qwen3),
            tool_use: ToolUse::Auto(AutoTools { parser: ToolParser::Hermes, tools: Arc::new(vec![]) }),
            omit_reasoning: false,
        }
    }

    #[test]
    fn omitted_reasoning_is_split_off_and_left_out() {
        let options = AnswerOptions { omit_reasoning: true, ..auto() };
        let a = read_whole(&options, TEXT.into(), false);
        assert_eq!(a.reasoning, None);
        assert_eq!(a.calls[0].function.name, "weather");
        let mut r = AnswerReader::new(&options, false);
        let pieces = r.push(TEXT, 10, true);
        assert!(pieces.iter().all(|p| !matches!(p, Piece::Reasoning(_))), "{pieces:?}");
        assert!(pieces.iter().any(|p| matches!(p, Piece::Call(_))), "{pieces:?}");
    }

    const TEXT: &str = "<think>\nNeed the weather.\n</think>\n\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";

    #[test]
    fn calls_are_read_from_the_answer_after_the_reasoning() {
        let a = read_whole(&auto(), TEXT.into(), false);
        assert_eq!(a.reasoning.as_deref(), Some("\nNeed the weather.\n"));
        assert_eq!(a.content, None);
        assert_eq!(a.calls[0].function.arguments, r#"{"city": "Paris"}"#);
        assert!(a.parser_called);
        // A call written inside the reasoning is not a call.
        let a = read_whole(&auto(), "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>".into(), false);
        assert!(a.calls.is_empty() && a.content.is_none() && a.reasoning.is_some());
    }

    #[test]
    fn streamed_pieces_add_up_to_the_whole() {
        for (i, _) in TEXT.char_indices() {
            let mut r = AnswerReader::new(&auto(), false);
            let mut pieces = r.push(&TEXT[..i], 1, false);
            pieces.extend(r.push(&TEXT[i..], 1, true));
            let reasoning: String = pieces.iter().filter_map(|p| if let Piece::Reasoning(t) = p { Some(t.as_str()) } else { None }).collect();
            let args: String = pieces
                .iter()
                .filter_map(|p| if let Piece::Call(d) = p { d.function.arguments.as_deref() } else { None })
                .collect();
            assert_eq!((reasoning.as_str(), args.as_str()), ("\nNeed the weather.\n", r#"{"city": "Paris"}"#), "cut at {i}");
            assert!(r.parser_called());
            let content: String = pieces.iter().filter_map(|p| if let Piece::Content(t) = p { Some(t.as_str()) } else { None }).collect();
            assert_eq!(content, "\n\n");
        }
    }
}
