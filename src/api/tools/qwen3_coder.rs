//! Qwen3-Coder's XML calls:
//!
//! ```text
//! <tool_call>
//! <function=get_weather>
//! <parameter=city>
//! Paris
//! </parameter>
//! </function>
//! </tool_call>
//! ```
//!
//! Parameter values are written bare; the tool's JSON schema says what each is (a string,
//! a number, a boolean, an object or list as JSON), so the arguments object is rebuilt a
//! parameter at a time with those types. Content may come before the first call.

use serde_json::Value;

use super::scan::{partial_suffix, python_json};
use super::{PartialCall, Scan};

const OPEN: &str = "<tool_call>";
const FUNCTION: &str = "<function=";
const FUNCTION_END: &str = "</function>";
const PARAMETER: &str = "<parameter=";
const PARAMETER_END: &str = "</parameter>";

pub fn scan(text: &str, last: bool, tools: &[Value]) -> Scan {
    let start = [text.find(OPEN), text.find(FUNCTION)].into_iter().flatten().min();
    let Some(start) = start else {
        let hold = if last { 0 } else { partial_suffix(text, OPEN).max(partial_suffix(text, FUNCTION)) };
        return Scan::content(text.len() - hold);
    };
    let mut out = Scan::content(start);
    let mut i = start;
    while let Some(rel) = text[i..].find(FUNCTION) {
        let name_start = i + rel + FUNCTION.len();
        let Some(gt) = text[name_start..].find('>') else { break };
        let name = text[name_start..name_start + gt].trim().to_string();
        let schema = properties(tools, &name);
        let mut j = name_start + gt + 1;
        let mut parts = Vec::new();
        let mut call = PartialCall { malformed: name.is_empty(), name: Some(name), ..Default::default() };
        loop {
            let param = text[j..].find(PARAMETER);
            let close = text[j..].find(FUNCTION_END);
            if let Some(c) = close.filter(|&c| param.is_none_or(|p| c < p)) {
                call.complete = true;
                j += c + FUNCTION_END.len();
                break;
            }
            let Some(p) = param else { break };
            let key_start = j + p + PARAMETER.len();
            let Some(kgt) = text[key_start..].find('>') else { break };
            let key = text[key_start..key_start + kgt].trim();
            let value_start = key_start + kgt + 1;
            let ends = [PARAMETER_END, PARAMETER, FUNCTION_END].map(|m| text[value_start..].find(m).map(|e| (e, m)));
            let Some((len, marker)) = ends.into_iter().flatten().min_by_key(|(e, _)| *e) else { break };
            let raw = &text[value_start..value_start + len];
            let raw = raw.strip_prefix('\n').unwrap_or(raw);
            let raw = raw.strip_suffix('\n').unwrap_or(raw);
            let kind = schema.and_then(|s| s.get(key)).and_then(|p| p.get("type")).and_then(Value::as_str);
            parts.push(format!("{}: {}", python_json(&Value::from(key)), python_json(&typed(raw, kind))));
            j = value_start + len + if marker == PARAMETER_END { marker.len() } else { 0 };
        }
        call.args = format!("{{{}{}", parts.join(", "), if call.complete { "}" } else { "" });
        let complete = call.complete;
        out.calls.push(call);
        if !complete {
            break;
        }
        i = j;
    }
    out
}

/// The `properties` of the named tool's parameters schema.
fn properties<'a>(tools: &'a [Value], name: &str) -> Option<&'a serde_json::Map<String, Value>> {
    tools
        .iter()
        .find(|t| t.pointer("/function/name").and_then(Value::as_str) == Some(name))
        .and_then(|t| t.pointer("/function/parameters/properties"))
        .and_then(Value::as_object)
}

/// A bare parameter value, typed by its schema type: `null` is null; strings stay as
/// written; integers, numbers and booleans are read as such (left a string when they do
/// not read); objects, arrays and untyped values are read as JSON when they are JSON.
fn typed(raw: &str, kind: Option<&str>) -> Value {
    if raw.eq_ignore_ascii_case("null") {
        return Value::Null;
    }
    let string = || Value::String(raw.to_string());
    match kind.map(str::to_ascii_lowercase).as_deref() {
        Some("string" | "str" | "text" | "varchar" | "char" | "enum") => string(),
        Some("integer" | "int") => raw.trim().parse::<i64>().map(Value::from).unwrap_or_else(|_| string()),
        Some("number" | "float" | "double") => {
            let t = raw.trim();
            t.parse::<i64>()
                .map(Value::from)
                .ok()
                .or_else(|| t.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Value::Number))
                .unwrap_or_else(string)
        }
        Some("boolean" | "bool") => match raw.trim().to_ascii_lowercase().as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => string(),
        },
        _ => serde_json::from_str::<Value>(raw.trim()).unwrap_or_else(|_| string()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::ToolParser;
    use super::super::stream::tests::{assert_streams_like_whole, read};
    use serde_json::json;

    const TEXT: &str = "I'll check.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nSan Francisco\n</parameter>\n<parameter=days>\n3\n</parameter>\n<parameter=hourly>\ntrue\n</parameter>\n<parameter=fields>\n[\"temp\", \"wind\"]\n</parameter>\n<parameter=note>\n42\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=get_time>\n</function>\n</tool_call>";

    fn tools() -> Vec<serde_json::Value> {
        vec![json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "days": {"type": "integer"}, "hourly": {"type": "boolean"},
            "fields": {"type": "array"}, "note": {"type": "string"}}}}})]
    }

    #[test]
    fn parameters_are_typed_by_the_schema() {
        let p = ToolParser::Qwen3Coder.parse(TEXT, &tools());
        assert_eq!(p.content.as_deref(), Some("I'll check."));
        assert_eq!(
            read(&p),
            [("get_weather", r#"{"city": "San Francisco", "days": 3, "hourly": true, "fields": ["temp", "wind"], "note": "42"}"#), ("get_time", "{}")]
        );
        // Without schemas, values that read as JSON are JSON.
        let p = ToolParser::Qwen3Coder.parse("<tool_call>\n<function=f>\n<parameter=n>\n7\n</parameter>\n</function>\n</tool_call>", &[]);
        assert_eq!(read(&p), [("f", r#"{"n": 7}"#)]);
        let cut = "<tool_call>\n<function=f>\n<parameter=n>\n7";
        assert_eq!(ToolParser::Qwen3Coder.parse(cut, &[]).content.as_deref(), Some(cut));
    }

    #[test]
    fn streaming_at_every_cut_reads_what_the_whole_reads() {
        assert_streams_like_whole(ToolParser::Qwen3Coder, TEXT, &tools());
        assert_streams_like_whole(ToolParser::Qwen3Coder, "<function is a keyword>", &[]);
    }
}
