//! Image content parts over HTTP against the default (text-only) model: a well-formed
//! image part is answered with a 400 saying the model takes no images, a malformed one with
//! a 400 saying what is wrong with it, on chat completions and on /tokenize; the server
//! goes on serving text.

mod common;

use base64::Engine as _;
use common::{MODEL, Server};
use serde_json::{Value, json};

const ARGS: &[&str] = &["--dtype", "float32"];

fn png_data_url() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/gradient_64x48.png");
    let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap());
    format!("data:image/png;base64,{b64}")
}

fn messages_with(url: &str) -> Value {
    json!([{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
    ]}])
}

fn chat(s: &Server, messages: Value) -> (u16, Value) {
    s.post("/v1/chat/completions", &json!({"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 4}))
}

#[test]
fn a_text_only_model_refuses_images_clearly() {
    let s = Server::shared(ARGS);
    let (status, r) = chat(s, messages_with(&png_data_url()));
    assert_eq!(status, 400, "{r}");
    assert_eq!(r["error"]["param"], "messages[0].content[1]", "{r}");
    let message = r["error"]["message"].as_str().unwrap();
    assert!(message.contains("takes no images"), "{r}");
    assert_eq!(r["error"]["type"], "invalid_request_error", "{r}");

    let (status, r) = s.post("/tokenize", &json!({"model": MODEL, "messages": messages_with(&png_data_url())}));
    assert_eq!(status, 400, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("takes no images"), "{r}");

    // Still serving text.
    let (status, r) = chat(s, json!([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]));
    assert_eq!(status, 200, "{r}");
}

#[test]
fn malformed_image_parts_say_what_is_wrong() {
    let s = Server::shared(ARGS);
    for (url, says) in [
        ("data:image/png;base64,***", "base64 data is not valid"),
        ("data:text/plain;base64,aGk=", "image/*"),
        ("data:image/png,rawbytes", "base64-encoded"),
        ("gopher://example/x.png", "not supported"),
    ] {
        let (status, r) = chat(s, messages_with(url));
        assert_eq!(status, 400, "{url}: {r}");
        assert_eq!(r["error"]["param"], "messages[0].content[1].image_url.url", "{url}: {r}");
        assert!(r["error"]["message"].as_str().unwrap().contains(says), "{url}: {r}");
    }
    let (status, r) = chat(s, json!([{"role": "user", "content": [{"type": "image_url", "image_url": "data:image/png;base64,aGk="}]}]));
    assert_eq!(status, 400, "{r}");
    assert_eq!(r["error"]["param"], "messages[0].content[0].image_url.url", "{r}");
}
