//! A request's `tools` and `tool_choice`, checked as vLLM checks them, and how the answer
//! is read: `auto` (with `--enable-auto-tool-choice --tool-call-parser NAME`) reads the
//! calls the model writes in its format; `required` or a named function forces a call,
//! as vLLM does it: the answer is constrained (structured outputs) to the function's
//! `parameters` schema — or, for `required`, to a list of `{"name", "parameters"}`
//! objects over every tool — and read back as calls, whatever the model and without a
//! parser.

use std::sync::Arc;

use serde_json::Value;

use super::scan::python_json;
use super::{call_id, Parsed, ToolCall, ToolParser};

/// How a chat request's `tools` are to be used, and its answer read.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ToolUse {
    /// No tools, or `tool_choice: "none"`: the answer is plain content.
    #[default]
    None,
    /// `tool_choice: "auto"`: calls are read out of the answer by the server's parser.
    Auto(AutoTools),
    /// A named function: the answer is its arguments, under this schema.
    Named { name: String, schema: Value },
    /// `tool_choice: "required"`: the answer is a list of calls, under this schema.
    Required { schema: Value },
}

impl ToolUse {
    /// The schema the answer is constrained to, when a call is forced.
    pub fn forced_schema(&self) -> Option<&Value> {
        match self {
            ToolUse::Named { schema, .. } | ToolUse::Required { schema } => Some(schema),
            _ => None,
        }
    }

    /// Reads a whole answer: content and calls, and whether calls were read.
    pub fn read(&self, text: String) -> Parsed {
        let plain = |text: String| Parsed { content: Some(text), calls: Vec::new() };
        match self {
            ToolUse::None => plain(text),
            ToolUse::Auto(auto) => auto.parser.parse(&text, &auto.tools),
            ToolUse::Named { name, .. } => Parsed {
                content: None,
                calls: vec![ToolCall::new(call_id(), name.clone(), text)],
            },
            ToolUse::Required { .. } => {
                // A list cut short by max_tokens does not parse: it stays content.
                let Ok(Value::Array(items)) = serde_json::from_str::<Value>(&text) else { return plain(text) };
                let calls = items
                    .iter()
                    .filter_map(|c| {
                        let name = c.get("name")?.as_str()?.to_string();
                        Some(ToolCall::new(call_id(), name, python_json(c.get("parameters")?)))
                    })
                    .collect();
                Parsed { content: None, calls }
            }
        }
    }
}

/// The parameters schema of a tool (an object of any shape when it gives none).
fn parameters(tool: &Value) -> Value {
    tool.pointer("/function/parameters").cloned().unwrap_or_else(|| serde_json::json!({"type": "object"}))
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
        check_tools(list)?;
    }
    // As OpenAI: "auto" when tools are given, "none" otherwise.
    let choice = choice.unwrap_or_else(|| Value::from(if tools.is_some() { "auto" } else { "none" }));
    match (choice.as_str(), &tools) {
        (Some("none"), _) => Ok((tools, ToolUse::None)),
        (Some("auto"), Some(list)) if parser.is_some() => {
            let auto = AutoTools { parser: parser.expect("checked"), tools: Arc::new(list.clone()) };
            Ok((tools, ToolUse::Auto(auto)))
        }
        (Some("auto"), Some(_)) => Err((
            "tool_choice",
            "\"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set.".into(),
        )),
        (_, None) => Err(("tool_choice", "`tool_choice` needs `tools`.".into())),
        (Some("required"), Some(list)) => {
            let each: Vec<Value> = list
                .iter()
                .map(|t| {
                    serde_json::json!({"type": "object",
                        "properties": {"name": {"type": "string", "enum": [t.pointer("/function/name")]}, "parameters": parameters(t)},
                        "required": ["name", "parameters"]})
                })
                .collect();
            let schema = serde_json::json!({"type": "array", "minItems": 1, "items": {"anyOf": each}});
            Ok((tools, ToolUse::Required { schema }))
        }
        (None, Some(list)) => {
            let name = choice.pointer("/function/name").and_then(Value::as_str).ok_or((
                "tool_choice",
                "`tool_choice` must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}.".to_string(),
            ))?;
            let tool = list.iter().find(|t| t.pointer("/function/name").and_then(Value::as_str) == Some(name)).ok_or((
                "tool_choice",
                format!(
                    "`tool_choice` names the function {name:?}, which is not in `tools`; the tools are {}.",
                    list.iter().filter_map(|t| t.pointer("/function/name").and_then(Value::as_str)).collect::<Vec<_>>().join(", ")
                ),
            ))?;
            let schema = parameters(tool);
            Ok((tools, ToolUse::Named { name: name.to_string(), schema }))
        }
        (Some(other), _) => Err(("tool_choice", format!("`tool_choice` must be \"none\", \"auto\", \"required\" or a function, got {other:?}."))),
    }
}


/// The server's parser and the request's tools, for reading calls out of the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoTools {
    pub parser: ToolParser,
    pub tools: Arc<Vec<Value>>,
}

/// Each tool must be a function with a name, and its `parameters` (when given) a JSON
/// Schema object: a schema the answer could not be checked against is the client's
/// mistake, named here rather than failing later.
fn check_tools(list: &[Value]) -> Result<(), (&'static str, String)> {
    for (i, t) in list.iter().enumerate() {
        let ok = t.get("type").and_then(Value::as_str) == Some("function")
            && t.pointer("/function/name").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
        if !ok {
            return Err(("tools", format!("`tools[{i}]` must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}.")));
        }
        match t.pointer("/function/parameters") {
            None | Some(Value::Null) => {}
            Some(schema @ Value::Object(_)) => {
                if let Err(e) = jsonschema::meta::validate(schema) {
                    return Err(("tools", format!("`tools[{i}].function.parameters` is not a valid JSON Schema: {e}.")));
                }
            }
            Some(_) => {
                return Err(("tools", format!("`tools[{i}].function.parameters` must be a JSON Schema object.")));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tool_choice_follows_vllm() {
        let tools = Some(vec![json!({"type": "function", "function": {"name": "f"}})]);
        assert!(matches!(tool_use(tools.clone(), None, Some(ToolParser::Hermes)).unwrap().1, ToolUse::Auto(_)));
        assert!(tool_use(tools.clone(), None, None).unwrap_err().1.contains("--enable-auto-tool-choice"));
        assert_eq!(tool_use(tools.clone(), Some(json!("none")), None).unwrap().1, ToolUse::None);
        assert_eq!(tool_use(None, Some(json!("auto")), None).unwrap_err().0, "tool_choice");
        assert_eq!(tool_use(Some(vec![json!({"type": "function"})]), None, None).unwrap_err().0, "tools");
        let named = json!({"type": "function", "function": {"name": "f"}});
        assert!(matches!(tool_use(tools.clone(), Some(named), None).unwrap().1, ToolUse::Named { .. }));
        let other = json!({"type": "function", "function": {"name": "g"}});
        assert!(tool_use(tools.clone(), Some(other), None).unwrap_err().1.contains("not in `tools`"));
        assert!(matches!(tool_use(tools, Some(json!("required")), None).unwrap().1, ToolUse::Required { .. }));
    }

    #[test]
    fn tool_schemas_must_be_json_schemas() {
        let bad = json!({"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}});
        let (param, msg) = tool_use(Some(vec![bad]), None, Some(ToolParser::Hermes)).unwrap_err();
        assert_eq!(param, "tools");
        assert!(msg.contains("`tools[0].function.parameters` is not a valid JSON Schema"), "{msg}");
        let bad = json!({"type": "function", "function": {"name": "f", "parameters": "object"}});
        assert!(tool_use(Some(vec![bad]), None, None).unwrap_err().1.contains("must be a JSON Schema object"));
    }

    #[test]
    fn forced_calls_are_read_from_the_constrained_answer() {
        let named = ToolUse::Named { name: "f".into(), schema: json!({}) };
        let p = named.read(r#"{"x": 1}"#.into());
        assert_eq!((p.content, p.calls[0].function.arguments.as_str()), (None, r#"{"x": 1}"#));
        let required = ToolUse::Required { schema: json!({}) };
        let p = required.read(r#"[{"name": "f", "parameters": {"x": 1}}, {"name": "g", "parameters": {}}]"#.into());
        assert_eq!(p.calls.iter().map(|c| (c.function.name.as_str(), c.function.arguments.as_str())).collect::<Vec<_>>(), [("f", r#"{"x": 1}"#), ("g", "{}")]);
        assert_eq!(required.read("[{\"name\": \"f\"".into()).content.as_deref(), Some("[{\"name\": \"f\""));
    }
}
