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
