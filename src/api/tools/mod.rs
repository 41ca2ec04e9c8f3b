//! Tool calling: the request's `tools` and `tool_choice` (`choice`), and reading tool
//! calls back out of the model's text with one of vLLM's parsers
//! (`--enable-auto-tool-choice --tool-call-parser NAME`), whole or as it streams.
//!
//! Each format has its own module, and each answers one question: given the text written
//! so far, which part is plain content, and which calls have begun — with their name once
//! it is complete and their arguments as far as they are written (`Scan`). The streamer
//! (`stream`) turns successive scans into deltas: content, then per call its name first
//! and then the new argument text, as vLLM's parsers stream. Whole answers go through the
//! same scan, so a streamed answer and a whole one read the same calls.

pub mod choice;
pub mod hermes;
pub mod llama3_json;
pub mod mistral;
pub mod pythonic;
pub mod qwen3_coder;
pub mod scan;
pub mod stream;

use serde::Serialize;
use serde_json::Value;

pub use choice::{tool_use, AutoTools, ToolUse};
pub use stream::ToolStreamer;

/// The parsers `--tool-call-parser` knows, by vLLM's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ToolParser {
    /// `<tool_call>{"name", "arguments"}</tool_call>` (Hermes, Qwen2.5, Qwen3).
    #[value(name = "hermes")]
    Hermes,
    /// `{"name", "parameters"}` objects, optionally after `<|python_tag|>` and separated
    /// by `;` (Llama 3.1–3.3).
    #[value(name = "llama3_json")]
    Llama3Json,
    /// `[TOOL_CALLS][{"name", "arguments"}, …]`, or `[TOOL_CALLS]name[ARGS]{…}` (Mistral).
    #[value(name = "mistral")]
    Mistral,
    /// `[f(a=1), g(b="x")]`: Python calls with literal keyword arguments (Llama 3.2/4).
    #[value(name = "pythonic")]
    Pythonic,
    /// `<tool_call><function=f><parameter=a>1</parameter></function></tool_call>`
    /// (Qwen3-Coder), values typed by the tool's schema.
    #[value(name = "qwen3_coder")]
    Qwen3Coder,
}

impl ToolParser {
    /// Whether the format's markers are special tokens in the models that write it, so
    /// the answer must be detokenized with them (vLLM turns `skip_special_tokens` off
    /// for these parsers too).
    pub fn needs_special_tokens(self) -> bool {
        matches!(self, ToolParser::Hermes | ToolParser::Mistral | ToolParser::Qwen3Coder)
    }

    /// The text written so far, read in this format. `last`: no more text comes, so a
    /// marker cut short is plain text and a number at the end is complete.
    pub fn scan(self, text: &str, last: bool, tools: &[Value]) -> Scan {
        match self {
            ToolParser::Hermes => hermes::scan(text, last),
            ToolParser::Llama3Json => llama3_json::scan(text, last),
            ToolParser::Mistral => mistral::scan(text, last),
            ToolParser::Pythonic => pythonic::scan(text, last),
            ToolParser::Qwen3Coder => qwen3_coder::scan(text, last, tools),
        }
    }

    /// A new call id, as vLLM makes them for this format (Mistral's templates require
    /// nine alphanumerics).
    pub fn call_id(self) -> String {
        use rand::Rng;
        match self {
            ToolParser::Mistral => {
                const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
                let mut rng = rand::rng();
                (0..9).map(|_| ALNUM[rng.random_range(0..ALNUM.len())] as char).collect()
            }
            _ => call_id(),
        }
    }

    /// Reads a whole answer. When it does not hold only well-formed calls after its
    /// content, all of it is content, as vLLM answers.
    pub fn parse(self, text: &str, tools: &[Value]) -> Parsed {
        let scan = self.scan(text, true, tools);
        let valid = !scan.calls.is_empty() && !scan.malformed && scan.calls.iter().all(PartialCall::is_valid);
        if !valid {
            return Parsed { content: Some(text.to_string()), calls: Vec::new() };
        }
        let content = text[..scan.content_end].trim_end();
        let calls = scan
            .calls
            .into_iter()
            .map(|c| ToolCall::new(self.call_id(), c.name.unwrap_or_default(), c.args))
            .collect();
        Parsed { content: (!content.is_empty()).then(|| content.to_string()), calls }
    }
}

/// What a format found in the text so far.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Scan {
    /// The text up to here is plain content (it only grows as text comes in: what may
    /// still turn out to be a marker is held back).
    pub content_end: usize,
    /// The calls begun, in order.
    pub calls: Vec<PartialCall>,
    /// Something after the calls is not part of the format.
    pub malformed: bool,
}

impl Scan {
    /// Only content, up to `end`.
    pub fn content(end: usize) -> Scan {
        Scan { content_end: end, ..Default::default() }
    }
}

/// One call as far as it is written.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PartialCall {
    /// Known once it is complete.
    pub name: Option<String>,
    /// The arguments' JSON text so far; each scan's text extends the last one's.
    pub args: String,
    /// The arguments are complete.
    pub complete: bool,
    /// The call does not follow the format.
    pub malformed: bool,
}

impl PartialCall {
    /// A complete call with a name and a JSON object of arguments.
    pub fn is_valid(&self) -> bool {
        self.name.as_deref().is_some_and(|n| !n.is_empty())
            && self.complete
            && !self.malformed
            && serde_json::from_str::<Value>(&self.args).is_ok_and(|v| v.is_object())
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as a JSON text, as OpenAI sends them.
    pub arguments: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

impl ToolCall {
    pub fn new(id: String, name: String, arguments: String) -> Self {
        ToolCall { id, kind: "function", function: FunctionCall { name, arguments } }
    }
}

/// A piece of a streamed tool call: the first names the call (with its id), the next
/// ones add argument text.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ToolCallDelta {
    /// The call's position among the choice's calls.
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionDelta,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FunctionDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

impl ToolCallDelta {
    /// The whole call in one delta (a forced call read at the end).
    pub fn whole(index: usize, call: ToolCall) -> Self {
        ToolCallDelta {
            index,
            id: Some(call.id),
            kind: Some("function"),
            function: FunctionDelta { name: Some(call.function.name), arguments: Some(call.function.arguments) },
        }
    }
}

/// What an answer held: the text before the calls, and the calls.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub content: Option<String>,
    pub calls: Vec<ToolCall>,
}

/// `chatcmpl-tool-` and 32 hex digits, as vLLM names calls.
pub fn call_id() -> String {
    use rand::Rng;
    format!("chatcmpl-tool-{:032x}", rand::rng().random::<u128>())
}
