//! Chat-template controls of a chat request, over HTTP against the real model:
//! continue_final_message, a request's own chat_template (only when trusted),
//! chat_template_kwargs and documents. Each is checked by sending the prompt it should
//! render to /v1/completions and comparing the greedy outputs.

mod common;

use common::{MODEL, Server};
use serde_json::{Value, json};

const ARGS: &[&str] = &["--dtype", "float32"];
const TRUSTING: &[&str] = &["--dtype", "float32", "--trust-request-chat-template"];

fn chat(s: &Server, extra: Value) -> (u16, Value) {
    let mut body = json!({"model": MODEL, "temperature": 0, "max_tokens": 8});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    s.post("/v1/chat/completions", &body)
}

/// The greedy text of a chat request, and of a completion of `prompt`, which must agree.
fn same_as_completion(s: &Server, extra: Value, prompt: &str) {
    let (status, r) = chat(s, extra);
    assert_eq!(status, 200, "{r}");
    let (status, c) = s.post("/v1/completions", &json!({"model": MODEL, "prompt": prompt, "temperature": 0, "max_tokens": 8}));
    assert_eq!(status, 200, "{c}");
    assert_eq!(r["usage"]["prompt_tokens"], c["usage"]["prompt_tokens"], "the rendered prompt differs: {r} vs {c}");
    assert_eq!(r["choices"][0]["message"]["content"], c["choices"][0]["text"]);
}

const SYSTEM: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";

#[test]
fn continue_final_message_continues_the_assistant_turn() {
    let s = Server::shared(ARGS);
    let messages = json!([{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "My favorite color is"}]);
    same_as_completion(
        s,
        json!({"messages": messages, "continue_final_message": true, "add_generation_prompt": false}),
        &format!("{SYSTEM}<|im_start|>user\nName a color.<|im_end|>\n<|im_start|>assistant\nMy favorite color is"),
    );
    let (status, r) = chat(s, json!({"messages": messages, "continue_final_message": true}));
    assert_eq!(status, 400, "{r}");
    assert_eq!(r["error"]["param"], "continue_final_message");
}

#[test]
fn a_request_template_needs_trust() {
    let s = Server::shared(ARGS);
    let (status, r) = chat(s, json!({"messages": [{"role": "user", "content": "hi"}], "chat_template": "{{ messages[0].content }}"}));
    assert_eq!(status, 400, "{r}");
    assert_eq!(r["error"]["param"], "chat_template");
}

#[test]
fn a_trusted_request_template_with_kwargs_and_documents() {
    let s = Server::shared(TRUSTING);
    let template = "{% for d in documents %}[{{ d.title }}: {{ d.text }}] {% endfor %}{{ greeting }}, {{ messages[0]['content'] }} =";
    same_as_completion(
        s,
        json!({
            "messages": [{"role": "user", "content": "two plus two"}],
            "chat_template": template,
            "chat_template_kwargs": {"greeting": "Quick question"},
            "documents": [{"title": "maths", "text": "Two plus two is four."}],
        }),
        "[maths: Two plus two is four.] Quick question, two plus two =",
    );
    let (status, r) = chat(s, json!({"messages": [{"role": "user", "content": "hi"}], "chat_template": "{% if %}"}));
    assert_eq!(status, 400, "{r}");
    assert_eq!(r["error"]["param"], "chat_template");
    assert!(r["error"]["message"].as_str().unwrap().contains("does not compile"), "{r}");
}

#[test]
fn server_defaults_for_the_response_role_and_token_ids() {
    let s = Server::shared(&["--dtype", "float32", "--response-role", "bot", "--return-tokens-as-token-ids"]);
    let (status, r) = chat(s, json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "logprobs": true}));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["choices"][0]["message"]["role"], "bot");
    assert!(r["choices"][0]["logprobs"]["content"][0]["token"].as_str().unwrap().starts_with("token_id:"), "{r}");
    let (_, r) = chat(s, json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "logprobs": true,
                               "return_tokens_as_token_ids": false}));
    assert!(!r["choices"][0]["logprobs"]["content"][0]["token"].as_str().unwrap().starts_with("token_id:"), "{r}");
}

#[test]
fn echo_repeats_an_assistant_message_being_continued() {
    let s = Server::shared(ARGS);
    let messages = json!([{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "My favorite color is"}]);
    let ask = |echo: bool, stream: bool| {
        let body = json!({"messages": messages, "continue_final_message": true, "add_generation_prompt": false,
                          "echo": echo, "stream": stream});
        if stream {
            let mut full = json!({"model": MODEL, "temperature": 0, "max_tokens": 8});
            full.as_object_mut().unwrap().extend(body.as_object().unwrap().clone());
            s.post_sse("/v1/chat/completions", &full)
                .iter()
                .filter(|e| *e != "[DONE]")
                .map(|e| serde_json::from_str::<Value>(e).unwrap()["choices"][0]["delta"]["content"].as_str().unwrap_or("").to_string())
                .collect::<String>()
        } else {
            let (status, r) = chat(s, body);
            assert_eq!(status, 200, "{r}");
            r["choices"][0]["message"]["content"].as_str().unwrap().to_string()
        }
    };
    let plain = ask(false, false);
    assert_eq!(ask(true, false), format!("My favorite color is{plain}"));
    assert_eq!(ask(true, true), format!("My favorite color is{plain}"));
    // A last message from the user is not echoed.
    let (_, r) = chat(s, json!({"messages": [{"role": "user", "content": "Say hi."}], "echo": true, "max_tokens": 3}));
    assert!(!r["choices"][0]["message"]["content"].as_str().unwrap().starts_with("Say hi."), "{r}");
}

/// A template that shows the request's tools before the conversation.
const TOOL_TEMPLATE: &str = "{% for t in tools %}[{{ t.function.name }}]{% endfor %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
const TOOLS: &[&str] = &[
    "--dtype", "float32", "--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--chat-template", TOOL_TEMPLATE,
    "--kv-cache-memory", "64MiB", "--max-model-len", "1024",
];

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
}

/// `tools` reach the chat template; with `tool_choice: "auto"` and the hermes parser, a
/// `<tool_call>` in the answer comes back as `tool_calls` (whole, and streamed), with
/// finish_reason "tool_calls". The call is put in the answer through `echo` of a final
/// assistant message, since the default model does not call tools by itself.
#[test]
fn tool_calls_are_read_from_the_answer() {
    let s = Server::shared(TOOLS);
    let (status, t) = s.post(
        "/tokenize",
        &json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "tools": weather_tools(), "return_token_strs": true}),
    );
    assert_eq!(status, 200, "{t}");
    let (_, d) = s.post("/detokenize", &json!({"model": MODEL, "tokens": t["tokens"]}));
    assert!(d["prompt"].as_str().unwrap().starts_with("[get_weather]<|im_start|>user"), "{d}");

    let call = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    let body = json!({"model": MODEL, "temperature": 0, "max_tokens": 1, "tools": weather_tools(), "echo": true,
                      "add_generation_prompt": false, "continue_final_message": true,
                      "messages": [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": call}]});
    let (status, r) = s.post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{r}");
    let choice = &r["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{r}");
    assert!(choice["message"]["content"].is_null(), "{r}");
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["type"], "function");
    assert!(calls[0]["id"].as_str().unwrap().starts_with("chatcmpl-tool-"));
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let args: Value = serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));

    let mut streaming = body.clone();
    streaming["stream"] = json!(true);
    let chunks: Vec<Value> = s.post_sse("/v1/chat/completions", &streaming)
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    // As vLLM streams a call: its name (with the id) first, then the arguments.
    let with_calls: Vec<&Value> = chunks.iter().filter(|c| c["choices"][0]["delta"]["tool_calls"].is_array()).collect();
    assert!(!with_calls.is_empty(), "{chunks:?}");
    let first = &with_calls[0]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(first["index"], 0);
    assert_eq!(first["function"]["name"], "get_weather");
    assert!(first["id"].as_str().unwrap().starts_with("chatcmpl-tool-"), "{first}");
    let args: String =
        with_calls.iter().filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()).collect();
    assert_eq!(serde_json::from_str::<Value>(&args).unwrap(), json!({"city": "Paris"}));
    assert_eq!(with_calls.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert!(!streamed.contains("<tool_call>"), "the call is not streamed as content: {streamed:?}");

    let (status, e) = chat(s, json!({"messages": [{"role": "user", "content": "Hi"}], "tools": weather_tools(),
                                     "tool_choice": {"type": "function", "function": {"name": "nope"}}}));
    assert_eq!((status, e["error"]["param"].as_str()), (400, Some("tool_choice")));
    // Without the parser flags, "auto" (the default with tools) is refused, as vLLM does.
    let (status, e) = chat(Server::shared(ARGS), json!({"messages": [{"role": "user", "content": "Hi"}], "tools": weather_tools()}));
    assert_eq!((status, e["error"]["param"].as_str()), (400, Some("tool_choice")), "{e}");
    let (status, _) = chat(Server::shared(ARGS), json!({"messages": [{"role": "user", "content": "Hi"}], "tools": weather_tools(), "tool_choice": "none"}));
    assert_eq!(status, 200);
}

/// A forced call (`required`, or a named function) constrains the answer to the tool's
/// parameters, as vLLM does, so even a model that never calls tools answers with a call
/// whose arguments fit the schema; no parser flags are needed.
#[test]
fn forced_tool_calls_fit_the_parameters() {
    let s = Server::shared(ARGS);
    let messages = json!([{"role": "user", "content": "What is the weather in Paris?"}]);
    let named = json!({"type": "function", "function": {"name": "get_weather"}});
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"], "additionalProperties": false}}}]);
    for stream in [false, true] {
        let body = json!({"messages": messages, "tools": tools, "tool_choice": named, "max_tokens": 60,
                          "temperature": 0, "stream": stream});
        let call = if stream {
            let mut b = body.clone();
            b["model"] = json!(MODEL);
            let chunks: Vec<Value> =
                s.post_sse("/v1/chat/completions", &b).iter().filter(|d| *d != "[DONE]").map(|d| serde_json::from_str(d).unwrap()).collect();
            let with: Vec<&Value> = chunks.iter().filter(|c| c["choices"][0]["delta"]["tool_calls"].is_array()).collect();
            assert_eq!(with.len(), 1, "{chunks:?}");
            assert_eq!(with[0]["choices"][0]["finish_reason"], "stop", "{chunks:?}");
            with[0]["choices"][0]["delta"]["tool_calls"][0].clone()
        } else {
            let (status, r) = chat(s, body);
            assert_eq!(status, 200, "{r}");
            assert!(r["choices"][0]["message"]["content"].is_null(), "{r}");
            assert_eq!(r["choices"][0]["finish_reason"], "stop", "{r}");
            r["choices"][0]["message"]["tool_calls"][0].clone()
        };
        assert_eq!(call["function"]["name"], "get_weather", "{call}");
        let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap_or_else(|e| panic!("{e}: {call}"));
        let keys: Vec<&String> = args.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["city"], "{args}");
        assert!(args["city"].as_str().unwrap().chars().count() <= 20, "{args}");
    }
    let (status, r) = chat(s, json!({"messages": messages, "tools": tools, "tool_choice": "required", "max_tokens": 80, "temperature": 0}));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["choices"][0]["finish_reason"], "stop", "{r}");
    let calls = r["choices"][0]["message"]["tool_calls"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert!(!calls.is_empty());
    for c in calls {
        assert_eq!(c["function"]["name"], "get_weather", "{r}");
        let args: Value = serde_json::from_str(c["function"]["arguments"].as_str().unwrap()).unwrap();
        assert!(args["city"].is_string(), "{r}");
    }
    let (status, e) = chat(s, json!({"messages": messages, "tools": weather_tools(), "tool_choice": named,
                                     "response_format": {"type": "json_object"}}));
    assert_eq!((status, e["error"]["param"].as_str()), (400, Some("tool_choice")));
}
