//! Reasoning outputs (`--reasoning-parser NAME`, vLLM's names): the part of a chat
//! answer the model spends thinking is split off into `reasoning_content` (and vLLM's
//! newer `reasoning`), streamed as `delta.reasoning_content`; the rest is the answer,
//! from which tool calls are read and to which structured outputs apply.
//!
//! Every format here is a section between markers, so one splitter (`split`) serves
//! them all, driven by each format's markers (`think` for `<think>…</think>` models,
//! `granite` for Granite's sentences). Whole answers go through the same splitter as
//! streamed ones.

pub mod granite;
pub mod split;
pub mod think;

pub use split::ReasoningStream;

/// The parsers `--reasoning-parser` knows, by vLLM's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReasoningParser {
    /// DeepSeek-R1 and its distills: everything up to `</think>` is reasoning (the
    /// template may already have opened `<think>` in the prompt); no `</think>` at all
    /// means the answer was cut while still thinking.
    #[value(name = "deepseek_r1")]
    DeepseekR1,
    /// Qwen3 (and QwQ): as DeepSeek-R1, but with `chat_template_kwargs: {"enable_thinking":
    /// false}` the whole answer is content.
    #[value(name = "qwen3")]
    Qwen3,
    /// Granite 3.2+: "Here is my thought process:" … "Here is my response:" (or "Here's").
    #[value(name = "granite")]
    Granite,
}

/// Where a format's reasoning begins and ends.
#[derive(Debug)]
pub struct Markers {
    /// Opening markers; where the answer starts with one it is dropped.
    pub start: &'static [&'static str],
    /// Closing markers: the reasoning ends at the first of them.
    pub end: &'static [&'static str],
    /// Reasoning only when the answer opens with a start marker (otherwise all content).
    pub start_required: bool,
    /// A whole answer that never closes its reasoning is all content (otherwise all
    /// reasoning: it was cut while thinking).
    pub unclosed_is_content: bool,
}

impl ReasoningParser {
    pub fn markers(self) -> &'static Markers {
        match self {
            ReasoningParser::DeepseekR1 | ReasoningParser::Qwen3 => &think::MARKERS,
            ReasoningParser::Granite => &granite::MARKERS,
        }
    }

    /// The markers after which the answer begins, which a structured-output constraint
    /// waits for.
    pub fn end_markers(self) -> Vec<String> {
        self.markers().end.iter().map(|m| m.to_string()).collect()
    }

    /// Whether the request's answer holds no reasoning at all: the prompt has already
    /// closed it (a template that disables thinking writes an empty think block), or,
    /// for Qwen3, the request turned thinking off.
    pub fn answer_is_content(self, prompt: &str, template_kwargs: &serde_json::Map<String, serde_json::Value>) -> bool {
        if self == ReasoningParser::Qwen3 && template_kwargs.get("enable_thinking") == Some(&serde_json::Value::Bool(false)) {
            return true;
        }
        let m = self.markers();
        let last = |markers: &[&str]| markers.iter().filter_map(|k| prompt.rfind(k)).max();
        match (last(m.start), last(m.end)) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(s), Some(e)) => e > s,
        }
    }

    /// A whole answer: its reasoning and its content (None when empty).
    pub fn split(self, text: &str, content_only: bool) -> (Option<String>, Option<String>) {
        let mut s = ReasoningStream::new(self, content_only);
        let out = s.push(text, true);
        if s.unclosed() && self.markers().unclosed_is_content {
            return (None, Some(text.to_string()).filter(|t| !t.is_empty()));
        }
        let some = |t: String| (!t.is_empty()).then_some(t);
        (some(out.reasoning), some(out.content))
    }
}
