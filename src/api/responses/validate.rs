//! A Responses API request → a chat job. The Responses fields are checked here, each
//! error naming its Responses field; then the request is restated as a chat completion
//! (instructions and input items as messages, after a previous response's conversation;
//! function tools, `tool_choice`, `text.format`, `max_output_tokens`) and validated by
//! the chat validator, so the two APIs accept the same sampling fields and run the same
//! stages. vLLM's extra sampling fields (`top_k`, `seed`, …) pass through to it.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::api::context::ServingContext;
use crate::api::error::ApiError;
use crate::api::request::{Job, RequestMeta};
use crate::api::validate::generation::chat_request;
use crate::api::validate::Fields;

/// What the response object repeats of the request, and what storing it needs.
#[derive(Debug, Clone)]
pub struct ResponsesMeta {
    pub instructions: Value,
    pub max_output_tokens: Value,
    pub temperature: f64,
    pub top_p: f64,
    /// As sent (Responses' shape).
    pub tools: Value,
    pub tool_choice: Value,
    pub text: Value,
    pub reasoning: Value,
    pub store: bool,
    pub background: bool,
    pub previous_response_id: Value,
    pub metadata: Value,
    pub parallel_tool_calls: bool,
    pub user: Value,
    pub truncation: Value,
    /// The conversation as chat messages, without the instructions (OpenAI does not
    /// carry instructions over to a continuation).
    pub history: Vec<Value>,
}

/// Fields of OpenAI's request that name features this server does not have.
const UNSUPPORTED: &[&str] = &["prompt", "conversation", "top_logprobs"];

/// Fields of OpenAI's request that do not change the answer here.
const IGNORED: &[&str] = &["include", "service_tier", "max_tool_calls", "prompt_cache_key", "safety_identifier", "stream_options"];

pub fn responses_request(body: &[u8], serving: &ServingContext) -> Result<(Job, RequestMeta), ApiError> {
    let mut f = Fields::parse(body)?;
    for name in UNSUPPORTED {
        if f.has(name) {
            return Err(ApiError::invalid(*name, format!("`{name}` is not supported by this server's Responses API; leave it out.")));
        }
    }
    for name in IGNORED {
        f.ignore(name);
    }
    // As vLLM: left out, the served model answers.
    let model: Option<Value> = f.take("model")?;
    let input: Value = f.take("input")?.ok_or_else(|| ApiError::invalid("input", "`input` is required."))?;
    let instructions = f.take::<String>("instructions")?;
    let previous = f.take::<String>("previous_response_id")?;
    let store = f.take::<bool>("store")?.unwrap_or(true);
    let background = f.take::<bool>("background")?.unwrap_or(false);
    let stream = f.take::<bool>("stream")?.unwrap_or(false);
    if background && !store {
        return Err(ApiError::invalid("background", "A background response must be stored; leave `store` out or true."));
    }
    if background && stream {
        return Err(ApiError::invalid("background", "Streaming a background response is not supported by this server; poll GET /v1/responses/{id} instead."));
    }
    let metadata = f.take::<Map<String, Value>>("metadata")?;
    let parallel_tool_calls = f.take::<bool>("parallel_tool_calls")?.unwrap_or(true);
    let user = f.take::<String>("user")?;
    let truncation = match f.take::<String>("truncation")?.as_deref() {
        None | Some("disabled") => "disabled",
        Some("auto") => "auto",
        Some(other) => return Err(ApiError::invalid("truncation", format!("`truncation` must be \"auto\" or \"disabled\", got {other:?}."))),
    };
    let max_output_tokens = f.take::<i64>("max_output_tokens")?;
    let tools_given: Option<Vec<Value>> = f.take("tools")?;
    let tool_choice_given: Option<Value> = f.take("tool_choice")?;
    let text: Option<Value> = f.take("text")?;
    let reasoning: Option<Value> = f.take("reasoning")?;

    // The conversation: a previous response's, then this input.
    let mut history = match &previous {
        None => Vec::new(),
        Some(id) => serving.responses.history(id).ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                format!("Previous response with id '{id}' not found (it was never stored, or has expired or been deleted)."),
            )
            .with_param("previous_response_id")
        })?,
    };
    history.extend(input_messages(input)?);
    let mut messages = Vec::with_capacity(history.len() + 1);
    if let Some(i) = &instructions {
        messages.push(json!({"role": "system", "content": i}));
    }
    messages.extend(history.iter().cloned());

    let mut chat = Map::new();
    if let Some(model) = model {
        chat.insert("model".into(), model);
    }
    chat.insert("messages".into(), Value::Array(messages));
    chat.insert("stream".into(), Value::Bool(stream));
    if let Some(m) = max_output_tokens {
        chat.insert("max_completion_tokens".into(), Value::from(m));
    }
    if let Some(tools) = &tools_given {
        chat.insert("tools".into(), Value::Array(chat_tools(tools)?));
    }
    if let Some(choice) = &tool_choice_given {
        chat.insert("tool_choice".into(), chat_tool_choice(choice)?);
    }
    if let Some(format) = text.as_ref().and_then(|t| t.get("format")) {
        if let Some(rf) = response_format(format)? {
            chat.insert("response_format".into(), rf);
        }
    }
    if let Some(effort) = reasoning.as_ref().and_then(|r| r.get("effort")).filter(|e| !e.is_null()) {
        // As vLLM: the effort reaches templates that read it.
        let mut kwargs: Map<String, Value> = f.take("chat_template_kwargs")?.unwrap_or_default();
        kwargs.entry("reasoning_effort").or_insert(effort.clone());
        chat.insert("chat_template_kwargs".into(), Value::Object(kwargs));
    }
    for name in ["n", "best_of", "use_beam_search", "logprobs", "echo", "stream_options"] {
        if f.has(name) {
            return Err(ApiError::invalid(name, format!("`{name}` is not a field of the Responses API.")));
        }
    }
    // Whatever else is left (vLLM's sampling extras) is the chat validator's to read.
    let rest: Vec<String> = f.remaining().map(str::to_string).collect();
    for name in rest {
        if let Some(v) = f.take::<Value>(&name)? {
            chat.entry(name).or_insert(v);
        }
    }
    let (job, mut meta) = chat_request(Fields::from_map(chat), serving).map_err(to_responses_param)?;
    meta.responses = Some(Arc::new(ResponsesMeta {
        instructions: instructions.map_or(Value::Null, Value::from),
        max_output_tokens: max_output_tokens.map_or(Value::Null, Value::from),
        temperature: job.sampling.temperature as f64,
        top_p: job.sampling.top_p as f64,
        tools: Value::Array(tools_given.unwrap_or_default()),
        tool_choice: tool_choice_given.unwrap_or_else(|| Value::from("auto")),
        text: text.unwrap_or_else(|| json!({"format": {"type": "text"}})),
        reasoning: reasoning.unwrap_or_else(|| json!({"effort": null, "summary": null})),
        store,
        background,
        previous_response_id: previous.map_or(Value::Null, Value::from),
        metadata: Value::Object(metadata.unwrap_or_default()),
        parallel_tool_calls,
        user: user.map_or(Value::Null, Value::from),
        truncation: Value::from(truncation),
        history,
    }));
    Ok((job, meta))
}

/// The chat validator's field names, as the Responses request spells them.
fn to_responses_param(mut e: ApiError) -> ApiError {
    if let Some(p) = e.param.take() {
        let mapped = if p == "max_completion_tokens" {
            "max_output_tokens".to_string()
        } else if p == "response_format" || p.starts_with("response_format.") {
            "text.format".to_string()
        } else if let Some(rest) = p.strip_prefix("messages") {
            format!("input{rest}")
        } else {
            p
        };
        e.message = e.message.replace("`max_completion_tokens`", "`max_output_tokens`").replace("`response_format`", "`text.format`");
        e.param = Some(mapped);
    }
    e
}

/// `input`: a string (one user message) or a list of items, as chat messages.
fn input_messages(input: Value) -> Result<Vec<Value>, ApiError> {
    let items = match input {
        Value::String(s) => return Ok(vec![json!({"role": "user", "content": s})]),
        Value::Array(items) if !items.is_empty() => items,
        Value::Array(_) => return Err(ApiError::invalid("input", "`input` must not be an empty list.")),
        _ => return Err(ApiError::invalid("input", "`input` must be a string or a list of input items.")),
    };
    let mut out: Vec<Value> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let param = format!("input[{i}]");
        let Value::Object(item) = item else {
            return Err(ApiError::invalid(param, format!("`input[{i}]` must be an object.")));
        };
        let ty = item.get("type").and_then(Value::as_str).unwrap_or(if item.contains_key("role") { "message" } else { "" });
        let field = |name: &str| -> Result<&Value, ApiError> {
            item.get(name).ok_or_else(|| ApiError::invalid(format!("{param}.{name}"), format!("`input[{i}].{name}` is required for a {ty} item.")))
        };
        let string = |name: &str| -> Result<String, ApiError> {
            field(name)?.as_str().map(str::to_string).ok_or_else(|| ApiError::invalid(format!("{param}.{name}"), format!("`input[{i}].{name}` must be a string.")))
        };
        match ty {
            "message" => {
                let role = string("role")?;
                if !["user", "system", "developer", "assistant"].contains(&role.as_str()) {
                    return Err(ApiError::invalid(
                        format!("{param}.role"),
                        format!("Unknown role {role:?} in `input[{i}]`; allowed: user, system, developer, assistant."),
                    ));
                }
                let content = message_text(field("content")?, &param)?;
                out.push(json!({"role": role, "content": content}));
            }
            "function_call" => {
                let call = json!({"id": string("call_id")?, "type": "function",
                    "function": {"name": string("name")?, "arguments": string("arguments")?}});
                // Calls in a row (and a message just before them) are one assistant turn.
                match out.last_mut() {
                    Some(last) if last["role"] == "assistant" => {
                        let calls = last.as_object_mut().expect("an object").entry("tool_calls").or_insert_with(|| json!([]));
                        calls.as_array_mut().expect("a list").push(call);
                    }
                    _ => out.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            "function_call_output" => {
                let output = match field("output")? {
                    Value::String(s) => s.clone(),
                    other => message_text(other, &format!("{param}.output"))?,
                };
                out.push(json!({"role": "tool", "tool_call_id": string("call_id")?, "content": output}));
            }
            // Earlier reasoning is not sent back to the model (chat templates drop it).
            "reasoning" => {}
            other => {
                return Err(ApiError::invalid(
                    format!("{param}.type"),
                    format!(
                        "Input item type {:?} is not supported; allowed: message, function_call, function_call_output, reasoning.",
                        if other.is_empty() { "(missing)" } else { other }
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// A message's content (a string, or text parts) as one string.
fn message_text(content: &Value, param: &str) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let ty = part.get("type").and_then(Value::as_str).unwrap_or("(missing)");
                match (ty, part.get("text").and_then(Value::as_str)) {
                    ("input_text" | "output_text" | "text" | "summary_text", Some(t)) => text.push_str(t),
                    ("refusal", _) => text.push_str(part.get("refusal").and_then(Value::as_str).unwrap_or("")),
                    (_, _) => {
                        return Err(ApiError::invalid(
                            format!("{param}.content[{j}].type"),
                            format!("Content part type {ty:?} is not supported by this model; only input_text and output_text parts are."),
                        ));
                    }
                }
            }
            Ok(text)
        }
        _ => Err(ApiError::invalid(format!("{param}.content"), "Content must be a string or a list of content parts.")),
    }
}

/// Function tools in chat's shape (`{"type": "function", "function": {…}}`).
fn chat_tools(tools: &[Value]) -> Result<Vec<Value>, ApiError> {
    tools
        .iter()
        .enumerate()
        .map(|(i, t)| match t.get("type").and_then(Value::as_str) {
            Some("function") => {
                let mut function = t.as_object().cloned().unwrap_or_default();
                function.remove("type");
                Ok(json!({"type": "function", "function": function}))
            }
            other => Err(ApiError::invalid(
                format!("tools[{i}].type"),
                format!("Tool type {:?} is not supported by this server; only \"function\" tools are.", other.unwrap_or("(missing)")),
            )),
        })
        .collect()
}

fn chat_tool_choice(choice: &Value) -> Result<Value, ApiError> {
    match choice {
        Value::String(_) => Ok(choice.clone()),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o.get("name").and_then(Value::as_str).ok_or_else(|| {
                ApiError::invalid("tool_choice", "`tool_choice` of type function needs a `name`.")
            })?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(ApiError::invalid(
            "tool_choice",
            "`tool_choice` must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"name\": ...}.",
        )),
    }
}

/// `text.format` as chat's `response_format` (None for plain text).
fn response_format(format: &Value) -> Result<Option<Value>, ApiError> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let schema = format.get("schema").cloned().ok_or_else(|| {
                ApiError::invalid("text.format.schema", "`text.format` of type json_schema needs a `schema`.")
            })?;
            let mut js = json!({"name": format.get("name").cloned().unwrap_or_else(|| Value::from("response")), "schema": schema});
            if let Some(strict) = format.get("strict") {
                js["strict"] = strict.clone();
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": js})))
        }
        other => Err(ApiError::invalid(
            "text.format.type",
            format!("`text.format.type` must be text, json_object or json_schema, got {:?}.", other.unwrap_or("(missing)")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_become_chat_messages() {
        let input = json!([
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in "}, {"type": "input_text", "text": "Paris?"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"},
            {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        ]);
        let m = input_messages(input).unwrap();
        assert_eq!(m[0], json!({"role": "user", "content": "Weather in Paris?"}));
        assert_eq!(m[1]["tool_calls"].as_array().unwrap().len(), 2);
        assert_eq!(m[1]["tool_calls"][0]["function"]["name"], "get_weather");
        assert_eq!(m[2], json!({"role": "tool", "tool_call_id": "call_1", "content": "sunny"}));
    }

    #[test]
    fn unknown_items_name_their_field() {
        let e = input_messages(json!([{"type": "web_search_call", "id": "x"}])).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[0].type"));
        assert!(e.message.contains("web_search_call"), "{}", e.message);
        let e = input_messages(json!([{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}])).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[0].content[0].type"));
        let e = input_messages(json!([{"type": "function_call_output", "output": "x"}])).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[0].call_id"));
        let e = chat_tools(&[json!({"type": "web_search_preview"})]).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools[0].type"));
    }

    #[test]
    fn formats_and_tools_in_chat_shape() {
        let t = chat_tools(&[json!({"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": true})]).unwrap();
        assert_eq!(t[0], json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": true}}));
        assert_eq!(chat_tool_choice(&json!({"type": "function", "name": "f"})).unwrap(), json!({"type": "function", "function": {"name": "f"}}));
        let rf = response_format(&json!({"type": "json_schema", "name": "x", "schema": {"type": "object"}, "strict": true})).unwrap();
        assert_eq!(rf, Some(json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": true}})));
        assert_eq!(response_format(&json!({"type": "yaml"})).unwrap_err().param.as_deref(), Some("text.format.type"));
    }
}
