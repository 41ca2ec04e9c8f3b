//! Tool calling: the request's `tools` and `tool_choice`, and reading tool calls back out
//! of the model's text. With `--enable-auto-tool-choice --tool-call-parser hermes` (vLLM's
//! flags), a chat request whose `tool_choice` is `auto` has its answer searched for
//! Hermes-style calls — `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, the
//! format of Qwen2.5, Hermes and others — which come back as `message.tool_calls` with
//! `finish_reason: "tool_calls"`. Text before the first call stays the content.

use serde::Serialize;
use serde_json::Value;

/// The parsers `--tool-call-parser` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ToolParser {
    Hermes,
}

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

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

/// A tool call inside a streamed delta (with its position among the choice's calls).
#[derive(Debug, Clone, Serialize)]
pub struct ToolCallDelta {
    pub index: usize,
    #[serde(flatten)]
    pub call: ToolCall,
}

/// What an answer held: the text before the calls, and the calls.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub content: Option<String>,
    pub calls: Vec<ToolCall>,
}

/// Reads Hermes-style calls from a whole answer. Text that does not hold well-formed
/// calls is left as content, as vLLM does.
pub fn parse(text: &str) -> Parsed {
    let Some(start) = text.find(OPEN) else {
        return Parsed { content: Some(text.to_string()), calls: Vec::new() };
    };
    let mut calls = Vec::new();
    let mut rest = &text[start..];
    while let Some(after) = rest.strip_prefix(OPEN) {
        let (body, tail) = match after.find(CLOSE) {
            Some(end) => (&after[..end], &after[end + CLOSE.len()..]),
            None => (after, ""), // the answer ended inside a call (max_tokens, or an EOS)
        };
        let Some(call) = call_from_json(body.trim()) else {
            return Parsed { content: Some(text.to_string()), calls: Vec::new() };
        };
        calls.push(call);
        rest = tail.trim_start();
    }
    let content = text[..start].trim_end();
    Parsed { content: (!content.is_empty()).then(|| content.to_string()), calls }
}

fn call_from_json(body: &str) -> Option<ToolCall> {
    let v: Value = serde_json::from_str(body).ok()?;
    let name = v.get("name")?.as_str()?.to_string();
    let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(a) => serde_json::to_string(a).ok()?,
    };
    Some(ToolCall { id: call_id(), kind: "function", function: FunctionCall { name, arguments } })
}

/// `chatcmpl-tool-` and 32 hex digits, as vLLM names calls.
fn call_id() -> String {
    use rand::Rng;
    format!("chatcmpl-tool-{:032x}", rand::rng().random::<u128>())
}

/// Splits a streamed answer: text before the first `<tool_call>` streams as content;
/// from there on it is held for `parse` at the end.
#[derive(Debug, Default)]
pub struct StreamSplit {
    /// Text that may be the start of `<tool_call>`, not yet sent.
    held: String,
    /// Everything from the first `<tool_call>` on.
    calls: Option<String>,
}

impl StreamSplit {
    /// Feeds new text; returns the content that can be sent now.
    pub fn push(&mut self, text: &str, last: bool) -> String {
        if let Some(calls) = &mut self.calls {
            calls.push_str(text);
            return String::new();
        }
        self.held.push_str(text);
        if let Some(at) = self.held.find(OPEN) {
            self.calls = Some(self.held[at..].to_string());
            let content = self.held[..at].to_string();
            self.held.clear();
            return content;
        }
        let keep = if last { 0 } else { (1..OPEN.len()).rev().find(|&k| self.held.ends_with(&OPEN[..k])).unwrap_or(0) };
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        out
    }

    /// At the end: the calls found, or, when the held part holds none, that text as
    /// content still to send.
    pub fn finish(&mut self) -> (String, Vec<ToolCall>) {
        let held = std::mem::take(&mut self.held);
        match self.calls.take() {
            None => (held, Vec::new()),
            Some(raw) => {
                let parsed = parse(&raw);
                if parsed.calls.is_empty() { (held + &raw, Vec::new()) } else { (held, parsed.calls) }
            }
        }
    }
}

/// How a chat request's `tools` are to be used.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolUse {
    /// No tools, or `tool_choice: "none"`: the answer is plain content.
    None,
    /// `tool_choice: "auto"`: calls are read out of the answer.
    Auto,
}

/// Checks `tools` and `tool_choice` (vLLM's rules) and says how the answer is read.
/// `tools` is returned for the chat template.
pub fn tool_use(
    tools: Option<Vec<Value>>,
    choice: Option<Value>,
    parser: Option<ToolParser>,
) -> Result<(Option<Vec<Value>>, ToolUse), (&'static str, String)> {
    let tools = tools.filter(|t| !t.is_empty());
    if let Some(list) = &tools {
        for (i, t) in list.iter().enumerate() {
            let ok = t.get("type").and_then(Value::as_str) == Some("function")
                && t.pointer("/function/name").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
            if !ok {
                return Err(("tools", format!("`tools[{i}]` must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}.")));
            }
        }
    }
    // As OpenAI: "auto" when tools are given, "none" otherwise.
    let choice = choice.unwrap_or_else(|| Value::from(if tools.is_some() { "auto" } else { "none" }));
    match (choice.as_str(), &tools) {
        (Some("none"), _) => Ok((tools, ToolUse::None)),
        (Some("auto"), Some(_)) if parser.is_some() => Ok((tools, ToolUse::Auto)),
        (Some("auto"), Some(_)) => Err((
            "tool_choice",
            "\"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set.".into(),
        )),
        (_, None) => Err(("tool_choice", "`tool_choice` needs `tools`.".into())),
        (Some("required"), _) | (None, _) => Err((
            "tool_choice",
            "Forcing a tool call (`required`, or a named function) is not supported yet; use \"auto\" or \"none\".".into(),
        )),
        (Some(other), _) => Err(("tool_choice", format!("`tool_choice` must be \"none\", \"auto\", \"required\" or a function, got {other:?}."))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hermes_calls_are_read_with_the_content_before_them() {
        let p = parse("Let me look.\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>{\"name\": \"time\", \"arguments\": {}}</tool_call>");
        assert_eq!(p.content.as_deref(), Some("Let me look."));
        assert_eq!(p.calls.len(), 2);
        assert_eq!(p.calls[0].function, FunctionCall { name: "weather".into(), arguments: r#"{"city":"Paris"}"#.into() });
        assert_eq!(p.calls[1].function.name, "time");
        assert!(p.calls[0].id.starts_with("chatcmpl-tool-") && p.calls[0].id != p.calls[1].id);
    }

    #[test]
    fn malformed_calls_stay_content() {
        let text = "<tool_call>{not json}</tool_call>";
        assert_eq!(parse(text), Parsed { content: Some(text.into()), calls: vec![] });
        assert_eq!(parse("plain").calls.len(), 0);
    }

    #[test]
    fn streaming_holds_back_from_the_first_call() {
        let mut s = StreamSplit::default();
        let mut sent = String::new();
        for piece in ["Sure", ". <tool", "_call>{\"name\": \"f\", ", "\"arguments\": {\"x\": 1}}</tool_call>"] {
            sent += &s.push(piece, false);
        }
        let (rest, calls) = s.finish();
        assert_eq!(sent + &rest, "Sure. ");
        assert_eq!(calls[0].function.arguments, r#"{"x":1}"#);

        let mut s = StreamSplit::default();
        let mut sent = s.push("a <tool", false);
        sent += &s.push("box>", true);
        assert_eq!(sent + &s.finish().0, "a <toolbox>", "a near miss is content");
    }

    #[test]
    fn tool_choice_follows_vllm() {
        let tools = Some(vec![json!({"type": "function", "function": {"name": "f"}})]);
        assert_eq!(tool_use(tools.clone(), None, Some(ToolParser::Hermes)).unwrap().1, ToolUse::Auto);
        assert!(tool_use(tools.clone(), None, None).unwrap_err().1.contains("--enable-auto-tool-choice"));
        assert_eq!(tool_use(tools.clone(), Some(json!("none")), None).unwrap().1, ToolUse::None);
        assert_eq!(tool_use(None, Some(json!("auto")), None).unwrap_err().0, "tool_choice");
        assert_eq!(tool_use(Some(vec![json!({"type": "function"})]), None, None).unwrap_err().0, "tools");
    }
}
