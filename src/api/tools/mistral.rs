//! Mistral calls after the `[TOOL_CALLS]` token, in either of the formats Mistral's
//! tokenizers use: a JSON list `[{"name": …, "arguments": {…}}, …]` (up to v7), or
//! `name[ARGS]{…}` per call, each after its own `[TOOL_CALLS]` (v11 on). Content may come
//! before the first call.

use super::hermes::json_call_run;
use super::scan::{partial_suffix, skip_ws, value_end};
use super::{PartialCall, Scan};

pub const TOOL_CALLS: &str = "[TOOL_CALLS]";
const ARGS: &str = "[ARGS]";

pub fn scan(text: &str, last: bool) -> Scan {
    let Some(first) = text.find(TOOL_CALLS) else {
        let hold = if last { 0 } else { partial_suffix(text, TOOL_CALLS) };
        return Scan::content(text.len() - hold);
    };
    let mut out = Scan::content(first);
    let b = text.as_bytes();
    let mut i = skip_ws(text, first + TOOL_CALLS.len());
    if i < b.len() && b[i] == b'[' {
        json_call_run(text, i + 1, b',', Some(b']'), &["arguments", "parameters"], last, &mut out);
        return out;
    }
    // name[ARGS]{...}, repeated after further [TOOL_CALLS] tokens.
    loop {
        let Some(rel) = text[i..].find(ARGS) else {
            if last {
                out.calls.push(PartialCall { malformed: true, ..Default::default() });
            }
            break;
        };
        let name = text[i..i + rel].trim().to_string();
        let j = skip_ws(text, i + rel + ARGS.len());
        let end = if j < b.len() { value_end(&text[j..], last).map(|e| j + e) } else { None };
        out.calls.push(PartialCall {
            malformed: name.is_empty() || (j < b.len() && b[j] != b'{'),
            name: Some(name),
            args: text[j.min(b.len())..end.unwrap_or(b.len())].to_string(),
            complete: end.is_some(),
        });
        let Some(e) = end else { break };
        i = skip_ws(text, e);
        match text[i..].strip_prefix(TOOL_CALLS) {
            Some(_) => i += TOOL_CALLS.len(),
            None => {
                out.malformed = i < b.len();
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::ToolParser;
    use super::super::stream::tests::{assert_streams_like_whole, read};

    const LIST: &str = r#"Checking. [TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {"tz": "CET"}}]"#;
    const TAGGED: &str = r#"[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{"tz": "CET"}"#;

    #[test]
    fn both_formats_are_read() {
        let p = ToolParser::Mistral.parse(LIST, &[]);
        assert_eq!(p.content.as_deref(), Some("Checking."));
        assert_eq!(read(&p), [("get_weather", r#"{"city": "Paris"}"#), ("get_time", r#"{"tz": "CET"}"#)]);
        let p = ToolParser::Mistral.parse(TAGGED, &[]);
        assert_eq!((p.content.clone(), read(&p)), (None, vec![("get_weather", r#"{"city": "Paris"}"#), ("get_time", r#"{"tz": "CET"}"#)]));
        assert!(p.calls.iter().all(|c| c.id.len() == 9 && c.id.chars().all(|ch| ch.is_ascii_alphanumeric())));
        assert_eq!(ToolParser::Mistral.parse("[TOOL_CALLS] nonsense", &[]).calls.len(), 0);
    }

    #[test]
    fn streaming_at_every_cut_reads_what_the_whole_reads() {
        assert_streams_like_whole(ToolParser::Mistral, LIST, &[]);
        assert_streams_like_whole(ToolParser::Mistral, TAGGED, &[]);
        assert_streams_like_whole(ToolParser::Mistral, "No [TOOL calls] here", &[]);
    }
}
