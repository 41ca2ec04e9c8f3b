//! Llama 3.1–3.3 JSON calls: the answer is one or more `{"name": …, "parameters": {…}}`
//! objects (separated by `;`), optionally after `<|python_tag|>`. An answer that starts
//! with anything else is plain content, as vLLM reads it.

use super::hermes::json_call_run;
use super::scan::skip_ws;
use super::{PartialCall, Scan};

pub const PYTHON_TAG: &str = "<|python_tag|>";

pub fn scan(text: &str, last: bool) -> Scan {
    let lead = skip_ws(text, 0);
    let rest = &text[lead..];
    let i = if rest.starts_with(PYTHON_TAG) {
        lead + PYTHON_TAG.len()
    } else if rest.starts_with('{') {
        lead
    } else if !last && (rest.is_empty() || PYTHON_TAG.starts_with(rest)) {
        return Scan::content(0); // not yet known whether calls or content follow
    } else {
        return Scan::content(text.len());
    };
    let mut out = Scan::content(0);
    json_call_run(text, i, b';', None, &["parameters", "arguments"], last, &mut out);
    if out.calls.is_empty() && last {
        out.calls.push(PartialCall { malformed: true, ..Default::default() });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::ToolParser;
    use super::super::stream::tests::{assert_streams_like_whole, read};

    #[test]
    fn json_calls_with_or_without_the_python_tag() {
        let p = ToolParser::Llama3Json.parse(r#"{"name": "get_weather", "parameters": {"city": "Paris"}}"#, &[]);
        assert_eq!((p.content.clone(), read(&p)), (None, vec![("get_weather", r#"{"city": "Paris"}"#)]));
        let two = r#"<|python_tag|>{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {}}"#;
        assert_eq!(read(&ToolParser::Llama3Json.parse(two, &[])), [("a", r#"{"x": 1}"#), ("b", "{}")]);
        let text = "The weather is sunny.";
        assert_eq!(ToolParser::Llama3Json.parse(text, &[]).content.as_deref(), Some(text));
        let broken = r#"{"name": "a", "parameters": {"x": 1}} and more"#;
        assert_eq!(ToolParser::Llama3Json.parse(broken, &[]).content.as_deref(), Some(broken));
    }

    #[test]
    fn streaming_at_every_cut_reads_what_the_whole_reads() {
        assert_streams_like_whole(ToolParser::Llama3Json, r#"<|python_tag|>{"name": "a", "parameters": {"x": [1, {"y": "}"}]}}; {"name": "b", "parameters": {}}"#, &[]);
        assert_streams_like_whole(ToolParser::Llama3Json, "  Plain answer.", &[]);
    }
}
