//! The HTTP API against the real server and model: response and SSE shapes (insta
//! snapshots in snapshots/), errors, API keys, and the official openai Python client.

#[macro_use]
mod common;

use common::{MODEL, Server, venv_python};
use serde_json::{Value, json};

/// Shared by most tests here: float32 so that greedy output is stable, an API key, and a
/// small body limit to reach 413 cheaply.
const ARGS: &[&str] = &["--dtype", "float32", "--api-key", "token-abc123", "--max-request-body", "64KiB"];
const KEY: &str = "token-abc123";

fn server() -> &'static Server {
    Server::shared(ARGS)
}

fn post(path: &str, body: &Value) -> (u16, Value) {
    let r = Server::client().post(server().url(path)).bearer_auth(KEY).json(body).send().unwrap();
    let status = r.status().as_u16();
    (status, serde_json::from_str(&r.text().unwrap()).unwrap())
}

/// POSTs with the key and returns the body of a 200 (any other status fails the test).
fn ok(path: &str, body: &Value) -> Value {
    let (status, v) = post(path, body);
    assert_eq!(status, 200, "{path} {body}: {v}");
    v
}

fn post_raw(path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let r = Server::client()
        .post(server().url(path))
        .bearer_auth(KEY)
        .header("content-type", content_type)
        .body(body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, serde_json::from_str(&r.text().unwrap()).unwrap())
}

fn sse(path: &str, body: &Value) -> Vec<Value> {
    let r = Server::client().post(server().url(path)).bearer_auth(KEY).json(body).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.last(), Some(&"data: [DONE]"), "{text}");
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect()
}


#[test]
fn completion_shape() {
    let (status, body) = post("/v1/completions", &json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}));
    assert_eq!(status, 200);
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
    snap!("completion", body);
}

#[test]
fn completion_stream_shape() {
    let events = sse(
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0,
                "stream": true, "stream_options": {"include_usage": true}}),
    );
    let ids: std::collections::HashSet<_> = events.iter().map(|e| e["id"].clone()).collect();
    assert_eq!(ids.len(), 1, "one id for the whole stream");
    snap!("completion_stream", events);
}

#[test]
fn chat_shape() {
    let (status, body) = post("/v1/chat/completions", &json!({"model": MODEL, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8, "temperature": 0}));
    assert_eq!(status, 200);
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    snap!("chat", body);
}

#[test]
fn chat_stream_shape() {
    let events = sse(
        "/v1/chat/completions",
        &json!({"model": MODEL, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8, "temperature": 0,
                "stream": true, "stream_options": {"include_usage": true}}),
    );
    snap!("chat_stream", events);
}

#[test]
fn chat_content_parts_are_joined_for_a_string_template() {
    let parts = json!([{"type": "text", "text": "Hello!"}]);
    let a = ok("/v1/chat/completions", &json!({"model": MODEL, "messages": [{"role": "user", "content": parts}], "max_tokens": 8, "temperature": 0}));
    let b = ok("/v1/chat/completions", &json!({"model": MODEL, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8, "temperature": 0}));
    assert_eq!(a["choices"][0]["message"], b["choices"][0]["message"]);
    assert_eq!(a["usage"], b["usage"]);
}

#[test]
fn stop_strings_end_the_choice_before_the_stop() {
    // Greedy continuation is " Paris.\n\nThe answer is: 2018-01-22 12:12:53."
    let body = ok("/v1/completions", &json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 30, "temperature": 0, "stop": ["answer"]}));
    let c = &body["choices"][0];
    assert_eq!(c["text"], " Paris.\n\nThe ");
    assert_eq!(c["finish_reason"], "stop");
    assert_eq!(c["stop_reason"], "answer");
    // " Paris", ".", "\n", "\n", "The", " answer": counted up to the token that completed the stop.
    assert_eq!(body["usage"]["completion_tokens"], 6);

    let body = ok("/v1/completions", &json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 30, "temperature": 0, "stop": ["answer"], "include_stop_str_in_output": true}));
    assert_eq!(body["choices"][0]["text"], " Paris.\n\nThe answer");

    // Streamed: the same text, in pieces.
    let events = sse("/v1/completions", &json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 30, "temperature": 0, "stop": ["answer"], "stream": true}));
    let text: String = events.iter().map(|e| e["choices"][0]["text"].as_str().unwrap()).collect();
    assert_eq!(text, " Paris.\n\nThe ");
    assert_eq!(events.last().unwrap()["choices"][0]["finish_reason"], "stop");
}

#[test]
fn seeded_sampling_repeats_and_n_gives_choices() {
    let req = json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 12, "temperature": 1.0, "seed": 1234, "n": 3, "ignore_eos": true});
    let a = ok("/v1/completions", &req);
    let b = ok("/v1/completions", &req);
    assert_eq!(a["choices"], b["choices"]);
    let texts: Vec<&str> = a["choices"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap()).collect();
    assert_eq!(texts.len(), 3);
    assert!(texts[0] != texts[1] || texts[1] != texts[2], "choices of one request differ: {texts:?}");
    assert_eq!(a["usage"]["prompt_tokens"], 4);
    assert_eq!(a["usage"]["completion_tokens"], 36);
}

#[test]
fn list_prompts_give_one_choice_each() {
    let texts = json!(["The capital of France is", "Once upon a time"]);
    // The first prompt's token ids, and the second's.
    let ids = json!([[504, 3575, 282, 4649, 314], [6403, 1980, 253, 655]]);
    let a = ok("/v1/completions", &json!({"model": MODEL, "prompt": texts, "max_tokens": 3, "temperature": 0}));
    let b = ok("/v1/completions", &json!({"model": MODEL, "prompt": ids, "max_tokens": 3, "temperature": 0}));
    assert_eq!(a["choices"].as_array().unwrap().len(), 2);
    assert_eq!(a["choices"], b["choices"]);
    assert_eq!(a["choices"][0]["text"], " Paris.\n");
    assert_eq!(a["usage"]["prompt_tokens"], 9);
}

#[test]
fn echo_prepends_the_prompt() {
    let body = ok("/v1/completions", &json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 2, "temperature": 0, "echo": true}));
    assert_eq!(body["choices"][0]["text"], "The capital of France is Paris.");
}

#[test]
fn errors_are_openai_shaped_and_name_the_field() {
    let cases: Vec<(&str, &str, Value)> = vec![
        ("error_prompt_embeds", "/v1/completions", json!({"model": MODEL, "prompt_embeds": "AAAA"})),
        ("error_unknown_model", "/v1/completions", json!({"model": "gpt-5", "prompt": "hi"})),
        ("error_temperature", "/v1/completions", json!({"model": MODEL, "prompt": "hi", "temperature": -1})),
        ("error_top_p", "/v1/chat/completions", json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "top_p": 1.5})),
        ("error_max_tokens_type", "/v1/completions", json!({"model": MODEL, "prompt": "hi", "max_tokens": "many"})),
        ("error_role", "/v1/chat/completions", json!({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]})),
        ("error_not_supported_yet", "/v1/completions", json!({"model": MODEL, "prompt": "hi", "suffix": "!"})),
        ("error_context", "/v1/completions", json!({"model": MODEL, "prompt": "hi", "max_tokens": 100000})),
        ("error_stream_options", "/v1/completions", json!({"model": MODEL, "prompt": "hi", "stream_options": {"include_usage": true}})),
    ];
    for (name, path, body) in cases {
        let (status, resp) = post(path, &body);
        snap!(name, json!({"status": status, "body": resp}));
    }
    let (status, resp) = post_raw("/v1/completions", "application/json", b"{\"model\": ".to_vec());
    assert_eq!(status, 400);
    assert!(resp["error"]["message"].as_str().unwrap().starts_with("The request body is not valid JSON"));
    let (status, resp) = post_raw("/v1/completions", "text/plain", b"hi".to_vec());
    snap!("error_content_type", json!({"status": status, "body": resp}));
    let big = serde_json::to_vec(&json!({"model": MODEL, "prompt": "x".repeat(100_000)})).unwrap();
    let (status, resp) = post_raw("/v1/completions", "application/json", big);
    snap!("error_too_large", json!({"status": status, "body": resp}));
    let r = Server::client().get(server().url("/v1/nothing")).bearer_auth(KEY).send().unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let resp: Value = r.json().unwrap();
    assert_eq!(resp["error"]["type"], "not_found_error");
    // After all that, still serving.
    let (status, _) = post("/v1/completions", &json!({"model": MODEL, "prompt": "hi", "max_tokens": 1}));
    assert_eq!(status, 200);
}

/// Where sluice and vLLM agree on an error's status and `param` (README, "Errors beside
/// vLLM's", read from vLLM's source), they must go on agreeing: clients branch on those.
/// (`type` and `code` differ throughout: vLLM names exception classes and repeats the
/// status, sluice uses OpenAI's types and codes.)
#[test]
fn errors_keep_the_status_and_param_vllm_gives() {
    let chat = |extra: Value| {
        let mut b = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b
    };
    let completion = |extra: Value| {
        let mut b = json!({"model": MODEL, "prompt": "hi"});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b
    };
    let cases: Vec<(&str, &str, Value, u16, Value)> = vec![
        ("unknown model", "/v1/completions", completion(json!({"model": "gpt-5"})), 404, json!("model")),
        ("temperature below 0", "/v1/completions", completion(json!({"temperature": -1})), 400, json!("temperature")),
        ("top_p above 1", "/v1/chat/completions", chat(json!({"top_p": 1.5})), 400, json!("top_p")),
        ("max_tokens past the context", "/v1/completions", completion(json!({"max_tokens": 100000})), 400, json!("max_tokens")),
        ("logprobs over --max-logprobs", "/v1/completions", completion(json!({"logprobs": 21})), 400, json!("logprobs")),
        ("stream_options without stream", "/v1/chat/completions", chat(json!({"stream_options": {"include_usage": true}})), 400, json!("stream_options")),
    ];
    for (what, path, body, status, param) in cases {
        let (got, e) = post(path, &body);
        assert_eq!((got, &e["error"]["param"]), (status, &param), "{what}: {e}");
    }
    let (status, e) = post_raw("/v1/completions", "application/json", b"{\"model\": ".to_vec());
    assert_eq!((status, &e["error"]["param"]), (400, &Value::Null), "a body that is not JSON: {e}");
}

#[test]
fn a_prompt_longer_than_the_context_is_refused() {
    let prompt = "word ".repeat(9000);
    let (status, resp) = post("/v1/completions", &json!({"model": MODEL, "prompt": prompt, "max_tokens": 1}));
    assert_eq!(status, 400);
    let msg = resp["error"]["message"].as_str().unwrap();
    assert!(msg.starts_with("This model's maximum context length is 8192 tokens. However, you requested"), "{msg}");
}

#[test]
fn api_key_guards_v1_but_not_health() {
    let c = Server::client();
    let s = server();
    let r = c.get(s.url("/v1/models")).send().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let body: Value = r.json().unwrap();
    snap!("error_unauthorized", body);
    let r = c.get(s.url("/v1/models")).bearer_auth("wrong").send().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = c.get(s.url("/v1/models")).bearer_auth(KEY).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let models: Value = r.json().unwrap();
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(models["data"][0]["max_model_len"], 8192);
    assert_eq!(c.get(s.url("/health")).send().unwrap().status().as_u16(), 200);
}

/// The README's example, through the official openai client, streaming and not.
#[test]
fn official_openai_client_works() {
    let script = r#"
import sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1] + "/v1", api_key="token-abc123")
model = client.models.list().data[0].id
r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello!"}], max_tokens=12)
assert r.choices[0].message.role == "assistant" and r.choices[0].message.content, r
assert r.usage.completion_tokens > 0
chunks = list(client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello!"}],
              max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True}))
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
whole = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello!"}], max_tokens=12, temperature=0)
assert streamed == whole.choices[0].message.content, (streamed, whole)
assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=5, temperature=0)
assert c.choices[0].text.startswith(" Paris"), c
try:
    OpenAI(base_url=sys.argv[1] + "/v1", api_key="nope").models.list()
    raise SystemExit("a wrong key was accepted")
except Exception as e:
    assert getattr(e, "status_code", None) == 401, e
print("ok")
"#;
    let out = std::process::Command::new(venv_python()).args(["-c", script, &server().base]).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

#[test]
fn tokenize_and_detokenize() {
    let text = "<|im_start|>user\nHello! ¿Qué tal? 😀<|im_end|>";
    let ids = json!([1, 4093, 198, 19556, 17, 3351, 140, 6317, 2756, 5252, 47, 40303, 218, 2]);
    let (status, r) = post("/tokenize", &json!({"model": MODEL, "prompt": text, "return_token_strs": true}));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["tokens"], ids);
    assert_eq!(r["count"], 14);
    assert_eq!(r["max_model_len"], 8192);
    assert_eq!(r["token_strs"][0], "<|im_start|>");
    assert_eq!(r["token_strs"].as_array().unwrap().len(), 14);
    let r = ok("/tokenize", &json!({"prompt": "hi"}));
    assert_eq!(r["count"], 1, "{r}");
    assert!(r.get("token_strs").is_none_or(Value::is_null), "the model is optional and token_strs only on request: {r}");

    let (status, r) = post("/detokenize", &json!({"model": MODEL, "tokens": ids}));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["prompt"], text);

    // Messages are rendered with the chat template, as a chat completion would be.
    let messages = json!([{"role": "user", "content": "What is the capital of France?"}]);
    let t = ok("/tokenize", &json!({"model": MODEL, "messages": messages}));
    let c = ok("/v1/chat/completions", &json!({"model": MODEL, "messages": messages, "max_tokens": 1}));
    assert!(t["count"].as_u64().is_some_and(|n| n > 20), "the template's system message and the question: {t}");
    assert_eq!(t["count"], c["usage"]["prompt_tokens"], "{t}");

    let (status, r) = post("/detokenize", &json!({"tokens": [99999999]}));
    assert_eq!((status, &r["error"]["param"]), (400, &json!("tokens")), "{r}");
    let (status, r) = post("/tokenize", &json!({"model": "gpt-5", "prompt": "hi"}));
    assert_eq!(status, 404, "{r}");
    let (status, r) = post("/tokenize", &json!({}));
    assert_eq!(status, 400, "{r}");
    // The key guards them; /version and /ping stay open, like /health.
    let r = Server::client().post(server().url("/tokenize")).json(&json!({"prompt": "hi"})).send().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(server().get("/version"), (200, json!({"version": env!("CARGO_PKG_VERSION")})));
    assert_eq!(server().get("/ping").0, 200);
}

#[test]
fn request_id_headers() {
    let s = Server::shared(&["--dtype", "float32", "--enable-request-id-headers"]);
    let body = json!({"model": MODEL, "prompt": "Hi", "max_tokens": 1});
    let r = Server::client().post(s.url("/v1/completions")).header("X-Request-Id", "abc-123").json(&body).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    assert_eq!(r.json::<Value>().unwrap()["id"], "cmpl-abc-123");
    let r = Server::client().post(s.url("/v1/completions")).json(&body).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let header = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(r.json::<Value>().unwrap()["id"], header.as_str(), "without one, the response id is the header");
    // Without the flag the id still follows the client's, but no header comes back.
    let r = Server::client().post(server().url("/v1/completions")).bearer_auth(KEY).header("X-Request-Id", "xyz").json(&body).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers().get("x-request-id").is_none());
    assert_eq!(r.json::<Value>().unwrap()["id"], "cmpl-xyz");
}

#[test]
fn cors_as_vllm_answers_it() {
    // Preflight needs no API key; the default allows any origin.
    let r = Server::client()
        .request(reqwest::Method::OPTIONS, server().url("/v1/chat/completions"))
        .header("Origin", "http://app.example")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "authorization, content-type")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let r = Server::client().get(server().url("/v1/models")).bearer_auth(KEY).header("Origin", "http://app.example").send().unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "*");

    let s = Server::shared(&["--dtype", "float32", "--allowed-origins", r#"["http://app.example"]"#]);
    let from = |origin: &str| {
        Server::client().get(s.url("/v1/models")).header("Origin", origin).send().unwrap().headers().get("access-control-allow-origin").cloned()
    };
    assert_eq!(from("http://app.example").unwrap(), "http://app.example");
    assert!(from("http://other.example").is_none());
}

#[test]
fn body_request_id_names_the_response_and_the_header_wins() {
    let body = json!({"model": MODEL, "prompt": "Hi", "max_tokens": 1, "request_id": "from-body"});
    let (status, r) = post("/v1/completions", &body);
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["id"], "cmpl-from-body");
    let r = Server::client().post(server().url("/v1/completions")).bearer_auth(KEY).header("X-Request-Id", "from-header").json(&body).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().unwrap()["id"], "cmpl-from-header");
}

#[test]
fn fields_a_text_model_cannot_use_are_refused() {
    for (field, value) in [("mm_processor_kwargs", json!({"num_crops": 4})), ("vllm_xargs", json!({"custom": 1}))] {
        let (status, r) = post("/v1/chat/completions", &json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], field: value}));
        assert_eq!((status, &r["error"]["param"]), (400, &json!(field)), "{r}");
    }
    // Accepted and ignored as vLLM does without a connector.
    let (status, r) = post("/v1/completions", &json!({"model": MODEL, "prompt": "Hi", "max_tokens": 1, "kv_transfer_params": {"do_remote_decode": false}}));
    assert_eq!(status, 200, "{r}");
}

#[test]
fn requests_are_logged_when_asked_and_cut_to_max_log_len() {
    let s = Server::shared(&["--dtype", "float32", "--enable-log-requests", "--max-log-len", "12"]);
    let (status, r) = s.post("/v1/completions", &json!({"model": MODEL, "prompt": "A prompt long enough to be cut", "max_tokens": 1}));
    assert_eq!(status, 200, "{r}");
    let log = s.log.lock().unwrap().clone();
    let line = log.lines().find(|l| l.contains("Received request")).unwrap_or_else(|| panic!("no request line in:\n{log}"));
    assert!(line.contains(r#"["A prompt l…"#), "{line}");
    assert!(!line.contains("cut"), "{line}");
}

/// A server with the less common flags: --root-path, --max-logprobs, and vLLM flags that
/// are accepted as they are what sluice does anyway.
const LESSER_FLAGS: &[&str] = &[
    "--dtype", "float32", "--root-path", "/api/", "--kv-cache-memory", "64MiB", "--max-model-len", "1024",
    "--max-logprobs", "2", "--tensor-parallel-size", "1", "--trust-remote-code", "--enforce-eager", "--uvicorn-log-level", "info",
];

#[test]
fn max_logprobs_bounds_every_logprobs_field() {
    let s = Server::shared(LESSER_FLAGS);
    for (field, ok, bad) in [("logprobs", json!(2), json!(3)), ("prompt_logprobs", json!(2), json!(3))] {
        let mut body = json!({"model": MODEL, "prompt": "Hi", "max_tokens": 1});
        body[field] = ok;
        assert_eq!(s.post("/v1/completions", &body).0, 200, "{field}");
        body[field] = bad;
        let (status, e) = s.post("/v1/completions", &body);
        assert_eq!((status, e["error"]["param"].as_str()), (400, Some(field)), "{e}");
    }
    let chat = json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "logprobs": true, "top_logprobs": 3});
    assert_eq!(s.post("/v1/chat/completions", &chat).0, 400);
}

/// `/openapi.json` lists routes that exist; `--root-path` serves the same routes under the
/// prefix and names it as the document's server; `/docs` points at the document.
#[test]
fn openapi_document_and_root_path() {
    let s = Server::shared(LESSER_FLAGS);
    let (status, doc) = s.get("/api/openapi.json");
    assert_eq!(status, 200);
    assert_eq!(doc["servers"][0]["url"], "/api");
    assert_eq!(doc, s.get("/openapi.json").1, "the document is the same with and without the prefix");
    let file: Value = serde_json::from_str(include_str!("../schemas/openapi.json")).unwrap();
    assert_eq!(doc["paths"], file["paths"], "the served document is schemas/openapi.json");
    // Every documented route answers under the prefix: a GET (and POST /ping) with 200, any
    // other POST, sent an empty object, with a 400 that says what was wrong — reached the
    // handler, which refused the body. A route about a stored object, asked about one that
    // does not exist, answers 404 in OpenAI's shape.
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let url = s.url(&format!("/api{}", path.replace("{response_id}", "resp_none")));
            let r = match method.as_str() {
                "get" => Server::client().get(url),
                "delete" => Server::client().delete(url),
                "post" => Server::client().post(url).json(&json!({})),
                m => panic!("unexpected method {m} for {path}"),
            }
            .send()
            .unwrap();
            let status = r.status().as_u16();
            let body = r.text().unwrap();
            if path.contains('{') {
                assert_eq!(status, 404, "{method} {path}: {body}");
                let e: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{method} {path}: not JSON: {body}"));
                assert!(e["error"]["message"].as_str().is_some_and(|m| m.contains("resp_none")), "{method} {path}: {e}");
            } else if method == "get" || path == "/ping" {
                assert_eq!(status, 200, "{method} {path}: {body}");
            } else {
                assert_eq!(status, 400, "{method} {path} with {{}}: {body}");
                let e: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{method} {path}: not JSON: {body}"));
                assert_eq!(e["error"]["type"], "invalid_request_error", "{method} {path}: {e}");
                assert!(e["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{method} {path}: {e}");
            }
        }
    }
    let (status, models) = s.get("/api/v1/models");
    assert_eq!(status, 200);
    assert_eq!(models, s.get("/v1/models").1);
    assert_eq!(s.get("/apiary/v1/models").0, 404, "only a whole path segment is a prefix");
    let r = Server::client().get(s.url("/api/docs")).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().unwrap().contains(r#"url: "/api/openapi.json""#));
    let r = Server::client().post(s.url("/api/v1/completions")).json(&json!({"model": MODEL, "prompt": "Hi", "max_tokens": 2})).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
}
