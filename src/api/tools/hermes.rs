//! Hermes-style calls, as Hermes, Qwen2.5 and Qwen3 write them: each call a JSON object
//! `{"name": …, "arguments": {…}}` between `<tool_call>` and `</tool_call>`, after any
//! content. The arguments stream as the model writes them.

use super::scan::{call_object, partial_suffix, skip_ws};
use super::{PartialCall, Scan};

pub const OPEN: &str = "<tool_call>";
pub const CLOSE: &str = "</tool_call>";

pub fn scan(text: &str, last: bool) -> Scan {
    let Some(first) = text.find(OPEN) else {
        let hold = if last { 0 } else { partial_suffix(text, OPEN) };
        return Scan::content(text.len() - hold);
    };
    let mut out = Scan::content(first);
    let mut at = first;
    while let Some(rel) = text[at..].find(OPEN) {
        let body_start = at + rel + OPEN.len();
        let close = text[body_start..].find(CLOSE).map(|c| body_start + c);
        let body = &text[..close.unwrap_or(text.len())];
        let i = skip_ws(body, body_start);
        if i >= body.len() {
            // Nothing written yet; a block closed with nothing in it is no call.
            if close.is_some() {
                out.calls.push(PartialCall { malformed: true, ..Default::default() });
            }
        } else if body.as_bytes()[i] == b'{' {
            out.calls.push(json_call(body, i, &["arguments", "parameters"], last || close.is_some()).0);
        } else {
            out.calls.push(PartialCall { malformed: true, ..Default::default() });
        }
        match close {
            Some(c) => at = c + CLOSE.len(),
            None => break,
        }
    }
    out
}

/// A run of call objects from `text[i]` on, separated by `sep` and ending at `close` (if
/// the format closes the run) or at the end of the text, pushed to `out` as far as they
/// are written; anything else between them marks `out` malformed.
pub fn json_call_run(text: &str, mut i: usize, sep: u8, close: Option<u8>, args_keys: &[&str], last: bool, out: &mut Scan) {
    let b = text.as_bytes();
    loop {
        i = skip_ws(text, i);
        if i >= b.len() || Some(b[i]) == close {
            return;
        }
        match b[i] {
            c if c == sep => i += 1,
            b'{' => {
                let (call, end) = json_call(text, i, args_keys, last);
                let malformed = call.malformed;
                out.calls.push(call);
                match end {
                    Some(e) if !malformed => i = e,
                    _ => return,
                }
            }
            _ => {
                out.malformed = true;
                return;
            }
        }
    }
}

/// A `{"name", <args key>}` object at `text[start]`, read as far as it is written, and
/// where it ends once complete.
pub fn json_call(text: &str, start: usize, args_keys: &[&str], last: bool) -> (PartialCall, Option<usize>) {
    let obj = call_object(text, start, &["name"], args_keys, last);
    let (args, complete) = match obj.args {
        // Arguments sent as a JSON string holding the object: its content, once whole.
        Some((s, e, true)) if text.as_bytes()[s] == b'"' => {
            (serde_json::from_str::<String>(&text[s..e]).unwrap_or_default(), true)
        }
        Some((s, _, false)) if text.as_bytes()[s] == b'"' => (String::new(), false),
        Some((s, e, complete)) => (text[s..e].to_string(), complete),
        // No arguments at all: none are needed, once the object is complete.
        None if obj.end.is_some() => ("{}".to_string(), true),
        None => (String::new(), false),
    };
    (PartialCall { name: obj.name, args, complete, malformed: obj.malformed }, obj.end)
}

#[cfg(test)]
mod tests {
    use super::super::ToolParser;
    use super::super::stream::tests::{assert_streams_like_whole, read};

    const TEXT: &str = "Let me look.\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\", \"days\": [1, 2]}}\n</tool_call>\n<tool_call>{\"name\": \"time\", \"arguments\": {}}</tool_call>";

    #[test]
    fn calls_are_read_with_the_content_before_them() {
        let p = ToolParser::Hermes.parse(TEXT, &[]);
        assert_eq!(p.content.as_deref(), Some("Let me look."));
        assert_eq!(read(&p), [("weather", r#"{"city": "Paris", "days": [1, 2]}"#), ("time", "{}")]);
        assert!(p.calls[0].id.starts_with("chatcmpl-tool-") && p.calls[0].id != p.calls[1].id);
    }

    #[test]
    fn malformed_calls_stay_content() {
        for text in ["<tool_call>{not json}</tool_call>", "a <tool_call>{\"name\": \"f\", \"arguments\": {\"x\": ", "<tool_call></tool_call>"] {
            let p = ToolParser::Hermes.parse(text, &[]);
            assert_eq!((p.content.as_deref(), p.calls.len()), (Some(text), 0), "{text}");
        }
        assert_eq!(ToolParser::Hermes.parse("a <toolbox>", &[]).content.as_deref(), Some("a <toolbox>"));
    }

    #[test]
    fn arguments_as_a_json_string_are_unwrapped() {
        let p = ToolParser::Hermes.parse(r#"<tool_call>{"name": "f", "arguments": "{\"x\": 1}"}</tool_call>"#, &[]);
        assert_eq!(read(&p), [("f", r#"{"x": 1}"#)]);
    }

    #[test]
    fn streaming_at_every_cut_reads_what_the_whole_reads() {
        assert_streams_like_whole(ToolParser::Hermes, TEXT, &[]);
        assert_streams_like_whole(ToolParser::Hermes, "Just text, no <tool_ call here.", &[]);
        assert_streams_like_whole(ToolParser::Hermes, "<tool_call>{\"arguments\": {\"q\": \"é😀\"}, \"name\": \"search\"}</tool_call>", &[]);
    }
}
