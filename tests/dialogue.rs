//! Tool calling, reasoning outputs, the Responses API and vLLM's page examples, over HTTP
//! against the real default model. A 135M model writes neither tool calls nor think
//! blocks by itself, so the tests force its output with a structured-output regex (the
//! text is then generated token by token, and streamed as it is written), or open the
//! reasoning in the prompt with a Qwen3-style template.

mod common;

use common::{MODEL, Server, fixture, start_fails, venv_python};
use serde_json::{Value, json};

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

/// A regex that matches exactly `text`.
fn literal(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if "\\.^$|?*+()[]{}/".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn chunks(s: &Server, body: &Value) -> Vec<Value> {
    s.post_sse("/v1/chat/completions", body).iter().filter(|d| *d != "[DONE]").map(|d| serde_json::from_str(d).unwrap()).collect()
}

/// Each parser reads a call the model writes in its format, whole and streamed: the
/// stream names the call first (with its id), then sends the arguments in pieces that
/// add up to the whole, and nothing of the call leaks into the content.
#[test]
fn tool_call_parsers_read_calls_whole_and_streamed() {
    let cases = [
        ("hermes", "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"),
        ("llama3_json", "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}"),
        ("mistral", "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}]"),
        ("pythonic", "[get_weather(city=\"Paris\")]"),
        ("qwen3_coder", "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>"),
    ];
    for (parser, text) in cases {
        let s = Server::start(&["--dtype", "float32", "--enable-auto-tool-choice", "--tool-call-parser", parser]);
        let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": weather_tools(),
            "temperature": 0, "max_tokens": 80, "structured_outputs": {"regex": literal(text)}});
        let (status, r) = s.post("/v1/chat/completions", &body);
        assert_eq!(status, 200, "{parser}: {r}");
        let choice = &r["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{parser}: {r}");
        let calls = choice["message"]["tool_calls"].as_array().unwrap_or_else(|| panic!("{parser}: {r}"));
        assert_eq!(calls.len(), 1, "{parser}: {r}");
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        let args: Value = serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "Paris"}), "{parser}");
        assert!(choice["message"]["content"].is_null(), "{parser}: {r}");

        let mut streaming = body.clone();
        streaming["stream"] = json!(true);
        let chunks = chunks(&s, &streaming);
        let deltas: Vec<&Value> = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array()).flatten().collect();
        assert!(!deltas.is_empty(), "{parser}: {chunks:?}");
        assert_eq!(deltas[0]["function"]["name"], "get_weather", "{parser}: the name comes first: {deltas:?}");
        assert!(deltas[0]["id"].is_string(), "{parser}: {deltas:?}");
        assert!(deltas[1..].iter().all(|d| d["function"]["name"].is_null() && d["index"] == 0), "{parser}: {deltas:?}");
        let streamed_args: String = deltas.iter().filter_map(|d| d["function"]["arguments"].as_str()).collect();
        assert_eq!(serde_json::from_str::<Value>(&streamed_args).unwrap(), json!({"city": "Paris"}), "{parser}: {deltas:?}");
        if ["hermes", "llama3_json", "mistral"].contains(&parser) {
            // JSON arguments are sent as the model writes them, not once at the end.
            let pieces = deltas.iter().filter(|d| d["function"]["arguments"].as_str().is_some_and(|a| !a.is_empty())).count();
            assert!(pieces >= 2, "{parser}: arguments in {pieces} piece(s): {deltas:?}");
        }
        let content: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
        assert!(content.trim().is_empty(), "{parser}: the call leaked into the content: {content:?}");
        let last = chunks.iter().rev().find(|c| c["choices"][0]["finish_reason"].is_string()).unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "tool_calls", "{parser}");

        // Text that is not a call stays content.
        let (status, r) = s.post("/v1/chat/completions", &json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
            "tools": weather_tools(), "temperature": 0, "max_tokens": 20, "structured_outputs": {"regex": "Hello there\\."}}));
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["choices"][0]["message"]["content"], "Hello there.", "{parser}: {r}");
        assert_eq!(r["choices"][0]["finish_reason"], "stop", "{parser}: {r}");
    }
}

/// Bad tool input is a 400 naming the field; an unknown parser stops start-up with the
/// list of names.
#[test]
fn bad_tools_and_unknown_parsers() {
    let s = Server::shared(&["--dtype", "float32", "--enable-auto-tool-choice", "--tool-call-parser", "hermes"]);
    let not_schema = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "no-such-type"}}}]);
    let (status, e) = s.post("/v1/chat/completions", &json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "tools": not_schema}));
    assert_eq!((status, e["error"]["param"].as_str()), (400, Some("tools")), "{e}");
    let (status, e) = s.post("/v1/chat/completions", &json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
        "tools": weather_tools(), "tool_choice": {"type": "function", "function": {"name": "nope"}}}));
    assert_eq!((status, e["error"]["param"].as_str()), (400, Some("tool_choice")), "{e}");
    let log = start_fails(&["--reasoning-parser", "no_such_parser"]);
    for name in ["deepseek_r1", "qwen3", "granite"] {
        assert!(log.contains(name), "the start-up error lists {name}: {log}");
    }
    let log = start_fails(&["--enable-auto-tool-choice", "--tool-call-parser", "no_such_parser"]);
    for name in ["hermes", "llama3_json", "mistral", "pythonic", "qwen3_coder"] {
        assert!(log.contains(name), "the start-up error lists {name}: {log}");
    }
}

fn qwen3_template() -> String {
    fixture("chat_templates/qwen3.jinja")
}

fn reasoning_server() -> &'static Server {
    let template: &'static str = Box::leak(qwen3_template().into_boxed_str());
    Server::shared(Box::leak(vec!["--dtype", "float32", "--reasoning-parser", "qwen3", "--chat-template", template].into_boxed_slice()))
}

/// With the reasoning parser and a template that opens the think block, what the model
/// writes before `</think>` is reasoning (whole and streamed as `reasoning_content`);
/// `enable_thinking: false` reaches the template, closes the block in the prompt and
/// leaves all of the answer content, which a structured output then constrains.
#[test]
fn reasoning_is_split_off_and_thinking_can_be_turned_off() {
    let s = reasoning_server();
    let base = json!({"model": MODEL, "messages": [{"role": "user", "content": "What is 2+2?"}], "temperature": 0, "max_tokens": 12});
    let (status, r) = s.post("/v1/chat/completions", &base);
    assert_eq!(status, 200, "{r}");
    let msg = &r["choices"][0]["message"];
    // The model never closes the block (it stops or is cut short first): all of it is reasoning.
    let reasoning = msg["reasoning_content"].as_str().unwrap_or_else(|| panic!("{r}"));
    assert!(!reasoning.is_empty());
    assert_eq!(msg["reasoning"], msg["reasoning_content"], "{r}");
    assert!(msg["content"].is_null(), "{r}");
    let finish = r["choices"][0]["finish_reason"].as_str();
    assert!(matches!(finish, Some("length" | "stop")), "{r}");

    let mut streaming = base.clone();
    streaming["stream"] = json!(true);
    let chunks = chunks(s, &streaming);
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["reasoning_content"].as_str()).collect();
    assert_eq!(streamed, reasoning, "{chunks:?}");
    assert!(chunks.iter().filter(|c| c["choices"][0]["delta"]["reasoning_content"].is_string()).count() >= 2);
    assert!(chunks.iter().all(|c| c["choices"][0]["delta"]["content"].as_str().is_none_or(str::is_empty)), "{chunks:?}");

    let mut off = base.clone();
    off["chat_template_kwargs"] = json!({"enable_thinking": false});
    off["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "a", "schema":
        {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"], "additionalProperties": false}}});
    off["max_tokens"] = json!(30);
    let (status, r) = s.post("/v1/chat/completions", &off);
    assert_eq!(status, 200, "{r}");
    let msg = &r["choices"][0]["message"];
    assert!(msg["reasoning_content"].is_null(), "{r}");
    let answer: Value = serde_json::from_str(msg["content"].as_str().unwrap()).unwrap_or_else(|e| panic!("{e}: {r}"));
    assert!(answer["answer"].is_i64(), "{r}");
}

/// vLLM's page examples that used to be refused.
#[test]
fn vllm_page_requests_are_accepted() {
    // stream_options.continuous_usage_stats: usage on every chunk, growing.
    let s = Server::shared(&["--dtype", "float32"]);
    for (path, body) in [
        ("/v1/chat/completions", json!({"messages": [{"role": "user", "content": "Hi"}]})),
        ("/v1/completions", json!({"prompt": "Once upon a time"})),
    ] {
        let mut body = body;
        body["model"] = json!(MODEL);
        body["max_tokens"] = json!(5);
        body["temperature"] = json!(0);
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true, "continuous_usage_stats": true});
        let chunks: Vec<Value> = s.post_sse(path, &body).iter().filter(|d| *d != "[DONE]").map(|d| serde_json::from_str(d).unwrap()).collect();
        let with_choices: Vec<&Value> = chunks.iter().filter(|c| !c["choices"].as_array().unwrap().is_empty()).collect();
        assert!(with_choices.len() >= 2, "{chunks:?}");
        let mut last = 0;
        for c in &with_choices {
            let done = c["usage"]["completion_tokens"].as_u64().unwrap_or_else(|| panic!("{path}: a chunk without usage: {c}"));
            assert!(done >= last, "{path}: {chunks:?}");
            assert_eq!(c["usage"]["total_tokens"].as_u64().unwrap(), c["usage"]["prompt_tokens"].as_u64().unwrap() + done);
            last = done;
        }
        assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 5, "{path}: {chunks:?}");
        // Without continuous_usage_stats only the last chunk has usage.
        body["stream_options"] = json!({"include_usage": true});
        let chunks: Vec<Value> = s.post_sse(path, &body).iter().filter(|d| *d != "[DONE]").map(|d| serde_json::from_str(d).unwrap()).collect();
        assert_eq!(chunks.iter().filter(|c| !c["usage"].is_null()).count(), 1, "{path}: {chunks:?}");
    }

    // /score with encoding_format, as the page's score examples send it.
    let mut args: Vec<&'static str> = vec![Box::leak(fixture("tiny-bert-rerank").into_boxed_str())];
    args.extend(["--dtype", "float32", "--served-model-name", "tiny-rerank", "--task", "score"]);
    let reranker = Server::shared(Box::leak(args.into_boxed_slice()));
    let plain = json!({"model": "tiny-rerank", "text_1": "What is the capital of France?", "text_2": ["The capital of France is Paris.", "The capital of Brazil is Brasilia."]});
    let (status, want) = reranker.post("/score", &plain);
    assert_eq!(status, 200, "{want}");
    let mut with = plain.clone();
    with["encoding_format"] = json!("float");
    let (status, got) = reranker.post("/score", &with);
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["data"], want["data"]);
    with["encoding_format"] = json!("text");
    let (status, e) = reranker.post("/score", &with);
    assert_eq!((status, e["error"]["param"].as_str()), (400, Some("encoding_format")), "{e}");
}

/// The official openai client drives /v1/responses (tests/responses_client.py): plain
/// and streamed answers with OpenAI's event order, instructions, json_schema text
/// format, function tools, stored responses with previous_response_id, GET, DELETE,
/// and 404s and 400s in OpenAI's shape.
#[test]
fn responses_api_with_the_openai_client() {
    let s = Server::shared(&["--dtype", "float32", "--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--responses-store-size", "2"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/responses_client.py");
    let out = std::process::Command::new(venv_python()).args([script, &s.base, MODEL]).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim().lines().last(), Some("ok"));
}
